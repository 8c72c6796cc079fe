//! Starting and stopping the userspace plane, and changing its listeners while it runs.
//!
//! Start-up is two steps: [`UserspacePlane::bind`] creates every socket and poll (everything
//! that can fail for a user-visible reason: ports in use, bad permissions, socket limits) before
//! any worker runs, so a failure leaves nothing behind and is reported as one line naming the
//! listener and address; [`BoundPlane::run`] then starts the workers. The daemon binds while it
//! still has its privileges and runs the workers after dropping them; [`UserspacePlane::start`]
//! does both at once for tests and embedders.
//!
//! While the plane runs, listeners can be added and removed one at a time
//! ([`UserspacePlane::add_listener`], [`UserspacePlane::remove_listener`], in `runtime`), for
//! reload: the other listeners keep their sockets, sessions and counters and lose no datagram.
//! The listener list is an `ArcSwap`, so lookups and scrapes never wait for a change; the
//! sockets are bound the same way as at start (hence the socket options kept in the plane) and
//! reach the workers through a per-worker command channel and the worker's waker.

mod runtime;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Sender};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use arc_swap::ArcSwap;
use fanout_config::{Config, ListenerConfig, Mode};
use fanout_core::ListenerSnapshot;
use mio::unix::SourceFd;
use mio::{Interest, Poll, Waker};

use crate::limits;
use crate::listener::ListenerShared;
use crate::sys::socket::{self, SocketOptions};
use crate::worker::{self, Command, WAKE, WorkerSetup};

/// Why the plane could not start, or could not add or remove a listener.
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
    /// [`UserspacePlane::add_listener`]: a listener of that name is served already.
    #[error("listener \"{listener}\": already served by the userspace plane")]
    Exists {
        /// Listener name.
        listener: String,
    },
    /// [`UserspacePlane::remove_listener`]: no listener of that name is served.
    #[error("the userspace plane serves no listener \"{listener}\"")]
    Unknown {
        /// Listener name.
        listener: String,
    },
    /// [`UserspacePlane::add_listener`]: the workers are stopping (or one has stopped), so the
    /// listener was not added.
    #[error("listener \"{listener}\": the userspace plane's workers are stopping")]
    Stopped {
        /// Listener name.
        listener: String,
    },
}

fn setup_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> PlaneError {
    let what = what.into();
    move |source| PlaneError::Setup { what, source }
}

/// How the plane makes its sockets: kept from the config so that a listener added later is
/// bound exactly as those bound at start.
#[derive(Debug, Clone, Copy)]
struct SocketSetup {
    opts: SocketOptions,
    gro: bool,
}

/// What adding and removing listeners must know besides the list: the egress sockets' address
/// families every worker has, and the upstream sockets each listener may need (for
/// RLIMIT_NOFILE). Behind the mutex that also makes changes one at a time.
#[derive(Debug)]
struct Served {
    families: Families,
    upstream_fds: HashMap<String, u64>,
}

/// A userspace plane with every socket bound, workers not started yet.
pub struct BoundPlane {
    listeners: Vec<Arc<ListenerShared>>,
    setups: Vec<WorkerSetup>,
    wakers: Vec<Waker>,
    commands: Vec<Sender<Command>>,
    shutdown: Arc<AtomicBool>,
    workers: usize,
    sockets: SocketSetup,
    served: Served,
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
            commands,
            shutdown,
            workers,
            sockets,
            served,
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
            listeners: ArcSwap::from_pointee(listeners),
            threads,
            wakers,
            commands,
            shutdown,
            workers,
            sockets,
            served: Mutex::new(served),
        })
    }
}

/// The running userspace plane.
#[derive(Debug)]
pub struct UserspacePlane {
    /// Replaced whole by `add_listener` and `remove_listener`.
    listeners: ArcSwap<Vec<Arc<ListenerShared>>>,
    threads: Vec<JoinHandle<()>>,
    /// Index = worker, for stop and for commands.
    wakers: Vec<Waker>,
    commands: Vec<Sender<Command>>,
    shutdown: Arc<AtomicBool>,
    workers: usize,
    sockets: SocketSetup,
    served: Mutex<Served>,
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
        let sockets = SocketSetup {
            opts: SocketOptions {
                recv_buffer: cfg.dataplane.recv_buffer,
                send_buffer: cfg.dataplane.send_buffer,
                reuse_port: true,
                pktinfo: false,
            },
            gro: cfg.dataplane.gro,
        };
        let upstream_fds: HashMap<String, u64> = cfg
            .listeners
            .iter()
            .map(|l| (l.name.clone(), limits::upstream_sockets_needed(l)))
            .collect();
        limits::raise_nofile(upstream_fds.values().sum());
        // Kernel-plane listeners are served here too, as their slow path: whatever their
        // program hands to the kernel for local delivery (IP fragments, datagrams sent from
        // this host itself) reaches these sockets and is forwarded the same way.
        let listeners = cfg
            .listeners
            .iter()
            .map(|l| bind_listener(l, workers, &sockets).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        let families = Families::of(cfg);
        let shutdown = Arc::new(AtomicBool::new(false));
        let mut setups = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        let mut commands = Vec::with_capacity(workers);
        for id in 0..workers {
            let WorkerPoll {
                poll,
                waker,
                listeners: mine,
            } = worker_poll(id, &listeners)?;
            let (egress_v4, egress_v6) = egress_sockets(families, &sockets.opts)?;
            let (tx, rx) = mpsc::channel();
            wakers.push(waker);
            commands.push(tx);
            setups.push(WorkerSetup {
                id,
                workers,
                poll,
                listeners: mine,
                egress_v4,
                egress_v6,
                batch: cfg.dataplane.batch_size,
                send_timeout: cfg.dataplane.send_timeout,
                gso: cfg.dataplane.gso,
                busy_poll: cfg.dataplane.busy_poll,
                shutdown: Arc::clone(&shutdown),
                commands: rx,
            });
        }
        Ok(BoundPlane {
            listeners,
            setups,
            wakers,
            commands,
            shutdown,
            workers,
            sockets,
            served: Served {
                families,
                upstream_fds,
            },
        })
    }

    /// The listeners served now: those of the configuration in its order, then those added
    /// since, in the order they were added. A snapshot: a later change does not alter it.
    pub fn listeners(&self) -> Arc<Vec<Arc<ListenerShared>>> {
        self.listeners.load_full()
    }

    /// The listener called `name`, if it is served now.
    pub fn listener(&self, name: &str) -> Option<Arc<ListenerShared>> {
        self.listeners
            .load()
            .iter()
            .find(|l| l.name() == name)
            .cloned()
    }

    /// Number of worker threads.
    pub fn workers(&self) -> usize {
        self.workers
    }

    /// Counters of every listener.
    pub fn snapshot(&self) -> Vec<ListenerSnapshot> {
        self.listeners.load().iter().map(|l| l.snapshot()).collect()
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
        cfg.listeners
            .iter()
            .map(Families::of_listener)
            .fold(Families::NONE, Families::with)
    }

    fn of_listener(l: &ListenerConfig) -> Self {
        Families {
            v4: l.downstreams.iter().any(|d| d.addr.is_ipv4()),
            v6: l.downstreams.iter().any(|d| d.addr.is_ipv6()),
        }
    }

    const NONE: Families = Families {
        v4: false,
        v6: false,
    };

    /// Both together.
    fn with(self, other: Families) -> Self {
        Families {
            v4: self.v4 || other.v4,
            v6: self.v6 || other.v6,
        }
    }

    /// Those of `self` that `have` lacks.
    fn without(self, have: Families) -> Self {
        Families {
            v4: self.v4 && !have.v4,
            v6: self.v6 && !have.v6,
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
        let sock = l.socket(id).ok_or_else(|| no_socket(l, id))?;
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

/// The error for a listener without a socket for worker `id` (one that was closed).
fn no_socket(l: &ListenerShared, id: usize) -> PlaneError {
    PlaneError::Setup {
        what: format!("listener \"{}\": socket of worker {id}", l.name()),
        source: io::ErrorKind::NotFound.into(),
    }
}

/// One worker's egress sockets of `families`.
fn egress_sockets(
    families: Families,
    opts: &SocketOptions,
) -> Result<(Option<UdpSocket>, Option<UdpSocket>), PlaneError> {
    Ok((
        families.v4.then(|| egress(V4_ANY, opts)).transpose()?,
        families.v6.then(|| egress(V6_ANY, opts)).transpose()?,
    ))
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

/// Binds one listener's worker sockets, refusing an address another process holds. At start
/// and for a listener added later alike, so both fail the same way.
fn bind_listener(
    l: &ListenerConfig,
    workers: usize,
    setup: &SocketSetup,
) -> Result<ListenerShared, PlaneError> {
    let (opts, gro) = (&setup.opts, setup.gro);
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
    let bind_fn: BindFn = if l.mode == Mode::Userspace {
        socket::bind
    } else {
        socket::bind_freebind
    };
    if l.mode == Mode::Userspace {
        socket::probe_free(l.bind).map_err(|e| bind_err(l.bind, e))?;
    }
    let mut sockets = Vec::with_capacity(workers);
    let (first, sizes) = bind_first(l.bind, bind_fn, opts).map_err(|e| bind_err(l.bind, e))?;
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

/// A socket-binding function of `socket`.
type BindFn = fn(SocketAddr, &SocketOptions) -> io::Result<(UdpSocket, socket::BufferSizes)>;

/// The first socket of a listener on `addr`. With port 0 it binds without SO_REUSEPORT and
/// shares the port only once bound ([`socket::share_port`]): the port the kernel picks is then
/// one no other SO_REUSEPORT group of this user holds (another listener, another udp-fanout),
/// which it would otherwise join, sharing its traffic.
fn bind_first(
    addr: SocketAddr,
    bind_fn: BindFn,
    opts: &SocketOptions,
) -> io::Result<(UdpSocket, socket::BufferSizes)> {
    if addr.port() != 0 || !opts.reuse_port {
        return bind_fn(addr, opts);
    }
    let exclusive = SocketOptions {
        reuse_port: false,
        ..*opts
    };
    let (s, sizes) = bind_fn(addr, &exclusive)?;
    socket::share_port(&s)?;
    Ok((s, sizes))
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
