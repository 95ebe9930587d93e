//! Cgroups in this host's layout, detected at run time.
//!
//! Two layouts are supported:
//! - **Unified** (pure cgroup v2): the root (normally `/sys/fs/cgroup`) is a cgroup2 hierarchy
//!   whose `cgroup.controllers` lists `cpu` and `memory`. A group is one directory.
//! - **Hybrid**: v1 controllers are mounted at `ROOT/<controller>` and a cgroup2 hierarchy at
//!   `ROOT/unified`. A group is a cgroup2 directory under `ROOT/unified` (its identity: the
//!   inode number is the id `bpf_get_current_cgroup_id()` returns; PSI and `cpu.stat` live
//!   there) plus the same relative path under each v1 controller among cpu, cpuacct, cpuset,
//!   memory, blkio and pids (limits live there). Co-mounted controllers (e.g. `cpu,cpuacct`
//!   reached through symlinks) share one directory.
//!
//! Detection only looks at files, so a plain directory that mimics cgroupfs can stand in for
//! the real thing in tests ([`CgroupRoot::detect`], [`Cgroup::create_at`]).

use std::fmt;
use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

/// Where cgroupfs is normally mounted.
pub const DEFAULT_ROOT: &str = "/sys/fs/cgroup";

/// Name of the cgroup2 mount point inside the root in the hybrid layout.
pub const UNIFIED_DIR: &str = "unified";

/// How long Drop waits for SIGKILLed processes to leave a group.
pub const KILL_TIMEOUT: Duration = Duration::from_secs(5);

/// A cgroup controller, or `Unified` for the cgroup2 hierarchy itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Controller {
    /// The cgroup2 hierarchy (identity, PSI, `cpu.stat`; in the unified layout: everything).
    Unified,
    Cpu,
    Cpuacct,
    Cpuset,
    Memory,
    Blkio,
    Pids,
}

impl Controller {
    /// The v1 controllers a hybrid-layout group spans.
    pub const V1: [Controller; 6] = [
        Controller::Cpu,
        Controller::Cpuacct,
        Controller::Cpuset,
        Controller::Memory,
        Controller::Blkio,
        Controller::Pids,
    ];

    /// Kernel name of the controller (`unified` for the cgroup2 hierarchy).
    pub fn as_str(self) -> &'static str {
        match self {
            Controller::Unified => "unified",
            Controller::Cpu => "cpu",
            Controller::Cpuacct => "cpuacct",
            Controller::Cpuset => "cpuset",
            Controller::Memory => "memory",
            Controller::Blkio => "blkio",
            Controller::Pids => "pids",
        }
    }
}

impl fmt::Display for Controller {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Which layout the host uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupLayout {
    /// Pure cgroup v2 at the root.
    Unified,
    /// v1 controllers at `ROOT/<ctrl>` (those listed) plus cgroup2 at `ROOT/unified`.
    Hybrid { v1: Vec<Controller> },
}

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// The group name is not a clean relative path.
    #[error("invalid cgroup name {name:?}: {reason}")]
    InvalidName { name: String, reason: &'static str },

    /// The root is neither layout.
    #[error("unsupported cgroup layout at {}: {detail}", root.display())]
    UnsupportedLayout { root: PathBuf, detail: String },

    /// The group directory exists already (the guard only manages groups it creates).
    #[error("cgroup directory {} already exists", path.display())]
    AlreadyExists { path: PathBuf },

    /// The layout has no hierarchy for this controller.
    #[error("cgroup {name:?} has no {controller} directory in this layout")]
    NoController {
        name: String,
        controller: Controller,
    },

    /// A file-system operation on `path` failed.
    #[error("{op} {} failed", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },

    /// A line of a `cgroup.procs` file is not a pid.
    #[error("{} contains {line:?}, which is not a pid", path.display())]
    BadPid { path: PathBuf, line: String },

    /// Processes were still inside after SIGKILL and the bounded wait.
    #[error("processes {pids:?} are still in {} after SIGKILL", path.display())]
    Busy { path: PathBuf, pids: Vec<u32> },
}

/// Result alias of this module.
pub type Result<T, E = CgroupError> = std::result::Result<T, E>;

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> CgroupError + 'a {
    move |source| CgroupError::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// Checks that `name` is a clean relative path (`a` or `a/b/c`) without `.`/`..`.
pub fn validate_name(name: &str) -> Result<()> {
    let bad = |reason| {
        Err(CgroupError::InvalidName {
            name: name.to_owned(),
            reason,
        })
    };
    if name.is_empty() {
        return bad("it is empty");
    }
    if name.contains('\0') {
        return bad("it contains a NUL byte");
    }
    if name.starts_with('/') {
        return bad("it must be relative to the cgroup root");
    }
    if name.ends_with('/') || name.contains("//") {
        return bad("it has an empty path component");
    }
    for component in Path::new(name).components() {
        match component {
            Component::Normal(c) if c.len() <= 255 => {}
            Component::Normal(_) => return bad("a path component is longer than 255 bytes"),
            _ => return bad("it contains '.' or '..'"),
        }
    }
    Ok(())
}

/// A cgroup file-system root with its detected layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupRoot {
    root: PathBuf,
    layout: CgroupLayout,
}

impl CgroupRoot {
    /// Detects the layout of the host's cgroupfs at [`DEFAULT_ROOT`].
    pub fn host() -> Result<CgroupRoot> {
        Self::detect(DEFAULT_ROOT)
    }

    /// Detects the layout of the cgroup tree at `root` (a real mount or a mimic directory).
    pub fn detect(root: impl AsRef<Path>) -> Result<CgroupRoot> {
        let root = root.as_ref().to_owned();
        let unsupported = |detail: String| CgroupError::UnsupportedLayout {
            root: root.clone(),
            detail,
        };
        let top_controllers = root.join("cgroup.controllers");
        if top_controllers.is_file() {
            let text =
                fs::read_to_string(&top_controllers).map_err(io_err("read", &top_controllers))?;
            let listed: Vec<&str> = text.split_whitespace().collect();
            if listed.contains(&"cpu") && listed.contains(&"memory") {
                return Ok(CgroupRoot {
                    root,
                    layout: CgroupLayout::Unified,
                });
            }
            return Err(unsupported(format!(
                "cgroup2 at the root, but {} lists {listed:?}: both cpu and memory are needed",
                top_controllers.display()
            )));
        }
        let unified = root.join(UNIFIED_DIR).join("cgroup.controllers");
        let v1: Vec<Controller> = Controller::V1
            .into_iter()
            .filter(|c| root.join(c.as_str()).join("cgroup.procs").is_file())
            .collect();
        let has_unified = unified.is_file();
        if has_unified && v1.contains(&Controller::Cpu) && v1.contains(&Controller::Memory) {
            return Ok(CgroupRoot {
                root,
                layout: CgroupLayout::Hybrid { v1 },
            });
        }
        let mut missing = Vec::new();
        if !has_unified {
            missing.push(format!(
                "no cgroup2 hierarchy at {}",
                root.join(UNIFIED_DIR).display()
            ));
        }
        for c in [Controller::Cpu, Controller::Memory] {
            if !v1.contains(&c) {
                missing.push(format!(
                    "no v1 {c} hierarchy at {}",
                    root.join(c.as_str()).display()
                ));
            }
        }
        Err(unsupported(format!(
            "no cgroup.controllers at the root (not pure cgroup v2), and not hybrid: {}",
            missing.join("; ")
        )))
    }

    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.root
    }

    /// The detected layout.
    pub fn layout(&self) -> &CgroupLayout {
        &self.layout
    }

    /// The cgroup2 hierarchy's root directory.
    pub fn unified_path(&self) -> PathBuf {
        match self.layout {
            CgroupLayout::Unified => self.root.clone(),
            CgroupLayout::Hybrid { .. } => self.root.join(UNIFIED_DIR),
        }
    }

    /// Root directory of the hierarchy that holds `controller`'s files, if the layout has it.
    pub fn controller_path(&self, controller: Controller) -> Option<PathBuf> {
        match (&self.layout, controller) {
            (CgroupLayout::Unified, _) | (CgroupLayout::Hybrid { .. }, Controller::Unified) => {
                Some(self.unified_path())
            }
            (CgroupLayout::Hybrid { v1 }, c) => v1.contains(&c).then(|| self.root.join(c.as_str())),
        }
    }

    /// Every hierarchy a group spans, the cgroup2 one first: (controller, hierarchy root).
    pub fn hierarchies(&self) -> Vec<(Controller, PathBuf)> {
        match &self.layout {
            CgroupLayout::Unified => vec![(Controller::Unified, self.root.clone())],
            CgroupLayout::Hybrid { v1 } => {
                std::iter::once((Controller::Unified, self.unified_path()))
                    .chain(v1.iter().map(|c| (*c, self.root.join(c.as_str()))))
                    .collect()
            }
        }
    }
}

/// A named group across the host's hierarchies.
///
/// Drop SIGKILLs every process still inside, waits (bounded, [`KILL_TIMEOUT`]) until the
/// groups are empty, then removes the directories it created, in reverse creation order.
/// Directories that existed before (e.g. parents of a nested name) are never removed.
#[derive(Debug)]
pub struct Cgroup {
    name: String,
    root: CgroupRoot,
    /// (controller, group directory); co-mounted controllers share a directory.
    dirs: Vec<(Controller, PathBuf)>,
    /// The cgroup2 directory (identity).
    unified_dir: PathBuf,
    /// Distinct group directories (one per hierarchy), cgroup2 first.
    unique_dirs: Vec<PathBuf>,
    /// Directories created by this guard, in creation order.
    created: Vec<PathBuf>,
    id: u64,
    remove_on_drop: bool,
}

impl Cgroup {
    /// Creates `name` (relative, e.g. `shadow/web`) in the host's cgroupfs ([`DEFAULT_ROOT`]).
    pub fn create(name: &str) -> Result<Cgroup> {
        Self::create_in(&CgroupRoot::host()?, name)
    }

    /// Creates `name` in the cgroup tree at `root`, detecting its layout first.
    pub fn create_at(root: impl AsRef<Path>, name: &str) -> Result<Cgroup> {
        Self::create_in(&CgroupRoot::detect(root)?, name)
    }

    /// Creates `name` in an already detected root.
    pub fn create_in(root: &CgroupRoot, name: &str) -> Result<Cgroup> {
        validate_name(name)?;
        let mut group = Cgroup {
            name: name.to_owned(),
            root: root.clone(),
            dirs: Vec::new(),
            unified_dir: root.unified_path().join(name),
            unique_dirs: Vec::new(),
            created: Vec::new(),
            id: 0,
            remove_on_drop: true,
        };
        // Distinct hierarchies by canonical path, so co-mounted controllers share one dir.
        let mut seen: Vec<(PathBuf, PathBuf)> = Vec::new(); // (canonical root, group dir)
        for (controller, hierarchy) in root.hierarchies() {
            let canonical = fs::canonicalize(&hierarchy).map_err(io_err("resolve", &hierarchy))?;
            if let Some((_, dir)) = seen.iter().find(|(c, _)| *c == canonical) {
                group.dirs.push((controller, dir.clone()));
                continue;
            }
            let dir = hierarchy.join(name);
            // On error `group` is dropped, which removes what was created so far.
            group.mkdir_group(&hierarchy, name, controller == Controller::Cpuset)?;
            seen.push((canonical, dir.clone()));
            group.dirs.push((controller, dir.clone()));
            group.unique_dirs.push(dir);
        }
        let unified = group.unified_dir.clone();
        group.id = fs::metadata(&unified)
            .map_err(io_err("stat", &unified))?
            .ino();
        Ok(group)
    }

    /// mkdir -p `hierarchy/name`, recording the directories created; the last one must be new.
    fn mkdir_group(&mut self, hierarchy: &Path, name: &str, cpuset: bool) -> Result<()> {
        let mut dir = hierarchy.to_owned();
        let components: Vec<_> = Path::new(name).components().collect();
        for (i, component) in components.iter().enumerate() {
            let parent = dir.clone();
            dir.push(component);
            let last = i + 1 == components.len();
            match fs::create_dir(&dir) {
                Ok(()) => {
                    self.created.push(dir.clone());
                    if cpuset {
                        copy_cpuset_from_parent(&parent, &dir)?;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists && !last => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    return Err(CgroupError::AlreadyExists { path: dir });
                }
                Err(source) => {
                    return Err(CgroupError::Io {
                        op: "mkdir",
                        path: dir,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// The name (relative path) of the group.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root and layout the group lives in.
    pub fn root(&self) -> &CgroupRoot {
        &self.root
    }

    /// The cgroup id: inode number of the cgroup2 directory (what
    /// `bpf_get_current_cgroup_id()` returns for tasks inside).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The cgroup2 directory.
    pub fn unified_path(&self) -> &Path {
        &self.unified_dir
    }

    /// The directory holding `controller`'s files (in the unified layout: the one directory).
    pub fn path(&self, controller: Controller) -> Option<&Path> {
        match self.root.layout {
            CgroupLayout::Unified => Some(self.unified_path()),
            CgroupLayout::Hybrid { .. } => self
                .dirs
                .iter()
                .find(|(c, _)| *c == controller)
                .map(|(_, p)| p.as_path()),
        }
    }

    /// Every (controller, directory) of the group, the cgroup2 one first.
    pub fn paths(&self) -> &[(Controller, PathBuf)] {
        &self.dirs
    }

    /// The distinct directories of the group (one per hierarchy), cgroup2 first.
    pub fn dirs(&self) -> &[PathBuf] {
        &self.unique_dirs
    }

    /// The `cgroup.procs` file of every distinct directory, cgroup2 first.
    pub fn procs_files(&self) -> Vec<PathBuf> {
        self.unique_dirs
            .iter()
            .map(|d| d.join("cgroup.procs"))
            .collect()
    }

    fn dir_for(&self, controller: Controller) -> Result<&Path> {
        self.path(controller)
            .ok_or_else(|| CgroupError::NoController {
                name: self.name.clone(),
                controller,
            })
    }

    /// Path of control file `file` of `controller` (e.g. `(Memory, "memory.limit_in_bytes")`).
    pub fn file_path(&self, controller: Controller, file: &str) -> Result<PathBuf> {
        Ok(self.dir_for(controller)?.join(file))
    }

    /// Reads control file `file` of `controller`.
    pub fn read(&self, controller: Controller, file: &str) -> Result<String> {
        let path = self.file_path(controller, file)?;
        fs::read_to_string(&path).map_err(io_err("read", &path))
    }

    /// Writes `value` to control file `file` of `controller` (one write, no create/truncate).
    pub fn write(&self, controller: Controller, file: &str, value: &str) -> Result<()> {
        let path = self.file_path(controller, file)?;
        write_control(&path, value)
    }

    /// Moves process `pid` into the group, in every hierarchy (cgroup2 first).
    pub fn add_pid(&self, pid: u32) -> Result<()> {
        for file in self.procs_files() {
            write_control(&file, &pid.to_string())?;
        }
        Ok(())
    }

    /// Pids in the group: the union over all its directories, sorted.
    pub fn procs(&self) -> Result<Vec<u32>> {
        let mut all = Vec::new();
        for file in self.procs_files() {
            all.extend(read_pids(&file)?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }

    /// Pids in `controller`'s directory of the group.
    pub fn procs_of(&self, controller: Controller) -> Result<Vec<u32>> {
        read_pids(&self.dir_for(controller)?.join("cgroup.procs"))
    }

    /// SIGKILLs every process in the group until it is empty or `timeout` passes.
    ///
    /// The calling process itself is never signalled.
    pub fn kill_all(&self, timeout: Duration) -> Result<()> {
        kill_procs_in(&self.unique_dirs, timeout)
    }

    /// Keeps the directories after the guard is dropped.
    pub fn into_persistent(mut self) -> Cgroup {
        self.remove_on_drop = false;
        self
    }

    /// Kills the processes inside and removes the created directories now, reporting errors.
    pub fn remove(mut self) -> Result<()> {
        self.remove_on_drop = false;
        self.teardown()
    }

    fn teardown(&mut self) -> Result<()> {
        let killed = kill_procs_in(&self.unique_dirs, KILL_TIMEOUT);
        let mut first_err = killed.err();
        while let Some(dir) = self.created.pop() {
            if let Err(e) = rmdir_retry(&dir) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if self.remove_on_drop {
            let _ = self.teardown();
        }
    }
}

/// Writes `value` to an existing control file with a single write(2).
pub fn write_control(path: &Path, value: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(io_err("open for writing", path))?;
    file.write_all(value.as_bytes())
        .map_err(io_err("write", path))
}

/// Parses a `cgroup.procs`/`tasks` file.
pub fn read_pids(path: &Path) -> Result<Vec<u32>> {
    let text = fs::read_to_string(path).map_err(io_err("read", path))?;
    parse_pids(path, &text)
}

fn parse_pids(path: &Path, text: &str) -> Result<Vec<u32>> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.parse::<u32>().map_err(|_| CgroupError::BadPid {
                path: path.to_owned(),
                line: l.to_owned(),
            })
        })
        .collect()
}

fn copy_cpuset_from_parent(parent: &Path, dir: &Path) -> Result<()> {
    for file in ["cpuset.cpus", "cpuset.mems"] {
        let src = parent.join(file);
        let value = fs::read_to_string(&src).map_err(io_err("read", &src))?;
        let value = value.trim();
        if !value.is_empty() {
            write_control(&dir.join(file), value)?;
        }
    }
    Ok(())
}

fn kill_procs_in(dirs: &[PathBuf], timeout: Duration) -> Result<()> {
    let me = std::process::id();
    let deadline = Instant::now() + timeout;
    loop {
        let mut remaining = Vec::new();
        for dir in dirs {
            let file = dir.join("cgroup.procs");
            match read_pids(&file) {
                Ok(pids) => remaining.extend(pids.into_iter().filter(|p| *p != me && *p > 1)),
                // Gone already (or a mimic directory without the file): nothing to kill.
                Err(CgroupError::Io { source, .. }) if source.kind() == io::ErrorKind::NotFound => {
                }
                Err(e) => return Err(e),
            }
        }
        remaining.sort_unstable();
        remaining.dedup();
        if remaining.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(CgroupError::Busy {
                path: dirs.first().cloned().unwrap_or_default(),
                pids: remaining,
            });
        }
        for pid in &remaining {
            if let Ok(raw) = i32::try_from(*pid) {
                let _ = kill(Pid::from_raw(raw), Signal::SIGKILL);
            }
        }
        thread::sleep(Duration::from_millis(10));
    }
}

fn rmdir_retry(dir: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                thread::sleep(Duration::from_millis(20));
            }
            Err(source) => {
                return Err(CgroupError::Io {
                    op: "rmdir",
                    path: dir.to_owned(),
                    source,
                })
            }
        }
    }
}

/// Removes a cgroup directory tree that no guard owns (leftovers of killed runs): SIGKILLs the
/// processes in each directory and removes the directories bottom-up.
///
/// Only for trees this program created; it removes whatever groups are below `dir`.
pub fn remove_tree(dir: &Path, timeout: Duration) -> Result<()> {
    let entries = fs::read_dir(dir).map_err(io_err("read directory", dir))?;
    for entry in entries {
        let entry = entry.map_err(io_err("read directory", dir))?;
        let file_type = entry.file_type().map_err(io_err("stat", &entry.path()))?;
        if file_type.is_dir() {
            remove_tree(&entry.path(), timeout)?;
        }
    }
    kill_procs_in(&[dir.to_owned()], timeout)?;
    rmdir_retry(dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A scratch directory removed on drop.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(tag: &str) -> Scratch {
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "shadow-cgroup-test-{}-{}-{tag}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            fs::create_dir_all(&dir).unwrap();
            Scratch(dir)
        }

        fn file(&self, rel: &str, text: &str) {
            let p = self.0.join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, text).unwrap();
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn hybrid_tree(controllers: &[&str]) -> Scratch {
        let s = Scratch::new("hybrid");
        s.file("unified/cgroup.controllers", "hugetlb\n");
        s.file("unified/cgroup.procs", "");
        for c in controllers {
            s.file(&format!("{c}/cgroup.procs"), "");
        }
        s
    }

    #[test]
    fn detects_pure_v2() {
        let s = Scratch::new("v2");
        s.file(
            "cgroup.controllers",
            "cpuset cpu io memory hugetlb pids rdma misc\n",
        );
        let root = CgroupRoot::detect(&s.0).unwrap();
        assert_eq!(root.layout(), &CgroupLayout::Unified);
        assert_eq!(root.unified_path(), s.0);
        assert_eq!(root.controller_path(Controller::Memory), Some(s.0.clone()));
        assert_eq!(root.hierarchies(), vec![(Controller::Unified, s.0.clone())]);
    }

    #[test]
    fn v2_without_cpu_and_memory_is_rejected() {
        let s = Scratch::new("v2-bare");
        s.file("cgroup.controllers", "hugetlb pids\n");
        let err = CgroupRoot::detect(&s.0).unwrap_err();
        match &err {
            CgroupError::UnsupportedLayout { root, detail } => {
                assert_eq!(root, &s.0);
                assert!(detail.contains("cpu and memory"), "{detail}");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn detects_hybrid() {
        let s = hybrid_tree(&[
            "cpu", "cpuacct", "cpuset", "memory", "blkio", "pids", "devices",
        ]);
        let root = CgroupRoot::detect(&s.0).unwrap();
        assert_eq!(
            root.layout(),
            &CgroupLayout::Hybrid {
                v1: Controller::V1.to_vec()
            }
        );
        assert_eq!(root.unified_path(), s.0.join("unified"));
        assert_eq!(
            root.controller_path(Controller::Pids),
            Some(s.0.join("pids"))
        );
        let h = root.hierarchies();
        assert_eq!(h.len(), 7);
        assert_eq!(h[0], (Controller::Unified, s.0.join("unified")));
    }

    #[test]
    fn hybrid_with_some_v1_controllers() {
        let s = hybrid_tree(&["cpu", "memory"]);
        let root = CgroupRoot::detect(&s.0).unwrap();
        assert_eq!(
            root.layout(),
            &CgroupLayout::Hybrid {
                v1: vec![Controller::Cpu, Controller::Memory]
            }
        );
        assert_eq!(root.controller_path(Controller::Blkio), None);
    }

    #[test]
    fn unknown_layouts_are_explained() {
        let s = Scratch::new("empty");
        let err = CgroupRoot::detect(&s.0).unwrap_err().to_string();
        assert!(err.contains("unified"), "{err}");
        let s = Scratch::new("v1-only");
        s.file("cpu/cgroup.procs", "");
        s.file("memory/cgroup.procs", "");
        let err = CgroupRoot::detect(&s.0).unwrap_err().to_string();
        assert!(err.contains("no cgroup2 hierarchy"), "{err}");
    }

    #[test]
    fn name_validation() {
        for good in ["a", "shdt1234", "shadow/web", "a/b/c"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "/abs", "a/", "a//b", "..", "a/../b", "./a", "a\0"] {
            assert!(
                matches!(validate_name(bad), Err(CgroupError::InvalidName { .. })),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn v2_group_in_mimic_dir() {
        let s = Scratch::new("v2-group");
        s.file("cgroup.controllers", "cpu memory\n");
        let group = Cgroup::create_at(&s.0, "shdttest").unwrap();
        let dir = s.0.join("shdttest");
        assert!(dir.is_dir());
        assert_eq!(group.unified_path(), dir);
        assert_eq!(group.dirs(), std::slice::from_ref(&dir));
        assert_eq!(group.path(Controller::Memory), Some(dir.as_path()));
        assert_eq!(group.id(), fs::metadata(&dir).unwrap().ino());
        assert_eq!(group.procs_files(), vec![dir.join("cgroup.procs")]);

        // Errors name the full path of the file.
        let err = group
            .write(Controller::Memory, "memory.max", "1G")
            .unwrap_err();
        let shown = err.to_string();
        assert!(
            shown.contains(&*dir.join("memory.max").to_string_lossy()),
            "{shown}"
        );
        assert!(matches!(&err, CgroupError::Io { path, .. } if *path == dir.join("memory.max")));
        let err = group
            .read(Controller::Cpu, "cpu.stat")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(&*dir.join("cpu.stat").to_string_lossy()),
            "{err}"
        );
        let err = group.add_pid(1).unwrap_err().to_string();
        assert!(err.contains("cgroup.procs"), "{err}");

        // Existing directories are refused, never adopted.
        let err = Cgroup::create_at(&s.0, "shdttest").unwrap_err();
        assert!(matches!(err, CgroupError::AlreadyExists { path } if path == dir));
        assert!(
            dir.is_dir(),
            "a failed create must not remove the existing group"
        );

        drop(group);
        assert!(!dir.exists());
        assert!(s.0.join("cgroup.controllers").is_file());
    }

    #[test]
    fn nested_group_removes_only_what_it_created() {
        let s = Scratch::new("v2-nested");
        s.file("cgroup.controllers", "cpu memory\n");
        fs::create_dir(s.0.join("existing")).unwrap();
        let group = Cgroup::create_at(&s.0, "existing/new/leaf").unwrap();
        assert!(s.0.join("existing/new/leaf").is_dir());
        drop(group);
        assert!(!s.0.join("existing/new").exists());
        assert!(s.0.join("existing").is_dir());
    }

    #[test]
    fn hybrid_group_in_mimic_dir() {
        let s = hybrid_tree(&["cpu", "cpuacct", "memory", "blkio", "pids"]);
        let group = Cgroup::create_at(&s.0, "g1").unwrap();
        assert_eq!(group.dirs().len(), 6);
        assert_eq!(group.dirs()[0], s.0.join("unified/g1"));
        assert_eq!(
            group.path(Controller::Memory),
            Some(s.0.join("memory/g1").as_path())
        );
        assert_eq!(group.path(Controller::Cpuset), None);
        assert!(matches!(
            group.write(Controller::Cpuset, "cpuset.cpus", "0"),
            Err(CgroupError::NoController {
                controller: Controller::Cpuset,
                ..
            })
        ));
        assert_eq!(
            group.id(),
            fs::metadata(s.0.join("unified/g1")).unwrap().ino()
        );
        drop(group);
        for c in ["unified", "cpu", "cpuacct", "memory", "blkio", "pids"] {
            assert!(!s.0.join(c).join("g1").exists(), "{c}");
            assert!(s.0.join(c).is_dir(), "{c}");
        }
    }

    #[test]
    fn comounted_controllers_share_a_directory() {
        let s = hybrid_tree(&["cpu,cpuacct", "memory"]);
        std::os::unix::fs::symlink("cpu,cpuacct", s.0.join("cpu")).unwrap();
        std::os::unix::fs::symlink("cpu,cpuacct", s.0.join("cpuacct")).unwrap();
        let group = Cgroup::create_at(&s.0, "g2").unwrap();
        assert_eq!(group.dirs().len(), 3); // unified, cpu(,cpuacct), memory
        assert_eq!(group.path(Controller::Cpu), group.path(Controller::Cpuacct));
        assert!(s.0.join("cpu,cpuacct/g2").is_dir());
        drop(group);
        assert!(!s.0.join("cpu,cpuacct/g2").exists());
    }

    #[test]
    fn cpuset_values_are_copied_from_the_parent() {
        let s = hybrid_tree(&["cpu", "memory", "cpuset"]);
        s.file("cpuset/cpuset.cpus", "0-1\n");
        s.file("cpuset/cpuset.mems", "0\n");
        // A plain directory has no control files: creation fails naming the file, and rolls
        // back everything it made.
        let err = Cgroup::create_at(&s.0, "g3").unwrap_err();
        match &err {
            CgroupError::Io { op, path, .. } => {
                assert_eq!(*op, "open for writing");
                assert_eq!(path, &s.0.join("cpuset/g3/cpuset.cpus"));
            }
            other => panic!("unexpected {other:?}"),
        }
        for c in ["unified", "cpu", "memory", "cpuset"] {
            assert!(!s.0.join(c).join("g3").exists(), "{c}");
        }
    }

    #[test]
    fn pid_parsing() {
        let p = Path::new("/x/cgroup.procs");
        assert_eq!(parse_pids(p, "1\n22\n\n333\n").unwrap(), vec![1, 22, 333]);
        assert!(matches!(
            parse_pids(p, "1\nabc\n"),
            Err(CgroupError::BadPid { line, .. }) if line == "abc"
        ));
    }
}
