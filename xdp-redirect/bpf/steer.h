/* Layouts shared by the XDP program and its userspace loader (src/lib.rs mirrors them). */
#ifndef VIREO_STEER_H
#define VIREO_STEER_H

/* Interface slots: one per attached interface, dense, assigned by userspace. */
#define VIREO_MAX_IFACES 1024
/* XSKMAP entries when the loader asks for no size: rows of 8 queues for every slot. The loader
 * sizes the map at load time (interfaces x queues the node needs); each interface gets a
 * contiguous range of entries, [xsk_base, xsk_base + xsk_queues), one per rx queue. */
#define VIREO_DEFAULT_XSKS (VIREO_MAX_IFACES * 8)

#define VIREO_ROLE_POD 1    /* pod-facing veth: steer every frame */
#define VIREO_ROLE_UPLINK 2 /* uplink NIC: steer only what the dataplane owns */
#define VIREO_ROLE_UPLINK_HELD 3 /* the uplink while its agent restarts: what the dataplane owns
                                  * and cannot take (no socket) is dropped, not passed (the
                                  * node's stack would reset its connections) */

struct vireo_if_cfg {
	__u32 slot;
	__u32 role;
	__u16 vxlan_port; /* host byte order */
	__u16 xsk_queues; /* rx queues with an entry in xsks */
	__u32 xsk_base;   /* xsks key of rx queue 0 */
};

/* Most service frontends (NodePorts, external and LoadBalancer IPs) the uplink steers. */
#define VIREO_MAX_FRONTENDS 65536

/* A service frontend: destination address and port (network byte order) and IP protocol. */
struct vireo_frontend {
	__u32 addr;
	__u16 port;
	__u8 proto;
	__u8 pad;
};

/* Masquerade: replies to pods' flows to the world arrive at the node's address (network byte
 * order; 0: masquerade off) with a port (or ICMP echo identifier) in lo..=hi (host order). */
struct vireo_masq {
	__u32 addr;
	__u16 lo;
	__u16 hi;
};

struct vireo_if_stats {
	__u64 steered;   /* redirected into an AF_XDP socket */
	__u64 passed;    /* left to the kernel (uplink traffic we do not own) */
	__u64 no_socket; /* meant for userspace, but no socket on that rx queue */
};

#endif
