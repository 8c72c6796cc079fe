/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * uf_maps.h: the maps shared by udp-fanout's XDP and TC programs. Layouts are in uf_structs.h;
 * the Rust loader finds the maps by these names.
 */
#ifndef UF_MAPS_H
#define UF_MAPS_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "uf_structs.h"

/* Which listener a datagram is for: (destination address, UDP port, family) -> listener. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, UF_MAX_LISTENERS);
	__type(key, struct uf_listener_key);
	__type(value, struct uf_listener);
} uf_listeners SEC(".maps");

/* Per (port, family): none / the one listener / several (then uf_listeners decides). */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UF_PORT_SLOTS);
	__type(key, __u32);
	__type(value, struct uf_port);
} uf_ports SEC(".maps");

/* The live bank (0 or 1) of each listener, flipped by the loader after writing the other. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UF_MAX_LISTENERS);
	__type(key, __u32);
	__type(value, __u32);
} uf_active SEC(".maps");

/* Downstream set header per listener and bank. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UF_MAX_LISTENERS * UF_BANKS);
	__type(key, __u32);
	__type(value, struct uf_bank);
} uf_banks SEC(".maps");

/* Downstreams per listener and bank. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UF_MAX_LISTENERS * UF_BANKS * UF_MAX_BACKENDS);
	__type(key, __u32);
	__type(value, struct uf_backend);
} uf_backends SEC(".maps");

/* Smooth weighted round-robin cycle (backend slots), computed by the loader. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UF_MAX_LISTENERS * UF_BANKS * UF_RR_SLOTS);
	__type(key, __u32);
	__type(value, __u32);
} uf_rr SEC(".maps");

/* Maglev lookup table (backend slots), computed by the loader with the userspace plane's code. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, UF_MAX_LISTENERS * UF_BANKS * UF_MAGLEV_SIZE);
	__type(key, __u32);
	__type(value, __u32);
} uf_maglev SEC(".maps");

/* Round-robin position of each CPU per listener: no shared counter, no atomics. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UF_MAX_LISTENERS);
	__type(key, __u32);
	__type(value, __u32);
} uf_rr_cursor SEC(".maps");

/* Per-listener counters per CPU, summed by the loader at scrape time. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UF_MAX_LISTENERS);
	__type(key, __u32);
	__type(value, struct uf_listener_stats);
} uf_listener_stats SEC(".maps");

/* Per-downstream counters per CPU. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, UF_MAX_ENDPOINTS);
	__type(key, __u32);
	__type(value, struct uf_endpoint_stats);
} uf_endpoint_stats SEC(".maps");

/* Next-hop cache: saves the bpf_fib_lookup per packet. Filled by the programs, entries expire
 * after uf_globals.nexthop_ttl_ms, and the loader clears it whenever a route or neighbour
 * changes (rtnetlink), so it never outlives the kernel's own tables by more than that. */
struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, UF_NEXTHOP_ENTRIES);
	__type(key, struct uf_nexthop_key);
	__type(value, struct uf_nexthop);
} uf_nexthops SEC(".maps");

/* Global settings, index 0. */
struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct uf_globals);
} uf_globals SEC(".maps");

#endif /* UF_MAPS_H */
