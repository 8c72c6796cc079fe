//! One listener's watch: connect, list then watch the Service's EndpointSlices with kube-rs's
//! watcher, and send the selected downstreams whenever they change.
//!
//! The watcher does the protocol (paged list, watch from the list's version with bookmarks,
//! relist on an expired version); this task decides what a failure means:
//!
//! - An expired version (410, in the watch stream or on a paged list) is routine compaction:
//!   the watcher relists by itself, the set and `discovery_up` stay as they are, and the
//!   relisted slices replace the set at once, atomically (buffered until the list is done),
//!   so nothing is emptied in between.
//! - Any other error (API server unreachable, credentials refused, a dropped connection)
//!   marks the listener down, keeps the last set, and starts over after a jittered backoff
//!   with a fresh client and a full list. Starting over rather than resuming the watch makes
//!   `discovery_up 1` mean "listed since the error", which a resumed watch cannot prove until
//!   something changes, and re-reads the credentials, which rotate. The list is cheap: label
//!   selected and served from the API server's watch cache.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use futures_util::StreamExt;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::Api;
use kube::config::KubeConfigOptions;
use kube::runtime::watcher::{self, Event};
use tokio::sync::mpsc::UnboundedSender;

use super::backoff::{BASE, Backoff, CAP};
use super::slices::{Selected, Selector, select};
use super::{DiscoveryEvent, Status};

/// Expired versions in a row that are still routine; more and something is wrong.
const EXPIRED_IN_A_ROW: u32 = 3;

/// What one watch is for.
#[derive(Debug, Clone)]
pub(crate) struct Spec {
    pub listener: String,
    pub generation: u64,
    pub namespace: String,
    pub service: String,
    pub selector: Selector,
}

/// What the task remembers across restarts: the last set sent, the last port complaint.
#[derive(Default)]
struct Sent {
    endpoints: Option<Vec<(SocketAddr, bool)>>,
    without_port: Vec<String>,
}

/// Runs until aborted.
pub(crate) async fn run(spec: Spec, status: Arc<Status>, tx: UnboundedSender<DiscoveryEvent>) {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut backoff = Backoff::new(BASE, CAP, seed);
    let mut sent = Sent::default();
    loop {
        let e = session(&spec, &status, &tx, &mut sent, &mut backoff).await;
        let delay = backoff.next_delay();
        let was_up = status.up.swap(false, Ordering::Relaxed);
        let first = status.failures.fetch_add(1, Ordering::Relaxed) == 0;
        if was_up || first {
            tracing::warn!(listener = %spec.listener, service = %format!("{}/{}", spec.namespace, spec.service), error = %e, retry_in = ?delay, "kubernetes discovery down; keeping the last known endpoints");
        } else {
            tracing::debug!(listener = %spec.listener, error = %e, retry_in = ?delay, "kubernetes discovery still down");
        }
        tokio::time::sleep(delay).await;
    }
}

/// One client and one watcher, until an error that is not routine.
async fn session(
    spec: &Spec,
    status: &Status,
    tx: &UnboundedSender<DiscoveryEvent>,
    sent: &mut Sent,
    backoff: &mut Backoff,
) -> String {
    let client = match client().await {
        Ok(c) => c,
        Err(e) => return e,
    };
    let api: Api<EndpointSlice> = Api::namespaced(client, &spec.namespace);
    let cfg =
        watcher::Config::default().labels(&format!("kubernetes.io/service-name={}", spec.service));
    let mut stream = std::pin::pin!(watcher::watcher(api, cfg));
    let mut store: BTreeMap<String, EndpointSlice> = BTreeMap::new();
    let mut relist: Option<BTreeMap<String, EndpointSlice>> = None;
    let mut listed = false;
    let mut expired = 0u32;
    while let Some(ev) = stream.next().await {
        match ev {
            Ok(Event::Init) => relist = Some(BTreeMap::new()),
            Ok(Event::InitApply(s)) => {
                relist.get_or_insert_default().insert(key(&s), s);
            }
            Ok(Event::InitDone) => {
                store = relist.take().unwrap_or_default();
                listed = true;
                expired = 0;
                backoff.reset();
                status.synced.store(true, Ordering::Relaxed);
                if !status.up.swap(true, Ordering::Relaxed) {
                    tracing::info!(listener = %spec.listener, slices = store.len(), "kubernetes discovery synced");
                }
                publish(spec, &store, tx, sent);
            }
            Ok(Event::Apply(s)) => {
                store.insert(key(&s), s);
                if listed {
                    publish(spec, &store, tx, sent);
                }
            }
            Ok(Event::Delete(s)) => {
                store.remove(&key(&s));
                if listed {
                    publish(spec, &store, tx, sent);
                }
            }
            Err(e) if is_expired(&e) && expired < EXPIRED_IN_A_ROW => {
                expired += 1;
                tracing::debug!(listener = %spec.listener, error = %e, "resource version expired; relisting");
            }
            Err(e) => return e.to_string(),
        }
    }
    "the watch ended".into()
}

/// Sends the selection if it changed, and says once when slices lack the port.
fn publish(
    spec: &Spec,
    store: &BTreeMap<String, EndpointSlice>,
    tx: &UnboundedSender<DiscoveryEvent>,
    sent: &mut Sent,
) {
    let Selected {
        endpoints,
        without_port,
        same_node_only,
    } = select(store.values(), &spec.selector);
    if without_port != sent.without_port && !without_port.is_empty() {
        tracing::warn!(listener = %spec.listener, port = %spec.selector.port, slices = ?without_port, "EndpointSlices without the configured port; their endpoints are not used");
    }
    sent.without_port = without_port;
    if sent.endpoints.as_ref() == Some(&endpoints) {
        return;
    }
    let draining = endpoints.iter().filter(|(_, d)| *d).count();
    tracing::info!(listener = %spec.listener, endpoints = endpoints.len(), draining, same_node_only, "kubernetes endpoints changed");
    sent.endpoints = Some(endpoints.clone());
    let _ = tx.send(DiscoveryEvent {
        listener: spec.listener.clone(),
        generation: spec.generation,
        endpoints,
    });
}

/// A slice's key in the store.
fn key(s: &EndpointSlice) -> String {
    s.metadata.name.clone().unwrap_or_default()
}

/// An expired resource version: routine, the watcher relists.
fn is_expired(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(s) => s.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(s)) => s.code == 410,
        _ => false,
    }
}

/// A client from `$KUBECONFIG` when set, else the in-cluster service account, else
/// `~/.kube/config`.
async fn client() -> Result<kube::Client, String> {
    let opts = KubeConfigOptions::default();
    let config = if std::env::var_os("KUBECONFIG").is_some() {
        kube::Config::from_kubeconfig(&opts)
            .await
            .map_err(|e| format!("KUBECONFIG: {e}"))?
    } else {
        match kube::Config::incluster() {
            Ok(c) => c,
            Err(in_cluster) => kube::Config::from_kubeconfig(&opts).await.map_err(|e| {
                format!("no in-cluster service account ({in_cluster}) and no kubeconfig ({e})")
            })?,
        }
    };
    kube::Client::try_from(config).map_err(|e| format!("cannot build a client: {e}"))
}
