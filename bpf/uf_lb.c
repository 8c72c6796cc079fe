/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * uf_lb.c: udp-fanout's kernel data plane, one object with two programs sharing the maps.
 *
 * - uf_xdp (XDP): single-target distributions (round-robin, consistent hash). Parses, picks the
 *   downstream, rewrites destination address and port, and transmits via the next-hop cache or
 *   bpf_fib_lookup, or hands the rewritten packet to the kernel when it cannot (neighbour not
 *   resolved yet, local downstream, VLAN-tagged frames).
 * - uf_tc (TC ingress): the same, on skbs, plus mirror: one copy per mirror target
 *   (bpf_clone_redirect for all but the last, at most UF_MAX_MIRROR copies per datagram).
 *
 * Roles live in include/: parse.h, select.h (listener, bank, round-robin, Maglev), hash.h,
 * csum.h, rewrite.h, fib.h (next-hop cache + bpf_fib_lookup), stats.h. What is not ours (not
 * UDP to a listener, or not parseable with certainty) is always passed on untouched.
 *
 * Who decrements the TTL: the program when it transmits the packet itself (redirect, XDP_TX,
 * bpf_redirect_neigh, test mode UF_G_NO_FIB), the kernel when the packet is handed to its
 * forwarding (which decrements it there). A TTL <= 1 datagram is passed unmodified so the
 * kernel answers it (ICMP time exceeded, or local delivery).
 */
#include <linux/bpf.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>

#include "uf_maps.h"
#include "parse.h"
#include "select.h"
#include "rewrite.h"
#include "fib.h"
#include "stats.h"

/* bpf_clone_redirect's dev_queue_xmit result NET_XMIT_DROP (the copy was not sent). */
#define UF_NET_XMIT_DROP 1

/* The TTL for a packet we transmit ourselves. */
static __always_inline __u8 uf_fwd_ttl(const struct uf_pkt *p, __u32 flags)
{
	return (flags & UF_G_KEEP_TTL) ? p->ttl : p->ttl - 1;
}

/* The global settings (array entry 0; an inlined lookup, never NULL in practice). */
static __always_inline const struct uf_globals *uf_globals_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&uf_globals, &zero);
}

/* ---------------------------------------------------------------------------------------- */
/* XDP                                                                                        */
/* ---------------------------------------------------------------------------------------- */

SEC("xdp")
int uf_xdp(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct uf_globals *g;
	struct uf_listener_stats *st;
	struct uf_listener l;
	struct uf_backend *b;
	struct uf_bank *bank;
	struct uf_nexthop hop;
	struct uf_pkt p;
	__u32 id, bi = 0, flags, payload, sid, in_ifindex;
	int route;

	if (uf_parse(data, data_end, &p) != UF_PARSE_OK)
		return XDP_PASS;
	/* Mirror needs copies, which XDP cannot make: configuration validation keeps mirror
	 * listeners off XDP; if one gets here anyway, the kernel (userspace plane) has it. */
	if (!uf_find_listener(&p, &l) || l.distribution > UF_DIST_CONSISTENT_HASH)
		return XDP_PASS;
	id = l.id;
	st = uf_lstats(id);
	if (!st)
		return XDP_PASS;
	st->rx_packets++;
	if (!uf_udp_len_ok(&p) || p.l4 + (p.udp_len & 0xffff) > data_end) {
		uf_count_drop(st, UF_DROP_MALFORMED);
		return XDP_DROP;
	}
	payload = p.udp_len - sizeof(struct udphdr);
	st->rx_bytes += payload;
	if (p.ttl <= 1)
		return XDP_PASS;

	bank = uf_live_bank(id, &bi);
	b = bank ? uf_pick(&l, id, bi, bank, &p) : NULL;
	if (!b) {
		uf_count_drop(st, UF_DROP_NO_DOWNSTREAM);
		return XDP_DROP;
	}
	if (b->family != p.family) {
		uf_count_drop(st, UF_DROP_SEND_ERROR);
		return XDP_DROP;
	}
	sid = b->stats_id;
	g = uf_globals_get();
	flags = g ? g->flags : 0;

	if (flags & UF_G_NO_FIB) {
		uf_xdp_rewrite(&p, b, uf_fwd_ttl(&p, flags));
		uf_count_fwd(st, sid, payload, 0);
		return XDP_TX;
	}

	in_ifindex = ctx->ingress_ifindex;
	/* A tagged frame would leave with its ingress VLAN tag on whatever link the route says;
	 * the kernel's forwarding knows the VLAN devices, so it gets those. */
	if (p.vlans)
		route = UF_ROUTE_KERNEL;
	else
		route = uf_route(ctx, flags, g ? g->nexthop_ttl_ms : 0, &p, b, in_ifindex, &hop);

	switch (route) {
	case UF_ROUTE_HOP:
		uf_xdp_rewrite(&p, b, uf_fwd_ttl(&p, flags));
		if (uf_xdp_write_eth(ctx, &hop))
			return XDP_PASS;
		uf_count_fwd(st, sid, payload, 0);
		if (hop.ifindex == in_ifindex)
			return XDP_TX;
		return bpf_redirect(hop.ifindex, 0);
	case UF_ROUTE_NEIGH:
	case UF_ROUTE_KERNEL:
		/* The kernel forwards the rewritten packet (resolving the neighbour on the way). */
		uf_xdp_rewrite(&p, b, p.ttl);
		uf_count_fwd(st, sid, payload, 1);
		return XDP_PASS;
	case UF_ROUTE_LOCAL:
		uf_xdp_rewrite(&p, b, p.ttl);
		uf_count_fwd(st, sid, payload, 0);
		return XDP_PASS;
	default:
		uf_count_drop(st, UF_DROP_SEND_ERROR);
		return XDP_DROP;
	}
}

/* ---------------------------------------------------------------------------------------- */
/* TC                                                                                         */
/* ---------------------------------------------------------------------------------------- */

/* Everything one TC run carries from copy to copy. */
struct uf_tc_run {
	struct uf_pkt p;
	struct uf_cur cur;
	__u32 id; /* listener */
	__u32 flags;
	__u32 ttl_ms;
	__u32 bypass_mark;
	__u32 payload;
	__u32 in_ifindex;
	__u32 tagged;
	__u32 eth_dirty; /* Ethernet addresses overwritten by an earlier copy's next hop */
	__u8 orig_eth[12]; /* the frame's own Ethernet addresses (mirror only) */
};

/* Puts the frame's own Ethernet addresses back before the kernel sees the packet again: a copy
 * re-injected on ingress is classified by its destination MAC (PACKET_HOST or not). */
static __always_inline void uf_tc_restore_eth(struct __sk_buff *skb, struct uf_tc_run *t)
{
	if (t->eth_dirty && !uf_tc_write_eth12(skb, t->orig_eth))
		t->eth_dirty = 0;
}

/* A copy that could not be sent. */
static __always_inline int uf_tc_fail(struct uf_listener_stats *st, int last)
{
	uf_count_drop(st, UF_DROP_SEND_ERROR);
	return last ? TC_ACT_SHOT : 0;
}

/* Sends one copy of the datagram to backend `b`. The last (or only) copy leaves with the skb
 * itself and the return value is the program's verdict; earlier copies (mirror) are clones and
 * the return value is 0. */
static __always_inline int uf_tc_copy_inline(struct __sk_buff *skb, struct uf_tc_run *t,
					     struct uf_listener_stats *st,
					     const struct uf_backend *b, int last)
{
	struct uf_pkt *p = &t->p;
	struct uf_nexthop hop = {};
	__u32 saved_mark, sid;
	int route, passed;
	long rc;

	if (b->family != p->family)
		return uf_tc_fail(st, last);
	sid = b->stats_id;

	if (t->flags & UF_G_NO_FIB) {
		/* Test mode: rewrite and count, no route, no clone. */
		if (uf_tc_rewrite(skb, p, &t->cur, b, uf_fwd_ttl(p, t->flags)))
			return uf_tc_fail(st, last);
		uf_count_fwd(st, sid, t->payload, 0);
		return last ? TC_ACT_OK : 0;
	}

	route = t->tagged ? UF_ROUTE_KERNEL
			  : uf_route(skb, t->flags, t->ttl_ms, p, b, t->in_ifindex, &hop);
	if (route == UF_ROUTE_DROP)
		return uf_tc_fail(st, last);

	if (route == UF_ROUTE_HOP || (route == UF_ROUTE_NEIGH && last)) {
		/* We transmit this copy. */
		if (uf_tc_rewrite(skb, p, &t->cur, b, uf_fwd_ttl(p, t->flags)))
			return uf_tc_fail(st, last);
		if (route == UF_ROUTE_NEIGH) {
			/* The kernel resolves the neighbour and writes the Ethernet header. */
			uf_count_fwd(st, sid, t->payload, 0);
			return bpf_redirect_neigh(hop.ifindex, NULL, 0, 0);
		}
		if (uf_tc_write_eth(skb, &hop))
			return uf_tc_fail(st, last);
		t->eth_dirty = 1;
		if (last) {
			uf_count_fwd(st, sid, t->payload, 0);
			return bpf_redirect(hop.ifindex, 0);
		}
		rc = bpf_clone_redirect(skb, hop.ifindex, 0);
		if (rc < 0 || rc == UF_NET_XMIT_DROP)
			return uf_tc_fail(st, last);
		uf_count_fwd(st, sid, t->payload, 0);
		return 0;
	}

	/* NEIGH (not last), KERNEL, LOCAL: the kernel forwards or delivers this copy. */
	if (uf_tc_rewrite(skb, p, &t->cur, b, p->ttl))
		return uf_tc_fail(st, last);
	uf_tc_restore_eth(skb, t);
	passed = route != UF_ROUTE_LOCAL;
	if (last) {
		uf_count_fwd(st, sid, t->payload, passed);
		return TC_ACT_OK;
	}
	/* A re-injected copy must carry the bypass mark, or it would be mirrored again. */
	if (!t->bypass_mark)
		return uf_tc_fail(st, last);
	saved_mark = skb->mark;
	skb->mark = t->bypass_mark;
	rc = bpf_clone_redirect(skb, skb->ifindex, BPF_F_INGRESS);
	skb->mark = saved_mark;
	if (rc < 0 || rc == UF_NET_XMIT_DROP)
		return uf_tc_fail(st, last);
	uf_count_fwd(st, sid, t->payload, passed);
	return 0;
}

/* uf_tc_copy_inline as a global (not static) function: the verifier checks it once, on its
 * own, instead of once per call site and mirror iteration (which took ~600k instructions and
 * seconds to verify). It cannot take pointers held in memory, so it looks the listener's
 * counters up itself, and must treat its pointer arguments as possibly NULL.
 *
 * The single-target path calls it too, although inlining would save the call (~6 ns here):
 * the program's frame with the copy inlined (~380 bytes) plus this function's (~240) exceed
 * the 512 bytes a BPF call chain may use. */
__noinline int uf_tc_copy(struct __sk_buff *skb, struct uf_tc_run *t, const struct uf_backend *b,
			  int last)
{
	struct uf_listener_stats *st;

	if (!t)
		return TC_ACT_SHOT;
	st = uf_lstats(t->id);
	if (!st)
		return TC_ACT_SHOT;
	if (!b)
		return uf_tc_fail(st, last);
	return uf_tc_copy_inline(skb, t, st, b, last);
}

/* Mirror: one copy per target of the bank, in order; the last leaves with the skb. Bounded by
 * UF_MAX_MIRROR (16) copies per datagram, the size of uf_bank.mirror: each copy costs a route
 * lookup (or cache hit), a rewrite and a clone, so the bound also caps the work per packet. */
static __always_inline int uf_tc_mirror(struct __sk_buff *skb, struct uf_tc_run *t, __u32 bi,
					const struct uf_bank *bank, struct uf_listener_stats *st)
{
	__u32 n = bank->mirror_count;
	struct uf_backend *b;
	int ret = TC_ACT_SHOT;

	if (n > UF_MAX_MIRROR)
		n = UF_MAX_MIRROR;
	if (!n || !bank->count) {
		uf_count_drop(st, UF_DROP_NO_DOWNSTREAM);
		return TC_ACT_SHOT;
	}
	if (bpf_skb_load_bytes(skb, 0, t->orig_eth, sizeof(t->orig_eth)))
		return TC_ACT_OK;
#pragma clang loop unroll(disable)
	for (__u32 i = 0; i < UF_MAX_MIRROR; i++) {
		int last = i + 1 == n;

		if (i >= n)
			break;
		b = uf_backend_at(bi, bank, bank->mirror[i]);
		if (!b) {
			uf_count_drop(st, UF_DROP_SEND_ERROR);
			ret = TC_ACT_SHOT;
		} else {
			ret = uf_tc_copy(skb, t, b, last);
		}
		if (last)
			break;
	}
	return ret;
}

SEC("classifier")
int uf_tc(struct __sk_buff *skb)
{
	const struct uf_globals *g = uf_globals_get();
	struct uf_listener_stats *st;
	struct uf_listener l;
	struct uf_backend *b;
	struct uf_bank *bank;
	struct uf_tc_run t;
	void *data, *data_end;
	__u32 id, bi = 0, want, lin;

	if (!g)
		return TC_ACT_OK;
	if (g->bypass_mark && skb->mark == g->bypass_mark)
		return TC_ACT_OK; /* a mirror copy we re-injected: the kernel forwards it */

	data = (void *)(long)skb->data;
	data_end = (void *)(long)skb->data_end;
	if (uf_parse(data, data_end, &t.p) != UF_PARSE_OK) {
		/* The headers may continue in paged data: make them linear (direct-readable) and
		 * parse again. Only then: a pull moves payload bytes into the head, which costs a
		 * head reallocation per packet, and the kernel's own skbs (a local sender's large
		 * datagrams, for one) usually have all their headers in the head already. */
		want = skb->len < UF_HDR_MAX ? skb->len : UF_HDR_MAX;
		lin = (long)data_end - (long)data;
		if (lin >= want || bpf_skb_pull_data(skb, want))
			return TC_ACT_OK;
		data = (void *)(long)skb->data;
		data_end = (void *)(long)skb->data_end;
		if (uf_parse(data, data_end, &t.p) != UF_PARSE_OK)
			return TC_ACT_OK;
	}
	if (!uf_find_listener(&t.p, &l) || l.distribution > UF_DIST_MIRROR)
		return TC_ACT_OK;
	id = l.id;
	st = uf_lstats(id);
	if (!st)
		return TC_ACT_OK;
	t.id = id;
	st->rx_packets++;
	if (!uf_udp_len_ok(&t.p) || t.p.l4_off + t.p.udp_len > skb->len) {
		uf_count_drop(st, UF_DROP_MALFORMED);
		return TC_ACT_SHOT;
	}
	t.payload = t.p.udp_len - sizeof(struct udphdr);
	st->rx_bytes += t.payload;
	if (t.p.ttl <= 1)
		return TC_ACT_OK;

	t.flags = g->flags;
	t.ttl_ms = g->nexthop_ttl_ms;
	t.bypass_mark = g->bypass_mark;
	t.in_ifindex = skb->ifindex;
	t.tagged = t.p.vlans || skb->vlan_present;
	t.eth_dirty = 0;
	uf_cur_init(&t.cur, &t.p);

	bank = uf_live_bank(id, &bi);
	if (!bank) {
		uf_count_drop(st, UF_DROP_NO_DOWNSTREAM);
		return TC_ACT_SHOT;
	}
	if (l.distribution == UF_DIST_MIRROR)
		return uf_tc_mirror(skb, &t, bi, bank, st);
	b = uf_pick(&l, id, bi, bank, &t.p);
	if (!b) {
		uf_count_drop(st, UF_DROP_NO_DOWNSTREAM);
		return TC_ACT_SHOT;
	}
	return uf_tc_copy(skb, &t, b, 1);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
