//! The pod's wiring over rtnetlink: the veth pair (its pod end created straight in the pod's
//! namespace, named, addressed and sized there), the pod side's address and routes, and the
//! checks CHECK makes. Netlink in the pod's namespace runs on a thread that entered it
//! (`setns`), with a socket of its own opened there.

use std::fs::File;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use futures_util::TryStreamExt;
use nix::sched::CloneFlags;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoData, InfoVeth, LinkAttribute, LinkMessage};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteScope};
use rtnetlink::{Handle, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::spec::{code, CniError, Result};

fn sys(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> CniError {
    let what = what.into();
    move |e| CniError::new(code::SYSTEM, what, e.to_string())
}

/// Whether a netlink error is "no such device".
fn is_enodev(e: &rtnetlink::Error) -> bool {
    matches!(e, rtnetlink::Error::NetlinkError(m) if m.code.map(|c| c.get()) == Some(-libc_enodev()))
}

const fn libc_enodev() -> i32 {
    19 // ENODEV
}

/// Runs `f` with a netlink handle in this thread's current namespace, on a current-thread
/// runtime.
pub fn with_handle<T, F, Fut>(f: F) -> Result<T>
where
    F: FnOnce(Handle) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .map_err(|e| CniError::new(code::SYSTEM, "starting the netlink runtime", e.to_string()))?;
    rt.block_on(async {
        let (conn, handle, _) = rtnetlink::new_connection()
            .map_err(|e| CniError::new(code::SYSTEM, "opening a netlink socket", e.to_string()))?;
        tokio::spawn(conn);
        f(handle).await
    })
}

/// Runs `f` with a netlink handle inside the namespace `netns` (on a thread that entered it).
pub fn in_netns<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce(Handle) -> Fut + Send + 'static,
    Fut: Future<Output = Result<T>>,
{
    let ns = open_netns(netns)?;
    let path = netns.display().to_string();
    std::thread::spawn(move || -> Result<T> {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
            CniError::new(
                code::SYSTEM,
                format!("entering the netns {path}"),
                e.to_string(),
            )
        })?;
        with_handle(f)
    })
    .join()
    .map_err(|_| CniError::new(code::SYSTEM, "the netns thread panicked", ""))?
}

/// Opens a network namespace; one that does not exist is an unknown container (code 3).
pub fn open_netns(netns: &Path) -> Result<File> {
    File::open(netns).map_err(|e| {
        CniError::new(
            code::UNKNOWN_CONTAINER,
            format!(
                "the container's network namespace {} does not exist",
                netns.display()
            ),
            e.to_string(),
        )
    })
}

/// The link named `name`, if there is one.
pub async fn link(h: &Handle, name: &str) -> Result<Option<LinkMessage>> {
    match h
        .link()
        .get()
        .match_name(name.to_string())
        .execute()
        .try_next()
        .await
    {
        Ok(l) => Ok(l),
        Err(e) if is_enodev(&e) => Ok(None),
        Err(e) => Err(sys(format!("looking up {name}"))(e)),
    }
}

/// A link's MAC address, as `aa:bb:…`.
pub fn mac_of(l: &LinkMessage) -> String {
    l.attributes
        .iter()
        .find_map(|a| match a {
            LinkAttribute::Address(m) => Some(
                m.iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            ),
            _ => None,
        })
        .unwrap_or_default()
}

/// The host side's MTU at least: Linux's default.
const HOST_MTU: u32 = 1500;

/// Creates the veth pair: `host` (up, the default MTU or `mtu` when larger) here, its peer directly in `netns` as
/// `ifname` with `mac` and `mtu`. Returns the host side's MAC.
pub async fn create_veth(
    h: &Handle,
    host: &str,
    ifname: &str,
    mac: [u8; 6],
    mtu: u32,
    netns: &File,
) -> Result<String> {
    use std::os::fd::AsRawFd;
    // One queue each way: a veth's traffic uses queue 0 only, and every further queue would
    // cost the agent an AF_XDP socket to bind (and, on DEL, to close).
    let peer = one_queue(LinkUnspec::new_with_name(ifname))
        .address(mac.to_vec())
        .mtu(mtu)
        .setns_by_fd(netns.as_raw_fd())
        .build();
    // The host side keeps the default MTU, or the pod's when larger (jumbo frames): the
    // agent, not the veth, decides what is too big for the tunnel (and answers
    // "fragmentation needed" to a pod that raised its own MTU). A frame larger than the host
    // side's MTU would be dropped by the veth before the agent sees it.
    let msg = one_queue(LinkVeth::new(host, ifname))
        .mtu(mtu.max(HOST_MTU))
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build();
    h.link()
        .add(msg)
        .execute()
        .await
        .map_err(sys(format!("creating the veth pair {host}/{ifname}")))?;
    let l = link(h, host).await?.ok_or_else(|| {
        CniError::new(
            code::SYSTEM,
            format!("veth {host} vanished after creation"),
            "",
        )
    })?;
    Ok(mac_of(&l))
}

fn one_queue<T>(b: rtnetlink::LinkMessageBuilder<T>) -> rtnetlink::LinkMessageBuilder<T> {
    b.append_extra_attribute(LinkAttribute::NumRxQueues(1))
        .append_extra_attribute(LinkAttribute::NumTxQueues(1))
}

/// Deletes the link `name`; `false` when there was none.
pub async fn delete(h: &Handle, name: &str) -> Result<bool> {
    let Some(l) = link(h, name).await? else {
        return Ok(false);
    };
    match h.link().del(l.header.index).execute().await {
        Ok(()) => Ok(true),
        Err(e) if is_enodev(&e) => Ok(false),
        Err(e) => Err(sys(format!("deleting {name}"))(e)),
    }
}

/// Inside the pod: `ifname` up with `ip`/32, an on-link route to `gw` and the default route via
/// it (as the sandbox and Cilium set pods up).
pub async fn configure_pod(h: &Handle, ifname: &str, ip: Ipv4Addr, gw: Ipv4Addr) -> Result<()> {
    let l = link(h, ifname).await?.ok_or_else(|| {
        CniError::new(
            code::SYSTEM,
            format!("{ifname} is not in the pod's namespace"),
            "",
        )
    })?;
    let idx = l.header.index;
    h.link()
        .set(LinkUnspec::new_with_index(idx).up().build())
        .execute()
        .await
        .map_err(sys(format!("setting {ifname} up")))?;
    h.address()
        .add(idx, IpAddr::V4(ip), 32)
        .execute()
        .await
        .map_err(sys(format!("adding {ip}/32 to {ifname}")))?;
    let onlink = RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(gw, 32)
        .output_interface(idx)
        .scope(RouteScope::Link)
        .build();
    h.route()
        .add(onlink)
        .execute()
        .await
        .map_err(sys(format!("adding the route to {gw} on {ifname}")))?;
    let default = RouteMessageBuilder::<Ipv4Addr>::new()
        .gateway(gw)
        .output_interface(idx)
        .build();
    h.route()
        .add(default)
        .execute()
        .await
        .map_err(sys(format!("adding the default route via {gw}")))?;
    Ok(())
}

/// What CHECK finds inside the pod: `ifname` with its MAC, whether it has `ip`/32, the on-link
/// route to `gw` and the default route via it.
pub async fn check_pod(
    h: &Handle,
    ifname: &str,
    ip: Ipv4Addr,
    gw: Ipv4Addr,
) -> Result<Vec<String>> {
    let mut problems = Vec::new();
    let Some(l) = link(h, ifname).await? else {
        return Ok(vec![format!("{ifname} is not in the pod's namespace")]);
    };
    let idx = l.header.index;
    let addrs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(idx)
        .execute()
        .try_collect()
        .await
        .map_err(sys("listing addresses"))?;
    let has = addrs.iter().any(|a| {
        a.header.prefix_len == 32
            && a.attributes
                .iter()
                .any(|x| matches!(x, AddressAttribute::Address(IpAddr::V4(v)) if *v == ip))
    });
    if !has {
        problems.push(format!("{ifname} does not have {ip}/32"));
    }
    let routes: Vec<_> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(sys("listing routes"))?;
    let on = |r: &rtnetlink::packet_route::route::RouteMessage| {
        r.attributes
            .iter()
            .any(|a| matches!(a, RouteAttribute::Oif(i) if *i == idx))
    };
    let dst = |r: &rtnetlink::packet_route::route::RouteMessage| {
        r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(d)) => Some(*d),
            _ => None,
        })
    };
    let via = |r: &rtnetlink::packet_route::route::RouteMessage| {
        r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(g)) => Some(*g),
            _ => None,
        })
    };
    if !routes
        .iter()
        .any(|r| on(r) && r.header.destination_prefix_length == 32 && dst(r) == Some(gw))
    {
        problems.push(format!("no route to the gateway {gw} on {ifname}"));
    }
    if !routes
        .iter()
        .any(|r| on(r) && r.header.destination_prefix_length == 0 && via(r) == Some(gw))
    {
        problems.push(format!("no default route via {gw} on {ifname}"));
    }
    Ok(problems)
}

/// Turns off tx checksum offload on `ifname` inside `netns`: a veth leaves TCP/UDP checksums
/// to "hardware" (CHECKSUM_PARTIAL), and the agent's AF_XDP copy mode loses that state. The
/// `SIOCETHTOOL` ioctl is the dataplane I/O layer's (`ethtool -K IFNAME tx off`), run on a
/// thread that entered the pod's namespace.
pub fn tx_checksum_off(netns: &Path, ifname: &str) -> Result<()> {
    let ns = open_netns(netns)?;
    let ifname = ifname.to_string();
    std::thread::spawn(move || -> Result<()> {
        nix::sched::setns(&ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| CniError::new(code::SYSTEM, "entering the pod's netns", e.to_string()))?;
        vireo_dataplane::io::sys::tx_checksum_off(&ifname).map_err(|e| {
            CniError::new(
                code::SYSTEM,
                format!("turning off tx checksum offload on {ifname}"),
                e.to_string(),
            )
        })
    })
    .join()
    .map_err(|_| CniError::new(code::SYSTEM, "the ethtool thread panicked", ""))?
}
