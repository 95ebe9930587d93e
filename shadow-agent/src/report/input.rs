//! Reading the report's inputs: the agent's JSON lines (`run --json`, `profile --json`,
//! `demo --json`) and the allocator's audit log. Unknown keys are ignored; a line that is not
//! a JSON object, or whose known keys have the wrong type, is an error naming its number.

use std::collections::BTreeMap;

use serde_json::{Map, Value};

/// A resource the allocator sizes and the report plots.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    Cpu,
    Memory,
}

impl Resource {
    pub const ALL: [Resource; 2] = [Resource::Cpu, Resource::Memory];

    /// The key used in the JSON lines and the audit log.
    pub fn key(self) -> &'static str {
        match self {
            Resource::Cpu => "cpu",
            Resource::Memory => "memory",
        }
    }
}

/// One forecast, placed at the time it is for.
#[derive(Debug, Clone, PartialEq)]
pub struct ForecastPoint {
    /// Seconds since the start of the input.
    pub at: f64,
    pub point: f64,
    /// The interval, when the forecast has one.
    pub lower: Option<f64>,
    pub upper: Option<f64>,
    pub level: Option<f64>,
}

/// Everything the input says about one cgroup.
#[derive(Debug, Clone, Default)]
pub struct CgroupSeries {
    /// (t_s, cores used over the interval ending at t_s).
    pub cpu_cores: Vec<(f64, f64)>,
    /// (t_s, bytes).
    pub memory_bytes: Vec<(f64, f64)>,
    pub forecasts: BTreeMap<Resource, Vec<ForecastPoint>>,
    /// Limits the input itself reports: (t_s, value; None = unlimited).
    pub limits: BTreeMap<Resource, Vec<(f64, Option<f64>)>>,
    last_cpu_seconds: Option<(f64, f64)>,
}

/// One replica's cumulative counters at one time.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ReplicaPoint {
    pub tx_dropped_packets: f64,
    pub connect_refused: f64,
    pub sendmsg_refused: f64,
    pub restarts: Option<f64>,
    pub running: Option<bool>,
}

/// What the agent's JSON lines hold, as time series (time: seconds since the input's start).
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// Lines read (non-empty) and lines used for series.
    pub lines: usize,
    pub used: usize,
    /// The formats recognised: "run", "profile", "demo".
    pub formats: Vec<&'static str>,
    /// Wall clock (ms since the Unix epoch) of t_s = 0, when lines carry `time_ms`.
    pub epoch_ms: Option<f64>,
    pub t_first: Option<f64>,
    pub t_last: Option<f64>,
    pub cgroups: BTreeMap<String, CgroupSeries>,
    /// Cumulative mirror counters by name.
    pub mirror: Vec<(f64, BTreeMap<String, f64>)>,
    /// Cumulative counters per replica ("replica 0", ... or "shadow" for the demo).
    pub replicas: BTreeMap<String, Vec<(f64, ReplicaPoint)>>,
    /// Refused destinations: (replica, "addr:port/proto") → attempts (latest).
    pub refused: BTreeMap<(String, String), f64>,
    /// The demo's final summary object, if present.
    pub summary: Option<Map<String, Value>>,
    demo_last_t: Option<f64>,
}

/// One allocator decision from the audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub time_ms: f64,
    pub cgroup: String,
    pub resource: String,
    pub old: Value,
    pub new: Value,
    pub reason: String,
    pub signals: Vec<String>,
    pub rails: Vec<String>,
    pub applied: bool,
    pub dry_run: bool,
    pub forecast: Option<f64>,
    pub interval: Option<(f64, f64)>,
    pub error: Option<String>,
}

/// Why a line could not be used (the caller adds the file and line number).
pub type LineResult<T> = Result<T, String>;

fn num(obj: &Map<String, Value>, key: &str) -> LineResult<Option<f64>> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => Ok(n.as_f64()),
        Some(other) => Err(format!("`{key}` is not a number: {other}")),
    }
}

fn obj<'a>(
    parent: &'a Map<String, Value>,
    key: &str,
) -> LineResult<Option<&'a Map<String, Value>>> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Object(m)) => Ok(Some(m)),
        Some(other) => Err(format!("`{key}` is not an object: {}", short(other))),
    }
}

fn arr<'a>(parent: &'a Map<String, Value>, key: &str) -> LineResult<Option<&'a Vec<Value>>> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Array(a)) => Ok(Some(a)),
        Some(other) => Err(format!("`{key}` is not an array: {}", short(other))),
    }
}

fn string<'a>(parent: &'a Map<String, Value>, key: &str) -> LineResult<Option<&'a str>> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(other) => Err(format!("`{key}` is not a string: {}", short(other))),
    }
}

fn boolean(parent: &Map<String, Value>, key: &str) -> LineResult<Option<bool>> {
    match parent.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(other) => Err(format!("`{key}` is not a boolean: {}", short(other))),
    }
}

fn short(v: &Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 60 {
        format!("{}…", s.chars().take(60).collect::<String>())
    } else {
        s
    }
}

fn prefixed<T>(prefix: &str, r: LineResult<T>) -> LineResult<T> {
    r.map_err(|e| format!("{prefix}: {e}"))
}

/// Parse a JSON line into an object, or say why not.
pub fn parse_object(line: &str) -> LineResult<Map<String, Value>> {
    match serde_json::from_str::<Value>(line) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(other) => Err(format!("not a JSON object: {}", short(&other))),
        Err(e) => Err(format!("not valid JSON: {e}")),
    }
}

/// A forecast object: either the allocator's scalar form (`point`, `lower`, `upper`, `level`,
/// optionally `horizon_s`) or the forecaster's `{point: [...], intervals: [{level, lower:
/// [...], upper: [...]}]}`, of which the first step and the first interval are used.
fn forecast(v: &Map<String, Value>, t: f64, dt: f64) -> LineResult<Option<ForecastPoint>> {
    let at = t + num(v, "horizon_s")?.unwrap_or(dt);
    match v.get("point") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(p)) => Ok(Some(ForecastPoint {
            at,
            point: p.as_f64().unwrap_or(0.0),
            lower: num(v, "lower")?,
            upper: num(v, "upper")?,
            level: num(v, "level")?,
        })),
        Some(Value::Array(points)) => {
            let Some(first) = points.first() else {
                return Ok(None);
            };
            let point = first
                .as_f64()
                .ok_or_else(|| format!("`point[0]` is not a number: {first}"))?;
            let (mut lower, mut upper, mut level) = (None, None, None);
            if let Some(Value::Object(i)) = arr(v, "intervals")?.and_then(|a| a.first()) {
                level = num(i, "level")?;
                let step0 = |k: &str| -> LineResult<Option<f64>> {
                    match arr(i, k)?.and_then(|a| a.first()) {
                        None => Ok(None),
                        Some(x) => x
                            .as_f64()
                            .map(Some)
                            .ok_or_else(|| format!("`intervals[0].{k}[0]` is not a number: {x}")),
                    }
                };
                lower = step0("lower")?;
                upper = step0("upper")?;
            }
            Ok(Some(ForecastPoint {
                at,
                point,
                lower,
                upper,
                level,
            }))
        }
        Some(other) => Err(format!(
            "`point` is not a number or an array: {}",
            short(other)
        )),
    }
}

/// A limit value: a number, or null / "max" for unlimited.
fn limit_value(v: &Value) -> Option<f64> {
    v.as_f64()
}

impl Run {
    /// Add one line (already known to be a JSON object).
    pub fn add(&mut self, line: &Map<String, Value>) -> LineResult<()> {
        self.lines += 1;
        match string(line, "type")? {
            Some("sample") => return self.add_profile_sample(line),
            Some(_) => return Ok(()), // "hooks" and anything newer
            None => {}
        }
        if boolean(line, "summary")? == Some(true) {
            self.summary = Some(line.clone());
            return Ok(());
        }
        let Some(t) = num(line, "t_s")? else {
            return Ok(());
        };
        self.touch(t);
        if let (Some(ms), None) = (num(line, "time_ms")?, self.epoch_ms) {
            self.epoch_ms = Some(ms - t * 1000.0);
        }
        let mut demo = false;
        if line.contains_key("mirror_seen") || line.contains_key("primary_cpu_ms_ebpf") {
            self.add_demo_row(t, line)?;
            demo = true;
        }
        let mut used = false;
        if let Some(m) = obj(line, "mirror")? {
            let mut c = BTreeMap::new();
            for (k, v) in m {
                if let Some(x) = v.as_f64() {
                    c.insert(k.clone(), x);
                }
            }
            self.mirror.push((t, c));
            used = true;
        }
        if let Some(cgs) = obj(line, "cgroups")? {
            let interval = num(line, "interval_s")?;
            for (path, v) in cgs {
                let Value::Object(m) = v else {
                    return Err(format!("`cgroups.{path}` is not an object: {}", short(v)));
                };
                prefixed(
                    &format!("cgroups.{path}"),
                    self.add_run_cgroup(path, t, interval, m),
                )?;
            }
            used = true;
        }
        if let Some(replicas) = arr(line, "shadow")? {
            for (i, r) in replicas.iter().enumerate() {
                let Value::Object(r) = r else {
                    return Err(format!("`shadow[{i}]` is not an object: {}", short(r)));
                };
                prefixed(&format!("shadow[{i}]"), self.add_replica(i, t, r))?;
            }
            used = true;
        }
        if let Some(per_replica) = arr(line, "refused")? {
            for (i, list) in per_replica.iter().enumerate() {
                let Value::Array(list) = list else {
                    return Err(format!("`refused[{i}]` is not an array: {}", short(list)));
                };
                for (j, d) in list.iter().enumerate() {
                    let Value::Object(d) = d else {
                        return Err(format!("`refused[{i}][{j}]` is not an object"));
                    };
                    let dest = format!(
                        "{}:{}/{}",
                        string(d, "addr")?.unwrap_or("?"),
                        num(d, "port")?.unwrap_or(0.0),
                        string(d, "proto")?.unwrap_or("?")
                    );
                    let attempts = num(d, "attempts")?.unwrap_or(0.0);
                    self.refused
                        .insert((format!("replica {i}"), dest), attempts);
                }
            }
            used = true;
        }
        if used && !self.formats.contains(&"run") {
            self.formats.push("run");
        }
        if used || demo {
            self.used += 1;
        }
        Ok(())
    }

    fn touch(&mut self, t: f64) {
        self.t_first = Some(self.t_first.map_or(t, |f| f.min(t)));
        self.t_last = Some(self.t_last.map_or(t, |l| l.max(t)));
    }

    fn add_run_cgroup(
        &mut self,
        path: &str,
        t: f64,
        interval: Option<f64>,
        m: &Map<String, Value>,
    ) -> LineResult<()> {
        let cg = self.cgroups.entry(path.to_owned()).or_default();
        let mut dt = interval.unwrap_or(0.0);
        // The cores a line states (`run` gives them over the interval that really passed),
        // else the rate between two lines' CPU seconds.
        let mut from_secs = None;
        if let Some(secs) = num(m, "cpu_seconds")? {
            if let Some((t0, s0)) = cg.last_cpu_seconds {
                if t > t0 && secs >= s0 {
                    from_secs = Some((secs - s0) / (t - t0));
                    if interval.is_none() {
                        dt = t - t0;
                    }
                }
            }
            cg.last_cpu_seconds = Some((t, secs));
        }
        if let Some(cores) = num(m, "cpu_cores")?.or(from_secs) {
            cg.cpu_cores.push((t, cores));
        }
        let mem = match num(m, "memory_bytes")? {
            Some(b) => Some(b),
            None => match obj(m, "memory")? {
                Some(mm) => num(mm, "usage_bytes")?,
                None => None,
            },
        };
        if let Some(b) = mem {
            cg.memory_bytes.push((t, b));
        }
        if let Some(f) = obj(m, "forecast")? {
            if let Some(p) = prefixed("forecast", forecast(f, t, dt))? {
                cg.forecasts.entry(Resource::Cpu).or_default().push(p);
            }
        }
        if let Some(fs) = obj(m, "forecasts")? {
            for r in Resource::ALL {
                if let Some(f) = obj(fs, r.key())? {
                    let key = format!("forecasts.{}", r.key());
                    if let Some(p) = prefixed(&key, forecast(f, t, dt))? {
                        cg.forecasts.entry(r).or_default().push(p);
                    }
                }
            }
        }
        if let Some(l) = obj(m, "limits")? {
            for (r, key) in [
                (Resource::Cpu, "cpu_cores"),
                (Resource::Memory, "memory_bytes"),
            ] {
                match l.get(key) {
                    None => {}
                    Some(v @ (Value::Null | Value::Number(_) | Value::String(_))) => {
                        cg.limits.entry(r).or_default().push((t, limit_value(v)));
                    }
                    Some(other) => {
                        return Err(format!("`limits.{key}` is not a number: {}", short(other)))
                    }
                }
            }
        }
        Ok(())
    }

    fn add_replica(&mut self, i: usize, t: f64, r: &Map<String, Value>) -> LineResult<()> {
        let index = num(r, "index")?.map_or(i as f64, |x| x);
        let mut p = ReplicaPoint {
            restarts: num(r, "restarts")?,
            running: boolean(r, "running")?,
            ..ReplicaPoint::default()
        };
        if let Some(d) = obj(r, "discard")? {
            p.tx_dropped_packets =
                prefixed("discard", num(d, "tx_dropped_packets"))?.unwrap_or(0.0);
            p.connect_refused = prefixed("discard", num(d, "connect_refused"))?.unwrap_or(0.0);
            p.sendmsg_refused = prefixed("discard", num(d, "sendmsg_refused"))?.unwrap_or(0.0);
        }
        self.replicas
            .entry(format!("replica {index}"))
            .or_default()
            .push((t, p));
        Ok(())
    }

    /// `demo --json` rows: per-interval deltas; turned into cumulative counters here.
    fn add_demo_row(&mut self, t: f64, row: &Map<String, Value>) -> LineResult<()> {
        if !self.formats.contains(&"demo") {
            self.formats.push("demo");
        }
        let dt = match self.demo_last_t {
            Some(t0) if t > t0 => t - t0,
            _ => 1.0,
        };
        self.demo_last_t = Some(t);
        let mut c = self
            .mirror
            .last()
            .map(|(_, c)| c.clone())
            .unwrap_or_default();
        for (key, name) in [
            ("mirror_seen", "seen"),
            ("mirror_cloned", "cloned"),
            ("mirror_clone_failed", "clone_failed"),
        ] {
            if let Some(d) = num(row, key)? {
                *c.entry(name.to_owned()).or_default() += d;
            }
        }
        self.mirror.push((t, c));
        // The demo names the primary's cgroup (as the audit log does) when it has one.
        let primary = string(row, "primary_cgroup")?.unwrap_or("primary");
        for (key, cgroup) in [
            ("primary_cpu_ms_ebpf", primary),
            ("shadow_cpu_ms_ebpf", "shadow"),
        ] {
            if let Some(ms) = num(row, key)? {
                self.cgroups
                    .entry(cgroup.to_owned())
                    .or_default()
                    .cpu_cores
                    .push((t, ms / 1000.0 / dt));
            }
        }
        if let Some(d) = num(row, "shadow_tx_dropped")? {
            let series = self.replicas.entry("shadow".to_owned()).or_default();
            let mut p = series.last().map(|(_, p)| p.clone()).unwrap_or_default();
            p.tx_dropped_packets += d;
            series.push((t, p));
        }
        Ok(())
    }

    /// `profile --json` samples.
    fn add_profile_sample(&mut self, s: &Map<String, Value>) -> LineResult<()> {
        let t = num(s, "t_s")?.ok_or("a sample without `t_s`")?;
        let cgroup = string(s, "cgroup")?.ok_or("a sample without `cgroup`")?;
        self.touch(t);
        if !self.formats.contains(&"profile") {
            self.formats.push("profile");
        }
        let cg = self.cgroups.entry(cgroup.to_owned()).or_default();
        if let Some(cpu) = obj(s, "cpu")? {
            if let Some(u) = prefixed("cpu", num(cpu, "utilization"))? {
                cg.cpu_cores.push((t, u));
            }
        }
        if let Some(mem) = obj(s, "memory")? {
            if let Some(b) = prefixed("memory", num(mem, "usage_bytes"))? {
                cg.memory_bytes.push((t, b));
            }
        }
        self.used += 1;
        Ok(())
    }
}

/// One audit log line.
pub fn decision(line: &Map<String, Value>) -> LineResult<Decision> {
    let time_ms = num(line, "time_ms")?.ok_or("no `time_ms`")?;
    let cgroup = string(line, "cgroup")?.ok_or("no `cgroup`")?.to_owned();
    let resource = string(line, "resource")?.ok_or("no `resource`")?.to_owned();
    let (reason, signals) = match line.get("reason") {
        Some(Value::Object(r)) => {
            let kind = string(r, "kind")?.unwrap_or("?").to_owned();
            let mut signals = Vec::new();
            for s in arr(r, "signals")?.into_iter().flatten() {
                if let Some(name) = s.get("signal").and_then(Value::as_str) {
                    signals.push(name.to_owned());
                }
            }
            (kind, signals)
        }
        Some(Value::String(s)) => (s.clone(), Vec::new()),
        None | Some(Value::Null) => (String::new(), Vec::new()),
        Some(other) => return Err(format!("`reason` is not an object: {}", short(other))),
    };
    let rails = arr(line, "rails")?
        .into_iter()
        .flatten()
        .map(|r| r.as_str().map_or_else(|| r.to_string(), str::to_owned))
        .collect();
    let interval = match arr(line, "interval")? {
        Some(a) if a.len() == 2 => match (a[0].as_f64(), a[1].as_f64()) {
            (Some(l), Some(u)) => Some((l, u)),
            _ => return Err("`interval` is not [lower, upper]".into()),
        },
        Some(_) => return Err("`interval` is not [lower, upper]".into()),
        None => None,
    };
    Ok(Decision {
        time_ms,
        cgroup,
        resource,
        old: line.get("old").cloned().unwrap_or(Value::Null),
        new: line.get("new").cloned().unwrap_or(Value::Null),
        reason,
        signals,
        rails,
        applied: boolean(line, "applied")?.unwrap_or(true),
        dry_run: boolean(line, "dry_run")?.unwrap_or(false),
        forecast: num(line, "forecast")?,
        interval,
        error: string(line, "error")?.map(str::to_owned),
    })
}

/// Whether an audit log's cgroup name refers to the input's cgroup `path`.
pub fn same_cgroup(path: &str, name: &str) -> bool {
    let p = path.trim_end_matches('/');
    let n = name.trim_end_matches('/');
    p == n || p.ends_with(&format!("/{}", n.trim_start_matches('/')))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_of(lines: &[&str]) -> Run {
        let mut r = Run::default();
        for l in lines {
            r.add(&parse_object(l).expect("object")).expect("line");
        }
        r
    }

    #[test]
    fn run_lines_give_cores_from_cumulative_seconds_and_ignore_unknown_keys() {
        let r = run_of(&[
            r#"{"t_s":1.0,"cgroups":{"/cg/a":{"cpu_seconds":1.0,"switches":3}},"new_key":[1]}"#,
            r#"{"t_s":2.0,"cgroups":{"/cg/a":{"cpu_seconds":1.5,"future":{}}},"mirror":{"seen":10,"cloned":9}}"#,
        ]);
        assert_eq!(r.cgroups["/cg/a"].cpu_cores, vec![(2.0, 0.5)]);
        assert_eq!(r.mirror[0].1["cloned"], 9.0);
        // Stated cores win over the rate between lines (one point per line, not two).
        let r = run_of(&[
            r#"{"t_s":1.0,"cgroups":{"/cg/a":{"cpu_seconds":1.0}}}"#,
            r#"{"t_s":2.0,"cgroups":{"/cg/a":{"cpu_seconds":1.5,"cpu_cores":0.45}}}"#,
            r#"{"t_s":3.0,"cgroups":{"/cg/a":{"missing":true}}}"#,
        ]);
        assert_eq!(r.cgroups["/cg/a"].cpu_cores, vec![(2.0, 0.45)]);
        assert_eq!(r.formats, vec!["run"]);
    }

    #[test]
    fn forecasts_in_both_shapes_and_limits() {
        let r = run_of(&[
            r#"{"t_s":1,"cgroups":{"a":{"cpu_seconds":0,"forecasts":{"cpu":{"point":0.5,"lower":0.4,"upper":0.7,"level":0.9}},"limits":{"cpu_cores":null,"memory_bytes":1024}}}}"#,
            r#"{"t_s":2,"cgroups":{"a":{"cpu_seconds":1,"forecast":{"point":[0.6,0.7],"intervals":[{"level":0.8,"lower":[0.5],"upper":[0.9]}]}}}}"#,
        ]);
        let f = &r.cgroups["a"].forecasts[&Resource::Cpu];
        assert_eq!(f.len(), 2);
        assert_eq!((f[0].at, f[0].upper), (1.0, Some(0.7)));
        assert_eq!((f[1].at, f[1].point, f[1].lower), (3.0, 0.6, Some(0.5)));
        assert_eq!(r.cgroups["a"].limits[&Resource::Cpu], vec![(1.0, None)]);
    }

    #[test]
    fn wrong_types_of_known_keys_are_errors_naming_the_key() {
        let mut r = Run::default();
        let e = r
            .add(&parse_object(r#"{"t_s":"soon"}"#).expect("object"))
            .expect_err("string t_s");
        assert!(e.contains("`t_s`"), "{e}");
        let e = r
            .add(&parse_object(r#"{"t_s":1,"cgroups":{"a":{"cpu_seconds":"x"}}}"#).expect("o"))
            .expect_err("string cpu_seconds");
        assert!(e.contains("cgroups.a") && e.contains("cpu_seconds"), "{e}");
        assert!(parse_object("[1,2]").is_err());
        assert!(parse_object("{\"t_s\":").is_err());
    }

    #[test]
    fn demo_rows_and_profile_samples() {
        let r = run_of(&[
            r#"{"t_s":1,"mirror_seen":100,"mirror_cloned":99,"primary_cpu_ms_ebpf":250,"shadow_cpu_ms_ebpf":5,"shadow_tx_dropped":3}"#,
            r#"{"t_s":2,"mirror_seen":50,"mirror_cloned":50,"primary_cpu_ms_ebpf":500,"shadow_cpu_ms_ebpf":5,"shadow_tx_dropped":4}"#,
            r#"{"summary":true,"requests_ok":10}"#,
            r#"{"type":"hooks","hooks":[]}"#,
            r#"{"type":"sample","t_s":1.0,"cgroup":"/x","cpu":{"utilization":0.25},"memory":{"usage_bytes":4096}}"#,
        ]);
        assert_eq!(r.mirror[1].1["cloned"], 149.0);
        assert_eq!(r.cgroups["primary"].cpu_cores[1], (2.0, 0.5));
        assert_eq!(r.replicas["shadow"][1].1.tx_dropped_packets, 7.0);
        assert!(r.summary.is_some());
        assert_eq!(r.cgroups["/x"].memory_bytes, vec![(1.0, 4096.0)]);
        assert_eq!(r.formats, vec!["demo", "profile"]);
    }

    #[test]
    fn audit_lines() {
        let d = decision(
            &parse_object(r#"{"time_ms":1760000000000,"cgroup":"web","resource":"cpu","old":0.5,"new":0.625,"reason":{"kind":"reactive","signals":[{"signal":"throttled","ratio":0.6}]},"rails":["max_step"],"applied":true,"dry_run":false,"forecast":null,"interval":[0.4,0.6],"level":null,"confidence":null,"step":2,"error":null}"#)
                .expect("object"),
        )
        .expect("decision");
        assert_eq!(d.reason, "reactive");
        assert_eq!(d.signals, vec!["throttled"]);
        assert_eq!(d.rails, vec!["max_step"]);
        assert_eq!(d.interval, Some((0.4, 0.6)));
        assert!(decision(&parse_object(r#"{"cgroup":"web"}"#).expect("o")).is_err());
        assert!(same_cgroup("/sys/fs/cgroup/unified/web", "web"));
        assert!(!same_cgroup("/sys/fs/cgroup/unified/web2", "web"));
    }
}
