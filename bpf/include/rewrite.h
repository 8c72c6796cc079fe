/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * rewrite.h: turning a client datagram into one for its downstream.
 *
 * The destination address and port become the downstream's, the TTL / hop limit takes the
 * value the caller decided (one less when the program transmits the packet itself, unchanged
 * when the kernel's forwarding will decrement it), and the IPv4 header and UDP checksums are
 * updated incrementally. The source stays the client's: downstreams see who sent the datagram.
 *
 * XDP writes the packet directly. TC updates the UDP checksum with bpf_l4_csum_replace, because
 * only the kernel knows the skb's checksum state: with CHECKSUM_PARTIAL (offloaded) the UDP
 * field holds the pseudo-header sum and only the address part may be applied to it; with
 * CHECKSUM_COMPLETE skb->csum must follow every change. See uf_tc_rewrite.
 */
#ifndef UF_REWRITE_H
#define UF_REWRITE_H

#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>

#include "csum.h"
#include "parse.h"

/* The (TTL, protocol) word of an IPv4 header with another TTL, byte order independent. */
static __always_inline __u16 uf_ttl_word(__u16 word, __u8 ttl)
{
	union {
		__u8 b[2];
		__u16 w;
	} u = { .w = word };

	u.b[0] = ttl;
	return u.w;
}

/* XDP: rewrites the parsed datagram in place towards backend `b` with TTL `ttl`. */
static __always_inline void uf_xdp_rewrite(const struct uf_pkt *p, const struct uf_backend *b,
					   __u8 ttl)
{
	struct udphdr *udp = p->l4;
	__u64 pseudo;

	if (p->family == 4) {
		struct iphdr *ip = p->l3;
		__u16 tw = uf_ttl_word(p->ttl_word, ttl);
		__u64 ipd;

		pseudo = uf_csum_diff32(0, p->daddr[0], b->addr[0]);
		ipd = uf_csum_diff16(pseudo, p->ttl_word, tw);
		ip->check = uf_csum_apply(p->ip_check, ipd);
		*(__u16 *)&ip->ttl = tw;
		ip->daddr = b->addr[0];
	} else {
		struct ipv6hdr *ip6 = p->l3;

		pseudo = uf_csum_diff128(0, p->daddr, b->addr);
		ip6->hop_limit = ttl;
		__builtin_memcpy(&ip6->daddr, b->addr, 16);
	}
	pseudo = uf_csum_diff16(pseudo, p->dport, b->port);
	udp->check = uf_csum_apply_udp(udp->check, pseudo);
	udp->dest = b->port;
}

/* Writes Ethernet destination and source from a next hop (uf_nexthop stores them the other way
 * round) into a frame of at least 12 bytes. */
static __always_inline void uf_write_eth(void *frame, const struct uf_nexthop *hop)
{
	__builtin_memcpy(frame, hop->dmac, 6);
	__builtin_memcpy(frame + 6, hop->smac, 6);
}

/* XDP: writes the next hop's Ethernet addresses. Returns 0, or -1 if the frame is too short
 * (cannot happen after parsing; the check is for the verifier). */
static __always_inline int uf_xdp_write_eth(struct xdp_md *ctx, const struct uf_nexthop *hop)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;

	if (data + 12 > data_end)
		return -1;
	uf_write_eth(data, hop);
	return 0;
}

/* TC: where the packet's destination stands now. Mirror rewrites the same skb once per copy,
 * each time from the previous copy's values. */
struct uf_cur {
	__u32 addr[4];
	__u16 port;
	__u16 ip_check; /* IPv4 header checksum, as in memory */
	__u16 ttl_word; /* IPv4 (TTL, protocol) word, as in memory */
	__u8 ttl;
	__u8 pad;
};

/* TC: the state of a just-parsed packet. */
static __always_inline void uf_cur_init(struct uf_cur *c, const struct uf_pkt *p)
{
	__builtin_memcpy(c->addr, p->daddr, 16);
	c->port = p->dport;
	c->ip_check = p->ip_check;
	c->ttl_word = p->ttl_word;
	c->ttl = p->ttl;
	c->pad = 0;
}

/* TC: rewrites the skb from `cur` towards backend `b` with TTL `ttl`; 0 or a negative error.
 *
 * Helper calls are the expensive part (~15-20 ns each on the reference VM), so only what needs
 * the kernel's knowledge of the skb goes through one:
 * - IPv4 header (TTL, destination, header checksum) and the UDP destination port: written
 *   directly. The header's one's-complement sum does not change (the checksum absorbs the
 *   other changes), so skb->csum (CHECKSUM_COMPLETE) is unaffected, which is all
 *   bpf_l3_csum_replace would add; the port change is balanced by the checksum change below.
 * - IPv6 hop limit and destination: bpf_skb_store_bytes(.., BPF_F_RECOMPUTE_CSUM), since no
 *   header checksum absorbs them and skb->csum has to follow.
 * - UDP checksum: bpf_l4_csum_replace twice, the address change as a pseudo-header diff
 *   (BPF_F_PSEUDO_HDR: also applied to a partial checksum, and skb->csum follows the field),
 *   the port change as a plain field change (not applied to a partial checksum, whose
 *   hardware sum covers the port). BPF_F_MARK_MANGLED_0 leaves a zero (IPv4 "no checksum")
 *   alone and turns a computed zero into 0xffff; for IPv6, where zero is invalid anyway, that
 *   is the right result too.
 * Packet pointers are derived afresh from the skb here (the caller may have called helpers
 * that moved the data), and not used after the first helper call. */
static __always_inline int uf_tc_rewrite(struct __sk_buff *skb, const struct uf_pkt *p,
					 struct uf_cur *cur, const struct uf_backend *b, __u8 ttl)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;
	/* Offsets are at most 22 and 82; the masks bound them for the verifier. */
	__u32 l3 = p->l3_off & 0x3f, l4 = p->l4_off & 0x7f;
	__u32 check_off = l4 + offsetof(struct udphdr, check);
	struct udphdr *udp = data + l4;
	__u16 port = b->port;
	__u64 pseudo;
	long rc;

	if ((void *)(udp + 1) > data_end)
		return -1;
	udp->dest = port;
	if (p->family == 4) {
		struct iphdr *ip = data + l3;
		__u16 tw = uf_ttl_word(cur->ttl_word, ttl);
		__u64 ipd;

		if ((void *)(ip + 1) > data_end)
			return -1;
		pseudo = uf_csum_diff32(0, cur->addr[0], b->addr[0]);
		ipd = uf_csum_diff16(pseudo, cur->ttl_word, tw);
		cur->ip_check = uf_csum_apply(cur->ip_check, ipd);
		cur->ttl_word = tw;
		*(__u16 *)&ip->ttl = tw;
		ip->check = cur->ip_check;
		ip->daddr = b->addr[0];
	} else {
		/* Laid out so the 33 stored bytes start at `hop` and the words stay aligned. */
		struct {
			__u8 pad[3];
			__u8 hop;
			__u32 saddr[4];
			__u32 daddr[4];
		} h;

		h.hop = ttl;
		__builtin_memcpy(h.saddr, p->saddr, 16);
		__builtin_memcpy(h.daddr, b->addr, 16);
		pseudo = uf_csum_diff128(0, cur->addr, b->addr);
		rc = bpf_skb_store_bytes(skb, l3 + offsetof(struct ipv6hdr, hop_limit), &h.hop,
					 1 + 16 + 16, BPF_F_RECOMPUTE_CSUM);
		if (rc)
			return rc;
	}
	rc = bpf_l4_csum_replace(skb, check_off, 0, uf_csum_fold32(pseudo),
				 BPF_F_PSEUDO_HDR | BPF_F_MARK_MANGLED_0);
	if (rc)
		return rc;
	rc = bpf_l4_csum_replace(skb, check_off, cur->port, port,
				 sizeof(port) | BPF_F_MARK_MANGLED_0);
	if (rc)
		return rc;
	__builtin_memcpy(cur->addr, b->addr, 16);
	cur->port = port;
	cur->ttl = ttl;
	return 0;
}

/* TC: writes Ethernet destination and source (12 bytes, header order), directly: the MAC
 * header is outside every checksum, and a helper call would cost more than the copy. */
static __always_inline long uf_tc_write_eth12(struct __sk_buff *skb, const __u8 *eth12)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + 12 > data_end)
		return -1;
	__builtin_memcpy(data, eth12, 12);
	return 0;
}

/* TC: the same from a next hop. */
static __always_inline long uf_tc_write_eth(struct __sk_buff *skb, const struct uf_nexthop *hop)
{
	void *data = (void *)(long)skb->data;
	void *data_end = (void *)(long)skb->data_end;

	if (data + 12 > data_end)
		return -1;
	uf_write_eth(data, hop);
	return 0;
}

#endif /* UF_REWRITE_H */
