//! The agent's TOML configuration: parsed strictly (unknown keys are errors), then validated
//! into typed values. Every error names the key path, the value and the reason, e.g.
//! `mirror.rules[2].dst: "10.0.0.0/33" is not a valid CIDR: prefix length exceeds 32`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::mirror::{Ports, Proto, Rule};

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
    #[serde(default)]
    profile: RawProfile,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMirror {
    interface: String,
    shadow_interface: String,
    shadow_mac: String,
    #[serde(default = "default_true")]
    xdp: bool,
    #[serde(default)]
    rules: Vec<RawRule>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    dst: String,
    ports: Option<String>,
    proto: Option<String>,
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

fn default_true() -> bool {
    true
}

fn default_interval_ms() -> u64 {
    1000
}

/// A validated configuration.
#[derive(Debug, Clone)]
pub struct Config {
    pub mirror: Option<MirrorConfig>,
    pub profile: ProfileConfig,
}

#[derive(Debug, Clone)]
pub struct MirrorConfig {
    pub interface: String,
    pub shadow_interface: String,
    pub shadow_mac: [u8; 6],
    pub xdp: bool,
    pub rules: Vec<Rule>,
}

#[derive(Debug, Clone)]
pub struct ProfileConfig {
    /// cgroup2 directories whose CPU is accounted separately.
    pub cgroups: Vec<PathBuf>,
    pub interval_ms: u64,
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
                    ("mirror.interface", &m.interface),
                    ("mirror.shadow_interface", &m.shadow_interface),
                ] {
                    if name.is_empty() || name.len() > 15 || name.contains(['/', ' ']) {
                        return Err(invalid(
                            key.into(),
                            format!("{name:?} is not a valid interface name (1 to 15 bytes, no '/' or spaces)"),
                        ));
                    }
                }
                let shadow_mac = parse_mac(&m.shadow_mac).ok_or_else(|| {
                    invalid(
                        "mirror.shadow_mac".into(),
                        format!(
                            "{:?} is not a MAC address like 02:00:00:00:00:01",
                            m.shadow_mac
                        ),
                    )
                })?;
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
                    rules.push(Rule { dst, ports, proto });
                }
                Some(MirrorConfig {
                    interface: m.interface,
                    shadow_interface: m.shadow_interface,
                    shadow_mac,
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
        Ok(Config {
            mirror,
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
        assert_eq!(m.shadow_mac, [2, 0, 0, 0, 0, 1]);
        assert!(m.xdp);
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
}
