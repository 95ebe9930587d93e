//! `cargo xtask bench tcp [--json PATH] [--seconds S] [--rate R]`: TCP sessions in the
//! shadow (issue 4) with a real HTTP server and a real load generator.
//!
//! Topology: the one of `bench mirror` (namespaces `shbm<pid>-c|p|s`): the client namespace
//! runs `wrk`, the primary namespace runs nginx on 10.77.0.2:8080, and the shadow namespace
//! holds the same address and runs nginx with the same configuration file (its own prefix
//! directory, so its own access log). The shadow's output reaches the primary namespace's
//! `pm0`, where the agent's `shadow_learn` sees it, and is dropped there (that namespace does
//! not forward); a static neighbour entry lets the shadow answer without ARP.
//!
//! Each request carries `?session=SECRET` and an `Authorization` header; the mirror runs with
//! `tcp_sessions = "translate"`, 100% sampling and HTTP masking, so the shadow's access log
//! shows the request line with the session value masked.
//!
//! Two modes, keep-alive (8 connections, many requests each) and new connection per request
//! (`Connection: close`), each driven for S seconds at about R requests/s (wrk's `delay()`
//! paces every connection), once without the agent and once with it, in that order per
//! mode, in one invocation. Per mode: primary requests and errors (wrk), p50/p99 latency
//! with and without the mirror (wrk's latency histogram), requests in the shadow's access log
//! and how many are masked, the shadow's resets (`tcp_shadow_resets` delta of the agent).
//! Numbers on a shared 2-core VM are noisy.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{
    bench_mirror::{
        check_interrupted, counter_deltas, output_within, sweep_stale, Agent, Netns, Proc, TempDir,
        Topology, CLIENT_ADDR, INTERRUPTED, MIRROR_IF, PREFIX, PRIMARY_ADDR, PRIMARY_IF, SHADOW_IF,
    },
    util,
};

#[derive(Debug, clap::Args)]
pub struct TcpArgs {
    /// Also write the result as JSON to PATH.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Length of each load run in seconds (at least 30 for the acceptance numbers).
    #[arg(long, default_value_t = 30)]
    pub seconds: u32,
    /// Requests per second offered to the primary (8 connections, each paced).
    #[arg(long, default_value_t = 400)]
    pub rate: u32,
    /// The agent's `mirror.tcp_hold_ms` (0: no hold loop, for comparison).
    #[arg(long, default_value_t = 2000)]
    pub tcp_hold_ms: u64,
    /// The agent's `mirror.mask.replace`: `fill` (every masked byte `*`) or `token` (keyed
    /// same-length tokens; the bench writes a key file and checks that the shadow saw one
    /// token for the one secret in every request).
    #[arg(long, default_value = "fill", value_parser = ["fill", "token"])]
    pub mask_replace: String,
}

const PORT: u16 = 8080;
const CONNS: u32 = 8;
const SECRET: &str = "s3cr3t-session-4711";

/// The one nginx configuration both servers run (paths relative to the `-p` prefix).
const NGINX_CONF: &str = r#"worker_processes 1;
user root;
pid nginx.pid;
error_log error.log warn;
events { worker_connections 4096; }
http {
    log_format req '$msec "$request" $status';
    access_log access.log req;
    client_body_temp_path tmp/body;
    proxy_temp_path tmp/proxy;
    fastcgi_temp_path tmp/fastcgi;
    uwsgi_temp_path tmp/uwsgi;
    scgi_temp_path tmp/scgi;
    keepalive_requests 1000000;
    server {
        listen 10.77.0.2:8080 backlog=4096;
        location / { root www; }
    }
}
"#;

/// An nginx in `ns` with its prefix directory `dir`.
fn nginx(ns: &Netns, dir: &Path) -> Result<Proc> {
    fs::create_dir_all(dir.join("www"))?;
    fs::create_dir_all(dir.join("tmp"))?;
    fs::write(dir.join("nginx.conf"), NGINX_CONF)?;
    fs::write(dir.join("www/index.html"), "hello from nginx\n")?;
    let child = ns
        .cmd(&["nginx", "-g", "daemon off;", "-p"])
        .arg(dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting nginx")?;
    let proc = Proc(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let out = ns.run(&["ss", "-Htln", &format!("sport = :{PORT}")])?;
        if out.contains(&format!(":{PORT}")) {
            return Ok(proc);
        }
        if Instant::now() > deadline {
            bail!("nginx in {} is not listening on {PORT}", ns.0);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn log_lines(dir: &Path) -> Vec<String> {
    fs::read_to_string(dir.join("access.log"))
        .unwrap_or_default()
        .lines()
        .map(String::from)
        .collect()
}

/// wrk's Lua script: pacing, the secret headers, and a JSON summary line.
fn wrk_script(close: bool, delay_ms: u32) -> String {
    format!(
        r#"wrk.headers["Authorization"] = "Bearer {SECRET}"
{close}
function delay() return {delay_ms} end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("WRKJSON {{\"requests\":%d,\"errors\":%d,\"p50_ms\":%.3f,\"p99_ms\":%.3f}}\n",
    summary.requests, e.connect + e.read + e.write + e.status + e.timeout,
    latency:percentile(50) / 1000.0, latency:percentile(99) / 1000.0))
end
"#,
        close = if close {
            r#"wrk.headers["Connection"] = "close""#
        } else {
            ""
        }
    )
}

fn run_wrk(topo: &Topology, script: &Path, seconds: u32) -> Result<Value> {
    let url = format!("http://{PRIMARY_ADDR}:{PORT}/index.html?session={SECRET}");
    let mut cmd = topo.client.cmd(&[
        "wrk",
        "-t",
        "2",
        "-c",
        &CONNS.to_string(),
        "-d",
        &format!("{seconds}s"),
        "--timeout",
        "5s",
        "-s",
    ]);
    cmd.arg(script).arg(&url);
    let out = output_within(cmd, Duration::from_secs(seconds as u64 + 60))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("WRKJSON "))
        .ok_or_else(|| anyhow!("no summary from wrk: {}", util::tail(&text, 10)))?;
    serde_json::from_str(line).context("wrk summary")
}

fn agent_config(shadow_mac: &str, hold_ms: u64, token_key: Option<&Path>) -> String {
    let mask = match token_key {
        Some(k) => format!(
            "\n[mirror.mask]\nreplace = \"token\"\nkey_file = \"{}\"\n",
            k.display()
        ),
        None => String::new(),
    };
    format!(
        "[profile]\ninterval_ms = 500\n\n[metrics]\nlisten = \"off\"\n\n\
         [mirror]\ninterface = \"{PRIMARY_IF}\"\nshadow_interface = \"{MIRROR_IF}\"\n\
         shadow_mac = \"{shadow_mac}\"\ntcp_sessions = \"translate\"\nsample_rate = 1.0\n\
         tcp_hold_ms = {hold_ms}\n\n\
         [[mirror.rules]]\ndst = \"{PRIMARY_ADDR}/32\"\nports = \"{PORT}\"\nproto = \"tcp\"\n\
         mask_http = true\n{mask}"
    )
}

/// The `session` value of an access-log line (`... "GET /index.html?session=V HTTP/1.1" ...`).
fn session_value(line: &str) -> Option<&str> {
    let rest = line.split("session=").nth(1)?;
    rest.split([' ', '&', '"']).next()
}

pub fn tcp(args: TcpArgs) -> Result<()> {
    if args.seconds == 0 || args.rate < CONNS {
        bail!("--seconds must be at least 1 and --rate at least {CONNS}");
    }
    for tool in ["nginx", "wrk", "ss"] {
        if Command::new("sh")
            .args(["-c", &format!("command -v {tool}")])
            .stdout(Stdio::null())
            .status()
            .map(|s| !s.success())
            .unwrap_or(true)
        {
            bail!("{tool} is not installed; run `cargo xtask setup`");
        }
    }
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        // SAFETY: the handler only stores to an atomic flag.
        unsafe {
            signal_hook::low_level::register(sig, || INTERRUPTED.store(true, Ordering::Relaxed))
        }
        .context("installing the signal handler")?;
    }
    let root = util::workspace_root();
    let status = Command::new("cargo")
        .current_dir(&root)
        .env("SHADOW_REQUIRE_EBPF", "1")
        .args(["build", "-p", "shadow-agent"])
        .status()
        .context("building shadow-agent")?;
    if !status.success() {
        bail!("building shadow-agent failed");
    }
    let agent_bin = util::target_dir().join("debug/shadow-agent");
    sweep_stale();
    let topo = Topology::create().context("creating the bench topology")?;
    let dir = TempDir(std::env::temp_dir().join(format!("{PREFIX}{}-tcp", std::process::id())));
    fs::create_dir_all(&dir.0)?;
    // The shadow answers the client through pm0 (dropped in the primary namespace, which
    // does not forward); the static entry saves an ARP nobody would answer.
    let pm0_mac = crate::bench_mirror::fs_in(
        &topo.primary,
        &format!("/sys/class/net/{MIRROR_IF}/address"),
    )?;
    topo.shadow.run(&[
        "ip",
        "neigh",
        "replace",
        CLIENT_ADDR,
        "lladdr",
        &pm0_mac,
        "dev",
        SHADOW_IF,
        "nud",
        "permanent",
    ])?;
    topo.primary
        .run(&["sysctl", "-qw", "net.ipv4.ip_forward=0"])?;
    let primary_dir = dir.0.join("primary");
    let shadow_dir = dir.0.join("shadow");
    let _primary = nginx(&topo.primary, &primary_dir)?;
    let _shadow = nginx(&topo.shadow, &shadow_dir)?;
    let config = dir.0.join("agent.toml");
    let token_key = (args.mask_replace == "token").then(|| dir.0.join("mask-token.key"));
    if let Some(k) = &token_key {
        // A fixed key: the bench's token is then the same in every run.
        fs::write(k, "5ad0b2c4e6f8091a2b3c4d5e6f708192\n")?;
    }
    fs::write(
        &config,
        agent_config(&topo.primary_mac, args.tcp_hold_ms, token_key.as_deref()),
    )?;
    let delay_ms = (1000 * CONNS / args.rate).max(1);

    let mut modes = serde_json::Map::new();
    for (mode, close) in [("keepalive", false), ("new_connection", true)] {
        let script = dir.0.join(format!("{mode}.lua"));
        fs::write(&script, wrk_script(close, delay_ms))?;
        check_interrupted()?;
        eprintln!("{mode}: {} s without the mirror", args.seconds);
        let without = run_wrk(&topo, &script, args.seconds)?;
        check_interrupted()?;
        let agent = Agent::start(
            &agent_bin,
            &topo.primary,
            &config,
            dir.0.join("agent.stderr"),
        )
        .context("starting the agent")?;
        let before = agent
            .wait_lines(1, Duration::from_secs(30))?
            .unwrap_or(json!({}));
        let p0 = log_lines(&primary_dir).len();
        let s0 = log_lines(&shadow_dir).len();
        eprintln!("{mode}: {} s with the mirror", args.seconds);
        let with = run_wrk(&topo, &script, args.seconds)?;
        // The shadow catches up (its log is written as it serves).
        let primary_requests = log_lines(&primary_dir).len() - p0;
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline && log_lines(&shadow_dir).len() - s0 < primary_requests {
            std::thread::sleep(Duration::from_millis(200));
        }
        let after = agent
            .wait_lines(2, Duration::from_secs(30))?
            .unwrap_or(json!({}));
        drop(agent);
        let shadow_lines: Vec<String> = log_lines(&shadow_dir).split_off(s0);
        let shadow_requests = shadow_lines.len();
        // Masked: the secret is gone, its length kept (fill: all `*`; token: one token for
        // the one secret, in every request).
        let values: Vec<&str> = shadow_lines
            .iter()
            .filter_map(|l| session_value(l))
            .collect();
        let masked = values
            .iter()
            .filter(|v| {
                v.len() == SECRET.len()
                    && **v != SECRET
                    && (token_key.is_some() || v.bytes().all(|b| b == b'*'))
            })
            .count();
        let mut distinct: Vec<&str> = values.clone();
        distinct.sort_unstable();
        distinct.dedup();
        let deltas = counter_deltas(&before, &after);
        let d = |k: &str| deltas.get(k).copied().unwrap_or(0);
        let ratio = shadow_requests as f64 / primary_requests.max(1) as f64;
        modes.insert(
            mode.into(),
            json!({
                "primary_requests": primary_requests,
                "shadow_requests": shadow_requests,
                "shadow_masked": masked,
                "shadow_distinct_session_values": distinct.len(),
                "completion_ratio": ratio,
                "shadow_resets": d("tcp_shadow_resets"),
                "primary_errors_with": with["errors"],
                "primary_errors_without": without["errors"],
                "primary_requests_without": without["requests"],
                "primary_p50_ms_with": with["p50_ms"],
                "primary_p99_ms_with": with["p99_ms"],
                "primary_p50_ms_without": without["p50_ms"],
                "primary_p99_ms_without": without["p99_ms"],
                "tcp_sessions": d("tcp_sessions"),
                "tcp_established": d("tcp_established"),
                "segments_waiting": d("tcp_waiting"),
                "segments_released": d("tcp_hold_released"),
                "segments_expired": d("tcp_hold_expired"),
                "syn_retries": d("tcp_syn_retries"),
                "hold_passes": d("tcp_hold_loops"),
            }),
        );
        eprintln!("{mode}: {}", modes[mode]);
    }
    // Top-level keys: the new-connection mode (the demo's workload); both modes below.
    let nc = &modes["new_connection"];
    let ka = &modes["keepalive"];
    let total_p =
        nc["primary_requests"].as_u64().unwrap_or(0) + ka["primary_requests"].as_u64().unwrap_or(0);
    let total_s =
        nc["shadow_requests"].as_u64().unwrap_or(0) + ka["shadow_requests"].as_u64().unwrap_or(0);
    let doc = json!({
        "seconds": args.seconds,
        "rate": args.rate,
        "tcp_hold_ms": args.tcp_hold_ms,
        "mask_replace": args.mask_replace,
        "primary_requests": total_p,
        "shadow_requests": total_s,
        "completion_ratio": total_s as f64 / total_p.max(1) as f64,
        "shadow_resets": nc["shadow_resets"].as_u64().unwrap_or(0)
            + ka["shadow_resets"].as_u64().unwrap_or(0),
        "primary_p50_ms_with": nc["primary_p50_ms_with"],
        "primary_p99_ms_with": nc["primary_p99_ms_with"],
        "primary_p50_ms_without": nc["primary_p50_ms_without"],
        "primary_p99_ms_without": nc["primary_p99_ms_without"],
        "modes": modes,
    });
    let text = serde_json::to_string_pretty(&doc)?;
    println!("{text}");
    if let Some(path) = &args.json {
        fs::write(path, &text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_values_come_out_of_access_log_lines() {
        let l = r#"1700000000.123 "GET /index.html?session=abc-12 HTTP/1.1" 200"#;
        assert_eq!(session_value(l), Some("abc-12"));
        let l = r#"1700000000.123 "GET /index.html?session=***&x=1 HTTP/1.1" 200"#;
        assert_eq!(session_value(l), Some("***"));
        assert_eq!(session_value(r#"1 "GET / HTTP/1.1" 200"#), None);
    }

    #[test]
    fn token_mode_adds_the_mask_section() {
        let plain = agent_config("02:00:00:00:00:01", 2000, None);
        assert!(!plain.contains("[mirror.mask]"), "{plain}");
        let tok = agent_config("02:00:00:00:00:01", 2000, Some(Path::new("/k")));
        assert!(
            tok.contains("[mirror.mask]\nreplace = \"token\"\nkey_file = \"/k\"\n"),
            "{tok}"
        );
    }
}
