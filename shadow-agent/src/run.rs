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
    // Resolve every cgroup before attaching anything, so a bad path changes nothing.
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
    let mirror = match &cfg.mirror {
        None => None,
        Some(m) => Some(Mirror::attach(MirrorSpec {
            interface: m.interface.clone(),
            shadow_interface: m.shadow_interface.clone(),
            shadow_mac: m.shadow_mac,
            rules: m.rules.clone(),
            xdp: m.xdp,
        })?),
    };
    let mut profiler = Profiler::start(HookPreference::Auto)?;
    for (_, id) in &cgroups {
        profiler.track(*id)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|source| AgentError::Io {
            op: "starting the async runtime".into(),
            source,
        })?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|source| AgentError::Io {
                op: "installing the SIGTERM handler".into(),
                source,
            })?;
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
            if let Some(m) = &mirror {
                line["mirror"] = serde_json::to_value(m.counters()?).unwrap_or_default();
            }
            let mut cg = serde_json::Map::new();
            for (path, id) in &cgroups {
                if let Some(a) = profiler.cgroup(*id)? {
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
            line["cpu_hook"] = serde_json::to_value(profiler.hook()).unwrap_or_default();
            if json {
                println!("{line}");
            } else {
                println!("{line:#}");
            }
        }
        Ok::<(), AgentError>(())
    })
}
