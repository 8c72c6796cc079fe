//! The UDP prober's sockets: a small pool of unconnected sockets per address family, shared
//! by every UDP target.
//!
//! A connected socket per target would report port-unreachable as `ECONNREFUSED` by itself,
//! but 10,000 targets would need 10,000 descriptors. Instead every probe goes out of a pool
//! socket with `sendto`; a reply is matched to its probe by (socket, source address), and an
//! ICMP error by (socket, original destination) from the error queue (see [`super::sys`]).
//!
//! The pool starts with one socket per family, created when the first target of that family
//! is probed. It grows only when targets share a probe address (the same downstream in
//! several listeners): their replies would be indistinguishable on one socket, so each gets
//! a different one ([`UdpProbes::assign`]). So the pool holds as many sockets as the most
//! listeners sharing one downstream, usually one.

use std::collections::HashMap;
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::AsRawFd;
use std::sync::{Arc, Weak};

use nix::sys::socket::{
    AddressFamily, SockFlag, SockType, SockaddrStorage, bind, setsockopt, socket, sockopt,
};
use tokio::net::UdpSocket;
use tokio::task::AbortHandle;

use super::engine::{Shared, Spawner};
use super::sys::{self, Step};

/// Largest reply read in full (the rest of a longer datagram is cut, which only matters if
/// `expect` were longer).
const MAX_REPLY: usize = 65_536;

type Sock = UdpSocket;

/// The UDP sockets and which of them each probe address uses.
#[derive(Debug)]
pub struct UdpProbes {
    spawner: Spawner,
    v4: Vec<Arc<Sock>>,
    v6: Vec<Arc<Sock>>,
    /// Per probe address (as matched), the pool slots of the targets probing it.
    slots: HashMap<SocketAddr, Vec<usize>>,
    /// The readers, one per socket, ended when this is dropped.
    tasks: Vec<AbortHandle>,
    /// Whether a socket-creation failure was already logged, per family (v4, v6).
    warned: [bool; 2],
}

impl UdpProbes {
    /// No sockets yet: they are opened by the first probe that needs them.
    pub fn new(spawner: Spawner) -> UdpProbes {
        UdpProbes {
            spawner,
            v4: Vec::new(),
            v6: Vec::new(),
            slots: HashMap::new(),
            tasks: Vec::new(),
            warned: [false; 2],
        }
    }

    /// A pool slot for a new target probing `dest`: the lowest one no other target probing
    /// `dest` uses.
    pub fn assign(&mut self, dest: SocketAddr) -> usize {
        let used = self.slots.entry(sys::match_key(dest)).or_default();
        let slot = (0..).find(|s| !used.contains(s)).unwrap_or(0);
        used.push(slot);
        slot
    }

    /// Gives back the slot of a target that no longer probes `dest`.
    pub fn release(&mut self, dest: SocketAddr, slot: usize) {
        let key = sys::match_key(dest);
        if let Some(used) = self.slots.get_mut(&key) {
            used.retain(|&s| s != slot);
            if used.is_empty() {
                self.slots.remove(&key);
            }
        }
    }

    /// Sends one probe to `dest` from slot `slot`'s socket (opening it if needed).
    pub fn send(&mut self, slot: usize, dest: SocketAddr, payload: &[u8]) -> io::Result<()> {
        let sock = self.socket(dest.is_ipv6(), slot)?;
        sys::send_to(&*sock, payload, dest)
    }

    /// Sockets open, both families.
    pub fn sockets(&self) -> usize {
        self.v4.len() + self.v6.len()
    }

    fn socket(&mut self, v6: bool, slot: usize) -> io::Result<Arc<Sock>> {
        let pool = if v6 { &mut self.v6 } else { &mut self.v4 };
        while pool.len() <= slot {
            let sock = match open(v6, &self.spawner) {
                Ok(s) => Arc::new(s),
                Err(e) => {
                    let warned = &mut self.warned[usize::from(v6)];
                    if !std::mem::replace(warned, true) {
                        let family = if v6 { "IPv6" } else { "IPv4" };
                        tracing::error!("cannot open a {family} UDP health-check socket: {e}");
                    }
                    return Err(e);
                }
            };
            let index = pool.len();
            let task = self
                .spawner
                .spawn(|me| reader(me, index, Arc::clone(&sock)));
            self.tasks.push(task);
            pool.push(sock);
        }
        Ok(Arc::clone(&pool[slot]))
    }
}

impl Drop for UdpProbes {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// An unconnected, non-blocking UDP socket on an ephemeral port with the error queue on.
fn open(v6: bool, spawner: &Spawner) -> io::Result<Sock> {
    let (family, any) = if v6 {
        (
            AddressFamily::Inet6,
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, 0)),
        )
    } else {
        (
            AddressFamily::Inet,
            SocketAddr::from((Ipv4Addr::UNSPECIFIED, 0)),
        )
    };
    let flags = SockFlag::SOCK_NONBLOCK | SockFlag::SOCK_CLOEXEC;
    let fd = socket(family, SockType::Datagram, flags, None)?;
    if v6 {
        // IPv4 targets use the IPv4 pool; this one must not take IPv4 datagrams, whose
        // mapped sources would look like replies. Only settable before bind.
        setsockopt(&fd, sockopt::Ipv6V6Only, &true)?;
    }
    bind(fd.as_raw_fd(), &SockaddrStorage::from(any))?;
    sys::enable_recverr(&fd, v6)?;
    sys::grow_rcvbuf(&fd);
    let _rt = spawner.enter();
    UdpSocket::from_std(std::net::UdpSocket::from(fd))
}

/// Reads replies and errors off pool socket `slot` and hands them to the engine.
async fn reader(me: Weak<Shared>, slot: usize, sock: Arc<Sock>) {
    let mut buf = vec![0u8; MAX_REPLY];
    let mut quoted = [0u8; 64];
    let data = || {
        sys::step_of(sock.try_recv_from(&mut buf), |(n, from)| {
            let Some(shared) = me.upgrade() else {
                return Step::Stop;
            };
            let reply = buf.get(..n).unwrap_or(&[]);
            shared.lock().on_udp_reply(slot, from, reply);
            Step::More
        })
    };
    let errors = || {
        sys::error_step(&sock, &mut quoted, |e, _| {
            let Some(shared) = me.upgrade() else {
                return Step::Stop;
            };
            shared.lock().on_udp_error(slot, e.dest, e.errno);
            Step::More
        })
    };
    sys::serve(&sock, data, errors).await;
}
