//! Flow keys and the stable flow hash.
//!
//! A flow is identified by the client's address (IP and port) as seen by the listener. The hash
//! of that key picks the Maglev slot for `consistent_hash`, so it has to be the same function
//! in every process, on every machine and in the eBPF programs: several udp-fanout nodes behind
//! ECMP only agree on a backend if they hash alike. That rules out `std`'s randomly keyed
//! SipHash; instead this is MurmurHash3 (x86, 32-bit) with a fixed seed over a fixed byte
//! layout, which is a few lines of C in `bpf/` as well.
//!
//! Byte layout hashed (the order the bytes have on the wire, so the BPF side hashes the packet
//! bytes without any byte swapping):
//! - IPv4: the 4 address bytes, the 2 port bytes (big-endian), 2 zero bytes: 8 bytes.
//! - IPv6: the 16 address bytes, the 2 port bytes (big-endian), 2 zero bytes: 20 bytes.
//!
//! Each 4-byte group is read as a little-endian `u32`, as MurmurHash3's reference code does on
//! x86. Changing anything here changes every consistent-hash decision: treat it as a wire format.

use std::net::{IpAddr, SocketAddr};

/// Seed of the flow hash. Part of the on-the-wire contract between nodes; never change it.
pub const FLOW_HASH_SEED: u32 = 0x75_64_70_66; // "udpf"

/// The key a datagram is classified by: the client's address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlowKey {
    /// Source address of the client datagram.
    pub client: SocketAddr,
}

impl FlowKey {
    /// The key of a datagram sent by `client`.
    pub const fn new(client: SocketAddr) -> Self {
        FlowKey { client }
    }

    /// The stable hash of this key (see the module docs for the exact definition).
    pub fn hash(&self) -> u32 {
        flow_hash(&self.client)
    }
}

/// The stable hash of a client address. IPv4-mapped IPv6 addresses hash as their IPv4 form, so
/// a dual-stack socket and an IPv4 socket agree.
pub fn flow_hash(addr: &SocketAddr) -> u32 {
    let port = addr.port().to_be_bytes();
    let port_word = u32::from_le_bytes([port[0], port[1], 0, 0]);
    match addr.ip().to_canonical() {
        IpAddr::V4(ip) => {
            let o = ip.octets();
            murmur3_words(&[u32::from_le_bytes(o), port_word], FLOW_HASH_SEED)
        }
        IpAddr::V6(ip) => {
            let o = ip.octets();
            let w = |i: usize| u32::from_le_bytes([o[i], o[i + 1], o[i + 2], o[i + 3]]);
            murmur3_words(&[w(0), w(4), w(8), w(12), port_word], FLOW_HASH_SEED)
        }
    }
}

/// MurmurHash3 x86_32 over a whole number of 32-bit words (no tail handling needed, since every
/// input here is a multiple of 4 bytes). The length mixed in is the byte length, as in the
/// reference implementation.
pub fn murmur3_words(words: &[u32], seed: u32) -> u32 {
    const C1: u32 = 0xcc9e_2d51;
    const C2: u32 = 0x1b87_3593;
    let mut h = seed;
    for &w in words {
        let mut k = w.wrapping_mul(C1);
        k = k.rotate_left(15);
        k = k.wrapping_mul(C2);
        h ^= k;
        h = h.rotate_left(13);
        h = h.wrapping_mul(5).wrapping_add(0xe654_6b64);
    }
    // `words` is at most a handful of entries; the cast cannot truncate in practice and the
    // reference code uses a 32-bit length too.
    h ^= (words.len() as u32).wrapping_mul(4);
    fmix32(h)
}

/// MurmurHash3's finaliser: a bijective avalanche of 32 bits.
pub const fn fmix32(mut h: u32) -> u32 {
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^= h >> 16;
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reference byte-oriented MurmurHash3 x86_32, to check the word version against.
    fn murmur3_bytes(data: &[u8], seed: u32) -> u32 {
        assert_eq!(data.len() % 4, 0);
        let words: Vec<u32> = data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        murmur3_words(&words, seed)
    }

    #[test]
    fn murmur3_known_vectors() {
        // Published MurmurHash3_x86_32 test vectors.
        assert_eq!(murmur3_words(&[], 0), 0);
        assert_eq!(murmur3_words(&[], 1), 0x514e_28b7);
        assert_eq!(murmur3_words(&[], 0xffff_ffff), 0x81f1_6f39);
        assert_eq!(murmur3_bytes(&[0, 0, 0, 0], 0), 0x2362_f9de);
        assert_eq!(murmur3_bytes(&[0x21, 0x43, 0x65, 0x87], 0), 0xf55b_516b);
        assert_eq!(
            murmur3_bytes(&[0x21, 0x43, 0x65, 0x87], 0x5082_edee),
            0x2362_f9de
        );
    }

    #[test]
    fn flow_hash_is_pinned() {
        // These values are part of the cross-node contract: if this test fails, every
        // consistent-hash decision changed.
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "[2001:db8::1]:5000".parse().unwrap();
        let h_a = flow_hash(&a);
        let h_b = flow_hash(&b);
        assert_eq!(
            h_a,
            murmur3_bytes(&[10, 0, 0, 1, 0x13, 0x88, 0, 0], FLOW_HASH_SEED)
        );
        let mut v6 = [0u8; 20];
        v6[..16].copy_from_slice(
            &"2001:db8::1"
                .parse::<std::net::Ipv6Addr>()
                .unwrap()
                .octets(),
        );
        v6[16] = 0x13;
        v6[17] = 0x88;
        assert_eq!(h_b, murmur3_bytes(&v6, FLOW_HASH_SEED));
        assert_eq!(h_a, 0x89ec_d545, "flow hash of 10.0.0.1:5000 changed");
    }

    #[test]
    fn mapped_v6_hashes_like_v4() {
        let v4: SocketAddr = "192.0.2.7:53".parse().unwrap();
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:53".parse().unwrap();
        assert_eq!(flow_hash(&v4), flow_hash(&mapped));
    }

    #[test]
    fn port_and_address_both_matter() {
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:5001".parse().unwrap();
        let c: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        assert_ne!(flow_hash(&a), flow_hash(&b));
        assert_ne!(flow_hash(&a), flow_hash(&c));
    }
}
