//! Fixed-interval samples per tracked cgroup and the bounded in-memory store.
//!
//! A [`Sample`] is one JSON line of `shadow-agent profile --json` (schema in
//! `docs/profiler.md`): deltas over the interval for counters, levels for memory and PSI.

use std::{
    collections::{HashMap, VecDeque},
    path::{Path, PathBuf},
    time::Instant,
};

use shadow_common::acct::CgroupAcct;

use super::{
    cgroupfs::{self, Memory, MemorySource, Pressure},
    events::ProcRecord,
    hist::{self, Buckets, Quantiles},
    HookKind, Metric, ProfileError, Profiler,
};

#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct CpuSample {
    /// CPU time used in the interval (eBPF sched_switch accounting).
    pub usage_seconds: f64,
    /// `usage_seconds / interval_s` (1.0 = one full CPU).
    pub utilization: f64,
    /// Times a task of the cgroup was switched out.
    pub switches: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct FaultSample {
    /// Page faults in the interval (eBPF; what is counted depends on the hook, see `hooks`).
    pub total: u64,
    /// Major faults from eBPF: only with the kretprobe hook, `null` otherwise.
    pub major: Option<u64>,
    /// The memory controller's pgfault / pgmajfault deltas, where cgroupfs has them.
    pub memcg_total: Option<u64>,
    pub memcg_major: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct IoSample {
    pub read_bytes: u64,
    pub read_ops: u64,
    pub write_bytes: u64,
    pub write_ops: u64,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct NetSample {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct ProcSample {
    pub execs: u64,
    pub exits: u64,
    /// The exec/exit events of the interval that reached the agent.
    pub events: Vec<ProcRecord>,
}

/// Cumulative counts of everything dropped so far, anywhere on the path.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Drops {
    /// exec/exit events the kernel dropped (ring buffer full).
    pub ringbuf_full: u64,
    /// exec/exit events the agent dropped (channel full).
    pub channel_full: u64,
    /// Tasks whose run-queue latency could not be followed.
    pub rq_tasks_full: u64,
    /// Samples evicted from the store (oldest first).
    pub store_evicted: u64,
}

/// One interval of one tracked cgroup.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    /// Always `"sample"` (the first line of the stream has type `"hooks"`).
    #[serde(rename = "type")]
    pub kind: &'static str,
    /// Seconds since the profiler started, at the end of the interval.
    pub t_s: f64,
    pub interval_s: f64,
    /// The cgroup2 directory.
    pub cgroup: PathBuf,
    pub cgroup_id: u64,
    pub cpu: CpuSample,
    /// Run-queue latency quantiles of the interval (hdrhistogram over the kernel's log2
    /// buckets: each value is its bucket's midpoint).
    pub runq: Quantiles,
    pub faults: FaultSample,
    pub io: IoSample,
    pub net: NetSample,
    pub procs: ProcSample,
    /// Level at the end of the interval; `null` without a memory controller.
    pub memory: Option<Memory>,
    /// PSI at the end of the interval (each file where present).
    pub pressure: Pressure,
    pub drops: Drops,
}

/// A cgroup the sampler follows.
#[derive(Clone, Debug)]
pub struct TrackedCgroup {
    pub dir: PathBuf,
    pub id: u64,
    pub memory: Option<MemorySource>,
}

struct Prev {
    acct: CgroupAcct,
    rq: Buckets,
    mem: Option<Memory>,
}

/// Turns the profiler's cumulative counters into per-interval samples.
pub struct Sampler {
    cgroups: Vec<TrackedCgroup>,
    prev: HashMap<u64, Prev>,
    start: Instant,
    last: Instant,
    kret_faults: bool,
}

impl Sampler {
    /// Track every cgroup2 directory in `dirs` (network included). `cgroup_root` is the
    /// cgroupfs mount used to find v1 memory groups (`/sys/fs/cgroup`).
    pub fn new(
        prof: &mut Profiler,
        dirs: &[PathBuf],
        cgroup_root: &Path,
    ) -> Result<Sampler, ProfileError> {
        let mut cgroups = Vec::new();
        let mut prev = HashMap::new();
        for dir in dirs {
            let id = prof.track_dir(dir)?;
            let memory = cgroupfs::memory_source(cgroup_root, dir);
            prev.insert(
                id,
                Prev {
                    acct: prof.cgroup(id)?.unwrap_or_default(),
                    rq: prof
                        .rq_buckets(id)?
                        .unwrap_or([0; shadow_common::acct::RQ_BUCKETS]),
                    mem: memory.as_ref().and_then(cgroupfs::read_memory),
                },
            );
            cgroups.push(TrackedCgroup {
                dir: dir.clone(),
                id,
                memory,
            });
        }
        let kret_faults =
            prof.report(Metric::PageFaults).and_then(|r| r.hook) == Some(HookKind::Kretprobe);
        let now = Instant::now();
        Ok(Sampler {
            cgroups,
            prev,
            start: now,
            last: now,
            kret_faults,
        })
    }

    pub fn cgroups(&self) -> &[TrackedCgroup] {
        &self.cgroups
    }

    /// One sample per cgroup for the interval since the previous call. `events` are the
    /// exec/exit records received meanwhile (distributed by cgroup id).
    pub fn sample(
        &mut self,
        prof: &Profiler,
        events: Vec<ProcRecord>,
        drops: Drops,
    ) -> Result<Vec<Sample>, ProfileError> {
        let now = Instant::now();
        let interval = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let t_s = now.duration_since(self.start).as_secs_f64();
        let mut by_cg: HashMap<u64, Vec<ProcRecord>> = HashMap::new();
        for e in events {
            by_cg.entry(e.cgroup_id).or_default().push(e);
        }
        let mut out = Vec::with_capacity(self.cgroups.len());
        for cg in &self.cgroups {
            let acct = prof.cgroup(cg.id)?.unwrap_or_default();
            let rq = prof
                .rq_buckets(cg.id)?
                .unwrap_or([0; shadow_common::acct::RQ_BUCKETS]);
            let mem = cg.memory.as_ref().and_then(cgroupfs::read_memory);
            let p = self.prev.entry(cg.id).or_insert(Prev { acct, rq, mem });
            let d = acct.delta(&p.acct);
            let q = hist::quantiles(&hist::delta(&rq, &p.rq));
            let memcg = match (mem, p.mem) {
                (Some(m), Some(pm)) => Some((
                    m.pgfault.saturating_sub(pm.pgfault),
                    m.pgmajfault.saturating_sub(pm.pgmajfault),
                )),
                _ => None,
            };
            *p = Prev { acct, rq, mem };
            let usage_seconds = d.cpu_ns as f64 / 1e9;
            out.push(Sample {
                kind: "sample",
                t_s,
                interval_s: interval,
                cgroup: cg.dir.clone(),
                cgroup_id: cg.id,
                cpu: CpuSample {
                    usage_seconds,
                    utilization: if interval > 0.0 {
                        usage_seconds / interval
                    } else {
                        0.0
                    },
                    switches: d.switches,
                },
                runq: q,
                faults: FaultSample {
                    total: d.faults,
                    major: self.kret_faults.then_some(d.major_faults),
                    memcg_total: memcg.map(|m| m.0),
                    memcg_major: memcg.map(|m| m.1),
                },
                io: IoSample {
                    read_bytes: d.io_read_bytes,
                    read_ops: d.io_read_ops,
                    write_bytes: d.io_write_bytes,
                    write_ops: d.io_write_ops,
                },
                net: NetSample {
                    rx_bytes: d.net_rx_bytes,
                    rx_packets: d.net_rx_packets,
                    tx_bytes: d.net_tx_bytes,
                    tx_packets: d.net_tx_packets,
                },
                procs: ProcSample {
                    execs: d.execs,
                    exits: d.exits,
                    events: by_cg.remove(&cg.id).unwrap_or_default(),
                },
                memory: mem,
                pressure: cgroupfs::read_pressure(&cg.dir),
                drops,
            });
        }
        Ok(out)
    }
}

/// The bounded in-memory store: the newest `capacity` samples, oldest evicted first.
#[derive(Debug)]
pub struct Store {
    capacity: usize,
    samples: VecDeque<Sample>,
    evicted: u64,
}

impl Store {
    pub fn new(capacity: usize) -> Store {
        Store {
            capacity: capacity.max(1),
            samples: VecDeque::new(),
            evicted: 0,
        }
    }

    pub fn push(&mut self, s: Sample) {
        while self.samples.len() >= self.capacity {
            self.samples.pop_front();
            self.evicted += 1;
        }
        self.samples.push_back(s);
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Samples evicted so far.
    pub fn evicted(&self) -> u64 {
        self.evicted
    }

    /// Stored samples, oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &Sample> {
        self.samples.iter()
    }

    /// Stored samples of one cgroup, oldest first.
    pub fn series(&self, cgroup_id: u64) -> impl Iterator<Item = &Sample> {
        self.samples
            .iter()
            .filter(move |s| s.cgroup_id == cgroup_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(id: u64, t: f64) -> Sample {
        Sample {
            kind: "sample",
            t_s: t,
            interval_s: 1.0,
            cgroup: PathBuf::from("/x"),
            cgroup_id: id,
            cpu: CpuSample::default(),
            runq: Quantiles::default(),
            faults: FaultSample::default(),
            io: IoSample::default(),
            net: NetSample::default(),
            procs: ProcSample::default(),
            memory: None,
            pressure: Pressure::default(),
            drops: Drops::default(),
        }
    }

    #[test]
    fn store_is_bounded_and_counts_evictions() {
        let mut s = Store::new(3);
        for i in 0..5 {
            s.push(sample(i % 2, i as f64));
        }
        assert_eq!(s.len(), 3);
        assert_eq!(s.evicted(), 2);
        let ts: Vec<f64> = s.iter().map(|x| x.t_s).collect();
        assert_eq!(ts, vec![2.0, 3.0, 4.0]);
        assert_eq!(s.series(0).count(), 2);
    }

    #[test]
    fn sample_serialises_with_the_documented_keys() {
        let v = serde_json::to_value(sample(7, 1.5)).expect("json");
        for k in [
            "type",
            "t_s",
            "interval_s",
            "cgroup",
            "cgroup_id",
            "cpu",
            "runq",
            "faults",
            "io",
            "net",
            "procs",
            "memory",
            "pressure",
            "drops",
        ] {
            assert!(v.get(k).is_some(), "missing {k} in {v}");
        }
        assert_eq!(v["type"], "sample");
        assert!(v["runq"].get("p99_us").is_some());
        assert!(v["faults"]["major"].is_null());
    }
}
