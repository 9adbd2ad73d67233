//! `policy-netpol-model`: a part of the Kubernetes network-policy e2e model (upstream's cases
//! and truth tables) with real connections between pods a, b, c of namespaces x, y, z.

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate as sandbox;

use super::{netpol, Attempt};
use crate::connectivity::Env;

/// One case of the Kubernetes network-policy model: its policies and the truth table upstream's
/// e2e test (`test/e2e/network/netpol/network_policy.go`) expects.
struct ModelCase {
    /// Upstream's name for it.
    name: &'static str,
    policies: Vec<Value>,
    /// Whether `from` may connect to `to` (namespace, pod) on TCP 80.
    allowed: fn((&str, &str), (&str, &str)) -> bool,
    /// Whether a denied flow from `from` is dropped by its own egress policy (at the source
    /// node) rather than the destination's ingress policy.
    egress_denied: fn((&str, &str)) -> bool,
}

fn model_cases() -> Vec<ModelCase> {
    let all_pods = json!({});
    let ns_label = vireo_control::cluster::NAMESPACE_NAME_LABEL;
    vec![
        // "should support a 'default-deny-ingress' policy": nothing reaches x.
        ModelCase {
            name: "default-deny-ingress",
            policies: vec![netpol(
                "x",
                "deny-ingress",
                json!({"podSelector": all_pods, "policyTypes": ["Ingress"]}),
            )],
            allowed: |_, to| to.0 != "x",
            egress_denied: |_| false,
        },
        // "should enforce policy to allow traffic only from a different namespace, based on
        // NamespaceSelector": x takes only y.
        ModelCase {
            name: "allow-from-namespace-y",
            policies: vec![netpol(
                "x",
                "allow-client-a-via-ns-selector",
                json!({"podSelector": all_pods, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"namespaceSelector": {"matchLabels": {ns_label: "y"}}}]}]}),
            )],
            allowed: |from, to| to.0 != "x" || from.0 == "y",
            egress_denied: |_| false,
        },
        // "should enforce policy to allow traffic from pods within server namespace based on
        // PodSelector": x/a takes only x/b.
        ModelCase {
            name: "x-a-allows-x-b",
            policies: vec![netpol(
                "x",
                "x-a-allows-x-b",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                       "ingress": [{"from": [{"podSelector": {"matchLabels": {"pod": "b"}}}]}]}),
            )],
            allowed: |from, to| to != ("x", "a") || from == ("x", "b"),
            egress_denied: |_| false,
        },
        // "should enforce policy based on PodSelector and NamespaceSelector": x/a takes pod b
        // of the namespaces other than x (both selectors in one peer: both must match).
        ModelCase {
            name: "allow-ns-y-z-pod-b",
            policies: vec![netpol(
                "x",
                "allow-ns-y-z-pod-b-c",
                json!({"podSelector": {"matchLabels": {"pod": "a"}}, "policyTypes": ["Ingress"],
                "ingress": [{"from": [{
                    "podSelector": {"matchLabels": {"pod": "b"}},
                    "namespaceSelector": {"matchExpressions": [
                        {"key": ns_label, "operator": "NotIn", "values": ["x"]}]},
                }]}]}),
            )],
            allowed: |from, to| to != ("x", "a") || (from.1 == "b" && from.0 != "x"),
            egress_denied: |_| false,
        },
        // "should support a 'default-deny-all' policy": nothing reaches x, nothing leaves it
        // (dropped at the source's node, by its egress policy).
        ModelCase {
            name: "default-deny-all",
            policies: vec![netpol(
                "x",
                "deny-all",
                json!({"podSelector": all_pods, "policyTypes": ["Ingress", "Egress"]}),
            )],
            allowed: |from, to| from.0 != "x" && to.0 != "x",
            egress_denied: |from| from.0 == "x",
        },
    ]
}

/// The network-policy model check.
impl Env {
    /// A part of the Kubernetes network-policy e2e model with real connections: namespaces x,
    /// y, z with pods a, b, c each, TCP 80 between every pair of pods (72), NetworkPolicies of
    /// upstream's cases one after the other, each checked against upstream's truth table.
    pub(in crate::connectivity) fn policy_netpol_model(&self) -> Result<String> {
        let mut pods = Vec::new();
        for ns in sandbox::NETPOL_NAMESPACES {
            for name in sandbox::NETPOL_PODS {
                pods.push(self.st.pod(&format!("{ns}/{name}")).with_context(|| {
                    "the network-policy model's pods come with the default sandbox \
                     (`vireo sandbox up` without --manifests)"
                })?);
            }
        }
        let _s = self.policy_servers(&pods, &[80], 120)?;
        let pairs = || {
            pods.iter()
                .flat_map(|f| pods.iter().map(move |t| (*f, *t)))
                .filter(|(f, t)| f.ip != t.ip)
        };
        let matrix = |case: Option<&ModelCase>| -> Vec<Attempt> {
            pairs()
                .map(|(f, t)| {
                    let (fp, tp) = (
                        (f.namespace.as_str(), f.name.as_str()),
                        (t.namespace.as_str(), t.name.as_str()),
                    );
                    let (allowed, at_source) = match case {
                        Some(c) => ((c.allowed)(fp, tp), (c.egress_denied)(fp)),
                        None => (true, false),
                    };
                    let mut a = self.attempt(f, t, 80, allowed);
                    if at_source {
                        a.enforcer = f.node.clone();
                    }
                    a
                })
                .collect()
        };
        let all = matrix(None);
        self.expect_reach(&all)
            .context("before any policy: every pod reaches every other")?;
        let cases = model_cases();
        let done = self.policy_scope(|| {
            let mut done = Vec::new();
            for c in &cases {
                self.publish_objects(&c.policies)?;
                let r = self
                    .expect_reach(&matrix(Some(c)))
                    .with_context(|| format!("case {}", c.name))?;
                done.push(format!(
                    "{}: {} allowed, {} denied ({})",
                    c.name,
                    r.allowed.len(),
                    r.denied.len(),
                    r.counted
                ));
            }
            Ok(done)
        })?;
        self.expect_reach(&all)
            .context("after the policies were removed: every pod reaches every other")?;
        Ok(format!(
            "{} pairs of {} pods over {} nodes, TCP 80, as upstream expects: {}; all {} open before and after",
            all.len(),
            pods.len(),
            self.st.nodes.len().min(2),
            done.join("; "),
            all.len()
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectivity::policy::reach::policy_names;

    #[test]
    fn netpol_model_truth_tables() {
        let pods: Vec<(&str, &str)> = sandbox::NETPOL_NAMESPACES
            .iter()
            .flat_map(|ns| sandbox::NETPOL_PODS.iter().map(move |p| (*ns, *p)))
            .collect();
        let denied = |c: &ModelCase| {
            pods.iter()
                .flat_map(|f| pods.iter().map(move |t| (*f, *t)))
                .filter(|(f, t)| f != t && !(c.allowed)(*f, *t))
                .count()
        };
        // Denied pairs of the 72, as upstream's reachability tables have them.
        let want = [
            ("default-deny-ingress", 24),
            ("allow-from-namespace-y", 15),
            ("x-a-allows-x-b", 7),
            ("allow-ns-y-z-pod-b", 6),
            ("default-deny-all", 42),
        ];
        let cases = model_cases();
        assert_eq!(cases.len(), want.len());
        for (c, (name, n)) in cases.iter().zip(want) {
            assert_eq!((c.name, denied(c)), (name, n));
            let names = policy_names(&c.policies);
            assert!(names
                .iter()
                .all(|(k, n)| k == "NetworkPolicy" && n.starts_with("x/")));
        }
        assert!((cases[1].allowed)(("y", "c"), ("x", "a")));
        assert!(!(cases[3].allowed)(("x", "b"), ("x", "a")));
        assert!((cases[4].egress_denied)(("x", "c")));
    }
}
