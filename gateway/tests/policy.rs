//! What an apply may read of the host: images confined to the image
//! root, only regular files and OCI layout directories, a size cap, and
//! scale annotations capped by the node's instance limit.

use std::path::Path;

use flint_gateway::manifest;
use flint_gateway::registry::{DeployError, Policy, Registry};

fn yaml(image: &str, annotations: &str) -> manifest::Service {
    manifest::parse(&format!(
        "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  template:\n    metadata:\n      annotations:\n{annotations}        x: y\n    spec:\n      containers:\n        - image: {image}\n"
    ))
    .unwrap()
}

/// A registry confined to `root`: 1 MiB modules, 3 instances.
fn registry(root: &Path) -> Registry {
    Registry::with_policy(Policy {
        image_root: root.to_path_buf(),
        max_module_bytes: 1 << 20,
        max_instances: 3,
        ..Policy::default()
    })
}

fn refused(r: Result<std::sync::Arc<flint_gateway::registry::Revision>, DeployError>) -> String {
    match r {
        Err(e @ DeployError::ImageRefused(..)) => e.to_string(),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn images_outside_the_root_or_not_files_are_refused_without_saying_what_exists() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::copy(
        flint_examples::path("hello"),
        root.path().join("hello.wasm"),
    )
    .unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.path().join("link.wasm")).unwrap();
    let fifo = root.path().join("fifo.wasm");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: creating a FIFO at a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let reg = registry(root.path());
    let base = root.path();
    let apply = |image: &str| reg.apply(yaml(image, ""), base, state.path());
    assert!(apply("hello.wasm").is_ok());
    let existing = refused(apply("/etc/passwd"));
    let missing = refused(apply("/etc/no-such-file"));
    assert!(existing.contains("outside the image root"), "{existing}");
    assert_eq!(
        existing.replace("passwd", "X"),
        missing.replace("no-such-file", "X"),
        "the same answer for both"
    );
    assert!(refused(apply("../../../../etc/passwd")).contains("outside"));
    assert!(refused(apply("link.wasm")).contains("outside"));
    assert!(refused(apply("/dev/zero")).contains("outside"));
    let m = refused(apply("fifo.wasm"));
    assert!(m.contains("neither a regular file"), "{m}");
    let big = root.path().join("big.wasm");
    std::fs::write(&big, vec![0u8; 2 << 20]).unwrap();
    assert!(refused(apply("big.wasm")).contains("--max-module-bytes"));
    // A FIFO is never opened: the apply above returned instead of blocking.
    let _ = Path::new(&fifo);
}

#[test]
fn scale_annotations_are_capped_by_the_node_limit() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::copy(
        flint_examples::path("hello"),
        root.path().join("hello.wasm"),
    )
    .unwrap();
    let reg = registry(root.path());
    let rev = reg
        .apply(
            yaml(
                "hello.wasm",
                "        autoscaling.knative.dev/initial-scale: \"4294967295\"\n        autoscaling.knative.dev/min-scale: \"1000\"\n",
            ),
            root.path(),
            state.path(),
        )
        .unwrap();
    let a = &rev.service.autoscaling;
    assert_eq!((a.initial_scale, a.min_scale, a.max_scale), (3, 3, 3));
}

#[test]
fn a_named_revision_cannot_change() {
    let root = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    std::fs::copy(
        flint_examples::path("hello"),
        root.path().join("hello.wasm"),
    )
    .unwrap();
    std::fs::copy(
        flint_examples::path("greet"),
        root.path().join("greet.wasm"),
    )
    .unwrap();
    let reg = registry(root.path());
    let named = |image: &str| {
        manifest::parse(&format!(
            "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: s\nspec:\n  template:\n    metadata:\n      name: s-blue\n    spec:\n      containers:\n        - image: {image}\n"
        ))
        .unwrap()
    };
    let first = reg
        .apply(named("hello.wasm"), root.path(), state.path())
        .unwrap();
    let mem = state.path().join("default/s-blue/memory.bin");
    let before = std::fs::metadata(&mem).unwrap().modified().unwrap();
    // The same template again: a no-op, the same revision.
    let again = reg
        .apply(named("hello.wasm"), root.path(), state.path())
        .unwrap();
    assert!(std::sync::Arc::ptr_eq(&first, &again));
    // Another template under the same name: refused, nothing rewritten.
    match reg.apply(named("greet.wasm"), root.path(), state.path()) {
        Err(e @ DeployError::RevisionExists(_)) => assert!(e.to_string().contains("s-blue"), "{e}"),
        other => panic!("expected RevisionExists, got {other:?}"),
    }
    assert_eq!(std::fs::metadata(&mem).unwrap().modified().unwrap(), before);
}
