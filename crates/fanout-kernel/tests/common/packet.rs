//! Test-only packet construction and checking for the BPF fixtures.
//!
//! The builder makes whole Ethernet frames (optional VLAN tags, IPv4 with options or IPv6,
//! UDP) with correct checksums computed from scratch, and can break any field on purpose
//! (fragments, bad IHL, lying lengths, other protocols, truncation). Because it computes
//! checksums from scratch while the programs update them incrementally, "the program's output
//! equals the builder's packet for the new destination" is a strong check of the rewrite.
//! [`parse`] and [`check_checksums`] read output frames back.

use std::net::{IpAddr, SocketAddr};

/// Ethernet addresses the builder puts on every frame unless told otherwise.
pub const CLIENT_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
/// Destination MAC of built frames (the balancer's interface).
pub const LB_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];

/// EtherTypes used by tests.
pub const ETH_P_IP: u16 = 0x0800;
/// IPv6.
pub const ETH_P_IPV6: u16 = 0x86dd;
/// 802.1Q tag.
pub const ETH_P_8021Q: u16 = 0x8100;
/// 802.1ad (QinQ outer) tag.
pub const ETH_P_8021AD: u16 = 0x88a8;
/// ARP.
pub const ETH_P_ARP: u16 = 0x0806;

/// How the UDP checksum field is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpCsum {
    /// Computed over pseudo-header, header and payload.
    Correct,
    /// 0: "no checksum" (IPv4 only).
    Zero,
}

/// A UDP datagram in an Ethernet frame, with knobs to break it.
#[derive(Debug, Clone)]
pub struct Builder {
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub payload: Vec<u8>,
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    /// (TPID, TCI) from the outside in.
    pub vlans: Vec<(u16, u16)>,
    pub ttl: u8,
    /// IPv4 options (padded to a multiple of 4 by the builder).
    pub options: Vec<u8>,
    /// IPv4 fragment: (more fragments, offset in 8-byte units).
    pub frag: (bool, u16),
    /// IP protocol / IPv6 next header.
    pub protocol: u8,
    pub udp_csum: UdpCsum,
    /// Overrides the UDP length field.
    pub udp_len: Option<u16>,
    /// Overrides the IPv4 IHL field.
    pub ihl: Option<u8>,
    /// Overrides the IPv4 version nibble.
    pub version: Option<u8>,
    /// Overrides the IPv4 total length / IPv6 payload length.
    pub ip_len: Option<u16>,
    /// Zero bytes appended after the datagram (Ethernet padding).
    pub trailer: usize,
}

impl Builder {
    /// A correct datagram from `src` to `dst`.
    pub fn udp(src: SocketAddr, dst: SocketAddr, payload: &[u8]) -> Self {
        assert_eq!(src.is_ipv4(), dst.is_ipv4(), "mixed families");
        Builder {
            src,
            dst,
            payload: payload.to_vec(),
            eth_dst: LB_MAC,
            eth_src: CLIENT_MAC,
            vlans: Vec::new(),
            ttl: 64,
            options: Vec::new(),
            frag: (false, 0),
            protocol: 17,
            udp_csum: UdpCsum::Correct,
            udp_len: None,
            ihl: None,
            version: None,
            ip_len: None,
            trailer: 0,
        }
    }

    /// The same datagram sent to `dst` with TTL `ttl` (what the balancer should emit).
    pub fn redirected(&self, dst: SocketAddr, ttl: u8) -> Self {
        Builder {
            dst,
            ttl,
            ..self.clone()
        }
    }

    /// This datagram with fields changed by `f` (for breaking it on purpose in a table row).
    pub fn with(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }

    /// Adds a VLAN tag (outermost first).
    pub fn vlan(mut self, tpid: u16, vid: u16) -> Self {
        self.vlans.push((tpid, vid));
        self
    }

    /// The whole frame.
    pub fn build(&self) -> Vec<u8> {
        let mut f = Vec::with_capacity(128 + self.payload.len());
        f.extend_from_slice(&self.eth_dst);
        f.extend_from_slice(&self.eth_src);
        for &(tpid, tci) in &self.vlans {
            f.extend_from_slice(&tpid.to_be_bytes());
            f.extend_from_slice(&tci.to_be_bytes());
        }
        let udp_len = 8 + self.payload.len();
        let udp_len_field = self.udp_len.unwrap_or(udp_len as u16);
        let mut udp = Vec::with_capacity(udp_len);
        udp.extend_from_slice(&self.src.port().to_be_bytes());
        udp.extend_from_slice(&self.dst.port().to_be_bytes());
        udp.extend_from_slice(&udp_len_field.to_be_bytes());
        udp.extend_from_slice(&[0, 0]);
        udp.extend_from_slice(&self.payload);
        match (self.src.ip(), self.dst.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                f.extend_from_slice(&ETH_P_IP.to_be_bytes());
                let mut opts = self.options.clone();
                while !opts.len().is_multiple_of(4) {
                    opts.push(0);
                }
                let hl = 20 + opts.len();
                let ihl = self.ihl.unwrap_or((hl / 4) as u8);
                let version = self.version.unwrap_or(4);
                let tot = self.ip_len.unwrap_or((hl + udp_len) as u16);
                let frag = (u16::from(self.frag.0) << 13) | self.frag.1;
                let mut ip = vec![(version << 4) | (ihl & 0xf), 0];
                ip.extend_from_slice(&tot.to_be_bytes());
                ip.extend_from_slice(&[0x12, 0x34]);
                ip.extend_from_slice(&frag.to_be_bytes());
                ip.extend_from_slice(&[self.ttl, self.protocol, 0, 0]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                ip.extend_from_slice(&opts);
                let c = fold(sum(&ip, 0));
                ip[10..12].copy_from_slice(&(!c).to_be_bytes());
                if self.udp_csum == UdpCsum::Correct {
                    set_udp_csum(&mut udp, &pseudo_header(s.into(), d.into(), udp_len));
                }
                f.extend_from_slice(&ip);
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                f.extend_from_slice(&ETH_P_IPV6.to_be_bytes());
                let plen = self.ip_len.unwrap_or(udp_len as u16);
                let mut ip = vec![0x60, 0, 0, 0];
                ip.extend_from_slice(&plen.to_be_bytes());
                ip.extend_from_slice(&[self.protocol, self.ttl]);
                ip.extend_from_slice(&s.octets());
                ip.extend_from_slice(&d.octets());
                if self.udp_csum == UdpCsum::Correct {
                    set_udp_csum(&mut udp, &pseudo_header(s.into(), d.into(), udp_len));
                }
                f.extend_from_slice(&ip);
            }
            _ => unreachable!("checked in udp()"),
        }
        f.extend_from_slice(&udp);
        f.resize(f.len() + self.trailer, 0);
        f
    }
}

/// The pseudo-header the UDP checksum covers (RFC 768; RFC 8200 section 8.1 for IPv6).
fn pseudo_header(src: IpAddr, dst: IpAddr, udp_len: usize) -> Vec<u8> {
    let mut ph = Vec::with_capacity(40);
    match (src, dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&[0, 17]);
            ph.extend_from_slice(&(udp_len as u16).to_be_bytes());
        }
        (IpAddr::V6(s), IpAddr::V6(d)) => {
            ph.extend_from_slice(&s.octets());
            ph.extend_from_slice(&d.octets());
            ph.extend_from_slice(&(udp_len as u32).to_be_bytes());
            ph.extend_from_slice(&[0, 0, 0, 17]);
        }
        _ => panic!("mixed families"),
    }
    ph
}

fn set_udp_csum(udp: &mut [u8], pseudo: &[u8]) {
    let c = !fold(sum(udp, sum(pseudo, 0)));
    let c = if c == 0 { 0xffff } else { c };
    udp[6..8].copy_from_slice(&c.to_be_bytes());
}

/// One's-complement sum of big-endian 16-bit words (odd tail padded with zero).
pub fn sum(data: &[u8], mut acc: u64) -> u64 {
    let mut chunks = data.chunks_exact(2);
    for c in &mut chunks {
        acc += u64::from(u16::from_be_bytes([c[0], c[1]]));
    }
    if let [last] = chunks.remainder() {
        acc += u64::from(*last) << 8;
    }
    acc
}

/// Folds a sum to 16 bits.
pub fn fold(mut s: u64) -> u16 {
    while s > 0xffff {
        s = (s & 0xffff) + (s >> 16);
    }
    s as u16
}

/// What a frame says, read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    pub eth_dst: [u8; 6],
    pub eth_src: [u8; 6],
    pub vlans: usize,
    pub src: SocketAddr,
    pub dst: SocketAddr,
    pub ttl: u8,
    pub udp_check: u16,
    pub payload: Vec<u8>,
    /// Offsets of the IP and UDP headers.
    pub l3: usize,
    pub l4: usize,
}

fn be16(f: &[u8], at: usize) -> Result<u16, String> {
    f.get(at..at + 2)
        .map(|b| u16::from_be_bytes([b[0], b[1]]))
        .ok_or_else(|| format!("frame too short for a field at {at}"))
}

/// Parses an Ethernet/(VLAN)/IP/UDP frame (no fragments, no IPv6 extension headers).
pub fn parse(f: &[u8]) -> Result<Parsed, String> {
    let mut off = 12;
    let mut proto = be16(f, off)?;
    let mut vlans = 0;
    while proto == ETH_P_8021Q || proto == ETH_P_8021AD {
        off += 4;
        vlans += 1;
        proto = be16(f, off)?;
    }
    let l3 = off + 2;
    let (src, dst, ttl, l4) = match proto {
        ETH_P_IP => {
            let h = f.get(l3..l3 + 20).ok_or("short IPv4 header")?;
            if h[9] != 17 {
                return Err(format!("protocol {} is not UDP", h[9]));
            }
            let ihl = usize::from(h[0] & 0xf) * 4;
            let s: [u8; 4] = h[12..16].try_into().map_err(|_| "saddr")?;
            let d: [u8; 4] = h[16..20].try_into().map_err(|_| "daddr")?;
            (IpAddr::from(s), IpAddr::from(d), h[8], l3 + ihl)
        }
        ETH_P_IPV6 => {
            let h = f.get(l3..l3 + 40).ok_or("short IPv6 header")?;
            if h[6] != 17 {
                return Err(format!("next header {} is not UDP", h[6]));
            }
            let s: [u8; 16] = h[8..24].try_into().map_err(|_| "saddr")?;
            let d: [u8; 16] = h[24..40].try_into().map_err(|_| "daddr")?;
            (IpAddr::from(s), IpAddr::from(d), h[7], l3 + 40)
        }
        p => return Err(format!("ethertype {p:#06x} is not IP")),
    };
    let ulen = usize::from(be16(f, l4 + 4)?);
    let payload = f
        .get(l4 + 8..l4 + ulen.max(8))
        .ok_or("UDP length beyond the frame")?
        .to_vec();
    Ok(Parsed {
        eth_dst: f[0..6].try_into().map_err(|_| "eth")?,
        eth_src: f[6..12].try_into().map_err(|_| "eth")?,
        vlans,
        src: SocketAddr::new(src, be16(f, l4)?),
        dst: SocketAddr::new(dst, be16(f, l4 + 2)?),
        ttl,
        udp_check: be16(f, l4 + 6)?,
        payload,
        l3,
        l4,
    })
}

/// Checks the IPv4 header checksum and the UDP checksum (an IPv4 zero checksum is accepted as
/// "none"; a computed zero must be sent as 0xffff).
pub fn check_checksums(f: &[u8]) -> Result<(), String> {
    let p = parse(f)?;
    let ulen = usize::from(be16(f, p.l4 + 4)?);
    let udp = f.get(p.l4..p.l4 + ulen).ok_or("UDP beyond frame")?;
    match (p.src.ip(), p.dst.ip()) {
        (IpAddr::V4(_), IpAddr::V4(_)) => {
            let ihl = usize::from(f[p.l3] & 0xf) * 4;
            let hs = fold(sum(&f[p.l3..p.l3 + ihl], 0));
            if hs != 0xffff {
                return Err(format!("IPv4 header checksum wrong (sum {hs:#06x})"));
            }
            if p.udp_check == 0 {
                return Ok(());
            }
        }
        (IpAddr::V6(_), IpAddr::V6(_)) => {
            if p.udp_check == 0 {
                return Err("IPv6 UDP checksum is zero".into());
            }
        }
        _ => return Err("mixed families".into()),
    }
    let ph = pseudo_header(p.src.ip(), p.dst.ip(), ulen);
    let s = fold(sum(udp, sum(&ph, 0)));
    if s != 0xffff {
        return Err(format!(
            "UDP checksum {:#06x} wrong (sum {s:#06x})",
            p.udp_check
        ));
    }
    Ok(())
}
