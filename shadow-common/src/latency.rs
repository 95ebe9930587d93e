//! Request→reply latency of each shadow replica, measured in the kernel at its veth.
//!
//! `shadow_mask` (TC egress on the replica's host end) records when the first payload of a
//! mirrored request leaves for the replica (`LAT_PENDING`, per flow, not overwritten until
//! answered); `shadow_learn` (TC ingress there, before `shadow_discard`) takes the entry on
//! the replica's first payload segment back and counts the difference into the replica's
//! log-linear histogram (`LAT_HIST`, per CPU, one entry per mirror target slot). The
//! agent turns the buckets into hdrhistogram percentiles.
//!
//! Buckets are in microseconds: exact below 16 µs, then 8 sub-buckets per power of two
//! (at most 12.5 % wide), up to 2^34 µs; larger values land in the last bucket.

/// Buckets per histogram.
pub const LAT_BUCKETS: usize = 256;
/// A pending request older than this when its reply comes (a flow whose 5-tuple was
/// reused, an entry left by a replica that never answered) is counted as `expired`, not
/// recorded.
pub const LAT_MAX_NS: u64 = 60_000_000_000;

/// `LAT_PENDING` value: when the first unanswered request payload of a flow was sent to
/// the replica, and the mirror target slot it went to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LatPending {
    pub ts_ns: u64,
    pub slot: u32,
    pub _pad: u32,
}
const _: () = assert!(core::mem::size_of::<LatPending>() == 16);

/// One target slot's histogram (per CPU).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LatHist {
    /// Requests whose timing started (first payload toward the replica of an idle flow).
    pub requests: u64,
    /// Replies timed (recorded in `buckets`).
    pub replies: u64,
    /// Sum of the recorded latencies, µs.
    pub sum_us: u64,
    /// Replies to requests older than `LAT_MAX_NS` (not recorded).
    pub expired: u64,
    /// Payload segments from the replica with no request pending (the rest of a reply,
    /// or output the replica sent on its own).
    pub unmatched: u64,
    pub _pad: u64,
    pub buckets: [u64; LAT_BUCKETS],
}
const _: () = assert!(core::mem::size_of::<LatHist>() == 48 + 8 * LAT_BUCKETS);

impl Default for LatHist {
    fn default() -> Self {
        LatHist {
            requests: 0,
            replies: 0,
            sum_us: 0,
            expired: 0,
            unmatched: 0,
            _pad: 0,
            buckets: [0; LAT_BUCKETS],
        }
    }
}

crate::impl_pod!(LatPending, LatHist);

/// floor(log2(v)) for v > 0, without a loop or a count-leading-zeros instruction.
#[inline(always)]
fn ilog2(mut v: u64) -> u32 {
    let mut r = 0;
    if v >= 1 << 32 {
        v >>= 32;
        r += 32;
    }
    if v >= 1 << 16 {
        v >>= 16;
        r += 16;
    }
    if v >= 1 << 8 {
        v >>= 8;
        r += 8;
    }
    if v >= 1 << 4 {
        v >>= 4;
        r += 4;
    }
    if v >= 1 << 2 {
        v >>= 2;
        r += 2;
    }
    if v >= 1 << 1 {
        r += 1;
    }
    r
}

/// Bucket of a latency of `us` microseconds (always < `LAT_BUCKETS`).
#[inline(always)]
pub fn lat_bucket(us: u64) -> usize {
    if us < 16 {
        return us as usize;
    }
    let us = if us >= 1 << 34 { (1 << 34) - 1 } else { us };
    let e = ilog2(us); // 4..=33
    let sub = ((us >> (e - 3)) & 7) as usize;
    let b = 16 + (e as usize - 4) * 8 + sub;
    b & (LAT_BUCKETS - 1)
}

/// Smallest value (µs) of bucket `b` and its width.
pub fn lat_bucket_range(b: usize) -> (u64, u64) {
    if b < 16 {
        return (b as u64, 1);
    }
    let e = 4 + (b - 16) / 8;
    let sub = ((b - 16) % 8) as u64;
    let width = 1u64 << (e - 3);
    ((8 + sub) * width, width)
}

/// The value a bucket's samples are reported at: its midpoint (µs).
pub fn lat_bucket_value(b: usize) -> u64 {
    let (lo, w) = lat_bucket_range(b);
    lo + w / 2
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_cover_their_values() {
        let mut expect_lo = 0;
        for b in 0..LAT_BUCKETS {
            let (lo, w) = lat_bucket_range(b);
            assert_eq!(lo, expect_lo, "bucket {b}");
            assert_eq!(lat_bucket(lo), b);
            assert_eq!(lat_bucket(lo + w - 1), b);
            // At most 12.5 % wide beyond the exact range.
            assert!(b < 16 || w * 8 <= lo, "bucket {b}");
            expect_lo = lo + w;
        }
        assert_eq!(lat_bucket(u64::MAX), LAT_BUCKETS - 1);
        assert_eq!(lat_bucket(1 << 34), LAT_BUCKETS - 1);
    }

    #[test]
    fn ilog2_matches_std() {
        for v in [
            1u64,
            2,
            3,
            15,
            16,
            17,
            1000,
            1 << 33,
            (1 << 40) + 5,
            u64::MAX,
        ] {
            assert_eq!(ilog2(v), v.ilog2(), "{v}");
        }
    }

    #[test]
    fn midpoints_are_inside() {
        for b in 0..LAT_BUCKETS {
            assert_eq!(lat_bucket(lat_bucket_value(b)), b);
        }
    }
}
