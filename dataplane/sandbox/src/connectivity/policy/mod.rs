//! Policy checks: each applies its policies (and objects) for its own length and removes them
//! at the end, also when it fails, to the default sandbox's pods of namespace `policy-test`;
//! the Kubernetes network-policy model over namespaces x, y, z is in `netpol_model`; other IP
//! protocols and the revocation of an established flow's allow are in `protocols`; DNS-aware
//! policy (`toFQDNs`, `rules: dns`) in `fqdn`.

use std::net::{Ipv4Addr, SocketAddr};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate as sandbox;
use crate::{PodState, ECHO_HTTP_PORT, ECHO_UDP_PORT, UNDERLAY_CLIENT};

use super::{maglev_backends, wait_nodes, Backends, Env};

mod fqdn;
mod netpol_model;
mod protocols;
mod reach;

/// How long a policy check's connection attempt may take: a denied flow's SYNs are dropped, so
/// its attempt ends in a timeout after this.
const POLICY_WAIT_MS: u64 = 1000;

/// One connection attempt of a policy check and what the policies in force must make of it.
#[derive(Debug, Clone)]
struct Attempt {
    /// Who connects: a pod (`client-other`, `x/a`) or the underlay client.
    from: String,
    /// Its address.
    src: Ipv4Addr,
    netns: String,
    to: SocketAddr,
    /// The pod that answers when the flow is allowed.
    server: Ipv4Addr,
    /// The port it answers on (a NodePort's target port).
    dport: u16,
    /// Where it connects to, for people: `server:8080`, `node-2:30090 -> server:8080`.
    dest: String,
    allowed: bool,
    /// The node whose agent drops the flow when it is denied: the destination's for ingress
    /// policy, the source's for egress.
    enforcer: String,
}

impl Attempt {
    fn label(&self) -> String {
        format!("{} -> {}", self.from, self.dest)
    }
}

/// What a set of attempts showed: the allowed and the denied ones (as labels) and the
/// `policy_denied` counts of the nodes.
struct Reached {
    allowed: Vec<String>,
    denied: Vec<String>,
    counted: String,
}

impl Reached {
    /// `allowed: A, B; denied: C (no answer in 1000 ms); policy_denied node-2 +1, node-1 +0`,
    /// with counts instead of lists when they are long.
    fn brief(&self) -> String {
        let list = |v: &[String]| {
            if v.len() <= 4 {
                v.join(", ")
            } else {
                format!("{} flows", v.len())
            }
        };
        let mut parts = Vec::new();
        if !self.allowed.is_empty() {
            parts.push(format!("allowed {}", list(&self.allowed)));
        }
        if !self.denied.is_empty() {
            parts.push(format!(
                "denied {} (no answer in {POLICY_WAIT_MS} ms)",
                list(&self.denied)
            ));
        }
        parts.push(self.counted.clone());
        parts.join("; ")
    }
}

/// The NodePort of the Service `policy-test/policy-np` that `policy-cidr` and `policy-entity`
/// add while they run (externalTrafficPolicy Local: the server sees the outside client's own
/// address).
const POLICY_NODE_PORT: u16 = 30090;

const POLICY_NP_CLUSTER_IP: &str = "10.96.0.20";

/// A CiliumNetworkPolicy in the policy checks' namespace.
fn cnp(name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "cilium.io/v2", "kind": "CiliumNetworkPolicy",
        "metadata": {"name": name, "namespace": sandbox::POLICY_NAMESPACE},
        "spec": spec,
    })
}

/// A Kubernetes NetworkPolicy.
fn netpol(ns: &str, name: &str, spec: Value) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    })
}

/// The policy server's ingress policy: `spec` with its endpoint selector.
fn server_policy(name: &str, mut spec: Value) -> Value {
    spec["endpointSelector"] = json!({"matchLabels": {"app": "policy-server"}});
    cnp(name, spec)
}

/// Policy checks.
impl Env {
    /// The policy server and its three clients, with echo servers on 8080 and 8081.
    fn policy_setup(&self) -> Result<([&PodState; 4], Backends)> {
        let pods = [
            self.policy_pod("server")?,
            self.policy_pod("client-allowed")?,
            self.policy_pod("client-other")?,
            self.policy_pod("client-local")?,
        ];
        let servers = self.policy_servers(&pods[..1], &[ECHO_HTTP_PORT, ECHO_UDP_PORT], 30)?;
        Ok((pods, servers))
    }

    /// Before a policy (and after it is gone): every attempt gets through.
    fn all_reach(&self, attempts: &[Attempt], when: &str) -> Result<()> {
        let open: Vec<Attempt> = attempts
            .iter()
            .map(|a| Attempt {
                allowed: true,
                ..a.clone()
            })
            .collect();
        self.expect_reach(&open)
            .with_context(|| format!("{when}, without the check's policy"))
            .map(|_| ())
    }

    /// The shape of the simple policy checks: every attempt connects without the policy; with
    /// it, the allowed ones connect and the denied ones are dropped (and counted); without it
    /// again, all connect.
    fn policy_check(&self, attempts: &[Attempt], policy: Value, what: &str) -> Result<String> {
        self.all_reach(attempts, "before")?;
        let d = self.policy_scope(|| {
            let took = self.publish_objects(&[policy])?;
            let r = self.expect_reach(attempts)?;
            Ok(format!(
                "{what} (in force in {:.1}s): {}",
                took.as_secs_f64(),
                r.brief()
            ))
        })?;
        self.all_reach(attempts, "after the policy was removed")?;
        Ok(format!(
            "{d}; all {} connect before and after",
            attempts.len()
        ))
    }

    /// `fromEndpoints`: only `app: client-allowed` reaches the server (cross-node); the others,
    /// on the first node and beside the server, are denied by default deny.
    pub(super) fn policy_l3_allow(&self) -> Result<String> {
        let ([srv, allowed, other, local], _s) = self.policy_setup()?;
        let p = ECHO_HTTP_PORT;
        let attempts = [
            self.attempt(allowed, srv, p, true),
            self.attempt(other, srv, p, false),
            self.attempt(local, srv, p, false),
        ];
        let policy = server_policy(
            "l3-allow",
            json!({"ingress": [{"fromEndpoints": [{"matchLabels": {"app": "client-allowed"}}]}]}),
        );
        self.policy_check(
            &attempts,
            policy,
            "ingress fromEndpoints app=client-allowed",
        )
    }

    /// `toPorts`: the allowed client reaches 8080/TCP and not 8081/TCP.
    pub(super) fn policy_l4_port(&self) -> Result<String> {
        let ([srv, allowed, _, local], _s) = self.policy_setup()?;
        let attempts = [
            self.attempt(allowed, srv, ECHO_HTTP_PORT, true),
            self.attempt(allowed, srv, ECHO_UDP_PORT, false),
            self.attempt(local, srv, ECHO_HTTP_PORT, false),
        ];
        let policy = server_policy(
            "l4-port",
            json!({"ingress": [{
                "fromEndpoints": [{"matchLabels": {"app": "client-allowed"}}],
                "toPorts": [{"ports": [{"port": ECHO_HTTP_PORT.to_string(), "protocol": "TCP"}]}],
            }]}),
        );
        self.policy_check(
            &attempts,
            policy,
            &format!("ingress from app=client-allowed to {ECHO_HTTP_PORT}/TCP"),
        )
    }

    /// `ingressDeny` beats an allow-all rule: the denied client is dropped, the others pass.
    pub(super) fn policy_deny(&self) -> Result<String> {
        let ([srv, allowed, other, local], _s) = self.policy_setup()?;
        let p = ECHO_HTTP_PORT;
        let attempts = [
            self.attempt(allowed, srv, p, true),
            self.attempt(local, srv, p, true),
            self.attempt(other, srv, p, false),
        ];
        let policy = server_policy(
            "deny-other",
            json!({"ingress": [{"fromEntities": ["all"]}],
                   "ingressDeny": [{"fromEndpoints": [{"matchLabels": {"app": "client-other"}}]}]}),
        );
        self.policy_check(
            &attempts,
            policy,
            "ingress fromEntities all + ingressDeny app=client-other",
        )
    }

    /// The Service `policy-np`: NodePort [`POLICY_NODE_PORT`] on the server, traffic policy
    /// Local (outside clients keep their address, and with it their `world` identity).
    fn policy_nodeport(&self) -> Value {
        json!({
            "apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "policy-np", "namespace": sandbox::POLICY_NAMESPACE},
            "spec": {"type": "NodePort", "externalTrafficPolicy": "Local",
                     "clusterIP": POLICY_NP_CLUSTER_IP, "clusterIPs": [POLICY_NP_CLUSTER_IP],
                     "selector": {"app": "policy-server"},
                     "ports": [{"name": "http", "port": 80, "targetPort": ECHO_HTTP_PORT,
                                "nodePort": POLICY_NODE_PORT, "protocol": "TCP"}]},
        })
    }

    /// Publishes `policy-np` (with `policies`) and waits until the server's node balances it to
    /// the server.
    fn publish_with_nodeport(&self, srv: &PodState, policies: &[Value]) -> Result<()> {
        let mut objects = vec![self.policy_nodeport()];
        objects.extend(policies.iter().cloned());
        self.publish_objects(&objects)?;
        let svc = format!("{}/policy-np", sandbox::POLICY_NAMESPACE);
        wait_nodes(std::slice::from_ref(self.node(srv)), Instant::now(), |n| {
            let b = maglev_backends(n, &svc, 80, "TCP")?;
            Ok((!b.as_ref().is_some_and(|b| b.contains(&srv.ip))).then(|| {
                format!(
                    "{}'s Maglev table for {svc} has backends {b:?}, not {}",
                    n.name, srv.ip
                )
            }))
        })
        .map(|_| ())
    }

    /// The underlay client's connections through `policy-np` must reach the server with their
    /// own address (Local traffic policy): otherwise the server would see the node, and the
    /// check would test nothing.
    fn world_keeps_its_address(&self, srv: &PodState) -> Result<()> {
        let to = SocketAddr::from((self.node(srv).ip, POLICY_NODE_PORT));
        let a = self.whoami(&self.st.underlay, to, 1, &["--wait-ms", "2000"])?;
        let peer = a.first().map(|a| a.peer.clone()).unwrap_or_default();
        if !peer.starts_with(&format!("{UNDERLAY_CLIENT}:")) {
            bail!(
                "through {to} (externalTrafficPolicy Local) the server saw the client as {peer:?}, not {UNDERLAY_CLIENT}: {:?}",
                a.first().and_then(|a| a.error.clone())
            );
        }
        Ok(())
    }

    /// The frame of the checks that reach the server from the world: the NodePort is published
    /// (with no policy) before `body`, and when both are gone `allowed` reaches the server again.
    fn nodeport_policy_scope(
        &self,
        srv: &PodState,
        allowed: &PodState,
        body: impl FnOnce() -> Result<String>,
    ) -> Result<String> {
        let d = self.policy_scope(|| {
            self.publish_with_nodeport(srv, &[])?;
            body()
        })?;
        self.all_reach(
            &[self.attempt(allowed, srv, ECHO_HTTP_PORT, true)],
            "after the policy and the NodePort were removed",
        )?;
        Ok(d)
    }

    /// `fromCIDR`: the underlay client (outside the cluster) reaches the server through a
    /// NodePort (Local) and a pod does not (CIDR rules never match cluster addresses); then a
    /// `fromCIDRSet` whose `except` holds the client denies it.
    pub(super) fn policy_cidr(&self) -> Result<String> {
        let ([srv, allowed, _, _], _s) = self.policy_setup()?;
        let cidr = format!("{UNDERLAY_CLIENT}/32");
        self.nodeport_policy_scope(srv, allowed, || {
            let pod = self.attempt(allowed, srv, ECHO_HTTP_PORT, false);
            let world = self.world_attempt(srv, true);
            self.all_reach(&[pod.clone(), world.clone()], "before")?;
            self.world_keeps_its_address(srv)?;
            let only = server_policy("cidr", json!({"ingress": [{"fromCIDR": [cidr]}]}));
            self.publish_with_nodeport(srv, &[only])?;
            let r1 = self.expect_reach(&[world.clone(), pod])?;
            // Another name: the agents' list of policies shows when they have taken it.
            let except = server_policy(
                "cidr-except",
                json!({"ingress": [{"fromCIDRSet": [{"cidr": "192.168.100.0/24", "except": [cidr]}]}]}),
            );
            self.publish_with_nodeport(srv, &[except])?;
            let r2 = self.expect_reach(&[Attempt {
                allowed: false,
                ..world
            }])?;
            Ok(format!(
                "fromCIDR {cidr}: {}; fromCIDRSet 192.168.100.0/24 except {cidr}: {}",
                r1.brief(),
                r2.brief()
            ))
        })
    }

    /// `fromEntities: [cluster]`: pods of both nodes reach the server, the underlay client
    /// (`world`, through a NodePort with Local traffic policy) does not.
    pub(super) fn policy_entity(&self) -> Result<String> {
        let ([srv, allowed, _, local], _s) = self.policy_setup()?;
        self.nodeport_policy_scope(srv, allowed, || {
            let attempts = [
                self.attempt(allowed, srv, ECHO_HTTP_PORT, true),
                self.attempt(local, srv, ECHO_HTTP_PORT, true),
                self.world_attempt(srv, false),
            ];
            self.all_reach(&attempts, "before")?;
            self.world_keeps_its_address(srv)?;
            let policy = server_policy(
                "entity-cluster",
                json!({"ingress": [{"fromEntities": ["cluster"]}]}),
            );
            self.publish_with_nodeport(srv, &[policy])?;
            let r = self.expect_reach(&attempts)?;
            Ok(format!("ingress fromEntities cluster: {}", r.brief()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connectivity::policy::reach::policy_names;

    #[test]
    fn policy_names_as_policy_get_lists_them() {
        let objs = vec![
            server_policy("l3", json!({})),
            netpol("x", "deny", json!({})),
            json!({"apiVersion": "cilium.io/v2", "kind": "CiliumClusterwideNetworkPolicy",
                   "metadata": {"name": "cw"}}),
            json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "s"}}),
        ];
        let n: Vec<(String, String)> = policy_names(&objs).into_iter().collect();
        let n: Vec<(&str, &str)> = n.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(
            n,
            [
                ("CiliumClusterwideNetworkPolicy", "cw"),
                ("CiliumNetworkPolicy", "policy-test/l3"),
                ("NetworkPolicy", "x/deny"),
            ]
        );
    }
}
