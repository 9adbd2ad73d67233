//! Services as the fast path sees them: frontends (ClusterIP, NodePort, external and
//! LoadBalancer IPs), their backends, and a Maglev table per service, built by the control side
//! and published whole in a [`ServiceTable`].

use std::net::Ipv4Addr;
use std::sync::Arc;

use rustc_hash::{FxHashMap, FxHashSet};
use serde::Serialize;

use crate::maglev::{Maglev, MaglevError};

/// IP protocol numbers of the protocols services carry.
pub const TCP: u8 = 6;
/// UDP.
pub const UDP: u8 = 17;

/// How a frontend is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FrontendKind {
    /// The service's cluster IP.
    ClusterIp,
    /// A port on this node's own address.
    NodePort,
    /// One of `spec.externalIPs`.
    ExternalIp,
    /// One of `status.loadBalancer.ingress[].ip`.
    LoadBalancer,
}

/// An address, port and protocol a service answers on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct Frontend {
    /// How it is reached.
    pub kind: FrontendKind,
    /// Address.
    pub ip: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// IP protocol (6 or 17).
    pub proto: u8,
}

/// One backend of a service port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Backend {
    /// Address.
    pub ip: Ipv4Addr,
    /// Port (the target port, resolved).
    pub port: u16,
    /// Runs on this node (for externalTrafficPolicy Local).
    pub local: bool,
    /// Terminating (EndpointSlice `terminating`, still `serving`): keeps its flows, gets no
    /// new ones.
    pub terminating: bool,
    /// Maglev weight (1 unless told otherwise).
    pub weight: u32,
}

impl Backend {
    /// `ip:port`, the backend's name in Maglev and in the operator's view.
    pub fn name(&self) -> String {
        format!("{}:{}", self.ip, self.port)
    }
}

/// One port of one Service, as the control side describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceSpec {
    /// `namespace/name`.
    pub name: String,
    /// The port's name (may be empty).
    pub port_name: String,
    /// The service port (on the cluster IP).
    pub port: u16,
    /// IP protocol.
    pub proto: u8,
    /// Every address:port this service port answers on.
    pub frontends: Vec<Frontend>,
    /// Ready or terminating-but-serving backends.
    pub backends: Vec<Backend>,
    /// sessionAffinity ClientIP: seconds a client stays with its backend.
    pub affinity_timeout: Option<u32>,
    /// loadBalancerSourceRanges (applies to LoadBalancer frontends); empty: everyone.
    pub source_ranges: Vec<(Ipv4Addr, u8)>,
    /// externalTrafficPolicy Local: NodePort, external and LoadBalancer frontends use only
    /// this node's backends and keep the client's address.
    pub external_local: bool,
}

/// A service port ready for the fast path: the spec plus its Maglev tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Service {
    /// What it was built from.
    #[serde(flatten)]
    pub spec: ServiceSpec,
    /// Table over the backends that take new flows (not terminating).
    #[serde(skip)]
    pub maglev: Maglev,
    /// Table over the local ones (externalTrafficPolicy Local).
    #[serde(skip)]
    pub maglev_local: Maglev,
    #[serde(skip)]
    active: Vec<u16>,
    #[serde(skip)]
    active_local: Vec<u16>,
}

impl Service {
    /// Builds the Maglev tables (size `m`, `seed`) for `spec`.
    pub fn new(spec: ServiceSpec, m: u32, seed: u64) -> Result<Service, MaglevError> {
        let pick = |local_only: bool| -> Result<(Maglev, Vec<u16>), MaglevError> {
            let idx: Vec<u16> = (0..spec.backends.len())
                .filter(|&i| {
                    let b = &spec.backends[i];
                    !b.terminating && (b.local || !local_only)
                })
                .filter_map(|i| u16::try_from(i).ok())
                .collect();
            let names: Vec<String> = idx
                .iter()
                .map(|&i| spec.backends[usize::from(i)].name())
                .collect();
            let list: Vec<(&str, u32)> = idx
                .iter()
                .zip(&names)
                .map(|(&i, n)| (n.as_str(), spec.backends[usize::from(i)].weight.max(1)))
                .collect();
            Ok((Maglev::build(&list, m, seed)?, idx))
        };
        let (maglev, active) = pick(false)?;
        let (maglev_local, active_local) = pick(true)?;
        Ok(Service {
            spec,
            maglev,
            maglev_local,
            active,
            active_local,
        })
    }

    /// The backend for a new flow with this hash; `local_only` for externalTrafficPolicy
    /// Local. `None`: no backend takes new flows.
    #[inline]
    pub fn select(&self, flow_hash: u64, local_only: bool) -> Option<&Backend> {
        let (t, idx) = if local_only {
            (&self.maglev_local, &self.active_local)
        } else {
            (&self.maglev, &self.active)
        };
        let i = t.lookup(flow_hash)?;
        self.spec.backends.get(usize::from(*idx.get(i)?))
    }

    /// Whether `ip:port` is one of this service port's backends, terminating ones included
    /// (a backend that is gone is not).
    pub fn has_backend(&self, ip: u32, port: u16) -> bool {
        self.spec
            .backends
            .iter()
            .any(|b| u32::from(b.ip) == ip && b.port == port)
    }

    /// Whether `ip:port` is a backend that takes new flows (not terminating; local when
    /// `local_only`).
    pub fn takes_new_flows(&self, ip: u32, port: u16, local_only: bool) -> bool {
        self.spec.backends.iter().any(|b| {
            u32::from(b.ip) == ip && b.port == port && !b.terminating && (b.local || !local_only)
        })
    }

    /// Whether a client may use `f` (loadBalancerSourceRanges, on LoadBalancer frontends).
    #[inline]
    pub fn source_allowed(&self, f: FrontendKind, client: u32) -> bool {
        f != FrontendKind::LoadBalancer
            || self.spec.source_ranges.is_empty()
            || self.spec.source_ranges.iter().any(|(net, len)| {
                let mask = u32::MAX.checked_shl(32 - u32::from(*len)).unwrap_or(0);
                client & mask == u32::from(*net) & mask
            })
    }

    /// Backend name → Maglev slots held (the operator's view).
    pub fn slot_counts(&self) -> Vec<(String, u32)> {
        let counts = self.maglev.slot_counts(self.active.len());
        self.active
            .iter()
            .zip(counts)
            .map(|(&i, c)| (self.spec.backends[usize::from(i)].name(), c))
            .collect()
    }
}

/// Every service port, indexed for the fast path. Built by the control side, read-only after.
#[derive(Debug, Clone, Default)]
pub struct ServiceTable {
    services: Vec<Arc<Service>>,
    by_frontend: FxHashMap<(u32, u16, u8), (FrontendKind, u32)>,
    backends: FxHashSet<(u32, u16, u8)>,
}

impl ServiceTable {
    /// Indexes `services`. A frontend claimed twice keeps its first service.
    pub fn new(services: Vec<Arc<Service>>) -> ServiceTable {
        let mut by_frontend = FxHashMap::default();
        let mut backends = FxHashSet::default();
        for (i, s) in services.iter().enumerate() {
            for f in &s.spec.frontends {
                by_frontend
                    .entry((u32::from(f.ip), f.port, f.proto))
                    .or_insert((f.kind, i as u32));
            }
            for b in &s.spec.backends {
                backends.insert((u32::from(b.ip), b.port, s.spec.proto));
            }
        }
        ServiceTable {
            services,
            by_frontend,
            backends,
        }
    }

    /// The service answering on `ip:port/proto`, and how it was reached.
    #[inline]
    pub fn lookup(&self, ip: u32, port: u16, proto: u8) -> Option<(FrontendKind, &Service)> {
        let (k, i) = self.by_frontend.get(&(ip, port, proto))?;
        Some((*k, self.services.get(*i as usize)?))
    }

    /// Whether `ip:port/proto` is, or lately was, some service's backend (its packets may be
    /// replies to reverse-translate). A backend that left the endpoint list stays here for as
    /// long as the control side keeps it in [`ServiceTable::with_former_backends`], so that
    /// the replies of its established flows are still translated from conntrack.
    #[inline]
    pub fn is_backend(&self, ip: u32, port: u16, proto: u8) -> bool {
        self.backends.contains(&(ip, port, proto))
    }

    /// Every frontend `(ip, port, proto)`.
    pub fn frontends(&self) -> impl Iterator<Item = (u32, u16, u8)> + '_ {
        self.by_frontend.keys().copied()
    }

    /// The backends `(ip, port, proto)` of every service port (the ones reverse translation
    /// looks for).
    pub fn backends(&self) -> impl Iterator<Item = (u32, u16, u8)> + '_ {
        self.backends.iter().copied()
    }

    /// Adds backends that left the endpoint lists but may still have flows in conntrack.
    pub fn with_former_backends(
        mut self,
        former: impl IntoIterator<Item = (u32, u16, u8)>,
    ) -> Self {
        self.backends.extend(former);
        self
    }

    /// The services.
    pub fn services(&self) -> &[Arc<Service>] {
        &self.services
    }

    /// Frontends the uplink must hand to the dataplane (NodePort, external, LoadBalancer).
    pub fn steered(&self) -> Vec<Frontend> {
        let mut v: Vec<Frontend> = self
            .services
            .iter()
            .flat_map(|s| s.spec.frontends.iter())
            .filter(|f| f.kind != FrontendKind::ClusterIp)
            .copied()
            .collect();
        v.sort_by_key(|f| (u32::from(f.ip), f.port, f.proto));
        v.dedup_by_key(|f| (f.ip, f.port, f.proto));
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(backends: Vec<Backend>) -> ServiceSpec {
        ServiceSpec {
            name: "default/echo".into(),
            port_name: "http".into(),
            port: 80,
            proto: TCP,
            frontends: vec![
                Frontend {
                    kind: FrontendKind::ClusterIp,
                    ip: Ipv4Addr::new(10, 96, 0, 10),
                    port: 80,
                    proto: TCP,
                },
                Frontend {
                    kind: FrontendKind::LoadBalancer,
                    ip: Ipv4Addr::new(172, 18, 0, 5),
                    port: 80,
                    proto: TCP,
                },
            ],
            backends,
            affinity_timeout: None,
            source_ranges: vec![(Ipv4Addr::new(192, 168, 0, 0), 16)],
            external_local: false,
        }
    }

    fn be(last: u8, local: bool, terminating: bool) -> Backend {
        Backend {
            ip: Ipv4Addr::new(10, 244, 0, last),
            port: 8080,
            local,
            terminating,
            weight: 1,
        }
    }

    #[test]
    fn terminating_and_remote_backends_are_left_out_where_they_must_be() {
        let s = Service::new(
            spec(vec![
                be(1, true, false),
                be(2, false, false),
                be(3, true, true),
            ]),
            251,
            0,
        )
        .unwrap();
        let mut seen = FxHashSet::default();
        let mut seen_local = FxHashSet::default();
        for h in 0..2000u64 {
            seen.insert(s.select(h, false).unwrap().ip);
            seen_local.insert(s.select(h, true).unwrap().ip);
        }
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert!(!seen.contains(&Ipv4Addr::new(10, 244, 0, 3)));
        assert_eq!(seen_local.len(), 1);
        assert!(s.takes_new_flows(u32::from(Ipv4Addr::new(10, 244, 0, 1)), 8080, true));
        assert!(!s.takes_new_flows(u32::from(Ipv4Addr::new(10, 244, 0, 3)), 8080, false));
        let counts: u32 = s.slot_counts().iter().map(|(_, c)| c).sum();
        assert_eq!(counts, 251);
    }

    #[test]
    fn no_backend_selects_nothing() {
        let s = Service::new(spec(vec![be(3, true, true)]), 251, 0).unwrap();
        assert!(s.select(7, false).is_none());
    }

    #[test]
    fn lookup_source_ranges_and_steering() {
        let s = Arc::new(Service::new(spec(vec![be(1, true, false)]), 251, 0).unwrap());
        let t = ServiceTable::new(vec![s]);
        let vip = u32::from(Ipv4Addr::new(10, 96, 0, 10));
        let (k, svc) = t.lookup(vip, 80, TCP).unwrap();
        assert_eq!(k, FrontendKind::ClusterIp);
        assert!(t.lookup(vip, 80, UDP).is_none());
        assert!(t.is_backend(u32::from(Ipv4Addr::new(10, 244, 0, 1)), 8080, TCP));
        let inside = u32::from(Ipv4Addr::new(192, 168, 3, 4));
        let outside = u32::from(Ipv4Addr::new(10, 1, 1, 1));
        assert!(svc.source_allowed(FrontendKind::LoadBalancer, inside));
        assert!(!svc.source_allowed(FrontendKind::LoadBalancer, outside));
        assert!(svc.source_allowed(FrontendKind::ClusterIp, outside));
        assert_eq!(t.steered().len(), 1);
    }
}
