//! `shadow-agent run` re-reads its configuration on SIGHUP.
//!
//! What changes live: the mirror's sample rate and clone caps (written to its config map, no
//! reattach: the "ramp the mirror from 1% to 100%" operation), the allocator's dry run
//! (watch what it would do, then let it act, without losing its state; a group's original
//! limits are recorded before its first real write, as at start), the profiled cgroups
//! (`profile.cgroups`: added ones are tracked and forecast from then on, removed ones
//! forgotten, the others keep their history), the managed ones (`allocate.cgroups`: an
//! added group is opened as at start, a removed one gets its original limits back at once),
//! the mirror's rules with their per-rule masks (`Mirror::set_rules`), what masking looks
//! for (`[mirror.mask]`: header and parameter names, fill, scan window, tokens;
//! `Mirror::set_mask`) and the shadow
//! group's command, caps, bounds and restart settings (`ShadowGroup::set_spec`).
//! Everything else needs a
//! restart: a reload names the changed sections and leaves them as they run. A file that
//! does not parse or validate changes nothing; the error names the key, as at start.

use serde_json::{json, Value};

use crate::config::Config;

/// The mirror's settings a reload applies live.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MirrorLive {
    pub sample_rate: f64,
    pub cap_pps: u64,
    pub cap_bytes_per_sec: u64,
    pub cap_burst_ms: u64,
}

impl MirrorLive {
    fn of(o: &crate::mirror::MirrorOptions) -> MirrorLive {
        MirrorLive {
            sample_rate: o.sample_rate,
            cap_pps: o.cap_pps,
            cap_bytes_per_sec: o.cap_bytes_per_sec,
            cap_burst_ms: o.cap_burst_ms,
        }
    }

    fn write_to(&self, o: &mut crate::mirror::MirrorOptions) {
        o.sample_rate = self.sample_rate;
        o.cap_pps = self.cap_pps;
        o.cap_bytes_per_sec = self.cap_bytes_per_sec;
        o.cap_burst_ms = self.cap_burst_ms;
    }

    fn caps(&self) -> Caps {
        (self.cap_pps, self.cap_bytes_per_sec, self.cap_burst_ms)
    }
}

/// `cap_pps`, `cap_bytes_per_sec`, `cap_burst_ms`.
pub type Caps = (u64, u64, u64);

/// Entries added to and removed from a list of the configuration (as JSON:
/// `{"added": [...], "removed": [...]}`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct ListChange<T> {
    pub added: Vec<T>,
    pub removed: Vec<T>,
}

impl<T> Default for ListChange<T> {
    fn default() -> Self {
        ListChange {
            added: Vec::new(),
            removed: Vec::new(),
        }
    }
}

impl<T: PartialEq + Clone> ListChange<T> {
    /// `old` -> `new`, order aside; `None` when they hold the same entries.
    pub fn between(old: &[T], new: &[T]) -> Option<Self> {
        let c = ListChange {
            added: new.iter().filter(|p| !old.contains(p)).cloned().collect(),
            removed: old.iter().filter(|p| !new.contains(p)).cloned().collect(),
        };
        (!c.is_empty()).then_some(c)
    }

    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty()
    }

    /// `list` with this change made (removed entries out, added ones appended).
    pub fn apply_to(&self, list: &[T]) -> Vec<T> {
        let mut out: Vec<T> = list
            .iter()
            .filter(|e| !self.removed.contains(e))
            .cloned()
            .collect();
        out.extend(self.added.iter().filter(|e| !list.contains(e)).cloned());
        out
    }
}

/// Paths added to and removed from `profile.cgroups`.
pub type CgroupChange = ListChange<std::path::PathBuf>;

/// What a reload from `old` (running) to `new` (just read) changes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Plan {
    /// `mirror.sample_rate`, old and new.
    pub sample_rate: Option<(f64, f64)>,
    /// `mirror.cap_pps`, `cap_bytes_per_sec`, `cap_burst_ms`, old and new.
    pub caps: Option<(Caps, Caps)>,
    /// `allocate.dry_run`, old and new.
    pub dry_run: Option<(bool, bool)>,
    /// `profile.cgroups`: the paths added and the paths removed.
    pub cgroups: Option<CgroupChange>,
    /// `allocate.cgroups`: the groups added and the groups removed.
    pub managed: Option<ListChange<String>>,
    /// `[[mirror.rules]]` (selection and per-rule masks) changed: the rule counts, old and new.
    pub rules: Option<(usize, usize)>,
    /// `[mirror.mask]` keys changed (`mirror.mask.headers`, ...).
    pub mask: Option<Vec<&'static str>>,
    /// `[shadow]` keys that change live, changed (`shadow.command`, `shadow.cpu_cores`, ...).
    pub shadow: Option<Vec<&'static str>>,
    /// Sections with other changes, which take effect only at a restart.
    pub restart: Vec<&'static str>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self == &Plan::default()
    }
}

/// Compare the running configuration with the one just read.
pub fn plan(old: &Config, new: &Config) -> Plan {
    let mut p = Plan::default();
    match (&old.mirror, &new.mirror) {
        (Some(om), Some(nm)) => {
            let (o, n) = (MirrorLive::of(&om.options), MirrorLive::of(&nm.options));
            if o.sample_rate != n.sample_rate {
                p.sample_rate = Some((o.sample_rate, n.sample_rate));
            }
            if o.caps() != n.caps() {
                p.caps = Some((o.caps(), n.caps()));
            }
            if nm.rules != om.rules || nm.options.rule_masks != om.options.rule_masks {
                p.rules = Some((om.rules.len(), nm.rules.len()));
            }
            let (a, b) = (&om.options.mask, &nm.options.mask);
            let keys: Vec<&'static str> = [
                ("mirror.mask.headers", a.headers != b.headers),
                ("mirror.mask.params", a.params != b.params),
                ("mirror.mask.fill", a.fill != b.fill),
                ("mirror.mask.scan_bytes", a.scan_bytes != b.scan_bytes),
                ("mirror.mask.replace", a.token_key != b.token_key),
            ]
            .into_iter()
            .filter_map(|(k, changed)| changed.then_some(k))
            .collect();
            if !keys.is_empty() {
                p.mask = Some(keys);
            }
            // The rest of the section, with the live settings made equal.
            let mut same = nm.clone();
            o.write_to(&mut same.options);
            same.rules = om.rules.clone();
            same.options.rule_masks = om.options.rule_masks.clone();
            same.options.mask = om.options.mask.clone();
            if &same != om {
                p.restart.push("mirror");
            }
        }
        (None, None) => {}
        _ => p.restart.push("mirror"),
    }
    match (&old.allocate, &new.allocate) {
        (Some(o), Some(n)) => {
            if o.allocator.dry_run != n.allocator.dry_run {
                p.dry_run = Some((o.allocator.dry_run, n.allocator.dry_run));
            }
            p.managed = ListChange::between(&o.cgroups, &n.cgroups);
            let mut same = n.clone();
            same.allocator.dry_run = o.allocator.dry_run;
            same.cgroups = o.cgroups.clone();
            if &same != o {
                p.restart.push("allocate");
            }
        }
        (None, None) => {}
        _ => p.restart.push("allocate"),
    }
    match (&old.shadow, &new.shadow) {
        (Some(o), Some(n)) if o != n => {
            if o.fixed_keys_changed(n).is_empty() {
                p.shadow = Some(o.live_keys_changed(n));
            } else {
                p.restart.push("shadow");
            }
        }
        (Some(_), Some(_)) | (None, None) => {}
        _ => p.restart.push("shadow"),
    }
    if old.autoscale != new.autoscale {
        p.restart.push("shadow.autoscale");
    }
    if old.whatif != new.whatif {
        p.restart.push("shadow.whatif");
    }
    if old.metrics_listen != new.metrics_listen {
        p.restart.push("metrics");
    }
    p.cgroups = CgroupChange::between(&old.profile.cgroups, &new.profile.cgroups);
    if old.profile.interval_ms != new.profile.interval_ms {
        p.restart.push("profile");
    }
    if old.forecast != new.forecast {
        p.restart.push("forecast");
    }
    p
}

/// Record in `running` what a reload applied (the live settings only), so the next reload
/// compares against what really runs. (The cgroup lists are recorded by the caller, which
/// knows which of the changes it could make.)
pub fn record_applied(running: &mut Config, new: &Config, applied: &Plan) {
    if let (Some(r), Some(n)) = (running.mirror.as_mut(), new.mirror.as_ref()) {
        if applied.sample_rate.is_some() {
            r.options.sample_rate = n.options.sample_rate;
        }
        if applied.rules.is_some() {
            r.rules = n.rules.clone();
            r.options.rule_masks = n.options.rule_masks.clone();
        }
        if applied.mask.is_some() {
            r.options.mask = n.options.mask.clone();
        }
        if applied.caps.is_some() {
            r.options.cap_pps = n.options.cap_pps;
            r.options.cap_bytes_per_sec = n.options.cap_bytes_per_sec;
            r.options.cap_burst_ms = n.options.cap_burst_ms;
        }
    }
    if let (Some(r), Some(n)) = (running.allocate.as_mut(), new.allocate.as_ref()) {
        if applied.dry_run.is_some() {
            r.allocator.dry_run = n.allocator.dry_run;
        }
    }
    if applied.shadow.is_some() {
        running.shadow = new.shadow.clone();
    }
}

/// The JSON event of a reload (`"event": "reload"`): what was applied, what needs a
/// restart, and the errors (a config error: nothing was applied).
pub fn event(t_s: f64, applied: &Plan, restart: &[&'static str], errors: &[String]) -> Value {
    let mut a = serde_json::Map::new();
    if let Some((o, n)) = applied.sample_rate {
        a.insert("mirror.sample_rate".into(), json!([o, n]));
    }
    if let Some((o, n)) = applied.caps {
        a.insert(
            "mirror.caps".into(),
            json!({"cap_pps": [o.0, n.0], "cap_bytes_per_sec": [o.1, n.1], "cap_burst_ms": [o.2, n.2]}),
        );
    }
    if let Some((o, n)) = applied.dry_run {
        a.insert("allocate.dry_run".into(), json!([o, n]));
    }
    if let Some(c) = &applied.cgroups {
        a.insert("profile.cgroups".into(), json!(c));
    }
    if let Some(c) = &applied.managed {
        a.insert("allocate.cgroups".into(), json!(c));
    }
    if let Some((o, n)) = applied.rules {
        a.insert("mirror.rules".into(), json!([o, n]));
    }
    if let Some(keys) = &applied.mask {
        a.insert("mirror.mask".into(), json!(keys));
    }
    if let Some(keys) = &applied.shadow {
        a.insert("shadow".into(), json!(keys));
    }
    json!({
        "event": "reload",
        "t_s": t_s,
        "applied": a,
        "restart_needed": restart,
        "errors": errors,
    })
}

/// One line describing a reload event: what was applied, what needs a restart, the errors.
pub fn describe(ev: &Value) -> String {
    let applied: Vec<String> = ev["applied"]
        .as_object()
        .map(|a| a.iter().map(|(k, v)| format!("{k} {v}")).collect())
        .unwrap_or_default();
    let list = |key: &str| -> Vec<String> {
        ev[key]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|x| x.as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    };
    let (restart, errors) = (list("restart_needed"), list("errors"));
    let mut out = format!(
        "applied: {}",
        if applied.is_empty() {
            "nothing".to_owned()
        } else {
            applied.join(", ")
        }
    );
    if !restart.is_empty() {
        out += &format!("; restart needed: {}", restart.join(", "));
    }
    if !errors.is_empty() {
        out += &format!("; errors: {}", errors.join("; "));
    }
    out
}

/// Errors of [`request`].
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    #[error(transparent)]
    Status(#[from] crate::status::StatusError),
    #[error("sending SIGHUP to agent {pid}")]
    Signal {
        pid: u64,
        #[source]
        source: nix::errno::Errno,
    },
    #[error("agent {pid} published no reload within {timeout:?} of SIGHUP (is its interval longer? see --timeout)")]
    Timeout {
        pid: u64,
        timeout: std::time::Duration,
    },
}

/// `shadow-agent reload`: SIGHUP to the agent that publishes `status_file`, then the reload
/// event it publishes next (`last_reload` in its status), waiting at most `timeout`.
pub fn request(
    status_file: &std::path::Path,
    timeout: std::time::Duration,
) -> Result<Value, RequestError> {
    let v = crate::status::read(status_file)?;
    let pid = v["agent_pid"].as_u64().unwrap_or(0);
    let before = v["last_reload"]["t_s"].as_f64();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid as i32),
        nix::sys::signal::Signal::SIGHUP,
    )
    .map_err(|source| RequestError::Signal { pid, source })?;
    let deadline = std::time::Instant::now() + timeout;
    loop {
        std::thread::sleep(std::time::Duration::from_millis(50));
        let v = crate::status::read(status_file)?;
        let ev = &v["last_reload"];
        if ev["event"] == "reload" && ev["t_s"].as_f64() != before {
            return Ok(ev.clone());
        }
        if std::time::Instant::now() > deadline {
            return Err(RequestError::Timeout { pid, timeout });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const BASE: &str = r#"
[mirror]
interface = "eth9"
shadow_interface = "sh9"
shadow_mac = "02:00:00:00:00:01"
sample_rate = 1.0
[[mirror.rules]]
dst = "10.0.0.2/32"
proto = "udp"

[allocate]
cgroups = ["shop/web"]
dry_run = true
"#;

    fn cfg(text: &str) -> Config {
        Config::parse(text, Path::new("t.toml")).expect("valid config")
    }

    #[test]
    fn an_unchanged_file_changes_nothing() {
        assert!(plan(&cfg(BASE), &cfg(BASE)).is_empty());
    }

    #[test]
    fn sample_rate_caps_and_dry_run_apply_live() {
        let new = BASE
            .replace("sample_rate = 1.0", "sample_rate = 0.25\ncap_pps = 500")
            .replace("dry_run = true", "dry_run = false");
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.sample_rate, Some((1.0, 0.25)));
        assert_eq!(p.caps, Some(((0, 0, 100), (500, 0, 100))));
        assert_eq!(p.dry_run, Some((true, false)));
        assert!(p.restart.is_empty(), "{p:?}");
        // Once recorded, the same file is no change.
        let mut running = cfg(BASE);
        record_applied(&mut running, &cfg(&new), &p);
        assert!(plan(&running, &cfg(&new)).is_empty());
    }

    #[test]
    fn other_changes_are_named_for_a_restart_and_not_recorded() {
        let new = BASE
            .replace(
                "shadow_mac = \"02:00:00:00:00:01\"",
                "shadow_mac = \"02:00:00:00:00:02\"",
            )
            .replace(
                "dry_run = true",
                "dry_run = true\nstate_dir = \"/tmp/elsewhere\"",
            )
            .replace("sample_rate = 1.0", "sample_rate = 0.5");
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.restart, vec!["mirror", "allocate"]);
        assert_eq!(
            p.sample_rate,
            Some((1.0, 0.5)),
            "the live part still applies"
        );
        let mut running = cfg(BASE);
        record_applied(&mut running, &cfg(&new), &p);
        assert_eq!(
            plan(&running, &cfg(&new)).restart,
            vec!["mirror", "allocate"]
        );
        // Adding or removing a section is a restart too.
        let without = BASE.split("[allocate]").next().unwrap().to_owned();
        assert_eq!(plan(&cfg(BASE), &cfg(&without)).restart, vec!["allocate"]);
        let profiled = format!("{BASE}\n[profile]\ninterval_ms = 250\n");
        assert_eq!(plan(&cfg(BASE), &cfg(&profiled)).restart, vec!["profile"]);
    }

    #[test]
    fn what_masking_looks_for_changes_live_and_pseudonyms_need_a_restart() {
        let new = BASE.replace(
            "proto = \"udp\"",
            "proto = \"udp\"\n[mirror.mask]\nheaders = [\"Authorization\", \"X-Canary\"]\nfill = \"#\"",
        );
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(
            p.mask,
            Some(vec!["mirror.mask.headers", "mirror.mask.fill"])
        );
        assert!(p.restart.is_empty() && p.rules.is_none(), "{p:?}");
        assert_eq!(
            event(1.0, &p, &[], &[])["applied"]["mirror.mask"],
            serde_json::json!(["mirror.mask.headers", "mirror.mask.fill"])
        );
        let mut running = cfg(BASE);
        record_applied(&mut running, &cfg(&new), &p);
        assert!(plan(&running, &cfg(&new)).is_empty());
        // A pseudonymisation key is the clients' identity in the shadow: a restart.
        let dir = std::env::temp_dir().join(format!("shdt-reload-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k");
        std::fs::write(&key, "00112233445566778899aabbccddeeff").unwrap();
        let pseudo = BASE.replace(
            "proto = \"udp\"",
            &format!(
                "proto = \"udp\"\n[mirror.pseudonymise]\nkey_file = \"{}\"",
                key.display()
            ),
        );
        let p = plan(&cfg(BASE), &cfg(&pseudo));
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!((p.mask, p.restart), (None, vec!["mirror"]));
    }

    #[test]
    fn mirror_rules_and_their_masks_change_live() {
        let new = BASE
            .replace(
                "proto = \"udp\"",
                "proto = \"udp\"\nports = \"53\"\nmask_ranges = [\"0:4\"]",
            )
            .replace(
                "sample_rate = 1.0",
                "sample_rate = 1.0\n[[mirror.rules]]\ndst = \"10.0.0.3/32\"",
            );
        let p = plan(&cfg(BASE), &cfg(&new));
        assert_eq!(p.rules, Some((1, 2)));
        assert!(p.restart.is_empty(), "{p:?}");
        assert_eq!(
            event(1.0, &p, &[], &[])["applied"]["mirror.rules"],
            serde_json::json!([1, 2])
        );
        let mut running = cfg(BASE);
        record_applied(&mut running, &cfg(&new), &p);
        assert!(plan(&running, &cfg(&new)).is_empty());
    }

    #[test]
    fn shadow_command_caps_and_bounds_change_live_its_isolation_needs_a_restart() {
        let base = "[shadow]\nname = \"web\"\ncommand = [\"sleep\", \"30\"]\n\
                    addresses = [\"198.18.0.2/24\"]\ncpu_cores = 0.5\n";
        let new = base
            .replace("\"30\"", "\"31\"")
            .replace("cpu_cores = 0.5", "cpu_cores = 0.25\nreplicas_max = 2");
        let p = plan(&cfg(base), &cfg(&new));
        assert_eq!(
            p.shadow,
            Some(vec![
                "shadow.command",
                "shadow.cpu_cores",
                "shadow.replicas"
            ])
        );
        assert!(p.restart.is_empty(), "{p:?}");
        assert_eq!(
            event(1.0, &p, &[], &[])["applied"]["shadow"],
            serde_json::json!(["shadow.command", "shadow.cpu_cores", "shadow.replicas"])
        );
        let mut running = cfg(base);
        record_applied(&mut running, &cfg(&new), &p);
        assert!(plan(&running, &cfg(&new)).is_empty());
        // The replicas' addresses (their isolation) change only with a restart.
        let moved = base.replace("198.18.0.2/24", "198.18.0.3/24");
        let p = plan(&cfg(base), &cfg(&moved));
        assert_eq!(p.restart, vec!["shadow"]);
        assert!(p.shadow.is_none());
    }

    #[test]
    fn managed_groups_change_live() {
        let new = BASE.replace(
            r#"cgroups = ["shop/web"]"#,
            r#"cgroups = ["shop/api", "shop/db"]"#,
        );
        let p = plan(&cfg(BASE), &cfg(&new));
        assert!(p.restart.is_empty(), "{p:?}");
        let c = p.managed.clone().expect("a change");
        assert_eq!(c.added, vec!["shop/api".to_owned(), "shop/db".to_owned()]);
        assert_eq!(c.removed, vec!["shop/web".to_owned()]);
        assert_eq!(
            c.apply_to(&["shop/web".to_owned(), "shop/x".to_owned()]),
            vec!["shop/x", "shop/api", "shop/db"]
        );
        let e = event(0.0, &p, &[], &[]);
        assert_eq!(
            e["applied"]["allocate.cgroups"],
            json!({"added": ["shop/api", "shop/db"], "removed": ["shop/web"]})
        );
    }

    #[test]
    fn profiled_cgroups_change_live_order_aside() {
        let with = |list: &str| cfg(&format!("{BASE}\n[profile]\ncgroups = [{list}]\n"));
        let p = plan(&with(r#""/cg/a", "/cg/b""#), &with(r#""/cg/c", "/cg/a""#));
        assert!(p.restart.is_empty(), "{p:?}");
        let c = p.cgroups.expect("a change");
        assert_eq!(c.added, vec![std::path::PathBuf::from("/cg/c")]);
        assert_eq!(c.removed, vec![std::path::PathBuf::from("/cg/b")]);
        assert!(plan(&with(r#""/cg/a", "/cg/b""#), &with(r#""/cg/b", "/cg/a""#)).is_empty());
        let e = event(
            1.0,
            &Plan {
                cgroups: Some(c),
                ..Plan::default()
            },
            &[],
            &[],
        );
        assert_eq!(
            e["applied"]["profile.cgroups"],
            json!({"added": ["/cg/c"], "removed": ["/cg/b"]})
        );
    }

    #[test]
    fn the_event_lists_old_and_new_values() {
        let p = Plan {
            sample_rate: Some((1.0, 0.1)),
            ..Plan::default()
        };
        let e = event(3.5, &p, &["mirror"], &[]);
        assert_eq!(e["event"], "reload");
        assert_eq!(e["applied"]["mirror.sample_rate"], json!([1.0, 0.1]));
        assert_eq!(e["restart_needed"], json!(["mirror"]));
        assert_eq!(
            describe(&e),
            "applied: mirror.sample_rate [1.0,0.1]; restart needed: mirror"
        );
        let failed = event(
            1.0,
            &Plan::default(),
            &[],
            &["mirror.sample_rate: bad".into()],
        );
        assert_eq!(
            describe(&failed),
            "applied: nothing; errors: mirror.sample_rate: bad"
        );
    }
}
