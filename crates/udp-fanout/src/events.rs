//! The control plane's event loop, on the main thread's runtime: signals, reload triggers
//! (SIGHUP, a saved config or downstreams file, the admin API), health verdicts, Kubernetes
//! endpoint changes, drain timers, the systemd watchdog.
//!
//! One loop, one event at a time, so two reloads never interleave and a drain timer never
//! runs in the middle of a reload. The reload itself (parse, bind, map writes) runs on the
//! runtime's blocking pool, so scrapes and API calls are answered meanwhile.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use fanout_config::HealthConfig;
use fanout_control::discovery::{Discovery, DiscoveryEvent};
use fanout_control::health::{HealthChecker, HealthEvent};
use fanout_control::watch::FileWatch;
use fanout_control::{Control, Health, Reloader};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::sync::mpsc::{UnboundedReceiver, UnboundedSender, unbounded_channel};

/// How long at most between two syncs of the desired state (drain ends are also woken for
/// exactly).
const SYNC_EVERY: Duration = Duration::from_secs(1);

pub use fanout_control::admin::ReloadRequest;

/// The signals the daemon handles: TERM and INT stop it, HUP reloads.
pub struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    /// Installs the handlers (before anything is announced, so an early signal is handled
    /// rather than killing the process).
    pub fn install() -> std::io::Result<Signals> {
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
            hup: signal(SignalKind::hangup())?,
        })
    }
}

/// What the loop drives.
pub struct Events {
    pub control: Arc<Control>,
    pub reloader: Arc<Reloader>,
    pub signals: Signals,
    /// Reload requests from the admin API.
    pub api_reloads: UnboundedReceiver<ReloadRequest>,
    pub health: Arc<HealthChecker>,
    /// The checker's verdicts.
    pub health_events: UnboundedReceiver<HealthEvent>,
    pub discovery: Arc<Discovery>,
    /// The Kubernetes watches' endpoint sets.
    pub discovery_events: UnboundedReceiver<DiscoveryEvent>,
}

/// What each listener's health checks probe, as last given to the checker.
type Targets = HashMap<String, (Option<HealthConfig>, Vec<SocketAddr>)>;

/// Where the admin API sends its reload requests.
pub fn reload_channel() -> (
    UnboundedSender<ReloadRequest>,
    UnboundedReceiver<ReloadRequest>,
) {
    unbounded_channel()
}

impl Events {
    /// Runs until TERM or INT.
    pub async fn run(mut self) {
        let (changed_tx, mut changed) = unbounded_channel::<PathBuf>();
        let mut watch = match FileWatch::start(&self.watched(), changed_tx) {
            Ok(w) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch the config files; reload with SIGHUP or the admin API");
                None
            }
        };
        let mut dog = crate::systemd::watchdog_interval().map(tokio::time::interval);
        // A deadline, not a duration: the select below is entered again after every event,
        // and the watchdog's tick (`continue`) must not push the next sync back each time,
        // or with a keep-alive more often than SYNC_EVERY no drain would ever end.
        let mut next_sync = tokio::time::Instant::now() + SYNC_EVERY;
        let mut targets = Targets::new();
        self.aim_discovery();
        self.aim_health(&mut targets);
        loop {
            tokio::select! {
                _ = self.signals.term.recv() => break,
                _ = self.signals.int.recv() => break,
                _ = self.signals.hup.recv() => {
                    // The outcome is logged and counted by the reloader.
                    let _ = self.reload("SIGHUP", &mut watch).await;
                }
                Some(path) = changed.recv() => {
                    let _ = self.reload(&format!("{} changed", path.display()), &mut watch).await;
                }
                Some(reply) = self.api_reloads.recv() => {
                    let r = self.reload("admin API", &mut watch).await;
                    let _ = reply.send(r);
                }
                Some(ev) = self.health_events.recv() => {
                    self.apply_health(ev);
                    // Verdicts change no probe target: no need to re-aim the checker.
                    next_sync = tokio::time::Instant::now() + self.sync();
                    continue;
                }
                Some(ev) = self.discovery_events.recv() => self.apply_discovery(ev),
                _ = tokio::time::sleep_until(next_sync) => {}
                _ = async { dog.as_mut()?.tick().await; Some(()) }, if dog.is_some() => {
                    crate::systemd::watchdog();
                    continue;
                }
            }
            next_sync = tokio::time::Instant::now() + self.sync();
            self.aim_discovery();
            self.aim_health(&mut targets);
        }
    }

    /// Applies the newest set of each listener among `first` and those waiting behind it.
    fn apply_discovery(&mut self, first: DiscoveryEvent) {
        let mut latest: HashMap<String, DiscoveryEvent> = HashMap::new();
        let mut next = Some(first);
        while let Some(ev) = next {
            if self.discovery.is_current(&ev) {
                latest.insert(ev.listener.clone(), ev);
            }
            next = self.discovery_events.try_recv().ok();
        }
        for (name, ev) in latest {
            if let Err(e) = self.control.set_kubernetes(&name, ev.endpoints) {
                tracing::error!(listener = %name, error = %e, "cannot apply the Kubernetes endpoints");
            }
        }
    }

    /// Starts, restarts or stops each listener's Kubernetes watch to match the running
    /// config. A listener that lost its `kubernetes:` loses its endpoints (they drain).
    fn aim_discovery(&self) {
        let cfg = self.reloader.current();
        let mut stopped = Vec::new();
        for l in &cfg.listeners {
            if self
                .discovery
                .set_target(&l.name, l.kubernetes.as_ref(), l.bind.is_ipv6())
            {
                stopped.push(l.name.clone());
            }
        }
        for name in self.discovery.listeners() {
            if !cfg.listeners.iter().any(|l| l.name == name) {
                self.discovery.set_target(&name, None, false);
            }
        }
        for name in stopped {
            if let Err(e) = self.control.set_kubernetes(&name, Vec::new()) {
                tracing::error!(listener = %name, error = %e, "cannot clear the Kubernetes endpoints");
            }
        }
    }

    /// Applies `first` and every verdict already waiting behind it, in one sync.
    fn apply_health(&mut self, first: HealthEvent) {
        let mut batch = vec![first];
        while let Ok(ev) = self.health_events.try_recv() {
            batch.push(ev);
        }
        for ev in &batch {
            // A first verdict of healthy is what everyone expects; say it only at debug level.
            let was = self.control.health(&ev.listener, ev.addr);
            if was == Health::Unknown && ev.health == Health::Healthy {
                tracing::debug!(listener = %ev.listener, endpoint = %ev.addr, "downstream healthy");
            } else {
                tracing::info!(listener = %ev.listener, endpoint = %ev.addr, health = ev.health.as_str(), "downstream health changed");
            }
        }
        let verdicts: Vec<_> = batch
            .into_iter()
            .map(|ev| (ev.listener, ev.addr, ev.health))
            .collect();
        if let Err(e) = self.control.set_health_many(&verdicts) {
            tracing::error!(error = %e, "cannot apply the health checks' verdicts");
        }
    }

    /// Gives the health checker every listener's downstreams (members and those draining
    /// out), where they changed since last time: after reloads, API changes, drains.
    fn aim_health(&self, last: &mut Targets) {
        let cfg = self.reloader.current();
        let desired = self.control.desired();
        let mut now = Targets::new();
        for l in &cfg.listeners {
            let addrs = desired
                .listener(&l.name)
                .map(|s| s.probe_targets())
                .unwrap_or_default();
            now.insert(l.name.clone(), (l.health.clone(), addrs));
        }
        let mut forget = Vec::new();
        for (name, t) in &now {
            if last.get(name) != Some(t) {
                self.health.set_targets(name, t.0.clone(), t.1.clone());
                // Checks turned off: their last verdicts must not keep anyone out of the set.
                if t.0.is_none() {
                    forget.extend(t.1.iter().map(|a| (name.clone(), *a, Health::Unknown)));
                }
            }
        }
        if !forget.is_empty()
            && let Err(e) = self.control.set_health_many(&forget)
        {
            tracing::error!(error = %e, "cannot forget the health of unchecked downstreams");
        }
        for name in last.keys().filter(|n| !now.contains_key(*n)) {
            self.health.set_targets(name, None, Vec::new());
        }
        *last = now;
    }

    /// The config file and every downstreams file of the running config.
    fn watched(&self) -> Vec<PathBuf> {
        let mut v = vec![self.reloader.path().to_owned()];
        v.extend(self.reloader.watched_files());
        v
    }

    /// Reloads on the blocking pool, telling systemd, and re-aims the file watch.
    async fn reload(&self, why: &str, watch: &mut Option<FileWatch>) -> Result<(), String> {
        crate::systemd::reloading();
        let (r, why) = (Arc::clone(&self.reloader), why.to_owned());
        let result = tokio::task::spawn_blocking(move || r.reload(&why))
            .await
            .map_err(|e| format!("reload failed: {e}"))
            .and_then(|r| r.map_err(|e| e.to_string()));
        if let Some(w) = watch
            && let Err(e) = w.set(&self.watched())
        {
            tracing::warn!(error = %e, "cannot watch the new config's files");
        }
        crate::systemd::ready();
        result
    }

    /// Pushes what changed by itself (drains ending); returns when to look again.
    fn sync(&self) -> Duration {
        match self.control.sync() {
            Ok(Some(ms)) => Duration::from_millis(ms.max(1)).min(SYNC_EVERY),
            Ok(None) => SYNC_EVERY,
            Err(e) => {
                tracing::error!(error = %e, "cannot apply a downstream change");
                SYNC_EVERY
            }
        }
    }
}
