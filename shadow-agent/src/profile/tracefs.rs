//! Field offsets of classic tracepoint records, read from tracefs at load time.
//!
//! Rust eBPF cannot emit CO-RE relocations, so programs on classic tracepoints read record
//! fields at offsets the agent takes from `events/<category>/<name>/format` and passes in as
//! load-time globals.

use std::path::{Path, PathBuf};

/// Where tracefs is usually mounted, in order of preference.
pub const TRACEFS_DIRS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error("tracefs is not mounted (looked for {tried:?}); `cargo xtask setup` mounts it")]
    NotMounted { tried: Vec<PathBuf> },
    #[error("reading tracepoint format {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("tracepoint format {path} has no field {field}")]
    NoField { path: PathBuf, field: &'static str },
}

/// One field of a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    pub offset: u32,
    pub size: u32,
}

/// Find `field` in the text of a `format` file: lines such as
/// `field:pid_t pid; offset:24; size:4; signed:1;` (tab-separated; arrays: `field:char rwbs[10];`).
pub fn parse_field(format: &str, field: &str) -> Option<Field> {
    for line in format.lines() {
        let line = line.trim();
        let Some(decl) = line.strip_prefix("field:") else {
            continue;
        };
        let mut parts = decl.split(';').map(str::trim);
        let Some(decl) = parts.next() else {
            continue;
        };
        // The name is the last word of the declaration, without an array suffix.
        let name = decl
            .rsplit(|c: char| c.is_whitespace())
            .next()
            .map(|n| n.split('[').next().unwrap_or(n))
            .unwrap_or("");
        if name != field {
            continue;
        }
        let mut offset = None;
        let mut size = None;
        for p in parts {
            if let Some(v) = p.strip_prefix("offset:") {
                offset = v.trim().parse().ok();
            } else if let Some(v) = p.strip_prefix("size:") {
                size = v.trim().parse().ok();
            }
        }
        return Some(Field {
            offset: offset?,
            size: size?,
        });
    }
    None
}

/// The mounted tracefs directory.
pub fn tracefs_dir() -> Result<PathBuf, TracefsError> {
    TRACEFS_DIRS
        .iter()
        .map(PathBuf::from)
        .find(|d| d.join("events").is_dir())
        .ok_or_else(|| TracefsError::NotMounted {
            tried: TRACEFS_DIRS.iter().map(PathBuf::from).collect(),
        })
}

/// Offset and size of `field` of tracepoint `category/name` under tracefs `dir`.
pub fn field_in(
    dir: &Path,
    category: &str,
    name: &str,
    field: &'static str,
) -> Result<Field, TracefsError> {
    let path = dir.join("events").join(category).join(name).join("format");
    let text = std::fs::read_to_string(&path).map_err(|source| TracefsError::Read {
        path: path.clone(),
        source,
    })?;
    parse_field(&text, field).ok_or(TracefsError::NoField { path, field })
}

#[cfg(test)]
mod tests {
    use super::*;

    const WAKEUP: &str = "name: sched_wakeup
ID: 318
format:
	field:unsigned short common_type;	offset:0;	size:2;	signed:0;
	field:int common_pid;	offset:4;	size:4;	signed:1;

	field:char comm[16];	offset:8;	size:16;	signed:0;
	field:pid_t pid;	offset:24;	size:4;	signed:1;
	field:int prio;	offset:28;	size:4;	signed:1;
";

    const BIO: &str = "format:
	field:dev_t dev;	offset:8;	size:4;	signed:0;
	field:sector_t sector;	offset:16;	size:8;	signed:0;
	field:unsigned int nr_sector;	offset:24;	size:4;	signed:0;
	field:char rwbs[10];	offset:28;	size:10;	signed:0;
";

    #[test]
    fn finds_scalar_fields() {
        assert_eq!(
            parse_field(WAKEUP, "pid"),
            Some(Field {
                offset: 24,
                size: 4
            })
        );
        assert_eq!(parse_field(WAKEUP, "common_pid").map(|f| f.offset), Some(4));
    }

    #[test]
    fn finds_array_fields_and_multiword_types() {
        assert_eq!(
            parse_field(BIO, "rwbs"),
            Some(Field {
                offset: 28,
                size: 10
            })
        );
        assert_eq!(parse_field(BIO, "nr_sector").map(|f| f.offset), Some(24));
    }

    #[test]
    fn missing_field_is_none() {
        assert_eq!(parse_field(WAKEUP, "target"), None);
        assert_eq!(parse_field("", "pid"), None);
    }
}
