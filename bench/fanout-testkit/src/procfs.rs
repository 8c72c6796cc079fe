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

/// The fields of a `/proc/…/stat` file after the command name (field 3, the state, first):
/// the name may hold spaces and parentheses, so the split starts after its last `)`.
pub fn stat_fields_at(path: &str) -> Option<Vec<String>> {
    let text = fs::read_to_string(path).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// [`stat_fields_at`] of process `pid`.
pub fn stat_fields(pid: u32) -> Option<Vec<String>> {
    stat_fields_at(&format!("/proc/{pid}/stat"))
}

/// CPU time of a task in clock ticks, from its stat fields 14-17.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Ticks {
    /// utime + stime: the task's own threads (exited ones included).
    pub own: u64,
    /// cutime + cstime: its reaped children.
    pub children: u64,
    /// utime + cutime.
    pub user: u64,
    /// stime + cstime.
    pub system: u64,
}

/// [`Ticks`] of the task whose stat file is `path`; `None` once it is gone.
pub fn ticks_at(path: &str) -> Option<Ticks> {
    let f = stat_fields_at(path)?;
    // Fields 14-17 (utime, stime, cutime, cstime) are at 11..15 counting from field 3.
    let t: Vec<u64> = f
        .get(11..15)?
        .iter()
        .filter_map(|v| v.parse().ok())
        .collect();
    match t.as_slice() {
        [u, s, cu, cs] => Some(Ticks {
            own: u + s,
            children: cu + cs,
            user: u + cu,
            system: s + cs,
        }),
        _ => None,
    }
}

/// [`Ticks`] of process `pid`.
pub fn ticks(pid: u32) -> Option<Ticks> {
    ticks_at(&format!("/proc/{pid}/stat"))
}

/// Clock ticks per second (`CLK_TCK`), in which `/proc` counts CPU time.
pub fn clock_ticks() -> f64 {
    use nix::unistd::{SysconfVar, sysconf};
    match sysconf(SysconfVar::CLK_TCK) {
        Ok(Some(t)) if t > 0 => t as f64,
        _ => 100.0,
    }
}

/// All descendants of `roots` (not the roots themselves), from every process's parent PID.
pub fn descendants(roots: &[u32]) -> Vec<u32> {
    let mut children: std::collections::HashMap<u32, Vec<u32>> = Default::default();
    if let Ok(dir) = fs::read_dir("/proc") {
        for e in dir.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            if let Some(ppid) = stat_fields(pid).and_then(|f| f.get(1)?.parse::<u32>().ok()) {
                children.entry(ppid).or_default().push(pid);
            }
        }
    }
    let mut out = Vec::new();
    let mut todo: Vec<u32> = roots.to_vec();
    while let Some(p) = todo.pop() {
        for &c in children.get(&p).map(Vec::as_slice).unwrap_or_default() {
            if !out.contains(&c) {
                out.push(c);
                todo.push(c);
            }
        }
    }
    out
}

/// Peak resident memory (`VmHWM`) of `pid` in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    status_kib(
        &fs::read_to_string(format!("/proc/{pid}/status")).ok()?,
        "VmHWM:",
    )
}

/// The all-CPUs line of `/proc/stat`: user nice system idle iowait irq softirq steal …, in
/// clock ticks.
pub fn all_cpus_jiffies() -> Option<Vec<u64>> {
    let text = fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().find(|l| l.starts_with("cpu "))?;
    Some(
        line.split_whitespace()
            .skip(1)
            .filter_map(|x| x.parse().ok())
            .collect(),
    )
}

/// How many sockets of a `/proc/net/udp` table are bound to local port `port` (any address).
pub fn count_bound(table: &str, port: u16) -> usize {
    let want = format!("{port:04X}");
    table
        .lines()
        .skip(1)
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .and_then(|local| local.split(':').nth(1))
                .is_some_and(|p| p == want)
        })
        .count()
}

/// IPv4 UDP sockets bound to `port` in the network namespace of the calling thread.
pub fn udp_bound(port: u16) -> anyhow::Result<usize> {
    let text = read("/proc/thread-self/net/udp")?;
    Ok(count_bound(&text, port))
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
    fn reads_stat_files_and_socket_tables() {
        let me = std::process::id();
        // This thread is running while it reads its own state; the process's main thread
        // (what /proc/PID/stat shows) waits for the tests.
        assert_eq!(stat_fields_at("/proc/thread-self/stat").unwrap()[0], "R");
        assert!(stat_fields(me).is_some());
        assert!(ticks(me).is_some() && ticks_at("/proc/self/stat").is_some());
        assert!(peak_rss_kib(me).unwrap() > 0);
        assert!(all_cpus_jiffies().unwrap().len() >= 8);
        assert!(clock_ticks() > 0.0);
        let mut sleeper = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        assert!(descendants(&[me]).contains(&sleeper.id()));
        let _ = sleeper.kill();
        let _ = sleeper.wait();
        let table = "  sl  local_address rem_address   st\n\
                     0: 00000000:14BE 00000000:0000 07\n\
                     1: 0100007F:14BE 00000000:0000 07\n\
                     2: 0100007F:0035 00000000:0000 07\n";
        assert_eq!(count_bound(table, 5310), 2);
        let s = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        assert_eq!(udp_bound(s.local_addr().unwrap().port()).unwrap(), 1);
    }

    #[test]
    fn samples_this_process() {
        let s = sample(std::process::id()).unwrap();
        assert!(s.rss_kib > 0);
        assert!(s.fds >= 3);
        assert!(page_size() >= 4096);
    }
}
