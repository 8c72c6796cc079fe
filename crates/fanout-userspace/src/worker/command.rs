//! Listeners added and removed while a worker runs.
//!
//! The plane binds a new listener's sockets itself (so every error a user can cause is found
//! before any worker is involved) and hands each worker its socket as a [`Command`] on the
//! worker's channel, then fires the worker's `Waker`. The worker takes the commands after the
//! poll that reported the waker, outside any batch: it registers the socket with a token of its
//! own choosing, sets the listener's per-worker state up exactly as at start ([`Port::new`]),
//! and answers on the command's reply channel. Removal is the reverse: deregister, drop the
//! socket, the sessions and their upstream sockets (closing them takes them out of epoll), and
//! forget the slot's entries in the ready queue, so a token reused later cannot be served for
//! the listener that was there before. The other listeners' slots, tokens and state are not
//! touched, which is why their datagrams, sessions and counters go on as if nothing happened.

use std::io;
use std::net::UdpSocket;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::sync::mpsc::{Sender, TryRecvError};

use mio::Interest;
use mio::unix::SourceFd;

use super::{Port, Worker, listener_token, split_token};
use crate::listener::ListenerShared;

/// What the plane asks of a running worker.
pub(crate) enum Command {
    /// Start serving a listener.
    Add(AddListener),
    /// Stop serving `listener` and drop everything of it; answer when done.
    Remove {
        listener: Arc<ListenerShared>,
        done: Sender<()>,
    },
}

/// A listener for one worker: its socket of the listener, and egress sockets for the address
/// families of the listener's downstreams the worker has none for yet.
pub(crate) struct AddListener {
    pub shared: Arc<ListenerShared>,
    pub sock: Arc<UdpSocket>,
    pub egress_v4: Option<UdpSocket>,
    pub egress_v6: Option<UdpSocket>,
    /// Whether the worker serves it now.
    pub done: Sender<io::Result<()>>,
}

impl Worker {
    /// Carries out every queued command. The plane waits for the answers, so an answer that
    /// cannot be delivered (the plane gave up) needs nothing more.
    pub(super) fn take_commands(&mut self) {
        loop {
            match self.commands.try_recv() {
                Ok(Command::Add(a)) => {
                    self.egress.install(a.egress_v4, a.egress_v6);
                    let _ = a.done.send(self.add(a.shared, a.sock));
                }
                Ok(Command::Remove { listener, done }) => {
                    self.remove(&listener);
                    let _ = done.send(());
                }
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        self.update_has_sessions();
    }

    /// Registers this worker's socket `sock` of listener `shared` in the first free slot and
    /// starts serving it. On failure nothing changed.
    fn add(&mut self, shared: Arc<ListenerShared>, sock: Arc<UdpSocket>) -> io::Result<()> {
        let li = self
            .ports
            .iter()
            .position(Option::is_none)
            .unwrap_or(self.ports.len());
        self.poll.registry().register(
            &mut SourceFd(&sock.as_raw_fd()),
            listener_token(li),
            Interest::READABLE,
        )?;
        tracing::debug!(
            worker = self.id,
            listener = shared.name(),
            slot = li,
            "listener added"
        );
        let port = Port::new(shared, sock, self.id, self.workers);
        match self.ports.get_mut(li) {
            Some(slot) => *slot = Some(port),
            None => self.ports.push(Some(port)),
        }
        // Queued like every listener at start: what arrived since the bind is read now.
        self.ready.push(listener_token(li));
        Ok(())
    }

    /// Stops serving `listener` (a no-op when this worker does not serve it).
    fn remove(&mut self, listener: &Arc<ListenerShared>) {
        let Some(li) = self
            .ports
            .iter()
            .position(|p| p.as_ref().is_some_and(|p| Arc::ptr_eq(&p.shared, listener)))
        else {
            return;
        };
        let Some(port) = self.ports[li].take() else {
            return;
        };
        // The plane still holds the socket (until every worker answered), so closing ours
        // would not take it out of epoll: deregister explicitly.
        if let Err(e) = self
            .poll
            .registry()
            .deregister(&mut SourceFd(&port.sock.as_raw_fd()))
        {
            tracing::warn!(worker = self.id, listener = listener.name(), error = %e, "deregistering a listener socket failed");
        }
        self.ready.retain(|&t| split_token(t).0 != li);
        // Sessions and their upstream sockets go with the port; closing an upstream socket
        // (nobody else holds it) takes it out of epoll.
        drop(port);
        while self.ports.last().is_some_and(Option::is_none) {
            self.ports.pop();
        }
        tracing::debug!(
            worker = self.id,
            listener = listener.name(),
            slot = li,
            "listener removed"
        );
    }
}
