//! The data planes as the control plane sees them: something that serves named listeners,
//! takes a new downstream list for one of them, and reports counters.
//!
//! The control plane decides *what* each listener should send to; a plane decides *how* (a
//! userspace worker swaps an `ArcSwap`'d set, the kernel plane writes the inactive map bank
//! and flips). Putting both behind one small trait keeps every control-plane feature (reload,
//! the admin API, health checks, discovery) written once for both planes, and lets tests
//! drive the control plane with a fake plane and no sockets.

use std::fmt;

use fanout_config::{ListenerConfig, Mode};
use fanout_core::ListenerSnapshot;
use fanout_core::select::Endpoint;
use fanout_kernel::plane::KernelPlane;
use fanout_userspace::UserspacePlane;

/// Why a plane refused an update.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlaneError(pub String);

impl fmt::Display for PlaneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for PlaneError {}

/// A data plane.
pub trait Plane: Send + Sync {
    /// `userspace` or `kernel`, for logs.
    fn kind(&self) -> &'static str;
    /// The listeners it serves.
    fn listener_names(&self) -> Vec<String>;
    /// Replaces listener `name`'s downstreams, live and whole (a datagram sees the old set or
    /// the new one, never a mix).
    fn set_endpoints(&self, name: &str, endpoints: Vec<Endpoint>) -> Result<(), PlaneError>;
    /// Every listener's counters.
    fn snapshot(&self) -> Vec<ListenerSnapshot>;
    /// Whether this plane serves a listener configured as `l`.
    fn serves(&self, l: &ListenerConfig) -> bool;
    /// Starts serving `l` (on its static downstreams), or changes nothing and says why. A
    /// plane whose listeners are fixed refuses.
    fn add_listener(&self, l: &ListenerConfig) -> Result<(), PlaneError> {
        Err(PlaneError(format!(
            "the {} plane cannot add listener {:?} while running",
            self.kind(),
            l.name
        )))
    }
    /// Stops serving listener `name`. A plane whose listeners are fixed refuses.
    fn remove_listener(&self, name: &str) -> Result<(), PlaneError> {
        Err(PlaneError(format!(
            "the {} plane cannot remove listener {name:?} while running",
            self.kind()
        )))
    }
}

impl Plane for UserspacePlane {
    fn kind(&self) -> &'static str {
        "userspace"
    }

    fn listener_names(&self) -> Vec<String> {
        self.listeners()
            .iter()
            .map(|l| l.name().to_owned())
            .collect()
    }

    fn set_endpoints(&self, name: &str, endpoints: Vec<Endpoint>) -> Result<(), PlaneError> {
        let l = self
            .listener(name)
            .ok_or_else(|| PlaneError(format!("userspace plane has no listener {name:?}")))?;
        l.set_endpoints(endpoints);
        Ok(())
    }

    fn snapshot(&self) -> Vec<ListenerSnapshot> {
        UserspacePlane::snapshot(self)
    }

    /// Every listener: the kernel plane's too, as their slow path.
    fn serves(&self, _: &ListenerConfig) -> bool {
        true
    }

    fn add_listener(&self, l: &ListenerConfig) -> Result<(), PlaneError> {
        UserspacePlane::add_listener(self, l)
            .map(|_| ())
            .map_err(|e| PlaneError(e.to_string()))
    }

    fn remove_listener(&self, name: &str) -> Result<(), PlaneError> {
        UserspacePlane::remove_listener(self, name).map_err(|e| PlaneError(e.to_string()))
    }
}

impl Plane for KernelPlane {
    fn kind(&self) -> &'static str {
        "kernel"
    }

    fn listener_names(&self) -> Vec<String> {
        KernelPlane::listener_names(self)
    }

    fn set_endpoints(&self, name: &str, endpoints: Vec<Endpoint>) -> Result<(), PlaneError> {
        KernelPlane::set_endpoints(self, name, endpoints).map_err(|e| PlaneError(e.to_string()))
    }

    fn snapshot(&self) -> Vec<ListenerSnapshot> {
        KernelPlane::snapshot(self)
    }

    fn serves(&self, l: &ListenerConfig) -> bool {
        l.mode != Mode::Userspace
    }

    fn add_listener(&self, l: &ListenerConfig) -> Result<(), PlaneError> {
        KernelPlane::add_listener(self, l).map_err(|e| PlaneError(e.to_string()))
    }

    fn remove_listener(&self, name: &str) -> Result<(), PlaneError> {
        KernelPlane::remove_listener(self, name).map_err(|e| PlaneError(e.to_string()))
    }
}
