//! Knative Service manifests: every field, valid and invalid.

use std::time::Duration;

use flint_gateway::manifest::{parse, Isolation, ManifestError, Metric};

const FULL: &str = r#"
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  namespace: team-a
  annotations:
    owner: me
spec:
  template:
    metadata:
      name: hello-v2
      annotations:
        autoscaling.knative.dev/min-scale: "1"
        autoscaling.knative.dev/max-scale: "5"
        autoscaling.knative.dev/initial-scale: "2"
        autoscaling.knative.dev/target: "10"
        autoscaling.knative.dev/metric: rps
        autoscaling.knative.dev/window: 40s
        autoscaling.knative.dev/panic-window-percentage: "20"
        autoscaling.knative.dev/panic-threshold-percentage: "150"
        autoscaling.knative.dev/scale-down-delay: 1m30s
        flint.dev/isolation: request
    spec:
      containerConcurrency: 4
      timeoutSeconds: 30
      responseStartTimeoutSeconds: 10
      idleTimeoutSeconds: 20
      runtimeClassName: flint
      containers:
        - name: fn
          image: greet.wasm
          args: ["--flag", "x"]
          env:
            - name: A
              value: "1"
            - name: EMPTY
          resources:
            limits:
              memory: 256Mi
              cpu: "1"
  traffic:
    - latestRevision: true
      percent: 80
    - revisionName: hello-00001
      percent: 20
      tag: old
"#;

#[test]
fn every_field_is_read() {
    let s = parse(FULL).unwrap();
    assert_eq!((s.name.as_str(), s.namespace.as_str()), ("hello", "team-a"));
    assert_eq!(s.annotations.get("owner").map(String::as_str), Some("me"));
    assert_eq!(s.revision_name.as_deref(), Some("hello-v2"));
    let a = &s.autoscaling;
    assert_eq!((a.min_scale, a.max_scale, a.initial_scale), (1, 5, 2));
    assert_eq!((a.target, a.metric), (10.0, Metric::Rps));
    assert_eq!(a.window, Duration::from_secs(40));
    assert_eq!(
        (a.panic_window_percentage, a.panic_threshold_percentage),
        (20.0, 150.0)
    );
    assert_eq!(a.scale_down_delay, Duration::from_secs(90));
    assert_eq!(s.isolation, Isolation::Request);
    assert_eq!(s.container_concurrency, 4);
    assert_eq!(s.timeout, Duration::from_secs(30));
    assert_eq!(s.response_start_timeout, Some(Duration::from_secs(10)));
    assert_eq!(s.idle_timeout, Some(Duration::from_secs(20)));
    assert_eq!(s.image, "greet.wasm");
    assert_eq!(s.args, vec!["--flag", "x"]);
    assert_eq!(
        s.env,
        vec![("A".into(), "1".into()), ("EMPTY".into(), String::new())]
    );
    assert_eq!(s.memory_mib, Some(256));
    assert_eq!(s.traffic.len(), 2);
    assert_eq!(s.traffic[1].tag.as_deref(), Some("old"));
}

const MINIMAL: &str = "apiVersion: serving.knative.dev/v1\nkind: Service\nmetadata:\n  name: hello\nspec:\n  template:\n    spec:\n      containers:\n        - image: greet.wasm\n";

#[test]
fn knative_defaults_apply() {
    let s = parse(MINIMAL).unwrap();
    assert_eq!(s.namespace, "default");
    assert_eq!(s.container_concurrency, 0);
    assert_eq!(s.timeout, Duration::from_secs(300));
    assert_eq!(s.autoscaling.min_scale, 0);
    assert_eq!(s.autoscaling.initial_scale, 1);
    assert_eq!(s.autoscaling.target, 100.0);
    assert_eq!(s.autoscaling.metric, Metric::Concurrency);
    assert_eq!(s.autoscaling.window, Duration::from_secs(60));
    assert_eq!(s.isolation, Isolation::Shared);
    assert!(!s.snapshot, "templates of Linux servers are opt-in");
    assert!(s.traffic.is_empty());
}

fn err(yaml: &str) -> String {
    parse(yaml).unwrap_err().to_string()
}

#[test]
fn unknown_fields_are_named_by_path() {
    assert_eq!(
        err(&MINIMAL.replace("- image:", "- imagee:")),
        "spec.template.spec.containers[0].imagee: unknown field"
    );
    assert_eq!(
        err(&format!("{MINIMAL}  extra: 1\n")),
        "spec.extra: unknown field"
    );
    assert_eq!(
        err(&MINIMAL.replace("metadata:\n  name", "metadata:\n  nam: x\n  name")),
        "metadata.nam: unknown field"
    );
    assert_eq!(
        err(&format!("{MINIMAL}status: {{}}\n")),
        "status: unknown field"
    );
    let bad_annotation = MINIMAL.replace(
        "    spec:\n",
        "    metadata:\n      annotations:\n        autoscaling.knative.dev/max-scal: \"3\"\n    spec:\n",
    );
    assert_eq!(
        err(&bad_annotation),
        "spec.template.metadata.annotations[autoscaling.knative.dev/max-scal]: unknown field"
    );
}

/// What users write in real Knative Services (the fields Knative's
/// webhook accepts: its ContainerMask and PodSpecMask) is accepted.
#[test]
fn fields_knative_accepts_are_accepted() {
    let yaml = "apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: hello
  labels:
    app: hello
spec:
  template:
    metadata:
      labels:
        app: hello
    spec:
      serviceAccountName: default
      enableServiceLinks: false
      imagePullSecrets:
        - name: regcred
      securityContext:
        runAsNonRoot: true
      containers:
        - name: user-container
          image: greet.wasm
          imagePullPolicy: IfNotPresent
          workingDir: /srv
          ports:
            - containerPort: 8080
              name: http1
              protocol: TCP
          readinessProbe:
            httpGet:
              path: /healthz
              port: 8080
            initialDelaySeconds: 1
            periodSeconds: 5
          livenessProbe:
            tcpSocket:
              port: 8080
          resources:
            requests:
              cpu: 100m
              memory: 64Mi
            limits:
              cpu: \"1\"
              memory: 128Mi
          securityContext:
            allowPrivilegeEscalation: false
            readOnlyRootFilesystem: true
            capabilities:
              drop: [ALL]
          terminationMessagePolicy: FallbackToLogsOnError
";
    let s = parse(yaml).unwrap();
    assert_eq!(s.memory_mib, Some(128));
    assert_eq!(s.working_dir.as_deref(), Some("/srv"));
}

#[test]
fn timeout_seconds_zero_is_the_default() {
    let yaml = MINIMAL.replace(
        "      containers:",
        "      timeoutSeconds: 0\n      responseStartTimeoutSeconds: 0\n      containers:",
    );
    let s = parse(&yaml).unwrap();
    assert_eq!(s.timeout, std::time::Duration::from_secs(300));
    assert_eq!(s.response_start_timeout, None);
    let yaml = MINIMAL.replace(
        "      containers:",
        "      timeoutSeconds: 600\n      containers:",
    );
    assert_eq!(
        parse(&yaml).unwrap().timeout,
        std::time::Duration::from_secs(600)
    );
}

#[test]
fn invalid_values_are_refused_with_a_reason() {
    let cases: &[(&str, &str, &str)] = &[
        ("apiVersion: serving.knative.dev/v1", "apiVersion: v1", "apiVersion: \"v1\" is not supported"),
        ("kind: Service", "kind: Deployment", "kind: \"Deployment\" is not supported"),
        ("name: hello", "name: Hello_World", "metadata.name: \"Hello_World\" is not a valid name"),
        ("- image: greet.wasm", "- name: x", "spec.template.spec.containers[0].image: required field is missing"),
        ("      containers:", "      containerConcurrency: -1\n      containers:", "spec.template.spec.containerConcurrency: invalid value: integer `-1`, expected a non-negative integer"),
        ("      containers:", "      timeoutSeconds: 601\n      containers:", "spec.template.spec.timeoutSeconds: expected 0 <= 601 <= 600"),
        ("      containers:", "      idleTimeoutSeconds: 18446744073709551615\n      containers:", "spec.template.spec.idleTimeoutSeconds: expected 0 <= 18446744073709551615 <= 600"),
        ("      containers:", "      timeoutSeconds: 99999999999999999999999\n      containers:", "spec.template.spec.timeoutSeconds: invalid type"),
        ("  template:\n", "  template:\n    metadata:\n      annotations:\n        autoscaling.knative.dev/window: 99999999999999999999999h\n", "autoscaling.knative.dev/window"),
        ("      containers:", "      timeoutSeconds: \"30\"\n      containers:", "spec.template.spec.timeoutSeconds: invalid type: string \"30\", expected a non-negative integer"),
        ("      containers:", "      runtimeClassName: runc\n      containers:", "runtimeClassName: \"runc\" is not served here"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          resources:\n            limits:\n              memory: lots\n", "memory: \"lots\" is not a memory quantity"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          env:\n            - value: x\n", "env[0].name: required field is missing"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          imagePullPolicy: Sometimes\n", "containers[0].imagePullPolicy: \"Sometimes\" is not Always, IfNotPresent or Never"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          ports:\n            - containerPort: 70000\n", "containers[0].ports[0].containerPort: expected 1 <= 70000 <= 65535"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          ports:\n            - containerPort: 80\n            - containerPort: 81\n", "containers[0].ports: more than one container port is not allowed"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          readinessProbe:\n            httpGet:\n              path: /\n            exec:\n              command: [true]\n", "readinessProbe: expected exactly one handler"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          readinessProbe:\n            httpGett: {}\n", "containers[0].readinessProbe.httpGett: unknown field"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          readinessProbe:\n            httpGet:\n              path: ready now\n", "containers[0].readinessProbe.httpGet.path: \"ready now\" is not an absolute path"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          env:\n            - name: PORT\n              value: \"80\"\n", "containers[0].env[0].name: \"PORT\" is a reserved environment variable"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          env:\n            - name: A\n            - name: K_REVISION\n              value: x\n", "containers[0].env[1].name: \"K_REVISION\" is a reserved environment variable"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          ports:\n            - containerPort: 8012\n", "containers[0].ports[0].containerPort: 8012 is reserved by Knative"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          securityContext:\n            privileged: true\n", "securityContext.privileged: must not be true"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          env:\n            - name: A\n              valueFrom:\n                secretKeyRef: {name: s, key: k}\n", "env[0].valueFrom: ConfigMap and Secret references need a Kubernetes API"),
        ("      containers:", "      volumes:\n        - name: v\n      containers:", "spec.template.spec.volumes: volumes"),
    ];
    for (from, to, want) in cases {
        let yaml = MINIMAL.replace(from, to);
        let got = err(&yaml);
        assert!(got.contains(want), "{to:?}: got {got:?}, want {want:?}");
    }
    let traffic = format!("{MINIMAL}  traffic:\n    - latestRevision: true\n      percent: 50\n");
    assert!(err(&traffic).contains("percentages add up to 50, not 100"));
    let traffic = format!("{MINIMAL}  traffic:\n    - latestRevision: true\n      percent: 100\n      tag: a\n    - revisionName: hello-00001\n      percent: 0\n      tag: a\n");
    assert!(
        err(&traffic).contains("spec.traffic[1].tag: multiple definitions for \"a\""),
        "{}",
        err(&traffic)
    );
    let traffic = format!("{MINIMAL}  traffic:\n    - percent: 100\n");
    assert!(err(&traffic).contains("needs exactly one of revisionName and latestRevision"));
    assert!(matches!(parse("{not: [valid"), Err(ManifestError::Yaml(_))));
    assert_eq!(
        err("just a string"),
        "<root>: invalid type: string \"just a string\", expected a mapping"
    );
    let two = MINIMAL.replace(
        "        - image: greet.wasm\n",
        "        - image: a.wasm\n        - image: b.wasm\n",
    );
    assert!(err(&two).contains("exactly one container"));
    let window = MINIMAL.replace("    spec:\n", "    metadata:\n      annotations:\n        autoscaling.knative.dev/window: 2s\n    spec:\n");
    assert!(err(&window).contains("between 6s and 1h"));
}

/// The rest of Knative's autoscaling annotations, with its bounds
/// (`pkg/apis/autoscaling/annotation_validation.go`).
#[test]
fn knatives_whole_autoscaling_annotation_set() {
    let with = |annotations: &str| {
        MINIMAL.replace(
            "  template:\n",
            &format!("  template:\n    metadata:\n      annotations:\n{annotations}"),
        )
    };
    let a = "        autoscaling.knative.dev/";
    let ok = with(&format!(
        "{a}target-utilization-percentage: \"85\"\n{a}activation-scale: \"3\"\n{a}scale-to-zero-pod-retention-period: 1m5s\n{a}target-burst-capacity: \"-1\"\n{a}metric-aggregation-algorithm: weighted-exponential\n{a}max-scale: \"3\"\n"
    ));
    let s = parse(&ok).unwrap().autoscaling;
    assert_eq!(s.target_utilization_percentage, 85.0);
    assert_eq!(s.activation_scale, 3);
    assert_eq!(s.last_instance_retention, Duration::from_secs(65));
    let defaults = parse(MINIMAL).unwrap().autoscaling;
    assert_eq!(defaults.target_utilization_percentage, 70.0);
    for (annotations, want) in [
        (
            "target-utilization-percentage: \"0\"",
            "must be between 1 and 100",
        ),
        (
            "target-utilization-percentage: \"101\"",
            "must be between 1 and 100",
        ),
        (
            "activation-scale: \"1\"",
            "activation-scale]: must be greater than 1",
        ),
        (
            "target-burst-capacity: \"-2\"",
            "target-burst-capacity]: must be -1 or",
        ),
        (
            "scale-to-zero-pod-retention-period: 2h",
            "must be between 0s and 1h",
        ),
        (
            "metric-aggregation-algorithm: median",
            "must be linear or weighted-exponential",
        ),
    ] {
        let got = err(&with(&format!("{a}{annotations}\n")));
        assert!(got.contains(want), "{annotations}: {got}");
    }
    assert!(
        parse(&with("        flint.dev/snapshot: \"true\"\n"))
            .unwrap()
            .snapshot
    );
    let got = err(&with("        flint.dev/snapshot: \"yes\"\n"));
    assert!(
        got.contains("[flint.dev/snapshot]: must be true or false"),
        "{got}"
    );
    let got = err(&with(&format!(
        "{a}activation-scale: \"2\"\n{a}min-scale: \"3\"\n"
    )));
    assert!(
        got.contains("min-scale is greater than activation-scale"),
        "{got}"
    );
    let got = err(&with(&format!(
        "{a}activation-scale: \"4\"\n{a}max-scale: \"3\"\n"
    )));
    assert!(
        got.contains("max-scale is less than activation-scale"),
        "{got}"
    );
}

/// `ports[0]` (Knative's default 8080 when only named) and the readiness
/// probe's `httpGet` path (`/` when not given).
#[test]
fn a_declared_port_and_readiness_path_are_read() {
    use flint_gateway::manifest::ContainerPort;
    let s = parse(MINIMAL).unwrap();
    assert_eq!((s.port, s.readiness_path), (None, None));
    let with = |extra: &str| {
        parse(&MINIMAL.replace(
            "        - image: greet.wasm\n",
            &format!("        - image: greet.wasm\n{extra}"),
        ))
        .unwrap()
    };
    let s = with("          ports:\n            - name: http1\n");
    assert_eq!(
        s.port,
        Some(ContainerPort {
            number: 8080,
            h2c: false
        })
    );
    let s = with("          ports:\n            - containerPort: 9000\n              name: h2c\n          readinessProbe:\n            httpGet: {}\n");
    assert_eq!(
        s.port,
        Some(ContainerPort {
            number: 9000,
            h2c: true
        })
    );
    assert_eq!(s.readiness_path.as_deref(), Some("/"));
}

/// Kubernetes quantities may be bare numbers (`cpu: 1`, `memory:
/// 134217728`), as `kubectl apply` accepts them.
#[test]
fn quantities_may_be_numbers() {
    let yaml = MINIMAL.replace(
        "        - image: greet.wasm\n",
        "        - image: greet.wasm\n          resources:\n            limits:\n              cpu: 1\n              memory: 134217728\n",
    );
    assert_eq!(parse(&yaml).unwrap().memory_mib, Some(128));
    let yaml = MINIMAL.replace(
        "        - image: greet.wasm\n",
        "        - image: greet.wasm\n          resources:\n            limits:\n              memory: [1]\n",
    );
    assert_eq!(
        err(&yaml),
        "spec.template.spec.containers[0].resources.limits.memory: expected a quantity such as 128Mi or 1"
    );
}

/// Fields accepted for Knative's sake still have their Kubernetes shape,
/// and a wrong one is named by its path, inside lists too.
#[test]
fn wrongly_shaped_fields_are_named_by_path() {
    let cases: &[(&str, &str, &str)] = &[
        ("      containers:", "      imagePullSecrets: regcred\n      containers:", "spec.template.spec.imagePullSecrets: invalid type: string \"regcred\""),
        ("      containers:", "      imagePullSecrets:\n        - nam: regcred\n      containers:", "spec.template.spec.imagePullSecrets[0].nam: unknown field"),
        ("      containers:", "      enableServiceLinks: sometimes\n      containers:", "spec.template.spec.enableServiceLinks: invalid type: string \"sometimes\", expected a boolean"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          env:\n            - name: [A]\n", "spec.template.spec.containers[0].env[0].name: invalid type: sequence, expected a string"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          args: x\n", "spec.template.spec.containers[0].args: invalid type: string \"x\", expected a sequence"),
        ("        - image: greet.wasm\n", "        - image: greet.wasm\n          securityContext:\n            runAsUser: root\n", "spec.template.spec.containers[0].securityContext.runAsUser: invalid type: string \"root\", expected an integer"),
        ("  template:\n", "  traffic:\n    - percent: 100\n      latestRevision: yes please\n  template:\n", "spec.traffic[0].latestRevision: invalid type: string \"yes please\", expected a boolean"),
    ];
    for (from, to, want) in cases {
        let got = err(&MINIMAL.replace(from, to));
        assert!(got.starts_with(want), "{to:?}: got {got:?}, want {want:?}");
    }
}
