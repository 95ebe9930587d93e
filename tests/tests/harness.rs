//! The harness exercised for real: namespaces, veth pairs, cgroups, processes and clean-up.
//!
//! Run as root: `cargo test -p shadow-tests`. Nothing here skips itself.

use std::fs;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use shadow_agent::sys::cgroup::{CgroupLayout, Controller};
use shadow_agent::sys::link::{self, MacAddr};
use shadow_agent::sys::netns::{self, NetNs};
use shadow_tests::harness::{
    self, host_cgroup_layout, leftovers_with_prefix, require_privileges, spawn_in,
    sweep_with_prefix, unique_name, wait_for, Leftover, TestCgroup, TestDir, TestNetns, TestVeth,
    IPV4_PREFIX, IPV6_PREFIX,
};

const HTTP_PORT: u16 = 8080;

fn sleep_cmd(secs: u32) -> Command {
    let mut c = Command::new("sleep");
    c.arg(secs.to_string());
    c
}

/// Blocks until a TCP connect from inside `ns` to `addr` succeeds.
fn wait_for_listener(ns: &TestNetns, addr: SocketAddr) {
    wait_for(
        &format!("a listener on {addr}"),
        Duration::from_secs(20),
        || {
            ns.run(|| TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok())
                .map(drop)
        },
    );
}

/// `curl` run inside `ns`; returns stdout.
fn curl_in(ns: &TestNetns, url: &str) -> String {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "--fail", "--noproxy", "*", "--max-time", "10", url])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = spawn_in(Some(ns), None, cmd);
    let status = child
        .wait_timeout(Duration::from_secs(20))
        .unwrap()
        .unwrap_or_else(|| panic!("curl {url} did not finish"));
    let mut out = String::new();
    let mut err = String::new();
    let c = child.child_mut();
    c.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    c.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(status.success(), "curl {url} failed ({status}): {err}");
    out
}

fn url(addr: IpAddr, path: &str) -> String {
    match addr {
        IpAddr::V4(a) => format!("http://{a}:{HTTP_PORT}{path}"),
        IpAddr::V6(a) => format!("http://[{a}]:{HTTP_PORT}{path}"),
    }
}

#[test]
fn privileges_are_present() {
    require_privileges();
}

#[test]
fn veth_between_namespaces_has_addresses_and_identity() {
    let ns1 = TestNetns::new("n1");
    let ns2 = TestNetns::new("n2");
    let veth = TestVeth::between(&ns1, &ns2);
    let (a, b) = (veth.a(), veth.b());

    assert!(
        a.name.starts_with("shdt") && a.name.len() <= 15,
        "{}",
        a.name
    );
    assert_eq!(a.netns.as_deref(), Some(ns1.name()));
    assert_eq!(b.netns.as_deref(), Some(ns2.name()));
    // The ends live in the namespaces, not on the host.
    assert!(!link::exists(&a.name, None).unwrap());
    assert!(!link::exists(&b.name, None).unwrap());
    assert!(link::exists(&a.name, Some(&ns1)).unwrap());
    assert!(link::exists(&b.name, Some(&ns2)).unwrap());
    assert!(!link::exists(&a.name, Some(&ns2)).unwrap());

    // Reported identity matches what the kernel says inside each namespace.
    let info = link::info(&a.name, Some(&ns1)).unwrap();
    assert_eq!(info.index, a.ifindex);
    assert_eq!(info.mac, Some(a.mac));
    assert!(info.up);
    assert_eq!(link::ifindex(&b.name, Some(&ns2)).unwrap(), b.ifindex);
    assert_eq!(link::mac(&b.name, Some(&ns2)).unwrap(), b.mac);
    assert_ne!(a.mac, b.mac);

    // Addresses from the test ranges, readable from sysfs-independent sources: the kernel
    // accepts binding to them inside the right namespace only.
    let v4 = a.ipv4.unwrap();
    assert_eq!(v4.octets()[0], 198);
    assert_eq!(a.ipv6.unwrap().octets()[0], 0xfd);
    let bind_v4 = SocketAddr::new(IpAddr::V4(v4), 0);
    assert!(ns1.run(|| TcpListener::bind(bind_v4)).is_ok());
    assert!(ns2.run(|| TcpListener::bind(bind_v4)).is_err());
    // nodad: the IPv6 address is bindable at once.
    let bind_v6 = SocketAddr::new(IpAddr::V6(a.ipv6.unwrap()), 0);
    assert!(ns1.run(|| TcpListener::bind(bind_v6)).is_ok());
    assert_eq!((IPV4_PREFIX, IPV6_PREFIX), (30, 64));

    // The caller's thread never changed namespace.
    assert!(!link::exists(&a.name, None).unwrap());
}

#[test]
fn real_http_client_reaches_real_server_over_ipv4_and_ipv6() {
    let server_ns = TestNetns::new("sv");
    let client_ns = TestNetns::new("cl");
    let veth = TestVeth::between(&server_ns, &client_ns);
    let server_cg = TestCgroup::new("sv");
    let www = TestDir::new("www");
    let token = format!("shadow-harness-{}", unique_name("tok"));
    fs::write(www.path().join("hello.txt"), &token).unwrap();

    // Dual-stack server bound to "::" inside the server namespace and the test cgroup.
    let mut cmd = Command::new("python3");
    cmd.args(["-m", "http.server", "--bind", "::", &HTTP_PORT.to_string()])
        .current_dir(www.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    let mut server = spawn_in(Some(&server_ns), Some(&server_cg), cmd);

    let v4 = IpAddr::V4(veth.a().ipv4.unwrap());
    let v6 = IpAddr::V6(veth.a().ipv6.unwrap());
    wait_for_listener(&client_ns, SocketAddr::new(v4, HTTP_PORT));
    assert!(
        server.try_wait().unwrap().is_none(),
        "the HTTP server exited early"
    );

    assert_eq!(curl_in(&client_ns, &url(v4, "/hello.txt")), token);
    assert_eq!(curl_in(&client_ns, &url(v6, "/hello.txt")), token);

    // The server (and anything it forked) is in the test cgroup.
    assert!(server_cg.procs().unwrap().contains(&server.pid()));
}

#[test]
fn sockets_made_inside_namespaces_talk_over_ipv6() {
    let ns1 = TestNetns::new("s1");
    let ns2 = TestNetns::new("s2");
    let veth = TestVeth::builder()
        .a_netns(&ns1)
        .b_netns(&ns2)
        .tx_checksum_off()
        .create();
    let server_addr = SocketAddr::new(IpAddr::V6(veth.a().ipv6.unwrap()), 7000);

    // A socket keeps the namespace it was created in, whichever thread uses it later.
    let listener = ns1.run(|| TcpListener::bind(server_addr)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut conn, peer) = listener.accept().unwrap();
        let mut buf = [0u8; 5];
        conn.read_exact(&mut buf).unwrap();
        conn.write_all(b"pong:").unwrap();
        conn.write_all(&buf).unwrap();
        peer
    });
    let mut client = ns2
        .run(|| TcpStream::connect_timeout(&server_addr, Duration::from_secs(5)))
        .unwrap();
    client.write_all(b"hello").unwrap();
    let mut reply = String::new();
    client.read_to_string(&mut reply).unwrap();
    assert_eq!(reply, "pong:hello");
    let peer = server.join().unwrap();
    assert_eq!(peer.ip(), IpAddr::V6(veth.b().ipv6.unwrap()));

    // tx checksum offload was turned off on both ends.
    assert!(!link::tx_checksum(&veth.a().name, Some(&ns1)).unwrap());
    assert!(!link::tx_checksum(&veth.b().name, Some(&ns2)).unwrap());
}

#[test]
fn link_state_mac_and_offload_controls() {
    let ns = TestNetns::new("lk");
    let veth = TestVeth::builder()
        .a_netns(&ns)
        .without_addresses()
        .create();
    let a = veth.a();
    // End B stayed in the host namespace.
    assert_eq!(veth.b().netns, None);
    assert!(link::exists(&veth.b().name, None).unwrap());
    assert_eq!(veth.b().ipv4, None);

    let mac: MacAddr = "02:5d:00:00:00:01".parse().unwrap();
    link::set_mac(&a.name, Some(&ns), mac).unwrap();
    assert_eq!(link::mac(&a.name, Some(&ns)).unwrap(), mac);

    link::set_down(&a.name, Some(&ns)).unwrap();
    assert!(!link::info(&a.name, Some(&ns)).unwrap().up);
    link::set_up(&a.name, Some(&ns)).unwrap();
    assert!(link::info(&a.name, Some(&ns)).unwrap().up);

    assert!(
        link::tx_checksum(&a.name, Some(&ns)).unwrap(),
        "veth offloads by default"
    );
    link::disable_tx_checksum(&a.name, Some(&ns)).unwrap();
    assert!(!link::tx_checksum(&a.name, Some(&ns)).unwrap());
    link::set_tx_checksum(&a.name, Some(&ns), true).unwrap();
    assert!(link::tx_checksum(&a.name, Some(&ns)).unwrap());

    // Errors name the interface and the namespace.
    let err = link::set_up("shdtnosuchif", Some(&ns)).unwrap_err();
    assert!(matches!(err, link::LinkError::NotFound { .. }), "{err:?}");
    let shown = err.to_string();
    assert!(
        shown.contains("shdtnosuchif") && shown.contains(ns.name()),
        "{shown}"
    );
    let err = link::set_up("shdt-name-too-long", None).unwrap_err();
    assert!(err.to_string().contains("shdt-name-too-long"), "{err}");
}

/// `tc` in `ns`, asserting success.
fn tc_in(ns: &TestNetns, args: &[&str]) -> String {
    let out = Command::new("ip")
        .args(["netns", "exec", ns.name(), "tc"])
        .args(args)
        .output()
        .expect("tc");
    assert!(
        out.status.success(),
        "tc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The clsact qdisc the agent adds on kernels without TCX is taken off only while no filter
/// uses it, so another tool's filters never go with it.
#[test]
fn a_clsact_qdisc_is_removed_only_when_no_filter_uses_it() {
    let ns = TestNetns::new("cq");
    let veth = TestVeth::builder()
        .a_netns(&ns)
        .without_addresses()
        .create();
    let a = &veth.a().name;
    assert_eq!(
        link::remove_clsact_if_empty(a, Some(&ns)).unwrap(),
        link::ClsactRemoval::Absent
    );
    tc_in(&ns, &["qdisc", "add", "dev", a, "clsact"]);
    tc_in(
        &ns,
        &[
            "filter", "add", "dev", a, "egress", "pref", "7", "u32", "match", "u32", "0", "0",
        ],
    );
    assert!(matches!(
        link::remove_clsact_if_empty(a, Some(&ns)).unwrap(),
        link::ClsactRemoval::InUse { .. }
    ));
    assert!(tc_in(&ns, &["qdisc", "show", "dev", a]).contains("clsact"));
    tc_in(&ns, &["filter", "del", "dev", a, "egress", "pref", "7"]);
    assert_eq!(
        link::remove_clsact_if_empty(a, Some(&ns)).unwrap(),
        link::ClsactRemoval::Removed
    );
    assert!(!tc_in(&ns, &["qdisc", "show", "dev", a]).contains("clsact"));
    assert!(matches!(
        link::remove_clsact_if_empty("shdtnosuchif", Some(&ns)),
        Err(link::LinkError::NotFound { .. })
    ));
}

#[test]
fn netns_is_visible_like_ip_netns_add() {
    let ns = TestNetns::new("vis");
    let path = Path::new("/run/netns").join(ns.name());
    assert_eq!(ns.path(), path);
    assert!(netns::list().unwrap().contains(&ns.name().to_owned()));
    // A second handle refers to the same namespace (same nsfs inode).
    let again = NetNs::open(ns.name()).unwrap();
    let ino = |fd: std::os::fd::BorrowedFd<'_>| nix::sys::stat::fstat(fd).unwrap().st_ino;
    assert_eq!(ino(again.fd()), ino(ns.fd()));
    assert_ne!(ino(again.fd()), ino(NetNs::current().unwrap().fd()));
    drop(again); // an opened handle does not remove anything
    assert!(path.exists());
    // lo is up inside.
    assert!(link::info("lo", Some(&ns)).unwrap().up);
    // Creating the same name again is refused.
    assert!(matches!(
        NetNs::create(ns.name()),
        Err(netns::NetnsError::AlreadyExists { .. })
    ));
    let name = ns.name().to_owned();
    drop(ns);
    assert!(!path.exists());
    assert!(!netns::list().unwrap().contains(&name));
    assert!(matches!(
        NetNs::open(&name),
        Err(netns::NetnsError::NotFound { .. })
    ));
}

#[test]
fn process_in_cgroup_appears_in_every_hierarchy() {
    let group = TestCgroup::new("cg");
    let child = spawn_in(None, Some(&group), sleep_cmd(60));
    let pid = child.pid();

    // Identity: the cgroup id is the inode of the cgroup2 directory.
    let ino = fs::metadata(group.unified_path()).unwrap().ino();
    assert_eq!(group.id(), ino);
    assert!(group.id() > 1);

    // Listed in cgroup.procs of every directory (cgroup2 and each v1 controller).
    for dir in group.dirs() {
        let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap();
        assert!(
            procs.lines().any(|l| l.trim() == pid.to_string()),
            "pid {pid} missing from {}/cgroup.procs: {procs:?}",
            dir.display()
        );
    }
    assert_eq!(group.procs().unwrap(), vec![pid]);

    // /proc/PID/cgroup agrees, line by line.
    let self_view = fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap();
    let want = format!("/{}", group.name());
    let v2_line = self_view
        .lines()
        .find(|l| l.starts_with("0::"))
        .unwrap_or_else(|| panic!("no cgroup2 line in {self_view:?}"));
    assert_eq!(&v2_line[3..], want);
    match host_cgroup_layout() {
        CgroupLayout::Hybrid { v1 } => {
            assert_eq!(group.dirs().len(), 1 + v1.len());
            for controller in v1 {
                let dir = group.path(controller).unwrap();
                assert_eq!(
                    dir,
                    Path::new("/sys/fs/cgroup")
                        .join(controller.as_str())
                        .join(group.name())
                );
                let line = self_view
                    .lines()
                    .find(|l| {
                        l.split(':')
                            .nth(1)
                            .is_some_and(|c| c.split(',').any(|c| c == controller.as_str()))
                    })
                    .unwrap_or_else(|| panic!("no {controller} line in {self_view:?}"));
                assert!(line.ends_with(&format!(":{want}")), "{line}");
            }
            // cpuset got usable cpus/mems copied from its parent.
            assert!(!group
                .read(Controller::Cpuset, "cpuset.cpus")
                .unwrap()
                .trim()
                .is_empty());
            // A v1 limit is writable through the guard.
            group.write(Controller::Pids, "pids.max", "64").unwrap();
            assert_eq!(
                group.read(Controller::Pids, "pids.max").unwrap().trim(),
                "64"
            );
        }
        CgroupLayout::Unified => {
            assert_eq!(group.dirs().len(), 1);
        }
    }
    // cgroup2 statistics are readable.
    assert!(group
        .read(Controller::Unified, "cgroup.events")
        .unwrap()
        .contains("populated 1"));

    let dirs = group.dirs().to_vec();
    drop(child);
    drop(group);
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn add_pid_and_drop_kills_what_is_inside() {
    let group = TestCgroup::new("kl");
    // Not spawned in the group: moved in afterwards with add_pid.
    let mut guard = harness::spawn_in(None, None, sleep_cmd(60));
    guard.disarm(); // the group's Drop must do the killing
    let child = guard.child_mut();
    group.add_pid(child.id()).unwrap();
    for controller in group.paths().iter().map(|(c, _)| *c) {
        assert!(
            group.procs_of(controller).unwrap().contains(&child.id()),
            "{controller}"
        );
    }
    let dirs = group.dirs().to_vec();
    drop(group); // SIGKILLs the process (nobody else would), then removes the dirs
    let status = child.wait().unwrap();
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.signal(), Some(libc::SIGKILL));
    for dir in dirs {
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}

#[test]
fn process_in_netns_and_cgroup_sees_only_the_namespace_links() {
    let ns = TestNetns::new("pn");
    let group = TestCgroup::new("pn");
    let veth = TestVeth::builder().a_netns(&ns).create();
    let mut cmd = Command::new("cat");
    cmd.arg("/proc/net/dev").stdout(Stdio::piped());
    let mut child = spawn_in(Some(&ns), Some(&group), cmd);
    let mut out = String::new();
    child
        .child_mut()
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert!(out.contains(&format!("{}:", veth.a().name)), "{out}");
    assert!(!out.contains(&format!("{}:", veth.b().name)), "{out}");
    assert!(!out.contains("eth0:"), "{out}");
}

/// Everything a test body created, recorded so the checks can run after it panicked.
#[derive(Default, Debug)]
struct Created {
    netns: Vec<String>,
    links: Vec<String>,
    cgroup_dirs: Vec<PathBuf>,
    pids: Vec<u32>,
}

fn assert_all_gone(created: &Created) {
    for name in &created.netns {
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "netns {name} left behind"
        );
        assert!(
            !netns::list().unwrap().contains(name),
            "netns {name} still listed"
        );
    }
    for name in &created.links {
        assert!(
            !link::exists(name, None).unwrap(),
            "link {name} left behind"
        );
    }
    for dir in &created.cgroup_dirs {
        assert!(!dir.exists(), "cgroup {} left behind", dir.display());
    }
    for pid in &created.pids {
        // Reaped by the guards: no such process (or a reused pid that is not a sleep of ours).
        let cmdline = fs::read_to_string(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        assert!(
            !cmdline.starts_with("sleep"),
            "process {pid} survived: {cmdline:?}"
        );
    }
}

#[test]
fn everything_is_removed_even_when_the_test_panics() {
    let created = std::sync::Mutex::new(Created::default());
    let result = catch_unwind(AssertUnwindSafe(|| {
        let ns1 = TestNetns::new("p1");
        let ns2 = TestNetns::new("p2");
        let joined = TestVeth::between(&ns1, &ns2);
        let host_end = TestVeth::builder().b_netns(&ns1).create();
        let group = TestCgroup::new("pc");
        let in_both = spawn_in(Some(&ns1), Some(&group), sleep_cmd(60));
        let in_group = spawn_in(None, Some(&group), sleep_cmd(60));
        {
            let mut c = created.lock().unwrap();
            c.netns = vec![ns1.name().to_owned(), ns2.name().to_owned()];
            c.links = vec![
                joined.a().name.clone(),
                joined.b().name.clone(),
                host_end.a().name.clone(),
                host_end.b().name.clone(),
            ];
            c.cgroup_dirs = group.dirs().to_vec();
            c.pids = vec![in_both.pid(), in_group.pid()];
        }
        // Everything exists right before the panic.
        assert!(link::exists(&host_end.a().name, None).unwrap());
        assert!(group.procs().unwrap().len() == 2);
        panic!("deliberate panic inside a test body");
    }));
    let payload = result.expect_err("the body must panic");
    assert_eq!(
        payload.downcast_ref::<&str>().copied(),
        Some("deliberate panic inside a test body")
    );
    let created = created.into_inner().unwrap();
    assert_eq!(created.netns.len(), 2);
    assert_eq!(created.links.len(), 4);
    assert_all_gone(&created);
}

#[test]
fn everything_is_removed_on_normal_drop() {
    let mut created = Created::default();
    {
        let ns1 = TestNetns::new("d1");
        let ns2 = TestNetns::new("d2");
        let veth = TestVeth::between(&ns1, &ns2);
        let group = TestCgroup::new("dc");
        let child = spawn_in(Some(&ns2), Some(&group), sleep_cmd(60));
        created.netns = vec![ns1.name().to_owned(), ns2.name().to_owned()];
        created.links = vec![veth.a().name.clone(), veth.b().name.clone()];
        created.cgroup_dirs = group.dirs().to_vec();
        created.pids = vec![child.pid()];
        // Drop order here: child, group, veth, ns2, ns1 (reverse declaration). The veth guard
        // keeps handles on both namespaces, so any order works; check the reverse too below.
    }
    assert_all_gone(&created);

    // Namespaces dropped before the veth guard: the pair is still deleted.
    let ns1 = TestNetns::new("o1");
    let ns2 = TestNetns::new("o2");
    let veth = TestVeth::between(&ns1, &ns2);
    let names = (veth.a().name.clone(), veth.b().name.clone());
    let probe = ns1.try_clone().unwrap();
    drop(ns1);
    drop(ns2);
    assert!(link::exists(&names.0, Some(&probe)).unwrap());
    drop(veth);
    assert!(!link::exists(&names.0, Some(&probe)).unwrap());
}

#[test]
fn sweep_removes_leftovers_of_killed_runs() {
    // Simulate a killed run: persistent objects with one unique prefix, so the sweep below
    // cannot touch objects of tests running in parallel.
    let base = unique_name("");
    let ns = NetNs::create(&format!("{base}-n"))
        .unwrap()
        .into_persistent();
    let ns_name = ns.name().to_owned();
    let (host_a, host_b) = link::Veth::create(
        link::VethEnd::here(&format!("{base}-a")),
        link::VethEnd::in_netns(&format!("{base}-b"), &ns),
    )
    .unwrap()
    .into_persistent();
    let (host_x, host_y) = link::Veth::create(
        link::VethEnd::here(&format!("{base}-x")),
        link::VethEnd::here(&format!("{base}-y")),
    )
    .unwrap()
    .into_persistent();
    drop(ns);
    let group = shadow_agent::sys::cgroup::Cgroup::create(&format!("{base}-c"))
        .unwrap()
        .into_persistent();
    let dirs = group.dirs().to_vec();
    let mut orphan_guard = harness::spawn_in(None, None, sleep_cmd(60));
    orphan_guard.disarm(); // only the sweep may kill it
    let orphan = orphan_guard.child_mut();
    group.add_pid(orphan.id()).unwrap();
    drop(group);
    let scratch = std::env::temp_dir().join(format!("{base}-d"));
    fs::create_dir(&scratch).unwrap();
    fs::write(scratch.join("file"), "x").unwrap();

    let found = leftovers_with_prefix(&base);
    assert!(
        found.contains(&Leftover::TempDir(scratch.clone())),
        "{found:?}"
    );
    assert!(
        found.contains(&Leftover::Netns(ns_name.clone())),
        "{found:?}"
    );
    assert!(found.contains(&Leftover::Link(host_a.clone())), "{found:?}");
    assert!(found.contains(&Leftover::Link(host_x.clone())), "{found:?}");
    assert!(found.contains(&Leftover::Link(host_y.clone())), "{found:?}");
    assert!(
        !found.contains(&Leftover::Link(host_b.clone())),
        "peer is in the netns"
    );
    for dir in &dirs {
        assert!(
            found.contains(&Leftover::Cgroup(dir.clone())),
            "{dir:?} not in {found:?}"
        );
    }
    // The unprefixed listing sees them too.
    let all = harness::leftovers();
    assert!(all.contains(&format!("netns {ns_name}")), "{all:?}");

    let report = sweep_with_prefix(&base);
    assert!(report.failed.is_empty(), "{:?}", report.failed);
    assert_eq!(report.removed.len(), found.len());
    assert!(leftovers_with_prefix(&base).is_empty());
    for dir in &dirs {
        assert!(!dir.exists());
    }
    assert!(!link::exists(&host_a, None).unwrap());
    assert!(!link::exists(&host_x, None).unwrap());
    assert!(!Path::new("/run/netns").join(&ns_name).exists());
    assert!(!scratch.exists());
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(orphan.wait().unwrap().signal(), Some(libc::SIGKILL));
}

#[test]
fn failed_creation_names_the_object() {
    require_privileges();
    // An interface name over 15 bytes fails before any syscall, naming the interface.
    let ns = TestNetns::new("er");
    let err = link::Veth::create(
        link::VethEnd::in_netns("shdt-this-is-too-long", &ns),
        link::VethEnd::here("shdtok"),
    )
    .unwrap_err();
    let shown = err.to_string();
    assert!(
        shown.contains("shdt-this-is-too-long") && shown.contains("15"),
        "{shown}"
    );
    // A duplicate pair name is reported as such.
    let veth = TestVeth::builder()
        .a_netns(&ns)
        .b_netns(&ns)
        .without_addresses()
        .create();
    let err = link::Veth::create(
        link::VethEnd::in_netns(&veth.a().name, &ns),
        link::VethEnd::in_netns(&unique_name("zz"), &ns),
    )
    .unwrap_err();
    assert!(
        matches!(err, link::LinkError::AlreadyExists { .. }),
        "{err:?}"
    );
}
