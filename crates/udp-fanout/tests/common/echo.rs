//! A UDP server whose health a test switches: it answers health probes, stops answering them
//! (a hung server: datagrams still arrive and are counted), or closes its socket (a dead one:
//! the kernel answers port-unreachable) and binds the same port again when revived.
//!
//! It tells probes from traffic by payload: a datagram equal to the probe payload (the
//! config's `send`, "ping" by default) is a probe; anything else is traffic, counted with the
//! time the last one arrived, so a test can say when traffic stopped reaching it.

use std::net::{SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// How the server behaves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Answers every probe.
    Answer = 0,
    /// Receives (and counts) everything, answers nothing.
    Silent = 1,
    /// Socket closed: the port is unreachable.
    Closed = 2,
}

#[derive(Debug)]
struct Shared {
    mode: AtomicU8,
    stop: AtomicBool,
    probes: AtomicU64,
    answered: AtomicU64,
    data: AtomicU64,
    last_data: Mutex<Option<Instant>>,
    /// Where traffic came from (the client's address when the kernel plane forwarded it).
    sources: Mutex<std::collections::BTreeSet<std::net::IpAddr>>,
    probe: Vec<u8>,
    reply: Option<Vec<u8>>,
}

/// A running server; stopped on drop.
#[derive(Debug)]
pub struct Echo {
    addr: SocketAddr,
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl Echo {
    /// A server on `addr` (port 0: any) answering the probe `"ping"` with itself.
    pub fn start(addr: &str) -> Echo {
        Echo::with(addr, b"ping", None)
    }

    /// A server on `addr` whose probes are `probe`, answered with `reply` (`None`: the probe
    /// itself).
    pub fn with(addr: &str, probe: &[u8], reply: Option<&[u8]>) -> Echo {
        let sock = bind(addr).unwrap_or_else(|e| panic!("binding {addr}: {e}"));
        let addr = sock.local_addr().expect("local address");
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Answer as u8),
            stop: AtomicBool::new(false),
            probes: AtomicU64::new(0),
            answered: AtomicU64::new(0),
            data: AtomicU64::new(0),
            last_data: Mutex::new(None),
            sources: Mutex::default(),
            probe: probe.to_vec(),
            reply: reply.map(<[u8]>::to_vec),
        });
        let s = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name(format!("echo-{}", addr.port()))
            .spawn(move || serve(Some(sock), addr, &s))
            .expect("starting the echo thread");
        Echo {
            addr,
            shared,
            thread: Some(thread),
        }
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Switches its behaviour; takes effect within a few milliseconds.
    pub fn set(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::Release);
        // Let the thread notice (its receive timeout is 5 ms) before the caller starts timing.
        std::thread::sleep(Duration::from_millis(15));
    }

    /// Traffic datagrams received (probes not counted).
    pub fn data(&self) -> u64 {
        self.shared.data.load(Ordering::Acquire)
    }

    /// Probes received.
    pub fn probes(&self) -> u64 {
        self.shared.probes.load(Ordering::Acquire)
    }

    /// Probes answered.
    pub fn answered(&self) -> u64 {
        self.shared.answered.load(Ordering::Acquire)
    }

    /// The addresses traffic came from.
    pub fn sources(&self) -> Vec<std::net::IpAddr> {
        let s = self.shared.sources.lock();
        s.unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect()
    }

    /// When the last traffic datagram arrived.
    pub fn last_data(&self) -> Option<Instant> {
        *self
            .shared
            .last_data
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A socket on `addr` whose receives wait 5 ms at most, so mode changes are seen.
fn bind(addr: impl std::net::ToSocketAddrs) -> std::io::Result<UdpSocket> {
    let s = UdpSocket::bind(addr)?;
    s.set_read_timeout(Some(Duration::from_millis(5)))?;
    Ok(s)
}

fn serve(mut sock: Option<UdpSocket>, addr: SocketAddr, s: &Shared) {
    let mut buf = vec![0u8; 65_536];
    while !s.stop.load(Ordering::Acquire) {
        let mode = s.mode.load(Ordering::Acquire);
        if mode == Mode::Closed as u8 {
            // Dropping the socket frees the port: the kernel answers port-unreachable.
            sock = None;
            std::thread::sleep(Duration::from_millis(2));
            continue;
        }
        let Some(so) = sock.as_ref() else {
            // Revived: the same port again (nothing else took it in the meantime on loopback
            // or in a namespace of the test's own).
            match bind(addr) {
                Ok(x) => sock = Some(x),
                Err(_) => std::thread::sleep(Duration::from_millis(5)),
            }
            continue;
        };
        let Ok((n, from)) = so.recv_from(&mut buf) else {
            continue;
        };
        if buf[..n] == s.probe[..] {
            s.probes.fetch_add(1, Ordering::AcqRel);
            if mode == Mode::Answer as u8 {
                let reply = s.reply.as_deref().unwrap_or(&buf[..n]);
                if so.send_to(reply, from).is_ok() {
                    s.answered.fetch_add(1, Ordering::AcqRel);
                }
            }
        } else {
            *s.last_data.lock().unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
            let mut src = s.sources.lock().unwrap_or_else(PoisonError::into_inner);
            src.insert(from.ip());
            drop(src);
            s.data.fetch_add(1, Ordering::AcqRel);
        }
    }
}
