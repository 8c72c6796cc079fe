/* SPDX-License-Identifier: (GPL-2.0 OR Apache-2.0) */
/*
 * hash.h: the flow hash, bit-identical to fanout_core::flow::flow_hash.
 *
 * Consistent hashing only keeps a client on its downstream across nodes and planes if every
 * one of them hashes alike, so this is the same MurmurHash3 x86_32 with the same seed over the
 * same words as the Rust code: the client's address words and a port word (the two port bytes
 * as on the wire, then two zero bytes), each word read little-endian from the packet bytes, and
 * the byte length (4 * words) mixed in. The parity test in crates/fanout-kernel/tests checks
 * 10,000+ flows against the Rust function.
 */
#ifndef UF_HASH_H
#define UF_HASH_H

#include <linux/types.h>

#if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
/* Words are loaded from the packet in native order and must equal u32::from_le_bytes. */
#error "the flow hash assumes a little-endian BPF target (bpfel)"
#endif

#define UF_FLOW_HASH_SEED 0x75647066u /* "udpf", fanout_core::flow::FLOW_HASH_SEED */

/* Rotation as in the reference code; the BPF ISA has no rotate instruction. */
static __always_inline __u32 uf_rotl32(__u32 x, int r)
{
	return (x << r) | (x >> (32 - r));
}

/* One MurmurHash3 body round: mixes the word k into the state h. */
static __always_inline __u32 uf_mm3_round(__u32 h, __u32 k)
{
	k *= 0xcc9e2d51u;
	k = uf_rotl32(k, 15);
	k *= 0x1b873593u;
	h ^= k;
	h = uf_rotl32(h, 13);
	return h * 5 + 0xe6546b64u;
}

/* MurmurHash3's finaliser, with the byte length mixed in first. */
static __always_inline __u32 uf_mm3_final(__u32 h, __u32 len)
{
	h ^= len;
	h ^= h >> 16;
	h *= 0x85ebca6bu;
	h ^= h >> 13;
	h *= 0xc2b2ae35u;
	h ^= h >> 16;
	return h;
}

/* Hash of an IPv4 client: [address word, port word], 8 bytes. `port` is the raw (network-order)
 * UDP source port field; on a little-endian machine its zero-extension is exactly the port
 * word from_le_bytes([p0, p1, 0, 0]). */
static __always_inline __u32 uf_flow_hash4(__u32 addr, __u16 port)
{
	__u32 h = UF_FLOW_HASH_SEED;

	h = uf_mm3_round(h, addr);
	h = uf_mm3_round(h, (__u32)port);
	return uf_mm3_final(h, 8);
}

/* Hash of an IPv6 client: [4 address words, port word], 20 bytes. */
static __always_inline __u32 uf_flow_hash6(const __u32 *addr, __u16 port)
{
	__u32 h = UF_FLOW_HASH_SEED;

	h = uf_mm3_round(h, addr[0]);
	h = uf_mm3_round(h, addr[1]);
	h = uf_mm3_round(h, addr[2]);
	h = uf_mm3_round(h, addr[3]);
	h = uf_mm3_round(h, (__u32)port);
	return uf_mm3_final(h, 20);
}

/* hash % 65537 (UF_MAGLEV_SIZE = 2^16 + 1) without a division: with hash = hi * 2^16 + lo and
 * 2^16 = -1 (mod 2^16 + 1), hash = lo - hi (mod 65537). The division instruction this saves
 * costs ~20-40 cycles on x86. */
static __always_inline __u32 uf_mod_maglev(__u32 hash)
{
	__s32 r = (__s32)(hash & 0xffff) - (__s32)(hash >> 16);

	return r < 0 ? (__u32)(r + 65537) : (__u32)r;
}

#endif /* UF_HASH_H */
