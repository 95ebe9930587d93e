//! Per-test kernel objects that clean up after themselves.
//!
//! - Names: [`unique_name`] gives `shdt` + an 8-hex-digit tag unique to this process and call
//!   (+ `-role`), so an interface name with a 2-character role (`shdt0a1b2c3d-p0`) still fits
//!   the 15-byte limit.
//! - Objects: [`TestNetns`], [`TestVeth`], [`TestCgroup`] and [`spawn_in`] wrap the
//!   `shadow_agent::sys` guards; they panic with a clear message when something cannot be
//!   created (a test helper has nobody to return an error to) and remove everything on Drop,
//!   including while unwinding from a panic.
//! - Leftovers: [`sweep`] removes `shdt*` objects of killed runs (namespaces in `/run/netns`,
//!   links in the host namespace, cgroup directories in every hierarchy, [`TestDir`]s);
//!   [`leftovers`] lists them without removing anything.

use std::fmt;
use std::fs;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use shadow_agent::sys::cgroup::{self, Cgroup, CgroupLayout, CgroupRoot};
use shadow_agent::sys::link::{self, MacAddr, Veth, VethEnd};
use shadow_agent::sys::netns::{self, NetNs};
use shadow_agent::sys::process;

pub use shadow_agent::sys::process::ChildGuard;

/// Every object the harness creates starts with this.
pub const PREFIX: &str = "shdt";

/// Length of the unique tag after [`PREFIX`] (hex digits).
pub const TAG_LEN: usize = 8;

/// Prefix length of the IPv4 addresses [`TestVeth`] assigns (a /30 in 198.18.0.0/15).
pub const IPV4_PREFIX: u8 = 30;

/// Prefix length of the IPv6 addresses [`TestVeth`] assigns (a /64 in fd00::/8).
pub const IPV6_PREFIX: u8 = 64;

// ---- unique names --------------------------------------------------------------------------

/// splitmix64 finaliser: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Per-process random-ish seed from the pid and the time of first use.
fn seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        mix(u64::from(std::process::id()) << 32 ^ nanos)
    })
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Next sequence number of this process (used for tags and subnets).
fn next_seq() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// A tag of [`TAG_LEN`] hex digits: 20 bits from the per-process seed (pid + time) and
/// 12 bits of an atomic counter, so tags never repeat within a process (for 4096 calls) and
/// almost never across concurrent processes.
pub fn unique_tag() -> String {
    let seq = next_seq();
    let high = (seed() as u32) & 0xffff_f000;
    format!("{:08x}", high | (seq & 0xfff))
}

/// `shdt<tag>-<role>` (or `shdt<tag>` when `role` is empty).
///
/// For interface names keep `role` to at most 2 bytes: `shdt` + 8 + `-` + 2 = 15.
pub fn unique_name(role: &str) -> String {
    if role.is_empty() {
        format!("{PREFIX}{}", unique_tag())
    } else {
        format!("{PREFIX}{}-{role}", unique_tag())
    }
}

// ---- privileges ----------------------------------------------------------------------------

const CAP_KILL: u32 = 5;
const CAP_NET_ADMIN: u32 = 12;
const CAP_SYS_ADMIN: u32 = 21;
const CAP_BPF: u32 = 39;

/// Capabilities the harness and the eBPF tests need.
pub const REQUIRED_CAPS: [(u32, &str); 4] = [
    (CAP_KILL, "CAP_KILL"),
    (CAP_NET_ADMIN, "CAP_NET_ADMIN"),
    (CAP_SYS_ADMIN, "CAP_SYS_ADMIN"),
    (CAP_BPF, "CAP_BPF"),
];

fn effective_caps() -> Result<u64, String> {
    let status = fs::read_to_string("/proc/self/status")
        .map_err(|e| format!("cannot read /proc/self/status: {e}"))?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .ok_or("no CapEff line in /proc/self/status")?;
    u64::from_str_radix(line.trim(), 16).map_err(|e| format!("bad CapEff {line:?}: {e}"))
}

/// Panics (the test fails, it is never skipped) unless the process runs as root with
/// CAP_KILL, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_BPF effective.
pub fn require_privileges() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    let caps = match effective_caps() {
        Ok(caps) => caps,
        Err(e) => panic!("shadow-tests: cannot check capabilities: {e}"),
    };
    let missing: Vec<&str> = REQUIRED_CAPS
        .iter()
        .filter(|(bit, _)| caps & (1u64 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if euid != 0 || !missing.is_empty() {
        panic!(
            "shadow-tests need root with CAP_KILL, CAP_NET_ADMIN, CAP_SYS_ADMIN and CAP_BPF \
             (they create network namespaces, veth pairs and cgroups); this process has \
             euid {euid} and lacks {missing:?} (CapEff {caps:#x}). Run the suite as root, e.g. \
             `sudo -E cargo test -p shadow-tests`. These tests never skip themselves."
        );
    }
}

// ---- network namespaces --------------------------------------------------------------------

/// A network namespace `shdt<tag>-<role>` with `lo` up; removed on Drop.
#[derive(Debug)]
pub struct TestNetns {
    ns: NetNs,
}

impl TestNetns {
    /// Creates the namespace. Panics with the reason when that fails.
    pub fn new(role: &str) -> TestNetns {
        require_privileges();
        let name = unique_name(role);
        match NetNs::create(&name) {
            Ok(ns) => TestNetns { ns },
            Err(e) => panic!(
                "creating test network namespace {name:?} failed: {}",
                chain(&e)
            ),
        }
    }

    /// The wrapped namespace.
    pub fn netns(&self) -> &NetNs {
        &self.ns
    }

    /// Runs `f` on a thread inside the namespace; panics if the namespace cannot be entered.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        match self.ns.run_in(f) {
            Ok(value) => value,
            Err(e) => panic!("entering {:?} failed: {}", self.ns.name(), chain(&e)),
        }
    }
}

impl Deref for TestNetns {
    type Target = NetNs;

    fn deref(&self) -> &NetNs {
        &self.ns
    }
}

// ---- veth pairs ----------------------------------------------------------------------------

/// One end of a [`TestVeth`]: what a test needs to address it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VethEndInfo {
    pub name: String,
    /// Namespace name, `None` for the host (the caller's) namespace.
    pub netns: Option<String>,
    pub ifindex: u32,
    pub mac: MacAddr,
    /// With prefix [`IPV4_PREFIX`].
    pub ipv4: Option<Ipv4Addr>,
    /// With prefix [`IPV6_PREFIX`], added with `nodad` (usable at once).
    pub ipv6: Option<Ipv6Addr>,
}

/// A veth pair `shdt<tag>-a` / `shdt<tag>-b`, both ends up; deleted on Drop.
#[derive(Debug)]
pub struct TestVeth {
    a: VethEndInfo,
    b: VethEndInfo,
    // Last: dropped after the infos, deletes the pair.
    veth: Veth,
}

/// Builder for [`TestVeth`].
#[derive(Debug)]
pub struct TestVethBuilder<'a> {
    a_ns: Option<&'a TestNetns>,
    b_ns: Option<&'a TestNetns>,
    roles: (String, String),
    addresses: bool,
    tx_checksum_off: bool,
}

/// Addresses for one pair: a /30 in 198.18.0.0/15 and a /64 in fd00::/8, both random-ish.
fn test_subnets() -> ([Ipv4Addr; 2], [Ipv6Addr; 2]) {
    let r = mix(seed() ^ u64::from(next_seq()).rotate_left(17));
    // 198.18.0.0/15 holds 2^15 /30 subnets.
    let slot = (r & 0x7fff) as u32;
    let base = u32::from(Ipv4Addr::new(198, 18, 0, 0)) + slot * 4;
    let v4 = [Ipv4Addr::from(base + 1), Ipv4Addr::from(base + 2)];
    // fdXX:XXXX:XXXX:XXXX::/64 with 56 random-ish bits after fd.
    let net = (0xfd00_0000_0000_0000u64 | ((r >> 15) & 0x00ff_ffff_ffff_ffff)) as u128;
    let v6 = [Ipv6Addr::from(net << 64 | 1), Ipv6Addr::from(net << 64 | 2)];
    (v4, v6)
}

impl<'a> TestVethBuilder<'a> {
    /// Puts end A in `ns` (default: the host namespace).
    pub fn a_netns(mut self, ns: &'a TestNetns) -> Self {
        self.a_ns = Some(ns);
        self
    }

    /// Puts end B in `ns` (default: the host namespace).
    pub fn b_netns(mut self, ns: &'a TestNetns) -> Self {
        self.b_ns = Some(ns);
        self
    }

    /// Role suffixes of the two names (at most 2 bytes each; default `a` and `b`).
    pub fn roles(mut self, a: &str, b: &str) -> Self {
        self.roles = (a.to_owned(), b.to_owned());
        self
    }

    /// Leaves both ends without IPv4/IPv6 addresses.
    pub fn without_addresses(mut self) -> Self {
        self.addresses = false;
        self
    }

    /// Turns tx checksum offload off on both ends (captured packets get valid checksums).
    pub fn tx_checksum_off(mut self) -> Self {
        self.tx_checksum_off = true;
        self
    }

    /// Creates the pair. Panics with the reason when any step fails (the pair is removed).
    pub fn create(self) -> TestVeth {
        require_privileges();
        let tag = unique_tag();
        let a_name = format!("{PREFIX}{tag}-{}", self.roles.0);
        let b_name = format!("{PREFIX}{tag}-{}", self.roles.1);
        let a_ns = self.a_ns.map(TestNetns::netns);
        let b_ns = self.b_ns.map(TestNetns::netns);
        let fail = |what: &str, e: &dyn std::error::Error| -> ! {
            panic!("test veth {a_name}/{b_name}: {what} failed: {}", chain(e))
        };
        let veth = Veth::create(
            VethEnd {
                name: &a_name,
                netns: a_ns,
            },
            VethEnd {
                name: &b_name,
                netns: b_ns,
            },
        )
        .unwrap_or_else(|e| fail("creating the pair", &e));

        let (v4, v6) = test_subnets();
        let mut infos = Vec::with_capacity(2);
        for (i, (name, ns)) in [(&a_name, a_ns), (&b_name, b_ns)].into_iter().enumerate() {
            if self.addresses {
                link::add_address(name, ns, IpAddr::V4(v4[i]), IPV4_PREFIX)
                    .unwrap_or_else(|e| fail("adding the IPv4 address", &e));
                link::add_address(name, ns, IpAddr::V6(v6[i]), IPV6_PREFIX)
                    .unwrap_or_else(|e| fail("adding the IPv6 address", &e));
            }
            if self.tx_checksum_off {
                link::disable_tx_checksum(name, ns)
                    .unwrap_or_else(|e| fail("disabling tx checksum offload", &e));
            }
            link::set_up(name, ns).unwrap_or_else(|e| fail("setting the link up", &e));
            let info = link::info(name, ns).unwrap_or_else(|e| fail("reading the link", &e));
            infos.push(VethEndInfo {
                name: name.clone(),
                netns: ns.map(|ns| ns.name().to_owned()),
                ifindex: info.index,
                mac: info
                    .mac
                    .unwrap_or_else(|| panic!("test veth {name}: the kernel reported no MAC")),
                ipv4: self.addresses.then_some(v4[i]),
                ipv6: self.addresses.then_some(v6[i]),
            });
        }
        let b = infos.pop().expect("two ends");
        let a = infos.pop().expect("two ends");
        TestVeth { a, b, veth }
    }
}

impl TestVeth {
    /// A builder: both ends in the host namespace, with addresses, offloads untouched.
    pub fn builder<'a>() -> TestVethBuilder<'a> {
        TestVethBuilder {
            a_ns: None,
            b_ns: None,
            roles: ("a".to_owned(), "b".to_owned()),
            addresses: true,
            tx_checksum_off: false,
        }
    }

    /// A pair joining `a` and `b`, with IPv4 and IPv6 addresses, both ends up.
    pub fn between(a: &TestNetns, b: &TestNetns) -> TestVeth {
        Self::builder().a_netns(a).b_netns(b).create()
    }

    /// End A.
    pub fn a(&self) -> &VethEndInfo {
        &self.a
    }

    /// End B.
    pub fn b(&self) -> &VethEndInfo {
        &self.b
    }

    /// The underlying guard.
    pub fn veth(&self) -> &Veth {
        &self.veth
    }
}

// ---- cgroups -------------------------------------------------------------------------------

/// A cgroup `shdt<tag>-<role>` in the host's layout (hybrid v1+v2 or pure v2); on Drop the
/// processes inside are SIGKILLed and the directories removed.
#[derive(Debug)]
pub struct TestCgroup {
    group: Cgroup,
}

impl TestCgroup {
    /// Creates the group. Panics with the reason when that fails.
    pub fn new(role: &str) -> TestCgroup {
        require_privileges();
        let name = unique_name(role);
        match Cgroup::create(&name) {
            Ok(group) => TestCgroup { group },
            Err(e) => panic!("creating test cgroup {name:?} failed: {}", chain(&e)),
        }
    }

    /// The wrapped group.
    pub fn cgroup(&self) -> &Cgroup {
        &self.group
    }
}

impl Deref for TestCgroup {
    type Target = Cgroup;

    fn deref(&self) -> &Cgroup {
        &self.group
    }
}

// ---- scratch directories ------------------------------------------------------------------

/// A directory `$TMPDIR/shdt<tag>-<role>`, removed with its contents on Drop.
#[derive(Debug)]
pub struct TestDir {
    path: PathBuf,
}

impl TestDir {
    /// Creates the directory. Panics with the reason when that fails.
    pub fn new(role: &str) -> TestDir {
        let path = std::env::temp_dir().join(unique_name(role));
        if let Err(e) = fs::create_dir(&path) {
            panic!("creating test directory {} failed: {e}", path.display());
        }
        TestDir { path }
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

// ---- processes -----------------------------------------------------------------------------

/// Spawns `command` inside `netns` and/or `cgroup`; the guard SIGKILLs and reaps it on Drop.
/// Panics with the reason when the spawn fails.
pub fn spawn_in(
    netns: Option<&TestNetns>,
    cgroup: Option<&TestCgroup>,
    command: Command,
) -> ChildGuard {
    let program = command.get_program().to_string_lossy().into_owned();
    match process::spawn(
        command,
        netns.map(TestNetns::netns),
        cgroup.map(TestCgroup::cgroup),
    ) {
        Ok(child) => child,
        Err(e) => panic!("spawning {program:?} failed: {}", chain(&e)),
    }
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        if Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `error: cause: cause ...` on one line (the agent's own rendering).
pub use shadow_agent::error::chain;

// ---- leftovers -----------------------------------------------------------------------------

/// A `shdt*` object found on the host.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Leftover {
    /// `/run/netns/NAME`.
    Netns(String),
    /// A link in the host network namespace.
    Link(String),
    /// A cgroup directory (any hierarchy).
    Cgroup(PathBuf),
    /// A [`TestDir`] in the temporary directory.
    TempDir(PathBuf),
}

impl fmt::Display for Leftover {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Leftover::Netns(name) => write!(f, "netns {name}"),
            Leftover::Link(name) => write!(f, "link {name}"),
            Leftover::Cgroup(path) => write!(f, "cgroup {}", path.display()),
            Leftover::TempDir(path) => write!(f, "dir {}", path.display()),
        }
    }
}

/// What [`sweep`] did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct SweepReport {
    pub removed: Vec<Leftover>,
    /// Objects that could not be removed, with the reason.
    pub failed: Vec<(Leftover, String)>,
}

fn check_prefix(prefix: &str) {
    assert!(
        prefix.starts_with(PREFIX),
        "sweep/leftovers only handle names starting with {PREFIX:?}, not {prefix:?}"
    );
}

/// Directories of every mounted cgroup hierarchy under `/sys/fs/cgroup` (all v1 controllers,
/// also ones the harness never uses, and the cgroup2 one), or the root itself for pure v2.
fn hierarchy_roots() -> Vec<PathBuf> {
    let root = Path::new(cgroup::DEFAULT_ROOT);
    if root.join("cgroup.procs").is_file() {
        return vec![root.to_owned()];
    }
    let mut dirs: Vec<PathBuf> = match fs::read_dir(root) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            // Skip symlinks to co-mounted hierarchies (cpu -> cpu,cpuacct): seen once.
            .filter(|p| p.is_dir() && !p.is_symlink() && p.join("cgroup.procs").is_file())
            .collect(),
        Err(_) => Vec::new(),
    };
    dirs.sort();
    dirs
}

/// Cgroup directories named `prefix*` anywhere in `dir` (not below a match).
fn find_cgroup_dirs(dir: &Path, prefix: &str, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.filter_map(Result::ok) {
        let Ok(file_type) = entry.file_type() else {
            continue;
        };
        if !file_type.is_dir() {
            continue;
        }
        let path = entry.path();
        if entry.file_name().to_string_lossy().starts_with(prefix) {
            out.push(path);
        } else {
            find_cgroup_dirs(&path, prefix, out);
        }
    }
}

/// Lists every object whose name starts with `prefix` (which must start with `shdt`).
pub fn leftovers_with_prefix(prefix: &str) -> Vec<Leftover> {
    check_prefix(prefix);
    let mut found = Vec::new();
    for root in hierarchy_roots() {
        let mut dirs = Vec::new();
        find_cgroup_dirs(&root, prefix, &mut dirs);
        found.extend(dirs.into_iter().map(Leftover::Cgroup));
    }
    if let Ok(names) = netns::list() {
        found.extend(
            names
                .into_iter()
                .filter(|n| n.starts_with(prefix))
                .map(Leftover::Netns),
        );
    }
    if let Ok(links) = link::list(None) {
        found.extend(
            links
                .into_iter()
                .filter(|l| l.name.starts_with(prefix))
                .map(|l| Leftover::Link(l.name)),
        );
    }
    if let Ok(entries) = fs::read_dir(std::env::temp_dir()) {
        found.extend(
            entries
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| Leftover::TempDir(e.path())),
        );
    }
    found.sort();
    found
}

/// Every `shdt*` object on the host, as `netns NAME`, `link NAME`, `cgroup PATH` and
/// `dir PATH` (scratch directories in the temporary directory) lines.
/// Removes nothing.
pub fn leftovers() -> Vec<String> {
    leftovers_with_prefix(PREFIX)
        .iter()
        .map(ToString::to_string)
        .collect()
}

/// Removes every object whose name starts with `prefix` (which must start with `shdt`):
/// first the cgroups (killing what runs inside), then the namespaces, then host links.
///
/// Never call this while other tests using the same prefix run: it removes their objects.
pub fn sweep_with_prefix(prefix: &str) -> SweepReport {
    check_prefix(prefix);
    let mut report = SweepReport::default();
    let mut found = leftovers_with_prefix(prefix);
    // Deepest cgroup paths first is not needed (remove_tree recurses), but process cgroups
    // before namespaces so nothing keeps a namespace busy.
    found.sort_by_key(|l| match l {
        Leftover::Cgroup(_) => 0,
        Leftover::Netns(_) => 1,
        Leftover::Link(_) => 2,
        Leftover::TempDir(_) => 3,
    });
    for item in found {
        let result = match &item {
            Leftover::Cgroup(path) => {
                cgroup::remove_tree(path, cgroup::KILL_TIMEOUT).map_err(|e| chain(&e))
            }
            Leftover::Netns(name) => match netns::delete(name) {
                Err(netns::NetnsError::NotFound { .. }) => Ok(()),
                other => other.map_err(|e| chain(&e)),
            },
            // Deleting one veth end removes its peer, which may be next in the list.
            Leftover::Link(name) => match link::delete(name, None) {
                Err(link::LinkError::NotFound { .. }) => Ok(()),
                other => other.map_err(|e| chain(&e)),
            },
            Leftover::TempDir(path) => fs::remove_dir_all(path).map_err(|e| e.to_string()),
        };
        match result {
            Ok(()) => report.removed.push(item),
            Err(reason) => report.failed.push((item, reason)),
        }
    }
    report
}

/// Removes the `shdt*` leftovers of killed runs. Run it before a test suite, never during one.
pub fn sweep() -> SweepReport {
    sweep_with_prefix(PREFIX)
}

/// Host cgroup layout, for tests that check per-layout behaviour. Panics if unsupported.
pub fn host_cgroup_layout() -> CgroupLayout {
    match CgroupRoot::host() {
        Ok(root) => root.layout().clone(),
        Err(e) => panic!("unsupported host cgroup layout: {}", chain(&e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    #[test]
    fn names_are_prefixed_unique_and_fit_ifnamsiz() {
        let mut seen = HashSet::new();
        for _ in 0..2000 {
            let name = unique_name("p0");
            assert!(name.starts_with(PREFIX), "{name}");
            assert_eq!(name.len(), PREFIX.len() + TAG_LEN + 3, "{name}");
            assert!(name.len() <= link::MAX_IFNAME_LEN, "{name}");
            link::validate_ifname(&name).unwrap();
            assert!(seen.insert(name));
        }
        assert_eq!(unique_name("").len(), PREFIX.len() + TAG_LEN);
    }

    #[test]
    fn subnets_stay_in_test_ranges() {
        for _ in 0..1000 {
            let (v4, v6) = test_subnets();
            for a in v4 {
                let o = a.octets();
                assert!(o[0] == 198 && (o[1] == 18 || o[1] == 19), "{a}");
            }
            assert_ne!(v4[0], v4[1]);
            // Same /30.
            assert_eq!(u32::from(v4[0]) >> 2, u32::from(v4[1]) >> 2);
            for a in v6 {
                assert_eq!(a.octets()[0], 0xfd, "{a}");
            }
            assert_eq!(u128::from(v6[0]) >> 64, u128::from(v6[1]) >> 64);
        }
    }

    #[test]
    #[should_panic(expected = "only handle names starting with")]
    fn sweep_refuses_foreign_prefixes() {
        let _ = leftovers_with_prefix("eth");
    }
}
