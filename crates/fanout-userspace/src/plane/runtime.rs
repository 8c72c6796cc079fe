//! Adding and removing listeners while the plane runs, for reload.
//!
//! A change is made in the calling thread as far as it can be: [`UserspacePlane::add_listener`]
//! binds the listener's sockets (one per worker, with the plane's socket options, through the
//! same `bind_listener` as at start, so a port in use fails with the same message) and any
//! egress sockets a new address family needs, before a worker hears of it. Only then does each
//! worker get its socket as a command on its channel, followed by a wake-up of its `Waker`;
//! the worker registers it between two polls and answers. The caller waits for every answer,
//! so when `add_listener` returns the listener is served by every worker, and when
//! `remove_listener` returns no worker holds its sockets any more and the port is free.
//!
//! Why this costs the data path nothing: the channel is looked at only after a poll that
//! returned the waker's event (which fires for shutdown and commands only), never per batch or
//! per datagram; the workers take no lock, and the lookups (`listener`, `listeners`,
//! `snapshot`) read an `ArcSwap`. Changes are made one at a time under the plane's `served`
//! mutex, which only the control side takes.
//!
//! If a worker cannot take the listener (its epoll registration fails, or it is stopping), the
//! workers that did take it drop it again and the sockets are closed: a failed add changes
//! nothing that is visible.

use std::net::UdpSocket;
use std::sync::atomic::Ordering;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::sync::{Arc, MutexGuard, PoisonError};
use std::time::Duration;

use fanout_config::ListenerConfig;

use super::{
    Families, PlaneError, Served, UserspacePlane, bind_listener, egress_sockets, no_socket,
};
use crate::limits;
use crate::listener::ListenerShared;
use crate::worker::{AddListener, Command};

/// How long to wait for a worker's answer before waking it again. A wake cannot really get
/// lost (the waker is an eventfd), but a caller that waits forever would be worse than one
/// more wake-up.
const REWAKE: Duration = Duration::from_millis(200);

impl UserspacePlane {
    /// Binds listener `cfg` and has every worker serve it, as if it had been in the
    /// configuration at start; returns once all of them do. Fails, changing nothing, when its
    /// address cannot be bound (the error is the one start-up would give), when a listener of
    /// that name is served already, or when the workers are stopping.
    pub fn add_listener(&self, cfg: &ListenerConfig) -> Result<Arc<ListenerShared>, PlaneError> {
        let mut served = self.lock_served();
        if self.listener(&cfg.name).is_some() {
            return Err(PlaneError::Exists {
                listener: cfg.name.clone(),
            });
        }
        if self.shutdown.load(Ordering::Acquire) {
            return Err(PlaneError::Stopped {
                listener: cfg.name.clone(),
            });
        }
        let shared = Arc::new(bind_listener(cfg, self.workers, &self.sockets)?);
        let new_families = Families::of_listener(cfg).without(served.families);
        let egress = (0..self.workers)
            .map(|_| egress_sockets(new_families, &self.sockets.opts))
            .collect::<Result<Vec<_>, _>>()?;
        if let Err(e) = self.hand_to_workers(&shared, egress) {
            self.take_from_workers(&shared);
            shared.close_sockets();
            return Err(e);
        }
        served.families = served.families.with(new_families);
        let fds = limits::upstream_sockets_needed(cfg);
        served.upstream_fds.insert(cfg.name.clone(), fds);
        if fds > 0 {
            limits::raise_nofile(served.upstream_fds.values().sum());
        }
        let mut list = Vec::clone(&self.listeners.load());
        list.push(Arc::clone(&shared));
        self.listeners.store(Arc::new(list));
        tracing::info!(listener = %cfg.name, addr = %shared.local_addr(), "listener added");
        Ok(shared)
    }

    /// Stops serving listener `name`: every worker deregisters and drops its socket, sessions
    /// and upstream sockets; returns once all have, with the listener's sockets closed (its
    /// port is free). The other listeners are not touched. Fails for a name not served.
    pub fn remove_listener(&self, name: &str) -> Result<(), PlaneError> {
        let mut served = self.lock_served();
        let list = self.listeners.load_full();
        let Some(shared) = list.iter().find(|l| l.name() == name).cloned() else {
            return Err(PlaneError::Unknown {
                listener: name.to_owned(),
            });
        };
        // Unlisted first, so that the control plane and scrapes stop seeing it as it goes.
        let rest = list
            .iter()
            .filter(|l| !Arc::ptr_eq(l, &shared))
            .cloned()
            .collect();
        self.listeners.store(Arc::new(rest));
        self.take_from_workers(&shared);
        shared.close_sockets();
        served.upstream_fds.remove(name);
        tracing::info!(listener = name, "listener removed");
        Ok(())
    }

    fn lock_served(&self) -> MutexGuard<'_, Served> {
        // Nothing panics while holding it; the state is whole either way.
        self.served.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Gives each worker its socket of `shared` (and egress sockets, `egress[worker]`) and
    /// waits until every one serves it.
    fn hand_to_workers(
        &self,
        shared: &Arc<ListenerShared>,
        egress: Vec<(Option<UdpSocket>, Option<UdpSocket>)>,
    ) -> Result<(), PlaneError> {
        let stopped = || PlaneError::Stopped {
            listener: shared.name().to_owned(),
        };
        let (done, answers) = mpsc::channel();
        for (id, (egress_v4, egress_v6)) in egress.into_iter().enumerate() {
            let cmd = Command::Add(AddListener {
                shared: Arc::clone(shared),
                sock: shared.socket(id).ok_or_else(|| no_socket(shared, id))?,
                egress_v4,
                egress_v6,
                done: done.clone(),
            });
            self.command(id, cmd).map_err(|()| stopped())?;
        }
        drop(done);
        let answers = self.answers(&answers);
        if answers.len() < self.workers {
            return Err(stopped());
        }
        answers
            .into_iter()
            .collect::<Result<(), _>>()
            .map_err(|source| PlaneError::Setup {
                what: format!(
                    "listener \"{}\": registering a worker's socket",
                    shared.name()
                ),
                source,
            })
    }

    /// Has every worker drop `shared` (those that do not serve it ignore the command) and
    /// waits until they have. A worker that has stopped dropped everything already.
    fn take_from_workers(&self, shared: &Arc<ListenerShared>) {
        let (done, answers) = mpsc::channel();
        for id in 0..self.workers {
            let cmd = Command::Remove {
                listener: Arc::clone(shared),
                done: done.clone(),
            };
            // Err: the worker is gone, and its sockets with it.
            let _ = self.command(id, cmd);
        }
        drop(done);
        self.answers(&answers);
    }

    /// Queues `cmd` for worker `id` and wakes it. Err when the worker has stopped.
    fn command(&self, id: usize, cmd: Command) -> Result<(), ()> {
        self.commands[id].send(cmd).map_err(|_| ())?;
        // A failed wake is retried while waiting for the answer.
        let _ = self.wakers[id].wake();
        Ok(())
    }

    /// One answer per worker to the command just sent to each, fewer when workers stopped
    /// without answering (a stopping worker drops its queue, and with it the reply senders).
    fn answers<T>(&self, answers: &Receiver<T>) -> Vec<T> {
        let mut got = Vec::with_capacity(self.workers);
        while got.len() < self.workers {
            match answers.recv_timeout(REWAKE) {
                Ok(a) => got.push(a),
                Err(RecvTimeoutError::Timeout) => {
                    for w in &self.wakers {
                        let _ = w.wake();
                    }
                }
                Err(RecvTimeoutError::Disconnected) => break,
            }
        }
        got
    }
}
