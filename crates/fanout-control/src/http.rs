//! The HTTP endpoint: `GET /metrics` (Prometheus), `GET /healthz` (liveness) and `GET /readyz`
//! (readiness: 200 once every listener is bound and knows its downstreams, 503 before).
//!
//! Probes are served here as well as on the admin API because this is the port a Kubernetes
//! DaemonSet exposes anyway, and the admin API (loopback by default, maybe with a token) is
//! not meant to be reachable by the kubelet.
//!
//! Routing and serving are separate ([`router`], [`serve`]) so the caller binds the listening
//! socket itself, before the daemon reports ready, and a port in use fails start-up rather than
//! a background task. Each scrape renders a fresh exposition from the planes' counters; nothing
//! is cached between scrapes.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Exporter;

/// Whether the daemon is ready to serve (see [`router`]).
pub type Readiness = Arc<dyn Fn() -> bool + Send + Sync>;

/// The router serving the exporter and the probes.
pub fn router(exporter: Arc<Exporter>, ready: Readiness) -> Router {
    Router::new()
        .route(
            "/metrics",
            get(move || {
                let exporter = Arc::clone(&exporter);
                async move {
                    (
                        [(header::CONTENT_TYPE, Exporter::CONTENT_TYPE)],
                        exporter.render(),
                    )
                        .into_response()
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = ready();
                async move {
                    match ready {
                        true => (StatusCode::OK, "ready\n"),
                        false => (StatusCode::SERVICE_UNAVAILABLE, "not ready\n"),
                    }
                }
            }),
        )
}

/// Serves `router` on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
}
