//! Run-queue latency: the kernel's log2 buckets turned into an hdrhistogram for quantiles.

use hdrhistogram::Histogram;
use shadow_common::acct::{rq_bucket_value, RQ_BUCKETS};

/// Cumulative bucket counts of one cgroup (summed over CPUs).
pub type Buckets = [u64; RQ_BUCKETS];

/// p50/p95/p99 of one interval, in microseconds.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize)]
pub struct Quantiles {
    /// Number of latencies recorded in the interval.
    pub count: u64,
    pub p50_us: f64,
    pub p95_us: f64,
    pub p99_us: f64,
    pub max_us: f64,
}

/// Bucket-wise `now - earlier` (saturating).
pub fn delta(now: &Buckets, earlier: &Buckets) -> Buckets {
    let mut out = [0u64; RQ_BUCKETS];
    for (i, o) in out.iter_mut().enumerate() {
        *o = now[i].saturating_sub(earlier[i]);
    }
    out
}

/// An hdrhistogram (ns, 3 significant digits) holding every sample of `buckets` at its
/// bucket's midpoint; `None` only if hdrhistogram refuses the (fixed, valid) bounds.
pub fn to_hdr(buckets: &Buckets) -> Option<Histogram<u64>> {
    let mut h = Histogram::<u64>::new_with_bounds(1, 1 << 42, 3).ok()?;
    for (b, &n) in buckets.iter().enumerate() {
        if n > 0 {
            h.record_n(rq_bucket_value(b), n).ok()?;
        }
    }
    Some(h)
}

/// Quantiles of the samples in `buckets` (all zero when there are none).
pub fn quantiles(buckets: &Buckets) -> Quantiles {
    let Some(h) = to_hdr(buckets).filter(|h| !h.is_empty()) else {
        return Quantiles::default();
    };
    let us = |v: u64| v as f64 / 1000.0;
    Quantiles {
        count: h.len(),
        p50_us: us(h.value_at_quantile(0.50)),
        p95_us: us(h.value_at_quantile(0.95)),
        p99_us: us(h.value_at_quantile(0.99)),
        max_us: us(h.max()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_is_zero() {
        assert_eq!(quantiles(&[0; RQ_BUCKETS]), Quantiles::default());
    }

    #[test]
    fn quantiles_follow_the_buckets() {
        let mut b = [0u64; RQ_BUCKETS];
        b[10] = 90; // ~1.5 us
        b[20] = 10; // ~1.5 ms
        let q = quantiles(&b);
        assert_eq!(q.count, 100);
        assert!((1.0..2.1).contains(&q.p50_us), "{q:?}");
        assert!((1000.0..2100.0).contains(&q.p95_us), "{q:?}");
        assert!(q.p99_us >= q.p95_us);
    }

    #[test]
    fn delta_is_bucketwise() {
        let mut a = [0u64; RQ_BUCKETS];
        let mut b = [0u64; RQ_BUCKETS];
        a[3] = 5;
        b[3] = 7;
        b[4] = 1;
        let d = delta(&b, &a);
        assert_eq!(d[3], 2);
        assert_eq!(d[4], 1);
        assert_eq!(delta(&a, &b)[3], 0);
    }
}
