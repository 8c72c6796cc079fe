//! Accounting shared by the sink and the generator's reply side: which sequence numbers of a
//! flow were seen (for duplicates, reordering and loss) and latency distributions.
//!
//! Both run inside a hot receive loop, so every structure here is updated in O(1) without
//! allocation in the common case, and all of them are bounded in memory no matter what
//! arrives: a benchmark that fails because its own bookkeeping exhausted memory would measure
//! nothing.

use std::collections::VecDeque;
use std::time::Duration;

use hdrhistogram::Histogram;
use serde::Serialize;

/// Latencies above this (one hour) are clamped: only a wall-clock step produces them, and an
/// unbounded value would make the auto-resizing histogram grow for nothing.
const LATENCY_CLAMP_NS: u64 = 3_600_000_000_000;

/// Serializes a duration as fractional seconds, the unit scripts reading the JSON reports
/// expect (serde's own form, `{secs, nanos}`, is awkward to consume).
pub fn ser_secs<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// [`ser_secs`] for an optional duration (`null` when absent).
pub fn ser_opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    match d {
        Some(d) => s.serialize_some(&d.as_secs_f64()),
        None => s.serialize_none(),
    }
}

/// A duration in nanoseconds for people: `999 ns`, `25.1 µs`, `1.50 ms`, `2.000 s`.
pub fn fmt_ns(ns: u64) -> String {
    match ns {
        0..1_000 => format!("{ns} ns"),
        1_000..1_000_000 => format!("{:.1} µs", ns as f64 / 1e3),
        1_000_000..1_000_000_000 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.3} s", ns as f64 / 1e9),
    }
}

/// Percentiles of a latency distribution, in nanoseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Number of samples.
    pub count: u64,
    /// Smallest sample.
    pub min_ns: u64,
    /// Arithmetic mean.
    pub mean_ns: f64,
    /// Median.
    pub p50_ns: u64,
    /// 90th percentile.
    pub p90_ns: u64,
    /// 99th percentile.
    pub p99_ns: u64,
    /// 99.9th percentile.
    pub p999_ns: u64,
    /// Largest sample.
    pub max_ns: u64,
}

/// A latency histogram, in nanoseconds. Creation of an HDR histogram can fail only for an
/// invalid precision, which is a constant here; rather than panicking on an impossible
/// error, a histogram that could not be made records nothing.
///
/// Public so that the results of several runs can be merged ([`Latency::merge`]) into exact
/// percentiles of the whole, which percentile summaries cannot be.
#[derive(Debug, Clone, PartialEq)]
pub struct Latency(Option<Histogram<u64>>);

impl Latency {
    /// `sigfig` significant decimal digits (1..=5): 3 for aggregates, 2 for the many per-flow
    /// histograms, where 1% resolution keeps each at a few KiB.
    pub fn new(sigfig: u8) -> Self {
        Latency(Histogram::new(sigfig).ok())
    }

    /// Adds the samples of `other`.
    pub fn merge(&mut self, other: &Latency) {
        if let (Some(h), Some(o)) = (&mut self.0, &other.0) {
            // Both grow to fit, so adding can only fail on allocation; the samples are
            // then lost rather than the run.
            let _ = h.add(o);
        }
    }

    /// Records one sample.
    pub fn record(&mut self, ns: u64) {
        if let Some(h) = &mut self.0 {
            let ns = ns.min(LATENCY_CLAMP_NS);
            // `record` grows the histogram to fit (it starts tiny, so that flows cost memory
            // in proportion to the latencies they see); `saturating_record` would not, and
            // is only the fallback should growing fail.
            if h.record(ns).is_err() {
                h.saturating_record(ns);
            }
        }
    }

    /// Percentiles of everything recorded, `None` when empty.
    pub fn summary(&self) -> Option<LatencySummary> {
        let h = self.0.as_ref()?;
        if h.is_empty() {
            return None;
        }
        Some(LatencySummary {
            count: h.len(),
            min_ns: h.min(),
            mean_ns: h.mean(),
            p50_ns: h.value_at_quantile(0.5),
            p90_ns: h.value_at_quantile(0.9),
            p99_ns: h.value_at_quantile(0.99),
            p999_ns: h.value_at_quantile(0.999),
            max_ns: h.max(),
        })
    }
}

/// What [`SeqWindow::mark`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mark {
    /// First time this sequence number is seen.
    New,
    /// Seen before.
    Duplicate,
    /// Below the window: too old to tell.
    TooOld,
}

/// Default window: 2^24 sequence numbers (2 MiB of bits) per flow.
pub(crate) const DEFAULT_WINDOW_BITS: u64 = 1 << 24;

/// The set of sequence numbers seen on one flow, as a bitmap that grows with the highest
/// sequence number and slides forward past `max_bits`.
///
/// Memory is one bit per sequence number up to the highest seen (125 KiB per million
/// datagrams), never more than `max_bits / 8` bytes per flow. A datagram older than the window
/// cannot be checked for duplication any more; it is reported as [`Mark::TooOld`] and counted
/// apart, so a result that depended on it is visibly qualified rather than silently wrong.
#[derive(Debug, Clone)]
pub(crate) struct SeqWindow {
    /// Sequence number of bit 0 of `words[0]`; a multiple of 64.
    base: u64,
    words: VecDeque<u64>,
    max_words: u64,
}

impl SeqWindow {
    pub(crate) fn new(max_bits: u64) -> Self {
        SeqWindow {
            base: 0,
            words: VecDeque::new(),
            max_words: max_bits.div_ceil(64).max(1),
        }
    }

    pub(crate) fn mark(&mut self, seq: u64) -> Mark {
        if seq < self.base {
            return Mark::TooOld;
        }
        let mut word = (seq - self.base) / 64;
        if word >= self.max_words {
            let shift = word - self.max_words + 1;
            if shift >= self.words.len() as u64 {
                self.words.clear();
            } else {
                // shift < words.len(), which is a usize.
                self.words.drain(..shift as usize);
            }
            self.base += shift * 64;
            word -= shift;
        }
        // word < max_words, and max_words bits were allocatable when the window was made.
        let word = word as usize;
        if word >= self.words.len() {
            self.words.resize(word + 1, 0);
        }
        let bit = 1u64 << (seq % 64);
        let w = &mut self.words[word];
        if *w & bit != 0 {
            Mark::Duplicate
        } else {
            *w |= bit;
            Mark::New
        }
    }
}

/// Delivery statistics of one flow of one generator run, as seen by one sink port or by the
/// whole sink.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowStats {
    /// The generator run.
    pub stream: u32,
    /// The flow within the run.
    pub flow: u32,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Datagrams whose sequence number had already been received.
    pub duplicates: u64,
    /// Distinct datagrams that arrived after one with a higher sequence number.
    pub reordered: u64,
    /// `highest_seq + 1 - unique`: datagrams not (yet) received below the highest one. Loss
    /// after the highest received sequence number cannot be seen here; compare with the
    /// generator's count for that.
    pub lost: u64,
    /// Datagrams too far behind the duplicate-tracking window to be checked; counted as unique.
    pub late: u64,
    /// Highest sequence number received.
    pub highest_seq: Option<u64>,
    /// Payload bytes of all datagrams, duplicates included.
    pub bytes: u64,
    /// Smallest datagram.
    pub min_size: usize,
    /// Largest datagram.
    pub max_size: usize,
    /// One-way latency of the unique datagrams.
    pub latency: Option<LatencySummary>,
}

/// The live counterpart of [`FlowStats`].
#[derive(Debug, Clone)]
pub(crate) struct FlowTracker {
    seen: SeqWindow,
    highest: Option<u64>,
    unique: u64,
    duplicates: u64,
    reordered: u64,
    late: u64,
    bytes: u64,
    min_size: usize,
    max_size: usize,
    latency: Latency,
}

impl FlowTracker {
    pub(crate) fn new(window_bits: u64) -> Self {
        FlowTracker {
            seen: SeqWindow::new(window_bits),
            highest: None,
            unique: 0,
            duplicates: 0,
            reordered: 0,
            late: 0,
            bytes: 0,
            min_size: usize::MAX,
            max_size: 0,
            latency: Latency::new(2),
        }
    }

    /// Accounts one datagram; returns what the sequence window said about it.
    pub(crate) fn record(&mut self, seq: u64, size: usize, latency_ns: u64) -> Mark {
        self.bytes += size as u64;
        self.min_size = self.min_size.min(size);
        self.max_size = self.max_size.max(size);
        let mark = self.seen.mark(seq);
        match mark {
            Mark::Duplicate => {
                self.duplicates += 1;
                return mark;
            }
            Mark::TooOld => self.late += 1,
            Mark::New => {}
        }
        self.unique += 1;
        self.latency.record(latency_ns);
        match self.highest {
            Some(h) if seq < h => self.reordered += 1,
            _ => self.highest = Some(seq),
        }
        mark
    }

    pub(crate) fn stats(&self, stream: u32, flow: u32) -> FlowStats {
        FlowStats {
            stream,
            flow,
            unique: self.unique,
            duplicates: self.duplicates,
            reordered: self.reordered,
            lost: self
                .highest
                .map_or(0, |h| (h + 1).saturating_sub(self.unique)),
            late: self.late,
            highest_seq: self.highest,
            bytes: self.bytes,
            min_size: if self.min_size == usize::MAX {
                0
            } else {
                self.min_size
            },
            max_size: self.max_size,
            latency: self.latency.summary(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_histograms_have_the_percentiles_of_the_whole() {
        let (mut a, mut b) = (Latency::new(3), Latency::new(3));
        for v in 1..=500 {
            a.record(v * 1_000);
        }
        for v in 501..=1_000 {
            b.record(v * 1_000);
        }
        a.merge(&b);
        let s = a.summary().unwrap();
        assert_eq!(s.count, 1_000);
        assert!((499_000..=501_000).contains(&s.p50_ns), "{s:?}");
        assert!(s.max_ns >= 1_000_000);
    }

    #[test]
    fn latency_formatting_picks_units() {
        assert_eq!(fmt_ns(999), "999 ns");
        assert_eq!(fmt_ns(25_100), "25.1 µs");
        assert_eq!(fmt_ns(1_500_000), "1.50 ms");
        assert_eq!(fmt_ns(2_000_000_000), "2.000 s");
    }

    #[test]
    fn window_finds_duplicates_and_grows() {
        let mut w = SeqWindow::new(DEFAULT_WINDOW_BITS);
        assert_eq!(w.mark(5), Mark::New);
        assert_eq!(w.mark(5), Mark::Duplicate);
        assert_eq!(w.mark(1_000_000), Mark::New);
        assert_eq!(w.mark(0), Mark::New);
        assert_eq!(w.mark(1_000_000), Mark::Duplicate);
    }

    #[test]
    fn window_slides_and_reports_too_old() {
        let mut w = SeqWindow::new(128);
        for s in 0..128 {
            assert_eq!(w.mark(s), Mark::New);
        }
        assert_eq!(w.mark(200), Mark::New);
        // The window now covers 128..256: both old words were dropped.
        assert_eq!(w.mark(3), Mark::TooOld);
        assert_eq!(w.mark(127), Mark::TooOld);
        assert_eq!(w.mark(200), Mark::Duplicate);
        assert_eq!(w.mark(130), Mark::New);
        assert_eq!(w.mark(250), Mark::New);
        // One word further drops only the oldest word.
        assert_eq!(w.mark(256), Mark::New);
        assert_eq!(w.mark(130), Mark::TooOld);
        assert_eq!(w.mark(250), Mark::Duplicate);
        // A jump far ahead empties the window without walking through it.
        assert_eq!(w.mark(u64::MAX), Mark::New);
        assert_eq!(w.mark(u64::MAX), Mark::Duplicate);
        assert_eq!(w.mark(200), Mark::TooOld);
        assert!(w.words.len() <= 2);
    }

    #[test]
    fn tracker_counts_reorder_duplicates_and_loss() {
        let mut t = FlowTracker::new(DEFAULT_WINDOW_BITS);
        for seq in [0, 1, 3, 2, 3, 6] {
            t.record(seq, 100, 1_000);
        }
        let s = t.stats(1, 2);
        assert_eq!(s.unique, 5);
        assert_eq!(s.duplicates, 1);
        assert_eq!(s.reordered, 1);
        assert_eq!(s.highest_seq, Some(6));
        assert_eq!(s.lost, 2);
        assert_eq!(s.bytes, 600);
        assert_eq!((s.min_size, s.max_size), (100, 100));
        let lat = s.latency.unwrap();
        assert_eq!(lat.count, 5);
        assert!(lat.p50_ns >= 990 && lat.p50_ns <= 1_010, "{lat:?}");
    }

    #[test]
    fn empty_latency_has_no_summary() {
        assert!(Latency::new(3).summary().is_none());
        let mut l = Latency::new(3);
        l.record(u64::MAX);
        assert_eq!(l.summary().unwrap().count, 1);
    }
}
