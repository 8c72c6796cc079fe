//! What a process and the kernel hold, read from `/proc`: the cost side of a benchmark.
//!
//! A session's cost is spread over places no single counter shows: the daemon's own heap
//! (its resident set, `VmRSS`), the file descriptors of its upstream sockets, and kernel
//! memory. For the last, `/proc/net/sockstat`'s `UDP: inuse N mem P` gives the IPv4 UDP
//! sockets of this network namespace (IPv6 ones, such as udp-fanout's dual-stack upstream
//! sockets, are `UDP6: inuse` in `sockstat6`) and the pages that UDP receive queues hold,
//! machine-wide, charged against `net.ipv4.udp_mem`. A socket that has received keeps about
//! one page charged after its queue empties (its forward allocation), so that figure follows
//! the number of sockets that have seen traffic more than the traffic itself. The kernel
//! batches the page count per CPU (up to 1 MiB each on recent kernels), so it moves in steps
//! and a small difference means little. The memory of the socket objects themselves is not in it and is only seen in
//! the kernel's slab, `/proc/meminfo`'s `Slab:`, which is machine-wide and so only indicative
//! too. Each reading is a plain snapshot; the scenario takes differences.

use std::fs;

use anyhow::{Context as _, anyhow};
use serde::Serialize;

/// One reading.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct ProcSample {
    /// The process's resident set (`VmRSS`), in KiB.
    pub rss_kib: u64,
    /// Its open file descriptors.
    pub fds: u64,
    /// UDP sockets (IPv4 and IPv6) in use in the network namespace.
    pub udp_sockets: u64,
    /// Pages held by UDP sockets' receive queues.
    pub udp_mem_pages: u64,
    /// The kernel's slab memory, machine-wide, in KiB (0 if unreadable).
    pub slab_kib: u64,
}

/// Reads everything about process `pid`.
pub fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = read(&format!("/proc/{pid}/status"))?;
    let rss_kib =
        status_kib(&status, "VmRSS:").ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;
    let fds = fs::read_dir(format!("/proc/{pid}/fd"))
        .with_context(|| format!("listing /proc/{pid}/fd"))?
        .count() as u64;
    let sockstat = read("/proc/net/sockstat")?;
    let (udp4, udp_mem_pages) =
        udp_sockstat(&sockstat).ok_or_else(|| anyhow!("no UDP line in /proc/net/sockstat"))?;
    // Absent without IPv6 support, which means no IPv6 sockets.
    let udp6 = read("/proc/net/sockstat6")
        .ok()
        .and_then(|t| inuse(&t, "UDP6:"))
        .unwrap_or(0);
    let slab_kib = read("/proc/meminfo")
        .ok()
        .and_then(|m| status_kib(&m, "Slab:"))
        .unwrap_or(0);
    Ok(ProcSample {
        rss_kib,
        fds,
        udp_sockets: udp4 + udp6,
        udp_mem_pages,
        slab_kib,
    })
}

fn read(path: &str) -> anyhow::Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {path}"))
}

/// `KEY:   123 kB` → 123.
fn status_kib(text: &str, key: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(key))?;
    rest.split_whitespace().next()?.parse().ok()
}

/// `UDP: inuse 5 mem 12` → (5, 12).
fn udp_sockstat(text: &str) -> Option<(u64, u64)> {
    Some((inuse(text, "UDP:")?, word_after(text, "UDP:", "mem")?))
}

/// `PROTO: inuse N …` → N.
fn inuse(text: &str, proto: &str) -> Option<u64> {
    word_after(text, proto, "inuse")
}

/// The number after `key` on the line starting with `proto`.
fn word_after(text: &str, proto: &str, key: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(proto))?;
    let mut words = rest.split_whitespace();
    words.find(|w| *w == key)?;
    words.next()?.parse().ok()
}

/// The page size, in which sockstat counts memory.
pub fn page_size() -> u64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::PAGE_SIZE) {
        Ok(Some(p)) if p > 0 => p as u64,
        _ => 4096,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_proc_formats() {
        let status = "Name:\tudp-fanout\nVmPeak:\t  99 kB\nVmRSS:\t   12345 kB\n";
        assert_eq!(status_kib(status, "VmRSS:"), Some(12_345));
        assert_eq!(status_kib(status, "VmSwap:"), None);
        let sockstat = "sockets: used 10\nTCP: inuse 1 orphan 0 tw 0 alloc 1 mem 256\n\
                        UDP: inuse 7 mem 154\nUDPLITE: inuse 0\n";
        assert_eq!(udp_sockstat(sockstat), Some((7, 154)));
        assert_eq!(udp_sockstat("TCP: inuse 1\n"), None);
        assert_eq!(
            inuse("TCP6: inuse 0\nUDP6: inuse 12500\n", "UDP6:"),
            Some(12_500)
        );
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.fds >= 3);
        assert!(page_size() >= 4096);
    }
}
