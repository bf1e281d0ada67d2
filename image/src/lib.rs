//! OCI images of WebAssembly functions.
//!
//! [`build`] packs a `.wasm` module into an OCI image layout (as a tar
//! archive that `ctr images import` accepts): one gzipped tar layer holding
//! the module at `/NAME.wasm`, an image config, and an index whose
//! `org.opencontainers.image.ref.name` and `io.containerd.image.name`
//! annotations carry the reference. The platform is the node's own
//! (`linux/amd64`), not `wasip1/wasm`: containerd filters images by the
//! node's platform on import and run, and on a Flint node the module runs
//! in a Flint VM whatever the platform says. The config's labels say what
//! the image holds (`dev.flint.module`).
//!
//! [`find_module`] does the reverse for an image layout directory (or
//! archive): index, then manifest, then layers, newest last, until a
//! `.wasm` file (or a raw wasm layer) turns up. Everything read is checked:
//! the documents are read as the image spec's types (`oci-spec`: required
//! fields, digest formats), digests must match their content, and sizes
//! are capped. The documents written are built from the same types.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use oci_spec::image::{
    Arch, Config, Descriptor, DescriptorBuilder, ImageConfiguration, ImageConfigurationBuilder,
    ImageIndex, ImageIndexBuilder, ImageManifest, ImageManifestBuilder, MediaType, Os,
    PlatformBuilder, RootFsBuilder,
};
use sha2::{Digest as _, Sha256};

/// The wasm OCI artifact layer type (runwasi, wasm-to-oci).
pub const MEDIA_LAYER_WASM: &str = "application/vnd.wasm.content.layer.v1+wasm";

/// Largest blob read (a module, a layer, a document).
const MAX_BLOB: u64 = 512 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("reading {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the image is malformed: {0}")]
    Malformed(String),
    #[error("blob {0} does not match its digest")]
    Digest(String),
    #[error("the image holds no WebAssembly module (a .wasm file or a wasm layer)")]
    NoModule,
}

fn malformed(why: impl Into<String>) -> ImageError {
    ImageError::Malformed(why.into())
}

fn sha256(b: &[u8]) -> String {
    let d = Sha256::digest(b);
    format!(
        "sha256:{}",
        d.iter().map(|x| format!("{x:02x}")).collect::<String>()
    )
}

/// Builds an OCI image layout archive holding `module` as `/name`, tagged
/// `reference` (e.g. `docker.io/library/hello:v1`).
pub fn build(module: &[u8], name: &str, reference: &str) -> Result<Vec<u8>, ImageError> {
    build_with(&[(name, module)], reference)
}

/// Builds an OCI image layout archive holding each module at `/name`; the
/// first is the image's entrypoint, the others are there for execs.
pub fn build_with(modules: &[(&str, &[u8])], reference: &str) -> Result<Vec<u8>, ImageError> {
    let Some((name, _)) = modules.first() else {
        return Err(malformed("an image needs at least one module"));
    };
    let entry = format!("/{name}");
    let config = serde_json::json!({
        "Entrypoint": [entry],
        "Labels": { "dev.flint.module": entry, "dev.flint.runtime": "wasi-preview1" },
    });
    build_files(modules, config, reference)
}

/// Builds an OCI image layout archive of one layer holding each file at
/// `/name` (mode 0755), with `config` as the image config's `config`
/// (entrypoint, labels, ...). Flint's images use [`build_with`]; this also
/// packs Linux images, e.g. the static busybox the benchmarks compare with.
pub fn build_files(
    files: &[(&str, &[u8])],
    config: serde_json::Value,
    reference: &str,
) -> Result<Vec<u8>, ImageError> {
    let Some((name, _)) = files.first() else {
        return Err(malformed("an image needs at least one file"));
    };
    let io = |e| ImageError::Io {
        path: PathBuf::from(name),
        source: e,
    };
    // The layer: a tar with the files at the root, gzipped.
    let mut layer_tar = tar::Builder::new(Vec::new());
    for (file, data) in files {
        if file.is_empty() || file.contains('/') || *file == "." || *file == ".." {
            return Err(malformed(format!("{file:?} is not a file name")));
        }
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_cksum();
        layer_tar.append_data(&mut h, file, *data).map_err(io)?;
    }
    let layer_tar = layer_tar.into_inner().map_err(io)?;
    build_layer(&layer_tar, config, reference).map_err(|e| match e {
        ImageError::Io { source, .. } => io(source),
        e => e,
    })
}

/// Builds an OCI image layout archive of a Linux root filesystem: one
/// layer holding the directory `dir` as `/` (symlinks kept as symlinks,
/// modes kept), with `config` as the image config's `config`
/// (`Entrypoint`, `Cmd`, `Env`, `WorkingDir`).
pub fn build_dir(
    dir: &Path,
    config: serde_json::Value,
    reference: &str,
) -> Result<Vec<u8>, ImageError> {
    let io = |e| ImageError::Io {
        path: dir.to_path_buf(),
        source: e,
    };
    let mut layer = tar::Builder::new(Vec::new());
    layer.follow_symlinks(false);
    layer.mode(tar::HeaderMode::Deterministic);
    layer.append_dir_all(".", dir).map_err(io)?;
    let layer = layer.into_inner().map_err(io)?;
    build_layer(&layer, config, reference)
}

fn build_layer(
    layer_tar: &[u8],
    config: serde_json::Value,
    reference: &str,
) -> Result<Vec<u8>, ImageError> {
    let io = |e| ImageError::Io {
        path: PathBuf::from(reference),
        source: e,
    };
    let diff_id = sha256(layer_tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut gz, layer_tar).map_err(io)?;
    let layer = gz.finish().map_err(io)?;
    let spec = |e: oci_spec::OciSpecError| malformed(format!("building the image: {e}"));
    let config: Config = serde_json::from_value(config)
        .map_err(|e| malformed(format!("the image config's config: {e}")))?;
    let config = ImageConfigurationBuilder::default()
        .architecture(Arch::Amd64)
        .os(Os::Linux)
        .config(config)
        .rootfs(
            RootFsBuilder::default()
                .typ("layers")
                .diff_ids(vec![diff_id])
                .build()
                .map_err(spec)?,
        )
        .build()
        .map_err(spec)?;
    let config = to_json(&config)?;
    let manifest = ImageManifestBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageManifest)
        .config(descriptor(MediaType::ImageConfig, &config)?)
        .layers(vec![descriptor(MediaType::ImageLayerGzip, &layer)?])
        .build()
        .map_err(spec)?;
    let manifest = to_json(&manifest)?;
    let mut entry = descriptor(MediaType::ImageManifest, &manifest)?;
    entry.set_platform(Some(
        PlatformBuilder::default()
            .architecture(Arch::Amd64)
            .os(Os::Linux)
            .build()
            .map_err(spec)?,
    ));
    entry.set_annotations(Some(HashMap::from([
        (
            "org.opencontainers.image.ref.name".to_string(),
            reference.to_string(),
        ),
        (
            "io.containerd.image.name".to_string(),
            reference.to_string(),
        ),
    ])));
    let index = ImageIndexBuilder::default()
        .schema_version(2u32)
        .media_type(MediaType::ImageIndex)
        .manifests(vec![entry])
        .build()
        .map_err(spec)?;
    let index = to_json(&index)?;
    let mut out = tar::Builder::new(Vec::new());
    let mut add = |path: &str, data: &[u8]| -> Result<(), ImageError> {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        out.append_data(&mut h, path, data).map_err(io)
    };
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    add("index.json", &index)?;
    for blob in [&config, &manifest, &layer] {
        add(
            &format!("blobs/sha256/{}", &sha256(blob)["sha256:".len()..]),
            blob,
        )?;
    }
    out.into_inner().map_err(io)
}

/// The descriptor of `blob`: its media type, sha256 digest and size.
fn descriptor(media_type: MediaType, blob: &[u8]) -> Result<Descriptor, ImageError> {
    let digest: oci_spec::image::Digest = sha256(blob)
        .parse()
        .map_err(|e| malformed(format!("digest: {e}")))?;
    DescriptorBuilder::default()
        .media_type(media_type)
        .digest(digest)
        .size(blob.len() as u64)
        .build()
        .map_err(|e| malformed(format!("building the image: {e}")))
}

fn to_json(doc: &impl serde::Serialize) -> Result<Vec<u8>, ImageError> {
    serde_json::to_vec(doc).map_err(|e| malformed(format!("encoding the image: {e}")))
}

/// Where blobs come from: a layout directory, or an archive read whole.
enum Store {
    Dir(PathBuf),
    Archive(HashMap<String, Vec<u8>>),
}

impl Store {
    fn open(path: &Path) -> Result<Self, ImageError> {
        if path.is_dir() {
            return Ok(Self::Dir(path.to_path_buf()));
        }
        let f = std::fs::File::open(path).map_err(|source| ImageError::Io {
            path: path.into(),
            source,
        })?;
        let mut files = HashMap::new();
        let mut total = 0u64;
        let mut ar = tar::Archive::new(f);
        let entries = ar
            .entries()
            .map_err(|e| malformed(format!("not a tar archive: {e}")))?;
        for e in entries {
            let mut e = e.map_err(|e| malformed(format!("bad archive entry: {e}")))?;
            let name = e
                .path()
                .map_err(|e| malformed(e.to_string()))?
                .to_string_lossy()
                .trim_start_matches("./")
                .to_string();
            total += e.size();
            if total > MAX_BLOB * 2 {
                return Err(malformed("the archive is too large"));
            }
            let mut data = Vec::new();
            e.read_to_end(&mut data)
                .map_err(|e| malformed(e.to_string()))?;
            files.insert(name, data);
        }
        Ok(Self::Archive(files))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, ImageError> {
        match self {
            Self::Dir(d) => {
                let p = d.join(name);
                let len = std::fs::metadata(&p)
                    .map_err(|source| ImageError::Io {
                        path: p.clone(),
                        source,
                    })?
                    .len();
                if len > MAX_BLOB {
                    return Err(malformed(format!("{name} is too large")));
                }
                std::fs::read(&p).map_err(|source| ImageError::Io { path: p, source })
            }
            Self::Archive(files) => files
                .get(name)
                .cloned()
                .ok_or_else(|| malformed(format!("{name} is missing"))),
        }
    }

    fn blob(&self, digest: &str) -> Result<Vec<u8>, ImageError> {
        let hex = digest
            .strip_prefix("sha256:")
            .ok_or_else(|| malformed(format!("unsupported digest {digest:?}")))?;
        if hex.len() != 64 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(malformed(format!("bad digest {digest:?}")));
        }
        let data = self.read(&format!("blobs/sha256/{hex}"))?;
        if sha256(&data) != digest {
            return Err(ImageError::Digest(digest.into()));
        }
        Ok(data)
    }
}

fn json<T: serde::de::DeserializeOwned>(b: &[u8], what: &str) -> Result<T, ImageError> {
    serde_json::from_slice(b).map_err(|e| malformed(format!("{what} is not valid: {e}")))
}

/// The first image manifest of the layout at `path` (nested indexes of
/// multi-platform images followed), and the blob store to read it from.
fn manifest(path: &Path) -> Result<(Store, ImageManifest), ImageError> {
    let store = Store::open(path)?;
    let index: ImageIndex = json(&store.read("index.json")?, "index.json")?;
    let mut desc = first_manifest(index, "index.json")?;
    for _ in 0..4 {
        // Read once; a nested index (a multi-platform image) lists
        // manifests, a manifest has layers.
        let doc: serde_json::Value = json(&store.blob(desc.digest().as_ref())?, "a manifest")?;
        if doc.get("manifests").is_none() {
            return Ok((store, typed(doc, "a manifest")?));
        }
        desc = first_manifest(typed(doc, "a nested index")?, "a nested index")?;
    }
    Err(malformed("indexes nest too deeply"))
}

fn typed<T: serde::de::DeserializeOwned>(
    doc: serde_json::Value,
    what: &str,
) -> Result<T, ImageError> {
    serde_json::from_value(doc).map_err(|e| malformed(format!("{what} is not valid: {e}")))
}

/// The first manifest an index lists (`what` names the index).
fn first_manifest(index: ImageIndex, what: &str) -> Result<Descriptor, ImageError> {
    index
        .manifests()
        .first()
        .cloned()
        .ok_or_else(|| malformed(format!("{what} lists no manifests")))
}

fn is_gzip(layer: &Descriptor, blob: &[u8]) -> bool {
    layer.media_type().to_string().ends_with("gzip") || blob.starts_with(&[0x1f, 0x8b])
}

/// The WebAssembly module in an OCI image layout (a directory or a tar
/// archive of one): its bytes and its file name.
pub fn find_module(path: &Path) -> Result<(Vec<u8>, String), ImageError> {
    let (store, doc) = manifest(path)?;
    for layer in doc.layers().iter().rev() {
        let blob = store.blob(layer.digest().as_ref())?;
        if layer.media_type().to_string() == MEDIA_LAYER_WASM || blob.starts_with(b"\0asm") {
            let name = layer
                .annotations()
                .as_ref()
                .and_then(|a| a.get("org.opencontainers.image.title"))
                .map_or("module.wasm", String::as_str);
            return Ok((blob, name.to_string()));
        }
        if let Some(found) = wasm_in_tar(&blob, is_gzip(layer, &blob))? {
            return Ok(found);
        }
    }
    Err(ImageError::NoModule)
}

/// A Linux image's configuration, as far as running it needs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinuxConfig {
    pub entrypoint: Vec<String>,
    pub cmd: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: String,
}

/// Largest root filesystem [`unpack_rootfs`] writes.
pub const MAX_ROOTFS_BYTES: u64 = 4 << 30;

/// Unpacks the layers of the image at `path` (an OCI layout directory or
/// its tar archive) into `dest`, bottom layer first, and returns its
/// config. Entries that would land outside `dest` (`..`, absolute paths,
/// through a symlink) are refused by the tar reader; device nodes are
/// skipped; the total size is capped.
pub fn unpack_rootfs(path: &Path, dest: &Path) -> Result<LinuxConfig, ImageError> {
    let (store, doc) = manifest(path)?;
    let io = |e| ImageError::Io {
        path: dest.to_path_buf(),
        source: e,
    };
    let config: ImageConfiguration = json(
        &store.blob(doc.config().digest().as_ref())?,
        "the image config",
    )?;
    std::fs::create_dir_all(dest).map_err(io)?;
    let mut total = 0u64;
    for layer in doc.layers() {
        let blob = store.blob(layer.digest().as_ref())?;
        let reader: Box<dyn Read> = if is_gzip(layer, &blob) {
            Box::new(flate2::read::GzDecoder::new(blob.as_slice()))
        } else {
            Box::new(blob.as_slice())
        };
        let mut archive = tar::Archive::new(reader);
        archive.set_preserve_permissions(true);
        for entry in archive.entries().map_err(io)? {
            let mut entry = entry.map_err(io)?;
            let kind = entry.header().entry_type();
            if kind.is_block_special() || kind.is_character_special() || kind.is_fifo() {
                continue;
            }
            total += entry.header().size().unwrap_or(0);
            if total > MAX_ROOTFS_BYTES {
                return Err(malformed("the root filesystem is larger than 4 GiB"));
            }
            entry.unpack_in(dest).map_err(io)?;
        }
    }
    let c = config.config().clone().unwrap_or_default();
    Ok(LinuxConfig {
        entrypoint: c.entrypoint().clone().unwrap_or_default(),
        cmd: c.cmd().clone().unwrap_or_default(),
        env: c
            .env()
            .iter()
            .flatten()
            .filter_map(|kv| {
                kv.split_once('=')
                    .map(|(k, v)| (k.to_string(), v.to_string()))
            })
            .collect(),
        working_dir: c
            .working_dir()
            .clone()
            .filter(|w| !w.is_empty())
            .unwrap_or_else(|| "/".into()),
    })
}

fn wasm_in_tar(blob: &[u8], gzip: bool) -> Result<Option<(Vec<u8>, String)>, ImageError> {
    let reader: Box<dyn Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(blob))
    } else {
        Box::new(blob)
    };
    let mut ar = tar::Archive::new(reader.take(MAX_BLOB));
    let entries = ar
        .entries()
        .map_err(|e| malformed(format!("a layer is not a tar archive: {e}")))?;
    for e in entries {
        let mut e = e.map_err(|e| malformed(format!("a layer is damaged: {e}")))?;
        let p = e
            .path()
            .map_err(|e| malformed(e.to_string()))?
            .to_path_buf();
        if p.extension().is_some_and(|x| x == "wasm") && e.header().entry_type().is_file() {
            let mut data = Vec::new();
            e.read_to_end(&mut data)
                .map_err(|e| malformed(e.to_string()))?;
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            return Ok(Some((data, name)));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Writes an archive to a temporary file (removed when dropped).
    fn write(bytes: &[u8]) -> tempfile::TempPath {
        let f = tempfile::Builder::new()
            .prefix("flint-image-")
            .suffix(".tar")
            .tempfile()
            .unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        f.into_temp_path()
    }

    #[test]
    fn built_images_hold_the_module() {
        let module = b"\0asm\x01\0\0\0 and the rest";
        let archive = build(module, "hello.wasm", "docker.io/library/hello:v1").unwrap();
        let (found, name) = find_module(&write(&archive)).unwrap();
        assert_eq!(
            (found.as_slice(), name.as_str()),
            (&module[..], "hello.wasm")
        );
        // The same as an unpacked directory.
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        tar::Archive::new(archive.as_slice()).unpack(dir).unwrap();
        assert_eq!(find_module(dir).unwrap().0, module);
        let index: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
        assert_eq!(
            index["manifests"][0]["annotations"]["io.containerd.image.name"],
            "docker.io/library/hello:v1"
        );
    }

    #[test]
    fn damaged_images_are_refused() {
        let archive = build(b"\0asm\x01\0\0\0", "m.wasm", "x:1").unwrap();
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path();
        tar::Archive::new(archive.as_slice()).unpack(dir).unwrap();
        // Corrupt every blob: the digest check catches it.
        for e in std::fs::read_dir(dir.join("blobs/sha256")).unwrap() {
            let p = e.unwrap().path();
            let mut b = std::fs::read(&p).unwrap();
            b.push(b'!');
            std::fs::write(&p, b).unwrap();
        }
        assert!(matches!(find_module(dir), Err(ImageError::Digest(_))));
        let e = find_module(&write(b"not a tar at all, really not"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("malformed") && e.contains("archive"), "{e}");
        let refused = |index: &str| {
            std::fs::write(dir.join("index.json"), index).unwrap();
            find_module(dir).unwrap_err().to_string()
        };
        let e = refused(r#"{"schemaVersion": 2, "manifests": []}"#);
        assert!(e.contains("no manifests"), "{e}");
        // The image spec's required fields and formats, as oci-spec reads them.
        let e = refused(r#"{"manifests": []}"#);
        assert!(
            e.contains("index.json") && e.contains("schemaVersion"),
            "{e}"
        );
        let e = refused(
            r#"{"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": "nodigest", "size": 1}]}"#,
        );
        assert!(e.contains("index.json") && e.contains("digest"), "{e}");
        let e = refused(
            r#"{"schemaVersion": 2, "manifests": [{"mediaType": "x", "digest": "sha256:00", "size": -1}]}"#,
        );
        assert!(e.contains("index.json is not valid"), "{e}");
    }
}
