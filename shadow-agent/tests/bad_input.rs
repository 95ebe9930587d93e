//! Bad input to `run` and `whatif` with a shadow group — a command that does not exist, an
//! address already in use, caps larger than the host, a missing interface — is refused
//! with exit code 2 and an error naming the key, before anything is created: a watcher
//! polls for the group's first network namespace for the agent's whole life.

#[allow(dead_code)] // the shared topology is not used here
mod common;

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::Duration,
};

/// Run the agent with `args` + `--config CONFIG` while watching for `netns`; returns
/// (exit code, stderr, whether the namespace ever appeared).
fn run_watching(args: &[&str], config: &Path, netns: &str) -> (Option<i32>, String, bool) {
    let seen = Arc::new(AtomicBool::new(false));
    let done = Arc::new(AtomicBool::new(false));
    let path = Path::new("/run/netns").join(netns);
    let watcher = {
        let (seen, done) = (Arc::clone(&seen), Arc::clone(&done));
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                if path.exists() {
                    seen.store(true, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
        })
    };
    let out = Command::new(env!("CARGO_BIN_EXE_shadow-agent"))
        .args(args)
        .arg("--config")
        .arg(config)
        .output()
        .expect("agent");
    done.store(true, Ordering::Relaxed);
    let _ = watcher.join();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).to_string(),
        seen.load(Ordering::Relaxed),
    )
}

fn config(dir: &Path, name: &str, iface: &str, shadow_extra: &str, extra: &str) -> PathBuf {
    config_cmd(dir, name, iface, "[\"sleep\", \"30\"]", shadow_extra, extra)
}

fn config_cmd(
    dir: &Path,
    name: &str,
    iface: &str,
    command: &str,
    shadow_extra: &str,
    extra: &str,
) -> PathBuf {
    let p = dir.join(format!("{name}.toml"));
    std::fs::write(
        &p,
        format!(
            r#"
[mirror]
interface = "{iface}"
[[mirror.rules]]
dst = "198.18.99.2/32"

[shadow]
name = "{name}"
command = {command}
addresses = ["198.18.99.2/24"]
{shadow_extra}
{extra}
"#
        ),
    )
    .expect("config");
    p
}

#[test]
fn run_and_whatif_refuse_bad_input_before_creating_anything() {
    let tag = format!("{:x}", std::process::id() & 0xffff);
    let dir = std::env::temp_dir().join(format!("shdt{tag}-bad"));
    std::fs::create_dir_all(&dir).expect("dir");
    let _rm = common::RmDir(dir.clone());
    // `lo` exists in every namespace: the mirror's interface is fine unless said otherwise.
    let cases: Vec<(&str, Vec<&str>, PathBuf, &str)> = {
        let busy = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = busy.local_addr().expect("addr").port();
        std::mem::forget(busy); // held until the test process exits
        let n = |i: u32| format!("b{tag}{i}");
        vec![
            (
                "a command that does not exist",
                vec!["run", "--duration", "2"],
                config_cmd(&dir, &n(1), "lo", "[\"shdt-no-such-prog\"]", "", ""),
                "shadow.command: \"shdt-no-such-prog\" was not found",
            ),
            (
                "an address already in use",
                vec!["run", "--duration", "2"],
                config(
                    &dir,
                    &n(2),
                    "lo",
                    "",
                    &format!("[metrics]\nlisten = \"127.0.0.1:{port}\""),
                ),
                "metrics.listen: binding 127.0.0.1:",
            ),
            (
                "caps larger than the host",
                vec!["run", "--duration", "2"],
                config(&dir, &n(3), "lo", "cpu_cores = 4096.0", ""),
                "shadow.cpu_cores: 4096 is not within",
            ),
            (
                "a memory cap larger than the host",
                vec!["run", "--duration", "2"],
                config(&dir, &n(4), "lo", "memory_mb = 1073741824", ""),
                "shadow.memory_mb",
            ),
            (
                "a missing mirror interface",
                vec!["run", "--duration", "2"],
                config(&dir, &n(5), "shdt-absent9", "", ""),
                "\"shdt-absent9\" (mirror.interface) not found",
            ),
            (
                "a what-if candidate above the host's CPUs",
                vec!["whatif", "--duration", "2"],
                config(
                    &dir,
                    &n(6),
                    "lo",
                    "",
                    "[[shadow.whatif]]\nname = \"huge\"\ncpu_cores = 4096.0",
                ),
                "shadow.cpu_cores: 4096 is not within",
            ),
            (
                "a what-if candidate command that does not exist",
                vec!["whatif", "--duration", "2"],
                config(
                    &dir,
                    &n(7),
                    "lo",
                    "",
                    "[[shadow.whatif]]\nname = \"v2\"\ncommand = [\"shdt-no-such-server\"]",
                ),
                "shadow.command: \"shdt-no-such-server\" was not found",
            ),
            (
                "a what-if cpuset naming a CPU the host lacks",
                vec!["whatif", "--duration", "2"],
                config(
                    &dir,
                    &n(8),
                    "lo",
                    "",
                    "[[shadow.whatif]]\nname = \"pin\"\ncpuset = \"0-4095\"",
                ),
                "shadow.whatif[0].cpuset",
            ),
        ]
    };
    for (what, args, cfg, want) in cases {
        let name = cfg
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("name")
            .to_string();
        // run's group namespace, and whatif's baseline group namespace.
        let netns = if args[0] == "whatif" {
            format!("shd-w{}b-0", &name[..name.len().min(5)])
        } else {
            format!("shd-{name}-0")
        };
        let (code, stderr, seen) = run_watching(&args, &cfg, &netns);
        assert_eq!(code, Some(2), "{what}: {stderr}");
        assert!(stderr.contains(want), "{what}: {stderr}");
        assert!(!seen, "{what}: {netns} was created before the refusal");
    }
}
