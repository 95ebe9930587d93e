//! Spawning a command inside a network namespace and/or a cgroup.
//!
//! Everything that needs allocation or path lookups happens before `fork`: the namespace fd is
//! duplicated and every `cgroup.procs` file of the group (cgroup2 and each v1 hierarchy) is
//! opened for writing. Between `fork` and `exec` the child only makes async-signal-safe system
//! calls on those descriptors: `write(fd, "0")` to each `cgroup.procs` (which moves the
//! writer) and `setns(fd, CLONE_NEWNET)`. The child therefore runs its first instruction of the
//! new program already inside the group and the namespace.

use std::ffi::CString;
use std::fs::OpenOptions;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus};
use std::thread;
use std::time::{Duration, Instant};

use super::cgroup::Cgroup;
use super::netns::NetNs;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    /// Duplicating the namespace fd failed.
    #[error("preparing network namespace {netns:?} for {program:?} failed")]
    Netns {
        program: String,
        netns: String,
        #[source]
        source: io::Error,
    },

    /// Opening a `cgroup.procs` file before the fork failed.
    #[error("opening {} for {program:?} failed", path.display())]
    OpenProcs {
        program: String,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// fork/exec failed (including a failed `setns` or cgroup write in the child).
    #[error("spawning {program:?} (netns {netns:?}, cgroup {cgroup:?}) failed")]
    Spawn {
        program: String,
        netns: Option<String>,
        cgroup: Option<String>,
        #[source]
        source: io::Error,
    },

    /// Waiting for or signalling the child failed.
    #[error("{op} of child process {pid} failed")]
    Child {
        op: &'static str,
        pid: u32,
        #[source]
        source: io::Error,
    },
}

/// Result alias of this module.
pub type Result<T, E = ProcessError> = std::result::Result<T, E>;

/// Spawns `command` inside `netns` (if given) and `cgroup` (if given, in all its hierarchies).
///
/// The command is consumed: its pre-exec hook refers to descriptors that only live for this
/// call.
pub fn spawn(
    command: Command,
    netns: Option<&NetNs>,
    cgroup: Option<&Cgroup>,
) -> Result<ChildGuard> {
    spawn_with(
        command,
        &SpawnOptions {
            netns,
            cgroup,
            ..SpawnOptions::default()
        },
    )
}

/// Where and as whom a child runs. Everything is applied between fork and exec, in this
/// order: cgroups, network namespace, mount namespace, working directory, groups/gid/uid,
/// parent-death signal. `Command::current_dir`/`uid`/`gid` must not be used together with
/// `mntns` (std applies them before the pre-exec hook, i.e. before `setns`): use `cwd` and
/// `user` here instead.
#[derive(Default)]
pub struct SpawnOptions<'a> {
    pub netns: Option<&'a NetNs>,
    pub cgroup: Option<&'a Cgroup>,
    /// A mount namespace to enter (e.g. from `mountns::PrivateMounts`).
    pub mntns: Option<BorrowedFd<'a>>,
    /// Working directory, resolved inside the mount namespace.
    pub cwd: Option<&'a std::path::Path>,
    /// Run as this uid/gid (supplementary groups are cleared).
    pub user: Option<(u32, u32)>,
    /// SIGKILL the child when the thread that spawned it dies, so a killed agent takes its
    /// shadows with it.
    pub die_with_parent: bool,
}

/// [`spawn`] with all [`SpawnOptions`].
pub fn spawn_with(mut command: Command, opts: &SpawnOptions<'_>) -> Result<ChildGuard> {
    let program = command.get_program().to_string_lossy().into_owned();
    let netns = opts.netns;
    let cgroup = opts.cgroup;

    let ns_fd: Option<OwnedFd> = netns
        .map(|ns| {
            ns.fd()
                .try_clone_to_owned()
                .map_err(|source| ProcessError::Netns {
                    program: program.clone(),
                    netns: ns.name().to_owned(),
                    source,
                })
        })
        .transpose()?;

    let mut procs_files: Vec<OwnedFd> = Vec::new();
    if let Some(group) = cgroup {
        for path in group.procs_files() {
            let file = OpenOptions::new()
                .write(true)
                .open(&path)
                .map_err(|source| ProcessError::OpenProcs {
                    program: program.clone(),
                    path: path.clone(),
                    source,
                })?;
            procs_files.push(OwnedFd::from(file));
        }
    }
    let cwd: Option<CString> = opts
        .cwd
        .map(|p| CString::new(p.as_os_str().as_bytes()))
        .transpose()
        .map_err(|_| ProcessError::Spawn {
            program: program.clone(),
            netns: netns.map(|ns| ns.name().to_owned()),
            cgroup: cgroup.map(|g| g.name().to_owned()),
            source: io::Error::new(
                io::ErrorKind::InvalidInput,
                "working directory contains NUL",
            ),
        })?;

    // Plain integers and pointers for the child: allocated here, only read after fork.
    let raw_ns: Option<RawFd> = ns_fd.as_ref().map(AsRawFd::as_raw_fd);
    let raw_mnt: Option<RawFd> = opts.mntns.as_ref().map(AsRawFd::as_raw_fd);
    let raw_procs: Vec<RawFd> = procs_files.iter().map(AsRawFd::as_raw_fd).collect();
    let cwd_ptr: Option<usize> = cwd.as_ref().map(|c| c.as_ptr() as usize);
    let user = opts.user;
    let die_with_parent = opts.die_with_parent;

    // SAFETY: the hook runs in the forked child before exec. It only reads captured integers
    // and calls write(2), setns(2), chdir(2), setgroups(2), setgid(2), setuid(2) and prctl(2),
    // which are async-signal-safe; it does not allocate, lock or touch any other state.
    // `io::Error::from_raw_os_error` does not allocate. The fds and the cwd string stay alive
    // in the parent until `spawn` below has returned, so they are valid in the child.
    unsafe {
        command.pre_exec(move || {
            for fd in &raw_procs {
                let rc = libc::write(*fd, b"0".as_ptr().cast(), 1);
                if rc != 1 {
                    return Err(last_errno());
                }
            }
            if let Some(fd) = raw_ns {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(last_errno());
                }
            }
            if let Some(fd) = raw_mnt {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    return Err(last_errno());
                }
            }
            if let Some(p) = cwd_ptr {
                if libc::chdir(p as *const libc::c_char) != 0 {
                    return Err(last_errno());
                }
            }
            if let Some((uid, gid)) = user {
                if libc::setgroups(0, std::ptr::null()) != 0
                    || libc::setgid(gid) != 0
                    || libc::setuid(uid) != 0
                {
                    return Err(last_errno());
                }
            }
            if die_with_parent && libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(last_errno());
            }
            Ok(())
        });
    }

    let child = command.spawn().map_err(|source| ProcessError::Spawn {
        program: program.clone(),
        netns: netns.map(|ns| ns.name().to_owned()),
        cgroup: cgroup.map(|g| g.name().to_owned()),
        source,
    })?;
    drop(command);
    drop(procs_files);
    drop(ns_fd);
    drop(cwd);
    Ok(ChildGuard::new(child))
}

/// errno as an io::Error without allocating (safe to use between fork and exec).
fn last_errno() -> io::Error {
    // SAFETY: __errno_location returns the calling thread's errno slot.
    io::Error::from_raw_os_error(unsafe { *libc::__errno_location() })
}

/// A child process that is SIGKILLed and reaped when the guard drops.
#[derive(Debug)]
pub struct ChildGuard {
    child: Child,
    pid: u32,
    status: Option<ExitStatus>,
    armed: bool,
}

impl ChildGuard {
    /// Guards an already spawned child.
    pub fn new(child: Child) -> ChildGuard {
        let pid = child.id();
        ChildGuard {
            child,
            pid,
            status: None,
            armed: true,
        }
    }

    /// The child's pid.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The std child (e.g. to take its stdout).
    pub fn child(&self) -> &Child {
        &self.child
    }

    /// The std child, mutably.
    pub fn child_mut(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Drop will neither kill nor reap the child any more (the caller takes care of it).
    pub fn disarm(&mut self) {
        self.armed = false;
    }

    /// The exit status if the child has exited (reaps it), without blocking.
    pub fn try_wait(&mut self) -> Result<Option<ExitStatus>> {
        if self.status.is_some() {
            return Ok(self.status);
        }
        let pid = self.pid;
        let status = self
            .child
            .try_wait()
            .map_err(|source| ProcessError::Child {
                op: "wait",
                pid,
                source,
            })?;
        self.status = status;
        Ok(status)
    }

    /// Waits up to `timeout` for the child to exit; `None` if it is still running.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        let mut pause = Duration::from_millis(1);
        loop {
            if let Some(status) = self.try_wait()? {
                return Ok(Some(status));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            thread::sleep(pause.min(deadline - now));
            pause = (pause * 2).min(Duration::from_millis(50));
        }
    }

    /// Waits for the child to exit.
    pub fn wait(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pid = self.pid;
        let status = self.child.wait().map_err(|source| ProcessError::Child {
            op: "wait",
            pid,
            source,
        })?;
        self.status = Some(status);
        Ok(status)
    }

    /// SIGKILLs the child (if still running) and reaps it.
    pub fn kill(&mut self) -> Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        let pid = self.pid;
        // An error here means it has exited already; wait() below reaps it either way.
        let _ = self.child_mut().kill();
        let status = self.child.wait().map_err(|source| ProcessError::Child {
            op: "reap",
            pid,
            source,
        })?;
        self.status = Some(status);
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if self.armed && self.status.is_none() {
            let _ = self.kill();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_spawn_and_wait() {
        let mut child = spawn(Command::new("true"), None, None).unwrap();
        let status = child.wait_timeout(Duration::from_secs(10)).unwrap();
        assert!(status.is_some_and(|s| s.success()));
    }

    #[test]
    fn drop_kills_and_reaps() {
        let child = spawn(
            {
                let mut c = Command::new("sleep");
                c.arg("30");
                c
            },
            None,
            None,
        )
        .unwrap();
        let pid = child.pid();
        drop(child);
        // Reaped: the pid no longer names our child.
        let rc = unsafe { libc::waitpid(pid as i32, std::ptr::null_mut(), libc::WNOHANG) };
        assert_eq!(rc, -1);
    }

    #[test]
    fn wait_timeout_expires() {
        let mut c = Command::new("sleep");
        c.arg("30");
        let mut child = spawn(c, None, None).unwrap();
        let started = Instant::now();
        assert!(child
            .wait_timeout(Duration::from_millis(100))
            .unwrap()
            .is_none());
        assert!(started.elapsed() < Duration::from_secs(5));
        let status = child.kill().unwrap();
        assert!(!status.success());
    }

    #[test]
    fn spawn_errors_name_the_program() {
        let err = spawn(Command::new("/nonexistent/shadow-test-binary"), None, None).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/shadow-test-binary"),
            "{err}"
        );
    }
}
