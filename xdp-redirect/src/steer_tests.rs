//! The steering program run by the kernel on test frames (`BPF_PROG_TEST_RUN`), nothing
//! attached anywhere: which uplink frames it hands to userspace. Needs CAP_BPF (root).

use super::*;
use libbpf_rs::ProgramInput;

const NODE: [u8; 4] = [192, 168, 100, 11];
const WORLD: [u8; 4] = [203, 0, 113, 10];
const SLOT: u32 = 7;
/// `lo`: test runs need a real device for `ingress_ifindex`; nothing is attached to it.
const LO: u32 = 1;

fn ipv4(src: [u8; 4], dst: [u8; 4], proto: u8, frag: u16, l4: &[u8]) -> Vec<u8> {
    let mut f = vec![0u8; 14];
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
    let total = (20 + l4.len()) as u16;
    f.extend_from_slice(&[0x45, 0]);
    f.extend_from_slice(&total.to_be_bytes());
    f.extend_from_slice(&[0, 1]);
    f.extend_from_slice(&frag.to_be_bytes());
    f.extend_from_slice(&[64, proto, 0, 0]);
    f.extend_from_slice(&src);
    f.extend_from_slice(&dst);
    f.extend_from_slice(l4);
    f
}

fn ports(sport: u16, dport: u16) -> Vec<u8> {
    let mut l4 = Vec::new();
    l4.extend_from_slice(&sport.to_be_bytes());
    l4.extend_from_slice(&dport.to_be_bytes());
    l4.extend_from_slice(&[0u8; 16]);
    l4
}

fn icmp(typ: u8, id: u16, rest: &[u8]) -> Vec<u8> {
    let mut l4 = vec![typ, 0, 0, 0];
    l4.extend_from_slice(&id.to_be_bytes());
    l4.extend_from_slice(&[0, 1]);
    l4.extend_from_slice(rest);
    l4
}

/// An ICMP error of `typ` quoting a packet from `qsrc` of `qproto` whose first 8 bytes are `q`.
fn error_about(typ: u8, qsrc: [u8; 4], qproto: u8, q: &[u8]) -> Vec<u8> {
    let quoted = ipv4(qsrc, WORLD, qproto, 0, &q[..8]);
    icmp(typ, 0, &quoted[14..])
}

/// Whether the program hands `frame` (arriving on the uplink) to userspace.
fn steered(s: &Steering, frame: &[u8]) -> bool {
    let before = s.counters(SLOT).unwrap();
    let mut ctx = [0u8; 24]; // struct xdp_md: data, data_end, data_meta, ingress_ifindex, …
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&LO.to_ne_bytes());
    let input = ProgramInput {
        context_in: Some(&mut ctx),
        data_in: Some(frame),
        ..Default::default()
    };
    let out = s.skel.progs.vireo_steer.test_run(input).expect("test run");
    assert_eq!(
        out.return_value, 2,
        "an uplink frame is never dropped (XDP_PASS)"
    );
    let after = s.counters(SLOT).unwrap();
    assert_eq!(
        after.passed + after.no_socket + after.steered,
        before.passed + before.no_socket + before.steered + 1
    );
    // No socket is bound in a test: what would be steered shows as `no_socket`.
    after.no_socket > before.no_socket
}

#[test]
fn the_uplink_steers_exactly_the_masquerade_replies() {
    let s = Steering::load().expect("loading the XDP program needs CAP_BPF and CAP_NET_ADMIN");
    let cfg = IfCfg {
        slot: SLOT,
        role: Role::Uplink.raw(),
        vxlan_port: 8472,
        xsk_queues: 0,
        xsk_base: 0,
    };
    s.skel
        .maps
        .ifaces
        .update(&LO.to_ne_bytes(), &cfg.as_bytes(), MapFlags::ANY)
        .unwrap();
    s.reset_counters(SLOT).unwrap();
    let udp = |dport: u16| ipv4(WORLD, NODE, 17, 0, &ports(53, dport));
    let tcp = |dport: u16| ipv4(WORLD, NODE, 6, 0, &ports(80, dport));
    // Off: nothing of it is steered (VXLAN is).
    assert!(!steered(&s, &udp(61500)));
    assert!(steered(&s, &ipv4(WORLD, NODE, 17, 0, &ports(1234, 8472))));
    s.set_masquerade(Some((NODE.into(), 61000, 65535))).unwrap();
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("udp in range", udp(61500), true),
        ("udp at the range's ends", udp(61000), true),
        ("tcp at the range's end", tcp(65535), true),
        ("udp below the range", udp(60999), false),
        (
            "tcp below the range (the host's ephemeral ports)",
            tcp(40000),
            false,
        ),
        (
            "udp in range to another address",
            ipv4(WORLD, [192, 168, 100, 12], 17, 0, &ports(53, 61500)),
            false,
        ),
        (
            "a later fragment (no ports)",
            ipv4(WORLD, NODE, 17, 0x0010, &ports(53, 61500)),
            false,
        ),
        ("gre", ipv4(WORLD, NODE, 47, 0, &ports(0, 61500)), false),
        (
            "echo reply, id in range",
            ipv4(WORLD, NODE, 1, 0, &icmp(0, 62000, &[0; 8])),
            true,
        ),
        (
            "echo reply, id below",
            ipv4(WORLD, NODE, 1, 0, &icmp(0, 1000, &[0; 8])),
            false,
        ),
        (
            "echo request, id in range",
            ipv4(WORLD, NODE, 1, 0, &icmp(8, 62000, &[0; 8])),
            false,
        ),
        (
            "unreachable about the node's udp from the range",
            ipv4(
                WORLD,
                NODE,
                1,
                0,
                &error_about(3, NODE, 17, &ports(62000, 53)),
            ),
            true,
        ),
        (
            "time exceeded about the node's tcp from the range",
            ipv4(
                WORLD,
                NODE,
                1,
                0,
                &error_about(11, NODE, 6, &ports(64000, 80)),
            ),
            true,
        ),
        (
            "time exceeded about the node's echo with an id in the range",
            ipv4(
                WORLD,
                NODE,
                1,
                0,
                &error_about(11, NODE, 1, &icmp(8, 61001, &[])),
            ),
            true,
        ),
        (
            "unreachable about the node's own udp (ephemeral port)",
            ipv4(
                WORLD,
                NODE,
                1,
                0,
                &error_about(3, NODE, 17, &ports(40000, 53)),
            ),
            false,
        ),
        (
            "unreachable quoting another sender",
            ipv4(
                WORLD,
                NODE,
                1,
                0,
                &error_about(3, [10, 0, 0, 1], 17, &ports(62000, 53)),
            ),
            false,
        ),
    ];
    for (what, frame, want) in &cases {
        assert_eq!(steered(&s, frame), *want, "{what}");
    }
    s.set_masquerade(None).unwrap();
    assert!(!steered(&s, &udp(61500)), "off again");
}

/// A veth pair of 12 queues (more than the old cap of 8), deleted on drop.
struct Veth12(String);

impl Veth12 {
    fn new(name: &str) -> Self {
        let peer = format!("{name}p");
        let _ = std::process::Command::new("ip")
            .args(["link", "del", name])
            .stderr(std::process::Stdio::null())
            .status();
        let ok = std::process::Command::new("ip")
            .args([
                "link",
                "add",
                name,
                "numrxqueues",
                "12",
                "numtxqueues",
                "12",
            ])
            .args(["type", "veth", "peer", "name", &peer])
            .args(["numrxqueues", "12", "numtxqueues", "12"])
            .status()
            .expect("ip")
            .success();
        assert!(
            ok,
            "creating veth {name} with 12 queues (needs CAP_NET_ADMIN)"
        );
        Veth12(name.into())
    }
    fn ifindex(&self) -> u32 {
        std::fs::read_to_string(format!("/sys/class/net/{}/ifindex", self.0))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }
}

impl Drop for Veth12 {
    fn drop(&mut self) {
        let _ = std::process::Command::new("ip")
            .args(["link", "del", &self.0])
            .status();
    }
}

/// Runs the program on `frame` as received on `ifindex` queue `queue`; returns the action.
fn run_on(s: &Steering, ifindex: u32, queue: u32, frame: &[u8]) -> i32 {
    let mut ctx = [0u8; 24]; // data, data_end, data_meta, ingress_ifindex, rx_queue_index, …
    ctx[4..8].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
    ctx[12..16].copy_from_slice(&ifindex.to_ne_bytes());
    ctx[16..20].copy_from_slice(&queue.to_ne_bytes());
    let input = ProgramInput {
        context_in: Some(&mut ctx),
        data_in: Some(frame),
        ..Default::default()
    };
    s.skel
        .progs
        .vireo_steer
        .test_run(input)
        .expect("test run")
        .return_value as i32
}

#[test]
fn every_queue_of_a_twelve_queue_interface_gets_a_socket() {
    const XDP_DROP: i32 = 1;
    const XDP_REDIRECT: i32 = 4;
    let veth = Veth12::new("vwkq12");
    // Sized by what the node needs: a 2-queue pod veth and the 12 queues here.
    let s = Steering::load_sized(14).expect("loading the XDP program needs CAP_BPF");
    s.reserve_queues(0, 2).unwrap();
    s.reserve_queues(SLOT, 12).unwrap();
    assert!(s.reserve_queues(9, 1).is_err(), "the map is full");
    // Any AF_XDP socket can sit in an XSKMAP; the test run does not deliver into it.
    // SAFETY: socket(2) takes no pointers; the result is checked and owned below.
    let fd = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
    assert!(fd >= 0, "socket(AF_XDP)");
    // SAFETY: `fd` is a fresh descriptor owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    for q in 0..12 {
        s.set_socket(SLOT, q, fd.as_raw_fd()).unwrap();
    }
    assert!(s.set_socket(SLOT, 12, fd.as_raw_fd()).is_err());
    let att = s
        .attach(
            veth.ifindex(),
            SLOT,
            Role::Pod,
            8472,
            ModePreference::Generic,
        )
        .expect("attach to the test veth");
    let frame = ipv4(WORLD, NODE, 17, 0, &ports(1234, 80));
    for q in [0, 7, 8, 11] {
        assert_eq!(
            run_on(&s, veth.ifindex(), q, &frame),
            XDP_REDIRECT,
            "queue {q}"
        );
    }
    assert_eq!(s.counters(SLOT).unwrap().steered, 4);
    // A queue without a socket is counted, and a pod's frame is not let past the dataplane.
    s.clear_socket(SLOT, 9).unwrap();
    assert_eq!(run_on(&s, veth.ifindex(), 9, &frame), XDP_DROP);
    assert_eq!(s.counters(SLOT).unwrap().no_socket, 1);
    s.detach(att);
}

/// A jumbo frame (MTU 9000) on a veth: the kernel attaches a program to a veth whose peer's MTU
/// exceeds a page only if it is frags-aware (`SEC("xdp.frags")`, BPF_F_XDP_HAS_FRAGS; otherwise
/// `veth_xdp_set` refuses with ERANGE, "Peer MTU is too large to set XDP"), and a test run on a
/// frame larger than its linear part (a page less head- and tailroom) gets the rest in frags.
/// The program reads its headers in the linear part and steers the frame as it does a small one.
#[test]
fn a_jumbo_multi_buffer_frame_is_steered_like_a_small_one() {
    let veth = Veth12::new("vwkmb9k");
    for dev in [veth.0.clone(), format!("{}p", veth.0)] {
        let ok = std::process::Command::new("ip")
            .args(["link", "set", &dev, "mtu", "9000", "up"])
            .status()
            .expect("ip")
            .success();
        assert!(ok, "mtu 9000 on {dev}");
    }
    let s = Steering::load().expect("loading the XDP program needs CAP_BPF and CAP_NET_ADMIN");
    let att = s
        .attach(veth.ifindex(), 3, Role::Pod, 8472, ModePreference::Native)
        .expect("native XDP on a veth with MTU 9000 needs a frags-aware program");
    assert_eq!(att.mode(), XdpMode::Native);
    s.detach(att);
    let cfg = IfCfg {
        slot: SLOT,
        role: Role::Uplink.raw(),
        vxlan_port: 8472,
        xsk_queues: 0,
        xsk_base: 0,
    };
    s.skel
        .maps
        .ifaces
        .update(&LO.to_ne_bytes(), &cfg.as_bytes(), MapFlags::ANY)
        .unwrap();
    s.reset_counters(SLOT).unwrap();
    let mut payload = ports(1234, 8472);
    payload.resize(9000 - 20, 0x5a);
    let jumbo = ipv4(WORLD, NODE, 17, 0, &payload);
    assert_eq!(jumbo.len(), 9014);
    assert!(steered(&s, &jumbo), "VXLAN in a jumbo frame is steered");
    let mut other = ports(1234, 9999);
    other.resize(9000 - 20, 0x5a);
    assert!(
        !steered(&s, &ipv4(WORLD, NODE, 17, 0, &other)),
        "other UDP in a jumbo frame stays in the kernel"
    );
}

/// The id of the program a BPF link runs.
fn link_prog(link: &Attachment) -> u32 {
    // SAFETY: an all-zero `bpf_link_info` is a valid value of this plain C struct.
    let mut info: libbpf_sys::bpf_link_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_link_info>() as u32;
    // SAFETY: the link's descriptor is open; `info` and `len` live across the call.
    let rc =
        unsafe { libbpf_sys::bpf_link_get_info_by_fd(link.link.as_raw_fd(), &mut info, &mut len) };
    assert_eq!(rc, 0, "link info");
    info.prog_id
}

/// The id of a loader's program.
fn prog_id(s: &Steering) -> u32 {
    // SAFETY: an all-zero `bpf_prog_info` is a valid value of this plain C struct.
    let mut info: libbpf_sys::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
    let fd = s.skel.progs.vireo_steer.as_fd().as_raw_fd();
    // SAFETY: the program's descriptor is open; `info` and `len` live across the call.
    let rc = unsafe { libbpf_sys::bpf_prog_get_info_by_fd(fd, &mut info, &mut len) };
    assert_eq!(rc, 0, "program info");
    info.id
}

/// A directory on the host's bpffs, removed with what is pinned in it.
struct PinDir(std::path::PathBuf);

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Ok(d) = std::fs::read_dir(&self.0) {
            for e in d.flatten() {
                let _ = std::fs::remove_file(e.path());
            }
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// An agent restart as the uplink sees it: the old process holds its link; the new one adopts
/// it but the old program (which drops what the dataplane owns) keeps running until the new
/// process takes over, since the new program's maps start empty: steering it at once would
/// pass a NodePort frame to the node's stack, which resets the connection.
#[test]
fn a_held_uplink_keeps_the_old_program_until_the_new_process_takes_over() {
    const XDP_DROP: i32 = 1;
    const XDP_PASS: i32 = 2;
    const XDP_REDIRECT: i32 = 4;
    let veth = Veth12::new("vwkheld");
    let dir = PinDir(std::path::PathBuf::from(format!(
        "/sys/fs/bpf/vireo-test-held-{}",
        std::process::id()
    )));
    std::fs::create_dir_all(&dir.0).expect("a directory on /sys/fs/bpf");
    let pin = dir.0.join("uplink-vwkheld");
    let nodeport = ipv4(WORLD, NODE, 6, 0, &ports(40000, 30080));
    // What an agent does at start for its uplink.
    let adopt = |s: &Steering| {
        s.attach_held(
            veth.ifindex(),
            SLOT,
            Role::Uplink,
            8472,
            ModePreference::Generic,
            &pin,
        )
        .unwrap()
    };

    let old = Steering::load().expect("loading the XDP program needs CAP_BPF and CAP_NET_ADMIN");
    old.reserve_queues(SLOT, 1).unwrap();
    old.set_frontends(&[(NODE.into(), 30080, 6)]).unwrap();
    let att = adopt(&old);
    assert!(!att.is_held(), "nothing was held: an ordinary attach");
    assert_eq!(link_prog(&att), prog_id(&old));
    old.hold(att, &pin).unwrap();
    // The old program, held, with no socket: the NodePort frame is dropped, not passed.
    assert_eq!(run_on(&old, veth.ifindex(), 0, &nodeport), XDP_DROP);
    drop(old);

    let new = Steering::load().unwrap();
    new.reserve_queues(SLOT, 1).unwrap();
    // SAFETY: socket(2) takes no pointers; the result is checked and owned below.
    let xsk = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW, 0) };
    assert!(xsk >= 0, "socket(AF_XDP)");
    // SAFETY: `xsk` is a fresh descriptor owned by nothing else.
    let xsk = unsafe { OwnedFd::from_raw_fd(xsk) };
    new.set_socket(SLOT, 0, xsk.as_raw_fd()).unwrap();
    let att = adopt(&new);
    assert!(att.is_held());
    let held_prog = link_prog(&att);
    assert_ne!(
        held_prog,
        prog_id(&new),
        "the held program still runs the interface"
    );
    // What the new program would do with its empty maps: pass the NodePort frame to the stack.
    assert_eq!(run_on(&new, veth.ifindex(), 0, &nodeport), XDP_PASS);
    new.set_frontends(&[(NODE.into(), 30080, 6)]).unwrap();
    let att = new.take_over(att).unwrap();
    assert!(!att.is_held());
    assert_eq!(link_prog(&att), prog_id(&new), "replaced in one step");
    assert_ne!(link_prog(&att), held_prog);
    assert!(
        std::fs::read_dir(&dir.0).unwrap().next().is_none(),
        "the pin is removed once taken over"
    );
    assert_eq!(
        run_on(&new, veth.ifindex(), 0, &nodeport),
        XDP_REDIRECT,
        "the new program steers the NodePort frame to its socket"
    );

    // Held again, adopted, then detached before any take-over: the pin goes, and the link
    // with it.
    new.hold(att, &pin).unwrap();
    let att = adopt(&new);
    assert!(att.is_held());
    new.detach(att);
    assert!(
        std::fs::read_dir(&dir.0).unwrap().next().is_none(),
        "no pin left"
    );
    let fresh = new
        .attach(
            veth.ifindex(),
            SLOT,
            Role::Uplink,
            8472,
            ModePreference::Generic,
        )
        .expect("the interface has no program left");
    new.detach(fresh);
}
