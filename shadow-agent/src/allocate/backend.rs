//! Reading and writing a group's limits: cgroup v1 and v2 behind one trait.
//!
//! | | v1 (hybrid host) | v2 |
//! |---|---|---|
//! | CPU quota | `cpu/<g>/cpu.cfs_quota_us` + `cpu.cfs_period_us` (-1: none) | `cpu.max` (`max 100000`) |
//! | CPU burst | `cpu/<g>/cpu.cfs_burst_us` where the kernel has it (5.14+) | `cpu.max.burst` |
//! | CPU usage | `cpuacct/<g>/cpuacct.usage` (ns), else cgroup2 `cpu.stat` `usage_usec` | `cpu.stat` `usage_usec` |
//! | throttling | `cpu/<g>/cpu.stat` `nr_periods`, `nr_throttled`, `throttled_time` (ns) | `cpu.stat` `nr_periods`, `nr_throttled`, `throttled_usec` |
//! | memory limit | `memory/<g>/memory.limit_in_bytes` (-1: none) | `memory.max` and `memory.high` |
//! | memory usage | `memory.usage_in_bytes` | `memory.current` |
//! | OOM / limit hits | `memory.oom_control` (`under_oom`, `oom_kill`), `memory.failcnt` | `memory.events` (`oom_kill`, `max`) |
//! | placement | `cpuset/<g>/cpuset.cpus`, parent's `cpuset.effective_cpus` | `cpuset.cpus`, parent's `cpuset.cpus.effective` |
//! | PSI | cgroup2 `<unified>/<g>/{cpu,memory}.pressure` where present | same directory |
//!
//! Optional files (PSI, usage, events) that are missing read as "unknown"; limit files that
//! are missing or unwritable are errors naming the file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::cpuset::CpuSet;
use super::policy::{Resource, Signals};
use super::{AllocateError, Result};
use crate::profile::cgroupfs::{parse_psi, Psi};
use crate::sys::cgroup::{Cgroup, CgroupLayout, CgroupRoot, Controller};

/// Which cgroup version a backend writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    V1,
    V2,
}

/// v1 `memory.limit_in_bytes` and friends at or above this mean "no limit".
pub const V1_UNLIMITED: u64 = 1 << 62;

/// The kernel's smallest CFS quota (µs).
pub const MIN_QUOTA_US: u64 = 1000;

/// The limits a group has now.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Limits {
    /// CPU quota in cores (None: unlimited).
    pub cpu_cores: Option<f64>,
    /// CFS period in µs.
    pub cpu_period_us: u64,
    /// CFS burst in µs: unused quota the group may carry into later periods (None: the
    /// kernel has no burst file).
    #[serde(default)]
    pub cpu_burst_us: Option<u64>,
    /// Memory limit in bytes (None: unlimited).
    pub memory_bytes: Option<u64>,
    /// v2 `memory.high` (None: `max`, or v1).
    pub memory_high_bytes: Option<u64>,
    /// CPUs allowed (None: no cpuset controller in this layout).
    pub cpuset: Option<CpuSet>,
}

/// Cumulative counters and levels read at one instant.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Sample {
    /// CPU time used, µs.
    pub cpu_usage_us: Option<u64>,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_us: u64,
    /// Memory charged now, bytes.
    pub memory_usage: Option<u64>,
    /// OOM kills so far (v2 `oom_kill`, v1 `oom_kill` where the kernel has it).
    pub oom_kills: u64,
    /// The group is under OOM now (v1 `under_oom`).
    pub under_oom: bool,
    /// Times the limit was hit (v1 `memory.failcnt`, v2 `memory.events` `max`).
    pub limit_hits: u64,
    pub psi_cpu: Option<Psi>,
    pub psi_memory: Option<Psi>,
}

impl Sample {
    /// The signals of the interval from `prev` to `self`, `elapsed_us` apart.
    /// Without `prev` only levels are known (memory usage, PSI avg10, under_oom).
    /// Returns (cpu, memory).
    pub fn signals_since(&self, prev: Option<&Sample>, elapsed_us: u64) -> (Signals, Signals) {
        let el = elapsed_us.max(1) as f64;
        let psi_some = |cur: &Option<Psi>, prev: Option<&Option<Psi>>| -> Option<f64> {
            let c = cur.as_ref()?;
            match prev.and_then(Option::as_ref) {
                Some(p) => {
                    Some(c.some.total_us.saturating_sub(p.some.total_us) as f64 / el * 100.0)
                }
                None => Some(c.some.avg10),
            }
        };
        let psi_full = |cur: &Option<Psi>, prev: Option<&Option<Psi>>| -> Option<f64> {
            let c = cur.as_ref()?.full?;
            match prev.and_then(|p| p.as_ref()?.full) {
                Some(p) => Some(c.total_us.saturating_sub(p.total_us) as f64 / el * 100.0),
                None => Some(c.avg10),
            }
        };
        let mut cpu = Signals {
            psi_some_avg10: psi_some(&self.psi_cpu, prev.map(|p| &p.psi_cpu)),
            psi_full_avg10: psi_full(&self.psi_cpu, prev.map(|p| &p.psi_cpu)),
            ..Signals::default()
        };
        let mut mem = Signals {
            usage: self.memory_usage.map(|b| b as f64),
            psi_some_avg10: psi_some(&self.psi_memory, prev.map(|p| &p.psi_memory)),
            psi_full_avg10: psi_full(&self.psi_memory, prev.map(|p| &p.psi_memory)),
            oom_events: u64::from(self.under_oom),
            ..Signals::default()
        };
        if let Some(p) = prev {
            if let (Some(c), Some(pc)) = (self.cpu_usage_us, p.cpu_usage_us) {
                cpu.usage = Some(c.saturating_sub(pc) as f64 / el);
            }
            let periods = self.nr_periods.saturating_sub(p.nr_periods);
            let throttled = self.nr_throttled.saturating_sub(p.nr_throttled);
            cpu.throttled_periods = throttled;
            cpu.throttled_cores =
                Some(self.throttled_us.saturating_sub(p.throttled_us) as f64 / el);
            if periods > 0 {
                cpu.throttled_ratio = Some(throttled as f64 / periods as f64);
            }
            mem.oom_events += self.oom_kills.saturating_sub(p.oom_kills);
            mem.limit_hits = self.limit_hits.saturating_sub(p.limit_hits);
        }
        (cpu, mem)
    }
}

/// One group's limits in one cgroup version.
pub trait Backend {
    /// v1 or v2.
    fn kind(&self) -> BackendKind;
    /// The group's name relative to the cgroup root (for logs and the audit).
    fn name(&self) -> &str;
    /// The limits now.
    fn read_limits(&self) -> Result<Limits>;
    /// Counters and levels now.
    fn read_sample(&self) -> Result<Sample>;
    /// CPUs the parent allows (None: no cpuset controller).
    fn available_cpus(&self) -> Result<Option<CpuSet>>;
    /// The control files a change of `resource` writes, in restore order.
    fn control_files(&self, resource: Resource) -> Vec<PathBuf>;
    /// Sets the CPU quota (None: unlimited), keeping `period_us`, and the CFS burst to
    /// `burst` × the quota (None: the group's own burst, lowered to the quota if above it,
    /// which the kernel requires; see [`bandwidth_writes`]).
    fn set_cpu(&self, cores: Option<f64>, period_us: u64, burst: Option<f64>) -> Result<()>;
    /// Sets the memory limit (None: unlimited).
    fn set_memory(&self, bytes: Option<u64>) -> Result<()>;
    /// Pins the group onto `cpus`.
    fn set_cpuset(&self, cpus: &CpuSet) -> Result<()>;
    /// The group's directories (one per hierarchy it was found in).
    fn dirs(&self) -> Vec<PathBuf>;
    /// A kubelet-owned group changed through the Kubernetes API (`allocate/kube.rs`).
    fn kube(&self) -> Option<&super::kube::KubeBackend> {
        None
    }
}

/// The ids of a group's directories now (None: that one is gone). Another value later
/// means the group was removed and made again (see [`super::state::dir_id`]).
pub fn incarnation(b: &(impl Backend + ?Sized)) -> Vec<Option<u64>> {
    b.dirs().iter().map(|d| super::state::dir_id(d)).collect()
}

impl<B: Backend + ?Sized> Backend for Box<B> {
    fn kind(&self) -> BackendKind {
        (**self).kind()
    }
    fn name(&self) -> &str {
        (**self).name()
    }
    fn read_limits(&self) -> Result<Limits> {
        (**self).read_limits()
    }
    fn read_sample(&self) -> Result<Sample> {
        (**self).read_sample()
    }
    fn available_cpus(&self) -> Result<Option<CpuSet>> {
        (**self).available_cpus()
    }
    fn control_files(&self, resource: Resource) -> Vec<PathBuf> {
        (**self).control_files(resource)
    }
    fn set_cpu(&self, cores: Option<f64>, period_us: u64, burst: Option<f64>) -> Result<()> {
        (**self).set_cpu(cores, period_us, burst)
    }
    fn set_memory(&self, bytes: Option<u64>) -> Result<()> {
        (**self).set_memory(bytes)
    }
    fn set_cpuset(&self, cpus: &CpuSet) -> Result<()> {
        (**self).set_cpuset(cpus)
    }
    fn dirs(&self) -> Vec<PathBuf> {
        (**self).dirs()
    }
    fn kube(&self) -> Option<&super::kube::KubeBackend> {
        (**self).kube()
    }
}

// ---- file helpers ----------------------------------------------------------------------------

/// Reads a control file.
pub fn read_text(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|source| AllocateError::Io {
        op: "read",
        path: path.to_owned(),
        source,
    })
}

/// Reads an optional file: `None` when it does not exist.
fn read_opt(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(t) => Ok(Some(t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(AllocateError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

/// Writes `value` to an existing control file in one write (never creates it). O_TRUNC is
/// harmless on cgroupfs (as with a shell's `>`) and keeps a mimic directory's regular files
/// exact.
pub fn write_text(path: &Path, value: &str) -> Result<()> {
    let io_err = |op| {
        move |source| AllocateError::Io {
            op,
            path: path.to_owned(),
            source,
        }
    };
    let mut file = OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)
        .map_err(io_err("open for writing"))?;
    file.write_all(value.as_bytes()).map_err(io_err("write"))
}

fn parse_u64(path: &Path, text: &str) -> Result<u64> {
    text.trim().parse().map_err(|_| AllocateError::Parse {
        path: path.to_owned(),
        value: text.trim().to_owned(),
        expected: "an unsigned integer",
    })
}

fn read_u64(path: &Path) -> Result<u64> {
    parse_u64(path, &read_text(path)?)
}

/// `key value` lines (cpu.stat, memory.events, memory.oom_control).
pub fn kv(text: &str, key: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == key).then(|| v.trim().parse().ok()).flatten()
    })
}

fn read_psi(path: &Path) -> Result<Option<Psi>> {
    // Some kernels refuse reads of *.pressure with EOPNOTSUPP when PSI is off: unknown.
    match fs::read_to_string(path) {
        Ok(t) => Ok(parse_psi(&t)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(None),
        Err(source) => Err(AllocateError::Io {
            op: "read",
            path: path.to_owned(),
            source,
        }),
    }
}

fn read_cpuset(path: &Path) -> Result<CpuSet> {
    let text = read_text(path)?;
    text.parse().map_err(|_| AllocateError::Parse {
        path: path.to_owned(),
        value: text.trim().to_owned(),
        expected: "a CPU list",
    })
}

fn available_from(candidates: &[PathBuf]) -> Result<Option<CpuSet>> {
    for p in candidates {
        if p.is_file() {
            let set = read_cpuset(p)?;
            if !set.is_empty() {
                return Ok(Some(set));
            }
        }
    }
    Ok(None)
}

fn existing_dir(dir: PathBuf, name: &str, controller: &'static str) -> Result<PathBuf> {
    if dir.is_dir() {
        Ok(dir)
    } else {
        Err(AllocateError::NoGroup {
            cgroup: name.to_owned(),
            controller,
            path: dir,
        })
    }
}

/// The CFS quota (µs) of `cores` at `period_us`, at least the kernel's minimum.
pub fn cores_to_quota(cores: f64, period_us: u64) -> u64 {
    ((cores * period_us as f64).round() as u64).max(MIN_QUOTA_US)
}

/// The CFS burst (µs) a group has after its quota is set to `quota` (µs, None: unlimited)
/// from a burst of `cur_burst`: `burst` × the quota, or without `burst` the group's own,
/// at most the quota; an unlimited quota leaves the burst alone.
pub fn burst_with(cur_burst: u64, quota: Option<u64>, burst: Option<f64>) -> u64 {
    match (quota, burst) {
        (None, _) => cur_burst,
        (Some(q), Some(f)) => ((f * q as f64).round() as u64).min(q),
        (Some(q), None) => cur_burst.min(q),
    }
}

/// One write of a change of CFS bandwidth.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandwidthWrite {
    /// The burst, µs.
    Burst(u64),
    /// The quota, µs (None: unlimited).
    Quota(Option<u64>),
}

/// The writes that take a group from its burst `cur_burst` (µs) to the quota `quota` (µs,
/// None: unlimited) with a burst of `burst` × the quota (None: keep the group's own burst),
/// in an order the kernel accepts at every write: it refuses any burst above the quota
/// (EINVAL), so a burst that must come down goes first, one that goes up goes last, and a
/// burst is never left above a lower quota. With an unlimited quota the burst is left alone
/// (it has nothing to bound).
pub fn bandwidth_writes(
    cur_burst: u64,
    quota: Option<u64>,
    burst: Option<f64>,
) -> Vec<BandwidthWrite> {
    let Some(q) = quota else {
        return vec![BandwidthWrite::Quota(None)];
    };
    let want = burst_with(cur_burst, Some(q), burst);
    let mut w = Vec::with_capacity(3);
    if want < cur_burst {
        w.push(BandwidthWrite::Burst(want));
    }
    w.push(BandwidthWrite::Quota(Some(q)));
    if want > cur_burst {
        w.push(BandwidthWrite::Burst(want));
    }
    w
}

/// Carries out [`bandwidth_writes`]: `burst_file` (None: the kernel has no burst, which is
/// then left out) and `quota` writing the quota file.
fn write_bandwidth(
    burst_file: Option<&Path>,
    quota: Option<u64>,
    burst: Option<f64>,
    write_quota: impl Fn(Option<u64>) -> Result<()>,
) -> Result<()> {
    let cur = match burst_file {
        Some(p) => read_u64(p)?,
        None => 0,
    };
    for w in bandwidth_writes(cur, quota, burst) {
        match (w, burst_file) {
            (BandwidthWrite::Quota(q), _) => write_quota(q)?,
            (BandwidthWrite::Burst(b), Some(p)) => write_text(p, &b.to_string())?,
            (BandwidthWrite::Burst(_), None) => {}
        }
    }
    Ok(())
}

/// `file` if it exists.
fn present(file: PathBuf) -> Option<PathBuf> {
    file.is_file().then_some(file)
}

/// A change of CPU writes the burst (if any) before and after the quota: it may have to come
/// down first and go up last (see [`bandwidth_writes`]); a restore, writing each file in
/// order, then passes through a state the kernel accepts, and the last write of the burst is
/// the one that counts.
fn cpu_control_files(burst: Option<PathBuf>, quota_files: Vec<PathBuf>) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = burst.iter().cloned().collect();
    v.extend(quota_files);
    v.extend(burst);
    v
}

// ---- v1 --------------------------------------------------------------------------------------

/// A group in the v1 hierarchies of a hybrid host.
#[derive(Debug, Clone)]
pub struct V1Backend {
    name: String,
    cpu: PathBuf,
    cpuacct: Option<PathBuf>,
    memory: PathBuf,
    cpuset: Option<PathBuf>,
    unified: Option<PathBuf>,
}

impl V1Backend {
    /// The existing group `name` under `root` (hybrid layout). The cpu and memory directories
    /// must exist; cpuacct, cpuset and the cgroup2 directory are used where present.
    pub fn new(root: &CgroupRoot, name: &str) -> Result<V1Backend> {
        crate::sys::cgroup::validate_name(name).map_err(|source| AllocateError::Cgroup {
            cgroup: name.to_owned(),
            source,
        })?;
        let ctrl = |c: Controller| root.controller_path(c).map(|p| p.join(name));
        let cpu = ctrl(Controller::Cpu).unwrap_or_else(|| root.path().join("cpu").join(name));
        let memory =
            ctrl(Controller::Memory).unwrap_or_else(|| root.path().join("memory").join(name));
        Ok(V1Backend {
            name: name.to_owned(),
            cpu: existing_dir(cpu, name, "cpu")?,
            memory: existing_dir(memory, name, "memory")?,
            cpuacct: ctrl(Controller::Cpuacct).filter(|p| p.is_dir()),
            cpuset: ctrl(Controller::Cpuset).filter(|p| p.is_dir()),
            unified: Some(root.unified_path().join(name)).filter(|p| p.is_dir()),
        })
    }
}

impl Backend for V1Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::V1
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_limits(&self) -> Result<Limits> {
        let period_path = self.cpu.join("cpu.cfs_period_us");
        let period = read_u64(&period_path)?;
        let quota_path = self.cpu.join("cpu.cfs_quota_us");
        let quota_text = read_text(&quota_path)?;
        let quota: i64 = quota_text
            .trim()
            .parse()
            .map_err(|_| AllocateError::Parse {
                path: quota_path.clone(),
                value: quota_text.trim().to_owned(),
                expected: "an integer (-1 for no quota)",
            })?;
        let mem = read_u64(&self.memory.join("memory.limit_in_bytes"))?;
        let cpuset = match &self.cpuset {
            Some(d) => Some(read_cpuset(&d.join("cpuset.cpus"))?),
            None => None,
        };
        let cpu_burst_us = present(self.cpu.join("cpu.cfs_burst_us"))
            .map(|p| read_u64(&p))
            .transpose()?;
        Ok(Limits {
            cpu_cores: (quota > 0 && period > 0).then(|| quota as f64 / period as f64),
            cpu_period_us: period,
            cpu_burst_us,
            memory_bytes: (mem < V1_UNLIMITED).then_some(mem),
            memory_high_bytes: None,
            cpuset,
        })
    }

    fn read_sample(&self) -> Result<Sample> {
        let stat = read_text(&self.cpu.join("cpu.stat"))?;
        let mut cpu_usage_us = None;
        if let Some(d) = &self.cpuacct {
            if let Some(t) = read_opt(&d.join("cpuacct.usage"))? {
                cpu_usage_us = Some(parse_u64(&d.join("cpuacct.usage"), &t)? / 1000);
            }
        }
        if cpu_usage_us.is_none() {
            if let Some(u) = &self.unified {
                if let Some(t) = read_opt(&u.join("cpu.stat"))? {
                    cpu_usage_us = kv(&t, "usage_usec");
                }
            }
        }
        let oom = read_opt(&self.memory.join("memory.oom_control"))?.unwrap_or_default();
        let usage = match read_opt(&self.memory.join("memory.usage_in_bytes"))? {
            Some(t) => Some(parse_u64(&self.memory.join("memory.usage_in_bytes"), &t)?),
            None => None,
        };
        let failcnt = match read_opt(&self.memory.join("memory.failcnt"))? {
            Some(t) => parse_u64(&self.memory.join("memory.failcnt"), &t)?,
            None => 0,
        };
        let (psi_cpu, psi_memory) = match &self.unified {
            Some(u) => (
                read_psi(&u.join("cpu.pressure"))?,
                read_psi(&u.join("memory.pressure"))?,
            ),
            None => (None, None),
        };
        Ok(Sample {
            cpu_usage_us,
            nr_periods: kv(&stat, "nr_periods").unwrap_or(0),
            nr_throttled: kv(&stat, "nr_throttled").unwrap_or(0),
            throttled_us: kv(&stat, "throttled_time").unwrap_or(0) / 1000,
            memory_usage: usage,
            oom_kills: kv(&oom, "oom_kill").unwrap_or(0),
            under_oom: kv(&oom, "under_oom").unwrap_or(0) != 0,
            limit_hits: failcnt,
            psi_cpu,
            psi_memory,
        })
    }

    fn available_cpus(&self) -> Result<Option<CpuSet>> {
        let Some(dir) = &self.cpuset else {
            return Ok(None);
        };
        let parent = dir.parent().unwrap_or(dir);
        available_from(&[
            parent.join("cpuset.effective_cpus"),
            parent.join("cpuset.cpus"),
        ])
    }

    fn control_files(&self, resource: Resource) -> Vec<PathBuf> {
        match resource {
            Resource::Cpu => cpu_control_files(
                present(self.cpu.join("cpu.cfs_burst_us")),
                vec![
                    self.cpu.join("cpu.cfs_period_us"),
                    self.cpu.join("cpu.cfs_quota_us"),
                ],
            ),
            Resource::Memory => vec![self.memory.join("memory.limit_in_bytes")],
            Resource::Cpuset => self.cpuset.iter().map(|d| d.join("cpuset.cpus")).collect(),
        }
    }

    fn set_cpu(&self, cores: Option<f64>, period_us: u64, burst: Option<f64>) -> Result<()> {
        let quota = cores.map(|c| cores_to_quota(c, period_us));
        let burst_file = present(self.cpu.join("cpu.cfs_burst_us"));
        write_bandwidth(burst_file.as_deref(), quota, burst, |q| {
            let value = q.map_or_else(|| "-1".to_owned(), |q| q.to_string());
            write_text(&self.cpu.join("cpu.cfs_quota_us"), &value)
        })
    }

    fn set_memory(&self, bytes: Option<u64>) -> Result<()> {
        let value = bytes.map_or_else(|| "-1".to_owned(), |b| b.to_string());
        write_text(&self.memory.join("memory.limit_in_bytes"), &value)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        let mut d = vec![self.cpu.clone(), self.memory.clone()];
        d.extend(
            self.cpuacct
                .iter()
                .chain(&self.cpuset)
                .chain(&self.unified)
                .cloned(),
        );
        d.sort();
        d.dedup();
        d
    }

    fn set_cpuset(&self, cpus: &CpuSet) -> Result<()> {
        match &self.cpuset {
            Some(d) => write_text(&d.join("cpuset.cpus"), &cpus.to_string()),
            None => Err(AllocateError::NoGroup {
                cgroup: self.name.clone(),
                controller: "cpuset",
                path: PathBuf::from("cpuset"),
            }),
        }
    }
}

// ---- v2 --------------------------------------------------------------------------------------

/// A group in a pure cgroup v2 hierarchy.
#[derive(Debug, Clone)]
pub struct V2Backend {
    name: String,
    dir: PathBuf,
    /// `memory.high` = `memory.max × high_ratio` (1.0: same as max).
    high_ratio: f64,
}

/// Default `memory.high / memory.max`: reclaim pressure (and a `high` event) shortly before the
/// hard limit.
pub const DEFAULT_HIGH_RATIO: f64 = 0.95;

impl V2Backend {
    /// The existing group `name` under the cgroup2 root of `root`.
    pub fn new(root: &CgroupRoot, name: &str) -> Result<V2Backend> {
        crate::sys::cgroup::validate_name(name).map_err(|source| AllocateError::Cgroup {
            cgroup: name.to_owned(),
            source,
        })?;
        let dir = existing_dir(root.unified_path().join(name), name, "cgroup2")?;
        Ok(V2Backend {
            name: name.to_owned(),
            dir,
            high_ratio: DEFAULT_HIGH_RATIO,
        })
    }

    /// Sets `memory.high / memory.max` (clamped to 0.5..=1.0).
    pub fn with_high_ratio(mut self, ratio: f64) -> V2Backend {
        self.high_ratio = if ratio.is_finite() {
            ratio.clamp(0.5, 1.0)
        } else {
            1.0
        };
        self
    }

    fn max_or(&self, file: &str) -> Result<Option<u64>> {
        let path = self.dir.join(file);
        let text = read_text(&path)?;
        match text.trim() {
            "max" => Ok(None),
            v => parse_u64(&path, v).map(Some),
        }
    }
}

impl Backend for V2Backend {
    fn kind(&self) -> BackendKind {
        BackendKind::V2
    }

    fn name(&self) -> &str {
        &self.name
    }

    fn read_limits(&self) -> Result<Limits> {
        let path = self.dir.join("cpu.max");
        let text = read_text(&path)?;
        let bad = || AllocateError::Parse {
            path: path.clone(),
            value: text.trim().to_owned(),
            expected: "\"QUOTA PERIOD\" or \"max PERIOD\"",
        };
        let mut parts = text.split_whitespace();
        let quota = parts.next().ok_or_else(bad)?;
        let period: u64 = match parts.next() {
            Some(p) => p.parse().map_err(|_| bad())?,
            None => 100_000,
        };
        let cpu_cores = match quota {
            "max" => None,
            q => {
                let q: u64 = q.parse().map_err(|_| bad())?;
                Some(q as f64 / period.max(1) as f64)
            }
        };
        let cpuset_file = self.dir.join("cpuset.cpus");
        let cpuset = if cpuset_file.is_file() {
            Some(read_cpuset(&cpuset_file)?)
        } else {
            None
        };
        let cpu_burst_us = present(self.dir.join("cpu.max.burst"))
            .map(|p| read_u64(&p))
            .transpose()?;
        Ok(Limits {
            cpu_cores,
            cpu_period_us: period,
            cpu_burst_us,
            memory_bytes: self.max_or("memory.max")?,
            // Informational only (decisions use memory.max): unreadable reads as unknown.
            memory_high_bytes: self.max_or("memory.high").ok().flatten(),
            cpuset,
        })
    }

    fn read_sample(&self) -> Result<Sample> {
        let stat = read_text(&self.dir.join("cpu.stat"))?;
        let events = read_opt(&self.dir.join("memory.events"))?.unwrap_or_default();
        let usage = match read_opt(&self.dir.join("memory.current"))? {
            Some(t) => Some(parse_u64(&self.dir.join("memory.current"), &t)?),
            None => None,
        };
        Ok(Sample {
            cpu_usage_us: kv(&stat, "usage_usec"),
            nr_periods: kv(&stat, "nr_periods").unwrap_or(0),
            nr_throttled: kv(&stat, "nr_throttled").unwrap_or(0),
            throttled_us: kv(&stat, "throttled_usec").unwrap_or(0),
            memory_usage: usage,
            oom_kills: kv(&events, "oom_kill").unwrap_or(0),
            under_oom: false,
            limit_hits: kv(&events, "max").unwrap_or(0),
            psi_cpu: read_psi(&self.dir.join("cpu.pressure"))?,
            psi_memory: read_psi(&self.dir.join("memory.pressure"))?,
        })
    }

    fn available_cpus(&self) -> Result<Option<CpuSet>> {
        if !self.dir.join("cpuset.cpus").is_file() {
            return Ok(None);
        }
        let parent = self.dir.parent().unwrap_or(&self.dir);
        available_from(&[
            parent.join("cpuset.cpus.effective"),
            parent.join("cpuset.cpus"),
        ])
    }

    fn control_files(&self, resource: Resource) -> Vec<PathBuf> {
        match resource {
            Resource::Cpu => cpu_control_files(
                present(self.dir.join("cpu.max.burst")),
                vec![self.dir.join("cpu.max")],
            ),
            Resource::Memory => {
                let mut v = vec![self.dir.join("memory.max")];
                if self.dir.join("memory.high").is_file() {
                    v.push(self.dir.join("memory.high"));
                }
                v
            }
            Resource::Cpuset => vec![self.dir.join("cpuset.cpus")],
        }
    }

    fn set_cpu(&self, cores: Option<f64>, period_us: u64, burst: Option<f64>) -> Result<()> {
        let quota = cores.map(|c| cores_to_quota(c, period_us));
        let burst_file = present(self.dir.join("cpu.max.burst"));
        write_bandwidth(burst_file.as_deref(), quota, burst, |q| {
            let value = match q {
                Some(q) => format!("{q} {period_us}"),
                None => format!("max {period_us}"),
            };
            write_text(&self.dir.join("cpu.max"), &value)
        })
    }

    fn set_memory(&self, bytes: Option<u64>) -> Result<()> {
        let (max, high) = match bytes {
            Some(b) => (
                b.to_string(),
                ((b as f64 * self.high_ratio) as u64).to_string(),
            ),
            None => ("max".to_owned(), "max".to_owned()),
        };
        // memory.high first: it may exceed memory.max, and if it cannot be written nothing
        // has changed yet.
        if self.dir.join("memory.high").exists() {
            write_text(&self.dir.join("memory.high"), &high)?;
        }
        write_text(&self.dir.join("memory.max"), &max)
    }

    fn dirs(&self) -> Vec<PathBuf> {
        vec![self.dir.clone()]
    }

    fn set_cpuset(&self, cpus: &CpuSet) -> Result<()> {
        write_text(&self.dir.join("cpuset.cpus"), &cpus.to_string())
    }
}

/// The backend for the existing group `name` in `root`'s layout.
pub fn open(root: &CgroupRoot, name: &str) -> Result<Box<dyn Backend + Send>> {
    Ok(match root.layout() {
        CgroupLayout::Unified => Box::new(V2Backend::new(root, name)?),
        CgroupLayout::Hybrid { .. } => Box::new(V1Backend::new(root, name)?),
    })
}

/// The backend for a group Shadow holds a guard of.
pub fn for_cgroup(group: &Cgroup) -> Result<Box<dyn Backend + Send>> {
    open(group.root(), group.name())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::cgroupfs::PsiLine;

    #[test]
    fn quota_conversion() {
        assert_eq!(cores_to_quota(0.5, 100_000), 50_000);
        assert_eq!(cores_to_quota(0.001, 100_000), MIN_QUOTA_US);
        assert_eq!(cores_to_quota(1.5, 50_000), 75_000);
    }

    #[test]
    fn bandwidth_writes_keep_the_burst_within_the_quota_at_every_write() {
        use BandwidthWrite::{Burst, Quota};
        // Lowering a quota below the group's own burst: the burst comes down first.
        assert_eq!(
            bandwidth_writes(40_000, Some(30_000), None),
            vec![Burst(30_000), Quota(Some(30_000))]
        );
        // Raising it with a burst of the whole quota: the burst goes up last.
        assert_eq!(
            bandwidth_writes(30_000, Some(80_000), Some(1.0)),
            vec![Quota(Some(80_000)), Burst(80_000)]
        );
        assert_eq!(
            bandwidth_writes(80_000, Some(20_000), Some(0.5)),
            vec![Burst(10_000), Quota(Some(20_000))]
        );
        // A burst that already fits is not written; an unlimited quota leaves it alone.
        assert_eq!(
            bandwidth_writes(5_000, Some(20_000), None),
            vec![Quota(Some(20_000))]
        );
        assert_eq!(bandwidth_writes(5_000, None, Some(1.0)), vec![Quota(None)]);
        assert_eq!(burst_with(5_000, None, Some(1.0)), 5_000);

        // Every start the kernel accepts (burst <= quota, or an unlimited quota), every target:
        // each write leaves a state the kernel accepts, and the end is the burst asked for.
        let quotas = [None, Some(1_000), Some(7_000), Some(30_000), Some(100_000)];
        let bursts = [0, 500, 7_000, 30_000, 100_000];
        let fracs = [None, Some(0.0), Some(0.25), Some(1.0)];
        for q0 in quotas {
            for b0 in bursts.into_iter().filter(|b| q0.is_none_or(|q| *b <= q)) {
                for q1 in quotas {
                    for f in fracs {
                        let (mut q, mut b) = (q0, b0);
                        for w in bandwidth_writes(b0, q1, f) {
                            match w {
                                Burst(v) => b = v,
                                Quota(v) => q = v,
                            }
                            assert!(
                                q.is_none_or(|q| b <= q),
                                "{q0:?}/{b0} -> {q1:?} at {f:?}: burst {b} above quota {q:?}"
                            );
                        }
                        assert_eq!((q, b), (q1, burst_with(b0, q1, f)));
                    }
                }
            }
        }
    }

    #[test]
    fn signals_from_two_samples() {
        let psi = |total| {
            Some(Psi {
                some: PsiLine {
                    avg10: 1.0,
                    avg60: 0.0,
                    total_us: total,
                },
                full: None,
            })
        };
        let a = Sample {
            cpu_usage_us: Some(1_000_000),
            nr_periods: 100,
            nr_throttled: 10,
            memory_usage: Some(1000),
            oom_kills: 1,
            limit_hits: 5,
            psi_cpu: psi(0),
            ..Sample::default()
        };
        let b = Sample {
            cpu_usage_us: Some(1_500_000),
            nr_periods: 110,
            nr_throttled: 18,
            memory_usage: Some(2000),
            oom_kills: 3,
            limit_hits: 5,
            psi_cpu: psi(250_000),
            ..Sample::default()
        };
        let (cpu, mem) = b.signals_since(Some(&a), 1_000_000);
        assert_eq!(cpu.usage, Some(0.5));
        assert_eq!(cpu.throttled_periods, 8);
        assert_eq!(cpu.throttled_ratio, Some(0.8));
        assert_eq!(cpu.psi_some_avg10, Some(25.0));
        assert_eq!(mem.usage, Some(2000.0));
        assert_eq!(mem.oom_events, 2);
        assert_eq!(mem.limit_hits, 0);
        // First sample: levels only.
        let (cpu, mem) = b.signals_since(None, 1);
        assert_eq!(cpu.usage, None);
        assert_eq!(cpu.psi_some_avg10, Some(1.0));
        assert_eq!(mem.oom_events, 0);
    }
}
