//! `shadow-agent run`: the agent on a host, from a config file.

use std::time::Duration;

use crate::{
    config::Config,
    error::AgentError,
    mirror::{Mirror, MirrorSpec},
    profile::{
        watch::{Change, Watch, Watched},
        HookPreference, Profiler,
    },
};

/// Attach what the config asks for and report every interval until SIGINT/SIGTERM or
/// `duration`. Everything attached is detached on return.
pub fn run(cfg: &Config, duration: Option<Duration>, json: bool) -> Result<(), AgentError> {
    run_with_status(
        cfg,
        duration,
        json,
        std::path::Path::new(crate::status::STATUS_FILE),
    )
}

/// [`run`], publishing the status file at `status_file`.
pub fn run_with_status(
    cfg: &Config,
    duration: Option<Duration>,
    json: bool,
    status_file: &std::path::Path,
) -> Result<(), AgentError> {
    run_with_reload(cfg, duration, json, status_file, None)
}

/// Where a SIGHUP re-reads the configuration from (the file with the command-line flags over
/// it, as at start); see [`crate::reload`].
pub type Reload<'a> = &'a dyn Fn() -> Result<Config, crate::config::ConfigError>;

/// [`run_with_status`], re-reading the configuration with `reload` on every SIGHUP (without
/// one a SIGHUP is logged and ignored).
pub fn run_with_reload(
    cfg: &Config,
    duration: Option<Duration>,
    json: bool,
    status_file: &std::path::Path,
    reload: Option<Reload<'_>>,
) -> Result<(), AgentError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Io {
            op: "starting the async runtime".into(),
            source,
        })?;
    // SIGTERM and SIGHUP are caught from here on: attaching can take seconds, and until a
    // handler exists either signal would kill the agent (a `systemctl reload` right after
    // the start, say). What arrives before the loop is handled at its first turn.
    let (mut term, mut hup) = {
        let _rt = rt.enter();
        let catch = |kind: tokio::signal::unix::SignalKind, name: &str| {
            tokio::signal::unix::signal(kind).map_err(|source| AgentError::Io {
                op: format!("installing the {name} handler"),
                source,
            })
        };
        (
            catch(tokio::signal::unix::SignalKind::terminate(), "SIGTERM")?,
            catch(tokio::signal::unix::SignalKind::hangup(), "SIGHUP")?,
        )
    };
    // Bind the metrics address and resolve every cgroup before attaching anything, so a
    // bad address or path changes nothing.
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let listener = match cfg.metrics_listen {
        None => None,
        Some(addr) => Some(rt.block_on(crate::metrics::bind(addr))?),
    };
    // Paths (not patterns) must be cgroups now: a typo exits 2.
    for path in cfg
        .profile
        .cgroups
        .iter()
        .filter(|p| !crate::profile::watch::is_pattern(p))
    {
        crate::profile::watch::cgroup_id(path).map_err(|source| AgentError::NotACgroup {
            path: path.clone(),
            source,
        })?;
    }
    // The mirror's interfaces exist before the group is created: bad input changes nothing.
    if let Some(m) = &cfg.mirror {
        // (An address that leads nowhere yet is waited for: see `Mirror::attach`.)
        let mut check = Vec::new();
        if m.address.is_none() {
            check.push((m.interface.as_str(), "mirror.interface"));
        }
        if let Some((t, _)) = &m.target {
            check.push((t.as_str(), "mirror.shadow_interface"));
        }
        for (name, role) in check {
            nix::net::if_::if_nametoindex(name).map_err(|source| {
                crate::mirror::MirrorError::NoInterface {
                    interface: name.to_string(),
                    role,
                    source,
                }
            })?;
        }
    }
    // The shadow group first: the mirror's target is its first replica's veth.
    let mut group = match &cfg.shadow {
        None => None,
        Some(spec) => {
            crate::shadow::group::validate(spec)?;
            for left in crate::shadow::group::sweep_leftovers(&spec.prefix, &spec.name) {
                tracing::warn!(%left, "removed a leftover of an earlier agent");
            }
            let mut spec = spec.clone();
            spec.replica_mac = replica_mac(cfg.mirror.as_ref());
            Some(crate::shadow::ShadowGroup::start(spec, None)?)
        }
    };
    let mut mirror = match &cfg.mirror {
        None => None,
        Some(m) => {
            // The configured target, or the replicas of the shadow group (first one here,
            // all of them right after attaching).
            let (shadow_interface, shadow_mac) =
                match (&m.target, group.as_ref().and_then(|g| g.replica(0))) {
                    (Some(t), _) => t.clone(),
                    (None, Some(r)) => (r.names().host_if.clone(), r.replica_mac().octets()),
                    (None, None) => unreachable_target()?,
                };
            let mut mirror = Mirror::attach(MirrorSpec {
                interface: m.interface.clone(),
                address: m.address,
                direction: m.direction,
                shadow_interface,
                shadow_mac,
                rules: m.rules.clone(),
                xdp: m.xdp,
                options: m.options.clone(),
            })?;
            if let (None, Some(g)) = (&m.target, group.as_ref()) {
                mirror.set_targets(&g.mirror_targets())?;
                // Request->reply latency per replica (autoscaling's backlog, status).
                mirror.set_latency(true)?;
            }
            Some(mirror)
        }
    };
    let mut profiler = Profiler::start(HookPreference::Auto)?;
    // The profiled cgroups, followed by directory (a restarted service's new cgroup).
    let mut watch = Watch::start(
        &cfg.profile.cgroups,
        &mut profiler,
        std::path::Path::new(crate::sys::cgroup::DEFAULT_ROOT),
    )?;
    if let Some(g) = &group {
        for r in g.replicas() {
            profiler.track(r.cgroup().id())?;
        }
    }
    // Autoscaling: only for a group the mirror feeds (its own target list).
    let autoscale = cfg.autoscale.clone().filter(|_| group.is_some());
    let mut sample_max = cfg.mirror.as_ref().map_or(1.0, |m| m.options.sample_rate);
    // What runs now, for the next reload to compare with.
    let mut running = cfg.clone();
    let mut last_reload = serde_json::Value::Null;
    let mut sample_rate = sample_max;
    let mut meter = crate::shadow::autoscale::LoadMeter::default();
    let mut last_change: Option<std::time::Instant> = None;
    let mut last_decision = serde_json::Value::Null;
    metrics.set_sample_rate(sample_rate);
    // The allocator last: it restores the original limits a crashed run left behind.
    let mut allocator = match &cfg.allocate {
        None => None,
        Some(spec) => {
            // Forecast shrinks validated on what-if replicas of `[shadow]`, fed by their own
            // mirrors of `[mirror]`'s traffic (the config check guarantees both).
            let whatif = match (&spec.whatif, &cfg.shadow, &cfg.mirror) {
                (Some(w), Some(base), Some(m)) => {
                    Some(crate::allocate::validate::WhatifValidation {
                        base: base.clone(),
                        mirror: crate::shadow::whatif::WhatifMirror {
                            interface: m.primary_interface()?,
                            direction: m.direction,
                            rules: m.rules.clone(),
                            options: m.options.clone(),
                        },
                        duration: w.duration,
                        load_share: w.load_share.unwrap_or(m.options.sample_rate),
                        tolerance: w.tolerance,
                    })
                }
                _ => None,
            };
            let mut a = crate::allocate::live::LiveAllocator::start(spec, whatif)?;
            // The groups' usage history an earlier run left: forecasts from the first tick.
            a.restore_history(cfg.profile.interval_ms as f64 / 1000.0);
            Some(a)
        }
    };
    // Live forecasts of every tracked cgroup's CPU (and, with a mirror and a shadow group,
    // the shadow-derived alternative from the mirror's load and the replicas' CPU).
    let interval_s = cfg.profile.interval_ms as f64 / 1000.0;
    // Memory per concurrent flow: the established TCP connections on the ports the mirror
    // selects, in the network namespace of each tracked cgroup and of each replica.
    // Memory per flow is learnt only with a mirror feeding a shadow group, whose rules
    // select TCP at start (the ports follow a rules reload: see the loop).
    let per_flow = group.is_some()
        && mirror
            .as_ref()
            .is_some_and(|m| !flow_ports(&m.spec().rules).is_empty());
    let mut forecaster = cfg.forecast.enabled.then(|| {
        let mut f = crate::forecast::live::LiveForecaster::new(cfg.forecast.clone(), interval_s);
        if mirror.is_some() && group.is_some() {
            f.use_shadow(LOAD_MATCHED, LOAD_CLONED, SHADOW_CPU);
            if per_flow {
                f.use_shadow_memory(SHADOW_FLOWS, SHADOW_MEMORY);
            }
        }
        for c in watch.iter() {
            forecast_series(&mut f, c, per_flow);
        }
        // The history an earlier run kept: forecasts at once instead of after a warm-up.
        if let Some(path) = &cfg.forecast.history_file {
            match f.restore(path) {
                Ok(Some(r)) if r.discarded.is_some() => {
                    tracing::warn!(file = %path.display(), reason = ?r.discarded, "forecast history not restored; starting afresh")
                }
                Ok(Some(r)) => tracing::info!(
                    file = %path.display(),
                    series = r.series,
                    taken = r.taken,
                    gap_steps = r.gap_steps,
                    "forecast history restored"
                ),
                Ok(None) => tracing::info!(file = %path.display(), "no forecast history yet"),
                Err(e) => tracing::warn!(error = %e, "forecast history not restored; starting afresh"),
            }
        }
        f
    });
    let mut history_error: Option<String> = None;
    let mut prev: std::collections::HashMap<String, (f64, std::time::Instant)> =
        std::collections::HashMap::new();
    let result = rt.block_on(async {
        if let Some(l) = listener {
            tokio::spawn(crate::metrics::serve(l, std::sync::Arc::clone(&metrics)));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.profile.interval_ms));
        // A late tick is not followed by a burst of catch-up ticks (near-zero intervals).
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let start = tokio::time::Instant::now();
        let mut ready = false;
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = hup.recv() => {
                    let ev = reload_now(
                        reload,
                        &mut running,
                        Live {
                            mirror: mirror.as_mut(),
                            group: group.as_mut(),
                            allocator: allocator.as_mut(),
                            sampling: Sampling {
                                rate: &mut sample_rate,
                                max: &mut sample_max,
                                autoscaled: autoscale.is_some(),
                            },
                            profiled: Profiled {
                                watch: &mut watch,
                                profiler: &mut profiler,
                                forecaster: forecaster.as_mut(),
                                metrics: &metrics,
                                spec: &cfg.forecast,
                                per_flow,
                            },
                        },
                        start.elapsed().as_secs_f64(),
                    );
                    metrics.set_sample_rate(sample_rate);
                    metrics.observe_reload(
                        ev["errors"].as_array().is_some_and(|e| e.is_empty()),
                    );
                    if json {
                        println!("{ev}");
                    }
                    last_reload = ev;
                    continue;
                }
                _ = tick.tick() => {}
            }
            if duration.is_some_and(|d| start.elapsed() >= d) {
                break;
            }
            let t_s = start.elapsed().as_secs_f64();
            let mut line = serde_json::json!({ "t_s": t_s });
            // A profiled cgroup made again (a restarted service) or gone, a pattern's new
            // or vanished match: follow it.
            for change in watch.refresh(&mut profiler) {
                let ev = change.event(t_s);
                match &change {
                    Change::Gone { .. } => tracing::warn!(event = %ev, "a profiled cgroup is gone; its series wait for it"),
                    Change::Recreated { .. } | Change::Back { .. } => tracing::warn!(event = %ev, "a profiled cgroup was made again; following the new one"),
                    Change::Matched { .. } => tracing::info!(event = %ev, "a new cgroup matches a profiled pattern"),
                    Change::Unmatched { .. } => tracing::info!(event = %ev, "a profiled pattern's cgroup is gone; its series are dropped"),
                }
                match &change {
                    // Its CPU rate starts again with the next sample, not across the gap.
                    Change::Back { key, .. } => {
                        prev.remove(key);
                    }
                    Change::Unmatched { key, .. } => {
                        prev.remove(key);
                        forget_series(forecaster.as_mut(), &metrics, key, &cfg.forecast);
                    }
                    _ => {}
                }
                if let (Some(f), Some(c)) = (
                    forecaster.as_mut(),
                    watch.iter().find(|c| c.key() == change.key()),
                ) {
                    // The new cgroup's memory may be somewhere else (a v1 memory group).
                    forecast_series(f, c, per_flow);
                }
                if json {
                    println!("{ev}");
                }
            }
            // Per-second rates since the previous sample (none on the first), over the time
            // that really passed: a tick delayed by a loaded machine would otherwise read as
            // a spike and the next as zero.
            let now = std::time::Instant::now();
            let mut rate = |key: &str, total: f64| -> Option<f64> {
                let (last, at) = prev.insert(key.to_owned(), (total, now))?;
                let dt = now.duration_since(at).as_secs_f64().max(interval_s / 10.0);
                Some((total - last).max(0.0) / dt)
            };
            let mut samples: Vec<(String, f64)> = Vec::new();
            if let Some(m) = mirror.as_mut() {
                // An interface removed and made again (a restarted container or VM): the
                // programs follow it. The configured target too; a shadow group's replicas
                // are set by the group.
                let static_target = cfg.mirror.as_ref().is_some_and(|m| m.target.is_some());
                match m.follow(static_target) {
                    Ok(changes) => {
                        for c in changes {
                            let ev = c.event(t_s);
                            match c.change {
                                "gone" => tracing::warn!(event = %ev, "a mirror interface is gone; nothing is mirrored through it until it is back"),
                                "attach_failed" => tracing::error!(event = %ev, "a mirror interface is back but the programs could not be attached; trying again"),
                                _ => tracing::warn!(event = %ev, "a mirror interface was made again; the programs are on the new one"),
                            }
                            if json {
                                println!("{ev}");
                            }
                        }
                    }
                    Err(e) => tracing::warn!(error = %crate::error::chain(&e), "could not look at the mirror's interfaces"),
                }
            }
            if let Some(m) = &mirror {
                let c = m.counters()?;
                if let Some(v) = rate(LOAD_MATCHED, c.matched as f64) {
                    samples.push((LOAD_MATCHED.into(), v));
                }
                if let Some(v) = rate(LOAD_CLONED, c.cloned as f64) {
                    samples.push((LOAD_CLONED.into(), v));
                }
                metrics.observe_mirror(&c);
                line["mirror"] = serde_json::to_value(c).unwrap_or_default();
                let i = &m.spec().interface;
                line["mirror"]["interface"] = (!i.is_empty()).then(|| i.clone()).into();
                line["mirror"]["tc_mode"] = serde_json::to_value(m.tc_mode()).unwrap_or_default();
                let missing = m.missing();
                metrics.set_interfaces_missing(missing.len());
                if !missing.is_empty() {
                    line["mirror"]["missing"] = missing.into();
                }
            }
            let mut cg = serde_json::Map::new();
            let replica_cgroups: Vec<_> = group
                .iter()
                .flat_map(|g| g.replicas())
                .map(|r| (r.cgroup().unified_path().to_path_buf(), r.cgroup().id()))
                .collect();
            let mut shadow_cpu: Option<f64> = None;
            // CPU totals: each profiled cgroup's over all its incarnations, each replica's.
            let mut totals: Vec<(String, u64, u64, bool)> = Vec::new();
            for c in watch.iter_mut() {
                match c.totals(&profiler)? {
                    Some(t) => totals.push((c.key().to_owned(), t.cpu_ns, t.switches, false)),
                    // Gone (a service being restarted): said so, and no sample.
                    None => {
                        cg.insert(c.key().to_owned(), serde_json::json!({ "missing": true }));
                    }
                }
            }
            for (path, id) in &replica_cgroups {
                if let Some(a) = profiler.cgroup(*id)? {
                    totals.push((path.display().to_string(), a.cpu_ns, a.switches, true));
                }
            }
            for (key, cpu_ns, switches, replica) in totals {
                let secs = cpu_ns as f64 / 1e9;
                let mut entry = serde_json::json!({ "cpu_seconds": secs, "switches": switches });
                if let Some(v) = rate(&key, secs) {
                    if replica {
                        *shadow_cpu.get_or_insert(0.0) += v;
                    }
                    samples.push((key.clone(), v));
                    entry["cpu_cores"] = v.into();
                }
                metrics.observe_cgroup_cpu(&key, secs);
                cg.insert(key, entry);
            }
            for c in watch.iter().filter(|c| c.id().is_some()) {
                let Some(m) = c.memory().and_then(crate::profile::cgroupfs::read_memory) else {
                    continue;
                };
                samples.push((memory_key(c.path()), m.usage_bytes as f64));
                metrics.observe_cgroup_memory(c.key(), m.usage_bytes);
                if let Some(e) = cg.get_mut(c.key()).and_then(|e| e.as_object_mut()) {
                    e.insert("memory_bytes".into(), m.usage_bytes.into());
                }
            }
            line["cgroups"] = cg.into();
            if let Some(f) = forecaster.as_mut() {
                if let Some(v) = shadow_cpu {
                    samples.push((SHADOW_CPU.into(), v));
                }
                if per_flow {
                    // Only cgroups with a memory series get a flows series (its load).
                    let flow_cgroups: Vec<std::path::PathBuf> = watch
                        .iter()
                        .filter(|c| c.id().is_some() && c.memory().is_some())
                        .map(|c| c.path().to_owned())
                        .collect();
                    // The ports the mirror selects now (a reload may change its rules).
                    let ports = mirror
                        .as_ref()
                        .map_or_else(Vec::new, |m| flow_ports(&m.spec().rules));
                    flow_samples(&flow_cgroups, &replica_cgroups, &ports, &mut samples);
                }
                for (k, v) in &samples {
                    f.observe(k, *v);
                }
                f.refit_due();
                match f.save_due() {
                    Some(Err(e)) => {
                        // Said once per distinct error, not every step.
                        let e = e.to_string();
                        if history_error.as_ref() != Some(&e) {
                            tracing::warn!(error = %e, file = ?cfg.forecast.history_file, "could not write the forecast history");
                            history_error = Some(e);
                        }
                    }
                    Some(Ok(())) => history_error = None,
                    None => {}
                }
                for c in watch.iter() {
                    let path = c.path();
                    if let Some(p) = f.latest(&memory_key(path)) {
                        for i in &p.intervals {
                            let top = i.upper.iter().copied().fold(f64::NAN, f64::max);
                            metrics.observe_forecast_upper(
                                &path.display().to_string(),
                                "memory",
                                i.level,
                                top,
                            );
                        }
                    }
                    let key = path.display().to_string();
                    if let Some(p) = f.latest(&key) {
                        for i in &p.intervals {
                            let top = i.upper.iter().copied().fold(f64::NAN, f64::max);
                            metrics.observe_forecast_upper(&key, "cpu", i.level, top);
                        }
                        // The cgroup's line carries it in the shape `report` draws (levels
                        // as fractions, the first step `horizon_s` ahead).
                        if let Some(c) = line["cgroups"]
                            .get_mut(key.as_str())
                            .and_then(|c| c.as_object_mut())
                        {
                            let intervals: Vec<serde_json::Value> = p
                                .intervals
                                .iter()
                                .map(|i| {
                                    serde_json::json!({
                                        "level": i.level / 100.0,
                                        "lower": i.lower,
                                        "upper": i.upper,
                                    })
                                })
                                .collect();
                            c.insert(
                                "forecast".into(),
                                serde_json::json!({
                                    "point": p.point,
                                    "intervals": intervals,
                                    "horizon_s": p.step_s,
                                    "source": p.source,
                                }),
                            );
                        }
                    }
                }
                line["forecast"] = f.status();
            }
            if let Some(g) = group.as_mut() {
                for ev in g.supervise() {
                    tracing::warn!(?ev, "shadow group");
                }
                if let Some(spec) = &autoscale {
                    let d = autoscale_step(
                        spec,
                        g,
                        mirror.as_mut(),
                        &mut profiler,
                        &mut meter,
                        &mut sample_rate,
                        sample_max,
                        &mut last_change,
                    );
                    metrics.observe_autoscale(d["action"].as_str().unwrap_or("hold"));
                    metrics.set_sample_rate(sample_rate);
                    if d["action"] != "hold" {
                        last_decision = d.clone();
                    }
                    line["autoscale"] = d;
                    line["autoscale_last_change"] = last_decision.clone();
                }
                let status = g.status();
                metrics.observe_replicas(&status);
                let mut shadow = serde_json::to_value(status).unwrap_or_default();
                // Flows the mirror assigned to each replica (slot order = replica order).
                if let Some(Ok(flows)) = mirror
                    .as_ref()
                    .filter(|_| cfg.mirror.as_ref().is_some_and(|m| m.target.is_none()))
                    .map(|m| m.flows_per_target())
                {
                    if let Some(arr) = shadow.as_array_mut() {
                        for (r, n) in arr.iter_mut().zip(flows) {
                            r["mirrored_flows"] = n.into();
                        }
                    }
                    // Request->reply latency per replica since the mirror attached (slot
                    // order; a slot reused after a scale-down keeps counting).
                    if let (Some(arr), Some(Ok(lat))) =
                        (shadow.as_array_mut(), mirror.as_ref().map(|m| m.latency()))
                    {
                        for (r, c) in arr.iter_mut().zip(lat) {
                            r["latency"] = serde_json::to_value(c.summary()).unwrap_or_default();
                        }
                    }
                }
                line["shadow"] = shadow;
                line["replicas"] = g.replicas().count().into();
            }
            if mirror.is_some() {
                line["sample_rate"] = sample_rate.into();
            }
            if !last_reload.is_null() {
                line["last_reload"] = last_reload.clone();
            }
            line["cpu_hook"] = serde_json::to_value(profiler.hook()).unwrap_or_default();
            let mut scale_events = Vec::new();
            if let Some(a) = allocator.as_mut() {
                line["allocate"] = a.tick();
                if let Some(r) = a.restored() {
                    line["allocate_history"] = r.clone();
                }
                let (groups, missing) = a.counts();
                metrics.set_allocate_groups(groups, missing);
                scale_events = a.take_events();
                if let Some(v) = a.take_verdict() {
                    metrics.observe_whatif_verdict(
                        v.pass,
                        v.request.resource.as_str(),
                        &v.request.cgroup,
                    );
                }
                for ev in &scale_events {
                    metrics.observe_scale_event(
                        ev.direction.as_str(),
                        ev.cause.as_str(),
                        ev.resource.as_str(),
                        &ev.cgroup,
                    );
                }
            }
            if let Some(g) = group.as_ref() {
                let refused: Vec<_> = g
                    .replicas()
                    .map(|r| {
                        serde_json::to_value(r.discard().refused().unwrap_or_default())
                            .unwrap_or_default()
                    })
                    .collect();
                line["refused"] = refused.into();
            }
            if let Err(e) = crate::status::publish(status_file, line.clone()) {
                tracing::warn!(error = %e, "could not publish the status file");
            }
            if !ready {
                // Up, and findable by `shadow-agent status` / `reload`: tell systemd
                // (`Type=notify`), which holds `systemctl reload` until then.
                notify(&[sd_notify::NotifyState::Ready]);
                ready = true;
            }
            if json {
                println!("{line}");
                // Scaling events also get a line of their own (`"event": "scale"`).
                for ev in &scale_events {
                    println!("{}", serde_json::to_string(ev).unwrap_or_default());
                }
            } else {
                println!("{line:#}");
            }
        }
        Ok::<(), AgentError>(())
    });
    notify(&[sd_notify::NotifyState::Stopping]);
    if let (Some(f), Some(path)) = (forecaster.as_mut(), &cfg.forecast.history_file) {
        if let Err(e) = f.save(path) {
            tracing::warn!(error = %e, file = %path.display(), "could not write the forecast history at exit");
        }
    }
    // Detach every TC program, then take off the clsact qdiscs the agent added for them
    // (kernels without TCX): the interfaces are left as they were found.
    drop(mirror);
    drop(group);
    crate::mirror::remove_added_clsact();
    crate::status::withdraw(status_file);
    result
}

/// A state for the service manager, when there is one (`$NOTIFY_SOCKET`); a failure to
/// send is logged, never fatal. The variable stays set: replicas inherit it, and systemd
/// takes notifications from the main process only (`NotifyAccess=main`).
fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "could not notify the service manager");
    }
}

/// The mirror's sample rate as `run` keeps it: the rate in force, the configured one (the
/// autoscaler's ceiling), and whether the autoscaler manages it.
struct Sampling<'a> {
    rate: &'a mut f64,
    max: &'a mut f64,
    autoscaled: bool,
}

/// The profiled cgroups and everything that keeps series of them.
struct Profiled<'a> {
    watch: &'a mut Watch,
    profiler: &'a mut Profiler,
    forecaster: Option<&'a mut crate::forecast::live::LiveForecaster>,
    metrics: &'a crate::metrics::Metrics,
    /// `[forecast]` (the levels of the metrics' labels).
    spec: &'a crate::forecast::live::LiveSpec,
    /// Memory per flow is forecast (see [`forecast_series`]).
    per_flow: bool,
}

impl Profiled<'_> {
    /// Profile and forecast what the `added` entries stand for, forget what the `removed`
    /// ones did. Returns the entries changed and an error per entry that could not be added
    /// (a path that is no cgroup now, say).
    fn change(
        &mut self,
        change: &crate::reload::CgroupChange,
    ) -> (crate::reload::CgroupChange, Vec<String>) {
        let mut done = crate::reload::CgroupChange::default();
        let mut errors = Vec::new();
        for entry in &change.removed {
            for path in self.watch.remove(entry, self.profiler) {
                let key = path.display().to_string();
                forget_series(
                    self.forecaster.as_deref_mut(),
                    self.metrics,
                    &key,
                    self.spec,
                );
            }
            done.removed.push(entry.clone());
        }
        for entry in &change.added {
            match self.watch.add(entry, self.profiler) {
                Ok(paths) => {
                    for path in paths {
                        if let (Some(f), Some(c)) = (
                            self.forecaster.as_deref_mut(),
                            self.watch.iter().find(|c| c.path() == path),
                        ) {
                            forecast_series(f, c, self.per_flow);
                        }
                    }
                    done.added.push(entry.clone());
                }
                Err(e) => errors.push(e),
            }
        }
        (done, errors)
    }
}

/// What a reload may change while `run` runs.
struct Live<'a> {
    mirror: Option<&'a mut Mirror>,
    group: Option<&'a mut crate::shadow::ShadowGroup>,
    allocator: Option<&'a mut crate::allocate::live::LiveAllocator>,
    sampling: Sampling<'a>,
    profiled: Profiled<'a>,
}

/// Stop managing the groups `change` removes (their original limits come back now) and
/// manage those it adds (in dry run as `dry_run` says). Returns what was done; each failure
/// goes to `errors`, naming the group.
fn change_managed(
    a: &mut crate::allocate::live::LiveAllocator,
    change: &crate::reload::ListChange<String>,
    dry_run: bool,
    errors: &mut Vec<String>,
) -> crate::reload::ListChange<String> {
    let mut done = crate::reload::ListChange::default();
    for name in &change.removed {
        match a.remove_group(name) {
            Ok(_) => done.removed.push(name.clone()),
            Err(e) => errors.push(format!(
                "allocate.cgroups: {name}: {}",
                crate::error::chain(&e)
            )),
        }
    }
    for name in &change.added {
        match a.add_group(name, dry_run) {
            Ok(()) => done.added.push(name.clone()),
            Err(e) => errors.push(format!(
                "allocate.cgroups: {name}: {}",
                crate::error::chain(&e)
            )),
        }
    }
    done
}

/// Drop every series of profiled cgroup `key` (no longer profiled): its forecasts and its
/// metrics.
fn forget_series(
    forecaster: Option<&mut crate::forecast::live::LiveForecaster>,
    metrics: &crate::metrics::Metrics,
    key: &str,
    spec: &crate::forecast::live::LiveSpec,
) {
    if let Some(f) = forecaster {
        f.untrack(key);
        f.untrack(&memory_key(std::path::Path::new(key)));
    }
    metrics.forget_cgroup(key, &spec.published_levels());
}

/// Forecast the series of profiled cgroup `c`: its CPU, its memory where it has a memory
/// source, and (`per_flow`) memory per flow from its connections. Idempotent.
fn forecast_series(f: &mut crate::forecast::live::LiveForecaster, c: &Watched, per_flow: bool) {
    f.track(c.key(), "cores");
    if c.memory().is_some() {
        f.track_metric(&memory_key(c.path()), "memory", "bytes");
        if per_flow {
            f.memory_load(&memory_key(c.path()), &flows_key(c.path()));
        }
    }
}

/// One SIGHUP: read the configuration again, apply what can change live, name what needs a
/// restart, and return the event (also logged). A configuration that does not load changes
/// nothing.
fn reload_now(
    reload: Option<Reload<'_>>,
    running: &mut Config,
    live: Live<'_>,
    t_s: f64,
) -> serde_json::Value {
    let Live {
        mut mirror,
        group,
        mut allocator,
        sampling,
        mut profiled,
    } = live;
    use crate::reload::{event, plan, record_applied, Plan};
    let Some(reload) = reload else {
        tracing::warn!("SIGHUP: no configuration file to reload (started from flags only)");
        return event(
            t_s,
            &Plan::default(),
            &[],
            &["no configuration file".into()],
        );
    };
    let new = match reload() {
        Ok(c) => c,
        Err(e) => {
            let e = crate::error::chain(&e);
            tracing::error!(error = %e, "SIGHUP: configuration not reloaded; the running one stays");
            return event(t_s, &Plan::default(), &[], &[e]);
        }
    };
    let wanted = plan(running, &new);
    let mut applied = Plan::default();
    let mut errors = Vec::new();
    // (`run` attaches a mirror exactly when the configuration has one, so a plan with
    // mirror changes has a mirror to apply them to.)
    if let Some(m) = mirror.as_deref_mut() {
        if let Some((old, rate)) = wanted.sample_rate {
            // Under the autoscaler the configured rate is its ceiling: lowered at once,
            // raised by the autoscaler as the group's budget allows.
            let now = if sampling.autoscaled {
                sampling.rate.min(rate)
            } else {
                rate
            };
            match m.set_sample_rate(now) {
                Ok(()) => {
                    *sampling.rate = now;
                    *sampling.max = rate;
                    applied.sample_rate = Some((old, rate));
                }
                Err(e) => errors.push(crate::error::chain(&e)),
            }
        }
        if let (Some(r), Some(nm)) = (wanted.rules, new.mirror.as_ref()) {
            match m.set_rules(nm.rules.clone(), nm.options.rule_masks.clone()) {
                Ok(()) => applied.rules = Some(r),
                Err(e) => errors.push(crate::error::chain(&e)),
            }
        }
        if let (Some(keys), Some(nm)) = (&wanted.mask, new.mirror.as_ref()) {
            match m.set_mask(nm.options.mask.clone()) {
                Ok(()) => applied.mask = Some(keys.clone()),
                Err(e) => errors.push(crate::error::chain(&e)),
            }
        }
        if let Some((old, (pps, bps, burst))) = wanted.caps {
            match m.set_caps(pps, bps, burst) {
                Ok(()) => applied.caps = Some((old, (pps, bps, burst))),
                Err(e) => errors.push(crate::error::chain(&e)),
            }
        }
    }
    if let (Some(keys), Some(g), Some(spec)) = (&wanted.shadow, group, new.shadow.as_ref()) {
        match redeploy_shadow(g, mirror, profiled.profiler, spec.clone()) {
            Ok(()) => applied.shadow = Some(keys.clone()),
            Err(e) => errors.push(crate::error::chain(&e)),
        }
    }
    if let (Some(d), Some(a)) = (wanted.dry_run, allocator.as_deref_mut()) {
        a.set_dry_run(d.1);
        applied.dry_run = Some(d);
    }
    if let (Some(change), Some(a), Some(spec)) = (&wanted.managed, allocator, new.allocate.as_ref())
    {
        let done = change_managed(a, change, spec.allocator.dry_run, &mut errors);
        if let Some(r) = running.allocate.as_mut() {
            r.cgroups = done.apply_to(&r.cgroups);
        }
        applied.managed = (!done.is_empty()).then_some(done);
    }
    if let Some(change) = &wanted.cgroups {
        let (done, failed) = profiled.change(change);
        errors.extend(failed);
        running.profile.cgroups = profiled.watch.entries();
        applied.cgroups = (!done.is_empty()).then_some(done);
    }
    record_applied(running, &new, &applied);
    let ev = event(t_s, &applied, &wanted.restart, &errors);
    if !wanted.restart.is_empty() {
        tracing::warn!(sections = ?wanted.restart, "SIGHUP: these changes take effect only at a restart");
    }
    tracing::info!(event = %ev, "SIGHUP: configuration reloaded");
    ev
}

/// Series keys of the shadow-derived demand model: the mirror's matched and cloned packets
/// per second and the shadow replicas' CPU (cores).
const LOAD_MATCHED: &str = "mirror/matched_pps";
const LOAD_CLONED: &str = "mirror/cloned_pps";
const SHADOW_CPU: &str = "shadow/cpu_cores";

const SHADOW_FLOWS: &str = "shadow/flows";
const SHADOW_MEMORY: &str = "shadow/memory_bytes";

/// The live forecaster's key of a tracked cgroup's concurrent flows.
fn flows_key(path: &std::path::Path) -> String {
    format!("{}#flows", path.display())
}

/// One interval's samples of the memory-per-flow model: the established connections on
/// `ports` of each cgroup in `cgroups`, and the replicas' summed connections and memory (only
/// when every replica could be read, so a replica starting or gone does not read as a drop).
fn flow_samples(
    cgroups: &[std::path::PathBuf],
    replicas: &[(std::path::PathBuf, u64)],
    ports: &[(u16, u16)],
    samples: &mut Vec<(String, f64)>,
) {
    use crate::sys::sockets::established_of_cgroup;
    for path in cgroups {
        if let Some(n) = established_of_cgroup(path, ports) {
            samples.push((flows_key(path), n as f64));
        }
    }
    if replicas.is_empty() {
        return;
    }
    let root = std::path::Path::new(crate::sys::cgroup::DEFAULT_ROOT);
    let mut flows = 0u64;
    let mut bytes = 0u64;
    for (path, _) in replicas {
        let mem = crate::profile::cgroupfs::memory_source(root, path)
            .as_ref()
            .and_then(crate::profile::cgroupfs::read_memory);
        match (established_of_cgroup(path, ports), mem) {
            (Some(n), Some(m)) => {
                flows += n;
                bytes += m.usage_bytes;
            }
            _ => return,
        }
    }
    samples.push((SHADOW_FLOWS.into(), flows as f64));
    samples.push((SHADOW_MEMORY.into(), bytes as f64));
}

/// The live forecaster's key of a tracked cgroup's memory series (its CPU series is the
/// path itself): what the status file and `forecast --resource memory` use.
pub fn memory_key(path: &std::path::Path) -> String {
    format!("{}{}", path.display(), MEMORY_SUFFIX)
}

/// Suffix of memory series keys.
pub const MEMORY_SUFFIX: &str = "#memory";

/// One autoscaling step: measure the group's load, decide, apply (replica count through
/// [`scale_group`], sample rate through the mirror), log the decision with its reason, and
/// return it as JSON for the status line. A failure to apply is logged and reported, never
/// fatal: the primary and the running replicas are unaffected.
#[allow(clippy::too_many_arguments)]
fn autoscale_step(
    spec: &crate::shadow::autoscale::AutoscaleSpec,
    group: &mut crate::shadow::ShadowGroup,
    mut mirror: Option<&mut Mirror>,
    profiler: &mut Profiler,
    meter: &mut crate::shadow::autoscale::LoadMeter,
    sample_rate: &mut f64,
    sample_max: f64,
    last_change: &mut Option<std::time::Instant>,
) -> serde_json::Value {
    use crate::shadow::autoscale::{decide, Action, Bounds};
    let load = meter.measure(group, profiler, mirror.as_deref(), *sample_rate);
    let gs = group.spec();
    let bounds = Bounds {
        replicas_min: gs.replicas_min,
        replicas_max: gs.replicas_max,
        cpu_cap: gs.cpu_cores,
        memory_cap: gs.memory_bytes,
        sample_max,
    };
    let mut d = decide(spec, &bounds, &load, last_change.map(|t| t.elapsed()));
    let applied: Result<(), String> = match d.action {
        Action::Hold => Ok(()),
        Action::ScaleUp | Action::ScaleDown => {
            let before = replica_cgroups(group);
            let scaled = scale_group(group, mirror.as_deref_mut(), d.replicas);
            profile_replicas(profiler, &before, group);
            match scaled {
                Ok(n) => {
                    d.replicas = n;
                    Ok(())
                }
                Err(e) => Err(crate::error::chain(&e)),
            }
        }
        Action::LowerSample | Action::RaiseSample => match mirror {
            None => Err("no mirror to change the sample rate of".into()),
            Some(m) => match m.set_sample_rate(d.sample_rate) {
                Ok(()) => {
                    *sample_rate = d.sample_rate;
                    Ok(())
                }
                Err(e) => Err(crate::error::chain(&e)),
            },
        },
    };
    let mut v = serde_json::json!({
        "action": d.action.as_str(),
        "reason": d.reason,
        "replicas": d.replicas,
        "sample_rate": d.sample_rate,
        "load": load,
    });
    match applied {
        Ok(()) if d.action != Action::Hold => {
            *last_change = Some(std::time::Instant::now());
            tracing::info!(
                action = d.action.as_str(),
                replicas = d.replicas,
                sample_rate = d.sample_rate,
                reason = %d.reason,
                "shadow group autoscaling"
            );
        }
        Ok(()) => tracing::debug!(reason = %d.reason, "shadow group autoscaling: hold"),
        Err(e) => {
            tracing::warn!(action = d.action.as_str(), error = %e, reason = %d.reason, "autoscaling decision not applied");
            v["error"] = e.into();
        }
    }
    v
}

/// The cgroup ids of `group`'s replicas.
fn replica_cgroups(group: &crate::shadow::ShadowGroup) -> Vec<u64> {
    group.replicas().map(|r| r.cgroup().id()).collect()
}

/// The profiler follows the replicas: those started since `before` are tracked, those gone
/// untracked.
fn profile_replicas(profiler: &mut Profiler, before: &[u64], group: &crate::shadow::ShadowGroup) {
    let after = replica_cgroups(group);
    for id in after.iter().filter(|id| !before.contains(id)) {
        if let Err(e) = profiler.track(*id) {
            tracing::warn!(error = %e, "new replica not profiled");
        }
    }
    for id in before.iter().filter(|id| !after.contains(id)) {
        let _ = profiler.untrack(*id);
    }
}

/// A reload's `[shadow]` changes, live: the new caps written, the group scaled into its
/// new bounds (the mirror's targets and the profiler follow), and with a new command each
/// replica's process replaced in turn, the others serving meanwhile.
fn redeploy_shadow(
    group: &mut crate::shadow::ShadowGroup,
    mirror: Option<&mut Mirror>,
    profiler: &mut Profiler,
    spec: crate::shadow::GroupSpec,
) -> Result<(), AgentError> {
    let command = group.set_spec(spec)?;
    let before = replica_cgroups(group);
    let n = group.replicas().count() as u32;
    let scaled = scale_group(group, mirror, n);
    profile_replicas(profiler, &before, group);
    scaled?;
    if command {
        for i in 0..group.replicas().count() as u32 {
            group.redeploy(i)?;
            tracing::info!(replica = i, "shadow replica runs the new command");
        }
    }
    Ok(())
}

/// Scale `group` to `n` replicas (clamped to its [min, max]) and keep `mirror`'s targets
/// equal to the replicas: on the way down the mirror stops cloning to the replicas about to
/// go before they are removed, on the way up it learns of the new ones once they run. Flows
/// already mirrored keep their replica; only new flows are spread over the new count (a
/// removed replica's flows get no more clones). Returns the count reached.
pub fn scale_group(
    group: &mut crate::shadow::ShadowGroup,
    mirror: Option<&mut Mirror>,
    n: u32,
) -> Result<u32, AgentError> {
    let spec = group.spec();
    let n = n.clamp(spec.replicas_min, spec.replicas_max);
    let Some(mirror) = mirror else {
        return Ok(group.scale_to(n)?);
    };
    let mut targets = group.mirror_targets();
    if (n as usize) < targets.len() {
        targets.truncate(n as usize);
        mirror.set_targets(&targets)?;
        tracing::info!(
            replicas = n,
            reason = "scale down",
            "mirror targets follow the group"
        );
    }
    let reached = group.scale_to(n)?;
    let targets = group.mirror_targets();
    if targets != mirror.targets() {
        mirror.set_targets(&targets)?;
        tracing::info!(replicas = reached, "mirror targets follow the group");
    }
    Ok(reached)
}

/// The config check guarantees a target when there is no shadow group; this is the error
/// should that ever not hold, rather than a panic.
fn unreachable_target() -> Result<(String, [u8; 6]), AgentError> {
    Err(AgentError::Io {
        op: "mirror.shadow_interface: no target and no shadow replica".into(),
        source: std::io::Error::from(std::io::ErrorKind::NotFound),
    })
}

/// The port ranges of the rules that select TCP (all protocols or TCP alone): the flows
/// counted for the memory-per-flow model.
fn flow_ports(rules: &[crate::mirror::Rule]) -> Vec<(u16, u16)> {
    rules
        .iter()
        .filter(|r| r.proto != Some(crate::mirror::rule::Proto::Udp))
        .map(|r| (r.ports.lo, r.ports.hi))
        .collect()
}

/// The MAC the shadow replicas take: that of the interface the mirror feeds them from, so
/// the primary's packets arrive addressed to them as they are and the mirror never writes
/// the original (see `shadow_mirror`). None without a mirror feeding the group, and for a
/// mirror on the way out of its interface (`direction = "egress"`), whose packets are
/// addressed to the primary's own MAC beyond it: their clones are readdressed.
pub fn replica_mac(
    mirror: Option<&crate::config::MirrorConfig>,
) -> Option<crate::sys::link::MacAddr> {
    let m = mirror
        .filter(|m| m.target.is_none() && m.direction == crate::mirror::Direction::Ingress)?;
    crate::sys::link::mac(&m.interface, None).ok()
}
