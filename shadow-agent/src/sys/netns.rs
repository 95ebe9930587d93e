//! Named, persistent network namespaces, laid out exactly like `ip netns add` does.
//!
//! A named namespace is a file `/run/netns/NAME` on which the namespace file
//! (`/proc/thread-self/ns/net` of a thread that did `unshare(CLONE_NEWNET)`) is bind-mounted.
//! `/run/netns` itself is made a shared mount point (bind-mounted onto itself first if it is not
//! a mount point yet), as iproute2 does, so the names are visible to `ip netns` and to other
//! mount namespaces that share propagation with this one.
//!
//! Code runs inside a namespace through [`NetNs::run_in`], which uses a fresh thread that did
//! `setns`: the calling thread never changes namespace.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use nix::errno::Errno;
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sched::{setns, unshare, CloneFlags};
use nix::sys::statfs::{fstatfs, NSFS_MAGIC};

use super::link;

/// Directory holding the named namespaces (the iproute2 convention).
pub const NETNS_RUN_DIR: &str = "/run/netns";

/// Longest accepted namespace name (a file name in [`NETNS_RUN_DIR`]).
pub const MAX_NAME_LEN: usize = 255;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    /// The name cannot be a file name in `/run/netns`.
    #[error("invalid network namespace name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// `create` found a namespace (or file) of that name already.
    #[error("network namespace {name:?} already exists at {}", path.display())]
    AlreadyExists { name: String, path: PathBuf },

    /// No namespace of that name.
    #[error("network namespace {name:?} not found at {}", path.display())]
    NotFound { name: String, path: PathBuf },

    /// The file exists but is not a namespace (nothing is bind-mounted on it).
    #[error("{} exists but is not a network namespace (nothing mounted on it)", path.display())]
    NotANamespace { path: PathBuf },

    /// A file-system or mount operation on `path` failed.
    #[error("{op} {} failed", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// `unshare(CLONE_NEWNET)` failed while creating `name`.
    #[error("unshare(CLONE_NEWNET) for network namespace {name:?} failed")]
    Unshare {
        name: String,
        #[source]
        source: io::Error,
    },

    /// `setns(fd, CLONE_NEWNET)` into `name` failed.
    #[error("setns into network namespace {name:?} failed")]
    Setns {
        name: String,
        #[source]
        source: io::Error,
    },

    /// A helper thread could not be started.
    #[error("spawning a thread for network namespace {name:?} failed")]
    Thread {
        name: String,
        #[source]
        source: io::Error,
    },

    /// Bringing `lo` up in the freshly created namespace failed.
    #[error("bringing lo up in network namespace {name:?} failed")]
    Loopback {
        name: String,
        #[source]
        source: Box<link::LinkError>,
    },
}

/// Result alias of this module.
pub type Result<T, E = NetnsError> = std::result::Result<T, E>;

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// Checks that `name` can be a namespace name (a single file name in `/run/netns`).
pub fn validate_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        Some("it is empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("it is longer than 255 bytes")
    } else if name == "." || name == ".." {
        Some("it is a reserved directory name")
    } else if name.contains('/') {
        Some("it contains '/'")
    } else if name.contains('\0') {
        Some("it contains a NUL byte")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(NetnsError::InvalidName {
            name: name.to_owned(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Path of the named namespace `name`.
pub fn path_of(name: &str) -> PathBuf {
    Path::new(NETNS_RUN_DIR).join(name)
}

/// Serialises the one-time `/run/netns` setup between threads of this process.
static RUN_DIR_SETUP: Mutex<()> = Mutex::new(());

/// Creates `/run/netns` and makes it a shared mount point, as `ip netns add` does.
fn ensure_run_dir() -> Result<()> {
    let _guard = RUN_DIR_SETUP.lock().unwrap_or_else(|p| p.into_inner());
    let dir = Path::new(NETNS_RUN_DIR);
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o755)
        .create(dir)
    {
        Ok(()) => {}
        Err(source) => {
            return Err(NetnsError::Io {
                op: "mkdir",
                path: dir.to_owned(),
                source,
            })
        }
    }
    let none: Option<&str> = None;
    let mut bound = false;
    loop {
        match mount(
            Some(""),
            dir,
            Some("none"),
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            none,
        ) {
            Ok(()) => return Ok(()),
            // EINVAL: not a mount point yet. Bind it onto itself once, then retry.
            Err(Errno::EINVAL) if !bound => {
                mount(
                    Some(dir),
                    dir,
                    Some("none"),
                    MsFlags::MS_BIND | MsFlags::MS_REC,
                    none,
                )
                .map_err(|e| NetnsError::Io {
                    op: "bind-mount onto itself",
                    path: dir.to_owned(),
                    source: errno_io(e),
                })?;
                bound = true;
            }
            Err(e) => {
                return Err(NetnsError::Io {
                    op: "make shared mount",
                    path: dir.to_owned(),
                    source: errno_io(e),
                })
            }
        }
    }
}

/// Runs `f` on a fresh thread that first did `setns(fd, CLONE_NEWNET)`.
///
/// A panic in `f` is resumed on the calling thread.
pub(crate) fn run_in_fd<T: Send>(
    name: &str,
    fd: BorrowedFd<'_>,
    f: impl FnOnce() -> T + Send,
) -> Result<T> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(thread_name(name))
            .spawn_scoped(scope, move || -> std::result::Result<T, Errno> {
                setns(fd, CloneFlags::CLONE_NEWNET)?;
                Ok(f())
            })
            .map_err(|source| NetnsError::Thread {
                name: name.to_owned(),
                source,
            })?;
        match handle.join() {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(errno)) => Err(NetnsError::Setns {
                name: name.to_owned(),
                source: errno_io(errno),
            }),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

fn thread_name(name: &str) -> String {
    // Thread names are truncated to 15 bytes by the kernel anyway; keep it short and valid.
    let mut s = String::from("netns:");
    s.extend(name.chars().filter(|c| *c != '\0').take(9));
    s
}

/// A network namespace handle.
///
/// Created with [`NetNs::create`], it owns the name: Drop unmounts and unlinks
/// `/run/netns/NAME` (the namespace itself lives on while something still uses it) unless
/// [`NetNs::into_persistent`] was called. Handles from [`NetNs::open`], [`NetNs::current`] and
/// [`NetNs::try_clone`] never remove anything.
#[derive(Debug)]
pub struct NetNs {
    name: String,
    path: PathBuf,
    fd: OwnedFd,
    remove_on_drop: bool,
}

impl NetNs {
    /// Creates the named namespace `name` like `ip netns add NAME`, with `lo` up.
    pub fn create(name: &str) -> Result<NetNs> {
        validate_name(name)?;
        ensure_run_dir()?;
        let path = path_of(name);

        // The mount point: an empty file, created exclusively (O_CREAT|O_EXCL, mode 0).
        match OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o000)
            .open(&path)
        {
            Ok(file) => drop(file),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                return Err(NetnsError::AlreadyExists {
                    name: name.to_owned(),
                    path,
                })
            }
            Err(source) => {
                return Err(NetnsError::Io {
                    op: "create mount point",
                    path,
                    source,
                })
            }
        }

        if let Err(e) = bind_new_netns(name, &path) {
            let _ = fs::remove_file(&path);
            return Err(e);
        }

        let fd = match open_ns_file(&path) {
            Ok(fd) => fd,
            Err(e) => {
                let _ = umount2(&path, MntFlags::MNT_DETACH);
                let _ = fs::remove_file(&path);
                return Err(e);
            }
        };
        let ns = NetNs {
            name: name.to_owned(),
            path,
            fd,
            remove_on_drop: true,
        };
        // On failure `ns` is dropped here, which removes the namespace again.
        link::set_up("lo", Some(&ns)).map_err(|e| NetnsError::Loopback {
            name: name.to_owned(),
            source: Box::new(e),
        })?;
        Ok(ns)
    }

    /// Opens the existing named namespace `name`. The handle does not remove it on Drop.
    pub fn open(name: &str) -> Result<NetNs> {
        validate_name(name)?;
        let path = path_of(name);
        let fd = open_ns_file(&path).map_err(|e| match e {
            NetnsError::Io { source, .. } if source.kind() == io::ErrorKind::NotFound => {
                NetnsError::NotFound {
                    name: name.to_owned(),
                    path: path.clone(),
                }
            }
            other => other,
        })?;
        Ok(NetNs {
            name: name.to_owned(),
            path,
            fd,
            remove_on_drop: false,
        })
    }

    /// A handle on the calling thread's current network namespace (named `"<current>"`).
    pub fn current() -> Result<NetNs> {
        let path = PathBuf::from("/proc/thread-self/ns/net");
        let fd = open_ns_file(&path)?;
        Ok(NetNs {
            name: "<current>".to_owned(),
            path,
            fd,
            remove_on_drop: false,
        })
    }

    /// Another handle on the same namespace (a duplicated fd) that never removes anything.
    pub fn try_clone(&self) -> Result<NetNs> {
        let fd = self.fd.try_clone().map_err(|source| NetnsError::Io {
            op: "dup namespace fd of",
            path: self.path.clone(),
            source,
        })?;
        Ok(NetNs {
            name: self.name.clone(),
            path: self.path.clone(),
            fd,
            remove_on_drop: false,
        })
    }

    /// The namespace's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// `/run/netns/NAME` (for [`NetNs::current`]: `/proc/thread-self/ns/net`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The namespace file descriptor (close-on-exec), e.g. for `setns` in a child process.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }

    /// Whether Drop will remove the name.
    pub fn removes_on_drop(&self) -> bool {
        self.remove_on_drop
    }

    /// Keeps the namespace after this handle is dropped (like `ip netns add` without a delete).
    pub fn into_persistent(mut self) -> NetNs {
        self.remove_on_drop = false;
        self
    }

    /// Runs `f` on a fresh thread that entered this namespace; returns what `f` returned.
    ///
    /// The calling thread never changes namespace. A panic in `f` is resumed on the caller.
    pub fn run_in<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T> {
        run_in_fd(&self.name, self.fd.as_fd(), f)
    }

    /// Whether the calling thread is in this namespace (then [`NetNs::run_in`] is not
    /// needed). False when either cannot be looked at.
    pub fn is_current(&self) -> bool {
        use std::os::unix::fs::MetadataExt as _;
        match (
            std::fs::metadata("/proc/thread-self/ns/net"),
            nix::sys::stat::fstat(self.fd.as_fd()),
        ) {
            (Ok(here), Ok(this)) => here.ino() == this.st_ino && here.dev() == this.st_dev,
            _ => false,
        }
    }
}

impl AsFd for NetNs {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

impl AsRawFd for NetNs {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

impl Drop for NetNs {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = remove_path(&self.name, &self.path);
        }
    }
}

/// On a fresh thread: unshare the network namespace and bind-mount it onto `path`.
fn bind_new_netns(name: &str, path: &Path) -> Result<()> {
    std::thread::scope(|scope| {
        let handle = std::thread::Builder::new()
            .name(thread_name(name))
            .spawn_scoped(scope, || -> Result<()> {
                unshare(CloneFlags::CLONE_NEWNET).map_err(|e| NetnsError::Unshare {
                    name: name.to_owned(),
                    source: errno_io(e),
                })?;
                let none: Option<&str> = None;
                mount(
                    Some("/proc/thread-self/ns/net"),
                    path,
                    Some("none"),
                    MsFlags::MS_BIND,
                    none,
                )
                .map_err(|e| NetnsError::Io {
                    op: "bind-mount the new namespace onto",
                    path: path.to_owned(),
                    source: errno_io(e),
                })
                // The thread ends here; its namespace lives on through the bind mount.
            })
            .map_err(|source| NetnsError::Thread {
                name: name.to_owned(),
                source,
            })?;
        handle
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
    })
}

fn open_ns_file(path: &Path) -> Result<OwnedFd> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| NetnsError::Io {
            op: "open",
            path: path.to_owned(),
            source,
        })?;
    let stat = fstatfs(&file).map_err(|e| NetnsError::Io {
        op: "fstatfs",
        path: path.to_owned(),
        source: errno_io(e),
    })?;
    if stat.filesystem_type() != NSFS_MAGIC {
        return Err(NetnsError::NotANamespace {
            path: path.to_owned(),
        });
    }
    Ok(OwnedFd::from(file))
}

fn remove_path(name: &str, path: &Path) -> Result<()> {
    // EINVAL: not mounted (a half-created or already unmounted name): just unlink.
    match umount2(path, MntFlags::MNT_DETACH) {
        Ok(()) | Err(Errno::EINVAL) => {}
        Err(Errno::ENOENT) => {
            return Err(NetnsError::NotFound {
                name: name.to_owned(),
                path: path.to_owned(),
            })
        }
        Err(e) => {
            return Err(NetnsError::Io {
                op: "umount",
                path: path.to_owned(),
                source: errno_io(e),
            })
        }
    }
    fs::remove_file(path).map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            NetnsError::NotFound {
                name: name.to_owned(),
                path: path.to_owned(),
            }
        } else {
            NetnsError::Io {
                op: "unlink",
                path: path.to_owned(),
                source,
            }
        }
    })
}

/// Deletes the named namespace `name` like `ip netns delete NAME` (umount + unlink).
///
/// The namespace itself disappears once no process, fd or mount refers to it any more.
pub fn delete(name: &str) -> Result<()> {
    validate_name(name)?;
    remove_path(name, &path_of(name))
}

/// Names of the namespaces in `/run/netns`, sorted (empty when the directory does not exist).
pub fn list() -> Result<Vec<String>> {
    let dir = Path::new(NETNS_RUN_DIR);
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(NetnsError::Io {
                op: "read directory",
                path: dir.to_owned(),
                source,
            })
        }
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|source| NetnsError::Io {
            op: "read directory",
            path: dir.to_owned(),
            source,
        })?;
        let name = entry.file_name();
        if let Some(name) = os_str_to_string(&name) {
            names.push(name);
        }
    }
    names.sort();
    Ok(names)
}

fn os_str_to_string(s: &OsStr) -> Option<String> {
    std::str::from_utf8(s.as_bytes()).ok().map(str::to_owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_validation() {
        assert!(validate_name("shdt1234-a").is_ok());
        for bad in ["", ".", "..", "a/b", "a\0b"] {
            let err = validate_name(bad).unwrap_err();
            assert!(
                matches!(&err, NetnsError::InvalidName { name, .. } if name == bad),
                "{err:?}"
            );
        }
        let long = "x".repeat(MAX_NAME_LEN + 1);
        assert!(validate_name(&long).is_err());
        assert!(validate_name(&"x".repeat(MAX_NAME_LEN)).is_ok());
    }

    #[test]
    fn paths_follow_iproute2() {
        assert_eq!(path_of("foo"), PathBuf::from("/run/netns/foo"));
    }

    #[test]
    fn thread_names_are_short() {
        assert!(thread_name("a-very-long-namespace-name").len() <= 15);
    }
}
