//! Middleware: what runs around the handlers.
//!
//! - [`track`] wraps the whole app: the request's id (`X-Request-Id`,
//!   [`crate::trace`]) is in scope while the handler runs, set on the
//!   response, and logged in one access line per request (target
//!   `treecache::access`, level debug: `RUST_LOG=info,treecache::access=debug`).
//! - [`require_secret`] wraps the internal scope (`/clients`, `/internal`):
//!   the cluster secret or 401, before any handler reads the body.
//! - [`require_token`] wraps `/kv`, `/metrics` and `/dump`: the API token,
//!   when one is set, or 401.
//!
//! A refusal is a response, not an `Err`, so [`track`] still stamps it with
//! the request id.

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::header::HeaderValue;
use actix_web::middleware::Next;
use actix_web::web::ThinData;
use actix_web::ResponseError;

use crate::auth::Guard;
use crate::error::{Error, Result};
use crate::node::Node;
use crate::trace::{self, REQUEST_ID_HEADER};

/// Log target of the per-request access line.
pub const ACCESS_TARGET: &str = "treecache::access";

pub async fn track(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> std::result::Result<ServiceResponse<impl MessageBody>, actix_web::Error> {
    let id = trace::id_from(req.headers().get(REQUEST_ID_HEADER).map(HeaderValue::as_bytes));
    let access = log::log_enabled!(target: ACCESS_TARGET, log::Level::Debug)
        .then(|| (req.method().clone(), req.path().to_string(), std::time::Instant::now()));
    trace::scope(id.clone(), async move {
        let mut resp = next.call(req).await?;
        if let Ok(v) = HeaderValue::from_str(&id) {
            resp.headers_mut().insert(REQUEST_ID_HEADER, v);
        }
        if let Some((method, path, started)) = access {
            log::debug!(
                target: ACCESS_TARGET,
                "{method} {path} {} {:.3}ms",
                resp.status().as_u16(),
                started.elapsed().as_secs_f64() * 1e3
            );
        }
        Ok(resp)
    })
    .await
}

fn guard(req: &ServiceRequest) -> Result<&Guard> {
    req.app_data::<ThinData<Node>>()
        .map(|node| node.guard())
        .ok_or_else(|| Error::Internal("no node in the app data".into()))
}

/// Runs the handler when `check` passes; otherwise answers its error.
async fn gate<B: MessageBody>(
    req: ServiceRequest,
    next: Next<B>,
    check: impl FnOnce(&Guard, &ServiceRequest) -> Result<()>,
) -> std::result::Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    match guard(&req).and_then(|g| check(g, &req)) {
        Ok(()) => Ok(next.call(req).await?.map_into_left_body()),
        Err(e) => {
            log::debug!("refused {} {}: {e}", req.method(), req.path());
            Ok(req.into_response(e.error_response()).map_into_right_body())
        }
    }
}

pub async fn require_secret<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> std::result::Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    gate(req, next, |g, req| g.check_secret(req.headers())).await
}

pub async fn require_token<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> std::result::Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    gate(req, next, |g, req| g.check_token(req.headers())).await
}
