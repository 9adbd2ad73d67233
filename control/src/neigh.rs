//! Next-hop MACs on the underlay, from the kernel's own tables: the route to a node says which
//! neighbour to use (the node itself on-link, or a gateway), and the neighbour table says its
//! MAC. When the kernel has no entry yet, a single UDP datagram to the discard port makes it
//! resolve one (the kernel's ARP; Vireo sends nothing on the uplink itself for this).

use std::net::{Ipv4Addr, UdpSocket};

/// The neighbour to send to for `dst` out of `dev`, by the main routing table.
pub fn next_hop(dst: Ipv4Addr, dev: &str) -> Ipv4Addr {
    let table = std::fs::read_to_string("/proc/net/route").unwrap_or_default();
    next_hop_in(&table, dst, dev)
}

fn hex_le(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 16).ok().map(u32::from_be) // /proc/net/route prints network order as LE hex
}

fn next_hop_in(table: &str, dst: Ipv4Addr, dev: &str) -> Ipv4Addr {
    let d = u32::from(dst);
    let mut best: Option<(u32, u32)> = None; // (mask, gateway)
    for l in table.lines().skip(1) {
        let f: Vec<&str> = l.split_whitespace().collect();
        if f.len() < 8 || f[0] != dev {
            continue;
        }
        let (Some(net), Some(gw), Some(mask)) = (hex_le(f[1]), hex_le(f[2]), hex_le(f[7])) else {
            continue;
        };
        if d & mask == net & mask && best.is_none_or(|(m, _)| mask.count_ones() > m.count_ones()) {
            best = Some((mask, gw));
        }
    }
    match best {
        Some((_, gw)) if gw != 0 => Ipv4Addr::from(gw),
        _ => dst,
    }
}

/// The MAC of `ip` on `dev` in the kernel's neighbour table, if resolved.
pub fn lookup(ip: Ipv4Addr, dev: &str) -> Option<[u8; 6]> {
    let table = std::fs::read_to_string("/proc/net/arp").ok()?;
    lookup_in(&table, ip, dev)
}

fn lookup_in(table: &str, ip: Ipv4Addr, dev: &str) -> Option<[u8; 6]> {
    table.lines().skip(1).find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        let complete = f
            .get(2)
            .and_then(|x| u32::from_str_radix(x.trim_start_matches("0x"), 16).ok())?
            & 0x2
            != 0;
        (f.len() >= 6 && f[5] == dev && f[0].parse::<Ipv4Addr>().ok()? == ip && complete)
            .then(|| crate::config::parse_mac(f[3]))
            .flatten()
    })
}

/// Asks the kernel to resolve `ip` (a datagram to its discard port, which the kernel must ARP
/// for first).
pub fn nudge(ip: Ipv4Addr) {
    if let Ok(s) = UdpSocket::bind("0.0.0.0:0") {
        let _ = s.send_to(b"vireo-neigh", (ip, 9));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_neighbours() {
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
eth0\t00000000\t0164A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
eth0\t0064A8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n";
        assert_eq!(
            next_hop_in(route, "192.168.100.12".parse().unwrap(), "eth0"),
            "192.168.100.12".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            next_hop_in(route, "10.9.9.9".parse().unwrap(), "eth0"),
            "192.168.100.1".parse::<Ipv4Addr>().unwrap()
        );
        assert_eq!(
            next_hop_in(route, "10.9.9.9".parse().unwrap(), "eth1"),
            "10.9.9.9".parse::<Ipv4Addr>().unwrap()
        );
        let arp =
            "IP address       HW type     Flags       HW address            Mask     Device\n\
192.168.100.12   0x1         0x2         0a:00:00:00:00:0c     *        eth0\n\
192.168.100.13   0x1         0x0         00:00:00:00:00:00     *        eth0\n";
        assert_eq!(
            lookup_in(arp, "192.168.100.12".parse().unwrap(), "eth0"),
            Some([10, 0, 0, 0, 0, 12])
        );
        assert_eq!(
            lookup_in(arp, "192.168.100.13".parse().unwrap(), "eth0"),
            None,
            "incomplete"
        );
        assert_eq!(
            lookup_in(arp, "192.168.100.12".parse().unwrap(), "eth1"),
            None
        );
    }
}
