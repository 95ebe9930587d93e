//! `shadow-agent`: the Shadow node agent.
//!
//! Exit codes: 0 success, 2 usage or configuration error (nothing attached or changed),
//! 1 runtime failure.

use std::{path::PathBuf, process::ExitCode};

use clap::{Parser, Subcommand};
use shadow_agent::error::chain as error_chain;
use shadow_agent::{
    config::{Config, MirrorFlags},
    demo, ebpf, run,
};
use tracing_subscriber::EnvFilter;

#[derive(Parser)]
#[command(
    name = "shadow-agent",
    version,
    about = "Runs a shadow copy of a primary application on live, anonymised traffic and sizes the primary ahead of demand",
    after_help = "Exit codes: 0 success, 2 usage or configuration error (nothing attached or changed), 1 runtime failure. Logs go to stderr (--log-level or RUST_LOG); --json output goes to stdout.\n\nExamples:\n  shadow-agent demo --duration 60\n  shadow-agent run --config /etc/shadow/agent.toml\n  shadow-agent check-config agent.toml\n  shadow-agent verify --json"
)]
struct Cli {
    /// Log level on stderr; RUST_LOG overrides it.
    #[arg(long, global = true, default_value = "warn",
          value_parser = ["error", "warn", "info", "debug", "trace"])]
    log_level: String,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent on this host from a config file and/or the mirror flags.
    #[command(
        after_help = "SIGHUP re-reads the config file (the flags still apply over it): the mirror's rules, [mirror.mask], sample_rate and caps, allocate.dry_run, allocate.cgroups, profile.cgroups and the shadow group's command, caps, bounds and restart settings change live; other changed sections are named in the log (and a `\"event\": \"reload\"` line with --json) and take effect at a restart; a file that does not load changes nothing.\n\nExamples:\n  shadow-agent run --config /etc/shadow/agent.toml\n  shadow-agent run --config agent.toml --json --duration 600 > run.jsonl\n  RUST_LOG=shadow_agent=debug shadow-agent run --config agent.toml\n  shadow-agent reload   # after editing sample_rate in agent.toml (SIGHUP and the verdict)"
    )]
    Run {
        /// The TOML config (`config/agent.example.toml`); the mirror flags override it.
        #[arg(long, required_unless_present = "interface")]
        config: Option<PathBuf>,
        #[command(flatten)]
        mirror: MirrorArgs,
        /// Stop after this many seconds (default: until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<u64>,
        /// One JSON object per interval on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// Where to publish the state `status` reads (default: $SHADOW_STATUS_FILE, else
        /// /run/shadow-agent/status.json).
        #[arg(long)]
        status_file: Option<PathBuf>,
    },
    /// Self-contained demo: a real HTTP server as the primary, a client with a varying
    /// request rate, the mirror and the profiler, all in namespaces and cgroups it makes
    /// and removes.
    #[command(
        after_help = "Examples:\n  shadow-agent demo                      # 60 s, writes ./shadow-demo/report/index.html\n  shadow-agent demo --duration 20 --out /tmp/demo\n  shadow-agent demo --json > demo.jsonl"
    )]
    Demo {
        /// Length of the demo in seconds.
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// One JSON object per second on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// Directory for the run's rows (run.jsonl), the allocator's audit log (audit.jsonl)
        /// and the HTML report (report/index.html); created if missing.
        #[arg(long, value_name = "DIR", default_value = "shadow-demo")]
        out: PathBuf,
    },
    /// Validate a config file (with the mirror flags applied) without attaching or changing
    /// anything (exit 2 when invalid).
    #[command(
        after_help = "Examples:\n  shadow-agent check-config /etc/shadow/agent.toml\n  shadow-agent check-config agent.toml --json"
    )]
    CheckConfig {
        file: PathBuf,
        /// `{\"file\", \"valid\", \"error\"}` on stdout instead of the text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        mirror: MirrorArgs,
    },
    /// Compare what-if replicas with a baseline on the same mirrored traffic: each
    /// `[[shadow.whatif]]` candidate (CPU quota, memory limit, cpuset, command) beside a
    /// baseline replica of `[shadow]`, all fed the flows `[mirror]` selects; reports
    /// request latency percentiles (measured in the kernel), CPU, memory and run-queue
    /// latency per replica, and whether each candidate passes as a shrink.
    #[command(
        after_help = "Examples:\n  shadow-agent whatif --config agent.toml\n  shadow-agent whatif --config agent.toml --duration 120 --json > whatif.json"
    )]
    Whatif {
        #[arg(long)]
        config: PathBuf,
        /// Length of the comparison in seconds (SIGINT/SIGTERM ends it early).
        #[arg(long, default_value_t = 30)]
        duration: u64,
        /// One JSON object (the report) on stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Stream per-cgroup resource samples (CPU, run-queue latency, faults, block IO,
    /// network, exec/exit, memory, PSI) of cgroup2 directories; JSON lines with --json
    /// (schema: docs/profiler.md).
    #[command(
        after_help = "Examples:\n  shadow-agent profile --cgroup /sys/fs/cgroup/unified/shop/web --duration 10\n  shadow-agent profile --cgroup /sys/fs/cgroup/shop/web --interval-ms 500 --json > samples.jsonl"
    )]
    Profile {
        /// A cgroup2 directory to track (repeatable), or a pattern of them (`*`, `?`, `[...]`,
        /// `**`; quote it): every cgroup it matches at start.
        #[arg(long = "cgroup", value_name = "PATH", required = true)]
        cgroups: Vec<PathBuf>,
        /// Sampling interval in milliseconds.
        #[arg(long, default_value_t = 1000)]
        interval_ms: u64,
        /// Stop after this many seconds (default: until SIGINT/SIGTERM).
        #[arg(long)]
        duration: Option<u64>,
        /// One JSON object per sample on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// Benchmark peer: attach only an empty sched_switch program, track nothing.
        #[arg(long, hide = true)]
        empty_hook: bool,
    },
    /// Load every eBPF program of the agent into the kernel (no attach) and report the
    /// verifier's verdict for each, with the instructions it processed (of its 1M limit)
    /// and the load time (exit 1 if any is rejected).
    #[command(
        after_help = "Examples:\n  shadow-agent verify\n  shadow-agent verify --json | jq '.[] | select(.accepted | not)'"
    )]
    Verify {
        /// A JSON array of {object, program, accepted, error} on stdout instead of the table.
        #[arg(long)]
        json: bool,
    },
    /// Show the running agent's replicas, discard counters and mirror counters (exit 1 when
    /// no agent publishes its status).
    #[command(
        after_help = "Examples:\n  shadow-agent status\n  shadow-agent status --json\n  kubectl -n shadow-system exec ds/shadow-agent -- shadow-agent status --json"
    )]
    Status {
        /// The status as published (JSON) on stdout instead of the table.
        #[arg(long)]
        json: bool,
        /// The status file the agent publishes (default: $SHADOW_STATUS_FILE, else
        /// /run/shadow-agent/status.json, as `run` publishes it).
        #[arg(long)]
        file: Option<PathBuf>,
    },
    /// Make the running agent re-read its config (SIGHUP) and report what it applied, what
    /// needs a restart and any error (exit 1 when the file was rejected or a change failed).
    #[command(
        after_help = "The agent is the one publishing the status file. Live: [[mirror.rules]], [mirror.mask], mirror.sample_rate, cap_pps, cap_bytes_per_sec, cap_burst_ms, allocate.dry_run, allocate.cgroups, profile.cgroups, shadow.command, cpu_cores, memory_mb, replicas_min/max and restart settings; other changed sections take effect at a restart. A file that does not load changes nothing.\n\nExamples:\n  shadow-agent reload\n  shadow-agent reload --json\n  systemctl reload shadow-agent   # ExecReload runs `shadow-agent reload`"
    )]
    Reload {
        /// The reload event (JSON) on stdout instead of a line of text.
        #[arg(long)]
        json: bool,
        /// The status file the agent publishes (default: $SHADOW_STATUS_FILE, else
        /// /run/shadow-agent/status.json).
        #[arg(long)]
        file: Option<PathBuf>,
        /// Longest wait, in seconds, for the agent to publish the result (it does so at its
        /// next interval).
        #[arg(long, default_value_t = 30)]
        timeout: u64,
    },
    /// Rolling-origin backtest of the forecasters on a long-format CSV trace.
    Backtest(shadow_agent::forecast::cli::BacktestArgs),
    /// Point forecasts and intervals for a cgroup the running agent tracks, or for a
    /// series of a recorded trace.
    Forecast(shadow_agent::forecast::cmd::ForecastArgs),
    /// Write a self-contained HTML report (plots per cgroup, mirror and shadow counters)
    /// from `run --json` (or `profile`/`demo --json`) lines and the allocator's audit log.
    Report(shadow_agent::report::ReportArgs),
    /// Replay a recorded trace under the allocation policies (static, reactive, VPA-style,
    /// predictive) and report slack, shortage and changes per policy.
    Simulate(shadow_agent::allocate::cli::SimulateArgs),
}

/// The mirror's settings on the command line; each overrides the config key it names and is
/// validated like it.
#[derive(clap::Args, Debug, Default)]
struct MirrorArgs {
    /// mirror.interface: the primary's interface.
    #[arg(long = "mirror-iface", value_name = "IFACE", id = "interface")]
    interface: Option<String>,
    /// mirror.primary_address: the primary's address; its interface is the one traffic to
    /// it leaves through (looked up at start and every interval; instead of --mirror-iface).
    #[arg(
        long = "mirror-address",
        value_name = "IP",
        conflicts_with = "interface"
    )]
    primary_address: Option<String>,
    /// mirror.direction: ingress (the primary's traffic arrives on the interface) or egress
    /// (it leaves through it, as on the host end of a pod's veth).
    #[arg(long = "mirror-direction", value_name = "ingress|egress")]
    direction: Option<String>,
    /// mirror.shadow_interface: the interface clones leave through (with --shadow-mac).
    #[arg(long = "shadow-iface", value_name = "IFACE")]
    shadow_interface: Option<String>,
    /// mirror.shadow_mac: the MAC written as the clones' destination.
    #[arg(long = "shadow-mac", value_name = "MAC")]
    shadow_mac: Option<String>,
    /// mirror.rules (repeatable; replaces the file's rules): PROTO:CIDR[:PORTS][,OPTION...],
    /// PROTO tcp|udp|any, OPTIONs http, range=OFFSET:LENGTH, fallback=mask|drop;
    /// e.g. "tcp:10.0.0.0/24:80-81,http", "udp:[fd00::1]:53,range=0:16".
    #[arg(long = "mirror-rule", value_name = "RULE")]
    rules: Vec<String>,
    /// mirror.sample_rate: fraction of flows mirrored, 0.0 to 1.0.
    #[arg(long = "sample-rate", value_name = "FRACTION")]
    sample_rate: Option<f64>,
    /// mirror.cap_pps: clones per second at most (0: no cap).
    #[arg(long = "cap-pps", value_name = "PPS")]
    cap_pps: Option<u64>,
    /// mirror.cap_bytes_per_sec: cloned bytes per second at most (0: no cap).
    #[arg(long = "cap-bps", value_name = "BYTES_PER_SEC")]
    cap_bps: Option<u64>,
    /// mirror.mask.headers (repeatable; replaces the list): a header whose value is masked.
    #[arg(long = "mask-header", value_name = "NAME")]
    mask_headers: Vec<String>,
    /// mirror.mask.params (repeatable; replaces the list): a parameter whose value is masked.
    #[arg(long = "mask-param", value_name = "NAME")]
    mask_params: Vec<String>,
    /// mirror.mask.fill: the byte masked values become.
    #[arg(long = "mask-fill", value_name = "CHAR")]
    mask_fill: Option<String>,
    /// mirror.mask.replace: `fill` or `token` (keyed same-length tokens; needs a key file).
    #[arg(long = "mask-replace", value_name = "fill|token")]
    mask_replace: Option<String>,
    /// mirror.mask.key_file: the token key (32 hex digits).
    #[arg(long = "mask-key-file", value_name = "PATH")]
    mask_key_file: Option<std::path::PathBuf>,
}

impl MirrorArgs {
    fn flags(self) -> MirrorFlags {
        MirrorFlags {
            interface: self.interface,
            primary_address: self.primary_address,
            direction: self.direction,
            shadow_interface: self.shadow_interface,
            shadow_mac: self.shadow_mac,
            rules: self.rules,
            sample_rate: self.sample_rate,
            cap_pps: self.cap_pps,
            cap_bps: self.cap_bps,
            mask_headers: self.mask_headers,
            mask_params: self.mask_params,
            mask_fill: self.mask_fill,
            mask_replace: self.mask_replace,
            mask_key_file: self.mask_key_file,
        }
    }
}

fn init_logs(level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if matches!(cli.cmd, Cmd::Run { .. }) {
        // A SIGHUP (`systemctl reload` right after the start) must not kill the agent before
        // `run` installs its handler: ignored until then (the handler replaces this, and an
        // exec'd child gets the default back from a handler, so replicas are unaffected).
        // SAFETY: setting a disposition, before any thread exists.
        unsafe {
            libc::signal(libc::SIGHUP, libc::SIG_IGN);
        }
    }
    init_logs(&cli.log_level);
    match cli.cmd {
        Cmd::CheckConfig { file, json, mirror } => {
            match Config::load_with(Some(&file), &mirror.flags()) {
                Ok(cfg) => {
                    // What each profile.cgroups pattern matches on this host now (a pattern
                    // that matches nothing is valid, and often a typo).
                    let mut patterns: Vec<serde_json::Value> = cfg
                        .profile
                        .cgroups
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| shadow_agent::profile::watch::is_pattern(p))
                        .map(|(i, p)| {
                            serde_json::json!({
                                "key": format!("profile.cgroups[{i}]"),
                                "pattern": p,
                                "matches": shadow_agent::profile::watch::expand(p),
                            })
                        })
                        .collect();
                    // And each allocate.cgroups pattern, by group name.
                    if let Some(a) = &cfg.allocate {
                        let base = shadow_agent::sys::cgroup::CgroupRoot::detect(&a.cgroup_root)
                            .ok()
                            .map(|r| shadow_agent::allocate::live::names_base(&r));
                        for (i, p) in a.cgroups.iter().enumerate() {
                            if !shadow_agent::allocate::live::is_pattern(p) {
                                continue;
                            }
                            let matches = base.as_ref().map_or_else(Vec::new, |b| {
                                shadow_agent::allocate::live::match_names(b, p.trim_matches('/'))
                            });
                            patterns.push(serde_json::json!({
                                "key": format!("allocate.cgroups[{i}]"),
                                "pattern": p,
                                "matches": matches,
                            }));
                        }
                    }
                    // Where mirror.primary_address leads on this host now (it is looked up
                    // again at start and every interval: not finding it now is no error).
                    let primary = cfg.mirror.as_ref().and_then(|m| {
                        let address = m.address?;
                        let found = shadow_agent::sys::link::towards(address, None);
                        Some(serde_json::json!({
                            "address": address,
                            "direction": m.direction,
                            "interface": found.as_ref().ok().map(|t| t.name.clone()),
                            "bridge": found.as_ref().ok().and_then(|t| t.bridge.clone()),
                            "reason": found.err().map(|e| e.to_string()),
                        }))
                    });
                    // Whether this kernel has the helpers the mirror's programs call (`run`
                    // would refuse the mirror otherwise, exit 2). Undecidable without the
                    // privileges to load the probe: then not reported as missing.
                    let kernel = cfg
                        .mirror
                        .as_ref()
                        .and_then(|m| shadow_agent::ebpf::probe_mirror_helpers(m.xdp).err());
                    if let Some(k) = kernel {
                        let msg = format!("[mirror]: {k}");
                        if json {
                            println!(
                                "{}",
                                serde_json::json!({ "file": file, "valid": false, "error": msg })
                            );
                        }
                        eprintln!("error: {msg}");
                        return ExitCode::from(2);
                    }
                    // Where [allocate.kubernetes] sends resizes (the token and CA are read
                    // at start: they are the pod's, not this host's).
                    let kubernetes = cfg
                        .allocate
                        .as_ref()
                        .and_then(|a| a.kube.as_ref())
                        .map(|k| {
                            serde_json::json!({
                                "api_server": k.api_server,
                                "node_name": k.node_name,
                                "token_file": k.token_file,
                                "ca_file": k.ca_file,
                            })
                        });
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({
                                "file": file, "valid": true, "error": null,
                                "patterns": patterns, "primary": primary,
                                "kubernetes": kubernetes,
                            })
                        );
                    } else {
                        println!("{}: ok", file.display());
                        if let Some(k) = &kubernetes {
                            println!(
                                "allocate.kubernetes: kubelet-owned groups resized through {} \
                                 for the pods of node {}",
                                k["api_server"].as_str().unwrap_or(""),
                                k["node_name"].as_str().unwrap_or("")
                            );
                        }
                        if let Some(p) = &primary {
                            let address = p["address"].as_str().unwrap_or("");
                            match (p["interface"].as_str(), p["bridge"].as_str()) {
                                (Some(i), None) => {
                                    println!("mirror.primary_address {address}: through {i} now")
                                }
                                (Some(i), Some(b)) => println!(
                                    "mirror.primary_address {address}: through {i} (a port of \
                                     the bridge {b}) now"
                                ),
                                _ => println!(
                                    "mirror.primary_address {address}: no interface now ({}); \
                                     `run` waits for one",
                                    p["reason"].as_str().unwrap_or("")
                                ),
                            }
                        }
                        for p in &patterns {
                            let n = p["matches"].as_array().map_or(0, Vec::len);
                            println!(
                                "{} {}: {}",
                                p["key"].as_str().unwrap_or(""),
                                p["pattern"].as_str().unwrap_or(""),
                                if n == 0 {
                                    "matches no cgroup now (each is taken when it appears)"
                                        .to_owned()
                                } else {
                                    format!("matches {n} cgroup(s) now")
                                }
                            );
                        }
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    let msg = error_chain(&e);
                    if json {
                        println!(
                            "{}",
                            serde_json::json!({ "file": file, "valid": false, "error": msg })
                        );
                    }
                    eprintln!("error: {msg}");
                    ExitCode::from(2)
                }
            }
        }
        Cmd::Verify { json } => verify(json),
        Cmd::Backtest(args) => ExitCode::from(shadow_agent::forecast::cli::backtest(&args)),
        Cmd::Forecast(args) => ExitCode::from(shadow_agent::forecast::cmd::forecast(&args)),
        Cmd::Report(args) => ExitCode::from(shadow_agent::report::cli(&args)),
        Cmd::Simulate(args) => ExitCode::from(shadow_agent::allocate::cli::simulate(&args)),
        Cmd::Reload {
            json,
            file,
            timeout,
        } => {
            let file = file.unwrap_or_else(shadow_agent::status::status_path);
            match shadow_agent::reload::request(&file, std::time::Duration::from_secs(timeout)) {
                Ok(ev) => {
                    let ok = ev["errors"].as_array().is_some_and(|e| e.is_empty());
                    if json {
                        println!("{ev}");
                    } else if ok {
                        println!("reloaded: {}", shadow_agent::reload::describe(&ev));
                    } else {
                        eprintln!("error: reload: {}", shadow_agent::reload::describe(&ev));
                    }
                    if ok {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::from(1)
                    }
                }
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    ExitCode::from(1)
                }
            }
        }
        Cmd::Status { json, file } => match shadow_agent::status::read(
            &file.unwrap_or_else(shadow_agent::status::status_path),
        ) {
            Ok(v) => {
                if json {
                    println!("{v}");
                } else {
                    print!("{}", shadow_agent::status::render(&v));
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {}", error_chain(&e));
                ExitCode::from(1)
            }
        },
        Cmd::Profile {
            cgroups,
            interval_ms,
            duration,
            json,
            empty_hook,
        } => {
            let mut opts = shadow_agent::profile::cli::ProfileOpts::new(cgroups);
            opts.empty_hook = empty_hook;
            opts.interval = std::time::Duration::from_millis(interval_ms);
            opts.duration = duration.map(std::time::Duration::from_secs);
            opts.json = json;
            match shadow_agent::profile::cli::run(&opts) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Cmd::Run {
            config,
            mirror,
            duration,
            json,
            status_file,
        } => {
            let flags = mirror.flags();
            let cfg = match Config::load_with(config.as_deref(), &flags) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    return ExitCode::from(2);
                }
            };
            // SIGHUP re-reads the file, with the same flags over it.
            let reload = |path: &std::path::Path| Config::load_with(Some(path), &flags);
            let path = config.clone();
            let reload_file = path.as_deref().map(|p| move || reload(p));
            match run::run_with_reload(
                &cfg,
                duration.map(std::time::Duration::from_secs),
                json,
                &status_file.unwrap_or_else(shadow_agent::status::status_path),
                reload_file
                    .as_ref()
                    .map(|f| f as &dyn Fn() -> Result<Config, _>),
            ) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Cmd::Whatif {
            config,
            duration,
            json,
        } => {
            let cfg = match Config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    return ExitCode::from(2);
                }
            };
            match shadow_agent::shadow::whatif::from_config(
                &cfg,
                std::time::Duration::from_secs(duration),
            ) {
                Ok(r) => {
                    if json {
                        println!("{}", serde_json::to_value(&r).unwrap_or_default());
                    } else {
                        print!("{}", shadow_agent::shadow::whatif::render(&r));
                    }
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Cmd::Demo {
            duration,
            json,
            out,
        } => {
            let opts = demo::DemoOptions {
                duration: std::time::Duration::from_secs(duration),
                json,
                out,
            };
            match demo::run(&opts) {
                Ok(_) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("error: {}", error_chain(&e));
                    ExitCode::from(e.exit_code())
                }
            }
        }
    }
}

fn verify(json: bool) -> ExitCode {
    let mut failed = false;
    let mut rows = Vec::new();
    for obj in ebpf::ALL {
        match ebpf::verify_object(obj) {
            Ok(results) => {
                for r in results {
                    failed |= r.error.is_some();
                    rows.push(serde_json::json!({
                        "object": r.object,
                        "program": r.program,
                        "accepted": r.error.is_none(),
                        "error": r.error,
                        "verified_insns": r.verified_insns,
                        "load_ms": (r.load_ms * 10.0).round() / 10.0,
                    }));
                }
            }
            Err(e) => {
                failed = true;
                rows.push(serde_json::json!({
                    "object": obj.name,
                    "program": null,
                    "accepted": false,
                    "error": error_chain(&e),
                }));
            }
        }
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
    } else {
        for r in &rows {
            let verdict = if r["accepted"] == true {
                format!(
                    "accepted  {:>7} insns verified  {:>8.1} ms",
                    r["verified_insns"]
                        .as_u64()
                        .map_or("?".to_string(), |n| n.to_string()),
                    r["load_ms"].as_f64().unwrap_or(0.0)
                )
            } else {
                format!("REJECTED: {}", r["error"].as_str().unwrap_or(""))
            };
            println!(
                "{:<14} {:<14} {verdict}",
                r["object"].as_str().unwrap_or(""),
                r["program"].as_str().unwrap_or("-")
            );
        }
    }
    if failed {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
