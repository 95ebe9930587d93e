//! `shadow-agent run` keeps mirroring when its interfaces are removed and made again under
//! it, as a restarted container or VM does to its veth: the primary's interface and then the
//! configured shadow interface are deleted and created again with the same names, and
//! datagrams sent after each still reach a real socket in the shadow namespace. One removed
//! for good is reported (`gone`, `mirror.missing`) and the agent exits cleanly. Every program
//! the mirror puts on the primary's interface is attached again (XDP counters and TCP
//! sessions are on, so the XDP program and `shadow_isn` are among them; a failed attach
//! would be an `attach_failed` event, not `recreated`). Topology: `common::mirrored`.

mod common;

use std::time::Duration;

use common::mirrored::{link_event, wait_missing, ShadowSocket, Topo, NODE};

#[test]
fn the_mirror_follows_its_interfaces_when_they_are_made_again() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    follow(&tag, 'f', None);
}

/// The same with clsact filters, as on kernels before 6.6 (`SHADOW_TC_MODE=clsact`): an
/// interface made again has no clsact qdisc, which the re-attach must add.
#[test]
fn the_mirror_follows_its_interfaces_with_clsact_filters() {
    let tag = format!("{:x}", (std::process::id() & 0xfffff) ^ 1);
    follow(&tag, 'k', Some("clsact"));
}

fn follow(tag: &str, letter: char, tc_mode: Option<&str>) {
    let tag = tag.to_owned();
    let mut topo = Topo::new(&tag, letter);
    let sock = ShadowSocket::start(&topo.shadow, 9999);
    let rule =
        format!("[[mirror.rules]]\ndst = \"{NODE}/32\"\nports = \"9999\"\nproto = \"udp\"\n");
    let config = topo.mirror_toml("xdp = true", &rule);
    let mut agent = common::ScratchAgent::start(
        &tag,
        &format!("mfw{letter}"),
        Some(&topo.node),
        |_| config,
        |cmd| {
            if let Some(m) = tc_mode {
                cmd.env("SHADOW_TC_MODE", m);
            }
        },
    );
    let s = common::wait_status(
        &agent.status,
        "first status",
        Duration::from_secs(30),
        |s| s["mirror"]["cloned"].is_u64(),
    );
    assert_eq!(s["mirror"]["tc_mode"], tc_mode.unwrap_or("tcx"), "{s}");
    let d = b"datagram";
    let got = sock
        .expect_more(&topo, 9999, d, 0, 30, "before any change")
        .len();

    // The primary's interface removed and made again (same names, new indexes).
    topo.front = None;
    topo.make_front();
    let ev = link_event(&agent.lines, Some(&topo.nc), &["recreated", "back"]);
    assert_eq!(ev["role"], "interface", "{ev}");
    assert_ne!(ev["old_ifindex"], ev["new_ifindex"], "{ev}");
    let got = got
        + sock
            .expect_more(
                &topo,
                9999,
                d,
                got,
                30,
                "after the primary's was made again",
            )
            .len();

    // The shadow interface removed and made again.
    topo.back = None;
    topo.make_back();
    let ev = link_event(&agent.lines, Some(&topo.hs), &["recreated", "back"]);
    assert_eq!(ev["role"], "shadow_interface", "{ev}");
    sock.expect_more(&topo, 9999, d, got, 30, "after the shadow's was made again");

    // The primary's removed for good: reported, and the agent still exits cleanly.
    topo.front = None;
    let ev = link_event(&agent.lines, Some(&topo.nc), &["gone"]);
    assert!(ev["new_ifindex"].is_null(), "{ev}");
    let s = wait_missing(&agent.status, &topo.nc);
    assert!(s["mirror"]["cloned"].is_u64(), "{s}");
    let (st, err) = common::terminate(&mut agent.proc, Duration::from_secs(30));
    assert!(st.success(), "agent failed: {err}");
}
