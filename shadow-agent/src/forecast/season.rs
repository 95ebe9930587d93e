//! Seasonality detection with a correlogram.
//!
//! For every lag `k` in `[min_period, n/2]` the Pearson correlation between `y[..n-k]` and
//! `y[k..]` is computed (a per-lag normalisation, so long lags are not shrunk towards zero as
//! in the textbook ACF). A lag is a season if it is a local maximum of that curve, its
//! correlation is at least `threshold`, and it rises at least `prominence` above the lowest
//! correlation at any shorter lag (this rejects the slowly decaying curve of a random walk).
//! Of the qualifying lags the shortest one whose correlation is within 0.1 of the best is
//! returned (multiples of a period correlate about as well as the period).
//!
//! Why not `augurs-seasons`: its Welch periodogram considers periods below `min(n/3, 512)`
//! only, so on a two-day window of 5-minute samples it cannot see the daily period (288),
//! the one that matters for resource usage.

const MULTIPLE_TOLERANCE: f64 = 0.1;

/// Parameters of the detector; [`Default`] is what every model uses.
#[derive(Debug, Clone, Copy)]
pub struct SeasonDetector {
    pub min_period: usize,
    pub threshold: f64,
    pub prominence: f64,
}

impl Default for SeasonDetector {
    fn default() -> Self {
        Self {
            min_period: 4,
            threshold: 0.3,
            prominence: 0.2,
        }
    }
}

impl SeasonDetector {
    /// The dominant seasonal period of `y` (which must be finite), if any; at most `n/2`, so
    /// at least two full cycles are in the data.
    pub fn detect(&self, y: &[f64]) -> Option<usize> {
        self.detect_up_to(y, y.len() / 2)
    }

    /// The dominant seasonal period of `y` no longer than `max_period` (and at most `n/2`).
    pub fn detect_up_to(&self, y: &[f64], max_period: usize) -> Option<usize> {
        let n = y.len();
        let max_lag = max_period.min(n / 2);
        if max_lag < self.min_period + 1 {
            return None;
        }
        // Correlation at every lag 1..=max_lag+1 (one past the end to judge local maxima).
        let upto = (max_lag + 1).min(n - 2);
        let r: Vec<f64> = (0..=upto)
            .map(|k| if k == 0 { 1.0 } else { lag_corr(y, k) })
            .collect();
        let mut peaks: Vec<(usize, f64)> = Vec::new();
        let mut min_so_far = f64::INFINITY;
        for k in 1..=max_lag.min(upto) {
            let rk = r[k];
            if k >= self.min_period && k < upto {
                let is_peak = rk >= r[k - 1] && rk >= r[k + 1];
                if is_peak && rk >= self.threshold && rk - min_so_far >= self.prominence {
                    peaks.push((k, rk));
                }
            }
            min_so_far = min_so_far.min(rk);
        }
        // Multiples of a period correlate about as well as the period itself: take the
        // shortest peak within `MULTIPLE_TOLERANCE` of the best one.
        let best = peaks.iter().map(|p| p.1).fold(f64::NEG_INFINITY, f64::max);
        peaks
            .iter()
            .find(|p| p.1 >= best - MULTIPLE_TOLERANCE)
            .map(|p| p.0)
    }
}

/// Pearson correlation of `y[..n-k]` with `y[k..]`; 0 when either side is constant.
fn lag_corr(y: &[f64], k: usize) -> f64 {
    let n = y.len() - k;
    let a = &y[..n];
    let b = &y[k..];
    let ma = a.iter().sum::<f64>() / n as f64;
    let mb = b.iter().sum::<f64>() / n as f64;
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, z) in a.iter().zip(b) {
        let (dx, dz) = (x - ma, z - mb);
        sab += dx * dz;
        saa += dx * dx;
        sbb += dz * dz;
    }
    if saa <= 0.0 || sbb <= 0.0 {
        0.0
    } else {
        sab / (saa * sbb).sqrt()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::forecast::test_noise as noise;

    #[test]
    fn finds_a_daily_period_in_two_days() {
        let y: Vec<f64> = (0..576)
            .map(|i| 10.0 + 5.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin() + noise(i))
            .collect();
        let p = SeasonDetector::default().detect(&y).expect("a period");
        assert!((286..=290).contains(&p), "period {p}");
    }

    #[test]
    fn finds_a_short_period() {
        let y: Vec<f64> = (0..300)
            .map(|i| [1.0, 5.0, 3.0, 0.0, 2.0, 4.0, 1.0][i % 7] + 0.3 * noise(i))
            .collect();
        assert_eq!(SeasonDetector::default().detect(&y), Some(7));
    }

    #[test]
    fn finds_a_short_period_under_a_daily_one() {
        let y: Vec<f64> = (0..576)
            .map(|i| {
                20.0 * (i as f64 * std::f64::consts::TAU / 288.0).sin()
                    + [1.0, 5.0, 3.0, 0.0, 2.0, 4.0, 1.0][i % 7]
                    + 0.3 * noise(i)
            })
            .collect();
        let d = SeasonDetector::default();
        // The dominant period is about a day (a multiple of 7 near 288 correlates as well).
        let daily = d.detect(&y).expect("a daily period");
        assert!((266..=296).contains(&daily), "period {daily}");
        // Under the strong slow wave the short pattern does not rise in the correlogram; in
        // the first differences (how the default policy looks for it) it does.
        assert_eq!(d.detect_up_to(&y, 576 / 8), None);
        let diff: Vec<f64> = y.windows(2).map(|w| w[1] - w[0]).collect();
        assert_eq!(d.detect_up_to(&diff, 576 / 8), Some(7));
        assert!(d.detect_up_to(&diff, 6).is_none_or(|p| p <= 6));
    }

    #[test]
    fn no_period_in_noise_or_a_random_walk() {
        let white: Vec<f64> = (0..576).map(noise).collect();
        assert_eq!(SeasonDetector::default().detect(&white), None);
        let mut level = 0.0;
        let walk: Vec<f64> = (0..576)
            .map(|i| {
                level += noise(i);
                level
            })
            .collect();
        assert_eq!(SeasonDetector::default().detect(&walk), None);
        assert_eq!(SeasonDetector::default().detect(&[1.0; 100]), None);
        assert_eq!(SeasonDetector::default().detect(&[1.0, 2.0]), None);
    }
}
