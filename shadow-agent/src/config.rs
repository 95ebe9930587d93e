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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    interface: String,
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
}

impl Default for RawMask {
    fn default() -> Self {
        RawMask {
            headers: None,
            params: None,
            fill: default_fill(),
            scan_bytes: default_scan_bytes(),
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
}

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub interface: String,
    /// The clones' interface and destination MAC; `None`: the shadow group's first replica.
    pub target: Option<(String, [u8; 6])>,
    pub xdp: bool,
    pub rules: Vec<Rule>,
    /// Sampling and caps (and masking).
    pub options: MirrorOptions,
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
    Ok(MaskOptions {
        headers,
        params,
        fill,
        scan_bytes: m.scan_bytes,
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
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let invalid = |key: String, message: String| ConfigError::Invalid {
            path: path.to_path_buf(),
            key,
            message,
        };
        let mirror = match raw.mirror {
            None => None,
            Some(m) => {
                for (key, name) in [
                    ("mirror.interface", Some(&m.interface)),
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
                let options = MirrorOptions {
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
                    interface: m.interface,
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
        Ok(Config {
            allocate,
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
