//! The mirror tests' shared topology:
//!
//! ```text
//! client ns  ──veth──  primary ns (mirror on the primary end)  ──veth──  shadow ns
//!   a                    b        pm                                       sh (= b's addresses)
//! ```
#![allow(dead_code)]

use std::{
    io::ErrorKind,
    net::{IpAddr, SocketAddr, UdpSocket},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use shadow_agent::{
    mirror::{Cidr, Mirror, MirrorOptions, MirrorSpec, Ports, Proto, Rule},
    sys::link,
};
use shadow_tests::harness::{chain, TestNetns, TestVeth, IPV4_PREFIX, IPV6_PREFIX};

pub struct World {
    pub client: TestNetns,
    pub primary: TestNetns,
    pub shadow: TestNetns,
    /// a: client end, b: primary's interface.
    pub front: TestVeth,
    /// a: primary's shadow interface, b: the shadow's end (holds the primary's addresses).
    pub back: TestVeth,
}

impl World {
    pub fn new() -> World {
        let client = TestNetns::new("c");
        let primary = TestNetns::new("p");
        let shadow = TestNetns::new("s");
        let front = TestVeth::builder()
            .a_netns(&client)
            .b_netns(&primary)
            .roles("cl", "pr")
            .create();
        let back = TestVeth::builder()
            .a_netns(&primary)
            .b_netns(&shadow)
            .roles("pm", "sh")
            .without_addresses()
            .create();
        let sh = back.b().name.clone();
        for (addr, len) in [
            (IpAddr::V4(front.b().ipv4.expect("ipv4")), IPV4_PREFIX),
            (IpAddr::V6(front.b().ipv6.expect("ipv6")), IPV6_PREFIX),
        ] {
            link::add_address(&sh, Some(shadow.netns()), addr, len)
                .unwrap_or_else(|e| panic!("shadow address {addr}: {}", chain(&e)));
        }
        World {
            client,
            primary,
            shadow,
            front,
            back,
        }
    }

    pub fn primary_addr(&self, v6: bool) -> IpAddr {
        if v6 {
            IpAddr::V6(self.front.b().ipv6.expect("ipv6"))
        } else {
            IpAddr::V4(self.front.b().ipv4.expect("ipv4"))
        }
    }

    pub fn attach(&self, rules: Vec<Rule>) -> Mirror {
        let spec = MirrorSpec {
            interface: self.front.b().name.clone(),
            address: None,
            direction: Default::default(),
            shadow_interface: self.back.a().name.clone(),
            shadow_mac: self.back.b().mac.octets(),
            rules,
            xdp: true,
            options: MirrorOptions::default(),
        };
        self.primary
            .run(move || Mirror::attach(spec))
            .unwrap_or_else(|e| panic!("attaching the mirror: {}", chain(&e)))
    }

    /// Packets received by the shadow's end.
    pub fn shadow_rx(&self) -> u64 {
        link::rx_packets(&self.back.b().name, Some(self.shadow.netns()))
            .unwrap_or_else(|e| panic!("reading the shadow's rx counter: {}", chain(&e)))
            .expect("shadow device in /proc/net/dev")
    }
}

pub fn rule(addr: IpAddr, proto: Proto, ports: Ports) -> Rule {
    Rule {
        dst: Cidr {
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
        },
        ports,
        proto: Some(proto),
    }
}

pub fn bind(ns: &TestNetns, addr: SocketAddr) -> UdpSocket {
    let s = ns
        .run(move || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("binding {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .expect("timeout");
    // Room for every datagram a test sends before draining (the default buffer holds ~256
    // small ones); FORCE because it is above rmem_max.
    let size: libc::c_int = 16 << 20;
    // SAFETY: valid socket fd and option buffer of the stated length.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUFFORCE,
            (&size as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RCVBUFFORCE: {}", std::io::Error::last_os_error());
    s
}

/// Everything waiting on `s`, until it stays quiet for the read timeout.
pub fn drain(s: &UdpSocket) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv(&mut buf) {
            Ok(n) => out.push(buf[..n].to_vec()),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return out
            }
            Err(e) => panic!("recv: {e}"),
        }
    }
}

// ---------------------------------------------------------------------------------------
// AF_PACKET sockets

/// An AF_PACKET socket bound to one interface of a namespace: captures every frame crossing
/// it (both directions) and can inject frames.
pub struct Packet {
    fd: OwnedFd,
    ifindex: i32,
}

impl Packet {
    pub fn open(ns: &TestNetns, ifname: &str) -> Packet {
        let ifname = ifname.to_string();
        ns.run(move || {
            let proto = (libc::ETH_P_ALL as u16).to_be();
            // SAFETY: plain socket(2).
            let fd = unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, proto as i32) };
            assert!(fd >= 0, "AF_PACKET: {}", std::io::Error::last_os_error());
            // SAFETY: fd was just returned by socket(2) and is owned here only.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let ifindex = nix::net::if_::if_nametoindex(ifname.as_str()).expect("ifindex") as i32;
            // SAFETY: zeroed sockaddr_ll is valid; fields set below.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            sll.sll_family = libc::AF_PACKET as u16;
            sll.sll_protocol = proto;
            sll.sll_ifindex = ifindex;
            // SAFETY: valid fd and sockaddr of the stated size.
            let rc = unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    (&sll as *const libc::sockaddr_ll).cast(),
                    std::mem::size_of::<libc::sockaddr_ll>() as u32,
                )
            };
            assert_eq!(rc, 0, "bind: {}", std::io::Error::last_os_error());
            let size: libc::c_int = 32 << 20;
            let tv = libc::timeval {
                tv_sec: 0,
                tv_usec: 300_000,
            };
            // SAFETY: valid fd and option buffers of the stated sizes.
            unsafe {
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVBUFFORCE,
                    (&size as *const libc::c_int).cast(),
                    4,
                );
                libc::setsockopt(
                    fd.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_RCVTIMEO,
                    (&tv as *const libc::timeval).cast(),
                    std::mem::size_of::<libc::timeval>() as u32,
                );
            }
            Packet { fd, ifindex }
        })
    }

    pub fn send(&self, frame: &[u8]) {
        // SAFETY: zeroed sockaddr_ll is valid; fields set below.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_ifindex = self.ifindex;
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&frame[..6]);
        // SAFETY: valid fd, buffer and sockaddr.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&sll as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        assert_eq!(
            n,
            frame.len() as isize,
            "{}",
            std::io::Error::last_os_error()
        );
    }

    /// Frames the interface received (not those it sent), until quiet for the timeout.
    pub fn frames_in(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: zeroed sockaddr_ll is valid as an output buffer.
            let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid fd, buffers and lengths.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    (&mut sll as *mut libc::sockaddr_ll).cast(),
                    &mut len,
                )
            };
            if n < 0 {
                return out;
            }
            if sll.sll_pkttype != libc::PACKET_OUTGOING {
                out.push(buf[..n as usize].to_vec());
            }
        }
    }

    /// Every frame received since opening, until quiet for the timeout.
    pub fn frames(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut buf = vec![0u8; 70_000];
        loop {
            // SAFETY: valid fd and buffer.
            let n =
                unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                return out;
            }
            out.push(buf[..n as usize].to_vec());
        }
    }
}
