//! Paths, environment and process helpers.

use std::env;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// The workspace root (the parent of the xtask crate).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives inside the workspace")
        .to_path_buf()
}

/// Cargo's target directory: `$CARGO_TARGET_DIR` when set, else `<root>/target`.
pub fn target_dir() -> PathBuf {
    match env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => {
            let dir = PathBuf::from(dir);
            if dir.is_absolute() {
                dir
            } else {
                workspace_root().join(dir)
            }
        }
        _ => workspace_root().join("target"),
    }
}

/// `$CARGO_HOME`, else `$HOME/.cargo`.
pub fn cargo_home() -> PathBuf {
    if let Some(home) = env::var_os("CARGO_HOME").filter(|h| !h.is_empty()) {
        return PathBuf::from(home);
    }
    let home = env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| OsString::from("/root"));
    PathBuf::from(home).join(".cargo")
}

/// Whether we run under CI (`CI=true` or `CI=1`).
pub fn is_ci() -> bool {
    matches!(
        env::var("CI").map(|v| v.to_ascii_lowercase()).as_deref(),
        Ok("true" | "1" | "yes")
    )
}

/// Prepares the environment every child process inherits:
/// - `~/.cargo/bin` first on PATH (bpf-linker, and the rustup proxies so `cargo +nightly` works),
///   and the sbin directories present (tc, ip, bpftool, mount live there on Debian);
/// - no `RUSTUP_TOOLCHAIN` inherited from the `cargo` that started us, so host builds use the
///   default toolchain and eBPF builds say `+nightly` explicitly.
pub fn prepare_child_env() {
    let path = env::var_os("PATH").unwrap_or_default();
    let new_path = child_path(&cargo_home().join("bin"), &path);
    // Edition 2021, single-threaded at this point: set_var is sound here.
    env::set_var("PATH", new_path);
    env::remove_var("RUSTUP_TOOLCHAIN");
    env::remove_var("RUSTUP_TOOLCHAIN_SOURCE");
    // Every build xtask starts embeds the real eBPF objects: shadow-agent's build.rs fails
    // instead of writing stubs when bpf-linker is missing.
    env::set_var("SHADOW_REQUIRE_EBPF", "1");
}

/// PATH with `cargo_bin` first (once) and the sbin directories appended when absent.
pub fn child_path(cargo_bin: &Path, path: &std::ffi::OsStr) -> OsString {
    let mut dirs: Vec<PathBuf> = vec![cargo_bin.to_path_buf()];
    for dir in env::split_paths(path) {
        if !dir.as_os_str().is_empty() && !dirs.contains(&dir) {
            dirs.push(dir);
        }
    }
    for extra in ["/usr/local/sbin", "/usr/sbin", "/sbin"] {
        let extra = PathBuf::from(extra);
        if !dirs.contains(&extra) {
            dirs.push(extra);
        }
    }
    env::join_paths(dirs).expect("PATH entries contain no ':'")
}

/// A shell-like rendering of a command, with the environment it sets, for messages.
pub fn display_cmd(cmd: &Command) -> String {
    let mut parts = Vec::new();
    for (key, value) in cmd.get_envs() {
        if let Some(value) = value {
            parts.push(format!(
                "{}={}",
                key.to_string_lossy(),
                quote(&value.to_string_lossy())
            ));
        }
    }
    parts.push(quote(&cmd.get_program().to_string_lossy()));
    parts.extend(cmd.get_args().map(|a| quote(&a.to_string_lossy())));
    parts.join(" ")
}

fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./=+@:,%".contains(c));
    if plain {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// "0.4s", "12.3s", "3m05s", "1h02m03s".
pub fn fmt_duration(d: Duration) -> String {
    let secs = d.as_secs();
    if secs < 60 {
        format!("{:.1}s", d.as_secs_f64())
    } else if secs < 3600 {
        format!("{}m{:02}s", secs / 60, secs % 60)
    } else {
        format!("{}h{:02}m{:02}s", secs / 3600, (secs / 60) % 60, secs % 60)
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Whether a progress spinner is drawn: only when stderr is a terminal (a person waits); CI
/// logs and pipes get the plain "installing ..." lines alone.
pub fn spinner_visible(stderr_is_terminal: bool, ci: bool) -> bool {
    stderr_is_terminal && !ci
}

/// A spinner on stderr with `msg` and the elapsed time while a long step runs (an install,
/// a build); hidden unless [`spinner_visible`]. Call `finish_and_clear` when the step ends.
pub fn spinner(msg: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal as _;
    if !spinner_visible(std::io::stderr().is_terminal(), is_ci()) {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::new_spinner();
    pb.set_style(
        indicatif::ProgressStyle::with_template("{spinner} [{elapsed_precise}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    pb.set_message(msg.to_owned());
    pb.enable_steady_tick(std::time::Duration::from_millis(120));
    pb
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn spinners_only_for_a_person_at_a_terminal() {
        assert!(super::spinner_visible(true, false));
        assert!(!super::spinner_visible(false, false));
        assert!(!super::spinner_visible(true, true));
    }

    #[test]
    fn durations() {
        assert_eq!(fmt_duration(Duration::from_millis(400)), "0.4s");
        assert_eq!(fmt_duration(Duration::from_millis(12_340)), "12.3s");
        assert_eq!(fmt_duration(Duration::from_secs(185)), "3m05s");
        assert_eq!(fmt_duration(Duration::from_secs(3723)), "1h02m03s");
    }

    #[test]
    fn path_puts_cargo_bin_first_once_and_adds_sbin() {
        let p = child_path(
            Path::new("/root/.cargo/bin"),
            OsStr::new("/usr/bin:/root/.cargo/bin:/bin:/usr/sbin"),
        );
        assert_eq!(
            p,
            OsString::from("/root/.cargo/bin:/usr/bin:/bin:/usr/sbin:/usr/local/sbin:/sbin")
        );
    }

    #[test]
    fn displays_commands_with_env_and_quotes() {
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "clippy", "--", "-D", "warnings", "a b"])
            .env("CARGO_TARGET_DIR", "/t/x");
        assert_eq!(
            display_cmd(&cmd),
            "CARGO_TARGET_DIR=/t/x cargo +nightly clippy -- -D warnings 'a b'"
        );
        let mut cmd = Command::new("dpkg-query");
        cmd.args(["-W", "-f=${Status}"]);
        assert_eq!(display_cmd(&cmd), "dpkg-query -W '-f=${Status}'");
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\nb\nc\n", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
        assert_eq!(tail("", 5), "");
    }
}
