//! `vireo observe` (the agent's recent flows, like `hubble observe`) and `vireo monitor` (its
//! events, like `cilium monitor`): both poll the agent from a cursor and print what is new.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use vireo_api::flows::{parse_since, render_flow, FlowFilter};
use vireo_api::{self as api, TraceAsk};

/// The event types `vireo monitor --type` takes.
pub const EVENT_TYPES: [&str; 3] = ["drop", "policy-verdict", "trace"];

/// Checks `vireo monitor`'s types and trace options; what to ask the agent to trace.
pub fn trace_ask(
    kinds: &[String],
    sample: Option<u32>,
    pod: Option<String>,
    endpoint: Option<u16>,
) -> Result<Option<TraceAsk>> {
    if let Some(k) = kinds.iter().find(|k| !EVENT_TYPES.contains(&k.as_str())) {
        bail!("--type {k}: the event types are `drop`, `policy-verdict` and `trace`");
    }
    let trace = kinds.iter().any(|k| k == "trace");
    if !trace {
        if sample.is_some() || pod.is_some() || endpoint.is_some() {
            bail!("--sample, --pod and --endpoint select traces: give them with --type trace");
        }
        return Ok(None);
    }
    if pod.is_some() && endpoint.is_some() {
        bail!("give --pod or --endpoint, not both");
    }
    if let Some(p) = &pod {
        vireo_api::flows::parse_pod(p).map_err(anyhow::Error::msg)?;
    }
    let selected = pod.is_some() || endpoint.is_some();
    let sample = sample.unwrap_or(if selected { 1 } else { 100 });
    if sample == 0 {
        bail!("--sample must be at least 1");
    }
    Ok(Some(TraceAsk {
        sample,
        pod,
        endpoint,
    }))
}

/// `vireo observe`'s options, checked.
#[derive(Debug, Clone, PartialEq)]
pub struct ObserveOpts {
    /// What to ask for.
    pub filter: FlowFilter,
    /// Keep following.
    pub follow: bool,
    /// Stop following after this long.
    pub seconds: Option<u64>,
    /// Stop after this many flows.
    pub count: Option<usize>,
}

impl ObserveOpts {
    /// Checks the command line: a clear error for a bad flag.
    pub fn new(
        since: Option<String>,
        pod: Option<String>,
        verdict: Option<String>,
        follow: bool,
        seconds: Option<u64>,
        count: Option<usize>,
    ) -> Result<ObserveOpts> {
        let since_ms = since
            .as_deref()
            .map(parse_since)
            .transpose()
            .map_err(anyhow::Error::msg)?;
        let filter = FlowFilter {
            since_ms,
            pod,
            verdict: verdict.map(|v| v.to_ascii_uppercase()),
            after: None,
        };
        filter.check().map_err(anyhow::Error::msg)?;
        if seconds.is_some() && !follow {
            bail!("--seconds bounds --follow: give it with --follow");
        }
        if count == Some(0) {
            bail!("--count must be at least 1");
        }
        Ok(ObserveOpts {
            filter,
            follow,
            seconds,
            count,
        })
    }
}

/// Writes `s` to stdout (the CLI's `out!`); a reader gone away (`vireo observe | head`) ends
/// the command quietly.
pub fn write_out(s: &str) -> Result<()> {
    let mut o = std::io::stdout().lock();
    if let Err(e) = o.write_all(s.as_bytes()).and_then(|()| o.flush()) {
        if e.kind() == std::io::ErrorKind::BrokenPipe {
            std::process::exit(0);
        }
        return Err(e.into());
    }
    Ok(())
}

/// Prints a line.
fn emit(line: &str) -> Result<()> {
    write_out(&format!("{line}\n"))
}

/// A count the agent keeps from its start (losses, overwrites), reported by how much it grew
/// between two answers.
#[derive(Default)]
struct Growth(Option<u64>);

impl Growth {
    /// How much the count grew to `now`; at the first answer, all of it when `from_start`,
    /// else nothing (only what grows after).
    fn grew(&mut self, now: u64, from_start: bool) -> Option<u64> {
        let before = self.0.unwrap_or(if from_start { 0 } else { now });
        self.0 = Some(now);
        (now > before).then(|| now - before)
    }
}

/// `vireo observe`: the flows the agent has, then (with --follow) new ones as they come.
pub fn observe(path: &Path, o: &ObserveOpts, json: bool) -> Result<()> {
    let until = o.seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let mut filter = o.filter.clone();
    let (mut printed, mut lost, mut overwritten) = (0usize, Growth::default(), Growth::default());
    loop {
        let v = api::call(
            path,
            &api::Request::Observe {
                filter: filter.clone(),
                max: 1 << 16,
            },
        )?;
        for f in v["flows"].as_array().into_iter().flatten() {
            if json {
                emit(&serde_json::to_string(f)?)?;
            } else {
                emit(&render_flow(f))?;
            }
            printed += 1;
            if o.count.is_some_and(|c| printed >= c) {
                return Ok(());
            }
        }
        // Losses since the agent started: shown once, then as they grow.
        if let Some(n) = lost.grew(v["lost"].as_u64().unwrap_or(0), true) {
            eprintln!("observe: {n} flows lost (worker rings full)");
        }
        if let Some(n) = overwritten.grew(v["overwritten"].as_u64().unwrap_or(0), false) {
            eprintln!("observe: {n} flows overwritten in the agent's ring before they were read");
        }
        if !o.follow || until.is_some_and(|u| Instant::now() >= u) {
            return Ok(());
        }
        filter.after = v["cursor"].as_u64();
        // Following: new flows only, whatever their age.
        filter.since_ms = None;
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `vireo monitor`: polls the agent for events after its cursor and prints those of `kinds`
/// as they come.
pub fn monitor(
    kinds: &[String],
    path: &Path,
    json: bool,
    seconds: Option<u64>,
    count: Option<usize>,
    trace: Option<TraceAsk>,
) -> Result<()> {
    let want = |t: &str| kinds.iter().any(|k| k == t);
    let verdicts = want("policy-verdict");
    let until = seconds.map(|s| Instant::now() + Duration::from_secs(s));
    let (mut seen, mut lost, mut sampled) = (0usize, Growth::default(), Growth::default());
    let mut cursor = None;
    loop {
        let v = api::call(
            path,
            &api::Request::Monitor {
                max: 1024,
                after: cursor,
                verdicts,
                trace: trace.clone(),
            },
        )?;
        cursor = v["cursor"].as_u64().or(cursor);
        if let Some(n) = v["missed"].as_u64().filter(|n| *n > 0) {
            eprintln!("monitor: {n} events missed (the agent's event log moved past them)");
        }
        for e in v["events"].as_array().into_iter().flatten() {
            if !want(e["type"].as_str().unwrap_or("drop")) {
                continue;
            }
            if json {
                emit(&serde_json::to_string(e)?)?;
            } else {
                emit(&api::render::render_event(e))?;
            }
            seen += 1;
            if count.is_some_and(|c| seen >= c) {
                return Ok(());
            }
        }
        if let Some(n) = lost.grew(v["lost"].as_u64().unwrap_or(0), true) {
            eprintln!("monitor: {n} events lost (queue full)");
        }
        // Counted since the agent started: reported as it grows from the first answer.
        let sampled_out = sampled.grew(v["sampled_out"].as_u64().unwrap_or(0), false);
        if let Some(n) = sampled_out.filter(|_| verdicts) {
            eprintln!("monitor: {n} policy verdicts sampled out (rate limit)");
        }
        if until.is_some_and(|u| Instant::now() >= u) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(k: &[&str]) -> Vec<String> {
        k.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn counts_are_reported_by_their_growth() {
        let mut g = Growth::default();
        assert_eq!(
            g.grew(5, true),
            Some(5),
            "from the start: all at the first answer"
        );
        assert_eq!(g.grew(5, true), None);
        assert_eq!(g.grew(8, true), Some(3));
        let mut h = Growth::default();
        assert_eq!(
            h.grew(5, false),
            None,
            "only what grows after the first answer"
        );
        assert_eq!(h.grew(7, false), Some(2));
        assert_eq!(
            h.grew(2, false),
            None,
            "a count that went back (a new agent)"
        );
        assert_eq!(h.grew(4, false), Some(2));
    }

    #[test]
    fn monitor_trace_options_are_checked() {
        assert_eq!(
            trace_ask(&kinds(&["drop"]), None, None, None).unwrap(),
            None
        );
        let t = trace_ask(&kinds(&["trace"]), None, None, None)
            .unwrap()
            .unwrap();
        assert_eq!(t.sample, 100, "sampled by default");
        let t = trace_ask(&kinds(&["trace"]), None, Some("x/a".into()), None)
            .unwrap()
            .unwrap();
        assert_eq!((t.sample, t.pod.as_deref()), (1, Some("x/a")));
        let t = trace_ask(&kinds(&["trace", "drop"]), Some(7), None, Some(3))
            .unwrap()
            .unwrap();
        assert_eq!((t.sample, t.endpoint), (7, Some(3)));
        let err = |k: &[&str], s, p: Option<&str>, e| {
            trace_ask(&kinds(k), s, p.map(String::from), e)
                .unwrap_err()
                .to_string()
        };
        assert!(err(&["nope"], None, None, None).contains("`trace`"));
        assert!(err(&["drop"], Some(2), None, None).contains("--type trace"));
        assert!(err(&["trace"], Some(0), None, None).contains("at least 1"));
        assert!(err(&["trace"], None, Some("x/a"), Some(1)).contains("not both"));
        assert!(err(&["trace"], None, Some("xa"), None).contains("NAMESPACE/NAME"));
    }

    #[test]
    fn observe_options_are_checked() {
        let o = ObserveOpts::new(
            Some("5m".into()),
            Some("x/a".into()),
            Some("dropped".into()),
            true,
            Some(3),
            None,
        )
        .unwrap();
        assert_eq!(o.filter.since_ms, Some(300_000));
        assert_eq!(o.filter.verdict.as_deref(), Some("DROPPED"));
        let bad = |since: Option<&str>, verdict: Option<&str>, follow, seconds| {
            ObserveOpts::new(
                since.map(String::from),
                None,
                verdict.map(String::from),
                follow,
                seconds,
                None,
            )
            .unwrap_err()
            .to_string()
        };
        assert!(bad(Some("5 minutes"), None, false, None).starts_with("--since"));
        assert!(bad(None, Some("ALLOWED"), false, None).starts_with("--verdict"));
        assert!(bad(None, None, false, Some(3)).contains("--follow"));
    }
}
