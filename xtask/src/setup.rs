//! `cargo xtask setup`: check the prerequisites and install what is missing, idempotently.
//!
//! Things that cannot be installed (root, capabilities, kernel, BTF, the nightly toolchain)
//! fail with a [`PrereqError`](crate::prereq::PrereqError) (exit 2); the rest is installed and
//! named on one line each.

use std::fs;
use std::io::ErrorKind;
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context, Result};

use crate::prereq::missing;
use crate::sysinfo::{self, Mount};
use crate::util::{cargo_home, display_cmd, tail};

/// bpf-linker 0.10.x loads rustc's own libLLVM; 0.11+ needs a system LLVM we do not have.
pub const BPF_LINKER_VERSION: &str = "0.10.4";
/// Oldest kernel the agent supports (TC falls back from TCX to clsact below 6.6).
pub const MIN_KERNEL: (u32, u32, u32) = (5, 15, 0);
const TCX_KERNEL: (u32, u32, u32) = (6, 6, 0);
/// The mirror's TC programs call `bpf_loop` (5.17), its XDP counters `bpf_xdp_load_bytes`
/// (5.18); the agent probes for both before loading and refuses with the helper's name.
const MIRROR_KERNEL: (u32, u32, u32) = (5, 17, 0);
const MIRROR_XDP_KERNEL: (u32, u32, u32) = (5, 18, 0);
const BTF_PATH: &str = "/sys/kernel/btf/vmlinux";
/// Debian packages the integration tests and the demo use.
/// `chromium`: headless, it renders the HTML report in tests/tests/report.rs.
/// `python3-venv`: the virtual environment of the Kubernetes manifest validator.
/// `systemd`: `systemd-analyze verify` checks the host unit in tests/tests/deploy.rs.
/// `openssl`: the CA and server certificate of the stand-in Kubernetes API server in
/// shadow-agent/tests/allocate_kube.rs.
pub const DEB_PACKAGES: [&str; 13] = [
    "iproute2",
    "iperf3",
    "curl",
    "ethtool",
    "tcpdump",
    "bpftool",
    "python3",
    "python3-venv",
    "chromium",
    "nginx",
    "wrk",
    "systemd",
    "openssl",
];
/// The Kubernetes manifest validator (PyPI `kubernetes-validate`, which bundles the
/// Kubernetes JSON schemas, so validation needs no network) and where its venv lives; the
/// deploy test (tests/tests/deploy.rs) runs `<venv>/bin/kubernetes-validate`.
pub const K8S_VALIDATE_VERSION: &str = "1.37.0";
pub const K8S_VALIDATE_VENV: &str = "/opt/shadow-tools/kubernetes-validate-1.37.0";
/// Filesystems the agent needs: (fstype, mount point, name in messages).
const MOUNTS: [(&str, &str, &str); 2] = [
    ("bpf", "/sys/fs/bpf", "bpffs"),
    ("tracefs", "/sys/kernel/tracing", "tracefs"),
];

/// Runs every check, installs what is missing and prints what it installed.
pub fn setup() -> Result<()> {
    println!("setup: checking prerequisites (root, capabilities, kernel, BTF, nightly + rust-src, bpf-linker {BPF_LINKER_VERSION}, Debian packages, bpffs/tracefs, cargo-fuzz, kubernetes-validate)");
    let status = fs::read_to_string("/proc/self/status").context("reading /proc/self/status")?;
    check_root(&status)?;
    check_caps(&status)?;
    check_kernel()?;
    check_btf()?;

    let mut installed = Vec::new();
    ensure_nightly(&mut installed)?;
    ensure_bpf_linker(&mut installed)?;
    ensure_packages(&mut installed)?;
    ensure_mounts(&mut installed)?;
    ensure_cargo_fuzz(&mut installed)?;
    ensure_k8s_validate(&mut installed)?;

    if installed.is_empty() {
        println!("setup: nothing to install: all prerequisites present");
    } else {
        println!("setup: installed: {}", installed.join("; "));
    }
    Ok(())
}

fn check_root(status: &str) -> Result<()> {
    let euid = sysinfo::effective_uid(status).context("no Uid line in /proc/self/status")?;
    if euid != 0 {
        return missing(format!(
            "not running as root (effective uid is {euid}, root is 0): the Shadow tests and demo \
             create network namespaces, veth links and cgroups and load and attach eBPF programs, \
             which needs root. Fix: run it as root, e.g. `sudo -E env \"PATH=$PATH\" cargo xtask \
             setup` (keeping PATH so cargo and rustup are found) or from a root shell."
        ));
    }
    Ok(())
}

fn check_caps(status: &str) -> Result<()> {
    let cap_eff = sysinfo::effective_caps(status).context("no CapEff line in /proc/self/status")?;
    let lacking = sysinfo::missing_caps(cap_eff);
    if lacking.is_empty() {
        return Ok(());
    }
    let names: Vec<String> = lacking
        .iter()
        .map(|c| format!("{} (bit {}, needed to {})", c.name, c.bit, c.why))
        .collect();
    missing(format!(
        "running as root but without the effective capabilities {} (CapEff in /proc/self/status \
         is {cap_eff:016x}); this happens in unprivileged containers or under a capability-dropping \
         wrapper (CAP_BPF also needs Linux >= 5.8). Fix: run on the host as root, or start the \
         container with --privileged (or at least --cap-add=BPF --cap-add=NET_ADMIN \
         --cap-add=SYS_ADMIN), without capsh/setpriv dropping them.",
        names.join(", ")
    ))
}

fn check_kernel() -> Result<()> {
    let release = fs::read_to_string("/proc/sys/kernel/osrelease")
        .context("reading the kernel release (/proc/sys/kernel/osrelease)")?;
    let release = release.trim();
    let Some(version) = sysinfo::parse_kernel_release(release) else {
        return missing(format!(
            "cannot parse the kernel release `{release}` (expected MAJOR.MINOR[.PATCH]...), so \
             the kernel version (Shadow needs Linux >= {}.{}) cannot be checked. Fix: run on a \
             standard Linux kernel whose `uname -r` starts with its version.",
            MIN_KERNEL.0, MIN_KERNEL.1
        ));
    };
    if version < MIN_KERNEL {
        return missing(format!(
            "the kernel is {release} but Shadow needs Linux >= {}.{} (ring buffers, BTF and the \
             cgroup/TC hooks the agent uses; TCX needs 6.6, older kernels fall back to clsact). \
             Fix: boot a newer kernel (e.g. your distribution's current or HWE kernel) and run \
             the setup again.",
            MIN_KERNEL.0, MIN_KERNEL.1
        ));
    }
    if version < MIRROR_XDP_KERNEL {
        let what = if version < MIRROR_KERNEL {
            "the mirror cannot load (its TC programs call bpf_loop, Linux 5.17+)"
        } else {
            "the mirror's XDP counters cannot load (bpf_xdp_load_bytes, Linux 5.18+)"
        };
        println!(
            "setup: note: kernel {release}: {what}; the profiler, shadow group and allocator \
             work, but the demo and the test suite need the whole mirror (unless your \
             distribution backported the helpers: the agent probes for them)"
        );
    }
    if version < TCX_KERNEL {
        println!("setup: note: kernel {release} < 6.6 has no TCX; the agent attaches TC programs through clsact");
    }
    Ok(())
}

fn check_btf() -> Result<()> {
    if Path::new(BTF_PATH).exists() {
        return Ok(());
    }
    missing(format!(
        "{BTF_PATH} is missing: the kernel was built without BTF type information \
         (CONFIG_DEBUG_INFO_BTF=y), which the eBPF programs need for CO-RE relocations and \
         tp_btf hooks. Fix: boot a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution \
         kernels since 5.4 are); if sysfs is not mounted at /sys, mount it (`mount -t sysfs \
         sysfs /sys`)."
    ))
}

/// Output of a command that must succeed; `Ok(None)` when the program is not installed.
fn query(cmd: &mut Command) -> Result<Option<std::process::Output>> {
    match cmd.stdin(Stdio::null()).output() {
        Ok(out) => Ok(Some(out)),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e).with_context(|| format!("running `{}`", display_cmd(cmd))),
    }
}

/// Runs an install command, printing the one "installing ..." line; a failure is a
/// prerequisite error that shows the tail of the command's output.
fn install(what: &str, cmds: &mut [Command], fix: &str) -> Result<()> {
    let shown: Vec<String> = cmds.iter().map(display_cmd).collect();
    println!("installing {what} ({})...", shown.join(" && "));
    for (cmd, shown) in cmds.iter_mut().zip(&shown) {
        let spinner = crate::util::spinner(&format!("installing {what}: {shown}"));
        let out = cmd.stdin(Stdio::null()).output();
        spinner.finish_and_clear();
        let out = match out {
            Ok(out) => out,
            Err(e) => {
                return missing(format!(
                    "could not start `{shown}` to install {what}: {e}. Fix: {fix}"
                ))
            }
        };
        if !out.status.success() {
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("--- last lines of `{shown}` ---\n{}\n---", tail(&text, 25));
            return missing(format!(
                "installing {what} failed: `{shown}` exited with {} (its last output lines are \
                 above). Fix: {fix}",
                out.status
            ));
        }
    }
    Ok(())
}

fn ensure_nightly(installed: &mut Vec<String>) -> Result<()> {
    let Some(list) = query(Command::new("rustup").args(["toolchain", "list"]))? else {
        return missing(
            "rustup is not on PATH (nor in ~/.cargo/bin): it is needed to select the `nightly` \
             toolchain that builds the eBPF programs. Fix: install rustup and the stable and \
             nightly toolchains (with the rust-src component for nightly), then run `source \
             \"$HOME/.cargo/env\"` and the setup again.",
        );
    };
    let list = String::from_utf8_lossy(&list.stdout);
    if !sysinfo::has_toolchain(&list, "nightly") {
        return missing(format!(
            "the `nightly` rustup toolchain is not installed (rustup toolchain list shows: {}); \
             the eBPF crate needs it (-Z build-std, bpfel-unknown-none) and it cannot be \
             downloaded on this machine. Fix: on a machine with access to the Rust toolchain \
             servers run `rustup toolchain install nightly --component rust-src`; here, link an \
             unpacked nightly with `rustup toolchain link nightly /path/to/toolchain`.",
            match sysinfo::toolchain_names(&list) {
                names if names.is_empty() => "none".to_string(),
                names => names.join(", "),
            }
        ));
    }
    let components = || -> Result<bool> {
        let out = query(Command::new("rustup").args([
            "component",
            "list",
            "--toolchain",
            "nightly",
            "--installed",
        ]))?
        .context("rustup vanished")?;
        Ok(sysinfo::has_component(
            &String::from_utf8_lossy(&out.stdout),
            "rust-src",
        ))
    };
    if !components()? {
        let mut cmd = Command::new("rustup");
        cmd.args(["component", "add", "rust-src", "--toolchain", "nightly"]);
        install(
            "rust-src for the nightly toolchain",
            std::slice::from_mut(&mut cmd),
            "check that the nightly toolchain is intact and rustup can reach its component \
             source, then run `rustup component add rust-src --toolchain nightly` by hand.",
        )?;
        if !components()? {
            return missing(
                "`rustup component add rust-src --toolchain nightly` succeeded but rust-src is \
                 still not listed as installed for nightly. Fix: reinstall it by hand with \
                 `rustup component remove rust-src --toolchain nightly && rustup component add \
                 rust-src --toolchain nightly`.",
            );
        }
        installed.push("rust-src (nightly)".to_string());
    }
    Ok(())
}

/// The version of the `bpf-linker` first on PATH, or None when there is none.
fn bpf_linker_version() -> Result<Option<String>> {
    let Some(out) = query(Command::new("bpf-linker").arg("--version"))? else {
        return Ok(None);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    Ok(Some(
        sysinfo::parse_bpf_linker_version(&text)
            .unwrap_or("unknown")
            .to_string(),
    ))
}

fn ensure_bpf_linker(installed: &mut Vec<String>) -> Result<()> {
    let found = bpf_linker_version()?;
    if found.as_deref() == Some(BPF_LINKER_VERSION) {
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    cmd.args([
        "+nightly",
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
    ]);
    let what = match &found {
        Some(other) => {
            // Replace the other version (cargo would keep a newer one without --force).
            cmd.arg("--force");
            format!("bpf-linker {BPF_LINKER_VERSION} (replacing {other})")
        }
        None => format!("bpf-linker {BPF_LINKER_VERSION}"),
    };
    install(
        &what,
        std::slice::from_mut(&mut cmd),
        &format!(
            "check that crates.io is reachable and the nightly toolchain works, then run `cargo \
             +nightly install bpf-linker@{BPF_LINKER_VERSION} --locked` by hand (0.11+ needs a \
             system LLVM and is not an option)."
        ),
    )?;
    let now = bpf_linker_version()?;
    if now.as_deref() != Some(BPF_LINKER_VERSION) {
        return missing(format!(
            "bpf-linker {BPF_LINKER_VERSION} was installed into {} but `bpf-linker --version` \
             now reports {}. Fix: remove the other bpf-linker from PATH or put {} first on PATH.",
            cargo_home().join("bin").display(),
            now.as_deref().unwrap_or("nothing"),
            cargo_home().join("bin").display(),
        ));
    }
    installed.push(format!("bpf-linker {BPF_LINKER_VERSION}"));
    Ok(())
}

/// Whether `cargo +nightly fuzz` runs (the fuzz smoke step of `cargo xtask test`).
fn cargo_fuzz_present() -> Result<bool> {
    let out = query(Command::new("cargo").args(["+nightly", "fuzz", "--version"]))?;
    Ok(out.is_some_and(|o| o.status.success()))
}

/// cargo-fuzz (libFuzzer driver for fuzz/), installed once; any installed version will do.
fn ensure_cargo_fuzz(installed: &mut Vec<String>) -> Result<()> {
    if cargo_fuzz_present()? {
        return Ok(());
    }
    let mut cmd = Command::new("cargo");
    cmd.args(["install", "cargo-fuzz", "--locked"]);
    let fix = "check that crates.io is reachable, then run `cargo install cargo-fuzz --locked` \
               by hand and read its output.";
    install("cargo-fuzz", std::slice::from_mut(&mut cmd), fix)?;
    if !cargo_fuzz_present()? {
        return missing(format!(
            "cargo-fuzz was installed into {} but `cargo +nightly fuzz --version` still fails. \
             Fix: put {} on PATH.",
            cargo_home().join("bin").display(),
            cargo_home().join("bin").display(),
        ));
    }
    installed.push("cargo-fuzz".to_string());
    Ok(())
}

/// The packages of `DEB_PACKAGES` that dpkg does not list as installed.
fn missing_packages() -> Result<Vec<&'static str>> {
    let mut lacking = Vec::new();
    for pkg in DEB_PACKAGES {
        let Some(out) = query(Command::new("dpkg-query").args(["-W", "-f=${Status}", pkg]))? else {
            return missing(format!(
                "dpkg-query is not available, so this does not look like a Debian-based system; \
                 the tests and the demo need these tools: {}. Fix: install their equivalents \
                 with your package manager (tc/ip, iperf3, curl, ethtool, tcpdump, bpftool, \
                 python3, chromium), or use a Debian/Ubuntu machine.",
                DEB_PACKAGES.join(", ")
            ));
        };
        // Unknown packages make dpkg-query exit 1 with an empty status.
        if !sysinfo::dpkg_status_installed(&String::from_utf8_lossy(&out.stdout)) {
            lacking.push(pkg);
        }
    }
    Ok(lacking)
}

fn ensure_packages(installed: &mut Vec<String>) -> Result<()> {
    let lacking = missing_packages()?;
    if lacking.is_empty() {
        return Ok(());
    }
    let mut update = Command::new("apt-get");
    update.args(["update", "-qq"]);
    let mut inst = Command::new("apt-get");
    inst.env("DEBIAN_FRONTEND", "noninteractive")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&lacking);
    install(
        &format!("Debian packages {}", lacking.join(" ")),
        &mut [update, inst],
        &format!(
            "check that the Debian mirror is reachable and dpkg is not locked by another apt \
             run, then install them by hand: `apt-get update && apt-get install -y {}`.",
            lacking.join(" ")
        ),
    )?;
    let still = missing_packages()?;
    if !still.is_empty() {
        return missing(format!(
            "apt-get reported success but dpkg still does not list {} as installed. Fix: run \
             `apt-get install -y {}` by hand and read its output.",
            still.join(", "),
            still.join(" ")
        ));
    }
    installed.extend(lacking.iter().map(|p| format!("{p} (apt)")));
    Ok(())
}

fn read_mounts() -> Result<Vec<Mount>> {
    Ok(sysinfo::parse_mounts(
        &fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?,
    ))
}

fn ensure_mounts(installed: &mut Vec<String>) -> Result<()> {
    for (fstype, target, name) in MOUNTS {
        if sysinfo::is_mounted(&read_mounts()?, target, fstype) {
            continue;
        }
        if !Path::new(target).is_dir() {
            return missing(format!(
                "{target} does not exist, so {name} cannot be mounted there: the kernel lacks \
                 {name} support (CONFIG_BPF_SYSCALL for bpffs, CONFIG_TRACING for tracefs) or \
                 /sys is not sysfs. Fix: boot a kernel with {name} support and sysfs mounted on \
                 /sys."
            ));
        }
        let mut cmd = Command::new("mount");
        cmd.args(["-t", fstype, fstype, target]);
        println!("mounting {name} at {target} ({})...", display_cmd(&cmd));
        let out = cmd
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("running `{}`", display_cmd(&cmd)))?;
        if !out.status.success() || !sysinfo::is_mounted(&read_mounts()?, target, fstype) {
            return missing(format!(
                "{name} is not mounted at {target} and `{}` failed ({}: {}). Fix: mount it by \
                 hand as root (`mount -t {fstype} {fstype} {target}`), or in a container pass \
                 --privileged or bind-mount the host's {target}.",
                display_cmd(&cmd),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        installed.push(format!("{name} mounted at {target}"));
    }
    Ok(())
}

/// Whether the pinned kubernetes-validate runs from its venv.
fn k8s_validate_present() -> Result<bool> {
    let bin = Path::new(K8S_VALIDATE_VENV).join("bin/kubernetes-validate");
    let out = query(Command::new(&bin).arg("--version"))?;
    Ok(out.is_some_and(|o| {
        o.status.success()
            && String::from_utf8_lossy(&o.stdout)
                .split_whitespace()
                .any(|w| w == K8S_VALIDATE_VERSION)
    }))
}

/// kubernetes-validate (PyPI) in a venv of Debian's python3, pinned, installed once.
fn ensure_k8s_validate(installed: &mut Vec<String>) -> Result<()> {
    if k8s_validate_present()? {
        return Ok(());
    }
    let mut venv = Command::new("/usr/bin/python3");
    venv.args(["-m", "venv", "--clear", K8S_VALIDATE_VENV]);
    let mut pip = Command::new(Path::new(K8S_VALIDATE_VENV).join("bin/pip"));
    pip.args([
        "install",
        "--quiet",
        "--disable-pip-version-check",
        &format!("kubernetes-validate=={K8S_VALIDATE_VERSION}"),
    ]);
    let what = format!("kubernetes-validate {K8S_VALIDATE_VERSION} (PyPI) in {K8S_VALIDATE_VENV}");
    install(
        &what,
        &mut [venv, pip],
        &format!(
            "check that PyPI is reachable (`pip download kubernetes-validate=={K8S_VALIDATE_VERSION}`) \
             and that python3-venv is installed, then run `/usr/bin/python3 -m venv \
             {K8S_VALIDATE_VENV} && {K8S_VALIDATE_VENV}/bin/pip install \
             kubernetes-validate=={K8S_VALIDATE_VERSION}` by hand."
        ),
    )?;
    if !k8s_validate_present()? {
        return missing(format!(
            "kubernetes-validate was installed into {K8S_VALIDATE_VENV} but \
             `{K8S_VALIDATE_VENV}/bin/kubernetes-validate --version` does not report \
             {K8S_VALIDATE_VERSION}. Fix: remove {K8S_VALIDATE_VENV} and run the setup again."
        ));
    }
    installed.push(format!("kubernetes-validate {K8S_VALIDATE_VERSION}"));
    Ok(())
}
