//! Kernel facilities (namespaces, links, cgroups, processes) behind RAII guards.
//!
//! Everything here talks to the kernel directly: netlink through `rtnetlink`, namespaces and
//! mounts through `nix`, cgroupfs through plain file I/O. Nothing shells out to `ip`, `tc` or
//! `ethtool`.
//!
//! - [`netns`]: named, persistent network namespaces laid out exactly like `ip netns add`
//!   (`/run/netns/NAME`), and running code inside one without moving the caller's thread.
//! - [`link`]: veth pairs, link state, addresses, MACs, tx checksum offload.
//! - [`cgroup`]: a named group spanning the host's cgroup layout (pure v2, or hybrid v1+v2).
//! - [`process`]: spawning a command inside a network namespace and/or a cgroup.
//!
//! Each module has its own error enum whose variants name the operation and the object
//! (interface, namespace, path) that failed, with the underlying error as `source`.

pub mod cgroup;
pub mod link;
pub mod netns;
pub mod process;
pub mod sockets;

/// Writes `bytes` to `path` so that a reader (or the next start after a crash) sees the old
/// file or the new one whole: the directory is created, the bytes go to `<path>.tmp`, are
/// fsynced, and the temporary file is renamed over `path`. On error: the step that failed
/// (`create directory`, `create`, `write`, `fsync`, `rename into place`), the path it was
/// done on, and the cause.
pub fn write_atomic(
    path: &std::path::Path,
    bytes: &[u8],
) -> Result<(), (&'static str, std::path::PathBuf, std::io::Error)> {
    use std::io::Write as _;
    let at = |op, p: &std::path::Path| {
        let p = p.to_owned();
        move |e| (op, p, e)
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(at("create directory", dir))?;
    }
    let mut name = path.file_name().unwrap_or_default().to_owned();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut f = std::fs::File::create(&tmp).map_err(at("create", &tmp))?;
    f.write_all(bytes).map_err(at("write", &tmp))?;
    f.sync_all().map_err(at("fsync", &tmp))?;
    std::fs::rename(&tmp, path).map_err(at("rename into place", path))
}
