//! The profiler against the kernel's own accounting, on the real kernel: busy, faulting,
//! writing and talking processes in test cgroups (and a test network namespace), eBPF's
//! numbers versus cgroupfs and versus what the test itself did.

use std::{
    io::{BufRead, BufReader, Write},
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use shadow_agent::profile::{
    hist,
    sampler::{Drops, Sampler},
    CpuHook, HookKind, HookPreference, HookReport, Metric, Profiler, RqSource,
};
use shadow_agent::sys::cgroup::Controller;
use shadow_tests::harness::{chain, spawn_in, ChildGuard, TestCgroup, TestDir, TestNetns};

fn start(pref: HookPreference) -> Profiler {
    start_with(pref, RqSource::Auto)
}

fn start_with(pref: HookPreference, rq: RqSource) -> Profiler {
    Profiler::start_with(pref, rq)
        .unwrap_or_else(|e| panic!("starting the profiler: {}", chain(&e)))
}

/// The interpreter itself, not a wrapper (a pyenv shim is a shell script whose own forks
/// would run, and queue, inside the test's cgroup).
fn python_exe() -> &'static str {
    static EXE: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let out = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .expect("running python3");
        assert!(out.status.success(), "python3: {out:?}");
        String::from_utf8(out.stdout)
            .expect("utf-8 path")
            .trim()
            .to_owned()
    })
}

fn python(script: &str) -> Command {
    let mut c = Command::new(python_exe());
    c.args(["-c", script]);
    c
}

fn wait_ok(child: &mut ChildGuard, what: &str, timeout: Duration) {
    let status = child
        .wait_timeout(timeout)
        .unwrap_or_else(|e| panic!("waiting for {what}: {}", chain(&e)))
        .unwrap_or_else(|| panic!("{what} did not finish within {timeout:?}"));
    assert!(status.success(), "{what} failed: {status}");
}

fn usage_usec(cg: &TestCgroup) -> u64 {
    let text = std::fs::read_to_string(cg.unified_path().join("cpu.stat")).expect("cpu.stat");
    text.lines()
        .find_map(|l| l.strip_prefix("usage_usec ")?.trim().parse().ok())
        .expect("usage_usec")
}

/// 5 s of CPU time (not wall time: other tests may compete for the two cores).
const BURN_5S: &str = "import time\nwhile time.process_time() < 5.0: pass";

/// Tests whose numbers depend on CPU contention run one at a time within this binary.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn heavy() -> std::sync::MutexGuard<'static, ()> {
    HEAVY
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn burn_and_compare(pref: HookPreference) -> CpuHook {
    let _serial = heavy();
    let cg = TestCgroup::new("cpu");
    let mut prof = start(pref);
    prof.track(cg.id()).expect("track");
    let mut child = spawn_in(None, Some(&cg), python(BURN_5S));
    wait_ok(&mut child, "the burner", Duration::from_secs(60));
    let ebpf_ns = prof.cgroup(cg.id()).expect("read").expect("tracked").cpu_ns;
    let cg_ns = usage_usec(&cg) * 1000;
    assert!(cg_ns > 4_000_000_000, "the burner used only {cg_ns} ns");
    let ratio = ebpf_ns as f64 / cg_ns as f64;
    eprintln!(
        "cpu: eBPF {ebpf_ns} ns, cpu.stat {cg_ns} ns, ratio {ratio:.5} via {:?}",
        prof.hook()
    );
    assert!(
        (0.98..=1.02).contains(&ratio),
        "eBPF {ebpf_ns} ns vs cpu.stat {cg_ns} ns (ratio {ratio:.4}) via {:?}",
        prof.hook()
    );
    prof.hook()
}

#[test]
fn cpu_time_matches_cgroup_accounting_with_the_preferred_hook() {
    // This kernel has BTF and accepts tp_btf; a kernel without it would fall back.
    assert_eq!(burn_and_compare(HookPreference::Auto), CpuHook::TpBtf);
}

#[test]
fn raw_tracepoint_fallback_accounts_the_same() {
    assert_eq!(
        burn_and_compare(HookPreference::RawOnly),
        CpuHook::RawTracepoint
    );
}

/// A busy task that is still on its CPU has not been charged by sched_switch yet: the
/// profiler adds its running slice when it reads, so at any instant eBPF's total follows
/// cpu.stat (updated every tick) closely, not only after the task was switched out.
fn running_slices_follow_cpu_stat(pref: HookPreference) {
    let _serial = heavy();
    let cg = TestCgroup::new("cpurun");
    let mut prof = start(pref);
    prof.track(cg.id()).expect("track");
    assert!(
        prof.report(Metric::Cpu)
            .and_then(|r| r.note.as_ref())
            .is_none(),
        "{:?}",
        prof.report(Metric::Cpu)
    );
    let _child = spawn_in(None, Some(&cg), python("while True: pass"));
    std::thread::sleep(Duration::from_millis(300));
    let mut diffs = Vec::new();
    for _ in 0..30 {
        std::thread::sleep(Duration::from_millis(100));
        let ebpf = prof.cgroup(cg.id()).expect("read").expect("tracked").cpu_ns as i64;
        let stat = usage_usec(&cg) as i64 * 1000;
        diffs.push((ebpf - stat, stat));
    }
    let ms: Vec<i64> = diffs.iter().map(|(d, _)| d / 1_000_000).collect();
    eprintln!("eBPF - cpu.stat per sample (ms): {ms:?}");
    for &(d, stat) in &diffs {
        // cpu.stat lags the running task by up to a tick (1-10 ms); a slice charged only at
        // the switch would lag by everything the task ran since it was switched in (seconds
        // for a lone busy loop): eBPF behind cpu.stat is the failure this test is for.
        assert!(
            d > -25_000_000,
            "eBPF lags cpu.stat by {} ms while the task runs: {ms:?} ms",
            -d / 1_000_000
        );
        // eBPF ahead: its running slice is clock time up to the read (`bpf_ktime_get_ns`),
        // cpu.stat the task clock up to its last update. On a quiet VM eBPF ran up to 5 ms
        // ahead, growing about 1% of the time read to read and falling back; a CI run on a
        // loaded host measured 32 ms ahead after 3.3 s (1%). Allowed: up to the 2% the whole
        // run's comparison (`burn_and_compare`) allows.
        assert!(
            d < 25_000_000 + stat / 50,
            "eBPF ahead of cpu.stat by {} ms (more than 25 ms + 2% of {} ms): {ms:?} ms",
            d / 1_000_000,
            stat / 1_000_000
        );
    }
}

#[test]
fn running_slices_count_before_the_switch_with_the_preferred_hook() {
    running_slices_follow_cpu_stat(HookPreference::Auto);
}

#[test]
fn running_slices_count_before_the_switch_with_the_raw_tracepoint() {
    running_slices_follow_cpu_stat(HookPreference::RawOnly);
}

/// Touch `MIB` MiB after a handshake, so the baseline excludes the interpreter itself.
const TOUCH: &str = "import sys, mmap\n\
sys.stdout.write('ready\\n'); sys.stdout.flush()\n\
n = int(sys.stdin.readline()) << 20\n\
m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)\n\
for i in range(0, n, 4096): m[i] = 1\n\
sys.stdout.write('touched\\n'); sys.stdout.flush()\n\
sys.stdin.readline()\n";

fn spawn_toucher(cg: &TestCgroup) -> (ChildGuard, impl Write, impl BufRead) {
    let mut cmd = python(TOUCH);
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped());
    let mut child = spawn_in(None, Some(cg), cmd);
    let stdin = child.child_mut().stdin.take().expect("stdin");
    let stdout = BufReader::new(child.child_mut().stdout.take().expect("stdout"));
    (child, stdin, stdout)
}

fn expect_line(out: &mut impl BufRead, want: &str) {
    let mut line = String::new();
    out.read_line(&mut line).expect("reading the child");
    assert_eq!(line.trim(), want, "unexpected output from the child");
}

#[test]
fn memory_of_a_process_touching_256_mib_shows_in_the_samples() {
    const MIB: u64 = 256;
    let cg = TestCgroup::new("mem");
    let mut prof = start(HookPreference::Auto);
    let root = PathBuf::from(shadow_agent::sys::cgroup::DEFAULT_ROOT);
    let mut sampler =
        Sampler::new(&mut prof, &[cg.unified_path().to_owned()], &root).expect("sampler");
    assert!(
        sampler.cgroups()[0].memory.is_some(),
        "no memory source found for {}",
        cg.unified_path().display()
    );
    let (mut child, mut stdin, mut stdout) = spawn_toucher(&cg);
    expect_line(&mut stdout, "ready");
    let before = sampler
        .sample(&prof, vec![], Drops::default())
        .expect("sample")[0]
        .memory
        .expect("memory before");
    writeln!(stdin, "{MIB}").expect("write");
    stdin.flush().expect("flush");
    expect_line(&mut stdout, "touched");
    let s = sampler
        .sample(&prof, vec![], Drops::default())
        .expect("sample");
    let after = s[0].memory.expect("memory after");
    let want = MIB << 20;
    let anon = after.anon_bytes.saturating_sub(before.anon_bytes);
    let usage = after.usage_bytes.saturating_sub(before.usage_bytes);
    let ratio = anon as f64 / want as f64;
    eprintln!(
        "memory: anon +{anon} B, usage +{usage} B for {want} B touched (ratio {ratio:.4}); \
         faults eBPF {} memcg {:?}",
        s[0].faults.total, s[0].faults.memcg_total
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "anon grew by {anon} B for {want} B touched (ratio {ratio:.4})"
    );
    let uratio = usage as f64 / want as f64;
    assert!(
        (0.95..=1.05).contains(&uratio),
        "usage grew by {usage} B for {want} B touched (ratio {uratio:.4})"
    );
    // Every touched page faulted once (no THP for a plain mmap here: `madvise` mode).
    let pages = want / 4096;
    assert!(
        s[0].faults.total >= pages && s[0].faults.total < pages + pages / 20,
        "{} faults for {pages} pages touched",
        s[0].faults.total
    );
    drop(stdin);
    wait_ok(&mut child, "the toucher", Duration::from_secs(30));
}

#[test]
fn kprobe_collector_falls_back_to_the_tracepoint_and_reports_it() {
    let prof = start(HookPreference::Auto);
    let faults = prof.report(Metric::PageFaults).expect("fault report");
    // CONFIG_KPROBES is off here: the kretprobe loads (the verifier test proves it) but the
    // attach fails, and the tp_btf tracepoint serves the metric.
    let kprobes = std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists();
    assert!(!kprobes, "this test expects a kernel without kprobes");
    assert_eq!(faults.hook, Some(HookKind::TpBtf), "{faults:?}");
    assert_eq!(faults.programs, vec!["pgfault_btf"]);
    assert!(
        faults.fallbacks.len() == 1 && faults.fallbacks[0].starts_with("pgfault_kret:"),
        "{:?}",
        faults.fallbacks
    );
    // Every metric reports a hook on this kernel.
    for m in [
        Metric::Cpu,
        Metric::RunqLatency,
        Metric::PageFaults,
        Metric::BlockIo,
        Metric::ProcEvents,
        Metric::Network,
    ] {
        let r = prof
            .report(m)
            .unwrap_or_else(|| panic!("no report for {m:?}"));
        assert!(r.hook.is_some(), "{m:?} has no hook: {r:?}");
    }
    // Wakeups through tp_btf here (the classic tracepoints are the tested fallback).
    assert_eq!(
        prof.report(Metric::RunqLatency).and_then(|r| r.hook),
        Some(HookKind::TpBtf)
    );
    // The fallback counts: a child touching 16 MiB faults at least once per page.
    let cg = TestCgroup::new("flt");
    let mut prof = prof;
    prof.track(cg.id()).expect("track");
    let (mut child, mut stdin, mut stdout) = spawn_toucher(&cg);
    expect_line(&mut stdout, "ready");
    writeln!(stdin, "16").expect("write");
    expect_line(&mut stdout, "touched");
    drop(stdin);
    wait_ok(&mut child, "the toucher", Duration::from_secs(30));
    let a = prof.cgroup(cg.id()).expect("read").expect("tracked");
    assert!(a.faults >= 4096, "{} faults", a.faults);
    assert_eq!(a.major_faults, 0, "only the kretprobe splits majors");

    // Raw tracepoints only: the raw page_fault_user serves it.
    let raw = start(HookPreference::RawOnly);
    let r = raw.report(Metric::PageFaults).expect("report");
    assert_eq!(r.hook, Some(HookKind::RawTracepoint), "{r:?}");
}

#[test]
fn o_direct_write_bytes_match_what_was_written() {
    const CHUNK: usize = 512 << 10;
    const CHUNKS: usize = 64; // 32 MiB
    let dir = TestDir::new("dio");
    let cg = TestCgroup::new("dio");
    let mut prof = start(HookPreference::Auto);
    prof.track(cg.id()).expect("track");
    let path = dir.path().join("data");
    let script = format!(
        "import os, mmap\n\
         fd = os.open({path:?}, os.O_WRONLY | os.O_CREAT | os.O_DIRECT, 0o600)\n\
         os.posix_fallocate(fd, 0, {total})\n\
         buf = mmap.mmap(-1, {CHUNK})\n\
         buf.write(b'x' * {CHUNK})\n\
         for i in range({CHUNKS}):\n    os.pwrite(fd, buf, i * {CHUNK})\n\
         os.close(fd)\n",
        path = path.display().to_string(),
        total = CHUNK * CHUNKS,
    );
    let mut child = spawn_in(None, Some(&cg), python(&script));
    wait_ok(&mut child, "the O_DIRECT writer", Duration::from_secs(60));
    let a = prof.cgroup(cg.id()).expect("read").expect("tracked");
    let want = (CHUNK * CHUNKS) as f64;
    let ratio = a.io_write_bytes as f64 / want;
    eprintln!(
        "block io: eBPF write {} B in {} bios for {want} B written (ratio {ratio:.4})",
        a.io_write_bytes, a.io_write_ops
    );
    assert!(
        (0.95..=1.05).contains(&ratio),
        "eBPF saw {} B written for {want} B (ratio {ratio:.4})",
        a.io_write_bytes
    );
    assert!(
        a.io_write_ops >= CHUNKS as u64,
        "{} write bios",
        a.io_write_ops
    );
}

#[test]
fn network_bytes_match_what_the_test_sent() {
    const BYTES: usize = 32 << 20;
    let ns = TestNetns::new("net");
    let rx_cg = TestCgroup::new("nrx");
    let tx_cg = TestCgroup::new("ntx");
    let mut prof = start(HookPreference::Auto);
    prof.track_dir(rx_cg.unified_path()).expect("track rx");
    prof.track_dir(tx_cg.unified_path()).expect("track tx");
    // Receiver and sender on the loopback of a namespace the test made.
    let port = 40000 + (std::process::id() % 20000) as u16;
    let server = format!(
        "import socket, sys\n\
         s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)\n\
         s.bind(('127.0.0.1', {port})); s.listen(1)\n\
         sys.stdout.write('ready\\n'); sys.stdout.flush()\n\
         c, _ = s.accept(); n = 0\n\
         while True:\n    b = c.recv(1 << 20)\n    if not b: break\n    n += len(b)\n\
         assert n == {BYTES}, n\n"
    );
    let mut cmd = python(&server);
    cmd.stdout(Stdio::piped());
    let mut srv = spawn_in(Some(&ns), Some(&rx_cg), cmd);
    let mut out = BufReader::new(srv.child_mut().stdout.take().expect("stdout"));
    expect_line(&mut out, "ready");
    let client = format!(
        "import socket\n\
         s = socket.create_connection(('127.0.0.1', {port}))\n\
         buf = b'y' * (1 << 20)\n\
         for _ in range({BYTES} >> 20): s.sendall(buf)\n\
         s.close()\n"
    );
    let before = ns_net_counters(&ns);
    let mut cli = spawn_in(Some(&ns), Some(&tx_cg), python(&client));
    wait_ok(&mut cli, "the sender", Duration::from_secs(60));
    wait_ok(&mut srv, "the receiver", Duration::from_secs(60));
    let after = ns_net_counters(&ns);
    let tx = prof.cgroup(tx_cg.id()).expect("read").expect("tracked");
    let rx = prof.cgroup(rx_cg.id()).expect("read").expect("tracked");
    let want = BYTES as f64;
    let tx_ratio = tx.net_tx_bytes as f64 / want;
    let rx_ratio = rx.net_rx_bytes as f64 / want;
    // The kernel's own count of what crossed the namespace's loopback (both directions: the
    // data and the receiver's ACKs), at the IP layer like cgroup_skb.
    let lo_ip = after.lo_ip_bytes() - before.lo_ip_bytes();
    let retrans = after.retrans_segs - before.retrans_segs;
    let ebpf_out = tx.net_tx_bytes + rx.net_tx_bytes;
    let ebpf_in = tx.net_rx_bytes + rx.net_rx_bytes;
    eprintln!(
        "network: sender tx {} B / {} pkts (ratio {tx_ratio:.5}), receiver rx {} B / {} pkts \
         (ratio {rx_ratio:.5}) for {BYTES} B sent; loopback {lo_ip} B at the IP layer, eBPF \
         out {ebpf_out} B, in {ebpf_in} B; {retrans} TCP segments retransmitted",
        tx.net_tx_bytes, tx.net_tx_packets, rx.net_rx_bytes, rx.net_rx_packets
    );
    for (what, got) in [("egress", ebpf_out), ("ingress", ebpf_in)] {
        let r = got as f64 / lo_ip as f64;
        assert!(
            (0.99..=1.01).contains(&r),
            "eBPF {what} of both cgroups {got} B vs the loopback's {lo_ip} B (ratio {r:.5})"
        );
    }
    // Every byte sent crosses at least once; more than 1% on top (headers) only if the
    // kernel retransmitted (a loaded machine can overflow the loopback's backlog).
    let most = if retrans == 0 { 1.01 } else { f64::INFINITY };
    assert!(
        (1.0..=most).contains(&tx_ratio),
        "sender egress {} B for {BYTES} B sent ({retrans} retransmitted segments)",
        tx.net_tx_bytes
    );
    assert!(
        (1.0..=most).contains(&rx_ratio),
        "receiver ingress {} B for {BYTES} B sent ({retrans} retransmitted segments)",
        rx.net_rx_bytes
    );
}

/// Counters of a namespace the test made, read from inside it (`/proc/net` is per
/// namespace; `/sys/class/net` would show the test's own).
struct NetCounters {
    lo_tx_bytes: u64,
    lo_tx_packets: u64,
    retrans_segs: u64,
}

impl NetCounters {
    /// Bytes at the IP layer: the loopback counts each packet with its 14-byte Ethernet
    /// header.
    fn lo_ip_bytes(&self) -> u64 {
        self.lo_tx_bytes - 14 * self.lo_tx_packets
    }
}

fn ns_net_counters(ns: &TestNetns) -> NetCounters {
    let script = "import sys\n\
                  lo = [l.split(':', 1)[1].split() for l in open('/proc/net/dev') \
                        if l.strip().startswith('lo:')][0]\n\
                  t = [l.split() for l in open('/proc/net/snmp') if l.startswith('Tcp:')]\n\
                  r = t[1][t[0].index('RetransSegs')]\n\
                  sys.stdout.write('%s %s %s\\n' % (lo[8], lo[9], r))\n";
    let mut cmd = python(script);
    cmd.stdout(Stdio::piped());
    let mut child = spawn_in(Some(ns), None, cmd);
    let mut line = String::new();
    BufReader::new(child.child_mut().stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("reading the namespace's counters");
    wait_ok(
        &mut child,
        "reading the namespace's counters",
        Duration::from_secs(30),
    );
    let v: Vec<u64> = line
        .split_whitespace()
        .map(|x| {
            x.parse()
                .unwrap_or_else(|e| panic!("counter {x:?} in {line:?}: {e}"))
        })
        .collect();
    assert_eq!(v.len(), 3, "namespace counters {line:?}");
    NetCounters {
        lo_tx_bytes: v[0],
        lo_tx_packets: v[1],
        retrans_segs: v[2],
    }
}

/// Total queued time of a histogram (each sample at its bucket's midpoint), in ns.
fn queued_ns(b: &hist::Buckets) -> u64 {
    b.iter()
        .enumerate()
        .map(|(i, n)| n * shadow_common::acct::rq_bucket_value(i))
        .sum()
}

/// `n` CPU-bound tasks pinned to CPU 0: the eBPF quantiles, the eBPF total queued time and
/// the kernel's own total (`run_delay` of `/proc/<pid>/schedstat`, printed by each task just
/// before it exits), in ns.
fn pinned_burners(n: usize) -> (hist::Quantiles, u64, u64) {
    let cg = TestCgroup::new("rq");
    cg.write(Controller::Cpuset, "cpuset.cpus", "0")
        .unwrap_or_else(|e| panic!("pinning to CPU 0: {}", chain(&e)));
    let mut prof = start(HookPreference::Auto);
    prof.track(cg.id()).expect("track");
    let burn = "import time, sys\nwhile time.process_time() < 1.5: pass\n\
                sys.stdout.write(open('/proc/self/schedstat').read())";
    let mut kids: Vec<ChildGuard> = (0..n)
        .map(|_| {
            let mut c = python(burn);
            c.stdout(Stdio::piped());
            spawn_in(None, Some(&cg), c)
        })
        .collect();
    let mut run_delay = 0u64;
    for k in &mut kids {
        let mut out = String::new();
        std::io::Read::read_to_string(k.child_mut().stdout.as_mut().expect("stdout"), &mut out)
            .expect("reading schedstat");
        wait_ok(k, "a pinned burner", Duration::from_secs(60));
        run_delay += out
            .split_whitespace()
            .nth(1)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("bad schedstat {out:?}"));
    }
    let b = prof.rq_buckets(cg.id()).expect("read").expect("tracked");
    (hist::quantiles(&b), queued_ns(&b), run_delay)
}

#[test]
fn run_queue_latency_rises_when_two_tasks_share_one_cpu() {
    let _serial = heavy();
    let (one, one_q, one_k) = pinned_burners(1);
    let (two, two_q, two_k) = pinned_burners(2);
    eprintln!(
        "runq: one task {one:?}, queued eBPF {one_q} ns vs schedstat {one_k} ns; \
         two tasks {two:?}, queued eBPF {two_q} ns vs schedstat {two_k} ns"
    );
    assert!(
        two.count > 0,
        "no run-queue latency recorded with two tasks"
    );
    // The eBPF total agrees with the scheduler's own run_delay (each sample counted at its
    // log2 bucket's midpoint, so within a third either way).
    let ratio = two_q as f64 / two_k as f64;
    assert!(
        (0.67..=1.5).contains(&ratio),
        "two tasks: eBPF queued {two_q} ns vs schedstat run_delay {two_k} ns (ratio {ratio:.3})"
    );
    assert!(
        two_q > 2 * one_q.max(1),
        "queued time one task {one_q} ns vs two tasks {two_q} ns"
    );
    // The histogram has log2 buckets, and on a busy machine the lone task queues too (behind
    // other users' tasks on CPU 0): the median must not fall, but it can land in the same
    // bucket (seen at load average 7), so the rise itself is the total queued time above.
    // The lone task's tail is not compared: it rests on a handful of waits (9 in one CI run,
    // one of them 3.1 ms behind another user's task), so its p99 is its maximum, a single
    // sample, while the two tasks' p99 is their time slice.
    assert!(
        two.p50_us >= one.p50_us,
        "one task p50 {} us ({} waits) vs two tasks {} us ({} waits)",
        one.p50_us,
        one.count,
        two.p50_us,
        two.count
    );
    assert!(
        two.count > one.count,
        "one task {} waits vs two tasks {} waits: sharing a CPU did not make the tasks queue more often",
        one.count,
        two.count
    );
}

#[test]
fn exec_and_exit_of_a_tracked_cgroup_arrive_through_the_ring_buffer() {
    let cg = TestCgroup::new("evt");
    let mut prof = start(HookPreference::Auto);
    prof.track(cg.id()).expect("track");
    let events = prof.take_events().expect("ring buffer");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (execs, stats) = rt.block_on(async {
        let (mut rx, stats) = events.spawn(64).expect("reader");
        let mut child = spawn_in(None, Some(&cg), Command::new("/bin/true"));
        wait_ok(&mut child, "/bin/true", Duration::from_secs(10));
        let mut got = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while got.len() < 2 {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) => got.push(e),
                _ => break,
            }
        }
        (got, stats)
    });
    let kinds: Vec<_> = execs.iter().map(|e| (e.kind, e.comm.as_str())).collect();
    use shadow_agent::profile::events::ProcEventKind::{Exec, Exit};
    assert_eq!(kinds, vec![(Exec, "true"), (Exit, "true")], "{execs:?}");
    assert!(execs.iter().all(|e| e.cgroup_id == cg.id()));
    assert_eq!(stats.snapshot().1, 0, "channel drops");
    let a = prof.cgroup(cg.id()).expect("read").expect("tracked");
    assert_eq!((a.execs, a.exits), (1, 1));
}

/// What [`sleeper_next_to_a_burner`] saw.
struct Sleeper {
    /// eBPF run-queue samples of the tracked cgroup, their total (ns), its switch-outs.
    samples: u64,
    queued_ns: u64,
    switches: u64,
    /// The sleeper's own `run_delay` (ns) from `/proc/self/schedstat`, and its lifetime.
    run_delay_ns: u64,
    wall_ns: u64,
    report: HookReport,
}

/// A task that sleeps 2 ms at a time, 400 times, on CPU 0 next to an untracked CPU burner
/// pinned there too.
fn sleeper_next_to_a_burner(pref: HookPreference, rq: RqSource) -> Sleeper {
    let tracked = TestCgroup::new("wk");
    let other = TestCgroup::new("wkb");
    for cg in [&tracked, &other] {
        cg.write(Controller::Cpuset, "cpuset.cpus", "0")
            .unwrap_or_else(|e| panic!("pinning to CPU 0: {}", chain(&e)));
    }
    let mut prof = start_with(pref, rq);
    let report = prof
        .report(Metric::RunqLatency)
        .expect("run-queue report")
        .clone();
    prof.track(tracked.id()).expect("track");
    let mut burner = spawn_in(
        None,
        Some(&other),
        python("import time\nwhile time.process_time() < 4.0: pass"),
    );
    let sleeper = "import time, sys\n\
                   for _ in range(400): time.sleep(0.002)\n\
                   sys.stdout.write(open('/proc/self/schedstat').read())";
    let mut c = python(sleeper);
    c.stdout(Stdio::piped());
    let started = std::time::Instant::now();
    let mut k = spawn_in(None, Some(&tracked), c);
    let mut out = String::new();
    std::io::Read::read_to_string(k.child_mut().stdout.as_mut().expect("stdout"), &mut out)
        .expect("reading schedstat");
    wait_ok(&mut k, "the sleeper", Duration::from_secs(60));
    let wall_ns = started.elapsed().as_nanos() as u64;
    let b = prof
        .rq_buckets(tracked.id())
        .expect("read")
        .expect("tracked");
    let switches = prof
        .cgroup(tracked.id())
        .expect("read")
        .expect("tracked")
        .switches;
    drop(burner.child_mut().kill());
    let v: Vec<u64> = out
        .split_whitespace()
        .map(|x| {
            x.parse()
                .unwrap_or_else(|_| panic!("bad schedstat {out:?}"))
        })
        .collect();
    assert_eq!(v.len(), 3, "bad schedstat {out:?}");
    Sleeper {
        samples: b.iter().sum(),
        queued_ns: queued_ns(&b),
        switches,
        run_delay_ns: v[1],
        wall_ns,
        report,
    }
}

fn check_wakeups(pref: HookPreference, rq: RqSource, hook: HookKind, programs: &[&str]) {
    let _serial = heavy();
    let s = sleeper_next_to_a_burner(pref, rq);
    eprintln!(
        "run-queue latency via {hook:?} {programs:?}: {} samples over {} switch-outs, queued \
         eBPF {} ns; schedstat run_delay {} ns; {} ns wall",
        s.samples, s.switches, s.queued_ns, s.run_delay_ns, s.wall_ns
    );
    assert_eq!(s.report.hook, Some(hook), "{:?}", s.report);
    assert_eq!(s.report.programs, programs, "{:?}", s.report);
    // A sleeper is almost never preempted: its samples come from its 400 wakeups (without
    // them there would be only a handful). Each sample is taken at a switch-out.
    assert!(
        s.samples >= 380 && s.samples <= s.switches,
        "{} run-queue samples for 400 wakeups and {} switch-outs",
        s.samples,
        s.switches
    );
    // The scheduler's own run_delay: from sched_info the samples are the same waits; the
    // wakeup hooks start the clock at the sched_wakeup tracepoint, just after the enqueue
    // run_delay counts from. Each sample counts at its log2 bucket's midpoint, so the totals
    // agree within a third either way. No task queues longer than it lives.
    let ratio = s.queued_ns as f64 / s.run_delay_ns.max(1) as f64;
    assert!(
        (0.67..=1.5).contains(&ratio),
        "eBPF queued {} ns vs schedstat run_delay {} ns (ratio {ratio:.3})",
        s.queued_ns,
        s.run_delay_ns
    );
    assert!(
        (s.queued_ns as f64) <= 1.5 * s.wall_ns as f64,
        "eBPF queued {} ns in {} ns of the sleeper's life",
        s.queued_ns,
        s.wall_ns
    );
}

#[test]
fn run_queue_waits_come_from_sched_info_at_the_switch() {
    check_wakeups(
        HookPreference::Auto,
        RqSource::Auto,
        HookKind::TpBtf,
        &["sched_sw_btf"],
    );
}

#[test]
fn run_queue_waits_from_sched_info_through_the_raw_tracepoint() {
    check_wakeups(
        HookPreference::RawOnly,
        RqSource::Auto,
        HookKind::RawTracepoint,
        &["sched_sw_raw"],
    );
}

#[test]
fn without_sched_info_wakeups_are_measured_through_tp_btf() {
    check_wakeups(
        HookPreference::Auto,
        RqSource::WakeupHooks,
        HookKind::TpBtf,
        &["sched_sw_btf", "sched_wake_btf", "sched_wknew_btf"],
    );
}

#[test]
fn without_sched_info_wakeups_fall_back_to_the_classic_tracepoint() {
    check_wakeups(
        HookPreference::RawOnly,
        RqSource::WakeupHooks,
        HookKind::Tracepoint,
        &["sched_sw_raw", "sched_wakeup_tp", "sched_wknew_tp"],
    );
}

/// The per-CPU cgroup-to-slot cache of the sched_switch handler must not outlive a change
/// of `ACCT_CGROUPS`: once a cgroup is untracked and its slot handed to another cgroup, the
/// first cgroup's CPU time goes to "other", never to the new owner of the slot.
#[test]
fn an_untracked_cgroup_stops_being_charged_even_to_a_reused_slot() {
    let _serial = heavy();
    let a = TestCgroup::new("ua");
    let b = TestCgroup::new("ub");
    // Two processes of `a` ping-pong through pipes on one CPU for 2 s. As SCHED_FIFO tasks
    // they run before any other task there, so that CPU's switch-outs are `a`'s one after
    // the other (the case the cache serves from memory), across the untrack. Their group
    // may use 20% of each second at real-time priority; the rest goes to everyone else.
    a.write(Controller::Cpuset, "cpuset.cpus", "0")
        .unwrap_or_else(|e| panic!("pinning to CPU 0: {}", chain(&e)));
    a.write(Controller::Cpu, "cpu.rt_runtime_us", "200000")
        .unwrap_or_else(|e| panic!("real-time budget: {}", chain(&e)));
    let mut prof = start(HookPreference::Auto);
    let slot_a = prof.track(a.id()).expect("track a");
    let pingpong = "import os, sys, time\n\
                    r1, w1 = os.pipe(); r2, w2 = os.pipe()\n\
                    if os.fork() == 0:\n\
                    \x20   while os.read(r1, 1) == b'x': os.write(w2, b'x')\n\
                    \x20   os._exit(0)\n\
                    start = time.time(); said = False\n\
                    while time.time() < start + 2.0:\n\
                    \x20   os.write(w1, b'x'); os.read(r2, 1)\n\
                    \x20   if not said and time.time() > start + 0.3:\n\
                    \x20       sys.stdout.write('ready\\n'); sys.stdout.flush(); said = True\n\
                    os.write(w1, b'q'); os.wait()\n";
    let mut cmd = Command::new("chrt");
    cmd.args(["-f", "1", "python3", "-c", pingpong]);
    cmd.stdout(Stdio::piped());
    let mut child = spawn_in(None, Some(&a), cmd);
    let mut stdout = BufReader::new(child.child_mut().stdout.take().expect("stdout"));
    expect_line(&mut stdout, "ready");
    let charged = prof.cgroup(a.id()).expect("read").expect("tracked");
    assert!(
        charged.switches > 1000,
        "a switched out only {} times",
        charged.switches
    );
    prof.untrack(a.id()).expect("untrack a");
    let slot_b = prof.track(b.id()).expect("track b");
    assert_eq!(slot_a, slot_b, "the freed slot is reused");
    wait_ok(&mut child, "the ping-pong", Duration::from_secs(60));
    let b_acct = prof.cgroup(b.id()).expect("read").expect("tracked");
    eprintln!(
        "untrack: a {} switches / {} ns while tracked; b (empty) {} switches / {} ns after",
        charged.switches, charged.cpu_ns, b_acct.switches, b_acct.cpu_ns
    );
    // b holds no task: anything charged to it is a's, through a stale cache.
    assert_eq!(
        (b_acct.switches, b_acct.cpu_ns),
        (0, 0),
        "the empty cgroup that took a's slot was charged"
    );
}
