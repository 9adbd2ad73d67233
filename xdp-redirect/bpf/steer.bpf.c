// SPDX-License-Identifier: (GPL-2.0 OR BSD-2-Clause)
/*
 * Vireo's steering program: the only code Vireo runs in the kernel.
 *
 * It decides, per frame, whether the dataplane owns it. A pod-facing veth hands every frame to
 * userspace; an uplink hands over only VXLAN to our UDP port and passes everything else to the
 * kernel, so the host's own traffic (SSH, DNS, kubelet) never touches userspace. All state lives
 * in userspace (Katran's split); this program only reads the maps it is given. Besides VXLAN and
 * service frontends, the uplink hands over the replies of masqueraded flows: TCP/UDP to the
 * node's address with a destination port in the masquerade range, ICMP echo replies with an
 * identifier in it, and ICMP errors to the node's address quoting a packet the node sent from a
 * port (or identifier) in it.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/icmp.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_helpers.h>

#include "steer.h"

/* ifindex -> slot and role. An interface missing here is passed untouched. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VIREO_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct vireo_if_cfg);
} ifaces SEC(".maps");

/* AF_XDP sockets, keyed by the interface's xsk_base + rx queue index: each interface's queues
 * occupy their own range (as many entries as it has queues), so one map serves every
 * interface. The loader sets max_entries at load time. */
struct {
	__uint(type, BPF_MAP_TYPE_XSKMAP);
	__uint(max_entries, VIREO_DEFAULT_XSKS);
	__type(key, __u32);
	__type(value, __u32);
} xsks SEC(".maps");

/* Per-interface counters, indexed by slot. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, VIREO_MAX_IFACES);
	__type(key, __u32);
	__type(value, struct vireo_if_stats);
} stats SEC(".maps");

/* Service frontends the uplink hands to userspace (value unused). */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, VIREO_MAX_FRONTENDS);
	__type(key, struct vireo_frontend);
	__type(value, __u8);
} frontends SEC(".maps");

/* The masquerade settings (one entry; addr 0: off). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct vireo_masq);
} masq SEC(".maps");

static __always_inline int masq_port(const struct vireo_masq *m, __u16 port_be)
{
	__u16 p = bpf_ntohs(port_be);

	return p >= m->lo && p <= m->hi;
}

/* True for a reply to a masqueraded flow (see the top of this file); the dataplane drops those
 * it has no entry for. Later fragments carry no ports: they stay in the kernel. */
static __always_inline int masq_owns(struct iphdr *ip, void *end)
{
	__u32 zero = 0;
	struct vireo_masq *m = bpf_map_lookup_elem(&masq, &zero);
	struct icmphdr *ic;
	struct iphdr *in;
	void *l4;

	if (!m || !m->addr || ip->daddr != m->addr)
		return 0;
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	l4 = (void *)ip + ip->ihl * 4;
	if (ip->protocol == IPPROTO_TCP || ip->protocol == IPPROTO_UDP) {
		struct udphdr *udp = l4;

		if ((void *)(udp + 1) > end)
			return 0;
		return masq_port(m, udp->dest);
	}
	if (ip->protocol != IPPROTO_ICMP)
		return 0;
	ic = l4;
	if ((void *)(ic + 1) > end)
		return 0;
	if (ic->type == ICMP_ECHOREPLY)
		return masq_port(m, ic->un.echo.id);
	if (ic->type != ICMP_DEST_UNREACH && ic->type != ICMP_TIME_EXCEEDED &&
	    ic->type != ICMP_PARAMETERPROB)
		return 0;
	/* The quoted packet: sent by the node, from a port in the range. */
	in = (void *)(ic + 1);
	if ((void *)(in + 1) > end || in->ihl != 5 || in->saddr != m->addr)
		return 0;
	if (in->protocol == IPPROTO_TCP || in->protocol == IPPROTO_UDP) {
		struct udphdr *q = (void *)(in + 1);

		if ((void *)(q + 1) > end)
			return 0;
		return masq_port(m, q->source);
	}
	if (in->protocol == IPPROTO_ICMP) {
		struct icmphdr *q = (void *)(in + 1);

		if ((void *)(q + 1) > end)
			return 0;
		return q->type == ICMP_ECHO && masq_port(m, q->un.echo.id);
	}
	return 0;
}

/* True when the dataplane owns this uplink frame: IPv4/UDP to the configured VXLAN port,
 * TCP/UDP to a service frontend, or a masquerade reply. Anything else (the host's own traffic) stays in the kernel. */
static __always_inline int uplink_owns(struct xdp_md *ctx, __u16 port)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip;
	struct udphdr *udp;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return 0;
	if (masq_owns(ip, end))
		return 1;
	if (ip->protocol != IPPROTO_UDP && ip->protocol != IPPROTO_TCP)
		return 0;
	/* Fragments other than the first carry no ports. */
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	/* TCP and UDP both start with the two ports. */
	udp = (void *)ip + ip->ihl * 4;
	if ((void *)(udp + 1) > end)
		return 0;
	if (ip->protocol == IPPROTO_UDP && udp->dest == bpf_htons(port))
		return 1;
	struct vireo_frontend fe = {
		.addr = ip->daddr,
		.port = udp->dest,
		.proto = ip->protocol,
	};
	return bpf_map_lookup_elem(&frontends, &fe) != 0;
}

/* Frags-aware ("xdp.frags": libbpf loads it with BPF_F_XDP_HAS_FRAGS), so it attaches to veths
 * and NICs whose MTU exceeds a page (jumbo frames) and hands multi-buffer frames to AF_XDP
 * sockets bound with XDP_USE_SG. It reads headers only in the linear part (data..data_end),
 * which holds at least the first buffer of a frame; a small frame is all linear, as before. */
SEC("xdp.frags")
int vireo_steer(struct xdp_md *ctx)
{
	__u32 ifindex = ctx->ingress_ifindex;
	struct vireo_if_cfg *cfg = bpf_map_lookup_elem(&ifaces, &ifindex);
	struct vireo_if_stats *st;
	__u32 slot, key;

	if (!cfg)
		return XDP_PASS;
	slot = cfg->slot;
	st = bpf_map_lookup_elem(&stats, &slot);
	if (!st)
		return XDP_PASS;

	if ((cfg->role == VIREO_ROLE_UPLINK || cfg->role == VIREO_ROLE_UPLINK_HELD) &&
	    !uplink_owns(ctx, cfg->vxlan_port)) {
		st->passed++;
		return XDP_PASS;
	}

	if (ctx->rx_queue_index >= cfg->xsk_queues)
		goto no_socket;
	key = cfg->xsk_base + ctx->rx_queue_index;
	if (!bpf_map_lookup_elem(&xsks, &key))
		goto no_socket;
	st->steered++;
	return bpf_redirect_map(&xsks, key, XDP_DROP);

no_socket:
	st->no_socket++;
	/* Uplink: the kernel keeps what we cannot take. Pod veth, or an uplink held across a
	 * restart: the frame was meant for the dataplane and must not bypass it (TCP retransmits
	 * it once the next process has its sockets). */
	return cfg->role == VIREO_ROLE_UPLINK ? XDP_PASS : XDP_DROP;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
