//! The `control` scenario's probe: one datagram a millisecond to the reloaded listener, and
//! two receivers that tell which downstream set served it.
//!
//! A reload's latency that matters is not how long the daemon's reload function runs but how
//! long from the operator's signal until datagrams go where the new set says. That needs a
//! flow whose destination visibly changes with the set, whatever downstream Maglev picks for
//! it. So every downstream of one set variant is an address on one receiver: the receivers
//! are bound to the wildcard address (`0.0.0.0:P`), and every `127.x.y.z:P` is local on
//! Linux's loopback, so all 10,000 addresses `127.101.a.b:PA` of variant A reach receiver A
//! and all `127.102.a.b:PB` of variant B reach receiver B. A reload from A to B has taken
//! effect when receiver B gets its first datagram.
//!
//! [`Receiver::arm`] before the trigger, [`Receiver::wait_first`] after: the arrival time of
//! the first datagram since arming. The probe sends every `interval` (1 ms), so a latency is
//! known to within one interval plus the receiver's wake-up (microseconds).

use std::io;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::Context as _;

/// How often a blocked receive looks at its stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Sends one 8-byte datagram (a sequence number) every interval to a target, from one socket
/// (one flow, so one worker and one Maglev slot).
#[derive(Debug)]
pub struct ProbeSender {
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    thread: Option<JoinHandle<io::Result<()>>>,
}

impl ProbeSender {
    /// Starts sending to `target` every `interval`.
    pub fn start(target: SocketAddr, interval: Duration) -> anyhow::Result<ProbeSender> {
        let sock = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).context("binding the probe")?;
        let stop = Arc::new(AtomicBool::new(false));
        let sent = Arc::new(AtomicU64::new(0));
        let (s, n) = (Arc::clone(&stop), Arc::clone(&sent));
        let thread = std::thread::Builder::new()
            .name("bench-probe".into())
            .spawn(move || send_loop(&sock, target, interval, &s, &n))
            .context("starting the probe")?;
        Ok(ProbeSender {
            stop,
            sent,
            thread: Some(thread),
        })
    }

    /// Datagrams sent so far.
    pub fn sent(&self) -> u64 {
        self.sent.load(Ordering::Acquire)
    }

    /// Stops sending; the number sent, or the error that stopped it.
    pub fn stop(mut self) -> anyhow::Result<u64> {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            t.join()
                .map_err(|_| anyhow::anyhow!("the probe thread panicked"))?
                .context("sending probes")?;
        }
        Ok(self.sent())
    }
}

impl Drop for ProbeSender {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn send_loop(
    sock: &UdpSocket,
    target: SocketAddr,
    interval: Duration,
    stop: &AtomicBool,
    sent: &AtomicU64,
) -> io::Result<()> {
    let mut next = Instant::now();
    let mut seq = 0u64;
    while !stop.load(Ordering::Acquire) {
        match sock.send_to(&seq.to_le_bytes(), target) {
            Ok(_) => {
                seq += 1;
                sent.store(seq, Ordering::Release);
            }
            // Loopback refuses nothing but a full buffer; a later probe goes instead.
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            // The daemon's ICMP-refused reply from a moment without a listener.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => return Err(e),
        }
        next += interval;
        let now = Instant::now();
        if next > now {
            std::thread::sleep(next - now);
        } else if now - next > interval * 10 {
            // Descheduled for a while: resume the cadence rather than send a burst.
            next = now;
        }
    }
    Ok(())
}

/// What a receiver's thread and its owner share.
#[derive(Debug, Default)]
struct Seen {
    received: AtomicU64,
    /// `Some(None)` when armed and nothing has arrived since; `Some(Some(t))` once something
    /// did; `None` when not armed.
    first: Mutex<Option<Option<Instant>>>,
    stop: AtomicBool,
}

/// A wildcard-bound socket that counts what arrives and times the first arrival after
/// [`arm`](Self::arm).
#[derive(Debug)]
pub struct Receiver {
    port: u16,
    seen: Arc<Seen>,
    thread: Option<JoinHandle<()>>,
}

impl Receiver {
    /// Binds `0.0.0.0:0` and starts receiving.
    pub fn start() -> anyhow::Result<Receiver> {
        let sock =
            UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).context("binding a probe receiver")?;
        sock.set_read_timeout(Some(POLL))?;
        let port = sock.local_addr()?.port();
        let seen = Arc::new(Seen::default());
        let s = Arc::clone(&seen);
        let thread = std::thread::Builder::new()
            .name("bench-probe-rx".into())
            .spawn(move || recv_loop(&sock, &s))
            .context("starting a probe receiver")?;
        Ok(Receiver {
            port,
            seen,
            thread: Some(thread),
        })
    }

    /// The port every `127.x.y.z` address of this receiver's set uses.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Datagrams received so far.
    pub fn received(&self) -> u64 {
        self.seen.received.load(Ordering::Acquire)
    }

    /// Forgets any earlier first arrival: the next datagram's arrival is recorded.
    pub fn arm(&self) {
        *lock(&self.seen.first) = Some(None);
    }

    /// Waits up to `timeout` for the first datagram since [`arm`](Self::arm); its arrival.
    pub fn wait_first(&self, timeout: Duration) -> Option<Instant> {
        let end = Instant::now() + timeout;
        loop {
            if let Some(Some(t)) = *lock(&self.seen.first) {
                return Some(t);
            }
            if Instant::now() >= end {
                return None;
            }
            std::thread::sleep(Duration::from_micros(200));
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.seen.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn recv_loop(sock: &UdpSocket, seen: &Seen) {
    let mut buf = [0u8; 2048];
    while !seen.stop.load(Ordering::Acquire) {
        if sock.recv_from(&mut buf).is_ok() {
            let now = Instant::now();
            seen.received.fetch_add(1, Ordering::AcqRel);
            let mut first = lock(&seen.first);
            if let Some(f @ None) = first.as_mut() {
                *f = Some(now);
            }
        }
    }
}

/// `n` distinct loopback addresses `127.net.a.b:port` (b from 1 to 254, then a counts up).
///
/// # Panics
///
/// If `n` exceeds [`MAX_SET`].
pub fn loopback_set(net: u8, n: u32, port: u16) -> Vec<SocketAddr> {
    assert!(n <= MAX_SET, "at most {MAX_SET} addresses per set");
    (0..n)
        .map(|i| {
            let (a, b) = ((i / 254) as u8, (i % 254 + 1) as u8);
            SocketAddr::from((Ipv4Addr::new(127, net, a, b), port))
        })
        .collect()
}

/// Most addresses [`loopback_set`] makes from one `127.net.0.0/16`.
pub const MAX_SET: u32 = 254 * 256;

/// A downstreams file listing `addrs`, one a line.
pub fn downstreams_file(addrs: &[SocketAddr]) -> String {
    let mut s = String::with_capacity(addrs.len() * 22 + 64);
    s.push_str("# generated by udp-fanout-bench control\n");
    for a in addrs {
        s.push_str(&a.to_string());
        s.push('\n');
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_are_distinct_loopback_addresses() {
        let s = loopback_set(101, 10_000, 7000);
        assert_eq!(s.len(), 10_000);
        assert_eq!(s[0], "127.101.0.1:7000".parse().unwrap());
        assert_eq!(s[253], "127.101.0.254:7000".parse().unwrap());
        assert_eq!(s[254], "127.101.1.1:7000".parse().unwrap());
        let distinct: std::collections::HashSet<_> = s.iter().collect();
        assert_eq!(distinct.len(), 10_000);
        assert!(s.iter().all(|a| a.ip().is_loopback()));
        let f = downstreams_file(&s[..2]);
        assert!(f.ends_with("127.101.0.1:7000\n127.101.0.2:7000\n"), "{f}");
    }

    #[test]
    fn a_wildcard_receiver_gets_any_loopback_address_and_times_the_first() {
        let rx = Receiver::start().unwrap();
        rx.arm();
        assert_eq!(rx.wait_first(Duration::from_millis(20)), None);
        let set = loopback_set(104, 300, rx.port());
        let probe = ProbeSender::start(set[299], Duration::from_millis(1)).unwrap();
        let t = rx
            .wait_first(Duration::from_secs(5))
            .expect("a probe arrived");
        assert!(t.elapsed() < Duration::from_secs(5));
        let sent = probe.stop().unwrap();
        assert!(sent >= 1);
        assert!(fanout_testkit::eventually(Duration::from_secs(2), || {
            rx.received() == sent
        }));
    }
}
