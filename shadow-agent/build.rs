//! Compiles `shadow-ebpf` for `bpfel-unknown-none` with the nightly toolchain (aya-build) and
//! leaves one object per eBPF binary in OUT_DIR, embedded by `src/ebpf.rs`.
//!
//! When the eBPF toolchain (bpf-linker) is absent, empty stub objects are written instead so
//! `cargo check`/`clippy` of userspace work anywhere; loading a stub fails at run time with an
//! error that says so. `SHADOW_REQUIRE_EBPF=1` (set by `cargo xtask`) turns the absence into a
//! build error, so every real build and test uses the real objects.
use std::{env, fs, path::PathBuf};

use anyhow::{anyhow, Context as _};

/// Binaries of `shadow-ebpf`; keep in step with its Cargo.toml.
const EBPF_BINS: &[&str] = &["shadow-mirror", "shadow-acct", "shadow-discard"];

fn bpf_linker_present() -> bool {
    let exe = "bpf-linker";
    let in_path = env::var_os("PATH")
        .map(|p| env::split_paths(&p).any(|d| d.join(exe).is_file()))
        .unwrap_or(false);
    let in_cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .map(|d| d.join("bin").join(exe).is_file())
        .unwrap_or(false);
    in_path || in_cargo_home
}

fn main() -> anyhow::Result<()> {
    println!("cargo:rerun-if-env-changed=SHADOW_REQUIRE_EBPF");
    println!("cargo::rustc-check-cfg=cfg(shadow_ebpf_stub)");
    let out_dir = PathBuf::from(env::var_os("OUT_DIR").context("OUT_DIR not set")?);
    let require = env::var("SHADOW_REQUIRE_EBPF").is_ok_and(|v| v == "1");

    if !bpf_linker_present() {
        if require {
            return Err(anyhow!(
                "SHADOW_REQUIRE_EBPF=1 but bpf-linker is not installed; run `cargo xtask setup`"
            ));
        }
        println!(
            "cargo:warning=bpf-linker not found: writing stub eBPF objects (userspace check only; \
             run `cargo xtask setup` for a real build)"
        );
        for bin in EBPF_BINS {
            fs::write(out_dir.join(bin), [])?;
        }
        println!("cargo:rustc-cfg=shadow_ebpf_stub");
        return Ok(());
    }

    let meta = cargo_metadata::MetadataCommand::new()
        .no_deps()
        .exec()
        .context("cargo metadata")?;
    let pkg = meta
        .packages
        .into_iter()
        .find(|p| p.name.as_str() == "shadow-ebpf")
        .ok_or_else(|| anyhow!("shadow-ebpf package not found in the workspace"))?;
    let root = pkg
        .manifest_path
        .parent()
        .ok_or_else(|| anyhow!("shadow-ebpf manifest has no parent directory"))?;
    aya_build::build_ebpf(
        [aya_build::Package {
            name: pkg.name.as_str(),
            root_dir: root.as_str(),
            ..Default::default()
        }],
        aya_build::Toolchain::default(),
    )
}
