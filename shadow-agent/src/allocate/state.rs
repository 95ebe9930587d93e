//! What must survive the agent: the original limits (restored on exit and after a crash) and
//! the audit log of decisions.
//!
//! - Original record: `<state_dir>/original-<cgroup>.json` (`/` in the name becomes `%`),
//!   written atomically (temporary file, fsync, rename) before the first change, holding the
//!   exact text of every control file the allocator may write, and the id of the directory
//!   holding it. Its presence at start means the previous agent did not restore: the new one
//!   restores first. A file whose directory is gone, or is a new group since (a restarted
//!   service's: its limits are its owner's now), is left alone and the restore says so.
//! - Audit log: JSON lines appended to a file (one object per decision worth recording).

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use super::backend::{self, BackendKind};
use super::policy::{Confidence, Rail, Reason};
use super::{AllocateError, Result};

/// Format version of [`OriginalRecord`].
pub const RECORD_VERSION: u32 = 1;

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// One control file's original text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalFile {
    pub path: PathBuf,
    pub value: String,
    /// The id (inode) of the file's directory when recorded: on cgroupfs a directory removed
    /// and made again has a new one. None in records of older agents.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dir_id: Option<u64>,
}

/// The id (inode number) of directory `dir`; None if it does not exist. cgroupfs never gives
/// a new cgroup the id of one removed before it.
pub fn dir_id(dir: &Path) -> Option<u64> {
    fs::metadata(dir).ok().map(|m| m.ino())
}

/// Why a recorded file is not written back, if it must not be: its group is gone, or is a
/// new one whose limits are not Shadow's to restore.
fn stale(f: &OriginalFile) -> Option<String> {
    let dir = f.path.parent()?;
    match (f.dir_id, dir_id(dir)) {
        (_, None) => Some("gone: the group's directory no longer exists".to_owned()),
        (Some(was), Some(now)) if was != now => Some(format!(
            "recreated: the directory is a new group (id {was} -> {now}) whose limits are its owner's"
        )),
        _ => None,
    }
}

/// The limits of a group before Shadow changed anything.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OriginalRecord {
    pub version: u32,
    pub cgroup: String,
    pub backend: BackendKind,
    pub recorded_unix_ms: u64,
    /// The agent process that recorded it.
    pub pid: u32,
    /// In restore order.
    pub files: Vec<OriginalFile>,
    /// A pod's container resized through the Kubernetes API: its original resources
    /// (`allocate/kube.rs`), patched back instead of written as files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api: Option<serde_json::Value>,
}

/// How a record's Kubernetes part is named in reports: the pod's resize subresource.
pub fn api_label(api: &serde_json::Value) -> String {
    format!(
        "pods/{}/{}/resize",
        api["namespace"].as_str().unwrap_or("?"),
        api["pod"].as_str().unwrap_or("?")
    )
}

/// Where the record of `cgroup` lives in `state_dir`.
pub fn record_path(state_dir: &Path, cgroup: &str) -> PathBuf {
    state_dir.join(format!("original-{}.json", cgroup.replace('/', "%")))
}

impl OriginalRecord {
    /// Reads the current text of `files`.
    pub fn capture(cgroup: &str, kind: BackendKind, files: &[PathBuf]) -> Result<OriginalRecord> {
        let files = files
            .iter()
            .map(|p| {
                Ok(OriginalFile {
                    path: p.clone(),
                    value: backend::read_text(p)?.trim().to_owned(),
                    dir_id: p.parent().and_then(dir_id),
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(OriginalRecord {
            version: RECORD_VERSION,
            cgroup: cgroup.to_owned(),
            backend: kind,
            recorded_unix_ms: unix_ms(),
            pid: std::process::id(),
            files,
            api: None,
        })
    }

    /// Writes the record atomically to `path` (creating the directory).
    pub fn save(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_vec_pretty(self).map_err(|source| AllocateError::Json {
            op: "serialise",
            path: path.to_owned(),
            source,
        })?;
        crate::sys::write_atomic(path, &text).map_err(|(op, path, source)| AllocateError::Io {
            op,
            path,
            source,
        })
    }

    /// The recorded values by file (and the pod's resources, for a group resized through
    /// the Kubernetes API), leaving out `skip` (for the audit log).
    pub fn values(&self, skip: &[(PathBuf, String)]) -> serde_json::Value {
        let mut m: serde_json::Map<String, serde_json::Value> = self
            .files
            .iter()
            .filter(|f| !skip.iter().any(|(p, _)| *p == f.path))
            .map(|f| (f.path.display().to_string(), f.value.clone().into()))
            .collect();
        if let Some(api) = &self.api {
            let at = api_label(api);
            if !skip.iter().any(|(p, _)| p.as_os_str() == at.as_str()) {
                m.insert(at, api["resources"].clone());
            }
        }
        serde_json::Value::Object(m)
    }

    /// Reads the record at `path`; `None` when there is none.
    pub fn load(path: &Path) -> Result<Option<OriginalRecord>> {
        let text = match fs::read(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(AllocateError::Io {
                    op: "read",
                    path: path.to_owned(),
                    source,
                })
            }
        };
        serde_json::from_slice(&text)
            .map(Some)
            .map_err(|source| AllocateError::Json {
                op: "parse",
                path: path.to_owned(),
                source,
            })
    }

    /// Writes every original value back, continuing past failures. A file that already
    /// holds its original value is not written (it counts as restored): the record is taken
    /// before the first change, so some of its files may never have changed, and one of them
    /// being unwritable (the reason a change failed) must not make the restore fail. A file
    /// whose group is gone or was made again since is skipped, with the reason. A file listed
    /// twice (a CFS burst, around its quota: the kernel refuses a burst above the quota, so it
    /// may only fit before or only after the quota is back) is written at both places and
    /// only its last write counts.
    pub fn restore(&self) -> RestoreReport {
        let mut report = RestoreReport::default();
        for (i, f) in self.files.iter().enumerate() {
            let again = self.files[i + 1..].iter().any(|g| g.path == f.path);
            if let Some(why) = stale(f) {
                if !again {
                    report.skipped.push((f.path.clone(), why));
                }
                continue;
            }
            if backend::read_text(&f.path).is_ok_and(|now| now.trim() == f.value) {
                if !again {
                    report.restored.push(f.path.clone());
                }
                continue;
            }
            match backend::write_text(&f.path, &f.value) {
                Ok(()) if !again => report.restored.push(f.path.clone()),
                Err(e) if !again => report.failed.push((f.path.clone(), error_chain(&e))),
                _ => {}
            }
        }
        report
    }
}

/// What a restore did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub restored: Vec<PathBuf>,
    /// (file, error).
    pub failed: Vec<(PathBuf, String)>,
    /// Not written back: (file, why). Its group is gone, or is a new group since.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<(PathBuf, String)>,
}

/// `error: cause: cause` on one line.
pub use crate::error::chain as error_chain;

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    pub cgroup: String,
    /// `cpu`, `memory`, `cpuset`, `restore` or `recreated` (the group was made again: the
    /// record of its old limits is dropped unwritten).
    pub resource: String,
    /// Old and new value: cores, bytes, a CPU list, or `"max"` for unlimited.
    pub old: serde_json::Value,
    pub new: serde_json::Value,
    pub reason: Reason,
    /// Rails that changed the outcome.
    pub rails: Vec<Rail>,
    /// Whether it was written (false: dry run, suppressed by a rail, or failed).
    pub applied: bool,
    pub dry_run: bool,
    /// The forecast's point, interval [lower, upper] and level, when one was given.
    pub forecast: Option<f64>,
    pub interval: Option<[f64; 2]>,
    pub level: Option<f64>,
    /// The forecast's upper bound over the intervals a shrink commits to (`shrink_cover`),
    /// when one was given.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shrink_upper: Option<f64>,
    pub confidence: Option<Confidence>,
    /// Reconcile step number of this agent.
    pub step: u64,
    /// An error, when the write failed.
    pub error: Option<String>,
    /// Placement only: the NIC/IRQ locality the decision used (see `allocate/irq.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locality: Option<serde_json::Value>,
    /// What else the entry needs said (a restore's skipped files, a group made again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// CPU only, where the kernel has a CFS burst: the burst (µs) before and with the change,
    /// `[old, new]` (`allocate.cpu.burst`, or the group's own lowered to a smaller quota).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst_us: Option<[u64; 2]>,
}

impl AuditEntry {
    /// An entry of `cgroup` at reconcile step `step`, stamped now: not applied, no rails, no
    /// forecast, no error (set the fields that apply).
    pub fn at_step(
        cgroup: &str,
        resource: &str,
        old: serde_json::Value,
        new: serde_json::Value,
        reason: Reason,
        step: u64,
    ) -> AuditEntry {
        AuditEntry {
            time_ms: unix_ms(),
            cgroup: cgroup.to_owned(),
            resource: resource.to_owned(),
            old,
            new,
            reason,
            rails: Vec::new(),
            applied: false,
            dry_run: false,
            forecast: None,
            interval: None,
            level: None,
            shrink_upper: None,
            confidence: None,
            step,
            error: None,
            locality: None,
            note: None,
            burst_us: None,
        }
    }
}

/// Appends [`AuditEntry`] lines to a file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
}

impl AuditLog {
    /// A log at `path`; nothing is made until [`AuditLog::create`] or the first append.
    pub fn new(path: impl Into<PathBuf>) -> AuditLog {
        AuditLog { path: path.into() }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Makes the file (and its directory) if it does not exist, leaving any entries in it:
    /// a run that decides nothing still leaves a log to report on, and an unwritable path
    /// is named when the allocator starts rather than at its first decision.
    pub fn create(&self) -> Result<()> {
        self.open_append().map(drop)
    }

    /// Appends one line.
    pub fn append(&self, entry: &AuditEntry) -> Result<()> {
        let mut line = serde_json::to_vec(entry).map_err(|source| AllocateError::Json {
            op: "serialise",
            path: self.path.clone(),
            source,
        })?;
        line.push(b'\n');
        self.open_append()?
            .write_all(&line)
            .map_err(self.io_error("append"))
    }

    /// The file opened for appending, made with its directory if missing.
    fn open_append(&self) -> Result<fs::File> {
        if let Some(dir) = self.path.parent() {
            fs::create_dir_all(dir).map_err(self.io_error("create directory"))?;
        }
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.path)
            .map_err(self.io_error("open for appending"))
    }

    fn io_error(&self, op: &'static str) -> impl FnOnce(std::io::Error) -> AllocateError {
        let path = self.path.clone();
        move |source| AllocateError::Io { op, path, source }
    }

    /// Every entry so far (for tests and reports).
    pub fn read_all(&self) -> Result<Vec<AuditEntry>> {
        let text = match fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => {
                return Err(AllocateError::Io {
                    op: "read",
                    path: self.path.clone(),
                    source,
                })
            }
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).map_err(|source| AllocateError::Json {
                    op: "parse",
                    path: self.path.clone(),
                    source,
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(path: &str, value: &str) -> OriginalRecord {
        OriginalRecord {
            version: RECORD_VERSION,
            cgroup: "g".into(),
            backend: BackendKind::V1,
            recorded_unix_ms: 0,
            pid: 1,
            files: vec![OriginalFile {
                path: PathBuf::from(path),
                value: value.into(),
                dir_id: None,
            }],
            api: None,
        }
    }

    #[test]
    fn restore_leaves_a_file_holding_its_original_alone_even_if_unwritable() {
        // /proc/version cannot be written, even by root.
        let now = fs::read_to_string("/proc/version").expect("/proc/version");
        let same = record("/proc/version", now.trim()).restore();
        assert_eq!(same.restored, vec![PathBuf::from("/proc/version")]);
        assert!(same.failed.is_empty(), "{:?}", same.failed);
        let differs = record("/proc/version", "something else").restore();
        assert!(differs.restored.is_empty());
        assert_eq!(differs.failed.len(), 1, "{differs:?}");
    }

    #[test]
    fn restore_skips_files_of_a_group_gone_or_made_again() {
        let dir = std::env::temp_dir().join(format!("shadow-state-{}", std::process::id()));
        let group = dir.join("g");
        fs::create_dir_all(&group).expect("dir");
        let file = group.join("cpu.max");
        fs::write(&file, "50000 100000\n").expect("file");
        let rec = OriginalRecord::capture("g", BackendKind::V2, std::slice::from_ref(&file))
            .expect("capture");
        assert_eq!(rec.files[0].dir_id, dir_id(&group));
        // Old records (no id) round-trip and restore by path as before.
        let text = serde_json::to_string(&record(file.to_str().unwrap(), "1 2")).unwrap();
        assert!(!text.contains("dir_id"), "{text}");

        // Same group: written back.
        fs::write(&file, "max 100000\n").expect("change");
        let r = rec.restore();
        assert_eq!(
            (r.restored.len(), r.failed.len(), r.skipped.len()),
            (1, 0, 0),
            "{r:?}"
        );
        assert_eq!(fs::read_to_string(&file).unwrap(), "50000 100000");

        // The group made again (a different id, as cgroupfs gives it): left alone.
        fs::write(&file, "max 100000\n").expect("owner's value");
        let mut other = rec.clone();
        other.files[0].dir_id = rec.files[0].dir_id.map(|i| i + 1);
        let r = other.restore();
        assert!(r.restored.is_empty() && r.failed.is_empty(), "{r:?}");
        assert!(r.skipped[0].1.starts_with("recreated"), "{r:?}");
        assert_eq!(fs::read_to_string(&file).unwrap(), "max 100000\n");

        // The group gone: skipped, not failed (nothing is left to restore).
        fs::remove_dir_all(&dir).expect("remove");
        for rec in [&rec, &record(file.to_str().unwrap(), "1 2")] {
            let r = rec.restore();
            assert!(r.restored.is_empty() && r.failed.is_empty(), "{r:?}");
            assert!(r.skipped[0].1.starts_with("gone"), "{r:?}");
        }
    }
}
