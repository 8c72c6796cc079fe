/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * bench_gen.c: the load generator and the counting sink of the network-namespace benchmark rig
 * (bench/fanout-netbench, used by the netns_forwarding bench and by fanout-bench
 * compare's scenario (f)). Not part of udp-fanout itself.
 *
 * - bench_gen (XDP; attached in generic mode to a veth that is down, only to keep it in the
 *   XDP dispatcher between test runs): run with BPF_PROG_TEST_RUN in live-frames mode
 *   (BPF_F_TEST_XDP_LIVE_FRAMES) with ingress_ifindex = the client's veth. It returns XDP_TX,
 *   which the test runner turns into a redirect out of that veth, so every repeat is a real
 *   frame handed to the veth peer (the load balancer's interface) without a socket, an skb or
 *   a context switch: an in-kernel packet generator. A userspace sender reaches only
 *   ~200-270k datagrams/s over veth on the reference VM, too little for the kernel plane.
 * - bench_sink (XDP, attached to each backend's veth, and to the load balancer's ingress for
 *   the generator-only baseline): counts UDP datagrams whose destination address and port is
 *   one the benchmark expects there, and drops them; everything else (ARP, IPv6 ND, strays)
 *   is counted as "other" and passed on.
 * - bench_si_entry / bench_si_exit (raw tracepoints softirq_entry / softirq_exit): time spent
 *   in the network softirqs (NET_TX, NET_RX) per CPU, to the nanosecond. /proc/stat only
 *   samples at ticks (this kernel has no CONFIG_IRQ_TIME_ACCOUNTING).
 *
 * Live-frames pages are recycled without their data being reset (the receiver may even have
 * rewritten them: the load balancer rewrites the destination in place), so the generator
 * writes the whole Ethernet + IPv4 + UDP header from a template on every run; only the payload
 * is taken from the test run's input, and nobody writes it.
 */
#include <linux/bpf.h>
#include <linux/if_ether.h>
#include <linux/in.h>
#include <linux/ip.h>
#include <linux/udp.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

/* Ethernet + IPv4 (no options) + UDP header: what a template holds. */
#define BENCH_HDR_LEN 42
/* Destinations the generator alternates over (plain forwarding sends to both backends). */
#define BENCH_MAX_TEMPLATES 2
/* Sink slots: expected destinations; the last slot counts everything else. */
#define BENCH_SINK_SLOTS 8
#define BENCH_SINK_OTHER (BENCH_SINK_SLOTS - 1)
/* UDP length (header + payload) of the generator's datagrams; a multiple of 4, at most 512,
 * as bpf_csum_diff wants (the benchmark's BENCH_UDP_LEN must match). */
#define BENCH_UDP_LEN 72

/* Written by the benchmark before a run (layout mirrored by a #[repr(C)] struct there). */
struct bench_gen_cfg {
	/* Complete headers with valid IPv4 and UDP checksums for source port sport_base. */
	__u8 hdr[BENCH_MAX_TEMPLATES][BENCH_HDR_LEN];
	/* The source port the templates were built with (host order). */
	__u16 sport_base;
	__u16 pad;
	/* Packet n uses template n & template_mask ... */
	__u32 template_mask;
	/* ... and source port sport_base + ((n >> template_shift) & flow_mask): many flows. */
	__u32 flow_mask;
	__u32 template_shift;
};

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_gen_cfg);
} bench_gen_cfg SEC(".maps");

/* Per-CPU sequence number = frames generated on that CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, __u64);
} bench_gen_seq SEC(".maps");

/* Expected destination (network order) -> sink slot. */
struct bench_sink_key {
	__u32 daddr;
	__u16 dport;
	__u16 pad;
};

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BENCH_SINK_SLOTS);
	__type(key, struct bench_sink_key);
	__type(value, __u32);
} bench_sink_expect SEC(".maps");

struct bench_sink_stats {
	/* Datagrams for this slot's destination (counted and dropped). */
	__u64 packets;
	/* Of those, with a valid IPv4 header checksum and a complete, valid UDP checksum. */
	__u64 csum_ok;
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BENCH_SINK_SLOTS);
	__type(key, __u32);
	__type(value, struct bench_sink_stats);
} bench_sink_stats SEC(".maps");

static __always_inline __u16 bench_fold(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	s = (s & 0xffff) + (s >> 16);
	return (__u16)s;
}

SEC("xdp")
int bench_gen(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	const struct bench_gen_cfg *cfg;
	struct udphdr *udp;
	__u32 zero = 0, t, sum;
	__u16 sport, check;
	__u64 *seqp, seq;

	cfg = bpf_map_lookup_elem(&bench_gen_cfg, &zero);
	seqp = bpf_map_lookup_elem(&bench_gen_seq, &zero);
	if (!cfg || !seqp || data + BENCH_HDR_LEN > data_end)
		return XDP_DROP;
	seq = (*seqp)++;
	t = seq & cfg->template_mask & (BENCH_MAX_TEMPLATES - 1);
	if (t)
		__builtin_memcpy(data, cfg->hdr[1], BENCH_HDR_LEN);
	else
		__builtin_memcpy(data, cfg->hdr[0], BENCH_HDR_LEN);

	/* New source port; the UDP checksum follows incrementally (RFC 1624, eqn. 3). */
	udp = data + sizeof(struct ethhdr) + sizeof(struct iphdr);
	sport = cfg->sport_base + ((seq >> (cfg->template_shift & 7)) & cfg->flow_mask);
	sum = (__u16)~bpf_ntohs(udp->check);
	sum += (__u16)~cfg->sport_base;
	sum += sport;
	check = ~bench_fold(sum);
	udp->source = bpf_htons(sport);
	udp->check = bpf_htons(check ? check : 0xffff);
	return XDP_TX;
}

static __always_inline void bench_count(__u32 slot, int csum_ok)
{
	struct bench_sink_stats *st = bpf_map_lookup_elem(&bench_sink_stats, &slot);

	if (!st)
		return;
	st->packets++;
	if (csum_ok)
		st->csum_ok++;
}

/* Whether the IPv4 header and the UDP datagram (of udp_len bytes, all in the packet) check. */
static __always_inline int bench_csum_ok(struct iphdr *ip, struct udphdr *udp, void *data_end)
{
	__u64 s;

	if (bench_fold(bpf_csum_diff(NULL, 0, (__be32 *)ip, sizeof(*ip), 0)) != 0xffff)
		return 0;
	/* A zero UDP checksum ("none") or a partial one (offload left to hardware that a veth
	 * does not have) does not verify: counted, but not as csum_ok. The fixed length keeps the
	 * helper's size constant; the generator's datagrams all have it. */
	if (udp->check == 0 || udp->len != bpf_htons(BENCH_UDP_LEN) ||
	    (void *)udp + BENCH_UDP_LEN > data_end)
		return 0;
	s = bpf_csum_diff(NULL, 0, (__be32 *)udp, BENCH_UDP_LEN, 0);
	s += ip->saddr;
	s += ip->daddr;
	s += bpf_htons(IPPROTO_UDP);
	s += udp->len;
	return bench_fold(s) == 0xffff;
}

SEC("xdp")
int bench_sink(struct xdp_md *ctx)
{
	void *data = (void *)(long)ctx->data;
	void *data_end = (void *)(long)ctx->data_end;
	struct bench_sink_key key = {};
	struct ethhdr *eth = data;
	struct udphdr *udp;
	struct iphdr *ip;
	__u32 *slot;

	ip = data + sizeof(*eth);
	udp = data + sizeof(*eth) + sizeof(*ip);
	if ((void *)(udp + 1) > data_end || eth->h_proto != bpf_htons(ETH_P_IP) || ip->ihl != 5 ||
	    ip->protocol != IPPROTO_UDP)
		goto other;
	key.daddr = ip->daddr;
	key.dport = udp->dest;
	slot = bpf_map_lookup_elem(&bench_sink_expect, &key);
	if (!slot)
		goto other;
	bench_count(*slot, bench_csum_ok(ip, udp, data_end));
	return XDP_DROP;
other:
	bench_count(BENCH_SINK_OTHER, 0);
	return XDP_PASS;
}

/* Kernel softirq numbers (include/linux/interrupt.h, not in the UAPI). */
#define BENCH_NET_TX_SOFTIRQ 2
#define BENCH_NET_RX_SOFTIRQ 3

struct bench_softirq {
	/* When the running network softirq began (0: none running). */
	__u64 start;
	/* Time spent in NET_TX, NET_RX. */
	__u64 ns[2];
};

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct bench_softirq);
} bench_softirq SEC(".maps");

SEC("raw_tracepoint/softirq_entry")
int bench_si_entry(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 vec = ctx->args[0], zero = 0;
	struct bench_softirq *s;

	if (vec != BENCH_NET_TX_SOFTIRQ && vec != BENCH_NET_RX_SOFTIRQ)
		return 0;
	s = bpf_map_lookup_elem(&bench_softirq, &zero);
	if (s)
		s->start = bpf_ktime_get_ns();
	return 0;
}

SEC("raw_tracepoint/softirq_exit")
int bench_si_exit(struct bpf_raw_tracepoint_args *ctx)
{
	__u32 vec = ctx->args[0], zero = 0;
	struct bench_softirq *s;

	if (vec != BENCH_NET_TX_SOFTIRQ && vec != BENCH_NET_RX_SOFTIRQ)
		return 0;
	s = bpf_map_lookup_elem(&bench_softirq, &zero);
	if (!s || !s->start)
		return 0;
	s->ns[vec == BENCH_NET_RX_SOFTIRQ] += bpf_ktime_get_ns() - s->start;
	s->start = 0;
	return 0;
}

char _license[] SEC("license") = "Dual BSD/GPL";
