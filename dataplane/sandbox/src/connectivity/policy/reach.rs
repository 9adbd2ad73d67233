//! The policy checks' connection attempts: which flows must be allowed or denied, trying them
//! all at once, and proving the verdicts by the answers, the agents' `policy_denied` counters,
//! their drop events and `policy trace`; applying and removing the checks' policies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::Value;
use vireo_api as api;
use vireo_control::trace;

use crate as sandbox;
use crate::{NodeState, PodState, ECHO_HTTP_PORT, UNDERLAY_CLIENT};

use super::{Attempt, Reached, POLICY_NODE_PORT, POLICY_WAIT_MS};
use crate::connectivity::{counters, parse_answers, wait_nodes, Answer, Backends, Env};

/// A monitor client's cursor on one node (`vireo monitor`): none before its first call.
type Cursor = Option<u64>;

/// The `policy_denied` count among a node's drop counters (`counters(n)["drops"]`).
fn policy_denied_of(drops: &Value) -> u64 {
    drops["policy_denied"].as_u64().unwrap_or(0)
}

/// A short name of a sandbox pod: `server` in the policy namespace, `x/a` elsewhere.
fn short(p: &PodState) -> String {
    if p.namespace == sandbox::POLICY_NAMESPACE {
        p.name.clone()
    } else {
        format!("{}/{}", p.namespace, p.name)
    }
}

/// The policies among `objects`, as `vireo policy get` names them: (kind, `namespace/name` or
/// the name of a cluster-wide policy).
pub(super) fn policy_names(objects: &[Value]) -> BTreeSet<(String, String)> {
    objects
        .iter()
        .filter_map(|o| {
            let kind = o["kind"].as_str()?;
            let name = o["metadata"]["name"].as_str()?;
            let ns = o["metadata"]["namespace"].as_str().unwrap_or("default");
            match kind {
                "NetworkPolicy" | "CiliumNetworkPolicy" => {
                    Some((kind.to_string(), format!("{ns}/{name}")))
                }
                "CiliumClusterwideNetworkPolicy" => Some((kind.to_string(), name.to_string())),
                _ => None,
            }
        })
        .collect()
}

/// Policy checks: each applies its policies (and objects) at the start and removes them at the
/// end, also when it fails; each proves with real connections that something is allowed and
/// something else denied, and that the right agent counted the denials as `policy_denied`.
impl Env {
    /// A pod of the default sandbox's policy namespace.
    pub(in crate::connectivity) fn policy_pod(&self, name: &str) -> Result<&PodState> {
        self.st
            .pod(&format!("{}/{name}", sandbox::POLICY_NAMESPACE))
            .context(
                "the policy checks' pods come with the default sandbox \
                 (`vireo sandbox up` without --manifests)",
            )
    }

    /// The `policy_denied` counter of every node.
    pub(super) fn policy_denied(&self) -> Result<Vec<u64>> {
        Ok(self.drops()?.iter().map(policy_denied_of).collect())
    }

    /// The drop counters of every node.
    pub(super) fn drops(&self) -> Result<Vec<Value>> {
        self.st
            .nodes
            .iter()
            .map(|n| Ok(counters(n)?["drops"].clone()))
            .collect()
    }

    /// The policies an agent has in force (`vireo policy get`).
    fn policies_in_force(&self, n: &NodeState) -> Result<BTreeSet<(String, String)>> {
        let v = api::call(&n.api, &api::Request::PolicyGet)
            .with_context(|| format!("{}: policy get", n.name))?;
        Ok(v["policies"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|p| {
                let kind = p["kind"].as_str()?;
                // A cluster-wide policy of several specs is listed once per spec.
                let name = p["name"].as_str()?.split(" specs[").next()?;
                Some((kind.to_string(), name.to_string()))
            })
            .collect())
    }

    /// Publishes the sandbox's own objects plus `extra` (policies, Services) and waits (at most
    /// 8 s) until every agent has exactly their policies in force. `extra` empty: the sandbox
    /// as it was. The wait goes by the policies' names: a changed policy needs a new name.
    pub(in crate::connectivity) fn publish_objects(&self, extra: &[Value]) -> Result<Duration> {
        let t = Instant::now();
        let mut st = self.st.clone();
        st.objects.extend(extra.iter().cloned());
        sandbox::publish(&st, &[])?;
        let want = policy_names(&st.objects);
        wait_nodes(&self.st.nodes, t, |n| {
            let have = self.policies_in_force(n)?;
            Ok((have != want)
                .then(|| format!("{} has policies {have:?} in force, want {want:?}", n.name)))
        })
    }

    /// Runs a policy check's body, then restores the sandbox's own objects whatever happened,
    /// and waits until the agents have dropped the check's policies.
    pub(super) fn policy_scope<T>(&self, body: impl FnOnce() -> Result<T>) -> Result<T> {
        let r = body();
        let restored = self.publish_objects(&[]);
        let d = r?;
        restored.context("removing the check's policies")?;
        Ok(d)
    }

    /// Echo servers (`vireo probe echo-server`) on `ports` of each pod, for at most `secs`.
    pub(in crate::connectivity) fn policy_servers(
        &self,
        pods: &[&PodState],
        ports: &[u16],
        secs: u64,
    ) -> Result<Backends> {
        let mut b = Backends(Vec::new());
        let secs = secs.to_string();
        for p in pods {
            for port in ports {
                let tcp = format!("{}:{port}", p.ip);
                b.0.push(self.spawn_probe(p, &["echo-server", "--tcp", &tcp, "--timeout", &secs])?);
            }
        }
        Ok(b)
    }

    /// An attempt from a pod to a pod, judged by ingress policy (the server's node drops it).
    pub(super) fn attempt(
        &self,
        from: &PodState,
        to: &PodState,
        port: u16,
        allowed: bool,
    ) -> Attempt {
        Attempt {
            from: short(from),
            src: from.ip,
            netns: from.netns.clone(),
            to: SocketAddr::from((to.ip, port)),
            server: to.ip,
            dport: port,
            dest: format!("{}:{port}", short(to)),
            allowed,
            enforcer: to.node.clone(),
        }
    }

    /// An attempt from the underlay client (`world`) to the server's node's NodePort
    /// `policy-np`.
    pub(super) fn world_attempt(&self, server: &PodState, allowed: bool) -> Attempt {
        let node = self.node(server);
        Attempt {
            from: format!("{UNDERLAY_CLIENT} (world)"),
            src: UNDERLAY_CLIENT,
            netns: self.st.underlay.clone(),
            to: SocketAddr::from((node.ip, POLICY_NODE_PORT)),
            server: server.ip,
            dport: ECHO_HTTP_PORT,
            dest: format!(
                "{}:{POLICY_NODE_PORT} (NodePort, Local) -> {}:{ECHO_HTTP_PORT}",
                node.name,
                short(server)
            ),
            allowed,
            enforcer: server.node.clone(),
        }
    }

    /// Makes the attempts at once (one `vireo probe reach` per client namespace); their
    /// answers, in order.
    fn reach_all(&self, attempts: &[&Attempt]) -> Result<Vec<Answer>> {
        let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, a) in attempts.iter().enumerate() {
            groups.entry(a.netns.as_str()).or_default().push(i);
        }
        let wait = POLICY_WAIT_MS.to_string();
        let mut answers: Vec<Answer> = vec![Answer::default(); attempts.len()];
        std::thread::scope(|s| -> Result<()> {
            let runs: Vec<_> = groups
                .iter()
                .map(|(netns, idx)| {
                    let mut args = vec!["reach".to_string()];
                    for &i in idx {
                        args.extend(["--to".to_string(), attempts[i].to.to_string()]);
                    }
                    args.extend(["--wait-ms".to_string(), wait.clone()]);
                    let netns = netns.to_string();
                    s.spawn(move || {
                        let a: Vec<&str> = args.iter().map(String::as_str).collect();
                        let out = self
                            .probe_in(&netns, &a)
                            .with_context(|| format!("probe reach in {netns}"))?;
                        parse_answers(&out)
                    })
                })
                .collect();
            for ((_, idx), run) in groups.iter().zip(runs) {
                let got = run
                    .join()
                    .map_err(|_| anyhow!("a probe thread panicked"))??;
                if got.len() != idx.len() {
                    bail!(
                        "probe reach answered {} of {} attempts",
                        got.len(),
                        idx.len()
                    );
                }
                for (&i, a) in idx.iter().zip(got) {
                    answers[i] = a;
                }
            }
            Ok(())
        })?;
        Ok(answers)
    }

    /// Makes the attempts, at once, and checks each against what it should get: an allowed one
    /// is answered by its server, a denied one gets no answer at all (not a refusal: a policy
    /// drops silently). Each attempt is made once: an allowed attempt that got no answer fails
    /// the check. The denials must be counted as `policy_denied` by the node that enforces
    /// them, and no other node may count any.
    pub(super) fn expect_reach(&self, attempts: &[Attempt]) -> Result<Reached> {
        let drops_before = self.drops()?;
        let before: Vec<u64> = drops_before.iter().map(policy_denied_of).collect();
        let (_, cursors) = self.drop_events(&[])?;
        let answers = self.reach_all(&attempts.iter().collect::<Vec<_>>())?;
        let (mut allowed, mut denied, mut wrong) = (Vec::new(), Vec::new(), Vec::new());
        for (a, ans) in attempts.iter().zip(&answers) {
            let label = a.label();
            match (a.allowed, ans.backend, ans.error.as_deref()) {
                (true, Some(b), _) if b == a.server => allowed.push(label),
                (false, None, Some("timeout")) => denied.push(label),
                (want, Some(b), _) => wrong.push(format!(
                    "{label} answered by {b} in {:.0} ms{}",
                    ans.ms,
                    if want {
                        format!(", not by {}", a.server)
                    } else {
                        " although the policy denies it".into()
                    }
                )),
                (want, None, e) => wrong.push(format!(
                    "{label}: {} after {:.0} ms{}",
                    e.unwrap_or("no answer"),
                    ans.ms,
                    if want {
                        " although the policy allows it"
                    } else {
                        " (a policy drop is silent: want a timeout)"
                    }
                )),
            }
        }
        // The denials, counted by the nodes that enforce them (and by no other).
        let want: Vec<u64> = self
            .st
            .nodes
            .iter()
            .map(|n| {
                attempts
                    .iter()
                    .filter(|a| !a.allowed && a.enforcer == n.name)
                    .count() as u64
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(2);
        let got = loop {
            let now = self.policy_denied()?;
            let got: Vec<u64> = now
                .iter()
                .zip(&before)
                .map(|(a, b)| a.saturating_sub(*b))
                .collect();
            let enough = got.iter().zip(&want).all(|(g, w)| g >= w);
            if enough || Instant::now() > deadline {
                break got;
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let told = self.agents_tell(attempts, &cursors, &mut wrong)?;
        let counted = format!(
            "policy_denied {}; {told}",
            self.st
                .nodes
                .iter()
                .zip(&got)
                .map(|(n, g)| format!("{} +{g}", n.name))
                .collect::<Vec<_>>()
                .join(", ")
        );
        // Miscounts first: they stay in view when the list of wrong flows is cut short.
        let mut miscounted = Vec::new();
        for ((n, g), w) in self.st.nodes.iter().zip(&got).zip(&want) {
            if g < w {
                miscounted.push(format!(
                    "{} counted {g} policy_denied drops for {w} denied flows it enforces",
                    n.name
                ));
            } else if *w == 0 && *g > 0 {
                miscounted.push(format!(
                    "{} counted {g} policy_denied drops but enforces none of the denied flows",
                    n.name
                ));
            }
        }
        miscounted.append(&mut wrong);
        let mut wrong = miscounted;
        if !wrong.is_empty() {
            let list = |v: &[String]| match v.len() {
                0 => "none".to_string(),
                1..=6 => v.join(", "),
                n => format!("{n} flows"),
            };
            let n = wrong.len();
            if n > 12 {
                wrong.truncate(10);
                wrong.push(format!("and {} more", n - 10));
            }
            // Other drops the agents counted meanwhile, for the diagnosis.
            let after = self.drops()?;
            let other: Vec<String> = self
                .st
                .nodes
                .iter()
                .zip(drops_before.iter().zip(&after))
                .flat_map(|(n, (b, a))| {
                    a.as_object()
                        .into_iter()
                        .flatten()
                        .filter(|(r, _)| r.as_str() != "policy_denied")
                        .filter_map(move |(r, v)| {
                            let d = v.as_u64()?.saturating_sub(b[r].as_u64().unwrap_or(0));
                            (d > 0).then(|| format!("{} {r} +{d}", n.name))
                        })
                })
                .collect();
            bail!(
                "{}; (allowed as expected: {}; denied as expected: {}; {counted}; other drops: {})",
                wrong.join("; "),
                list(&allowed),
                list(&denied),
                if other.is_empty() {
                    "none".to_string()
                } else {
                    other.join(", ")
                }
            );
        }
        Ok(Reached {
            allowed,
            denied,
            counted,
        })
    }

    /// The drop events (`vireo monitor --type drop`) of every node after its cursor in
    /// `cursors` (none: from now on, which turns the agent's collection on), and the cursors
    /// to read on from. Other monitor clients see the same events.
    fn drop_events(&self, cursors: &[Cursor]) -> Result<(Vec<Vec<Value>>, Vec<Cursor>)> {
        let mut next = Vec::new();
        let events = self
            .st
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let v = api::call(
                    &n.api,
                    &api::Request::Monitor {
                        max: 8192,
                        after: cursors.get(i).copied().flatten(),
                        verdicts: false,
                        trace: None,
                    },
                )
                .with_context(|| format!("{}: monitor", n.name))?;
                next.push(v["cursor"].as_u64());
                Ok(v["events"].as_array().cloned().unwrap_or_default())
            })
            .collect::<Result<_>>()?;
        Ok((events, next))
    }

    /// What the operator's tools say of the attempts, checked against what the traffic did:
    /// the enforcing agent's `vireo policy trace` gives each attempt's verdict, and its
    /// `vireo monitor --type drop` shows each denied flow as a `policy_denied` event with the
    /// deciding rule (or the default deny). Disagreements go to `wrong`.
    fn agents_tell(
        &self,
        attempts: &[Attempt],
        cursors: &[Cursor],
        wrong: &mut Vec<String>,
    ) -> Result<String> {
        let (events, _) = self.drop_events(cursors)?;
        let mut shown = 0;
        for a in attempts {
            let (i, n) = self
                .st
                .nodes
                .iter()
                .enumerate()
                .find(|(_, n)| n.name == a.enforcer)
                .with_context(|| format!("no node {}", a.enforcer))?;
            let trace = api::Request::PolicyTrace {
                src: trace::EndpointSpec::Ip { ip: a.src },
                dst: trace::EndpointSpec::Ip { ip: a.server },
                dport: trace::PortProto {
                    port: a.dport,
                    proto: trace::TCP,
                },
            };
            let t =
                api::call(&n.api, &trace).with_context(|| format!("{}: policy trace", n.name))?;
            let want = if a.allowed { "allowed" } else { "denied" };
            if t["verdict"] != want {
                wrong.push(format!(
                    "{}: {}'s policy trace says {} (rules {})",
                    a.label(),
                    n.name,
                    t["verdict"],
                    t["rules"]
                ));
            }
            if a.allowed {
                continue;
            }
            let (src, dst) = (format!("{}:", a.src), format!("{}:{}", a.server, a.dport));
            let event = events[i].iter().find(|e| {
                e["reason"] == "policy_denied"
                    && e["src"].as_str().is_some_and(|s| s.starts_with(&src))
                    && e["dst"] == dst.as_str()
            });
            // The fast path's rule is one the trace names, or the default deny when it names
            // none.
            let traced: Vec<&str> = t["rules"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            match event.map(|e| (e, e["rule"].as_str())) {
                Some((_, Some(r)))
                    if traced.contains(&r) || (traced.is_empty() && r == "default deny") =>
                {
                    shown += 1
                }
                Some((e, _)) => wrong.push(format!(
                    "{}: {}'s drop event names another rule than the trace ({traced:?}): {e}",
                    a.label(),
                    n.name
                )),
                None => wrong.push(format!(
                    "{}: {}'s monitor shows no policy_denied event from {src}* to {dst}",
                    a.label(),
                    n.name,
                )),
            }
        }
        Ok(format!(
            "policy trace agrees on {}, monitor shows {shown} drop{} by the traced rule",
            attempts.len(),
            if shown == 1 { "" } else { "s" }
        ))
    }
}
