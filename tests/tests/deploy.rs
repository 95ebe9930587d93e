//! The Kubernetes deployment, checked offline: `deploy/kubernetes/daemonset.yaml` against the
//! Kubernetes JSON schema with `kubernetes-validate` (PyPI, schemas bundled; installed by
//! `cargo xtask setup` into a venv), run in a fresh network namespace so nothing can be
//! fetched; deliberately broken copies must fail; the DaemonSet has what the agent needs; and
//! the Dockerfile builds the way the repository builds. The host unit
//! (`deploy/systemd/shadow-agent.service`) passes `systemd-analyze verify` and its commands
//! are ones the agent accepts.

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
    // The allocator's API access ([allocate.kubernetes]): its node, and a service account
    // that may read pods and patch their resize subresource, nothing more.
    let env = c["env"].as_array().expect("env");
    assert!(
        env.iter().any(|e| e["name"] == "NODE_NAME"
            && e["valueFrom"]["fieldRef"]["fieldPath"] == "spec.nodeName"),
        "NODE_NAME from spec.nodeName: {env:?}"
    );
    let sa = pod["serviceAccountName"]
        .as_str()
        .expect("serviceAccountName");
    let role = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRole")
        .expect("a ClusterRole");
    let rules: Vec<(String, String)> = role["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .flat_map(|r| {
            let res: Vec<String> = serde_json::from_value(r["resources"].clone()).unwrap();
            let verbs: Vec<String> = serde_json::from_value(r["verbs"].clone()).unwrap();
            res.into_iter()
                .flat_map(move |x| verbs.clone().into_iter().map(move |v| (x.clone(), v)))
        })
        .collect();
    let mut want = vec![
        ("pods".to_owned(), "get".to_owned()),
        ("pods".to_owned(), "list".to_owned()),
        ("pods/resize".to_owned(), "patch".to_owned()),
    ];
    let mut got = rules.clone();
    got.sort();
    want.sort();
    assert_eq!(got, want, "the agent's ClusterRole");
    let binding = docs
        .iter()
        .find(|d| d["kind"] == "ClusterRoleBinding")
        .expect("a ClusterRoleBinding");
    assert_eq!(binding["roleRef"]["name"], role["metadata"]["name"]);
    assert!(
        binding["subjects"].as_array().is_some_and(|s| s
            .iter()
            .any(|s| s["kind"] == "ServiceAccount" && s["name"] == sa)),
        "the binding's subjects: {}",
        binding["subjects"]
    );
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
    for path in [
        "/sys/fs/bpf",
        "/sys/kernel/tracing",
        "/sys/fs/cgroup",
        // The forecast history of agent.toml survives the pod.
        "/var/lib/shadow-agent",
    ] {
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
    // The forecast history is kept where the node keeps it.
    let agent_toml_text =
        std::fs::read_to_string(repo("deploy/kubernetes/agent.toml")).expect("agent.toml");
    assert!(
        agent_toml_text.contains("history_file = \"/var/lib/shadow-agent/"),
        "agent.toml does not keep the forecast history on the host path"
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

/// The agent binary the workspace's tests were built with (`target/<profile>/shadow-agent`,
/// beside this test's `deps/` directory).
fn agent_bin() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable");
    let bin = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .join("shadow-agent");
    assert!(
        bin.is_file(),
        "{} is missing: build the agent with the tests (cargo test --workspace, or cargo build \
         -p shadow-agent)",
        bin.display()
    );
    bin
}

/// `systemd-analyze verify` of `unit` (written as `shadow-agent.service` in a scratch
/// directory) with the install path of the binary replaced by this build's; its diagnostics.
fn verify_unit(unit: &str) -> String {
    let dir = TestDir::new("unit");
    let path = dir.path().join("shadow-agent.service");
    let bin = agent_bin();
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/shadow-agent", &bin.display().to_string()),
    )
    .expect("unit copy");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .output()
        .expect("run systemd-analyze (Debian package systemd, installed by cargo xtask setup)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success() || !text.is_empty(),
        "verify failed silently"
    );
    text
}

/// The unit's value of `key` (`Key=value` lines).
fn unit_value<'a>(unit: &'a str, key: &str) -> &'a str {
    unit.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("the unit has no {key}="))
}

#[test]
fn the_systemd_unit_verifies_and_runs_the_agent_as_documented() {
    let unit = std::fs::read_to_string(repo("deploy/systemd/shadow-agent.service"))
        .expect("deploy/systemd/shadow-agent.service");
    let diag = verify_unit(&unit);
    assert!(diag.trim().is_empty(), "systemd-analyze verify: {diag}");
    // The check can fail: a broken copy is reported.
    let broken = unit.replace("Restart=on-failure", "Restart=sometimes");
    let bd = verify_unit(&broken);
    assert!(
        bd.contains("shadow-agent.service:") && bd.contains("sometimes"),
        "a broken unit verified cleanly: {bd:?}"
    );

    // Reload is SIGHUP; a configuration error (exit 2) is not restarted in a loop; the
    // config path is the one the container image uses.
    let reload: Vec<&str> = unit_value(&unit, "ExecReload").split_whitespace().collect();
    assert_eq!(reload, ["/usr/local/bin/shadow-agent", "reload"]);
    assert_eq!(unit_value(&unit, "RestartPreventExitStatus"), "2");
    // Readiness: the agent notifies (shadow-agent/tests/reload.rs checks what and when).
    assert_eq!(unit_value(&unit, "Type"), "notify");
    // /var/lib/shadow-agent exists for the state the example config keeps there.
    assert_eq!(unit_value(&unit, "StateDirectory"), "shadow-agent");
    let example_toml =
        std::fs::read_to_string(repo("config/agent.example.toml")).expect("agent.example.toml");
    assert!(example_toml.contains("history_file = \"/var/lib/shadow-agent/"));
    let start: Vec<&str> = unit_value(&unit, "ExecStart").split_whitespace().collect();
    let pre: Vec<&str> = unit_value(&unit, "ExecStartPre")
        .split_whitespace()
        .collect();
    assert_eq!(start[0], "/usr/local/bin/shadow-agent");
    let config = start[start
        .iter()
        .position(|a| *a == "--config")
        .expect("--config")
        + 1];
    assert_eq!(pre[1..], ["check-config", config]);
    let dockerfile = std::fs::read_to_string(repo("Dockerfile")).expect("Dockerfile");
    assert!(
        dockerfile.contains(&format!("\"--config\", \"{config}\"")),
        "the unit's config path {config} differs from the image's"
    );

    // The agent's CLI accepts both command lines (the config path pointed at the example).
    let example = repo("config/agent.example.toml").display().to_string();
    let with_example = |args: &[&str]| -> Vec<String> {
        args[1..]
            .iter()
            .map(|a| {
                if *a == config {
                    example.clone()
                } else {
                    a.to_string()
                }
            })
            .collect()
    };
    let check = Command::new(agent_bin())
        .args(with_example(&pre))
        .output()
        .expect("check-config");
    assert!(
        check.status.success(),
        "ExecStartPre: {}",
        String::from_utf8_lossy(&check.stderr)
    );
    // `reload` parses (its --help), as ExecStart's arguments do.
    let parsed = Command::new(agent_bin())
        .args(&reload[1..])
        .arg("--help")
        .output()
        .expect("reload --help");
    assert!(
        parsed.status.success() && String::from_utf8_lossy(&parsed.stdout).contains("SIGHUP"),
        "ExecReload's arguments: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    let mut run = with_example(&start);
    run.push("--help".into());
    let parsed = Command::new(agent_bin())
        .args(&run)
        .output()
        .expect("run --help");
    assert!(
        parsed.status.success() && String::from_utf8_lossy(&parsed.stdout).contains("SIGHUP"),
        "ExecStart's arguments: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
}
