//! `cargo xtask bench mirror [--json PATH] [--rounds N] [--seconds S] [--xdp] [--cost-only]`:
//! the cost of Shadow's mirror next to the kernel's own `tc ... action mirred egress mirror`.
//!
//! Topology (namespaces `shbm<pid>-c|p|s`, made here and removed on every exit path):
//!
//! ```text
//! client ns  cl0 ──veth── pr0  primary ns  pm0 ──veth── sh0  shadow ns
//! 10.77.0.1/24            10.77.0.2/24                  10.77.0.2/24, pr0's MAC
//! ```
//!
//! IPv6 is off in all three so nothing but mirrored traffic reaches `sh0`. Each round runs,
//! in a rotated order, six variants: no mirror; `tc mirred` on pr0's ingress (clsact +
//! matchall, removed after the round); a "bare clone", the mechanism issue 3 prescribes
//! (`bpf_clone_redirect`) in a TC program that does nothing else (`BareClone`): the floor
//! any `bpf_clone_redirect` mirror sits on; the agent without a mirror (its profiler is always
//! on, so this isolates the agent's own cost); Shadow's mirror; Shadow's mirror with masking
//! (`mask_http` on the TCP rule and a 16-byte `mask_ranges` on the UDP rule, since HTTP
//! masking does not apply to UDP). TCP clones are raw (`tcp_sessions = "off"`), as mirred's
//! are; session translation (issue 4) is not measured here. Shadow is the unmodified agent binary,
//! `shadow-agent run --config` inside the primary namespace (`ip netns exec`, with a private
//! tmpfs on /run so its status file cannot clash with another agent on the host).
//!
//! Workloads per variant: UDP, `iperf3 -u -l 64 -b 0` (the primary's rate is pr0's rx
//! packets per second; the iperf3 server's received datagrams are reported too); TCP bulk
//! (`iperf3`, Gbit/s received by the primary; its payload is not HTTP, so under masking the
//! HTTP rule's fallback masks every payload byte: the worst case); and HTTP bulk, one
//! `curl -T` PUT of a 1 GB sparse file with Content-Length and an Authorization header to a
//! python sink for at most S seconds (the parser masks the header and skips the body: the
//! case masking is built for). Clone delivery = packets received by sh0 /
//! clones sent (the mirror's `cloned` counter; for mirred, every packet pr0 received).
//! After the rounds, a program cost pass runs each workload once more for the bare clone,
//! Shadow and Shadow + masking with `kernel.bpf_stats_enabled` on (off during the rounds:
//! it adds two clock reads to every run of every BPF program) and reports, per workload,
//! ns per run and runs per primary packet of each BPF program those variants loaded
//! (`program_cost.{udp,tcp,http}`; `--cost-only` runs just this pass). `shadow_mirror`
//! minus the bare clone is Shadow's own work per clone: the bare clone's run is the helper,
//! i.e. the clone and its transmit.
//! Numbers are medians over rounds. With two CPUs or more the senders (iperf3 client, curl)
//! run on CPU 0, where the whole receive path and the mirror run too (veth delivers on the
//! sending CPU), and the receivers (iperf3 server, the HTTP sink) on CPU 1 (`--no-pin`:
//! unpinned, as before 2026-12-01).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    io::{BufRead as _, BufReader, Read as _},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context as _, Result};
use serde_json::{json, Value};

use crate::{bench, prereq, util};

#[derive(Debug, clap::Args)]
pub struct MirrorArgs {
    /// Also write the result as JSON to PATH.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Interleaved rounds (each runs every variant once, in a rotated order).
    #[arg(long, default_value_t = 3)]
    pub rounds: u32,
    /// Length of each iperf3 run in seconds.
    #[arg(long, default_value_t = 5)]
    pub seconds: u32,
    /// Also attach Shadow's XDP load counters (`mirror.xdp = true`). Off by default, as in
    /// the agent's default config: XDP on a veth turns off the peer's GSO, which costs bulk
    /// TCP most of its throughput.
    #[arg(long, conflicts_with = "no_xdp")]
    pub xdp: bool,
    /// Without XDP: the default; kept so older command lines still work.
    #[arg(long, hide = true)]
    pub no_xdp: bool,
    /// Do not pin the senders to CPU 0 and the receivers to CPU 1 (the default since
    /// 2026-12-01 when there are two CPUs or more; unpinned runs before).
    #[arg(long)]
    pub no_pin: bool,
    /// Only the program cost pass (the BPF programs' run statistics under each workload),
    /// for quick A/Bs of the eBPF code; no throughput rounds.
    #[arg(long)]
    pub cost_only: bool,
}

/// Target of issue 3: Shadow with masking vs mirred's primary throughput.
pub const TARGET_MASKED_VS_MIRRED: f64 = 0.95;
/// Target of issue 3: clone delivery below the cap.
pub const TARGET_CLONE_DELIVERY: f64 = 0.999;

pub(crate) const PREFIX: &str = "shbm";
pub(crate) const CLIENT_IF: &str = "cl0";
pub(crate) const PRIMARY_IF: &str = "pr0";
pub(crate) const MIRROR_IF: &str = "pm0";
pub(crate) const SHADOW_IF: &str = "sh0";
pub(crate) const CLIENT_ADDR: &str = "10.77.0.1";
pub(crate) const PRIMARY_ADDR: &str = "10.77.0.2";
const PORT: u16 = 5201;
const UDP_LEN: u32 = 64;
/// Port of the HTTP sink.
const HTTP_PORT: u16 = 8080;
/// Body of the one HTTP upload per run (below the parser's 1 GiB Content-Length limit).
const HTTP_BODY: u64 = 1_000_000_000;

/// CPUs for the workloads' senders (client side) and receivers (primary side). Pinned, a
/// run cannot drift between scheduling regimes (a receiver that drains its socket and
/// sleeps needs a cross-CPU wakeup per datagram, which slows the sender, which lets the
/// receiver sleep more): unpinned, UDP rates of one variant differed by up to 25% between
/// runs on this VM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pin {
    pub sender: usize,
    pub receiver: usize,
}

impl Pin {
    /// `taskset -c CPU` ahead of `argv`.
    fn wrap<'a>(cpu: Option<&'a str>, argv: &[&'a str]) -> Vec<&'a str> {
        let mut v = Vec::new();
        if let Some(c) = cpu {
            v.extend(["taskset", "-c", c]);
        }
        v.extend_from_slice(argv);
        v
    }
}

/// The workloads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Load {
    /// iperf3 -u -l 64 -b 0; rate in packets/s.
    Udp,
    /// iperf3 TCP bulk; rate in Gbit/s.
    Tcp,
    /// One HTTP/1.1 PUT with Content-Length and an Authorization header (curl -T); Gbit/s.
    Http,
}

impl Load {
    pub const ALL: [Load; 3] = [Load::Udp, Load::Tcp, Load::Http];

    pub fn key(self) -> &'static str {
        match self {
            Load::Udp => "udp",
            Load::Tcp => "tcp",
            Load::Http => "http",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Variant {
    Baseline,
    Mirred,
    /// The issue's mechanism alone: a TC program that only clones (`BareClone`).
    BareClone,
    Agent,
    Shadow,
    ShadowMasked,
}

impl Variant {
    pub const ALL: [Variant; 6] = [
        Variant::Baseline,
        Variant::Mirred,
        Variant::BareClone,
        Variant::Agent,
        Variant::Shadow,
        Variant::ShadowMasked,
    ];

    pub fn key(self) -> &'static str {
        match self {
            Variant::Baseline => "baseline",
            Variant::Mirred => "mirred",
            Variant::BareClone => "bare_clone",
            Variant::Agent => "agent",
            Variant::Shadow => "shadow",
            Variant::ShadowMasked => "shadow_masked",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Variant::Baseline => "no mirror",
            Variant::Mirred => "tc mirred",
            Variant::BareClone => "bare clone",
            Variant::Agent => "agent, no mirror",
            Variant::Shadow => "Shadow mirror",
            Variant::ShadowMasked => "Shadow + masking",
        }
    }

    /// Variants that send clones to the shadow.
    fn mirrors(self) -> bool {
        matches!(
            self,
            Variant::Mirred | Variant::BareClone | Variant::Shadow | Variant::ShadowMasked
        )
    }
}

/// One workload run under one variant.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Measure {
    /// The primary's rate: UDP pr0 rx packets/s, TCP Gbit/s received by the iperf3 server.
    pub rate: f64,
    /// UDP only: datagrams/s the primary's iperf3 server received.
    pub app_rate: Option<f64>,
    /// Packets sh0 received.
    pub shadow_rx: u64,
    /// Clones sent: the mirror's `cloned`; for mirred, packets pr0 received.
    pub clones_sent: u64,
    /// Deltas of the agent's mirror counters (Shadow variants only).
    pub counters: BTreeMap<String, u64>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub round: u32,
    pub variant: Variant,
    pub udp: Measure,
    pub tcp: Measure,
    pub http: Measure,
}

impl Sample {
    pub fn of(&self, load: Load) -> &Measure {
        match load {
            Load::Udp => &self.udp,
            Load::Tcp => &self.tcp,
            Load::Http => &self.http,
        }
    }
}

/// Run parameters echoed into the JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct Meta {
    pub rounds: u32,
    pub seconds: u32,
    pub xdp: bool,
    /// Senders on CPU 0, receivers on CPU 1.
    pub pinned: bool,
    pub host: String,
    /// The tc classifier carrying the mirred action.
    pub mirred_classifier: String,
}

// ---- statistics and JSON ----------------------------------------------------------------

pub fn median(v: &[f64]) -> Option<f64> {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// `a / b`, `None` when either is missing or `b` is not positive.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 && a.is_finite() => Some(a / b),
        _ => None,
    }
}

fn workload(samples: &[Sample], load: Load) -> Value {
    let udp = load == Load::Udp;
    let unit = if udp { "pps" } else { "gbps" };
    let of = |v: Variant| {
        samples
            .iter()
            .filter(move |s| s.variant == v)
            .map(move |s| s.of(load))
    };
    let rate = |v: Variant| median(&of(v).map(|x| x.rate).collect::<Vec<_>>());
    let delivery = |vs: &[Variant]| {
        let (rx, sent) = vs
            .iter()
            .flat_map(|&v| of(v))
            .fold((0u64, 0u64), |(r, s), x| {
                (r + x.shadow_rx, s + x.clones_sent)
            });
        ratio(Some(rx as f64), Some(sent as f64))
    };
    let mut out = serde_json::Map::new();
    let mut per_round = serde_json::Map::new();
    let mut received = serde_json::Map::new();
    let mut sent = serde_json::Map::new();
    let mut by_variant = serde_json::Map::new();
    let mut counters = serde_json::Map::new();
    for v in Variant::ALL {
        out.insert(format!("{}_{unit}", v.key()), json!(rate(v)));
        if udp {
            let app: Vec<f64> = of(v).filter_map(|x| x.app_rate).collect();
            out.insert(format!("{}_app_pps", v.key()), json!(median(&app)));
        }
        per_round.insert(
            v.key().into(),
            json!(of(v).map(|x| x.rate).collect::<Vec<_>>()),
        );
        if v.mirrors() {
            received.insert(
                v.key().into(),
                json!(of(v).map(|x| x.shadow_rx).sum::<u64>()),
            );
            sent.insert(
                v.key().into(),
                json!(of(v).map(|x| x.clones_sent).sum::<u64>()),
            );
            by_variant.insert(v.key().into(), json!(delivery(&[v])));
        }
        let mut sum = BTreeMap::<String, u64>::new();
        for x in of(v) {
            for (k, n) in &x.counters {
                *sum.entry(k.clone()).or_default() += n;
            }
        }
        if !sum.is_empty() {
            counters.insert(v.key().into(), json!(sum));
        }
    }
    let mirred = rate(Variant::Mirred);
    let base = rate(Variant::Baseline);
    out.insert(
        "shadow_vs_mirred".into(),
        json!(ratio(rate(Variant::Shadow), mirred)),
    );
    out.insert(
        "shadow_masked_vs_mirred".into(),
        json!(ratio(rate(Variant::ShadowMasked), mirred)),
    );
    out.insert(
        "bare_clone_vs_mirred".into(),
        json!(ratio(rate(Variant::BareClone), mirred)),
    );
    let mut vs_base = serde_json::Map::new();
    for v in &Variant::ALL[1..] {
        vs_base.insert(v.key().into(), json!(ratio(rate(*v), base)));
    }
    out.insert("vs_baseline".into(), vs_base.into());
    out.insert(
        "clone_delivery".into(),
        json!(delivery(&[Variant::Shadow, Variant::ShadowMasked])),
    );
    out.insert("clone_delivery_by_variant".into(), by_variant.into());
    out.insert("shadow_received".into(), received.into());
    out.insert("clones_sent".into(), sent.into());
    out.insert("mirror_counters".into(), counters.into());
    out.insert("per_round".into(), per_round.into());
    out.into()
}

/// The result document: `udp.*`, `tcp.*`, targets and whether they were met.
pub fn summarize(samples: &[Sample], meta: &Meta) -> Value {
    let udp = workload(samples, Load::Udp);
    let tcp = workload(samples, Load::Tcp);
    let http = workload(samples, Load::Http);
    let at_least = |v: &Value, min: f64| v.as_f64().map(|x| x >= min);
    let met = json!({
        "udp_shadow_masked_vs_mirred": at_least(&udp["shadow_masked_vs_mirred"], TARGET_MASKED_VS_MIRRED),
        "tcp_shadow_masked_vs_mirred": at_least(&tcp["shadow_masked_vs_mirred"], TARGET_MASKED_VS_MIRRED),
        "udp_clone_delivery": at_least(&udp["clone_delivery"], TARGET_CLONE_DELIVERY),
        "http_shadow_masked_vs_mirred": at_least(&http["shadow_masked_vs_mirred"], TARGET_MASKED_VS_MIRRED),
    });
    json!({
        "udp": udp,
        "tcp": tcp,
        "http": http,
        "targets": {
            "shadow_masked_vs_mirred_min": TARGET_MASKED_VS_MIRRED,
            "clone_delivery_min": TARGET_CLONE_DELIVERY,
            "met": met,
        },
        "rounds": meta.rounds,
        "seconds": meta.seconds,
        "xdp": meta.xdp,
        "pinned": meta.pinned,
        "mirred_classifier": meta.mirred_classifier,
        "udp_payload_bytes": UDP_LEN,
        "host": meta.host,
    })
}

fn fmt_opt(v: &Value, scale: f64, prec: usize) -> String {
    v.as_f64()
        .map_or_else(|| "-".into(), |x| format!("{:.prec$}", x * scale))
}

/// The human-readable table of a [`summarize`] document.
pub fn table(doc: &Value) -> String {
    let (u, t, h) = (&doc["udp"], &doc["tcp"], &doc["http"]);
    let mut s = format!(
        "{:<17} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>7} {:>7} | {:>9} {:>7} {:>7}\n",
        "variant",
        "UDP kpps",
        "app kpps",
        "vs mirr",
        "deliv",
        "TCP Gb/s",
        "vs mirr",
        "deliv",
        "HTTP Gb/s",
        "vs mirr",
        "deliv",
    );
    for v in Variant::ALL {
        let k = v.key();
        let vs = |w: &Value| match v {
            Variant::Mirred => "1.000".to_string(),
            Variant::BareClone | Variant::Shadow | Variant::ShadowMasked => {
                fmt_opt(&w[format!("{k}_vs_mirred")], 1.0, 3)
            }
            _ => "-".into(),
        };
        let deliv = |w: &Value| fmt_opt(&w["clone_delivery_by_variant"][k], 1.0, 4);
        s += &format!(
            "{:<17} {:>8} {:>8} {:>7} {:>7} | {:>8} {:>7} {:>7} | {:>9} {:>7} {:>7}\n",
            v.label(),
            fmt_opt(&u[format!("{k}_pps")], 1e-3, 1),
            fmt_opt(&u[format!("{k}_app_pps")], 1e-3, 1),
            vs(u),
            deliv(u),
            fmt_opt(&t[format!("{k}_gbps")], 1.0, 2),
            vs(t),
            deliv(t),
            fmt_opt(&h[format!("{k}_gbps")], 1.0, 2),
            vs(h),
            deliv(h),
        );
    }
    s
}

// ---- kernel objects behind guards -------------------------------------------------------

fn ip(args: &[&str]) -> Result<()> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("running ip {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// A named network namespace, deleted on drop.
pub(crate) struct Netns(pub(crate) String);

impl Netns {
    fn add(name: String) -> Result<Netns> {
        ip(&["netns", "add", &name])?;
        let ns = Netns(name);
        ns.run(&[
            "sysctl",
            "-qw",
            "net.ipv6.conf.all.disable_ipv6=1",
            "net.ipv6.conf.default.disable_ipv6=1",
        ])?;
        ip(&["-n", &ns.0, "link", "set", "lo", "up"])?;
        Ok(ns)
    }

    pub(crate) fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.0]).args(args);
        c
    }

    pub(crate) fn run(&self, args: &[&str]) -> Result<String> {
        let out = self
            .cmd(args)
            .output()
            .with_context(|| format!("running {} in {}", args.join(" "), self.0))?;
        if !out.status.success() {
            bail!(
                "{} in {} failed: {}",
                args.join(" "),
                self.0,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Received packets of `dev`, from /proc/net/dev in this namespace.
    fn rx(&self, dev: &str) -> Result<u64> {
        let text = self.run(&["cat", "/proc/net/dev"])?;
        parse_rx_packets(&text, dev).ok_or_else(|| anyhow!("{dev} not in {}'s net/dev", self.0))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.0])
            .stderr(Stdio::null())
            .status();
    }
}

pub fn parse_rx_packets(net_dev: &str, dev: &str) -> Option<u64> {
    net_dev.lines().find_map(|l| {
        let (name, rest) = l.split_once(':')?;
        (name.trim() == dev).then(|| rest.split_whitespace().nth(1)?.parse().ok())?
    })
}

/// Deletes `shbm<pid>-*` namespaces whose xtask is gone (a killed earlier run).
pub(crate) fn sweep_stale() {
    let Ok(dir) = fs::read_dir("/run/netns") else {
        return;
    };
    for e in dir.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(PREFIX)
            .and_then(|r| r.split_once('-'))
            .and_then(|(p, _)| p.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            eprintln!("removing namespace {name} left by an earlier run");
            drop(Netns(name));
        }
    }
}

/// The three namespaces and two veth pairs.
pub(crate) struct Topology {
    pub(crate) client: Netns,
    pub(crate) primary: Netns,
    pub(crate) shadow: Netns,
    /// pr0's MAC, also given to sh0 so clones are accepted without a rewrite.
    pub(crate) primary_mac: String,
}

impl Topology {
    pub(crate) fn create() -> Result<Topology> {
        let pid = std::process::id();
        let client = Netns::add(format!("{PREFIX}{pid}-c"))?;
        let primary = Netns::add(format!("{PREFIX}{pid}-p"))?;
        let shadow = Netns::add(format!("{PREFIX}{pid}-s"))?;
        let (c, p, s) = (&client.0, &primary.0, &shadow.0);
        ip(&[
            "link", "add", CLIENT_IF, "netns", c, "type", "veth", "peer", "name", PRIMARY_IF,
            "netns", p,
        ])?;
        ip(&[
            "link", "add", MIRROR_IF, "netns", p, "type", "veth", "peer", "name", SHADOW_IF,
            "netns", s,
        ])?;
        let primary_mac = fs_in(&primary, &format!("/sys/class/net/{PRIMARY_IF}/address"))?;
        ip(&["-n", s, "link", "set", SHADOW_IF, "address", &primary_mac])?;
        ip(&[
            "-n",
            c,
            "addr",
            "add",
            &format!("{CLIENT_ADDR}/24"),
            "dev",
            CLIENT_IF,
        ])?;
        ip(&[
            "-n",
            p,
            "addr",
            "add",
            &format!("{PRIMARY_ADDR}/24"),
            "dev",
            PRIMARY_IF,
        ])?;
        ip(&[
            "-n",
            s,
            "addr",
            "add",
            &format!("{PRIMARY_ADDR}/24"),
            "dev",
            SHADOW_IF,
        ])?;
        for (ns, dev) in [
            (c, CLIENT_IF),
            (p, PRIMARY_IF),
            (p, MIRROR_IF),
            (s, SHADOW_IF),
        ] {
            ip(&["-n", ns, "link", "set", dev, "up"])?;
        }
        Ok(Topology {
            client,
            primary,
            shadow,
            primary_mac,
        })
    }
}

/// A sysfs file as seen from inside `ns` (ip netns exec remounts /sys).
pub(crate) fn fs_in(ns: &Netns, path: &str) -> Result<String> {
    Ok(ns.run(&["cat", path])?.trim().to_owned())
}

/// A clsact qdisc on pr0 for a peer's filter; deleted (and with it the filter) on drop.
struct Clsact<'a> {
    ns: &'a Netns,
}

impl<'a> Clsact<'a> {
    fn add(ns: &'a Netns) -> Result<Clsact<'a>> {
        ns.run(&["tc", "qdisc", "add", "dev", PRIMARY_IF, "clsact"])?;
        Ok(Clsact { ns })
    }
}

impl Drop for Clsact<'_> {
    fn drop(&mut self) {
        let _ = self
            .ns
            .cmd(&["tc", "qdisc", "del", "dev", PRIMARY_IF, "clsact"])
            .stderr(Stdio::null())
            .status();
    }
}

/// `tc mirred` on pr0's ingress; the filter goes with its clsact qdisc on drop. The filter
/// is `matchall`, or `u32 match u32 0 0` (every frame) on kernels built without
/// cls_matchall.
struct Mirred<'a> {
    _qdisc: Clsact<'a>,
    classifier: &'static str,
}

impl<'a> Mirred<'a> {
    fn add(ns: &'a Netns) -> Result<Mirred<'a>> {
        let mut guard = Mirred {
            _qdisc: Clsact::add(ns)?,
            classifier: "matchall",
        };
        let action = ["action", "mirred", "egress", "mirror", "dev", MIRROR_IF];
        let base = ["tc", "filter", "add", "dev", PRIMARY_IF, "ingress"];
        let matchall: Vec<&str> = base
            .iter()
            .chain(&["matchall"])
            .chain(&action)
            .copied()
            .collect();
        if let Err(first) = ns.run(&matchall) {
            let u32_all: Vec<&str> = base
                .iter()
                .chain(&["protocol", "all", "u32", "match", "u32", "0", "0"])
                .chain(&action)
                .copied()
                .collect();
            ns.run(&u32_all)
                .with_context(|| format!("after matchall failed: {first:#}"))?;
            guard.classifier = "u32 match u32 0 0";
        }
        Ok(guard)
    }
}

/// The floor of the mechanism issue 3 prescribes, measured in the same run as mirred: a TC
/// ingress program on pr0 of five instructions that calls `bpf_clone_redirect(skb, pm0, 0)`
/// and passes the packet (`TC_ACT_OK`), with no parsing, rules, sampling, cap, counters or
/// masking. Its cost over mirred is the helper's own: after cloning it makes the original's
/// head private again (`bpf_try_make_head_writable`: a copy of the linear data), which mirred
/// does not. Loaded with the bpf syscall (no ELF object needed), pinned in a bpffs mounted in
/// the bench's directory so `tc ... bpf da pinned` can attach it inside the namespace. On
/// drop the qdisc goes first (detaching the program), then the pin and the mount (fields
/// drop in declaration order).
struct BareClone<'a> {
    _qdisc: Clsact<'a>,
    _bpffs: Bpffs,
}

impl<'a> BareClone<'a> {
    fn add(ns: &'a Netns, dir: &Path) -> Result<BareClone<'a>> {
        let ifindex: i32 = fs_in(ns, &format!("/sys/class/net/{MIRROR_IF}/ifindex"))?
            .parse()
            .context("ifindex of the mirror interface")?;
        let bpffs = Bpffs::mount(dir.join("bpffs"))?;
        let pin = bpffs.0.join("clone");
        bare_clone_pin(ifindex, &pin)?;
        let pin = pin.to_str().context("bpffs path is not UTF-8")?;
        let qdisc = Clsact::add(ns)?;
        ns.run(&[
            "tc", "filter", "add", "dev", PRIMARY_IF, "ingress", "bpf", "da", "pinned", pin,
        ])?;
        Ok(BareClone {
            _qdisc: qdisc,
            _bpffs: bpffs,
        })
    }
}

/// A bpffs mounted at a directory made for it; unmounted (its pins go with it) and the
/// directory removed on drop.
struct Bpffs(PathBuf);

impl Bpffs {
    fn mount(dir: PathBuf) -> Result<Bpffs> {
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        let st = Command::new("mount")
            .args(["-t", "bpf", "bpf"])
            .arg(&dir)
            .status()
            .context("running mount")?;
        if !st.success() {
            let _ = fs::remove_dir(&dir);
            bail!("mount -t bpf bpf {}: {st}", dir.display());
        }
        Ok(Bpffs(dir))
    }
}

impl Drop for Bpffs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir(&self.0);
    }
}

// ---- program cost ------------------------------------------------------------------------

/// Variants whose BPF programs the cost pass measures: the bare clone is the peer, since its
/// one helper call (`bpf_clone_redirect`, which runs the clone's whole transmit to the
/// shadow interface) is inside every clone Shadow's mirror makes too.
const COST_VARIANTS: [Variant; 3] = [Variant::BareClone, Variant::Shadow, Variant::ShadowMasked];

/// One BPF program's run statistics over one load of the cost pass.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProgRuns {
    pub runs: u64,
    pub run_ns: u64,
}

impl ProgRuns {
    /// `None` without runs.
    pub fn ns_per_run(&self) -> Option<f64> {
        ratio(Some(self.run_ns as f64), Some(self.runs as f64))
    }
}

/// The programs one variant loaded (by name, programs of one name summed) under one load,
/// and the packets the primary received while they were counted.
#[derive(Debug, Clone)]
pub struct VariantCost {
    pub variant: Variant,
    pub load: Load,
    pub primary_packets: u64,
    pub programs: BTreeMap<String, ProgRuns>,
}

/// Sets up `variant`, turns on `kernel.bpf_stats_enabled` (restored on every exit path) and
/// runs each load once: per load, the run statistics of the programs loaded since the
/// set-up began.
#[allow(clippy::too_many_arguments)]
fn program_cost(
    topo: &Topology,
    dir: &Path,
    agent_bin: &Path,
    config: &Path,
    variant: Variant,
    seconds: u32,
    body: &Path,
    pin: Option<Pin>,
) -> Result<Vec<VariantCost>> {
    let known: BTreeSet<u64> = bench::prog_stats()?.into_keys().collect();
    let _bare = match variant {
        Variant::BareClone => Some(BareClone::add(&topo.primary, dir)?),
        _ => None,
    };
    let agent = match variant {
        Variant::Shadow | Variant::ShadowMasked => Some(Agent::start(
            agent_bin,
            &topo.primary,
            config,
            dir.join("agent.stderr"),
        )?),
        _ => None,
    };
    let old = fs::read_to_string(bench::STATS).context("reading kernel.bpf_stats_enabled")?;
    let stats = bench::StatsGuard(old.trim().to_owned());
    fs::write(bench::STATS, "1").context("setting kernel.bpf_stats_enabled")?;
    let mut out = Vec::new();
    for load in Load::ALL {
        let before = bench::prog_stats()?;
        let p0 = topo.primary.rx(PRIMARY_IF)?;
        measure(
            topo,
            seconds,
            load,
            agent.as_ref(),
            variant == Variant::BareClone,
            body,
            pin,
        )
        .with_context(|| format!("{} load", load.key()))?;
        let p1 = topo.primary.rx(PRIMARY_IF)?;
        let after = bench::prog_stats()?;
        let mut programs = BTreeMap::<String, ProgRuns>::new();
        for (id, (name, ns, cnt)) in after {
            if known.contains(&id) {
                continue;
            }
            let (ns0, cnt0) = before.get(&id).map_or((0, 0), |b| (b.1, b.2));
            let runs = cnt.saturating_sub(cnt0);
            if runs == 0 {
                continue;
            }
            let p = programs.entry(name).or_default();
            p.runs += runs;
            p.run_ns += ns.saturating_sub(ns0);
        }
        out.push(VariantCost {
            variant,
            load,
            primary_packets: p1.saturating_sub(p0),
            programs,
        });
    }
    drop(stats);
    Ok(out)
}

/// The cost pass as JSON: per load, per variant, per program, runs, ns per run and ns per
/// packet the primary received; and Shadow's mirror program over the bare clone, both per
/// run.
pub fn cost_doc(costs: &[VariantCost]) -> Value {
    let mut doc = serde_json::Map::new();
    for load in Load::ALL {
        let of_load: Vec<&VariantCost> = costs.iter().filter(|c| c.load == load).collect();
        if !of_load.is_empty() {
            doc.insert(load.key().into(), cost_doc_of_load(&of_load));
        }
    }
    Value::Object(doc)
}

fn cost_doc_of_load(costs: &[&VariantCost]) -> Value {
    let mut out = serde_json::Map::new();
    let per_run = |v: Variant, prog: &str| {
        costs
            .iter()
            .find(|c| c.variant == v)
            .and_then(|c| c.programs.get(prog))
            .and_then(ProgRuns::ns_per_run)
    };
    for c in costs {
        let programs: serde_json::Map<String, Value> = c
            .programs
            .iter()
            .map(|(name, p)| {
                let per_packet = ratio(Some(p.run_ns as f64), Some(c.primary_packets as f64));
                (
                    name.clone(),
                    json!({
                        "runs": p.runs,
                        "ns_per_run": p.ns_per_run(),
                        "ns_per_packet": per_packet,
                    }),
                )
            })
            .collect();
        out.insert(
            c.variant.key().into(),
            json!({"primary_packets": c.primary_packets, "programs": programs}),
        );
    }
    let bare = per_run(Variant::BareClone, BARE_CLONE_NAME);
    for (v, key) in [
        (Variant::Shadow, "shadow_mirror_over_bare_clone_ns"),
        (
            Variant::ShadowMasked,
            "shadow_masked_mirror_over_bare_clone_ns",
        ),
    ] {
        let d = per_run(v, "shadow_mirror").zip(bare).map(|(a, b)| a - b);
        out.insert(key.into(), json!(d));
    }
    Value::Object(out)
}

/// The cost pass in lines of text.
pub fn cost_table(doc: &Value) -> String {
    let mut s = String::from(
        "BPF programs (kernel.bpf_stats_enabled, a pass of its own): ns per run x runs per \
         primary packet\n",
    );
    for load in Load::ALL {
        let cost = &doc[load.key()];
        if cost.is_object() {
            s += &format!("{}\n", load.key().to_uppercase());
            s += &cost_lines(cost);
        }
    }
    s
}

fn cost_lines(cost: &Value) -> String {
    let mut s = String::new();
    for v in COST_VARIANTS {
        let c = &cost[v.key()];
        let Some(programs) = c["programs"].as_object() else {
            continue;
        };
        let packets = c["primary_packets"].as_f64().unwrap_or(0.0);
        let parts: Vec<String> = programs
            .iter()
            .map(|(name, p)| {
                let runs = p["runs"].as_f64().unwrap_or(0.0);
                let per = if packets > 0.0 {
                    runs / packets
                } else {
                    f64::NAN
                };
                format!("{name} {} ns x {per:.2}", fmt_opt(&p["ns_per_run"], 1.0, 0))
            })
            .collect();
        s += &format!("  {:<17} {}\n", v.label(), parts.join(", "));
    }
    s += &format!(
        "  shadow_mirror over the bare clone: {} ns per run ({} with masking)\n",
        fmt_opt(&cost["shadow_mirror_over_bare_clone_ns"], 1.0, 0),
        fmt_opt(&cost["shadow_masked_mirror_over_bare_clone_ns"], 1.0, 0),
    );
    s
}

/// The bare clone program's name in the kernel (at most 15 bytes).
const BARE_CLONE_NAME: &str = "bare_clone";

/// Loads the bare clone program (`BPF_PROG_TYPE_SCHED_CLS`) and pins it at `pin`.
fn bare_clone_pin(ifindex: i32, pin: &Path) -> Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    // struct bpf_insn: opcode, dst_reg | src_reg << 4, off, imm.
    fn insn(code: u8, dst: u8, imm: i32) -> [u8; 8] {
        let mut b = [0u8; 8];
        b[0] = code;
        b[1] = dst;
        b[4..].copy_from_slice(&imm.to_le_bytes());
        b
    }
    const MOV64_IMM: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
    const CALL: u8 = 0x85; // BPF_JMP | BPF_CALL
    const EXIT: u8 = 0x95; // BPF_JMP | BPF_EXIT
    const CLONE_REDIRECT: i32 = 13; // BPF_FUNC_clone_redirect
                                    // r1 = the skb on entry; r2 = ifindex; r3 = 0 (egress); call; r0 = TC_ACT_OK; exit.
    let prog: Vec<u8> = [
        insn(MOV64_IMM, 2, ifindex),
        insn(MOV64_IMM, 3, 0),
        insn(CALL, 0, CLONE_REDIRECT),
        insn(MOV64_IMM, 0, 0),
        insn(EXIT, 0, 0),
    ]
    .concat();
    let license = c"GPL";
    let mut log = vec![0u8; 4096];
    // union bpf_attr for BPF_PROG_LOAD: prog_type, insn_cnt, insns, license, log_level,
    // log_size, log_buf; the rest zero.
    let mut attr = [0u8; 128];
    attr[0..4].copy_from_slice(&3u32.to_le_bytes()); // BPF_PROG_TYPE_SCHED_CLS
    attr[4..8].copy_from_slice(&((prog.len() / 8) as u32).to_le_bytes());
    attr[8..16].copy_from_slice(&(prog.as_ptr() as u64).to_le_bytes());
    attr[16..24].copy_from_slice(&(license.as_ptr() as u64).to_le_bytes());
    attr[24..28].copy_from_slice(&1u32.to_le_bytes());
    attr[28..32].copy_from_slice(&(log.len() as u32).to_le_bytes());
    attr[32..40].copy_from_slice(&(log.as_mut_ptr() as u64).to_le_bytes());
    // prog_name (char[16] at offset 48), so the kernel's run statistics name it.
    attr[48..48 + BARE_CLONE_NAME.len()].copy_from_slice(BARE_CLONE_NAME.as_bytes());
    // SAFETY: `attr` is a valid bpf_attr of its size for BPF_PROG_LOAD; the pointers in it
    // (program, license, log buffer of the stated size) outlive the call.
    let fd = unsafe { libc::syscall(libc::SYS_bpf, 5, attr.as_mut_ptr(), attr.len()) };
    if fd < 0 {
        let err = std::io::Error::last_os_error();
        let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
        bail!(
            "loading the bare clone program: {err}; verifier: {}",
            String::from_utf8_lossy(&log[..end])
        );
    }
    let fd = fd as i32;
    let path = std::ffi::CString::new(pin.as_os_str().as_bytes()).context("pin path")?;
    // BPF_OBJ_PIN: pathname, bpf_fd.
    let mut attr = [0u8; 128];
    attr[0..8].copy_from_slice(&(path.as_ptr() as u64).to_le_bytes());
    attr[8..12].copy_from_slice(&(fd as u32).to_le_bytes());
    // SAFETY: a valid bpf_attr for BPF_OBJ_PIN whose path outlives the call; `fd` is the
    // program's descriptor, closed right after (the pin keeps the program).
    let rc = unsafe { libc::syscall(libc::SYS_bpf, 6, attr.as_mut_ptr(), attr.len()) };
    let err = std::io::Error::last_os_error();
    // SAFETY: `fd` was returned by BPF_PROG_LOAD above and is closed once.
    unsafe { libc::close(fd) };
    if rc < 0 {
        bail!("pinning the bare clone program at {}: {err}", pin.display());
    }
    Ok(())
}

/// A child process: SIGINT, then SIGKILL after 5 s, on drop.
pub(crate) struct Proc(pub(crate) Child);

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        let _ = Command::new("kill")
            .args(["-INT", &self.0.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.0.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A directory removed with its contents on drop.
pub(crate) struct TempDir(pub(crate) PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// SIGINT/SIGTERM seen: stop at the next step, letting the guards clean up.
pub(crate) static INTERRUPTED: AtomicBool = AtomicBool::new(false);

pub(crate) fn check_interrupted() -> Result<()> {
    if INTERRUPTED.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}

/// Runs `cmd` to completion with a deadline (killed when it passes).
pub(crate) fn output_within(mut cmd: Command, limit: Duration) -> Result<Output> {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {}", util::display_cmd(&cmd)))?;
    let mut out = child.stdout.take().ok_or_else(|| anyhow!("stdout"))?;
    let mut err = child.stderr.take().ok_or_else(|| anyhow!("stderr"))?;
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break st;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "{} did not finish within {limit:?}",
                util::display_cmd(&cmd)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Ok(Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    })
}

// ---- the agent --------------------------------------------------------------------------

#[derive(Default)]
struct AgentLines {
    seq: u64,
    mirror: Option<Value>,
    done: bool,
}

/// `shadow-agent run --config` in the primary namespace, its JSON lines read by a thread.
pub(crate) struct Agent {
    _proc: Proc,
    lines: Arc<Mutex<AgentLines>>,
    stderr: PathBuf,
}

impl Agent {
    pub(crate) fn start(agent: &Path, ns: &Netns, config: &Path, stderr: PathBuf) -> Result<Agent> {
        let err = fs::File::create(&stderr).context("agent stderr file")?;
        // ip netns exec gives a private mount namespace; a tmpfs on /run there keeps the
        // agent's status file away from any other agent on the host.
        let mut child = ns
            .cmd(&["sh", "-c", "mount -t tmpfs shbm /run && exec \"$@\"", "sh"])
            .arg(agent)
            .args(["run", "--json", "--config"])
            .arg(config)
            .stdout(Stdio::piped())
            .stderr(err)
            .spawn()
            .context("starting shadow-agent")?;
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("agent stdout"))?;
        let lines = Arc::new(Mutex::new(AgentLines::default()));
        let shared = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                let Ok(v) = serde_json::from_str::<Value>(&line) else {
                    continue;
                };
                let mut l = shared.lock().unwrap_or_else(|e| e.into_inner());
                l.seq += 1;
                l.mirror = v.get("mirror").cloned().filter(|m| !m.is_null());
            }
            shared.lock().unwrap_or_else(|e| e.into_inner()).done = true;
        });
        let agent = Agent {
            _proc: Proc(child),
            lines,
            stderr,
        };
        agent.wait_lines(1, Duration::from_secs(60))?;
        Ok(agent)
    }

    /// Waits until `n` more report lines arrived; returns the newest mirror counters.
    pub(crate) fn wait_lines(&self, n: u64, limit: Duration) -> Result<Option<Value>> {
        let start = self.lines.lock().unwrap_or_else(|e| e.into_inner()).seq;
        let deadline = Instant::now() + limit;
        loop {
            {
                let l = self.lines.lock().unwrap_or_else(|e| e.into_inner());
                if l.seq >= start + n {
                    return Ok(l.mirror.clone());
                }
                if l.done {
                    let text = fs::read_to_string(&self.stderr).unwrap_or_default();
                    bail!("shadow-agent exited: {}", util::tail(&text, 10));
                }
            }
            if Instant::now() > deadline {
                bail!("shadow-agent reported nothing for {limit:?}");
            }
            check_interrupted()?;
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

pub fn agent_config(shadow_mac: &str, variant: Variant, xdp: bool) -> String {
    let mut s = String::from("[profile]\ninterval_ms = 100\n\n[metrics]\nlisten = \"off\"\n");
    if variant == Variant::Agent {
        return s;
    }
    let masked = variant == Variant::ShadowMasked;
    s += &format!(
        "\n[mirror]\ninterface = \"{PRIMARY_IF}\"\nshadow_interface = \"{MIRROR_IF}\"\n\
         shadow_mac = \"{}\"\nxdp = {xdp}\ntcp_sessions = \"off\"\n\n\
         [[mirror.rules]]\ndst = \"{PRIMARY_ADDR}/32\"\nproto = \"tcp\"\nmask_http = {masked}\n\n\
         [[mirror.rules]]\ndst = \"{PRIMARY_ADDR}/32\"\nproto = \"udp\"\nmask_ranges = [{}]\n",
        shadow_mac,
        if masked { "\"0:16\"" } else { "" },
    );
    s
}

/// Counter deltas `after - before` of the agent's mirror JSON.
pub(crate) fn counter_deltas(before: &Value, after: &Value) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Some(a) = after.as_object() {
        for (k, v) in a {
            if let Some(n) = v.as_u64() {
                let d = n.saturating_sub(before[k].as_u64().unwrap_or(0));
                if d > 0 {
                    out.insert(k.clone(), d);
                }
            }
        }
    }
    out
}

// ---- workloads --------------------------------------------------------------------------

/// Waits until the namespace of `proc` has a TCP listener on PRIMARY_ADDR:`port` (as
/// /proc/net/tcp writes it: the address's bytes in host order, the port big-endian).
fn wait_listen(proc: &Proc, port: u16) -> Result<()> {
    let hex = format!("{}:{port:04X}", listen_hex(PRIMARY_ADDR));
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let tcp = fs::read_to_string(format!("/proc/{}/net/tcp", proc.0.id())).unwrap_or_default();
        if tcp.lines().any(|l| {
            l.split_whitespace().nth(1).is_some_and(|a| a == hex)
                && l.split_whitespace().nth(3) == Some("0A")
        }) {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("no listener on port {port} in the primary namespace within 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The HTTP sink: accepts one connection, discards what it receives and prints the bytes
/// and the seconds from the first to the last received byte.
const SINK: &str = "import socket,sys,time\n\
s=socket.socket()\n\
s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1)\n\
s.bind((sys.argv[1],int(sys.argv[2])))\n\
s.listen(1)\n\
c,_=s.accept()\n\
b=bytearray(1<<20)\n\
n=0\n\
t0=t1=0.0\n\
while True:\n\
\tk=c.recv_into(b)\n\
\tif not k: break\n\
\tt1=time.monotonic()\n\
\tif n==0: t0=t1\n\
\tn+=k\n\
print(n,t1-t0,flush=True)\n";

/// One HTTP upload (curl -T of a sparse file, Content-Length known, an Authorization header
/// and a token parameter to mask) for at most `seconds`: Gbit/s the primary's sink received.
fn http(topo: &Topology, seconds: u32, body: &Path, pin: Option<Pin>) -> Result<f64> {
    let port = HTTP_PORT.to_string();
    let (tx_cpu, rx_cpu) = (
        pin.map(|p| p.sender.to_string()),
        pin.map(|p| p.receiver.to_string()),
    );
    let mut sink = topo
        .primary
        .cmd(&Pin::wrap(
            rx_cpu.as_deref(),
            &["python3", "-c", SINK, PRIMARY_ADDR, &port],
        ))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the HTTP sink (python3)")?;
    let stdout = sink.stdout.take().ok_or_else(|| anyhow!("sink stdout"))?;
    let sink = Proc(sink);
    wait_listen(&sink, HTTP_PORT)?;
    let url = format!("http://{PRIMARY_ADDR}:{port}/upload?token=bench-secret");
    let max = seconds.to_string();
    let mut cmd = topo.client.cmd(&Pin::wrap(
        tx_cpu.as_deref(),
        &[
            "curl",
            "-sS",
            "-o",
            "/dev/null",
            "-H",
            "Expect:",
            "-H",
            "Authorization: Bearer bench-secret-value",
            "--max-time",
            &max,
            "-T",
        ],
    ));
    cmd.arg(body).arg(&url);
    let out = output_within(cmd, Duration::from_secs(u64::from(seconds) + 30))?;
    // 0: uploaded (and the sink never answers, so usually 28: --max-time); 52/56: closed.
    let code = out.status.code();
    if !matches!(code, Some(0 | 28 | 52 | 56)) {
        bail!(
            "curl failed ({code:?}): {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    // curl has closed the connection: the sink prints and exits.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx
        .recv_timeout(Duration::from_secs(10))
        .context("the HTTP sink reported nothing")?;
    drop(sink);
    sink_gbps(&line)
}

/// Gbit/s from the sink's "BYTES SECONDS" line.
pub fn sink_gbps(w: &str) -> Result<f64> {
    let mut it = w.split_whitespace().map(str::parse::<f64>);
    match (it.next(), it.next()) {
        (Some(Ok(bytes)), Some(Ok(secs))) if secs > 0.0 && bytes > 0.0 => {
            Ok(bytes * 8.0 / secs / 1e9)
        }
        _ => bail!("unexpected HTTP sink output {w:?}"),
    }
}

/// One iperf3 run: the client JSON.
fn iperf(topo: &Topology, seconds: u32, udp: bool, pin: Option<Pin>) -> Result<Value> {
    let port = PORT.to_string();
    let (tx_cpu, rx_cpu) = (
        pin.map(|p| p.sender.to_string()),
        pin.map(|p| p.receiver.to_string()),
    );
    let mut server_args = vec!["iperf3", "-s", "-1", "-B", PRIMARY_ADDR, "-p", &port];
    if let Some(c) = &rx_cpu {
        server_args.extend(["-A", c]);
    }
    let server = topo
        .primary
        .cmd(&server_args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting the iperf3 server")?;
    let server = Proc(server);
    wait_listen(&server, PORT)?;
    let t = seconds.to_string();
    let len = UDP_LEN.to_string();
    let mut args = vec![
        "iperf3",
        "-c",
        PRIMARY_ADDR,
        "-p",
        &port,
        "-t",
        &t,
        "-J",
        "--connect-timeout",
        "3000",
    ];
    if udp {
        args.extend(["-u", "-l", &len, "-b", "0"]);
    }
    if let Some(c) = &tx_cpu {
        args.extend(["-A", c]);
    }
    let out = output_within(
        topo.client.cmd(&args),
        Duration::from_secs(u64::from(seconds) + 30),
    )?;
    drop(server);
    let v: Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "iperf3 client output is not JSON: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    if !out.status.success() || v.get("error").is_some() {
        bail!("iperf3 client failed: {}", v["error"]);
    }
    Ok(v)
}

/// An IPv4 address as /proc/net/tcp prints it on little-endian hosts ("10.77.0.2" ->
/// "02004D0A").
pub fn listen_hex(addr: &str) -> String {
    addr.split('.')
        .rev()
        .map(|o| format!("{:02X}", o.parse::<u8>().unwrap_or(0)))
        .collect()
}

/// (primary rx pps, server-received datagrams/s) from a UDP run's JSON and pr0's rx delta.
pub fn udp_rates(v: &Value, primary_rx: u64) -> Result<(f64, f64)> {
    let sent = &v["end"]["sum_sent"];
    let recv = &v["end"]["sum_received"];
    let secs = sent["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .ok_or_else(|| anyhow!("no end.sum_sent.seconds in iperf3 JSON"))?;
    let packets = recv["packets"].as_f64().unwrap_or(0.0);
    let lost = recv["lost_packets"].as_f64().unwrap_or(0.0);
    let rsecs = recv["seconds"]
        .as_f64()
        .filter(|s| *s > 0.0)
        .unwrap_or(secs);
    Ok((primary_rx as f64 / secs, (packets - lost).max(0.0) / rsecs))
}

pub fn tcp_gbps(v: &Value) -> Result<f64> {
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
        .ok_or_else(|| anyhow!("no end.sum_received.bits_per_second in iperf3 JSON"))
}

fn measure(
    topo: &Topology,
    seconds: u32,
    load: Load,
    agent: Option<&Agent>,
    clones_every_packet: bool,
    body: &Path,
    pin: Option<Pin>,
) -> Result<Measure> {
    check_interrupted()?;
    let before_c = match agent {
        Some(a) => a.wait_lines(1, Duration::from_secs(10))?,
        None => None,
    };
    let (p0, s0) = (topo.primary.rx(PRIMARY_IF)?, topo.shadow.rx(SHADOW_IF)?);
    let (rate, app_rate, primary_rx) = match load {
        Load::Udp => {
            let v = iperf(topo, seconds, true, pin)?;
            let p1 = topo.primary.rx(PRIMARY_IF)?;
            let (r, a) = udp_rates(&v, p1.saturating_sub(p0))?;
            (r, Some(a), None)
        }
        Load::Tcp => (tcp_gbps(&iperf(topo, seconds, false, pin)?)?, None, None),
        Load::Http => (http(topo, seconds, body, pin)?, None, None),
    };
    // Let the last clones land and the agent report counters from after the run.
    std::thread::sleep(Duration::from_millis(200));
    let after_c = match agent {
        Some(a) => a.wait_lines(2, Duration::from_secs(10))?,
        None => None,
    };
    let (p1, s1) = (topo.primary.rx(PRIMARY_IF)?, topo.shadow.rx(SHADOW_IF)?);
    let primary_rx: u64 = primary_rx.unwrap_or(p1.saturating_sub(p0));
    let counters = match (&before_c, &after_c) {
        (Some(b), Some(a)) => counter_deltas(b, a),
        _ => BTreeMap::new(),
    };
    let clones_sent = if clones_every_packet {
        primary_rx
    } else {
        counters.get("cloned").copied().unwrap_or(0)
    };
    Ok(Measure {
        rate,
        app_rate,
        shadow_rx: s1.saturating_sub(s0),
        clones_sent,
        counters,
    })
}

// ---- the bench --------------------------------------------------------------------------

fn require_tools() -> Result<()> {
    for tool in ["ip", "tc", "iperf3", "curl", "python3", "bpftool"] {
        let found = Command::new(tool)
            .arg("-V")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok();
        if !found {
            return prereq::missing(format!(
                "{tool} is not installed; run `cargo xtask setup` (it installs iproute2, iperf3, curl, \
                 python3 and bpftool)"
            ));
        }
    }
    Ok(())
}

fn host_line() -> String {
    let kernel = fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{} CPUs, Linux {}", cpus, kernel.trim())
}

pub fn mirror(args: MirrorArgs) -> Result<()> {
    if args.rounds == 0 || args.seconds == 0 {
        bail!("--rounds and --seconds must be at least 1");
    }
    require_tools()?;
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
    let dir = TempDir(std::env::temp_dir().join(format!("{PREFIX}{}", std::process::id())));
    fs::create_dir_all(&dir.0).with_context(|| format!("mkdir {}", dir.0.display()))?;
    let xdp = args.xdp;
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let pin = (!args.no_pin && cpus >= 2).then_some(Pin {
        sender: 0,
        receiver: 1,
    });
    // The HTTP upload's body: a sparse file (no disk space, zeros read from the page cache).
    let body = dir.0.join("body");
    fs::File::create(&body)
        .and_then(|f| f.set_len(HTTP_BODY))
        .context("creating the sparse upload body")?;
    for v in [Variant::Agent, Variant::Shadow, Variant::ShadowMasked] {
        let path = dir.0.join(format!("{}.toml", v.key()));
        fs::write(&path, agent_config(&topo.primary_mac, v, xdp))?;
        let out = Command::new(&agent_bin)
            .arg("check-config")
            .arg(&path)
            .output()
            .context("shadow-agent check-config")?;
        if !out.status.success() {
            bail!(
                "generated config {} rejected: {}{}",
                path.display(),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    let mut samples = Vec::new();
    let mut classifier = String::new();
    let rounds = if args.cost_only { 0 } else { args.rounds };
    for round in 0..rounds {
        let n = Variant::ALL.len();
        for i in 0..n {
            let variant = Variant::ALL[(i + round as usize) % n];
            check_interrupted()?;
            let _mirred = match variant {
                Variant::Mirred => {
                    let m = Mirred::add(&topo.primary).context("adding tc mirred")?;
                    classifier = m.classifier.to_string();
                    Some(m)
                }
                _ => None,
            };
            let _bare = match variant {
                Variant::BareClone => {
                    Some(BareClone::add(&topo.primary, &dir.0).context("adding the bare clone")?)
                }
                _ => None,
            };
            let agent = match variant {
                Variant::Agent | Variant::Shadow | Variant::ShadowMasked => Some(
                    Agent::start(
                        &agent_bin,
                        &topo.primary,
                        &dir.0.join(format!("{}.toml", variant.key())),
                        dir.0.join("agent.stderr"),
                    )
                    .with_context(|| format!("starting the agent ({})", variant.label()))?,
                ),
                _ => None,
            };
            // Both clone every packet pr0 receives; the agent counts its own clones.
            let clones_every_packet = matches!(variant, Variant::Mirred | Variant::BareClone);
            let mut m = Vec::new();
            for load in Load::ALL {
                m.push(
                    measure(
                        &topo,
                        args.seconds,
                        load,
                        agent.as_ref(),
                        clones_every_packet,
                        &body,
                        pin,
                    )
                    .with_context(|| format!("{} under {}", load.key(), variant.label()))?,
                );
            }
            let (udp, tcp, http) = (m[0].clone(), m[1].clone(), m[2].clone());
            eprintln!(
                "round {round} {:<17} UDP {:>7.0} pps (app {:>7.0}) shadow {}/{} | TCP {:>6.2} Gbit/s \
                 shadow {}/{} | HTTP {:>6.2} Gbit/s shadow {}/{}",
                variant.label(),
                udp.rate,
                udp.app_rate.unwrap_or(0.0),
                udp.shadow_rx,
                udp.clones_sent,
                tcp.rate,
                tcp.shadow_rx,
                tcp.clones_sent,
                http.rate,
                http.shadow_rx,
                http.clones_sent,
            );
            samples.push(Sample {
                round,
                variant,
                udp,
                tcp,
                http,
            });
        }
    }

    // What each BPF program costs per run, from the kernel's run statistics, in a pass of
    // its own: the statistics add two clock reads to every run of every BPF program, so the
    // rounds above run without them.
    let mut costs = Vec::new();
    for v in COST_VARIANTS {
        check_interrupted()?;
        let config = dir.0.join(format!("{}.toml", v.key()));
        let c = match program_cost(
            &topo,
            &dir.0,
            &agent_bin,
            &config,
            v,
            args.seconds,
            &body,
            pin,
        ) {
            Ok(c) => c,
            // A failed cost pass does not throw away the rounds' results (unless the pass
            // was all that was asked for).
            Err(e) if !args.cost_only => {
                eprintln!("program cost of {}: {e:#}", v.label());
                continue;
            }
            Err(e) => return Err(e.context(format!("program cost of {}", v.label()))),
        };
        eprintln!("program cost of {}: measured", v.label());
        costs.extend(c);
    }

    if args.cost_only {
        let doc = json!({"program_cost": cost_doc(&costs), "host": host_line()});
        println!("{doc:#}");
        print!("{}", cost_table(&doc["program_cost"]));
        if let Some(p) = &args.json {
            fs::write(p, format!("{doc:#}\n"))
                .with_context(|| format!("writing {}", p.display()))?;
        }
        return Ok(());
    }
    let meta = Meta {
        rounds: args.rounds,
        seconds: args.seconds,
        xdp,
        pinned: pin.is_some(),
        host: host_line(),
        mirred_classifier: classifier,
    };
    let mut doc = summarize(&samples, &meta);
    doc["program_cost"] = cost_doc(&costs);
    println!("{doc:#}");
    println!();
    println!(
        "Mirror bench: medians of {} rounds x {} s, {}; UDP {UDP_LEN}-byte datagrams, \
         kpps = primary rx; deliv = shadow rx / clones sent",
        args.rounds, args.seconds, meta.host
    );
    print!("{}", table(&doc));
    print!("{}", cost_table(&doc["program_cost"]));
    if let Some(p) = &args.json {
        fs::write(p, format!("{doc:#}\n")).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(rate: f64, app: Option<f64>, rx: u64, sent: u64) -> Measure {
        Measure {
            rate,
            app_rate: app,
            shadow_rx: rx,
            clones_sent: sent,
            counters: BTreeMap::new(),
        }
    }

    fn sample(round: u32, variant: Variant, udp: f64, tcp: f64, rx: u64, sent: u64) -> Sample {
        Sample {
            round,
            variant,
            udp: m(udp, Some(udp / 2.0), rx, sent),
            tcp: m(tcp, None, rx / 10, sent / 10),
            http: m(tcp / 2.0, None, rx / 100, sent / 100),
        }
    }

    #[test]
    fn program_cost_per_run_per_packet_and_over_the_bare_clone() {
        let runs = |runs, run_ns| ProgRuns { runs, run_ns };
        let cost = |variant, load, primary_packets, programs: Vec<(&str, ProgRuns)>| VariantCost {
            variant,
            load,
            primary_packets,
            programs: programs
                .into_iter()
                .map(|(n, p)| (n.to_string(), p))
                .collect(),
        };
        let costs = vec![
            cost(
                Variant::BareClone,
                Load::Udp,
                1000,
                vec![(BARE_CLONE_NAME, runs(1000, 500_000))],
            ),
            cost(
                Variant::Shadow,
                Load::Udp,
                800,
                vec![
                    ("shadow_mirror", runs(800, 560_000)),
                    ("sched_sw_btf", runs(400, 60_000)),
                ],
            ),
            cost(
                Variant::ShadowMasked,
                Load::Udp,
                0,
                vec![("shadow_mask", runs(0, 0))],
            ),
            // Another load is kept apart: its bare clone is not UDP's peer.
            cost(
                Variant::BareClone,
                Load::Tcp,
                10,
                vec![(BARE_CLONE_NAME, runs(10, 30_000))],
            ),
            cost(
                Variant::Shadow,
                Load::Tcp,
                10,
                vec![("shadow_mirror", runs(10, 40_000))],
            ),
        ];
        let doc = cost_doc(&costs);
        let d = &doc["udp"];
        let bare = &d["bare_clone"]["programs"][BARE_CLONE_NAME];
        assert_eq!(bare["ns_per_run"], 500.0);
        assert_eq!(bare["ns_per_packet"], 500.0);
        let sw = &d["shadow"]["programs"]["sched_sw_btf"];
        assert_eq!(sw["ns_per_run"], 150.0);
        assert_eq!(sw["ns_per_packet"], 75.0);
        assert_eq!(d["shadow_mirror_over_bare_clone_ns"], 200.0);
        assert_eq!(doc["tcp"]["shadow_mirror_over_bare_clone_ns"], 1000.0);
        assert!(
            doc["http"].is_null(),
            "a load that was not measured is left out"
        );
        // No runs and no packets: nothing is made up.
        let mask = &d["shadow_masked"]["programs"]["shadow_mask"];
        assert!(mask["ns_per_run"].is_null() && mask["ns_per_packet"].is_null());
        assert!(d["shadow_masked_mirror_over_bare_clone_ns"].is_null());
        let t = cost_table(&doc);
        assert!(
            t.contains("UDP\n") && t.contains("TCP\n") && !t.contains("HTTP"),
            "{t}"
        );
        assert!(t.contains("shadow_mirror 700 ns x 1.00"), "{t}");
        assert!(t.contains("sched_sw_btf 150 ns x 0.50"), "{t}");
        assert!(
            t.contains("over the bare clone: 200 ns per run (- with masking)"),
            "{t}"
        );
        assert!(t.contains("over the bare clone: 1000 ns per run"), "{t}");
    }

    #[test]
    fn medians_and_ratios() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[f64::NAN, 5.0]), Some(5.0));
        assert_eq!(ratio(Some(1.0), Some(2.0)), Some(0.5));
        assert_eq!(ratio(Some(1.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(2.0)), None);
    }

    #[test]
    fn summary_has_the_issue_keys_and_right_math() {
        let mut s = Vec::new();
        for r in 0..3 {
            let k = f64::from(r);
            s.push(sample(r, Variant::Baseline, 1000.0 + k, 10.0, 0, 0));
            s.push(sample(r, Variant::Mirred, 800.0 + k, 8.0, 1000, 1000));
            s.push(sample(r, Variant::BareClone, 760.0 + k, 7.8, 1000, 1000));
            s.push(sample(r, Variant::Agent, 990.0 + k, 9.9, 0, 0));
            s.push(sample(r, Variant::Shadow, 780.0 + k, 7.6, 999, 1000));
            s.push(sample(r, Variant::ShadowMasked, 760.0 + k, 7.2, 1000, 1000));
        }
        let meta = Meta {
            rounds: 3,
            seconds: 5,
            xdp: true,
            pinned: true,
            host: "test".into(),
            mirred_classifier: "matchall".into(),
        };
        let d = summarize(&s, &meta);
        let f = |p: &str| d.pointer(p).and_then(Value::as_f64).unwrap();
        assert_eq!(f("/udp/baseline_pps"), 1001.0);
        assert_eq!(f("/udp/mirred_pps"), 801.0);
        assert_eq!(f("/udp/shadow_pps"), 781.0);
        assert_eq!(f("/udp/shadow_masked_pps"), 761.0);
        assert_eq!(f("/udp/shadow_masked_app_pps"), 380.5);
        assert!((f("/udp/shadow_vs_mirred") - 781.0 / 801.0).abs() < 1e-12);
        assert!((f("/udp/shadow_masked_vs_mirred") - 761.0 / 801.0).abs() < 1e-12);
        assert!((f("/udp/vs_baseline/mirred") - 801.0 / 1001.0).abs() < 1e-12);
        assert!((f("/udp/bare_clone_vs_mirred") - 761.0 / 801.0).abs() < 1e-12);
        assert_eq!(f("/udp/clone_delivery_by_variant/bare_clone"), 1.0);
        // Pooled over both Shadow variants: (3*999 + 3*1000) / 6000.
        assert!((f("/udp/clone_delivery") - 5997.0 / 6000.0).abs() < 1e-12);
        assert_eq!(f("/udp/clone_delivery_by_variant/mirred"), 1.0);
        assert_eq!(d["udp"]["shadow_received"]["shadow"], 2997);
        assert_eq!(d["udp"]["clones_sent"]["shadow_masked"], 3000);
        assert!(d["udp"]["clone_delivery_by_variant"]
            .get("baseline")
            .is_none());
        assert_eq!(f("/tcp/baseline_gbps"), 10.0);
        assert_eq!(f("/tcp/mirred_gbps"), 8.0);
        assert_eq!(f("/tcp/shadow_gbps"), 7.6);
        assert_eq!(f("/tcp/shadow_masked_gbps"), 7.2);
        assert!((f("/tcp/shadow_masked_vs_mirred") - 0.9).abs() < 1e-12);
        assert_eq!(f("/http/shadow_masked_gbps"), 3.6);
        assert!((f("/http/shadow_masked_vs_mirred") - 0.9).abs() < 1e-12);
        assert!(d["http"]["shadow_masked_app_pps"].is_null());
        assert_eq!(
            d["udp"]["per_round"]["mirred"],
            json!([800.0, 801.0, 802.0])
        );
        // 761/801 = 0.950..., 0.9 < 0.95, 0.9995 >= 0.999.
        assert_eq!(d["targets"]["met"]["udp_shadow_masked_vs_mirred"], true);
        assert_eq!(d["targets"]["met"]["tcp_shadow_masked_vs_mirred"], false);
        assert_eq!(d["targets"]["met"]["udp_clone_delivery"], true);
        let t = table(&d);
        assert_eq!(t.lines().count(), 7);
        assert!(t.contains("bare clone"), "{t}");
        assert!(t.contains("Shadow + masking"), "{t}");
    }

    #[test]
    fn missing_variants_give_nulls_not_nan() {
        let s = vec![sample(0, Variant::Baseline, 100.0, 1.0, 0, 0)];
        let meta = Meta {
            rounds: 1,
            seconds: 1,
            xdp: false,
            pinned: false,
            host: String::new(),
            mirred_classifier: String::new(),
        };
        let d = summarize(&s, &meta);
        assert!(d["udp"]["mirred_pps"].is_null());
        assert!(d["udp"]["shadow_vs_mirred"].is_null());
        assert!(d["udp"]["clone_delivery"].is_null());
        assert!(d["targets"]["met"]["udp_clone_delivery"].is_null());
        // Serialises as valid JSON.
        serde_json::from_str::<Value>(&d.to_string()).unwrap();
    }

    #[test]
    fn parses_iperf_and_net_dev() {
        let dev = "Inter-|   Receive\n face |bytes    packets errs\n    lo: 0 0 0\n   pr0: 28336908  267333    0    0\n";
        assert_eq!(parse_rx_packets(dev, "pr0"), Some(267_333));
        assert_eq!(parse_rx_packets(dev, "sh0"), None);
        let v = json!({"end": {
            "sum_sent": {"seconds": 2.0, "packets": 1000},
            "sum_received": {"seconds": 2.0, "packets": 1000, "lost_packets": 400},
        }});
        assert_eq!(udp_rates(&v, 900).unwrap(), (450.0, 300.0));
        let v = json!({"end": {"sum_received": {"bits_per_second": 2.5e9}}});
        assert_eq!(tcp_gbps(&v).unwrap(), 2.5);
        assert!(tcp_gbps(&json!({})).is_err());
        assert_eq!(listen_hex("10.77.0.2"), "02004D0A");
        assert_eq!(sink_gbps("1250000000 2.0").unwrap(), 5.0);
        assert!(sink_gbps("0 0.0").is_err() && sink_gbps("").is_err());
    }

    #[test]
    fn agent_configs_and_counter_deltas() {
        let mac = "02:00:00:00:00:01";
        let plain = agent_config(mac, Variant::Shadow, true);
        assert!(
            plain.contains("shadow_mac = \"02:00:00:00:00:01\""),
            "{plain}"
        );
        assert!(plain.contains("mask_http = false") && plain.contains("mask_ranges = []"));
        assert!(plain.contains("xdp = true") && plain.contains("listen = \"off\""));
        // Raw clones, as mirred sends them (no session translation).
        assert!(plain.contains("tcp_sessions = \"off\""), "{plain}");
        let masked = agent_config(mac, Variant::ShadowMasked, false);
        assert!(masked.contains("mask_http = true") && masked.contains("mask_ranges = [\"0:16\"]"));
        assert!(masked.contains("xdp = false"));
        let none = agent_config(mac, Variant::Agent, true);
        assert!(!none.contains("[mirror]"), "{none}");
        let deltas = counter_deltas(
            &json!({"cloned": 10, "masked": 0, "x": "s"}),
            &json!({"cloned": 25, "masked": 0, "x": "s"}),
        );
        assert_eq!(deltas, BTreeMap::from([("cloned".to_string(), 15)]));
    }
}
