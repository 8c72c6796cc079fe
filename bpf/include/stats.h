/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * stats.h: counter updates.
 *
 * All counters are per-CPU map values, so plain increments are exact (a program runs to
 * completion on one CPU with migration disabled) and cost no atomic instruction; the loader
 * sums the CPUs at scrape time. Bytes are UDP payload bytes, as in the userspace plane.
 *
 * Accounting rules (same as the userspace plane where it applies):
 * - rx: every datagram for a listener, including those then dropped, and those left to the
 *   kernel because their TTL ran out (mirror listeners in XDP are not counted at all: XDP
 *   leaves them alone). Malformed ones count one packet and no bytes (their length is what is
 *   wrong).
 * - fwd: every copy that left towards a downstream, by us or handed to the kernel's forwarding
 *   (the latter also count `passed`), plus the downstream's endpoint counters.
 * - drops: by reason, one per copy that could not be sent.
 */
#ifndef UF_STATS_H
#define UF_STATS_H

#include "uf_maps.h"

/* The calling CPU's counters of listener `id` (NULL only if the id is out of range, which the
 * loader never writes). */
static __always_inline struct uf_listener_stats *uf_lstats(__u32 id)
{
	return bpf_map_lookup_elem(&uf_listener_stats, &id);
}

/* Counts one copy sent to backend `b` (`stats_id` its counter slot). */
static __always_inline void uf_count_fwd(struct uf_listener_stats *st, __u32 stats_id,
					 __u64 bytes, int passed)
{
	struct uf_endpoint_stats *es;

	st->fwd_packets++;
	st->fwd_bytes += bytes;
	if (passed)
		st->passed++;
	es = bpf_map_lookup_elem(&uf_endpoint_stats, &stats_id);
	if (es) {
		es->packets++;
		es->bytes += bytes;
	}
}

/* Counts one dropped datagram (or copy). */
static __always_inline void uf_count_drop(struct uf_listener_stats *st, __u32 reason)
{
	if (reason < UF_DROP_MAX)
		st->drops[reason]++;
}

#endif /* UF_STATS_H */
