/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * select.h: which listener a datagram is for, and which downstream gets it.
 *
 * The tables are computed by the loader with the userspace plane's own code (the smooth
 * weighted round-robin cycle and the Maglev table of fanout_core::select), so the kernel only
 * indexes them: O(1) per datagram, and the same choices as userspace for the same input.
 *
 * Bank protocol (see maps.rs): the loader writes a complete set into the idle bank and then
 * flips uf_active; a program reads uf_active once and uses that bank throughout.
 */
#ifndef UF_SELECT_H
#define UF_SELECT_H

#include "uf_maps.h"
#include "hash.h"
#include "parse.h"

_Static_assert(UF_MAGLEV_SIZE == 65537, "uf_mod_maglev assumes a table of 2^16 + 1 entries");

/* Whether two addresses (4 words) are equal, without branches. */
static __always_inline int uf_addr_eq(const __u32 *a, const __u32 *b)
{
	return ((a[0] ^ b[0]) | (a[1] ^ b[1]) | (a[2] ^ b[2]) | (a[3] ^ b[3])) == 0;
}

/* Whether an address is the unspecified one (all zero). */
static __always_inline int uf_addr_zero(const __u32 *a)
{
	return (a[0] | a[1] | a[2] | a[3]) == 0;
}

/* The hash-map lookup: exact (address, port, family) first, then the unspecified address with
 * that port (a listener bound to 0.0.0.0 / ::). Only for ports with several listeners. */
static __always_inline int uf_find_listener_slow(const struct uf_pkt *p, struct uf_listener *out)
{
	struct uf_listener_key k = {};
	struct uf_listener *l;

	__builtin_memcpy(k.addr, p->daddr, sizeof(k.addr));
	k.port = p->dport;
	k.family = p->family;
	l = bpf_map_lookup_elem(&uf_listeners, &k);
	if (!l) {
		__builtin_memset(k.addr, 0, sizeof(k.addr));
		l = bpf_map_lookup_elem(&uf_listeners, &k);
		if (!l)
			return 0;
	}
	out->id = l->id;
	out->distribution = l->distribution;
	return 1;
}

/* The listener for the datagram's destination; 0 if there is none. uf_ports answers the
 * common cases with an inlined array lookup (no listener on the port; one listener, exact or
 * unspecified address); only ports with several listeners need the hash map. */
static __always_inline int uf_find_listener(const struct uf_pkt *p, struct uf_listener *out)
{
	__u32 idx = (__u32)bpf_ntohs(p->dport) * 2 + (p->family == 6);
	struct uf_port *pe = bpf_map_lookup_elem(&uf_ports, &idx);

	if (!pe || pe->state == UF_PORT_NONE)
		return 0;
	if (pe->state == UF_PORT_ONE) {
		if (!uf_addr_eq(pe->addr, p->daddr) && !uf_addr_zero(pe->addr))
			return 0;
		out->id = pe->id;
		out->distribution = pe->distribution;
		return 1;
	}
	return uf_find_listener_slow(p, out);
}

/* The live bank of listener `id`: returns its header and sets *bank_index (id * 2 + bank), the
 * index every per-bank map is addressed with. */
static __always_inline struct uf_bank *uf_live_bank(__u32 id, __u32 *bank_index)
{
	__u32 *active = bpf_map_lookup_elem(&uf_active, &id);
	__u32 bi;

	if (!active)
		return NULL;
	bi = id * UF_BANKS + (*active & 1);
	*bank_index = bi;
	return bpf_map_lookup_elem(&uf_banks, &bi);
}

/* Backend `slot` of a bank, or NULL when the slot is not one of the bank's `count` (a table
 * entry never points there, but a map value is not something to trust blindly). */
static __always_inline struct uf_backend *uf_backend_at(__u32 bank_index,
							 const struct uf_bank *bank, __u32 slot)
{
	__u32 k;

	if (slot >= bank->count || slot >= UF_MAX_BACKENDS)
		return NULL;
	k = bank_index * UF_MAX_BACKENDS + slot;
	return bpf_map_lookup_elem(&uf_backends, &k);
}

/* Round-robin: the next entry of the listener's cycle for this CPU. The per-CPU cursor needs no
 * atomics and walks the same cycle as a userspace worker's cursor; it restarts at 0 when it
 * runs off the end (also after a flip to a shorter cycle), avoiding a division. */
static __always_inline struct uf_backend *uf_pick_rr(__u32 id, __u32 bank_index,
						      const struct uf_bank *bank)
{
	__u32 len = bank->rr_len, c, k, *cur, *slot;

	if (!len || !bank->count)
		return NULL;
	cur = bpf_map_lookup_elem(&uf_rr_cursor, &id);
	if (!cur)
		return NULL;
	c = *cur;
	if (c >= len || c >= UF_RR_SLOTS)
		c = 0;
	*cur = c + 1;
	k = bank_index * UF_RR_SLOTS + c;
	slot = bpf_map_lookup_elem(&uf_rr, &k);
	if (!slot)
		return NULL;
	return uf_backend_at(bank_index, bank, *slot);
}

/* Consistent hash: Maglev entry flow_hash(client) % 65537 of the bank's table. */
static __always_inline struct uf_backend *uf_pick_hash(__u32 bank_index,
							const struct uf_bank *bank,
							const struct uf_pkt *p)
{
	__u32 h, k, *slot;

	if (!bank->count)
		return NULL;
	if (p->family == 4)
		h = uf_flow_hash4(p->saddr[0], p->sport);
	else
		h = uf_flow_hash6(p->saddr, p->sport);
	k = bank_index * UF_MAGLEV_SIZE + uf_mod_maglev(h);
	slot = bpf_map_lookup_elem(&uf_maglev, &k);
	if (!slot)
		return NULL;
	return uf_backend_at(bank_index, bank, *slot);
}

/* The one downstream of a round-robin or consistent-hash listener; NULL = no downstream. */
static __always_inline struct uf_backend *uf_pick(const struct uf_listener *l, __u32 id,
						   __u32 bank_index, const struct uf_bank *bank,
						   const struct uf_pkt *p)
{
	if (l->distribution == UF_DIST_CONSISTENT_HASH)
		return uf_pick_hash(bank_index, bank, p);
	return uf_pick_rr(id, bank_index, bank);
}

#endif /* UF_SELECT_H */
