//! Request→reply latency of each mirror target (shadow replica), measured by the mirror's
//! programs at the target's veth (`shadow_common::latency`), as hdrhistogram percentiles.

use aya::maps::{MapData, PerCpuArray};
use hdrhistogram::Histogram;
use shadow_common::{
    latency::{lat_bucket_value, LatHist, LAT_BUCKETS},
    maps::MAP_LAT_HIST,
    mirror::FLAG_LATENCY,
};

use super::{Mirror, MirrorError};
use crate::ebpf::{self, LoadError};

/// Cumulative latency counts of one target, summed over CPUs.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LatencyCounts {
    pub requests: u64,
    pub replies: u64,
    pub expired: u64,
    /// Payload segments from the replica with no request pending (counted in slot 0).
    pub unmatched: u64,
    pub sum_us: u64,
    pub buckets: Vec<u64>,
}

impl Default for LatencyCounts {
    fn default() -> Self {
        LatencyCounts {
            requests: 0,
            replies: 0,
            expired: 0,
            unmatched: 0,
            sum_us: 0,
            buckets: vec![0; LAT_BUCKETS],
        }
    }
}

/// Percentiles of a set of request→reply latencies, in milliseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct LatencySummary {
    /// Requests whose timing started.
    pub requests: u64,
    /// Replies timed (the percentiles are over these).
    pub replies: u64,
    /// Replies to requests pending longer than 60 s (not in the percentiles).
    pub expired: u64,
    /// Payload segments from the replica with no request pending.
    pub unmatched: u64,
    pub mean_ms: f64,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl LatencyCounts {
    /// `self - earlier`, bucket by bucket (saturating): the latencies of an interval.
    pub fn since(&self, earlier: &LatencyCounts) -> LatencyCounts {
        LatencyCounts {
            requests: self.requests.saturating_sub(earlier.requests),
            replies: self.replies.saturating_sub(earlier.replies),
            expired: self.expired.saturating_sub(earlier.expired),
            unmatched: self.unmatched.saturating_sub(earlier.unmatched),
            sum_us: self.sum_us.saturating_sub(earlier.sum_us),
            buckets: self
                .buckets
                .iter()
                .zip(earlier.buckets.iter().chain(std::iter::repeat(&0)))
                .map(|(a, b)| a.saturating_sub(*b))
                .collect(),
        }
    }

    /// Add another target's counts (e.g. the replicas of one group).
    pub fn add(&mut self, other: &LatencyCounts) {
        self.requests += other.requests;
        self.replies += other.replies;
        self.expired += other.expired;
        self.unmatched += other.unmatched;
        self.sum_us += other.sum_us;
        for (a, b) in self.buckets.iter_mut().zip(&other.buckets) {
            *a += b;
        }
    }

    /// An hdrhistogram (µs, 3 significant digits) with every sample at its bucket's
    /// midpoint; `None` if hdrhistogram refuses the (fixed, valid) bounds.
    pub fn to_hdr(&self) -> Option<Histogram<u64>> {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1 << 36, 3).ok()?;
        for (b, &n) in self.buckets.iter().enumerate() {
            if n > 0 {
                h.record_n(lat_bucket_value(b).max(1), n).ok()?;
            }
        }
        Some(h)
    }

    pub fn summary(&self) -> LatencySummary {
        let ms = |us: u64| us as f64 / 1000.0;
        let mut s = LatencySummary {
            requests: self.requests,
            replies: self.replies,
            expired: self.expired,
            unmatched: self.unmatched,
            ..LatencySummary::default()
        };
        if self.replies > 0 {
            s.mean_ms = self.sum_us as f64 / self.replies as f64 / 1000.0;
        }
        if let Some(h) = self.to_hdr().filter(|h| !h.is_empty()) {
            s.p50_ms = ms(h.value_at_quantile(0.50));
            s.p95_ms = ms(h.value_at_quantile(0.95));
            s.p99_ms = ms(h.value_at_quantile(0.99));
            s.max_ms = ms(h.max());
        }
        s
    }
}

impl Mirror {
    /// Turn the per-target request→reply timing on or off (off at attach), effective from
    /// the next packet.
    pub fn set_latency(&mut self, on: bool) -> Result<(), MirrorError> {
        self.set_flag(FLAG_LATENCY, on)
    }

    /// Cumulative latency counts per live target, in slot order (one entry, the single
    /// target, when the mirror has no target list).
    pub fn latency(&self) -> Result<Vec<LatencyCounts>, MirrorError> {
        let map = self.ebpf.map(MAP_LAT_HIST).ok_or(LoadError::MissingMap {
            object: ebpf::MIRROR.name,
            map: MAP_LAT_HIST,
        })?;
        let h: PerCpuArray<&MapData, LatHist> =
            PerCpuArray::try_from(map).map_err(|source| MirrorError::Map {
                map: MAP_LAT_HIST,
                source,
            })?;
        let n = self.targets.len().max(1) as u32;
        (0..n)
            .map(|i| {
                let per_cpu = h.get(&i, 0).map_err(|source| MirrorError::Map {
                    map: MAP_LAT_HIST,
                    source,
                })?;
                let mut c = LatencyCounts::default();
                for v in per_cpu.iter() {
                    c.requests += v.requests;
                    c.replies += v.replies;
                    c.expired += v.expired;
                    c.unmatched += v.unmatched;
                    c.sum_us += v.sum_us;
                    for (a, b) in c.buckets.iter_mut().zip(v.buckets.iter()) {
                        *a += b;
                    }
                }
                Ok(c)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shadow_common::latency::lat_bucket;

    #[test]
    fn percentiles_from_buckets() {
        let mut c = LatencyCounts::default();
        // 90 replies at ~1 ms, 10 at ~50 ms.
        c.buckets[lat_bucket(1000)] = 90;
        c.buckets[lat_bucket(50_000)] = 10;
        c.replies = 100;
        c.sum_us = 90 * 1000 + 10 * 50_000;
        let s = c.summary();
        assert!((0.9..1.15).contains(&s.p50_ms), "{s:?}");
        assert!((45.0..57.0).contains(&s.p95_ms), "{s:?}");
        assert!((5.9..5.91).contains(&s.mean_ms), "{s:?}");
        let earlier = c.clone();
        c.buckets[lat_bucket(3)] += 5;
        c.replies += 5;
        let d = c.since(&earlier);
        assert_eq!(d.replies, 5);
        assert_eq!(d.buckets.iter().sum::<u64>(), 5);
        assert!((0.003..0.0045).contains(&d.summary().p99_ms));
        assert_eq!(LatencyCounts::default().summary().p99_ms, 0.0);
    }
}
