//! An in-memory [`AdminOps`] and a background server for it: what the API's own tests and
//! the `udp-fanout ctl` tests run against, so both exercise the real router over a real
//! socket without data planes.
//!
//! It follows the contract's rules in miniature (added downstreams come from `api`, a removal
//! drains unless `now`), and records each call so a test can check what reached it. It is one
//! copy for every crate's tests, which is why it lives here rather than in a test file.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;

use axum::Router;
use tokio::sync::oneshot;

use super::ops::{AdminError, AdminOps};
use super::types::{DownstreamState, DownstreamView, HealthStatus, ListenerView, SourceKind};

/// An [`AdminOps`] over a list of listeners kept in memory.
#[derive(Debug)]
pub struct FakeOps {
    listeners: Mutex<Vec<ListenerView>>,
    live: AtomicBool,
    ready: AtomicBool,
    /// What the next reloads fail with; `None`: they succeed.
    reload_error: Mutex<Option<String>>,
    calls: Mutex<Vec<String>>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeOps {
    /// Serves `listeners`, live and ready.
    pub fn new(listeners: Vec<ListenerView>) -> FakeOps {
        FakeOps {
            listeners: Mutex::new(listeners),
            live: AtomicBool::new(true),
            ready: AtomicBool::new(true),
            reload_error: Mutex::new(None),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// Two listeners: `syslog` (round robin over `127.0.0.1:6001` weight 1 and
    /// `127.0.0.1:6002` weight 3, the second unhealthy) and `dns` (mirror to `[::1]:5353`
    /// from a file), with some sessions.
    pub fn sample() -> FakeOps {
        let ds = |address: &str, weight, health, source, sessions| DownstreamView {
            address: address.parse().expect("the sample addresses are valid"),
            weight,
            state: DownstreamState::Active,
            health,
            source,
            sessions,
        };
        FakeOps::new(vec![
            ListenerView {
                name: "syslog".into(),
                bind: SocketAddr::from(([127, 0, 0, 1], 5514)),
                mode: "userspace".into(),
                distribution: "round_robin".into(),
                downstreams: vec![
                    ds(
                        "127.0.0.1:6001",
                        1,
                        HealthStatus::Healthy,
                        SourceKind::Static,
                        12,
                    ),
                    ds(
                        "127.0.0.1:6002",
                        3,
                        HealthStatus::Unhealthy,
                        SourceKind::Static,
                        0,
                    ),
                ],
            },
            ListenerView {
                name: "dns".into(),
                bind: SocketAddr::from(([127, 0, 0, 1], 5353)),
                mode: "xdp".into(),
                distribution: "mirror".into(),
                downstreams: vec![ds(
                    "[::1]:5353",
                    1,
                    HealthStatus::Unknown,
                    SourceKind::File,
                    1234,
                )],
            },
        ])
    }

    /// Sets what `/healthz` reports.
    pub fn set_live(&self, live: bool) {
        self.live.store(live, Ordering::Relaxed);
    }

    /// Sets what `/readyz` reports.
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    /// Makes the next reloads fail with `error` (`None`: succeed).
    pub fn fail_reload(&self, error: Option<&str>) {
        *lock(&self.reload_error) = error.map(str::to_owned);
    }

    /// The changing calls that reached this fake, in order, e.g. `add syslog 127.0.0.1:7 w2`,
    /// `remove syslog 127.0.0.1:7 now=false`, `reload`.
    pub fn calls(&self) -> Vec<String> {
        lock(&self.calls).clone()
    }

    fn record(&self, call: String) {
        lock(&self.calls).push(call);
    }

    /// Applies `f` to downstream `addr` of listener `name`.
    fn with_downstream(
        &self,
        name: &str,
        addr: SocketAddr,
        f: impl FnOnce(&mut Vec<DownstreamView>, usize),
    ) -> Result<(), AdminError> {
        let mut all = lock(&self.listeners);
        let l = all
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| AdminError::NotFound(format!("no listener named {name:?}")))?;
        let i = l
            .downstreams
            .iter()
            .position(|d| d.address == addr)
            .ok_or_else(|| AdminError::NotFound(format!("no downstream {addr}")))?;
        f(&mut l.downstreams, i);
        Ok(())
    }
}

impl AdminOps for FakeOps {
    fn listeners(&self) -> Vec<ListenerView> {
        lock(&self.listeners).clone()
    }

    fn listener(&self, name: &str) -> Option<ListenerView> {
        lock(&self.listeners)
            .iter()
            .find(|l| l.name == name)
            .cloned()
    }

    fn add_downstream(&self, name: &str, addr: SocketAddr, weight: u32) -> Result<(), AdminError> {
        self.record(format!("add {name} {addr} w{weight}"));
        let mut all = lock(&self.listeners);
        let l = all
            .iter_mut()
            .find(|l| l.name == name)
            .ok_or_else(|| AdminError::NotFound(format!("no listener named {name:?}")))?;
        if l.downstreams.iter().any(|d| d.address == addr) {
            return Err(AdminError::Conflict(format!(
                "downstream {addr} already exists"
            )));
        }
        l.downstreams.push(DownstreamView {
            address: addr,
            weight,
            state: DownstreamState::Active,
            health: HealthStatus::Unknown,
            source: SourceKind::Api,
            sessions: 0,
        });
        Ok(())
    }

    fn patch_downstream(
        &self,
        name: &str,
        addr: SocketAddr,
        weight: Option<u32>,
        state: Option<DownstreamState>,
    ) -> Result<(), AdminError> {
        self.record(format!("patch {name} {addr} {weight:?} {state:?}"));
        self.with_downstream(name, addr, |ds, i| {
            if let Some(d) = ds.get_mut(i) {
                d.weight = weight.unwrap_or(d.weight);
                d.state = state.unwrap_or(d.state);
            }
        })
    }

    fn remove_downstream(&self, name: &str, addr: SocketAddr, now: bool) -> Result<(), AdminError> {
        self.record(format!("remove {name} {addr} now={now}"));
        self.with_downstream(name, addr, |ds, i| {
            if now {
                ds.remove(i);
            } else if let Some(d) = ds.get_mut(i) {
                d.state = DownstreamState::Draining;
            }
        })
    }

    fn reload(&self) -> Result<(), AdminError> {
        self.record("reload".into());
        match lock(&self.reload_error).clone() {
            Some(e) => Err(AdminError::BadRequest(e)),
            None => Ok(()),
        }
    }

    fn live(&self) -> bool {
        self.live.load(Ordering::Relaxed)
    }

    fn ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed)
    }
}

/// A router served on `127.0.0.1:0` by a runtime on its own thread, until dropped: lets a
/// blocking test (or a child process) talk to it over a real socket.
#[derive(Debug)]
pub struct BackgroundServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<std::io::Result<()>>>,
}

impl BackgroundServer {
    /// Binds and starts serving `router`.
    pub fn start(router: Router) -> std::io::Result<BackgroundServer> {
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
        std_listener.set_nonblocking(true)?;
        let addr = std_listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(std_listener)?;
                super::serve(listener, router, async {
                    let _ = stopped.await;
                })
                .await
            })
        });
        Ok(BackgroundServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// Starts the admin API over `ops` (with `token`, if any).
    pub fn admin(ops: Arc<dyn AdminOps>, token: Option<&str>) -> std::io::Result<BackgroundServer> {
        let server = super::AdminServer::new(ops, token.map(str::to_owned));
        BackgroundServer::start(server.router())
    }

    /// Where it listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for BackgroundServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
