//! What live forecasting costs: 200 series from the public Bitbrains trace (CPU, memory,
//! network receive) fed to the agent's live forecaster on its default schedule (1 s profiler
//! intervals, 60-interval steps, a refit of every series every step, at most 8 fits per
//! interval, 576-step window), as `run` does. Each series' history is preloaded with a full
//! window, then `steady` more steps arrive interval by interval; prints the fitting CPU time
//! (thread CPU clock) per fit and per step, as a share of one core.
//!
//! `cargo run --release -p shadow-agent --example live_forecast_cost [-- DATA_DIR]`
//! (default `../shared/data/traces` beside the repository).

use std::path::PathBuf;

use shadow_agent::forecast::{
    data::{self, Resample},
    live::{LiveForecaster, LiveSpec},
    policy::Adaptive,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/traces"),
        PathBuf::from,
    );
    let spec = LiveSpec::default();
    let need = spec.window;
    assert!(need >= Adaptive::with_horizon(spec.horizon).min_history());
    let steady = 24;
    let steps = need + steady;
    let mut series: Vec<Vec<f64>> = Vec::new();
    for (set, metric, take) in [
        ("bitbrains_rnd", "cpu_pct", 80),
        ("bitbrains_rnd", "mem_used_kb", 80),
        ("bitbrains_rnd", "net_rx_kBps", 40),
    ] {
        let d = data::load_csv(
            &dir.join(set).join("usage.csv"),
            metric,
            Resample::default(),
        )?;
        series.extend(
            d.series
                .into_iter()
                .filter(|s| s.values.len() >= steps)
                .take(take)
                .map(|s| s.values[s.values.len() - steps..].to_vec()),
        );
    }
    let n = series.len();
    let mut f = LiveForecaster::new(spec.clone(), 1.0);
    let keys: Vec<String> = (0..n).map(|i| format!("series{i}")).collect();
    for (k, s) in keys.iter().zip(&series) {
        f.track(k, "unit");
        f.preload(k, &s[..need]);
    }
    let per_step = spec.step_intervals as usize;
    let mut at_steady = (0.0, 0);
    // The preloaded fits first (one per series), then the steady state.
    for _ in 0..per_step {
        f.refit_due();
    }
    for step in need..steps {
        if step == need {
            at_steady = f.spent();
        }
        for _ in 0..per_step {
            for (k, s) in keys.iter().zip(&series) {
                f.observe(k, s[step]);
            }
            f.refit_due();
        }
    }
    // The fits of the last step may spill into the next one's intervals.
    for _ in 0..per_step {
        f.refit_due();
    }
    let (cpu_s, fits) = f.spent();
    let (steady_cpu, steady_fits) = (cpu_s - at_steady.0, fits - at_steady.1);
    let step_s = per_step as f64;
    let steady_steps = (steps - need) as f64;
    let share = steady_cpu / (steady_steps * step_s);
    println!(
        "{n} series, window {need} steps of {step_s} s preloaded, {fits} fits, \
         {:.3} ms CPU per fit; steady state: {steady_fits} fits in {steady_steps} steps, \
         {:.1} ms CPU per step of {step_s} s = {:.3}% of one core",
        cpu_s * 1e3 / fits.max(1) as f64,
        steady_cpu * 1e3 / steady_steps,
        share * 100.0
    );
    Ok(())
}
