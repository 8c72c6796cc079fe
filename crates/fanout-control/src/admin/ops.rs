//! What the admin server asks of the control plane: [`AdminOps`].
//!
//! The server knows HTTP and the JSON contract; it knows nothing of how a downstream is added
//! or a config reloaded. Putting those behind one small trait keeps the server testable with a
//! fake (no planes, no sockets other than its own) and lets [`crate::Control`] answer it.
//!
//! Every method is synchronous and may block (a change holds the control plane's lock while a
//! set is pushed; a reload reads and validates files): the server calls each one on tokio's
//! blocking pool, never on the runtime thread that also serves `/metrics`.

use std::fmt;
use std::net::SocketAddr;

use super::types::{DownstreamState, ListenerView};
use crate::control::ControlError;
use crate::desired::ChangeError;

/// The control plane as the admin API drives it.
///
/// The server validates what it can alone before calling (addresses parse and are usable,
/// weights are in `1..=MAX_WEIGHT`, a PATCH changes something), so an implementation sees
/// only well-formed requests; it answers for what needs its state.
pub trait AdminOps: Send + Sync + 'static {
    /// Every listener, in config order.
    fn listeners(&self) -> Vec<ListenerView>;
    /// Listener `name`, if there is one.
    fn listener(&self, name: &str) -> Option<ListenerView>;
    /// Adds `addr` to `listener` (source `api`). [`AdminError::NotFound`] for an unknown
    /// listener, [`AdminError::Conflict`] when the listener already has `addr`.
    fn add_downstream(
        &self,
        listener: &str,
        addr: SocketAddr,
        weight: u32,
    ) -> Result<(), AdminError>;
    /// Sets `addr`'s weight and/or state (at least one is `Some`). [`AdminError::NotFound`]
    /// for an unknown listener or downstream.
    fn patch_downstream(
        &self,
        listener: &str,
        addr: SocketAddr,
        weight: Option<u32>,
        state: Option<DownstreamState>,
    ) -> Result<(), AdminError>;
    /// Removes `addr`: drains it first (the listener's `drain_secs`), or at once when `now`.
    /// [`AdminError::NotFound`] for an unknown listener or downstream.
    fn remove_downstream(
        &self,
        listener: &str,
        addr: SocketAddr,
        now: bool,
    ) -> Result<(), AdminError>;
    /// Reloads the config file: all or nothing. An invalid config is
    /// [`AdminError::BadRequest`] with the validation error (key path and all); the old config
    /// keeps serving.
    fn reload(&self) -> Result<(), AdminError>;
    /// Whether the process is alive (`/healthz`).
    fn live(&self) -> bool;
    /// Whether every listener is bound and knows its downstreams (`/readyz`).
    fn ready(&self) -> bool;
}

/// Why the control plane refused an admin request; nothing was changed. Each kind is one HTTP
/// status, see [`AdminError::status`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminError {
    /// The request is wrong as such (an invalid config on reload): 400.
    BadRequest(String),
    /// No such listener or downstream: 404.
    NotFound(String),
    /// It contradicts the current state (adding an address already there): 409.
    Conflict(String),
    /// The control plane failed (a data plane refused the new set): 500.
    Internal(String),
}

impl AdminError {
    /// The HTTP status the server answers with.
    pub const fn status(&self) -> u16 {
        match self {
            AdminError::BadRequest(_) => 400,
            AdminError::NotFound(_) => 404,
            AdminError::Conflict(_) => 409,
            AdminError::Internal(_) => 500,
        }
    }

    /// The message for the `{"error": ...}` body.
    pub fn message(&self) -> &str {
        match self {
            AdminError::BadRequest(m)
            | AdminError::NotFound(m)
            | AdminError::Conflict(m)
            | AdminError::Internal(m) => m,
        }
    }
}

impl fmt::Display for AdminError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.message())
    }
}

impl std::error::Error for AdminError {}

/// The control plane's refusals, as the API reports them.
impl From<ControlError> for AdminError {
    fn from(e: ControlError) -> Self {
        let message = e.to_string();
        match e {
            ControlError::UnknownListener(_)
            | ControlError::Change(ChangeError::NoSuchDownstream(_)) => {
                AdminError::NotFound(message)
            }
            ControlError::Change(ChangeError::Exists(_)) => AdminError::Conflict(message),
            ControlError::Plane { .. } => AdminError::Internal(message),
        }
    }
}
