//! The allocator on a Kubernetes node: a kubelet-owned group's limits are changed through
//! the pod's `resize` subresource (in-place pod resize, Kubernetes >= 1.33), never by writing
//! the cgroup, which the kubelet owns and rewrites.
//!
//! [`KubeBackend`] wraps the group's cgroup backend: usage, throttling, pressure and the
//! limits in force are still read from cgroupfs (read only: what the kubelet applied), and
//! every change is a `PATCH` of `pods/<name>/resize` for the group's container:
//!
//! - the group is mapped to its pod by the pod UID in its path (`pod<uid>` with the cgroupfs
//!   driver, `*-pod<uid with _>.slice` with systemd), looked up among the node's pods
//!   (`fieldSelector=spec.nodeName=<node>`), and to its container by the container ID of
//!   the path's next component (`<id>`, `cri-containerd-<id>.scope`, `crio-<id>.scope`,
//!   `docker-<id>.scope`); a pod-level group must hold exactly one container;
//! - the pod's QoS class is kept, as a resize must: a Guaranteed container's requests move
//!   with its limits, a Burstable container's limit never goes below its request, and a
//!   BestEffort container is not given limits;
//! - the container's original resources are recorded before the first change (in the same
//!   record as a cgroup's original files) and patched back on exit and at the next start
//!   after a crash;
//! - cpusets stay with the kubelet's CPU manager: placement is refused.
//!
//! The client is `ureq` (blocking HTTPS with rustls), since the reconcile step is
//! synchronous and needs two calls: list the node's pods, patch one.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::backend::{Backend, BackendKind, Limits, Sample};
use super::cpuset::CpuSet;
use super::policy::Resource;
use super::{AllocateError, Result};

/// The in-cluster service account files.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// A pod list is read whole; a node's pods fit in far less.
const MAX_BODY: u64 = 64 << 20;

/// `[allocate.kubernetes]` as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKube {
    pub enabled: Option<bool>,
    /// Default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT` (in a pod).
    pub api_server: Option<String>,
    /// Default: the service account's token (read again for every request: it rotates).
    pub token_file: Option<PathBuf>,
    /// Default: the service account's `ca.crt` (for an `https://` server).
    pub ca_file: Option<PathBuf>,
    /// Default: `$NODE_NAME` (the DaemonSet sets it from `spec.nodeName`).
    pub node_name: Option<String>,
    pub timeout_ms: Option<u64>,
}

/// The validated section.
#[derive(Debug, Clone, PartialEq)]
pub struct KubeSpec {
    pub api_server: String,
    pub token_file: PathBuf,
    pub ca_file: Option<PathBuf>,
    pub node_name: String,
    pub timeout: Duration,
}

impl RawKube {
    /// `None` when off; `Err((key, reason))` naming the key under `allocate.kubernetes`.
    pub fn validate(
        self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> std::result::Result<Option<KubeSpec>, (String, String)> {
        if !self.enabled.unwrap_or(true) {
            return Ok(None);
        }
        let key = |k: &str| format!("allocate.kubernetes.{k}");
        let api_server =
            match self.api_server {
                Some(s) => s,
                None => match (
                    env("KUBERNETES_SERVICE_HOST"),
                    env("KUBERNETES_SERVICE_PORT"),
                ) {
                    (Some(h), Some(p)) if h.contains(':') => format!("https://[{h}]:{p}"),
                    (Some(h), Some(p)) => format!("https://{h}:{p}"),
                    _ => return Err((
                        key("api_server"),
                        "not set, and KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT are not in \
                         the environment (is the agent running in a pod?)"
                            .to_owned(),
                    )),
                },
            };
        let api_server = api_server.trim_end_matches('/').to_owned();
        let https = api_server.starts_with("https://");
        if !https && !api_server.starts_with("http://") {
            return Err((
                key("api_server"),
                format!("{api_server:?} is not an http:// or https:// URL"),
            ));
        }
        let node_name = match self.node_name.or_else(|| env("NODE_NAME")) {
            Some(n) if !n.trim().is_empty() => n.trim().to_owned(),
            _ => {
                return Err((
                    key("node_name"),
                    "not set, and NODE_NAME is not in the environment (the DaemonSet sets it \
                     from spec.nodeName)"
                        .to_owned(),
                ))
            }
        };
        let token_file = self
            .token_file
            .unwrap_or_else(|| Path::new(SERVICE_ACCOUNT_DIR).join("token"));
        let ca_file = match (self.ca_file, https) {
            (Some(c), _) => Some(c),
            (None, true) => Some(Path::new(SERVICE_ACCOUNT_DIR).join("ca.crt")),
            (None, false) => None,
        };
        let timeout_ms = self.timeout_ms.unwrap_or(5000);
        if timeout_ms == 0 {
            return Err((key("timeout_ms"), "must be at least 1 ms".to_owned()));
        }
        Ok(Some(KubeSpec {
            api_server,
            token_file,
            ca_file,
            node_name,
            timeout: Duration::from_millis(timeout_ms),
        }))
    }
}

fn read_ca(path: &Path) -> std::result::Result<Vec<ureq::tls::Certificate<'static>>, String> {
    let pem = std::fs::read(path).map_err(|e| format!("{} cannot be read: {e}", path.display()))?;
    let mut certs = Vec::new();
    for item in ureq::tls::parse_pem(&pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c),
            Ok(_) => {}
            Err(e) => return Err(format!("{} is not valid PEM: {e}", path.display())),
        }
    }
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// What a call to the API server returned when it was not a success.
#[derive(Debug)]
enum ApiError {
    /// No answer (connection, TLS, timeout).
    Transport(String),
    /// An HTTP status with the API's `Status.message` (or the body).
    Status(u16, String),
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ApiError::Transport(e) => write!(f, "{e}"),
            ApiError::Status(s, m) => write!(f, "HTTP {s}: {m}"),
        }
    }
}

/// A Kubernetes API client for the two calls the allocator makes.
pub struct KubeClient {
    agent: ureq::Agent,
    spec: KubeSpec,
}

impl std::fmt::Debug for KubeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeClient")
            .field("spec", &self.spec)
            .finish()
    }
}

impl KubeClient {
    /// The client for `spec`; the token and CA files are read here (at start, not when a
    /// config is checked away from the node). `Err` names the key and the problem.
    pub fn new(spec: &KubeSpec) -> Result<KubeClient> {
        let bad = |k: &str, reason: String| AllocateError::KubeConfig {
            key: format!("allocate.kubernetes.{k}"),
            reason,
        };
        if let Err(e) = std::fs::read(&spec.token_file) {
            return Err(bad(
                "token_file",
                format!("{} cannot be read: {e}", spec.token_file.display()),
            ));
        }
        let mut tls = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &spec.ca_file {
            let certs = read_ca(ca).map_err(|e| bad("ca_file", e))?;
            tls = tls.root_certs(ureq::tls::RootCerts::Specific(Arc::new(certs)));
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(spec.timeout))
            .http_status_as_error(false)
            .tls_config(tls.build())
            .build()
            .into();
        Ok(KubeClient {
            agent,
            spec: spec.clone(),
        })
    }

    fn token(&self) -> std::result::Result<String, ApiError> {
        std::fs::read_to_string(&self.spec.token_file)
            .map(|t| t.trim().to_owned())
            .map_err(|e| {
                ApiError::Transport(format!(
                    "the token file {} cannot be read: {e}",
                    self.spec.token_file.display()
                ))
            })
    }

    fn answer(
        r: std::result::Result<ureq::http::Response<ureq::Body>, ureq::Error>,
    ) -> std::result::Result<Value, ApiError> {
        let mut r = r.map_err(|e| ApiError::Transport(e.to_string()))?;
        let status = r.status().as_u16();
        let text = r
            .body_mut()
            .with_config()
            .limit(MAX_BODY)
            .read_to_string()
            .map_err(|e| ApiError::Transport(format!("reading the answer: {e}")))?;
        let v: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
        if (200..300).contains(&status) {
            return Ok(v);
        }
        let msg = v["message"]
            .as_str()
            .map(str::to_owned)
            .unwrap_or_else(|| text.chars().take(300).collect());
        Err(ApiError::Status(status, msg))
    }

    fn get(&self, path: &str) -> std::result::Result<Value, ApiError> {
        let url = format!("{}{path}", self.spec.api_server);
        let r = self
            .agent
            .get(&url)
            .header("Authorization", format!("Bearer {}", self.token()?))
            .header("Accept", "application/json")
            .call();
        Self::answer(r)
    }

    fn patch(&self, path: &str, body: &Value) -> std::result::Result<Value, ApiError> {
        let url = format!("{}{path}", self.spec.api_server);
        let r = self
            .agent
            .patch(&url)
            .header("Authorization", format!("Bearer {}", self.token()?))
            .header("Accept", "application/json")
            .header("Content-Type", "application/strategic-merge-patch+json")
            .send(body.to_string());
        Self::answer(r)
    }

    /// The pod with `uid` among this node's pods.
    fn pod_by_uid(&self, uid: &str) -> std::result::Result<Option<Value>, ApiError> {
        let list = self.get(&format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            percent(&self.spec.node_name)
        ))?;
        Ok(list["items"]
            .as_array()
            .and_then(|items| {
                items
                    .iter()
                    .find(|p| p["metadata"]["uid"].as_str() == Some(uid))
            })
            .cloned())
    }
}

/// Percent-encodes everything but unreserved characters (a node name is a DNS name, but a
/// config may hold anything).
fn percent(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The pod (and container) a kubelet-owned group belongs to, from its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodTarget {
    pub uid: String,
    /// None: a pod-level group.
    pub container_id: Option<String>,
}

/// Reads the pod UID (and the container ID of the next component, if any) from a group's
/// path; `Err` names what is wrong.
pub fn pod_target(name: &str) -> std::result::Result<PodTarget, String> {
    let parts: Vec<&str> = name.split('/').filter(|p| !p.is_empty()).collect();
    let Some(i) = parts
        .iter()
        .position(|c| super::reconcile::pod_uid(c).is_some())
    else {
        return Err(format!(
            "{name:?} has no pod component (pod<uid> or *-pod<uid>.slice): only a pod's or a \
             container's cgroup can be resized through the API"
        ));
    };
    let uid = super::reconcile::pod_uid(parts[i]).unwrap_or_default();
    let container_id = match parts.get(i + 1) {
        None => None,
        Some(c) => Some(container_id(c).ok_or_else(|| {
            format!(
                "{name:?}: {c:?} after the pod component is not a container's cgroup (<id>, \
                 cri-containerd-<id>.scope, crio-<id>.scope or docker-<id>.scope)"
            )
        })?),
    };
    Ok(PodTarget { uid, container_id })
}

/// The container ID in a container cgroup's name: hex, at least 12 characters.
fn container_id(c: &str) -> Option<String> {
    let c = c.strip_suffix(".scope").unwrap_or(c);
    let id = c.rsplit('-').next().unwrap_or(c);
    (id.len() >= 12 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

/// A resolved pod and container.
#[derive(Debug, Clone, PartialEq, Eq)]
struct PodRef {
    namespace: String,
    name: String,
    container: String,
}

impl PodRef {
    fn label(&self) -> String {
        format!(
            "pod {}/{} container {:?}",
            self.namespace, self.name, self.container
        )
    }
}

/// The container of `pod` that `target` names (by container ID), or its only container.
fn container_of(pod: &Value, target: &PodTarget) -> std::result::Result<PodRef, String> {
    let namespace = pod["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = pod["metadata"]["name"].as_str().unwrap_or("?");
    let containers: Vec<&str> = pod["spec"]["containers"]
        .as_array()
        .map(|a| a.iter().filter_map(|c| c["name"].as_str()).collect())
        .unwrap_or_default();
    let container = match &target.container_id {
        Some(id) => pod["status"]["containerStatuses"]
            .as_array()
            .and_then(|a| {
                a.iter().find(|s| {
                    s["containerID"]
                        .as_str()
                        .and_then(|c| c.rsplit("://").next())
                        .is_some_and(|c| c.eq_ignore_ascii_case(id))
                })
            })
            .and_then(|s| s["name"].as_str())
            .ok_or_else(|| {
                format!(
                    "pod {namespace}/{name} has no container with ID {id} in its status (the \
                     pod's sandbox, or a container not started yet: not resized)"
                )
            })?
            .to_owned(),
        None if containers.len() == 1 => containers[0].to_owned(),
        None => {
            return Err(format!(
                "pod {namespace}/{name} has {} containers: manage a container's cgroup \
                 (…/pod<uid>/<container id>) instead of the pod's",
                containers.len()
            ))
        }
    };
    if !containers.contains(&container.as_str()) {
        return Err(format!(
            "pod {namespace}/{name}: {container:?} is not one of its containers (an init or \
             ephemeral container cannot be resized)"
        ));
    }
    Ok(PodRef {
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        container,
    })
}

/// A Kubernetes quantity in base units (cores, bytes): `500m`, `1.5`, `128Mi`, `1G`, `2e3`.
pub fn parse_quantity(q: &str) -> Option<f64> {
    let q = q.trim();
    // The binary suffixes ("Ki") first, then the decimal ones.
    const SUFFIXES: [(&str, f64); 15] = [
        ("Ki", 1024.0),
        ("Mi", 1048576.0),
        ("Gi", 1073741824.0),
        ("Ti", 1099511627776.0),
        ("Pi", 1125899906842624.0),
        ("Ei", 1152921504606846976.0),
        ("n", 1e-9),
        ("u", 1e-6),
        ("m", 1e-3),
        ("k", 1e3),
        ("M", 1e6),
        ("G", 1e9),
        ("T", 1e12),
        ("P", 1e15),
        ("E", 1e18),
    ];
    for (s, mult) in SUFFIXES {
        if let Some(n) = q.strip_suffix(s) {
            // An exponent ("2e3", "1E6") is not a suffix.
            if n.is_empty() || n.contains(['e', 'E']) {
                continue;
            }
            return n.parse::<f64>().ok().map(|v| v * mult);
        }
    }
    q.parse::<f64>().ok().filter(|v| v.is_finite())
}

/// The quantity the allocator writes: millicores (at least 1m) or bytes.
fn quantity(resource: Resource, v: f64) -> String {
    match resource {
        Resource::Cpu => format!("{}m", ((v * 1000.0).ceil() as u64).max(1)),
        _ => format!("{}", v.round() as u64),
    }
}

fn key_of(resource: Resource) -> &'static str {
    match resource {
        Resource::Cpu => "cpu",
        _ => "memory",
    }
}

/// The spec of `pod`'s container `name`.
fn container_spec<'a>(pod: &'a Value, name: &str) -> Option<&'a Value> {
    pod["spec"]["containers"]
        .as_array()?
        .iter()
        .find(|c| c["name"].as_str() == Some(name))
}

/// The `resize` patch that sets `resource`'s limit of `container` to `value` (None: no
/// limit) in `pod`, keeping its QoS class; `Err` says why no such patch exists.
fn resize_patch(
    pod: &Value,
    container: &str,
    resource: Resource,
    value: Option<f64>,
) -> std::result::Result<Value, String> {
    let key = key_of(resource);
    let qos = pod["status"]["qosClass"].as_str().unwrap_or("");
    let spec = container_spec(pod, container)
        .ok_or_else(|| format!("the pod has no container {container:?}"))?;
    let request = spec["resources"]["requests"][key]
        .as_str()
        .and_then(parse_quantity);
    let resources = match (qos, value) {
        ("BestEffort", _) => {
            return Err(
                "the pod is BestEffort (no requests or limits): a limit would change its QoS \
                 class, which a resize may not do"
                    .to_owned(),
            )
        }
        ("Guaranteed", None) => {
            return Err(format!(
                "the pod is Guaranteed: its {key} limit cannot be removed (that would change \
                 its QoS class)"
            ))
        }
        ("Guaranteed", Some(v)) => {
            let q = quantity(resource, v);
            json!({ "requests": { key: q }, "limits": { key: q } })
        }
        (_, Some(v)) => {
            if let Some(r) = request {
                if parse_quantity(&quantity(resource, v)).unwrap_or(v) < r {
                    return Err(format!(
                        "a {key} limit of {} is below the container's request of {}: \
                         Kubernetes needs limit >= request (raise the allocator's min)",
                        quantity(resource, v),
                        spec["resources"]["requests"][key].as_str().unwrap_or("?")
                    ));
                }
            }
            json!({ "limits": { key: quantity(resource, v) } })
        }
        (_, None) => json!({ "limits": { key: Value::Null } }),
    };
    Ok(json!({ "spec": { "containers": [ { "name": container, "resources": resources } ] } }))
}

/// The kubelet's verdict that the node cannot fit the resize the pod's spec holds now: the
/// condition `PodResizePending` with reason `Infeasible` (Kubernetes >= 1.33) or
/// `status.resize = "Infeasible"` (before). `Some(message)` (possibly empty) when it has.
fn resize_infeasible(pod: &Value) -> Option<String> {
    let condition = pod["status"]["conditions"].as_array().and_then(|c| {
        c.iter().find(|c| {
            c["type"] == "PodResizePending" && c["status"] == "True" && c["reason"] == "Infeasible"
        })
    });
    match condition {
        Some(c) => Some(c["message"].as_str().unwrap_or("").to_owned()),
        None if pod["status"]["resize"] == "Infeasible" => Some(String::new()),
        None => None,
    }
}

/// Why asking for `patch` again is pointless: the kubelet found the resize the pod's spec
/// holds now infeasible on this node ([`resize_infeasible`]), and `patch` asks for exactly
/// that again. `Some(the kubelet's message)`. A different value is sent: the kubelet judges
/// it afresh.
fn infeasible_again(pod: &Value, container: &str, patch: &Value) -> Option<String> {
    let message = resize_infeasible(pod)?;
    let spec = container_spec(pod, container)?;
    let asked = &patch["spec"]["containers"][0]["resources"];
    let same = ["requests", "limits"].iter().all(|part| {
        asked[part].as_object().is_none_or(|m| {
            m.iter().all(|(k, v)| {
                let now = &spec["resources"][part][k];
                match (
                    v.as_str().and_then(parse_quantity),
                    now.as_str().and_then(parse_quantity),
                ) {
                    (Some(a), Some(b)) => (a - b).abs() <= 1e-9 * a.abs().max(1.0),
                    _ => v == now,
                }
            })
        })
    });
    same.then_some(message)
}

/// A resize the kubelet found this node cannot fit: the node, not the allocator's rails, is
/// what limits the container now. Reported once per episode ([`KubeBackend::take_infeasible`]),
/// which ends when the pod next shows no such verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct InfeasibleResize {
    pub resource: Resource,
    /// The limit asked for (cores, bytes).
    pub asked: f64,
    /// The limit in force, which the kubelet keeps (cores, bytes; from cgroupfs).
    pub in_force: f64,
    /// `namespace/name` of the pod.
    pub pod: String,
    pub container: String,
    /// The kubelet's message (e.g. "Node didn't have enough capacity: cpu, requested: 4000,
    /// capacity: 2000"); empty when it gave none.
    pub message: String,
}

/// The infeasible resizes of a [`KubeBackend`]: which resources are in an episode, and what
/// is yet to be reported.
#[derive(Debug, Default)]
struct Infeasible {
    open: Vec<Resource>,
    pending: Vec<InfeasibleResize>,
}

/// A kubelet-owned group resized through the API (see the module's documentation).
pub struct KubeBackend {
    inner: Box<dyn Backend + Send>,
    client: Arc<KubeClient>,
    target: PodTarget,
    /// Resolved on first use, dropped when the pod is not found.
    pod: Mutex<Option<PodRef>>,
    infeasible: Mutex<Infeasible>,
}

impl KubeBackend {
    pub fn new(inner: Box<dyn Backend + Send>, client: Arc<KubeClient>) -> Result<KubeBackend> {
        let target = pod_target(inner.name()).map_err(|reason| AllocateError::Kube {
            cgroup: inner.name().to_owned(),
            reason,
        })?;
        Ok(KubeBackend {
            inner,
            client,
            target,
            pod: Mutex::new(None),
            infeasible: Mutex::default(),
        })
    }

    fn err(&self, reason: impl Into<String>) -> AllocateError {
        AllocateError::Kube {
            cgroup: self.inner.name().to_owned(),
            reason: reason.into(),
        }
    }

    /// The pod now (its whole object) and its resolved reference.
    fn fetch(&self) -> Result<(Value, PodRef)> {
        self.find()?.ok_or_else(|| {
            self.err(format!(
                "no pod with UID {} on node {}",
                self.target.uid, self.client.spec.node_name
            ))
        })
    }

    /// [`Self::fetch`], with `None` when the node has no pod of this UID (any more).
    fn find(&self) -> Result<Option<(Value, PodRef)>> {
        let known = self.pod.lock().map(|p| p.clone()).unwrap_or(None);
        if let Some(r) = known {
            match self.client.get(&format!(
                "/api/v1/namespaces/{}/pods/{}",
                r.namespace, r.name
            )) {
                Ok(p) if p["metadata"]["uid"].as_str() == Some(&self.target.uid) => {
                    return Ok(Some((p, r)))
                }
                Ok(_) | Err(ApiError::Status(404, _)) => {} // gone or another pod now
                Err(e) => return Err(self.err(format!("reading {}: {e}", r.label()))),
            }
        }
        let pod = self.client.pod_by_uid(&self.target.uid).map_err(|e| {
            self.err(format!(
                "listing the pods of node {}: {e}",
                self.client.spec.node_name
            ))
        })?;
        let Some(pod) = pod else {
            return Ok(None);
        };
        let r = container_of(&pod, &self.target).map_err(|e| self.err(e))?;
        if let Ok(mut p) = self.pod.lock() {
            *p = Some(r.clone());
        }
        Ok(Some((pod, r)))
    }

    fn resize(&self, resource: Resource, value: Option<f64>) -> Result<()> {
        let (pod, r) = self.fetch()?;
        let patch = resize_patch(&pod, &r.container, resource, value)
            .map_err(|e| self.err(format!("{}: {e}", r.label())))?;
        if resize_infeasible(&pod).is_none() {
            self.end_infeasible(resource);
        }
        if let Some(message) = infeasible_again(&pod, &r.container, &patch) {
            self.note_infeasible(resource, value, &r, &message);
            return Err(self.err(format!(
                "{}: the node cannot fit this resize (PodResizePending: Infeasible{}); not \
                 asked again until the wanted value changes",
                r.label(),
                if message.is_empty() {
                    String::new()
                } else {
                    format!(": {message}")
                }
            )));
        }
        self.send(&r, &patch)
    }

    /// Opens an episode for `resource` (and queues its report) unless one is open.
    fn note_infeasible(&self, resource: Resource, asked: Option<f64>, r: &PodRef, message: &str) {
        let Ok(mut inf) = self.infeasible.lock() else {
            return;
        };
        if inf.open.contains(&resource) {
            return;
        }
        inf.open.push(resource);
        // Read once per episode, not at every retry the back-off lets through.
        let in_force = self.inner.read_limits().ok().and_then(|l| match resource {
            Resource::Cpu => l.cpu_cores,
            Resource::Memory => l.memory_bytes.map(|b| b as f64),
            Resource::Cpuset => None,
        });
        // Removing a limit, or a group without one, has no shortfall to report.
        if let (Some(asked), Some(in_force)) = (asked, in_force) {
            inf.pending.push(InfeasibleResize {
                resource,
                asked,
                in_force,
                pod: format!("{}/{}", r.namespace, r.name),
                container: r.container.clone(),
                message: message.to_owned(),
            });
        }
    }

    fn end_infeasible(&self, resource: Resource) {
        if let Ok(mut inf) = self.infeasible.lock() {
            inf.open.retain(|&o| o != resource);
        }
    }

    /// The resizes found infeasible since the last call, once per episode: the first time
    /// the same value would be asked for again while the kubelet's verdict stands.
    pub fn take_infeasible(&self) -> Vec<InfeasibleResize> {
        self.infeasible
            .lock()
            .map(|mut i| std::mem::take(&mut i.pending))
            .unwrap_or_default()
    }

    fn send(&self, r: &PodRef, patch: &Value) -> Result<()> {
        let path = format!("/api/v1/namespaces/{}/pods/{}/resize", r.namespace, r.name);
        match self.client.patch(&path, patch) {
            Ok(_) => {
                tracing::info!(cgroup = self.inner.name(), pod = %r.label(), patch = %patch, "resize requested");
                Ok(())
            }
            Err(ApiError::Status(404, m))
                if m.contains("could not find the requested resource") =>
            {
                Err(self.err(format!(
                    "{}: the API server has no pods/resize subresource (in-place pod resize \
                     needs Kubernetes >= 1.33): {m}",
                    r.label()
                )))
            }
            Err(ApiError::Status(403, m)) => Err(self.err(format!(
                "{}: forbidden: the agent's service account needs \"patch\" on \"pods/resize\" \
                 (see deploy/kubernetes): {m}",
                r.label()
            ))),
            Err(e) => {
                if matches!(e, ApiError::Status(404, _)) {
                    if let Ok(mut p) = self.pod.lock() {
                        *p = None;
                    }
                }
                Err(self.err(format!("resizing {}: {e}", r.label())))
            }
        }
    }

    /// The pod and container this group's changes go to, once looked up (`null` before).
    pub fn resolved(&self) -> Value {
        match self.pod.lock().ok().and_then(|p| p.clone()) {
            Some(r) => {
                json!({ "pod": format!("{}/{}", r.namespace, r.name), "container": r.container })
            }
            None => json!({ "pod_uid": self.target.uid, "pod": Value::Null }),
        }
    }

    /// The container's resources now, for the record of originals: the values of the
    /// managed resources (`None`: not set).
    pub fn capture(&self, managed: &[Resource]) -> Result<Value> {
        let (pod, r) = self.fetch()?;
        let spec = container_spec(&pod, &r.container)
            .cloned()
            .unwrap_or(Value::Null);
        let mut requests = serde_json::Map::new();
        let mut limits = serde_json::Map::new();
        for res in managed {
            let k = key_of(*res);
            requests.insert(k.to_owned(), spec["resources"]["requests"][k].clone());
            limits.insert(k.to_owned(), spec["resources"]["limits"][k].clone());
        }
        Ok(json!({
            "namespace": r.namespace,
            "pod": r.name,
            "uid": self.target.uid,
            "container": r.container,
            "resources": { "requests": requests, "limits": limits },
        }))
    }

    /// Patches the recorded original resources back. `Ok(false)`: the pod is gone (nothing
    /// to restore).
    pub fn restore(&self, original: &Value) -> Result<bool> {
        let Some((_, r)) = self.find()? else {
            return Ok(false);
        };
        let patch = json!({ "spec": { "containers": [ {
            "name": r.container,
            "resources": original["resources"].clone(),
        } ] } });
        self.send(&r, &patch).map(|()| true)
    }
}

impl Backend for KubeBackend {
    fn kind(&self) -> BackendKind {
        self.inner.kind()
    }
    fn name(&self) -> &str {
        self.inner.name()
    }
    fn read_limits(&self) -> Result<Limits> {
        self.inner.read_limits()
    }
    fn read_sample(&self) -> Result<Sample> {
        self.inner.read_sample()
    }
    fn available_cpus(&self) -> Result<Option<CpuSet>> {
        self.inner.available_cpus()
    }
    /// None: nothing of a pod's cgroup is ever written (or restored) as a file.
    fn control_files(&self, _resource: Resource) -> Vec<PathBuf> {
        Vec::new()
    }
    fn set_cpu(&self, cores: Option<f64>, _period_us: u64, burst: Option<f64>) -> Result<()> {
        if burst.is_some() {
            // `allocate.cpu.burst` is refused with [allocate.kubernetes] at validation.
            return Err(self.err("the pod resize API has no CFS burst"));
        }
        self.resize(Resource::Cpu, cores)
    }
    fn set_memory(&self, bytes: Option<u64>) -> Result<()> {
        self.resize(Resource::Memory, bytes.map(|b| b as f64))
    }
    fn set_cpuset(&self, _cpus: &CpuSet) -> Result<()> {
        Err(self.err(
            "a pod's cpuset belongs to the kubelet's CPU manager: the allocator does not pin pods",
        ))
    }
    fn dirs(&self) -> Vec<PathBuf> {
        self.inner.dirs()
    }
    fn kube(&self) -> Option<&KubeBackend> {
        Some(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0b6a3c1e-4f2d-4c6b-9a7e-1d2c3b4a5f60";
    const CID: &str = "3f1e2d4c5b6a79880f1e2d3c4b5a69788f1e2d3c4b5a6978af1e2d3c4b5a6978";

    fn pod(qos: &str, resources: Value) -> Value {
        json!({
            "metadata": {"namespace": "shop", "name": "web-0", "uid": UID},
            "spec": {"containers": [{"name": "app", "resources": resources}]},
            "status": {
                "qosClass": qos,
                "containerStatuses": [{"name": "app", "containerID": format!("containerd://{CID}")}]
            }
        })
    }

    #[test]
    fn groups_map_to_their_pod_and_container() {
        let t = pod_target(&format!("kubepods/burstable/pod{UID}/{CID}")).unwrap();
        assert_eq!(t.uid, UID);
        assert_eq!(t.container_id.as_deref(), Some(CID));
        let systemd = format!(
            "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-{CID}.scope",
            UID.replace('-', "_")
        );
        let t = pod_target(&systemd).unwrap();
        assert_eq!(
            (t.uid.as_str(), t.container_id.as_deref()),
            (UID, Some(CID))
        );
        let t = pod_target(&format!("kubepods/pod{UID}")).unwrap();
        assert_eq!(t.container_id, None);
        assert!(pod_target("kubepods/burstable")
            .unwrap_err()
            .contains("no pod component"));
        let e = pod_target(&format!("kubepods/pod{UID}/not-a-container")).unwrap_err();
        assert!(e.contains("not a container's cgroup"), "{e}");
    }

    #[test]
    fn the_container_is_found_by_its_id_or_as_the_only_one() {
        let p = pod("Burstable", json!({}));
        let by_id = PodTarget {
            uid: UID.into(),
            container_id: Some(CID.into()),
        };
        assert_eq!(container_of(&p, &by_id).unwrap().container, "app");
        let whole = PodTarget {
            uid: UID.into(),
            container_id: None,
        };
        assert_eq!(container_of(&p, &whole).unwrap().container, "app");
        let other = PodTarget {
            uid: UID.into(),
            container_id: Some("abcdefabcdef".into()),
        };
        assert!(container_of(&p, &other)
            .unwrap_err()
            .contains("no container with ID"));
        let mut two = p.clone();
        two["spec"]["containers"]
            .as_array_mut()
            .unwrap()
            .push(json!({"name": "sidecar"}));
        assert!(container_of(&two, &whole)
            .unwrap_err()
            .contains("has 2 containers"));
    }

    #[test]
    fn an_infeasible_resize_is_not_asked_for_again() {
        let mut p = pod(
            "Burstable",
            json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "4"}}),
        );
        let same = resize_patch(&p, "app", Resource::Cpu, Some(4.0)).unwrap();
        let other = resize_patch(&p, "app", Resource::Cpu, Some(2.0)).unwrap();
        assert_eq!(infeasible_again(&p, "app", &same), None, "no verdict yet");
        p["status"]["conditions"] = json!([{
            "type": "PodResizePending", "status": "True", "reason": "Infeasible",
            "message": "Node didn't have enough capacity: cpu, requested: 4000, capacity: 2000"
        }]);
        let why = infeasible_again(&p, "app", &same).expect("the same ask again");
        assert_eq!(
            why,
            "Node didn't have enough capacity: cpu, requested: 4000, capacity: 2000"
        );
        assert_eq!(
            infeasible_again(&p, "app", &other),
            None,
            "another value is asked"
        );
        p["status"]["conditions"][0]["reason"] = json!("Deferred");
        assert_eq!(
            infeasible_again(&p, "app", &same),
            None,
            "deferred: the kubelet retries"
        );
        // Before 1.33: status.resize.
        p["status"]["conditions"] = json!([]);
        p["status"]["resize"] = json!("Infeasible");
        assert!(infeasible_again(&p, "app", &same).is_some());
    }

    #[test]
    fn quantities_parse_as_kubernetes_writes_them() {
        assert_eq!(parse_quantity("500m"), Some(0.5));
        assert_eq!(parse_quantity("2"), Some(2.0));
        assert_eq!(parse_quantity("1.5"), Some(1.5));
        assert_eq!(parse_quantity("128Mi"), Some(134_217_728.0));
        assert_eq!(parse_quantity("1G"), Some(1e9));
        assert_eq!(parse_quantity("2e3"), Some(2000.0));
        assert_eq!(parse_quantity("1Ki"), Some(1024.0));
        assert_eq!(parse_quantity("x"), None);
        assert_eq!(quantity(Resource::Cpu, 0.25), "250m");
        assert_eq!(quantity(Resource::Cpu, 0.0001), "1m");
        assert_eq!(quantity(Resource::Memory, 1e6), "1000000");
    }

    #[test]
    fn resize_patches_keep_the_qos_class() {
        // Burstable: the limit only, never below the request.
        let b = pod(
            "Burstable",
            json!({"requests": {"cpu": "100m"}, "limits": {"cpu": "200m"}}),
        );
        let p = resize_patch(&b, "app", Resource::Cpu, Some(0.4)).unwrap();
        assert_eq!(
            p,
            json!({"spec": {"containers": [{"name": "app", "resources": {"limits": {"cpu": "400m"}}}]}})
        );
        let e = resize_patch(&b, "app", Resource::Cpu, Some(0.05)).unwrap_err();
        assert!(e.contains("below the container's request of 100m"), "{e}");
        let p = resize_patch(&b, "app", Resource::Cpu, None).unwrap();
        assert!(p["spec"]["containers"][0]["resources"]["limits"]["cpu"].is_null());
        // Guaranteed: requests move with limits.
        let g = pod(
            "Guaranteed",
            json!({"requests": {"memory": "1Gi"}, "limits": {"memory": "1Gi"}}),
        );
        let p = resize_patch(&g, "app", Resource::Memory, Some(2e9)).unwrap();
        let r = &p["spec"]["containers"][0]["resources"];
        assert_eq!(
            (
                r["requests"]["memory"].as_str(),
                r["limits"]["memory"].as_str()
            ),
            (Some("2000000000"), Some("2000000000"))
        );
        assert!(resize_patch(&g, "app", Resource::Memory, None)
            .unwrap_err()
            .contains("Guaranteed"));
        // BestEffort: nothing.
        let e = resize_patch(
            &pod("BestEffort", json!({})),
            "app",
            Resource::Cpu,
            Some(1.0),
        )
        .unwrap_err();
        assert!(e.contains("BestEffort"), "{e}");
    }

    #[test]
    fn the_section_names_what_is_missing() {
        let none = |_: &str| None;
        let raw = RawKube {
            api_server: Some("http://127.0.0.1:1".into()),
            ..RawKube::default()
        };
        let (k, why) = raw.clone().validate(&none).unwrap_err();
        assert_eq!(k, "allocate.kubernetes.node_name");
        assert!(why.contains("NODE_NAME"), "{why}");
        let (k, _) = RawKube::default().validate(&none).unwrap_err();
        assert_eq!(k, "allocate.kubernetes.api_server");
        let env = |k: &str| (k == "NODE_NAME").then(|| "node-a".to_owned());
        let missing = RawKube {
            token_file: Some("/nonexistent/token".into()),
            ..raw.clone()
        };
        let spec = missing.validate(&env).unwrap().unwrap();
        let e = KubeClient::new(&spec).unwrap_err().to_string();
        assert!(
            e.contains("allocate.kubernetes.token_file") && e.contains("/nonexistent/token"),
            "{e}"
        );
        let dir = std::env::temp_dir().join(format!("shadow-kube-unit-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let token = dir.join("token");
        std::fs::write(&token, "t0k3n\n").unwrap();
        let bad_ca = dir.join("ca.crt");
        std::fs::write(&bad_ca, "not a certificate").unwrap();
        let https = RawKube {
            api_server: Some("https://10.0.0.1:443/".into()),
            token_file: Some(token.clone()),
            ca_file: Some(bad_ca),
            ..RawKube::default()
        };
        let spec = https.validate(&env).unwrap().unwrap();
        assert_eq!(spec.api_server, "https://10.0.0.1:443");
        let e = KubeClient::new(&spec).unwrap_err().to_string();
        assert!(
            e.contains("allocate.kubernetes.ca_file") && e.contains("no PEM certificate"),
            "{e}"
        );
        let in_pod = |k: &str| match k {
            "KUBERNETES_SERVICE_HOST" => Some("fd00::1".to_owned()),
            "KUBERNETES_SERVICE_PORT" => Some("443".to_owned()),
            "NODE_NAME" => Some("node-b".to_owned()),
            _ => None,
        };
        let spec = RawKube::default().validate(&in_pod).unwrap().unwrap();
        assert_eq!(spec.api_server, "https://[fd00::1]:443");
        assert_eq!(
            spec.token_file,
            Path::new(SERVICE_ACCOUNT_DIR).join("token")
        );
        let ok = RawKube {
            token_file: Some(token),
            ..raw
        }
        .validate(&env)
        .unwrap()
        .unwrap();
        assert_eq!(
            (ok.api_server.as_str(), ok.node_name.as_str()),
            ("http://127.0.0.1:1", "node-a")
        );
        assert!(KubeClient::new(&ok).is_ok());
        let off = RawKube {
            enabled: Some(false),
            ..RawKube::default()
        };
        assert_eq!(off.validate(&none).unwrap(), None);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
