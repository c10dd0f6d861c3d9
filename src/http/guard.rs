//! Middleware: what runs around the handlers.
//!
//! - [`Track`] wraps the whole app: the request's id (`X-Request-Id`,
//!   [`crate::trace`]) is in scope while the handler runs and set on the
//!   response when there is one; the request's latency goes into
//!   `treecache_request_duration_seconds` by route and outcome; and, when
//!   enabled, one access line per request (target `treecache::access`,
//!   level debug: `RUST_LOG=info,treecache::access=debug`).
//! - [`require_secret`] wraps the internal scope (`/clients`, `/internal`):
//!   the cluster secret (and under TLS a node's certificate on the
//!   connection) or 401, before any handler reads the body.
//! - [`require_token`] wraps `/kv`, `/metrics` and `/dump`: the API token,
//!   when one is set, or 401.
//!
//! A refusal is a response, not an `Err`, so [`Track`] still stamps and
//! counts it.
//!
//! [`Track`] is written out as a `Transform` rather than `from_fn`: every
//! request passes through it, and its future is a named type (the request
//! id's task-local scope around [`Tracked`]), so it costs no allocation of
//! its own; the route label is an index, the outcome comes from the
//! status and `X-Cache`.

use std::future::{ready, Future, Ready};
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll};
use std::time::Instant;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{forward_ready, Service, ServiceRequest, ServiceResponse, Transform};
use actix_web::http::Method;
use actix_web::middleware::Next;
use actix_web::web::ThinData;
use actix_web::ResponseError;
use tokio::task::futures::TaskLocalFuture;

use super::X_CACHE;
use crate::auth::Guard;
use crate::error::{Error, Result};
use crate::metrics::Outcome;
use crate::node::Node;
use crate::trace::{self, RequestId, REQUEST_ID_HEADER};

/// Log target of the per-request access line.
pub const ACCESS_TARGET: &str = "treecache::access";

/// The app-wide middleware (see the module doc). Build it with the node
/// whose metrics it records into.
pub struct Track {
    node: Node,
}

impl Track {
    pub fn new(node: Node) -> Track {
        Track { node }
    }
}

impl<S, B> Transform<S, ServiceRequest> for Track
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: Unpin,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Transform = TrackService<S>;
    type InitError = ();
    type Future = Ready<std::result::Result<TrackService<S>, ()>>;

    fn new_transform(&self, service: S) -> Self::Future {
        // One per worker thread: an Rc, so a request's future holds the
        // node without touching the Arc's shared count.
        ready(Ok(TrackService { service, node: Rc::new(self.node.clone()) }))
    }
}

pub struct TrackService<S> {
    service: S,
    node: Rc<Node>,
}

impl<S, B> Service<ServiceRequest> for TrackService<S>
where
    S: Service<ServiceRequest, Response = ServiceResponse<B>, Error = actix_web::Error>,
    S::Future: Unpin,
{
    type Response = ServiceResponse<B>;
    type Error = actix_web::Error;
    type Future = TaskLocalFuture<RequestId, Tracked<S::Future>>;

    forward_ready!(service);

    fn call(&self, req: ServiceRequest) -> Self::Future {
        let started = Instant::now();
        let route = super::route_label(req.method(), req.path());
        let access = log::log_enabled!(target: ACCESS_TARGET, log::Level::Debug)
            .then(|| (req.method().clone(), req.path().to_string()));
        let id = RequestId::from_header(req.headers().get(REQUEST_ID_HEADER));
        let inner = self.service.call(req);
        trace::scope(id, Tracked { inner, node: self.node.clone(), started, route, access })
    }
}

/// A request on its way through the app; on its answer, records it.
pub struct Tracked<F> {
    inner: F,
    node: Rc<Node>,
    started: Instant,
    route: usize,
    access: Option<(Method, String)>,
}

impl<F, B> Future for Tracked<F>
where
    F: Future<Output = std::result::Result<ServiceResponse<B>, actix_web::Error>> + Unpin,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let Poll::Ready(mut result) = Pin::new(&mut this.inner).poll(cx) else { return Poll::Pending };
        let took = this.started.elapsed();
        let status = match &result {
            Ok(resp) => resp.status(),
            Err(e) => e.as_response_error().status_code(),
        };
        let cache = result.as_ref().ok().and_then(|r| r.headers().get(X_CACHE)).map(|v| v.as_bytes());
        this.node.metrics().request(this.route, Outcome::of(status.as_u16(), cache), took);
        if let Some((method, path)) = this.access.take() {
            log::debug!(target: ACCESS_TARGET, "{method} {path} {} {:.3}ms", status.as_u16(), took.as_secs_f64() * 1e3);
        }
        if let Ok(resp) = &mut result {
            trace::stamp(resp.headers_mut());
        }
        Poll::Ready(result)
    }
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
    gate(req, next, |g, req| {
        g.check_node_certificate(req.conn_data::<crate::tls::PeerVerified>().is_some())?;
        g.check_secret(req.headers())
    })
    .await
}

pub async fn require_token<B: MessageBody + 'static>(
    req: ServiceRequest,
    next: Next<B>,
) -> std::result::Result<ServiceResponse<EitherBody<B>>, actix_web::Error> {
    gate(req, next, |g, req| g.check_token(req.headers())).await
}
