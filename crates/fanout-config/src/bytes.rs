//! Byte sizes written as integers or with a unit (`8MiB`, `512KiB`, `1G`).
//!
//! Buffer sizes are easier to read and to get right with a unit, so the YAML takes both forms.
//! Every unit is binary (`K`, `KB` and `KiB` all mean 1024): these are memory sizes, and one
//! meaning per letter leaves nothing to guess. The parser is a serde visitor, so a bad size is
//! reported with its key path like any other type error.

use std::fmt;

use serde::de::{self, Deserializer, Visitor};

/// A size in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ByteSize(pub usize);

impl<'de> serde::Deserialize<'de> for ByteSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(ByteSizeVisitor)
    }
}

struct ByteSizeVisitor;

impl Visitor<'_> for ByteSizeVisitor {
    type Value = ByteSize;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a size in bytes, like 8388608 or \"8MiB\"")
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<ByteSize, E> {
        usize::try_from(v)
            .map(ByteSize)
            .map_err(|_| E::custom("size too large"))
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<ByteSize, E> {
        u64::try_from(v)
            .map_err(|_| E::custom("size cannot be negative"))
            .and_then(|v| self.visit_u64(v))
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<ByteSize, E> {
        parse(v).map(ByteSize).ok_or_else(|| {
            E::custom(format!(
                "invalid size \"{v}\" (use bytes, or a number with KiB, MiB or GiB)"
            ))
        })
    }
}

/// Parses `123`, `64KiB`, `8MiB`, `1GiB` (also `K`, `M`, `G`, `KB`, `MB`, `GB`, all binary).
pub(crate) fn parse(s: &str) -> Option<usize> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: usize = num.parse().ok()?;
    let mult: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(mult)
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn units() {
        assert_eq!(parse("123"), Some(123));
        assert_eq!(parse("8MiB"), Some(8 << 20));
        assert_eq!(parse("64 KiB"), Some(64 << 10));
        assert_eq!(parse("1G"), Some(1 << 30));
        assert_eq!(parse("1.5M"), None);
        assert_eq!(parse("MiB"), None);
        assert_eq!(parse("12 parsecs"), None);
    }
}
