//! Host ↔ pod, frame by frame: the node's stack on the host pair is identity `host` and gets
//! its replies back there; another node's stack (VNI 1) is `remote-node`; pods reach the
//! node's address; hostNetwork backends (here and on another node); host → ClusterIP; hairpin
//! through the service loopback address; `fromEntities: host` / `remote-node`.

use std::net::Ipv4Addr;
use std::sync::Arc;

use vireo_lb::{Backend, Frontend, FrontendKind, Service, ServiceSpec, ServiceTable};
use vireo_policy::{Action, Compiler, Entity, Identity, Origin, Peer, Policy, PortRange, Proto};
use vireo_policy::{Rule, Selector};

use super::*;
use crate::fixtures::{
    add_host, tcp, two_pods_with_ct, vxlan_from_remote, HOST_PAIR, IDS, POD_A, POD_B, REMOTE,
    UPLINK,
};
use crate::tables::{Tables, SERVICE_LOOPBACK};
use crate::wire::{icmp_error, ipv4_header_checksum, VXLAN_OVERHEAD};

const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);
const SYN: u8 = 0x02;
const ACK: u8 = 0x10;
const UDP: u8 = 17;
const ICMP: u8 = 1;
const FS: usize = 2048;

fn tables() -> Tables {
    let (mut t, _) = two_pods_with_ct(64, 64);
    add_host(&mut t);
    t
}

/// The node's stack as it sends on `vireo_host`: from the node's address, to `vireo_net`.
fn host() -> (Ipv4Addr, [u8; 6]) {
    (UPLINK.2, HOST_PAIR.2)
}
fn to_host_pair(ip: Ipv4Addr) -> (Ipv4Addr, [u8; 6]) {
    (ip, HOST_PAIR.1)
}
fn a() -> (Ipv4Addr, [u8; 6]) {
    (POD_A.0, POD_A.1)
}
fn via_a(ip: Ipv4Addr) -> (Ipv4Addr, [u8; 6]) {
    (ip, POD_A.3)
}

fn run_one(t: &Tables, slot: u16, f: &[u8]) -> (Desc, Vec<u8>, BatchCounts) {
    let mut mem = VecFrames::new(BATCH, FS);
    let mut b = Batch::default();
    mem.write(256, f);
    assert!(b.push(Desc::new(256, f.len() as u32, slot)));
    let mut c = BatchCounts::default();
    run(&mut b, &mut mem, t, &mut c);
    let d = b.descs()[0];
    (d, mem.frame(d.addr, d.len).unwrap().to_vec(), c)
}

/// An Ethernet + IPv4 frame of `proto` carrying `payload`.
fn ip_frame(
    (src, smac): (Ipv4Addr, [u8; 6]),
    (dst, dmac): (Ipv4Addr, [u8; 6]),
    proto: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dmac);
    f.extend_from_slice(&smac);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = vec![0x45, 0];
    ip.extend_from_slice(&((20 + payload.len()) as u16).to_be_bytes());
    ip.extend_from_slice(&[0, 7, 0x40, 0, 64, proto, 0, 0]);
    ip.extend_from_slice(&src.octets());
    ip.extend_from_slice(&dst.octets());
    let c = ipv4_header_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(payload);
    f
}

fn udp(sport: u16, dport: u16) -> Vec<u8> {
    let mut u = Vec::new();
    u.extend_from_slice(&sport.to_be_bytes());
    u.extend_from_slice(&dport.to_be_bytes());
    u.extend_from_slice(&[0, 9, 0, 0, b'q']);
    u
}

/// ICMP echo (request 8, reply 0) with identifier `id`.
fn echo(typ: u8, id: u16) -> Vec<u8> {
    let mut e = vec![typ, 0, 0, 0];
    e.extend_from_slice(&id.to_be_bytes());
    e.extend_from_slice(&[0, 1]);
    let c = crate::wire::inet_checksum(&e);
    e[2..4].copy_from_slice(&c.to_be_bytes());
    e
}

/// An ICMP port unreachable from `from` (with the Ethernet addresses `macs`) about `quoting`.
fn unreachable_about(from: Ipv4Addr, macs: ([u8; 6], [u8; 6]), quoting: &[u8]) -> Vec<u8> {
    let mut f = quoting.to_vec();
    f.resize(f.len().max(crate::wire::ICMP_ERROR_FRAME), 0);
    let n = icmp_error(&mut f, from.octets(), 3, 3, 0).unwrap();
    f.truncate(n);
    f[0..6].copy_from_slice(&macs.0);
    f[6..12].copy_from_slice(&macs.1);
    f
}

fn addrs(f: &[u8]) -> (Ipv4Addr, Ipv4Addr) {
    let w = |o: usize| Ipv4Addr::new(f[o], f[o + 1], f[o + 2], f[o + 3]);
    (w(26), w(30))
}

/// (src, sport, dst, dport) of a TCP/UDP frame, after checking its IPv4 header checksum.
fn tuple(f: &[u8]) -> (Ipv4Addr, u16, Ipv4Addr, u16) {
    assert!(crate::wire::ipv4_checksum_ok(&f[14..34]), "IPv4 checksum");
    let p = |o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    let (s, d) = addrs(f);
    (s, p(34), d, p(36))
}

const TO_HOST: Verdict = Verdict::Tx { slot: HOST_PAIR.0 };

#[test]
fn the_hosts_traffic_to_a_pod_is_identity_host_and_its_replies_go_back_to_the_host() {
    let t = tables();
    // TCP: the kubelet's probe.
    let syn = tcp(host(), to_host_pair(POD_A.0), 50000, 8080, SYN);
    let (d, out, _) = run_one(&t, HOST_PAIR.0, &syn);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::New)
    );
    assert_eq!(d.src_identity, Identity::HOST.0);
    assert_eq!(&out[0..12], &[POD_A.1, POD_A.3].concat()[..]);
    let reply = tcp(a(), via_a(UPLINK.2), 8080, 50000, SYN | ACK);
    let (d, out, _) = run_one(&t, POD_A.2, &reply);
    assert_eq!((d.verdict, d.ct), (TO_HOST, CtVerdict::Reply));
    assert_eq!(&out[0..6], &HOST_PAIR.2, "to vireo_host's MAC");
    assert_eq!(&out[6..12], &HOST_PAIR.1, "from vireo_net's");
    assert_eq!(out[22], 63, "TTL decremented");
    // UDP and ICMP echo, both ways.
    for (proto, req, rep) in [
        (UDP, udp(5000, 53), udp(53, 5000)),
        (ICMP, echo(8, 77), echo(0, 77)),
    ] {
        let f = ip_frame(host(), to_host_pair(POD_A.0), proto, &req);
        let (d, ..) = run_one(&t, HOST_PAIR.0, &f);
        assert_eq!(
            (d.verdict, d.ct),
            (Verdict::Tx { slot: POD_A.2 }, CtVerdict::New)
        );
        let f = ip_frame(a(), via_a(UPLINK.2), proto, &rep);
        let (d, ..) = run_one(&t, POD_A.2, &f);
        assert_eq!(
            (d.verdict, d.ct),
            (TO_HOST, CtVerdict::Reply),
            "proto {proto}"
        );
    }
}

#[test]
fn the_host_pair_takes_only_the_nodes_own_address_as_source() {
    let t = tables();
    let forged = tcp(
        (POD_B.0, HOST_PAIR.2),
        to_host_pair(POD_A.0),
        50000,
        80,
        SYN,
    );
    let (d, _, c) = run_one(&t, HOST_PAIR.0, &forged);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::InvalidSource));
    assert_eq!(c.drops[DropReason::InvalidSource as usize], 1);
    // The host to itself through the pair would loop: not routed.
    let own = tcp(host(), to_host_pair(UPLINK.2), 50000, 80, SYN);
    let (d, ..) = run_one(&t, HOST_PAIR.0, &own);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::UnknownDestination));
}

#[test]
fn arp_on_the_host_pair_is_answered_for_every_next_hop_but_the_nodes_own() {
    let t = tables();
    let mut req = crate::fixtures::arp_request_from_a(POD_B.0);
    let (d, out, _) = run_one(&t, HOST_PAIR.0, &req);
    assert_eq!(d.verdict, TO_HOST);
    assert_eq!(&out[22..28], &HOST_PAIR.1, "answered with vireo_net's MAC");
    // A pod's veth answers only its gateway.
    let (d, ..) = run_one(&t, POD_A.2, &req);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::ArpNotForGateway));
    req[38..42].copy_from_slice(&UPLINK.2.octets());
    let (d, ..) = run_one(&t, HOST_PAIR.0, &req);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::ArpNotForGateway));
}

#[test]
fn another_nodes_host_arrives_as_remote_node() {
    let t = tables();
    let inner = tcp((REMOTE.0, REMOTE.1), (POD_A.0, UPLINK.1), 50000, 8080, SYN);
    let (d, ..) = run_one(&t, UPLINK.0, &vxlan_from_remote(&inner, Identity::HOST.0));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(d.src_identity, Identity::REMOTE_NODE.0);
    // The pod's reply goes back through the tunnel to that node.
    let reply = tcp(a(), via_a(REMOTE.0), 8080, 50000, SYN | ACK);
    let (d, out, _) = run_one(&t, POD_A.2, &reply);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: UPLINK.0 }, CtVerdict::Reply)
    );
    assert_eq!(addrs(&out).1, REMOTE.0, "outer destination: that node");
}

#[test]
fn pods_reach_the_nodes_address_here_and_on_other_nodes() {
    let t = tables();
    let f = tcp(a(), via_a(UPLINK.2), 40000, 10250, SYN);
    let (d, out, _) = run_one(&t, POD_A.2, &f);
    assert_eq!((d.verdict, d.ct), (TO_HOST, CtVerdict::New));
    assert_eq!(&out[0..6], &HOST_PAIR.2);
    let reply = tcp(host(), to_host_pair(POD_A.0), 10250, 40000, SYN | ACK);
    let (d, ..) = run_one(&t, HOST_PAIR.0, &reply);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Reply)
    );
    // Another node's address: through the tunnel to it.
    let f = tcp(a(), via_a(REMOTE.0), 40001, 10250, SYN);
    let (d, out, _) = run_one(&t, POD_A.2, &f);
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert_eq!(addrs(&out).1, REMOTE.0);
    assert_eq!(
        addrs(&out[VXLAN_OVERHEAD..]).1,
        REMOTE.0,
        "inner: that node's host"
    );
    // A pod of another node to our address, through the tunnel: to our host.
    let inner = tcp(
        (crate::fixtures::POD_C, REMOTE.1),
        (UPLINK.2, UPLINK.1),
        40002,
        22,
        SYN,
    );
    let (d, ..) = run_one(&t, UPLINK.0, &vxlan_from_remote(&inner, IDS[2]));
    assert_eq!((d.verdict, d.src_identity), (TO_HOST, IDS[2]));
}

#[test]
fn an_icmp_error_from_the_host_about_a_pods_flow_is_related() {
    let t = tables();
    let dgram = ip_frame(a(), via_a(UPLINK.2), UDP, &udp(5000, 53));
    let err = unreachable_about(UPLINK.2, (HOST_PAIR.1, HOST_PAIR.2), &dgram);
    // Before the flow: unrelated.
    let (d, ..) = run_one(&t, HOST_PAIR.0, &err);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::IcmpUnrelated));
    assert_eq!(run_one(&t, POD_A.2, &dgram).0.verdict, TO_HOST);
    let (d, ..) = run_one(&t, HOST_PAIR.0, &err);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Related)
    );
}

fn service(proto: u8, port: u16, backends: &[(Ipv4Addr, u16, bool)]) -> ServiceSpec {
    ServiceSpec {
        name: "default/s".into(),
        port_name: "p".into(),
        port,
        proto,
        frontends: vec![Frontend {
            kind: FrontendKind::ClusterIp,
            ip: VIP,
            port,
            proto,
        }],
        backends: backends
            .iter()
            .map(|&(ip, port, local)| Backend {
                ip,
                port,
                local,
                terminating: false,
                weight: 1,
            })
            .collect(),
        affinity_timeout: None,
        source_ranges: Vec::new(),
        external_local: false,
    }
}

fn with_services(t: &mut Tables, specs: Vec<ServiceSpec>) {
    let s = specs
        .into_iter()
        .map(|s| Arc::new(Service::new(s, 251, 0).unwrap()))
        .collect();
    t.services = Arc::new(ServiceTable::new(s));
}

#[test]
fn a_host_network_backend_on_this_node_is_the_host() {
    let mut t = tables();
    with_services(&mut t, vec![service(6, 443, &[(UPLINK.2, 6443, true)])]);
    let (d, out, _) = run_one(&t, POD_A.2, &tcp(a(), via_a(VIP), 40000, 443, SYN));
    assert_eq!((d.verdict, d.ct), (TO_HOST, CtVerdict::New));
    assert_eq!(tuple(&out), (POD_A.0, 40000, UPLINK.2, 6443));
    assert_eq!(&out[0..6], &HOST_PAIR.2);
    let reply = tcp(host(), to_host_pair(POD_A.0), 6443, 40000, SYN | ACK);
    let (d, out, _) = run_one(&t, HOST_PAIR.0, &reply);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Reply)
    );
    assert_eq!(tuple(&out), (VIP, 443, POD_A.0, 40000));
}

#[test]
fn a_host_network_backend_on_another_node_is_reached_through_the_tunnel() {
    let mut t = tables();
    with_services(&mut t, vec![service(6, 443, &[(REMOTE.0, 6443, false)])]);
    let (d, out, _) = run_one(&t, POD_A.2, &tcp(a(), via_a(VIP), 40000, 443, SYN));
    assert_eq!(d.verdict, Verdict::Tx { slot: UPLINK.0 });
    assert_eq!(
        tuple(&out[VXLAN_OVERHEAD..]),
        (POD_A.0, 40000, REMOTE.0, 6443)
    );
    // That node's stack answers through its own host pair: VNI 1.
    let inner = tcp(
        (REMOTE.0, REMOTE.1),
        (POD_A.0, UPLINK.1),
        6443,
        40000,
        SYN | ACK,
    );
    let (d, out, _) = run_one(&t, UPLINK.0, &vxlan_from_remote(&inner, Identity::HOST.0));
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Reply)
    );
    assert_eq!(tuple(&out), (VIP, 443, POD_A.0, 40000));
}

#[test]
fn the_host_reaches_a_clusterip_and_gets_the_reply_from_it() {
    let mut t = tables();
    with_services(
        &mut t,
        vec![
            service(6, 80, &[(POD_B.0, 8080, true)]),
            service(UDP, 81, &[(POD_B.0, 8081, true)]),
        ],
    );
    let (d, out, _) = run_one(
        &t,
        HOST_PAIR.0,
        &tcp(host(), to_host_pair(VIP), 50000, 80, SYN),
    );
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_B.2 }, CtVerdict::New)
    );
    assert_eq!(d.src_identity, Identity::HOST.0);
    assert_eq!(tuple(&out), (UPLINK.2, 50000, POD_B.0, 8080));
    let reply = tcp(
        (POD_B.0, POD_B.1),
        (UPLINK.2, POD_B.3),
        8080,
        50000,
        SYN | ACK,
    );
    let (d, out, _) = run_one(&t, POD_B.2, &reply);
    assert_eq!((d.verdict, d.ct), (TO_HOST, CtVerdict::Reply));
    assert_eq!(tuple(&out), (VIP, 80, UPLINK.2, 50000));
    assert_eq!(&out[0..6], &HOST_PAIR.2);
    // UDP too.
    let q = ip_frame(host(), to_host_pair(VIP), UDP, &udp(50001, 81));
    let (d, out, _) = run_one(&t, HOST_PAIR.0, &q);
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_B.2 });
    assert_eq!(tuple(&out), (UPLINK.2, 50001, POD_B.0, 8081));
    let r = ip_frame(
        (POD_B.0, POD_B.1),
        (UPLINK.2, POD_B.3),
        UDP,
        &udp(8081, 50001),
    );
    let (d, out, _) = run_one(&t, POD_B.2, &r);
    assert_eq!((d.verdict, d.ct), (TO_HOST, CtVerdict::Reply));
    assert_eq!(tuple(&out), (VIP, 81, UPLINK.2, 50001));
    // A forged source on the host pair is not translated.
    let forged = tcp((POD_A.0, HOST_PAIR.2), to_host_pair(VIP), 50002, 80, SYN);
    let (d, ..) = run_one(&t, HOST_PAIR.0, &forged);
    assert_eq!(d.verdict, Verdict::Drop(DropReason::InvalidSource));
}

#[test]
fn hairpin_a_pod_reaches_itself_through_its_service_from_the_loopback_address() {
    let mut t = tables();
    with_services(
        &mut t,
        vec![
            service(6, 80, &[(POD_A.0, 8080, true)]),
            service(UDP, 81, &[(POD_A.0, 8081, true)]),
        ],
    );
    let (d, out, _) = run_one(&t, POD_A.2, &tcp(a(), via_a(VIP), 40000, 80, SYN));
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::New)
    );
    assert_eq!(tuple(&out), (SERVICE_LOOPBACK, 40000, POD_A.0, 8080));
    let reply = tcp(a(), via_a(SERVICE_LOOPBACK), 8080, 40000, SYN | ACK);
    let (d, out, _) = run_one(&t, POD_A.2, &reply);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Reply)
    );
    assert_eq!(tuple(&out), (VIP, 80, POD_A.0, 40000));
    // UDP, and the pod's own port unreachable about it (nothing listens on 8081) reaches it
    // as an error from the service address about what it sent.
    let q = ip_frame(a(), via_a(VIP), UDP, &udp(40001, 81));
    let (d, out, _) = run_one(&t, POD_A.2, &q);
    assert_eq!(tuple(&out), (SERVICE_LOOPBACK, 40001, POD_A.0, 8081));
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    let err = unreachable_about(POD_A.0, (POD_A.3, POD_A.1), &out);
    let (d, out, _) = run_one(&t, POD_A.2, &err);
    assert_eq!(
        (d.verdict, d.ct),
        (Verdict::Tx { slot: POD_A.2 }, CtVerdict::Related)
    );
    assert_eq!(
        addrs(&out),
        (VIP, POD_A.0),
        "from the service address to the pod"
    );
    let quote = &out[14 + 20 + 8..];
    let w = |o: usize| Ipv4Addr::new(quote[o], quote[o + 1], quote[o + 2], quote[o + 3]);
    assert_eq!((w(12), w(16)), (POD_A.0, VIP), "quoting what the pod sent");
    // Another client of the same service is not source-NAT'd.
    let (d, out, _) = run_one(
        &t,
        POD_B.2,
        &tcp((POD_B.0, POD_B.1), (VIP, POD_B.3), 40000, 80, SYN),
    );
    assert_eq!(d.verdict, Verdict::Tx { slot: POD_A.2 });
    assert_eq!(tuple(&out), (POD_B.0, 40000, POD_A.0, 8080));
}

#[test]
fn hairpin_the_host_reaches_its_own_host_network_backend() {
    let mut t = tables();
    with_services(&mut t, vec![service(6, 443, &[(UPLINK.2, 6443, true)])]);
    let (d, out, _) = run_one(
        &t,
        HOST_PAIR.0,
        &tcp(host(), to_host_pair(VIP), 50000, 443, SYN),
    );
    assert_eq!((d.verdict, d.ct), (TO_HOST, CtVerdict::New));
    assert_eq!(tuple(&out), (SERVICE_LOOPBACK, 50000, UPLINK.2, 6443));
    let reply = tcp(
        host(),
        to_host_pair(SERVICE_LOOPBACK),
        6443,
        50000,
        SYN | ACK,
    );
    let (d, out, _) = run_one(&t, HOST_PAIR.0, &reply);
    assert_eq!((d.verdict, d.ct), (TO_HOST, CtVerdict::Reply));
    assert_eq!(tuple(&out), (VIP, 443, UPLINK.2, 50000));
}

/// Pod B (app=b) takes ingress on TCP 80 from the entity `entity` only.
fn b_from_entity(t: &mut Tables, entity: Entity) {
    let mut c = Compiler::new();
    c.set_identity(Identity(IDS[0]), crate::fixtures::app_labels("a"));
    c.set_identity(Identity(IDS[1]), crate::fixtures::app_labels("b"));
    let origin = |r: &str| Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "default/p".into(),
        rule: r.into(),
    };
    let p = Policy {
        origin: origin(""),
        subject: Selector::label("k8s:app", "b"),
        node_selector: None,
        enforce_ingress: true,
        enforce_egress: false,
        ingress: vec![Rule {
            action: Action::Allow,
            peers: vec![Peer::Entity(entity)],
            requires: Vec::new(),
            ports: vec![PortRange {
                lo: 80,
                hi: 80,
                proto: Proto::Tcp,
                l7: false,
                name: None,
            }],
            dns: Vec::new(),
            origin: origin("ingress[0]"),
        }],
        egress: Vec::new(),
        warnings: Vec::new(),
    };
    c.set_policies("default/p", vec![p]);
    t.policy = Arc::new(c.tables());
    t.revision += 1;
}

#[test]
fn from_entities_host_and_remote_node_allow_and_deny() {
    let local = tcp(host(), to_host_pair(POD_B.0), 50000, 80, SYN);
    let remote_inner = tcp((REMOTE.0, REMOTE.1), (POD_B.0, UPLINK.1), 50001, 80, SYN);
    let remote = vxlan_from_remote(&remote_inner, Identity::HOST.0);
    // (entity, allow_localhost, host gets in, remote node gets in): the local host gets in
    // under default deny unless allow-localhost is off.
    for (entity, localhost, host_ok, remote_ok) in [
        (Entity::Host, true, true, false),
        (Entity::RemoteNode, true, true, true),
        (Entity::RemoteNode, false, false, true),
    ] {
        let mut t = tables();
        b_from_entity(&mut t, entity);
        Arc::make_mut(&mut t.policy).set_allow_localhost(localhost);
        let v = |ok: bool| {
            if ok {
                Verdict::Tx { slot: POD_B.2 }
            } else {
                Verdict::Drop(DropReason::PolicyDenied)
            }
        };
        assert_eq!(
            run_one(&t, HOST_PAIR.0, &local).0.verdict,
            v(host_ok),
            "{entity:?}"
        );
        assert_eq!(
            run_one(&t, UPLINK.0, &remote).0.verdict,
            v(remote_ok),
            "{entity:?}"
        );
        // Pod A is neither.
        let from_a = tcp(a(), via_a(POD_B.0), 40000, 80, SYN);
        assert_eq!(
            run_one(&t, POD_A.2, &from_a).0.verdict,
            Verdict::Drop(DropReason::PolicyDenied)
        );
    }
}

#[test]
fn to_entities_host_covers_the_nodes_address() {
    let mut t = tables();
    let mut c = Compiler::new();
    c.set_identity(Identity(IDS[0]), crate::fixtures::app_labels("a"));
    let origin = Origin {
        kind: "CiliumNetworkPolicy".into(),
        name: "default/e".into(),
        rule: String::new(),
    };
    let p = Policy {
        origin: origin.clone(),
        subject: Selector::label("k8s:app", "a"),
        node_selector: None,
        enforce_ingress: false,
        enforce_egress: true,
        ingress: Vec::new(),
        egress: vec![Rule {
            action: Action::Allow,
            peers: vec![Peer::Entity(Entity::Host)],
            requires: Vec::new(),
            ports: Vec::new(),
            dns: Vec::new(),
            origin,
        }],
        warnings: Vec::new(),
    };
    c.set_policies("default/e", vec![p]);
    t.policy = Arc::new(c.tables());
    let f = tcp(a(), via_a(UPLINK.2), 40000, 10250, SYN);
    assert_eq!(run_one(&t, POD_A.2, &f).0.verdict, TO_HOST);
    let f = tcp(a(), via_a(REMOTE.0), 40000, 10250, SYN);
    assert_eq!(
        run_one(&t, POD_A.2, &f).0.verdict,
        Verdict::Drop(DropReason::PolicyDenied),
        "another node is remote-node, not host"
    );
}
