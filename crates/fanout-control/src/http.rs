//! The HTTP endpoint: `GET /metrics` (Prometheus) and `GET /healthz` (liveness).
//!
//! Routing and serving are separate ([`router`], [`serve`]) so the caller binds the listening
//! socket itself, before the daemon reports ready, and a port in use fails start-up rather than
//! a background task. Each scrape renders a fresh exposition from the planes' counters; nothing
//! is cached between scrapes.

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::TcpListener;

use crate::metrics::Exporter;

/// The router serving the exporter.
pub fn router(exporter: Arc<Exporter>) -> Router {
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
