//! Running the daemon: bind everything, serve, reload on request, stop on a signal.
//!
//! Order matters: the downstreams files are read and every socket (listeners, metrics) is
//! bound before the daemon reports ready, and any failure there ends the process with one
//! clear line before anything was served. After that, [`crate::events`] drives the control
//! plane until TERM or INT.

use std::path::Path;
use std::sync::Arc;

use fanout_config::{Config, Fallback, ListenerConfig, Mode};
use fanout_control::admin::{self, ControlOps};
use fanout_control::control_metrics::{ControlStats, ProbeCount};
use fanout_control::discovery::Discovery;
use fanout_control::health::HealthChecker;
use fanout_control::{Control, Exporter, Plane, Reloader, http};
use fanout_kernel::plane::KernelPlane;
use fanout_userspace::UserspacePlane;
use tokio::sync::oneshot;

use crate::events::{Events, Signals};

/// A failure to start.
#[derive(Debug)]
pub struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs until SIGINT or SIGTERM; `path` is the config file `cfg` came from (reloads read it).
pub fn run(cfg: Config, path: &Path) -> Result<(), StartError> {
    // Current-thread: the control plane runs on the main thread, apart from the workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start the control runtime: {e}")))?;
    rt.block_on(serve(cfg, path))
}

async fn serve(cfg: Config, path: &Path) -> Result<(), StartError> {
    // Install the handlers before anything is announced, so a signal sent as soon as we report
    // ready is handled rather than killing the process (SIGHUP's default is to end it).
    let signals = Signals::install()
        .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
    let files = fanout_control::reload::read_files(&cfg).map_err(|e| StartError(e.to_string()))?;
    let sockets = Sockets::bind(&cfg).await?;
    let (plane, kernel) = start_planes(&cfg)?;
    let mut planes: Vec<Arc<dyn Plane>> = Vec::new();
    // The kernel plane first: if it refuses a new set, the userspace plane is not touched.
    if let Some(k) = &kernel {
        planes.push(Arc::clone(k) as Arc<dyn Plane>);
    }
    planes.push(Arc::clone(&plane) as Arc<dyn Plane>);
    let control = Arc::new(Control::new(&cfg, planes));
    for (name, list) in files {
        control
            .set_file(&name, list)
            .map_err(|e| StartError(format!("listener {name:?}: {e}")))?;
    }
    let reloader = Arc::new(Reloader::new(path, cfg.clone(), Arc::clone(&control)));
    let (health_tx, health_events) = tokio::sync::mpsc::unbounded_channel();
    let health = Arc::new(HealthChecker::start(health_tx));
    let (discovery_tx, discovery_events) = tokio::sync::mpsc::unbounded_channel();
    let discovery = Arc::new(Discovery::new(discovery_tx));
    let (reload_tx, api_reloads) = crate::events::reload_channel();
    let watched = Watched {
        control: &control,
        reloader: &reloader,
        health: &health,
        discovery: &discovery,
    };
    let endpoints = sockets.serve(&watched, reload_tx);
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listeners = plane.listeners().len(),
        workers = plane.workers(),
        kernel_listeners = kernel.as_ref().map_or(0, |k| k.listener_names().len()),
        "udp-fanout ready"
    );
    crate::systemd::ready();
    Events {
        control: Arc::clone(&control),
        reloader,
        signals,
        api_reloads,
        health,
        health_events,
        discovery,
        discovery_events,
    }
    .run()
    .await;
    tracing::info!("shutting down");
    crate::systemd::stopping();
    endpoints.stop().await;
    // Detach the kernel programs first: from then on the kernel delivers to the sockets.
    drop(control);
    drop(kernel);
    match Arc::try_unwrap(plane) {
        Ok(p) => p.stop(),
        Err(p) => p.request_stop(),
    }
    tracing::info!("stopped");
    Ok(())
}

/// Binds the listeners and starts both planes; privileges not needed after this are dropped
/// here, before the workers start, so no worker thread is born with them.
fn start_planes(
    cfg: &Config,
) -> Result<(Arc<UserspacePlane>, Option<Arc<KernelPlane>>), StartError> {
    let bound = UserspacePlane::bind(cfg).map_err(|e| StartError(e.to_string()))?;
    let mut kernel = start_kernel(cfg)?;
    crate::privileges::drop_unneeded(cfg);
    let plane = Arc::new(bound.run().map_err(|e| StartError(e.to_string()))?);
    if let Some(k) = kernel.as_mut() {
        k.watch_routes();
    }
    Ok((plane, kernel.map(Arc::new)))
}

/// The TCP endpoints (metrics, admin API), bound before the planes start so a port in use
/// fails start-up before anything is served.
struct Sockets {
    metrics: Option<tokio::net::TcpListener>,
    admin: Option<(tokio::net::TcpListener, Option<String>)>,
}

/// The endpoints' tasks and how to stop them.
struct Endpoints {
    stop: Vec<oneshot::Sender<()>>,
    tasks: Vec<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl Sockets {
    async fn bind(cfg: &Config) -> Result<Sockets, StartError> {
        let metrics = match cfg.metrics.enabled {
            true => Some(
                tokio::net::TcpListener::bind(cfg.metrics.bind)
                    .await
                    .map_err(|e| {
                        StartError(format!(
                            "metrics.bind: cannot bind {}: {}",
                            cfg.metrics.bind,
                            lower(&e)
                        ))
                    })?,
            ),
            false => None,
        };
        Ok(Sockets {
            metrics,
            admin: bind_admin(cfg).await?,
        })
    }

    /// Starts serving the metrics endpoint and the admin API on their sockets.
    fn serve(
        self,
        w: &Watched<'_>,
        reloads: tokio::sync::mpsc::UnboundedSender<admin::ReloadRequest>,
    ) -> Endpoints {
        let control = w.control;
        let mut e = Endpoints {
            stop: Vec::new(),
            tasks: Vec::new(),
        };
        if let Some(l) = self.metrics {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(addr = %addr, "metrics endpoint at http://{addr}/metrics");
            let mut exporter = Exporter::new(control.snapshot_source());
            exporter.add_control(control_stats(w));
            let router = http::router(Arc::new(exporter), readiness(w.discovery));
            e.spawn(|stopped| http::serve(l, router, stopped));
        }
        if let Some((l, token)) = self.admin {
            let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(addr = %addr, "admin API at http://{addr}/v1/listeners");
            let ops = ControlOps::new(
                Arc::clone(control),
                Arc::clone(w.reloader),
                reloads,
                readiness(w.discovery),
            );
            let router = admin::AdminServer::new(Arc::new(ops), token).router();
            e.spawn(|stopped| admin::serve(l, router, stopped));
        }
        e
    }
}

impl Endpoints {
    /// Spawns `serve`, which runs until the future it is given completes.
    fn spawn<F>(
        &mut self,
        serve: impl FnOnce(std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> F,
    ) where
        F: Future<Output = std::io::Result<()>> + Send + 'static,
    {
        let (tx, rx) = oneshot::channel::<()>();
        self.stop.push(tx);
        self.tasks.push(tokio::spawn(serve(Box::pin(async {
            let _ = rx.await;
        }))));
    }

    /// Stops every endpoint and waits for them.
    async fn stop(self) {
        for s in self.stop {
            let _ = s.send(());
        }
        for t in self.tasks {
            if let Ok(Err(e)) = t.await {
                tracing::warn!(error = %e, "an HTTP endpoint ended with an error");
            }
        }
    }
}

/// Starts the kernel plane for the `xdp`/`tc_ebpf` listeners. When it cannot start and every
/// such listener has `fallback: userspace`, they stay served by the userspace plane alone (which
/// already serves them as their slow path) and a warning says why.
fn start_kernel(cfg: &Config) -> Result<Option<KernelPlane>, StartError> {
    match KernelPlane::start(cfg) {
        Ok(k) => {
            if let Some(k) = &k {
                for a in k.attachments() {
                    tracing::info!(interface = %a.interface, how = a.how, "kernel plane active");
                }
            }
            Ok(k)
        }
        Err(e) => {
            let kernel: Vec<&ListenerConfig> = cfg
                .listeners
                .iter()
                .filter(|l| l.mode != Mode::Userspace)
                .collect();
            if kernel.iter().all(|l| l.fallback == Fallback::Userspace) {
                let names: Vec<&str> = kernel.iter().map(|l| l.name.as_str()).collect();
                tracing::warn!(error = %e, listeners = ?names, "kernel plane unavailable; serving these listeners in userspace (fallback: userspace)");
                Ok(None)
            } else {
                Err(StartError(e.to_string()))
            }
        }
    }
}

/// Binds the admin API's socket and reads its token, when the config has an `admin:` section.
async fn bind_admin(
    cfg: &Config,
) -> Result<Option<(tokio::net::TcpListener, Option<String>)>, StartError> {
    let Some(a) = &cfg.admin else {
        return Ok(None);
    };
    let token = a
        .token_file
        .as_deref()
        .map(admin::read_token)
        .transpose()
        .map_err(|e| StartError(format!("admin.token_file: {e}")))?;
    let l = tokio::net::TcpListener::bind(a.bind)
        .await
        .map_err(|e| StartError(format!("admin.bind: cannot bind {}: {}", a.bind, lower(&e))))?;
    Ok(Some((l, token)))
}

/// What the HTTP endpoints report on: the control plane's parts.
struct Watched<'a> {
    control: &'a Arc<Control>,
    reloader: &'a Arc<Reloader>,
    health: &'a Arc<HealthChecker>,
    discovery: &'a Arc<Discovery>,
}

/// Ready: every listener is bound (start-up did that before serving) and every Kubernetes
/// watch has listed once, so no listener serves from an unknown set.
fn readiness(discovery: &Arc<Discovery>) -> http::Readiness {
    let d = Arc::clone(discovery);
    Arc::new(move || d.synced())
}

/// What the control plane's metrics read at a scrape.
fn control_stats(w: &Watched<'_>) -> fanout_control::control_metrics::ControlSource {
    let (c, r, h, d) = (
        Arc::clone(w.control),
        Arc::clone(w.reloader),
        Arc::clone(w.health),
        Arc::clone(w.discovery),
    );
    Arc::new(move || ControlStats {
        reloads: r.counts(),
        panic: c
            .desired()
            .listeners()
            .iter()
            .map(|l| (l.name().to_owned(), c.panicking(l.name())))
            .collect(),
        probes: h
            .counts()
            .into_iter()
            .map(|((listener, addr), n)| ProbeCount {
                listener,
                addr,
                success: n.success,
                failure: n.failure,
            })
            .collect(),
        discovery: d.states().into_iter().map(|s| (s.listener, s.up)).collect(),
    })
}

fn lower(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".into(),
        _ => e.to_string(),
    }
}
