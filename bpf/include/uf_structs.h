/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * uf_structs.h: the one definition of every map key and value of udp-fanout's kernel plane.
 *
 * The BPF programs include this file; the Rust loader gets the same layouts from it through
 * bindgen (crates/fanout-kernel/build.rs), so the two sides cannot drift apart. Everything here is
 * plain fixed-size data with explicit padding: no pointers, no bitfields, no implicit holes.
 *
 * Addresses and ports are stored in network byte order, exactly as they appear in packets, so
 * the programs compare and copy them without byte swaps. An IPv4 address occupies addr[0] and
 * addr[1..3] are zero.
 *
 * Sizes are macros so a build can override them (-DUF_MAX_LISTENERS=64); the Rust side reads
 * the values back from the bindings.
 */
#ifndef UF_STRUCTS_H
#define UF_STRUCTS_H

#include <linux/types.h>

#ifndef UF_MAX_LISTENERS
#define UF_MAX_LISTENERS 16 /* listeners served by the kernel plane */
#endif
#ifndef UF_MAX_BACKENDS
#define UF_MAX_BACKENDS 256 /* downstreams per listener */
#endif
#define UF_MAGLEV_SIZE 65537 /* Maglev table size (prime; same as the userspace plane) */
#ifndef UF_RR_SLOTS
#define UF_RR_SLOTS 16384 /* longest round-robin cycle per listener */
#endif
#ifndef UF_MAX_ENDPOINTS
#define UF_MAX_ENDPOINTS 4096 /* per-downstream counter slots, over all listeners */
#endif
#ifndef UF_MAX_MIRROR
#define UF_MAX_MIRROR 16 /* copies per datagram for distribution: mirror (tc_ebpf) */
#endif
#ifndef UF_NEXTHOP_ENTRIES
#define UF_NEXTHOP_ENTRIES 4096 /* next-hop cache entries */
#endif

/* Two banks per listener: the loader writes a new downstream set into the idle bank, then flips
 * uf_active to it, so a program never reads a half-written set. */
#define UF_BANKS 2

enum uf_distribution {
	UF_DIST_ROUND_ROBIN = 0,
	UF_DIST_CONSISTENT_HASH = 1,
	UF_DIST_MIRROR = 2,
};

/* Drop reasons. The values are the indices of fanout_core::DropReason (a Rust test checks
 * this), so kernel and userspace drops share one metric label set. */
enum uf_drop_reason {
	UF_DROP_NO_DOWNSTREAM = 0,
	UF_DROP_SEND_ERROR = 1,
	UF_DROP_BUFFER_FULL = 2,
	UF_DROP_TRUNCATED = 3,
	UF_DROP_MALFORMED = 4,
	UF_DROP_UNKNOWN_SOURCE = 5,
	UF_DROP_NO_SESSION = 6,
	UF_DROP_TOO_LARGE = 7,
	UF_DROP_SHADOW_REPLY = 8,
	UF_DROP_NO_UPSTREAM_PORT = 9,
	UF_DROP_MAX = 10,
};

/* uf_globals flags. */
enum uf_global_flags {
	/* After the rewrite, return XDP_TX / TC_ACT_OK instead of looking up a route: used by
	 * BPF_PROG_TEST_RUN fixtures and benchmarks to measure decision + rewrite alone. */
	UF_G_NO_FIB = 1 << 0,
	/* Do not use or fill the next-hop cache (always bpf_fib_lookup). */
	UF_G_NO_NEXTHOP_CACHE = 1 << 1,
	/* Do not decrement TTL / hop limit (benchmarks only): BPF_PROG_TEST_RUN repeats run on
	 * the previous repeat's output, so with a decrement every repeat would see a smaller TTL
	 * and after ~250 of them take the TTL-expired path instead of the one being measured. */
	UF_G_KEEP_TTL = 1 << 2,
};

/* uf_listeners key: the address and UDP port datagrams are sent to. */
struct uf_listener_key {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 family; /* 4 or 6 */
	__u8 pad;
};

/* uf_listeners value. */
struct uf_listener {
	__u32 id; /* index into the per-listener maps, < UF_MAX_LISTENERS */
	__u32 distribution; /* enum uf_distribution */
};

/* uf_ports: the listener lookup's fast path, one entry per (UDP port, family), index
 * port * 2 + (family == 6 ? 1 : 0), port in host order. An array lookup is inlined by the
 * verifier, a hash lookup is a call (~25-35 ns on the reference VM, more than the whole
 * decision and rewrite): with it the common cases, "no listener on this port" (any UDP traffic
 * for someone else) and "one listener on this port", need no hash lookup. */
#define UF_PORT_SLOTS (65536 * 2)

enum uf_port_state {
	UF_PORT_NONE = 0, /* no listener on this port and family: not ours */
	UF_PORT_ONE = 1, /* exactly one: addr, id, distribution below */
	UF_PORT_MANY = 2, /* several (different addresses): look uf_listeners up */
};

/* uf_ports value, written by the loader whenever a listener is added or removed. */
struct uf_port {
	__u32 addr[4]; /* UF_PORT_ONE: the listener's address (all zero: unspecified, matches any) */
	__u32 id; /* UF_PORT_ONE: as uf_listener.id */
	__u32 distribution; /* UF_PORT_ONE: as uf_listener.distribution */
	__u32 state; /* enum uf_port_state */
	__u32 pad;
};

/* uf_banks value, index id * UF_BANKS + bank: one version of a listener's downstream set. */
struct uf_bank {
	__u32 count; /* backends in uf_backends slots [0, count) */
	__u32 rr_len; /* round-robin cycle length in uf_rr (0 = none) */
	__u32 mirror_count; /* entries used in mirror[] */
	__u32 pad;
	__u16 mirror[UF_MAX_MIRROR]; /* backend slots that get a copy (mirror) */
};

/* uf_backends value, index (id * UF_BANKS + bank) * UF_MAX_BACKENDS + slot. */
struct uf_backend {
	__u32 addr[4];
	__u16 port; /* network order */
	__u8 family; /* 4 or 6 */
	__u8 pad;
	__u32 stats_id; /* slot in uf_endpoint_stats */
};

/* uf_listener_stats value (per CPU), index id. Bytes are UDP payload bytes. */
struct uf_listener_stats {
	__u64 rx_packets;
	__u64 rx_bytes;
	__u64 fwd_packets;
	__u64 fwd_bytes;
	__u64 passed; /* rewritten, then handed to the kernel's forwarding (no neighbour yet) */
	__u64 drops[UF_DROP_MAX];
};

/* uf_endpoint_stats value (per CPU), index stats_id. */
struct uf_endpoint_stats {
	__u64 packets;
	__u64 bytes;
};

/* uf_nexthops key: a downstream address. */
struct uf_nexthop_key {
	__u32 addr[4];
	__u32 family; /* 4 or 6 */
};

/* uf_nexthops value: where packets to that address leave, as bpf_fib_lookup said. */
struct uf_nexthop {
	__u32 ifindex;
	__u8 smac[6];
	__u8 dmac[6];
	__u64 expires_ns; /* bpf_ktime_get_coarse_ns() after which the entry is looked up again */
};

/* uf_globals value, index 0. */
struct uf_globals {
	__u32 flags; /* enum uf_global_flags */
	__u32 nexthop_ttl_ms; /* lifetime of a next-hop cache entry */
	__u32 bypass_mark; /* skb->mark set on mirror copies re-injected on ingress (tc) */
	__u32 pad;
};

#endif /* UF_STRUCTS_H */
