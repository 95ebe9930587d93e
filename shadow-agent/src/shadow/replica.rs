//! One shadow replica: network namespace + veth, cgroup, mount namespace, discard programs
//! and the running command, created in that order and removed in reverse.

use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use crate::{
    shadow::{
        discard::{Allowlist, Discard, DiscardCounters, DiscardError},
        mountns::{MountError, PrivateMounts},
    },
    sys::{
        cgroup::{Cgroup, CgroupError},
        link::{self, LinkError, MacAddr, Veth, VethEnd},
        netns::{NetNs, NetnsError},
        process::{self, ChildGuard, ProcessError, SpawnOptions},
    },
};

/// What to run as the shadow.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CommandSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub cwd: Option<PathBuf>,
    /// uid and gid to run as (resolved from a user name by the group).
    pub user: Option<(u32, u32)>,
    /// Append the command's stdout / stderr to these files (opened by the agent, outside
    /// the replica's private mounts, created if missing); `None`: discarded.
    pub stdout: Option<PathBuf>,
    pub stderr: Option<PathBuf>,
}

/// Open `path` for appending (a replica's log), or the null device.
fn log_target(path: Option<&Path>) -> std::io::Result<std::process::Stdio> {
    match path {
        None => Ok(std::process::Stdio::null()),
        Some(p) => Ok(std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)?
            .into()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error("replica {index}: network namespace")]
    Netns {
        index: u32,
        #[source]
        source: NetnsError,
    },
    #[error("replica {index}: link")]
    Link {
        index: u32,
        #[source]
        source: LinkError,
    },
    #[error("replica {index}: cgroup")]
    Cgroup {
        index: u32,
        #[source]
        source: CgroupError,
    },
    #[error("replica {index}: output discard")]
    Discard {
        index: u32,
        #[source]
        source: DiscardError,
    },
    #[error("replica {index}: private mounts")]
    Mounts {
        index: u32,
        #[source]
        source: MountError,
    },
    #[error("replica {index}: opening the command's log {path}")]
    Log {
        index: u32,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("replica {index}: setting {key} in its network namespace")]
    Sysctl {
        index: u32,
        key: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("replica {index}: starting the command")]
    Spawn {
        index: u32,
        #[source]
        source: ProcessError,
    },
}

/// The replica's default gateway: a link-local address that only exists as a static
/// neighbour entry pointing at the host end of the veth.
pub const REPLICA_GW_V4: [u8; 4] = [169, 254, 0, 1];
/// `net.ipv4.tcp_rmem` in every replica's namespace: min, default, max receive buffer.
pub const SHADOW_TCP_RMEM: &str = "4096 16777216 33554432";
pub const REPLICA_GW_V6: [u16; 8] = [0xfe80, 0, 0, 0, 0, 0, 0, 1];

/// Names of a replica's kernel objects, all derived from the group's prefix and name so a
/// restarted agent can find leftovers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReplicaNames {
    pub netns: String,
    pub host_if: String,
    pub replica_if: String,
    pub cgroup: String,
    pub staging: PathBuf,
}

impl ReplicaNames {
    pub fn new(prefix: &str, group: &str, index: u32) -> ReplicaNames {
        ReplicaNames {
            netns: format!("{prefix}-{group}-{index}"),
            host_if: format!("{prefix}{group}{index}h"),
            replica_if: format!("{prefix}{group}{index}r"),
            cgroup: format!("{prefix}-{group}/r{index}"),
            staging: PathBuf::from(format!("/run/shadow-agent/{prefix}-{group}-{index}")),
        }
    }
}

/// The state a replica reports.
#[derive(Clone, Debug, serde::Serialize)]
pub struct ReplicaStatus {
    pub index: u32,
    pub pid: Option<u32>,
    pub netns: String,
    pub host_interface: String,
    pub cgroup: String,
    pub cgroup_id: u64,
    pub uptime_s: f64,
    pub restarts: u32,
    pub running: bool,
    pub discard: Option<DiscardCounters>,
}

/// A running replica. Fields drop in declaration order: the process first, the namespace
/// and the cgroup last.
pub struct Replica {
    child: Option<ChildGuard>,
    discard: Discard,
    mounts: PrivateMounts,
    veth: Veth,
    cgroup: Cgroup,
    netns: NetNs,
    index: u32,
    names: ReplicaNames,
    host_mac: MacAddr,
    replica_mac: MacAddr,
    started: Instant,
    restarts: u32,
    command: CommandSpec,
}

impl Replica {
    /// Create the replica's isolation and start its command. `host_ns` is where the host
    /// end of the veth goes (the primary interface's namespace; `None`: the caller's).
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        index: u32,
        names: ReplicaNames,
        host_ns: Option<&NetNs>,
        addresses: &[(IpAddr, u8)],
        writable: &[PathBuf],
        allow: &Allowlist,
        command: &CommandSpec,
        mac: Option<MacAddr>,
    ) -> Result<Replica, ReplicaError> {
        let netns =
            NetNs::create(&names.netns).map_err(|source| ReplicaError::Netns { index, source })?;
        let link_err = |source| ReplicaError::Link { index, source };
        let veth = Veth::create(
            VethEnd {
                name: &names.host_if,
                netns: host_ns,
            },
            VethEnd::in_netns(&names.replica_if, &netns),
        )
        .map_err(link_err)?;
        // The service addresses as host addresses (/32, /128): no subnet is on-link, so every
        // reply goes to the default route below, i.e. to the host end, where it is learned
        // from and dropped. (With an on-link subnet the replica would ARP for clients, which
        // nobody answers, and never send its replies at all.)
        for (addr, _) in addresses {
            let host_len = if addr.is_ipv4() { 32 } else { 128 };
            link::add_address(&names.replica_if, Some(&netns), *addr, host_len)
                .map_err(link_err)?;
        }
        if let Some(mac) = mac {
            link::set_mac(&names.replica_if, Some(&netns), mac).map_err(link_err)?;
        }
        link::set_up(&names.replica_if, Some(&netns)).map_err(link_err)?;
        link::set_up(&names.host_if, host_ns).map_err(link_err)?;
        let host_mac = link::mac(&names.host_if, host_ns).map_err(link_err)?;
        let replica_mac = link::mac(&names.replica_if, Some(&netns)).map_err(link_err)?;
        for (family_v4, gw) in [
            (true, IpAddr::from(REPLICA_GW_V4)),
            (false, IpAddr::from(REPLICA_GW_V6)),
        ] {
            if addresses.iter().any(|(a, _)| a.is_ipv4() == family_v4) {
                link::set_neighbor(&names.replica_if, Some(&netns), gw, host_mac)
                    .map_err(link_err)?;
                link::add_default_route_onlink(&names.replica_if, Some(&netns), gw)
                    .map_err(link_err)?;
            }
        }
        // The shadow cannot slow the client down (the client paces itself by the primary's
        // window): give its receive buffers room for bursts of whole multi-MB bodies. The
        // window is about half the buffer, so the former 4 MiB default left ~2 MB of window
        // for a 4 MB upload to a shadow that reads late; 16 MiB by default, 32 MiB at most.
        // Only a shadow that lags uses it (charged to its cgroup).
        netns
            .run_in(|| std::fs::write("/proc/sys/net/ipv4/tcp_rmem", SHADOW_TCP_RMEM))
            .map_err(|source| ReplicaError::Netns { index, source })?
            .map_err(|source| ReplicaError::Sysctl {
                index,
                key: "net.ipv4.tcp_rmem",
                source,
            })?;

        let cgroup = Cgroup::create(&names.cgroup)
            .map_err(|source| ReplicaError::Cgroup { index, source })?;
        let discard = {
            let host_if = names.host_if.clone();
            let cg2 = cgroup.unified_path().to_path_buf();
            let allow = allow.clone();
            let attach = move || Discard::attach(&host_if, &cg2, &allow);
            match host_ns {
                Some(ns) => ns
                    .run_in(attach)
                    .map_err(|source| ReplicaError::Netns { index, source })?,
                None => attach(),
            }
            .map_err(|source| ReplicaError::Discard { index, source })?
        };
        let mounts = PrivateMounts::create(writable, &names.staging)
            .map_err(|source| ReplicaError::Mounts { index, source })?;
        let mut replica = Replica {
            child: None,
            discard,
            mounts,
            veth,
            cgroup,
            netns,
            index,
            names,
            host_mac,
            replica_mac,
            started: Instant::now(),
            restarts: 0,
            command: command.clone(),
        };
        replica.spawn()?;
        Ok(replica)
    }

    fn spawn(&mut self) -> Result<(), ReplicaError> {
        let c = &self.command;
        let open = |p: &Option<PathBuf>| {
            log_target(p.as_deref()).map_err(|source| ReplicaError::Log {
                index: self.index,
                path: p.clone().unwrap_or_default(),
                source,
            })
        };
        let (stdout, stderr) = (open(&c.stdout)?, open(&c.stderr)?);
        let mut cmd = Command::new(&c.argv[0]);
        cmd.args(&c.argv[1..])
            .envs(c.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(std::process::Stdio::null())
            .stdout(stdout);
        if c.stderr.is_some() {
            cmd.stderr(stderr);
        }
        let child = process::spawn_with(
            cmd,
            &SpawnOptions {
                netns: Some(&self.netns),
                cgroup: Some(&self.cgroup),
                mntns: Some(self.mounts.fd()),
                cwd: c.cwd.as_deref(),
                user: c.user,
                die_with_parent: true,
            },
        )
        .map_err(|source| ReplicaError::Spawn {
            index: self.index,
            source,
        })?;
        self.child = Some(child);
        self.started = Instant::now();
        Ok(())
    }

    /// Start the command again after it exited.
    pub fn restart(&mut self) -> Result<(), ReplicaError> {
        if let Some(mut old) = self.child.take() {
            let _ = old.kill();
        }
        self.restarts += 1;
        self.spawn()
    }

    /// Run `command` from now on: the running process (if any) is stopped and `command`
    /// started in its place, in the same namespaces, cgroup and mounts (a new build of the
    /// primary tried in the shadow). Not counted as a restart.
    pub fn redeploy(&mut self, command: &CommandSpec) -> Result<(), ReplicaError> {
        if let Some(mut old) = self.child.take() {
            let _ = old.kill();
        }
        self.command = command.clone();
        self.spawn()
    }

    /// `Some(exit status)` if the command has exited.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child
            .as_mut()
            .and_then(|c| c.try_wait().ok().flatten())
    }

    pub fn index(&self) -> u32 {
        self.index
    }

    pub fn names(&self) -> &ReplicaNames {
        &self.names
    }

    pub fn netns(&self) -> &NetNs {
        &self.netns
    }

    pub fn cgroup(&self) -> &Cgroup {
        &self.cgroup
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(ChildGuard::pid)
    }

    /// MAC of the replica's end: the destination MAC the mirror writes into clones.
    pub fn replica_mac(&self) -> MacAddr {
        self.replica_mac
    }

    /// MAC of the host end.
    pub fn host_mac(&self) -> MacAddr {
        self.host_mac
    }

    pub fn veth(&self) -> &Veth {
        &self.veth
    }

    pub fn uptime(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn restarts(&self) -> u32 {
        self.restarts
    }

    pub fn writable_paths(&self) -> &[PathBuf] {
        self.mounts.paths()
    }

    pub fn discard(&self) -> &Discard {
        &self.discard
    }

    pub fn status(&mut self) -> ReplicaStatus {
        let running = self.exited().is_none() && self.child.is_some();
        ReplicaStatus {
            index: self.index,
            pid: self.pid(),
            netns: self.names.netns.clone(),
            host_interface: self.names.host_if.clone(),
            cgroup: self.names.cgroup.clone(),
            cgroup_id: self.cgroup.id(),
            uptime_s: self.uptime().as_secs_f64(),
            restarts: self.restarts,
            running,
            discard: self.discard.counters().ok(),
        }
    }
}

/// Staging directories live under this host directory (empty on the host side).
pub fn staging_root() -> &'static Path {
    Path::new("/run/shadow-agent")
}
