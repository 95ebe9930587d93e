//! The agent's TOML configuration: parsed strictly (unknown keys are errors), then validated
//! into typed values. Every error names the key path, the value and the reason, e.g.
//! `mirror.rules[2].dst: "10.0.0.0/33" is not a valid CIDR: prefix length exceeds 32`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mirror::{Fallback, MaskOptions, MirrorOptions, Ports, Proto, Rule, RuleMask};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("reading config {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config {path}: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("config {path}: {key}: {message}")]
    Invalid {
        path: PathBuf,
        key: String,
        message: String,
    },
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    mirror: Option<RawMirror>,
    shadow: Option<crate::shadow::config::RawShadow>,
    #[serde(default)]
    metrics: RawMetrics,
    #[serde(default)]
    profile: RawProfile,
    /// `[allocate]`: the predictive allocator (off when absent).
    allocate: Option<crate::allocate::live::RawAllocate>,
    /// `[forecast]`: live forecasts of the tracked cgroups (on by default).
    #[serde(default)]
    forecast: crate::forecast::live::RawForecast,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    interface: Option<String>,
    /// The primary's address: its interface is the one traffic to it leaves through.
    primary_address: Option<String>,
    /// `ingress` | `egress`: which way the primary's traffic crosses the interface.
    direction: Option<String>,
    shadow_interface: Option<String>,
    shadow_mac: Option<String>,
    #[serde(default = "default_tcp_sessions")]
    tcp_sessions: String,
    #[serde(default = "default_tcp_hold_ms")]
    tcp_hold_ms: u64,
    #[serde(default = "default_tcp_syn_retry_ms")]
    tcp_syn_retry_ms: u64,
    #[serde(default)]
    xdp: bool,
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default = "default_sample_rate")]
    sample_rate: f64,
    #[serde(default)]
    cap_pps: u64,
    #[serde(default)]
    cap_bytes_per_sec: u64,
    #[serde(default = "default_burst_ms")]
    cap_burst_ms: u64,
    #[serde(default)]
    mask: RawMask,
    pseudonymise: Option<RawPseudonymise>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPseudonymise {
    key_file: PathBuf,
    #[serde(default = "default_pseudo_v4")]
    prefix_v4: String,
    #[serde(default = "default_pseudo_v6")]
    prefix_v6: String,
}

fn default_pseudo_v4() -> String {
    "100.64.0.0/10".into()
}

fn default_pseudo_v6() -> String {
    "fd5d::/16".into()
}

/// Read a deployment key: 32 hex digits (whitespace around them ignored), not all zeros.
/// Errors are `(key, message)` naming the config key `what`.
fn read_key_file(what: &str, path: &std::path::Path) -> Result<[u8; 16], (String, String)> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        (
            what.to_owned(),
            format!("cannot read {}: {e}", path.display()),
        )
    })?;
    let hex = text.trim();
    let bad = || {
        (
            what.to_owned(),
            format!(
                "{} does not hold a key of 32 hex digits (16 bytes; e.g. from \
                 `head -c16 /dev/urandom | xxd -p`)",
                path.display()
            ),
        )
    };
    if hex.len() != 32 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    let mut key = [0u8; 16];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).map_err(|_| bad())?;
    }
    if key == [0; 16] {
        return Err((
            what.to_owned(),
            "the key is all zeros; generate a random one".into(),
        ));
    }
    Ok(key)
}

/// Check how `[mirror]` names the primary: `interface` or `primary_address` (exactly one),
/// `direction` (default `egress` with an address: traffic to it leaves through the interface
/// found for it; `ingress` otherwise), and `xdp` (it sees only what the interface receives).
/// Errors are `(key, message)`.
fn validate_primary(
    m: &RawMirror,
) -> Result<(Option<std::net::IpAddr>, crate::mirror::Direction), (String, String)> {
    use crate::mirror::Direction;
    let address = match (&m.interface, &m.primary_address) {
        (Some(_), Some(_)) => {
            return Err((
                "mirror.primary_address".into(),
                "give mirror.interface or mirror.primary_address, not both".into(),
            ))
        }
        (None, None) => {
            return Err((
                "mirror.interface".into(),
                "required (the primary's interface), or mirror.primary_address (the primary's \
                 address, whose interface is then looked up)"
                    .into(),
            ))
        }
        (Some(_), None) => None,
        (None, Some(a)) => {
            let ip: std::net::IpAddr = a.trim().parse().map_err(|_| {
                (
                    "mirror.primary_address".into(),
                    format!("{a:?} is not an IP address (one address, no prefix length)"),
                )
            })?;
            if ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() {
                return Err((
                    "mirror.primary_address".into(),
                    format!("{ip} is not the unicast address of a primary"),
                ));
            }
            Some(ip)
        }
    };
    let direction = match (m.direction.as_deref(), address) {
        (None, Some(_)) | (Some("egress"), _) => Direction::Egress,
        (None, None) | (Some("ingress"), None) => Direction::Ingress,
        (Some("ingress"), Some(a)) => {
            return Err((
                "mirror.direction".into(),
                format!(
                    "\"ingress\" does not go with mirror.primary_address: traffic to {a} leaves \
                     through the interface found for it (\"egress\")"
                ),
            ))
        }
        (Some(other), _) => {
            return Err((
                "mirror.direction".into(),
                format!("{other:?} is not \"ingress\" or \"egress\""),
            ))
        }
    };
    if m.xdp && direction == Direction::Egress {
        return Err((
            "mirror.xdp".into(),
            "XDP sees only what the interface receives; with direction \"egress\" that is the \
             primary's replies, not its load: set xdp = false"
                .into(),
        ));
    }
    Ok((address, direction))
}

/// Check `mirror.pseudonymise`: read the key file (32 hex digits, whitespace around them
/// ignored) and the prefixes. Errors are `(key, message)`.
fn validate_pseudonymise(
    p: &RawPseudonymise,
) -> Result<crate::mirror::Pseudonymise, (String, String)> {
    use std::net::IpAddr;
    let key = read_key_file("mirror.pseudonymise.key_file", &p.key_file)?;
    let v4 = match p.prefix_v4.parse::<crate::mirror::Cidr>() {
        Ok(crate::mirror::Cidr {
            addr: IpAddr::V4(a),
            prefix_len,
        }) if prefix_len <= 30 => (a, prefix_len),
        Ok(_) => {
            return Err((
                "mirror.pseudonymise.prefix_v4".into(),
                format!("{:?} is not an IPv4 prefix of length 0..=30", p.prefix_v4),
            ))
        }
        Err(e) => return Err(("mirror.pseudonymise.prefix_v4".into(), e.to_string())),
    };
    let v6 = match p.prefix_v6.parse::<crate::mirror::Cidr>() {
        Ok(crate::mirror::Cidr {
            addr: IpAddr::V6(a),
            prefix_len,
        }) if prefix_len <= 126 => (a, prefix_len),
        Ok(_) => {
            return Err((
                "mirror.pseudonymise.prefix_v6".into(),
                format!("{:?} is not an IPv6 prefix of length 0..=126", p.prefix_v6),
            ))
        }
        Err(e) => return Err(("mirror.pseudonymise.prefix_v6".into(), e.to_string())),
    };
    Ok(crate::mirror::Pseudonymise { key, v4, v6 })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMask {
    headers: Option<Vec<String>>,
    params: Option<Vec<String>>,
    #[serde(default = "default_fill")]
    fill: String,
    #[serde(default = "default_scan_bytes")]
    scan_bytes: u32,
    #[serde(default = "default_replace")]
    replace: String,
    key_file: Option<PathBuf>,
}

fn default_replace() -> String {
    "fill".into()
}

impl Default for RawMask {
    fn default() -> Self {
        RawMask {
            headers: None,
            params: None,
            fill: default_fill(),
            scan_bytes: default_scan_bytes(),
            replace: default_replace(),
            key_file: None,
        }
    }
}

fn default_fill() -> String {
    "*".into()
}

fn default_scan_bytes() -> u32 {
    shadow_common::mask::DEFAULT_SCAN_LIMIT
}

fn default_sample_rate() -> f64 {
    1.0
}

fn default_burst_ms() -> u64 {
    100
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    dst: String,
    ports: Option<String>,
    proto: Option<String>,
    #[serde(default)]
    mask_http: bool,
    #[serde(default)]
    mask_ranges: Vec<String>,
    fallback: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    #[serde(default)]
    cgroups: Vec<PathBuf>,
    #[serde(default = "default_interval_ms")]
    interval_ms: u64,
}

impl Default for RawProfile {
    fn default() -> Self {
        RawProfile {
            cgroups: Vec::new(),
            interval_ms: default_interval_ms(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetrics {
    #[serde(default = "default_metrics_listen")]
    listen: String,
}

impl Default for RawMetrics {
    fn default() -> Self {
        RawMetrics {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> String {
    "127.0.0.1:9464".into()
}

fn default_tcp_hold_ms() -> u64 {
    2000
}

fn default_tcp_syn_retry_ms() -> u64 {
    20
}

fn default_tcp_sessions() -> String {
    "translate".into()
}

fn default_interval_ms() -> u64 {
    1000
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mirror: Option<MirrorConfig>,
    /// The shadow group (`[shadow]`), validated except for host checks done at start.
    pub shadow: Option<crate::shadow::GroupSpec>,
    /// Where `/metrics` and `/healthz` are served (`[metrics] listen`); `None`: off.
    pub metrics_listen: Option<std::net::SocketAddr>,
    pub profile: ProfileConfig,
    /// The allocator (`[allocate]`); `None`: off.
    pub allocate: Option<crate::allocate::live::AllocateSpec>,
    /// Live forecasting (`[forecast]`).
    pub forecast: crate::forecast::live::LiveSpec,
    /// `[shadow.autoscale]`: `run` scales the shadow group from its load; `None`: off.
    pub autoscale: Option<crate::shadow::autoscale::AutoscaleSpec>,
    /// `[[shadow.whatif]]`: the candidates `shadow-agent whatif` compares.
    pub whatif: Vec<crate::shadow::whatif::Candidate>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct MirrorConfig {
    /// `mirror.interface`; empty when the interface is found from `address`.
    pub interface: String,
    /// `mirror.primary_address`: the interface is the one traffic to it leaves through,
    /// looked up at start and again every interval (see `Mirror::follow`).
    pub address: Option<std::net::IpAddr>,
    /// `mirror.direction`.
    pub direction: crate::mirror::Direction,
    /// The clones' interface and destination MAC; `None`: the shadow group's first replica.
    pub target: Option<(String, [u8; 6])>,
    pub xdp: bool,
    pub rules: Vec<Rule>,
    /// Sampling and caps (and masking).
    pub options: MirrorOptions,
}

impl MirrorConfig {
    /// The primary's interface: `mirror.interface`, or the one traffic to
    /// `mirror.primary_address` leaves through now (in the caller's network namespace; an
    /// error when there is none now).
    pub fn primary_interface(&self) -> Result<String, crate::mirror::MirrorError> {
        match self.address {
            None => Ok(self.interface.clone()),
            Some(address) => crate::sys::link::towards(address, None)
                .map(|t| t.name)
                .map_err(|reason| crate::mirror::MirrorError::Unresolved { address, reason }),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ProfileConfig {
    /// cgroup2 directories whose CPU is accounted separately.
    pub cgroups: Vec<PathBuf>,
    pub interval_ms: u64,
}

/// `OFFSET:LENGTH` with length >= 1 and the end within 65535.
fn parse_range(t: &str) -> Option<(u16, u16)> {
    let (o, l) = t.split_once(':')?;
    let o: u16 = o.trim().parse().ok()?;
    let l: u16 = l.trim().parse().ok()?;
    (l >= 1 && o.checked_add(l).is_some()).then_some((o, l))
}

/// Check `mirror.mask`; errors are `(key, message)`.
fn validate_mask(m: &RawMask) -> Result<MaskOptions, (String, String)> {
    use shadow_common::mask::{HDR_FIRST_USER, MAX_HEADERS, MAX_PARAMS, MAX_SCAN_LIMIT, NAME_LEN};
    let d = MaskOptions::default();
    let headers = m.headers.clone().unwrap_or(d.headers);
    let params = m.params.clone().unwrap_or(d.params);
    let max_h = MAX_HEADERS - HDR_FIRST_USER;
    if headers.len() > max_h {
        return Err((
            "mirror.mask.headers".into(),
            format!("{} names given; at most {max_h}", headers.len()),
        ));
    }
    if params.len() > MAX_PARAMS {
        return Err((
            "mirror.mask.params".into(),
            format!("{} names given; at most {MAX_PARAMS}", params.len()),
        ));
    }
    for (list, names) in [("headers", &headers), ("params", &params)] {
        for (i, n) in names.iter().enumerate() {
            let key = format!("mirror.mask.{list}[{i}]");
            if n.is_empty() {
                return Err((key, "empty name".into()));
            }
            if n.len() > NAME_LEN {
                return Err((key, format!("{n:?} is longer than {NAME_LEN} bytes")));
            }
            let token = |c: char| c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(c);
            if list == "headers" && !n.chars().all(token) {
                return Err((key, format!("{n:?} is not a valid HTTP header name")));
            }
        }
    }
    let fill = match m.fill.as_bytes() {
        [b] if (0x21..0x7f).contains(b) => *b,
        _ => {
            return Err((
                "mirror.mask.fill".into(),
                format!("{:?} is not one printable ASCII character", m.fill),
            ))
        }
    };
    if m.scan_bytes == 0 || m.scan_bytes > MAX_SCAN_LIMIT {
        return Err((
            "mirror.mask.scan_bytes".into(),
            format!("{} is outside 1..={MAX_SCAN_LIMIT}", m.scan_bytes),
        ));
    }
    let token_key = match (m.replace.as_str(), &m.key_file) {
        ("fill", None) => None,
        ("fill", Some(_)) => {
            return Err((
                "mirror.mask.key_file".into(),
                "only used with mirror.mask.replace = \"token\"".into(),
            ))
        }
        ("token", Some(path)) => Some(read_key_file("mirror.mask.key_file", path)?),
        ("token", None) => {
            return Err((
                "mirror.mask.key_file".into(),
                "required with mirror.mask.replace = \"token\": the file of the \
                 deployment's 16-byte token key (32 hex digits)"
                    .into(),
            ))
        }
        (other, _) => {
            return Err((
                "mirror.mask.replace".into(),
                format!("{other:?} is neither \"fill\" nor \"token\""),
            ))
        }
    };
    Ok(MaskOptions {
        headers,
        params,
        fill,
        scan_bytes: m.scan_bytes,
        token_key,
    })
}

/// Parse `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split(':');
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// The first pair of rules `(i, j)`, `i < j`, that can select the same packet: protocols
/// equal or either unset, destination prefixes intersecting, port ranges intersecting.
pub fn first_overlap(rules: &[Rule]) -> Option<(usize, usize)> {
    for j in 0..rules.len() {
        for i in 0..j {
            if rules_overlap(&rules[i], &rules[j]) {
                return Some((i, j));
            }
        }
    }
    None
}

fn rules_overlap(a: &Rule, b: &Rule) -> bool {
    let proto = match (a.proto, b.proto) {
        (Some(x), Some(y)) => x == y,
        _ => true,
    };
    proto && cidrs_overlap(&a.dst, &b.dst) && a.ports.lo <= b.ports.hi && b.ports.lo <= a.ports.hi
}

/// Two prefixes intersect when they agree on the bits of the shorter one.
fn cidrs_overlap(a: &crate::mirror::Cidr, b: &crate::mirror::Cidr) -> bool {
    use std::net::IpAddr;
    let n = a.prefix_len.min(b.prefix_len) as u32;
    let (x, y, bits) = match (a.addr, b.addr) {
        (IpAddr::V4(x), IpAddr::V4(y)) => (u32::from(x) as u128, u32::from(y) as u128, 32),
        (IpAddr::V6(x), IpAddr::V6(y)) => (u128::from(x), u128::from(y), 128),
        _ => return false,
    };
    if n == 0 {
        return true;
    }
    let shift = bits - n;
    (x >> shift) == (y >> shift)
}

/// What two overlapping rules both select, for the error message.
fn describe_overlap(a: &Rule, b: &Rule) -> String {
    let proto = match a.proto.or(b.proto) {
        Some(Proto::Tcp) => "tcp",
        Some(Proto::Udp) => "udp",
        None => "tcp and udp",
    };
    let dst = if a.dst.prefix_len >= b.dst.prefix_len {
        a.dst
    } else {
        b.dst
    };
    let lo = a.ports.lo.max(b.ports.lo);
    let hi = a.ports.hi.min(b.ports.hi);
    let ports = if lo == hi {
        format!("port {lo}")
    } else if (lo, hi) == (0, u16::MAX) {
        "any port".to_string()
    } else {
        format!("ports {lo}-{hi}")
    };
    format!("{proto} packets to {dst} {ports}")
}

/// The mirror's settings given on the command line of `run` (and `check-config`); each
/// replaces the config key it names. Rules and mask name lists given here replace the file's
/// lists whole.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct MirrorFlags {
    /// `--mirror-iface`: `mirror.interface`.
    pub interface: Option<String>,
    /// `--mirror-address`: `mirror.primary_address`.
    pub primary_address: Option<String>,
    /// `--mirror-direction`: `mirror.direction`.
    pub direction: Option<String>,
    /// `--shadow-iface`: `mirror.shadow_interface`.
    pub shadow_interface: Option<String>,
    /// `--shadow-mac`: `mirror.shadow_mac`.
    pub shadow_mac: Option<String>,
    /// `--mirror-rule`: `mirror.rules`, as `PROTO:CIDR[:PORTS][,OPTION...]`.
    pub rules: Vec<String>,
    /// `--sample-rate`: `mirror.sample_rate`.
    pub sample_rate: Option<f64>,
    /// `--cap-pps`: `mirror.cap_pps`.
    pub cap_pps: Option<u64>,
    /// `--cap-bps`: `mirror.cap_bytes_per_sec` (bytes per second).
    pub cap_bps: Option<u64>,
    /// `--mask-header`: `mirror.mask.headers`.
    pub mask_headers: Vec<String>,
    /// `--mask-param`: `mirror.mask.params`.
    pub mask_params: Vec<String>,
    /// `--mask-fill`: `mirror.mask.fill`.
    pub mask_fill: Option<String>,
    /// `--mask-replace`: `mirror.mask.replace`.
    pub mask_replace: Option<String>,
    /// `--mask-key-file`: `mirror.mask.key_file`.
    pub mask_key_file: Option<PathBuf>,
}

/// `(config key prefix, flag)` pairs: errors about a key set by a flag name the flag.
type Renames = Vec<(&'static str, &'static str)>;

impl MirrorFlags {
    pub fn is_empty(&self) -> bool {
        *self == MirrorFlags::default()
    }

    /// Write the flags into the raw `[mirror]` table (made when absent and the flags name
    /// an interface). Returns the key renames for error messages.
    fn apply(&self, mirror: &mut Option<RawMirror>) -> Result<Renames, (String, String)> {
        let mut renames = Renames::new();
        if self.is_empty() {
            return Ok(renames);
        }
        if mirror.is_none() {
            if self.interface.is_none() && self.primary_address.is_none() {
                return Err((
                    "--mirror-iface".into(),
                    "required (or --mirror-address) when the config has no [mirror] table and \
                     mirror flags are given"
                        .into(),
                ));
            }
            *mirror = Some(RawMirror::new(self.interface.clone()));
        }
        let m = mirror.as_mut().expect("set above");
        // Either flag replaces the file's way of naming the primary's interface.
        if let Some(v) = &self.interface {
            m.interface = Some(v.clone());
            m.primary_address = None;
            renames.push(("mirror.interface", "--mirror-iface"));
        }
        if let Some(v) = &self.primary_address {
            m.primary_address = Some(v.clone());
            m.interface = None;
            renames.push(("mirror.primary_address", "--mirror-address"));
        }
        if let Some(v) = &self.direction {
            m.direction = Some(v.clone());
            renames.push(("mirror.direction", "--mirror-direction"));
        }
        if let Some(v) = &self.shadow_interface {
            m.shadow_interface = Some(v.clone());
            renames.push(("mirror.shadow_interface", "--shadow-iface"));
        }
        if let Some(v) = &self.shadow_mac {
            m.shadow_mac = Some(v.clone());
            renames.push(("mirror.shadow_mac", "--shadow-mac"));
        }
        if !self.rules.is_empty() {
            m.rules = self
                .rules
                .iter()
                .enumerate()
                .map(|(i, r)| parse_rule_flag(r).map_err(|e| (format!("--mirror-rule[{i}]"), e)))
                .collect::<Result<_, _>>()?;
            renames.push(("mirror.rules", "--mirror-rule"));
        }
        if let Some(v) = self.sample_rate {
            m.sample_rate = v;
            renames.push(("mirror.sample_rate", "--sample-rate"));
        }
        if let Some(v) = self.cap_pps {
            m.cap_pps = v;
            renames.push(("mirror.cap_pps", "--cap-pps"));
        }
        if let Some(v) = self.cap_bps {
            m.cap_bytes_per_sec = v;
            renames.push(("mirror.cap_bytes_per_sec", "--cap-bps"));
        }
        if !self.mask_headers.is_empty() {
            m.mask.headers = Some(self.mask_headers.clone());
            renames.push(("mirror.mask.headers", "--mask-header"));
        }
        if !self.mask_params.is_empty() {
            m.mask.params = Some(self.mask_params.clone());
            renames.push(("mirror.mask.params", "--mask-param"));
        }
        if let Some(v) = &self.mask_fill {
            m.mask.fill = v.clone();
            renames.push(("mirror.mask.fill", "--mask-fill"));
        }
        if let Some(v) = &self.mask_replace {
            m.mask.replace = v.clone();
            renames.push(("mirror.mask.replace", "--mask-replace"));
        }
        if let Some(v) = &self.mask_key_file {
            m.mask.key_file = Some(v.clone());
            renames.push(("mirror.mask.key_file", "--mask-key-file"));
        }
        Ok(renames)
    }
}

/// `PROTO:CIDR[:PORTS][,OPTION...]`: PROTO is `tcp`, `udp` or `any`; an IPv6 CIDR keeps its
/// colons (`tcp:fd00::/64:443`; without a prefix length write it in brackets,
/// `tcp:[fd00::1]:443`); OPTIONs are `http` (mask_http), `range=OFFSET:LENGTH` (mask_ranges,
/// repeatable) and `fallback=mask|drop`. Field values are validated later, like config keys.
fn parse_rule_flag(s: &str) -> Result<RawRule, String> {
    let (base, opts) = match s.split_once(',') {
        Some((b, o)) => (b, Some(o)),
        None => (s, None),
    };
    let bad = |why: &str| {
        format!("{s:?} is not PROTO:CIDR[:PORTS][,OPTION...] (e.g. \"tcp:10.0.0.0/24:80-81,http\"): {why}")
    };
    let (proto, rest) = base
        .split_once(':')
        .ok_or_else(|| bad("no ':' after the protocol"))?;
    let proto = match proto {
        "any" | "" => None,
        p => Some(p.to_string()),
    };
    let (dst, ports) = if let Some(r) = rest.strip_prefix('[') {
        let (a, tail) = r.split_once(']').ok_or_else(|| bad("'[' without ']'"))?;
        let ports = match tail {
            "" => None,
            t => Some(
                t.strip_prefix(':')
                    .ok_or_else(|| bad("expected ':' after ']'"))?
                    .to_string(),
            ),
        };
        (a.to_string(), ports)
    } else if let Some(slash) = rest.find('/') {
        match rest[slash..].split_once(':') {
            Some((pfx, p)) => (format!("{}{pfx}", &rest[..slash]), Some(p.to_string())),
            None => (rest.to_string(), None),
        }
    } else if rest.parse::<std::net::IpAddr>().is_ok() {
        (rest.to_string(), None)
    } else {
        match rest.rsplit_once(':') {
            Some((a, p)) => (a.to_string(), Some(p.to_string())),
            None => (rest.to_string(), None),
        }
    };
    let mut rule = RawRule {
        dst,
        ports,
        proto,
        mask_http: false,
        mask_ranges: Vec::new(),
        fallback: None,
    };
    for o in opts.into_iter().flat_map(|o| o.split(',')) {
        match o.split_once('=') {
            None if o == "http" => rule.mask_http = true,
            Some(("range", r)) => rule.mask_ranges.push(r.to_string()),
            Some(("fallback", f)) => rule.fallback = Some(f.to_string()),
            _ => {
                return Err(bad(&format!(
                    "unknown option {o:?} (expected http, range=OFFSET:LENGTH, fallback=mask|drop)"
                )))
            }
        }
    }
    Ok(rule)
}

/// Replace config key prefixes set by flags with the flags' names in an error.
fn rename_keys(e: ConfigError, renames: &Renames) -> ConfigError {
    match e {
        ConfigError::Invalid {
            path,
            mut key,
            mut message,
        } => {
            for (from, to) in renames {
                if key.starts_with(from) {
                    key = key.replacen(from, to, 1);
                }
                if *from == "mirror.rules" {
                    message = message.replace("mirror.rules[", "--mirror-rule[");
                }
            }
            ConfigError::Invalid { path, key, message }
        }
        other => other,
    }
}

impl RawMirror {
    fn new(interface: Option<String>) -> RawMirror {
        RawMirror {
            interface,
            primary_address: None,
            direction: None,
            shadow_interface: None,
            shadow_mac: None,
            tcp_sessions: default_tcp_sessions(),
            tcp_hold_ms: default_tcp_hold_ms(),
            tcp_syn_retry_ms: default_tcp_syn_retry_ms(),
            xdp: false,
            rules: Vec::new(),
            sample_rate: default_sample_rate(),
            cap_pps: 0,
            cap_bytes_per_sec: 0,
            cap_burst_ms: default_burst_ms(),
            mask: RawMask::default(),
            pseudonymise: None,
        }
    }
}

impl Config {
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Config::parse(&text, path)
    }

    /// Parse and validate `text`; `path` only names the file in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        Config::parse_with(text, path, &MirrorFlags::default())
    }

    /// [`Config::load`] with the mirror's command-line flags applied over the file (or over
    /// an empty config when `path` is `None`), validated like the keys they set; errors name
    /// the flag (e.g. `--mirror-rule[1].dst`).
    pub fn load_with(path: Option<&Path>, flags: &MirrorFlags) -> Result<Config, ConfigError> {
        match path {
            Some(p) => {
                let text = std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                    path: p.to_path_buf(),
                    source,
                })?;
                Config::parse_with(&text, p, flags)
            }
            None => Config::parse_with("", Path::new("<command line>"), flags),
        }
    }

    /// [`Config::parse`] with `flags` applied over the file's `[mirror]` table.
    pub fn parse_with(text: &str, path: &Path, flags: &MirrorFlags) -> Result<Config, ConfigError> {
        let mut raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let renames =
            flags
                .apply(&mut raw.mirror)
                .map_err(|(key, message)| ConfigError::Invalid {
                    path: path.to_path_buf(),
                    key,
                    message,
                })?;
        Config::validate(raw, path).map_err(|e| rename_keys(e, &renames))
    }

    fn validate(raw: RawConfig, path: &Path) -> Result<Config, ConfigError> {
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let mirror = match raw.mirror {
            None => None,
            Some(m) => {
                let (address, direction) =
                    validate_primary(&m).map_err(|(k, msg)| invalid(k, msg))?;
                for (key, name) in [
                    ("mirror.interface", m.interface.as_ref()),
                    ("mirror.shadow_interface", m.shadow_interface.as_ref()),
                ] {
                    let Some(name) = name else { continue };
                    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                        return Err(invalid(
                            key.into(),
                            format!("{name:?} is not a valid interface name (1 to 15 bytes, no '/' or spaces)"),
                        ));
                    }
                }
                let target = match (&m.shadow_interface, &m.shadow_mac) {
                    (Some(ifname), Some(mac)) => {
                        let mac = parse_mac(mac).ok_or_else(|| {
                            invalid(
                                "mirror.shadow_mac".into(),
                                format!("{mac:?} is not a MAC address like 02:00:00:00:00:01"),
                            )
                        })?;
                        Some((ifname.clone(), mac))
                    }
                    (None, None) if raw.shadow.is_some() => None,
                    (None, None) => {
                        return Err(invalid(
                            "mirror.shadow_interface".into(),
                            "required (with mirror.shadow_mac) unless a [shadow] group is configured, whose first replica is then the target".into(),
                        ))
                    }
                    (Some(_), None) | (None, Some(_)) => {
                        return Err(invalid(
                            "mirror.shadow_mac".into(),
                            "mirror.shadow_interface and mirror.shadow_mac go together: give both or neither".into(),
                        ))
                    }
                };
                let tcp = match m.tcp_sessions.as_str() {
                    "translate" => crate::mirror::TcpSessions::Translate,
                    "off" => crate::mirror::TcpSessions::Off,
                    "track" => crate::mirror::TcpSessions::TrackOnly,
                    other => {
                        return Err(invalid(
                            "mirror.tcp_sessions".into(),
                            format!("{other:?} is not one of \"translate\", \"off\", \"track\""),
                        ))
                    }
                };
                if m.tcp_hold_ms > 60_000 {
                    return Err(invalid(
                        "mirror.tcp_hold_ms".into(),
                        format!("{} is outside 0..=60000 ms", m.tcp_hold_ms),
                    ));
                }
                if m.tcp_syn_retry_ms > m.tcp_hold_ms {
                    return Err(invalid(
                        "mirror.tcp_syn_retry_ms".into(),
                        format!(
                            "{} ms is longer than mirror.tcp_hold_ms ({} ms): no retry would happen",
                            m.tcp_syn_retry_ms, m.tcp_hold_ms
                        ),
                    ));
                }
                if m.rules.is_empty() {
                    return Err(invalid(
                        "mirror.rules".into(),
                        "at least one rule is needed: nothing would be mirrored".into(),
                    ));
                }
                let max = shadow_common::mirror::MAX_RULES as usize;
                if m.rules.len() > max {
                    return Err(invalid(
                        "mirror.rules".into(),
                        format!("{} rules given; at most {max} are supported", m.rules.len()),
                    ));
                }
                let mut rules = Vec::with_capacity(m.rules.len());
                let mut rule_masks = Vec::with_capacity(m.rules.len());
                for (i, r) in m.rules.iter().enumerate() {
                    let key = |f: &str| format!("mirror.rules[{i}].{f}");
                    let dst = r.dst.parse().map_err(|e: crate::mirror::RuleError| {
                        invalid(key("dst"), e.to_string())
                    })?;
                    let ports = match &r.ports {
                        None => Ports::ANY,
                        Some(p) => p.parse().map_err(|e: crate::mirror::RuleError| {
                            invalid(key("ports"), e.to_string())
                        })?,
                    };
                    let proto = match &r.proto {
                        None => None,
                        Some(p) => Some(
                            p.parse::<Proto>()
                                .map_err(|e| invalid(key("proto"), e.to_string()))?,
                        ),
                    };
                    if r.mask_http && proto != Some(Proto::Tcp) {
                        return Err(invalid(
                            key("mask_http"),
                            "HTTP masking needs proto = \"tcp\" on the rule".into(),
                        ));
                    }
                    let max = shadow_common::mask::MAX_RANGES;
                    if r.mask_ranges.len() > max {
                        return Err(invalid(
                            key("mask_ranges"),
                            format!("{} ranges given; at most {max}", r.mask_ranges.len()),
                        ));
                    }
                    let mut ranges = Vec::new();
                    for (j, t) in r.mask_ranges.iter().enumerate() {
                        ranges.push(parse_range(t).ok_or_else(|| {
                            invalid(
                                format!("mirror.rules[{i}].mask_ranges[{j}]"),
                                format!(
                                    "{t:?} is not OFFSET:LENGTH in payload bytes \
                                     (length >= 1, offset + length <= 65535)"
                                ),
                            )
                        })?);
                    }
                    let fallback = match r.fallback.as_deref() {
                        None | Some("mask") => Fallback::Mask,
                        Some("drop") => Fallback::Drop,
                        Some(other) => {
                            return Err(invalid(
                                key("fallback"),
                                format!("{other:?} is not \"mask\" or \"drop\""),
                            ))
                        }
                    };
                    rules.push(Rule { dst, ports, proto });
                    rule_masks.push(RuleMask {
                        http: r.mask_http,
                        ranges,
                        fallback,
                    });
                }
                if let Some((i, j)) = first_overlap(&rules) {
                    return Err(invalid(
                        format!("mirror.rules[{j}]"),
                        format!(
                            "overlaps mirror.rules[{i}]: both select {} (a packet can match only one rule; \
                             narrow the CIDR, ports or proto of one of them)",
                            describe_overlap(&rules[i], &rules[j])
                        ),
                    ));
                }
                let mask = validate_mask(&m.mask).map_err(|(k, msg)| invalid(k, msg))?;
                if !(0.0..=1.0).contains(&m.sample_rate) {
                    return Err(invalid(
                        "mirror.sample_rate".into(),
                        format!("{} is not a fraction of flows in 0.0..=1.0", m.sample_rate),
                    ));
                }
                for (key, v) in [
                    ("mirror.cap_pps", m.cap_pps),
                    ("mirror.cap_bytes_per_sec", m.cap_bytes_per_sec),
                ] {
                    if v > 1_000_000_000_000 {
                        return Err(invalid(
                            key.into(),
                            format!("{v} is above the maximum of 1e12 (0 means no cap)"),
                        ));
                    }
                }
                if !(1..=10_000).contains(&m.cap_burst_ms) {
                    return Err(invalid(
                        "mirror.cap_burst_ms".into(),
                        format!("{} is outside 1..=10000 ms", m.cap_burst_ms),
                    ));
                }
                let pseudonymise = match &m.pseudonymise {
                    None => None,
                    Some(p) => Some(validate_pseudonymise(p).map_err(|(k, msg)| invalid(k, msg))?),
                };
                let options = MirrorOptions {
                    pseudonymise,
                    sample_rate: m.sample_rate,
                    cap_pps: m.cap_pps,
                    cap_bytes_per_sec: m.cap_bytes_per_sec,
                    cap_burst_ms: m.cap_burst_ms,
                    mask,
                    rule_masks,
                    tcp,
                    tcp_hold: std::time::Duration::from_millis(m.tcp_hold_ms),
                    tcp_syn_retry: std::time::Duration::from_millis(m.tcp_syn_retry_ms),
                    ..MirrorOptions::default()
                };
                Some(MirrorConfig {
                    options,
                    interface: m.interface.unwrap_or_default(),
                    address,
                    direction,
                    target,
                    xdp: m.xdp,
                    rules,
                })
            }
        };
        if raw.profile.interval_ms < 100 {
            return Err(invalid(
                "profile.interval_ms".into(),
                format!("{} is below the minimum of 100 ms", raw.profile.interval_ms),
            ));
        }
        for (i, entry) in raw.profile.cgroups.iter().enumerate() {
            crate::profile::watch::validate_entry(entry)
                .map_err(|m| invalid(format!("profile.cgroups[{i}]"), m))?;
        }
        let (autoscale, whatif) = match &raw.shadow {
            None => (None, Vec::new()),
            Some(s) => s.extras().map_err(|(key, message)| invalid(key, message))?,
        };
        let shadow = match raw.shadow {
            None => None,
            Some(s) => Some(
                s.into_spec()
                    .map_err(|(key, message)| invalid(key, message))?,
            ),
        };
        let metrics_listen = match raw.metrics.listen.as_str() {
            "" | "off" => None,
            a => Some(a.parse().map_err(|_| {
                invalid(
                    "metrics.listen".into(),
                    format!("{a:?} is not an address:port like 127.0.0.1:9464 (or \"off\")"),
                )
            })?),
        };
        let allocate = match raw.allocate {
            None => None,
            Some(a) => Some(a.validate().map_err(|(k, msg)| invalid(k, msg))?),
        };
        if allocate.as_ref().is_some_and(|a| a.whatif.is_some()) {
            let why = match (&shadow, &mirror) {
                (None, _) => {
                    Some("needs a [shadow] section: the replicas shrinks are validated on")
                }
                (_, None) => {
                    Some("needs a [mirror] section: the traffic shrinks are validated with")
                }
                (_, Some(m)) if m.target.is_some() => Some(
                    "needs the mirror to feed the shadow group: remove mirror.shadow_interface",
                ),
                _ => None,
            };
            if let Some(why) = why {
                return Err(invalid("allocate.whatif".into(), why.to_owned()));
            }
        }
        let forecast = raw
            .forecast
            .validate()
            .map_err(|(k, msg)| invalid(k, msg))?;
        Ok(Config {
            autoscale,
            whatif,
            allocate,
            forecast,
            mirror,
            shadow,
            metrics_listen,
            profile: ProfileConfig {
                cgroups: raw.profile.cgroups,
                interval_ms: raw.profile.interval_ms,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
[mirror]
interface = "veth-p"
shadow_interface = "veth-s"
shadow_mac = "02:00:00:00:00:01"
[[mirror.rules]]
dst = "198.18.0.2/32"
ports = "80"
proto = "tcp"
[[mirror.rules]]
dst = "fd00::/8"

[profile]
cgroups = ["/sys/fs/cgroup/unified/app"]
interval_ms = 500
"#;

    fn err(text: &str) -> String {
        Config::parse(text, Path::new("x.toml"))
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn the_primary_is_named_by_interface_or_address_with_a_direction() {
        let ok = |t: &str| {
            Config::parse(t, Path::new("x.toml"))
                .unwrap()
                .mirror
                .unwrap()
        };
        let m = ok(GOOD);
        assert_eq!(
            (m.address, m.direction),
            (None, crate::mirror::Direction::Ingress)
        );
        let by_addr = GOOD.replace(
            "interface = \"veth-p\"",
            "primary_address = \"10.244.1.17\"",
        );
        let m = ok(&by_addr);
        assert_eq!(m.address, Some("10.244.1.17".parse().unwrap()));
        assert_eq!(
            m.direction,
            crate::mirror::Direction::Egress,
            "an address implies egress"
        );
        assert_eq!(m.interface, "");
        let m = ok(&GOOD.replace(
            "interface = \"veth-p\"",
            "interface = \"veth-p\"\ndirection = \"egress\"",
        ));
        assert_eq!(
            (m.interface.as_str(), m.direction),
            ("veth-p", crate::mirror::Direction::Egress)
        );
        for (text, key, says) in [
            (
                GOOD.replace(
                    "interface = \"veth-p\"",
                    "interface = \"veth-p\"\nprimary_address = \"10.0.0.1\"",
                ),
                "mirror.primary_address",
                "not both",
            ),
            (
                GOOD.replace("interface = \"veth-p\"\n", ""),
                "mirror.interface",
                "mirror.primary_address",
            ),
            (
                GOOD.replace(
                    "interface = \"veth-p\"",
                    "primary_address = \"10.0.0.0/24\"",
                ),
                "mirror.primary_address",
                "not an IP address",
            ),
            (
                GOOD.replace("interface = \"veth-p\"", "primary_address = \"127.0.0.1\""),
                "mirror.primary_address",
                "not the unicast address",
            ),
            (
                by_addr.replace(
                    "primary_address",
                    "direction = \"ingress\"\nprimary_address",
                ),
                "mirror.direction",
                "\"egress\"",
            ),
            (
                GOOD.replace(
                    "interface = \"veth-p\"",
                    "interface = \"veth-p\"\ndirection = \"out\"",
                ),
                "mirror.direction",
                "\"out\" is not",
            ),
            (
                by_addr.replace("primary_address", "xdp = true\nprimary_address"),
                "mirror.xdp",
                "xdp = false",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(key) && e.contains(says), "{key}: {e}");
        }
        // The flags replace the file's way of naming the primary, and are named in errors.
        let flags = MirrorFlags {
            primary_address: Some("10.244.1.18".into()),
            ..MirrorFlags::default()
        };
        let m = Config::parse_with(GOOD, Path::new("x.toml"), &flags)
            .unwrap()
            .mirror
            .unwrap();
        assert_eq!(
            (m.interface.as_str(), m.address),
            ("", Some("10.244.1.18".parse().unwrap()))
        );
        let flags = MirrorFlags {
            primary_address: Some("10.244.1.18".into()),
            direction: Some("ingress".into()),
            ..MirrorFlags::default()
        };
        let e = Config::parse_with(GOOD, Path::new("x.toml"), &flags)
            .unwrap_err()
            .to_string();
        assert!(e.contains("--mirror-direction"), "{e}");
    }

    const TWO_RULES: &str = "[mirror]\ninterface = \"veth-p\"\nshadow_interface = \"veth-s\"\n\
        shadow_mac = \"02:00:00:00:00:01\"\n";

    fn with_rules(rules: &[(&str, &str, &str)]) -> String {
        let mut t = TWO_RULES.to_string();
        for (dst, ports, proto) in rules {
            t += &format!("[[mirror.rules]]\ndst = \"{dst}\"\n");
            if !ports.is_empty() {
                t += &format!("ports = \"{ports}\"\n");
            }
            if !proto.is_empty() {
                t += &format!("proto = \"{proto}\"\n");
            }
        }
        t
    }

    #[test]
    fn overlapping_rules_are_refused_naming_both() {
        for (rules, a, b) in [
            (
                vec![("10.0.0.0/24", "80-81", "tcp"), ("10.0.0.128/25", "81", "")],
                0,
                1,
            ),
            (
                vec![
                    ("10.0.0.5", "", ""),
                    ("10.1.0.0/16", "", ""),
                    ("0.0.0.0/0", "53", "udp"),
                ],
                0,
                2,
            ),
            (
                vec![("fd00::/64", "443", "tcp"), ("fd00::1", "400-500", "tcp")],
                0,
                1,
            ),
            (
                vec![
                    ("10.0.0.1", "1-10", "udp"),
                    ("10.0.0.2", "", ""),
                    ("10.0.0.1", "10", ""),
                ],
                0,
                2,
            ),
        ] {
            let e = err(&with_rules(&rules));
            assert!(
                e.contains(&format!("mirror.rules[{b}]: overlaps mirror.rules[{a}]")),
                "{rules:?}: {e}"
            );
        }
        let e = err(&with_rules(&[
            ("10.0.0.0/24", "80-81", "tcp"),
            ("10.0.0.128/25", "81", ""),
        ]));
        assert!(
            e.contains("both select tcp packets to 10.0.0.128/25 port 81"),
            "{e}"
        );
    }

    #[test]
    fn allocate_whatif_needs_a_shadow_group_fed_by_the_mirror() {
        let alloc = "[allocate]\ncgroups = [\"web\"]\n[allocate.whatif]\n";
        // A mirror with an explicit target, no [shadow].
        let e = err(&format!(
            "{}{alloc}",
            with_rules(&[("10.0.0.2", "80", "tcp")])
        ));
        assert!(
            e.contains("allocate.whatif: needs a [shadow] section"),
            "{e}"
        );
        let shadow = "[shadow]\nname = \"web\"\ncommand = [\"sleep\", \"30\"]\naddresses = [\"10.0.0.2/24\"]\n";
        let e = err(&format!("{shadow}{alloc}"));
        assert!(
            e.contains("allocate.whatif: needs a [mirror] section"),
            "{e}"
        );
        let e = err(&format!(
            "{}{shadow}{alloc}",
            with_rules(&[("10.0.0.2", "80", "tcp")])
        ));
        assert!(e.contains("remove mirror.shadow_interface"), "{e}");
        let fed = "[mirror]\ninterface = \"veth-p\"\n[[mirror.rules]]\ndst = \"10.0.0.2\"\n";
        let c = Config::parse(&format!("{fed}{shadow}{alloc}"), Path::new("x.toml"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(c.allocate.and_then(|a| a.whatif).is_some());
    }

    #[test]
    fn disjoint_rules_are_accepted() {
        for rules in [
            // Same destination, other protocol.
            vec![("10.0.0.2", "", "tcp"), ("10.0.0.2", "", "udp")],
            // Adjacent prefixes, adjacent port ranges.
            vec![("10.0.0.0/25", "", ""), ("10.0.0.128/25", "", "")],
            vec![("10.0.0.0/24", "1-80", ""), ("10.0.0.0/24", "81-90", "")],
            // IPv4 and IPv6 never overlap.
            vec![("0.0.0.0/0", "", ""), ("::/0", "", "")],
        ] {
            Config::parse(&with_rules(&rules), Path::new("x.toml"))
                .unwrap_or_else(|e| panic!("{rules:?}: {e}"));
        }
    }

    fn flags_err(text: &str, flags: &MirrorFlags) -> String {
        Config::parse_with(text, Path::new("x.toml"), flags)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn mirror_flags_override_the_file() {
        let flags = MirrorFlags {
            interface: Some("pr9".into()),
            rules: vec![
                "tcp:10.0.0.0/24:80-81,http,fallback=drop".into(),
                "udp:[fd00::1]:53,range=0:16,range=20:4".into(),
                "any:fd00:1::/64".into(),
                "tcp:192.0.2.1:8080".into(),
            ],
            sample_rate: Some(0.25),
            cap_pps: Some(1000),
            cap_bps: Some(5_000_000),
            mask_headers: vec!["X-Token".into()],
            mask_params: vec!["sid".into()],
            mask_fill: Some("#".into()),
            ..MirrorFlags::default()
        };
        let c = Config::parse_with(GOOD, Path::new("x.toml"), &flags).unwrap();
        let m = c.mirror.unwrap();
        assert_eq!(m.interface, "pr9");
        assert_eq!(
            m.target.unwrap().0,
            "veth-s",
            "unflagged keys come from the file"
        );
        let r: Vec<String> = m
            .rules
            .iter()
            .map(|r| format!("{:?} {} {}-{}", r.proto, r.dst, r.ports.lo, r.ports.hi))
            .collect();
        assert_eq!(
            r,
            [
                "Some(Tcp) 10.0.0.0/24 80-81",
                "Some(Udp) fd00::1/128 53-53",
                "None fd00:1::/64 0-65535",
                "Some(Tcp) 192.0.2.1/32 8080-8080",
            ]
        );
        let o = &m.options;
        assert!(o.rule_masks[0].http && o.rule_masks[0].fallback == Fallback::Drop);
        assert_eq!(o.rule_masks[1].ranges, vec![(0, 16), (20, 4)]);
        assert_eq!(
            (o.sample_rate, o.cap_pps, o.cap_bytes_per_sec),
            (0.25, 1000, 5_000_000)
        );
        assert_eq!(o.mask.headers, vec!["X-Token".to_string()]);
        assert_eq!(o.mask.params, vec!["sid".to_string()]);
        assert_eq!(o.mask.fill, b'#');
    }

    #[test]
    fn mirror_flags_without_a_file_need_an_interface_and_are_validated() {
        let only = |f: MirrorFlags| flags_err("", &f);
        let e = only(MirrorFlags {
            rules: vec!["tcp:10.0.0.1:80".into()],
            ..MirrorFlags::default()
        });
        assert!(e.contains("--mirror-iface: required"), "{e}");
        let base = MirrorFlags {
            interface: Some("pr0".into()),
            shadow_interface: Some("sh0".into()),
            shadow_mac: Some("02:00:00:00:00:02".into()),
            rules: vec!["tcp:10.0.0.1:80".into()],
            ..MirrorFlags::default()
        };
        let c = Config::parse_with("", Path::new("<command line>"), &base).unwrap();
        assert_eq!(c.mirror.unwrap().rules.len(), 1);
        for (f, want) in [
            (
                MirrorFlags {
                    rules: vec!["tcp:10.0.0.0/33:80".into()],
                    ..base.clone()
                },
                "--mirror-rule[0].dst: \"10.0.0.0/33\" is not a valid CIDR",
            ),
            (
                MirrorFlags {
                    rules: vec!["tcp:10.0.0.1:99999".into()],
                    ..base.clone()
                },
                "--mirror-rule[0].ports:",
            ),
            (
                MirrorFlags {
                    rules: vec!["tcp10.0.0.1".into()],
                    ..base.clone()
                },
                "--mirror-rule[0]: \"tcp10.0.0.1\" is not PROTO:CIDR",
            ),
            (
                MirrorFlags {
                    rules: vec!["tcp:10.0.0.1,gzip".into()],
                    ..base.clone()
                },
                "unknown option \"gzip\"",
            ),
            (
                MirrorFlags {
                    rules: vec!["sctp:10.0.0.1".into()],
                    ..base.clone()
                },
                "--mirror-rule[0].proto:",
            ),
            (
                MirrorFlags {
                    rules: vec!["tcp:10.0.0.0/24".into(), "any:10.0.0.9:80".into()],
                    ..base.clone()
                },
                "--mirror-rule[1]: overlaps --mirror-rule[0]",
            ),
            (
                MirrorFlags {
                    sample_rate: Some(1.5),
                    ..base.clone()
                },
                "--sample-rate: 1.5",
            ),
            (
                MirrorFlags {
                    cap_pps: Some(u64::MAX),
                    ..base.clone()
                },
                "--cap-pps:",
            ),
            (
                MirrorFlags {
                    cap_bps: Some(u64::MAX),
                    ..base.clone()
                },
                "--cap-bps:",
            ),
            (
                MirrorFlags {
                    mask_headers: vec!["".into()],
                    ..base.clone()
                },
                "--mask-header[0]: empty name",
            ),
            (
                MirrorFlags {
                    mask_params: vec!["".into()],
                    ..base.clone()
                },
                "--mask-param[0]: empty name",
            ),
            (
                MirrorFlags {
                    mask_fill: Some("ab".into()),
                    ..base.clone()
                },
                "--mask-fill:",
            ),
            (
                MirrorFlags {
                    mask_replace: Some("token".into()),
                    ..base.clone()
                },
                "mirror.mask.key_file: required with mirror.mask.replace",
            ),
            (
                MirrorFlags {
                    mask_replace: Some("token".into()),
                    mask_key_file: Some("/nonexistent/shdt.key".into()),
                    ..base.clone()
                },
                "--mask-key-file: cannot read /nonexistent/shdt.key",
            ),
            (
                MirrorFlags {
                    shadow_mac: Some("nope".into()),
                    ..base.clone()
                },
                "--shadow-mac:",
            ),
            (
                MirrorFlags {
                    interface: Some("a/b".into()),
                    ..base.clone()
                },
                "--mirror-iface:",
            ),
        ] {
            let e = only(f.clone());
            assert!(e.contains(want), "{f:?}: {e}");
        }
    }

    #[test]
    fn pseudonymise_reads_its_key_and_checks_its_prefixes() {
        let dir = std::env::temp_dir().join(format!("shdt-pseudo-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k");
        std::fs::write(&key, "00112233445566778899aabbccddeeff\n").unwrap();
        let cfg = |extra: &str, tcp: &str| {
            format!(
                "{TWO_RULES}tcp_sessions = \"{tcp}\"\n[[mirror.rules]]\ndst = \"10.0.0.1\"\n\
                 [mirror.pseudonymise]\nkey_file = \"{}\"\n{extra}",
                key.display()
            )
        };
        let c = Config::parse(&cfg("", "off"), Path::new("x.toml")).unwrap();
        let p = c.mirror.unwrap().options.pseudonymise.unwrap();
        assert_eq!(p.key[0], 0x00);
        assert_eq!(p.key[15], 0xff);
        assert_eq!(p.v4, (std::net::Ipv4Addr::new(100, 64, 0, 0), 10));
        assert_eq!(p.v6.1, 16);
        // With TCP sessions too (the shadow's replies are matched back to them).
        let c = Config::parse(&cfg("", "translate"), Path::new("x.toml")).unwrap();
        assert!(c.mirror.unwrap().options.pseudonymise.is_some());
        for (extra, tcp, want) in [
            (
                "prefix_v4 = \"10.0.0.0/31\"\n",
                "off",
                "mirror.pseudonymise.prefix_v4: \"10.0.0.0/31\" is not an IPv4 prefix",
            ),
            (
                "prefix_v4 = \"fd00::/8\"\n",
                "off",
                "mirror.pseudonymise.prefix_v4:",
            ),
            (
                "prefix_v6 = \"10.0.0.0/8\"\n",
                "off",
                "mirror.pseudonymise.prefix_v6:",
            ),
            (
                "prefix_v6 = \"fd00::/200\"\n",
                "off",
                "mirror.pseudonymise.prefix_v6:",
            ),
            ("salt = 1\n", "off", "unknown field `salt`"),
        ] {
            let e = err(&cfg(extra, tcp));
            assert!(e.contains(want), "{extra}: {e}");
        }
        for bad in [
            "0011",
            "zz112233445566778899aabbccddeeff",
            "00000000000000000000000000000000",
        ] {
            std::fs::write(&key, bad).unwrap();
            let e = err(&cfg("", "off"));
            assert!(e.contains("mirror.pseudonymise.key_file:"), "{bad}: {e}");
        }
        std::fs::remove_file(&key).unwrap();
        let e = err(&cfg("", "off"));
        assert!(
            e.contains("mirror.pseudonymise.key_file: cannot read"),
            "{e}"
        );
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn mask_tokens_need_a_key_file_and_only_tokens_take_one() {
        let dir = std::env::temp_dir().join(format!("shdt-masktok-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k");
        std::fs::write(&key, "  ffeeddccbbaa99887766554433221100 \n").unwrap();
        let cfg = |mask: &str| {
            format!("{TWO_RULES}[[mirror.rules]]\ndst = \"10.0.0.1\"\n[mirror.mask]\n{mask}")
        };
        let with_key = |replace: &str| {
            cfg(&format!(
                "replace = \"{replace}\"\nkey_file = \"{}\"\n",
                key.display()
            ))
        };
        let c = Config::parse(&with_key("token"), Path::new("x.toml")).unwrap();
        let k = c.mirror.unwrap().options.mask.token_key.expect("token key");
        assert_eq!((k[0], k[15]), (0xff, 0x00));
        let c = Config::parse(&cfg(""), Path::new("x.toml")).unwrap();
        assert_eq!(
            c.mirror.unwrap().options.mask.token_key,
            None,
            "fill by default"
        );
        for (text, want) in [
            (
                cfg("replace = \"token\"\n"),
                "mirror.mask.key_file: required with mirror.mask.replace = \"token\"",
            ),
            (
                with_key("fill"),
                "mirror.mask.key_file: only used with mirror.mask.replace = \"token\"",
            ),
            (
                cfg("replace = \"hash\"\n"),
                "mirror.mask.replace: \"hash\" is neither \"fill\" nor \"token\"",
            ),
        ] {
            let e = err(&text);
            assert!(e.contains(want), "{text}: {e}");
        }
        std::fs::write(&key, "00000000000000000000000000000000").unwrap();
        let e = err(&with_key("token"));
        assert!(
            e.contains("mirror.mask.key_file: the key is all zeros"),
            "{e}"
        );
        std::fs::remove_file(&key).unwrap();
        let e = err(&with_key("token"));
        assert!(e.contains("mirror.mask.key_file: cannot read"), "{e}");
        let _ = std::fs::remove_dir(&dir);
    }

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(GOOD, Path::new("x.toml")).unwrap();
        let m = c.mirror.unwrap();
        assert_eq!(m.rules.len(), 2);
        assert_eq!(m.target.unwrap().1, [2, 0, 0, 0, 0, 1]);
        assert!(!m.xdp, "XDP is off unless asked for");
        assert_eq!(c.profile.interval_ms, 500);
    }

    #[test]
    fn bad_cidr_names_the_key() {
        let t = GOOD.replace("fd00::/8", "10.0.0.0/33");
        assert_eq!(
            err(&t),
            "config x.toml: mirror.rules[1].dst: \"10.0.0.0/33\" is not a valid CIDR: prefix length exceeds 32"
        );
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let t = GOOD.replace("interval_ms = 500", "interval_ms = 500\nintervall = 3");
        let e = err(&t);
        assert!(e.contains("unknown field `intervall`"), "{e}");
    }

    #[test]
    fn bad_values_name_their_keys() {
        assert!(err(&GOOD.replace("\"80\"", "\"99999\"")).contains("mirror.rules[0].ports"));
        assert!(err(&GOOD.replace("\"tcp\"", "\"sctp\"")).contains("mirror.rules[0].proto"));
        assert!(err(&GOOD.replace("02:00:00:00:00:01", "02:00")).contains("mirror.shadow_mac"));
        assert!(err(&GOOD.replace("veth-p", "a-very-long-interface")).contains("mirror.interface"));
        assert!(err(&GOOD.replace("500", "5")).contains("profile.interval_ms"));
        // Profiled cgroups: absolute paths or patterns that parse, the entry named.
        let with = |list: &str| {
            GOOD.replace(
                r#"cgroups = ["/sys/fs/cgroup/unified/app"]"#,
                &format!("cgroups = [{list}]"),
            )
        };
        assert!(Config::parse(
            &with(r#""/sys/fs/cgroup/unified/a/*-pod*.slice""#),
            Path::new("t")
        )
        .is_ok());
        let e = err(&with(r#""/sys/fs/cgroup/a", "rel/b""#));
        assert!(
            e.contains("profile.cgroups[1]") && e.contains("not an absolute path"),
            "{e}"
        );
        let e = err(&with(r#""/sys/fs/cgroup/[a""#));
        assert!(
            e.contains("profile.cgroups[0]") && e.contains("not a valid pattern"),
            "{e}"
        );
        let with = |k: &str| {
            GOOD.replace(
                "[[mirror.rules]]\ndst = \"198",
                &format!("{k}\n[[mirror.rules]]\ndst = \"198"),
            )
        };
        assert_eq!(
            err(&with("sample_rate = 1.5")),
            "config x.toml: mirror.sample_rate: 1.5 is not a fraction of flows in 0.0..=1.0"
        );
        assert!(err(&with("cap_burst_ms = 0")).contains("mirror.cap_burst_ms: 0 is outside"));
        assert!(err(&with("cap_pps = -1")).contains("cap_pps"));
        let c = Config::parse(
            &with("sample_rate = 0.25\ncap_pps = 1000\ncap_bytes_per_sec = 1000000"),
            Path::new("x.toml"),
        )
        .unwrap();
        let o = c.mirror.unwrap().options;
        assert_eq!(
            (
                o.sample_rate,
                o.cap_pps,
                o.cap_bytes_per_sec,
                o.cap_burst_ms
            ),
            (0.25, 1000, 1_000_000, 100)
        );
    }

    #[test]
    fn macs() {
        assert_eq!(
            parse_mac("aa:bb:cc:dd:ee:0f"),
            Some([0xaa, 0xbb, 0xcc, 0xdd, 0xee, 0x0f])
        );
        assert_eq!(parse_mac("aa:bb:cc:dd:ee"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:ff:00"), None);
        assert_eq!(parse_mac("aa:bb:cc:dd:ee:fg"), None);
    }

    #[test]
    fn mirror_target_is_required_without_a_shadow_group() {
        let no_target = GOOD
            .replace("shadow_interface = \"veth-s\"\n", "")
            .replace("shadow_mac = \"02:00:00:00:00:01\"\n", "");
        assert!(
            err(&no_target).contains("mirror.shadow_interface: required"),
            "{}",
            err(&no_target)
        );
        let half = GOOD.replace("shadow_mac = \"02:00:00:00:00:01\"\n", "");
        assert!(err(&half).contains("give both or neither"));
        let bad_hold = GOOD.replace(
            "interface = \"veth-p\"",
            "interface = \"veth-p\"\ntcp_hold_ms = 10\ntcp_syn_retry_ms = 50",
        );
        assert!(
            err(&bad_hold).contains("mirror.tcp_syn_retry_ms"),
            "{}",
            err(&bad_hold)
        );
        let bad_tcp = GOOD.replace(
            "interface = \"veth-p\"",
            "interface = \"veth-p\"\ntcp_sessions = \"maybe\"",
        );
        assert!(
            err(&bad_tcp).contains("mirror.tcp_sessions"),
            "{}",
            err(&bad_tcp)
        );
    }
}
