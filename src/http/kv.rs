//! `/kv/{key}`: the public read and write routes.

use actix_web::http::header::{HeaderValue, ALLOW, CONTENT_TYPE, RETRY_AFTER};
use actix_web::http::{Method, StatusCode};
use actix_web::web::ThinData;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;

use super::{key_from, read_body, MaxValue, Query, X_CACHE, X_EXPIRES_AT, X_NODE, X_VERSION};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::node::{answer_body, Ack, Node};
use crate::wire::WriteResult;

/// Longest `?ttl=`: ten years.
const MAX_TTL_SECS: u64 = 10 * 365 * 86_400;

/// Adds `X-Node` to every answer, errors included, and counts bad input.
fn answer(node: &Node, result: Result<HttpResponse, Error>) -> HttpResponse {
    let mut resp = match result {
        Ok(resp) => resp,
        Err(e) => {
            if e.status_code() == StatusCode::BAD_REQUEST || e.status_code() == StatusCode::PAYLOAD_TOO_LARGE {
                Metrics::inc(&node.metrics().bad_requests);
            }
            e.error_response()
        }
    };
    // A standby root has an id too (but no place in the tree). A
    // standby's forwarded answer keeps the leader's X-Node: the leader
    // answered it.
    if let Some(id) = node.node_id() {
        if !resp.headers().contains_key(X_NODE) {
            resp.headers_mut().insert(X_NODE, HeaderValue::from(id));
        }
    }
    resp
}

/// Every `/kv/...` request: GET reads (HEAD too: the same answer without
/// the body, which the server leaves out), PUT and POST write, DELETE deletes.
/// A request that meets no reachable leader (a failover, a re-election, a
/// node re-registering) is held and tried again, up to `--failover-wait`
/// ([`Node::through_failover`]): the body is read once, before the first try.
pub async fn route(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> HttpResponse {
    let result = async {
        let body = match *req.method() {
            Method::PUT | Method::POST => {
                // Bad input is refused before the body is read.
                put_params(&req)?;
                let max = req.app_data::<MaxValue>().map_or(1 << 20, |m| m.0);
                read_body(&req, body, max).await?
            }
            _ => Bytes::new(),
        };
        // A plain read of a key held here is answered as it is (from the
        // store, stale within --stale-if-error, or 503): it never waits.
        let plain_read = matches!(*req.method(), Method::GET | Method::HEAD) && !consistent_of(&req)?;
        let may_wait = || !plain_read || key_from(&req, "/kv/").is_ok_and(|key| !node.holds(&key));
        node.through_failover(may_wait, || once(&node, &req, body.clone())).await
    };
    let result = result.await;
    answer(&node, result)
}

/// One try of a `/kv` request.
async fn once(node: &Node, req: &HttpRequest, body: Bytes) -> Result<HttpResponse, Error> {
    // A standby has no place in the tree; a cache never follows (checked
    // only then: the hit path takes no lock for it).
    if node.place().is_err() && node.is_following() {
        return standby_route(node, req, body).await;
    }
    match *req.method() {
        Method::GET | Method::HEAD => get_inner(node, req).await,
        Method::PUT | Method::POST => put_inner(node, req, body).await,
        Method::DELETE => delete_inner(node, req).await,
        _ => Err(wrong_method(req)),
    }
}

/// 405 for a method `/kv` does not answer.
fn wrong_method(req: &HttpRequest) -> Error {
    Error::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.path().to_string(),
        allowed: super::KV.methods,
    }
}

/// `/kv` at a standby root: plain reads from its copy; writes and
/// consistent reads go to the leader as they came.
async fn standby_route(node: &Node, req: &HttpRequest, body: Bytes) -> Result<HttpResponse, Error> {
    let key = key_from(req, "/kv/")?;
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    if reads && !consistent_of(req)? {
        return Ok(found_response(node.standby_get(&key).await?));
    }
    match *req.method() {
        // Writes with a write id of the standby's, in order (guarantees 5, 6).
        Method::PUT | Method::POST => {
            let (key, ttl, ack) = put_params(req)?;
            let result = node.standby_write(&key, Some(body), ttl, ack).await?;
            return write_answer(&key, &result, ack);
        }
        Method::DELETE => {
            let ack = ack_of(&Query::parse(req, &["ack"])?)?;
            let result = node.standby_write(&key, None, None, ack).await?;
            return write_answer(&key, &result, ack);
        }
        _ if !reads => return Err(wrong_method(req)),
        _ => {}
    }
    let mut headers = Vec::new();
    for name in ["authorization", "content-type", "x-request-id"] {
        if let Some(v) = req.headers().get(name) {
            headers.push((name, v.as_bytes().to_vec()));
        }
    }
    let path = req.uri().path_and_query().map_or(req.path(), |p| p.as_str());
    let (status, answer_headers, answer) = node.forward_to_leader(req.method().as_str(), path, headers, body).await?;
    let status = StatusCode::from_u16(status).map_err(|e| Error::Internal(format!("the leader answered {e}")))?;
    let mut resp = HttpResponse::build(status);
    let keep = [CONTENT_TYPE, X_VERSION, X_CACHE, X_NODE, X_EXPIRES_AT, RETRY_AFTER, ALLOW];
    for (name, value) in answer_headers {
        if keep.iter().any(|k| k.as_str() == name) {
            if let Ok(v) = HeaderValue::from_bytes(&value) {
                resp.insert_header((name, v));
            }
        }
    }
    Ok(resp.body(answer))
}

fn consistent_of(req: &HttpRequest) -> Result<bool, Error> {
    let q = Query::parse(req, &["consistent", "use_cache"])?;
    match (q.bool("consistent")?, q.bool("use_cache")?) {
        (Some(c), Some(u)) if c == u => Err(Error::BadRequest("consistent and use_cache contradict each other".into())),
        (Some(c), _) => Ok(c),
        (None, Some(u)) => Ok(!u),
        (None, None) => Ok(false),
    }
}

fn found_response(found: crate::node::Found) -> HttpResponse {
    let mut resp = HttpResponse::Ok();
    resp.content_type("application/octet-stream")
        .insert_header((X_VERSION, HeaderValue::from(found.version)))
        .insert_header((X_CACHE, HeaderValue::from_static(found.cache.as_str())));
    if let Some(at) = found.expires_at {
        resp.insert_header((X_EXPIRES_AT, HeaderValue::from(at)));
    }
    resp.body(found.value)
}

async fn get_inner(node: &Node, req: &HttpRequest) -> Result<HttpResponse, Error> {
    let key = key_from(req, "/kv/")?;
    let consistent = consistent_of(req)?;
    Ok(found_response(node.get(&key, consistent).await?))
}

fn ack_of(q: &Query) -> Result<Ack, Error> {
    match q.get("ack") {
        None => Ok(Ack::Parent),
        Some(s) => Ack::parse(s).ok_or_else(|| Error::bad_param("ack", format!("{s:?}: use parent or root"))),
    }
}

/// A PUT's key, `?ttl=` and `?ack=`, checked.
fn put_params(req: &HttpRequest) -> Result<(String, Option<u64>, Ack), Error> {
    let key = key_from(req, "/kv/")?;
    let q = Query::parse(req, &["ttl", "ack"])?;
    let ack = ack_of(&q)?;
    let ttl = q.u64("ttl")?;
    if let Some(t) = ttl {
        if t == 0 || t > MAX_TTL_SECS {
            return Err(Error::bad_param("ttl", format!("{t}: must be 1 to {MAX_TTL_SECS} seconds")));
        }
    }
    Ok((key, ttl, ack))
}

async fn put_inner(node: &Node, req: &HttpRequest, value: Bytes) -> Result<HttpResponse, Error> {
    let (key, ttl, ack) = put_params(req)?;
    let result = node.write(&key, Some(value), ttl, ack).await?;
    write_answer(&key, &result, ack)
}

async fn delete_inner(node: &Node, req: &HttpRequest) -> Result<HttpResponse, Error> {
    let key = key_from(req, "/kv/")?;
    let q = Query::parse(req, &["ack"])?;
    let ack = ack_of(&q)?;
    let result = node.write(&key, None, None, ack).await?;
    write_answer(&key, &result, ack)
}

fn write_answer(key: &str, result: &WriteResult, ack: Ack) -> Result<HttpResponse, Error> {
    match result {
        WriteResult::Committed { created: true, .. } => Ok(HttpResponse::Created().json(answer_body(result, ack))),
        WriteResult::Absent if ack == Ack::Root => Err(Error::NotFound(key.to_string())),
        WriteResult::Failed { error } => Err(Error::WriteRefused { key: key.to_string(), reason: error.clone() }),
        WriteResult::InsyncBelowMin { have, need } => Err(Error::InsyncBelowMin { have: *have, need: *need }),
        &WriteResult::InsyncBelowMinAfter { version, have, need } => {
            Err(Error::InsyncBelowMinAfter { version, have, need })
        }
        _ => Ok(HttpResponse::Ok().json(answer_body(result, ack))),
    }
}
