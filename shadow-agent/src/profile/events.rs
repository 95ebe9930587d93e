//! exec/exit events of tracked cgroups: the kernel's ring buffer read through tokio's
//! `AsyncFd` into a bounded channel. Nothing here ever makes the kernel wait: a full ring
//! buffer drops in the kernel (counted in `ACCT_ERRS`), a full channel drops here (counted
//! in [`EventStats`]).

use std::sync::{
    atomic::{AtomicU64, Ordering},
    Arc,
};

use aya::maps::{MapData, RingBuf};
use shadow_common::acct::{event, ProcEvent};
use tokio::{io::unix::AsyncFd, io::Interest, sync::mpsc};

use super::ProfileError;

/// What happened to a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ProcEventKind {
    Exec,
    Exit,
}

/// One decoded event.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct ProcRecord {
    pub kind: ProcEventKind,
    pub pid: u32,
    pub tgid: u32,
    pub cgroup_id: u64,
    /// Kernel monotonic time of the event (`bpf_ktime_get_ns`).
    pub ts_ns: u64,
    pub comm: String,
}

/// Decode one ring-buffer record; `None` for a short record or an unknown kind.
pub fn decode(bytes: &[u8]) -> Option<ProcRecord> {
    if bytes.len() < std::mem::size_of::<ProcEvent>() {
        return None;
    }
    // SAFETY: the length is checked above; ProcEvent is repr(C) plain data valid for any
    // bit pattern; read_unaligned copes with any alignment.
    let e: ProcEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let kind = match e.kind {
        event::EXEC => ProcEventKind::Exec,
        event::EXIT => ProcEventKind::Exit,
        _ => return None,
    };
    let end = e.comm.iter().position(|&b| b == 0).unwrap_or(e.comm.len());
    Some(ProcRecord {
        kind,
        pid: e.pid,
        tgid: e.tgid,
        cgroup_id: e.cgroup_id,
        ts_ns: e.ts_ns,
        comm: String::from_utf8_lossy(&e.comm[..end]).into_owned(),
    })
}

/// Counters of the user side of the event path.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Records delivered into the channel.
    pub delivered: AtomicU64,
    /// Records dropped because the channel was full.
    pub channel_full: AtomicU64,
    /// Records that could not be decoded.
    pub malformed: AtomicU64,
}

impl EventStats {
    pub fn snapshot(&self) -> (u64, u64, u64) {
        (
            self.delivered.load(Ordering::Relaxed),
            self.channel_full.load(Ordering::Relaxed),
            self.malformed.load(Ordering::Relaxed),
        )
    }
}

/// The exec/exit ring buffer, taken from the profiler.
pub struct ProcEvents {
    ring: RingBuf<MapData>,
}

impl ProcEvents {
    pub(super) fn new(ring: RingBuf<MapData>) -> ProcEvents {
        ProcEvents { ring }
    }

    /// Read the ring buffer on the current tokio runtime into a channel of `capacity`.
    /// The task ends when the receiver is dropped. Must be called inside a runtime.
    pub fn spawn(
        self,
        capacity: usize,
    ) -> Result<(mpsc::Receiver<ProcRecord>, Arc<EventStats>), ProfileError> {
        let (tx, rx) = mpsc::channel(capacity.max(1));
        let stats = Arc::new(EventStats::default());
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ProfileError::Events {
                source: std::io::Error::other("no tokio runtime to read the ring buffer on"),
            });
        }
        // SAFETY: the ring buffer owns its map fd, which stays open and unchanged for as long
        // as the RingBuf (moved into the AsyncFd) lives.
        let fd = unsafe { AsyncFd::register_with_interest(self.ring, Interest::READABLE) }
            .map_err(|e| ProfileError::Events {
                source: e.into_parts().1,
            })?;
        let st = stats.clone();
        tokio::spawn(async move {
            let mut fd = fd;
            loop {
                let mut guard = tokio::select! {
                    g = fd.readable_mut() => match g {
                        Ok(g) => g,
                        Err(e) => {
                            tracing::warn!(error = %e, "exec/exit ring buffer: poll failed");
                            return;
                        }
                    },
                    () = tx.closed() => return,
                };
                let ring = guard.get_inner_mut();
                while let Some(item) = ring.next() {
                    match decode(&item) {
                        Some(rec) => match tx.try_send(rec) {
                            Ok(()) => {
                                st.delivered.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                st.channel_full.fetch_add(1, Ordering::Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => return,
                        },
                        None => {
                            st.malformed.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
                guard.clear_ready();
            }
        });
        Ok((rx, stats))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(e: &ProcEvent) -> Vec<u8> {
        // SAFETY: ProcEvent is repr(C) plain data without padding.
        unsafe {
            std::slice::from_raw_parts(
                (e as *const ProcEvent).cast::<u8>(),
                std::mem::size_of::<ProcEvent>(),
            )
        }
        .to_vec()
    }

    #[test]
    fn decodes_exec_and_exit() {
        let mut comm = [0u8; 16];
        comm[..4].copy_from_slice(b"true");
        let e = ProcEvent {
            kind: event::EXEC,
            pid: 7,
            tgid: 7,
            slot: 1,
            cgroup_id: 99,
            ts_ns: 5,
            comm,
        };
        let r = decode(&bytes(&e)).expect("decoded");
        assert_eq!(r.kind, ProcEventKind::Exec);
        assert_eq!((r.pid, r.cgroup_id, r.comm.as_str()), (7, 99, "true"));
        let x = ProcEvent {
            kind: event::EXIT,
            ..e
        };
        assert_eq!(
            decode(&bytes(&x)).map(|r| r.kind),
            Some(ProcEventKind::Exit)
        );
    }

    #[test]
    fn rejects_short_and_unknown() {
        let e = ProcEvent {
            kind: 77,
            ..Default::default()
        };
        assert!(decode(&bytes(&e)).is_none());
        assert!(decode(&bytes(&e)[..10]).is_none());
    }
}
