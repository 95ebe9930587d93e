//! The reconcile step: read actual, compute desired, apply the difference, record why.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use super::backend::{self, Backend, Limits, Sample};
use super::cpuset::CpuSet;
use super::gate::{GateRule, Gated, ShrinkGate, ShrinkOutcome, ShrinkRequest};
use super::irq::{decide_placement, read_nic_locality, rx_packets, LocalityNote};
use super::policy::{
    decide, Decision, ForecastInput, PolicyConfig, Rail, Rails, Reason, Resource, ResourceState,
};
use super::state::{error_chain, record_path, AuditEntry, AuditLog, OriginalRecord};
use super::{AllocateError, RestoreReport, Result};

/// The forecasts of one interval, per resource (cores, bytes).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Forecasts {
    pub cpu: Option<ForecastInput>,
    pub memory: Option<ForecastInput>,
}

/// What the allocator manages and how.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocatorConfig {
    pub policy: PolicyConfig,
    /// Rails of the CPU quota; None: the quota is not managed.
    pub cpu: Option<Rails>,
    /// With every quota written, the CFS burst is set to this fraction of it (0..=1): the
    /// unused quota a group may carry into a later period, so a burst shorter than the
    /// interval is not throttled while the average stays within the quota. None: the
    /// group's own burst is kept (lowered to a smaller quota, which the kernel requires).
    pub cpu_burst: Option<f64>,
    /// Rails of the memory limit; None: memory is not managed.
    pub memory: Option<Rails>,
    /// Pin the group onto the parent's CPUs minus these (the shadow group's); None: cpusets
    /// are not managed.
    pub pin_away_from: Option<CpuSet>,
    /// Decide and audit, never write.
    pub dry_run: bool,
    /// Where the original-limits records live.
    pub state_dir: PathBuf,
    /// The audit log (default `<state_dir>/audit.jsonl`).
    pub audit_log: Option<PathBuf>,
    /// After a failed read or write, skip this many intervals, doubling up to `backoff_max`.
    pub backoff_initial: u32,
    pub backoff_max: u32,
    /// Write cgroups under a `kubepods*` path (normally refused: the kubelet owns them).
    pub allow_kubelet_owned: bool,
    /// NIC locality for the placement (with `pin_away_from`); None: not considered.
    pub nic: Option<NicPlacement>,
    /// Hold forecast shrinks until a what-if replica passed at the proposed limit
    /// (`allocate/gate.rs`); None: shrinks are not validated.
    pub whatif_gate: Option<GateRule>,
}

/// The primary's network interface, for NIC/IRQ-aware placement (`allocate/irq.rs`).
#[derive(Debug, Clone, PartialEq)]
pub struct NicPlacement {
    /// Interface the primary serves on (e.g. `eth0`).
    pub interface: String,
    /// Where procfs and sysfs are mounted (`/proc`, `/sys`; a fake tree in tests).
    pub proc_root: PathBuf,
    pub sys_root: PathBuf,
    /// Received packets per second at or above which the primary counts as network-heavy.
    pub heavy_rx_pps: f64,
}

impl AllocatorConfig {
    /// CPU and memory managed with the default rails up to `max_cores` and `max_bytes`;
    /// cpusets not managed; not a dry run.
    pub fn new(state_dir: impl Into<PathBuf>, max_cores: f64, max_bytes: f64) -> AllocatorConfig {
        AllocatorConfig {
            policy: PolicyConfig::default(),
            cpu: Some(Rails::cpu(max_cores)),
            cpu_burst: None,
            memory: Some(Rails::memory(max_bytes)),
            pin_away_from: None,
            dry_run: false,
            state_dir: state_dir.into(),
            audit_log: None,
            backoff_initial: 1,
            backoff_max: 32,
            allow_kubelet_owned: false,
            nic: None,
            whatif_gate: None,
        }
    }

    /// Checks every value, naming the key.
    pub fn validate(&self) -> Result<()> {
        for (name, rails) in [("cpu", &self.cpu), ("memory", &self.memory)] {
            if let Some(r) = rails {
                r.validate_with(&self.policy)
                    .map_err(|(key, reason)| AllocateError::Config {
                        key: format!("{name}.{key}"),
                        reason,
                    })?;
            }
        }
        let p = &self.policy;
        let frac = |v: f64| v.is_finite() && v >= 0.0;
        let checks: [(&str, bool, &'static str); 5] = [
            (
                "policy.headroom",
                frac(p.headroom),
                "must be a non-negative fraction",
            ),
            (
                "policy.confidence.max_rel_width",
                frac(p.confidence.max_rel_width),
                "must be a non-negative number",
            ),
            (
                "policy.confidence.coverage_tolerance",
                frac(p.confidence.coverage_tolerance) && p.confidence.coverage_tolerance < 1.0,
                "must be a fraction in [0, 1)",
            ),
            (
                "policy.reactive.step_up",
                frac(p.reactive.step_up) && p.reactive.step_up > 0.0,
                "must be a positive fraction",
            ),
            (
                "policy.reactive.near_limit",
                p.reactive.near_limit > 0.0 && p.reactive.near_limit <= 1.0,
                "must be a fraction in (0, 1]",
            ),
        ];
        for (key, ok, reason) in checks {
            if !ok {
                return Err(AllocateError::Config {
                    key: key.to_owned(),
                    reason,
                });
            }
        }
        if let Some(b) = self.cpu_burst {
            if !(b.is_finite() && (0.0..=1.0).contains(&b)) {
                return Err(AllocateError::Config {
                    key: "cpu.burst".to_owned(),
                    reason: "must be a fraction of the quota in [0, 1] (the kernel refuses a \
                             burst above the quota)",
                });
            }
        }
        if self.backoff_initial == 0 || self.backoff_max < self.backoff_initial {
            return Err(AllocateError::Config {
                key: "backoff".to_owned(),
                reason: "backoff_initial must be >= 1 and <= backoff_max",
            });
        }
        Ok(())
    }
}

/// A placement decision.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CpusetDecision {
    pub old: CpuSet,
    pub new: CpuSet,
    pub rails: Vec<Rail>,
}

/// Pure placement: the parent's CPUs minus `avoid`; nothing when that is empty or already set.
pub fn decide_cpuset(current: &CpuSet, available: &CpuSet, avoid: &CpuSet) -> CpusetDecision {
    let want = available.difference(avoid);
    if want.is_empty() {
        return CpusetDecision {
            old: current.clone(),
            new: current.clone(),
            rails: vec![Rail::NoFreeCpu],
        };
    }
    CpusetDecision {
        old: current.clone(),
        new: want,
        rails: Vec::new(),
    }
}

/// The back-off state after failures.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Backoff {
    /// Intervals still to skip.
    pub remaining: u32,
    /// Length of the next back-off.
    pub next: u32,
    /// The error that caused it.
    pub last_error: Option<String>,
}

/// What one step did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepReport {
    pub step: u64,
    /// Scalar decisions (CPU, memory), changing or not.
    pub decisions: Vec<Decision>,
    pub cpuset: Option<CpusetDecision>,
    /// The NIC locality the placement used (with `nic` configured).
    pub locality: Option<LocalityNote>,
    /// Resources whose limits were written this step.
    pub applied: Vec<Resource>,
    pub dry_run: bool,
    /// Set when the step was skipped because of an earlier failure.
    pub backing_off: Option<Backoff>,
    /// Forecast shrinks held for a what-if validation that is not under way yet: the caller
    /// starts one (then [`Reconciler::whatif_started`]) or asks again next interval.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub whatif_requests: Vec<ShrinkRequest>,
}

/// One managed group.
///
/// Drop restores the original limits (if any were changed); [`Reconciler::abandon`] leaves
/// them, as a crash would, and the next [`Reconciler::new`] for the group restores them.
#[derive(Debug)]
pub struct Reconciler<B: Backend> {
    backend: B,
    cfg: AllocatorConfig,
    audit: AuditLog,
    record: PathBuf,
    recorded: bool,
    cpu: ResourceState,
    memory: ResourceState,
    prev: Option<(Instant, Sample)>,
    /// The NIC's received packets at the previous step (for its rate).
    prev_rx: Option<(Instant, u64)>,
    step: u64,
    backoff: Backoff,
    recovered: Option<RestoreReport>,
    armed: bool,
    gate: Option<ShrinkGate>,
}

fn json_amount(v: Option<f64>) -> serde_json::Value {
    match v {
        Some(x) => serde_json::json!(x),
        None => serde_json::json!("max"),
    }
}

/// Whether `name` is a kubelet-managed group: below a `kubepods*` slice (`kubepods`,
/// `kubepods.slice`, `kubepods-burstable.slice`, ...), or with a component laid out as a pod
/// UID, which the kubelet also creates under a renamed root (`--cgroup-root`):
/// `pod<uuid>` (cgroupfs driver) or `*-pod<uuid with _>.slice` (systemd driver).
pub fn kubelet_owned(name: &str) -> bool {
    name.split('/')
        .any(|c| c.starts_with("kubepods") || pod_uid_component(c))
}

fn pod_uid_component(c: &str) -> bool {
    pod_uid(c).is_some()
}

/// The pod UID of a component that is `pod` + a 36-character UUID (`-` or `_` separators),
/// optionally after `<prefix>-` and before `.slice`, with `-` separators.
pub fn pod_uid(c: &str) -> Option<String> {
    let c = c.strip_suffix(".slice").unwrap_or(c);
    let rest = match c.rfind("-pod") {
        Some(i) => &c[i + 4..],
        None => c.strip_prefix("pod")?,
    };
    let b = rest.as_bytes();
    let ok = b.len() == 36
        && b.iter().enumerate().all(|(i, ch)| match i {
            8 | 13 | 18 | 23 => *ch == b'-' || *ch == b'_',
            _ => ch.is_ascii_hexdigit(),
        });
    ok.then(|| rest.replace('_', "-").to_ascii_lowercase())
}

impl<B: Backend> Reconciler<B> {
    /// Manages `backend`'s group. If a record of original limits is found (the previous agent
    /// crashed), they are restored first; [`Reconciler::recovered`] tells what was restored.
    pub fn new(backend: B, cfg: AllocatorConfig) -> Result<Reconciler<B>> {
        cfg.validate()?;
        if kubelet_owned(backend.name()) && !cfg.allow_kubelet_owned && backend.kube().is_none() {
            return Err(AllocateError::KubeletOwned {
                cgroup: backend.name().to_owned(),
            });
        }
        let audit = AuditLog::new(
            cfg.audit_log
                .clone()
                .unwrap_or_else(|| cfg.state_dir.join("audit.jsonl")),
        );
        audit.create()?;
        let record = record_path(&cfg.state_dir, backend.name());
        let mut r = Reconciler {
            backend,
            audit,
            record,
            recorded: false,
            cpu: ResourceState::default(),
            memory: ResourceState::default(),
            prev: None,
            prev_rx: None,
            step: 0,
            backoff: Backoff {
                next: cfg.backoff_initial,
                ..Backoff::default()
            },
            recovered: None,
            armed: true,
            gate: cfg.whatif_gate.map(ShrinkGate::new),
            cfg,
        };
        if OriginalRecord::load(&r.record)?.is_some() {
            tracing::warn!(
                cgroup = r.backend.name(),
                record = %r.record.display(),
                "found original limits of a previous run that did not restore them: restoring"
            );
            r.recorded = true;
            let report = r.restore()?;
            r.recovered = Some(report);
        }
        if r.cfg.cpu_burst.is_some() && r.cfg.cpu.is_some() {
            // A kernel before 5.14 has no CFS burst: the quota is still managed.
            if let Ok(Limits {
                cpu_burst_us: None, ..
            }) = r.backend.read_limits()
            {
                tracing::warn!(
                    cgroup = r.backend.name(),
                    "allocate.cpu.burst is set but this kernel has no CFS burst \
                     (cpu.cfs_burst_us / cpu.max.burst): quotas are written without one"
                );
            }
        }
        Ok(r)
    }

    /// What was restored at start from a previous run's record.
    pub fn recovered(&self) -> Option<&RestoreReport> {
        self.recovered.as_ref()
    }

    /// The backend.
    /// Switch between dry run (audit what would be done) and acting, from the next step on
    /// (`run`'s configuration reload). Originals are recorded before the first real write,
    /// as at start, and restored on exit either way.
    pub fn set_dry_run(&mut self, dry_run: bool) {
        self.cfg.dry_run = dry_run;
    }

    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The configuration.
    pub fn config(&self) -> &AllocatorConfig {
        &self.cfg
    }

    /// The audit log.
    pub fn audit(&self) -> &AuditLog {
        &self.audit
    }

    /// The original-limits record file.
    pub fn record_path(&self) -> &Path {
        &self.record
    }

    /// The current back-off.
    pub fn backoff(&self) -> &Backoff {
        &self.backoff
    }

    /// One reconcile step with this interval's forecasts.
    pub fn step(&mut self, forecasts: &Forecasts) -> Result<StepReport> {
        self.step += 1;
        let mut report = StepReport {
            step: self.step,
            decisions: Vec::new(),
            cpuset: None,
            locality: None,
            applied: Vec::new(),
            dry_run: self.cfg.dry_run,
            backing_off: None,
            whatif_requests: Vec::new(),
        };
        if self.backoff.remaining > 0 {
            self.backoff.remaining -= 1;
            tracing::debug!(
                cgroup = self.backend.name(),
                remaining = self.backoff.remaining,
                "backing off"
            );
            report.backing_off = Some(self.backoff.clone());
            return Ok(report);
        }
        match self.step_inner(forecasts, &mut report) {
            Ok(()) => {
                self.backoff.next = self.cfg.backoff_initial;
                self.backoff.last_error = None;
                Ok(report)
            }
            Err(e) => {
                self.backoff.remaining = self.backoff.next;
                self.backoff.next = (self.backoff.next.saturating_mul(2)).min(self.cfg.backoff_max);
                self.backoff.last_error = Some(error_chain(&e));
                tracing::error!(
                    cgroup = self.backend.name(),
                    error = %error_chain(&e),
                    skip_intervals = self.backoff.remaining,
                    "allocator step failed: backing off"
                );
                Err(e)
            }
        }
    }

    fn step_inner(&mut self, forecasts: &Forecasts, report: &mut StepReport) -> Result<()> {
        // Read actual.
        let limits = self.backend.read_limits()?;
        let sample = self.backend.read_sample()?;
        let now = Instant::now();
        let (cpu_sig, mem_sig) = match &self.prev {
            Some((t, prev)) => {
                sample.signals_since(Some(prev), now.duration_since(*t).as_micros() as u64)
            }
            None => sample.signals_since(None, 1),
        };
        self.prev = Some((now, sample));

        // Compute desired (pure).
        if let Some(rails) = &self.cfg.cpu {
            report.decisions.push(decide(
                Resource::Cpu,
                &self.cfg.policy,
                rails,
                &mut self.cpu,
                limits.cpu_cores,
                &cpu_sig,
                forecasts.cpu.as_ref(),
            ));
        }
        if let Some(rails) = &self.cfg.memory {
            let mut d = decide(
                Resource::Memory,
                &self.cfg.policy,
                rails,
                &mut self.memory,
                limits.memory_bytes.map(|b| b as f64),
                &mem_sig,
                forecasts.memory.as_ref(),
            );
            // Whole pages, rounded up, so the value read back equals the value written.
            if d.changes() {
                d.new = d.new.map(|b| ((b / 4096.0).ceil() * 4096.0).max(4096.0));
            }
            report.decisions.push(d);
        }
        self.gate_shrinks(report);
        if let (Some(avoid), Some(current)) = (&self.cfg.pin_away_from, &limits.cpuset) {
            if let Some(available) = self.backend.available_cpus()? {
                match &self.cfg.nic {
                    None => report.cpuset = Some(decide_cpuset(current, &available, avoid)),
                    Some(nic) => {
                        let loc = read_nic_locality(&nic.proc_root, &nic.sys_root, &nic.interface)?;
                        let rx = rx_packets(&nic.sys_root, &nic.interface)?;
                        let pps = self.prev_rx.and_then(|(t, prev)| {
                            let dt = now.duration_since(t).as_secs_f64();
                            (dt > 0.0).then(|| rx.saturating_sub(prev) as f64 / dt)
                        });
                        self.prev_rx = Some((now, rx));
                        let (d, note) = decide_placement(
                            current,
                            &available,
                            avoid,
                            &loc,
                            pps,
                            nic.heavy_rx_pps,
                            limits.cpu_cores,
                        );
                        report.cpuset = Some(d);
                        report.locality = Some(note);
                    }
                }
            }
        }

        // Apply the difference, recording why.
        let decisions = report.decisions.clone();
        for d in &decisions {
            if !d.noteworthy() {
                continue;
            }
            let result = if d.changes() && !self.cfg.dry_run {
                self.apply_scalar(d, &limits)
            } else {
                Ok(())
            };
            let applied = d.changes() && !self.cfg.dry_run && result.is_ok();
            if applied {
                report.applied.push(d.resource);
            }
            self.log_scalar(d, &limits, applied, result.as_ref().err())?;
            result?;
        }
        let locality = report.locality.clone();
        if let Some(c) = report.cpuset.clone() {
            if c.old != c.new || !c.rails.is_empty() {
                let result = if c.old != c.new && !self.cfg.dry_run {
                    self.ensure_recorded()
                        .and_then(|()| self.backend.set_cpuset(&c.new))
                } else {
                    Ok(())
                };
                let applied = c.old != c.new && !self.cfg.dry_run && result.is_ok();
                if applied {
                    report.applied.push(Resource::Cpuset);
                }
                let entry = AuditEntry {
                    rails: c.rails.clone(),
                    applied,
                    dry_run: self.cfg.dry_run,
                    error: result.as_ref().err().map(|e| error_chain(e)),
                    locality: locality.as_ref().and_then(|n| serde_json::to_value(n).ok()),
                    ..AuditEntry::at_step(
                        self.backend.name(),
                        Resource::Cpuset.as_str(),
                        serde_json::json!(c.old.to_string()),
                        serde_json::json!(c.new.to_string()),
                        Reason::Placement,
                        self.step,
                    )
                };
                self.audit.append(&entry)?;
                result?;
            }
        }
        Ok(())
    }

    /// Holds forecast shrinks that no what-if replica has passed (with a gate configured).
    /// A held decision keeps the resource's rail state as if nothing had changed, so the
    /// shrink can go through as soon as a pass arrives.
    fn gate_shrinks(&mut self, report: &mut StepReport) {
        let Some(gate) = self.gate.as_mut() else {
            return;
        };
        for d in &mut report.decisions {
            let (rails, state) = match d.resource {
                Resource::Cpu => (self.cfg.cpu.as_ref(), &mut self.cpu),
                Resource::Memory => (self.cfg.memory.as_ref(), &mut self.memory),
                Resource::Cpuset => continue,
            };
            let Some(rails) = rails else { continue };
            let before = d.new;
            let gated = gate.gate(self.backend.name(), d, rails.max, self.step);
            if let Gated::Held(Some(req)) = &gated {
                report.whatif_requests.push(req.clone());
            }
            match gated {
                Gated::Unchanged | Gated::Clipped => {}
                Gated::Held(_) | Gated::Refused => {
                    if before != d.new {
                        // `decide` counted the shrink as a change; it was not made. The
                        // streak stays complete: a pass lets the shrink through at once.
                        state.since_change = rails.cooldown_intervals.saturating_add(1);
                        state.shrink_streak = rails.shrink_hold_intervals;
                    }
                }
            }
        }
    }

    /// A what-if validation of `req` was started (the shrink stays held until its outcome).
    pub fn whatif_started(&mut self, req: &ShrinkRequest) {
        if let Some(g) = self.gate.as_mut() {
            g.started(req);
        }
        tracing::info!(
            cgroup = self.backend.name(),
            resource = req.resource.as_str(),
            from = req.from,
            to = req.to,
            "validating a forecast shrink on a what-if replica"
        );
    }

    /// The verdict of a what-if validation: recorded in the gate and audited (`reason`
    /// `whatif`, `old` the limit then, `new` the proposed one, never `applied`).
    pub fn whatif_outcome(&mut self, o: &ShrinkOutcome) -> Result<()> {
        if let Some(g) = self.gate.as_mut() {
            g.outcome(o, self.step);
        }
        tracing::info!(
            cgroup = self.backend.name(),
            resource = o.request.resource.as_str(),
            to = o.request.to,
            pass = o.pass,
            reasons = ?o.reasons,
            "what-if verdict of a forecast shrink"
        );
        let mut entry = AuditEntry::at_step(
            self.backend.name(),
            o.request.resource.as_str(),
            serde_json::json!(o.request.from),
            serde_json::json!(o.request.to),
            Reason::Whatif {
                pass: o.pass,
                reasons: o.reasons.clone(),
                report: o.report.clone(),
            },
            self.step,
        );
        entry.dry_run = self.cfg.dry_run;
        self.audit.append(&entry)
    }

    fn apply_scalar(&mut self, d: &Decision, limits: &Limits) -> Result<()> {
        self.ensure_recorded()?;
        match d.resource {
            Resource::Cpu => self
                .backend
                .set_cpu(d.new, limits.cpu_period_us, self.cfg.cpu_burst),
            Resource::Memory => self.backend.set_memory(d.new.map(|b| b.round() as u64)),
            Resource::Cpuset => Ok(()),
        }
    }

    fn log_scalar(
        &self,
        d: &Decision,
        limits: &Limits,
        applied: bool,
        err: Option<&AllocateError>,
    ) -> Result<()> {
        let verb = if applied {
            "set"
        } else if self.cfg.dry_run && d.changes() {
            "would set (dry run)"
        } else if err.is_some() {
            "failed to set"
        } else {
            "kept"
        };
        tracing::info!(
            cgroup = self.backend.name(),
            resource = d.resource.as_str(),
            old = ?d.old,
            new = ?d.new,
            reason = ?d.reason,
            rails = ?d.rails,
            "{verb} limit"
        );
        let entry = AuditEntry {
            rails: d.rails.clone(),
            applied,
            dry_run: self.cfg.dry_run,
            forecast: d.forecast.map(|f| f.point),
            interval: d.forecast.map(|f| [f.lower, f.upper]),
            level: d.forecast.map(|f| f.level),
            shrink_upper: d.forecast.and_then(|f| f.shrink_upper),
            confidence: d.confidence,
            error: err.map(|e| error_chain(e)),
            burst_us: match (d.resource, limits.cpu_burst_us) {
                (Resource::Cpu, Some(cur)) if d.changes() && self.backend.kube().is_none() => {
                    let quota = d
                        .new
                        .map(|c| backend::cores_to_quota(c, limits.cpu_period_us));
                    Some([cur, backend::burst_with(cur, quota, self.cfg.cpu_burst)])
                }
                _ => None,
            },
            ..AuditEntry::at_step(
                self.backend.name(),
                d.resource.as_str(),
                json_amount(d.old),
                json_amount(d.new),
                d.reason.clone(),
                self.step,
            )
        };
        self.audit.append(&entry)
    }

    /// Records the original limits of every managed resource, once, before the first change.
    fn ensure_recorded(&mut self) -> Result<()> {
        if self.recorded {
            return Ok(());
        }
        let mut files = Vec::new();
        if self.cfg.cpu.is_some() {
            files.extend(self.backend.control_files(Resource::Cpu));
        }
        if self.cfg.memory.is_some() {
            files.extend(self.backend.control_files(Resource::Memory));
        }
        if self.cfg.pin_away_from.is_some() {
            files.extend(self.backend.control_files(Resource::Cpuset));
        }
        let mut rec = OriginalRecord::capture(self.backend.name(), self.backend.kind(), &files)?;
        if let Some(k) = self.backend.kube() {
            let mut managed = Vec::new();
            if self.cfg.cpu.is_some() {
                managed.push(Resource::Cpu);
            }
            if self.cfg.memory.is_some() {
                managed.push(Resource::Memory);
            }
            rec.api = Some(k.capture(&managed)?);
        }
        rec.save(&self.record)?;
        tracing::info!(
            cgroup = self.backend.name(),
            record = %self.record.display(),
            files = rec.files.len(),
            "recorded the original limits"
        );
        self.recorded = true;
        Ok(())
    }

    /// Writes the original limits back and removes the record. Nothing to do if no limit was
    /// changed. On partial failure the record is kept and the error lists the files.
    pub fn restore(&mut self) -> Result<RestoreReport> {
        let Some(rec) = OriginalRecord::load(&self.record)? else {
            self.recorded = false;
            return Ok(RestoreReport::default());
        };
        let mut report = rec.restore();
        if let Some(api) = &rec.api {
            let at = PathBuf::from(super::state::api_label(api));
            match self.backend.kube() {
                Some(k) => match k.restore(api) {
                    Ok(true) => report.restored.push(at),
                    Ok(false) => report.skipped.push((at, "the pod is gone".to_owned())),
                    Err(e) => report.failed.push((at, error_chain(&e))),
                },
                None => report.failed.push((
                    at,
                    "recorded through the Kubernetes API, which is not configured \
                     ([allocate.kubernetes])"
                        .to_owned(),
                )),
            }
        }
        let entry = AuditEntry {
            applied: report.failed.is_empty(),
            error: (!report.failed.is_empty()).then(|| format!("{:?}", report.failed)),
            note: (!report.skipped.is_empty())
                .then(|| format!("not written back: {:?}", report.skipped)),
            ..AuditEntry::at_step(
                &rec.cgroup,
                "restore",
                serde_json::Value::Null,
                rec.values(&report.skipped),
                Reason::Hold,
                self.step,
            )
        };
        if let Err(e) = self.audit.append(&entry) {
            tracing::warn!(error = %error_chain(&e), "could not audit the restore");
        }
        if !report.failed.is_empty() {
            return Err(AllocateError::Restore {
                cgroup: rec.cgroup,
                record: self.record.clone(),
                failed: report.failed,
            });
        }
        std::fs::remove_file(&self.record).map_err(|source| AllocateError::Io {
            op: "remove",
            path: self.record.clone(),
            source,
        })?;
        tracing::info!(
            cgroup = rec.cgroup,
            files = report.restored.len(),
            skipped = ?report.skipped,
            "restored the original limits"
        );
        self.start_over();
        Ok(report)
    }

    /// No record any more: the next change records again, the rails start fresh.
    fn start_over(&mut self) {
        self.recorded = false;
        self.cpu = ResourceState::default();
        self.memory = ResourceState::default();
    }

    /// The group's directory was removed and made again (a restarted service): its limits
    /// are whatever its owner set now, and they are the originals from here on. The record
    /// of the old group's limits is dropped unwritten (writing it would undo what the owner
    /// just set), audited as `recreated`; the rails, the signals' previous sample and the
    /// back-off start fresh, and the next change records the new group's limits first. (A
    /// what-if verdict stays: it is about the workload at a limit, not the directory.)
    pub fn reincarnate(&mut self) -> Result<()> {
        if let Some(rec) = OriginalRecord::load(&self.record)? {
            let entry = AuditEntry {
                note: Some(
                    "the group was removed and made again: its limits are its owner's; \
                     the old group's originals are dropped unwritten"
                        .to_owned(),
                ),
                ..AuditEntry::at_step(
                    &rec.cgroup,
                    "recreated",
                    rec.values(&[]),
                    serde_json::Value::Null,
                    Reason::Hold,
                    self.step,
                )
            };
            if let Err(e) = self.audit.append(&entry) {
                tracing::warn!(error = %error_chain(&e), "could not audit the dropped record");
            }
            std::fs::remove_file(&self.record).map_err(|source| AllocateError::Io {
                op: "remove",
                path: self.record.clone(),
                source,
            })?;
        }
        self.start_over();
        self.prev = None;
        self.prev_rx = None;
        self.backoff = Backoff {
            next: self.cfg.backoff_initial,
            ..Backoff::default()
        };
        Ok(())
    }

    /// Drops the reconciler without restoring, as a crash would (the record stays).
    pub fn abandon(mut self) {
        self.armed = false;
    }
}

impl<B: Backend> Drop for Reconciler<B> {
    fn drop(&mut self) {
        if self.armed && self.recorded {
            if let Err(e) = self.restore() {
                tracing::error!(error = %error_chain(&e), "restoring the original limits on exit failed");
            }
        }
    }
}
