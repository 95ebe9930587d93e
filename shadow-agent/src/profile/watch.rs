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
//!
//! An entry may also be a pattern (`*`, `?`, `[...]`, `**`; the `glob` crate's syntax), for
//! what has no fixed path: a node's pods under a DaemonSet's one config
//! (`/sys/fs/cgroup/kubepods.slice/*/*-pod*.slice`), the instances of a templated service
//! (`/sys/fs/cgroup/unified/system.slice/web@*.service`). It is expanded each interval:
//! every cgroup directory it matches is profiled as an entry of its own, a new match from
//! then on, and a match that is gone is dropped with its series (a pod that ended does not
//! come back; its successor has a new path). A pattern may match nothing, at start too.

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
/// the others' subtrees. Returns, in the same order, whether each had more than
/// [`MAX_DESCENDANTS`] (the rest left out). A failure is logged: the cgroup itself is still
/// counted.
pub fn charge_descendants(profiler: &mut Profiler, cgroups: &[(&Path, u64)]) -> Vec<bool> {
    let mut cut = Vec::with_capacity(cgroups.len());
    for (dir, id) in cgroups {
        let skip: Vec<&Path> = cgroups
            .iter()
            .map(|(p, _)| *p)
            .filter(|p| p != dir)
            .collect();
        let (ids, truncated) = descendants(dir, &skip, MAX_DESCENDANTS);
        cut.push(truncated);
        if let Err(e) = profiler.set_descendants(*id, &ids) {
            tracing::warn!(cgroup = %dir.display(), error = %crate::error::chain(&e), "descendant cgroups not all charged");
        }
    }
    cut
}

/// Warns, once per cgroup (`warned`), about each one `charge_descendants` had to cut.
pub fn warn_cut(cgroup: &Path, cut: bool, warned: &mut bool) {
    if cut && !*warned {
        tracing::warn!(cgroup = %cgroup.display(), max = MAX_DESCENDANTS, "more descendant cgroups than the profiler charges to one; the rest count as other");
    }
    *warned = cut;
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
    /// The pattern it matched; `None` for a path given as such.
    pattern: Option<PathBuf>,
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
    /// A pattern matches a new cgroup: profiled from now on.
    Matched { key: String, new: u64 },
    /// A pattern's match is gone: dropped, with its series.
    Unmatched { key: String, old: u64 },
}

impl Change {
    /// The change as a JSON event line of `run --json` (`"event": "cgroup"`).
    pub fn event(&self, t_s: f64) -> serde_json::Value {
        let (key, change, old, new) = match self {
            Change::Recreated { key, old, new } => (key, "recreated", Some(*old), Some(*new)),
            Change::Gone { key, old } => (key, "gone", Some(*old), None),
            Change::Back { key, new } => (key, "back", None, Some(*new)),
            Change::Matched { key, new } => (key, "matched", None, Some(*new)),
            Change::Unmatched { key, old } => (key, "unmatched", Some(*old), None),
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
            Change::Recreated { key, .. }
            | Change::Gone { key, .. }
            | Change::Back { key, .. }
            | Change::Matched { key, .. }
            | Change::Unmatched { key, .. } => key,
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

/// Whether `entry` of `profile.cgroups` is a pattern rather than a path.
pub fn is_pattern(entry: &Path) -> bool {
    entry
        .as_os_str()
        .to_string_lossy()
        .contains(['*', '?', '['])
}

/// Checks one entry of `profile.cgroups`: an absolute path, or a pattern that parses. The
/// message says what is wrong (the caller names the key).
pub fn validate_entry(entry: &Path) -> Result<(), String> {
    if !entry.is_absolute() {
        return Err(format!(
            "{} is not an absolute path (e.g. /sys/fs/cgroup/unified/web)",
            entry.display()
        ));
    }
    if is_pattern(entry) {
        let text = entry
            .to_str()
            .ok_or_else(|| format!("{} is a pattern that is not UTF-8", entry.display()))?;
        glob::Pattern::new(text)
            .map_err(|e| format!("{}: not a valid pattern: {e}", entry.display()))?;
    }
    Ok(())
}

/// The cgroup directories `pattern` matches now, sorted.
pub fn expand(pattern: &Path) -> Vec<PathBuf> {
    let Some(text) = pattern.to_str() else {
        return Vec::new();
    };
    let Ok(paths) = glob::glob(text) else {
        return Vec::new();
    };
    let mut out: Vec<PathBuf> = paths
        .flatten()
        .filter(|p| p.join("cgroup.procs").is_file())
        .collect();
    out.sort();
    out
}

/// The profiled cgroups: the configured entries (paths and patterns) and what they stand for.
#[derive(Debug)]
pub struct Watch {
    /// `profile.cgroups` as configured (running), in order.
    entries: Vec<PathBuf>,
    /// The cgroups profiled: the paths, then each pattern's matches.
    list: Vec<Watched>,
    /// Where the cgroup file systems are mounted (the v1 memory groups are found from it).
    root: PathBuf,
    /// Matches that could not be profiled at the last refresh (warned when it changes).
    unprofiled: usize,
}

impl Watch {
    /// Profile `entries` (paths, checked to be cgroups by the caller, and patterns) in
    /// `profiler`; the patterns' first matches are reported by the first [`Watch::refresh`].
    pub fn start(
        entries: &[PathBuf],
        profiler: &mut Profiler,
        root: &Path,
    ) -> Result<Watch, ProfileError> {
        let mut w = Watch {
            entries: Vec::new(),
            list: Vec::new(),
            root: root.to_owned(),
            unprofiled: 0,
        };
        for e in entries {
            w.entries.push(e.clone());
            if is_pattern(e) {
                continue;
            }
            let id = cgroup_id(e).map_err(|source| ProfileError::NotACgroup {
                path: e.clone(),
                source,
            })?;
            w.push(e, None, id, profiler)?;
        }
        Ok(w)
    }

    fn push(
        &mut self,
        path: &Path,
        pattern: Option<&Path>,
        id: u64,
        profiler: &mut Profiler,
    ) -> Result<(), ProfileError> {
        let mut c = Watched {
            path: path.to_owned(),
            pattern: pattern.map(Path::to_owned),
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

    /// The configured entries (paths and patterns), in order.
    pub fn entries(&self) -> Vec<PathBuf> {
        self.entries.clone()
    }

    /// Look at every directory again and follow what changed, expand the patterns, then
    /// charge each present cgroup's current descendants to it. A cgroup that cannot be
    /// tracked (the profiler is full) is reported missing (a path) or left unmatched (a
    /// pattern's) until it can.
    pub fn refresh(&mut self, profiler: &mut Profiler) -> Vec<Change> {
        let mut changes = self.follow(profiler);
        let mut unprofiled = Vec::new();
        for e in self.entries.clone() {
            if is_pattern(&e) {
                changes.extend(self.match_new(&e, profiler, &mut unprofiled));
            }
        }
        if unprofiled.len() != self.unprofiled {
            self.note_unprofiled(&unprofiled);
        }
        let present: Vec<(&Path, u64)> = self
            .list
            .iter()
            .filter_map(|c| Some((c.path.as_path(), c.id?)))
            .collect();
        let cut = charge_descendants(profiler, &present);
        for (c, cut) in self.list.iter_mut().filter(|c| c.id.is_some()).zip(cut) {
            warn_cut(&c.path, cut, &mut c.truncated);
        }
        changes
    }

    /// Warns about the matches that could not be profiled (the first one and why), and
    /// remembers how many there were.
    fn note_unprofiled(&mut self, unprofiled: &[(PathBuf, String)]) {
        if let Some((path, e)) = unprofiled.first() {
            tracing::warn!(count = unprofiled.len(), first = %path.display(), error = %e, "cgroups matching a profiled pattern are not profiled");
        }
        self.unprofiled = unprofiled.len();
    }

    /// Profile the cgroups `pattern` matches that are not profiled yet; those that cannot be
    /// (the profiler is full) go to `unprofiled` with the reason.
    fn match_new(
        &mut self,
        pattern: &Path,
        profiler: &mut Profiler,
        unprofiled: &mut Vec<(PathBuf, String)>,
    ) -> Vec<Change> {
        let mut changes = Vec::new();
        for path in expand(pattern) {
            if self.list.iter().any(|c| c.path == path) {
                continue;
            }
            let Ok(id) = cgroup_id(&path) else {
                continue;
            };
            match self.push(&path, Some(pattern), id, profiler) {
                Ok(()) => changes.push(Change::Matched {
                    key: path.display().to_string(),
                    new: id,
                }),
                Err(e) => unprofiled.push((path, crate::error::chain(&e))),
            }
        }
        changes
    }

    fn follow(&mut self, profiler: &mut Profiler) -> Vec<Change> {
        let mut changes = Vec::new();
        let mut dropped = Vec::new();
        for (i, c) in self.list.iter_mut().enumerate() {
            let now = cgroup_id(&c.path).ok();
            if now == c.id {
                continue;
            }
            let old = c.id;
            c.retire(profiler);
            let Some(new) = now else {
                match (old, &c.pattern) {
                    // A pattern's match that is gone is dropped (its next match, if any, is
                    // a new entry).
                    (Some(old), Some(_)) => {
                        dropped.push(i);
                        changes.push(Change::Unmatched {
                            key: c.key.clone(),
                            old,
                        });
                    }
                    (Some(old), None) => changes.push(Change::Gone {
                        key: c.key.clone(),
                        old,
                    }),
                    (None, _) => {}
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
        for i in dropped.into_iter().rev() {
            self.list.remove(i);
        }
        changes
    }

    /// Add entry `entry` (reload): a path, which must be a cgroup now (the error names it),
    /// or a pattern. Returns the cgroups it adds (a pattern's current matches).
    pub fn add(&mut self, entry: &Path, profiler: &mut Profiler) -> Result<Vec<PathBuf>, String> {
        if self.entries.iter().any(|e| e == entry) {
            return Ok(Vec::new());
        }
        validate_entry(entry).map_err(|e| format!("profile.cgroups: {e}"))?;
        if is_pattern(entry) {
            self.entries.push(entry.to_owned());
            let mut unprofiled = Vec::new();
            let added = self.match_new(entry, profiler, &mut unprofiled);
            self.note_unprofiled(&unprofiled);
            return Ok(added.iter().map(|c| PathBuf::from(c.key())).collect());
        }
        let id = cgroup_id(entry).map_err(|e| {
            format!(
                "profile.cgroups: {} is not a cgroup2 directory: {e}",
                entry.display()
            )
        })?;
        // Profiled already as a pattern's match: from now on as a path of its own.
        if let Some(c) = self.list.iter_mut().find(|c| c.path == entry) {
            c.pattern = None;
        } else {
            self.push(entry, None, id, profiler).map_err(|e| {
                format!(
                    "profile.cgroups: {}: {}",
                    entry.display(),
                    crate::error::chain(&e)
                )
            })?;
        }
        self.entries.push(entry.to_owned());
        Ok(vec![entry.to_owned()])
    }

    /// Remove entry `entry` (reload): the path, or every cgroup the pattern matched (unless
    /// another entry still stands for it). Returns the cgroups no longer profiled.
    pub fn remove(&mut self, entry: &Path, profiler: &mut Profiler) -> Vec<PathBuf> {
        let Some(i) = self.entries.iter().position(|e| e == entry) else {
            return Vec::new();
        };
        self.entries.remove(i);
        let mut gone = Vec::new();
        let mut k = 0;
        while k < self.list.len() {
            let c = &self.list[k];
            let from_entry = match &c.pattern {
                Some(p) => p == entry,
                None => c.path == entry,
            };
            if !from_entry {
                k += 1;
                continue;
            }
            if let Some(pattern) = standing_entry(&self.entries, &c.path) {
                // Another entry stands for it: kept, with its history.
                self.list[k].pattern = pattern;
                k += 1;
                continue;
            }
            let mut c = self.list.remove(k);
            c.retire(profiler);
            gone.push(c.path);
        }
        gone
    }
}

/// The entry of `entries` that stands for `path`: `Some(None)` for the path itself,
/// `Some(Some(pattern))` for a pattern that matches it, `None` for no entry.
fn standing_entry(entries: &[PathBuf], path: &Path) -> Option<Option<PathBuf>> {
    if entries.iter().any(|e| e == path) {
        return Some(None);
    }
    entries
        .iter()
        .filter(|e| is_pattern(e))
        .find(|e| {
            e.to_str()
                .and_then(|t| glob::Pattern::new(t).ok())
                .is_some_and(|p| p.matches_path(path))
        })
        .map(|e| Some(e.clone()))
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
    fn patterns_are_told_from_paths_checked_and_expanded_to_cgroups() {
        assert!(is_pattern(Path::new("/cg/kubepods.slice/*/*-pod*.slice")));
        assert!(is_pattern(Path::new("/cg/web@[0-9].service")));
        assert!(!is_pattern(Path::new("/cg/web.service")));
        assert!(validate_entry(Path::new("/cg/a/**")).is_ok());
        assert!(validate_entry(Path::new("/cg/a")).is_ok());
        assert!(validate_entry(Path::new("cg/a"))
            .unwrap_err()
            .contains("not an absolute path"));
        assert!(validate_entry(Path::new("/cg/[a"))
            .unwrap_err()
            .contains("not a valid pattern"));

        let dir = std::env::temp_dir().join(format!("shdw-g-{}", std::process::id()));
        for sub in ["pod-a", "pod-b", "pod-c", "other"] {
            std::fs::create_dir_all(dir.join(sub)).expect("dirs");
        }
        // Only directories that are cgroups match (pod-c is not one).
        for sub in ["pod-a", "pod-b", "other"] {
            std::fs::write(dir.join(sub).join("cgroup.procs"), "").expect("file");
        }
        std::fs::write(dir.join("pod-file"), "").expect("file");
        let pat = dir.join("pod-*");
        assert_eq!(expand(&pat), vec![dir.join("pod-a"), dir.join("pod-b")]);
        // The entry standing for a path: itself first, else a pattern matching it.
        let entries = vec![pat.clone(), dir.join("other")];
        assert_eq!(
            standing_entry(&entries, &dir.join("pod-a")),
            Some(Some(pat.clone()))
        );
        assert_eq!(standing_entry(&entries, &dir.join("other")), Some(None));
        assert_eq!(standing_entry(&entries, &dir.join("x")), None);
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
        let m = Change::Matched {
            key: "p".into(),
            new: 5,
        }
        .event(0.0);
        assert_eq!(
            (m["change"].as_str(), m["new_id"].as_u64()),
            (Some("matched"), Some(5))
        );
        let u = Change::Unmatched {
            key: "p".into(),
            old: 5,
        }
        .event(0.0);
        assert_eq!(
            (u["change"].as_str(), u["old_id"].as_u64()),
            (Some("unmatched"), Some(5))
        );
    }
}
