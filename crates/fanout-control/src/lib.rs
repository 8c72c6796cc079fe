//! The control plane: the owner of desired state, which it pushes to the data planes, and
//! the Prometheus exporter that reports on them.
//!
//! The pipeline is sources -> health -> backend set -> planes. What exists today:
//!
//! - [`desired`]: each listener's downstreams and their [`Source`] (the config's static list;
//!   file, Kubernetes and admin-API sources are planned);
//! - [`planes`]: the [`Plane`] trait both data planes implement, so every control-plane
//!   feature is written once for both;
//! - [`control`]: [`Control`], which applies a change to every plane serving a listener or
//!   to none, and merges the planes' counters;
//! - [`metrics`], [`http`]: the exporter and its `/metrics` and `/healthz` endpoint.
//!
//! Health checks, reload and the admin API are planned and will live here. It all runs on a
//! small tokio runtime on the main thread, apart from the data-plane workers, so nothing it
//! does (a slow scrape, a stalled client) can delay a datagram.
#![forbid(unsafe_code)]

pub mod admin;
pub mod control;
pub mod control_metrics;
pub mod desired;
pub mod discovery;
pub mod health;
pub mod http;
pub mod metrics;
pub mod planes;
pub mod reload;
pub mod watch;

pub use control::{Control, ControlError};
pub use desired::{AdminState, Desired, DownstreamInfo, Health, ListenerState, Source};
pub use metrics::{Exporter, SnapshotSource};
pub use planes::{Plane, PlaneError};
pub use reload::{ReloadCounts, ReloadError, Reloader};
