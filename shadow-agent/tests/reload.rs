//! `shadow-agent run` re-reads its config on SIGHUP, as an operator uses it: the agent runs a
//! mirror (UDP to a shadow namespace) and an allocator in dry run over a throttled process.
//! One edit of the file lowers the sample rate to 0 and lets the allocator act: both take
//! effect without a restart (the clones stop, the quota is raised), as does a rule's new
//! ports, and XDP turned on is named as needing a restart and left as it runs. (What the
//! new rules select and mask is checked in `mirror_reload.rs`.) A broken file changes nothing and makes
//! `shadow-agent reload` fail. On exit the hand-set quota is back.
//!
//! ```text
//! client ns ──veth── node ns (agent; mirror on nc) ──veth── primary ns
//!                      │ hs ──veth── ht  shadow ns
//! ```

mod common;

use std::{
    net::{Ipv4Addr, SocketAddr, UdpSocket},
    time::Duration,
};

use shadow_agent::sys::{
    link::{self, MacAddr, Veth, VethEnd},
    netns::NetNs,
};

const CLIENT: Ipv4Addr = Ipv4Addr::new(198, 19, 37, 1);
const NODE_C: Ipv4Addr = Ipv4Addr::new(198, 19, 37, 2);
const NODE_P: Ipv4Addr = Ipv4Addr::new(198, 19, 38, 1);
const PRIMARY: Ipv4Addr = Ipv4Addr::new(198, 19, 38, 2);
const SHADOW_MAC: [u8; 6] = [0x02, 0x5d, 0x00, 0x00, 0x37, 0x01];
const DATAGRAMS: u64 = 40;

fn config(nc: &str, hs: &str, name: &str, state: &std::path::Path, edit: &str) -> String {
    // "edited": the rate, dry_run and the rule's ports change live; XDP needs a restart.
    let (rate, dry, ports, xdp) = match edit {
        "start" => ("1.0", "true", "9999", "false"),
        "edited" => ("0.0", "false", "9998-9999", "true"),
        _ => ("1.5", "false", "9999", "false"), // invalid: not a fraction
    };
    format!(
        r#"
[profile]
interval_ms = 300

[metrics]
listen = "off"

[mirror]
interface = "{nc}"
shadow_interface = "{hs}"
shadow_mac = "{mac}"
sample_rate = {rate}
xdp = {xdp}
[[mirror.rules]]
dst = "{PRIMARY}/32"
ports = "{ports}"
proto = "udp"
{allocate}"#,
        mac = MacAddr(SHADOW_MAC),
        allocate = common::cpu_allocate_toml(name, dry == "true", state),
    )
}

/// A mirror counter in the newest status line.
fn counter(path: &std::path::Path, name: &str) -> Option<u64> {
    common::status(path)["mirror"][name].as_u64()
}

/// Sends `DATAGRAMS` datagrams from the client to the primary's port 9999, paced.
fn burst(client: &NetNs) {
    client
        .run_in(|| {
            let s = UdpSocket::bind("0.0.0.0:0").expect("client socket");
            for i in 0..DATAGRAMS {
                s.send_to(
                    format!("datagram {i}").as_bytes(),
                    SocketAddr::from((PRIMARY, 9999)),
                )
                .expect("send");
                std::thread::sleep(Duration::from_millis(2));
            }
        })
        .expect("enter the client netns");
}

#[test]
fn sighup_changes_the_sample_rate_and_dry_run_live_and_names_what_needs_a_restart() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let common::Routed {
        client,
        node,
        primary: _primary,
        nc,
        links: _links,
    } = common::Routed::new(
        &tag,
        'h',
        common::Addrs {
            client: CLIENT,
            node_c: NODE_C,
            node_p: NODE_P,
            primary: PRIMARY,
        },
    );
    let shadow = NetNs::create(&format!("shdt{tag}-hs")).expect("shadow netns");
    let (hs, ht) = (format!("shdt{tag}hs"), format!("shdt{tag}ht"));
    let _shadow_link = Veth::create(
        VethEnd::in_netns(&hs, &node),
        VethEnd::in_netns(&ht, &shadow),
    )
    .expect("shadow veth");
    link::set_mac(&ht, Some(&shadow), MacAddr(SHADOW_MAC)).expect("shadow MAC");
    for (ifname, ns) in [(&hs, &node), (&ht, &shadow)] {
        link::set_up(ifname, Some(ns)).expect("up");
    }

    let name = format!("shdt{tag}-rld");
    let (cg, _burner) = common::throttled_burner(&name);

    let mut agent = common::ScratchAgent::start(
        &tag,
        "rld",
        Some(&node),
        |dir| config(&nc, &hs, &name, &dir.join("state"), "start"),
        |_| {},
    );
    let state = agent.dir.join("state");
    let write = |agent: &common::ScratchAgent, edit| {
        agent.configure(&config(&nc, &hs, &name, &state, edit));
    };
    let (lines, status_file) = (&agent.lines, agent.status.clone());
    let first = common::wait_status(&status_file, "first status", Duration::from_secs(30), |s| {
        s["mirror"]["cloned"].is_u64()
    });

    // Before: every datagram is cloned; the allocator only says what it would do.
    let cloned0 = first["mirror"]["cloned"].as_u64().unwrap();
    burst(&client);
    common::wait_status(
        &status_file,
        "clones at rate 1",
        Duration::from_secs(10),
        |s| s["mirror"]["cloned"].as_u64().unwrap_or(0) >= cloned0 + DATAGRAMS,
    );
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(
        common::quota(&cg),
        common::ORIGINAL_QUOTA,
        "a dry run wrote the quota"
    );

    // The edit: sample rate 0, allocator live, the rule's ports widened (live), XDP on
    // (named for a restart).
    write(&agent, "edited");
    common::hup(agent.proc.pid());
    let ev = common::next_event(lines, "reload");
    assert_eq!(
        ev["applied"]["mirror.sample_rate"],
        serde_json::json!([1.0, 0.0]),
        "{ev}"
    );
    assert_eq!(
        ev["applied"]["allocate.dry_run"],
        serde_json::json!([true, false]),
        "{ev}"
    );
    assert_eq!(
        ev["applied"]["mirror.rules"],
        serde_json::json!([1, 1]),
        "{ev}"
    );
    assert_eq!(ev["restart_needed"], serde_json::json!(["mirror"]), "{ev}");
    assert_eq!(ev["errors"], serde_json::json!([]), "{ev}");
    let s = common::wait_status(
        &status_file,
        "sample rate 0",
        Duration::from_secs(10),
        |s| s["sample_rate"].as_f64() == Some(0.0) && s["last_reload"] == ev,
    );
    let (cloned1, out1) = (
        s["mirror"]["cloned"].as_u64().unwrap(),
        s["mirror"]["sampled_out"].as_u64().unwrap(),
    );
    burst(&client);
    common::wait_status(
        &status_file,
        "sampled out at rate 0",
        Duration::from_secs(10),
        |s| s["mirror"]["sampled_out"].as_u64().unwrap_or(0) >= out1 + DATAGRAMS,
    );
    assert_eq!(
        counter(&status_file, "cloned"),
        Some(cloned1),
        "cloned at rate 0"
    );
    // The throttled process gets its quota raised now that the allocator acts.
    common::wait_quota_change(&cg, common::ORIGINAL_QUOTA, "after dry_run = false");

    // A broken file, through `shadow-agent reload` (what systemd's ExecReload runs): nothing
    // changes, the command fails and names the key.
    write(&agent, "broken");
    let out = common::reload(&status_file);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "reload of a broken file: {stderr}"
    );
    assert!(
        stderr.contains("applied: nothing") && stderr.contains("mirror.sample_rate"),
        "{stderr}"
    );
    let ev = common::next_event(lines, "reload");
    assert_eq!(ev["applied"], serde_json::json!({}), "{ev}");
    let s = common::status(&status_file);
    assert_eq!(s["sample_rate"].as_f64(), Some(0.0), "{s}");
    // The edited file again: valid, nothing left to apply live, XDP still waits for a
    // restart; the command succeeds.
    write(&agent, "edited");
    let out = common::reload(&status_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "reloaded: applied: nothing; restart needed: mirror"
    );

    // SIGTERM: the hand-set quota comes back.
    let (st, err) = common::terminate(&mut agent.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
    assert_eq!(
        common::quota(&cg),
        common::ORIGINAL_QUOTA,
        "original quota restored on exit"
    );
}

fn managed_config(group: &str, state: &std::path::Path) -> String {
    format!(
        "[profile]\ninterval_ms = 300\n\n[metrics]\nlisten = \"off\"\n{}",
        common::cpu_allocate_toml(group, false, state)
    )
}

#[test]
fn sighup_swaps_the_managed_groups_and_gives_the_one_left_its_limits_back() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let (name_a, name_b) = (format!("shdt{tag}-mga"), format!("shdt{tag}-mgb"));
    let (cg_a, _burner_a) = common::throttled_burner(&name_a);
    let (cg_b, _burner_b) = common::throttled_burner(&name_b);
    let agent = common::ScratchAgent::start(
        &tag,
        "mg",
        None,
        |dir| managed_config(&name_a, &dir.join("state")),
        |_| {},
    );
    let state = agent.dir.join("state");

    // A throttled group under management gets more CPU; the other is left alone.
    common::wait_quota_change(&cg_a, common::ORIGINAL_QUOTA, "A managed");
    assert_eq!(common::quota(&cg_b), common::ORIGINAL_QUOTA);

    // The edit manages B instead of A: A has its hand-set quota back at once, B is raised.
    agent.configure(&managed_config(&name_b, &state));
    common::hup(agent.proc.pid());
    let ev = common::next_event(&agent.lines, "reload");
    assert_eq!(
        ev["applied"]["allocate.cgroups"],
        serde_json::json!({"added": [name_b], "removed": [name_a]}),
        "{ev}"
    );
    assert_eq!(ev["restart_needed"], serde_json::json!([]), "{ev}");
    assert_eq!(ev["errors"], serde_json::json!([]), "{ev}");
    assert_eq!(
        common::quota(&cg_a),
        common::ORIGINAL_QUOTA,
        "A's original quota restored at the reload"
    );
    common::wait_quota_change(&cg_b, common::ORIGINAL_QUOTA, "B managed after the reload");
    // A stays as it was given back (not managed any more).
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(common::quota(&cg_a), common::ORIGINAL_QUOTA);
    let audit = common::audit(&state);
    assert!(
        audit.iter().any(|e| e["resource"] == "restore"
            && e["cgroup"].as_str().is_some_and(|c| c.contains(&name_a))),
        "no restore of A in the audit log: {audit:?}"
    );

    agent.stop();
    assert_eq!(
        common::quota(&cg_b),
        common::ORIGINAL_QUOTA,
        "B's original quota restored on exit"
    );
}

#[test]
fn a_sighup_before_the_handler_exists_does_not_kill_the_agent() {
    // `systemctl reload` may come before `run` has its handler. To hold `run` there, its
    // config's token key file is a FIFO: loading the config blocks on reading it. A SIGHUP
    // then would terminate the process (SIGHUP's default action) unless `run` ignores it
    // from its start. Once the key is written, `run` goes on and stops at the interfaces,
    // which do not exist: exit 2 naming the key, not death by signal.
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let mut agent = common::ScratchAgent::start(
        &tag,
        "early",
        None,
        |dir| {
            let key = dir.join("key.fifo");
            let c = std::ffi::CString::new(key.to_str().expect("utf-8")).expect("path");
            // SAFETY: mkfifo(3) on a NUL-terminated path.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
            format!(
                r#"
[metrics]
listen = "off"

[mirror]
interface = "shdt{tag}nx"
shadow_interface = "shdt{tag}ny"
shadow_mac = "02:00:00:00:00:01"
[[mirror.rules]]
dst = "198.18.0.2/32"
proto = "udp"
[mirror.mask]
replace = "token"
key_file = "{key}"
"#,
                key = key.display()
            )
        },
        |_| {},
    );
    let key = agent.dir.join("key.fifo");
    // Opening the FIFO for writing returns once the agent has opened it to read the key.
    let mut fifo = std::fs::OpenOptions::new()
        .write(true)
        .open(&key)
        .expect("open the key FIFO");
    common::hup(agent.proc.pid());
    std::thread::sleep(Duration::from_millis(200));
    use std::io::Write as _;
    // (A killed agent leaves no reader: the write fails, and the status below says why.)
    let _ = writeln!(fifo, "00112233445566778899aabbccddeeff");
    drop(fifo);
    let (st, err) = common::wait_exit(&mut agent.proc, Duration::from_secs(30));
    assert_eq!(
        st.code(),
        Some(2),
        "killed by the early SIGHUP instead of going on: {st:?} {err}"
    );
    assert!(err.contains("mirror.interface"), "{err}");
}

#[test]
fn systemd_hears_ready_once_reload_can_find_the_agent_and_stopping_at_the_end() {
    // `Type=notify`: systemd holds `systemctl reload` (ExecReload = `shadow-agent reload`)
    // until READY=1, so READY must come only once the status file names the agent.
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let sock_path = std::env::temp_dir()
        .join(format!("shdt{tag}-notify"))
        .join("notify.sock");
    let mut sock = None;
    let agent = common::ScratchAgent::start(
        &tag,
        "notify",
        None,
        |_| {
            // Bound once the scratch directory exists, before the agent starts.
            let s = std::os::unix::net::UnixDatagram::bind(&sock_path).expect("notify socket");
            s.set_read_timeout(Some(Duration::from_secs(30)))
                .expect("timeout");
            sock = Some(s);
            "[profile]\ninterval_ms = 200\n\n[metrics]\nlisten = \"off\"\n".to_owned()
        },
        |cmd| {
            cmd.env("NOTIFY_SOCKET", &sock_path);
        },
    );
    let sock = sock.expect("notify socket");
    let status_file = &agent.status;
    let recv = || {
        let mut buf = [0u8; 512];
        let n = sock.recv(&mut buf).expect("a notification within 30 s");
        String::from_utf8_lossy(&buf[..n]).into_owned()
    };
    let ready = recv();
    assert!(ready.lines().any(|l| l == "READY=1"), "{ready:?}");
    // At READY the agent can be found and reloaded at once.
    let s = common::status(status_file);
    assert_eq!(
        s["agent_pid"].as_u64(),
        Some(u64::from(agent.proc.pid())),
        "{s}"
    );
    let out = common::reload(status_file);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    agent.stop();
    let stopping = recv();
    assert!(stopping.lines().any(|l| l == "STOPPING=1"), "{stopping:?}");
}

#[test]
fn sighup_runs_the_shadow_replicas_new_command_and_caps_in_place() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    // A group name: 1 to 8 of [a-z0-9].
    let name = format!("s{}", &tag[..tag.len().min(7)]);
    let config = |arg: &str, cores: &str, address: &str| {
        format!(
            r#"
[profile]
interval_ms = 300

[metrics]
listen = "off"

[shadow]
name = "{name}"
command = ["sleep", "{arg}"]
addresses = ["{address}"]
cpu_cores = {cores}
memory_mb = 64
"#
        )
    };
    let agent = common::ScratchAgent::start(
        &tag,
        "shr",
        None,
        |_| config("300", "0.25", "198.19.251.2/30"),
        |_| {},
    );
    let replica = |s: &serde_json::Value| s["shadow"][0].clone();
    let first = replica(&common::wait_status(
        &agent.status,
        "a running replica",
        Duration::from_secs(30),
        |s| replica(s)["pid"].is_u64(),
    ));
    let pid1 = first["pid"].as_u64().unwrap();
    let cmdline = |pid: u64| {
        std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
            .unwrap_or_default()
    };
    assert!(cmdline(pid1).contains("sleep 300"), "{}", cmdline(pid1));
    let quota = || {
        std::fs::read_to_string(format!("/sys/fs/cgroup/cpu/shd-{name}/cpu.cfs_quota_us"))
            .expect("the group's quota")
            .trim()
            .to_owned()
    };
    assert_eq!(quota(), "25000");

    // A new command (a new build of the primary, say) and a larger cap, without a restart:
    // the replica's process is replaced in its namespace; the group's cap is written.
    agent.configure(&config("301", "0.5", "198.19.251.2/30"));
    let out = common::reload(&agent.status);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let now = replica(&common::wait_status(
        &agent.status,
        "the replica on the new command",
        Duration::from_secs(20),
        |s| replica(s)["pid"].as_u64().is_some_and(|p| p != pid1),
    ));
    let pid2 = now["pid"].as_u64().unwrap();
    assert!(cmdline(pid2).contains("sleep 301"), "{}", cmdline(pid2));
    assert_eq!(
        now["netns"], first["netns"],
        "the replica's namespace stays"
    );
    assert_eq!(
        now["restarts"], 0,
        "a redeploy is not a crash restart: {now}"
    );
    assert!(
        !cmdline(pid1).contains("sleep 300"),
        "the old process still runs"
    );
    assert_eq!(quota(), "50000");
    let ev = &common::status(&agent.status)["last_reload"];
    assert_eq!(
        ev["applied"]["shadow"],
        serde_json::json!(["shadow.command", "shadow.cpu_cores"]),
        "{ev}"
    );

    // The replicas' addresses define their isolation: named for a restart, not applied.
    agent.configure(&config("301", "0.5", "198.19.251.6/30"));
    let out = common::reload(&agent.status);
    assert!(out.status.success());
    let ev = &common::status(&agent.status)["last_reload"];
    assert_eq!(ev["restart_needed"], serde_json::json!(["shadow"]), "{ev}");
    assert_eq!(
        replica(&common::status(&agent.status))["pid"].as_u64(),
        Some(pid2)
    );
    agent.stop();
}
