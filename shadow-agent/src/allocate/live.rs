//! The allocator in `shadow-agent run`: the `[allocate]` config section and, per managed
//! cgroup, the loop of one interval: sample the group's CPU and memory from cgroupfs into a
//! per-group history, refit the default forecaster on schedule, hand the allocator the
//! forecast's calibrated upper bound over the lead time with its recent empirical coverage,
//! and run one [`Reconciler::step`].

use std::collections::VecDeque;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::Deserialize;

use super::backend::{self, Backend};
use super::policy::Resource;
use super::policy::{ForecastInput, Rails};
use super::reconcile::{AllocatorConfig, Forecasts, Reconciler};
use super::scale::{ScaleCause, ScaleDetector, ScaleEvent, ScaleRule, Webhook, WebhookUrl};
use super::sim::{adaptive_forecast, AdaptiveSim};
use super::validate::{WhatifValidation, WhatifValidator};
use super::{AllocateError, Result};
use crate::sys::cgroup::CgroupRoot;

/// `[allocate]` as written in the TOML file (every key optional except `cgroups`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAllocate {
    pub cgroups: Vec<String>,
    pub dry_run: Option<bool>,
    pub state_dir: Option<PathBuf>,
    pub audit_log: Option<PathBuf>,
    pub cgroup_root: Option<PathBuf>,
    pub allow_kubelet_owned: Option<bool>,
    pub window: Option<usize>,
    pub refit_every: Option<usize>,
    pub lead: Option<usize>,
    /// Intervals a forecast shrink must cover, at least the lead time (default: the lead time
    /// plus the resource's cooldown).
    pub shrink_cover: Option<usize>,
    pub level: Option<f64>,
    pub headroom: Option<f64>,
    pub max_rel_width: Option<f64>,
    /// Calibrate the forecast target towards this shortage rate (default: off).
    pub shortage_target: Option<f64>,
    /// false: reactive policy only (forecasts are still made, for scaling events, but not
    /// handed to the decision). Default true.
    pub predictive: Option<bool>,
    pub cpu: Option<RawRails>,
    pub memory: Option<RawRails>,
    pub scale: Option<RawScale>,
    pub placement: Option<RawPlacement>,
    pub whatif: Option<RawWhatif>,
    /// `[allocate.kubernetes]`: kubelet-owned groups resized through the API.
    pub kubernetes: Option<super::kube::RawKube>,
}

/// `[allocate.whatif]`: validate every forecast shrink on what-if shadow replicas first
/// (needs `[shadow]` and `[mirror]`; see `allocate/gate.rs` and `allocate/validate.rs`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawWhatif {
    pub enabled: Option<bool>,
    /// Length of one comparison, seconds (default 30).
    pub duration_s: Option<f64>,
    /// Fraction of the primary's load the replicas see (default: `mirror.sample_rate`).
    pub load_share: Option<f64>,
    /// The candidate's p95/p99 may be at most `max_ratio` x the baseline's + `slack_ms`.
    pub max_ratio: Option<f64>,
    pub slack_ms: Option<f64>,
    /// Fewer timed replies on either side: no verdict (the shrink fails).
    pub min_replies: Option<u64>,
    /// A pass holds this many intervals; after a failure shrinks wait this many.
    pub valid_intervals: Option<u64>,
    pub retry_intervals: Option<u64>,
}

/// The validated `[allocate.whatif]` section (the replicas' spec comes from `[shadow]`).
#[derive(Debug, Clone, PartialEq)]
pub struct WhatifGateSpec {
    pub rule: super::gate::GateRule,
    pub duration: Duration,
    /// None: the mirror's sample rate.
    pub load_share: Option<f64>,
    pub tolerance: crate::shadow::whatif::ShrinkTolerance,
}

/// `[allocate.placement]`: cpusets (off when absent).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPlacement {
    /// CPUs the primary must not use (the shadow group's), e.g. `"3"` or `"2-3"`.
    pub avoid_cpus: String,
    /// The primary's network interface: record its IRQ/RPS CPUs and, when it is
    /// network-heavy, pin the primary onto the free ones.
    pub nic: Option<String>,
    /// Received packets per second at or above which the primary is network-heavy.
    pub heavy_rx_pps: Option<f64>,
    pub proc_root: Option<PathBuf>,
    pub sys_root: Option<PathBuf>,
}

/// `[allocate.scale]`: scaling events (see [`ScaleRule`]) and the optional webhook.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScale {
    pub enabled: Option<bool>,
    pub out_hold_intervals: Option<u32>,
    pub in_surplus_frac: Option<f64>,
    pub in_hold_intervals: Option<u32>,
    /// `http://host:port/path` to POST every event to (JSON); none by default.
    pub webhook: Option<String>,
    pub webhook_timeout_ms: Option<u64>,
}

/// `[allocate.cpu]` / `[allocate.memory]`: rails, each key optional (units: cores for CPU,
/// bytes for memory).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRails {
    pub enabled: Option<bool>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub max_step_up: Option<f64>,
    pub max_step_down: Option<f64>,
    pub cooldown_intervals: Option<u32>,
    pub hysteresis: Option<f64>,
    pub shrink_hold_intervals: Option<u32>,
    pub floor_margin_frac: Option<f64>,
    pub floor_margin_abs: Option<f64>,
    pub scale_in_below: Option<f64>,
    pub scale_in_after_intervals: Option<u32>,
    pub shortage_memory_intervals: Option<u32>,
    /// CPU only: the CFS burst as a fraction of every quota written.
    pub burst: Option<f64>,
}

/// Whether a `allocate.cgroups` entry is a pattern (`*`, `?`, `[...]`, `**`: the `glob`
/// crate's syntax) rather than a group name.
pub fn is_pattern(entry: &str) -> bool {
    crate::profile::watch::is_pattern(std::path::Path::new(entry))
}

/// The hierarchy directory group names are relative to (where patterns are expanded): the
/// cgroup2 root on a pure v2 host, the cpu controller's hierarchy on a hybrid one.
pub fn names_base(root: &CgroupRoot) -> PathBuf {
    match root.layout() {
        crate::sys::cgroup::CgroupLayout::Unified => root.unified_path(),
        crate::sys::cgroup::CgroupLayout::Hybrid { .. } => root
            .controller_path(crate::sys::cgroup::Controller::Cpu)
            .unwrap_or_else(|| root.path().join("cpu")),
    }
}

/// The group names (relative to `base`) `pattern` matches now: directories holding
/// `cgroup.procs`, sorted.
pub fn match_names(base: &std::path::Path, pattern: &str) -> Vec<String> {
    crate::profile::watch::expand(&base.join(pattern))
        .iter()
        .filter_map(|p| p.strip_prefix(base).ok()?.to_str().map(str::to_owned))
        .collect()
}

/// The validated `[allocate]` section.
#[derive(Debug, Clone, PartialEq)]
pub struct AllocateSpec {
    /// Group names relative to the cgroup hierarchies (e.g. `shop/web`), or patterns of them
    /// (`app.slice/*.service`): each group a pattern matches is managed from when it appears
    /// until it is gone.
    pub cgroups: Vec<String>,
    /// Where the cgroup file systems are mounted (default `/sys/fs/cgroup`).
    pub cgroup_root: PathBuf,
    pub allocator: AllocatorConfig,
    pub forecast: AdaptiveSim,
    /// Hand the forecasts to the decision (false: reactive only).
    pub predictive: bool,
    pub scale: ScaleRule,
    /// Validated webhook URL and its timeout.
    pub webhook: Option<(String, Duration)>,
    /// What-if validation of forecast shrinks (`[allocate.whatif]`); None: off.
    pub whatif: Option<WhatifGateSpec>,
    /// `[allocate.kubernetes]`: kubelet-owned groups are resized through the pod resize API.
    pub kube: Option<super::kube::KubeSpec>,
}

/// Defaults of the section (documented in `config/agent.example.toml`).
pub const DEFAULT_STATE_DIR: &str = "/var/lib/shadow-agent/allocate";

fn host_cores() -> f64 {
    std::thread::available_parallelism().map_or(1.0, |n| n.get() as f64)
}

fn host_memory_bytes() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map_or(1024.0 * 1024.0 * 1024.0, |kb| kb * 1024.0)
}

fn merge_rails(base: Rails, raw: &RawRails) -> Rails {
    Rails {
        min: raw.min.unwrap_or(base.min),
        max: raw.max.unwrap_or(base.max),
        max_step_up: raw.max_step_up.unwrap_or(base.max_step_up),
        max_step_down: raw.max_step_down.unwrap_or(base.max_step_down),
        cooldown_intervals: raw.cooldown_intervals.unwrap_or(base.cooldown_intervals),
        hysteresis: raw.hysteresis.unwrap_or(base.hysteresis),
        shrink_hold_intervals: raw
            .shrink_hold_intervals
            .unwrap_or(base.shrink_hold_intervals),
        floor_margin_frac: raw.floor_margin_frac.unwrap_or(base.floor_margin_frac),
        floor_margin_abs: raw.floor_margin_abs.unwrap_or(base.floor_margin_abs),
        scale_in_below: raw.scale_in_below.unwrap_or(base.scale_in_below),
        scale_in_after_intervals: raw
            .scale_in_after_intervals
            .unwrap_or(base.scale_in_after_intervals),
        shortage_memory_intervals: raw
            .shortage_memory_intervals
            .unwrap_or(base.shortage_memory_intervals),
    }
}

impl RawAllocate {
    /// Validates the section; errors are `(key path, message)`, e.g.
    /// `("allocate.cpu.max", "must be a number >= min")`.
    pub fn validate(self) -> std::result::Result<AllocateSpec, (String, String)> {
        let bad = |k: &str, m: &str| (format!("allocate.{k}"), m.to_owned());
        if self.cgroups.is_empty() {
            return Err(bad("cgroups", "at least one cgroup to manage is needed"));
        }
        let kube = match self.kubernetes.clone() {
            None => None,
            Some(k) => k.validate(&|v| std::env::var(v).ok())?,
        };
        let kube_on = kube.is_some();
        if kube_on && self.allow_kubelet_owned.unwrap_or(false) {
            return Err(bad(
                "allow_kubelet_owned",
                "cannot be true with [allocate.kubernetes]: kubelet-owned groups are resized \
                 through the API there, never written directly",
            ));
        }
        if kube_on && self.placement.is_some() {
            return Err(bad(
                "placement",
                "cannot be used with [allocate.kubernetes]: a pod's cpuset belongs to the \
                 kubelet's CPU manager",
            ));
        }
        for (i, c) in self.cgroups.iter().enumerate() {
            let t = c.trim_matches('/');
            if is_pattern(t) {
                if let Err(e) = glob::Pattern::new(t) {
                    return Err((
                        format!("allocate.cgroups[{i}]"),
                        format!("{c:?} is not a valid pattern: {e}"),
                    ));
                }
            }
            if t.is_empty() || t.split('/').any(|p| p == ".." || p == ".") {
                return Err((
                    format!("allocate.cgroups[{i}]"),
                    format!(
                        "{c:?} is not a cgroup name relative to the hierarchy (like \"shop/web\")"
                    ),
                ));
            }
            if super::reconcile::kubelet_owned(t)
                && !self.allow_kubelet_owned.unwrap_or(false)
                && !kube_on
            {
                return Err((
                    format!("allocate.cgroups[{i}]"),
                    format!(
                        "{c:?} is owned by the kubelet (kubepods* or pod-UID path), which rewrites \
                         its limits: resize the pod through the in-place pod resize API \
                         ([allocate.kubernetes]), or set allocate.allow_kubelet_owned = true"
                    ),
                ));
            }
            if kube_on && super::reconcile::kubelet_owned(t) && !is_pattern(t) {
                if let Err(e) = super::kube::pod_target(t) {
                    return Err((format!("allocate.cgroups[{i}]"), e));
                }
            }
        }
        let d = AdaptiveSim::default();
        let forecast = AdaptiveSim {
            window: self.window.unwrap_or(d.window),
            refit_every: self.refit_every.unwrap_or(d.refit_every),
            lead: self.lead.unwrap_or(d.lead),
            level: self.level.unwrap_or(d.level),
            shrink_cover: self.shrink_cover.unwrap_or(d.shrink_cover),
        };
        if forecast.window < 100 {
            return Err(bad("window", "must be at least 100 samples"));
        }
        if forecast.refit_every == 0 {
            return Err(bad("refit_every", "must be at least 1 interval"));
        }
        if forecast.lead == 0 {
            return Err(bad("lead", "must be at least 1 interval"));
        }
        if self.shrink_cover == Some(0) {
            return Err(bad(
                "shrink_cover",
                "must be at least 1 interval (the lead time, to cover only that)",
            ));
        }
        if !(forecast.level > 0.0 && forecast.level < 1.0) {
            return Err(bad("level", "must be a fraction in (0, 1), e.g. 0.9"));
        }
        let state_dir = self
            .state_dir
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        // The tuned predictive settings of the simulator (headroom 0.12, max_rel_width 2.0).
        let mut policy = super::sim::tuned_policy();
        if let Some(h) = self.headroom {
            policy.headroom = h;
        }
        if let Some(w) = self.max_rel_width {
            policy.confidence.max_rel_width = w;
        }
        if let Some(t) = self.shortage_target {
            if !(t > 0.0 && t < 1.0) {
                return Err(bad(
                    "shortage_target",
                    "must be a fraction in (0, 1), e.g. 0.03",
                ));
            }
            policy.shortage_target = Some(t);
        }
        let cpu_raw = self.cpu.unwrap_or_default();
        let mem_raw = self.memory.unwrap_or_default();
        if mem_raw.burst.is_some() {
            return Err(bad(
                "memory.burst",
                "is a CPU setting (the CFS burst of the quota): set allocate.cpu.burst",
            ));
        }
        if kube_on && cpu_raw.burst.is_some() {
            return Err(bad(
                "cpu.burst",
                "cannot be used with [allocate.kubernetes]: the pod resize API has no CFS burst",
            ));
        }
        let allocator = AllocatorConfig {
            policy,
            cpu: cpu_raw
                .enabled
                .unwrap_or(true)
                .then(|| merge_rails(Rails::cpu(host_cores()), &cpu_raw)),
            cpu_burst: cpu_raw.burst,
            memory: mem_raw
                .enabled
                .unwrap_or(true)
                .then(|| merge_rails(Rails::memory(host_memory_bytes()), &mem_raw)),
            pin_away_from: None,
            dry_run: self.dry_run.unwrap_or(true),
            audit_log: self.audit_log,
            state_dir,
            backoff_initial: 1,
            backoff_max: 32,
            allow_kubelet_owned: self.allow_kubelet_owned.unwrap_or(false),
            nic: None,
            whatif_gate: None,
        };

        allocator.validate().map_err(|e| match e {
            AllocateError::Config { key, reason } => (format!("allocate.{key}"), reason.to_owned()),
            other => ("allocate".to_owned(), other.to_string()),
        })?;
        let (pin_away_from, nic) = match self.placement {
            None => (None, None),
            Some(p) => {
                let avoid = p.avoid_cpus.parse::<super::cpuset::CpuSet>().map_err(|e| {
                    bad("placement.avoid_cpus", &format!("{:?}: {e}", p.avoid_cpus))
                })?;
                let heavy = p.heavy_rx_pps.unwrap_or(10_000.0);
                if !(heavy.is_finite() && heavy >= 0.0) {
                    return Err(bad(
                        "placement.heavy_rx_pps",
                        "must be a non-negative number",
                    ));
                }
                let nic = match p.nic {
                    Some(n) if n.is_empty() || n.contains('/') => {
                        return Err(bad(
                            "placement.nic",
                            &format!("{n:?} is not an interface name"),
                        ))
                    }
                    Some(interface) => Some(super::reconcile::NicPlacement {
                        interface,
                        proc_root: p.proc_root.unwrap_or_else(|| PathBuf::from("/proc")),
                        sys_root: p.sys_root.unwrap_or_else(|| PathBuf::from("/sys")),
                        heavy_rx_pps: heavy,
                    }),
                    None => None,
                };
                (Some(avoid), nic)
            }
        };
        let allocator = AllocatorConfig {
            pin_away_from,
            nic,
            ..allocator
        };
        let raw_scale = self.scale.unwrap_or_default();
        let d = ScaleRule::default();
        let scale = ScaleRule {
            enabled: raw_scale.enabled.unwrap_or(d.enabled),
            out_hold_intervals: raw_scale.out_hold_intervals.unwrap_or(d.out_hold_intervals),
            in_surplus_frac: raw_scale.in_surplus_frac.unwrap_or(d.in_surplus_frac),
            in_hold_intervals: raw_scale.in_hold_intervals.unwrap_or(d.in_hold_intervals),
        };
        scale
            .validate()
            .map_err(|(k, m)| bad(&format!("scale.{k}"), m))?;
        let webhook = match raw_scale.webhook {
            None => None,
            Some(url) => {
                WebhookUrl::parse(&url).map_err(|m| bad("scale.webhook", &m))?;
                let ms = raw_scale.webhook_timeout_ms.unwrap_or(2000);
                if ms == 0 {
                    return Err(bad("scale.webhook_timeout_ms", "must be at least 1 ms"));
                }
                Some((url, Duration::from_millis(ms)))
            }
        };
        let whatif = match self.whatif {
            None => None,
            Some(w) if !w.enabled.unwrap_or(true) => None,
            Some(w) => Some(validate_whatif(&w).map_err(|(k, m)| bad(&format!("whatif.{k}"), &m))?),
        };
        let allocator = AllocatorConfig {
            whatif_gate: whatif.as_ref().map(|w| w.rule),
            ..allocator
        };
        Ok(AllocateSpec {
            kube,
            whatif,
            predictive: self.predictive.unwrap_or(true),
            scale,
            webhook,
            cgroups: self.cgroups,
            cgroup_root: self
                .cgroup_root
                .unwrap_or_else(|| PathBuf::from(crate::sys::cgroup::DEFAULT_ROOT)),
            allocator,
            forecast,
        })
    }
}

fn validate_whatif(w: &RawWhatif) -> std::result::Result<WhatifGateSpec, (&'static str, String)> {
    let tol_d = crate::shadow::whatif::ShrinkTolerance::default();
    let rule_d = super::gate::GateRule::default();
    let duration_s = w.duration_s.unwrap_or(30.0);
    if !(duration_s.is_finite() && (5.0..=3600.0).contains(&duration_s)) {
        return Err((
            "duration_s",
            format!("{duration_s} must be within 5..=3600 seconds"),
        ));
    }
    if let Some(s) = w.load_share {
        if !(s.is_finite() && s > 0.0 && s <= 1.0) {
            return Err(("load_share", format!("{s} must be a fraction in (0, 1]")));
        }
    }
    let max_ratio = w.max_ratio.unwrap_or(tol_d.max_ratio);
    if !(max_ratio.is_finite() && max_ratio >= 1.0) {
        return Err(("max_ratio", format!("{max_ratio} must be a number >= 1")));
    }
    let slack_ms = w.slack_ms.unwrap_or(tol_d.slack_ms);
    if !(slack_ms.is_finite() && slack_ms >= 0.0) {
        return Err((
            "slack_ms",
            format!("{slack_ms} must be a non-negative number"),
        ));
    }
    let min_replies = w.min_replies.unwrap_or(tol_d.min_replies);
    if min_replies == 0 {
        return Err(("min_replies", "must be at least 1".to_owned()));
    }
    let valid_intervals = w.valid_intervals.unwrap_or(rule_d.valid_intervals);
    let retry_intervals = w.retry_intervals.unwrap_or(rule_d.retry_intervals);
    for (k, v) in [
        ("valid_intervals", valid_intervals),
        ("retry_intervals", retry_intervals),
    ] {
        if v == 0 {
            return Err((k, "must be at least 1 interval".to_owned()));
        }
    }
    Ok(WhatifGateSpec {
        rule: super::gate::GateRule {
            valid_intervals,
            retry_intervals,
        },
        duration: Duration::from_secs_f64(duration_s),
        load_share: w.load_share,
        tolerance: crate::shadow::whatif::ShrinkTolerance {
            max_ratio,
            slack_ms,
            min_replies,
        },
    })
}

/// A sendable simulation-style forecast function.
type SendForecastFn = Box<dyn FnMut(&[f64]) -> Option<ForecastInput> + Send>;

/// A forecast function with the coverage of the intervals it handed out.
struct Tracked {
    forecast: SendForecastFn,
    history: VecDeque<f64>,
    window: usize,
    last: Option<ForecastInput>,
    hits: VecDeque<bool>,
}

/// Intervals over which the recent coverage of the forecast is measured.
const COVERAGE_WINDOW: usize = 48;

impl Tracked {
    fn new(p: AdaptiveSim) -> Tracked {
        Tracked {
            forecast: Box::new(adaptive_forecast(p)),
            history: VecDeque::with_capacity(p.window + 1),
            window: p.window,
            last: None,
            hits: VecDeque::with_capacity(COVERAGE_WINDOW + 1),
        }
    }

    /// Takes a saved history (oldest first), when it has none yet: `gap` intervals missed
    /// since are filled with the last value, and the newest `window` kept.
    fn seed(&mut self, saved: &[f64], gap: usize) {
        if self.history.is_empty() {
            crate::forecast::live::seed_history(&mut self.history, saved, gap, self.window);
        }
    }

    /// Adds this interval's observation and returns the forecast for the next one.
    fn push(&mut self, v: f64) -> Option<ForecastInput> {
        if let Some(f) = self.last {
            self.hits.push_back(v >= f.lower && v <= f.upper);
            if self.hits.len() > COVERAGE_WINDOW {
                self.hits.pop_front();
            }
        }
        self.history.push_back(v);
        if self.history.len() > self.window {
            self.history.pop_front();
        }
        let h = self.history.make_contiguous();
        let mut f = (self.forecast)(h);
        if let Some(f) = f.as_mut() {
            if self.hits.len() >= COVERAGE_WINDOW / 2 {
                f.coverage =
                    Some(self.hits.iter().filter(|h| **h).count() as f64 / self.hits.len() as f64);
            }
        }
        self.last = f;
        f
    }
}

struct Managed {
    name: String,
    reconciler: Reconciler<Box<dyn Backend + Send>>,
    cpu: Tracked,
    memory: Tracked,
    prev_cpu: Option<(Instant, u64)>,
    /// Measured interval length (seconds), for the lead time of scaling events.
    interval_s: Option<f64>,
    scale_cpu: ScaleDetector,
    scale_memory: ScaleDetector,
    /// Ids of the group's directories when last seen (see [`backend::incarnation`]).
    incarnation: Vec<Option<u64>>,
    /// A directory of the group is gone: no steps until it is back.
    missing: bool,
    /// The `allocate.cgroups` pattern it matched (None: named itself).
    pattern: Option<String>,
    /// Matched by its pattern since the last tick (said in that tick's JSON).
    just_matched: bool,
}

/// Format version of the allocator's history file.
const HISTORY_VERSION: u32 = 1;
/// The history file in `state_dir`: each managed group's recent CPU and memory usage, so
/// that an agent started again (an upgrade, a crash) forecasts, and pre-allocates, from its
/// first interval instead of after a warm-up of the forecaster's minimum history.
pub const HISTORY_FILE: &str = "forecast-history.json";
/// Ticks between two writes of the history file (it is also written at exit).
const HISTORY_SAVE_TICKS: u64 = 30;

#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct GroupHistory {
    cpu: Vec<f64>,
    memory: Vec<f64>,
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct HistoryFile {
    version: u32,
    interval_s: f64,
    saved_unix_s: f64,
    groups: std::collections::BTreeMap<String, GroupHistory>,
}

/// The history file of a running allocator: where it is, the interval it is kept at, the
/// histories of groups not managed now (restored ones a pattern matches later, and those of
/// groups a pattern let go, for when they are back), each with the time it ends at, and
/// what a restore found.
#[derive(Debug, Default)]
struct History {
    path: Option<PathBuf>,
    interval_s: Option<f64>,
    /// A history older than this many intervals is not used (`window / 8`).
    max_gap: usize,
    pending: std::collections::BTreeMap<String, (GroupHistory, f64)>,
    ticks: u64,
    restored: Option<serde_json::Value>,
}

fn now_unix_s() -> f64 {
    super::state::unix_ms() as f64 / 1000.0
}

impl History {
    /// Whole intervals since `t` (unix seconds).
    fn gap(&self, t: f64) -> usize {
        let i = self.interval_s.unwrap_or(1.0).max(1e-3);
        ((now_unix_s() - t) / i).max(0.0) as usize
    }

    /// Gives `g` the history it had, if any and recent enough.
    fn seed(&mut self, g: &mut Managed) {
        if let Some((h, t)) = self.pending.remove(&g.name) {
            let gap = self.gap(t);
            if gap <= self.max_gap {
                g.cpu.seed(&h.cpu, gap);
                g.memory.seed(&h.memory, gap);
            }
        }
    }

    /// Keeps the history of `g`, which is no longer managed (a pattern let it go), for
    /// when it is back.
    fn stash(&mut self, g: &Managed) {
        let h = GroupHistory {
            cpu: g.cpu.history.iter().copied().collect(),
            memory: g.memory.history.iter().copied().collect(),
        };
        self.pending.insert(g.name.clone(), (h, now_unix_s()));
    }
}

/// Every managed cgroup of `[allocate]`.
pub struct LiveAllocator {
    groups: Vec<Managed>,
    predictive: bool,
    scale: ScaleRule,
    webhook: Option<Webhook>,
    /// Scaling events of the last tick (see [`LiveAllocator::take_events`]).
    events: Vec<ScaleEvent>,
    /// What-if validation of forecast shrinks (`[allocate.whatif]`).
    validator: Option<WhatifValidator>,
    /// The what-if verdict of the last tick (see [`LiveAllocator::take_verdict`]).
    verdict: Option<super::gate::ShrinkOutcome>,
    /// The hierarchies and the section, to open groups added by a reload.
    root: CgroupRoot,
    spec: AllocateSpec,
    /// The Kubernetes API client (`[allocate.kubernetes]`), shared by the groups.
    kube: Option<std::sync::Arc<super::kube::KubeClient>>,
    /// The patterns of `allocate.cgroups`, expanded every tick.
    patterns: Vec<String>,
    /// Matches that could not be opened, with the error last logged for each (retried every
    /// tick, logged when the error changes).
    refused: std::collections::BTreeMap<String, String>,
    /// The dry run in force (for groups a pattern matches later).
    dry_run: bool,
    /// The groups' usage history across restarts ([`HISTORY_FILE`]).
    history: History,
}

impl LiveAllocator {
    /// Opens every group (restoring the originals a crashed run left behind). `whatif`: how
    /// to run the replicas that validate forecast shrinks (required with
    /// `[allocate.whatif]`; the config check makes sure `[shadow]` and `[mirror]` exist).
    pub fn start(spec: &AllocateSpec, whatif: Option<WhatifValidation>) -> Result<LiveAllocator> {
        let validator = match (&spec.whatif, whatif) {
            (None, _) => None,
            (Some(_), Some(v)) => Some(WhatifValidator::new(v)),
            (Some(_), None) => {
                return Err(AllocateError::Config {
                    key: "allocate.whatif".to_owned(),
                    reason: "needs [shadow] and [mirror]: the replicas and the traffic to validate shrinks on",
                })
            }
        };
        let root =
            CgroupRoot::detect(&spec.cgroup_root).map_err(|source| AllocateError::Cgroup {
                cgroup: spec.cgroup_root.display().to_string(),
                source,
            })?;
        let kube = match &spec.kube {
            None => None,
            Some(k) => Some(std::sync::Arc::new(super::kube::KubeClient::new(k)?)),
        };
        let mut groups = Vec::new();
        let mut patterns = Vec::new();
        for name in &spec.cgroups {
            if is_pattern(name) {
                // Matched by the first tick (a pattern may match nothing yet).
                patterns.push(name.trim_matches('/').to_owned());
            } else {
                groups.push(Managed::open(&root, spec, kube.as_ref(), name)?);
            }
        }
        let webhook = match &spec.webhook {
            None => None,
            Some((url, timeout)) => Some(Webhook::start(url, *timeout).map_err(|e| {
                tracing::error!(url = %url, error = %e, "scale webhook");
                AllocateError::Config {
                    key: "allocate.scale.webhook".to_owned(),
                    reason: "the webhook could not be started (see the log)",
                }
            })?),
        };
        Ok(LiveAllocator {
            groups,
            predictive: spec.predictive,
            scale: spec.scale,
            webhook,
            events: Vec::new(),
            validator,
            verdict: None,
            root,
            spec: spec.clone(),
            kube,
            patterns,
            refused: std::collections::BTreeMap::new(),
            dry_run: spec.allocator.dry_run,
            history: History {
                path: Some(spec.allocator.state_dir.join(HISTORY_FILE)),
                max_gap: (spec.forecast.window / 8).max(1),
                ..History::default()
            },
        })
    }

    /// Reads the history file an earlier run left ([`HISTORY_FILE`] in `state_dir`) for
    /// ticks every `interval_s` seconds: each group managed now, or matched later, starts
    /// with its usage history (the intervals missed since filled with its last value), so
    /// its forecasts are ready at once. Not used when it was written more than
    /// `window / 8` intervals ago, at another interval, or in another format (the returned
    /// summary says why; also in [`Self::restored`]). From now on the file is written
    /// every 30 ticks and at exit.
    pub fn restore_history(&mut self, interval_s: f64) -> Option<serde_json::Value> {
        self.history.interval_s = Some(interval_s);
        let path = self.history.path.clone()?;
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
            Err(e) => {
                let v = serde_json::json!({"file": path, "discarded": format!("reading it: {e}")});
                self.history.restored = Some(v.clone());
                return Some(v);
            }
        };
        let max_gap = self.history.max_gap;
        let why = match serde_json::from_slice::<HistoryFile>(&text) {
            Err(e) => Err(format!("parsing it: {e}")),
            Ok(f) if f.version != HISTORY_VERSION => Err(format!(
                "format version {}, not {HISTORY_VERSION}",
                f.version
            )),
            Ok(f) if (f.interval_s - interval_s).abs() > 0.01 * interval_s => Err(format!(
                "intervals of {} s, this run's are {interval_s} s",
                f.interval_s
            )),
            Ok(f) => {
                let gap = self.history.gap(f.saved_unix_s);
                if gap > max_gap {
                    Err(format!("written {gap} intervals ago, more than {max_gap}"))
                } else {
                    Ok((f.groups, f.saved_unix_s, gap))
                }
            }
        };
        let v = match why {
            Ok((groups, saved, gap)) => {
                let n = groups.len();
                self.history.pending = groups.into_iter().map(|(k, h)| (k, (h, saved))).collect();
                let mut taken = 0;
                for g in &mut self.groups {
                    taken += usize::from(self.history.pending.contains_key(&g.name));
                    self.history.seed(g);
                }
                serde_json::json!({"file": path, "groups": n, "taken": taken, "gap_intervals": gap})
            }
            Err(why) => serde_json::json!({"file": path, "discarded": why}),
        };
        tracing::info!(restored = %v, "allocator usage history");
        self.history.restored = Some(v.clone());
        Some(v)
    }

    /// What [`Self::restore_history`] found, if it ran and there was a file.
    pub fn restored(&self) -> Option<&serde_json::Value> {
        self.history.restored.as_ref()
    }

    /// Writes every managed group's usage history (and the restored histories of groups
    /// not managed yet) to the history file, atomically. Only once the interval is known.
    pub fn save_history(&mut self) -> std::io::Result<()> {
        let (Some(path), Some(interval_s)) = (self.history.path.clone(), self.history.interval_s)
        else {
            return Ok(());
        };
        // Histories of groups not managed now, brought up to now with their last value (the
        // file has one time); those too old to be used any more are dropped.
        let max_gap = self.history.max_gap;
        self.history
            .pending
            .retain(|_, (_, t)| (now_unix_s() - *t) / interval_s <= max_gap as f64);
        let fill = |v: &[f64], gap: usize| -> Vec<f64> {
            let mut out = v.to_vec();
            if let Some(&last) = v.last() {
                out.extend(std::iter::repeat_n(last, gap));
            }
            out
        };
        let mut groups: std::collections::BTreeMap<String, GroupHistory> = self
            .history
            .pending
            .iter()
            .map(|(k, (h, t))| {
                let gap = self.history.gap(*t);
                (
                    k.clone(),
                    GroupHistory {
                        cpu: fill(&h.cpu, gap),
                        memory: fill(&h.memory, gap),
                    },
                )
            })
            .collect();
        for g in &self.groups {
            groups.insert(
                g.name.clone(),
                GroupHistory {
                    cpu: g.cpu.history.iter().copied().collect(),
                    memory: g.memory.history.iter().copied().collect(),
                },
            );
        }
        let file = HistoryFile {
            version: HISTORY_VERSION,
            interval_s,
            saved_unix_s: now_unix_s(),
            groups,
        };
        let text = serde_json::to_vec(&file).map_err(std::io::Error::other)?;
        crate::sys::write_atomic(&path, &text).map_err(|(op, p, e)| {
            std::io::Error::new(e.kind(), format!("{op} {}: {e}", p.display()))
        })
    }

    /// The group names `pattern` matches now.
    pub fn matches(&self, pattern: &str) -> Vec<String> {
        match_names(&names_base(&self.root), pattern)
    }

    /// Expands the patterns: a new match is managed from now on (its first tick says
    /// `"change": "matched"`), a group a pattern matched whose directory is gone is let go
    /// (`"unmatched"`, in `out`: its restore has nothing to write). A group named itself, or matched by an earlier pattern, is not
    /// taken twice. Kubelet-owned matches are refused unless `allow_kubelet_owned`.
    fn expand(&mut self, out: &mut serde_json::Map<String, serde_json::Value>) {
        if self.patterns.is_empty() {
            return;
        }
        // Gone matches first: a restarted service's group that is back by now is followed
        // (recreated) instead.
        let mut i = 0;
        while i < self.groups.len() {
            let g = &self.groups[i];
            let gone = g.pattern.is_some()
                && backend::incarnation(g.reconciler.backend())
                    .iter()
                    .any(Option::is_none);
            if !gone {
                i += 1;
                continue;
            }
            let mut g = self.groups.remove(i);
            tracing::info!(cgroup = %g.name, pattern = ?g.pattern, "a matched group is gone: no longer managed");
            self.history.stash(&g);
            if let Err(e) = g.reconciler.restore() {
                tracing::warn!(cgroup = %g.name, error = %super::state::error_chain(&e), "restore of a gone group");
            }
            out.insert(
                g.name.clone(),
                serde_json::json!({ "change": "unmatched", "pattern": g.pattern }),
            );
        }
        for pattern in self.patterns.clone() {
            for name in self.matches(&pattern) {
                if self.groups.iter().any(|g| g.name == name) {
                    continue;
                }
                let opened = if super::reconcile::kubelet_owned(&name)
                    && !self.spec.allocator.allow_kubelet_owned
                    && self.kube.is_none()
                {
                    Err("owned by the kubelet (allocate.allow_kubelet_owned is false)".to_owned())
                } else {
                    Managed::open(&self.root, &self.spec, self.kube.as_ref(), &name)
                        .map_err(|e| super::state::error_chain(&e))
                };
                match opened {
                    Ok(mut g) => {
                        g.reconciler.set_dry_run(self.dry_run);
                        g.pattern = Some(pattern.clone());
                        g.just_matched = true;
                        self.history.seed(&mut g);
                        tracing::info!(cgroup = %name, %pattern, "a group matches an allocate.cgroups pattern: managed from now on");
                        self.refused.remove(&name);
                        self.groups.push(g);
                    }
                    Err(e) => {
                        if self.refused.get(&name) != Some(&e) {
                            tracing::warn!(cgroup = %name, %pattern, error = %e, "a matching group cannot be managed");
                            self.refused.insert(name.clone(), e);
                        }
                    }
                }
            }
        }
        let base = names_base(&self.root);
        self.refused.retain(|name, _| base.join(name).is_dir());
    }

    /// Manage `name` from the next tick on (a reload), as at start: limits a crashed run
    /// left are restored first, the originals recorded before the first write, the dry run
    /// that of the other groups. Idempotent.
    pub fn add_group(&mut self, name: &str, dry_run: bool) -> Result<()> {
        let name = name.trim_matches('/');
        if is_pattern(name) {
            // Its matches are managed from the next tick.
            if !self.patterns.iter().any(|p| p == name) {
                self.patterns.push(name.to_owned());
            }
            return Ok(());
        }
        if self.groups.iter().any(|g| g.name == name) {
            return Ok(());
        }
        let mut g = Managed::open(&self.root, &self.spec, self.kube.as_ref(), name)?;
        g.reconciler.set_dry_run(dry_run);
        self.history.seed(&mut g);
        self.groups.push(g);
        Ok(())
    }

    /// Stop managing `name` (a reload): its original limits are restored now, as on exit.
    /// Returns whether it was managed.
    pub fn remove_group(&mut self, name: &str) -> Result<bool> {
        let name = name.trim_matches('/');
        if is_pattern(name) {
            // Every group it matched is let go, each restored.
            let before = self.patterns.len();
            self.patterns.retain(|p| p != name);
            let mut first_error = None;
            while let Some(i) = self
                .groups
                .iter()
                .position(|g| g.pattern.as_deref() == Some(name))
            {
                let mut g = self.groups.remove(i);
                match g.reconciler.restore() {
                    Ok(report) => {
                        tracing::info!(cgroup = %g.name, restored = ?report, "no longer managed: original limits restored")
                    }
                    Err(e) => {
                        first_error.get_or_insert(e);
                    }
                }
            }
            return match first_error {
                Some(e) => Err(e),
                None => Ok(self.patterns.len() < before),
            };
        }
        let Some(i) = self.groups.iter().position(|g| g.name == name) else {
            return Ok(false);
        };
        let mut g = self.groups.remove(i);
        let report = g.reconciler.restore()?;
        tracing::info!(cgroup = %name, restored = ?report, "no longer managed: original limits restored");
        Ok(true)
    }

    /// Dry run on or off for every managed group, from the next tick on.
    pub fn set_dry_run(&mut self, dry_run: bool) {
        self.dry_run = dry_run;
        for g in &mut self.groups {
            g.reconciler.set_dry_run(dry_run);
        }
    }

    /// Groups managed now (named and matched), and how many of them are missing.
    pub fn counts(&self) -> (usize, usize) {
        (
            self.groups.len(),
            self.groups.iter().filter(|g| g.missing).count(),
        )
    }

    /// The scaling events of the last [`LiveAllocator::tick`] (already queued to the
    /// webhook, if one is configured).
    pub fn take_events(&mut self) -> Vec<ScaleEvent> {
        std::mem::take(&mut self.events)
    }

    /// The what-if verdict that arrived in the last [`LiveAllocator::tick`], if any.
    pub fn take_verdict(&mut self) -> Option<super::gate::ShrinkOutcome> {
        self.verdict.take()
    }

    /// The webhook, if configured.
    pub fn webhook(&self) -> Option<&Webhook> {
        self.webhook.as_ref()
    }

    /// One interval for every group; returns a JSON summary (per group: usage, forecasts and
    /// the step's decisions, or the error). Errors do not stop the other groups: the
    /// reconciler backs off on its own.
    pub fn tick(&mut self) -> serde_json::Value {
        let mut out = serde_json::Map::new();
        self.events.clear();
        self.expand(&mut out);
        // A finished what-if comparison: its verdict goes to the group that asked.
        if let Some(o) = self.validator.as_mut().and_then(WhatifValidator::poll) {
            match self.groups.iter_mut().find(|g| g.name == o.request.cgroup) {
                Some(g) => {
                    if let Err(e) = g.reconciler.whatif_outcome(&o) {
                        tracing::warn!(error = %super::state::error_chain(&e), "could not audit a what-if verdict");
                    }
                }
                None => {
                    tracing::warn!(cgroup = %o.request.cgroup, "what-if verdict for an unknown group")
                }
            }
            self.verdict = Some(o);
        }
        for g in &mut self.groups {
            let v = match g.tick(self.predictive, &self.scale, &mut self.events) {
                Ok((mut v, requests)) => {
                    if let Some(val) = self.validator.as_mut() {
                        for req in requests {
                            if val.submit(&req) {
                                g.reconciler.whatif_started(&req);
                            }
                        }
                        if let Some(r) = val.running().filter(|r| r.cgroup == g.name) {
                            v["whatif_running"] = serde_json::json!(r);
                        }
                    }
                    v
                }
                Err(e) => serde_json::json!({ "error": super::state::error_chain(&e) }),
            };
            let mut v = v;
            let infeasible = g.infeasible_events(&self.scale);
            if !infeasible.is_empty() {
                match v.get_mut("scale_events").and_then(|s| s.as_array_mut()) {
                    Some(list) => list.extend(infeasible.iter().map(|e| serde_json::json!(e))),
                    None => v["scale_events"] = serde_json::json!(infeasible),
                }
                self.events.extend(infeasible);
            }
            // A group matched this tick: its first step says so.
            if std::mem::take(&mut g.just_matched) {
                if v.get("change").is_none_or(serde_json::Value::is_null) {
                    v["change"] = "matched".into();
                }
                v["pattern"] = g.pattern.clone().into();
            }
            out.insert(g.name.clone(), v);
        }
        for ev in &self.events {
            tracing::warn!(
                cgroup = %ev.cgroup,
                resource = ev.resource.as_str(),
                direction = ev.direction.as_str(),
                need = ev.need,
                capacity = ev.capacity,
                lead_s = ev.lead_s,
                "scaling event"
            );
            if let Some(w) = &self.webhook {
                w.send(ev);
            }
        }
        self.history.ticks += 1;
        if self.history.ticks.is_multiple_of(HISTORY_SAVE_TICKS) {
            if let Err(e) = self.save_history() {
                tracing::warn!(error = %e, "writing the allocator's usage history");
            }
        }
        out.into()
    }
}

impl Drop for LiveAllocator {
    /// The usage history is written at exit, before the groups' original limits are
    /// restored (by their reconcilers, dropped after this).
    fn drop(&mut self) {
        if let Err(e) = self.save_history() {
            tracing::warn!(error = %e, "writing the allocator's usage history at exit");
        }
    }
}

/// A managed resource's cooldown (0 when it is not managed).
fn cooldown(rails: Option<Rails>) -> u32 {
    rails.map_or(0, |r| r.cooldown_intervals)
}

impl Managed {
    /// Opens group `name` (restoring the originals a crashed run left behind).
    fn open(
        root: &CgroupRoot,
        spec: &AllocateSpec,
        kube: Option<&std::sync::Arc<super::kube::KubeClient>>,
        name: &str,
    ) -> Result<Managed> {
        let name = name.trim_matches('/').to_owned();
        let mut backend = backend::open(root, &name)?;
        if let Some(client) = kube.filter(|_| super::reconcile::kubelet_owned(&name)) {
            backend = Box::new(super::kube::KubeBackend::new(backend, client.clone())?);
        }
        let incarnation = backend::incarnation(&backend);
        let reconciler = Reconciler::new(backend, spec.allocator.clone())?;
        if let Some(r) = reconciler.recovered() {
            tracing::warn!(cgroup = %name, restored = ?r, "restored the limits a previous run left");
        }
        Ok(Managed {
            name,
            reconciler,
            cpu: Tracked::new(spec.forecast.for_cooldown(cooldown(spec.allocator.cpu))),
            memory: Tracked::new(spec.forecast.for_cooldown(cooldown(spec.allocator.memory))),
            prev_cpu: None,
            interval_s: None,
            scale_cpu: ScaleDetector::default(),
            scale_memory: ScaleDetector::default(),
            incarnation,
            missing: false,
            pattern: None,
            just_matched: false,
        })
    }

    /// Follows the group's directories: `Some("gone")` when one vanished (a stopped
    /// service), `Some("recreated")` / `Some("back")` when they hold a new group (a
    /// restarted service, whose limits are then its owner's: see
    /// [`Reconciler::reincarnate`]). The forecasts keep their history (the same service's
    /// demand); the CPU counter starts again.
    fn follow(&mut self) -> Result<Option<&'static str>> {
        let now = backend::incarnation(self.reconciler.backend());
        if now.iter().any(Option::is_none) {
            if self.missing {
                return Ok(None);
            }
            self.missing = true;
            tracing::warn!(cgroup = %self.name, "a managed group is gone: no steps until it is back");
            return Ok(Some("gone"));
        }
        let was_missing = std::mem::take(&mut self.missing);
        if now == self.incarnation {
            return Ok(None);
        }
        let change = if was_missing { "back" } else { "recreated" };
        tracing::warn!(
            cgroup = %self.name,
            change,
            "a managed group was made again: its limits are its owner's now, the old originals are dropped"
        );
        self.incarnation = now;
        self.prev_cpu = None;
        self.reconciler.reincarnate()?;
        Ok(Some(change))
    }

    /// Scale-out events for the resizes the kubelet found this node cannot fit (Kubernetes
    /// only), once per episode: the node's capacity, not the rails, is short.
    fn infeasible_events(&self, rule: &ScaleRule) -> Vec<ScaleEvent> {
        let Some(k) = self.reconciler.backend().kube() else {
            return Vec::new();
        };
        let found = k.take_infeasible();
        if !rule.enabled {
            return Vec::new();
        }
        found
            .into_iter()
            .map(|i| {
                let tracked = match i.resource {
                    Resource::Memory => &self.memory,
                    // Only CPU and memory are resized through the API.
                    Resource::Cpu | Resource::Cpuset => &self.cpu,
                };
                ScaleEvent {
                    event: "scale".to_owned(),
                    direction: super::scale::Direction::Out,
                    cause: ScaleCause::ResizeInfeasible,
                    cgroup: self.name.clone(),
                    resource: i.resource,
                    time_ms: super::state::unix_ms(),
                    need: i.asked,
                    capacity: i.in_force,
                    shortfall: i.asked - i.in_force,
                    forecast: tracked.last,
                    lead_intervals: 0,
                    lead_s: 0.0,
                    usage: tracked.history.back().copied(),
                    held_intervals: 1,
                    message: Some(format!(
                        "pod {} container {}: the node cannot fit the resize{}",
                        i.pod,
                        i.container,
                        if i.message.is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", i.message)
                        }
                    )),
                    acted: false,
                }
            })
            .collect()
    }

    fn tick(
        &mut self,
        predictive: bool,
        rule: &ScaleRule,
        events: &mut Vec<ScaleEvent>,
    ) -> Result<(serde_json::Value, Vec<super::gate::ShrinkRequest>)> {
        let change = self.follow()?;
        if self.missing {
            return Ok((
                serde_json::json!({ "missing": true, "change": change }),
                Vec::new(),
            ));
        }
        let sample = self.reconciler.backend().read_sample()?;
        let now = Instant::now();
        let cores = match (sample.cpu_usage_us, self.prev_cpu) {
            (Some(us), Some((t, prev))) => {
                let dt = now.duration_since(t).as_secs_f64();
                if dt > 0.0 {
                    self.interval_s = Some(self.interval_s.map_or(dt, |s| 0.8 * s + 0.2 * dt));
                }
                (dt > 0.0).then(|| us.saturating_sub(prev) as f64 / 1e6 / dt)
            }
            _ => None,
        };
        if let Some(us) = sample.cpu_usage_us {
            self.prev_cpu = Some((now, us));
        }
        let forecasts = Forecasts {
            cpu: cores.and_then(|c| self.cpu.push(c)),
            memory: sample.memory_usage.and_then(|b| self.memory.push(b as f64)),
        };
        // Reactive only: the forecasts are still made (scaling events use them) but the
        // decision does not see them.
        let decided = if predictive {
            forecasts
        } else {
            Forecasts::default()
        };
        let report = self.reconciler.step(&decided)?;
        let cfg = self.reconciler.config();
        let mut scale = Vec::new();
        for (resource, rails, f, det, usage) in [
            (
                Resource::Cpu,
                cfg.cpu.as_ref(),
                forecasts.cpu,
                &mut self.scale_cpu,
                cores,
            ),
            (
                Resource::Memory,
                cfg.memory.as_ref(),
                forecasts.memory,
                &mut self.scale_memory,
                sample.memory_usage.map(|b| b as f64),
            ),
        ] {
            let (Some(rails), Some(f)) = (rails, f) else {
                continue;
            };
            if let Some(s) = det.observe(rule, &cfg.policy, rails, Some(&f)) {
                let ev = ScaleEvent {
                    event: "scale".to_owned(),
                    direction: s.direction,
                    cause: ScaleCause::Forecast,
                    cgroup: self.name.clone(),
                    resource,
                    time_ms: super::state::unix_ms(),
                    need: s.need,
                    capacity: s.capacity,
                    shortfall: s.need - s.capacity,
                    forecast: Some(f),
                    lead_intervals: f.horizon_intervals,
                    lead_s: f64::from(f.horizon_intervals) * self.interval_s.unwrap_or(0.0),
                    usage,
                    held_intervals: s.held_intervals,
                    message: None,
                    acted: false,
                };
                scale.push(ev);
            }
        }
        let mut value = serde_json::json!({
            "cpu_cores": cores,
            "memory_bytes": sample.memory_usage,
            "forecasts": forecasts,
            "predictive": predictive,
            "step": report,
            "scale_events": scale,
        });
        if let Some(c) = change {
            value["change"] = c.into();
        }
        if let Some(k) = self.reconciler.backend().kube() {
            // Where its changes go: the pod and container (once looked up).
            value["kubernetes"] = k.resolved();
        }
        events.extend(scale);
        Ok((value, report.whatif_requests))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> std::result::Result<AllocateSpec, (String, String)> {
        toml::from_str::<RawAllocate>(text)
            .map_err(|e| ("toml".to_owned(), e.to_string()))?
            .validate()
    }

    #[test]
    fn patterns_are_checked_and_expanded_relative_to_the_hierarchy() {
        let err = parse(r#"cgroups = ["web", "app.slice/[web.service"]"#).unwrap_err();
        assert_eq!(err.0, "allocate.cgroups[1]");
        assert!(err.1.contains("not a valid pattern"), "{}", err.1);
        let err = parse(r#"cgroups = ["kubepods*/*"]"#).unwrap_err();
        assert_eq!(err.0, "allocate.cgroups[0]");
        assert!(parse(r#"cgroups = ["app.slice/web@*.service"]"#).is_ok());
        // Expansion: groups (directories with cgroup.procs), by name, sorted.
        let base = std::env::temp_dir().join(format!("shadow-alloc-match-{}", std::process::id()));
        for d in [
            "app.slice/web@2.service",
            "app.slice/web@1.service",
            "app.slice/db.service",
        ] {
            std::fs::create_dir_all(base.join(d)).unwrap();
            std::fs::write(base.join(d).join("cgroup.procs"), "").unwrap();
        }
        std::fs::create_dir_all(base.join("app.slice/web@x.service")).unwrap(); // no group
        assert_eq!(
            match_names(&base, "app.slice/web@*.service"),
            ["app.slice/web@1.service", "app.slice/web@2.service"]
        );
        assert!(match_names(&base, "none/*").is_empty());
        let _ = std::fs::remove_dir_all(&base);
    }

    #[test]
    fn a_shrink_covers_the_lead_time_plus_each_resources_cooldown_unless_set() {
        let s = parse(r#"cgroups = ["web"]"#).unwrap();
        assert_eq!(s.forecast.shrink_cover, 0);
        let cpu = s.forecast.for_cooldown(cooldown(s.allocator.cpu));
        let mem = s.forecast.for_cooldown(cooldown(s.allocator.memory));
        assert_eq!((cpu.cover(), mem.cover()), (3, 4));
        let s = parse("cgroups = [\"web\"]\nlead = 2\nshrink_cover = 5").unwrap();
        let cpu = s.forecast.for_cooldown(cooldown(s.allocator.cpu));
        assert_eq!((cpu.lead, cpu.cover()), (2, 5));
        // At least the lead time.
        let s = parse("cgroups = [\"web\"]\nlead = 2\nshrink_cover = 1").unwrap();
        assert_eq!(s.forecast.for_cooldown(2).cover(), 2);
        let err = parse("cgroups = [\"web\"]\nshrink_cover = 0").unwrap_err();
        assert_eq!(err.0, "allocate.shrink_cover");
        assert!(err.1.contains("at least 1"), "{err:?}");
    }

    #[test]
    fn kubelet_owned_groups_are_refused_at_config_time() {
        let err = parse(r#"cgroups = ["kubepods.slice/kubepods-burstable.slice"]"#).unwrap_err();
        assert_eq!(err.0, "allocate.cgroups[0]");
        assert!(err.1.contains("allow_kubelet_owned"), "{err:?}");
        let uid = "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b";
        let err = parse(&format!(r#"cgroups = ["web", "root/pod{uid}"]"#)).unwrap_err();
        assert_eq!(err.0, "allocate.cgroups[1]");
        let ok = parse(&format!(
            "cgroups = [\"root/pod{uid}\"]\nallow_kubelet_owned = true"
        ));
        assert!(ok.is_ok(), "{ok:?}");
    }

    #[test]
    fn scale_and_placement_sections() {
        let s = parse(
            r#"
cgroups = ["web"]
predictive = false
[allocate.scale]
out_hold_intervals = 3
webhook = "http://127.0.0.1:9000/scale"
webhook_timeout_ms = 500
[allocate.placement]
avoid_cpus = "2-3"
nic = "eth0"
heavy_rx_pps = 5000
"#
            .replace("[allocate.", "[")
            .as_str(),
        )
        .unwrap();
        assert!(!s.predictive);
        assert_eq!(s.scale.out_hold_intervals, 3);
        assert_eq!(
            s.webhook,
            Some((
                "http://127.0.0.1:9000/scale".to_owned(),
                Duration::from_millis(500)
            ))
        );
        assert_eq!(
            s.allocator.pin_away_from.as_ref().map(|c| c.to_string()),
            Some("2-3".to_owned())
        );
        let nic = s.allocator.nic.unwrap();
        assert_eq!((nic.interface.as_str(), nic.heavy_rx_pps), ("eth0", 5000.0));
        let d = parse(r#"cgroups = ["web"]"#).unwrap();
        assert!(d.predictive && d.webhook.is_none() && d.allocator.nic.is_none());

        let err = parse("cgroups = [\"web\"]\n[scale]\nwebhook = \"https://x/\"").unwrap_err();
        assert_eq!(err.0, "allocate.scale.webhook");
        let err = parse("cgroups = [\"web\"]\n[scale]\nin_hold_intervals = 0").unwrap_err();
        assert_eq!(err.0, "allocate.scale.in_hold_intervals");
        let err = parse("cgroups = [\"web\"]\n[placement]\navoid_cpus = \"x\"").unwrap_err();
        assert_eq!(err.0, "allocate.placement.avoid_cpus");

        let s = parse(
            "cgroups = [\"web\"]\n[cpu]\nscale_in_below = 0.5\nscale_in_after_intervals = 30\n\
             shortage_memory_intervals = 12",
        )
        .unwrap();
        let cpu = s.allocator.cpu.unwrap();
        assert_eq!(
            (
                cpu.scale_in_below,
                cpu.scale_in_after_intervals,
                cpu.shortage_memory_intervals
            ),
            (0.5, 30, 12)
        );
        assert_eq!(s.allocator.memory.unwrap().shortage_memory_intervals, 0);
        // Overlapping the near-limit band (0.9) would flap.
        let err = parse("cgroups = [\"web\"]\n[cpu]\nscale_in_below = 0.9").unwrap_err();
        assert_eq!(err.0, "allocate.cpu.scale_in_below");
        assert!(err.1.contains("near_limit"), "{err:?}");
    }

    #[test]
    fn cpu_burst_is_a_fraction_of_the_quota_for_cpu_only() {
        let s = parse("cgroups = [\"web\"]\n[cpu]\nburst = 0.5").unwrap();
        assert_eq!(s.allocator.cpu_burst, Some(0.5));
        assert_eq!(
            parse("cgroups = [\"web\"]").unwrap().allocator.cpu_burst,
            None
        );
        for bad in ["1.5", "-0.1", "nan"] {
            let err = parse(&format!("cgroups = [\"web\"]\n[cpu]\nburst = {bad}")).unwrap_err();
            assert_eq!(err.0, "allocate.cpu.burst", "{bad}: {err:?}");
            assert!(err.1.contains("above the quota"), "{err:?}");
        }
        let err = parse("cgroups = [\"web\"]\n[memory]\nburst = 0.5").unwrap_err();
        assert_eq!(err.0, "allocate.memory.burst");
        let err = parse(
            "cgroups = [\"web\"]\n[cpu]\nburst = 0.5\n[kubernetes]\n\
             api_server = \"http://127.0.0.1:1\"\nnode_name = \"n\"\ntoken_file = \"/proc/version\"",
        )
        .unwrap_err();
        assert_eq!(err.0, "allocate.cpu.burst");
        assert!(err.1.contains("resize API"), "{err:?}");
    }

    #[test]
    fn whatif_section_defaults_and_errors() {
        let s = parse("cgroups = [\"web\"]\n[whatif]\nslack_ms = 5\nload_share = 0.25").unwrap();
        let w = s.whatif.expect("whatif on");
        assert_eq!(w.duration, Duration::from_secs(30));
        assert_eq!(w.load_share, Some(0.25));
        assert_eq!(w.tolerance.slack_ms, 5.0);
        assert_eq!(w.tolerance.max_ratio, 1.25);
        assert_eq!(s.allocator.whatif_gate, Some(w.rule));
        let off = parse("cgroups = [\"web\"]\n[whatif]\nenabled = false").unwrap();
        assert!(off.whatif.is_none() && off.allocator.whatif_gate.is_none());
        assert!(parse("cgroups = [\"web\"]").unwrap().whatif.is_none());
        for (body, key) in [
            ("duration_s = 1", "allocate.whatif.duration_s"),
            ("load_share = 1.5", "allocate.whatif.load_share"),
            ("max_ratio = 0.5", "allocate.whatif.max_ratio"),
            ("slack_ms = -1", "allocate.whatif.slack_ms"),
            ("min_replies = 0", "allocate.whatif.min_replies"),
            ("retry_intervals = 0", "allocate.whatif.retry_intervals"),
        ] {
            let err = parse(&format!("cgroups = [\"web\"]\n[whatif]\n{body}")).unwrap_err();
            assert_eq!(err.0, key, "{body}: {err:?}");
        }
    }
}
