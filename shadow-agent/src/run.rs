//! `shadow-agent run`: the agent on a host, from a config file.

use std::{os::unix::fs::MetadataExt as _, time::Duration};

use crate::{
    config::Config,
    error::AgentError,
    mirror::{Mirror, MirrorSpec},
    profile::{HookPreference, Profiler},
};

/// Attach what the config asks for and report every interval until SIGINT/SIGTERM or
/// `duration`. Everything attached is detached on return.
pub fn run(cfg: &Config, duration: Option<Duration>, json: bool) -> Result<(), AgentError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Io {
            op: "starting the async runtime".into(),
            source,
        })?;
    // Bind the metrics address and resolve every cgroup before attaching anything, so a
    // bad address or path changes nothing.
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::new());
    let listener = match cfg.metrics_listen {
        None => None,
        Some(addr) => Some(rt.block_on(crate::metrics::bind(addr))?),
    };
    let mut cgroups = Vec::new();
    for path in &cfg.profile.cgroups {
        std::fs::metadata(path.join("cgroup.procs")).map_err(|source| AgentError::NotACgroup {
            path: path.clone(),
            source,
        })?;
        let id = std::fs::metadata(path)
            .map_err(|source| AgentError::NotACgroup {
                path: path.clone(),
                source,
            })?
            .ino();
        cgroups.push((path.clone(), id));
    }
    // The shadow group first: the mirror's target is its first replica's veth.
    let mut group = match &cfg.shadow {
        None => None,
        Some(spec) => {
            crate::shadow::group::validate(spec)?;
            for left in crate::shadow::group::sweep_leftovers(&spec.prefix, &spec.name) {
                tracing::warn!(%left, "removed a leftover of an earlier agent");
            }
            Some(crate::shadow::ShadowGroup::start(spec.clone(), None)?)
        }
    };
    let mirror = match &cfg.mirror {
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
                shadow_interface,
                shadow_mac,
                rules: m.rules.clone(),
                xdp: m.xdp,
                options: m.options.clone(),
            })?;
            if let (None, Some(g)) = (&m.target, group.as_ref()) {
                mirror.set_targets(&g.mirror_targets())?;
            }
            Some(mirror)
        }
    };
    let mut profiler = Profiler::start(HookPreference::Auto)?;
    for (_, id) in &cgroups {
        profiler.track(*id)?;
    }
    if let Some(g) = &group {
        for r in g.replicas() {
            cgroups.push((r.cgroup().unified_path().to_path_buf(), r.cgroup().id()));
            profiler.track(r.cgroup().id())?;
        }
    }
    // The allocator last: it restores the original limits a crashed run left behind.
    let mut allocator = match &cfg.allocate {
        None => None,
        Some(spec) => Some(crate::allocate::live::LiveAllocator::start(spec)?),
    };
    // Live forecasts of every tracked cgroup's CPU (and, with a mirror and a shadow group,
    // the shadow-derived alternative from the mirror's load and the replicas' CPU).
    let interval_s = cfg.profile.interval_ms as f64 / 1000.0;
    let mut forecaster = cfg.forecast.enabled.then(|| {
        let mut f = crate::forecast::live::LiveForecaster::new(cfg.forecast.clone(), interval_s);
        for (path, _) in &cgroups {
            f.track(&path.display().to_string(), "cores");
        }
        if mirror.is_some() && group.is_some() {
            f.use_shadow(LOAD_MATCHED, LOAD_CLONED, SHADOW_CPU);
        }
        f
    });
    let mut prev: std::collections::HashMap<String, f64> = std::collections::HashMap::new();
    let status_path = crate::status::status_path();
    let result = rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| AgentError::Io {
                op: "installing the SIGTERM handler".into(),
                source,
            })?;
        if let Some(l) = listener {
            tokio::spawn(crate::metrics::serve(l, std::sync::Arc::clone(&metrics)));
        }
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.profile.interval_ms));
        let start = tokio::time::Instant::now();
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => break,
                _ = term.recv() => break,
                _ = tick.tick() => {}
            }
            if duration.is_some_and(|d| start.elapsed() >= d) {
                break;
            }
            let mut line = serde_json::json!({ "t_s": start.elapsed().as_secs_f64() });
            // Per-second rates since the previous interval (none on the first).
            let mut rate = |key: &str, total: f64| -> Option<f64> {
                let last = prev.insert(key.to_owned(), total)?;
                Some(((total - last).max(0.0)) / interval_s)
            };
            let mut samples: Vec<(String, f64)> = Vec::new();
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
            }
            let mut cg = serde_json::Map::new();
            let replica_ids: Vec<u64> = group
                .as_ref()
                .map(|g| g.replicas().map(|r| r.cgroup().id()).collect())
                .unwrap_or_default();
            let mut shadow_cpu: Option<f64> = None;
            for (path, id) in &cgroups {
                if let Some(a) = profiler.cgroup(*id)? {
                    let key = path.display().to_string();
                    if let Some(v) = rate(&key, a.cpu_ns as f64 / 1e9) {
                        samples.push((key, v));
                        if replica_ids.contains(id) {
                            *shadow_cpu.get_or_insert(0.0) += v;
                        }
                    }
                    metrics.observe_cgroup_cpu(&path.display().to_string(), a.cpu_ns as f64 / 1e9);
                    cg.insert(
                        path.display().to_string(),
                        serde_json::json!({
                            "cpu_seconds": a.cpu_ns as f64 / 1e9,
                            "switches": a.switches,
                        }),
                    );
                }
            }
            line["cgroups"] = cg.into();
            if let Some(f) = forecaster.as_mut() {
                if let Some(v) = shadow_cpu {
                    samples.push((SHADOW_CPU.into(), v));
                }
                for (k, v) in &samples {
                    f.observe(k, *v);
                }
                f.refit_due();
                for (path, _) in &cgroups {
                    let key = path.display().to_string();
                    if let Some(p) = f.latest(&key) {
                        for i in &p.intervals {
                            let top = i.upper.iter().copied().fold(f64::NAN, f64::max);
                            metrics.observe_forecast_upper(&key, i.level, top);
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
                let status = g.status();
                metrics.observe_replicas(&status);
                line["shadow"] = serde_json::to_value(status).unwrap_or_default();
            }
            line["cpu_hook"] = serde_json::to_value(profiler.hook()).unwrap_or_default();
            let mut scale_events = Vec::new();
            if let Some(a) = allocator.as_mut() {
                line["allocate"] = a.tick();
                scale_events = a.take_events();
                for ev in &scale_events {
                    metrics.observe_scale_event(
                        ev.direction.as_str(),
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
            if let Err(e) = crate::status::publish(&status_path, line.clone()) {
                tracing::warn!(error = %e, "could not publish the status file");
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
    crate::status::withdraw(&status_path);
    result
}

/// Series keys of the shadow-derived demand model: the mirror's matched and cloned packets
/// per second and the shadow replicas' CPU (cores).
const LOAD_MATCHED: &str = "mirror/matched_pps";
const LOAD_CLONED: &str = "mirror/cloned_pps";
const SHADOW_CPU: &str = "shadow/cpu_cores";

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
