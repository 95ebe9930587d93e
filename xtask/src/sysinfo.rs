//! Pure parsers for what setup reads from the system (unit-tested below).

/// A capability bit we need, with its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    pub bit: u8,
    pub name: &'static str,
    pub why: &'static str,
}

/// The effective capabilities the tests and the agent need.
pub const REQUIRED_CAPS: [Cap; 3] = [
    Cap {
        bit: 39,
        name: "CAP_BPF",
        why: "load eBPF programs and create maps",
    },
    Cap {
        bit: 12,
        name: "CAP_NET_ADMIN",
        why: "create veth links, attach TC/XDP programs and qdiscs",
    },
    Cap {
        bit: 21,
        name: "CAP_SYS_ADMIN",
        why: "create namespaces and cgroups, mount bpffs/tracefs, read BPF state",
    },
];

/// The value of `Key:` in a `/proc/<pid>/status` text.
pub fn status_field<'a>(status: &'a str, key: &str) -> Option<&'a str> {
    status.lines().find_map(|line| {
        let (k, v) = line.split_once(':')?;
        (k == key).then(|| v.trim())
    })
}

/// The effective uid (second column of `Uid:`).
pub fn effective_uid(status: &str) -> Option<u32> {
    status_field(status, "Uid")?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// The `CapEff:` bitmask.
pub fn effective_caps(status: &str) -> Option<u64> {
    u64::from_str_radix(status_field(status, "CapEff")?, 16).ok()
}

/// The required capabilities missing from `cap_eff`.
pub fn missing_caps(cap_eff: u64) -> Vec<Cap> {
    REQUIRED_CAPS
        .iter()
        .copied()
        .filter(|c| cap_eff & (1u64 << c.bit) == 0)
        .collect()
}

/// `(major, minor, patch)` from a kernel release such as `6.18.44-fc-v669` or `5.15.0-91-generic`.
pub fn parse_kernel_release(release: &str) -> Option<(u32, u32, u32)> {
    let numeric: &str = release
        .trim()
        .split(|c: char| !(c.is_ascii_digit() || c == '.'))
        .next()?;
    let mut parts = numeric.split('.').filter(|p| !p.is_empty());
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    let patch = parts.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    Some((major, minor, patch))
}

/// One line of `/proc/self/mounts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: String,
    pub target: String,
    pub fstype: String,
}

/// Parses `/proc/self/mounts` (octal escapes such as `\040` decoded).
pub fn parse_mounts(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            Some(Mount {
                source: unescape_mount_field(fields.next()?),
                target: unescape_mount_field(fields.next()?),
                fstype: unescape_mount_field(fields.next()?),
            })
        })
        .collect()
}

/// Whether a filesystem of type `fstype` is mounted at `target`.
pub fn is_mounted(mounts: &[Mount], target: &str, fstype: &str) -> bool {
    mounts
        .iter()
        .any(|m| m.target == target && m.fstype == fstype)
}

fn unescape_mount_field(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' {
            if let Some(oct) = bytes.get(i + 1..i + 4) {
                if oct.iter().all(|b| (b'0'..=b'7').contains(b)) {
                    let value = oct
                        .iter()
                        .fold(0u32, |acc, b| acc * 8 + u32::from(b - b'0'));
                    if let Ok(value) = u8::try_from(value) {
                        out.push(value);
                        i += 4;
                        continue;
                    }
                }
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The toolchain names in `rustup toolchain list` output (none for "no installed toolchains").
pub fn toolchain_names(list: &str) -> Vec<&str> {
    list.lines()
        .filter(|line| !line.trim_start().starts_with("no installed"))
        .filter_map(|line| line.split_whitespace().next())
        .collect()
}

/// Whether `rustup toolchain list` output has the toolchain `name` (e.g. `nightly` matches
/// `nightly-x86_64-unknown-linux-gnu` but not the dated `nightly-2024-01-01-x86_64-...`).
pub fn has_toolchain(list: &str, name: &str) -> bool {
    list.lines().any(|line| {
        let Some(tc) = line.split_whitespace().next() else {
            return false;
        };
        if tc == name {
            return true;
        }
        match tc.strip_prefix(name).and_then(|r| r.strip_prefix('-')) {
            Some(rest) => !rest.starts_with(|c: char| c.is_ascii_digit()),
            None => false,
        }
    })
}

/// Whether `rustup component list --installed` output has `component` (with or without a
/// target suffix).
pub fn has_component(list: &str, component: &str) -> bool {
    list.lines().any(|line| {
        line.split_whitespace().next().is_some_and(|c| {
            c == component
                || c.strip_prefix(component)
                    .is_some_and(|rest| rest.starts_with('-'))
        })
    })
}

/// The version from `bpf-linker --version` output (`bpf-linker 0.10.4`).
pub fn parse_bpf_linker_version(output: &str) -> Option<&str> {
    output.lines().find_map(|line| {
        let mut words = line.split_whitespace();
        (words.next()? == "bpf-linker").then_some(())?;
        words.next().map(|v| v.trim_start_matches('v'))
    })
}

/// Whether a `dpkg-query -W -f='${Status}'` answer means installed (`install ok installed`,
/// also `hold ok installed`; not `deinstall ok config-files`).
pub fn dpkg_status_installed(status: &str) -> bool {
    let words: Vec<&str> = status.split_whitespace().collect();
    words.len() == 3 && words[1] == "ok" && words[2] == "installed"
}

#[cfg(test)]
mod tests {
    use super::*;

    const STATUS_ROOT: &str = "Name:\tcat\nUmask:\t0022\nState:\tR (running)\n\
        Uid:\t0\t0\t0\t0\nGid:\t0\t0\t0\t0\n\
        CapInh:\t0000000000000000\nCapPrm:\t000001fffeffffff\nCapEff:\t000001fffeffffff\n\
        CapBnd:\t000001fffeffffff\n";

    #[test]
    fn uid_and_caps_from_status() {
        assert_eq!(effective_uid(STATUS_ROOT), Some(0));
        assert_eq!(effective_caps(STATUS_ROOT), Some(0x1fffeffffff));
        assert!(missing_caps(0x1fffeffffff).is_empty());
        let nobody = "Uid:\t1000\t65534\t65534\t65534\nCapEff:\t0000000000000000\n";
        assert_eq!(effective_uid(nobody), Some(65534));
        assert_eq!(effective_caps(nobody), Some(0));
        let names: Vec<_> = missing_caps(0).iter().map(|c| c.name).collect();
        assert_eq!(names, ["CAP_BPF", "CAP_NET_ADMIN", "CAP_SYS_ADMIN"]);
        // All but CAP_BPF (an older kernel's full set, 0x3fffffffff).
        let names: Vec<_> = missing_caps(0x3f_ffff_ffff)
            .iter()
            .map(|c| c.name)
            .collect();
        assert_eq!(names, ["CAP_BPF"]);
        assert_eq!(effective_caps("Name:\tx\n"), None);
        assert_eq!(
            status_field("CapEffX:\t1\nCapEff:\t2\n", "CapEff"),
            Some("2")
        );
    }

    #[test]
    fn kernel_releases() {
        assert_eq!(parse_kernel_release("6.18.44-fc-v669"), Some((6, 18, 44)));
        assert_eq!(
            parse_kernel_release("5.15.0-91-generic\n"),
            Some((5, 15, 0))
        );
        assert_eq!(parse_kernel_release("6.6"), Some((6, 6, 0)));
        assert_eq!(parse_kernel_release("6.9.0+"), Some((6, 9, 0)));
        assert_eq!(parse_kernel_release("4.19.0_rc1"), Some((4, 19, 0)));
        assert_eq!(parse_kernel_release("garbage"), None);
        assert_eq!(parse_kernel_release("6"), None);
        assert!(parse_kernel_release("5.14.21").unwrap() < (5, 15, 0));
        assert!(parse_kernel_release("5.15.0").unwrap() >= (5, 15, 0));
        assert!(parse_kernel_release("5.100.1").unwrap() >= (5, 15, 0));
    }

    #[test]
    fn mounts() {
        let text = "sysfs /sys sysfs rw,nosuid 0 0\n\
            bpf /sys/fs/bpf bpf rw,relatime,mode=700 0 0\n\
            none /mnt/with\\040space tmpfs rw 0 0\n\
            tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n";
        let mounts = parse_mounts(text);
        assert_eq!(mounts.len(), 4);
        assert_eq!(mounts[2].target, "/mnt/with space");
        assert!(is_mounted(&mounts, "/sys/fs/bpf", "bpf"));
        assert!(!is_mounted(&mounts, "/sys/kernel/tracing", "tracefs"));
        assert!(!is_mounted(&mounts, "/sys", "bpf"));
        assert_eq!(unescape_mount_field("a\\134b"), "a\\b");
        assert_eq!(unescape_mount_field("trailing\\04"), "trailing\\04");
        assert_eq!(unescape_mount_field("x\\"), "x\\");
    }

    #[test]
    fn toolchains_and_components() {
        let list = "stable-x86_64-unknown-linux-gnu (active, default)\n\
            nightly-x86_64-unknown-linux-gnu\n1.95.0-x86_64-unknown-linux-gnu\n";
        assert!(has_toolchain(list, "nightly"));
        assert!(has_toolchain(list, "stable"));
        assert!(!has_toolchain(list, "beta"));
        assert!(!has_toolchain(
            "nightly-2024-01-01-x86_64-unknown-linux-gnu\n",
            "nightly"
        ));
        assert!(has_toolchain("nightly\n", "nightly"));
        assert_eq!(
            toolchain_names(list),
            [
                "stable-x86_64-unknown-linux-gnu",
                "nightly-x86_64-unknown-linux-gnu",
                "1.95.0-x86_64-unknown-linux-gnu"
            ]
        );
        assert!(toolchain_names("no installed toolchains\n").is_empty());
        assert!(!has_toolchain("no installed toolchains\n", "nightly"));
        assert!(!has_toolchain("nightlyx-foo\n", "nightly"));

        let comps = "cargo-x86_64-unknown-linux-gnu\nrust-src\nrustc-x86_64-unknown-linux-gnu\n";
        assert!(has_component(comps, "rust-src"));
        assert!(has_component(comps, "rustc"));
        assert!(!has_component(comps, "rust-std"));
        assert!(!has_component("rust-src-extra-thing\n", "rust-srcx"));
    }

    #[test]
    fn bpf_linker_versions() {
        assert_eq!(
            parse_bpf_linker_version("bpf-linker 0.10.4\n"),
            Some("0.10.4")
        );
        assert_eq!(
            parse_bpf_linker_version("bpf-linker v0.9.13"),
            Some("0.9.13")
        );
        assert_eq!(parse_bpf_linker_version("something else 1.0"), None);
        assert_eq!(parse_bpf_linker_version(""), None);
    }

    #[test]
    fn dpkg_statuses() {
        assert!(dpkg_status_installed("install ok installed"));
        assert!(dpkg_status_installed("hold ok installed"));
        assert!(!dpkg_status_installed("deinstall ok config-files"));
        assert!(!dpkg_status_installed("install ok half-configured"));
        assert!(!dpkg_status_installed(""));
    }
}
