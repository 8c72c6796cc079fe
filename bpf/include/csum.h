/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * csum.h: incremental Internet checksum updates (RFC 1624), computed inline.
 *
 * Why not bpf_csum_diff: a helper call costs more than the dozen ALU instructions a 4- or
 * 16-byte change needs, and XDP has no other choice than to patch the checksum fields itself.
 *
 * Every function works on 16-bit words exactly as they are in memory (no byte swaps): the
 * one's-complement sum is byte-order independent as long as every term, including the
 * checksum field itself, is taken the same way. A "diff" is the running sum of ~old + new over
 * all changed words, kept in 64 bits so no carry is lost, and folded once at the end.
 */
#ifndef UF_CSUM_H
#define UF_CSUM_H

#include <linux/types.h>

/* Adds the change of one 32-bit field (two 16-bit words) to a diff. */
static __always_inline __u64 uf_csum_diff32(__u64 diff, __u32 from, __u32 to)
{
	return diff + (__u32)~from + to;
}

/* Adds the change of one 16-bit field to a diff. */
static __always_inline __u64 uf_csum_diff16(__u64 diff, __u16 from, __u16 to)
{
	return diff + (__u16)~from + to;
}

/* Adds the change of a 16-byte address (IPv6, or IPv4 in word 0 and zeros) to a diff. */
static __always_inline __u64 uf_csum_diff128(__u64 diff, const __u32 *from, const __u32 *to)
{
	diff = uf_csum_diff32(diff, from[0], to[0]);
	diff = uf_csum_diff32(diff, from[1], to[1]);
	diff = uf_csum_diff32(diff, from[2], to[2]);
	return uf_csum_diff32(diff, from[3], to[3]);
}

/* Folds a 64-bit sum to 32 bits with end-around carry: the __wsum form the kernel's
 * bpf_l4_csum_replace(.., from = 0, to = diff, size 0) takes. */
static __always_inline __u32 uf_csum_fold32(__u64 s)
{
	s = (s & 0xffffffff) + (s >> 32);
	s = (s & 0xffffffff) + (s >> 32);
	return (__u32)s;
}

/* Folds a 64-bit sum to 16 bits with end-around carry. */
static __always_inline __u16 uf_csum_fold16(__u64 s)
{
	__u32 w = uf_csum_fold32(s);

	w = (w & 0xffff) + (w >> 16);
	w = (w & 0xffff) + (w >> 16);
	return (__u16)w;
}

/* RFC 1624 eqn. 3: HC' = ~(~HC + ~m + m'), the diff holding the ~m + m' terms. */
static __always_inline __u16 uf_csum_apply(__u16 check, __u64 diff)
{
	return (__u16)~uf_csum_fold16((__u64)(__u16)~check + diff);
}

/* The same for a UDP checksum: 0 means "no checksum" (IPv4), so a computed 0 is sent as 0xffff
 * (RFC 768), and a packet that had none keeps none. */
static __always_inline __u16 uf_csum_apply_udp(__u16 check, __u64 diff)
{
	__u16 c;

	if (!check)
		return 0;
	c = uf_csum_apply(check, diff);
	return c ? c : 0xffff;
}

#endif /* UF_CSUM_H */
