//! Network links through rtnetlink: veth pairs, link state, addresses, MACs, and the tx
//! checksum offload switch (through the `SIOCETHTOOL` ioctl, no `ethtool` binary).
//!
//! Every function takes the interface name and the namespace it lives in (`None`: the calling
//! thread's namespace). Each call runs on a short-lived helper thread (inside the namespace
//! when one is given) with a current-thread tokio runtime, so the API is synchronous, may be
//! called from any thread (also from inside an async runtime), and never moves the caller's
//! thread into another namespace.

use std::fmt;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::str::FromStr;

use futures_util::stream::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags};
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkFlags, LinkMessage};
use rtnetlink::{Handle, LinkUnspec, LinkVeth};

use super::netns::{run_in_fd, NetNs, NetnsError};

/// Longest interface name Linux accepts (IFNAMSIZ - 1).
pub const MAX_IFNAME_LEN: usize = 15;

/// Name given in errors to the calling thread's namespace.
const CURRENT_NS: &str = "<current>";

/// Why an interface name is rejected (mirrors the kernel's `dev_valid_name`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IfNameProblem {
    /// The name is empty.
    Empty,
    /// The name is longer than [`MAX_IFNAME_LEN`] bytes.
    TooLong { len: usize },
    /// `.` and `..` are not allowed.
    Reserved,
    /// The name contains `/`, `:`, whitespace or a NUL byte.
    BadChar { ch: char },
}

impl fmt::Display for IfNameProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("it is empty"),
            Self::TooLong { len } => write!(
                f,
                "it is {len} bytes long; Linux allows at most {MAX_IFNAME_LEN} (IFNAMSIZ - 1)"
            ),
            Self::Reserved => f.write_str("'.' and '..' are reserved"),
            Self::BadChar { ch } => write!(f, "it contains the forbidden character {ch:?}"),
        }
    }
}

/// Errors of this module. `netns` is the namespace's name (`<current>` for the caller's).
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The interface name is invalid.
    #[error("invalid interface name {name:?}: {problem}")]
    InvalidName {
        name: String,
        problem: IfNameProblem,
    },

    /// No interface of that name in the namespace.
    #[error("interface {name:?} not found in network namespace {netns:?}")]
    NotFound { name: String, netns: String },

    /// An interface of that name already exists in the namespace.
    #[error("{op}: interface {name:?} already exists in network namespace {netns:?}")]
    AlreadyExists {
        op: &'static str,
        name: String,
        netns: String,
    },

    /// The prefix length does not fit the address family.
    #[error("invalid prefix length /{prefix_len} for address {addr} on interface {name:?}")]
    InvalidPrefix {
        name: String,
        addr: IpAddr,
        prefix_len: u8,
    },

    /// The kernel did not return a usable MAC address for the interface.
    #[error("interface {name:?} in network namespace {netns:?} has no Ethernet address")]
    NoMac { name: String, netns: String },

    /// A netlink request failed.
    #[error("{op} for interface {name:?} in network namespace {netns:?} failed")]
    Netlink {
        op: &'static str,
        name: String,
        netns: String,
        #[source]
        source: Box<rtnetlink::Error>,
    },

    /// A system call (socket, ioctl, runtime set-up) failed.
    #[error("{op} for interface {name:?} in network namespace {netns:?} failed")]
    Io {
        op: &'static str,
        name: String,
        netns: String,
        #[source]
        source: io::Error,
    },

    /// Entering the namespace (or starting the helper thread) failed.
    #[error("{op} for interface {name:?}: entering its network namespace failed")]
    Netns {
        op: &'static str,
        name: String,
        #[source]
        source: Box<NetnsError>,
    },
}

impl LinkError {
    /// The errno behind this error, when there is one.
    pub fn raw_os_error(&self) -> Option<i32> {
        match self {
            Self::Netlink { source, .. } => match source.as_ref() {
                rtnetlink::Error::NetlinkError(msg) => Some(msg.raw_code().abs()),
                _ => None,
            },
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// Checks an interface name the way the kernel does (`dev_valid_name`).
pub fn validate_ifname(name: &str) -> Result<()> {
    let problem = if name.is_empty() {
        Some(IfNameProblem::Empty)
    } else if name.len() > MAX_IFNAME_LEN {
        Some(IfNameProblem::TooLong { len: name.len() })
    } else if name == "." || name == ".." {
        Some(IfNameProblem::Reserved)
    } else {
        name.chars()
            .find(|c| *c == '/' || *c == ':' || *c == '\0' || c.is_whitespace())
            .map(|ch| IfNameProblem::BadChar { ch })
    };
    match problem {
        Some(problem) => Err(LinkError::InvalidName {
            name: name.to_owned(),
            problem,
        }),
        None => Ok(()),
    }
}

/// An Ethernet (MAC) address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The six bytes.
    pub fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// A locally administered unicast address (bit 1 of the first byte set, bit 0 clear).
    pub fn is_local_unicast(&self) -> bool {
        self.0[0] & 0b11 == 0b10
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

/// The string is not six `:`-separated hex bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MAC address {input:?} (expected six ':'-separated hex bytes)")]
pub struct ParseMacError {
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        let err = || ParseMacError {
            input: s.to_owned(),
        };
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.is_empty() || part.len() > 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl From<[u8; 6]> for MacAddr {
    fn from(b: [u8; 6]) -> Self {
        MacAddr(b)
    }
}

/// What [`info`] reports about an interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub name: String,
    pub index: u32,
    /// `None` for links without a 6-byte hardware address.
    pub mac: Option<MacAddr>,
    /// IFF_UP (administratively up).
    pub up: bool,
    /// IFF_LOWER_UP (carrier).
    pub lower_up: bool,
    pub mtu: Option<u32>,
}

/// Context of one operation, used to build errors.
struct Ctx<'a> {
    op: &'static str,
    name: &'a str,
    netns: Option<&'a NetNs>,
}

impl Ctx<'_> {
    fn ns_name(&self) -> String {
        self.netns.map_or(CURRENT_NS, |ns| ns.name()).to_owned()
    }

    fn netlink(&self, source: rtnetlink::Error) -> LinkError {
        if let rtnetlink::Error::NetlinkError(msg) = &source {
            match msg.raw_code().abs() {
                libc::ENODEV => {
                    return LinkError::NotFound {
                        name: self.name.to_owned(),
                        netns: self.ns_name(),
                    }
                }
                libc::EEXIST => {
                    return LinkError::AlreadyExists {
                        op: self.op,
                        name: self.name.to_owned(),
                        netns: self.ns_name(),
                    }
                }
                _ => {}
            }
        }
        LinkError::Netlink {
            op: self.op,
            name: self.name.to_owned(),
            netns: self.ns_name(),
            source: Box::new(source),
        }
    }

    fn io(&self, source: io::Error) -> LinkError {
        if source.raw_os_error() == Some(libc::ENODEV) {
            return LinkError::NotFound {
                name: self.name.to_owned(),
                netns: self.ns_name(),
            };
        }
        LinkError::Io {
            op: self.op,
            name: self.name.to_owned(),
            netns: self.ns_name(),
            source,
        }
    }

    fn not_found(&self) -> LinkError {
        LinkError::NotFound {
            name: self.name.to_owned(),
            netns: self.ns_name(),
        }
    }

    /// Runs `f` on a fresh thread in the context's namespace (or the caller's).
    fn run<T: Send>(&self, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
        match self.netns {
            Some(ns) => run_in_fd(ns.name(), ns.fd(), f).map_err(|e| LinkError::Netns {
                op: self.op,
                name: self.name.to_owned(),
                source: Box::new(e),
            })?,
            // A new thread inherits the network namespace of the thread that spawns it.
            None => std::thread::scope(|scope| {
                let handle = std::thread::Builder::new()
                    .name("netlink".to_owned())
                    .spawn_scoped(scope, f)
                    .map_err(|source| LinkError::Io {
                        op: self.op,
                        name: self.name.to_owned(),
                        netns: self.ns_name(),
                        source,
                    })?;
                handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            }),
        }
    }

    /// Runs the async netlink job `f` with a fresh connection in the context's namespace.
    fn netlink_job<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send,
        F: FnOnce(Handle) -> Fut + Send,
        Fut: Future<Output = Result<T>>,
    {
        self.run(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()
                .map_err(|e| self.io(e))?;
            runtime.block_on(async {
                let (connection, handle, _messages) =
                    rtnetlink::new_connection().map_err(|e| self.io(e))?;
                let task = tokio::spawn(connection);
                let result = f(handle).await;
                task.abort();
                result
            })
        })
    }
}

async fn find_link(ctx: &Ctx<'_>, handle: &Handle) -> Result<LinkMessage> {
    let stream = handle.link().get().match_name(ctx.name).execute();
    let mut stream = std::pin::pin!(stream);
    match stream.try_next().await {
        Ok(Some(msg)) => Ok(msg),
        Ok(None) => Err(ctx.not_found()),
        Err(e) => Err(ctx.netlink(e)),
    }
}

fn link_info_from(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        name: String::new(),
        index: msg.header.index,
        mac: None,
        up: msg.header.flags.contains(LinkFlags::Up),
        lower_up: msg.header.flags.contains(LinkFlags::LowerUp),
        mtu: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(name) => info.name = name.clone(),
            LinkAttribute::Address(bytes) => {
                info.mac = <[u8; 6]>::try_from(bytes.as_slice()).ok().map(MacAddr)
            }
            LinkAttribute::Mtu(mtu) => info.mtu = Some(*mtu),
            _ => {}
        }
    }
    info
}

/// Index, MAC, state and MTU of `name` in `netns`.
pub fn info(name: &str, netns: Option<&NetNs>) -> Result<LinkInfo> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "get link",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        let msg = find_link(ctx, &handle).await?;
        Ok(link_info_from(&msg))
    })
}

/// Whether `name` exists in `netns`.
pub fn exists(name: &str, netns: Option<&NetNs>) -> Result<bool> {
    match info(name, netns) {
        Ok(_) => Ok(true),
        Err(LinkError::NotFound { .. }) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Interface index of `name` in `netns`.
pub fn ifindex(name: &str, netns: Option<&NetNs>) -> Result<u32> {
    info(name, netns).map(|i| i.index)
}

/// MAC address of `name` in `netns`.
pub fn mac(name: &str, netns: Option<&NetNs>) -> Result<MacAddr> {
    let info = info(name, netns)?;
    info.mac.ok_or_else(|| LinkError::NoMac {
        name: name.to_owned(),
        netns: netns.map_or(CURRENT_NS, |ns| ns.name()).to_owned(),
    })
}

/// All interfaces in `netns`, in index order.
pub fn list(netns: Option<&NetNs>) -> Result<Vec<LinkInfo>> {
    let ctx = Ctx {
        op: "list links",
        name: "*",
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        let stream = handle.link().get().execute();
        let mut stream = std::pin::pin!(stream);
        let mut out = Vec::new();
        while let Some(msg) = stream.try_next().await.map_err(|e| ctx.netlink(e))? {
            out.push(link_info_from(&msg));
        }
        out.sort_by_key(|l| l.index);
        Ok(out)
    })
}

fn set_link(op: &'static str, name: &str, netns: Option<&NetNs>, msg: LinkMessage) -> Result<()> {
    validate_ifname(name)?;
    let ctx = Ctx { op, name, netns };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        handle
            .link()
            .set(msg)
            .execute()
            .await
            .map_err(|e| ctx.netlink(e))
    })
}

/// `ip link set NAME up`.
pub fn set_up(name: &str, netns: Option<&NetNs>) -> Result<()> {
    set_link(
        "set link up",
        name,
        netns,
        LinkUnspec::new_with_name(name).up().build(),
    )
}

/// What [`remove_clsact_if_empty`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClsactRemoval {
    /// The qdisc had no filter left on either hook and is gone now.
    Removed,
    /// Filters remain (another tool's, or programs still attached): left in place.
    InUse { filters: usize },
    /// The interface has no clsact qdisc.
    Absent,
}

/// `tc qdisc del dev NAME clsact`, but only when no filter is left on its ingress or egress
/// hook, so another tool's filters are never taken with it.
pub fn remove_clsact_if_empty(name: &str, netns: Option<&NetNs>) -> Result<ClsactRemoval> {
    use rtnetlink::packet_route::tc::{TcAttribute, TcHandle};
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "remove clsact qdisc",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        let index = find_link(ctx, &handle).await?.header.index as i32;
        let qdiscs: Vec<_> = handle
            .qdisc()
            .get()
            .index(index)
            .execute()
            .try_collect()
            .await
            .map_err(|e| ctx.netlink(e))?;
        let clsact = qdiscs.iter().any(|q| {
            q.header.parent == TcHandle::CLSACT
                && q.attributes
                    .iter()
                    .any(|a| matches!(a, TcAttribute::Kind(k) if k == "clsact"))
        });
        if !clsact {
            return Ok(ClsactRemoval::Absent);
        }
        let mut filters = 0;
        for ingress in [true, false] {
            let get = handle.traffic_filter(index).get();
            let get = if ingress { get.ingress() } else { get.egress() };
            let found: Vec<_> = get
                .execute()
                .try_collect()
                .await
                .map_err(|e| ctx.netlink(e))?;
            filters += found.len();
        }
        if filters > 0 {
            return Ok(ClsactRemoval::InUse { filters });
        }
        let mut del = handle.qdisc().del(index);
        del.message_mut().header.parent = TcHandle::CLSACT;
        del.message_mut().header.handle = TcHandle {
            major: 0xffff,
            minor: 0,
        };
        del.execute().await.map_err(|e| ctx.netlink(e))?;
        Ok(ClsactRemoval::Removed)
    })
}

/// `ip link set NAME down`.
pub fn set_down(name: &str, netns: Option<&NetNs>) -> Result<()> {
    set_link(
        "set link down",
        name,
        netns,
        LinkUnspec::new_with_name(name).down().build(),
    )
}

/// `ip link set NAME address MAC`.
pub fn set_mac(name: &str, netns: Option<&NetNs>, mac: MacAddr) -> Result<()> {
    set_link(
        "set MAC address",
        name,
        netns,
        LinkUnspec::new_with_name(name)
            .address(mac.0.to_vec())
            .build(),
    )
}

/// `ip link set NAME mtu MTU`.
pub fn set_mtu(name: &str, netns: Option<&NetNs>, mtu: u32) -> Result<()> {
    set_link(
        "set MTU",
        name,
        netns,
        LinkUnspec::new_with_name(name).mtu(mtu).build(),
    )
}

/// `ip addr add ADDR/PREFIX dev NAME` (IPv6 addresses with `nodad`, usable at once).
pub fn add_address(name: &str, netns: Option<&NetNs>, addr: IpAddr, prefix_len: u8) -> Result<()> {
    validate_ifname(name)?;
    let max = if addr.is_ipv4() { 32 } else { 128 };
    if prefix_len > max {
        return Err(LinkError::InvalidPrefix {
            name: name.to_owned(),
            addr,
            prefix_len,
        });
    }
    let ctx = Ctx {
        op: "add address",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        let index = find_link(ctx, &handle).await?.header.index;
        let mut request = handle.address().add(index, addr, prefix_len);
        if addr.is_ipv6() {
            let msg = request.message_mut();
            msg.header.flags |= AddressHeaderFlags::Nodad;
            msg.attributes
                .push(AddressAttribute::Flags(AddressFlags::Nodad));
        }
        request.execute().await.map_err(|e| ctx.netlink(e))
    })
}

/// `ip neigh replace IP lladdr MAC dev NAME nud permanent`: a static neighbour entry.
pub fn set_neighbor(name: &str, netns: Option<&NetNs>, ip: IpAddr, mac: MacAddr) -> Result<()> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "set neighbour",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        let index = find_link(ctx, &handle).await?.header.index;
        handle
            .neighbours()
            .add(index, ip)
            .link_layer_address(&mac.octets())
            .state(rtnetlink::packet_route::neighbour::NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|e| ctx.netlink(e))
    })
}

/// `ip route add DEST/PREFIX [via GATEWAY] dev NAME` (IPv4). Without a gateway the route is
/// on-link (scope link).
pub fn add_route_v4(
    name: &str,
    netns: Option<&NetNs>,
    dest: std::net::Ipv4Addr,
    prefix_len: u8,
    gateway: Option<std::net::Ipv4Addr>,
) -> Result<()> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "add route",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        let index = find_link(ctx, &handle).await?.header.index;
        let mut b = rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
            .destination_prefix(dest, prefix_len)
            .output_interface(index);
        b = match gateway {
            Some(gw) => b.gateway(gw),
            None => b.scope(rtnetlink::packet_route::route::RouteScope::Link),
        };
        handle
            .route()
            .add(b.build())
            .execute()
            .await
            .map_err(|e| ctx.netlink(e))
    })
}

/// `ip route add default via GATEWAY dev NAME onlink` (IPv4 or IPv6): the gateway need not be
/// in any subnet of the interface.
pub fn add_default_route_onlink(name: &str, netns: Option<&NetNs>, gateway: IpAddr) -> Result<()> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "add default route",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        let index = find_link(ctx, &handle).await?.header.index;
        let msg = match gateway {
            IpAddr::V4(gw) => rtnetlink::RouteMessageBuilder::<std::net::Ipv4Addr>::new()
                .output_interface(index)
                .gateway(gw)
                .onlink()
                .build(),
            IpAddr::V6(gw) => rtnetlink::RouteMessageBuilder::<std::net::Ipv6Addr>::new()
                .output_interface(index)
                .gateway(gw)
                .onlink()
                .build(),
        };
        handle
            .route()
            .add(msg)
            .execute()
            .await
            .map_err(|e| ctx.netlink(e))
    })
}

/// Packets received by interface `name`, from `/proc/net/dev` as seen from `netns` (or the
/// caller's namespace). `None` when the interface is not listed.
pub fn rx_packets(name: &str, netns: Option<&NetNs>) -> Result<Option<u64>> {
    let ctx = Ctx {
        op: "read rx packets",
        name,
        netns,
    };
    let ctx = &ctx;
    let dev = name.to_owned();
    ctx.run(move || {
        let text = std::fs::read_to_string("/proc/thread-self/net/dev").map_err(|e| ctx.io(e))?;
        Ok(text.lines().find_map(|l| {
            let (n, rest) = l.split_once(':')?;
            (n.trim() == dev).then(|| rest.split_whitespace().nth(1)?.parse().ok())?
        }))
    })
}

/// `ip link del NAME` (for a veth end this removes the pair).
pub fn delete(name: &str, netns: Option<&NetNs>) -> Result<()> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "delete link",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        handle
            .link()
            .del_with_message(LinkUnspec::new_with_name(name).build())
            .execute()
            .await
            .map_err(|e| ctx.netlink(e))
    })
}

// --- tx checksum offload through the legacy ethtool ioctl ---------------------------------

const SIOCETHTOOL: libc::c_ulong = 0x8946;
const ETHTOOL_GTXCSUM: u32 = 0x16;
const ETHTOOL_STXCSUM: u32 = 0x17;

/// `struct ethtool_value`.
#[repr(C)]
struct EthtoolValue {
    cmd: u32,
    data: u32,
}

/// `struct ifreq` with the `ifr_data` member of its union (padded to the full 40 bytes).
#[repr(C)]
struct IfReqData {
    name: [libc::c_char; libc::IFNAMSIZ],
    data: *mut libc::c_void,
    _pad: [u8; 16],
}

fn ethtool_value(name: &str, cmd: u32, data: u32) -> io::Result<u32> {
    // SAFETY: plain socket(2) call; the result is checked before use.
    let raw = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `raw` is a fresh, valid descriptor that nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(raw) };
    let mut value = EthtoolValue { cmd, data };
    let mut req = IfReqData {
        name: [0; libc::IFNAMSIZ],
        data: (&mut value as *mut EthtoolValue).cast(),
        _pad: [0; 16],
    };
    // validate_ifname guarantees len <= 15, so the name stays NUL-terminated.
    for (dst, src) in req.name.iter_mut().zip(name.as_bytes()) {
        *dst = *src as libc::c_char;
    }
    // SAFETY: SIOCETHTOOL reads `req` (a correctly sized ifreq) and reads/writes `value`
    // through `req.data`; both outlive the call.
    let rc = unsafe { libc::ioctl(sock.as_raw_fd(), SIOCETHTOOL as _, &mut req) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value.data)
}

/// Turns tx checksum offload of `name` on or off (`ethtool -K NAME tx on|off`), via the
/// `ETHTOOL_STXCSUM` ioctl.
pub fn set_tx_checksum(name: &str, netns: Option<&NetNs>, enabled: bool) -> Result<()> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "set tx checksum offload",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.run(|| {
        ethtool_value(name, ETHTOOL_STXCSUM, u32::from(enabled))
            .map(drop)
            .map_err(|e| ctx.io(e))
    })
}

/// `ethtool -K NAME tx off`: the sender then computes checksums in software, so captured
/// packets carry valid checksums.
pub fn disable_tx_checksum(name: &str, netns: Option<&NetNs>) -> Result<()> {
    set_tx_checksum(name, netns, false)
}

/// Whether tx checksum offload of `name` is on (`ETHTOOL_GTXCSUM`).
pub fn tx_checksum(name: &str, netns: Option<&NetNs>) -> Result<bool> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "get tx checksum offload",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.run(|| {
        ethtool_value(name, ETHTOOL_GTXCSUM, 0)
            .map(|v| v != 0)
            .map_err(|e| ctx.io(e))
    })
}

// --- token bucket qdisc ---------------------------------------------------------------------

/// `tc qdisc replace dev NAME root tbf rate RATE burst BURST limit LIMIT` (rates and sizes in
/// bytes): packets sent out of `name` are paced to `rate`, queueing up to `limit` bytes. Used
/// by the mirror's hold loop, which needs a bounded pace and works with the qdiscs a minimal
/// kernel has (TBF, not netem/fq). rtnetlink has no TBF builder, so the `TCA_OPTIONS`
/// payload (`TCA_TBF_PARMS` = `struct tc_tbf_qopt`, `TCA_TBF_BURST`) is written here.
pub fn set_tbf(name: &str, netns: Option<&NetNs>, rate: u32, burst: u32, limit: u32) -> Result<()> {
    use futures_util::StreamExt as _;
    use rtnetlink::packet_core::{
        DefaultNla, NetlinkMessage, NLM_F_ACK, NLM_F_CREATE, NLM_F_REPLACE, NLM_F_REQUEST,
    };
    use rtnetlink::packet_route::tc::{TcAttribute, TcHandle, TcMessage};
    use rtnetlink::packet_route::RouteNetlinkMessage;
    const TCA_OPTIONS: u16 = 2;
    const TCA_TBF_PARMS: u16 = 1;
    const TCA_TBF_BURST: u16 = 6;
    const TC_LINKLAYER_ETHERNET: u8 = 1;
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "add tbf qdisc",
        name,
        netns,
    };
    let ctx = &ctx;
    // struct tc_ratespec { cell_log u8, linklayer u8, overhead u16, cell_align i16, mpu u16,
    // rate u32 }, twice (rate, peakrate = none), then limit, buffer, mtu (u32 each).
    let mut parms = Vec::with_capacity(36);
    parms.extend_from_slice(&[0, TC_LINKLAYER_ETHERNET, 0, 0, 0, 0, 0, 0]);
    parms.extend_from_slice(&rate.to_ne_bytes());
    parms.extend_from_slice(&[0u8; 12]);
    for v in [limit, 0, 0] {
        parms.extend_from_slice(&v.to_ne_bytes());
    }
    let mut opts = Vec::new();
    for (kind, value) in [
        (TCA_TBF_PARMS, parms),
        (TCA_TBF_BURST, burst.to_ne_bytes().to_vec()),
    ] {
        opts.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        opts.extend_from_slice(&kind.to_ne_bytes());
        opts.extend_from_slice(&value);
        while opts.len() % 4 != 0 {
            opts.push(0);
        }
    }
    ctx.netlink_job(|mut handle| async move {
        let link = find_link(ctx, &handle).await?;
        let mut msg = TcMessage::with_index(link.header.index as i32);
        msg.header.parent = TcHandle::ROOT;
        msg.header.handle = TcHandle { major: 1, minor: 0 };
        msg.attributes.push(TcAttribute::Kind("tbf".to_string()));
        msg.attributes
            .push(TcAttribute::Other(DefaultNla::new(TCA_OPTIONS, opts)));
        let mut req = NetlinkMessage::from(RouteNetlinkMessage::NewQueueDiscipline(msg));
        req.header.flags = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_REPLACE;
        let mut responses = handle.request(req).map_err(|e| ctx.netlink(e))?;
        while let Some(m) = responses.next().await {
            if let rtnetlink::packet_core::NetlinkPayload::Error(e) = m.payload {
                if e.code.is_some() {
                    return Err(ctx.netlink(rtnetlink::Error::NetlinkError(e)));
                }
            }
        }
        Ok(())
    })
}

// --- the interface towards an address ---------------------------------------------------

/// The interface traffic to an address leaves through ([`towards`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Towards {
    pub name: String,
    pub index: u32,
    /// The bridge the route points at, when the interface is one of its ports.
    pub bridge: Option<String>,
}

/// Why [`towards`] found no interface for an address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotTowards {
    #[error("no route leads to it")]
    NoRoute,
    #[error("it is an address of this host's own namespace, not one behind an interface")]
    Local,
    #[error("its route goes through the gateway {gateway} on {interface:?}: it is not on a link of this host")]
    Gateway { gateway: IpAddr, interface: String },
    #[error("its route is of type {kind} (only a unicast route through one interface names one)")]
    Unusable { kind: String },
    #[error("the bridge {bridge:?} has no neighbour entry for it yet (nothing on this host has talked to it)")]
    NoNeighbour { bridge: String },
    #[error("no port of the bridge {bridge:?} has learnt its MAC {mac} yet")]
    NoPort { bridge: String, mac: MacAddr },
    #[error("looking it up failed: {0}")]
    Lookup(String),
}

/// The interface in `netns` (or the caller's) that traffic to `addr` leaves through: the
/// output interface of the kernel's route for it (`ip route get ADDR`), which must be a
/// route straight onto a link (no gateway). When that interface is a bridge (a bridge CNI's
/// `cni0`, a host's `br0`), the port behind which `addr` sits: its MAC from the bridge's
/// neighbour entry for `addr`, then the port that MAC was learnt on (the bridge's
/// forwarding database, `bridge fdb`). Three netlink requests at most, on one connection.
pub fn towards(addr: IpAddr, netns: Option<&NetNs>) -> std::result::Result<Towards, NotTowards> {
    use rtnetlink::packet_route::{
        link::{InfoKind, LinkInfo as NlLinkInfo},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMessage, RouteType},
        AddressFamily,
    };
    let ctx = Ctx {
        op: "route lookup",
        name: "*",
        netns,
    };
    let ctx = &ctx;
    let lookup = |e: rtnetlink::Error| NotTowards::Lookup(e.to_string());
    let job = ctx.netlink_job(|handle| async move {
        let inner = async {
            let mut msg = RouteMessage::default();
            let (family, len) = match addr {
                IpAddr::V4(_) => (AddressFamily::Inet, 32),
                IpAddr::V6(_) => (AddressFamily::Inet6, 128),
            };
            msg.header.address_family = family;
            msg.header.destination_prefix_length = len;
            msg.attributes
                .push(RouteAttribute::Destination(RouteAddress::from(addr)));
            let stream = handle.route().get(msg).execute();
            let mut stream = std::pin::pin!(stream);
            let route = match stream.try_next().await {
                Ok(Some(r)) => r,
                Ok(None) => return Err(NotTowards::NoRoute),
                Err(rtnetlink::Error::NetlinkError(m))
                    if [
                        libc::ENETUNREACH,
                        libc::EHOSTUNREACH,
                        libc::EACCES,
                        libc::EINVAL,
                    ]
                    .contains(&m.raw_code().abs()) =>
                {
                    return Err(NotTowards::NoRoute)
                }
                Err(e) => return Err(lookup(e)),
            };
            match route.header.kind {
                RouteType::Unicast => {}
                RouteType::Local => return Err(NotTowards::Local),
                k => {
                    return Err(NotTowards::Unusable {
                        kind: format!("{k:?}").to_lowercase(),
                    })
                }
            }
            let mut oif = None;
            let mut gateway = None;
            for a in &route.attributes {
                match a {
                    RouteAttribute::Oif(i) => oif = Some(*i),
                    RouteAttribute::Gateway(RouteAddress::Inet(g)) => {
                        gateway = Some(IpAddr::V4(*g))
                    }
                    RouteAttribute::Gateway(RouteAddress::Inet6(g)) => {
                        gateway = Some(IpAddr::V6(*g))
                    }
                    RouteAttribute::MultiPath(_) => {
                        return Err(NotTowards::Unusable {
                            kind: "multipath".into(),
                        })
                    }
                    _ => {}
                }
            }
            let oif = oif.ok_or(NotTowards::NoRoute)?;
            let link = |index: u32| {
                let handle = handle.clone();
                async move {
                    let stream = handle.link().get().match_index(index).execute();
                    let mut stream = std::pin::pin!(stream);
                    match stream.try_next().await {
                        Ok(Some(m)) => Ok(m),
                        Ok(None) => Err(NotTowards::NoRoute),
                        Err(e) => Err(lookup(e)),
                    }
                }
            };
            let out = link(oif).await?;
            let name = link_info_from(&out).name;
            if let Some(gateway) = gateway {
                return Err(NotTowards::Gateway {
                    gateway,
                    interface: name,
                });
            }
            let is_bridge = out.attributes.iter().any(|a| {
                matches!(a, LinkAttribute::LinkInfo(infos)
                    if infos.iter().any(|i| matches!(i, NlLinkInfo::Kind(InfoKind::Bridge))))
            });
            if !is_bridge {
                return Ok(Towards {
                    name,
                    index: oif,
                    bridge: None,
                });
            }
            // The MAC `addr` answers from, on the bridge.
            let want = match addr {
                IpAddr::V4(a) => NeighbourAddress::Inet(a),
                IpAddr::V6(a) => NeighbourAddress::Inet6(a),
            };
            let stream = handle
                .neighbours()
                .get()
                .set_address_family(family)
                .execute();
            let mut stream = std::pin::pin!(stream);
            let mut mac = None;
            while let Some(n) = stream.try_next().await.map_err(lookup)? {
                let usable = !matches!(
                    n.header.state,
                    NeighbourState::Incomplete | NeighbourState::Failed | NeighbourState::None
                );
                if n.header.ifindex != oif || !usable {
                    continue;
                }
                let dst = n
                    .attributes
                    .iter()
                    .any(|a| matches!(a, NeighbourAttribute::Destination(d) if *d == want));
                let lladdr = n.attributes.iter().find_map(|a| match a {
                    NeighbourAttribute::LinkLayerAddress(b) => {
                        <[u8; 6]>::try_from(b.as_slice()).ok()
                    }
                    _ => None,
                });
                if let (true, Some(m)) = (dst, lladdr) {
                    mac = Some(MacAddr(m));
                }
            }
            let Some(mac) = mac else {
                return Err(NotTowards::NoNeighbour { bridge: name });
            };
            // The port that MAC was learnt on.
            let stream = handle
                .neighbours()
                .get()
                .set_address_family(AddressFamily::Bridge)
                .execute();
            let mut stream = std::pin::pin!(stream);
            let mut port = None;
            while let Some(n) = stream.try_next().await.map_err(lookup)? {
                let on_bridge = n
                    .attributes
                    .iter()
                    .any(|a| matches!(a, NeighbourAttribute::Controller(c) if *c == oif));
                let same = n.attributes.iter().any(
                    |a| matches!(a, NeighbourAttribute::LinkLayerAddress(b) if b[..] == mac.0[..]),
                );
                if on_bridge && same && n.header.ifindex != oif {
                    port = Some(n.header.ifindex);
                }
            }
            let Some(port) = port else {
                return Err(NotTowards::NoPort { bridge: name, mac });
            };
            let port_name = link_info_from(&link(port).await?).name;
            Ok(Towards {
                name: port_name,
                index: port,
                bridge: Some(name),
            })
        };
        Ok(inner.await)
    });
    match job {
        Ok(r) => r,
        Err(e) => Err(NotTowards::Lookup(crate::error::chain(&e))),
    }
}

/// `ip link add NAME type bridge` (up).
pub fn add_bridge(name: &str, netns: Option<&NetNs>) -> Result<()> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "add bridge",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        handle
            .link()
            .add(rtnetlink::LinkBridge::new(name).build())
            .execute()
            .await
            .map_err(|e| ctx.netlink(e))
    })
}

/// `ip link set NAME master BRIDGE`.
pub fn set_master(name: &str, bridge: &str, netns: Option<&NetNs>) -> Result<()> {
    validate_ifname(name)?;
    let ctx = Ctx {
        op: "set master",
        name,
        netns,
    };
    let ctx = &ctx;
    ctx.netlink_job(|handle| async move {
        let br = Ctx {
            op: "set master",
            name: bridge,
            netns,
        };
        let master = find_link(&br, &handle).await?.header.index;
        let index = find_link(ctx, &handle).await?.header.index;
        handle
            .link()
            .set(LinkUnspec::new_with_index(index).controller(master).build())
            .execute()
            .await
            .map_err(|e| ctx.netlink(e))
    })
}

// --- veth pairs ----------------------------------------------------------------------------

/// One end of a veth pair to create: its name and its namespace (`None`: the caller's).
#[derive(Debug, Clone, Copy)]
pub struct VethEnd<'a> {
    pub name: &'a str,
    pub netns: Option<&'a NetNs>,
}

impl<'a> VethEnd<'a> {
    /// An end in the calling thread's namespace.
    pub fn here(name: &'a str) -> Self {
        VethEnd { name, netns: None }
    }

    /// An end in `netns`.
    pub fn in_netns(name: &'a str, netns: &'a NetNs) -> Self {
        VethEnd {
            name,
            netns: Some(netns),
        }
    }
}

/// A veth pair; Drop deletes it (deleting one end removes both) unless
/// [`Veth::into_persistent`] was called.
///
/// It keeps a handle (fd) on each end's namespace, so Drop works from any thread and whatever
/// the order in which the namespaces' own guards are dropped.
#[derive(Debug)]
pub struct Veth {
    a: String,
    b: String,
    a_ns: NetNs,
    b_ns: NetNs,
    delete_on_drop: bool,
}

impl Veth {
    /// `ip link add A [netns X] type veth peer name B [netns Y]`. Both ends stay down.
    pub fn create(a: VethEnd<'_>, b: VethEnd<'_>) -> Result<Veth> {
        validate_ifname(a.name)?;
        validate_ifname(b.name)?;
        let op = "create veth pair";
        let ns_handle = |end: &VethEnd<'_>| -> Result<NetNs> {
            match end.netns {
                Some(ns) => ns.try_clone(),
                None => NetNs::current(),
            }
            .map_err(|e| LinkError::Netns {
                op,
                name: end.name.to_owned(),
                source: Box::new(e),
            })
        };
        let a_ns = ns_handle(&a)?;
        let b_ns = ns_handle(&b)?;
        let label = format!("{} (peer {})", a.name, b.name);
        let ctx = Ctx {
            op,
            name: &label,
            netns: None,
        };
        let (a_fd, b_fd) = (a_ns.as_raw_fd(), b_ns.as_raw_fd());
        let message = {
            let mut peer = LinkUnspec::new_with_name(b.name).build();
            peer.attributes.push(LinkAttribute::NetNsFd(b_fd));
            LinkVeth::new(a.name, b.name)
                .setns_by_fd(a_fd)
                .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
                .build()
        };
        let ctx = &ctx;
        ctx.netlink_job(|handle| async move {
            handle
                .link()
                .add(message)
                .execute()
                .await
                .map_err(|e| ctx.netlink(e))
        })?;
        Ok(Veth {
            a: a.name.to_owned(),
            b: b.name.to_owned(),
            a_ns,
            b_ns,
            delete_on_drop: true,
        })
    }

    /// Name of end A.
    pub fn a_name(&self) -> &str {
        &self.a
    }

    /// Name of end B.
    pub fn b_name(&self) -> &str {
        &self.b
    }

    /// Namespace of end A (a non-owning handle).
    pub fn a_netns(&self) -> &NetNs {
        &self.a_ns
    }

    /// Namespace of end B (a non-owning handle).
    pub fn b_netns(&self) -> &NetNs {
        &self.b_ns
    }

    /// Keeps the pair after the guard is gone; returns the two names.
    pub fn into_persistent(mut self) -> (String, String) {
        self.delete_on_drop = false;
        (std::mem::take(&mut self.a), std::mem::take(&mut self.b))
    }

    /// Deletes the pair now, reporting errors (Drop ignores them).
    pub fn delete(mut self) -> Result<()> {
        self.delete_on_drop = false;
        self.delete_pair()
    }

    fn delete_pair(&self) -> Result<()> {
        match delete(&self.a, Some(&self.a_ns)) {
            Err(LinkError::NotFound { .. }) => match delete(&self.b, Some(&self.b_ns)) {
                // Both gone already (e.g. the namespace holding them was destroyed).
                Err(LinkError::NotFound { .. }) => Ok(()),
                other => other,
            },
            other => other,
        }
    }
}

impl Drop for Veth {
    fn drop(&mut self) {
        if self.delete_on_drop {
            let _ = self.delete_pair();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ifname_limits() {
        assert!(validate_ifname("lo").is_ok());
        assert!(validate_ifname("shdt0123abcd-p0").is_ok()); // exactly 15 bytes
        let err = validate_ifname("shdt0123abcd-p01").unwrap_err();
        match &err {
            LinkError::InvalidName {
                name,
                problem: IfNameProblem::TooLong { len: 16 },
            } => assert_eq!(name, "shdt0123abcd-p01"),
            other => panic!("unexpected {other:?}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("shdt0123abcd-p01"), "{msg}");
        assert!(msg.contains("16 bytes"), "{msg}");
        assert!(msg.contains("15"), "{msg}");
    }

    #[test]
    fn ifname_characters() {
        for (bad, problem) in [
            ("", IfNameProblem::Empty),
            (".", IfNameProblem::Reserved),
            ("..", IfNameProblem::Reserved),
            ("a/b", IfNameProblem::BadChar { ch: '/' }),
            ("a:b", IfNameProblem::BadChar { ch: ':' }),
            ("a b", IfNameProblem::BadChar { ch: ' ' }),
            ("a\tb", IfNameProblem::BadChar { ch: '\t' }),
        ] {
            match validate_ifname(bad) {
                Err(LinkError::InvalidName { name, problem: p }) => {
                    assert_eq!(name, bad);
                    assert_eq!(p, problem, "{bad:?}");
                }
                other => panic!("{bad:?}: unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn multibyte_names_count_bytes() {
        // 8 chars but 16 bytes.
        let name = "éééééééé";
        assert!(matches!(
            validate_ifname(name),
            Err(LinkError::InvalidName {
                problem: IfNameProblem::TooLong { len: 16 },
                ..
            })
        ));
    }

    #[test]
    fn operations_reject_bad_names_before_any_syscall() {
        let long = "interface-name-too-long";
        for result in [
            set_up(long, None),
            set_down(long, None),
            delete(long, None),
            disable_tx_checksum(long, None),
            add_address(long, None, "198.18.0.1".parse().unwrap(), 24),
        ] {
            match result {
                Err(LinkError::InvalidName { name, .. }) => assert_eq!(name, long),
                other => panic!("unexpected {other:?}"),
            }
        }
        match Veth::create(VethEnd::here("ok0"), VethEnd::here(long)) {
            Err(LinkError::InvalidName { name, .. }) => assert_eq!(name, long),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn prefix_checked_per_family() {
        let err = add_address("ok0", None, "198.18.0.1".parse().unwrap(), 33).unwrap_err();
        assert!(matches!(
            err,
            LinkError::InvalidPrefix { prefix_len: 33, .. }
        ));
        let err = add_address("ok0", None, "fd00::1".parse().unwrap(), 129).unwrap_err();
        assert!(matches!(
            err,
            LinkError::InvalidPrefix {
                prefix_len: 129,
                ..
            }
        ));
    }

    #[test]
    fn mac_parse_and_display() {
        let mac: MacAddr = "02:fc:0a:00:00:01".parse().unwrap();
        assert_eq!(mac.0, [0x02, 0xfc, 0x0a, 0, 0, 1]);
        assert_eq!(mac.to_string(), "02:fc:0a:00:00:01");
        assert!(mac.is_local_unicast());
        for bad in [
            "",
            "02:fc:0a:00:00",
            "02:fc:0a:00:00:01:02",
            "02:fc:0a:00:00:zz",
            "002:fc:0a:00:00:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ifreq_layout_matches_kernel() {
        assert_eq!(std::mem::size_of::<IfReqData>(), 40);
        assert_eq!(std::mem::size_of::<EthtoolValue>(), 8);
    }
}
