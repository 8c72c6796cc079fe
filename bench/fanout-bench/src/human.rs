//! Numbers for people: thousands separators, percentages, latency percentiles.
//!
//! One copy for the command line's summaries, the sessions report and the comparison's
//! tables, so that the same figure reads the same in all of them (and a change of format is
//! made once). Durations in nanoseconds are `fanout_testkit`'s [`fmt_ns`], which the sink and
//! generator reports share.

use crate::stats::{LatencySummary, fmt_ns};

/// `1234567` → `1,234,567`.
pub fn thousands(v: u64) -> String {
    let digits = v.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// [`thousands`] with a sign: `-12500` → `-12,500`.
pub fn thousands_signed(v: i64) -> String {
    if v < 0 {
        format!("-{}", thousands(v.unsigned_abs()))
    } else {
        thousands(v.unsigned_abs())
    }
}

/// `part` in percent of `whole` (0 for nothing out of nothing).
pub fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        part as f64 * 100.0 / whole as f64
    }
}

/// The median, 99th and 99.9th percentiles and the largest sample, each as [`fmt_ns`] writes
/// it, in that order.
pub fn percentiles(l: &LatencySummary) -> [String; 4] {
    [l.p50_ns, l.p99_ns, l.p999_ns, l.max_ns].map(fmt_ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_grouped() {
        for (v, want) in [
            (0, "0"),
            (999, "999"),
            (1_000, "1,000"),
            (1_234_567, "1,234,567"),
        ] {
            assert_eq!(thousands(v), want);
        }
        assert_eq!(thousands_signed(-12_500), "-12,500");
    }

    #[test]
    fn percentages_of_nothing_are_zero() {
        assert_eq!(percent(1, 4), 25.0);
        assert_eq!(percent(3, 0), 0.0);
    }
}
