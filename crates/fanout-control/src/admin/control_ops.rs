//! [`AdminOps`] over the running control plane: what the admin API's requests do to
//! [`Control`], and reloads handed to the daemon's event loop.
//!
//! A reload is not run here but sent to the loop that also serves SIGHUP and file changes
//! (and tells systemd `RELOADING=1`), so that reloads from any source are serialized in one
//! place; this side waits for the outcome. The server calls every method on the blocking pool,
//! so waiting here never stalls the runtime.

use std::net::SocketAddr;
use std::sync::Arc;

use fanout_config::Config;
use tokio::sync::mpsc::UnboundedSender;
use tokio::sync::oneshot;

use super::ops::{AdminError, AdminOps};
use super::types::{DownstreamState, DownstreamView, ListenerView};
use crate::control::Control;
use crate::http::Readiness;
use crate::reload::Reloader;

/// A reload request: where to send its outcome.
pub type ReloadRequest = oneshot::Sender<Result<(), String>>;

/// The admin API's view of the control plane.
pub struct ControlOps {
    control: Arc<Control>,
    reloader: Arc<Reloader>,
    reloads: UnboundedSender<ReloadRequest>,
    ready: Readiness,
}

impl std::fmt::Debug for ControlOps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlOps").finish_non_exhaustive()
    }
}

impl ControlOps {
    /// Serves `control`; reloads go to `reloads` (the event loop's channel).
    pub fn new(
        control: Arc<Control>,
        reloader: Arc<Reloader>,
        reloads: UnboundedSender<ReloadRequest>,
        ready: Readiness,
    ) -> ControlOps {
        ControlOps {
            control,
            reloader,
            reloads,
            ready,
        }
    }

    fn view(&self, cfg: &Config, name: &str) -> Option<ListenerView> {
        let l = cfg.listeners.iter().find(|l| l.name == name)?;
        let desired = self.control.desired();
        let state = desired.listener(name)?;
        let snap = self.control.snapshot();
        let sessions = |addr: SocketAddr| {
            snap.iter()
                .find(|s| s.name == name)
                .and_then(|s| s.downstreams.iter().find(|d| d.addr == addr))
                .and_then(|d| d.sessions)
                .unwrap_or(0)
        };
        Some(ListenerView {
            name: l.name.clone(),
            bind: l.bind,
            mode: l.mode.as_str().to_owned(),
            distribution: l.distribution.as_str().to_owned(),
            downstreams: state
                .downstreams()
                .into_iter()
                .map(|d| DownstreamView {
                    address: d.addr,
                    weight: d.weight,
                    state: d.state.into(),
                    health: d.health.into(),
                    source: d.source.into(),
                    sessions: sessions(d.addr),
                })
                .collect(),
        })
    }
}

impl AdminOps for ControlOps {
    fn listeners(&self) -> Vec<ListenerView> {
        let cfg = self.reloader.current();
        cfg.listeners
            .iter()
            .filter_map(|l| self.view(&cfg, &l.name))
            .collect()
    }

    fn listener(&self, name: &str) -> Option<ListenerView> {
        self.view(&self.reloader.current(), name)
    }

    fn add_downstream(
        &self,
        listener: &str,
        addr: SocketAddr,
        weight: u32,
    ) -> Result<(), AdminError> {
        Ok(self.control.api_add(listener, addr, weight)?)
    }

    fn patch_downstream(
        &self,
        listener: &str,
        addr: SocketAddr,
        weight: Option<u32>,
        state: Option<DownstreamState>,
    ) -> Result<(), AdminError> {
        Ok(self
            .control
            .api_patch(listener, addr, weight, state.map(Into::into))?)
    }

    fn remove_downstream(
        &self,
        listener: &str,
        addr: SocketAddr,
        now: bool,
    ) -> Result<(), AdminError> {
        Ok(self.control.api_remove(listener, addr, now)?)
    }

    fn reload(&self) -> Result<(), AdminError> {
        let (tx, rx) = oneshot::channel();
        self.reloads
            .send(tx)
            .map_err(|_| AdminError::Internal("the daemon is shutting down".into()))?;
        match rx.blocking_recv() {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(AdminError::BadRequest(e)),
            Err(_) => Err(AdminError::Internal("the daemon is shutting down".into())),
        }
    }

    fn live(&self) -> bool {
        true
    }

    /// Every listener is bound (the API only starts once start-up bound them, and a reload
    /// that cannot bind one changes nothing) and knows its downstreams (`ready`: every
    /// Kubernetes watch has listed once).
    fn ready(&self) -> bool {
        (self.ready)()
    }
}
