//! A small mirror topology for the agent-level mirror tests: a client namespace sends UDP to
//! the node (where the agent attaches its mirror on `nc`), and the clones go out of `hs` to a
//! shadow namespace whose `ht` holds the node's address and the shadow MAC, where real
//! sockets receive them.
//!
//! ```text
//! client ns  cl ──veth── nc  node ns (agent; mirror on nc)
//!                            hs ──veth── ht  shadow ns (NODE's address, UDP sockets)
//! ```

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use shadow_agent::sys::{
    link::{self, MacAddr, Veth, VethEnd},
    netns::NetNs,
};

pub const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 41, 1);
pub const NODE: Ipv4Addr = Ipv4Addr::new(198, 19, 41, 2);
pub const SHADOW_MAC: [u8; 6] = [0x02, 0x5d, 0x00, 0x00, 0x41, 0x01];

/// The three namespaces and two veth pairs (`shdt{tag}{letter}l/c/s/t`), removed on drop.
pub struct Topo {
    // Links before the namespaces: dropped first.
    pub front: Option<Veth>,
    pub back: Option<Veth>,
    pub client: NetNs,
    pub node: NetNs,
    pub shadow: NetNs,
    pub cl: String,
    pub nc: String,
    pub hs: String,
    pub ht: String,
}

impl Topo {
    pub fn new(tag: &str, letter: char) -> Topo {
        let client = NetNs::create(&format!("shdt{tag}-{letter}c")).expect("client netns");
        let node = NetNs::create(&format!("shdt{tag}-{letter}n")).expect("node netns");
        let shadow = NetNs::create(&format!("shdt{tag}-{letter}s")).expect("shadow netns");
        let [cl, nc, hs, ht] = ['l', 'c', 's', 't'].map(|s| format!("shdt{tag}{letter}{s}"));
        let mut t = Topo {
            client,
            node,
            shadow,
            cl,
            nc,
            hs,
            ht,
            front: None,
            back: None,
        };
        t.make_front();
        t.make_back();
        t
    }

    /// The client's link to the node, addressed and up (again, after a removal).
    pub fn make_front(&mut self) {
        let v = Veth::create(
            VethEnd::in_netns(&self.cl, &self.client),
            VethEnd::in_netns(&self.nc, &self.node),
        )
        .expect("front veth");
        for (ifname, ns, addr) in [
            (&self.cl, &self.client, CLIENT),
            (&self.nc, &self.node, NODE),
        ] {
            link::add_address(ifname, Some(ns), IpAddr::V4(addr), 24).expect("address");
            link::set_up(ifname, Some(ns)).expect("up");
        }
        self.front = Some(v);
    }

    /// The node's link to the shadow: the shadow end holds the shadow MAC and NODE's address.
    pub fn make_back(&mut self) {
        let v = Veth::create(
            VethEnd::in_netns(&self.hs, &self.node),
            VethEnd::in_netns(&self.ht, &self.shadow),
        )
        .expect("shadow veth");
        link::set_mac(&self.ht, Some(&self.shadow), MacAddr(SHADOW_MAC)).expect("shadow MAC");
        link::add_address(&self.ht, Some(&self.shadow), IpAddr::V4(NODE), 24)
            .expect("shadow address");
        for (ifname, ns) in [(&self.hs, &self.node), (&self.ht, &self.shadow)] {
            link::set_up(ifname, Some(ns)).expect("up");
        }
        self.back = Some(v);
    }

    /// `[mirror]` on `nc` to `hs` with the shadow MAC, followed by `rules` (TOML).
    pub fn mirror_toml(&self, extra: &str, rules: &str) -> String {
        format!(
            "[profile]\ninterval_ms = 300\n\n[metrics]\nlisten = \"off\"\n\n[mirror]\n\
             interface = \"{}\"\nshadow_interface = \"{}\"\nshadow_mac = \"{}\"\n{extra}\n{rules}",
            self.nc,
            self.hs,
            MacAddr(SHADOW_MAC)
        )
    }

    /// `n` datagrams of `payload` from the client to NODE:`port`, paced.
    pub fn send(&self, port: u16, payload: &[u8], n: u64) {
        send_udp(&self.client, (NODE, port).into(), payload, n);
    }
}

/// `n` datagrams of `payload` from `ns` to `to`, 3 ms apart.
pub fn send_udp(ns: &NetNs, to: SocketAddr, payload: &[u8], n: u64) {
    let payload = payload.to_vec();
    ns.run_in(move || {
        let s = UdpSocket::bind("0.0.0.0:0").expect("client socket");
        for _ in 0..n {
            // The first ones may wait for ARP on a link just made: best effort each.
            let _ = s.send_to(&payload, to);
            std::thread::sleep(Duration::from_millis(3));
        }
    })
    .expect("enter the client netns");
}

/// Datagrams received by a socket on NODE:`port` in the shadow namespace (a thread keeps
/// them until dropped).
pub struct ShadowSocket {
    got: Arc<Mutex<Vec<Vec<u8>>>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ShadowSocket {
    pub fn start(shadow: &NetNs, port: u16) -> ShadowSocket {
        Self::start_on(shadow, NODE, port)
    }

    /// A socket on `addr`:`port` in `ns`.
    pub fn start_on(ns: &NetNs, addr: Ipv4Addr, port: u16) -> ShadowSocket {
        let got = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let ns = ns.try_clone().expect("netns handle");
        let (g, s) = (got.clone(), stop.clone());
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            ns.run_in(move || {
                let sock = UdpSocket::bind((addr, port)).expect("socket");
                sock.set_read_timeout(Some(Duration::from_millis(100)))
                    .expect("timeout");
                let _ = ready_tx.send(());
                let mut buf = [0u8; 2048];
                while !s.load(Ordering::Relaxed) {
                    if let Ok((n, _)) = sock.recv_from(&mut buf) {
                        g.lock().unwrap().push(buf[..n].to_vec());
                    }
                }
            })
            .expect("enter the shadow netns");
        });
        ready_rx
            .recv_timeout(Duration::from_secs(5))
            .expect("shadow socket bound");
        ShadowSocket {
            got,
            stop,
            thread: Some(thread),
        }
    }

    /// Datagrams received so far.
    pub fn count(&self) -> usize {
        self.got.lock().unwrap().len()
    }

    /// The datagrams received after the first `from`.
    pub fn since(&self, from: usize) -> Vec<Vec<u8>> {
        self.got.lock().unwrap()[from..].to_vec()
    }

    /// Sends bursts of `payload` to `port` until the socket has `n` more than `from`
    /// (at most 15 s); the new ones.
    pub fn expect_more(
        &self,
        topo: &Topo,
        port: u16,
        payload: &[u8],
        from: usize,
        n: usize,
        what: &str,
    ) -> Vec<Vec<u8>> {
        self.expect_more_by(|| topo.send(port, payload, 30), from, n, what)
    }

    /// Calls `send` (a burst) until the socket has `n` more than `from` (at most 15 s); the
    /// new ones.
    pub fn expect_more_by(
        &self,
        send: impl Fn(),
        from: usize,
        n: usize,
        what: &str,
    ) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            send();
            std::thread::sleep(Duration::from_millis(200));
            if self.count() >= from + n {
                return self.since(from);
            }
            assert!(
                Instant::now() < deadline,
                "{what}: the shadow got {} datagrams, expected {n}",
                self.count() - from
            );
        }
    }
}

impl Drop for ShadowSocket {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The next `"event": "link"` line with one of `changes` (of `interface`, when given), at
/// most 15 s.
pub fn link_event(
    lines: &std::sync::mpsc::Receiver<String>,
    interface: Option<&str>,
    changes: &[&str],
) -> serde_json::Value {
    super::wait_line(
        lines,
        &format!("link event {changes:?} of {interface:?}"),
        Duration::from_secs(15),
        |v| {
            v["event"] == "link"
                && interface.is_none_or(|i| v["interface"] == i)
                && changes.iter().any(|c| v["change"] == *c)
        },
    )
}

/// Waits (at most 10 s) for the status to list `what` in `mirror.missing`; the status.
pub fn wait_missing(status: &std::path::Path, what: &str) -> serde_json::Value {
    super::wait_status(status, "mirror.missing", Duration::from_secs(10), |s| {
        s["mirror"]["missing"]
            .as_array()
            .is_some_and(|m| m.iter().any(|i| i == what))
    })
}
