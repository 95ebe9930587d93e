//! A private mount namespace in which chosen paths get a throwaway writable layer.
//!
//! Each path `P` is overlaid: the replica sees P's files, and everything it writes lands in
//! an upper directory on a tmpfs that exists only inside this namespace. When the last
//! process and the namespace handle are gone, the kernel frees it; nothing reaches the host.
//!
//! The namespace is made on a helper thread (`unshare(CLONE_NEWNS | CLONE_FS)`, mounts made
//! private recursively so nothing propagates back), then held by an fd to its
//! `/proc/thread-self/ns/mnt`; children enter it with `setns` between fork and exec.

use std::{
    fs,
    os::fd::{AsFd, BorrowedFd, OwnedFd},
    path::{Path, PathBuf},
};

use nix::{
    mount::{mount, MsFlags},
    sched::{unshare, CloneFlags},
};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("writable path {path} does not exist or is not a directory")]
    NotADirectory { path: PathBuf },
    #[error("writable path {path} must be absolute")]
    NotAbsolute { path: PathBuf },
    #[error("{op} for {path}")]
    Sys {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: nix::Error,
    },
    #[error("{op} {path}")]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("writable path {path} contains ',' or ':', which overlayfs options cannot carry")]
    Unsupported { path: PathBuf },
    #[error("the mount namespace thread panicked")]
    Thread,
}

/// A mount namespace with overlays; the staging directory on the host is removed on drop.
#[derive(Debug)]
pub struct PrivateMounts {
    ns: OwnedFd,
    staging: PathBuf,
    paths: Vec<PathBuf>,
}

/// Check the paths before anything is created.
pub fn validate(paths: &[PathBuf]) -> Result<(), MountError> {
    for p in paths {
        if !p.is_absolute() {
            return Err(MountError::NotAbsolute { path: p.clone() });
        }
        if !p.is_dir() {
            return Err(MountError::NotADirectory { path: p.clone() });
        }
        if p.to_string_lossy().contains([',', ':']) {
            return Err(MountError::Unsupported { path: p.clone() });
        }
    }
    Ok(())
}

impl PrivateMounts {
    /// Create the namespace. `staging` is an empty directory that this call creates on the
    /// host and that stays empty there (the tmpfs is mounted on it only inside the new
    /// namespace); it is removed on drop.
    pub fn create(paths: &[PathBuf], staging: &Path) -> Result<PrivateMounts, MountError> {
        validate(paths)?;
        fs::create_dir_all(staging).map_err(|source| MountError::Io {
            op: "creating staging directory",
            path: staging.to_path_buf(),
            source,
        })?;
        let result = std::thread::scope(|s| {
            s.spawn(|| build(paths, staging))
                .join()
                .map_err(|_| MountError::Thread)?
        });
        match result {
            Ok(ns) => Ok(PrivateMounts {
                ns,
                staging: staging.to_path_buf(),
                paths: paths.to_vec(),
            }),
            Err(e) => {
                let _ = fs::remove_dir(staging);
                Err(e)
            }
        }
    }

    /// The namespace, for `SpawnOptions::mntns`.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.ns.as_fd()
    }

    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
}

impl Drop for PrivateMounts {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.staging);
        // The shared parent goes too once the last replica's staging directory is gone.
        if let Some(parent) = self.staging.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
}

fn sys<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(nix::Error) -> MountError + 'a {
    move |source| MountError::Sys {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// Runs on its own thread: the thread ends with the namespace held only by the returned fd.
fn build(paths: &[PathBuf], staging: &Path) -> Result<OwnedFd, MountError> {
    unshare(CloneFlags::CLONE_NEWNS | CloneFlags::CLONE_FS)
        .map_err(sys("unshare(CLONE_NEWNS)", staging))?;
    let root = Path::new("/");
    mount(
        None::<&str>,
        root,
        None::<&str>,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(sys("making / private", root))?;
    mount(
        Some("tmpfs"),
        staging,
        Some("tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some("mode=0755"),
    )
    .map_err(sys("mounting tmpfs", staging))?;
    for (i, p) in paths.iter().enumerate() {
        let upper = staging.join(format!("{i}/upper"));
        let work = staging.join(format!("{i}/work"));
        for d in [&upper, &work] {
            fs::create_dir_all(d).map_err(|source| MountError::Io {
                op: "creating overlay directory",
                path: d.clone(),
                source,
            })?;
        }
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            p.display(),
            upper.display(),
            work.display()
        );
        mount(
            Some("overlay"),
            p.as_path(),
            Some("overlay"),
            MsFlags::empty(),
            Some(opts.as_str()),
        )
        .map_err(sys("mounting overlay", p))?;
    }
    let ns = fs::File::open("/proc/thread-self/ns/mnt").map_err(|source| MountError::Io {
        op: "opening",
        path: PathBuf::from("/proc/thread-self/ns/mnt"),
        source,
    })?;
    Ok(OwnedFd::from(ns))
}
