//! The `[shadow]` section of the agent's config, validated into a [`GroupSpec`].

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use serde::Deserialize;

use crate::{
    mirror::{Cidr, Ports, Proto, Rule, RuleError},
    shadow::{
        autoscale::AutoscaleSpec,
        discard::Allowlist,
        group::{GroupError, GroupSpec, RestartPolicy},
        replica::CommandSpec,
        whatif::{validate_candidate, Candidate, MAX_CANDIDATES},
    },
};

/// `[shadow]` as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawShadow {
    name: String,
    command: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
    cwd: Option<PathBuf>,
    user: Option<String>,
    #[serde(default = "one")]
    replicas_min: u32,
    #[serde(default = "one")]
    replicas_max: u32,
    cpu_cores: Option<f64>,
    memory_mb: Option<u64>,
    #[serde(default)]
    writable_paths: Vec<PathBuf>,
    /// Append the replicas' stdout and stderr to this file (outside their private mounts).
    output: Option<PathBuf>,
    addresses: Vec<String>,
    #[serde(default = "yes")]
    allow_loopback: bool,
    #[serde(default)]
    allow: Vec<RawAllow>,
    #[serde(default)]
    restart: RawRestart,
    /// `[shadow.autoscale]`: scale the group from measured load (off when absent).
    autoscale: Option<RawAutoscale>,
    /// `[[shadow.whatif]]`: candidates `shadow-agent whatif` compares with the baseline.
    #[serde(default)]
    whatif: Vec<RawWhatif>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawAutoscale {
    scale_up_cores: f64,
    scale_down_cores: f64,
    scale_up_runq_p99_us: f64,
    scale_up_backlog: u64,
    budget_high: f64,
    budget_low: f64,
    sample_step: f64,
    sample_min: f64,
    cooldown_s: f64,
}

impl Default for RawAutoscale {
    fn default() -> Self {
        let d = AutoscaleSpec::default();
        RawAutoscale {
            scale_up_cores: d.scale_up_cores,
            scale_down_cores: d.scale_down_cores,
            scale_up_runq_p99_us: d.scale_up_runq_p99_us,
            scale_up_backlog: d.scale_up_backlog,
            budget_high: d.budget_high,
            budget_low: d.budget_low,
            sample_step: d.sample_step,
            sample_min: d.sample_min,
            cooldown_s: d.cooldown.as_secs_f64(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWhatif {
    name: String,
    cpu_cores: Option<f64>,
    memory_mb: Option<u64>,
    cpuset: Option<String>,
    command: Option<Vec<String>>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAllow {
    dst: String,
    ports: Option<String>,
    proto: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRestart {
    #[serde(default = "d_initial")]
    initial_backoff_ms: u64,
    #[serde(default = "d_max")]
    max_backoff_ms: u64,
    #[serde(default = "d_limit")]
    crash_loop_limit: u32,
    #[serde(default = "d_window")]
    window_s: u64,
}

impl Default for RawRestart {
    fn default() -> Self {
        RawRestart {
            initial_backoff_ms: d_initial(),
            max_backoff_ms: d_max(),
            crash_loop_limit: d_limit(),
            window_s: d_window(),
        }
    }
}

fn one() -> u32 {
    1
}
fn yes() -> bool {
    true
}
fn d_initial() -> u64 {
    500
}
fn d_max() -> u64 {
    30_000
}
fn d_limit() -> u32 {
    5
}
fn d_window() -> u64 {
    60
}

/// A problem with one key: (key path, message).
pub type KeyError = (String, String);

impl RawShadow {
    /// `[shadow.autoscale]` and `[[shadow.whatif]]`, checked (host checks of the what-if
    /// candidates happen when `whatif` starts, before anything is created).
    pub fn extras(&self) -> Result<(Option<AutoscaleSpec>, Vec<Candidate>), KeyError> {
        let autoscale = match &self.autoscale {
            None => None,
            Some(a) => {
                if !(a.cooldown_s >= 0.0 && a.cooldown_s <= 86_400.0) {
                    return Err((
                        "shadow.autoscale.cooldown_s".into(),
                        format!("{} must be within 0..=86400 seconds", a.cooldown_s),
                    ));
                }
                let spec = AutoscaleSpec {
                    scale_up_cores: a.scale_up_cores,
                    scale_down_cores: a.scale_down_cores,
                    scale_up_runq_p99_us: a.scale_up_runq_p99_us,
                    scale_up_backlog: a.scale_up_backlog,
                    budget_high: a.budget_high,
                    budget_low: a.budget_low,
                    sample_step: a.sample_step,
                    sample_min: a.sample_min,
                    cooldown: Duration::from_secs_f64(a.cooldown_s),
                };
                spec.validate()?;
                Some(spec)
            }
        };
        let mut whatif = Vec::new();
        for (i, w) in self.whatif.iter().enumerate() {
            if w.command.as_ref().is_some_and(Vec::is_empty) {
                return Err((
                    format!("shadow.whatif[{i}].command"),
                    "is empty: name the program to run, or leave the key out".into(),
                ));
            }
            let c = Candidate {
                name: w.name.clone(),
                cpu_cores: w.cpu_cores,
                memory_bytes: w.memory_mb.map(|m| m << 20),
                cpuset: w.cpuset.clone(),
                command: w.command.clone(),
                env: w.env.clone().into_iter().collect(),
            };
            validate_candidate(&c, i).map_err(|e| match e {
                GroupError::Whatif { key, why } => (key, why),
                e => (format!("shadow.whatif[{i}]"), e.to_string()),
            })?;
            if whatif.iter().any(|o: &Candidate| o.name == c.name) {
                return Err((
                    format!("shadow.whatif[{i}].name"),
                    format!("{:?} is used twice", c.name),
                ));
            }
            whatif.push(c);
        }
        if whatif.len() > MAX_CANDIDATES {
            return Err((
                "shadow.whatif".into(),
                format!("{} candidates; at most {MAX_CANDIDATES}", whatif.len()),
            ));
        }
        Ok((autoscale, whatif))
    }

    /// Validate the values that need no kernel (names, addresses, rules, the user).
    /// The group re-checks command, caps and paths against the host before creating anything.
    pub fn into_spec(self) -> Result<GroupSpec, KeyError> {
        let err = |k: &str, m: String| (format!("shadow.{k}"), m);
        if self.command.is_empty() {
            return Err(err("command", "is empty: name the program to run".into()));
        }
        let mut addresses = Vec::new();
        for (i, a) in self.addresses.iter().enumerate() {
            let c: Cidr = a
                .parse()
                .map_err(|e: RuleError| err(&format!("addresses[{i}]"), e.to_string()))?;
            addresses.push((c.addr, c.prefix_len));
        }
        if addresses.is_empty() {
            return Err(err(
                "addresses",
                "is empty: give the primary's service address(es) the replicas hold".into(),
            ));
        }
        let mut rules = Vec::new();
        for (i, r) in self.allow.iter().enumerate() {
            let key = |f: &str| format!("allow[{i}].{f}");
            let dst: Cidr = r
                .dst
                .parse()
                .map_err(|e: RuleError| err(&key("dst"), e.to_string()))?;
            let ports = match &r.ports {
                None => Ports::ANY,
                Some(p) => p
                    .parse()
                    .map_err(|e: RuleError| err(&key("ports"), e.to_string()))?,
            };
            let proto = match &r.proto {
                None => None,
                Some(p) => Some(
                    p.parse::<Proto>()
                        .map_err(|e| err(&key("proto"), e.to_string()))?,
                ),
            };
            rules.push(Rule { dst, ports, proto });
        }
        let user = match &self.user {
            None => None,
            Some(name) => {
                let u = nix::unistd::User::from_name(name)
                    .map_err(|e| err("user", format!("{name:?}: {e}")))?
                    .ok_or_else(|| err("user", format!("{name:?} is not a user on this host")))?;
                Some((u.uid.as_raw(), u.gid.as_raw()))
            }
        };
        if self.restart.initial_backoff_ms == 0
            || self.restart.max_backoff_ms < self.restart.initial_backoff_ms
        {
            return Err(err(
                "restart",
                "initial_backoff_ms must be > 0 and <= max_backoff_ms".into(),
            ));
        }
        Ok(GroupSpec {
            name: self.name,
            prefix: "shd".into(),
            command: CommandSpec {
                argv: self.command,
                env: self.env.into_iter().collect(),
                cwd: self.cwd,
                user,
                stdout: self.output.clone(),
                stderr: self.output,
            },
            replicas_min: self.replicas_min,
            replicas_max: self.replicas_max,
            cpu_cores: self.cpu_cores,
            memory_bytes: self.memory_mb.map(|m| m << 20),
            writable_paths: self.writable_paths,
            replica_mac: None,
            addresses,
            allow: Allowlist {
                rules,
                loopback: self.allow_loopback,
            },
            restart: RestartPolicy {
                initial_backoff: Duration::from_millis(self.restart.initial_backoff_ms),
                max_backoff: Duration::from_millis(self.restart.max_backoff_ms),
                crash_loop_limit: self.restart.crash_loop_limit.max(1),
                window: Duration::from_secs(self.restart.window_s),
            },
        })
    }
}
