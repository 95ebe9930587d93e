//! Snapshot of the host state the test suite may change, and the diff that finds leftovers.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// Prefix of every cgroup the tests create.
pub const CGROUP_PREFIX: &str = "shdt";
/// Name prefixes of BPF programs that belong to Shadow or its tests (names are cut to 15 bytes
/// by the kernel, so `sched_switch` programs show as `sched_switch...` truncated).
pub const BPF_PROG_PREFIXES: [&str; 3] = ["shadow_", "sched_sw", "shdt"];
/// How deep below /sys/fs/cgroup/<hierarchy> to look.
pub const CGROUP_DEPTH: usize = 3;

/// What the suite could leave behind, each as a set of displayable keys.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Snapshot {
    /// Names in /run/netns.
    pub netns: BTreeSet<String>,
    /// Names in /sys/class/net (host namespace).
    pub links: BTreeSet<String>,
    /// Paths of `shdt*` cgroup directories.
    pub cgroups: BTreeSet<String>,
    /// Shadow BPF programs, as `name (id N, type)`.
    pub bpf_progs: BTreeSet<String>,
    /// Host links carrying a clsact qdisc.
    pub clsact: BTreeSet<String>,
}

/// One thing present after the suite that was not there before.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    pub kind: &'static str,
    pub item: String,
    pub cleanup: String,
}

impl std::fmt::Display for Leftover {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} (clean up: {})",
            self.kind, self.item, self.cleanup
        )
    }
}

impl Snapshot {
    /// Reads the current host state. Needs root for the BPF part (bpftool).
    pub fn take() -> Result<Snapshot> {
        Ok(Snapshot {
            netns: dir_names(Path::new("/run/netns"))?,
            links: dir_names(Path::new("/sys/class/net"))?,
            cgroups: find_cgroups(Path::new("/sys/fs/cgroup"), CGROUP_PREFIX, CGROUP_DEPTH + 1),
            bpf_progs: shadow_bpf_progs()?,
            clsact: clsact_links()?,
        })
    }
}

/// Everything in `after` that is not in `before`.
pub fn diff(before: &Snapshot, after: &Snapshot) -> Vec<Leftover> {
    let mut out = Vec::new();
    let mut add = |kind: &'static str,
                   b: &BTreeSet<String>,
                   a: &BTreeSet<String>,
                   cleanup: &dyn Fn(&str) -> String| {
        for item in a.difference(b) {
            out.push(Leftover {
                kind,
                item: item.clone(),
                cleanup: cleanup(item),
            });
        }
    };
    add("network namespace", &before.netns, &after.netns, &|n| {
        format!("ip netns del {n}")
    });
    add("host link", &before.links, &after.links, &|n| {
        format!("ip link del {n}")
    });
    add("cgroup", &before.cgroups, &after.cgroups, &|p| {
        format!("move its processes out, then rmdir {p}")
    });
    add("BPF program", &before.bpf_progs, &after.bpf_progs, &|p| {
        let id = p
            .split_once("(id ")
            .and_then(|(_, r)| r.split([',', ')']).next())
            .unwrap_or("?");
        format!(
            "find what holds it (a pin under /sys/fs/bpf, an attachment, a live process): bpftool prog show id {id}"
        )
    });
    add("clsact qdisc on", &before.clsact, &after.clsact, &|d| {
        format!("tc qdisc del dev {d} clsact")
    });
    out
}

/// Entry names of a directory; a missing directory is empty.
fn dir_names(dir: &Path) -> Result<BTreeSet<String>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeSet::new()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", dir.display())),
    };
    let mut names = BTreeSet::new();
    for entry in entries {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        names.insert(entry.file_name().to_string_lossy().into_owned());
    }
    Ok(names)
}

/// Directories named `prefix*` below `root`, at most `max_depth` levels down (1 = children of
/// root). Symlinks are not followed (cgroup v1 has `cpu -> cpu,cpuacct` style links); unreadable
/// directories are skipped.
pub fn find_cgroups(root: &Path, prefix: &str, max_depth: usize) -> BTreeSet<String> {
    fn walk(dir: &Path, prefix: &str, depth: usize, max: usize, out: &mut BTreeSet<String>) {
        if depth > max {
            return;
        }
        let Ok(entries) = fs::read_dir(dir) else {
            return;
        };
        for entry in entries.flatten() {
            let Ok(ft) = entry.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let path = entry.path();
            if entry.file_name().to_string_lossy().starts_with(prefix) {
                out.insert(path.to_string_lossy().into_owned());
            }
            walk(&path, prefix, depth + 1, max, out);
        }
    }
    let mut out = BTreeSet::new();
    walk(root, prefix, 1, max_depth, &mut out);
    out
}

/// A BPF program as `bpftool -j prog show` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BpfProg {
    pub id: u64,
    pub name: String,
    pub prog_type: String,
}

impl BpfProg {
    fn key(&self) -> String {
        format!("{} (id {}, {})", self.name, self.id, self.prog_type)
    }
}

/// Parses `bpftool -j prog show` (a JSON array; empty output means no programs).
pub fn parse_bpftool_progs(json: &str) -> Result<Vec<BpfProg>> {
    if json.trim().is_empty() {
        return Ok(Vec::new());
    }
    let value: Value = serde_json::from_str(json).context("bpftool output is not JSON")?;
    let Value::Array(items) = value else {
        bail!("bpftool output is not a JSON array");
    };
    items
        .iter()
        .map(|item| {
            let id = item
                .get("id")
                .and_then(Value::as_u64)
                .with_context(|| format!("bpftool entry without a numeric id: {item}"))?;
            let text = |k: &str| {
                item.get(k)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            Ok(BpfProg {
                id,
                name: text("name"),
                prog_type: text("type"),
            })
        })
        .collect()
}

/// Whether a program name belongs to Shadow or its tests.
pub fn is_shadow_prog(name: &str) -> bool {
    BPF_PROG_PREFIXES.iter().any(|p| name.starts_with(p))
}

fn shadow_bpf_progs() -> Result<BTreeSet<String>> {
    let out = Command::new("bpftool")
        .args(["-j", "prog", "show"])
        .output()
        .context("running `bpftool -j prog show` (is bpftool installed? `cargo xtask setup` installs it)")?;
    if !out.status.success() {
        bail!(
            "`bpftool -j prog show` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let progs = parse_bpftool_progs(&String::from_utf8_lossy(&out.stdout))?;
    Ok(progs
        .iter()
        .filter(|p| is_shadow_prog(&p.name))
        .map(BpfProg::key)
        .collect())
}

/// Parses `tc -j qdisc show` into the devices that have a clsact qdisc.
pub fn parse_tc_clsact(json: &str) -> Result<BTreeSet<String>> {
    if json.trim().is_empty() {
        return Ok(BTreeSet::new());
    }
    let value: Value = serde_json::from_str(json).context("tc output is not JSON")?;
    let Value::Array(items) = value else {
        bail!("tc output is not a JSON array");
    };
    Ok(items
        .iter()
        .filter(|q| q.get("kind").and_then(Value::as_str) == Some("clsact"))
        .filter_map(|q| q.get("dev").and_then(Value::as_str).map(str::to_string))
        .collect())
}

fn clsact_links() -> Result<BTreeSet<String>> {
    let out = Command::new("tc")
        .args(["-j", "qdisc", "show"])
        .output()
        .context("running `tc -j qdisc show` (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!(
            "`tc -j qdisc show` failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    parse_tc_clsact(&String::from_utf8_lossy(&out.stdout))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn diff_lists_only_new_items() {
        let before = Snapshot {
            netns: set(&["keep"]),
            links: set(&["lo", "eth0"]),
            cgroups: set(&[]),
            bpf_progs: set(&["shadow_mirror (id 7, sched_cls)"]),
            clsact: set(&["eth0"]),
        };
        assert!(diff(&before, &before).is_empty());

        let mut after = before.clone();
        after.links.remove("eth0"); // gone is fine
        after.netns.insert("shdt-ns1".into());
        after.links.insert("shdt-veth0".into());
        after.cgroups.insert("/sys/fs/cgroup/unified/shdt-a".into());
        after
            .bpf_progs
            .insert("shadow_mirror (id 42, sched_cls)".into());
        after.clsact.insert("shdt-veth0".into());
        let left = diff(&before, &after);
        let shown: Vec<String> = left
            .iter()
            .map(|l| format!("{} {}", l.kind, l.item))
            .collect();
        assert_eq!(
            shown,
            [
                "network namespace shdt-ns1",
                "host link shdt-veth0",
                "cgroup /sys/fs/cgroup/unified/shdt-a",
                "BPF program shadow_mirror (id 42, sched_cls)",
                "clsact qdisc on shdt-veth0",
            ]
        );
        assert_eq!(left[0].cleanup, "ip netns del shdt-ns1");
        assert!(left[3].cleanup.ends_with("bpftool prog show id 42"));
        assert_eq!(left[4].cleanup, "tc qdisc del dev shdt-veth0 clsact");
        assert!(left[1].to_string().contains("ip link del shdt-veth0"));
    }

    #[test]
    fn bpftool_json() {
        let json = r#"[{"id":3,"type":"cgroup_skb","tag":"6deef7357e7b4530","gpl_compatible":true},
            {"id":42,"type":"sched_cls","name":"shadow_mirror","tag":"ab","loaded_at":1},
            {"id":43,"type":"tracepoint","name":"sched_switch_ac"},
            {"id":44,"type":"xdp","name":"shdt_test_xdp"},
            {"id":45,"type":"kprobe","name":"shadowy"}]"#;
        let progs = parse_bpftool_progs(json).unwrap();
        assert_eq!(progs.len(), 5);
        assert_eq!(progs[0].name, "");
        let ours: Vec<_> = progs
            .iter()
            .filter(|p| is_shadow_prog(&p.name))
            .map(BpfProg::key)
            .collect();
        assert_eq!(
            ours,
            [
                "shadow_mirror (id 42, sched_cls)",
                "sched_switch_ac (id 43, tracepoint)",
                "shdt_test_xdp (id 44, xdp)",
            ]
        );
        assert!(parse_bpftool_progs("").unwrap().is_empty());
        assert!(parse_bpftool_progs("[]").unwrap().is_empty());
        assert!(parse_bpftool_progs("{}").is_err());
        assert!(parse_bpftool_progs("Error: nope").is_err());
        assert!(parse_bpftool_progs(r#"[{"name":"x"}]"#).is_err());
    }

    #[test]
    fn tc_json() {
        let json = r#"[{"kind":"noqueue","handle":"0:","dev":"lo","root":true,"refcnt":2,"options":{}},
            {"kind":"clsact","handle":"ffff:","dev":"shdt-v0","parent":"ffff:fff1","options":{}},
            {"kind":"pfifo_fast","handle":"0:","dev":"eth0","root":true}]"#;
        assert_eq!(parse_tc_clsact(json).unwrap(), set(&["shdt-v0"]));
        assert!(parse_tc_clsact("").unwrap().is_empty());
        assert!(parse_tc_clsact("nope").is_err());
    }

    #[test]
    fn finds_prefixed_dirs_up_to_depth_without_following_symlinks() {
        let root = std::env::temp_dir().join(format!("xtask-cg-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        for d in [
            "unified/shdt-a/inner",
            "unified/system.slice/shdt-b",
            "memory/x/y/shdt-deep3",
            "memory/x/y/z/shdt-too-deep",
            "shdt-top",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("unified/shdt-file"), "").unwrap();
        std::os::unix::fs::symlink(root.join("unified"), root.join("link")).unwrap();

        let found = find_cgroups(&root, CGROUP_PREFIX, CGROUP_DEPTH + 1);
        let rel: Vec<String> = found
            .iter()
            .map(|p| {
                p.strip_prefix(&*root.to_string_lossy())
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(
            rel,
            [
                "/memory/x/y/shdt-deep3",
                "/shdt-top",
                "/unified/shdt-a",
                "/unified/system.slice/shdt-b",
            ]
        );
        assert!(find_cgroups(&root.join("missing"), "shdt", 4).is_empty());
        fs::remove_dir_all(&root).unwrap();
    }

    /// Removes what `snapshot_sees_real_leftovers` made, even when it panics.
    struct Cleanup {
        netns: String,
        link: String,
        cgroup: std::path::PathBuf,
    }

    impl Drop for Cleanup {
        fn drop(&mut self) {
            let quiet = |args: &[&str]| {
                let _ = Command::new(args[0])
                    .args(&args[1..])
                    .stderr(std::process::Stdio::null())
                    .status();
            };
            quiet(&["ip", "link", "del", &self.link]);
            quiet(&["ip", "netns", "del", &self.netns]);
            let _ = fs::remove_dir(&self.cgroup);
        }
    }

    fn sh(args: &[&str]) {
        let status = Command::new(args[0]).args(&args[1..]).status().unwrap();
        assert!(status.success(), "{args:?}: {status}");
    }

    /// Against the real host: a namespace, a veth pair with clsact and a shdt cgroup made
    /// after the first snapshot all show up in the diff, and nothing once removed.
    /// Needs root and iproute2; skipped otherwise (but not under CI).
    #[test]
    fn snapshot_sees_real_leftovers() {
        let status = fs::read_to_string("/proc/self/status").unwrap();
        if crate::sysinfo::effective_uid(&status) != Some(0) {
            assert!(!crate::util::is_ci(), "CI must run the tests as root");
            eprintln!("skipped: snapshot_sees_real_leftovers needs root");
            return;
        }
        let pid = std::process::id();
        let cg_root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.join("cgroup.procs").exists())
            .expect("a cgroup2 hierarchy");
        let guard = Cleanup {
            netns: format!("shdt-xtask-{pid}"),
            link: format!("shdtx{pid}a"),
            cgroup: cg_root.join(format!("shdt-xtask-{pid}")),
        };
        let peer = format!("shdtx{pid}b");

        let before = Snapshot::take().unwrap();
        sh(&["ip", "netns", "add", &guard.netns]);
        sh(&[
            "ip",
            "link",
            "add",
            &guard.link,
            "type",
            "veth",
            "peer",
            "name",
            &peer,
        ]);
        sh(&["tc", "qdisc", "add", "dev", &guard.link, "clsact"]);
        fs::create_dir(&guard.cgroup).unwrap();

        let after = Snapshot::take().unwrap();
        let shown: Vec<String> = diff(&before, &after)
            .iter()
            .map(|l| format!("{} {}", l.kind, l.item))
            .collect();
        let cg = guard.cgroup.to_string_lossy().into_owned();
        for expected in [
            format!("network namespace {}", guard.netns),
            format!("host link {}", guard.link),
            format!("host link {peer}"),
            format!("cgroup {cg}"),
            format!("clsact qdisc on {}", guard.link),
        ] {
            assert!(shown.contains(&expected), "{expected} not in {shown:?}");
        }

        drop(guard);
        let cleaned = Snapshot::take().unwrap();
        let ours: Vec<Leftover> = diff(&before, &cleaned)
            .into_iter()
            .filter(|l| l.item.contains(&pid.to_string()))
            .collect();
        assert!(ours.is_empty(), "{ours:?}");
    }

    #[test]
    fn missing_dir_is_empty() {
        assert!(dir_names(Path::new("/nonexistent/xtask/dir"))
            .unwrap()
            .is_empty());
    }
}
