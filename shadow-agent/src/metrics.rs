//! Prometheus metrics and a health endpoint.
//!
//! Kernel counters are absolute; the agent feeds each observation as the delta since the
//! previous one, so the exported counters are monotonic `_total`s as Prometheus expects
//! (a counter that went backwards, e.g. after a replica restart, restarts from its new value).

use std::{
    collections::HashMap,
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use http_body_util::Full;
use hyper::{body::Bytes, server::conn::http1, service::service_fn, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::{Registry, Unit},
};

use crate::{mirror::Counters, shadow::ReplicaStatus};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CgroupLabels {
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ScaleLabels {
    direction: String,
    cause: String,
    resource: String,
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabels {
    verdict: String,
    resource: String,
    cgroup: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ReplicaLabels {
    replica: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    replica: String,
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ForecastLabels {
    cgroup: String,
    resource: String,
    level: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ActionLabels {
    action: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StateLabels {
    state: String,
}

/// The agent's metrics.
pub struct Metrics {
    autoscale_decisions: Family<ActionLabels, Counter>,
    reloads: Family<ResultLabels, Counter>,
    sample_rate: Gauge<f64, std::sync::atomic::AtomicU64>,
    interfaces_missing: Gauge,
    allocate_groups: Family<StateLabels, Gauge>,
    registry: Registry,
    mirror_packets: Family<OutcomeLabels, Counter>,
    mirror_cloned_packets: Counter,
    mirror_cloned_bytes: Counter,
    cgroup_cpu: Family<CgroupLabels, Counter<f64, std::sync::atomic::AtomicU64>>,
    cgroup_memory: Family<CgroupLabels, Gauge>,
    replicas: Gauge,
    replica_restarts: Family<ReplicaLabels, Gauge>,
    discard_dropped: Family<ReplicaLabels, Counter>,
    discard_refused: Family<RefusedLabels, Counter>,
    scale_events: Family<ScaleLabels, Counter>,
    whatif_verdicts: Family<VerdictLabels, Counter>,
    forecast_upper: Family<ForecastLabels, Gauge<f64, std::sync::atomic::AtomicU64>>,
    /// Previous absolute values by key, to turn them into deltas.
    last: Mutex<HashMap<String, f64>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::default();
        let mirror_packets = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "shadow_mirror_packets",
            "Packets seen by the mirror's TC program, by outcome",
            mirror_packets.clone(),
        );
        let mirror_cloned_packets = Counter::default();
        registry.register(
            "shadow_mirror_cloned_packets",
            "Packets cloned to the shadow",
            mirror_cloned_packets.clone(),
        );
        let mirror_cloned_bytes = Counter::default();
        registry.register_with_unit(
            "shadow_mirror_cloned",
            "Bytes cloned to the shadow (whole frames)",
            Unit::Bytes,
            mirror_cloned_bytes.clone(),
        );
        let cgroup_cpu =
            Family::<CgroupLabels, Counter<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register_with_unit(
            "shadow_cgroup_cpu",
            "On-CPU time of a tracked cgroup, accounted from sched_switch in the kernel",
            Unit::Seconds,
            cgroup_cpu.clone(),
        );
        let cgroup_memory = Family::<CgroupLabels, Gauge>::default();
        registry.register_with_unit(
            "shadow_cgroup_memory",
            "Memory charged to a profiled cgroup (cgroup v2 memory.current, v1 memory.usage_in_bytes)",
            Unit::Bytes,
            cgroup_memory.clone(),
        );
        let replicas = Gauge::default();
        registry.register(
            "shadow_replicas",
            "Shadow replicas running",
            replicas.clone(),
        );
        let replica_restarts = Family::<ReplicaLabels, Gauge>::default();
        registry.register(
            "shadow_replica_restarts",
            "Restarts of a shadow replica since the agent started",
            replica_restarts.clone(),
        );
        let discard_dropped = Family::<ReplicaLabels, Counter>::default();
        registry.register(
            "shadow_discard_dropped_packets",
            "Packets a shadow replica transmitted, dropped at its veth",
            discard_dropped.clone(),
        );
        let discard_refused = Family::<RefusedLabels, Counter>::default();
        registry.register(
            "shadow_discard_refused",
            "Connects (kind=connect) and sends (kind=sendmsg) of a replica refused outside the allowlist",
            discard_refused.clone(),
        );
        let scale_events = Family::<ScaleLabels, Counter>::default();
        registry.register(
            "shadow_scale_events",
            "Scaling events of the allocator: the forecast need exceeds what the node can give \
             the primary (direction=out) or stays well below it (direction=in, a suggestion); \
             cause=resize_infeasible: the kubelet found the node cannot fit a resize",
            scale_events.clone(),
        );
        let whatif_verdicts = Family::<VerdictLabels, Counter>::default();
        registry.register(
            "shadow_whatif_verdicts",
            "Verdicts of what-if replicas run at a forecast shrink of the primary before it is \
             written ([allocate.whatif]), by verdict (pass, fail)",
            whatif_verdicts.clone(),
        );
        let forecast_upper =
            Family::<ForecastLabels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
        registry.register(
            "shadow_forecast_upper_bound",
            "Highest upper bound of a tracked cgroup's forecast interval (by resource and level, percent) over the forecast horizon, in the resource's unit (cpu: cores, memory: bytes)",
            forecast_upper.clone(),
        );
        let autoscale_decisions = Family::<ActionLabels, Counter>::default();
        registry.register(
            "shadow_autoscale_decisions",
            "Autoscaling decisions of the shadow group, by action (hold, scale_up, scale_down, lower_sample, raise_sample)",
            autoscale_decisions.clone(),
        );
        let reloads = Family::<ResultLabels, Counter>::default();
        registry.register(
            "shadow_config_reloads",
            "Configuration reloads on SIGHUP, by result (ok; error: the file did not load or a change could not be applied)",
            reloads.clone(),
        );
        let sample_rate = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
        registry.register(
            "shadow_mirror_sample_rate",
            "Fraction of the selected flows the mirror currently clones",
            sample_rate.clone(),
        );
        let interfaces_missing = Gauge::default();
        registry.register(
            "shadow_mirror_interfaces_missing",
            "The mirror's configured interfaces (primary, shadow) that are gone now: nothing is mirrored from or to them until they are back",
            interfaces_missing.clone(),
        );
        let allocate_groups = Family::<StateLabels, Gauge>::default();
        registry.register(
            "shadow_allocate_groups",
            "Groups the allocator manages, by state (managed; missing: its directory is gone, no steps until it is back)",
            allocate_groups.clone(),
        );
        Metrics {
            interfaces_missing,
            allocate_groups,
            scale_events,
            whatif_verdicts,
            forecast_upper,
            autoscale_decisions,
            reloads,
            sample_rate,
            registry,
            mirror_packets,
            mirror_cloned_packets,
            mirror_cloned_bytes,
            cgroup_cpu,
            cgroup_memory,
            replicas,
            replica_restarts,
            discard_dropped,
            discard_refused,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// The increase of `key` since the last call (the whole value the first time or after
    /// the source was reset).
    fn delta(&self, key: String, now: f64) -> f64 {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let prev = last.insert(key, now).unwrap_or(0.0);
        if now >= prev {
            now - prev
        } else {
            now
        }
    }

    pub fn observe_mirror(&self, c: &Counters) {
        for (outcome, v) in [
            ("not_ip", c.not_ip),
            ("no_match", c.no_match),
            ("disabled", c.disabled),
            ("matched", c.matched),
            ("clone_failed", c.clone_failed),
            ("rewrite_failed", c.rewrite_failed),
            ("restore_failed", c.restore_failed),
        ] {
            let d = self.delta(format!("mirror/{outcome}"), v as f64) as u64;
            self.mirror_packets
                .get_or_create(&OutcomeLabels {
                    outcome: outcome.to_string(),
                })
                .inc_by(d);
        }
        self.mirror_cloned_packets
            .inc_by(self.delta("mirror/cloned".into(), c.cloned as f64) as u64);
        self.mirror_cloned_bytes
            .inc_by(self.delta("mirror/cloned_bytes".into(), c.cloned_bytes as f64) as u64);
    }

    /// One what-if verdict on a forecast shrink.
    pub fn observe_whatif_verdict(&self, pass: bool, resource: &str, cgroup: &str) {
        self.whatif_verdicts
            .get_or_create(&VerdictLabels {
                verdict: if pass { "pass" } else { "fail" }.to_owned(),
                resource: resource.to_owned(),
                cgroup: cgroup.to_owned(),
            })
            .inc();
    }

    /// One scaling event of the allocator.
    pub fn observe_scale_event(&self, direction: &str, cause: &str, resource: &str, cgroup: &str) {
        self.scale_events
            .get_or_create(&ScaleLabels {
                direction: direction.to_owned(),
                cause: cause.to_owned(),
                resource: resource.to_owned(),
                cgroup: cgroup.to_owned(),
            })
            .inc();
    }

    /// How many of the mirror's configured interfaces are gone now.
    pub fn set_interfaces_missing(&self, n: usize) {
        self.interfaces_missing.set(n as i64);
    }

    /// The allocator's groups: how many it manages and how many of those are missing.
    pub fn set_allocate_groups(&self, groups: usize, missing: usize) {
        for (state, n) in [
            ("managed", groups - missing.min(groups)),
            ("missing", missing),
        ] {
            self.allocate_groups
                .get_or_create(&StateLabels {
                    state: state.to_owned(),
                })
                .set(n as i64);
        }
    }

    /// One configuration reload (SIGHUP); `ok`: loaded and every change applied.
    pub fn observe_reload(&self, ok: bool) {
        self.reloads
            .get_or_create(&ResultLabels {
                result: if ok { "ok" } else { "error" }.to_owned(),
            })
            .inc();
    }

    /// One autoscaling decision (`Action::as_str`).
    pub fn observe_autoscale(&self, action: &str) {
        self.autoscale_decisions
            .get_or_create(&ActionLabels {
                action: action.to_string(),
            })
            .inc();
    }

    /// The latest forecast's highest upper bound over the horizon at `level` (percent).
    pub fn observe_forecast_upper(&self, cgroup: &str, resource: &str, level: f64, upper: f64) {
        self.forecast_upper
            .get_or_create(&ForecastLabels {
                cgroup: cgroup.to_string(),
                resource: resource.to_string(),
                level: format!("{level}"),
            })
            .set(upper);
    }

    pub fn set_sample_rate(&self, rate: f64) {
        self.sample_rate.set(rate);
    }

    pub fn observe_cgroup_memory(&self, cgroup: &str, bytes: u64) {
        self.cgroup_memory
            .get_or_create(&CgroupLabels {
                cgroup: cgroup.to_string(),
            })
            .set(i64::try_from(bytes).unwrap_or(i64::MAX));
    }

    pub fn observe_cgroup_cpu(&self, cgroup: &str, cpu_seconds: f64) {
        let d = self.delta(format!("cpu/{cgroup}"), cpu_seconds);
        self.cgroup_cpu
            .get_or_create(&CgroupLabels {
                cgroup: cgroup.to_string(),
            })
            .inc_by(d);
    }

    /// Drop every series of a cgroup that is no longer profiled (reload): its CPU counter and
    /// its forecasts' upper bounds at `levels` (percent).
    pub fn forget_cgroup(&self, cgroup: &str, levels: &[f64]) {
        let labels = CgroupLabels {
            cgroup: cgroup.to_string(),
        };
        self.cgroup_cpu.remove(&labels);
        self.cgroup_memory.remove(&labels);
        self.last
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&format!("cpu/{cgroup}"));
        for resource in ["cpu", "memory"] {
            for level in levels {
                self.forecast_upper.remove(&ForecastLabels {
                    cgroup: cgroup.to_string(),
                    resource: resource.to_string(),
                    level: format!("{level}"),
                });
            }
        }
    }

    pub fn observe_replicas(&self, status: &[ReplicaStatus]) {
        self.replicas
            .set(status.iter().filter(|r| r.running).count() as i64);
        for r in status {
            let replica = r.netns.clone();
            self.replica_restarts
                .get_or_create(&ReplicaLabels {
                    replica: replica.clone(),
                })
                .set(i64::from(r.restarts));
            if let Some(d) = &r.discard {
                let dropped = self.delta(format!("drop/{replica}"), d.tx_dropped_packets as f64);
                self.discard_dropped
                    .get_or_create(&ReplicaLabels {
                        replica: replica.clone(),
                    })
                    .inc_by(dropped as u64);
                for (kind, v) in [
                    ("connect", d.connect_refused),
                    ("sendmsg", d.sendmsg_refused),
                ] {
                    let inc = self.delta(format!("refused/{replica}/{kind}"), v as f64);
                    self.discard_refused
                        .get_or_create(&RefusedLabels {
                            replica: replica.clone(),
                            kind: kind.to_string(),
                        })
                        .inc_by(inc as u64);
                }
            }
        }
    }

    /// The OpenMetrics text exposition.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("metrics.listen: binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Bind `addr` now (so a bad address fails before anything else starts) and return the
/// listener for [`serve`].
pub async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, MetricsError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| MetricsError::Bind { addr, source })
}

/// Serve `/metrics` and `/healthz` until the task is dropped.
pub async fn serve(listener: tokio::net::TcpListener, metrics: Arc<Metrics>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let metrics = Arc::clone(&metrics);
        tokio::spawn(async move {
            let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                let metrics = Arc::clone(&metrics);
                async move { Ok::<_, Infallible>(respond(&req, &metrics)) }
            });
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

fn respond(req: &Request<hyper::body::Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match req.uri().path() {
        "/metrics" => (
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            metrics.encode(),
        ),
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = hyper::header::HeaderValue::from_str(ctype) {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scale_events_are_counted_by_direction() {
        let m = Metrics::new();
        m.observe_scale_event("out", "forecast", "cpu", "shop/web");
        m.observe_scale_event("out", "forecast", "cpu", "shop/web");
        m.observe_scale_event("out", "resize_infeasible", "cpu", "shop/web");
        m.observe_scale_event("in", "forecast", "memory", "shop/web");
        let text = m.encode();
        assert!(
            text.contains(
                "shadow_scale_events_total{direction=\"out\",cause=\"forecast\",resource=\"cpu\",cgroup=\"shop/web\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "shadow_scale_events_total{direction=\"out\",cause=\"resize_infeasible\",resource=\"cpu\",cgroup=\"shop/web\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("direction=\"in\",cause=\"forecast\",resource=\"memory\""),
            "{text}"
        );
    }

    #[test]
    fn missing_interfaces_and_groups_are_gauges() {
        let m = Metrics::new();
        m.set_interfaces_missing(1);
        assert!(m.encode().contains("shadow_mirror_interfaces_missing 1"));
        m.set_interfaces_missing(0);
        assert!(m.encode().contains("shadow_mirror_interfaces_missing 0"));
        m.set_allocate_groups(3, 1);
        let text = m.encode();
        assert!(
            text.contains("shadow_allocate_groups{state=\"managed\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("shadow_allocate_groups{state=\"missing\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn reloads_are_counted_by_result() {
        let m = Metrics::new();
        m.observe_reload(true);
        m.observe_reload(false);
        m.observe_reload(true);
        let text = m.encode();
        assert!(
            text.contains("shadow_config_reloads_total{result=\"ok\"} 2"),
            "{text}"
        );
        assert!(
            text.contains("shadow_config_reloads_total{result=\"error\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_forgotten_cgroup_leaves_no_series() {
        let m = Metrics::new();
        for cg in ["/cg/a", "/cg/b"] {
            m.observe_cgroup_cpu(cg, 2.0);
            m.observe_cgroup_memory(cg, 1 << 20);
            m.observe_forecast_upper(cg, "cpu", 80.0, 1.5);
            m.observe_forecast_upper(cg, "memory", 95.0, 1e9);
        }
        m.forget_cgroup("/cg/a", &[80.0, 95.0]);
        let text = m.encode();
        assert!(!text.contains("/cg/a"), "{text}");
        assert!(
            text.contains("shadow_cgroup_cpu_seconds_total{cgroup=\"/cg/b\"} 2")
                && text.contains("shadow_cgroup_memory_bytes{cgroup=\"/cg/b\"} 1048576"),
            "{text}"
        );
        assert!(
            text.contains("cgroup=\"/cg/b\",resource=\"memory\""),
            "{text}"
        );
        // Back again, its counter starts from what it reports then.
        m.observe_cgroup_cpu("/cg/a", 0.5);
        assert!(
            m.encode()
                .contains("shadow_cgroup_cpu_seconds_total{cgroup=\"/cg/a\"} 0.5"),
            "{}",
            m.encode()
        );
    }

    #[test]
    fn whatif_verdicts_are_counted() {
        let m = Metrics::new();
        m.observe_whatif_verdict(false, "cpu", "shop/web");
        m.observe_whatif_verdict(true, "cpu", "shop/web");
        m.observe_whatif_verdict(false, "cpu", "shop/web");
        let text = m.encode();
        assert!(
            text.contains(
                "shadow_whatif_verdicts_total{verdict=\"fail\",resource=\"cpu\",cgroup=\"shop/web\"} 2"
            ),
            "{text}"
        );
        assert!(text.contains("verdict=\"pass\""), "{text}");
    }

    #[test]
    fn counters_are_monotonic_deltas_with_conventional_names() {
        let m = Metrics::new();
        let c = Counters {
            seen: 10,
            matched: 6,
            cloned: 6,
            cloned_bytes: 600,
            no_match: 4,
            ..Counters::default()
        };
        m.observe_mirror(&c);
        m.observe_mirror(&Counters {
            cloned: 9,
            cloned_bytes: 900,
            ..c.clone()
        });
        m.observe_cgroup_cpu("/sys/fs/cgroup/unified/app", 1.5);
        m.observe_cgroup_cpu("/sys/fs/cgroup/unified/app", 2.0);
        let text = m.encode();
        assert!(
            text.contains("shadow_mirror_cloned_packets_total 9"),
            "{text}"
        );
        assert!(
            text.contains("shadow_mirror_cloned_bytes_total 900"),
            "{text}"
        );
        assert!(
            text.contains("shadow_mirror_packets_total{outcome=\"no_match\"} 4"),
            "{text}"
        );
        assert!(
            text.contains(
                "shadow_cgroup_cpu_seconds_total{cgroup=\"/sys/fs/cgroup/unified/app\"} 2.0"
            ),
            "{text}"
        );
        assert!(text.ends_with("# EOF\n"));
    }
}
