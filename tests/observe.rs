//! `vireo observe` and `vireo monitor --type trace|policy-verdict` against a running sandbox
//! (root only): a forwarded pod-to-pod flow with its pods' names, a flow denied by a policy
//! with its rule, the `--verdict`, `--pod` and `--since` filters, `--follow`, bad flags, and
//! trace and policy-verdict events.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

impl Sandbox {
    /// `vireo observe --json ARGS`: one flow per line.
    fn observe(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["observe", "--json"];
        a.extend_from_slice(args);
        let o = self.vireo(&a);
        assert!(
            o.status.success(),
            "{a:?}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        lines(&o.stdout)
    }
}

fn lines(out: &[u8]) -> Vec<Value> {
    String::from_utf8_lossy(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn pod_of(e: &Value) -> String {
    format!(
        "{}/{}",
        e["namespace"].as_str().unwrap_or("?"),
        e["pod_name"].as_str().unwrap_or("?")
    )
}

#[test]
fn observe_and_monitor_traces_and_verdicts_in_a_sandbox() {
    require_capabilities(&[]);
    let s = Sandbox::up("vf", &["--source", "manifests"]);
    let a = "default/node-1-pod-1";
    let b_ip = s.pod_ip("default/node-1-pod-2");
    let server = "policy-test/server";
    let server_ip = s.pod_ip(server);

    // Bad flags: clear errors, before any agent is asked.
    for (args, needle) in [
        (&["observe", "--verdict", "ALLOWED"][..], "--verdict"),
        (&["observe", "--since", "5 minutes"][..], "--since"),
        (&["observe", "--pod", "nopod"][..], "NAMESPACE/NAME"),
        (&["observe", "--seconds", "3"][..], "--follow"),
        (&["monitor", "--type", "traces"][..], "`trace`"),
        (&["monitor", "--sample", "5"][..], "--type trace"),
    ] {
        let o = s.vireo(args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            !o.status.success() && err.contains(needle),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    let o = s.vireo(&[
        "monitor",
        "--node",
        "node-2",
        "--type",
        "trace",
        "--pod",
        "x/none",
        "--seconds",
        "1",
    ]);
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("no such pod"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );

    // Two monitors on node-2 (the policy server's node) while the policy check (a third
    // monitor client) runs: every client sees every event.
    let drops = s.spawn(&[
        "monitor",
        "--node",
        "node-2",
        "--type",
        "drop",
        "--json",
        "--seconds",
        "40",
    ]);
    let monitor = s.spawn(&[
        "monitor",
        "--node",
        "node-2",
        "--type",
        "policy-verdict",
        "--type",
        "trace",
        "--pod",
        server,
        "--json",
        "--seconds",
        "40",
    ]);
    let follow = s.spawn(&[
        "observe",
        "--node",
        "node-1",
        "--json",
        "--follow",
        "--seconds",
        "40",
        "--pod",
        a,
    ]);
    std::thread::sleep(Duration::from_secs(2));
    // A forwarded flow on node-1 (pod to pod), and the policy check: client-other's
    // connections to the server are denied by `ingressDeny`, the others allowed.
    s.ping(a, &b_ip);
    // The check reads node-2's drop events as a monitor client too, and passes only if they
    // show each denied flow with its rule.
    let o = s
        .cmd(&["connectivity", "test", "--json"])
        .env("VIREO_CONNECTIVITY_CHECKS", "policy-deny")
        .output()
        .unwrap();
    let report: Value = serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|_| panic!("policy-deny check: {}", String::from_utf8_lossy(&o.stderr)));
    let check = report["checks"]
        .as_array()
        .and_then(|c| c.iter().find(|c| c["name"] == "policy-deny"))
        .unwrap_or_else(|| panic!("{report}"));
    assert_eq!(check["passed"], true, "beside two other monitors: {check}");
    s.ping(a, &b_ip);

    // The forwarded flow, with both pods' names, identities and labels.
    let n1 = s.observe(&["--node", "node-1"]);
    let fwd = n1
        .iter()
        .find(|f| {
            f["verdict"] == "FORWARDED"
                && f["IP"]["destination"] == b_ip.as_str()
                && f["l4"]["ICMPv4"]["type"] == 8
        })
        .unwrap_or_else(|| panic!("no forwarded ICMP flow to {b_ip} in {n1:#?}"));
    assert_eq!(pod_of(&fwd["source"]), a, "{fwd}");
    assert_eq!(pod_of(&fwd["destination"]), "default/node-1-pod-2", "{fwd}");
    assert_eq!(fwd["Type"], "L3_L4");
    assert_eq!(fwd["traffic_direction"], "EGRESS");
    assert!(fwd["source"]["identity"].as_u64().unwrap() > 0);
    assert!(!fwd["source"]["labels"].as_array().unwrap().is_empty());
    assert!(fwd["bytes"].as_u64().unwrap() >= 84);
    assert!(fwd["time"].as_str().unwrap().ends_with('Z'));
    // Its first reply is recorded too.
    assert!(
        n1.iter().any(|f| f["event"] == "first_reply"
            && f["IP"]["source"] == b_ip.as_str()
            && f["is_reply"] == true),
        "no first reply from {b_ip}"
    );

    // The denied flow on node-2, with the rule that denied it.
    let n2 = s.observe(&["--node", "node-2"]);
    let denied = n2
        .iter()
        .find(|f| f["verdict"] == "DROPPED" && pod_of(&f["source"]) == "policy-test/client-other")
        .unwrap_or_else(|| panic!("no dropped flow from client-other in {n2:#?}"));
    assert_eq!(denied["drop_reason_desc"], "POLICY_DENIED", "{denied}");
    assert_eq!(pod_of(&denied["destination"]), server);
    assert_eq!(denied["IP"]["destination"], server_ip.as_str());
    assert!(
        denied["policy_rule"]
            .as_str()
            .is_some_and(|r| r.contains("ingressDeny[0]")),
        "{denied}"
    );
    assert_eq!(denied["ingress_denied_by"][0]["rule"], "ingressDeny[0]");
    assert_eq!(denied["traffic_direction"], "INGRESS");
    assert_eq!(denied["l4"]["TCP"]["flags"]["SYN"], true, "{denied}");
    // An allowed connection to the server is a forwarded flow.
    assert!(
        n2.iter().any(|f| f["verdict"] == "FORWARDED"
            && pod_of(&f["destination"]) == server
            && f["l4"]["TCP"]["flags"]["SYN"] == true),
        "no forwarded flow to the server"
    );

    // Filters.
    let dropped = s.observe(&["--node", "node-2", "--verdict", "DROPPED"]);
    assert!(!dropped.is_empty());
    assert!(dropped.iter().all(|f| f["verdict"] == "DROPPED"));
    assert!(dropped.len() < n2.len());
    let of_a = s.observe(&["--node", "node-1", "--pod", a]);
    assert!(!of_a.is_empty());
    assert!(of_a
        .iter()
        .all(|f| pod_of(&f["source"]) == a || pod_of(&f["destination"]) == a));
    assert!(of_a.len() < n1.len(), "node-1 has other pods' flows too");
    assert!(!s.observe(&["--node", "node-1", "--since", "5m"]).is_empty());
    std::thread::sleep(Duration::from_secs(3));
    let recent = s.observe(&["--node", "node-1", "--since", "2s", "--pod", a]);
    assert!(
        recent.is_empty(),
        "nothing from a in the last 2 s: {recent:#?}"
    );
    // Text output: one line per flow.
    let o = s.vireo(&["observe", "--node", "node-2", "--verdict", "DROPPED"]);
    let text = String::from_utf8_lossy(&o.stdout);
    assert!(
        text.lines().any(|l| l.contains("policy-test/client-other")
            && l.contains("DROPPED")
            && l.contains("ingressDeny[0]")),
        "{text}"
    );

    // --follow printed the flows of `a` as they came (both pings).
    s.ping(a, &b_ip);
    let followed = lines(&follow.finish(Duration::from_secs(60)));
    let pings = followed
        .iter()
        .filter(|f| f["l4"]["ICMPv4"]["type"] == 8 && f["event"] == "new")
        .count();
    assert!(pings >= 2, "followed: {followed:#?}");

    // The drop monitor saw client-other's denied connections, with their rule.
    let dropped = lines(&drops.finish(Duration::from_secs(60)));
    assert!(
        dropped.iter().any(|e| e["type"] == "drop"
            && e["reason"] == "policy_denied"
            && e["rule"]
                .as_str()
                .is_some_and(|r| r.contains("ingressDeny[0]"))),
        "drops: {dropped:#?}"
    );
    assert!(
        dropped.iter().all(|e| e["type"] == "drop"),
        "only drops asked for"
    );
    // Policy verdicts: client-other denied by the deny rule, an allowed client allowed.
    let events = lines(&monitor.finish(Duration::from_secs(60)));
    let of =
        |t: &str| -> Vec<Value> { events.iter().filter(|e| e["type"] == t).cloned().collect() };
    let v = of("policy-verdict");
    assert!(
        v.iter().any(|e| e["type"] == "policy-verdict"
            && e["verdict"] == "denied"
            && e["rule"]
                .as_str()
                .is_some_and(|r| r.contains("ingressDeny[0]"))),
        "verdicts: {v:#?}"
    );
    assert!(
        v.iter().any(|e| e["verdict"] == "allowed"),
        "verdicts: {v:#?}"
    );
    // Traces of packets to or from the server only, with where they went.
    let t = of("trace");
    assert!(!t.is_empty(), "no traces");
    for e in &t {
        assert_eq!(e["type"], "trace");
        let ends = format!("{} {}", e["src"], e["dst"]);
        assert!(ends.contains(&server_ip), "{e}");
        assert!(e["to_interface"].is_string(), "{e}");
    }
    assert!(t.iter().any(|e| e["state"] == "new"), "{t:#?}");
}
