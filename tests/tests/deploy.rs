//! The Kubernetes deployment, checked offline: `deploy/kubernetes/daemonset.yaml` against the
//! Kubernetes JSON schema with `kubernetes-validate` (PyPI, schemas bundled; installed by
//! `cargo xtask setup` into a venv), run in a fresh network namespace so nothing can be
//! fetched; deliberately broken copies must fail; the DaemonSet has what the agent needs; and
//! the Dockerfile builds the way the repository builds.

use std::path::{Path, PathBuf};
use std::process::Command;

use shadow_tests::harness::TestDir;

/// Where `cargo xtask setup` installs the validator (xtask/src/setup.rs `K8S_VALIDATE_VENV`).
const VENV: &str = "/opt/shadow-tools/kubernetes-validate-1.37.0";

fn repo(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)
}

fn venv_bin(name: &str) -> PathBuf {
    let p = Path::new(VENV).join("bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: the manifest validator (PyPI kubernetes-validate 1.37.0) is installed \
         by `cargo xtask setup`",
        p.display()
    );
    p
}

/// Runs the validator (strict: unknown fields are errors) on `file` with no network.
fn validate(file: &Path) -> (bool, String) {
    let out = Command::new("unshare")
        .arg("--net")
        .arg(venv_bin("kubernetes-validate"))
        .args(["--strict", "--no-warn"])
        .arg(file)
        .output()
        .expect("run unshare (util-linux) + kubernetes-validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

fn manifest_text() -> String {
    std::fs::read_to_string(repo("deploy/kubernetes/daemonset.yaml")).expect("daemonset.yaml")
}

#[test]
fn the_daemonset_validates_offline_against_the_kubernetes_schema() {
    let (ok, text) = validate(&repo("deploy/kubernetes/daemonset.yaml"));
    assert!(ok, "the manifest does not validate:\n{text}");
    for resource in ["namespace/shadow-system", "daemonset/shadow-agent"] {
        assert!(
            text.contains(&format!("passed for resource {resource}")),
            "{resource} was not validated:\n{text}"
        );
    }
}

#[test]
fn broken_copies_of_the_daemonset_fail_validation() {
    let good = manifest_text();
    let dir = TestDir::new("k8s");
    for (what, from, to, error) in [
        (
            "a misspelt field",
            "privileged: true",
            "privilegd: true",
            "'privilegd' was unexpected",
        ),
        (
            "a string where a boolean belongs",
            "hostPID: true",
            "hostPID: \"yes\"",
            "is not of type 'boolean'",
        ),
        (
            "a volume mount without its path",
            "mountPath: /sys/fs/bpf",
            "mountPathh: /sys/fs/bpf",
            "'mountPath' is a required property",
        ),
    ] {
        assert!(good.contains(from), "{from:?} is not in the manifest");
        let broken = dir.path().join("daemonset.yaml");
        std::fs::write(&broken, good.replacen(from, to, 1)).expect("write broken copy");
        let (ok, text) = validate(&broken);
        assert!(!ok, "{what} passed validation:\n{text}");
        assert!(
            text.contains(error),
            "{what}: expected {error:?} in:\n{text}"
        );
    }
}

/// The manifest's documents as JSON (PyYAML from the validator's venv).
fn manifest_json() -> Vec<serde_json::Value> {
    let out = Command::new(venv_bin("python"))
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(open(sys.argv[1])))))",
        ])
        .arg(repo("deploy/kubernetes/daemonset.yaml"))
        .output()
        .expect("run python");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON")
}

#[test]
fn the_daemonset_has_what_the_agent_needs() {
    let docs = manifest_json();
    let ds = docs
        .iter()
        .find(|d| d["kind"] == "DaemonSet")
        .expect("a DaemonSet");
    let pod = &ds["spec"]["template"]["spec"];
    assert_eq!(pod["hostNetwork"], true, "hostNetwork");
    assert_eq!(pod["hostPID"], true, "hostPID");
    let c = pod["containers"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "agent"))
        .expect("the agent container");
    assert_eq!(c["securityContext"]["privileged"], true, "privileged");
    for r in ["cpu", "memory"] {
        assert!(
            c["resources"]["requests"][r].is_string(),
            "no {r} request: {}",
            c["resources"]
        );
    }
    // Host paths mounted at the same place.
    let volumes = pod["volumes"].as_array().expect("volumes");
    let mounts = c["volumeMounts"].as_array().expect("volumeMounts");
    let mounted_from_host = |path: &str| {
        mounts.iter().any(|m| {
            m["mountPath"] == path
                && volumes
                    .iter()
                    .any(|v| v["name"] == m["name"] && v["hostPath"]["path"] == path)
        })
    };
    for path in ["/sys/fs/bpf", "/sys/kernel/tracing", "/sys/fs/cgroup"] {
        assert!(
            mounted_from_host(path),
            "{path} is not mounted from the host"
        );
    }
    // The config from the ConfigMap, at the path the agent is started with.
    let cfg_volume = volumes
        .iter()
        .find(|v| v["configMap"]["name"] == "shadow-agent")
        .expect("a volume from the ConfigMap shadow-agent");
    let cfg_mount = mounts
        .iter()
        .find(|m| m["name"] == cfg_volume["name"])
        .expect("the ConfigMap volume is mounted");
    let args: Vec<&str> = c["args"]
        .as_array()
        .expect("args")
        .iter()
        .filter_map(|a| a.as_str())
        .collect();
    let config = args
        .windows(2)
        .find(|w| w[0] == "--config")
        .map(|w| w[1])
        .expect("--config in the args");
    let dir = cfg_mount["mountPath"].as_str().expect("mountPath");
    assert_eq!(
        Path::new(config).parent(),
        Some(Path::new(dir)),
        "the config is read from the mounted ConfigMap"
    );
    // Liveness through the health endpoint on the port the shipped config listens on.
    let probe = &c["livenessProbe"]["httpGet"];
    assert_eq!(probe["path"], "/healthz", "{probe}");
    let agent_toml =
        std::fs::read_to_string(repo("deploy/kubernetes/agent.toml")).expect("agent.toml");
    let port = probe["port"].as_u64().expect("numeric probe port");
    assert!(
        agent_toml.contains(&format!("listen = \"0.0.0.0:{port}\"")),
        "the probe's port {port} is not the [metrics] listen port of agent.toml"
    );
}

/// The Dockerfile cannot be built here (no registry for base images); it is kept to the
/// build the repository really uses.
#[test]
fn the_dockerfile_builds_as_the_repository_does() {
    let text = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile at the root");
    let from: Vec<&str> = text
        .lines()
        .filter(|l| l.trim_start().starts_with("FROM "))
        .collect();
    assert!(from.len() >= 2, "not multi-stage: {from:?}");
    assert!(
        from.last()
            .is_some_and(|l| l.contains("debian") && l.contains("slim")),
        "the runtime stage is not Debian slim: {from:?}"
    );
    for must in [
        "rust-src",
        "nightly",
        "bpf-linker@0.10.4 --locked",
        "SHADOW_REQUIRE_EBPF=1",
        "cargo build --release -p shadow-agent",
        "COPY --from=build",
        "ENTRYPOINT [\"/usr/local/bin/shadow-agent\"]",
    ] {
        assert!(text.contains(must), "the Dockerfile lacks {must:?}");
    }
    // The image the DaemonSet runs is the one docs/kubernetes.md builds.
    let docs = std::fs::read_to_string(repo("docs/kubernetes.md")).expect("docs/kubernetes.md");
    assert!(manifest_text().contains("image: shadow-agent:latest"));
    assert!(
        docs.contains("docker build -t shadow-agent:latest ."),
        "docs"
    );
}
