//! Running the daemon: bind everything, serve, stop on a signal.
//!
//! Order matters: every socket (listeners, metrics) is bound before the daemon reports ready,
//! and any failure there ends the process with one clear line before anything was served.

use std::sync::Arc;

use fanout_config::{Config, Fallback, ListenerConfig, Mode};
use fanout_control::{Control, Exporter, Plane, http};
use fanout_kernel::plane::KernelPlane;
use fanout_userspace::UserspacePlane;
use tokio::sync::oneshot;

/// A failure to start.
#[derive(Debug)]
pub struct StartError(String);

impl std::fmt::Display for StartError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Runs until SIGINT or SIGTERM.
pub fn run(cfg: Config) -> Result<(), StartError> {
    // Current-thread: the control plane runs on the main thread, apart from the workers.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| StartError(format!("cannot start the control runtime: {e}")))?;
    rt.block_on(serve(cfg))
}

async fn serve(cfg: Config) -> Result<(), StartError> {
    // Install the handlers before anything is announced, so a signal sent as soon as we report
    // ready is handled rather than killing the process.
    let signals = Signals::install()
        .map_err(|e| StartError(format!("cannot install signal handlers: {e}")))?;
    let metrics_listener = if cfg.metrics.enabled {
        let l = tokio::net::TcpListener::bind(cfg.metrics.bind)
            .await
            .map_err(|e| {
                StartError(format!(
                    "metrics.bind: cannot bind {}: {}",
                    cfg.metrics.bind,
                    lower(&e)
                ))
            })?;
        Some(l)
    } else {
        None
    };
    let bound = UserspacePlane::bind(&cfg).map_err(|e| StartError(e.to_string()))?;
    let mut kernel = start_kernel(&cfg)?;
    // Everything privileged is done: threads started from here on are born without the rest.
    crate::privileges::drop_unneeded();
    let plane = Arc::new(bound.run().map_err(|e| StartError(e.to_string()))?);
    if let Some(k) = kernel.as_mut() {
        k.watch_routes();
    }
    let kernel = kernel.map(Arc::new);
    let mut planes: Vec<Arc<dyn Plane>> = Vec::new();
    // The kernel plane first: if it refuses a new set, the userspace plane is not touched.
    if let Some(k) = &kernel {
        planes.push(Arc::clone(k) as Arc<dyn Plane>);
    }
    planes.push(Arc::clone(&plane) as Arc<dyn Plane>);
    let control = Arc::new(Control::new(&cfg, planes));
    let (stop_http, http_stopped) = oneshot::channel::<()>();
    let http_task = metrics_listener.map(|l| {
        let addr = l.local_addr().map(|a| a.to_string()).unwrap_or_default();
        tracing::info!(addr = %addr, "metrics endpoint at http://{addr}/metrics");
        let exporter = Arc::new(Exporter::new(control.snapshot_source()));
        tokio::spawn(http::serve(l, http::router(exporter), async {
            let _ = http_stopped.await;
        }))
    });
    tracing::info!(
        version = env!("CARGO_PKG_VERSION"),
        listeners = plane.listeners().len(),
        workers = plane.workers(),
        kernel_listeners = kernel.as_ref().map_or(0, |k| k.listener_names().len()),
        "udp-fanout ready"
    );
    notify_systemd(&[sd_notify::NotifyState::Ready]);
    signals.wait().await;
    tracing::info!("shutting down");
    notify_systemd(&[sd_notify::NotifyState::Stopping]);
    let _ = stop_http.send(());
    if let Some(t) = http_task {
        let _ = t.await;
    }
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

fn notify_systemd(state: &[sd_notify::NotifyState<'_>]) {
    if let Err(e) = sd_notify::notify(state) {
        tracing::debug!(error = %e, "sd_notify failed");
    }
}

/// SIGTERM and SIGINT, both meaning "stop".
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    async fn wait(mut self) {
        tokio::select! {
            _ = self.term.recv() => {}
            _ = self.int.recv() => {}
        }
    }
}

fn lower(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => "address already in use".into(),
        _ => e.to_string(),
    }
}
