//! Starting and stopping the userspace plane.
//!
//! Start-up is two steps: [`UserspacePlane::bind`] creates every socket and poll (everything
//! that can fail for a user-visible reason: ports in use, bad permissions, socket limits) before
//! any worker runs, so a failure leaves nothing behind and is reported as one line naming the
//! listener and address; [`BoundPlane::run`] then starts the workers. The daemon binds while it
//! still has its privileges and runs the workers after dropping them; [`UserspacePlane::start`]
//! does both at once for tests and embedders.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

use fanout_config::{Config, ListenerConfig, Mode};
use fanout_core::ListenerSnapshot;
use mio::unix::SourceFd;
use mio::{Interest, Poll, Waker};

use crate::listener::ListenerShared;
use crate::sys::socket::{self, SocketOptions};
use crate::worker::{self, WAKE, WorkerSetup};

/// Why the plane could not start.
#[derive(Debug, thiserror::Error)]
pub enum PlaneError {
    /// A listener's address could not be bound.
    #[error("listener \"{listener}\": cannot bind {addr}: {reason}")]
    Bind {
        /// Listener name.
        listener: String,
        /// The address.
        addr: SocketAddr,
        /// Human-readable cause.
        reason: String,
    },
    /// Any other socket or thread set-up failure.
    #[error("{what}: {source}")]
    Setup {
        /// What was being done.
        what: String,
        /// The OS error.
        source: io::Error,
    },
}

fn setup_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PlaneError {
    let what = what.into();
    move |source| PlaneError::Setup { what, source }
}

/// A userspace plane with every socket bound, workers not started yet.
pub struct BoundPlane {
    listeners: Vec<Arc<ListenerShared>>,
    setups: Vec<WorkerSetup>,
    wakers: Vec<Waker>,
    shutdown: Arc<AtomicBool>,
    workers: usize,
}

impl std::fmt::Debug for BoundPlane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundPlane")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl BoundPlane {
    /// Starts the worker threads.
    pub fn run(self) -> Result<UserspacePlane, PlaneError> {
        let BoundPlane {
            listeners,
            setups,
            wakers,
            shutdown,
            workers,
        } = self;
        let mut threads = Vec::with_capacity(workers);
        for s in setups {
            let name = format!("uf-worker-{}", s.id);
            threads.push(
                std::thread::Builder::new()
                    .name(name)
                    .spawn(move || worker::run(s))
                    .map_err(setup_err("spawning worker thread"))?,
            );
        }
        Ok(UserspacePlane {
            listeners,
            threads,
            wakers,
            shutdown,
            workers,
        })
    }
}

/// The running userspace plane.
#[derive(Debug)]
pub struct UserspacePlane {
    listeners: Vec<Arc<ListenerShared>>,
    threads: Vec<JoinHandle<()>>,
    wakers: Vec<Waker>,
    shutdown: Arc<AtomicBool>,
    workers: usize,
}

/// The number of workers `cfg` asks for (0 = one per CPU).
pub fn worker_count(cfg: &Config) -> usize {
    if cfg.dataplane.workers > 0 {
        cfg.dataplane.workers
    } else {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    }
}

impl UserspacePlane {
    /// Binds every userspace listener of `cfg` and starts the workers.
    pub fn start(cfg: &Config) -> Result<Self, PlaneError> {
        Self::bind(cfg)?.run()
    }

    /// The first half of [`start`](Self::start): binds every socket and prepares the workers
    /// without starting them, so that a privileged caller can drop privileges in between and
    /// the worker threads are born without them.
    pub fn bind(cfg: &Config) -> Result<BoundPlane, PlaneError> {
        let workers = worker_count(cfg);
        let opts = SocketOptions {
            recv_buffer: cfg.dataplane.recv_buffer,
            send_buffer: cfg.dataplane.send_buffer,
            reuse_port: true,
            pktinfo: false,
        };
        crate::limits::raise_nofile(cfg);
        // Kernel-plane listeners are served here too, as their slow path: whatever their
        // program hands to the kernel for local delivery (IP fragments, datagrams sent from
        // this host itself) reaches these sockets and is forwarded the same way.
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| bind_listener(l, workers, &opts, cfg.dataplane.gro).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let families = Families::of(cfg);
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut setups = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        for id in 0..workers {
            let WorkerPoll {
                poll,
                waker,
                listeners: mine,
            } = worker_poll(id, &listeners)?;
            wakers.push(waker);
            setups.push(WorkerSetup {
                id,
                workers,
                poll,
                listeners: mine,
                egress_v4: families.v4.then(|| egress(V4_ANY, &opts)).transpose()?,
                egress_v6: families.v6.then(|| egress(V6_ANY, &opts)).transpose()?,
                batch: cfg.dataplane.batch_size,
                send_timeout: cfg.dataplane.send_timeout,
                gso: cfg.dataplane.gso,
                busy_poll: cfg.dataplane.busy_poll,
                shutdown: Arc::clone(&shutdown),
            });
        }
        Ok(BoundPlane {
            listeners,
            setups,
            wakers,
            shutdown,
            workers,
        })
    }

    /// The listeners served, in configuration order.
    pub fn listeners(&self) -> &[Arc<ListenerShared>] {
        &self.listeners
    }

    /// The listener called `name`.
    pub fn listener(&self, name: &str) -> Option<&Arc<ListenerShared>> {
        self.listeners.iter().find(|l| l.name() == name)
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Counters of every listener.
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        self.listeners.iter().map(|l| l.snapshot()).collect()
    }

    /// Asks the workers to stop after their current batch.
    pub fn request_stop(&self) {
        self.shutdown.store(true, Ordering::Release);
        for w in &self.wakers {
            // A failed wake only delays the stop until the next datagram or poll timeout.
            let _ = w.wake();
        }
    }

    /// Stops the workers and waits for them.
    pub fn stop(mut self) {
        self.request_stop();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a worker thread panicked");
            }
        }
    }
}

impl Drop for UserspacePlane {
    fn drop(&mut self) {
        if !self.threads.is_empty() {
            self.request_stop();
            for t in self.threads.drain(..) {
                let _ = t.join();
            }
        }
    }
}

/// The address families of the downstreams: a worker gets an egress socket for each.
#[derive(Debug, Clone, Copy)]
struct Families {
    v4: bool,
    v6: bool,
}

impl Families {
    fn of(cfg: &Config) -> Self {
        let mut downstreams = cfg.listeners.iter().flat_map(|l| &l.downstreams);
        Families {
            v4: downstreams.clone().any(|d| d.addr.is_ipv4()),
            v6: downstreams.any(|d| d.addr.is_ipv6()),
        }
    }
}

const V4_ANY: SocketAddr = SocketAddr::new(IpAddr::V4(Ipv4Addr::UNSPECIFIED), 0);
const V6_ANY: SocketAddr = SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 0);

/// What a worker polls: its epoll instance, the waker that interrupts it, and its socket of
/// every listener.
struct WorkerPoll {
    poll: Poll,
    waker: Waker,
    listeners: Vec<(Arc<ListenerShared>, Arc<UdpSocket>)>,
}

/// Worker `id`'s [`WorkerPoll`], each listener socket registered with the listener's token.
fn worker_poll(id: usize, listeners: &[Arc<ListenerShared>]) -> Result<WorkerPoll, PlaneError> {
    let poll = Poll::new().map_err(setup_err("creating epoll instance"))?;
    let waker = Waker::new(poll.registry(), WAKE).map_err(setup_err("creating waker"))?;
    let mut mine = Vec::with_capacity(listeners.len());
    for (li, l) in listeners.iter().enumerate() {
        let sock = Arc::clone(&l.sockets()[id]);
        poll.registry()
            .register(
                &mut SourceFd(&sock.as_raw_fd()),
                worker::listener_token(li),
                Interest::READABLE,
            )
            .map_err(setup_err("registering listener socket"))?;
        mine.push((Arc::clone(l), sock));
    }
    Ok(WorkerPoll {
        poll,
        waker,
        listeners: mine,
    })
}

/// A worker's socket for sending to downstreams of `any`'s family (it receives nothing, so
/// its receive buffer is small).
fn egress(any: SocketAddr, opts: &SocketOptions) -> Result<UdpSocket, PlaneError> {
    socket::egress(
        any,
        &SocketOptions {
            recv_buffer: 4096,
            ..*opts
        },
    )
    .map(|(s, _)| s)
    .map_err(setup_err(format!(
        "creating {} egress socket",
        if any.is_ipv4() { "IPv4" } else { "IPv6" }
    )))
}

/// Binds one listener's worker sockets, refusing an address another process holds.
fn bind_listener(
    l: &ListenerConfig,
    workers: usize,
    opts: &SocketOptions,
    gro: bool,
) -> Result<ListenerShared, PlaneError> {
    let bind_err = |addr: SocketAddr, e: io::Error| PlaneError::Bind {
        listener: l.name.clone(),
        addr,
        reason: describe(&e),
    };
    // Answering clients of a wildcard listener from the address they wrote to needs the
    // destination address of every datagram.
    let opts = &SocketOptions {
        pktinfo: l.session.is_some_and(|s| s.reply) && l.bind.ip().is_unspecified(),
        ..*opts
    };
    // A kernel-plane listener's address may be routed through this host rather than
    // configured on it: its slow-path socket binds with IP_FREEBIND.
    let bind_fn = if l.mode == Mode::Userspace {
        socket::bind
    } else {
        socket::bind_freebind
    };
    if l.mode == Mode::Userspace {
        socket::probe_free(l.bind).map_err(|e| bind_err(l.bind, e))?;
    }
    let mut sockets = Vec::with_capacity(workers);
    let (first, sizes) = bind_fn(l.bind, opts).map_err(|e| bind_err(l.bind, e))?;
    let local = first
        .local_addr()
        .map_err(setup_err("reading bound address"))?;
    if gro && !socket::set_gro(&first, true) {
        tracing::debug!(listener = %l.name, "UDP GRO not available on this kernel");
    }
    sockets.push(Arc::new(first));
    for _ in 1..workers {
        let (s, _) = bind_fn(local, opts).map_err(|e| bind_err(local, e))?;
        if gro {
            socket::set_gro(&s, true);
        }
        sockets.push(Arc::new(s));
    }
    if opts.recv_buffer > 0 && sizes.recv < opts.recv_buffer {
        tracing::warn!(
            listener = %l.name,
            asked = opts.recv_buffer,
            got = sizes.recv,
            "receive buffer capped by net.core.rmem_max; raise it (sysctl) or run with CAP_NET_ADMIN"
        );
    }
    tracing::info!(
        listener = %l.name,
        addr = %local,
        distribution = l.distribution.as_str(),
        downstreams = l.downstreams.len(),
        workers,
        "listening"
    );
    Ok(ListenerShared::new(l, local, sockets))
}

/// A short lower-case description of a bind error (`address already in use`).
fn describe(e: &io::Error) -> String {
    match e.kind() {
        io::ErrorKind::AddrInUse => "address already in use".into(),
        io::ErrorKind::AddrNotAvailable => "address not available on this host".into(),
        io::ErrorKind::PermissionDenied => {
            "permission denied (ports below 1024 need CAP_NET_BIND_SERVICE)".into()
        }
        _ => e.to_string(),
    }
}
