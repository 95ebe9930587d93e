//! What-if replicas: a baseline replica (the `[shadow]` spec) and candidate replicas (a
//! candidate CPU quota, memory limit, cpuset, or command) fed the same mirrored flows, each
//! measured in the kernel (request→reply latency at its veth) and by its cgroup (CPU,
//! memory, run-queue latency), compared side by side.
//!
//! Every replica here is its own one-replica group with its own [`Mirror`]: all mirrors sit
//! in the TCX chain of the primary's interface and each clones every selected packet to its
//! replica, with its own TCP translation state (each replica answers with its own ISNs)
//! and its own masking state. So the baseline and every candidate receive the same flows;
//! the cost is one more parse and clone per selected packet per extra replica (see
//! `docs/whatif.md`).
//!
//! [`validate_shrink`] is the check the allocator can require before shrinking the primary:
//! the candidate (the proposed limit) must keep its latency percentiles within a tolerance
//! of the baseline's on the same traffic.

use std::time::{Duration, Instant};

use crate::{
    error::AgentError,
    mirror::{
        latency::{LatencyCounts, LatencySummary},
        Mirror, MirrorOptions, MirrorSpec, Rule, TcpCounters,
    },
    profile::{
        cgroupfs::{memory_source, read_memory},
        hist, HookPreference, Profiler,
    },
    shadow::{
        group::{self, GroupError, GroupSpec, ShadowGroup},
        replica::CommandSpec,
    },
};

/// One `[[shadow.whatif]]` entry: what differs from the baseline.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Candidate {
    /// A label for the report (1 to 16 of a-z, 0-9, `-`, `_`).
    pub name: String,
    /// CPU quota of the candidate replica, in cores (baseline: `shadow.cpu_cores`).
    pub cpu_cores: Option<f64>,
    /// Memory limit in bytes (baseline: `shadow.memory_mb`).
    pub memory_bytes: Option<u64>,
    /// CPUs the candidate may run on (cpuset list, e.g. `"0"`).
    pub cpuset: Option<String>,
    /// A different command (e.g. a new version); `None`: the baseline's.
    pub command: Option<Vec<String>>,
    /// Extra environment on top of the baseline's.
    pub env: Vec<(String, String)>,
}

/// The mirror side of a comparison: where the primary's traffic is and what to select.
#[derive(Clone, Debug)]
pub struct WhatifMirror {
    /// The primary's interface (resolved from `mirror.primary_address` when given).
    pub interface: String,
    pub direction: crate::mirror::Direction,
    pub rules: Vec<Rule>,
    pub options: MirrorOptions,
}

/// The limits a replica ran under.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct Limits {
    pub cpu_cores: Option<f64>,
    pub memory_bytes: Option<u64>,
    pub cpuset: Option<String>,
    pub command: Vec<String>,
}

/// What one replica did during the comparison.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct ReplicaProfile {
    /// `baseline` or the candidate's name.
    pub name: String,
    pub limits: Limits,
    /// Request→reply latency measured at the replica's veth.
    pub latency: LatencySummary,
    /// Mean CPU used, in cores, and per timed reply (ms).
    pub cpu_cores: f64,
    pub cpu_ms_per_reply: f64,
    /// Memory charged at the end and the highest seen (bytes).
    pub memory_bytes: u64,
    pub memory_peak_bytes: u64,
    /// Run-queue latency of the replica's tasks (eBPF, µs).
    pub runq_p50_us: f64,
    pub runq_p95_us: f64,
    pub runq_p99_us: f64,
    /// Crash restarts during the comparison.
    pub restarts: u32,
    /// The CPUs the replica's cgroup may run on, as the kernel reports them
    /// (`cpuset.effective_cpus`; `None` where the file is absent).
    pub effective_cpus: Option<String>,
    /// Clones the replica's mirror sent it, and its TCP session counters (how many of the
    /// mirrored sessions really established in the replica), since the comparison began.
    pub clones: u64,
    pub tcp: TcpCounters,
}

/// The result of a comparison.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize)]
pub struct WhatifReport {
    pub duration_s: f64,
    pub baseline: ReplicaProfile,
    pub candidates: Vec<ReplicaProfile>,
    /// [`validate_shrink`] of each candidate against the baseline, with the default
    /// tolerance, in candidate order.
    pub verdicts: Vec<ShrinkVerdict>,
}

/// How much worse than the baseline a candidate may be and still pass.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct ShrinkTolerance {
    /// Candidate p99 (and p95) may be at most this multiple of the baseline's ...
    pub max_ratio: f64,
    /// ... plus this many milliseconds (so sub-millisecond noise cannot fail a candidate).
    pub slack_ms: f64,
    /// Fewer timed replies than this on either side: no verdict can be given (fails).
    pub min_replies: u64,
}

impl Default for ShrinkTolerance {
    fn default() -> Self {
        ShrinkTolerance {
            max_ratio: 1.25,
            slack_ms: 1.0,
            min_replies: 50,
        }
    }
}

/// Whether a candidate passed, and why.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct ShrinkVerdict {
    pub candidate: String,
    pub pass: bool,
    pub reasons: Vec<String>,
}

/// The allocator's check: may the primary be shrunk to the candidate's limits? Pass when
/// both replicas answered enough requests, the candidate answered about as many as the
/// baseline (>= 90 %), and its p95 and p99 stay within `tol` of the baseline's.
pub fn validate_shrink(
    baseline: &ReplicaProfile,
    candidate: &ReplicaProfile,
    tol: &ShrinkTolerance,
) -> ShrinkVerdict {
    let mut reasons = Vec::new();
    let (b, c) = (&baseline.latency, &candidate.latency);
    if b.replies < tol.min_replies || c.replies < tol.min_replies {
        reasons.push(format!(
            "too few timed replies to judge (baseline {}, candidate {}, need {})",
            b.replies, c.replies, tol.min_replies
        ));
    } else {
        if (c.replies as f64) < 0.9 * b.replies as f64 {
            reasons.push(format!(
                "candidate answered {} requests, baseline {}: it falls behind",
                c.replies, b.replies
            ));
        }
        for (what, bv, cv) in [("p95", b.p95_ms, c.p95_ms), ("p99", b.p99_ms, c.p99_ms)] {
            let limit = bv * tol.max_ratio + tol.slack_ms;
            if cv > limit {
                reasons.push(format!(
                    "{what} {cv:.2} ms exceeds {limit:.2} ms (baseline {bv:.2} ms x {} + {} ms)",
                    tol.max_ratio, tol.slack_ms
                ));
            }
        }
    }
    ShrinkVerdict {
        candidate: candidate.name.clone(),
        pass: reasons.is_empty(),
        reasons,
    }
}

/// The name of the one-replica group of comparison slot `slot` (0: baseline): `w`, up to
/// five characters of the group's name, then `b` or the candidate's number.
pub fn group_name(base: &str, slot: usize) -> String {
    let stem: String = base.chars().take(5).collect();
    if slot == 0 {
        format!("w{stem}b")
    } else {
        format!("w{stem}{slot}")
    }
}

/// Most candidates in one comparison.
pub const MAX_CANDIDATES: usize = 9;

/// Check a candidate against the host before anything is created.
pub fn validate_candidate(c: &Candidate, i: usize) -> Result<(), GroupError> {
    let key = |k: &str| format!("shadow.whatif[{i}].{k}");
    let ok_name = !c.name.is_empty()
        && c.name.len() <= 16
        && c.name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_');
    if !ok_name {
        return Err(GroupError::Whatif {
            key: key("name"),
            why: format!("{:?} must be 1 to 16 of a-z, 0-9, - and _", c.name),
        });
    }
    if c.cpu_cores.is_none()
        && c.memory_bytes.is_none()
        && c.cpuset.is_none()
        && c.command.is_none()
        && c.env.is_empty()
    {
        return Err(GroupError::Whatif {
            key: key("name"),
            why: format!(
                "candidate {:?} changes nothing: give cpu_cores, memory_mb, cpuset, command or env",
                c.name
            ),
        });
    }
    if let Some(cpuset) = &c.cpuset {
        group::validate_cpuset(cpuset).map_err(|e| GroupError::Whatif {
            key: key("cpuset"),
            why: e.to_string(),
        })?;
    }
    Ok(())
}

/// The group spec of comparison slot `slot` (0: baseline, else candidate `slot - 1`).
pub fn slot_spec(base: &GroupSpec, candidate: Option<&Candidate>, slot: usize) -> GroupSpec {
    let mut spec = base.clone();
    spec.name = group_name(&base.name, slot);
    spec.replicas_min = 1;
    spec.replicas_max = 1;
    if let Some(c) = candidate {
        if c.cpu_cores.is_some() {
            spec.cpu_cores = c.cpu_cores;
        }
        if c.memory_bytes.is_some() {
            spec.memory_bytes = c.memory_bytes;
        }
        if let Some(argv) = &c.command {
            spec.command = CommandSpec {
                argv: argv.clone(),
                ..spec.command.clone()
            };
        }
        spec.command.env.extend(c.env.iter().cloned());
    }
    spec
}

struct Slot {
    name: String,
    limits: Limits,
    // The mirror before the group: it stops cloning to the replica before it goes.
    mirror: Mirror,
    group: ShadowGroup,
    cgroup_id: u64,
    cpu0: u64,
    rq0: hist::Buckets,
    lat0: LatencyCounts,
    clones0: u64,
    tcp0: TcpCounters,
    mem_src: Option<crate::profile::cgroupfs::MemorySource>,
    mem_peak: u64,
}

/// Run a comparison for `duration` (or until SIGINT/SIGTERM): start the baseline and every
/// candidate, each with its own mirror on `mirror.interface`, measure, tear down, report.
/// Every spec is checked before anything is created. `progress` is told when the
/// comparison starts (every replica running, every mirror cloning) and then, about once a
/// second, given the interim report.
pub fn run(
    base: &GroupSpec,
    candidates: &[Candidate],
    mirror: &WhatifMirror,
    duration: Duration,
    progress: impl FnMut(Progress<'_>),
) -> Result<WhatifReport, AgentError> {
    let stop = Stop::install()?;
    run_until(base, candidates, mirror, duration, &stop.0, progress)
}

/// What [`run`] reports while it runs.
#[derive(Clone, Copy, Debug)]
pub enum Progress<'a> {
    /// The comparison's clock starts: `replicas` replicas run and are fed the same flows.
    Started { replicas: usize },
    /// The report so far.
    Tick(&'a WhatifReport),
}

/// [`run`] that ends early when `stop` is set instead of on signals (for a comparison on a
/// thread of a running agent, e.g. the allocator's shrink validation).
pub fn run_until(
    base: &GroupSpec,
    candidates: &[Candidate],
    mirror: &WhatifMirror,
    duration: Duration,
    stop: &std::sync::Arc<std::sync::atomic::AtomicBool>,
    mut progress: impl FnMut(Progress<'_>),
) -> Result<WhatifReport, AgentError> {
    let stop = Stop(std::sync::Arc::clone(stop));
    if candidates.is_empty() {
        return Err(GroupError::Whatif {
            key: "shadow.whatif".into(),
            why: "no candidate: add at least one [[shadow.whatif]] entry".into(),
        }
        .into());
    }
    if candidates.len() > MAX_CANDIDATES {
        return Err(GroupError::Whatif {
            key: "shadow.whatif".into(),
            why: format!("{} candidates; at most {MAX_CANDIDATES}", candidates.len()),
        }
        .into());
    }
    // Replicas take the mirror interface's MAC: clones need no rewrite (on its ingress; on
    // its egress packets are addressed to the primary beyond it, see `run::replica_mac`).
    let mut base = base.clone();
    base.replica_mac = (mirror.direction == crate::mirror::Direction::Ingress)
        .then(|| crate::sys::link::mac(&mirror.interface, None).ok())
        .flatten();
    let base = &base;
    let mut specs = vec![(
        "baseline".to_string(),
        slot_spec(base, None, 0),
        None::<String>,
    )];
    for (i, c) in candidates.iter().enumerate() {
        validate_candidate(c, i)?;
        if candidates[..i].iter().any(|o| o.name == c.name) {
            return Err(GroupError::Whatif {
                key: format!("shadow.whatif[{i}].name"),
                why: format!("{:?} is used twice", c.name),
            }
            .into());
        }
        specs.push((
            c.name.clone(),
            slot_spec(base, Some(c), i + 1),
            c.cpuset.clone(),
        ));
    }
    for (_, spec, _) in &specs {
        group::validate(spec)?;
    }
    if nix::net::if_::if_nametoindex(mirror.interface.as_str()).is_err() {
        return Err(GroupError::Whatif {
            key: "mirror.interface".into(),
            why: format!(
                "no interface {:?} in this network namespace",
                mirror.interface
            ),
        }
        .into());
    }
    for (_, spec, _) in &specs {
        for left in group::sweep_leftovers(&spec.prefix, &spec.name) {
            tracing::warn!(%left, "removed a leftover of an earlier what-if run");
        }
    }
    // All mirrors sample the same flows: one seed for all.
    let mut options = mirror.options.clone();
    if options.hash_seed == 0 {
        options.hash_seed = std::process::id() | 1;
    }
    let mut profiler = Profiler::start(HookPreference::Auto)?;
    // Every replica first, then every mirror attached with cloning off (loading one takes
    // seconds in the verifier), then all start cloning together: each replica is fed the
    // same flows from the same moment, and the comparison's clock starts there.
    let mut started = Vec::new();
    for (name, spec, cpuset) in specs {
        let limits = Limits {
            cpu_cores: spec.cpu_cores,
            memory_bytes: spec.memory_bytes,
            cpuset: cpuset.clone(),
            command: spec.command.argv.clone(),
        };
        let group = ShadowGroup::start_with_cpuset(spec, None, cpuset.as_deref())?;
        started.push((name, limits, group));
    }
    let mut slots: Vec<Slot> = Vec::new();
    for (name, limits, group) in started {
        let r = group.replica(0).ok_or_else(|| GroupError::Whatif {
            key: "shadow".into(),
            why: "the group started without a replica".into(),
        })?;
        let mut m = Mirror::attach_paused(MirrorSpec {
            interface: mirror.interface.clone(),
            address: None,
            direction: mirror.direction,
            shadow_interface: r.names().host_if.clone(),
            shadow_mac: r.replica_mac().octets(),
            rules: mirror.rules.clone(),
            xdp: false,
            options: options.clone(),
        })?;
        m.set_latency(true)?;
        let cgroup_id = r.cgroup().id();
        profiler.track(cgroup_id)?;
        let root = std::path::Path::new(crate::sys::cgroup::DEFAULT_ROOT);
        let mem_src = memory_source(root, r.cgroup().unified_path());
        slots.push(Slot {
            name,
            limits,
            mirror: m,
            group,
            cgroup_id,
            cpu0: 0,
            rq0: [0; shadow_common::acct::RQ_BUCKETS],
            lat0: LatencyCounts::default(),
            clones0: 0,
            tcp0: TcpCounters::default(),
            mem_src,
            mem_peak: 0,
        });
    }
    for s in &mut slots {
        s.mirror.set_enabled(true)?;
    }
    // Baselines of the cumulative counters, once everything runs.
    for s in &mut slots {
        s.cpu0 = profiler.cgroup(s.cgroup_id)?.map_or(0, |a| a.cpu_ns);
        s.rq0 = profiler.rq_buckets(s.cgroup_id)?.unwrap_or(s.rq0);
        s.lat0 = s.mirror.latency()?.into_iter().next().unwrap_or_default();
        let c = s.mirror.counters()?;
        s.clones0 = c.cloned;
        s.tcp0 = s.mirror.tcp_counters_of(&c)?;
    }
    progress(Progress::Started {
        replicas: slots.len(),
    });
    let start = Instant::now();
    let mut report;
    loop {
        let left = duration.saturating_sub(start.elapsed());
        stop.wait(left.min(Duration::from_secs(1)));
        for s in &mut slots {
            for ev in s.group.supervise() {
                tracing::warn!(?ev, replica = %s.name, "what-if replica");
            }
        }
        report = measure(&mut slots, &profiler, start.elapsed())?;
        if stop.requested() || start.elapsed() >= duration {
            break;
        }
        progress(Progress::Tick(&report));
    }
    // Mirrors first (each slot drops its mirror before its group), then the profiler.
    drop(slots);
    drop(profiler);
    Ok(report)
}

/// `cpuset.effective_cpus` of `cg` (v2 file in the unified directory, else v1 cpuset).
fn effective_cpus(cg: &crate::sys::cgroup::Cgroup) -> Option<String> {
    use crate::sys::cgroup::Controller;
    [Controller::Unified, Controller::Cpuset]
        .into_iter()
        .find_map(|c| cg.read(c, "cpuset.effective_cpus").ok())
        .map(|t| t.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// SIGINT/SIGTERM as a flag, so a comparison ends early but still tears down and reports.
struct Stop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Stop {
    fn install() -> Result<Stop, AgentError> {
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
            signal_hook::flag::register(sig, std::sync::Arc::clone(&flag)).map_err(|source| {
                AgentError::Io {
                    op: "installing the SIGINT/SIGTERM handler".into(),
                    source,
                }
            })?;
        }
        Ok(Stop(flag))
    }

    fn requested(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sleep up to `d`, waking early when a stop is requested.
    fn wait(&self, d: Duration) {
        let end = Instant::now() + d;
        while !self.requested() {
            let now = Instant::now();
            if now >= end {
                break;
            }
            std::thread::sleep((end - now).min(Duration::from_millis(50)));
        }
    }
}

fn measure(
    slots: &mut [Slot],
    profiler: &Profiler,
    elapsed: Duration,
) -> Result<WhatifReport, AgentError> {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let mut profiles = Vec::new();
    for s in slots.iter_mut() {
        let lat = s
            .mirror
            .latency()?
            .into_iter()
            .next()
            .unwrap_or_default()
            .since(&s.lat0);
        let cpu_ns = profiler
            .cgroup(s.cgroup_id)?
            .map_or(0, |a| a.cpu_ns)
            .saturating_sub(s.cpu0);
        let rq = profiler
            .rq_buckets(s.cgroup_id)?
            .map(|b| hist::quantiles(&hist::delta(&b, &s.rq0)))
            .unwrap_or_default();
        let mem = s
            .mem_src
            .as_ref()
            .and_then(read_memory)
            .map_or(0, |m| m.usage_bytes);
        s.mem_peak = s.mem_peak.max(mem);
        let latency = lat.summary();
        let c = s.mirror.counters()?;
        let clones = c.cloned.saturating_sub(s.clones0);
        let tcp = s.mirror.tcp_counters_of(&c)?.since(&s.tcp0);
        profiles.push(ReplicaProfile {
            name: s.name.clone(),
            limits: s.limits.clone(),
            cpu_cores: cpu_ns as f64 / 1e9 / secs,
            cpu_ms_per_reply: if latency.replies > 0 {
                cpu_ns as f64 / 1e6 / latency.replies as f64
            } else {
                0.0
            },
            latency,
            memory_bytes: mem,
            memory_peak_bytes: s.mem_peak,
            runq_p50_us: rq.p50_us,
            runq_p95_us: rq.p95_us,
            runq_p99_us: rq.p99_us,
            restarts: s.group.replica(0).map_or(0, |r| r.restarts()),
            effective_cpus: s.group.replica(0).and_then(|r| effective_cpus(r.cgroup())),
            clones,
            tcp,
        });
    }
    let mut it = profiles.into_iter();
    let baseline = it.next().unwrap_or_default();
    let candidates: Vec<ReplicaProfile> = it.collect();
    let tol = ShrinkTolerance::default();
    let verdicts = candidates
        .iter()
        .map(|c| validate_shrink(&baseline, c, &tol))
        .collect();
    Ok(WhatifReport {
        duration_s: secs,
        baseline,
        candidates,
        verdicts,
    })
}

/// `shadow-agent whatif`: the comparison the config describes (`[mirror]` for the traffic,
/// `[shadow]` for the baseline, `[[shadow.whatif]]` for the candidates).
pub fn from_config(
    cfg: &crate::config::Config,
    duration: Duration,
) -> Result<WhatifReport, AgentError> {
    let need = |key: &str, why: &str| -> AgentError {
        GroupError::Whatif {
            key: key.into(),
            why: why.into(),
        }
        .into()
    };
    let base = cfg
        .shadow
        .as_ref()
        .ok_or_else(|| need("shadow", "required: the baseline replica's spec"))?;
    let m = cfg.mirror.as_ref().ok_or_else(|| {
        need(
            "mirror",
            "required: the primary's interface and the rules selecting its traffic",
        )
    })?;
    if m.target.is_some() {
        return Err(need(
            "mirror.shadow_interface",
            "must not be set for whatif: each what-if replica is the target of its own mirror",
        ));
    }
    let mirror = WhatifMirror {
        interface: m.primary_interface()?,
        direction: m.direction,
        rules: m.rules.clone(),
        options: m.options.clone(),
    };
    run(base, &cfg.whatif, &mirror, duration, |p| {
        match p {
        Progress::Started { replicas } => eprintln!(
            "whatif: {replicas} replicas running and fed the same mirrored flows; comparing for {} s",
            duration.as_secs()
        ),
        Progress::Tick(r) => tracing::info!(
            t_s = r.duration_s,
            baseline_replies = r.baseline.latency.replies,
            baseline_p99_ms = r.baseline.latency.p99_ms,
            "what-if progress"
        ),
    }
    })
}

/// The report as a table.
pub fn render(r: &WhatifReport) -> String {
    let mut out = format!(
        "what-if over {:.0} s (sessions: mirrored TCP sessions established in the replica / tracked; latency: mirrored request to the replica's first reply segment, at its veth)\n",
        r.duration_s
    );
    out.push_str("replica          cpu_quota  mem_limit_mb  cpuset  sessions     replies   p50_ms   p95_ms   p99_ms  cpu_cores  cpu_ms/reply  mem_mb  runq_p99_us  verdict\n");
    let mb = |b: u64| b as f64 / (1 << 20) as f64;
    let row = |p: &ReplicaProfile, verdict: &str| {
        format!(
            "{:<16} {:<10} {:<13} {:<7} {:<12} {:<9} {:<8.2} {:<8.2} {:<8.2} {:<10.3} {:<13.2} {:<7.1} {:<12.0} {}\n",
            p.name,
            p.limits
                .cpu_cores
                .map_or("-".to_string(), |c| format!("{c}")),
            p.limits
                .memory_bytes
                .map_or("-".to_string(), |b| format!("{:.0}", mb(b))),
            p.limits.cpuset.as_deref().unwrap_or("-"),
            format!("{}/{}", p.tcp.established, p.tcp.sessions),
            p.latency.replies,
            p.latency.p50_ms,
            p.latency.p95_ms,
            p.latency.p99_ms,
            p.cpu_cores,
            p.cpu_ms_per_reply,
            mb(p.memory_bytes),
            p.runq_p99_us,
            verdict,
        )
    };
    out.push_str(&row(&r.baseline, "-"));
    for (c, v) in r.candidates.iter().zip(&r.verdicts) {
        let verdict = if v.pass {
            "pass".to_string()
        } else {
            format!("FAIL: {}", v.reasons.join("; "))
        };
        out.push_str(&row(c, &verdict));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(name: &str, replies: u64, p95: f64, p99: f64) -> ReplicaProfile {
        ReplicaProfile {
            name: name.into(),
            latency: LatencySummary {
                requests: replies,
                replies,
                p95_ms: p95,
                p99_ms: p99,
                ..LatencySummary::default()
            },
            ..ReplicaProfile::default()
        }
    }

    #[test]
    fn shrink_passes_within_tolerance_and_fails_beyond() {
        let tol = ShrinkTolerance::default();
        let base = profile("baseline", 500, 2.0, 3.0);
        let v = validate_shrink(&base, &profile("half", 495, 2.4, 4.5), &tol);
        assert!(v.pass, "{v:?}");
        let v = validate_shrink(&base, &profile("tiny", 490, 9.0, 30.0), &tol);
        assert!(!v.pass);
        assert!(
            v.reasons.iter().any(|r| r.starts_with("p99 30.00 ms")),
            "{v:?}"
        );
        assert!(
            v.reasons.iter().any(|r| r.starts_with("p95 9.00 ms")),
            "{v:?}"
        );
        // Falling behind fails even with good percentiles.
        let v = validate_shrink(&base, &profile("slow", 300, 2.0, 3.0), &tol);
        assert!(!v.pass && v.reasons[0].contains("falls behind"), "{v:?}");
        // Too little traffic: no verdict, so no pass.
        let v = validate_shrink(
            &profile("b", 10, 1.0, 1.0),
            &profile("c", 10, 1.0, 1.0),
            &tol,
        );
        assert!(!v.pass && v.reasons[0].contains("too few"), "{v:?}");
    }

    #[test]
    fn the_table_shows_sessions_established_over_tracked_and_the_verdict() {
        let mut base = profile("baseline", 500, 2.0, 3.0);
        let earlier = TcpCounters {
            sessions: 10,
            established: 9,
            live: 4,
            ..TcpCounters::default()
        };
        let now = TcpCounters {
            sessions: 810,
            established: 805,
            live: 2,
            ..TcpCounters::default()
        };
        base.tcp = now.since(&earlier);
        assert_eq!((base.tcp.sessions, base.tcp.established), (800, 796));
        // A gauge stays what it is now.
        assert_eq!(base.tcp.live, 2);
        let cand = profile("tight", 40, 9.0, 30.0);
        let r = WhatifReport {
            duration_s: 25.0,
            verdicts: vec![validate_shrink(&base, &cand, &ShrinkTolerance::default())],
            baseline: base,
            candidates: vec![cand],
        };
        let t = render(&r);
        let rows: Vec<&str> = t.lines().collect();
        assert_eq!(rows.len(), 4, "{t}");
        assert!(rows[1].contains("sessions"), "{t}");
        assert!(
            rows[2].starts_with("baseline") && rows[2].contains(" 796/800 "),
            "{t}"
        );
        assert!(
            rows[3].contains(" 0/0 ") && rows[3].contains("FAIL: "),
            "{t}"
        );
    }

    #[test]
    fn slot_specs_and_names() {
        assert_eq!(group_name("webshadow", 0), "wwebshb");
        assert_eq!(group_name("ab", 3), "wab3");
        let base = GroupSpec {
            name: "web".into(),
            prefix: "shd".into(),
            command: CommandSpec {
                argv: vec!["python3".into()],
                env: vec![("A".into(), "1".into())],
                ..CommandSpec::default()
            },
            replicas_min: 2,
            replicas_max: 4,
            cpu_cores: Some(1.0),
            memory_bytes: Some(256 << 20),
            writable_paths: Vec::new(),
            addresses: Vec::new(),
            allow: Default::default(),
            restart: Default::default(),
            replica_mac: None,
        };
        let c = Candidate {
            name: "tight".into(),
            cpu_cores: Some(0.1),
            env: vec![("B".into(), "2".into())],
            ..Candidate::default()
        };
        let s = slot_spec(&base, Some(&c), 1);
        assert_eq!(s.name, "wweb1");
        assert_eq!((s.replicas_min, s.replicas_max), (1, 1));
        assert_eq!(s.cpu_cores, Some(0.1));
        assert_eq!(s.memory_bytes, Some(256 << 20));
        assert_eq!(s.command.env.len(), 2);
        assert_eq!(slot_spec(&base, None, 0).cpu_cores, Some(1.0));
        assert!(validate_candidate(&c, 0).is_ok());
        let nothing = Candidate {
            name: "same".into(),
            ..Candidate::default()
        };
        assert!(validate_candidate(&nothing, 0)
            .unwrap_err()
            .to_string()
            .contains("changes nothing"));
        let bad_cpu = Candidate {
            name: "x".into(),
            cpuset: Some("0-4096".into()),
            ..Candidate::default()
        };
        assert!(validate_candidate(&bad_cpu, 2)
            .unwrap_err()
            .to_string()
            .contains("shadow.whatif[2].cpuset"));
    }
}
