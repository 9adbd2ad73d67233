//! Cilium `icmps` read into policies: types by number and name, with and without `toPorts`,
//! in allow and deny sections, IPv6 fields, unreadable fields.

use std::net::Ipv4Addr;
use std::path::Path;

use vireo_policy::rules::ICMP_TYPE_UNKNOWN;
use vireo_policy::{decide, Identity, PeerInfo, PortRange, Verdict};

use super::*;
use crate::source::load_text;

const ICMP: u8 = 1;
const TCP: u8 = 6;
const UDP: u8 = 17;

fn load(spec: &str) -> (Manifests, PolicySet) {
    let yaml = format!(
        "---\napiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p, \
         namespace: x}}\nspec:\n{spec}\n"
    );
    let mut m = Manifests::default();
    load_text(&mut m, &yaml, Path::new("p.yaml"));
    assert!(m.errors.is_empty(), "{:?}", m.errors);
    let set = policies(&m);
    (m, set)
}

fn pod(app: &str) -> Labels {
    let own: BTreeMap<String, String> = [("app".to_string(), app.to_string())].into();
    Labels::for_pod(
        vireo_policy::PodOrigin::in_namespace("x"),
        &own,
        &BTreeMap::new(),
    )
}

fn peer(app: &str) -> PeerInfo {
    PeerInfo {
        identity: Identity(1000),
        labels: pod(app),
        ip: Ipv4Addr::new(10, 244, 1, 10),
        kube_apiserver: false,
        names: Vec::new(),
    }
}

fn verdict(set: &PolicySet, d: Direction, from: &str, proto: u8, port: u16) -> Verdict {
    decide(&set.policies, &pod("me"), d, &peer(from), proto, port).verdict
}

fn warned(set: &PolicySet, what: &[&str]) {
    assert!(
        set.warnings
            .iter()
            .any(|w| what.iter().all(|s| w.contains(s))),
        "no warning with {what:?} in {:#?}",
        set.warnings
    );
}

const ME: &str = "  endpointSelector: {matchLabels: {app: me}}\n";

#[test]
fn icmps_alone_cover_their_types_and_no_other_protocol() {
    let (_, set) = load(&format!(
        "{ME}  ingress:
  - fromEndpoints: [{{matchLabels: {{app: a}}}}]
    icmps: [{{fields: [{{type: 8, family: IPv4}}, {{type: Timestamp}}]}}]
  egress:
  - icmps: [{{fields: [{{type: EchoRequest}}]}}]"
    ));
    assert!(set.warnings.is_empty(), "{:#?}", set.warnings);
    let ing = &set.policies[0].ingress[0];
    assert_eq!(
        ing.ports,
        vec![PortRange::icmp(8, 8), PortRange::icmp(13, 13)]
    );
    use Direction::{Egress as OUT, Ingress as IN};
    use Verdict::{Allowed, Denied};
    for (d, from, proto, port, want) in [
        (IN, "a", ICMP, 8, Allowed),
        (IN, "a", ICMP, 13, Allowed),
        (IN, "a", ICMP, 0, Denied),
        (IN, "a", ICMP, 14, Denied),
        (IN, "a", ICMP, ICMP_TYPE_UNKNOWN, Denied),
        (IN, "a", TCP, 8, Denied),
        (IN, "a", UDP, 80, Denied),
        (IN, "b", ICMP, 8, Denied),
        // A rule with icmps and no peer field applies to every peer.
        (OUT, "b", ICMP, 8, Allowed),
        (OUT, "b", ICMP, 13, Denied),
        (OUT, "b", TCP, 443, Denied),
    ] {
        assert_eq!(
            verdict(&set, d, from, proto, port),
            want,
            "{d:?} {from} {proto}/{port}"
        );
    }
}

#[test]
fn icmps_and_to_ports_are_ored() {
    let (_, set) = load(&format!(
        "{ME}  ingress:
  - fromEndpoints: [{{matchLabels: {{app: a}}}}]
    toPorts: [{{ports: [{{port: '80', protocol: TCP}}]}}]
    icmps: [{{fields: [{{type: '8'}}]}}]"
    ));
    assert!(set.warnings.is_empty(), "{:#?}", set.warnings);
    let i = Direction::Ingress;
    assert_eq!(verdict(&set, i, "a", TCP, 80), Verdict::Allowed);
    assert_eq!(verdict(&set, i, "a", ICMP, 8), Verdict::Allowed);
    assert_eq!(verdict(&set, i, "a", TCP, 81), Verdict::Denied);
    assert_eq!(verdict(&set, i, "a", ICMP, 13), Verdict::Denied);
}

#[test]
fn icmp_denies_deny_their_types_only() {
    let (_, set) = load(&format!(
        "{ME}  ingress: [{{fromEndpoints: [{{matchLabels: {{app: a}}}}]}}]
  ingressDeny:
  - fromEndpoints: [{{matchLabels: {{app: a}}}}]
    icmps: [{{fields: [{{type: EchoRequest}}, {{type: 13}}]}}]"
    ));
    assert!(set.warnings.is_empty(), "{:#?}", set.warnings);
    let i = Direction::Ingress;
    let d = decide(&set.policies, &pod("me"), i, &peer("a"), ICMP, 8);
    assert_eq!(d.verdict, Verdict::Denied);
    assert_eq!(d.rules[0].rule, "ingressDeny[0]");
    assert_eq!(verdict(&set, i, "a", ICMP, 13), Verdict::Denied);
    assert_eq!(verdict(&set, i, "a", ICMP, 0), Verdict::Allowed);
    assert_eq!(verdict(&set, i, "a", TCP, 80), Verdict::Allowed);
}

#[test]
fn ipv6_fields_match_nothing_and_never_widen() {
    let (_, set) = load(&format!(
        "{ME}  ingress:
  - icmps: [{{fields: [{{type: 128, family: IPv6}}]}}]
  - fromEndpoints: [{{matchLabels: {{app: a}}}}]
    icmps: [{{fields: [{{type: EchoRequest, family: IPv6}}, {{type: 0}}]}}]
  ingressDeny:
  - fromEndpoints: [{{matchLabels: {{app: b}}}}]
    icmps: [{{fields: [{{type: 8, family: IPv6}}]}}]"
    ));
    warned(&set, &["ingress[0].icmps[0].fields[0]", "IPv4-only"]);
    warned(&set, &["ingressDeny[0].icmps[0].fields[0]", "IPv4-only"]);
    let i = Direction::Ingress;
    // The IPv6-only allow allows nothing, not every ICMP type.
    assert_eq!(verdict(&set, i, "b", ICMP, 128), Verdict::Denied);
    assert_eq!(verdict(&set, i, "b", ICMP, 8), Verdict::Denied);
    assert_eq!(verdict(&set, i, "a", ICMP, 8), Verdict::Denied);
    assert_eq!(verdict(&set, i, "a", ICMP, 0), Verdict::Allowed);
    // The IPv6-only deny denies nothing of IPv4 (b has no allow, so check a deny of nothing
    // by the rules that decided: none).
    let d = decide(&set.policies, &pod("me"), i, &peer("b"), ICMP, 8);
    assert!(d.rules.is_empty(), "{:?}", d.rules);
}

#[test]
fn unreadable_fields_allow_nothing_and_widen_denies() {
    let (_, set) = load(&format!(
        "{ME}  ingress:
  - fromEndpoints: [{{matchLabels: {{app: a}}}}]
    toPorts: [{{ports: [{{port: '80', protocol: TCP}}]}}]
    icmps: [{{fields: [{{type: Ping}}]}}]
  - fromEndpoints: [{{matchLabels: {{app: b}}}}]
  egress: [{{toEndpoints: [{{matchLabels: {{app: b}}}}]}}]
  egressDeny:
  - toEndpoints: [{{matchLabels: {{app: b}}}}]
    icmps: [{{fields: [{{type: 300}}]}}]"
    ));
    warned(
        &set,
        &[
            "ingress[0].icmps[0].fields[0].type: unknown ICMPv4 type name \"Ping\"",
            "allows nothing",
        ],
    );
    warned(
        &set,
        &[
            "egressDeny[0].icmps[0].fields[0].type: 300",
            "every protocol and port",
        ],
    );
    let (i, e) = (Direction::Ingress, Direction::Egress);
    assert_eq!(
        verdict(&set, i, "a", TCP, 80),
        Verdict::Denied,
        "the allow allows nothing"
    );
    assert_eq!(verdict(&set, i, "a", ICMP, 8), Verdict::Denied);
    assert_eq!(verdict(&set, i, "b", ICMP, 8), Verdict::Allowed);
    for (proto, port) in [(ICMP, 8), (ICMP, 0), (TCP, 80), (UDP, 53)] {
        assert_eq!(
            verdict(&set, e, "b", proto, port),
            Verdict::Denied,
            "{proto}/{port}"
        );
    }
}
