//! The fast path's service table, built from service specs.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vireo_lb::{Service, ServiceSpec, ServiceTable};

use super::proto_name;

/// How long a backend that left every endpoint list is still reverse-translated: Cilium's
/// and Vireo's default TCP established lifetime, so its established flows keep their replies
/// (reverse NAT comes from conntrack alone, whatever the endpoint list says now).
pub const FORMER_BACKEND_RETENTION: Duration = Duration::from_secs(21600);

/// Builds the fast path's [`ServiceTable`] from service specs, keeping each built [`Service`]
/// so that the next build reuses it (Maglev tables take milliseconds) when its spec, the
/// table size and the seed are unchanged.
#[derive(Debug, Default)]
pub struct ServiceTableBuilder {
    /// Table size and seed of the services in `built`.
    params: Option<(u32, u64)>,
    /// The last build's services by (name, port, protocol).
    built: BTreeMap<(String, u16, u8), Arc<Service>>,
    /// Backends (address, port, protocol) that left the endpoint lists, and when.
    former: BTreeMap<(u32, u16, u8), Instant>,
    /// The backends of the last build.
    last_backends: Vec<(u32, u16, u8)>,
}

/// What one build gave.
#[derive(Debug, Clone, Default)]
pub struct BuiltServices {
    /// The table to publish.
    pub table: ServiceTable,
    /// Services whose Maglev tables were built.
    pub built: usize,
    /// Services taken over from the previous build.
    pub reused: usize,
    /// How long each Maglev table built took (a service's tables, one entry per service).
    pub build_times: Vec<Duration>,
    /// Services left out (their tables could not be built) and frontends claimed twice, one
    /// line each.
    pub warnings: Vec<String>,
}

impl ServiceTableBuilder {
    /// Builds the table of `specs` with Maglev tables of `m` slots (one of
    /// [`vireo_lb::PRIMES`]) and hash seed `seed`. A frontend claimed by two service ports
    /// stays with the first (in the order of `specs`).
    pub fn build(&mut self, specs: Vec<ServiceSpec>, m: u32, seed: u64) -> BuiltServices {
        if self.params != Some((m, seed)) {
            self.built.clear();
            self.params = Some((m, seed));
        }
        let mut out = BuiltServices::default();
        let mut next = BTreeMap::new();
        let mut services = Vec::new();
        let mut claimed: BTreeMap<(Ipv4Addr, u16, u8), String> = BTreeMap::new();
        for spec in specs {
            let key = (spec.name.clone(), spec.port, spec.proto);
            let id = format!("{}:{}/{}", spec.name, spec.port, proto_name(spec.proto));
            for f in &spec.frontends {
                let fkey = (f.ip, f.port, f.proto);
                match claimed.get(&fkey) {
                    Some(first) if *first != id => out.warnings.push(format!(
                        "service {id}: frontend {}:{}/{} is already {first}'s; left to it",
                        f.ip,
                        f.port,
                        proto_name(f.proto)
                    )),
                    Some(_) => {}
                    None => {
                        claimed.insert(fkey, id.clone());
                    }
                }
            }
            let svc = match self.built.get(&key) {
                Some(s) if s.spec == spec => {
                    out.reused += 1;
                    s.clone()
                }
                _ => {
                    let t = Instant::now();
                    match Service::new(spec, m, seed) {
                        Ok(s) => {
                            out.built += 1;
                            out.build_times.push(t.elapsed());
                            Arc::new(s)
                        }
                        Err(e) => {
                            out.warnings
                                .push(format!("service {id}: {e}; service left out"));
                            continue;
                        }
                    }
                }
            };
            next.insert(key, svc.clone());
            services.push(svc);
        }
        self.built = next;
        let table = ServiceTable::new(services);
        let now = Instant::now();
        let before: Vec<(u32, u16, u8)> = self.last_backends.drain(..).collect();
        let current: std::collections::BTreeSet<(u32, u16, u8)> = table.backends().collect();
        for b in before.into_iter().filter(|b| !current.contains(b)) {
            self.former.entry(b).or_insert(now);
        }
        self.former.retain(|b, left| {
            !current.contains(b) && now.duration_since(*left) < FORMER_BACKEND_RETENTION
        });
        self.last_backends = current.into_iter().collect();
        out.table = table.with_former_backends(self.former.keys().copied());
        out
    }

    /// Backends that left the endpoint lists and are still reverse-translated.
    pub fn former_backends(&self) -> impl Iterator<Item = (u32, u16, u8)> + '_ {
        self.former.keys().copied()
    }
}
