//! NIC/IRQ locality: which CPUs serve a network interface (its IRQs and RPS), and the
//! placement rule that uses it.
//!
//! Sources (all read from configurable roots, so tests use a fake procfs/sysfs directory):
//! - `/proc/interrupts`: the IRQ lines of the interface, by name: `DEV`, `DEV-...`
//!   (e.g. `eth0-TxRx-0`, mlx5/ixgbe/i40e style), or for virtio-net, whose IRQs are named
//!   after the virtio device (`/sys/class/net/DEV/device` → `virtioN`), `virtioN-input.*` /
//!   `virtioN-output.*`; with the per-CPU counts of each;
//! - `/proc/irq/N/effective_affinity_list` (where the IRQ is routed now), else
//!   `smp_affinity_list` (where it may be routed);
//! - `/sys/class/net/DEV/queues/rx-*/rps_cpus`: the CPUs that receive-packet steering hands
//!   the interface's packets to (hex mask, `,`-separated 32-bit words, most significant
//!   first; 0 = RPS off);
//! - `/sys/class/net/DEV/statistics/rx_packets`: how network-heavy the host's traffic is.
//!
//! The CPUs serving the interface are the IRQs' CPUs plus the RPS CPUs. For a
//! network-IO-heavy primary, [`decide_placement`] pins it onto the free CPUs (not the shadow
//! group's) that serve its NIC when there are enough of them for its CPU limit: the softirq
//! work of its packets then runs on the CPUs (and caches) of the process that reads them, as
//! RFS aims for. Otherwise, or for a primary that is not network-heavy, it gets every free
//! CPU. Either way the decision records the locality (audited).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::cpuset::CpuSet;
use super::policy::Rail;
use super::reconcile::CpusetDecision;
use super::{AllocateError, Result};

/// One IRQ line of the interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicIrq {
    pub irq: u32,
    /// The name in `/proc/interrupts` (e.g. `virtio2-input.0`).
    pub name: String,
    /// Where it is routed (effective affinity, else the allowed affinity).
    pub cpus: CpuSet,
    /// Interrupts handled so far, per CPU (index = CPU number).
    pub counts: Vec<u64>,
}

/// Which CPUs serve an interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NicLocality {
    pub interface: String,
    pub irqs: Vec<NicIrq>,
    /// Union of the IRQs' CPUs.
    pub irq_cpus: CpuSet,
    /// Union of the receive queues' RPS CPUs (empty: RPS off).
    pub rps_cpus: CpuSet,
    /// `irq_cpus ∪ rps_cpus`.
    pub serving: CpuSet,
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> AllocateError + 'a {
    move |source| AllocateError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Parses a kernel CPU mask (`00000000,0000000f`) into a set.
pub fn parse_cpu_mask(path: &Path, text: &str) -> Result<CpuSet> {
    let mut cpus = Vec::new();
    let words: Vec<&str> = text.trim().split(',').collect();
    for (i, w) in words.iter().rev().enumerate() {
        let v = u32::from_str_radix(w, 16).map_err(|_| AllocateError::Parse {
            path: path.to_owned(),
            value: text.trim().to_owned(),
            expected: "a hexadecimal CPU mask like 0000000f",
        })?;
        for bit in 0..32 {
            if v & (1 << bit) != 0 {
                cpus.push(i as u32 * 32 + bit);
            }
        }
    }
    Ok(CpuSet::from_cpus(cpus))
}

/// Whether an IRQ named `name` belongs to `dev` (or to its virtio device `virtio`).
fn irq_matches(name: &str, dev: &str, virtio: Option<&str>) -> bool {
    let by_dev = name == dev
        || name
            .strip_prefix(dev)
            .is_some_and(|r| r.starts_with('-') || r.starts_with('@') || r.starts_with(':'));
    let by_virtio = virtio.is_some_and(|v| {
        name.strip_prefix(v)
            .is_some_and(|r| r.starts_with("-input") || r.starts_with("-output"))
    });
    by_dev || by_virtio
}

/// Reads the locality of `dev` from `proc_root` (normally `/proc`) and `sys_root` (normally
/// `/sys`). An interface that does not exist is an error naming it.
pub fn read_nic_locality(proc_root: &Path, sys_root: &Path, dev: &str) -> Result<NicLocality> {
    let net = sys_root.join("class/net").join(dev);
    if !net.is_dir() {
        return Err(AllocateError::NoInterface {
            interface: dev.to_owned(),
            path: net,
        });
    }
    // virtio-net names its IRQs after the virtio device.
    let virtio = std::fs::read_link(net.join("device"))
        .ok()
        .and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()))
        .filter(|n| n.starts_with("virtio"));

    let interrupts = proc_root.join("interrupts");
    let text = std::fs::read_to_string(&interrupts).map_err(io("read", &interrupts))?;
    let mut lines = text.lines();
    let ncpu = lines.next().map_or(0, |h| {
        h.split_whitespace()
            .filter(|c| c.starts_with("CPU"))
            .count()
    });
    let mut irqs = Vec::new();
    for line in lines {
        let mut f = line.split_whitespace();
        let Some(num) = f.next().and_then(|n| n.strip_suffix(':')) else {
            continue;
        };
        let Ok(irq) = num.parse::<u32>() else {
            continue; // NMI, LOC, ...: not device lines
        };
        let fields: Vec<&str> = f.collect();
        let Some(name) = fields.last() else { continue };
        if !irq_matches(name, dev, virtio.as_deref()) {
            continue;
        }
        let counts: Vec<u64> = fields
            .iter()
            .take(ncpu)
            .map(|c| c.parse().unwrap_or(0))
            .collect();
        let dir = proc_root.join("irq").join(irq.to_string());
        let mut cpus = None;
        for file in ["effective_affinity_list", "smp_affinity_list"] {
            let p = dir.join(file);
            if let Ok(t) = std::fs::read_to_string(&p) {
                cpus = Some(
                    t.trim()
                        .parse::<CpuSet>()
                        .map_err(|_| AllocateError::Parse {
                            path: p.clone(),
                            value: t.trim().to_owned(),
                            expected: "a CPU list like 0-3,8",
                        })?,
                );
                break;
            }
        }
        // Without affinity files: the CPUs that handled it.
        let cpus = cpus.unwrap_or_else(|| {
            CpuSet::from_cpus(
                counts
                    .iter()
                    .enumerate()
                    .filter(|(_, c)| **c > 0)
                    .map(|(i, _)| i as u32),
            )
        });
        irqs.push(NicIrq {
            irq,
            name: (*name).to_owned(),
            cpus,
            counts,
        });
    }
    let mut rps = Vec::new();
    let queues = net.join("queues");
    if let Ok(rd) = std::fs::read_dir(&queues) {
        let mut dirs: Vec<PathBuf> = rd
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("rx-"))
            })
            .collect();
        dirs.sort();
        for d in dirs {
            let p = d.join("rps_cpus");
            if let Ok(t) = std::fs::read_to_string(&p) {
                rps.extend(parse_cpu_mask(&p, &t)?.iter());
            }
        }
    }
    let irq_cpus = CpuSet::from_cpus(irqs.iter().flat_map(|i| i.cpus.iter().collect::<Vec<_>>()));
    let rps_cpus = CpuSet::from_cpus(rps);
    let serving = CpuSet::from_cpus(irq_cpus.iter().chain(rps_cpus.iter()));
    Ok(NicLocality {
        interface: dev.to_owned(),
        irqs,
        irq_cpus,
        rps_cpus,
        serving,
    })
}

/// Packets received by `dev` so far (`statistics/rx_packets` under `sys_root`).
pub fn rx_packets(sys_root: &Path, dev: &str) -> Result<u64> {
    let p = sys_root
        .join("class/net")
        .join(dev)
        .join("statistics/rx_packets");
    let t = std::fs::read_to_string(&p).map_err(io("read", &p))?;
    t.trim().parse().map_err(|_| AllocateError::Parse {
        path: p.clone(),
        value: t.trim().to_owned(),
        expected: "a packet count",
    })
}

/// How the placement used the NIC locality (audited with the cpuset decision).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LocalityNote {
    pub interface: String,
    /// CPUs serving the interface: IRQs, RPS, both.
    pub irq_cpus: CpuSet,
    pub rps_cpus: CpuSet,
    pub serving: CpuSet,
    /// Received packets per second over the last interval (None: first interval).
    pub rx_pps: Option<f64>,
    /// Whether the primary counts as network-IO-heavy (`rx_pps` at or above the threshold).
    pub network_heavy: bool,
    /// `nic_local` (pinned onto the free serving CPUs), `all_free`.
    pub choice: &'static str,
    /// Why: `not_network_heavy`, `nic_local`, `too_few_free_nic_cpus`,
    /// `nic_cpus_all_used_by_shadow`.
    pub why: &'static str,
}

/// Placement with NIC locality: the free CPUs are `available − avoid` (the shadow group's).
/// A network-heavy primary is pinned onto the free CPUs that serve its NIC when there are at
/// least `ceil(need_cores)` of them (its CPU limit; all free CPUs if unlimited); otherwise,
/// and for a primary that is not network-heavy, onto every free CPU. Nothing free: nothing
/// is written (`no_free_cpu`).
pub fn decide_placement(
    current: &CpuSet,
    available: &CpuSet,
    avoid: &CpuSet,
    nic: &NicLocality,
    rx_pps: Option<f64>,
    heavy_rx_pps: f64,
    need_cores: Option<f64>,
) -> (CpusetDecision, LocalityNote) {
    let free = available.difference(avoid);
    let heavy = rx_pps.is_some_and(|p| p >= heavy_rx_pps);
    let local = free.intersection(&nic.serving);
    let need = need_cores.map_or(free.len(), |c| (c.ceil() as usize).max(1));
    let (choice, why, want) = if !heavy {
        ("all_free", "not_network_heavy", free.clone())
    } else if local.is_empty() && !nic.serving.is_empty() {
        ("all_free", "nic_cpus_all_used_by_shadow", free.clone())
    } else if local.len() >= need && !local.is_empty() {
        ("nic_local", "nic_local", local)
    } else {
        ("all_free", "too_few_free_nic_cpus", free.clone())
    };
    let note = LocalityNote {
        interface: nic.interface.clone(),
        irq_cpus: nic.irq_cpus.clone(),
        rps_cpus: nic.rps_cpus.clone(),
        serving: nic.serving.clone(),
        rx_pps,
        network_heavy: heavy,
        choice,
        why,
    };
    let decision = if want.is_empty() {
        CpusetDecision {
            old: current.clone(),
            new: current.clone(),
            rails: vec![Rail::NoFreeCpu],
        }
    } else {
        CpusetDecision {
            old: current.clone(),
            new: want,
            rails: Vec::new(),
        }
    };
    (decision, note)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake procfs + sysfs: eth1 (mlx-style names, 2 queues, RPS on CPU 6-7), a virtio-net
    /// eth0 on virtio2, and an unrelated IRQ.
    struct Fake {
        root: PathBuf,
    }

    impl Fake {
        fn new(tag: &str) -> Fake {
            let root =
                std::env::temp_dir().join(format!("shadow-irq-test-{}-{tag}", std::process::id()));
            let _ = fs::remove_dir_all(&root);
            let f = Fake { root };
            f.put(
                "proc/interrupts",
                "           CPU0       CPU1       CPU2       CPU3       CPU4       CPU5       CPU6       CPU7\n\
                 \x20 24:          1          0          0          0          0          0          0          0  IO-APIC   5-edge      ACPI:Ged\n\
                 \x20 38:          0      14084          0          0          0          0          0          0  PCI-MSIX-0000:00:03.0   1-edge      virtio2-input.0\n\
                 \x20 39:      10299          0          0          0          0          0          0          0  PCI-MSIX-0000:00:03.0   2-edge      virtio2-output.0\n\
                 \x20 40:          0          0          0          0          0          0          0          0  PCI-MSIX-0000:00:03.0   0-edge      virtio2-config\n\
                 \x20 50:          0          0        500          0          0          0          0          0  PCI-MSI 1-edge      eth1-TxRx-0\n\
                 \x20 51:          0          0          0        700          0          0          0          0  PCI-MSI 2-edge      eth1-TxRx-1\n\
                 \x20 52:          0          0          0          0          0          0          0          0  PCI-MSI 3-edge      eth10-TxRx-0\n\
                 NMI:          0          0          0          0          0          0          0          0   Non-maskable interrupts\n",
            );
            f.put("proc/irq/38/effective_affinity_list", "1\n");
            f.put("proc/irq/38/smp_affinity_list", "0-7\n");
            f.put("proc/irq/39/smp_affinity_list", "0\n");
            f.put("proc/irq/50/effective_affinity_list", "2\n");
            // IRQ 51 has no affinity files: the CPUs that handled it count.
            f.put(
                "sys/class/net/eth1/queues/rx-0/rps_cpus",
                "00000000,000000c0\n",
            );
            f.put("sys/class/net/eth1/queues/rx-1/rps_cpus", "0\n");
            f.put("sys/class/net/eth1/queues/tx-0/xps_cpus", "ff\n");
            f.put("sys/class/net/eth1/statistics/rx_packets", "123456\n");
            f.put("sys/devices/virtio2/net/eth0/.keep", "");
            f.put("sys/class/net/eth0/queues/rx-0/rps_cpus", "0\n");
            std::os::unix::fs::symlink(
                f.root.join("sys/devices/virtio2"),
                f.root.join("sys/class/net/eth0/device"),
            )
            .unwrap();
            f
        }

        fn put(&self, rel: &str, text: &str) {
            let p = self.root.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }

        fn read(&self, dev: &str) -> Result<NicLocality> {
            read_nic_locality(&self.root.join("proc"), &self.root.join("sys"), dev)
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.root);
        }
    }

    fn set(s: &str) -> CpuSet {
        s.parse().unwrap()
    }

    #[test]
    fn cpu_masks() {
        let p = Path::new("rps_cpus");
        assert_eq!(parse_cpu_mask(p, "0\n").unwrap(), CpuSet::new());
        assert_eq!(parse_cpu_mask(p, "f").unwrap(), set("0-3"));
        assert_eq!(parse_cpu_mask(p, "00000001,00000002").unwrap(), set("1,32"));
        let err = parse_cpu_mask(p, "zz").unwrap_err();
        assert!(err.to_string().contains("rps_cpus"), "{err}");
    }

    #[test]
    fn reads_irqs_and_rps_of_a_multiqueue_nic() {
        let f = Fake::new("mq");
        let l = f.read("eth1").unwrap();
        // eth10's IRQ is not eth1's.
        let irqs: Vec<u32> = l.irqs.iter().map(|i| i.irq).collect();
        assert_eq!(irqs, vec![50, 51]);
        assert_eq!(l.irqs[0].cpus, set("2"));
        assert_eq!(
            l.irqs[1].cpus,
            set("3"),
            "no affinity file: the CPU that handled it"
        );
        assert_eq!(l.irqs[1].counts[3], 700);
        assert_eq!(l.irq_cpus, set("2-3"));
        assert_eq!(l.rps_cpus, set("6-7"));
        assert_eq!(l.serving, set("2-3,6-7"));
        assert_eq!(rx_packets(&f.root.join("sys"), "eth1").unwrap(), 123_456);
    }

    #[test]
    fn reads_a_virtio_nic_by_its_device_name() {
        let f = Fake::new("virtio");
        let l = f.read("eth0").unwrap();
        let names: Vec<&str> = l.irqs.iter().map(|i| i.name.as_str()).collect();
        assert_eq!(names, vec!["virtio2-input.0", "virtio2-output.0"]);
        // Effective affinity wins over the allowed one.
        assert_eq!(l.irqs[0].cpus, set("1"));
        assert_eq!(l.serving, set("0-1"));
        assert!(l.rps_cpus.is_empty());
    }

    #[test]
    fn a_missing_interface_is_named() {
        let f = Fake::new("missing");
        let err = f.read("nope0").unwrap_err();
        assert!(err.to_string().contains("nope0"), "{err}");
    }

    #[test]
    fn placement_uses_the_nic_cpus_of_a_network_heavy_primary() {
        let f = Fake::new("place");
        let l = f.read("eth1").unwrap(); // serving 2-3,6-7
        let avail = set("0-7");
        let cur = set("0-7");
        // Heavy, shadow on 4-5, limit 2 cores: the free serving CPUs 2-3,6-7.
        let (d, n) = decide_placement(
            &cur,
            &avail,
            &set("4-5"),
            &l,
            Some(50_000.0),
            10_000.0,
            Some(2.0),
        );
        assert_eq!(d.new, set("2-3,6-7"));
        assert_eq!(
            (n.choice, n.why, n.network_heavy),
            ("nic_local", "nic_local", true)
        );
        // Shadow on 6-7: 2-3 left, enough for 1.5 cores.
        let (d, _) = decide_placement(
            &cur,
            &avail,
            &set("6-7"),
            &l,
            Some(50_000.0),
            10_000.0,
            Some(1.5),
        );
        assert_eq!(d.new, set("2-3"));
        // Needs 3 cores: too few NIC CPUs, every free CPU.
        let (d, n) = decide_placement(
            &cur,
            &avail,
            &set("6-7"),
            &l,
            Some(50_000.0),
            10_000.0,
            Some(3.0),
        );
        assert_eq!((d.new, n.why), (set("0-5"), "too_few_free_nic_cpus"));
        // Not network-heavy: every free CPU.
        let (d, n) = decide_placement(
            &cur,
            &avail,
            &set("4-5"),
            &l,
            Some(100.0),
            10_000.0,
            Some(1.0),
        );
        assert_eq!((d.new, n.why), (set("0-3,6-7"), "not_network_heavy"));
        // The shadow has every NIC CPU: the primary gets the rest.
        let (d, n) = decide_placement(
            &cur,
            &avail,
            &set("2-3,6-7"),
            &l,
            Some(1e6),
            10_000.0,
            Some(1.0),
        );
        assert_eq!(
            (d.new, n.why),
            (set("0-1,4-5"), "nic_cpus_all_used_by_shadow")
        );
        // Nothing free at all.
        let (d, _) = decide_placement(&cur, &avail, &avail, &l, Some(1e6), 10_000.0, None);
        assert_eq!((d.new.clone(), d.rails), (cur, vec![Rail::NoFreeCpu]));
        // Unknown rate (first interval): not heavy yet.
        let (_, n) = decide_placement(&set("0-7"), &avail, &set("4-5"), &l, None, 10_000.0, None);
        assert!(!n.network_heavy);
    }
}
