//! The admin HTTP API (DESIGN.md 3b "Admin API"): list listeners and their downstreams, add,
//! drain, disable, re-weight and remove downstreams, reload the config, and report liveness
//! and readiness, as JSON over HTTP/1.1 with an optional bearer token.
//!
//! Three parts, so that the HTTP side is written and tested once, apart from the control
//! plane:
//!
//! - [`types`]: the JSON contract, shared with the `udp-fanout ctl` client;
//! - [`ops`]: [`AdminOps`], what the server asks of the control plane ([`crate::Control`]
//!   implements it; tests use a fake), and [`AdminError`], its refusals;
//! - [`server`]: the axum router, its validation and error form, and [`serve`];
//! - [`control_ops`]: [`ControlOps`], the real [`AdminOps`] over [`crate::Control`];
//! - [`fake`]: an in-memory [`AdminOps`] and a background server, for tests of the API and
//!   of its clients.
//!
//! Status codes: 200 (201 for an added downstream); 400 bad JSON, unknown field, bad address,
//! weight outside `1..=MAX_WEIGHT`, bad state, empty PATCH, invalid config on reload; 401
//! token missing or wrong; 404 unknown listener, downstream or route; 405 wrong method on a
//! known route (with `Allow`); 409 adding an address already there; 413 body over
//! [`MAX_BODY_BYTES`]; 500 a data plane refused the change; 503 `/healthz`, `/readyz` when
//! not live / not ready. Every error body is `{"error": "..."}`.

pub mod control_ops;
pub mod fake;
pub mod ops;
pub mod server;
pub mod types;

pub use control_ops::{ControlOps, ReloadRequest};
pub use ops::{AdminError, AdminOps};
pub use server::{AdminServer, read_token, serve};
pub use types::{
    AddDownstream, DownstreamState, DownstreamView, ErrorBody, HealthStatus, ListenerView,
    MAX_BODY_BYTES, PatchDownstream, SourceKind, StatusBody,
};
