//! Scaling events: what the allocator cannot do on this node.
//!
//! When the forecast says the primary will need more than this node can give it within its
//! rails (the resource's `max`), the allocator cannot pre-allocate its way out: it emits a
//! **scale-out** event *ahead* of the shortfall, carrying the forecast and the lead time, so
//! an orchestrator (or a human) can add capacity elsewhere. A **sustained surplus** (the
//! confident need stays below a fraction of what the node offers for many intervals) emits a
//! **scale-in suggestion**, which is never acted on: a forecast alone never removes capacity
//! (as AWS predictive scaling never scales in on a forecast alone).
//!
//! The detector ([`ScaleDetector::observe`]) is pure and edge-triggered: one event per
//! episode, when the condition has held `*_hold_intervals` in a row; the episode ends when the
//! condition stops holding. Events go to the agent's JSON output, a Prometheus counter
//! (`shadow_scale_events_total{direction,cause,resource,cgroup}`) and an optional webhook
//! ([`Webhook`]: HTTP POST of the event as JSON, from a background thread, never blocking the
//! allocator).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender, TrySendError};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::policy::{ForecastInput, PolicyConfig, Rails, Resource};

/// When scaling events are emitted (`[allocate.scale]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScaleRule {
    /// Emit events at all. Default true.
    pub enabled: bool,
    /// Intervals in a row the forecast need must exceed the node's capacity before a
    /// scale-out event. Default 2.
    pub out_hold_intervals: u32,
    /// A confident need at or below this fraction of the capacity is a surplus. Default 0.5.
    pub in_surplus_frac: f64,
    /// Intervals in a row the surplus must last before a scale-in suggestion. Default 36.
    pub in_hold_intervals: u32,
}

impl Default for ScaleRule {
    fn default() -> Self {
        ScaleRule {
            enabled: true,
            out_hold_intervals: 2,
            in_surplus_frac: 0.5,
            in_hold_intervals: 36,
        }
    }
}

impl ScaleRule {
    /// Checks the values; `Err((key, reason))` names the offending key.
    pub fn validate(&self) -> Result<(), (&'static str, &'static str)> {
        if self.out_hold_intervals == 0 {
            return Err(("out_hold_intervals", "must be at least 1 interval"));
        }
        if self.in_hold_intervals == 0 {
            return Err(("in_hold_intervals", "must be at least 1 interval"));
        }
        if !(self.in_surplus_frac > 0.0 && self.in_surplus_frac < 1.0) {
            return Err(("in_surplus_frac", "must be a fraction in (0, 1)"));
        }
        Ok(())
    }
}

/// Which way capacity should move.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    /// More capacity is needed than this node can give the primary.
    Out,
    /// A sustained surplus: capacity could be removed (a suggestion, never acted on).
    In,
}

impl Direction {
    /// `out` / `in`.
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::Out => "out",
            Direction::In => "in",
        }
    }
}

/// Why a scaling event was emitted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScaleCause {
    /// The forecast's need against the rails' `max` ([`ScaleDetector`]).
    #[default]
    Forecast,
    /// On Kubernetes, the kubelet found that the node cannot fit a resize the allocator
    /// asked for: the node's free capacity, below the rails' `max`, is what ran out.
    ResizeInfeasible,
}

impl ScaleCause {
    /// `forecast` / `resize_infeasible`.
    pub fn as_str(self) -> &'static str {
        match self {
            ScaleCause::Forecast => "forecast",
            ScaleCause::ResizeInfeasible => "resize_infeasible",
        }
    }
}

/// What [`ScaleDetector::observe`] found.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleSignal {
    pub direction: Direction,
    /// The forecast need: upper bound over the lead time × (1 + headroom).
    pub need: f64,
    /// What this node can give the primary (the rails' `max`).
    pub capacity: f64,
    /// Intervals the condition has held.
    pub held_intervals: u32,
}

/// One scaling event as emitted (JSON line, webhook body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScaleEvent {
    /// Always `"scale"` (tells event lines apart on the output stream).
    pub event: String,
    pub direction: Direction,
    /// Why: the forecast against the rails, or a resize the node could not fit.
    #[serde(default)]
    pub cause: ScaleCause,
    pub cgroup: String,
    pub resource: Resource,
    pub time_ms: u64,
    /// Forecast need (upper bound × (1 + headroom)), in the resource's unit (cores, bytes);
    /// for `resize_infeasible`, the limit asked for.
    pub need: f64,
    /// What this node can give the primary within its rails; for `resize_infeasible`, the
    /// limit the kubelet keeps in force.
    pub capacity: f64,
    /// `need − capacity` (positive: missing; negative: surplus).
    pub shortfall: f64,
    /// The forecast behind it (point, interval, level, coverage, lead in intervals); for
    /// `resize_infeasible`, the latest forecast if there is one (else null).
    pub forecast: Option<ForecastInput>,
    /// Lead time of the forecast: intervals and seconds ahead the bound covers (0 for
    /// `resize_infeasible`: the shortfall is now).
    pub lead_intervals: u32,
    pub lead_s: f64,
    /// Usage over the last interval (cores, bytes), if known.
    pub usage: Option<f64>,
    pub held_intervals: u32,
    /// For `resize_infeasible`: the pod and container, and the kubelet's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Whether Shadow acted on it itself: always false (events are for the orchestrator;
    /// a scale-in suggestion in particular is never acted on from a forecast alone).
    pub acted: bool,
}

/// Per resource: the streaks of the edge-triggered conditions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ScaleDetector {
    out_streak: u32,
    in_streak: u32,
}

impl ScaleDetector {
    /// One interval. Scale-out: the forecast is well formed and has a track record
    /// (coverage known and not below `level − coverage_tolerance`), and its need exceeds the
    /// capacity; the width is not required to be narrow (a wide interval reaching above the
    /// capacity is exactly the risk to report). Scale-in: the forecast is confident by the
    /// allocator's own rule and its need is at most `in_surplus_frac` of the capacity.
    /// Returns a signal on the interval the condition reaches its hold, once per episode.
    pub fn observe(
        &mut self,
        rule: &ScaleRule,
        policy: &PolicyConfig,
        rails: &Rails,
        forecast: Option<&ForecastInput>,
    ) -> Option<ScaleSignal> {
        let Some(f) = forecast.filter(|_| rule.enabled) else {
            *self = ScaleDetector::default();
            return None;
        };
        let verdict = policy.confidence.assess(f);
        let well_formed = [f.point, f.lower, f.upper].iter().all(|v| v.is_finite())
            && f.upper >= f.lower
            && f.upper >= 0.0;
        let track_record = f
            .coverage
            .is_some_and(|c| f.level - c <= policy.confidence.coverage_tolerance);
        let need = f.upper.max(0.0) * (1.0 + policy.headroom);
        let capacity = rails.max;
        let out = well_formed && track_record && need > capacity;
        let surplus = verdict.confident && need <= rule.in_surplus_frac * capacity;
        self.out_streak = if out {
            self.out_streak.saturating_add(1)
        } else {
            0
        };
        self.in_streak = if surplus {
            self.in_streak.saturating_add(1)
        } else {
            0
        };
        let signal = |direction, held_intervals| ScaleSignal {
            direction,
            need,
            capacity,
            held_intervals,
        };
        if self.out_streak == rule.out_hold_intervals {
            Some(signal(Direction::Out, self.out_streak))
        } else if self.in_streak == rule.in_hold_intervals {
            Some(signal(Direction::In, self.in_streak))
        } else {
            None
        }
    }
}

/// Counters of a [`Webhook`].
#[derive(Debug, Default)]
pub struct WebhookStats {
    pub sent: AtomicU64,
    pub failed: AtomicU64,
    /// Events dropped because the queue was full (the receiver is slow or down).
    pub dropped: AtomicU64,
}

/// The endpoint of a webhook, parsed from `http://host:port/path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WebhookUrl {
    pub authority: String,
    pub path: String,
    pub uri: hyper::Uri,
}

impl WebhookUrl {
    /// Parses `url`; only plain `http://` is supported (a receiver on the node or a sidecar
    /// terminates TLS if needed).
    pub fn parse(url: &str) -> Result<WebhookUrl, String> {
        let uri: hyper::Uri = url
            .parse()
            .map_err(|e| format!("{url:?} is not a URL: {e}"))?;
        if uri.scheme_str() != Some("http") {
            return Err(format!(
                "{url:?}: only http:// URLs are supported (terminate TLS in a local proxy)"
            ));
        }
        let Some(auth) = uri.authority() else {
            return Err(format!("{url:?} has no host"));
        };
        let authority = if auth.port_u16().is_some() {
            auth.as_str().to_owned()
        } else {
            format!("{}:80", auth.host())
        };
        let path = uri
            .path_and_query()
            .map_or("/".to_owned(), |p| p.as_str().to_owned());
        Ok(WebhookUrl {
            authority,
            path,
            uri,
        })
    }
}

/// Queue length of the webhook's sender thread.
const WEBHOOK_QUEUE: usize = 64;

/// POSTs scaling events as JSON to a URL from a background thread (its own small tokio
/// runtime and hyper's HTTP/1 client), so a slow or absent receiver never delays the
/// allocator: a full queue drops the event and counts it.
#[derive(Debug)]
pub struct Webhook {
    tx: SyncSender<ScaleEvent>,
    stats: Arc<WebhookStats>,
    url: String,
}

impl Webhook {
    /// Starts the sender thread for `url` (see [`WebhookUrl::parse`]).
    pub fn start(url: &str, timeout: Duration) -> Result<Webhook, String> {
        let target = WebhookUrl::parse(url)?;
        let (tx, rx) = sync_channel::<ScaleEvent>(WEBHOOK_QUEUE);
        let stats = Arc::new(WebhookStats::default());
        let st = Arc::clone(&stats);
        let shown = url.to_owned();
        std::thread::Builder::new()
            .name("scale-webhook".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        tracing::error!(error = %e, "scale webhook: no runtime; events are not posted");
                        return;
                    }
                };
                while let Ok(ev) = rx.recv() {
                    // The timeout is made inside the runtime (it needs its timer).
                    let result = rt.block_on(async {
                        tokio::time::timeout(timeout, post(&target, &ev)).await
                    });
                    match result {
                        Ok(Ok(())) => {
                            st.sent.fetch_add(1, Ordering::Relaxed);
                        }
                        Ok(Err(e)) => {
                            st.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(url = %shown, error = %e, "scale webhook failed");
                        }
                        Err(_) => {
                            st.failed.fetch_add(1, Ordering::Relaxed);
                            tracing::warn!(url = %shown, ?timeout, "scale webhook timed out");
                        }
                    }
                }
            })
            .map_err(|e| format!("cannot start the webhook thread: {e}"))?;
        Ok(Webhook {
            tx,
            stats,
            url: url.to_owned(),
        })
    }

    /// Queues `ev` (never blocks).
    pub fn send(&self, ev: &ScaleEvent) {
        match self.tx.try_send(ev.clone()) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.stats.dropped.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(url = %self.url, "scale webhook queue full: event dropped");
            }
        }
    }

    /// Sent / failed / dropped counts.
    pub fn stats(&self) -> &WebhookStats {
        &self.stats
    }
}

async fn post(target: &WebhookUrl, ev: &ScaleEvent) -> Result<(), String> {
    use http_body_util::Full;
    use hyper::body::Bytes;
    let body = serde_json::to_vec(ev).map_err(|e| e.to_string())?;
    let stream = tokio::net::TcpStream::connect(&target.authority)
        .await
        .map_err(|e| format!("connect {}: {e}", target.authority))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP handshake: {e}"))?;
    tokio::spawn(conn);
    let req = hyper::Request::post(&target.path)
        .header(hyper::header::HOST, target.authority.as_str())
        .header(hyper::header::CONTENT_TYPE, "application/json")
        .header("user-agent", "shadow-agent")
        .body(Full::new(Bytes::from(body)))
        .map_err(|e| e.to_string())?;
    let resp = sender
        .send_request(req)
        .await
        .map_err(|e| format!("POST {}: {e}", target.uri))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("POST {}: HTTP {}", target.uri, resp.status()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocate::sim::{adaptive_forecast, AdaptiveSim};

    fn f(upper: f64, coverage: Option<f64>) -> ForecastInput {
        ForecastInput {
            point: upper * 0.9,
            lower: upper * 0.8,
            upper,
            level: 0.8,
            coverage,
            horizon_intervals: 3,
            shrink_upper: None,
        }
    }

    fn rails(max: f64) -> Rails {
        Rails {
            max,
            ..Rails::cpu(max)
        }
    }

    #[test]
    fn event_lines_carry_their_cause_and_older_lines_still_parse() {
        let line = r#"{"event":"scale","direction":"out","cgroup":"web","resource":"cpu",
            "time_ms":1,"need":2.3,"capacity":2.0,"shortfall":0.3,"forecast":{"point":2.0,
            "lower":1.5,"upper":2.0,"level":0.9,"coverage":0.9,"horizon_intervals":3},
            "lead_intervals":3,"lead_s":30.0,"usage":1.4,"held_intervals":2,"acted":false}"#;
        let old: ScaleEvent = serde_json::from_str(line).expect("a line without a cause");
        assert_eq!(old.cause, ScaleCause::Forecast);
        assert_eq!(old.message, None);
        let mut ev = old.clone();
        ev.cause = ScaleCause::ResizeInfeasible;
        ev.forecast = None;
        ev.message = Some("pod shop/web-0 container app".to_owned());
        let v = serde_json::to_value(&ev).unwrap();
        assert_eq!(v["cause"], ScaleCause::ResizeInfeasible.as_str());
        assert!(v["forecast"].is_null());
        assert_eq!(v["message"], "pod shop/web-0 container app");
        let back: ScaleEvent = serde_json::from_value(v).unwrap();
        assert_eq!(back, ev);
        // A forecast event has no message key at all.
        assert!(serde_json::to_value(&old).unwrap().get("message").is_none());
    }

    #[test]
    fn scale_out_once_per_episode_after_the_hold() {
        let rule = ScaleRule::default();
        let p = PolicyConfig::default();
        let r = rails(2.0);
        let mut d = ScaleDetector::default();
        // 2.0 × 1.15 = 2.3 > 2: over capacity.
        assert_eq!(d.observe(&rule, &p, &r, Some(&f(2.0, Some(0.8)))), None);
        let s = d.observe(&rule, &p, &r, Some(&f(2.0, Some(0.8)))).unwrap();
        assert_eq!(s.direction, Direction::Out);
        assert!((s.need - 2.3).abs() < 1e-9 && s.capacity == 2.0 && s.held_intervals == 2);
        for _ in 0..5 {
            assert_eq!(d.observe(&rule, &p, &r, Some(&f(2.5, Some(0.8)))), None);
        }
        // The episode ends; a new one emits again.
        assert_eq!(d.observe(&rule, &p, &r, Some(&f(1.0, Some(0.8)))), None);
        assert_eq!(d.observe(&rule, &p, &r, Some(&f(2.5, Some(0.8)))), None);
        assert!(d.observe(&rule, &p, &r, Some(&f(2.5, Some(0.8)))).is_some());
    }

    #[test]
    fn scale_out_needs_a_track_record_but_not_a_narrow_interval() {
        let rule = ScaleRule {
            out_hold_intervals: 1,
            ..ScaleRule::default()
        };
        let p = PolicyConfig::default();
        let r = rails(2.0);
        let mut d = ScaleDetector::default();
        assert_eq!(d.observe(&rule, &p, &r, Some(&f(3.0, None))), None);
        // Under-covering forecasts are not trusted.
        assert_eq!(d.observe(&rule, &p, &r, Some(&f(3.0, Some(0.5)))), None);
        assert_eq!(d.observe(&rule, &p, &r, None), None);
        let wide = ForecastInput {
            lower: 0.0,
            ..f(3.0, Some(0.85))
        };
        assert!(!p.confidence.assess(&wide).confident);
        assert_eq!(
            d.observe(&rule, &p, &r, Some(&wide)).map(|s| s.direction),
            Some(Direction::Out)
        );
        let off = ScaleRule {
            enabled: false,
            ..rule
        };
        assert_eq!(
            ScaleDetector::default().observe(&off, &p, &r, Some(&wide)),
            None
        );
    }

    #[test]
    fn scale_in_only_after_a_sustained_confident_surplus() {
        let rule = ScaleRule {
            in_hold_intervals: 4,
            ..ScaleRule::default()
        };
        let p = PolicyConfig::default();
        let r = rails(4.0);
        let mut d = ScaleDetector::default();
        let low = f(1.0, Some(0.8)); // need 1.15 <= 2.0
        for _ in 0..3 {
            assert_eq!(d.observe(&rule, &p, &r, Some(&low)), None);
        }
        // Broken by one higher interval: starts over.
        assert_eq!(d.observe(&rule, &p, &r, Some(&f(3.0, Some(0.8)))), None);
        for _ in 0..3 {
            assert_eq!(d.observe(&rule, &p, &r, Some(&low)), None);
        }
        let s = d.observe(&rule, &p, &r, Some(&low)).unwrap();
        assert_eq!((s.direction, s.held_intervals), (Direction::In, 4));
        assert_eq!(d.observe(&rule, &p, &r, Some(&low)), None);
    }

    /// A demand ramp, forecast by the agent's default forecaster: the scale-out event comes
    /// before the demand itself crosses the node's capacity.
    #[test]
    fn scale_out_leads_a_ramp_past_capacity() {
        let capacity = 4.0;
        // Flat at 1 core with noise, then a ramp of +0.02 cores per interval.
        let u: Vec<f64> = (0..600)
            .map(|i| {
                let base = if i < 300 {
                    1.0
                } else {
                    1.0 + 0.02 * (i - 300) as f64
                };
                base + 0.05 * crate::forecast::test_noise(i)
            })
            .collect();
        let cross = u
            .iter()
            .position(|v| *v > capacity)
            .expect("the ramp crosses");
        let sim = AdaptiveSim {
            lead: 6,
            ..AdaptiveSim::default()
        };
        let mut fc = adaptive_forecast(sim);
        let (p, rule, r) = (
            PolicyConfig::default(),
            ScaleRule::default(),
            rails(capacity),
        );
        let mut d = ScaleDetector::default();
        let mut hits = std::collections::VecDeque::new();
        let mut last: Option<ForecastInput> = None;
        let mut first_out = None;
        for t in 1..u.len() {
            if let Some(l) = last {
                hits.push_back(u[t - 1] >= l.lower && u[t - 1] <= l.upper);
                if hits.len() > 48 {
                    hits.pop_front();
                }
            }
            let mut f = fc(&u[..t]);
            if let Some(f) = f.as_mut() {
                if hits.len() >= 24 {
                    f.coverage =
                        Some(hits.iter().filter(|h| **h).count() as f64 / hits.len() as f64);
                }
            }
            last = f;
            if let Some(s) = d.observe(&rule, &p, &r, f.as_ref()) {
                if s.direction == Direction::Out && first_out.is_none() {
                    first_out = Some(t);
                }
            }
        }
        let first_out = first_out.expect("a scale-out event");
        assert!(
            first_out < cross,
            "event at {first_out}, demand crossed at {cross}"
        );
        eprintln!("scale-out at interval {first_out}, demand over capacity from {cross}");
    }

    #[test]
    fn webhook_urls() {
        let u = WebhookUrl::parse("http://127.0.0.1:9000/hooks/scale?x=1").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("127.0.0.1:9000", "/hooks/scale?x=1")
        );
        let u = WebhookUrl::parse("http://receiver").unwrap();
        assert_eq!(
            (u.authority.as_str(), u.path.as_str()),
            ("receiver:80", "/")
        );
        assert!(WebhookUrl::parse("https://x/")
            .unwrap_err()
            .contains("http://"));
        assert!(WebhookUrl::parse("not a url").is_err());
        assert!(ScaleRule::default().validate().is_ok());
        let bad = ScaleRule {
            in_surplus_frac: 1.5,
            ..ScaleRule::default()
        };
        assert_eq!(bad.validate().unwrap_err().0, "in_surplus_frac");
    }
}
