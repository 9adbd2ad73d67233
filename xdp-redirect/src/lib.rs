//! Vireo's XDP steering program (`bpf/steer.bpf.c`) and its loader.
//!
//! The program is tiny on purpose: it asks one question per frame, "does the dataplane own
//! this?", and either redirects the frame into the AF_XDP socket of its rx queue or passes it to
//! the kernel. Everything else lives in userspace.
//!
//! One loaded object serves every interface. Each interface gets a dense *slot*; its sockets
//! live at `slot * MAX_QUEUES + queue` in one XSKMAP. Each attachment is a BPF link owned by this
//! process, so the kernel removes the program when the process dies, however it dies
//! (fail-open: the node keeps its own networking).

use std::collections::HashSet;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};

use libbpf_rs::libbpf_sys;
use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapCore, MapFlags, OpenObject};

mod skel {
    #![allow(clippy::all, missing_docs, dead_code, unused_imports)]
    include!(concat!(env!("OUT_DIR"), "/steer.skel.rs"));
}
use skel::{SteerSkel, SteerSkelBuilder};

/// Interface slots the program knows (mirrors `VIREO_MAX_IFACES`).
pub const MAX_IFACES: u32 = 1024;
/// Rx queues per interface that can hold a socket (mirrors `VIREO_MAX_QUEUES`).
pub const MAX_QUEUES: u32 = 8;
/// Service frontends the uplink can steer (mirrors `VIREO_MAX_FRONTENDS`).
pub const MAX_FRONTENDS: u32 = 65536;

/// What an attached interface is to the dataplane.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A pod's host-side veth: every frame goes to userspace.
    Pod,
    /// The node's uplink: only VXLAN to our port and TCP/UDP to service frontends (NodePorts,
    /// external and LoadBalancer IPs) go to userspace; everything else stays in the kernel.
    Uplink,
}

impl Role {
    fn raw(self) -> u32 {
        match self {
            Role::Pod => 1,
            Role::Uplink => 2,
        }
    }
}

/// How the program is attached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XdpMode {
    /// In the driver (`xdpdrv`).
    Native,
    /// In the generic skb path (`xdpgeneric`).
    Generic,
}

impl XdpMode {
    /// The name `ip link` and `bpftool net` use.
    pub fn as_str(self) -> &'static str {
        match self {
            XdpMode::Native => "native",
            XdpMode::Generic => "generic",
        }
    }
}

/// Which attach modes to try.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ModePreference {
    /// Native first, generic as a logged fallback.
    #[default]
    Auto,
    /// Native only.
    Native,
    /// Generic only.
    Generic,
}

/// Errors of the loader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Loading the object into the kernel failed.
    #[error("loading the XDP program failed: {0} (needs CAP_BPF and CAP_NET_ADMIN)")]
    Load(#[source] libbpf_rs::Error),
    /// Attaching to an interface failed in every allowed mode.
    #[error("attaching XDP to ifindex {ifindex} failed: {reason}")]
    Attach {
        /// The interface.
        ifindex: u32,
        /// What each attempt said.
        reason: String,
    },
    /// A map update or lookup failed.
    #[error("XDP map {map}: {source}")]
    Map {
        /// Which map.
        map: &'static str,
        /// The error.
        #[source]
        source: libbpf_rs::Error,
    },
    /// A slot or queue beyond the program's tables.
    #[error("{what} {value} is out of range (limit {limit})")]
    Range {
        /// What was out of range.
        what: &'static str,
        /// The value.
        value: u32,
        /// The limit.
        limit: u32,
    },
}

/// Per-interface counters kept by the program.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct IfCounters {
    /// Frames redirected into an AF_XDP socket.
    pub steered: u64,
    /// Frames left to the kernel.
    pub passed: u64,
    /// Frames for userspace with no socket on their rx queue.
    pub no_socket: u64,
}

/// The loaded steering program and its maps.
pub struct Steering {
    skel: SteerSkel<'static>,
}

/// One interface with the program attached. Dropping it detaches the program and forgets the
/// interface's map entries.
pub struct Attachment {
    link: OwnedFd,
    ifindex: u32,
    slot: u32,
    mode: XdpMode,
}

impl Attachment {
    /// The mode the kernel accepted.
    pub fn mode(&self) -> XdpMode {
        self.mode
    }
    /// The interface index.
    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }
    /// The slot of this interface in the program's maps.
    pub fn slot(&self) -> u32 {
        self.slot
    }
}

impl std::fmt::Debug for Attachment {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Attachment")
            .field("link_fd", &self.link.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("slot", &self.slot)
            .field("mode", &self.mode)
            .finish()
    }
}

fn map_err(map: &'static str) -> impl FnOnce(libbpf_rs::Error) -> Error {
    move |source| Error::Map { map, source }
}

impl Steering {
    /// Loads the program and creates its maps.
    pub fn load() -> Result<Self, Error> {
        // The skeleton borrows its open object for as long as it lives; the loader lives as long
        // as the agent, so one small allocation per load is leaked on purpose.
        let storage: &'static mut MaybeUninit<OpenObject> =
            Box::leak(Box::new(MaybeUninit::uninit()));
        let open = SteerSkelBuilder::default()
            .open(storage)
            .map_err(Error::Load)?;
        let skel = open.load().map_err(Error::Load)?;
        Ok(Steering { skel })
    }

    /// Attaches the program to `ifindex` with a role, through a BPF link.
    pub fn attach(
        &self,
        ifindex: u32,
        slot: u32,
        role: Role,
        vxlan_port: u16,
        pref: ModePreference,
    ) -> Result<Attachment, Error> {
        check_range("slot", slot, MAX_IFACES)?;
        let cfg = IfCfg {
            slot,
            role: role.raw(),
            vxlan_port,
            pad: 0,
            pad2: 0,
        };
        self.skel
            .maps
            .ifaces
            .update(&ifindex.to_ne_bytes(), &cfg.as_bytes(), MapFlags::ANY)
            .map_err(map_err("ifaces"))?;
        // Fresh counters for a reused slot.
        self.reset_counters(slot)?;

        let modes: &[XdpMode] = match pref {
            ModePreference::Auto => &[XdpMode::Native, XdpMode::Generic],
            ModePreference::Native => &[XdpMode::Native],
            ModePreference::Generic => &[XdpMode::Generic],
        };
        let prog_fd = self.skel.progs.vireo_steer.as_fd().as_raw_fd();
        let mut reasons = Vec::new();
        for &mode in modes {
            match link_create(prog_fd, ifindex, mode) {
                Ok(link) => {
                    if !reasons.is_empty() {
                        tracing::warn!(ifindex, fallback = mode.as_str(), tried = %reasons.join("; "), "XDP native attach refused; using generic mode");
                    }
                    return Ok(Attachment {
                        link,
                        ifindex,
                        slot,
                        mode,
                    });
                }
                Err(e) => reasons.push(format!("{}: {e}", mode.as_str())),
            }
        }
        let _ = self.skel.maps.ifaces.delete(&ifindex.to_ne_bytes());
        Err(Error::Attach {
            ifindex,
            reason: reasons.join("; "),
        })
    }

    /// Detaches the program from an interface and removes its map entries.
    pub fn detach(&self, att: Attachment) {
        let Attachment { link, ifindex, .. } = att;
        drop(link);
        let _ = self.skel.maps.ifaces.delete(&ifindex.to_ne_bytes());
    }

    /// Points `(slot, queue)` at an AF_XDP socket.
    pub fn set_socket(&self, slot: u32, queue: u32, xsk_fd: RawFd) -> Result<(), Error> {
        let key = xsk_key(slot, queue)?;
        self.skel
            .maps
            .xsks
            .update(
                &key.to_ne_bytes(),
                &(xsk_fd as u32).to_ne_bytes(),
                MapFlags::ANY,
            )
            .map_err(map_err("xsks"))
    }

    /// Removes the socket of `(slot, queue)`; frames for it are then counted as `no_socket`.
    pub fn clear_socket(&self, slot: u32, queue: u32) -> Result<(), Error> {
        let key = xsk_key(slot, queue)?;
        match self.skel.maps.xsks.delete(&key.to_ne_bytes()) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == libbpf_rs::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(map_err("xsks")(e)),
        }
    }

    /// Replaces the service frontends (address, port, IP protocol) the uplink steers to
    /// userspace: NodePorts on the node's address, external and LoadBalancer IPs.
    pub fn set_frontends(&self, want: &[(std::net::Ipv4Addr, u16, u8)]) -> Result<(), Error> {
        check_range("frontends", want.len() as u32, MAX_FRONTENDS)?;
        let key = |ip: &std::net::Ipv4Addr, port: u16, proto: u8| {
            let mut k = vec![0u8; 8];
            k[..4].copy_from_slice(&ip.octets());
            k[4..6].copy_from_slice(&port.to_be_bytes());
            k[6] = proto;
            k
        };
        let want: HashSet<Vec<u8>> = want.iter().map(|(ip, p, pr)| key(ip, *p, *pr)).collect();
        let map = &self.skel.maps.frontends;
        let have: HashSet<Vec<u8>> = map.keys().collect();
        for k in have.difference(&want) {
            let _ = map.delete(k);
        }
        for k in want.difference(&have) {
            map.update(k, &[1u8], MapFlags::ANY)
                .map_err(map_err("frontends"))?;
        }
        Ok(())
    }

    /// The counters of a slot, summed over CPUs.
    pub fn counters(&self, slot: u32) -> Result<IfCounters, Error> {
        check_range("slot", slot, MAX_IFACES)?;
        let per_cpu = self
            .skel
            .maps
            .stats
            .lookup_percpu(&slot.to_ne_bytes(), MapFlags::ANY)
            .map_err(map_err("stats"))?
            .unwrap_or_default();
        let mut sum = IfCounters::default();
        for v in per_cpu {
            let f = |i: usize| {
                v.get(i * 8..i * 8 + 8)
                    .map(|b| u64::from_ne_bytes(b.try_into().unwrap_or([0; 8])))
                    .unwrap_or(0)
            };
            sum.steered += f(0);
            sum.passed += f(1);
            sum.no_socket += f(2);
        }
        Ok(sum)
    }

    fn reset_counters(&self, slot: u32) -> Result<(), Error> {
        let ncpu = libbpf_rs::num_possible_cpus().unwrap_or(1);
        let zero = vec![vec![0u8; 24]; ncpu];
        self.skel
            .maps
            .stats
            .update_percpu(&slot.to_ne_bytes(), &zero, MapFlags::ANY)
            .map_err(map_err("stats"))
    }
}

fn check_range(what: &'static str, value: u32, limit: u32) -> Result<(), Error> {
    if value >= limit {
        return Err(Error::Range { what, value, limit });
    }
    Ok(())
}

fn xsk_key(slot: u32, queue: u32) -> Result<u32, Error> {
    check_range("slot", slot, MAX_IFACES)?;
    check_range("queue", queue, MAX_QUEUES)?;
    Ok(slot * MAX_QUEUES + queue)
}

/// Mirrors `struct vireo_if_cfg`.
#[repr(C)]
struct IfCfg {
    slot: u32,
    role: u32,
    vxlan_port: u16,
    pad: u16,
    pad2: u32,
}

impl IfCfg {
    /// The bytes of `struct vireo_if_cfg`, in the machine's byte order.
    fn as_bytes(&self) -> [u8; 16] {
        let mut b = [0u8; 16];
        b[0..4].copy_from_slice(&self.slot.to_ne_bytes());
        b[4..8].copy_from_slice(&self.role.to_ne_bytes());
        b[8..10].copy_from_slice(&self.vxlan_port.to_ne_bytes());
        b[10..12].copy_from_slice(&self.pad.to_ne_bytes());
        b[12..16].copy_from_slice(&self.pad2.to_ne_bytes());
        b
    }
}

/// `bpf_link_create(BPF_XDP)` with an explicit mode, so generic can be forced as a fallback.
fn link_create(prog_fd: RawFd, ifindex: u32, mode: XdpMode) -> std::io::Result<OwnedFd> {
    let flags = match mode {
        XdpMode::Native => libbpf_sys::XDP_FLAGS_DRV_MODE,
        XdpMode::Generic => libbpf_sys::XDP_FLAGS_SKB_MODE,
    };
    // SAFETY: an all-zero `bpf_link_create_opts` is its documented default; `sz` is set below.
    let mut opts: libbpf_sys::bpf_link_create_opts = unsafe { std::mem::zeroed() };
    opts.sz = std::mem::size_of::<libbpf_sys::bpf_link_create_opts>() as _;
    opts.flags = flags;
    // SAFETY: `prog_fd` is a loaded XDP program owned by the skeleton, `opts` lives across the
    // call, and libbpf returns either a new fd we take ownership of or a negative errno.
    let fd =
        unsafe { libbpf_sys::bpf_link_create(prog_fd, ifindex as i32, libbpf_sys::BPF_XDP, &opts) };
    if fd < 0 {
        return Err(std::io::Error::from_raw_os_error(-fd));
    }
    // SAFETY: `fd` is a fresh descriptor returned by the kernel, owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_per_interface_rows() {
        assert_eq!(xsk_key(0, 0).unwrap(), 0);
        assert_eq!(xsk_key(3, 1).unwrap(), 3 * MAX_QUEUES + 1);
        assert!(xsk_key(MAX_IFACES, 0).is_err());
        assert!(xsk_key(0, MAX_QUEUES).is_err());
    }

    #[test]
    fn cfg_layout_matches_c() {
        assert_eq!(std::mem::size_of::<IfCfg>(), 16);
    }
}
