//! CPU lists in the kernel's `cpuset.cpus` syntax (`0-3,5,7-8`).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

/// A set of CPU numbers.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct CpuSet(BTreeSet<u32>);

/// A CPU list that does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{text:?} is not a CPU list (expected e.g. \"0-3,5\"): {reason}")]
pub struct CpuSetParseError {
    pub text: String,
    pub reason: &'static str,
}

/// The largest CPU number accepted (guards against `0-4294967295` allocating forever).
pub const MAX_CPU: u32 = 8191;

impl CpuSet {
    /// The empty set.
    pub fn new() -> CpuSet {
        CpuSet::default()
    }

    /// The set of `cpus`.
    pub fn from_cpus(cpus: impl IntoIterator<Item = u32>) -> CpuSet {
        CpuSet(cpus.into_iter().collect())
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Number of CPUs.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether `cpu` is in the set.
    pub fn contains(&self, cpu: u32) -> bool {
        self.0.contains(&cpu)
    }

    /// CPUs in `self` but not in `other`.
    pub fn difference(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.difference(&other.0).copied().collect())
    }

    /// CPUs in both sets.
    pub fn intersection(&self, other: &CpuSet) -> CpuSet {
        CpuSet(self.0.intersection(&other.0).copied().collect())
    }

    /// The CPUs, ascending.
    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.0.iter().copied()
    }
}

impl FromStr for CpuSet {
    type Err = CpuSetParseError;

    fn from_str(text: &str) -> Result<CpuSet, CpuSetParseError> {
        let bad = |reason| CpuSetParseError {
            text: text.to_owned(),
            reason,
        };
        let mut set = BTreeSet::new();
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Ok(CpuSet(set));
        }
        for part in trimmed.split(',') {
            let part = part.trim();
            let num = |s: &str| -> Result<u32, CpuSetParseError> {
                let n: u32 = s.trim().parse().map_err(|_| bad("not a number"))?;
                if n > MAX_CPU {
                    return Err(bad("CPU number too large"));
                }
                Ok(n)
            };
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (num(a)?, num(b)?);
                    if a > b {
                        return Err(bad("range end before start"));
                    }
                    set.extend(a..=b);
                }
                None => {
                    set.insert(num(part)?);
                }
            }
        }
        Ok(CpuSet(set))
    }
}

impl fmt::Display for CpuSet {
    /// Compact kernel form: ascending ranges, `0-3,5`; empty for the empty set.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut first = true;
        let mut iter = self.0.iter().copied().peekable();
        while let Some(start) = iter.next() {
            let mut end = start;
            while iter.peek() == Some(&(end + 1)) {
                end += 1;
                iter.next();
            }
            if !first {
                f.write_str(",")?;
            }
            first = false;
            if start == end {
                write!(f, "{start}")?;
            } else {
                write!(f, "{start}-{end}")?;
            }
        }
        Ok(())
    }
}

impl serde::Serialize for CpuSet {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for CpuSet {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<CpuSet, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_ranges() {
        let s: CpuSet = "0-3,5,7-8\n".parse().unwrap();
        assert_eq!(s.iter().collect::<Vec<_>>(), vec![0, 1, 2, 3, 5, 7, 8]);
        assert_eq!(s.to_string(), "0-3,5,7-8");
        assert_eq!("".parse::<CpuSet>().unwrap(), CpuSet::new());
        assert_eq!("1".parse::<CpuSet>().unwrap().to_string(), "1");
        assert_eq!(CpuSet::from_cpus([3, 1, 2]).to_string(), "1-3");
    }

    #[test]
    fn rejects_garbage() {
        for bad in ["a", "3-1", "0-", "1,,2", "99999"] {
            assert!(bad.parse::<CpuSet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn set_operations() {
        let all: CpuSet = "0-3".parse().unwrap();
        let shadow: CpuSet = "2-3".parse().unwrap();
        assert_eq!(all.difference(&shadow).to_string(), "0-1");
        assert_eq!(all.intersection(&shadow).to_string(), "2-3");
        let json = serde_json::to_string(&all).unwrap();
        assert_eq!(json, "\"0-3\"");
        assert_eq!(serde_json::from_str::<CpuSet>(&json).unwrap(), all);
    }
}
