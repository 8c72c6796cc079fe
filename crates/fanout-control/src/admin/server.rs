//! The admin HTTP API's server: routes, validation, bearer-token check, and the one error
//! form (`{"error": "..."}`) for every refusal.
//!
//! Routing and serving are separate ([`AdminServer::router`], [`serve`]) as in [`crate::http`],
//! so the caller binds the socket itself before the daemon reports ready. The server checks
//! what it can alone (JSON shape, addresses, weight range, that a PATCH changes something) and
//! leaves what needs state to [`AdminOps`], which it calls on the blocking pool.
//!
//! Error form: handlers take axum's extractors as `Result`s and word their own refusals, and a
//! last layer ([`json_errors`]) rewrites any error response that is not JSON yet (a 405 from
//! the router, a rejection that slipped through), so no client ever sees a plain-text body.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{DefaultBodyLimit, Path as UrlPath, RawQuery, Request, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use fanout_config::MAX_WEIGHT;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::ops::{AdminError, AdminOps};
use super::types::{AddDownstream, ErrorBody, MAX_BODY_BYTES, PatchDownstream, StatusBody};

/// The admin API over some [`AdminOps`], with or without a bearer token.
pub struct AdminServer {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the token.
        f.debug_struct("AdminServer")
            .field("token", &self.shared.token.as_ref().map(|_| "<set>"))
            .finish()
    }
}

/// What every handler reads.
struct Shared {
    ops: Arc<dyn AdminOps>,
    token: Option<String>,
}

type Ctx = State<Arc<Shared>>;

impl AdminServer {
    /// An API over `ops`. With `token`, every request must carry
    /// `Authorization: Bearer TOKEN` (see [`read_token`]), else 401.
    pub fn new(ops: Arc<dyn AdminOps>, token: Option<String>) -> AdminServer {
        AdminServer {
            shared: Arc::new(Shared { ops, token }),
        }
    }

    /// The router serving the contract's routes (DESIGN.md 3b).
    pub fn router(&self) -> Router {
        let listeners = "/v1/listeners/{name}";
        Router::new()
            .route("/v1/listeners", get(list_listeners))
            .route(listeners, get(get_listener))
            .route(&format!("{listeners}/downstreams"), post(add_downstream))
            .route(
                &format!("{listeners}/downstreams/{{address}}"),
                patch(patch_downstream).delete(remove_downstream),
            )
            .route("/v1/reload", post(reload))
            .route("/healthz", get(healthz))
            .route("/readyz", get(readyz))
            .fallback(not_found)
            // After the routes: it is set on those that exist. The router adds `Allow`.
            .method_not_allowed_fallback(method_not_allowed)
            .layer(middleware::from_fn_with_state(
                Arc::clone(&self.shared),
                authorize,
            ))
            .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
            // Outermost, so it sees every response, the 401s and the router's own included.
            .layer(middleware::map_response(json_errors))
            .with_state(Arc::clone(&self.shared))
    }
}

/// Serves `router` on `listener` until `shutdown` completes: the same server as `/metrics`.
pub use crate::http::serve;

/// Reads a bearer token from `path` (`admin.token_file`, `ctl --token-file`): the file's text
/// with surrounding whitespace (a trailing newline) trimmed. Refuses an empty token, and one
/// with whitespace or control characters inside, which no `Authorization` header can carry
/// as one token.
pub fn read_token(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read token file {}: {e}", path.display()))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(format!("token file {} is empty", path.display()));
    }
    if token.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "token file {} must hold one token without spaces or line breaks",
            path.display()
        ));
    }
    Ok(token.to_owned())
}

/// A refusal: a status and the message of its `{"error": ...}` body.
#[derive(Debug)]
struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        let status = StatusCode::from_u16(e.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        ApiError::new(status, e.message())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        json(
            self.status,
            &ErrorBody {
                error: self.message,
            },
        )
    }
}

/// A JSON answer, newline-terminated (nicer on a terminal, harmless to a parser).
fn json<T: Serialize>(status: StatusCode, body: &T) -> Response {
    match serde_json::to_vec(body) {
        Ok(mut bytes) => {
            bytes.push(b'\n');
            (
                status,
                [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
                bytes,
            )
                .into_response()
        }
        // Our types always serialize; should one not, still answer in the error form.
        Err(e) => {
            let body = format!("{{\"error\":\"cannot encode the answer: {e}\"}}\n");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                [(header::CONTENT_TYPE, HeaderValue::from_static(JSON))],
                body,
            )
                .into_response()
        }
    }
}

const JSON: &str = "application/json";

/// Runs `f` on the blocking pool: [`AdminOps`] may hold the control plane's lock for a while,
/// and the runtime thread also serves `/metrics`.
async fn blocking<T, F>(shared: &Shared, f: F) -> Result<T, ApiError>
where
    F: FnOnce(&dyn AdminOps) -> T + Send + 'static,
    T: Send + 'static,
{
    let ops = Arc::clone(&shared.ops);
    tokio::task::spawn_blocking(move || f(ops.as_ref()))
        .await
        .map_err(|e| {
            ApiError::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("the request failed inside the control plane: {e}"),
            )
        })
}

fn no_listener(name: &str) -> AdminError {
    AdminError::NotFound(format!("no listener named {name:?}"))
}

/// The path's parameters, or a 400 in our words (bad percent-encoding, not UTF-8).
fn path_params<T>(p: Result<UrlPath<T>, PathRejection>) -> Result<T, ApiError> {
    p.map(|UrlPath(v)| v)
        .map_err(|r| ApiError::bad(format!("invalid path: {}", r.body_text())))
}

/// A JSON body of type `T`: 413 when over [`MAX_BODY_BYTES`], 400 when it is not `T`.
///
/// Parsed here rather than by axum's `Json` so that the content type is not required (`curl
/// -d` sends a form type) and every failure is worded the same way.
fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|r| {
        if r.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("request body too large (limit {MAX_BODY_BYTES} bytes)"),
            )
        } else {
            ApiError::new(r.status(), r.body_text())
        }
    })?;
    serde_json::from_slice(&bytes).map_err(|e| ApiError::bad(format!("invalid JSON body: {e}")))
}

/// A socket address from the API, in the config's words when it is not one.
fn parse_addr(s: &str) -> Result<SocketAddr, ApiError> {
    s.trim().parse().map_err(|_| {
        let hint = if s.contains("::") && !s.contains('[') {
            " (write IPv6 as [addr]:port)"
        } else if !s.contains(':') {
            " (expected ip:port, e.g. 127.0.0.1:6001)"
        } else {
            ""
        };
        ApiError::bad(format!("invalid socket address {s:?}{hint}"))
    })
}

/// An address a new downstream may have: a real port and a named host, as the config demands.
fn usable_downstream(s: &str) -> Result<SocketAddr, ApiError> {
    let addr = parse_addr(s)?;
    if addr.port() == 0 {
        return Err(ApiError::bad(format!("downstream {addr} has port 0")));
    }
    if addr.ip().is_unspecified() {
        return Err(ApiError::bad(format!(
            "downstream {addr} is an unspecified address; name a host"
        )));
    }
    Ok(addr)
}

fn check_weight(w: u32) -> Result<u32, ApiError> {
    if (1..=MAX_WEIGHT).contains(&w) {
        Ok(w)
    } else {
        Err(ApiError::bad(format!(
            "weight {w} is invalid: must be 1..={MAX_WEIGHT}"
        )))
    }
}

/// `?now=true|false` (a bare `?now` means true); anything else is refused, so a typo
/// (`?nwo=true`) does not drain what the operator meant to drop.
fn parse_now(query: Option<&str>) -> Result<bool, ApiError> {
    let mut now = false;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        now = match pair.split_once('=').unwrap_or((pair, "true")) {
            ("now", "true" | "1") => true,
            ("now", "false" | "0") => false,
            ("now", v) => {
                return Err(ApiError::bad(format!(
                    "invalid value {v:?} for now: expected true or false"
                )));
            }
            (k, _) => return Err(ApiError::bad(format!("unknown query parameter {k:?}"))),
        };
    }
    Ok(now)
}

async fn list_listeners(State(s): Ctx) -> Result<Response, ApiError> {
    let all = blocking(&s, |o| o.listeners()).await?;
    Ok(json(StatusCode::OK, &all))
}

async fn get_listener(
    State(s): Ctx,
    name: Result<UrlPath<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = path_params(name)?;
    let view = blocking(&s, move |o| {
        o.listener(&name).ok_or_else(|| no_listener(&name))
    })
    .await??;
    Ok(json(StatusCode::OK, &view))
}

/// `POST .../downstreams`: 201 with the listener as it is now.
async fn add_downstream(
    State(s): Ctx,
    name: Result<UrlPath<String>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let name = path_params(name)?;
    let req: AddDownstream = json_body(body)?;
    let addr = usable_downstream(&req.address)?;
    let weight = check_weight(req.weight)?;
    let view = blocking(&s, move |o| {
        let l = o.listener(&name).ok_or_else(|| no_listener(&name))?;
        if addr == l.bind {
            return Err(AdminError::BadRequest(format!(
                "downstream {addr} is the listener itself (forwarding loop)"
            )));
        }
        o.add_downstream(&name, addr, weight)?;
        o.listener(&name).ok_or_else(|| no_listener(&name))
    })
    .await??;
    Ok(json(StatusCode::CREATED, &view))
}

/// `PATCH .../downstreams/{address}`: 200 with the listener as it is now.
async fn patch_downstream(
    State(s): Ctx,
    params: Result<UrlPath<(String, String)>, PathRejection>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let (name, address) = path_params(params)?;
    let addr = parse_addr(&address)?;
    let req: PatchDownstream = json_body(body)?;
    if req.weight.is_none() && req.state.is_none() {
        return Err(ApiError::bad(
            "nothing to change: give \"weight\" and/or \"state\"",
        ));
    }
    let weight = req.weight.map(check_weight).transpose()?;
    let state = req.state;
    let view = blocking(&s, move |o| {
        o.patch_downstream(&name, addr, weight, state)?;
        o.listener(&name).ok_or_else(|| no_listener(&name))
    })
    .await??;
    Ok(json(StatusCode::OK, &view))
}

/// `DELETE .../downstreams/{address}[?now=true]`: 200 with the listener as it is now (the
/// downstream still listed as draining, unless removed at once).
async fn remove_downstream(
    State(s): Ctx,
    params: Result<UrlPath<(String, String)>, PathRejection>,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let (name, address) = path_params(params)?;
    let addr = parse_addr(&address)?;
    let now = parse_now(query.as_deref())?;
    let view = blocking(&s, move |o| {
        o.remove_downstream(&name, addr, now)?;
        o.listener(&name).ok_or_else(|| no_listener(&name))
    })
    .await??;
    Ok(json(StatusCode::OK, &view))
}

/// `POST /v1/reload`: 200, or the refusal (400 with the validation error for a bad config).
async fn reload(State(s): Ctx) -> Result<Response, ApiError> {
    blocking(&s, |o| o.reload()).await??;
    Ok(json(
        StatusCode::OK,
        &StatusBody {
            status: "reloaded".into(),
        },
    ))
}

async fn healthz(State(s): Ctx) -> Result<Response, ApiError> {
    if blocking(&s, |o| o.live()).await? {
        Ok(json(
            StatusCode::OK,
            &StatusBody {
                status: "live".into(),
            },
        ))
    } else {
        Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "not live"))
    }
}

async fn readyz(State(s): Ctx) -> Result<Response, ApiError> {
    if blocking(&s, |o| o.ready()).await? {
        Ok(json(
            StatusCode::OK,
            &StatusBody {
                status: "ready".into(),
            },
        ))
    } else {
        Err(ApiError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: not every listener is bound and knows its downstreams (a Kubernetes watch has not listed yet)",
        ))
    }
}

async fn not_found(method: Method, uri: Uri) -> ApiError {
    ApiError::not_found(format!("no route {method} {}", uri.path()))
}

async fn method_not_allowed(method: Method, uri: Uri) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed on {}", uri.path()),
    )
}

/// With a token configured, lets through only requests that carry it.
async fn authorize(State(s): Ctx, req: Request, next: Next) -> Response {
    if let Some(token) = &s.token {
        let refusal = match bearer(req.headers()) {
            None => Some("missing bearer token: send Authorization: Bearer TOKEN"),
            Some(given) if !constant_time_eq(given, token.as_bytes()) => Some("invalid token"),
            Some(_) => None,
        };
        if let Some(message) = refusal {
            let mut resp = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

/// The token of an `Authorization: Bearer TOKEN` header (scheme case-insensitive).
fn bearer(headers: &HeaderMap) -> Option<&[u8]> {
    let value = headers.get(header::AUTHORIZATION)?.as_bytes();
    let space = value.iter().position(|&b| b == b' ')?;
    let (scheme, rest) = value.split_at(space);
    scheme
        .eq_ignore_ascii_case(b"bearer")
        .then(|| rest.trim_ascii())
}

/// Compares without an early exit, so the time taken does not tell how much of a guess was
/// right. It runs over the longer input; only the lengths' relation can show.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= std::hint::black_box(x ^ y);
    }
    diff == 0
}

/// Rewrites an error response that is not JSON (the router's 405, a rejection axum answered
/// itself) into the contract's form, keeping its status and headers (`Allow`).
async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(JSON.as_bytes()));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_owned())
        .unwrap_or_default();
    let error = if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("request failed")
            .to_lowercase()
    } else {
        text
    };
    let fresh = json(status, &ErrorBody { error });
    let (fresh_parts, body) = fresh.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    for (k, v) in &fresh_parts.headers {
        parts.headers.insert(k, v.clone());
    }
    Response::from_parts(parts, Body::new(body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_time_eq_is_equality() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret1"));
        assert!(!constant_time_eq(b"", b"x"));
        assert!(constant_time_eq(b"", b""));
    }

    #[test]
    fn bearer_takes_the_token() {
        let mut h = HeaderMap::new();
        assert_eq!(bearer(&h), None);
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("Bearer  abc "),
        );
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(
            header::AUTHORIZATION,
            HeaderValue::from_static("bearer abc"),
        );
        assert_eq!(bearer(&h), Some(&b"abc"[..]));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Basic abc"));
        assert_eq!(bearer(&h), None);
    }

    #[tokio::test]
    async fn plain_error_responses_become_json() {
        let plain = (
            StatusCode::METHOD_NOT_ALLOWED,
            [(header::ALLOW, "GET,HEAD")],
            "Method not allowed",
        )
            .into_response();
        let resp = json_errors(plain).await;
        assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(resp.headers()[header::ALLOW], "GET,HEAD");
        assert_eq!(resp.headers()[header::CONTENT_TYPE], JSON);
        let body = axum::body::to_bytes(resp.into_body(), 1024).await;
        assert_eq!(
            body.ok().as_deref(),
            Some(&b"{\"error\":\"Method not allowed\"}\n"[..])
        );
        // An empty body gets the status's reason; a success is left alone.
        let resp = json_errors(StatusCode::NOT_FOUND.into_response()).await;
        let body = axum::body::to_bytes(resp.into_body(), 1024).await;
        assert_eq!(
            body.ok().as_deref(),
            Some(&b"{\"error\":\"not found\"}\n"[..])
        );
        let resp = json_errors("fine".into_response()).await;
        assert!(
            resp.headers()[header::CONTENT_TYPE]
                .as_bytes()
                .starts_with(b"text/plain")
        );
    }

    #[test]
    fn now_query() {
        assert_eq!(parse_now(None).ok(), Some(false));
        assert_eq!(parse_now(Some("now=true")).ok(), Some(true));
        assert_eq!(parse_now(Some("now")).ok(), Some(true));
        assert_eq!(parse_now(Some("now=false")).ok(), Some(false));
        assert!(parse_now(Some("now=yes")).is_err());
        assert!(parse_now(Some("nwo=true")).is_err());
    }
}
