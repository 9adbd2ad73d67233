//! The compiler: keeps policies and identities and recomputes the tables a change touches
//! (see the parent module).

use super::*;

/// Whether `id` is an endpoint's identity (not a reserved or a CIDR one).
fn is_endpoint(id: u32) -> bool {
    (Identity::FIRST_ENDPOINT..CIDR_IDENTITY_BASE).contains(&id)
}

/// Labels of the reserved identities (`reserved:<name>`).
pub fn reserved_labels() -> Vec<(Identity, Labels)> {
    Identity::RESERVED
        .iter()
        .filter(|(i, _)| *i != Identity::UNKNOWN)
        .map(|(i, n)| (*i, Labels::new([(format!("reserved:{n}"), String::new())])))
        .collect()
}

/// Identities by label (key as held, value), so a selector is matched against the identities
/// that carry one of the values it requires rather than against every identity (Cilium's
/// selector cache serves the same end).
#[derive(Debug, Default)]
struct LabelIndex(FxHashMap<String, FxHashMap<String, FxHashSet<u32>>>);

impl LabelIndex {
    fn insert(&mut self, id: u32, labels: &Labels) {
        for (k, v) in labels.iter() {
            self.0
                .entry(k.to_string())
                .or_default()
                .entry(v.to_string())
                .or_default()
                .insert(id);
        }
    }

    fn remove(&mut self, id: u32, labels: &Labels) {
        for (k, v) in labels.iter() {
            if let Some(vals) = self.0.get_mut(k) {
                if let Some(ids) = vals.get_mut(v) {
                    ids.remove(&id);
                    if ids.is_empty() {
                        vals.remove(v);
                    }
                }
                if vals.is_empty() {
                    self.0.remove(k);
                }
            }
        }
    }

    /// A superset of the identities `sel` selects, from its first `In` requirement; `None`
    /// when it has none (then every identity is a candidate).
    fn candidates(&self, sel: &Selector) -> Option<FxHashSet<u32>> {
        let (r, want) = sel.reqs.iter().find_map(|r| match &r.op {
            Op::In(want) => Some((r, want)),
            _ => None,
        })?;
        let mut out = FxHashSet::default();
        for k in r.label_keys() {
            if let Some(vals) = self.0.get(&k) {
                for w in want {
                    out.extend(vals.get(w).into_iter().flatten());
                }
            }
        }
        Some(out)
    }
}

/// Keeps policies and identities and recompiles what changes touch.
#[derive(Debug, Default)]
pub struct Compiler {
    /// Policies by a key of the caller's (e.g. `kind/namespace/name`), with their rules'
    /// peer sets.
    policies: BTreeMap<String, Vec<Compiled>>,
    /// Known identities (pods, reserved, CIDR) and their labels.
    identities: BTreeMap<u32, Labels>,
    /// The same, by label.
    index: LabelIndex,
    /// Per endpoint identity, the keys of the policies that select it.
    selected_by: FxHashMap<u32, BTreeSet<String>>,
    /// CIDR identity by block.
    cidr_ids: BTreeMap<Ipv4Net, u32>,
    /// And block by CIDR identity.
    cidr_by_id: FxHashMap<u32, Ipv4Net>,
    /// Current tables.
    tables: FxHashMap<u32, Arc<EndpointPolicy>>,
    cidrs: Arc<IpCache>,
    /// The API server's addresses.
    kube_apiserver: Arc<FxHashSet<u32>>,
    /// How many endpoint tables the last change rebuilt (for tests and the operator).
    pub last_recomputed: usize,
}

/// A policy with its rules' peer sets.
#[derive(Debug, Clone)]
struct Compiled {
    policy: Policy,
    /// Per rule (ingress then egress): its direction, origin, whether its peers are everyone,
    /// and else the identities they select.
    rules: Vec<FlatRule>,
}

#[derive(Debug, Clone)]
struct FlatRule {
    dir: Direction,
    rule: Rule,
    origin: Arc<Origin>,
    /// A peer is everyone, requirements or not (`all`): compiled into the `any` list.
    everyone: bool,
    /// A peer is the L4-only wildcard: everyone when no requirement is in force, else the
    /// identities that meet them.
    wildcard: bool,
    /// Identities the rule's endpoint selectors select (requirements in force narrow them).
    peers: FxHashSet<u32>,
    /// Identities its other peers (entities, CIDRs) select (no requirement narrows them).
    others: FxHashSet<u32>,
    /// Its `toFQDNs` peers (matched by name at lookup time; no requirement narrows them).
    fqdn: Vec<FqdnSelector>,
}

/// Which of a rule's peer sets an identity belongs to: (endpoint selectors, other peers).
type Selected = (bool, bool);

impl Compiler {
    /// A compiler that knows the reserved identities.
    pub fn new() -> Compiler {
        let mut c = Compiler::default();
        for (i, l) in reserved_labels() {
            c.put_identity(i.0, l);
        }
        c
    }

    /// Records identity `id`'s labels (and indexes them).
    fn put_identity(&mut self, id: u32, labels: Labels) {
        if let Some(old) = self.identities.remove(&id) {
            self.index.remove(id, &old);
        }
        self.index.insert(id, &labels);
        self.identities.insert(id, labels);
    }

    /// Forgets identity `id`'s labels; whether it was known.
    fn drop_identity(&mut self, id: u32) -> bool {
        match self.identities.remove(&id) {
            Some(old) => {
                self.index.remove(id, &old);
                true
            }
            None => false,
        }
    }

    /// The identities (with labels) among which the ones `sel` selects are.
    fn candidates<'a>(&'a self, sel: &Selector) -> Vec<(u32, &'a Labels)> {
        match self.index.candidates(sel) {
            Some(ids) => {
                let mut v: Vec<(u32, &Labels)> = ids
                    .into_iter()
                    .filter_map(|id| Some((id, self.identities.get(&id)?)))
                    .collect();
                v.sort_unstable_by_key(|(id, _)| *id);
                v
            }
            None => self.identities.iter().map(|(id, l)| (*id, l)).collect(),
        }
    }

    /// The identities among which the ones rule `r`'s peers select are: the union of its
    /// endpoint selectors' candidates, the CIDR identities and world for CIDR peers; every
    /// identity when a peer is an entity or everyone.
    fn rule_candidates(&self, r: &Rule) -> Vec<(u32, &Labels)> {
        let mut ids: BTreeSet<u32> = BTreeSet::new();
        for p in &r.peers {
            match p {
                Peer::Endpoints(sel) => match self.index.candidates(sel) {
                    Some(c) => ids.extend(c),
                    None => return self.candidates(&Selector::all()),
                },
                Peer::Cidr { .. } => {
                    ids.extend(self.cidr_by_id.keys());
                    ids.insert(Identity::WORLD.0);
                }
                // The wildcard is resolved at compile time (requirements may narrow it).
                Peer::Any => {}
                // Matched by name at lookup time, not by identity.
                Peer::Fqdn(_) => {}
                Peer::Entity(_) => return self.candidates(&Selector::all()),
            }
        }
        ids.into_iter()
            .filter_map(|id| Some((id, self.identities.get(&id)?)))
            .collect()
    }

    /// Whether rule `r`'s peers (any port) select identity `id` with `labels`, given the blocks
    /// of the CIDR identities: through its endpoint selectors, through its other peers. (The
    /// L4-only wildcard is left to [`Compiler::compile_one`]: it depends on the requirements in
    /// force.)
    fn rule_selects(
        cidr_by_id: &FxHashMap<u32, Ipv4Net>,
        r: &Rule,
        id: u32,
        labels: &Labels,
    ) -> Selected {
        let block = cidr_by_id.get(&id);
        let zero = Ipv4Net::default();
        let mut out = (false, false);
        for p in &r.peers {
            match (p, block) {
                // A CIDR identity: selected by CIDR rules whose block holds it and no except
                // does.
                (Peer::Cidr { net, except, .. }, Some(b)) => {
                    out.1 |= net.contains(b) && !except.iter().any(|x| x.contains(b));
                }
                // World outside every listed block: only a CIDR rule for everything selects it
                // (its excepts are listed blocks, so they do not hold it).
                (Peer::Cidr { net, .. }, None) => {
                    out.1 |= id == Identity::WORLD.0 && *net == zero;
                }
                (Peer::Any, _) => {}
                (Peer::Endpoints(sel), _) => out.0 |= sel.matches(labels),
                (other, _) => out.1 |= identity_matches(other, Identity(id), labels),
            }
        }
        out
    }

    /// Sets (or replaces) the policies under `key`. Only the rules of these policies are
    /// matched against the identities, and only the tables of the endpoints they selected or
    /// select are rebuilt. The same policies again change nothing; returns whether they
    /// differed.
    pub fn set_policies(&mut self, key: &str, policies: Vec<Policy>) -> bool {
        let have = self.policies.get(key).map_or(&[][..], Vec::as_slice);
        if have.len() == policies.len() && have.iter().zip(&policies).all(|(c, p)| c.policy == *p) {
            self.last_recomputed = 0;
            return false;
        }
        let mut touched = self.subjects_of(key);
        for id in &touched {
            if let Some(keys) = self.selected_by.get_mut(id) {
                keys.remove(key);
            }
        }
        self.policies.remove(key);
        let new_ids = self.sync_cidr_identities(&policies);
        if !policies.is_empty() {
            let compiled = policies
                .into_iter()
                .map(|p| self.compile_policy(p))
                .collect();
            self.policies.insert(key.to_string(), compiled);
        }
        for id in self.subjects_of(key) {
            self.selected_by
                .entry(id)
                .or_default()
                .insert(key.to_string());
            touched.insert(id);
        }
        // New CIDR identities are peers the other policies' rules may select.
        if !new_ids.is_empty() {
            touched.extend(self.under_requirements());
        }
        for id in new_ids {
            if let Some(l) = self.identities.get(&id).cloned() {
                touched.extend(self.update_peer_sets(id, Some(&l)));
            }
        }
        self.recompute(&touched);
        true
    }

    /// Removes the policies under `key`; returns whether there were any.
    pub fn remove_policies(&mut self, key: &str) -> bool {
        self.set_policies(key, Vec::new())
    }

    /// Sets (or replaces) the labels of identity `id`.
    pub fn set_identity(&mut self, id: Identity, labels: Labels) {
        if self.identities.get(&id.0) == Some(&labels) {
            self.last_recomputed = 0;
            return;
        }
        self.put_identity(id.0, labels.clone());
        if is_endpoint(id.0) {
            let keys = self
                .policies
                .iter()
                .filter(|(_, ps)| ps.iter().any(|c| c.policy.selects(&labels)))
                .map(|(k, _)| k.clone())
                .collect();
            self.selected_by.insert(id.0, keys);
        }
        let mut touched = self.update_peer_sets(id.0, Some(&labels));
        touched.insert(id.0);
        touched.extend(self.under_requirements());
        self.recompute(&touched);
    }

    /// The endpoints selected by a policy with requirements: whether an identity meets them
    /// is decided when their tables are built, so a changed identity rebuilds them all.
    fn under_requirements(&self) -> BTreeSet<u32> {
        let keys: Vec<&String> = self
            .policies
            .iter()
            .filter(|(_, ps)| {
                ps.iter()
                    .any(|c| c.rules.iter().any(|f| !f.rule.requires.is_empty()))
            })
            .map(|(k, _)| k)
            .collect();
        keys.into_iter().flat_map(|k| self.subjects_of(k)).collect()
    }

    /// Forgets identity `id`.
    pub fn remove_identity(&mut self, id: Identity) {
        if !self.drop_identity(id.0) {
            return;
        }
        self.selected_by.remove(&id.0);
        let mut touched = self.update_peer_sets(id.0, None);
        touched.insert(id.0);
        touched.extend(self.under_requirements());
        self.recompute(&touched);
    }

    /// The identities selected as subjects by the policies under `key`.
    fn subjects_of(&self, key: &str) -> BTreeSet<u32> {
        let Some(ps) = self.policies.get(key) else {
            return BTreeSet::new();
        };
        ps.iter()
            .flat_map(|c| {
                self.candidates(&c.policy.subject)
                    .into_iter()
                    .filter(|(id, l)| is_endpoint(*id) && c.policy.selects(l))
                    .map(|(id, _)| id)
            })
            .collect()
    }

    /// Updates every rule's peer set for identity `id` (gone when `labels` is `None`); returns
    /// the subjects of the policies whose rules changed.
    fn update_peer_sets(&mut self, id: u32, labels: Option<&Labels>) -> BTreeSet<u32> {
        let mut changed_keys = Vec::new();
        let cidr_by_id = &self.cidr_by_id;
        for (key, ps) in self.policies.iter_mut() {
            let mut changed = false;
            for f in ps.iter_mut().flat_map(|c| &mut c.rules) {
                if f.everyone {
                    continue;
                }
                let (ep, other) = labels.map_or((false, false), |l| {
                    Self::rule_selects(cidr_by_id, &f.rule, id, l)
                });
                for (now, set) in [(ep, &mut f.peers), (other, &mut f.others)] {
                    if now != set.contains(&id) {
                        if now {
                            set.insert(id);
                        } else {
                            set.remove(&id);
                        }
                        changed = true;
                    }
                }
            }
            if changed {
                changed_keys.push(key.clone());
            }
        }
        changed_keys
            .iter()
            .flat_map(|k| self.subjects_of(k))
            .collect()
    }

    /// Gives every block `policies` name a CIDR identity, drops the blocks no policy names any
    /// more, and returns the new identities.
    fn sync_cidr_identities(&mut self, policies: &[Policy]) -> Vec<u32> {
        let mut blocks: BTreeSet<Ipv4Net> = BTreeSet::new();
        let all = self
            .policies
            .values()
            .flatten()
            .map(|c| &c.policy)
            .chain(policies.iter());
        for p in all {
            for r in p.ingress.iter().chain(&p.egress) {
                for peer in &r.peers {
                    if let Peer::Cidr { net, except, .. } = peer {
                        blocks.insert(*net);
                        blocks.extend(except.iter().copied());
                    }
                }
            }
        }
        blocks.remove(&Ipv4Net::default());
        let gone: Vec<(Ipv4Net, u32)> = self
            .cidr_ids
            .iter()
            .filter(|(b, _)| !blocks.contains(b))
            .map(|(b, i)| (*b, *i))
            .collect();
        for (b, id) in gone {
            self.cidr_ids.remove(&b);
            self.cidr_by_id.remove(&id);
            self.drop_identity(id);
            let _ = self.update_peer_sets(id, None);
        }
        let mut next = self
            .cidr_ids
            .values()
            .max()
            .map_or(CIDR_IDENTITY_BASE, |m| m + 1);
        let mut new = Vec::new();
        for b in &blocks {
            if !self.cidr_ids.contains_key(b) {
                self.cidr_ids.insert(*b, next);
                self.cidr_by_id.insert(next, *b);
                self.put_identity(
                    next,
                    Labels::new([
                        (format!("cidr:{b}"), String::new()),
                        ("reserved:world".into(), String::new()),
                    ]),
                );
                new.push(next);
                next += 1;
            }
        }
        let mut cidrs = IpCache::default();
        for (net, id) in &self.cidr_ids {
            cidrs.insert(
                *net,
                IpCacheEntry {
                    identity: Identity(*id),
                    tunnel: None,
                },
            );
        }
        self.cidrs = Arc::new(cidrs);
        new
    }

    /// A policy with its rules' peer sets against every known identity.
    fn compile_policy(&self, policy: Policy) -> Compiled {
        let mut rules = Vec::new();
        for (dir, list) in [
            (Direction::Ingress, &policy.ingress),
            (Direction::Egress, &policy.egress),
        ] {
            for r in list {
                let everyone = r
                    .peers
                    .iter()
                    .any(|x| matches!(x, Peer::Entity(crate::rules::Entity::All)));
                let wildcard = r.peers.iter().any(|x| matches!(x, Peer::Any));
                let (mut peers, mut others) = (FxHashSet::default(), FxHashSet::default());
                if !everyone {
                    for (id, l) in self.rule_candidates(r) {
                        let (ep, other) = Self::rule_selects(&self.cidr_by_id, r, id, l);
                        if ep {
                            peers.insert(id);
                        }
                        if other {
                            others.insert(id);
                        }
                    }
                }
                let fqdn = r
                    .peers
                    .iter()
                    .filter_map(|p| match p {
                        Peer::Fqdn(s) => Some(s.clone()),
                        _ => None,
                    })
                    .collect();
                rules.push(FlatRule {
                    dir,
                    rule: r.clone(),
                    origin: Arc::new(r.origin.clone()),
                    everyone,
                    wildcard,
                    peers,
                    others,
                    fqdn,
                });
            }
        }
        Compiled { policy, rules }
    }

    /// Builds the tables of `subjects` whole and swaps them in.
    fn recompute(&mut self, subjects: &BTreeSet<u32>) {
        self.last_recomputed = subjects.len();
        // Endpoints selected by the same policies have the same table: build it once and
        // share it.
        let mut memo: FxHashMap<Vec<*const Compiled>, Option<Arc<EndpointPolicy>>> =
            FxHashMap::default();
        let mut out = Vec::with_capacity(subjects.len());
        for id in subjects {
            if !self.identities.contains_key(id) {
                out.push((*id, None));
                continue;
            }
            // The policies selecting it, in the policies' order.
            let selecting: Vec<&Compiled> = self
                .selected_by
                .get(id)
                .into_iter()
                .flatten()
                .filter_map(|k| self.policies.get(k))
                .flatten()
                .filter(|c| c.policy.selects(&self.identities[id]))
                .collect();
            let key: Vec<*const Compiled> = selecting.iter().map(|c| *c as *const _).collect();
            let (identities, cidrs) = (&self.identities, &self.cidr_by_id);
            let t = memo
                .entry(key)
                .or_insert_with(|| Self::compile_one(&selecting, identities, cidrs).map(Arc::new))
                .clone();
            out.push((*id, t));
        }
        for (id, t) in out {
            match t {
                Some(t) => {
                    self.tables.insert(id, t);
                }
                None => {
                    self.tables.remove(&id);
                }
            }
        }
    }

    /// The table of an endpoint selected by `selecting`; `None` when nothing selects it.
    /// `identities` are every known identity (what a wildcard narrowed by requirements
    /// selects among).
    fn compile_one(
        selecting: &[&Compiled],
        identities: &BTreeMap<u32, Labels>,
        cidr_by_id: &FxHashMap<u32, Ipv4Net>,
    ) -> Option<EndpointPolicy> {
        if selecting.is_empty() {
            return None;
        }
        // The requirements in force, by direction and action (as the reference gathers them).
        let policies = || selecting.iter().map(|c| &c.policy);
        let reqs: [[Vec<&Selector>; 2]; 2] = [Direction::Ingress, Direction::Egress]
            .map(|d| [Action::Allow, Action::Deny].map(|a| requirements(policies(), d, a)));
        let mut t = EndpointPolicy::default();
        let mut learn: BTreeSet<FqdnSelector> = BTreeSet::new();
        for c in selecting {
            let p = &c.policy;
            t.enforced[0] |= p.enforce_ingress;
            t.enforced[1] |= p.enforce_egress;
            for f in &c.rules {
                let i = di(f.dir);
                let req = &reqs[i][usize::from(f.rule.action == Action::Deny)];
                let meets = |id: &u32| {
                    identities
                        .get(id)
                        .is_some_and(|l| req.iter().all(|s| s.matches(l)))
                };
                let everyone = f.everyone || (f.wildcard && req.is_empty());
                // The identities the rule selects under the requirements in force.
                let mut peers: Vec<u32> = Vec::new();
                if !everyone {
                    peers.extend(f.others.iter().copied());
                    if req.is_empty() {
                        peers.extend(f.peers.iter().copied());
                    } else if f.wildcard {
                        peers.extend(identities.keys().filter(|id| meets(id)));
                    } else {
                        peers.extend(f.peers.iter().filter(|id| meets(id)));
                    }
                    peers.sort_unstable();
                    peers.dedup();
                }
                // In-cluster addresses its CIDR rules select, by class and block.
                let mut blocks: Vec<(u8, u32)> = Vec::new();
                for p in &f.rule.peers {
                    let Peer::Cidr { net, except, scope } = p else {
                        continue;
                    };
                    let classes: &[u8] = match scope {
                        CidrScope::World => &[],
                        CidrScope::Nodes => &[NODE_ADDR],
                        CidrScope::All => &[NODE_ADDR, OTHER_ADDR],
                    };
                    for class in classes {
                        t.by_addr[i][usize::from(*class == OTHER_ADDR)] = true;
                        let ids = cidr_by_id
                            .iter()
                            .filter(|(_, b)| {
                                net.contains(*b) && !except.iter().any(|x| x.contains(*b))
                            })
                            .map(|(id, _)| *id);
                        blocks.extend(ids.map(|id| (*class, id)));
                        // An address in no listed block: only a rule for everything holds it.
                        if *net == Ipv4Net::default() {
                            blocks.push((*class, Identity::WORLD.0));
                        }
                    }
                }
                blocks.sort_unstable();
                blocks.dedup();
                let ports: Vec<PortRange> = if f.rule.ports.is_empty() {
                    vec![PortRange::ALL]
                } else {
                    f.rule.enforced_ports().copied().collect()
                };
                let dns: Option<Arc<[FqdnSelector]>> = (f.rule.action == Action::Allow
                    && !f.rule.dns.is_empty())
                .then(|| f.rule.dns.clone().into());
                if dns.is_some() && f.dir == Direction::Egress && !ports.is_empty() {
                    t.has_dns = true;
                }
                let sels: Option<Arc<[FqdnSelector]>> =
                    (!f.fqdn.is_empty()).then(|| f.fqdn.clone().into());
                if f.dir == Direction::Egress {
                    learn.extend(f.fqdn.iter().cloned());
                }
                for ports in ports {
                    if ports.name.is_some() {
                        t.named[i] = true;
                    }
                    let e = Entry {
                        ports,
                        action: f.rule.action,
                        rule: f.origin.clone(),
                        dns: dns.clone(),
                    };
                    if let Some(sels) = &sels {
                        t.fqdn[i].push(FqdnEntry {
                            sels: sels.clone(),
                            entry: e.clone(),
                        });
                    }
                    if everyone {
                        t.any[i].push(e);
                        continue;
                    }
                    let own = peers.iter().map(|p| (0, *p));
                    for (class, id) in own.chain(blocks.iter().copied()) {
                        t.by_peer
                            .entry((class + i as u8, id))
                            .or_default()
                            .push(e.clone());
                    }
                }
            }
        }
        t.learn = learn.into_iter().collect::<Vec<_>>().into();
        Some(t)
    }

    /// A snapshot for the fast path (shares unchanged tables with the previous one).
    pub fn tables(&self) -> PolicyTables {
        PolicyTables {
            tables: self.tables.clone(),
            cidrs: self.cidrs.clone(),
            allow_localhost: true,
            kube_apiserver: self.kube_apiserver.clone(),
        }
    }

    /// Sets the Kubernetes API server's addresses (the endpoints of Service
    /// `default/kubernetes`): peers there are also [`Identity::KUBE_APISERVER`]. No table
    /// changes (the rules that select that identity are compiled already).
    pub fn set_kube_apiserver(&mut self, addrs: impl IntoIterator<Item = Ipv4Addr>) {
        let set: FxHashSet<u32> = addrs.into_iter().map(u32::from).collect();
        if *self.kube_apiserver != set {
            self.kube_apiserver = Arc::new(set);
        }
    }

    /// Whether `ip` is an address of the API server.
    pub fn is_kube_apiserver(&self, ip: Ipv4Addr) -> bool {
        self.kube_apiserver.contains(&u32::from(ip))
    }

    /// The API server's addresses ([`Compiler::set_kube_apiserver`]).
    pub fn kube_apiserver(&self) -> Vec<Ipv4Addr> {
        self.kube_apiserver
            .iter()
            .map(|a| Ipv4Addr::from(*a))
            .collect()
    }

    /// The policies (for `decide`).
    pub fn policies(&self) -> Vec<Policy> {
        self.policies
            .values()
            .flatten()
            .map(|c| c.policy.clone())
            .collect()
    }

    /// The endpoint identities it knows (not the reserved or CIDR ones).
    pub fn endpoint_identities(&self) -> Vec<Identity> {
        self.identities
            .keys()
            .filter(|id| is_endpoint(**id))
            .map(|id| Identity(*id))
            .collect()
    }

    /// The keys of the policies it holds.
    pub fn policy_keys(&self) -> Vec<String> {
        self.policies.keys().cloned().collect()
    }

    /// The labels of identity `id` (pods, reserved and CIDR identities).
    pub fn labels(&self, id: u32) -> Option<&Labels> {
        self.identities.get(&id)
    }
}
