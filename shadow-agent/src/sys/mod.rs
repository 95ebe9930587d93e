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
