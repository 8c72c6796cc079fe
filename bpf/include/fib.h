/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * fib.h: where a rewritten datagram leaves, via the next-hop cache or bpf_fib_lookup.
 *
 * bpf_fib_lookup costs ~110 ns (XDP) to ~180 ns (TC) per call on the reference VM, more than
 * everything else per packet together, and downstreams are few and stable, so results are
 * cached per downstream address in uf_nexthops (LRU hash) for uf_globals.nexthop_ttl_ms; the
 * loader also clears the cache on any route or neighbour change (rtnetlink), so an entry is
 * never staler than the kernel's tables by more than that.
 *
 * The decision is taken before the packet is rewritten because it decides who decrements the
 * TTL: the programs when they transmit the packet themselves, the kernel when the packet is
 * handed to its forwarding (it decrements it there; doing both would cost two hops).
 */
#ifndef UF_FIB_H
#define UF_FIB_H

#include "uf_maps.h"
#include "parse.h"

#define UF_AF_INET 2
#define UF_AF_INET6 10

enum uf_route {
	UF_ROUTE_HOP = 0, /* next hop known: write MACs, transmit to hop.ifindex */
	UF_ROUTE_NEIGH, /* route known, neighbour not resolved yet (hop.ifindex is the egress) */
	UF_ROUTE_KERNEL, /* hand the rewritten packet to the kernel's forwarding (counts passed) */
	UF_ROUTE_LOCAL, /* the downstream is a local address: the kernel delivers it */
	UF_ROUTE_DROP, /* no route (blackhole, unreachable, prohibit, ...): send_error */
};

/* Per-CPU memo of the coarse clock: the jiffies value and bpf_ktime_get_coarse_ns() read at
 * it. Private to the programs (not part of the loader's contract in uf_maps.h). */
struct uf_clock {
	__u64 jiffies;
	__u64 ns;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct uf_clock);
} uf_clock SEC(".maps");

/* bpf_ktime_get_coarse_ns(), called at most once per tick and CPU. A helper call costs ~20 ns
 * on the reference VM (return thunks), a cache hit should not pay it per packet; the coarse
 * clock only moves at ticks, and bpf_jiffies64() (inlined by the verifier: no call) tells
 * when one has passed. The memo can lag the real coarse clock by at most one tick (when the
 * jiffies update is seen before the timekeeping update), irrelevant for lifetimes of seconds. */
static __always_inline __u64 uf_coarse_ns(void)
{
	__u32 zero = 0;
	struct uf_clock *c = bpf_map_lookup_elem(&uf_clock, &zero);
	__u64 j = bpf_jiffies64();

	if (!c)
		return bpf_ktime_get_coarse_ns();
	if (c->jiffies != j) {
		c->ns = bpf_ktime_get_coarse_ns();
		c->jiffies = j;
	}
	return c->ns;
}

/* The cache key of a downstream address (IPv4 in word 0, zeros after, as the loader writes). */
static __always_inline void uf_nexthop_key_of(struct uf_nexthop_key *k, const struct uf_backend *b)
{
	__builtin_memcpy(k->addr, b->addr, sizeof(k->addr));
	k->family = b->family;
}

/* Looks the route to backend `b` up for packet `p` arriving on `in_ifindex`, first in the
 * cache (unless UF_G_NO_NEXTHOP_CACHE), then with bpf_fib_lookup, which fills the cache on
 * success, and sets *hop: a next hop is a cache entry (egress interface, MACs), so the fill
 * stores the lookup's result without another copy. `ctx` is the program's context (xdp_md or
 * __sk_buff), as the helper wants. */
static __always_inline int uf_route(void *ctx, __u32 flags, __u32 ttl_ms, const struct uf_pkt *p,
				    const struct uf_backend *b, __u32 in_ifindex,
				    struct uf_nexthop *hop)
{
	struct bpf_fib_lookup fib = {};
	struct uf_nexthop_key key = {};
	struct uf_nexthop *nh;
	int use_cache = !(flags & UF_G_NO_NEXTHOP_CACHE);
	long rc;

	if (use_cache) {
		uf_nexthop_key_of(&key, b);
		nh = bpf_map_lookup_elem(&uf_nexthops, &key);
		if (nh && uf_coarse_ns() < nh->expires_ns) {
			*hop = *nh;
			return UF_ROUTE_HOP;
		}
	}

	fib.l4_protocol = IPPROTO_UDP;
	fib.sport = p->sport;
	fib.dport = b->port;
	fib.tot_len = p->ip_len;
	fib.ifindex = in_ifindex;
	if (p->family == 4) {
		fib.family = UF_AF_INET;
		fib.tos = p->tos;
		fib.ipv4_src = p->saddr[0];
		fib.ipv4_dst = b->addr[0];
	} else {
		fib.family = UF_AF_INET6;
		fib.flowinfo = p->flowinfo;
		__builtin_memcpy(fib.ipv6_src, p->saddr, 16);
		__builtin_memcpy(fib.ipv6_dst, b->addr, 16);
	}
	rc = bpf_fib_lookup(ctx, &fib, sizeof(fib), 0);
	switch (rc) {
	case BPF_FIB_LKUP_RET_SUCCESS:
		hop->ifindex = fib.ifindex;
		__builtin_memcpy(hop->smac, fib.smac, 6);
		__builtin_memcpy(hop->dmac, fib.dmac, 6);
		if (use_cache && ttl_ms) {
			hop->expires_ns = uf_coarse_ns() + (__u64)ttl_ms * 1000000;
			bpf_map_update_elem(&uf_nexthops, &key, hop, BPF_ANY);
		}
		return UF_ROUTE_HOP;
	case BPF_FIB_LKUP_RET_NO_NEIGH:
		hop->ifindex = fib.ifindex;
		return UF_ROUTE_NEIGH;
	case BPF_FIB_LKUP_RET_NOT_FWDED:
		return UF_ROUTE_LOCAL;
	case BPF_FIB_LKUP_RET_FRAG_NEEDED:
		/* Too big for the egress MTU: the kernel fragments it or answers ICMP. */
	case BPF_FIB_LKUP_RET_FWD_DISABLED:
		/* Forwarding is off on the ingress interface: the kernel still delivers to a local
		 * downstream and drops (and counts) the rest, as it would without us. */
		return UF_ROUTE_KERNEL;
	default:
		/* BLACKHOLE, UNREACHABLE, PROHIBIT, UNSUPP_LWT, errors. */
		return UF_ROUTE_DROP;
	}
}

#endif /* UF_FIB_H */
