//! `/kv/{key}`: the public read and write routes.

use actix_web::http::header::{HeaderValue, ALLOW, CONTENT_TYPE, IF_MATCH, IF_NONE_MATCH, RETRY_AFTER};
use actix_web::http::{Method, StatusCode};
use actix_web::web::ThinData;
use actix_web::{web, HttpRequest, HttpResponse, ResponseError};
use bytes::Bytes;

use super::{key_from, read_body, MaxValue, Query, X_CACHE, X_EXPIRES_AT, X_NODE, X_VERSION};
use crate::error::Error;
use crate::metrics::Metrics;
use crate::node::{answer_body, refusal, Ack, Node, MAX_TTL_SECS};
use crate::store::Condition;
use crate::wire::WriteResult;

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
        // Asked only after a failed try: a hit parses nothing twice.
        let plain_read =
            || matches!(*req.method(), Method::GET | Method::HEAD) && consistent_of(&req).is_ok_and(|c| !c);
        let may_wait = || !plain_read() || key_from(&req, "/kv/").is_ok_and(|key| !node.holds(&key));
        node.through_failover(may_wait, || once(&node, &req, body.clone())).await
    };
    let result = result.await;
    answer(&node, result)
}

/// One try of a `/kv` request.
async fn once(node: &Node, req: &HttpRequest, body: Bytes) -> Result<HttpResponse, Error> {
    if req.headers().contains_key(crate::node::PROXIED_HEADER) {
        // Passed on by a root whose map says we own the key: if ours says
        // otherwise, 409 wrong_group, not another hop (two roots with
        // different maps would pass it back and forth).
        node.refuse_second_hop(&key_from(req, "/kv/")?)?;
    }
    let reads = matches!(*req.method(), Method::GET | Method::HEAD);
    // A standby has no place in the tree; a cache never follows (checked
    // only then: the hit path takes no lock for it). Its writes go through
    // `Node::write` like any node's.
    // All but the read's future are boxed: a hit's future stays small
    // (see `Node::get`).
    if reads && node.place().is_err() && node.is_following() {
        return Box::pin(standby_read(node, req)).await;
    }
    match *req.method() {
        Method::GET | Method::HEAD => get_inner(node, req).await,
        Method::PUT | Method::POST => Box::pin(put_inner(node, req, body)).await,
        Method::DELETE => Box::pin(delete_inner(node, req)).await,
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

/// A read at a standby root: a plain one from its copy; a consistent one
/// goes to the leader as it came.
async fn standby_read(node: &Node, req: &HttpRequest) -> Result<HttpResponse, Error> {
    let key = key_from(req, "/kv/")?;
    if !consistent_of(req)? {
        return Ok(found_response(node.standby_get(&key).await?));
    }
    let mut headers = Vec::new();
    for name in ["authorization", "x-request-id"] {
        if let Some(v) = req.headers().get(name) {
            headers.push((name, v.as_bytes().to_vec()));
        }
    }
    let path = req.uri().path_and_query().map_or(req.path(), |p| p.as_str());
    let (status, answer_headers, answer) =
        node.forward_to_leader(req.method().as_str(), path, headers, Bytes::new()).await?;
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

/// A PUT's key, `?ttl=` (seconds), `?ack=` and condition, checked.
fn put_params(req: &HttpRequest) -> Result<(String, Option<u64>, Ack, Condition), Error> {
    let key = key_from(req, "/kv/")?;
    let q = Query::parse(req, &["ttl", "ack"])?;
    let ack = ack_of(&q)?;
    let ttl = q.u64("ttl")?;
    if let Some(t) = ttl {
        if t == 0 || t > MAX_TTL_SECS {
            return Err(Error::bad_param("ttl", format!("{t}: must be 1 to {MAX_TTL_SECS} seconds")));
        }
    }
    let cond = condition_of(req)?;
    Ok((key, ttl, ack, cond))
}

async fn put_inner(node: &Node, req: &HttpRequest, value: Bytes) -> Result<HttpResponse, Error> {
    let (key, ttl, ack, cond) = put_params(req)?;
    let result = node.write(&key, Some(value), ttl.map(|t| t * 1000), ack, cond).await?;
    write_answer(&key, &result, ack)
}

async fn delete_inner(node: &Node, req: &HttpRequest) -> Result<HttpResponse, Error> {
    let key = key_from(req, "/kv/")?;
    let q = Query::parse(req, &["ack"])?;
    let ack = ack_of(&q)?;
    let cond = condition_of(req)?;
    let result = node.write(&key, None, None, ack, cond).await?;
    write_answer(&key, &result, ack)
}

/// A write's condition from its `If-None-Match: *` (only if absent) or
/// `If-Match: *` (only if present) or `If-Match: <version>` (only if that
/// is the live version; quoted as an entity tag or not). One of the two
/// headers, one value.
fn condition_of(req: &HttpRequest) -> Result<Condition, Error> {
    let header = |name| {
        let mut values = req.headers().get_all(&name);
        let first = values.next().map(|v| v.to_str().map(str::trim));
        if values.next().is_some() {
            return Err(Error::bad_param(
                if name == IF_MATCH { "If-Match" } else { "If-None-Match" },
                "one value only",
            ));
        }
        Ok(first)
    };
    let bad = |name: &'static str, what: &str| Error::bad_param(name, what.to_string());
    match (header(IF_MATCH)?, header(IF_NONE_MATCH)?) {
        (None, None) => Ok(Condition::Always),
        (Some(_), Some(_)) => Err(Error::BadRequest("If-Match and If-None-Match together: send one".into())),
        (None, Some(Ok("*"))) => Ok(Condition::IfAbsent),
        (None, Some(_)) => Err(bad("If-None-Match", "only * is supported (write only if the key is absent)")),
        (Some(Ok("*")), None) => Ok(Condition::IfPresent),
        (Some(Ok(v)), None) => {
            let digits = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            match digits.parse::<u64>() {
                Ok(version) if digits.bytes().all(|b| b.is_ascii_digit()) => Ok(Condition::IfVersion(version)),
                _ => Err(bad("If-Match", "a version as X-Version gives it (digits, quoted or not), or *")),
            }
        }
        (Some(Err(_)), None) => Err(bad("If-Match", "not visible ASCII")),
    }
}

fn write_answer(key: &str, result: &WriteResult, ack: Ack) -> Result<HttpResponse, Error> {
    if let Some(e) = refusal(key, result) {
        return Err(e);
    }
    match result {
        WriteResult::Committed { created: true, .. } => Ok(HttpResponse::Created().json(answer_body(result, ack))),
        WriteResult::Absent if ack == Ack::Root => Err(Error::NotFound(key.to_string())),
        _ => Ok(HttpResponse::Ok().json(answer_body(result, ack))),
    }
}
