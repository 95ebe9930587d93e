//! Issue #10 (hardening): a full exec/exit ring buffer drops events in the kernel and counts
//! them; it never stalls the kernel side nor the workload, accounting goes on, and once the
//! agent reads again new events flow.

use std::{
    process::Command,
    time::{Duration, Instant},
};

use shadow_agent::profile::{
    events::{ProcEventKind, ProcRecord},
    HookPreference, Profiler,
};
use shadow_common::acct::{ProcEvent, EVENTS_BYTES};
use shadow_tests::harness::{chain, spawn_in, ChildGuard, TestCgroup};
use tokio::sync::mpsc::Receiver;

fn wait_ok(child: &mut ChildGuard, what: &str, timeout: Duration) {
    let status = child
        .wait_timeout(timeout)
        .unwrap_or_else(|e| panic!("waiting for {what}: {}", chain(&e)))
        .unwrap_or_else(|| panic!("{what} did not finish within {timeout:?}"));
    assert!(status.success(), "{what} failed: {status}");
}

/// Everything the reader delivers until it has been quiet for `quiet`.
async fn drain(rx: &mut Receiver<ProcRecord>, quiet: Duration) -> Vec<ProcRecord> {
    let mut got = Vec::new();
    while let Ok(Some(e)) = tokio::time::timeout(quiet, rx.recv()).await {
        got.push(e);
    }
    got
}

#[test]
fn a_full_ring_buffer_drops_and_counts_without_stalling_anything() {
    // Ring buffer records are the event plus an 8-byte header; the ring holds at most this
    // many. The workload makes well over that many (one exec and one exit per /bin/true).
    let capacity = EVENTS_BYTES as usize / (std::mem::size_of::<ProcEvent>() + 8);
    let runs = capacity; // 2 * capacity events: about half must be dropped
    let cg = TestCgroup::new("ring");
    let mut prof = Profiler::start(HookPreference::Auto)
        .unwrap_or_else(|e| panic!("starting the profiler: {}", chain(&e)));
    prof.track(cg.id()).expect("track");
    // Nobody reads the ring buffer yet: the consumer is stopped.
    let script = format!("i=0; while [ $i -lt {runs} ]; do /bin/true; i=$((i+1)); done");
    let mut sh = Command::new("/bin/sh");
    sh.args(["-c", &script]);
    let started = Instant::now();
    let mut child = spawn_in(None, Some(&cg), sh);
    // A generous bound: the point is that it finishes, not how fast (2 cores, shared).
    wait_ok(&mut child, "the exec loop", Duration::from_secs(300));
    let took = started.elapsed();

    let errs = prof.kernel_errors().expect("kernel error counters");
    let a = prof.cgroup(cg.id()).expect("read").expect("tracked");
    eprintln!(
        "ring buffer: {runs} runs in {took:?}, {} execs / {} exits counted, {} events dropped \
         (capacity about {capacity} records)",
        a.execs, a.exits, errs.ringbuf_full
    );
    // Accounting went on while the ring was full: every exec (the shell's own and one per
    // run) and every exit of a process that finished (the runs; the shell's exit too).
    assert_eq!(a.execs, runs as u64 + 1, "execs counted in the kernel");
    assert!(
        a.exits >= runs as u64,
        "exits counted in the kernel: {}",
        a.exits
    );
    assert!(a.cpu_ns > 0, "CPU accounting stopped");
    assert!(
        errs.ringbuf_full >= (a.execs + a.exits).saturating_sub(capacity as u64),
        "{} events dropped for {} events and room for about {capacity}",
        errs.ringbuf_full,
        a.execs + a.exits
    );

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let events = prof.take_events().expect("ring buffer");
    rt.block_on(async {
        let (mut rx, stats) = events.spawn(4 * capacity).expect("reader");
        // What was kept, then nothing lost in between: kept + dropped = produced.
        let kept = drain(&mut rx, Duration::from_secs(2)).await;
        let errs = prof.kernel_errors().expect("kernel error counters");
        let a = prof.cgroup(cg.id()).expect("read").expect("tracked");
        assert_eq!(
            kept.len() as u64 + errs.ringbuf_full,
            a.execs + a.exits,
            "{} events read + {} dropped vs {} execs + {} exits",
            kept.len(),
            errs.ringbuf_full,
            a.execs,
            a.exits
        );
        assert!(kept.iter().all(|e| e.cgroup_id == cg.id()));
        assert_eq!(stats.snapshot().1, 0, "channel drops");

        // The reader caught up: a new process's events arrive again, none dropped.
        let dropped = errs.ringbuf_full;
        let mut child = spawn_in(None, Some(&cg), Command::new("/bin/true"));
        wait_ok(&mut child, "/bin/true", Duration::from_secs(10));
        let fresh = drain(&mut rx, Duration::from_secs(2)).await;
        let kinds: Vec<_> = fresh.iter().map(|e| (e.kind, e.comm.as_str())).collect();
        assert_eq!(
            kinds,
            vec![(ProcEventKind::Exec, "true"), (ProcEventKind::Exit, "true")],
            "{fresh:?}"
        );
        let errs = prof.kernel_errors().expect("kernel error counters");
        assert_eq!(
            errs.ringbuf_full, dropped,
            "drops after the reader caught up"
        );
    });
}
