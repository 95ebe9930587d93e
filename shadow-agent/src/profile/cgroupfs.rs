//! Memory level and pressure (PSI) of a tracked cgroup, read from cgroupfs.
//!
//! - cgroup v2 (`memory.current` in the cgroup2 directory): `memory.current`, `memory.stat`
//!   (`anon`, `file`, `pgfault`, `pgmajfault`).
//! - hybrid v1 + v2 (this kind of host: no memory controller on cgroup2): the v1 memory
//!   group with the same relative path: `memory.usage_in_bytes`, `memory.stat`
//!   (`total_rss`, `total_cache`, `total_pgfault`, `total_pgmajfault`, hierarchical).
//! - PSI: `cpu.pressure`, `memory.pressure`, `io.pressure` in the cgroup2 directory, where
//!   present (they work on cgroup2 without the controllers).

use std::path::{Path, PathBuf};

/// Which files serve the memory numbers.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "layout", content = "dir", rename_all = "snake_case")]
pub enum MemorySource {
    V2(PathBuf),
    V1(PathBuf),
}

/// Memory of one cgroup at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Memory {
    /// `memory.current` (v2) / `memory.usage_in_bytes` (v1): everything charged, page cache
    /// and kernel memory included.
    pub usage_bytes: u64,
    /// Anonymous memory (v2 `anon`, v1 `total_rss`).
    pub anon_bytes: u64,
    /// Page cache (v2 `file`, v1 `total_cache`).
    pub file_bytes: u64,
    /// Cumulative page faults and major faults as the memory controller counts them.
    pub pgfault: u64,
    pub pgmajfault: u64,
}

/// One line (`some` or `full`) of a `*.pressure` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct PsiLine {
    pub avg10: f64,
    pub avg60: f64,
    /// Cumulative stall time in microseconds.
    pub total_us: u64,
}

/// One `*.pressure` file.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Psi {
    pub some: PsiLine,
    /// Absent from `cpu.pressure` on old kernels.
    pub full: Option<PsiLine>,
}

/// The three pressure files, each where present.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Pressure {
    pub cpu: Option<Psi>,
    pub memory: Option<Psi>,
    pub io: Option<Psi>,
}

/// The memory files for the cgroup2 directory `unified_dir`. `cgroup_root` is the cgroupfs
/// mount (`/sys/fs/cgroup`); in the hybrid layout the v1 memory group has the same path
/// relative to `<root>/memory` as `unified_dir` has relative to `<root>/unified`.
pub fn memory_source(cgroup_root: &Path, unified_dir: &Path) -> Option<MemorySource> {
    if unified_dir.join("memory.current").is_file() {
        return Some(MemorySource::V2(unified_dir.to_owned()));
    }
    let rel = unified_dir
        .strip_prefix(cgroup_root.join(crate::sys::cgroup::UNIFIED_DIR))
        .ok()?;
    let v1 = cgroup_root.join("memory").join(rel);
    v1.join("memory.usage_in_bytes")
        .is_file()
        .then_some(MemorySource::V1(v1))
}

/// `key value` lines of a `memory.stat`.
pub fn stat_value(stat: &str, key: &str) -> Option<u64> {
    stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Current memory numbers; `None` when the files cannot be read (the cgroup is gone).
pub fn read_memory(src: &MemorySource) -> Option<Memory> {
    match src {
        MemorySource::V2(dir) => {
            let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
            Some(Memory {
                usage_bytes: read_u64(&dir.join("memory.current"))?,
                anon_bytes: stat_value(&stat, "anon").unwrap_or(0),
                file_bytes: stat_value(&stat, "file").unwrap_or(0),
                pgfault: stat_value(&stat, "pgfault").unwrap_or(0),
                pgmajfault: stat_value(&stat, "pgmajfault").unwrap_or(0),
            })
        }
        MemorySource::V1(dir) => {
            let stat = std::fs::read_to_string(dir.join("memory.stat")).ok()?;
            let v = |total: &str, local: &str| {
                stat_value(&stat, total)
                    .or_else(|| stat_value(&stat, local))
                    .unwrap_or(0)
            };
            Some(Memory {
                usage_bytes: read_u64(&dir.join("memory.usage_in_bytes"))?,
                anon_bytes: v("total_rss", "rss"),
                file_bytes: v("total_cache", "cache"),
                pgfault: v("total_pgfault", "pgfault"),
                pgmajfault: v("total_pgmajfault", "pgmajfault"),
            })
        }
    }
}

/// Parse a `*.pressure` file: `some avg10=.. avg60=.. avg300=.. total=..` (+ `full ...`).
pub fn parse_psi(text: &str) -> Option<Psi> {
    let line = |prefix: &str| -> Option<PsiLine> {
        let l = text.lines().find(|l| l.starts_with(prefix))?;
        let mut out = PsiLine::default();
        for kv in l.split_whitespace().skip(1) {
            let (k, v) = kv.split_once('=')?;
            match k {
                "avg10" => out.avg10 = v.parse().ok()?,
                "avg60" => out.avg60 = v.parse().ok()?,
                "total" => out.total_us = v.parse().ok()?,
                _ => {}
            }
        }
        Some(out)
    };
    Some(Psi {
        some: line("some ")?,
        full: line("full "),
    })
}

/// The pressure files of the cgroup2 directory `dir`, each where present.
pub fn read_pressure(dir: &Path) -> Pressure {
    let read = |f: &str| {
        std::fs::read_to_string(dir.join(f))
            .ok()
            .and_then(|t| parse_psi(&t))
    };
    Pressure {
        cpu: read("cpu.pressure"),
        memory: read("memory.pressure"),
        io: read("io.pressure"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!(
            "shadow-cgfs-{tag}-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).ok();
        d
    }

    #[test]
    fn parses_psi_with_and_without_full() {
        let p = parse_psi(
            "some avg10=11.91 avg60=39.58 avg300=24.23 total=141475664\n\
             full avg10=0.00 avg60=0.00 avg300=0.00 total=0\n",
        )
        .expect("psi");
        assert_eq!(p.some.avg10, 11.91);
        assert_eq!(p.some.total_us, 141_475_664);
        assert_eq!(p.full.map(|f| f.total_us), Some(0));
        let p = parse_psi("some avg10=1.00 avg60=0.00 avg300=0.00 total=5\n").expect("psi");
        assert!(p.full.is_none());
        assert!(parse_psi("garbage").is_none());
    }

    #[test]
    fn v2_layout_from_a_mimic_directory() {
        let root = scratch("v2");
        let dir = root.join("web");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("memory.current"), "1048576\n").unwrap();
        std::fs::write(
            dir.join("memory.stat"),
            "anon 524288\nfile 4096\npgfault 10\npgmajfault 2\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("memory.pressure"),
            "some avg10=0.50 avg60=0.10 avg300=0.00 total=42\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=7\n",
        )
        .unwrap();
        let src = memory_source(&root, &dir).expect("v2 source");
        assert_eq!(src, MemorySource::V2(dir.clone()));
        let m = read_memory(&src).expect("memory");
        assert_eq!(
            m,
            Memory {
                usage_bytes: 1_048_576,
                anon_bytes: 524_288,
                file_bytes: 4096,
                pgfault: 10,
                pgmajfault: 2
            }
        );
        let p = read_pressure(&dir);
        assert!(p.cpu.is_none() && p.io.is_none());
        assert_eq!(p.memory.map(|m| m.some.total_us), Some(42));
        std::fs::remove_dir_all(&root).ok();
    }

    #[test]
    fn hybrid_layout_maps_unified_to_v1_memory() {
        let root = scratch("v1");
        let unified = root.join("unified/a/b");
        let v1 = root.join("memory/a/b");
        std::fs::create_dir_all(&unified).unwrap();
        std::fs::create_dir_all(&v1).unwrap();
        std::fs::write(v1.join("memory.usage_in_bytes"), "8192\n").unwrap();
        std::fs::write(
            v1.join("memory.stat"),
            "cache 1\nrss 2\npgfault 3\npgmajfault 4\ntotal_cache 10\ntotal_rss 20\ntotal_pgfault 30\ntotal_pgmajfault 40\n",
        )
        .unwrap();
        let src = memory_source(&root, &unified).expect("v1 source");
        assert_eq!(src, MemorySource::V1(v1));
        let m = read_memory(&src).expect("memory");
        assert_eq!(m.usage_bytes, 8192);
        assert_eq!((m.anon_bytes, m.file_bytes), (20, 10));
        assert_eq!((m.pgfault, m.pgmajfault), (30, 40));
        assert!(memory_source(&root, &root.join("elsewhere")).is_none());
        std::fs::remove_dir_all(&root).ok();
    }
}
