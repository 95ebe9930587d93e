//! Every eBPF program of the project is loaded into the running kernel; a rejection fails
//! the test naming the program, with the verifier's log. Each accepted program must also
//! leave half of the verifier's limit on processed instructions unused (the largest,
//! `shadow_mask`, is at 236,024 on 6.18; it was at 543,759 and `shadow_mirror` at 918,277
//! before their paths were joined, see docs/ARCHITECTURE.md): the count grows with the
//! number of paths the verifier must keep apart (and differs between kernels' verifiers),
//! and a program near the limit is one change or one kernel away from being rejected on a
//! user's node.

use std::collections::BTreeSet;

use shadow_agent::ebpf;
use shadow_common::maps::{
    PROG_BIO_TP, PROG_CONNECT4, PROG_CONNECT6, PROG_DISCARD_TC, PROG_EXEC_BTF, PROG_EXEC_RAW,
    PROG_EXIT_BTF, PROG_EXIT_RAW, PROG_FAULT_BTF, PROG_FAULT_KRET, PROG_FAULT_RAW,
    PROG_MIRROR_HOLD, PROG_MIRROR_ISN, PROG_MIRROR_LEARN, PROG_MIRROR_MASK, PROG_MIRROR_TC,
    PROG_MIRROR_TCP, PROG_MIRROR_XDP, PROG_SCHED_BTF, PROG_SCHED_NOP, PROG_SCHED_RAW,
    PROG_SENDMSG4, PROG_SENDMSG6, PROG_SKB_IN, PROG_SKB_OUT, PROG_WAKEUP_BTF, PROG_WAKEUP_NEW_BTF,
    PROG_WAKEUP_NEW_TP, PROG_WAKEUP_TP,
};
use shadow_tests::harness::{chain, require_privileges};

#[test]
fn every_program_passes_the_verifier() {
    require_privileges();
    let mut seen = BTreeSet::new();
    let mut rejected = Vec::new();
    let mut over_budget = Vec::new();
    for obj in ebpf::ALL {
        assert!(
            !obj.is_stub(),
            "{} is a stub object: the agent was built without bpf-linker",
            obj.name
        );
        let results = ebpf::verify_object(obj)
            .unwrap_or_else(|e| panic!("opening {}: {}", obj.name, chain(&e)));
        for r in results {
            println!(
                "{:<14} {:<14} {:>7} insns verified {:>8.1} ms",
                r.object,
                r.program,
                r.verified_insns.map_or("-".into(), |n| n.to_string()),
                r.load_ms
            );
            if r.error.is_none() {
                match r.verified_insns {
                    Some(n) if n > ebpf::VERIFIER_INSN_LIMIT / 2 => over_budget.push(format!(
                        "program {} ({}): {n} instructions verified, more than half \
                         of the verifier's limit of {}",
                        r.program,
                        r.object,
                        ebpf::VERIFIER_INSN_LIMIT
                    )),
                    Some(_) => {}
                    None => over_budget.push(format!(
                        "program {} ({}): the kernel reported no verified instruction count",
                        r.program, r.object
                    )),
                }
            }
            seen.insert(r.program.clone());
            if let Some(err) = r.error {
                rejected.push(format!(
                    "program {} ({}) was rejected: {err}",
                    r.program, r.object
                ));
            }
        }
    }
    assert!(rejected.is_empty(), "{}", rejected.join("\n\n"));
    assert!(over_budget.is_empty(), "{}", over_budget.join("\n"));
    let expected: BTreeSet<String> = [
        PROG_MIRROR_TC,
        PROG_MIRROR_XDP,
        PROG_MIRROR_MASK,
        PROG_MIRROR_ISN,
        PROG_MIRROR_LEARN,
        PROG_MIRROR_TCP,
        PROG_MIRROR_HOLD,
        // The shadow group's programs (mirror/discard side).
        PROG_DISCARD_TC,
        PROG_CONNECT4,
        PROG_CONNECT6,
        PROG_SENDMSG4,
        PROG_SENDMSG6,
        PROG_SCHED_BTF,
        PROG_SCHED_RAW,
        PROG_SCHED_NOP,
        PROG_WAKEUP_BTF,
        PROG_WAKEUP_NEW_BTF,
        PROG_WAKEUP_TP,
        PROG_WAKEUP_NEW_TP,
        PROG_FAULT_KRET,
        PROG_FAULT_BTF,
        PROG_FAULT_RAW,
        PROG_BIO_TP,
        PROG_EXEC_BTF,
        PROG_EXEC_RAW,
        PROG_EXIT_BTF,
        PROG_EXIT_RAW,
        PROG_SKB_IN,
        PROG_SKB_OUT,
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(
        seen, expected,
        "the objects hold other programs than expected"
    );
}

/// The helpers the mirror probes for before loading are there on this kernel (6.18 here; the
/// mirror needs 5.17 for `bpf_loop`, its XDP counters 5.18), and a helper the kernel refuses
/// to a program type is reported by name, with the release, what needs it and the way out,
/// from a real probe (the refusal path an older kernel takes, exercised with a pair this
/// kernel really refuses: `bpf_xdp_load_bytes` from a TC program).
#[test]
fn the_mirror_probes_the_helpers_it_needs_and_names_a_missing_one() {
    require_privileges();
    ebpf::probe_helpers(ebpf::MIRROR_TC_NEEDS)
        .unwrap_or_else(|e| panic!("the mirror's TC helpers on this kernel: {e}"));
    ebpf::probe_helpers(ebpf::MIRROR_XDP_NEEDS)
        .unwrap_or_else(|e| panic!("the mirror's XDP helpers on this kernel: {e}"));

    let refused = ebpf::HelperNeed {
        program_type: aya::programs::ProgramType::SchedClassifier,
        ..ebpf::MIRROR_XDP_NEEDS[1]
    };
    let err = ebpf::probe_helpers(&[ebpf::MIRROR_TC_NEEDS[0], refused])
        .expect_err("bpf_xdp_load_bytes is not a TC program's helper");
    assert_eq!(
        err.missing.len(),
        1,
        "only the refused helper is missing: {err}"
    );
    let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
    let msg = err.to_string();
    for part in [
        release.trim(),
        "bpf_xdp_load_bytes",
        "Linux 5.18+",
        "mirror.xdp = false",
    ] {
        assert!(msg.contains(part), "{part:?} missing from: {msg}");
    }
    assert!(!msg.contains("bpf_loop"), "bpf_loop is there: {msg}");
}
