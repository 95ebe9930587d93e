//! A group of replicas: validation before anything is created, the group cgroup with its
//! caps, supervision with exponential restart backoff and a crash-loop limit, scaling within
//! [min, max], status.

use std::{
    net::IpAddr,
    path::PathBuf,
    time::{Duration, Instant},
};

use crate::{
    shadow::{
        discard::Allowlist,
        mountns::{self, MountError},
        replica::{CommandSpec, Replica, ReplicaError, ReplicaNames, ReplicaStatus},
    },
    sys::{
        cgroup::{Cgroup, CgroupError, CgroupLayout, Controller},
        netns::NetNs,
    },
};

/// When and how often a crashed replica is started again.
#[derive(Clone, Debug, PartialEq)]
pub struct RestartPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// This many crashes within `window` stop restarts (crash loop).
    pub crash_loop_limit: u32,
    pub window: Duration,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            crash_loop_limit: 5,
            window: Duration::from_secs(60),
        }
    }
}

/// A shadow group as configured.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupSpec {
    /// 1 to 8 characters of [a-z0-9]; part of every object name.
    pub name: String,
    /// Object-name prefix ("shd" by default); a restarted agent sweeps by it.
    pub prefix: String,
    pub command: CommandSpec,
    pub replicas_min: u32,
    pub replicas_max: u32,
    /// CPU cap of the whole group, in cores.
    pub cpu_cores: Option<f64>,
    /// Memory cap of the whole group, in bytes.
    pub memory_bytes: Option<u64>,
    pub writable_paths: Vec<PathBuf>,
    /// The primary's service addresses, held by every replica.
    pub addresses: Vec<(IpAddr, u8)>,
    pub allow: Allowlist,
    pub restart: RestartPolicy,
    /// The MAC the replicas' interfaces take: the one the primary's packets are sent to, so
    /// the mirror's clones arrive addressed to the replica as they are and the mirror never
    /// writes the primary's packet (`run` and `whatif` set the mirror interface's). None:
    /// the kernel's random one.
    pub replica_mac: Option<crate::sys::link::MacAddr>,
}

impl GroupSpec {
    /// The keys that define the replicas' isolation and differ between `self` and `other`:
    /// they change only with a restart of the agent.
    pub fn fixed_keys_changed(&self, other: &GroupSpec) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.name != other.name {
            out.push("shadow.name");
        }
        if self.prefix != other.prefix {
            out.push("shadow.prefix");
        }
        if self.addresses != other.addresses {
            out.push("shadow.addresses");
        }
        if self.allow != other.allow {
            out.push("shadow.allow");
        }
        if self.writable_paths != other.writable_paths {
            out.push("shadow.writable_paths");
        }
        if self.replica_mac != other.replica_mac {
            out.push("the replicas' MAC");
        }
        out
    }

    /// The keys that differ between `self` and `other` and change while the group runs
    /// ([`ShadowGroup::set_spec`]).
    pub fn live_keys_changed(&self, other: &GroupSpec) -> Vec<&'static str> {
        let mut out = Vec::new();
        if self.command != other.command {
            out.push("shadow.command");
        }
        if self.cpu_cores != other.cpu_cores {
            out.push("shadow.cpu_cores");
        }
        if self.memory_bytes != other.memory_bytes {
            out.push("shadow.memory_mb");
        }
        if (self.replicas_min, self.replicas_max) != (other.replicas_min, other.replicas_max) {
            out.push("shadow.replicas");
        }
        if self.restart != other.restart {
            out.push("shadow.restart");
        }
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum GroupError {
    #[error("shadow.name {name:?}: {why}")]
    Name { name: String, why: &'static str },
    #[error("shadow.command: {why}")]
    Command { why: String },
    #[error("shadow.replicas: min {min} and max {max} must satisfy 1 <= min <= max <= 16")]
    Replicas { min: u32, max: u32 },
    #[error("shadow.cpu_cores: {cores} is not within (0, {host}] (the host's CPUs)")]
    Cpu { cores: f64, host: usize },
    #[error("shadow.memory_mb: {bytes} bytes exceed the host's {host} bytes of memory")]
    Memory { bytes: u64, host: u64 },
    #[error("{key}: {why}")]
    Whatif { key: String, why: String },
    #[error("cpuset {list:?}: {why}")]
    Cpuset { list: String, why: String },
    #[error("shadow.writable_paths")]
    Paths(#[source] MountError),
    #[error("shadow group cgroup {name}")]
    Cgroup {
        name: String,
        #[source]
        source: CgroupError,
    },
    #[error(transparent)]
    Replica(Box<ReplicaError>),
}

impl From<ReplicaError> for GroupError {
    fn from(e: ReplicaError) -> Self {
        GroupError::Replica(Box::new(e))
    }
}

/// What supervision did, for logs and tests.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Restarted {
        index: u32,
        after: Duration,
        exit: String,
    },
    CrashLoop {
        index: u32,
        crashes: u32,
    },
    RestartFailed {
        index: u32,
        error: String,
    },
}

struct Slot {
    replica: Replica,
    crashes: Vec<Instant>,
    backoff: Duration,
    /// A restart due at this time.
    pending: Option<(Instant, String)>,
    crash_loop: bool,
}

/// A running group. Dropping it kills every replica and removes all it created.
pub struct ShadowGroup {
    // Replicas before the group cgroup: children are removed before their parent.
    slots: Vec<Slot>,
    cgroup: Cgroup,
    spec: GroupSpec,
    host_ns: Option<NetNs>,
}

pub(crate) fn host_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

pub(crate) fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kb| kb * 1024)
}

fn find_in_path(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// Check the spec before anything is created.
pub fn validate(spec: &GroupSpec) -> Result<(), GroupError> {
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 8
        && spec
            .name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if !name_ok {
        return Err(GroupError::Name {
            name: spec.name.clone(),
            why: "must be 1 to 8 characters of a-z and 0-9 (it is part of interface names)",
        });
    }
    let Some(program) = spec.command.argv.first() else {
        return Err(GroupError::Command {
            why: "empty: name the program to run".into(),
        });
    };
    if !find_in_path(program) {
        return Err(GroupError::Command {
            why: format!("{program:?} was not found (not a file, and not in PATH)"),
        });
    }
    if spec.replicas_min == 0 || spec.replicas_min > spec.replicas_max || spec.replicas_max > 16 {
        return Err(GroupError::Replicas {
            min: spec.replicas_min,
            max: spec.replicas_max,
        });
    }
    if let Some(cores) = spec.cpu_cores {
        if !(cores > 0.0 && cores <= host_cpus() as f64) {
            return Err(GroupError::Cpu {
                cores,
                host: host_cpus(),
            });
        }
    }
    if let Some(bytes) = spec.memory_bytes {
        let host = host_memory();
        if bytes > host {
            return Err(GroupError::Memory { bytes, host });
        }
    }
    mountns::validate(&spec.writable_paths).map_err(GroupError::Paths)?;
    Ok(())
}

/// Check a cpuset list (`"0"`, `"0-1,3"`): well formed, and every CPU exists on this host.
pub fn validate_cpuset(list: &str) -> Result<Vec<usize>, GroupError> {
    let host = host_cpus();
    let bad = |why: String| GroupError::Cpuset {
        list: list.to_string(),
        why,
    };
    let mut cpus = Vec::new();
    for part in list.split(',') {
        let part = part.trim();
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let (Ok(lo), Ok(hi)) = (lo.parse::<usize>(), hi.parse::<usize>()) else {
            return Err(bad(format!(
                "{part:?} is not a CPU number or a range like 0-1"
            )));
        };
        if lo > hi {
            return Err(bad(format!("{part:?}: the range is reversed")));
        }
        if hi >= host {
            return Err(bad(format!(
                "CPU {hi} does not exist (this host has CPUs 0-{})",
                host - 1
            )));
        }
        cpus.extend(lo..=hi);
    }
    Ok(cpus)
}

const CFS_PERIOD_US: u64 = 100_000;

fn apply_caps(cg: &Cgroup, spec: &GroupSpec) -> Result<(), CgroupError> {
    // No cap: unlimited (a reload may take one away).
    let unified = matches!(cg.root().layout(), CgroupLayout::Unified);
    let quota = spec
        .cpu_cores
        .map(|cores| (cores * CFS_PERIOD_US as f64).round() as u64);
    if unified {
        let q = quota.map_or("max".to_owned(), |q| q.to_string());
        cg.write(
            Controller::Unified,
            "cpu.max",
            &format!("{q} {CFS_PERIOD_US}"),
        )?;
    } else {
        cg.write(
            Controller::Cpu,
            "cpu.cfs_period_us",
            &CFS_PERIOD_US.to_string(),
        )?;
        let q = quota.map_or("-1".to_owned(), |q| q.to_string());
        cg.write(Controller::Cpu, "cpu.cfs_quota_us", &q)?;
    }
    match (spec.memory_bytes, unified) {
        (Some(b), true) => cg.write(Controller::Unified, "memory.max", &b.to_string())?,
        (None, true) => cg.write(Controller::Unified, "memory.max", "max")?,
        (Some(b), false) => {
            cg.write(Controller::Memory, "memory.limit_in_bytes", &b.to_string())?
        }
        (None, false) => cg.write(Controller::Memory, "memory.limit_in_bytes", "-1")?,
    }
    Ok(())
}

impl ShadowGroup {
    /// Validate, create the group cgroup with its caps, and start `replicas_min` replicas.
    /// `host_ns`: where the replicas' host veth ends go (`None`: the caller's namespace).
    pub fn start(spec: GroupSpec, host_ns: Option<NetNs>) -> Result<ShadowGroup, GroupError> {
        Self::start_with_cpuset(spec, host_ns, None)
    }

    /// [`ShadowGroup::start`], with the group's CPUs restricted to `cpuset` (a cpuset list
    /// such as `"0"` or `"0-1"`, checked by [`validate_cpuset`]) before any replica starts:
    /// what-if replicas under a candidate cpuset.
    pub fn start_with_cpuset(
        spec: GroupSpec,
        host_ns: Option<NetNs>,
        cpuset: Option<&str>,
    ) -> Result<ShadowGroup, GroupError> {
        validate(&spec)?;
        if let Some(c) = cpuset {
            validate_cpuset(c)?;
        }
        let cg_name = format!("{}-{}", spec.prefix, spec.name);
        let cgroup = Cgroup::create(&cg_name).map_err(|source| GroupError::Cgroup {
            name: cg_name.clone(),
            source,
        })?;
        apply_caps(&cgroup, &spec).map_err(|source| GroupError::Cgroup {
            name: cg_name.clone(),
            source,
        })?;
        if let Some(c) = cpuset {
            // Children copy their parent's cpuset when created (v1) or are bounded by it (v2).
            let (ctl, file) = if matches!(cgroup.root().layout(), CgroupLayout::Unified) {
                (Controller::Unified, "cpuset.cpus")
            } else {
                (Controller::Cpuset, "cpuset.cpus")
            };
            cgroup
                .write(ctl, file, c)
                .map_err(|source| GroupError::Cgroup {
                    name: cg_name.clone(),
                    source,
                })?;
        }
        let mut group = ShadowGroup {
            slots: Vec::new(),
            cgroup,
            spec,
            host_ns,
        };
        group.scale_to(group.spec.replicas_min)?;
        Ok(group)
    }

    fn start_replica(&self, index: u32) -> Result<Replica, ReplicaError> {
        Replica::start(
            index,
            ReplicaNames::new(&self.spec.prefix, &self.spec.name, index),
            self.host_ns.as_ref(),
            &self.spec.addresses,
            &self.spec.writable_paths,
            &self.spec.allow,
            &self.spec.command,
            self.spec.replica_mac,
        )
    }

    /// Add or remove replicas (highest index first) to reach `n`, clamped to [min, max].
    /// Returns the count reached.
    pub fn scale_to(&mut self, n: u32) -> Result<u32, GroupError> {
        let n = n.clamp(self.spec.replicas_min, self.spec.replicas_max);
        while (self.slots.len() as u32) < n {
            let replica = self.start_replica(self.slots.len() as u32)?;
            self.slots.push(Slot {
                replica,
                crashes: Vec::new(),
                backoff: self.spec.restart.initial_backoff,
                pending: None,
                crash_loop: false,
            });
        }
        while (self.slots.len() as u32) > n {
            self.slots.pop();
        }
        Ok(n)
    }

    /// One supervision step: notice exits, schedule and perform restarts with exponential
    /// backoff, stop restarting a replica in a crash loop.
    pub fn supervise(&mut self) -> Vec<Event> {
        let now = Instant::now();
        let policy = self.spec.restart.clone();
        let mut events = Vec::new();
        for slot in &mut self.slots {
            let index = slot.replica.index();
            if slot.crash_loop {
                continue;
            }
            if slot.pending.is_none() {
                if let Some(status) = slot.replica.exited() {
                    // A replica that ran for a whole window is healthy again.
                    if slot.replica.uptime() >= policy.window {
                        slot.backoff = policy.initial_backoff;
                    }
                    slot.crashes
                        .retain(|t| now.duration_since(*t) < policy.window);
                    slot.crashes.push(now);
                    if slot.crashes.len() as u32 >= policy.crash_loop_limit {
                        slot.crash_loop = true;
                        tracing::error!(
                            index,
                            crashes = slot.crashes.len(),
                            "shadow replica is crash-looping; not restarting it"
                        );
                        events.push(Event::CrashLoop {
                            index,
                            crashes: slot.crashes.len() as u32,
                        });
                        continue;
                    }
                    slot.pending = Some((now + slot.backoff, status.to_string()));
                }
            }
            if let Some((due, exit)) = slot.pending.clone() {
                if now >= due {
                    slot.pending = None;
                    let after = slot.backoff;
                    slot.backoff = (slot.backoff * 2).min(policy.max_backoff);
                    match slot.replica.restart() {
                        Ok(()) => {
                            tracing::warn!(index, ?after, %exit, "restarted shadow replica");
                            events.push(Event::Restarted { index, after, exit });
                        }
                        Err(e) => events.push(Event::RestartFailed {
                            index,
                            error: e.to_string(),
                        }),
                    }
                }
            }
        }
        events
    }

    pub fn replicas(&self) -> impl Iterator<Item = &Replica> {
        self.slots.iter().map(|s| &s.replica)
    }

    /// Where a mirror sends the clones for this group: each replica's host veth end and the
    /// MAC of its replica end, by index.
    pub fn mirror_targets(&self) -> Vec<(String, [u8; 6])> {
        self.replicas()
            .map(|r| (r.names().host_if.clone(), r.replica_mac().octets()))
            .collect()
    }

    pub fn replica(&self, index: u32) -> Option<&Replica> {
        self.slots.get(index as usize).map(|s| &s.replica)
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    pub fn spec(&self) -> &GroupSpec {
        &self.spec
    }

    pub fn status(&mut self) -> Vec<ReplicaStatus> {
        self.slots.iter_mut().map(|s| s.replica.status()).collect()
    }

    /// Takes `new` as the group's spec while it runs (`run`'s reload). What can change live:
    /// the command (each replica's process is replaced in place: see
    /// [`ShadowGroup::redeploy`]), the group's CPU and memory caps (written now), the
    /// replica bounds (the caller scales into them) and the restart policy. The other keys
    /// (name, prefix, addresses, allowlist, writable paths, the replicas' MAC) define the
    /// replicas' isolation: `Err` naming them, and nothing changes. Returns whether the
    /// command changed.
    pub fn set_spec(&mut self, mut new: GroupSpec) -> Result<bool, GroupError> {
        new.replica_mac = self.spec.replica_mac;
        let fixed = self.spec.fixed_keys_changed(&new);
        if !fixed.is_empty() {
            return Err(GroupError::Command {
                why: format!("{} change only with a restart", fixed.join(", ")),
            });
        }
        validate(&new)?;
        if (new.cpu_cores, new.memory_bytes) != (self.spec.cpu_cores, self.spec.memory_bytes) {
            apply_caps(&self.cgroup, &new).map_err(|source| GroupError::Cgroup {
                name: format!("{}-{}", new.prefix, new.name),
                source,
            })?;
        }
        let command_changed = new.command != self.spec.command;
        self.spec = new;
        Ok(command_changed)
    }

    /// Replace replica `index`'s process by one running the spec's command (same
    /// namespaces and cgroup, so the mirror's target stays): crash history, back-off and a
    /// crash loop are cleared, since they were the old command's.
    pub fn redeploy(&mut self, index: u32) -> Result<(), GroupError> {
        let initial = self.spec.restart.initial_backoff;
        let Some(slot) = self.slots.get_mut(index as usize) else {
            return Ok(());
        };
        slot.crashes.clear();
        slot.pending = None;
        slot.crash_loop = false;
        slot.backoff = initial;
        slot.replica.redeploy(&self.spec.command)?;
        Ok(())
    }

    /// Whether replica `index` was given up on after a crash loop.
    pub fn crash_looping(&self, index: u32) -> bool {
        self.slots.get(index as usize).is_some_and(|s| s.crash_loop)
    }
}

impl GroupError {
    /// A problem with the spec itself (exit code 2), as opposed to a failure to create.
    pub fn is_usage(&self) -> bool {
        !matches!(self, GroupError::Cgroup { .. } | GroupError::Replica(_))
    }
}

/// Remove what an agent killed with SIGKILL left of group `name`: replica namespaces
/// (`PREFIX-NAME-N`), host veth ends (`PREFIXNAMENh`), the group's cgroups and staging
/// directories. Returns what was removed.
pub fn sweep_leftovers(prefix: &str, name: &str) -> Vec<String> {
    let mut removed = Vec::new();
    let ns_prefix = format!("{prefix}-{name}-");
    if let Ok(list) = crate::sys::netns::list() {
        for ns in list.into_iter().filter(|n| {
            n.strip_prefix(&ns_prefix)
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        }) {
            if crate::sys::netns::delete(&ns).is_ok() {
                removed.push(format!("netns {ns}"));
            }
        }
    }
    let if_prefix = format!("{prefix}{name}");
    if let Ok(links) = crate::sys::link::list(None) {
        for l in links.into_iter().filter(|l| {
            l.name
                .strip_prefix(&if_prefix)
                .and_then(|rest| rest.strip_suffix('h'))
                .is_some_and(|i| !i.is_empty() && i.bytes().all(|b| b.is_ascii_digit()))
        }) {
            if crate::sys::link::delete(&l.name, None).is_ok() {
                removed.push(format!("link {}", l.name));
            }
        }
    }
    let cg_name = format!("{prefix}-{name}");
    if let Ok(root) = crate::sys::cgroup::CgroupRoot::host() {
        for (_, dir) in root.hierarchies() {
            let d = dir.join(&cg_name);
            if d.is_dir() && crate::sys::cgroup::remove_tree(&d, Duration::from_secs(5)).is_ok() {
                removed.push(format!("cgroup {}", d.display()));
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir(crate::shadow::replica::staging_root()) {
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(&ns_prefix)
                && std::fs::remove_dir(e.path()).is_ok()
            {
                removed.push(format!("dir {}", e.path().display()));
            }
        }
    }
    removed
}
