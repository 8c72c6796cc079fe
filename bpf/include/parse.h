/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * parse.h: header parsing shared by the XDP and TC programs.
 *
 * The rule is "never misparse": anything this code does not fully understand is handed to the
 * kernel untouched (UF_PARSE_PASS), never guessed at. Understood are Ethernet with up to two
 * VLAN tags (802.1Q / 802.1ad, in the frame data), IPv4 with options (IHL >= 5, not a
 * fragment), IPv6 without extension headers, and UDP.
 *
 * Everything later stages need is copied into struct uf_pkt, so the TC program can keep working
 * after helpers that invalidate packet pointers. The XDP program also keeps the header
 * pointers (l3, l4), which stay valid there because no XDP helper used moves packet data.
 */
#ifndef UF_PARSE_H
#define UF_PARSE_H

#include <linux/types.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/ipv6.h>
#include <linux/udp.h>
#include <bpf/bpf_endian.h>

#define UF_MAX_VLANS 2
/* Longest header chain parsed: Ethernet, two tags, IPv4 with 40 bytes of options, UDP. The TC
 * program pulls this much into the linear area before direct reads. */
#define UF_HDR_MAX (ETH_HLEN + 4 * UF_MAX_VLANS + 60 + 8)

#define UF_IP_MF 0x2000
#define UF_IP_OFFSET 0x1fff

enum uf_parse_result {
	UF_PARSE_OK = 0,
	UF_PARSE_PASS = 1, /* not ours to judge: leave it to the kernel */
};

/* A VLAN tag as it sits in the frame (linux/if_vlan.h is not UAPI). */
struct uf_vlan_hdr {
	__be16 tci;
	__be16 proto;
};

/* What the programs know about a UDP datagram after parsing. Addresses and ports are in network
 * order; IPv4 addresses occupy word 0 of the arrays, the rest is zero (as in the map keys). */
struct uf_pkt {
	void *l3; /* IP header (XDP only; TC re-derives from offsets) */
	void *l4; /* UDP header (XDP only) */
	__u32 saddr[4];
	__u32 daddr[4];
	__u32 flowinfo; /* IPv6 traffic class + flow label, network order, for bpf_fib_lookup */
	__u32 l3_off; /* offset of the IP header from the start of the frame */
	__u32 l4_off; /* offset of the UDP header */
	__u32 ip_len; /* L3 length the IP header announces (tot_len, or 40 + payload_len) */
	__u32 l4_room; /* bytes the IP header leaves for UDP: ip_len - IP header length */
	__u32 udp_len; /* UDP length field, host order */
	__u16 sport;
	__u16 dport;
	__u16 ip_check; /* IPv4 header checksum, as in memory */
	__u16 ttl_word; /* IPv4: the (TTL, protocol) 16-bit word as in memory */
	__u8 family; /* 4 or 6 */
	__u8 ttl; /* TTL or hop limit */
	__u8 tos; /* IPv4 TOS, for bpf_fib_lookup */
	__u8 vlans; /* VLAN tags in the frame data */
};

/* IPv4 after the link layer: rejects (PASS) version != 4, IHL < 5, fragments (MF or an offset:
 * later fragments carry no UDP header, first ones not the whole datagram), non-UDP and
 * truncated headers. */
static __always_inline int uf_parse_ipv4(void *data, void *data_end, __u32 off, struct uf_pkt *p)
{
	struct iphdr *ip = data + off;
	struct udphdr *udp;
	__u32 hl, tot;

	if ((void *)(ip + 1) > data_end)
		return UF_PARSE_PASS;
	if (ip->version != 4 || ip->ihl < 5)
		return UF_PARSE_PASS;
	if (ip->frag_off & bpf_htons(UF_IP_MF | UF_IP_OFFSET))
		return UF_PARSE_PASS;
	if (ip->protocol != IPPROTO_UDP)
		return UF_PARSE_PASS;
	hl = ip->ihl * 4;
	udp = (void *)ip + hl;
	if ((void *)(udp + 1) > data_end)
		return UF_PARSE_PASS;

	tot = bpf_ntohs(ip->tot_len);
	p->l3 = ip;
	p->l4 = udp;
	p->family = 4;
	p->l3_off = off;
	p->l4_off = off + hl;
	p->ip_len = tot;
	p->l4_room = tot > hl ? tot - hl : 0;
	p->saddr[0] = ip->saddr;
	p->saddr[1] = 0;
	p->saddr[2] = 0;
	p->saddr[3] = 0;
	p->daddr[0] = ip->daddr;
	p->daddr[1] = 0;
	p->daddr[2] = 0;
	p->daddr[3] = 0;
	p->flowinfo = 0;
	p->ttl = ip->ttl;
	p->tos = ip->tos;
	p->ip_check = ip->check;
	p->ttl_word = *(__u16 *)&ip->ttl;
	p->sport = udp->source;
	p->dport = udp->dest;
	p->udp_len = bpf_ntohs(udp->len);
	return UF_PARSE_OK;
}

/* IPv6 after the link layer: only next header = UDP (extension headers are PASS: walking them
 * is not worth it for a UDP balancer, and fragments arrive behind one). */
static __always_inline int uf_parse_ipv6(void *data, void *data_end, __u32 off, struct uf_pkt *p)
{
	struct ipv6hdr *ip6 = data + off;
	struct udphdr *udp;
	__u32 plen;

	if ((void *)(ip6 + 1) > data_end)
		return UF_PARSE_PASS;
	if (ip6->version != 6 || ip6->nexthdr != IPPROTO_UDP)
		return UF_PARSE_PASS;
	udp = (void *)(ip6 + 1);
	if ((void *)(udp + 1) > data_end)
		return UF_PARSE_PASS;

	plen = bpf_ntohs(ip6->payload_len);
	p->l3 = ip6;
	p->l4 = udp;
	p->family = 6;
	p->l3_off = off;
	p->l4_off = off + sizeof(*ip6);
	p->ip_len = sizeof(*ip6) + plen;
	p->l4_room = plen;
	__builtin_memcpy(p->saddr, &ip6->saddr, 16);
	__builtin_memcpy(p->daddr, &ip6->daddr, 16);
	p->flowinfo = *(__u32 *)ip6 & bpf_htonl(0x0fffffff);
	p->ttl = ip6->hop_limit;
	p->tos = 0;
	p->ip_check = 0;
	p->ttl_word = 0;
	p->sport = udp->source;
	p->dport = udp->dest;
	p->udp_len = bpf_ntohs(udp->len);
	return UF_PARSE_OK;
}

/* Parses a frame from its Ethernet header. Lengths are not judged here (that needs the
 * listener first: a bad length on someone else's traffic is not ours to count). */
static __always_inline int uf_parse(void *data, void *data_end, struct uf_pkt *p)
{
	struct ethhdr *eth = data;
	__u32 off = sizeof(*eth);
	__be16 proto;

	if ((void *)(eth + 1) > data_end)
		return UF_PARSE_PASS;
	proto = eth->h_proto;
	p->vlans = 0;
#pragma unroll
	for (int i = 0; i < UF_MAX_VLANS; i++) {
		struct uf_vlan_hdr *vh;

		if (proto != bpf_htons(ETH_P_8021Q) && proto != bpf_htons(ETH_P_8021AD))
			break;
		vh = data + off;
		if ((void *)(vh + 1) > data_end)
			return UF_PARSE_PASS;
		proto = vh->proto;
		off += sizeof(*vh);
		p->vlans++;
	}
	if (proto == bpf_htons(ETH_P_IP))
		return uf_parse_ipv4(data, data_end, off, p);
	if (proto == bpf_htons(ETH_P_IPV6))
		return uf_parse_ipv6(data, data_end, off, p);
	return UF_PARSE_PASS; /* not IP, or a third tag */
}

/* Whether the UDP length field is sane: at least the header, and not more than the IP header
 * leaves for it. (Whether the frame really holds that much is checked by each program: XDP
 * against data_end, TC against skb->len.) */
static __always_inline int uf_udp_len_ok(const struct uf_pkt *p)
{
	return p->udp_len >= sizeof(struct udphdr) && p->udp_len <= p->l4_room;
}

#endif /* UF_PARSE_H */
