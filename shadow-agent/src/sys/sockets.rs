//! Concurrent TCP connections of a service, counted from the kernel's socket tables: the
//! load signal of the shadow-derived memory model (memory per concurrent flow).
//!
//! `/proc/<pid>/net/tcp` and `tcp6` list every TCP socket of the network namespace `pid`
//! lives in, so one process of a cgroup is enough to count the connections of the service it
//! runs: those in state ESTABLISHED whose *local* port is one the mirror selects (a server's
//! accepted connections). Reading the tables costs O(sockets in the namespace).

use std::path::Path;

/// `st` of an established connection in the `/proc/net/tcp` format.
const ESTABLISHED: &str = "01";

/// Connections in `text` (the `/proc/net/tcp` or `tcp6` format) that are established and
/// whose local port lies in one of the inclusive `ports` ranges (none: any port).
pub fn count_established(text: &str, ports: &[(u16, u16)]) -> u64 {
    text.lines()
        .skip(1)
        .filter(|line| {
            let mut f = line.split_whitespace();
            let (Some(_slot), Some(local), Some(_remote), Some(st)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return false;
            };
            if st != ESTABLISHED {
                return false;
            }
            let Some(port) = local
                .rsplit_once(':')
                .and_then(|(_, p)| u16::from_str_radix(p, 16).ok())
            else {
                return false;
            };
            ports.is_empty() || ports.iter().any(|&(lo, hi)| (lo..=hi).contains(&port))
        })
        .count() as u64
}

/// Established connections on `ports` in the network namespace of process `pid`, IPv4 and
/// IPv6. `None` when the process is gone or its tables cannot be read.
pub fn established_in_netns_of(pid: u32, ports: &[(u16, u16)]) -> Option<u64> {
    let mut n = 0;
    let mut read_any = false;
    for table in ["tcp", "tcp6"] {
        // A kernel without IPv6 has no tcp6 table: counted as none.
        if let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/net/{table}")) {
            n += count_established(&text, ports);
            read_any = true;
        }
    }
    read_any.then_some(n)
}

/// The first process listed in a cgroup directory's `cgroup.procs`, if any.
pub fn first_pid(cgroup_dir: &Path) -> Option<u32> {
    std::fs::read_to_string(cgroup_dir.join("cgroup.procs"))
        .ok()?
        .lines()
        .find_map(|l| l.trim().parse().ok())
}

/// Established connections on `ports` in the network namespace of the first process of the
/// cgroup at `cgroup_dir`; `None` when the cgroup has no process or its tables are unreadable.
pub fn established_of_cgroup(cgroup_dir: &Path, ports: &[(u16, u16)]) -> Option<u64> {
    established_in_netns_of(first_pid(cgroup_dir)?, ports)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Four sockets: a listener on 8080 (0A), two connections accepted on 8080 (01), one
    // outgoing connection from port 40000 to a remote 8080 (01), one in TIME_WAIT on 8080 (06).
    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0212A8C0:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1 1 0 100 0 0 10 0
   1: 0212A8C0:1F90 0111A8C0:D431 01 00000000:00000000 00:00000000 00000000     0        0 2 1 0 20 4 30 10 -1
   2: 0212A8C0:1F90 0111A8C0:D432 01 00000000:00000000 00:00000000 00000000     0        0 3 1 0 20 4 30 10 -1
   3: 0212A8C0:9C40 0311A8C0:1F90 01 00000000:00000000 00:00000000 00000000     0        0 4 1 0 20 4 30 10 -1
   4: 0212A8C0:1F90 0111A8C0:D433 06 00000000:00000000 03:00000000 00000000     0        0 0 3 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:1F90 00000000000000000000000001000000:B2E4 01 00000000:00000000 00:00000000 00000000     0        0 5 1 0 20 4 30 10 -1
";

    #[test]
    fn counts_established_connections_on_the_local_ports() {
        assert_eq!(count_established(TCP, &[(8080, 8080)]), 2);
        assert_eq!(count_established(TCP, &[(8000, 8100), (40000, 40000)]), 3);
        assert_eq!(count_established(TCP, &[]), 3);
        assert_eq!(count_established(TCP, &[(80, 80)]), 0);
        assert_eq!(count_established(TCP6, &[(8080, 8080)]), 1);
        assert_eq!(count_established("", &[]), 0);
        assert_eq!(count_established("header\ngarbage line\n", &[]), 0);
    }

    #[test]
    fn counts_a_real_connection_of_this_process() {
        // A connection over the loopback of this test's own namespace, on a port the kernel
        // picks: the listener's accepted side is established on that local port.
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = l.local_addr().unwrap().port();
        let before = established_in_netns_of(std::process::id(), &[(port, port)]).unwrap();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let _s = l.accept().expect("accept");
        let after = established_in_netns_of(std::process::id(), &[(port, port)]).unwrap();
        assert_eq!((before, after), (0, 1));
        assert_eq!(established_in_netns_of(u32::MAX, &[]), None);
    }
}
