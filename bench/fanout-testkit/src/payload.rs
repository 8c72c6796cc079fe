//! The datagram format of the bench: every byte a generator sends can be checked by a sink.
//!
//! A proxy under test must deliver datagrams unchanged, so the format is built to make any
//! change visible, and to let the sink attribute each datagram to the run and flow it came from
//! without any side channel:
//!
//! ```text
//! offset  size  field
//!      0     4  magic    0x55464231 ("UFB1"), little-endian like every field
//!      4     4  stream   identifies one generator run
//!      8     4  flow     which of the run's source sockets sent it
//!     12     4  len      the datagram's total length, to tell truncation from bit flips
//!     16     8  seq      per flow, from 0
//!     24     8  ts_ns    send time, ns since the UNIX epoch (see `now_ns`)
//!     32     4  checksum CRC-32 (IEEE, `crc32fast`) of bytes 0..32, XOR the CRC-32 of 36..len
//!     36     …  filler   pseudo-random bytes derived from (stream, flow, len)
//! ```
//!
//! The header is 36 bytes rather than a round 32 because that is what the fields need at
//! these widths; narrowing any of them (a 16-bit length or checksum, a 48-bit sequence number)
//! would weaken what it is there to check. The checksum covers every byte: the header's CRC
//! and the filler's CRC, XORed, so a flipped sequence number is caught even in a datagram that
//! has no filler, and a change anywhere else is caught as surely as by one CRC-32 (every burst
//! of up to 32 bits, anything else but with probability 2⁻³²). [`decode`] also checks filler
//! words at the start, middle and end against what the (stream, flow, len) in the header say
//! they must be, so a datagram carrying another flow's or run's filler is told apart.
//!
//! Why two CRCs and a filler per flow and size rather than per datagram: the generator writes
//! a buffer's filler once and then only stamps the header ([`prepare`], [`stamp`]), and the
//! sink computes CRCs instead of regenerating every filler byte. With 64,000-byte datagrams,
//! regenerating and comparing 64 KB per datagram took 30 % of all CPU samples (`perf record -a`:
//! 14 % in the generator, 16 % in the sinks), which capped what any proxy could be shown to
//! carry. Datagrams of one flow and size share their filler, so a proxy that exchanged the
//! fillers of two of them would go unnoticed, but their bytes are the same.
//!
//! Datagrams shorter than [`HEADER_LEN`] (a proxy must forward those as well, including empty
//! ones) carry only filler derived from their length; they are not attributable to a flow, so
//! the sink counts them apart as "short".
//!
//! Filler is splitmix64 output: any 8-byte word of it can be computed directly (word `k` is
//! `mix(seed + (k + 1) · γ)`), which is what lets [`decode`] check a few words without
//! generating the rest.

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};

/// "UFB1": UDP-Fanout Bench, format 1.
pub const MAGIC: u32 = 0x5546_4231;

/// Size of the header; datagrams shorter than this carry only length-derived filler.
pub const HEADER_LEN: usize = 36;

/// Largest UDP payload over IPv4.
pub const MAX_V4_PAYLOAD: usize = 65_507;

const CHECKSUM_AT: usize = 32;
const SHORT_SALT: u64 = 0x5348_4f52_5421_2121;

/// The decoded header of a well-formed bench datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The generator run.
    pub stream: u32,
    /// The flow (source socket) within the run.
    pub flow: u32,
    /// Sequence number within the flow.
    pub seq: u64,
    /// Send time, ns since the UNIX epoch.
    pub ts_ns: u64,
    /// Total datagram length.
    pub len: u32,
}

/// Why a datagram is not a valid bench datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PayloadError {
    /// At least [`HEADER_LEN`] bytes but no magic: someone else's traffic.
    NotOurs,
    /// Shorter than [`HEADER_LEN`] and carrying the expected length-derived filler. Not an error
    /// of the datagram, only a sign that it cannot be attributed to a flow.
    Short,
    /// Ours, but changed on the way.
    Corrupt(Corruption),
}

/// What was wrong with a corrupt datagram.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Corruption {
    /// The length in the header is not the datagram's length (truncated or padded).
    Length {
        /// What the header says.
        header: u32,
        /// What arrived.
        actual: usize,
    },
    /// The checksum does not match.
    Checksum,
    /// The checksum matched but the filler is not the expected one.
    Filler,
    /// A datagram shorter than the header whose bytes are not its length's filler.
    ShortFiller,
}

impl fmt::Display for PayloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PayloadError::NotOurs => f.write_str("not a bench datagram (no magic)"),
            PayloadError::Short => f.write_str("short bench datagram (no header)"),
            PayloadError::Corrupt(Corruption::Length { header, actual }) => {
                write!(f, "corrupt: header says {header} bytes, {actual} arrived")
            }
            PayloadError::Corrupt(Corruption::Checksum) => f.write_str("corrupt: bad checksum"),
            PayloadError::Corrupt(Corruption::Filler) => f.write_str("corrupt: bad filler"),
            PayloadError::Corrupt(Corruption::ShortFiller) => {
                f.write_str("corrupt: short datagram with wrong filler")
            }
        }
    }
}

impl std::error::Error for PayloadError {}

/// The send timestamp clock: ns since the UNIX epoch (CLOCK_REALTIME through `SystemTime`).
///
/// The wall clock is the one clock that a generator and a sink in different processes read
/// alike without `unsafe` (CLOCK_MONOTONIC would need `clock_gettime`). Both sides reading the
/// same kernel clock means NTP slewing cancels out; only a clock *step* during a run distorts
/// latencies, and those are clamped at 0 rather than wrapping.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// Writes a bench datagram filling all of `buf`: header and filler when `buf` is at least
/// [`HEADER_LEN`] long, length-derived filler otherwise (then the other arguments are unused).
pub fn encode(buf: &mut [u8], stream: u32, flow: u32, seq: u64, ts_ns: u64) {
    let p = prepare(buf, stream, flow);
    stamp(buf, p, seq, ts_ns);
}

/// A buffer whose filler [`prepare`] wrote: what it was written for, and the filler's CRC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Prepared {
    stream: u32,
    flow: u32,
    len: usize,
    filler_crc: u32,
}

impl Prepared {
    /// Whether a buffer prepared so can be stamped for `flow` of `stream` at `len` bytes.
    pub fn fits(&self, stream: u32, flow: u32, len: usize) -> bool {
        (self.stream, self.flow, self.len) == (stream, flow, len)
    }
}

/// Writes the filler of `flow` in `stream` for a datagram of `buf.len()` bytes (the whole
/// buffer when it is shorter than the header); [`stamp`] then completes it, as often as wanted.
pub fn prepare(buf: &mut [u8], stream: u32, flow: u32) -> Prepared {
    let len = buf.len();
    let filler_crc = if len < HEADER_LEN {
        fill(buf, short_seed(len));
        0
    } else {
        fill(&mut buf[HEADER_LEN..], filler_seed(stream, flow, len));
        crc32fast::hash(&buf[HEADER_LEN..])
    };
    Prepared {
        stream,
        flow,
        len,
        filler_crc,
    }
}

/// Writes the header (and checksum) of datagram `seq` into a buffer [`prepare`] filled.
pub fn stamp(buf: &mut [u8], p: Prepared, seq: u64, ts_ns: u64) {
    let len = buf.len();
    debug_assert_eq!(len, p.len, "stamped at another length than prepared");
    if len < HEADER_LEN {
        return;
    }
    buf[0..4].copy_from_slice(&MAGIC.to_le_bytes());
    buf[4..8].copy_from_slice(&p.stream.to_le_bytes());
    buf[8..12].copy_from_slice(&p.flow.to_le_bytes());
    buf[12..16].copy_from_slice(&len_field(len).to_le_bytes());
    buf[16..24].copy_from_slice(&seq.to_le_bytes());
    buf[24..32].copy_from_slice(&ts_ns.to_le_bytes());
    let sum = crc32fast::hash(&buf[..CHECKSUM_AT]) ^ p.filler_crc;
    buf[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
}

/// The exact bytes the generator sends for datagram `seq` of `flow` in `stream` at `size`
/// bytes, stamped `ts_ns` (tests take the timestamp from the received datagram's header).
pub fn expected(size: usize, stream: u32, flow: u32, seq: u64, ts_ns: u64) -> Vec<u8> {
    let mut v = vec![0u8; size];
    encode(&mut v, stream, flow, seq, ts_ns);
    v
}

/// Checks a received datagram (magic, length, the checksum over every byte, filler words at
/// its start, middle and end) and returns its header.
pub fn decode(data: &[u8]) -> Result<Header, PayloadError> {
    let len = data.len();
    if len < HEADER_LEN {
        return if filler_matches(data, short_seed(len)) {
            Err(PayloadError::Short)
        } else {
            Err(PayloadError::Corrupt(Corruption::ShortFiller))
        };
    }
    if read_u32(data, 0) != MAGIC {
        return Err(PayloadError::NotOurs);
    }
    let h = Header {
        stream: read_u32(data, 4),
        flow: read_u32(data, 8),
        len: read_u32(data, 12),
        seq: read_u64(data, 16),
        ts_ns: read_u64(data, 24),
    };
    if h.len != len_field(len) {
        return Err(PayloadError::Corrupt(Corruption::Length {
            header: h.len,
            actual: len,
        }));
    }
    if read_u32(data, CHECKSUM_AT) != checksum(data) {
        return Err(PayloadError::Corrupt(Corruption::Checksum));
    }
    if !filler_spots_match(&data[HEADER_LEN..], filler_seed(h.stream, h.flow, len)) {
        return Err(PayloadError::Corrupt(Corruption::Filler));
    }
    Ok(h)
}

fn len_field(len: usize) -> u32 {
    u32::try_from(len).unwrap_or(u32::MAX)
}

fn checksum(datagram: &[u8]) -> u32 {
    crc32fast::hash(&datagram[..CHECKSUM_AT]) ^ crc32fast::hash(&datagram[HEADER_LEN..])
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn read_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

fn filler_seed(stream: u32, flow: u32, len: usize) -> u64 {
    mix((u64::from(stream) << 32 | u64::from(flow)) ^ mix(len as u64 + 1))
}

fn short_seed(len: usize) -> u64 {
    mix(len as u64 ^ SHORT_SALT)
}

/// splitmix64's increment (γ).
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

/// splitmix64: one state step and one mix per 8 filler bytes.
struct Filler(u64);

impl Filler {
    fn next(&mut self) -> [u8; 8] {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0).to_le_bytes()
    }
}

/// Word `k` (bytes `8k..8k + 8`) of the filler from `seed`, without generating the ones before.
fn filler_word(seed: u64, k: usize) -> [u8; 8] {
    mix(seed.wrapping_add(GAMMA.wrapping_mul(k as u64 + 1))).to_le_bytes()
}

/// Whether the filler's first, middle and last words (the last possibly partial) are those of
/// `seed`.
fn filler_spots_match(data: &[u8], seed: u64) -> bool {
    let words = data.len().div_ceil(8);
    [0, words / 2, words.saturating_sub(1)]
        .into_iter()
        .filter(|&k| k < words)
        .all(|k| {
            let at = k * 8;
            let end = (at + 8).min(data.len());
            data[at..end] == filler_word(seed, k)[..end - at]
        })
}

fn fill(buf: &mut [u8], seed: u64) {
    let mut g = Filler(seed);
    let mut chunks = buf.chunks_exact_mut(8);
    for c in &mut chunks {
        c.copy_from_slice(&g.next());
    }
    let rest = chunks.into_remainder();
    let n = rest.len();
    rest.copy_from_slice(&g.next()[..n]);
}

fn filler_matches(data: &[u8], seed: u64) -> bool {
    let mut g = Filler(seed);
    let mut chunks = data.chunks_exact(8);
    for c in &mut chunks {
        if c != g.next() {
            return false;
        }
    }
    let rest = chunks.remainder();
    rest == &g.next()[..rest.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZES: [usize; 12] = [0, 1, 7, 31, 32, 33, 35, 36, 37, 1400, 9000, MAX_V4_PAYLOAD];

    #[test]
    fn round_trip_at_every_interesting_size() {
        for &size in &SIZES {
            let d = expected(size, 7, 3, 42, 123_456_789);
            assert_eq!(d.len(), size);
            match decode(&d) {
                Ok(h) => {
                    assert!(size >= HEADER_LEN);
                    assert_eq!(
                        h,
                        Header {
                            stream: 7,
                            flow: 3,
                            seq: 42,
                            ts_ns: 123_456_789,
                            len: size as u32
                        }
                    );
                }
                Err(e) => {
                    assert!(size < HEADER_LEN, "size {size}: {e}");
                    assert_eq!(e, PayloadError::Short);
                }
            }
        }
    }

    #[test]
    fn short_filler_depends_only_on_length() {
        assert_eq!(expected(20, 1, 2, 3, 4), expected(20, 9, 9, 9, 9));
        assert_ne!(expected(20, 1, 2, 3, 4)[..19], expected(19, 1, 2, 3, 4)[..]);
    }

    #[test]
    fn filler_differs_between_flows_runs_and_sizes_and_not_between_seqs() {
        let a = expected(100, 1, 0, 0, 0);
        let b = expected(100, 1, 0, 1, 0);
        let c = expected(100, 1, 1, 0, 0);
        let d = expected(100, 2, 0, 0, 0);
        let e = expected(101, 1, 0, 0, 0);
        assert_eq!(a[HEADER_LEN..], b[HEADER_LEN..]);
        assert_ne!(a[HEADER_LEN..], c[HEADER_LEN..]);
        assert_ne!(a[HEADER_LEN..], d[HEADER_LEN..]);
        assert_ne!(a[HEADER_LEN..100], e[HEADER_LEN..100]);
    }

    #[test]
    fn filler_words_can_be_computed_directly() {
        let mut buf = vec![0u8; 203];
        fill(&mut buf, 99);
        for k in 0..buf.len().div_ceil(8) {
            let end = (k * 8 + 8).min(buf.len());
            assert_eq!(
                buf[k * 8..end],
                filler_word(99, k)[..end - k * 8],
                "word {k}"
            );
        }
        assert!(filler_spots_match(&buf, 99));
        assert!(!filler_spots_match(&buf, 98));
    }

    #[test]
    fn a_prepared_buffer_stamped_again_is_what_encode_writes() {
        for &size in &SIZES {
            let mut buf = vec![0u8; size];
            let p = prepare(&mut buf, 5, 6);
            assert!(p.fits(5, 6, size) && !p.fits(5, 7, size) && !p.fits(5, 6, size + 1));
            for seq in [0, 1, 1_000_000] {
                stamp(&mut buf, p, seq, seq * 3);
                assert_eq!(
                    buf,
                    expected(size, 5, 6, seq, seq * 3),
                    "size {size} seq {seq}"
                );
            }
        }
    }

    #[test]
    fn another_flows_filler_is_told_apart_from_corruption() {
        // Flow 3's header with flow 4's filler and a checksum made to match: the checksum
        // passes, the filler check does not.
        let mut d = expected(1400, 1, 3, 0, 0);
        let other = expected(1400, 1, 4, 0, 0);
        d[HEADER_LEN..].copy_from_slice(&other[HEADER_LEN..]);
        let sum = checksum(&d);
        d[CHECKSUM_AT..HEADER_LEN].copy_from_slice(&sum.to_le_bytes());
        assert_eq!(decode(&d), Err(PayloadError::Corrupt(Corruption::Filler)));
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        for &size in &[1usize, 31, 35, 36, 37, 200] {
            let good = expected(size, 1, 2, 3, 4);
            for i in 0..size {
                let mut bad = good.clone();
                bad[i] ^= 0x40;
                let r = decode(&bad);
                assert!(r.is_err(), "size {size}, byte {i} flip undetected");
                if size >= HEADER_LEN && i >= 4 {
                    assert!(
                        matches!(r, Err(PayloadError::Corrupt(_))),
                        "size {size} byte {i}: {r:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn flipped_bytes_in_a_large_datagram_are_detected() {
        let good = expected(MAX_V4_PAYLOAD, 1, 2, 3, 4);
        for i in (0..MAX_V4_PAYLOAD).step_by(997).chain([MAX_V4_PAYLOAD - 1]) {
            let mut bad = good.clone();
            bad[i] ^= 1;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
    }

    #[test]
    fn truncated_and_padded_datagrams_are_detected() {
        let good = expected(1400, 1, 2, 3, 4);
        for cut in [1399, 1000, 37, 36] {
            assert_eq!(
                decode(&good[..cut]),
                Err(PayloadError::Corrupt(Corruption::Length {
                    header: 1400,
                    actual: cut
                }))
            );
        }
        // Cut below the header: only the length-derived filler could make it valid, and it
        // does not.
        assert_eq!(
            decode(&good[..20]),
            Err(PayloadError::Corrupt(Corruption::ShortFiller))
        );
        let mut padded = good.clone();
        padded.push(0);
        assert!(matches!(
            decode(&padded),
            Err(PayloadError::Corrupt(Corruption::Length { .. }))
        ));
    }

    #[test]
    fn foreign_traffic_is_not_ours() {
        assert_eq!(decode(&[0u8; 64]), Err(PayloadError::NotOurs));
        assert_eq!(
            decode(b"GET / HTTP/1.1\r\nHost: example.invalid\r\n\r\n"),
            Err(PayloadError::NotOurs)
        );
    }

    #[test]
    fn checksum_catches_what_the_filler_cannot() {
        // At exactly HEADER_LEN there is no filler: only the checksum protects seq and flow.
        let mut d = expected(HEADER_LEN, 1, 2, 3, 4);
        d[16] ^= 1;
        assert_eq!(decode(&d), Err(PayloadError::Corrupt(Corruption::Checksum)));
    }

    #[test]
    fn clock_is_plausible() {
        // After 2020-01-01.
        assert!(now_ns() > 1_577_836_800_000_000_000);
    }
}
