//! `[[mirror.rules]]` change with a reload, without reattaching the mirror: a UDP rule with a
//! 4-byte mask on port 9999 becomes one on ports 9998-9999 with a 6-byte mask. Real sockets
//! in the shadow namespace receive the clones: before the reload, port 9999's datagrams
//! arrive with their first 4 bytes masked and the rest intact, and port 9998 gets nothing;
//! after it, both ports' datagrams arrive with 6 bytes masked. A second reload changes the
//! fill byte (`[mirror.mask]`), and the next datagrams are masked with it. Topology:
//! `common::mirrored`.

mod common;

use std::time::Duration;

use common::mirrored::{ShadowSocket, Topo, NODE};

fn rules(ports: &str, mask: &str) -> String {
    format!(
        "[[mirror.rules]]\ndst = \"{NODE}/32\"\nports = \"{ports}\"\nproto = \"udp\"\n\
         mask_ranges = [\"{mask}\"]\n"
    )
}

const SECRET: &[u8] = b"SECRET-then-the-rest-of-the-payload";

/// Every datagram has its first `n` bytes replaced by one fill byte, and the rest as sent.
fn masked(got: &[Vec<u8>], n: usize, what: &str) {
    assert!(!got.is_empty(), "{what}: nothing received");
    for d in got {
        assert_eq!(d.len(), SECRET.len(), "{what}: {d:?}");
        let fill = d[0];
        assert!(
            d[..n].iter().all(|b| *b == fill) && !SECRET[..n].contains(&fill),
            "{what}: the first {n} bytes are not masked: {:?}",
            String::from_utf8_lossy(d)
        );
        assert_eq!(
            &d[n..],
            &SECRET[n..],
            "{what}: bytes after the mask changed"
        );
    }
}

/// `shadow-agent reload` of `agent` (asserted to succeed); the reload event it published.
fn reload(agent: &common::ScratchAgent) -> serde_json::Value {
    let out = common::reload(&agent.status);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::status(&agent.status)["last_reload"].clone()
}

#[test]
fn a_reload_changes_what_the_mirror_selects_and_masks_without_a_restart() {
    let tag = format!("{:x}", std::process::id() & 0xfffff);
    let topo = Topo::new(&tag, 'r');
    let s9999 = ShadowSocket::start(&topo.shadow, 9999);
    let s9998 = ShadowSocket::start(&topo.shadow, 9998);
    let start = topo.mirror_toml("", &rules("9999", "0:4"));
    let agent = common::ScratchAgent::start(&tag, "mrl", Some(&topo.node), |_| start, |_| {});
    common::wait_status(
        &agent.status,
        "first status",
        Duration::from_secs(30),
        |s| s["mirror"]["cloned"].is_u64(),
    );

    let got = s9999.expect_more(&topo, 9999, SECRET, 0, 30, "port 9999 at start");
    masked(&got, 4, "port 9999 at start");
    topo.send(9998, SECRET, 30);
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(s9998.count(), 0, "port 9998 is not selected yet");

    agent.configure(&topo.mirror_toml("", &rules("9998-9999", "0:6")));
    let ev = &reload(&agent);
    assert_eq!(
        ev["applied"]["mirror.rules"],
        serde_json::json!([1, 1]),
        "{ev}"
    );
    assert_eq!(ev["restart_needed"], serde_json::json!([]), "{ev}");

    let got = s9998.expect_more(&topo, 9998, SECRET, 0, 30, "port 9998 after the reload");
    masked(&got, 6, "port 9998 after the reload");
    let n = s9999.count();
    let got = s9999.expect_more(&topo, 9999, SECRET, n, 30, "port 9999 after the reload");
    masked(&got, 6, "port 9999 after the reload");
    assert!(got.iter().all(|d| d[0] == b'*'), "the default fill");

    // What masking writes changes with a reload too (`[mirror.mask]`): the fill byte.
    agent.configure(&format!(
        "{}[mirror.mask]\nfill = \"#\"\n",
        topo.mirror_toml("", &rules("9998-9999", "0:6"))
    ));
    let ev = &reload(&agent);
    assert_eq!(
        ev["applied"],
        serde_json::json!({"mirror.mask": ["mirror.mask.fill"]}),
        "{ev}"
    );
    let n = s9999.count();
    let got = s9999.expect_more(
        &topo,
        9999,
        SECRET,
        n,
        30,
        "port 9999 after the mask reload",
    );
    masked(&got, 6, "port 9999 after the mask reload");
    assert!(got.iter().all(|d| d[0] == b'#'), "the new fill");
    agent.stop();
}
