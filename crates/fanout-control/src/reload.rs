//! Reload: read the config file and every `downstreams_file` again, check it all, and apply
//! the difference to the running planes and the desired state, or change nothing.
//!
//! Order matters for "an invalid config changes nothing": everything that can fail on the
//! user's input (parsing, validation, reading the files) happens before anything running is
//! touched. Applying is then, listener by listener:
//!
//! 1. new listeners are bound first, so a port in use fails the reload before any listener
//!    was removed or re-created (and those just bound are removed again);
//! 2. re-created listeners (bind, mode, interface, distribution or session changed) are
//!    removed and added again; if the new form cannot bind, the old one is put back;
//! 3. removed listeners close;
//! 4. the desired state takes the new static lists, file contents and drain times, and one
//!    sync pushes every changed set. Unchanged listeners are never touched, so they lose no
//!    datagram and keep their sessions.
//!
//! Top-level `metrics`, `admin` and `dataplane` changes take effect at the next restart (a
//! warning says so): rebinding the endpoints an operator is using to reload, or re-sizing the
//! worker pool under traffic, is not worth its failure modes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use fanout_config::{Config, ConfigDiff, DownstreamConfig, Fallback, ListenerConfig, Mode};

use crate::control::Control;
use crate::planes::Plane;

/// The outcome of one reload attempt, for logs, the API and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadError(pub String);

impl std::fmt::Display for ReloadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ReloadError {}

/// Counts of reloads, for `udp_fanout_config_reloads_total` and
/// `udp_fanout_config_last_reload_success`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReloadCounts {
    /// Reloads applied.
    pub success: u64,
    /// Reloads refused (nothing changed).
    pub error: u64,
    /// Whether the last one was applied (true before the first).
    pub last_ok: bool,
}

/// Reloads the daemon's config.
pub struct Reloader {
    path: PathBuf,
    control: Arc<Control>,
    current: Mutex<Config>,
    counts: Mutex<ReloadCounts>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("path", &self.path)
            .finish()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Reads every listener's `downstreams_file`: (listener, entries), or the first error.
pub fn read_files(cfg: &Config) -> Result<Vec<(String, Vec<DownstreamConfig>)>, ReloadError> {
    let mut out = Vec::new();
    for l in &cfg.listeners {
        if let Some(p) = &l.downstreams_file {
            // The file's entries obey the listener's rules too (no loop to its own bind, the
            // kernel plane's limits).
            let list = fanout_config::downstreams_file::load(p)
                .and_then(|list| {
                    fanout_config::downstreams_file::check_for(l, &list, p)?;
                    Ok(list)
                })
                .map_err(|e| ReloadError(e.to_string()))?;
            out.push((l.name.clone(), list));
        }
    }
    Ok(out)
}

impl Reloader {
    /// Reloads from `path`; `current` is what the daemon runs now.
    pub fn new(path: &Path, current: Config, control: Arc<Control>) -> Reloader {
        Reloader {
            path: path.to_owned(),
            control,
            current: Mutex::new(current),
            counts: Mutex::new(ReloadCounts {
                last_ok: true,
                ..ReloadCounts::default()
            }),
        }
    }

    /// The config file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The config running now.
    pub fn current(&self) -> Config {
        lock(&self.current).clone()
    }

    /// Every `downstreams_file` of the running config (to watch).
    pub fn watched_files(&self) -> Vec<PathBuf> {
        lock(&self.current)
            .listeners
            .iter()
            .filter_map(|l| l.downstreams_file.clone())
            .collect()
    }

    /// Reload counts so far.
    pub fn counts(&self) -> ReloadCounts {
        *lock(&self.counts)
    }

    /// Reloads: applied whole, or refused with the reason (key path, or `file:line`) and
    /// nothing changed. `why` names the trigger in the log.
    pub fn reload(&self, why: &str) -> Result<(), ReloadError> {
        let mut current = lock(&self.current);
        let result = self.try_reload(&mut current);
        let mut c = lock(&self.counts);
        match &result {
            Ok(()) => {
                c.success += 1;
                c.last_ok = true;
                tracing::info!(trigger = why, "configuration reloaded");
            }
            Err(e) => {
                c.error += 1;
                c.last_ok = false;
                tracing::error!(trigger = why, error = %e, "reload refused; the previous configuration keeps serving");
            }
        }
        result
    }

    fn try_reload(&self, current: &mut Config) -> Result<(), ReloadError> {
        let next = fanout_config::load(&self.path).map_err(|errs| {
            ReloadError(
                errs.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        })?;
        let files = read_files(&next)?;
        let diff = fanout_config::diff(current, &next);
        warn_restart_only(&diff);
        let find =
            |cfg: &Config, name: &str| cfg.listeners.iter().find(|l| l.name == name).cloned();
        let added: Vec<ListenerConfig> = diff.added.iter().filter_map(|n| find(&next, n)).collect();
        self.add_all(&added)?;
        for name in &diff.recreated {
            let (Some(old), Some(new)) = (find(current, name), find(&next, name)) else {
                continue;
            };
            if let Err(e) = self.recreate(&old, &new) {
                for l in &added {
                    self.remove(&l.name);
                }
                return Err(e);
            }
        }
        for name in &diff.removed {
            self.remove(name);
        }
        self.control
            .apply_reload(&next, files)
            .map_err(|e| ReloadError(e.to_string()))?;
        *current = next;
        Ok(())
    }

    /// Adds `listeners` to every plane that serves them, or none of them.
    fn add_all(&self, listeners: &[ListenerConfig]) -> Result<(), ReloadError> {
        for (i, l) in listeners.iter().enumerate() {
            if let Err(e) = self.add(l) {
                for done in &listeners[..i] {
                    self.remove(&done.name);
                }
                return Err(e);
            }
        }
        Ok(())
    }

    /// Adds one listener to every plane that serves it, or to none.
    fn add(&self, l: &ListenerConfig) -> Result<(), ReloadError> {
        let planes = self.control.planes();
        if l.mode != Mode::Userspace && !planes.iter().any(|p| p.kind() == "kernel") {
            // The kernel plane is started with the daemon, when a listener needs it: loading
            // programs later would need privileges the daemon has dropped.
            if l.fallback != Fallback::Userspace {
                return Err(ReloadError(format!(
                    "listener {:?}: the kernel plane is not running (no xdp/tc_ebpf listener at start); restart udp-fanout to add one, or set fallback: userspace",
                    l.name
                )));
            }
            tracing::warn!(listener = %l.name, "the kernel plane is not running; serving this listener in userspace (fallback: userspace)");
        }
        let serving: Vec<&Arc<dyn Plane>> = planes.iter().filter(|p| p.serves(l)).collect();
        for (i, p) in serving.iter().enumerate() {
            if let Err(e) = p.add_listener(l) {
                for done in &serving[..i] {
                    let _ = done.remove_listener(&l.name);
                }
                // The planes' errors already name the listener.
                return Err(ReloadError(e.to_string()));
            }
        }
        tracing::info!(listener = %l.name, addr = %l.bind, "listener added");
        Ok(())
    }

    /// Removes a listener from every plane serving it.
    fn remove(&self, name: &str) {
        for p in self.control.planes() {
            if p.listener_names().iter().any(|n| n == name)
                && let Err(e) = p.remove_listener(name)
            {
                tracing::error!(listener = name, plane = p.kind(), error = %e, "cannot remove listener");
            }
        }
        tracing::info!(listener = name, "listener removed");
    }

    /// Replaces listener `old` with `new` (same name); puts `old` back if `new` cannot start.
    fn recreate(&self, old: &ListenerConfig, new: &ListenerConfig) -> Result<(), ReloadError> {
        self.remove(&old.name);
        match self.add(new) {
            Ok(()) => {
                self.control.mark_recreated(&new.name, new.endpoints());
                Ok(())
            }
            Err(e) => {
                if let Err(back) = self.add(old) {
                    tracing::error!(listener = %old.name, error = %back, "cannot restore the listener after a failed re-create");
                }
                self.control.mark_recreated(&old.name, old.endpoints());
                Err(e)
            }
        }
    }
}

fn warn_restart_only(diff: &ConfigDiff) {
    for (changed, what) in [
        (diff.metrics_changed, "metrics"),
        (diff.admin_changed, "admin"),
        (diff.dataplane_changed, "dataplane"),
    ] {
        if changed {
            tracing::warn!(
                section = what,
                "this section changed; it takes effect at the next restart"
            );
        }
    }
}
