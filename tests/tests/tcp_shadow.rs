//! TCP sessions that really run in the shadow (issue 4), end to end: a real HTTP server
//! (python's http.server, HTTP/1.1 keep-alive, with a POST handler) as the primary and the
//! same server as a shadow replica holding the primary's address; curl in the client
//! namespace drives the primary; the mirror clones 100% with TCP translation on.
//!
//! ```text
//!  client ns ──veth── primary ns: server, mirror (pr ingress: shadow_mirror, egress: shadow_isn)
//!                       └─ <host end> egress shadow_mask, ingress shadow_learn → shadow_discard
//!                             └─ replica ns: the same server, same address
//! ```

use std::{
    io::{Read as _, Write as _},
    net::{IpAddr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use shadow_agent::{
    mirror::{Cidr, Mirror, MirrorOptions, MirrorSpec, Ports, Proto, Rule, RuleMask, TcpSessions},
    shadow::{Allowlist, CommandSpec, GroupSpec, RestartPolicy, ShadowGroup},
    sys::link,
};
use shadow_common::{
    maps::{PROG_MIRROR_ISN, PROG_MIRROR_LEARN, PROG_MIRROR_TCP},
    mask::CLONE_MARK,
};
use shadow_tests::harness::{
    chain, spawn_in, unique_tag, wait_for, TestDir, TestNetns, TestVeth, IPV4_PREFIX, IPV6_PREFIX,
};

const PORT: u16 = 8080;

/// The server both sides run: http.server, HTTP/1.1 (keep-alive), GET from a directory,
/// POST answered with the body's length and SHA-256 (also logged, so the shadow's log shows
/// that it received the whole body).
const SERVER: &str = r#"
import hashlib, http.server, socket, sys
class H(http.server.SimpleHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    def do_POST(self):
        n = int(self.headers.get("Content-Length", "0"))
        h = hashlib.sha256()
        left = n
        while left > 0:
            b = self.rfile.read(min(left, 65536))
            if not b:
                break
            h.update(b)
            left -= len(b)
        body = ("%d %s\n" % (n - left, h.hexdigest())).encode()
        sys.stderr.write("BODY %s" % body.decode())
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
class S(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6 if ":" in sys.argv[1] else socket.AF_INET
import functools
S((sys.argv[1], int(sys.argv[2])), functools.partial(H, directory=sys.argv[3])).serve_forever()
"#;

struct World {
    client: TestNetns,
    primary: TestNetns,
    front: TestVeth,
    dir: TestDir,
}

impl World {
    fn new() -> World {
        let client = TestNetns::new("c");
        let primary = TestNetns::new("p");
        let front = TestVeth::builder()
            .a_netns(&client)
            .b_netns(&primary)
            .roles("cl", "pr")
            .create();
        let dir = TestDir::new("tcp");
        std::fs::create_dir(dir.path().join("www")).expect("docroot");
        // A small page and one spanning many segments.
        std::fs::write(
            dir.path().join("www/index.html"),
            b"hello from the primary\n",
        )
        .expect("page");
        let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 % 251) as u8).collect();
        std::fs::write(dir.path().join("www/big.bin"), &big).expect("big page");
        std::fs::write(dir.path().join("server.py"), SERVER).expect("server");
        World {
            client,
            primary,
            front,
            dir,
        }
    }

    fn addrs(&self, v6: bool) -> (IpAddr, IpAddr, u8) {
        if v6 {
            (
                IpAddr::V6(self.front.a().ipv6.expect("v6")),
                IpAddr::V6(self.front.b().ipv6.expect("v6")),
                IPV6_PREFIX,
            )
        } else {
            (
                IpAddr::V4(self.front.a().ipv4.expect("v4")),
                IpAddr::V4(self.front.b().ipv4.expect("v4")),
                IPV4_PREFIX,
            )
        }
    }

    fn server_argv(&self, service: IpAddr) -> Vec<String> {
        vec![
            "python3".into(),
            "-u".into(),
            self.dir.path().join("server.py").display().to_string(),
            service.to_string(),
            PORT.to_string(),
            self.dir.path().join("www").display().to_string(),
        ]
    }

    fn url(&self, service: IpAddr, path: &str) -> String {
        match service {
            IpAddr::V4(a) => format!("http://{a}:{PORT}{path}"),
            IpAddr::V6(a) => format!("http://[{a}]:{PORT}{path}"),
        }
    }
}

/// The primary, the shadow group (stderr logged) and the mirror, all running.
struct Setup {
    mirror: Mirror,
    group: ShadowGroup,
    _primary: shadow_agent::sys::process::ChildGuard,
    primary_log: PathBuf,
    shadow_log: PathBuf,
    service: IpAddr,
    /// A client connection opened before the mirror attached.
    early: TcpStream,
}

fn setup(world: &World, v6: bool, tcp: TcpSessions) -> Setup {
    setup_replicas(world, v6, tcp, 1)
}

/// As `setup`, with `replicas` replicas (sharing one stderr log), all mirror targets.
fn setup_replicas(world: &World, v6: bool, tcp: TcpSessions, replicas: u32) -> Setup {
    setup_full(world, v6, tcp, replicas, true, Duration::from_secs(2))
}

/// As `setup_replicas`, with HTTP masking on or off and the given `tcp_hold`.
fn setup_full(
    world: &World,
    v6: bool,
    tcp: TcpSessions,
    replicas: u32,
    mask: bool,
    hold: Duration,
) -> Setup {
    let (client_ip, service, prefix) = world.addrs(v6);
    let primary_log = world.dir.path().join("primary.log");
    let shadow_log = world.dir.path().join("shadow.log");
    let argv = world.server_argv(service);
    let mut server = Command::new(&argv[0]);
    server
        .args(&argv[1..])
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&primary_log).expect("primary log"));
    let primary = spawn_in(Some(&world.primary), None, server);

    let spec = GroupSpec {
        name: unique_tag(),
        prefix: "shdt".into(),
        command: CommandSpec {
            argv: argv.clone(),
            stderr: Some(shadow_log.clone()),
            ..CommandSpec::default()
        },
        replicas_min: replicas,
        replicas_max: replicas,
        cpu_cores: Some(1.0),
        memory_bytes: Some(512 << 20),
        writable_paths: Vec::new(),
        addresses: vec![(service, prefix)],
        allow: Allowlist {
            rules: Vec::new(),
            loopback: true,
        },
        restart: RestartPolicy::default(),
        // The primary interface's, as `run` gives replicas: clones go out unrewritten.
        replica_mac: Some(world.front.b().mac),
    };
    let group = ShadowGroup::start(spec, Some(world.primary.netns().try_clone().expect("ns")))
        .unwrap_or_else(|e| panic!("starting the shadow group: {}", chain(&e)));
    for r in group.replicas() {
        // The shadow cannot push back (the client paces itself by the primary's window):
        // give its receive buffers room for a whole multi-MB body, so a slower shadow never
        // drops.
        r.netns()
            .run_in(|| {
                std::fs::write(
                    "/proc/sys/net/ipv4/tcp_rmem",
                    shadow_agent::shadow::replica::SHADOW_TCP_RMEM,
                )
            })
            .expect("enter replica")
            .expect("tcp_rmem");
        // The replica answers the client through its veth: a static neighbour (the host end
        // answers nothing, everything it receives is dropped).
        link::set_neighbor(
            &r.names().replica_if,
            Some(r.netns()),
            client_ip,
            r.host_mac(),
        )
        .expect("neighbour");
    }
    let r0 = group.replica(0).expect("r0");
    let spec = MirrorSpec {
        interface: world.front.b().name.clone(),
        address: None,
        direction: Default::default(),
        shadow_interface: r0.names().host_if.clone(),
        shadow_mac: r0.replica_mac().octets(),
        rules: vec![Rule {
            dst: Cidr {
                addr: service,
                prefix_len: if v6 { 128 } else { 32 },
            },
            ports: Ports { lo: PORT, hi: PORT },
            proto: Some(Proto::Tcp),
        }],
        xdp: false,
        options: MirrorOptions {
            tcp,
            // Masking active: HTTP header and parameter values (e.g. `session`).
            rule_masks: vec![RuleMask {
                http: mask,
                ..RuleMask::default()
            }],
            tcp_hold: hold,
            ..MirrorOptions::default()
        },
    };
    // Both servers listening before traffic starts.
    let addr = SocketAddr::new(service, PORT);
    wait_for("the primary", Duration::from_secs(10), || {
        world
            .client
            .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
    });
    for r in group.replicas() {
        wait_for("the shadow", Duration::from_secs(10), || {
            r.netns()
                .run_in(move || TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok())
                .ok()
                .flatten()
        });
    }
    let early = world
        .client
        .run(move || TcpStream::connect_timeout(&addr, Duration::from_secs(2)))
        .expect("early connection");
    let mut mirror = world
        .primary
        .run(move || Mirror::attach(spec))
        .unwrap_or_else(|e| panic!("mirror: {}", chain(&e)));
    if replicas > 1 {
        mirror
            .set_targets(&group.mirror_targets())
            .unwrap_or_else(|e| panic!("mirror targets: {}", chain(&e)));
    }
    Setup {
        early,
        mirror,
        group,
        _primary: primary,
        primary_log,
        shadow_log,
        service,
    }
}

/// Requests in an http.server access log (`"GET /x HTTP/1.1" 200 -`).
fn requests(log: &Path) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("\"GET ") || l.contains("\"POST "))
        .count()
}

fn body_lines(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("BODY "))
        .map(String::from)
        .collect()
}

/// Run curl in the client namespace; returns its stdout.
fn curl(world: &World, args: &[String]) -> Vec<u8> {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--max-time", "30"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_in(Some(&world.client), None, cmd);
    let mut out = Vec::new();
    child
        .child_mut()
        .stdout
        .take()
        .expect("stdout")
        .read_to_end(&mut out)
        .expect("read");
    let status = child
        .wait_timeout(Duration::from_secs(60))
        .expect("wait")
        .expect("curl finished");
    let mut err = String::new();
    let _ = child
        .child_mut()
        .stderr
        .take()
        .map(|mut e| e.read_to_string(&mut err));
    assert!(status.success(), "curl {args:?}: {status} {err}");
    out
}

/// POSTs the file at `body` to `url` as one octet-stream body (not a form, which masking
/// would mask) on its own connection, and checks the server answered with one line.
fn upload(world: &World, url: &str, body: &std::path::Path) {
    let out = curl(
        world,
        &[
            "-H".into(),
            "Content-Type: application/octet-stream".into(),
            "--data-binary".into(),
            format!("@{}", body.display()),
            url.into(),
        ],
    );
    let digest = String::from_utf8(out).expect("utf-8");
    assert_eq!(digest.lines().count(), 1, "{digest}");
}

fn sessions_run_in_the_shadow(v6: bool) {
    let world = World::new();
    let (_, service, _) = world.addrs(v6);
    let page = std::fs::read(world.dir.path().join("www/index.html")).expect("page");
    let big = std::fs::read(world.dir.path().join("www/big.bin")).expect("big");

    // A connection opened before the mirror attaches: not mirrored (no SYN seen).
    let s = setup(&world, v6, TcpSessions::Translate);
    assert_eq!(s.service, service);
    let mut early = s.early.try_clone().expect("early");
    early
        .write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")
        .expect("early request");
    early
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let mut buf = [0u8; 4096];
    let n = early.read(&mut buf).expect("early response");
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"), "early response");
    drop(early);
    let _ = s.early.shutdown(std::net::Shutdown::Both);

    let url = world.url(service, "/index.html?session=topsecret42");
    let big_url = world.url(service, "/big.bin");
    // Keep-alive: 10 connections of 5 requests each; the responses are the files' bytes.
    for _ in 0..10 {
        let args: Vec<String> = std::iter::repeat_n(url.clone(), 4)
            .chain([big_url.clone()])
            .collect();
        let out = curl(&world, &args);
        let mut want = page.repeat(4);
        want.extend_from_slice(&big);
        assert!(
            out == want,
            "the primary's responses changed under the mirror"
        );
    }
    // New connection per request.
    for _ in 0..20 {
        assert_eq!(curl(&world, std::slice::from_ref(&url)), page);
    }
    // Pipelined: three requests in one write on one connection, then the client's FIN.
    let addr = SocketAddr::new(service, PORT);
    let piped = world.client.run(move || -> std::io::Result<Vec<u8>> {
        let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        c.write_all(&b"GET /index.html?session=topsecret42 HTTP/1.1\r\nHost: x\r\n\r\n".repeat(3))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        while got
            .windows(22)
            .filter(|w| *w == b"hello from the primary")
            .count()
            < 3
        {
            let n = c.read(&mut buf)?;
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        c.shutdown(std::net::Shutdown::Both)?;
        Ok(got)
    });
    let piped = piped.expect("pipelined requests");
    assert_eq!(
        piped
            .windows(22)
            .filter(|w| *w == b"hello from the primary")
            .count(),
        3,
        "pipelined responses"
    );
    // A client that ends its connection with an RST (SO_LINGER 0): the state is freed.
    world
        .client
        .run(move || -> std::io::Result<()> {
            use std::os::fd::AsRawFd as _;
            let mut c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
            c.set_read_timeout(Some(Duration::from_secs(10)))?;
            c.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n")?;
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf)?;
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: setsockopt on the stream's own descriptor with a correctly sized value.
            let rc = unsafe {
                libc::setsockopt(
                    c.as_raw_fd(),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&linger as *const libc::linger).cast(),
                    std::mem::size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0, "SO_LINGER");
            Ok(())
        })
        .expect("RST connection");
    // Multi-MB POST bodies, each on its own connection. (With HTTP masking on, a request
    // that follows a multi-MB body on the same connection reached the shadow fully masked:
    // masking's limit, reported; `uploads_survive_retransmissions_on_the_primary_path` sends
    // two on one connection without masking.)
    let body: Vec<u8> = (0..4_000_000u32).map(|i| (i % 253) as u8).collect();
    let body_path = world.dir.path().join("body.bin");
    std::fs::write(&body_path, &body).expect("body");
    let post_url = world.url(service, "/upload");
    for _ in 0..2 {
        upload(&world, &post_url, &body_path);
    }

    // The shadow catches up (its log is written as it serves).
    let primary_requests = requests(&s.primary_log);
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && requests(&s.shadow_log) * 100 < primary_requests * 99 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let shadow_requests = requests(&s.shadow_log);
    let tcp = s.mirror.tcp_counters().expect("tcp counters");
    let c = s.mirror.counters().expect("counters");
    eprintln!(
        "v6={v6}: primary_requests={primary_requests} shadow_requests={shadow_requests} \
         tcp={tcp:?} cloned={}",
        c.cloned
    );
    let by_path = |log: &Path| {
        let mut m = std::collections::BTreeMap::<String, usize>::new();
        for l in std::fs::read_to_string(log).unwrap_or_default().lines() {
            if let Some(r) = l.split('"').nth(1) {
                *m.entry(r.to_string()).or_default() += 1;
            }
        }
        m
    };
    eprintln!(
        "primary: {:?}\nshadow: {:?}",
        by_path(&s.primary_log),
        by_path(&s.shadow_log)
    );
    // 1 early + 50 keep-alive + 20 + 3 pipelined + 1 RST-ended + 2 POST; the shadow has all
    // but the early one.
    assert_eq!(primary_requests, 77, "primary log");
    let mirrored = primary_requests - 1;
    assert!(
        shadow_requests * 100 >= mirrored * 99,
        "the shadow served {shadow_requests} of {mirrored} mirrored requests; {tcp:?}"
    );
    assert!(
        shadow_requests <= mirrored,
        "the early flow reached the shadow"
    );
    assert_eq!(tcp.shadow_resets, 0, "the shadow reset sessions: {tcp:?}");
    assert_eq!(tcp.sessions, 34, "{tcp:?}");
    assert_eq!(tcp.evicted, 0, "{tcp:?}");
    assert!(tcp.closed >= 30, "sessions not freed: {tcp:?}");
    // Masking was active: the secret never reached the shadow.
    let shadow_text = std::fs::read_to_string(&s.shadow_log).unwrap_or_default();
    assert!(
        !shadow_text.contains("topsecret42"),
        "unmasked value in the shadow"
    );
    assert!(
        shadow_text.contains("session=***********"),
        "masked parameter not in the shadow's log"
    );
    assert!(
        std::fs::read_to_string(&s.primary_log)
            .unwrap_or_default()
            .contains("topsecret42"),
        "the primary must get the original bytes"
    );
    assert_eq!(tcp.established, tcp.sessions, "{tcp:?}");
    assert!(tcp.segments_not_tracked >= 1, "the early flow: {tcp:?}");
    assert!(tcp.segments_translated > 100, "{tcp:?}");
    assert_eq!(tcp.segments_failed, 0, "{tcp:?}");
    // Both bodies arrived whole in the shadow, byte for byte.
    assert_eq!(
        body_lines(&s.shadow_log),
        body_lines(&s.primary_log),
        "POST bodies differ"
    );
    assert_eq!(body_lines(&s.shadow_log).len(), 2);
}

#[test]
fn tcp_sessions_run_in_the_shadow_ipv4() {
    sessions_run_in_the_shadow(false);
}

#[test]
fn tcp_sessions_run_in_the_shadow_ipv6() {
    sessions_run_in_the_shadow(true);
}

/// Sessions spread over two replicas: each runs whole in the replica its SYN was sent to
/// (the per-target `shadow_learn` on each replica's veth learns its ISN), both get a share.
#[test]
fn tcp_sessions_are_spread_over_replicas() {
    let world = World::new();
    let s = setup_replicas(&world, false, TcpSessions::Translate, 2);
    let url = world.url(s.service, "/index.html");
    for _ in 0..20 {
        curl(&world, &[url.clone(), url.clone()]);
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && requests(&s.shadow_log) < 40 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let tcp = s.mirror.tcp_counters().expect("tcp counters");
    let per = s.mirror.flows_per_target().expect("flows per target");
    eprintln!(
        "2 replicas: per target {per:?}, shadow requests {}, {tcp:?}",
        requests(&s.shadow_log)
    );
    assert_eq!(requests(&s.primary_log), 40);
    assert_eq!(requests(&s.shadow_log), 40, "{tcp:?}");
    assert_eq!(tcp.sessions, 20, "{tcp:?}");
    assert_eq!(tcp.established, 20, "{tcp:?}");
    assert_eq!(tcp.shadow_resets, 0, "{tcp:?}");
    assert_eq!(per.iter().sum::<u64>(), 20);
    for (i, n) in per.iter().enumerate() {
        assert!(*n >= 4, "replica {i} got {n} of 20 sessions: {per:?}");
    }
    for r in s.group.replicas() {
        let d = r.discard().counters().expect("discard");
        assert!(
            d.tx_dropped_packets > 0,
            "replica {} served nothing",
            r.index()
        );
    }
}

/// The failing twin: tracked but not translated, the shadow resets every session and
/// serves nothing — the translation is what makes the sessions run.
#[test]
fn without_translation_the_shadow_resets_every_session() {
    let world = World::new();
    let s = setup(&world, false, TcpSessions::TrackOnly);
    let url = world.url(s.service, "/index.html");
    for _ in 0..5 {
        curl(&world, &[url.clone(), url.clone()]);
    }
    let tcp = wait_for("the shadow's resets", Duration::from_secs(5), || {
        let t = s.mirror.tcp_counters().expect("counters");
        (t.shadow_resets >= 5).then_some(t)
    });
    eprintln!(
        "untranslated: shadow_requests={} {tcp:?}",
        requests(&s.shadow_log)
    );
    assert_eq!(requests(&s.primary_log), 10);
    assert_eq!(
        requests(&s.shadow_log),
        0,
        "untranslated sessions were served"
    );
}

// ---- crafted segments through BPF_PROG_TEST_RUN -----------------------------------------

const CLIENT: [u8; 4] = [10, 9, 0, 1];
const SERVICE: [u8; 4] = [10, 9, 0, 2];

/// An Ethernet + IPv4 + TCP frame. `from_client`: client → service, else the reverse.
fn frame(
    from_client: bool,
    seq: u32,
    ack: u32,
    flags: u8,
    ts: Option<(u32, u32)>,
    payload: &[u8],
) -> Vec<u8> {
    let mut opts = Vec::new();
    if let Some((val, ecr)) = ts {
        opts.extend_from_slice(&[1, 1, 8, 10]);
        opts.extend_from_slice(&val.to_be_bytes());
        opts.extend_from_slice(&ecr.to_be_bytes());
    }
    let (src, dst, sport, dport) = if from_client {
        (CLIENT, SERVICE, 40000u16, PORT)
    } else {
        (SERVICE, CLIENT, PORT, 40000u16)
    };
    let mut tcp = Vec::new();
    tcp.extend_from_slice(&sport.to_be_bytes());
    tcp.extend_from_slice(&dport.to_be_bytes());
    tcp.extend_from_slice(&seq.to_be_bytes());
    tcp.extend_from_slice(&ack.to_be_bytes());
    tcp.push((((20 + opts.len()) / 4) as u8) << 4);
    tcp.push(flags);
    tcp.extend_from_slice(&[0xff, 0xff, 0, 0, 0, 0]);
    tcp.extend_from_slice(&opts);
    tcp.extend_from_slice(payload);
    let c = tcp_csum(src, dst, &tcp);
    tcp[16..18].copy_from_slice(&c.to_be_bytes());
    let mut ip = vec![0x45, 0, 0, 0, 0, 0, 0x40, 0, 64, 6, 0, 0];
    ip[2..4].copy_from_slice(&((20 + tcp.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&src);
    ip.extend_from_slice(&dst);
    let mut f = vec![2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00];
    f.extend_from_slice(&ip);
    f.extend_from_slice(&tcp);
    f
}

fn tcp_csum(src: [u8; 4], dst: [u8; 4], seg: &[u8]) -> u16 {
    let mut s: u64 = 0;
    let mut words = Vec::new();
    words.extend_from_slice(&src);
    words.extend_from_slice(&dst);
    words.extend_from_slice(&[0, 6]);
    words.extend_from_slice(&(seg.len() as u16).to_be_bytes());
    let mut z = seg.to_vec();
    z[16] = 0;
    z[17] = 0;
    words.extend_from_slice(&z);
    if words.len() % 2 == 1 {
        words.push(0);
    }
    for w in words.chunks(2) {
        s += u16::from_be_bytes([w[0], w[1]]) as u64;
    }
    while s >> 16 != 0 {
        s = (s & 0xffff) + (s >> 16);
    }
    !(s as u16)
}

const SHOT: u32 = 2;

/// A mirror of `SERVICE:PORT` to a dummy veth, translating TCP sessions without the hold
/// loop (the drop fallback), for `BPF_PROG_TEST_RUN`.
fn unheld_mirror(world: &World) -> (TestVeth, Mirror) {
    let dummy = TestVeth::builder()
        .a_netns(&world.primary)
        .b_netns(&world.primary)
        .roles("sa", "sb")
        .create();
    let spec = MirrorSpec {
        interface: world.front.b().name.clone(),
        address: None,
        direction: Default::default(),
        shadow_interface: dummy.a().name.clone(),
        shadow_mac: dummy.b().mac.octets(),
        rules: vec![Rule {
            dst: Cidr {
                addr: IpAddr::V4(SERVICE.into()),
                prefix_len: 32,
            },
            ports: Ports { lo: PORT, hi: PORT },
            proto: Some(Proto::Tcp),
        }],
        xdp: false,
        options: MirrorOptions {
            tcp: TcpSessions::Translate,
            // Without the hold loop: the drop fallback.
            tcp_hold: Duration::ZERO,
            ..MirrorOptions::default()
        },
    };
    let mirror = world
        .primary
        .run(move || Mirror::attach(spec))
        .unwrap_or_else(|e| panic!("mirror: {}", chain(&e)));
    (dummy, mirror)
}

/// One `BPF_PROG_TEST_RUN` of `prog` on `frame` with `mark`: the verdict and the frame out.
/// None of these programs redirects, so they run in the test's own thread.
fn test_run(mirror: &Mirror, prog: &'static str, frame: &[u8], mark: u32) -> (u32, Vec<u8>) {
    mirror
        .test_run(prog, frame, mark)
        .unwrap_or_else(|e| panic!("test run {prog}: {}", chain(&e)))
}

/// Without the hold loop (`tcp_hold` = 0), deterministic: a client segment that arrives
/// before the shadow's ISN is known is dropped and counted (`segments_waiting`); the next one, which
/// carries the same ACK and data, is translated (ACK, TSecr, checksum) once the shadow's
/// SYN-ACK has been learned. A pure ACK lost this way completes the shadow's handshake
/// with the client's first data segment.
#[test]
fn segments_before_the_shadows_isn_are_dropped_then_translated() {
    let world = World::new();
    let (_dummy, mirror) = unheld_mirror(&world);
    let run = |prog, f: &[u8], mark| test_run(&mirror, prog, f, mark);
    let (c_isn, p_isn, s_isn) = (1000u32, 0x8000_0000u32, 0x1234_5678u32);
    // Mid-flow segment of a session never seen: dropped.
    let (v, _) = run(
        PROG_MIRROR_TCP,
        &frame(true, 5, 6, 0x10, None, b"x"),
        CLONE_MARK,
    );
    assert_eq!(v, SHOT);
    // The client's SYN creates the session and passes.
    let (v, _) = run(
        PROG_MIRROR_TCP,
        &frame(true, c_isn, 0, 0x02, Some((100, 0)), b""),
        CLONE_MARK,
    );
    assert_ne!(v, SHOT);
    // The primary's SYN-ACK (egress of the primary's interface).
    run(
        PROG_MIRROR_ISN,
        &frame(false, p_isn, c_isn + 1, 0x12, Some((7000, 100)), b""),
        0,
    );
    // The client's ACK arrives before the shadow's SYN-ACK: dropped, counted.
    let ack = frame(true, c_isn + 1, p_isn + 1, 0x10, Some((101, 7000)), b"");
    let (v, _) = run(PROG_MIRROR_TCP, &ack, CLONE_MARK);
    assert_eq!(
        v, SHOT,
        "a segment before the shadow's ISN must not be sent"
    );
    let t = mirror.tcp_counters().expect("counters");
    assert_eq!(
        (t.sessions, t.established, t.segments_waiting),
        (1, 0, 1),
        "{t:?}"
    );
    // The shadow's SYN-ACK (ingress of the shadow interface).
    run(
        PROG_MIRROR_LEARN,
        &frame(false, s_isn, c_isn + 1, 0x12, Some((555_000, 100)), b""),
        0,
    );
    // The client's first data segment carries the same ACK: translated.
    let data = frame(
        true,
        c_isn + 1,
        p_isn + 1,
        0x18,
        Some((102, 7000)),
        b"GET / HTTP/1.1\r\n\r\n",
    );
    let (v, out) = run(PROG_MIRROR_TCP, &data, CLONE_MARK);
    assert_ne!(v, SHOT);
    let l4 = 14 + 20;
    let got_ack = u32::from_be_bytes(out[l4 + 8..l4 + 12].try_into().unwrap());
    assert_eq!(
        got_ack,
        s_isn + 1,
        "ACK translated into the shadow's sequence space"
    );
    let tsecr = u32::from_be_bytes(out[l4 + 28..l4 + 32].try_into().unwrap());
    assert_eq!(tsecr, 555_000, "TSecr echoes the shadow's TSval");
    let csum = u16::from_be_bytes([out[l4 + 16], out[l4 + 17]]);
    assert_eq!(csum, tcp_csum(CLIENT, SERVICE, &out[l4..]), "checksum");
    assert_eq!(
        &out[l4 + 32..],
        b"GET / HTTP/1.1\r\n\r\n",
        "payload untouched"
    );
    // An ACK beyond what the shadow has sent is clamped to its SND.NXT.
    let far = frame(true, c_isn + 19, p_isn + 5000, 0x10, Some((103, 7001)), b"");
    let (_, out) = run(PROG_MIRROR_TCP, &far, CLONE_MARK);
    let got_ack = u32::from_be_bytes(out[l4 + 8..l4 + 12].try_into().unwrap());
    assert_eq!(got_ack, s_isn + 1);
    // The shadow's RST is counted once; the client's RST ends the session.
    run(
        PROG_MIRROR_LEARN,
        &frame(false, s_isn + 1, 0, 0x04, None, b""),
        0,
    );
    run(
        PROG_MIRROR_LEARN,
        &frame(false, s_isn + 1, 0, 0x04, None, b""),
        0,
    );
    run(
        PROG_MIRROR_TCP,
        &frame(true, c_isn + 19, p_isn + 1, 0x14, None, b""),
        CLONE_MARK,
    );
    let t = mirror.tcp_counters().expect("counters");
    assert_eq!(
        (
            t.established,
            t.shadow_resets,
            t.closed,
            t.live,
            t.segments_not_tracked
        ),
        (1, 1, 1, 0, 1),
        "{t:?}"
    );
    assert_eq!(t.segments_translated, 3, "{t:?}");
}

/// A client may reuse its port for a new connection while the shadow still holds the old
/// session (a slow replica has not finished it). A SYN with the same ISN is a
/// retransmission; one with another ISN is a new session, counted, and translated afresh,
/// not with the old session's numbers.
#[test]
fn a_new_isn_on_a_live_sessions_five_tuple_is_a_new_session() {
    let world = World::new();
    let (_dummy, mirror) = unheld_mirror(&world);
    let run = |prog, f: &[u8], mark| test_run(&mirror, prog, f, mark);
    let (p_isn, s_isn) = (0x8000_0000u32, 0x1234_5678u32);
    let syn = |isn: u32| frame(true, isn, 0, 0x02, Some((100, 0)), b"");
    run(PROG_MIRROR_TCP, &syn(1000), CLONE_MARK);
    // The client retransmits its SYN: the same session.
    let (v, _) = run(PROG_MIRROR_TCP, &syn(1000), CLONE_MARK);
    assert_ne!(v, SHOT);
    assert_eq!(mirror.tcp_counters().expect("counters").sessions, 1);
    // Established in the shadow, one data segment translated.
    run(
        PROG_MIRROR_ISN,
        &frame(false, p_isn, 1001, 0x12, Some((7000, 100)), b""),
        0,
    );
    run(
        PROG_MIRROR_LEARN,
        &frame(false, s_isn, 1001, 0x12, Some((555_000, 100)), b""),
        0,
    );
    let data = frame(true, 1001, p_isn + 1, 0x18, Some((101, 7000)), b"GET /\r\n");
    let (v, _) = run(PROG_MIRROR_TCP, &data, CLONE_MARK);
    assert_ne!(v, SHOT);
    let t = mirror.tcp_counters().expect("counters");
    assert_eq!((t.sessions, t.established, t.live), (1, 1, 1), "{t:?}");

    // A new connection on the same 5-tuple: another ISN.
    let (v, _) = run(PROG_MIRROR_TCP, &syn(9_000_000), CLONE_MARK);
    assert_ne!(v, SHOT, "the new connection's SYN must reach the shadow");
    let t = mirror.tcp_counters().expect("counters");
    assert_eq!((t.sessions, t.live), (2, 1), "{t:?}");
    // Its handshake is its own: the client's ACK waits for the new session's shadow ISN
    // rather than being translated with the old one's.
    run(
        PROG_MIRROR_ISN,
        &frame(false, 5, 9_000_001, 0x12, Some((7100, 100)), b""),
        0,
    );
    let ack = frame(true, 9_000_001, 6, 0x10, Some((102, 7100)), b"");
    let (v, _) = run(PROG_MIRROR_TCP, &ack, CLONE_MARK);
    assert_eq!(v, SHOT, "translated with the old session's shadow ISN");
    assert_eq!(mirror.tcp_counters().expect("counters").segments_waiting, 1);
}

/// `TcpExtListenOverflows` of the namespace `netns`.
fn listen_overflows(netns: &shadow_agent::sys::netns::NetNs) -> u64 {
    let text = netns
        .run_in(|| std::fs::read_to_string("/proc/thread-self/net/netstat"))
        .expect("enter")
        .expect("netstat");
    let mut lines = text.lines();
    while let (Some(names), Some(values)) = (lines.next(), lines.next()) {
        if !names.starts_with("TcpExt:") {
            continue;
        }
        for (n, v) in names.split_whitespace().zip(values.split_whitespace()) {
            if n == "ListenOverflows" {
                return v.parse().expect("number");
            }
        }
    }
    panic!("no ListenOverflows in /proc/net/netstat")
}

/// The early-segment case, made to happen deterministically the way it happens in the demo:
/// the shadow's server is stopped (SIGSTOP) so its accept queue (python: listen(5)) fills
/// and the kernel drops later SYNs. Those sessions' client segments (ACK, request, FIN)
/// arrive while the shadow has not answered: they are held in the hold loop, the SYN is
/// re-sent every `tcp_syn_retry`, and once the server runs again every session completes in
/// the shadow — no request is lost, none is reset.
#[test]
fn held_segments_complete_sessions_the_shadow_answered_late() {
    let world = World::new();
    // A longer hold than the default: the stopped shadow and a loaded machine must not
    // make the test depend on timing.
    let s = setup_full(
        &world,
        false,
        TcpSessions::Translate,
        1,
        true,
        Duration::from_secs(10),
    );
    let r0 = s.group.replica(0).expect("r0");
    let pid = r0.pid().expect("replica pid") as i32;
    let overflows_before = listen_overflows(r0.netns());
    let url = world.url(s.service, "/index.html");
    // SAFETY: plain kill(2) on the replica's own server process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
    const N: usize = 16;
    let curls: Vec<_> = (0..N)
        .map(|_| {
            let mut cmd = Command::new("curl");
            cmd.args(["-sS", "--fail", "--max-time", "20", "-o", "/dev/null", &url])
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            spawn_in(Some(&world.client), None, cmd)
        })
        .collect();
    // The primary answers all of them while the shadow is stopped.
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && requests(&s.primary_log) < N {
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiting = s.mirror.tcp_counters().expect("counters");
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "SIGCONT");
    for mut c in curls {
        let st = c
            .wait_timeout(Duration::from_secs(30))
            .expect("wait")
            .expect("curl finished");
        assert!(st.success(), "the primary failed a request: {st}");
    }
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && requests(&s.shadow_log) < N {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tcp = s.mirror.tcp_counters().expect("counters");
    let overflows = listen_overflows(r0.netns()) - overflows_before;
    eprintln!(
        "stopped shadow: overflows={overflows} while stopped {waiting:?}\nafter {tcp:?}, \
         shadow requests {}",
        requests(&s.shadow_log)
    );
    assert_eq!(requests(&s.primary_log), N);
    assert!(
        overflows > 0,
        "the shadow's accept queue never overflowed: the case did not happen"
    );
    assert!(
        waiting.segments_waiting > 0,
        "nothing was held: {waiting:?}"
    );
    assert!(tcp.syn_retries > 0, "no SYN was re-sent: {tcp:?}");
    assert!(tcp.segments_released > 0, "{tcp:?}");
    assert_eq!(tcp.sessions, N as u64, "{tcp:?}");
    assert_eq!(tcp.established, N as u64, "{tcp:?}");
    assert_eq!(tcp.shadow_resets, 0, "{tcp:?}");
    // Known gap (reported): a released segment that reaches the shadow while its accept
    // queue is still full is dropped by the shadow's kernel (ListenOverflows on the ACK),
    // and the request it carried is lost; holding segments until the shadow acknowledges
    // them would close it. So: every session established, and most requests served.
    assert!(
        requests(&s.shadow_log) * 2 > N,
        "the shadow served {} of {N} requests: {tcp:?}",
        requests(&s.shadow_log)
    );
}

/// The shadow cannot slow the client down: a shadow that does not read while the primary
/// takes a 4 MB upload must buffer the whole body, or the excess is dropped for good (the
/// client never resends what the primary acknowledged). The replica's receive buffers
/// (`replica::SHADOW_TCP_RMEM`; the window is about half the buffer) must hold it: with the
/// former 4 MiB default this failed (the body stopped at ~2 MB in the shadow).
#[test]
fn an_upload_to_a_stalled_shadow_is_whole_when_it_resumes() {
    let world = World::new();
    let s = setup_full(
        &world,
        false,
        TcpSessions::Translate,
        1,
        true,
        Duration::from_secs(10),
    );
    let r0 = s.group.replica(0).expect("r0");
    let pid = r0.pid().expect("replica pid") as i32;
    let body: Vec<u8> = (0..4_000_000u32).map(|i| (i % 241) as u8).collect();
    let body_path = world.dir.path().join("stalled.bin");
    std::fs::write(&body_path, &body).expect("body");
    let post_url = world.url(s.service, "/upload");
    // Connected and idle first, so the stop below leaves only the body unread.
    assert!(!curl(&world, &[world.url(s.service, "/index.html")]).is_empty());
    // SAFETY: plain kill(2) on the replica's own server process.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGSTOP) }, 0, "SIGSTOP");
    upload(&world, &post_url, &body_path);
    // The primary has answered; the shadow has read nothing for a moment more.
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGCONT) }, 0, "SIGCONT");
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && body_lines(&s.shadow_log).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    let tcp = s.mirror.tcp_counters().expect("counters");
    assert_eq!(
        body_lines(&s.shadow_log),
        body_lines(&s.primary_log),
        "the stalled shadow did not get the whole body: {tcp:?}"
    );
    assert_eq!(tcp.shadow_resets, 0, "{tcp:?}");
}

/// Retransmissions on the primary path: a small token bucket on the client's veth drops
/// bursts of two 4 MB uploads, so the client retransmits (reordering proper: see
/// `sessions_survive_reordering`). Both bodies still reach the
/// shadow whole, byte for byte, in sessions it never resets. HTTP masking is off here: the
/// masking parser cannot follow a flow across a hole (it falls back to masking every later
/// byte, by design), which is masking's limit, not the session's.
#[test]
fn uploads_survive_retransmissions_on_the_primary_path() {
    let world = World::new();
    let s = setup_full(
        &world,
        false,
        TcpSessions::Translate,
        1,
        false,
        Duration::from_secs(2),
    );
    // Loss on the primary path for the uploads: a small token bucket on the client's veth
    // drops bursts, so the client retransmits.
    let retrans = |ns: &TestNetns| {
        ns.netns()
            .run_in(|| std::fs::read_to_string("/proc/thread-self/net/snmp"))
            .expect("enter")
            .expect("snmp")
            .lines()
            .filter(|l| l.starts_with("Tcp:"))
            .collect::<Vec<_>>()
            .chunks(2)
            .find_map(|p| {
                let (n, v) = (p.first()?, p.get(1)?);
                n.split_whitespace()
                    .zip(v.split_whitespace())
                    .find(|(k, _)| *k == "RetransSegs")
                    .and_then(|(_, v)| v.parse::<u64>().ok())
            })
            .expect("RetransSegs")
    };
    let retrans_before = retrans(&world.client);
    link::set_tbf(
        &world.front.a().name,
        Some(world.client.netns()),
        25_000_000,
        65_536,
        96_000,
    )
    .expect("lossy token bucket on the client's veth");
    let body: Vec<u8> = (0..4_000_000u32).map(|i| (i % 251) as u8).collect();
    let body_path = world.dir.path().join("body.bin");
    std::fs::write(&body_path, &body).expect("body");
    let post_url = world.url(s.service, "/upload");
    let data = format!("@{}", body_path.display());
    let out = curl(
        &world,
        &[
            "--data-binary".into(),
            data.clone(),
            post_url.clone(),
            "--next".into(),
            "--data-binary".into(),
            data,
            post_url,
        ],
    );
    assert_eq!(String::from_utf8(out).expect("utf-8").lines().count(), 2);
    let retransmitted = retrans(&world.client) - retrans_before;
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline && body_lines(&s.shadow_log).len() < 2 {
        std::thread::sleep(Duration::from_millis(100));
    }
    let tcp = s.mirror.tcp_counters().expect("counters");
    eprintln!("retransmissions {retransmitted}; {tcp:?}");
    assert!(
        retransmitted > 0,
        "the lossy bucket caused no retransmission: the case did not happen"
    );
    assert_eq!(
        body_lines(&s.shadow_log),
        body_lines(&s.primary_log),
        "POST bodies differ under loss"
    );
    assert_eq!(body_lines(&s.shadow_log).len(), 2);
    assert_eq!(tcp.shadow_resets, 0, "{tcp:?}");
    assert_eq!(tcp.established, tcp.sessions, "{tcp:?}");
}

/// A hold loop left by an agent that is gone (its pid is in the name) is removed when a new
/// mirror with TCP sessions attaches in that namespace; the new mirror's own loop is there.
#[test]
fn hold_loops_of_gone_agents_are_swept() {
    let world = World::new();
    let gone = (0x3f_fff0u32..0x40_0000)
        .find(|p| !Path::new(&format!("/proc/{p}")).exists())
        .expect("a free pid");
    let (a, b) = (format!("shdq{gone:x}p0a"), format!("shdq{gone:x}p0b"));
    let stale = world
        .primary
        .run(|| link::Veth::create(link::VethEnd::here(&a), link::VethEnd::here(&b)))
        .expect("stale loop");
    let s = setup(&world, false, TcpSessions::Translate);
    let exists = |name: &str| link::exists(name, Some(world.primary.netns())).expect("exists");
    assert!(!exists(&a), "the stale hold loop {a} was not swept");
    let (own_a, own_b) = s.mirror.hold_loop().expect("hold loop");
    assert!(exists(own_a) && exists(own_b), "the mirror's own loop");
    drop(stale);
    drop(s);
}

/// Runs `tc -n <ns> ARGS` (iproute2); panics with its stderr when it fails.
fn tc(ns: &TestNetns, args: &[&str]) {
    let out = Command::new("tc")
        .args(["-n", ns.name()])
        .args(args)
        .output()
        .expect("running tc");
    assert!(
        out.status.success(),
        "tc -n {} {}: {}",
        ns.name(),
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A counter of the namespace's `/proc/net/netstat` or `/proc/net/snmp` (`group` is the
/// line prefix, e.g. `TcpExt`).
fn net_counter(ns: &shadow_agent::sys::netns::NetNs, file: &str, group: &str, key: &str) -> u64 {
    let path = format!("/proc/thread-self/net/{file}");
    let text = ns
        .run_in(move || std::fs::read_to_string(path))
        .expect("enter")
        .expect("net counters");
    let prefix = format!("{group}:");
    let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&prefix)).collect();
    lines
        .chunks(2)
        .find_map(|p| {
            let (n, v) = (p.first()?, p.get(1)?);
            n.split_whitespace()
                .zip(v.split_whitespace())
                .find(|(k, _)| *k == key)
                .and_then(|(_, v)| v.parse::<u64>().ok())
        })
        .unwrap_or_else(|| panic!("{group}:{key} not in {file}"))
}

/// Reordering on the primary path (this kernel has no netem): a u32 filter on the client's
/// veth egress (clsact) sends about one in eight of the client's segments to the service
/// (picked by 3 bits of the TCP sequence number) into a second veth pair instead, whose
/// client end is a slow token bucket; its far end, in the primary's namespace and carrying
/// the primary interface's MAC, redirects them into the primary interface's ingress, where
/// the primary and the mirror receive them after segments sent later. The primary's
/// TCPOFOQueue proves the reordering. With HTTP masking and translation on, keep-alive GETs
/// and two 4 MB uploads are all served by the shadow, in sessions it never resets, with the
/// masked value never reaching it and the primary's answers unchanged.
fn sessions_survive_reordering(v6: bool) {
    let world = World::new();
    let (_, service, _) = world.addrs(v6);
    let page = std::fs::read(world.dir.path().join("www/index.html")).expect("page");
    let s = setup_full(
        &world,
        v6,
        TcpSessions::Translate,
        1,
        true,
        Duration::from_secs(2),
    );
    let _ = s.early.shutdown(std::net::Shutdown::Both);

    // The delay path: `rd` (client ns, TBF) -> `rp` (primary ns, the primary's MAC, so the
    // frames are for this host) -> ingress of the primary's interface.
    let delay = TestVeth::builder()
        .a_netns(&world.client)
        .b_netns(&world.primary)
        .roles("rd", "rp")
        .without_addresses()
        .create();
    let (rd, rp) = (delay.a().name.clone(), delay.b().name.clone());
    link::set_mac(&rp, Some(world.primary.netns()), world.front.b().mac).expect("rp's MAC");
    // 20 Mbit/s, 64 KB queued at most (~26 ms); more is dropped (then retransmitted).
    link::set_tbf(&rd, Some(world.client.netns()), 2_500_000, 16_000, 65_536)
        .expect("token bucket on the delay path");
    let (proto, l3, l4_at) = if v6 {
        ("ipv6", "ip6", 40)
    } else {
        ("ip", "ip", 20)
    };
    let port = PORT.to_string();
    let seq_at = (l4_at + 4).to_string();
    let cl = world.front.a().name.clone();
    let pr = world.front.b().name.clone();
    tc(&world.client, &["qdisc", "add", "dev", &cl, "clsact"]);
    tc(
        &world.client,
        &[
            "filter",
            "add",
            "dev",
            &cl,
            "egress",
            "prio",
            "1",
            "protocol",
            proto,
            "u32",
            "match",
            l3,
            "protocol",
            "6",
            "0xff",
            "match",
            l3,
            "dport",
            &port,
            "0xffff",
            "match",
            "u32",
            "0x00000700",
            "0x00000700",
            "at",
            &seq_at,
            "action",
            "mirred",
            "egress",
            "redirect",
            "dev",
            &rd,
        ],
    );
    tc(&world.primary, &["qdisc", "add", "dev", &rp, "clsact"]);
    tc(
        &world.primary,
        &[
            "filter", "add", "dev", &rp, "ingress", "prio", "1", "protocol", proto, "u32", "match",
            l3, "protocol", "6", "0xff", "action", "mirred", "ingress", "redirect", "dev", &pr,
        ],
    );

    let ofo =
        |ns: &shadow_agent::sys::netns::NetNs| net_counter(ns, "netstat", "TcpExt", "TCPOFOQueue");
    let shadow_ns = s.group.replica(0).expect("replica").netns();
    let ofo_before = ofo(&world.primary);
    let shadow_ofo_before = ofo(shadow_ns);
    let retrans_before = net_counter(&world.client, "snmp", "Tcp", "RetransSegs");
    let sack_reorder = || net_counter(&world.client, "netstat", "TcpExt", "TCPSACKReorder");
    let sack_reorder_before = sack_reorder();

    // Keep-alive: 5 connections of 6 masked GETs each.
    let url = world.url(service, "/index.html?session=topsecret42");
    for _ in 0..5 {
        let args: Vec<String> = std::iter::repeat_n(url.clone(), 6).collect();
        assert!(
            curl(&world, &args) == page.repeat(6),
            "the primary's responses changed under reordering"
        );
    }
    // Multi-MB bodies, each on its own connection (not a form: masking keeps its bytes).
    let body: Vec<u8> = (0..4_000_000u32).map(|i| (i % 241) as u8).collect();
    let body_path = world.dir.path().join("body.bin");
    std::fs::write(&body_path, &body).expect("body");
    let post_url = world.url(service, "/upload");
    // The detour picks segments by 3 bits of their sequence number, so whether a connection
    // has any detoured depends on its ISN and its segment sizes: one CI run drew none in all
    // seven connections. Uploads are repeated (two more at a time, at most three times)
    // until the primary has queued a segment out of order.
    let mut uploads = 0;
    for _ in 0..4 {
        for _ in 0..2 {
            upload(&world, &post_url, &body_path);
            uploads += 1;
        }
        if ofo(&world.primary) > ofo_before {
            break;
        }
    }
    let reordered = ofo(&world.primary) - ofo_before;
    let shadow_reordered = ofo(shadow_ns) - shadow_ofo_before;
    // Informational: the client's SACK also saw the reordering (reported, not asserted).
    let client_sack_reorder = sack_reorder() - sack_reorder_before;
    let retransmitted = net_counter(&world.client, "snmp", "Tcp", "RetransSegs") - retrans_before;

    let primary_requests = requests(&s.primary_log);
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline
        && (requests(&s.shadow_log) < primary_requests || body_lines(&s.shadow_log).len() < uploads)
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    let shadow_requests = requests(&s.shadow_log);
    let tcp = s.mirror.tcp_counters().expect("counters");
    eprintln!(
        "v6={v6}: out-of-order queued at the primary {reordered}, at the shadow \
         {shadow_reordered}, client retransmissions {retransmitted}, client TCPSACKReorder {client_sack_reorder}; primary_requests={primary_requests} shadow_requests={shadow_requests} \
         {tcp:?}\nprimary bodies {:?}\nshadow bodies {:?}",
        body_lines(&s.primary_log),
        body_lines(&s.shadow_log)
    );
    assert!(
        reordered > 0,
        "no segment reached the primary out of order: the case did not happen"
    );
    assert!(
        shadow_reordered > 0,
        "no clone reached the shadow out of order: the mirror did not see the reordering"
    );
    // The early connection (opened before the mirror) sent nothing.
    assert_eq!(primary_requests, 30 + uploads, "primary log");
    assert_eq!(
        shadow_requests, primary_requests,
        "the shadow did not serve every request under reordering: {tcp:?}"
    );
    assert_eq!(
        body_lines(&s.shadow_log),
        body_lines(&s.primary_log),
        "POST bodies differ under reordering"
    );
    assert_eq!(tcp.shadow_resets, 0, "{tcp:?}");
    assert_eq!(tcp.established, tcp.sessions, "{tcp:?}");
    assert_eq!(tcp.sessions, 7, "{tcp:?}");
    assert_eq!(tcp.segments_failed, 0, "{tcp:?}");
    let shadow_text = std::fs::read_to_string(&s.shadow_log).unwrap_or_default();
    assert!(
        !shadow_text.contains("topsecret42"),
        "unmasked value in the shadow"
    );
    assert!(
        shadow_text.contains("session=***********"),
        "masked parameter not in the shadow's log"
    );
}

#[test]
fn sessions_survive_reordering_on_the_primary_path_ipv4() {
    sessions_survive_reordering(false);
}

#[test]
fn sessions_survive_reordering_on_the_primary_path_ipv6() {
    sessions_survive_reordering(true);
}
