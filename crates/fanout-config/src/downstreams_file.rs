//! `downstreams_file`: a listener's downstreams kept in a file of their own.
//!
//! A file lets a deploy tool (or a person with an editor) change a listener's set without
//! touching the config: the control plane reads it at start and on every reload, and watches
//! it. The format is one downstream a line:
//!
//! ```text
//! # syslog sinks
//! 10.0.0.1:5514          # weight 1
//! 10.0.0.2:5514 3
//! [2001:db8::7]:5514 2
//! ```
//!
//! `ip:port` (IPv6 as `[addr]:port`), then optionally a weight `1..=MAX_WEIGHT` (default 1).
//! `#` starts a comment, on a line of its own or after an entry; blank lines are ignored; an
//! empty file is an empty set. The same address twice is an error. One bad line rejects the
//! whole file (the caller keeps the set it had), and the error names `FILE:LINE` and the
//! reason, so a half-written file never becomes a half set.
//!
//! [`parse`] is pure, so the rules are tested without files; [`load`] reads (at most
//! [`MAX_FILE_SIZE`]) and parses; [`check_for`] applies the listener rules that need the
//! listener (no forwarding loop, the kernel plane's address family and map sizes over the
//! union with the static list).

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use fanout_core::select::Distribution;

use crate::model::{DownstreamConfig, ListenerConfig, MAX_WEIGHT, Mode, kernel_limits};
use crate::validate::{address_hint, unusable};

/// Largest file [`load`] reads: 16 MiB (some 700,000 lines of IPv4 entries).
pub const MAX_FILE_SIZE: u64 = 16 << 20;

/// A downstreams file that cannot be used: which file, which line if one, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The file, as the config names it (resolved).
    pub path: PathBuf,
    /// The line (from 1), when the problem is on one.
    pub line: Option<usize>,
    /// What is wrong, in words a user can act on.
    pub reason: String,
}

impl FileError {
    fn at(path: &Path, line: usize, reason: String) -> FileError {
        FileError {
            path: path.to_owned(),
            line: Some(line),
            reason,
        }
    }

    fn whole(path: &Path, reason: String) -> FileError {
        FileError {
            path: path.to_owned(),
            line: None,
            reason,
        }
    }
}

impl fmt::Display for FileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(n) => write!(f, "{}:{n}: {}", self.path.display(), self.reason),
            None => write!(f, "{}: {}", self.path.display(), self.reason),
        }
    }
}

impl std::error::Error for FileError {}

/// Parses the text of the downstreams file at `path` (named in errors only). The entries in
/// file order, or the first bad line.
pub fn parse(text: &str, path: &Path) -> Result<Vec<DownstreamConfig>, FileError> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let mut out = Vec::new();
    let mut seen: HashMap<SocketAddr, usize> = HashMap::new();
    for (i, raw) in text.lines().enumerate() {
        let line = i + 1;
        let content = raw.split_once('#').map_or(raw, |(c, _)| c).trim();
        if content.is_empty() {
            continue;
        }
        let d = entry(content).map_err(|r| FileError::at(path, line, r))?;
        if let Some(first) = seen.insert(d.addr, line) {
            return Err(FileError::at(
                path,
                line,
                format!("duplicate downstream {} (also line {first})", d.addr),
            ));
        }
        out.push(d);
    }
    Ok(out)
}

/// One entry: `ip:port [weight]`.
fn entry(s: &str) -> Result<DownstreamConfig, String> {
    let mut fields = s.split_ascii_whitespace();
    let addr = fields.next().unwrap_or_default();
    let weight = fields.next();
    if let Some(extra) = fields.next() {
        return Err(format!(
            "unexpected \"{extra}\": write one `ip:port [weight]` a line"
        ));
    }
    let addr: SocketAddr = addr
        .parse()
        .map_err(|_| format!("invalid address \"{addr}\"{}", address_hint(addr)))?;
    if let Some(reason) = unusable(addr, None) {
        return Err(reason);
    }
    let weight = match weight {
        None => 1,
        Some(w) => parse_weight(w)?,
    };
    Ok(DownstreamConfig { addr, weight })
}

/// A weight, `1..=MAX_WEIGHT`, worded as for the config's downstreams.
fn parse_weight(w: &str) -> Result<u32, String> {
    let n: i64 = w
        .parse()
        .map_err(|_| format!("invalid weight \"{w}\": use a whole number 1..={MAX_WEIGHT}"))?;
    if n < 1 {
        Err(format!("weight {n} is invalid: must be at least 1"))
    } else if n > i64::from(MAX_WEIGHT) {
        Err(format!(
            "weight {n} is invalid: must be at most {MAX_WEIGHT}"
        ))
    } else {
        u32::try_from(n).map_err(|_| format!("weight {n} is invalid"))
    }
}

/// Reads and parses the downstreams file at `path`. Read errors, a file larger than
/// [`MAX_FILE_SIZE`] and text that is not UTF-8 are errors naming the file.
pub fn load(path: &Path) -> Result<Vec<DownstreamConfig>, FileError> {
    let cannot = |e: std::io::Error| FileError::whole(path, format!("cannot read: {e}"));
    let file = std::fs::File::open(path).map_err(cannot)?;
    let mut buf = Vec::new();
    file.take(MAX_FILE_SIZE + 1)
        .read_to_end(&mut buf)
        .map_err(cannot)?;
    if buf.len() as u64 > MAX_FILE_SIZE {
        return Err(FileError::whole(
            path,
            format!(
                "larger than {} MiB, the most a downstreams file may hold",
                MAX_FILE_SIZE >> 20
            ),
        ));
    }
    let text = String::from_utf8(buf).map_err(|e| {
        let good = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = good.iter().filter(|&&b| b == b'\n').count() + 1;
        FileError::at(path, line, "not UTF-8 text".to_owned())
    })?;
    parse(&text, path)
}

/// The rules between listener `l` and its file's `entries` (read from `path`): no entry is
/// the listener itself, and on the kernel plane every entry is of the listener's address
/// family and the union with the static `downstreams:` fits the plane's maps. The caller
/// adds what the admin API added to the same limits.
pub fn check_for(
    l: &ListenerConfig,
    entries: &[DownstreamConfig],
    path: &Path,
) -> Result<(), FileError> {
    let fail = |reason: String| Err(FileError::whole(path, reason));
    for d in entries {
        if let Some(reason) = unusable(d.addr, Some(l.bind)) {
            return fail(format!("listener {}: {reason}", l.name));
        }
    }
    if l.mode == Mode::Userspace {
        return Ok(());
    }
    let mode = l.mode.as_str();
    if let Some(d) = entries
        .iter()
        .find(|d| d.addr.is_ipv4() != l.bind.is_ipv4())
    {
        return fail(format!(
            "{} is not of listener {}'s address family; mode: {mode} rewrites headers in place and cannot translate between IPv4 and IPv6",
            d.addr, l.name
        ));
    }
    let union: HashSet<SocketAddr> = l
        .downstreams
        .iter()
        .chain(entries)
        .map(|d| d.addr)
        .collect();
    let max = if l.distribution == Distribution::Mirror {
        kernel_limits::MIRROR.min(kernel_limits::DOWNSTREAMS)
    } else {
        kernel_limits::DOWNSTREAMS
    };
    if union.len() > max {
        return fail(format!(
            "listener {} would have {} downstreams with its downstreams: list; mode: {mode} takes at most {max}{}",
            l.name,
            union.len(),
            if l.distribution == Distribution::Mirror {
                " for a mirror"
            } else {
                ""
            }
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
