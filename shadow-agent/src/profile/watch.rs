//! The cgroups of `[profile] cgroups`, followed by their directories.
//!
//! The profiler accounts by cgroup id, and a service manager gives a service a new cgroup
//! when it restarts it: `systemctl restart web` removes `web.service` and makes it again,
//! with a new id. Tracking the id found at start would leave the agent counting a dead
//! cgroup, its CPU series (and every forecast made from it) flat at zero from then on. So
//! every interval each directory is looked at again ([`Watch::refresh`]):
//!
//! - a new id is tracked in place of the old one, and the cgroup's CPU time and switches
//!   carry on from the old one's totals (one series per path, never going back);
//! - a directory that is gone is reported missing, and its series get no samples until it
//!   comes back (then it is tracked again under its new id);
//! - `[profile] cgroups` itself changes with a reload ([`Watch::add`], [`Watch::remove`]).
//!
//! A profiled cgroup includes its descendants, as cgroup2's own counters do: a Kubernetes
//! pod's processes live in its containers' cgroups below the pod's, a service's may live in
//! sub-cgroups it made. The kernel side charges by the exact cgroup, so each interval the
//! directory's subtree is walked and every cgroup in it is charged to the profiled one's slot
//! ([`Profiler::set_descendants`]), up to [`MAX_DESCENDANTS`]; a cgroup made since is counted
//! from the next interval. A descendant that is profiled itself keeps its own series (the
//! walk does not enter it), and is not counted in its ancestor's.
//!
//! A path given at start must be a cgroup then (a typo exits 2, as before); later absences
//! are what restarts look like and are not errors.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
};

use super::{cgroupfs::MemorySource, ProfileError, Profiler};

/// Descendants charged to one profiled cgroup at most (the rest are left out, with a
/// warning).
pub const MAX_DESCENDANTS: usize = 1024;

/// The cgroup ids below `dir` (its subdirectories, at any depth), not entering `skip`, at
/// most `max`. The second value says whether some were left out.
pub fn descendants(dir: &Path, skip: &[&Path], max: usize) -> (Vec<u64>, bool) {
    use std::os::unix::fs::DirEntryExt as _;
    let mut ids = Vec::new();
    let mut todo = vec![dir.to_owned()];
    while let Some(d) = todo.pop() {
        // A directory removed meanwhile is simply not there any more.
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            if !e.file_type().is_ok_and(|t| t.is_dir()) {
                continue;
            }
            let p = e.path();
            if skip.iter().any(|s| *s == p) {
                continue;
            }
            if ids.len() == max {
                return (ids, true);
            }
            // kernfs reports the cgroup id as the entry's inode number.
            ids.push(e.ino());
            todo.push(p);
        }
    }
    (ids, false)
}

/// Charge each of `cgroups` (directory, tracked id) its current descendants, not entering
/// the others' subtrees. Returns the ids of those with more than [`MAX_DESCENDANTS`]
/// (the rest left out). A failure is logged: the cgroup itself is still counted.
pub fn charge_descendants(profiler: &mut Profiler, cgroups: &[(&Path, u64)]) -> Vec<u64> {
    let mut cut = Vec::new();
    for (dir, id) in cgroups {
        let skip: Vec<&Path> = cgroups
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| p != dir)
            .collect();
        let (ids, truncated) = descendants(dir, &skip, MAX_DESCENDANTS);
        if truncated {
            cut.push(*id);
        }
        if let Err(e) = profiler.set_descendants(*id, &ids) {
            tracing::warn!(cgroup = %dir.display(), error = %crate::error::chain(&e), "descendant cgroups not all charged");
        }
    }
    cut
}

/// The cgroup2 id of directory `path` (its inode number), after checking it is a cgroup.
pub fn cgroup_id(path: &Path) -> std::io::Result<u64> {
    std::fs::metadata(path.join("cgroup.procs"))?;
    Ok(std::fs::metadata(path)?.ino())
}

/// One profiled cgroup.
#[derive(Debug)]
pub struct Watched {
    path: PathBuf,
    key: String,
    /// The id tracked now; `None` while the directory is missing.
    id: Option<u64>,
    memory: Option<MemorySource>,
    /// CPU nanoseconds and switches of the earlier incarnations.
    base: (u64, u64),
    /// The latest totals read of the current incarnation.
    seen: (u64, u64),
    /// Descendants were left out (warned once).
    truncated: bool,
}

/// What [`Watch::refresh`] found changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The directory holds a new cgroup (it was removed and made again).
    Recreated { key: String, old: u64, new: u64 },
    /// The directory is gone.
    Gone { key: String, old: u64 },
    /// The directory is back (a new cgroup).
    Back { key: String, new: u64 },
}

impl Change {
    /// The change as a JSON event line of `run --json` (`"event": "cgroup"`).
    pub fn event(&self, t_s: f64) -> serde_json::Value {
        let (key, change, old, new) = match self {
            Change::Recreated { key, old, new } => (key, "recreated", Some(*old), Some(*new)),
            Change::Gone { key, old } => (key, "gone", Some(*old), None),
            Change::Back { key, new } => (key, "back", None, Some(*new)),
        };
        serde_json::json!({
            "event": "cgroup",
            "t_s": t_s,
            "cgroup": key,
            "change": change,
            "old_id": old,
            "new_id": new,
        })
    }

    /// The cgroup's key (its path as text).
    pub fn key(&self) -> &str {
        match self {
            Change::Recreated { key, .. } | Change::Gone { key, .. } | Change::Back { key, .. } => {
                key
            }
        }
    }
}

/// Accounting of one profiled cgroup over all its incarnations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Totals {
    pub cpu_ns: u64,
    pub switches: u64,
}

impl Watched {
    /// The path as given, as text: the key of its series, status entry and metrics.
    pub fn key(&self) -> &str {
        &self.key
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The cgroup id tracked now (`None` while the directory is missing).
    pub fn id(&self) -> Option<u64> {
        self.id
    }

    /// Where its memory is read (cgroup v2 `memory.current`, or the v1 memory group of the
    /// same name), found again at each new incarnation.
    pub fn memory(&self) -> Option<&MemorySource> {
        self.memory.as_ref()
    }

    /// CPU time and switches since the agent began tracking the path, earlier incarnations
    /// included. `None` while the directory is missing.
    pub fn totals(&mut self, profiler: &Profiler) -> Result<Option<Totals>, ProfileError> {
        let Some(id) = self.id else {
            return Ok(None);
        };
        let Some(a) = profiler.cgroup(id)? else {
            return Ok(None);
        };
        self.seen = (a.cpu_ns, a.switches);
        Ok(Some(Totals {
            cpu_ns: self.base.0 + a.cpu_ns,
            switches: self.base.1 + a.switches,
        }))
    }

    /// Stop tracking the current incarnation, keeping its totals in the base.
    fn retire(&mut self, profiler: &mut Profiler) {
        let Some(id) = self.id.take() else {
            return;
        };
        if let Ok(Some(a)) = profiler.cgroup(id) {
            self.seen = (a.cpu_ns, a.switches);
        }
        self.base.0 += self.seen.0;
        self.base.1 += self.seen.1;
        self.seen = (0, 0);
        if let Err(e) = profiler.untrack(id) {
            tracing::warn!(cgroup = %self.key, error = %e, "could not untrack a cgroup");
        }
    }

    /// Track `id` as the current incarnation.
    fn adopt(&mut self, id: u64, profiler: &mut Profiler, root: &Path) -> Result<(), ProfileError> {
        profiler.track(id)?;
        self.id = Some(id);
        self.memory = super::cgroupfs::memory_source(root, &self.path);
        Ok(())
    }
}

/// The profiled cgroups, in the order configured.
#[derive(Debug)]
pub struct Watch {
    list: Vec<Watched>,
    /// Where the cgroup file systems are mounted (the v1 memory groups are found from it).
    root: PathBuf,
}

impl Watch {
    /// Track `cgroups` (paths with the ids they had when checked) in `profiler`.
    pub fn start(
        cgroups: &[(PathBuf, u64)],
        profiler: &mut Profiler,
        root: &Path,
    ) -> Result<Watch, ProfileError> {
        let mut w = Watch {
            list: Vec::new(),
            root: root.to_owned(),
        };
        for (path, id) in cgroups {
            w.push(path, *id, profiler)?;
        }
        Ok(w)
    }

    fn push(&mut self, path: &Path, id: u64, profiler: &mut Profiler) -> Result<(), ProfileError> {
        let mut c = Watched {
            path: path.to_owned(),
            key: path.display().to_string(),
            id: None,
            memory: None,
            base: (0, 0),
            seen: (0, 0),
            truncated: false,
        };
        c.adopt(id, profiler, &self.root)?;
        self.list.push(c);
        Ok(())
    }

    pub fn iter(&self) -> impl Iterator<Item = &Watched> {
        self.list.iter()
    }

    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Watched> {
        self.list.iter_mut()
    }

    /// The configured paths, in order.
    pub fn paths(&self) -> Vec<PathBuf> {
        self.list.iter().map(|c| c.path.clone()).collect()
    }

    /// Look at every directory again and follow what changed, then charge each present
    /// cgroup's current descendants to it. A cgroup that cannot be tracked (the profiler is
    /// full) is reported missing until it can.
    pub fn refresh(&mut self, profiler: &mut Profiler) -> Vec<Change> {
        let changes = self.follow(profiler);
        let present: Vec<(&Path, u64)> = self
            .list
            .iter()
            .filter_map(|c| Some((c.path.as_path(), c.id?)))
            .collect();
        let cut = charge_descendants(profiler, &present);
        for c in self.list.iter_mut().filter(|c| c.id.is_some()) {
            let truncated = cut.contains(&c.id.unwrap_or(0));
            if truncated && !c.truncated {
                tracing::warn!(cgroup = %c.key, max = MAX_DESCENDANTS, "more descendant cgroups than the profiler charges to one; the rest count as other");
            }
            c.truncated = truncated;
        }
        changes
    }

    fn follow(&mut self, profiler: &mut Profiler) -> Vec<Change> {
        let mut changes = Vec::new();
        for c in &mut self.list {
            let now = cgroup_id(&c.path).ok();
            if now == c.id {
                continue;
            }
            let old = c.id;
            c.retire(profiler);
            let Some(new) = now else {
                if let Some(old) = old {
                    changes.push(Change::Gone {
                        key: c.key.clone(),
                        old,
                    });
                }
                continue;
            };
            if let Err(e) = c.adopt(new, profiler, &self.root) {
                tracing::warn!(cgroup = %c.key, error = %e, "could not track a cgroup");
                continue;
            }
            let key = c.key.clone();
            changes.push(match old {
                Some(old) => Change::Recreated { key, old, new },
                None => Change::Back { key, new },
            });
        }
        changes
    }

    /// Add `path` (reload). It must be a cgroup now; the error names it.
    pub fn add(&mut self, path: &Path, profiler: &mut Profiler) -> Result<(), String> {
        if self.list.iter().any(|c| c.path == path) {
            return Ok(());
        }
        let id = cgroup_id(path).map_err(|e| {
            format!(
                "profile.cgroups: {} is not a cgroup2 directory: {e}",
                path.display()
            )
        })?;
        self.push(path, id, profiler).map_err(|e| {
            format!(
                "profile.cgroups: {}: {}",
                path.display(),
                crate::error::chain(&e)
            )
        })
    }

    /// Stop profiling `path` (reload). Returns whether it was profiled.
    pub fn remove(&mut self, path: &Path, profiler: &mut Profiler) -> bool {
        let Some(i) = self.list.iter().position(|c| c.path == path) else {
            return false;
        };
        let mut c = self.list.remove(i);
        c.retire(profiler);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_directory_that_is_no_cgroup_has_no_id() {
        let dir = std::env::temp_dir().join(format!("shdw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        assert!(cgroup_id(&dir).is_err(), "a plain directory is no cgroup");
        std::fs::write(dir.join("cgroup.procs"), "").expect("file");
        let id = cgroup_id(&dir).expect("looks like one");
        assert_eq!(id, std::fs::metadata(&dir).expect("meta").ino());
        std::fs::remove_dir_all(&dir).expect("cleanup");
        assert!(cgroup_id(&dir).is_err(), "gone");
    }

    #[test]
    fn descendants_are_found_at_any_depth_skipping_and_bounded() {
        let dir = std::env::temp_dir().join(format!("shdw-d-{}", std::process::id()));
        for sub in ["a/x/deep", "b", "c/y"] {
            std::fs::create_dir_all(dir.join(sub)).expect("dirs");
        }
        std::fs::write(dir.join("a/file"), "").expect("file");
        let ino = |p: &str| std::fs::metadata(dir.join(p)).expect("meta").ino();
        let (mut ids, cut) = descendants(&dir, &[], 100);
        ids.sort_unstable();
        let mut want: Vec<u64> = ["a", "a/x", "a/x/deep", "b", "c", "c/y"]
            .iter()
            .map(|p| ino(p))
            .collect();
        want.sort_unstable();
        assert_eq!((ids, cut), (want, false));
        // A skipped directory is not entered.
        let c = dir.join("c");
        let (ids, _) = descendants(&dir, &[c.as_path()], 100);
        assert_eq!(ids.len(), 4);
        assert!(!ids.contains(&ino("c/y")) && !ids.contains(&ino("c")));
        let (ids, cut) = descendants(&dir, &[], 3);
        assert_eq!((ids.len(), cut), (3, true));
        assert_eq!(descendants(&dir.join("nope"), &[], 10), (vec![], false));
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn change_events_name_the_cgroup_and_both_ids() {
        let e = Change::Recreated {
            key: "/sys/fs/cgroup/unified/web".into(),
            old: 7,
            new: 9,
        }
        .event(1.5);
        assert_eq!(e["event"], "cgroup");
        assert_eq!(e["change"], "recreated");
        assert_eq!(e["cgroup"], "/sys/fs/cgroup/unified/web");
        assert_eq!(
            (e["old_id"].as_u64(), e["new_id"].as_u64()),
            (Some(7), Some(9))
        );
        let g = Change::Gone {
            key: "a".into(),
            old: 3,
        };
        assert_eq!(g.key(), "a");
        assert_eq!(g.event(0.0)["new_id"], serde_json::Value::Null);
        assert_eq!(
            Change::Back {
                key: "a".into(),
                new: 4
            }
            .event(0.0)["change"],
            "back"
        );
    }
}
