//! `shadow-agent profile --cgroup PATH... [--interval-ms N] [--duration S] [--json]`: stream
//! fixed-interval samples of the given cgroup2 directories (a `--cgroup` may be a pattern,
//! `'/sys/fs/cgroup/unified/app.slice/*.service'`: what it matches at start).
//!
//! With `--json` the first line is `{"type":"hooks","hooks":[HookReport...]}` and every
//! further line one [`Sample`]; the schema is in `docs/profiler.md`. Without it a short
//! human-readable line per cgroup and interval. The agent itself is not in any tracked
//! cgroup, so its own work is charged to "other", never to the series it reports.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use super::{
    sampler::{Drops, Sample, Sampler, Store},
    EmptySwitchHook, HookPreference, ProfileError, Profiler,
};

/// Options of the `profile` command.
#[derive(Clone, Debug)]
pub struct ProfileOpts {
    /// cgroup2 directories to track.
    pub cgroups: Vec<PathBuf>,
    pub interval: Duration,
    /// Stop after this long (default: until SIGINT/SIGTERM).
    pub duration: Option<Duration>,
    pub json: bool,
    /// Samples kept in memory (all cgroups together).
    pub store_capacity: usize,
    /// Capacity of the exec/exit event channel.
    pub event_capacity: usize,
    /// Attach only an empty sched_switch program and track nothing (the benchmark's peer).
    pub empty_hook: bool,
}

impl ProfileOpts {
    pub fn new(cgroups: Vec<PathBuf>) -> ProfileOpts {
        ProfileOpts {
            cgroups,
            interval: Duration::from_secs(1),
            duration: None,
            json: false,
            store_capacity: 3600,
            event_capacity: 4096,
            empty_hook: false,
        }
    }
}

impl ProfileError {
    /// 2 for usage errors (nothing was attached), 1 otherwise.
    pub fn exit_code(&self) -> u8 {
        match self {
            ProfileError::NotACgroup { .. } | ProfileError::Usage { .. } => 2,
            _ => 1,
        }
    }
}

/// Write one line to stdout; `false` once the reader is gone (EPIPE), so the stream stops
/// instead of panicking as `println!` would.
fn emit(line: &str) -> bool {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").and_then(|()| out.flush()).is_ok()
}

fn human(s: &Sample) -> String {
    format!(
        "{:>7.1}s {} cpu {:.3} ({} sw) runq p50/p95/p99 {:.0}/{:.0}/{:.0} us (n={}) \
         faults {} io r/w {}/{} B net rx/tx {}/{} B mem {} exec/exit {}/{}",
        s.t_s,
        s.cgroup.display(),
        s.cpu.utilization,
        s.cpu.switches,
        s.runq.p50_us,
        s.runq.p95_us,
        s.runq.p99_us,
        s.runq.count,
        s.faults.total,
        s.io.read_bytes,
        s.io.write_bytes,
        s.net.rx_bytes,
        s.net.tx_bytes,
        s.memory
            .map_or_else(|| "-".to_owned(), |m| format!("{} B", m.usage_bytes)),
        s.procs.execs,
        s.procs.exits,
    )
}

/// Run the command: validate the paths, attach, stream until `duration` or a signal.
pub fn run(opts: &ProfileOpts) -> Result<(), ProfileError> {
    if opts.cgroups.is_empty() {
        return Err(ProfileError::Usage {
            reason: "at least one --cgroup PATH is required".into(),
        });
    }
    if opts.interval.is_zero() {
        return Err(ProfileError::Usage {
            reason: "the interval must be positive".into(),
        });
    }
    // Patterns stand for what they match now (a pattern that matches nothing is an error
    // here: this command profiles what exists; `run` also follows what appears later).
    let mut cgroups: Vec<PathBuf> = Vec::new();
    for c in &opts.cgroups {
        if !super::watch::is_pattern(c) {
            cgroups.push(c.clone());
            continue;
        }
        super::watch::validate_entry(c).map_err(|reason| ProfileError::Usage {
            reason: format!("--cgroup {}: {reason}", c.display()),
        })?;
        let found = super::watch::expand(c);
        if found.is_empty() {
            return Err(ProfileError::Usage {
                reason: format!("--cgroup {}: the pattern matches no cgroup", c.display()),
            });
        }
        cgroups.extend(found);
    }
    let mut seen = std::collections::BTreeSet::new();
    cgroups.retain(|c| seen.insert(c.clone()));
    // Validate every path before attaching anything.
    for dir in &cgroups {
        std::fs::metadata(dir.join("cgroup.procs")).map_err(|source| ProfileError::NotACgroup {
            path: dir.clone(),
            source,
        })?;
    }
    if opts.empty_hook {
        return empty_hook(opts);
    }
    let mut prof = Profiler::start(HookPreference::Auto)?;
    let root = PathBuf::from(crate::sys::cgroup::DEFAULT_ROOT);
    let mut sampler = Sampler::new(&mut prof, &cgroups, &root)?;
    // Each cgroup includes its descendants (found again every interval, see `watch`).
    let tracked: Vec<(PathBuf, u64)> = sampler
        .cgroups()
        .iter()
        .map(|c| (c.dir.clone(), c.id))
        .collect();
    let mut warned = vec![false; tracked.len()];
    let mut charge = |prof: &mut Profiler| {
        let dirs: Vec<(&Path, u64)> = tracked.iter().map(|(d, id)| (d.as_path(), *id)).collect();
        let cut = super::watch::charge_descendants(prof, &dirs);
        for (((dir, _), cut), warned) in tracked.iter().zip(cut).zip(&mut warned) {
            super::watch::warn_cut(dir, cut, warned);
        }
    };
    charge(&mut prof);
    let mut store = Store::new(opts.store_capacity);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ProfileError::Runtime { source })?;
    let hooks = serde_json::json!({ "type": "hooks", "hooks": prof.hooks() });
    if opts.json {
        if !emit(&hooks.to_string()) {
            return Ok(());
        }
    } else {
        for h in prof.hooks() {
            eprintln!(
                "{:?}: {:?} via {:?}{}",
                h.metric,
                h.hook,
                h.programs,
                if h.fallbacks.is_empty() {
                    String::new()
                } else {
                    format!(" (after: {})", h.fallbacks.join("; "))
                }
            );
        }
    }
    rt.block_on(async {
        let (mut rx, stats) = prof.take_events()?.spawn(opts.event_capacity)?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| ProfileError::Runtime { source })?;
        let mut tick = tokio::time::interval(opts.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await; // the first tick is immediate
        let start = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {}
            }
            let mut events = Vec::new();
            charge(&mut prof);
            while let Ok(e) = rx.try_recv() {
                events.push(e);
            }
            let k = prof.kernel_errors()?;
            let drops = Drops {
                ringbuf_full: k.ringbuf_full,
                channel_full: stats.snapshot().1,
                rq_tasks_full: k.rq_tasks_full,
                store_evicted: store.evicted(),
            };
            let mut open = true;
            for s in sampler.sample(&prof, events, drops)? {
                let line = if opts.json {
                    match serde_json::to_string(&s) {
                        Ok(line) => line,
                        Err(e) => {
                            tracing::warn!(error = %e, "serialising a sample");
                            continue;
                        }
                    }
                } else {
                    human(&s)
                };
                open &= emit(&line);
                store.push(s);
            }
            if !open {
                break;
            }
            if opts.duration.is_some_and(|d| start.elapsed() >= d) {
                break;
            }
        }
        Ok::<(), ProfileError>(())
    })
}

/// `--empty-hook`: an empty sched_switch program attached until SIGINT/SIGTERM or
/// `--duration`; the first line says so, as the hook report does for a real run.
fn empty_hook(opts: &ProfileOpts) -> Result<(), ProfileError> {
    let hook = EmptySwitchHook::attach()?;
    let line =
        serde_json::json!({"type": "hooks", "hooks": [], "empty_hook": super::PROG_SCHED_NOP});
    if !emit(&line.to_string()) {
        return Ok(());
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| ProfileError::Runtime { source })?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| ProfileError::Runtime { source })?;
        let limit = opts.duration.unwrap_or(Duration::MAX);
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = tokio::time::sleep(limit) => {}
        }
        Ok::<(), ProfileError>(())
    })?;
    drop(hook);
    Ok(())
}
