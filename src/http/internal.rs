//! Registration (`POST /clients/register`, public, at the root) and the
//! routes nodes use among themselves. Bodies are the formats in
//! [`crate::wire`]; each route checks the sender's epoch.

use actix_web::web::{self, ThinData};
use actix_web::{HttpRequest, HttpResponse, ResponseError};
use serde::Deserialize;

use super::{epoch_of, key_from, read_body, Query, X_EXPIRES_AT, X_VERSION};
use crate::error::{Error, Result};
use crate::node::read::FillAnswer;
use crate::node::Node;
use crate::wire::{self, RegisterRequest, Topology};
use actix_web::http::header::HeaderValue;

/// Largest internal batch body: a full batch, or one write of the largest
/// value a node may take, with room for its key and framing.
const MAX_BATCH_BYTES: usize = crate::node::BATCH_BYTES + crate::config::MAX_VALUE_CEILING as usize + (64 << 10);
/// Largest JSON control message.
const MAX_CONTROL_BYTES: usize = 1 << 20;

fn json_body<T: for<'de> Deserialize<'de>>(body: &[u8], what: &str) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::BadRequest(format!("malformed {what}: {e}")))
}

pub async fn register(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    let body = read_body(&req, body, MAX_CONTROL_BYTES).await?;
    let request: RegisterRequest = json_body(&body, "registration (expected {\"url\": ..., \"id\": N?})")?;
    Ok(HttpResponse::Ok().json(node.register(request).await?))
}

fn child_of(q: &Query) -> Result<u64> {
    q.u64("child")?.ok_or_else(|| Error::bad_param("child", "required"))
}

pub async fn fill(node: ThinData<Node>, req: HttpRequest) -> Result<HttpResponse> {
    if req.method() != actix_web::http::Method::GET {
        return super::method_not_allowed(&req, &super::FILL);
    }
    node.check_epoch(epoch_of(&req)?)?;
    let key = key_from(&req, "/internal/fill/")?;
    let q = Query::parse(&req, &["child", "have", "consistent"])?;
    let child = child_of(&q)?;
    let consistent = q.bool("consistent")?.unwrap_or(false);
    let answer = node.serve_fill(&key, child, q.u64("have")?, consistent).await?;
    // Taken after the child was recorded as a holder: see node::TICK_HEADER.
    let tick = (crate::node::TICK_HEADER, HeaderValue::from(node.store().tick_now()));
    let confirmed = |yes: bool| (crate::node::CONFIRMED_HEADER, HeaderValue::from(u32::from(yes)));
    let mut resp = match answer {
        FillAnswer::Value { version, value, expires_at, confirmed: yes } => {
            let mut resp = HttpResponse::Ok();
            resp.insert_header((X_VERSION, HeaderValue::from(version)));
            resp.insert_header(confirmed(yes));
            if let Some(at) = expires_at {
                resp.insert_header((X_EXPIRES_AT, HeaderValue::from(at)));
            }
            resp.body(value)
        }
        FillAnswer::NotModified { version, confirmed: yes } => HttpResponse::NotModified()
            .insert_header((X_VERSION, HeaderValue::from(version)))
            .insert_header(confirmed(yes))
            .finish(),
        FillAnswer::NotFound { deleted_at } => {
            let mut resp = Error::NotFound(key).error_response();
            if let Some(v) = deleted_at {
                resp.headers_mut().insert(X_VERSION, HeaderValue::from(v));
            }
            resp
        }
    };
    resp.headers_mut().insert(actix_web::http::header::HeaderName::from_static(tick.0), tick.1);
    Ok(resp)
}

/// The sender's store tick (`X-Treecache-Tick`), on messages from a parent.
fn tick_of(req: &HttpRequest) -> Result<Option<u64>> {
    match req.headers().get(crate::node::TICK_HEADER) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .map(Some)
            .ok_or_else(|| Error::bad_param("x-treecache-tick", "not a number")),
    }
}

/// The sending node's id (`X-Treecache-From`) and store generation
/// (`X-Treecache-Generation`), required on pushes and clears.
fn sender_of(req: &HttpRequest) -> Result<(u64, u64)> {
    let number = |name: &'static str, what: &str| {
        req.headers()
            .get(name)
            .ok_or_else(|| Error::bad_param(name, format!("required: the sender's {what}")))?
            .to_str()
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::bad_param(name, format!("not a {what}")))
    };
    Ok((number(crate::node::FROM_HEADER, "node id")?, number(crate::node::GENERATION_HEADER, "store generation")?))
}

/// The sending node's id (`X-Treecache-From`) alone, on invalidations and
/// dropped keys (they need no generation: a stale one drops a key a parent
/// would push again, or keeps a record a push then removes).
fn from_of(req: &HttpRequest) -> Result<u64> {
    req.headers()
        .get(crate::node::FROM_HEADER)
        .ok_or_else(|| Error::bad_param(crate::node::FROM_HEADER, "required: the sender's node id"))?
        .to_str()
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::bad_param(crate::node::FROM_HEADER, "not a node id"))
}

pub async fn write(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    node.check_epoch(epoch_of(&req)?)?;
    let q = Query::parse(&req, &["child", "seen", "standby"])?;
    // From a child in the tree, or (`?standby=ID`) from a standby root
    // passing on its clients' writes.
    let sender = match q.u64("standby")? {
        Some(standby) => Err(standby),
        None => Ok((child_of(&q)?, q.u64("seen")?.unwrap_or(0))),
    };
    let body = read_body(&req, body, MAX_BATCH_BYTES).await?;
    let writes = wire::decode_writes(&body).map_err(Error::BadRequest)?;
    let answers = match sender {
        Ok((child, seen)) => node.accept_writes(child, writes, seen).await?,
        Err(standby) => node.accept_standby_writes(standby, writes).await?,
    };
    let delay = node.args().fault_write_delay_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if node.lose_this_write_reply() {
        return Err(Error::Internal("fault injection: this write answer is lost (--fault-lose-write-replies)".into()));
    }
    Ok(HttpResponse::Ok().insert_header((crate::node::TICK_HEADER, node.store().tick_now())).json(answers))
}

pub async fn push(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    // The epoch is checked against the sender's: a group leader's pushes
    // carry its group's epoch (see `Node::receive_push`).
    let epoch = epoch_of(&req)?;
    let body = read_body(&req, body, MAX_BATCH_BYTES).await?;
    let pushes = wire::decode_pushes(&body).map_err(Error::BadRequest)?;
    let (from, generation) = sender_of(&req)?;
    let tick = tick_of(&req)?;
    Ok(HttpResponse::Ok().json(node.receive_push(from, epoch, generation, pushes, tick)?))
}

pub async fn topology(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    let body = read_body(&req, body, MAX_CONTROL_BYTES).await?;
    let t: Topology = json_body(&body, "topology")?;
    node.receive_topology(t)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ok": true })))
}

pub async fn clear(node: ThinData<Node>, req: HttpRequest) -> Result<HttpResponse> {
    // The epoch is checked against the sender's, as for a push.
    let epoch = epoch_of(&req)?;
    let (from, generation) = sender_of(&req)?;
    node.receive_clear(from, epoch, generation)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ok": true })))
}

/// `POST /internal/invalidate` `{"keys": [..]}` from the parent: drop
/// these keys (it evicts them); answers `{"kept": [..]}`.
pub async fn invalidate(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    node.check_epoch(epoch_of(&req)?)?;
    let from = from_of(&req)?;
    let body = read_body(&req, body, MAX_CONTROL_BYTES).await?;
    let list: wire::KeyList = json_body(&body, "invalidation (expected {\"keys\": [..]})")?;
    Ok(HttpResponse::Ok().json(node.receive_invalidate(from, list.keys).await?))
}

/// `POST /internal/dropped` `{"keys": [..], "tick": T}` from a child: it no
/// longer holds these keys.
pub async fn dropped(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    node.check_epoch(epoch_of(&req)?)?;
    let from = from_of(&req)?;
    let body = read_body(&req, body, MAX_CONTROL_BYTES).await?;
    let dropped: crate::node::Dropped = json_body(&body, "dropped keys (expected {\"keys\": [..], \"tick\": N})")?;
    node.receive_dropped(from, dropped)?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ok": true })))
}

#[derive(Deserialize)]
struct Leave {
    id: u64,
}

pub async fn leave(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    let body = read_body(&req, body, MAX_CONTROL_BYTES).await?;
    let leave: Leave = json_body(&body, "leave (expected {\"id\": N})")?;
    node.remove_member(leave.id).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "ok": true })))
}

/// `POST /internal/standby` `{"id": N, "url": ...}` at the leader: a
/// standby root asks for the replication stream; answers its session.
pub async fn standby(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    node.check_epoch(epoch_of(&req)?)?;
    let body = read_body(&req, body, MAX_CONTROL_BYTES).await?;
    let request: crate::node::StandbyRequest = json_body(&body, "standby (expected {\"id\": N, \"url\": ...})")?;
    Ok(HttpResponse::Ok().json(node.add_standby(request).await?))
}

/// `POST /internal/replicate?session=S&first=B[&resume=P][&snapshot=B]&from=F&to=T&in_sync=B`
/// at a standby: a batch of the leader's stream (log frames); answers once
/// it is applied and durable here.
pub async fn replicate(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    let epoch =
        epoch_of(&req)?.ok_or_else(|| Error::bad_param(crate::node::EPOCH_HEADER, "required: the leader's epoch"))?;
    let from = from_of(&req)?;
    let q = Query::parse(&req, &["session", "first", "resume", "snapshot", "from", "to", "in_sync", "durable"])?;
    let required = |name: &'static str| q.u64(name)?.ok_or_else(|| Error::bad_param(name, "required"));
    let info = crate::node::BatchInfo {
        session: required("session")?,
        first: q.bool("first")?.unwrap_or(false),
        resume: q.u64("resume")?,
        snapshot: q.bool("snapshot")?.unwrap_or(false),
        from: required("from")?,
        to: required("to")?,
        in_sync: q.bool("in_sync")?.unwrap_or(false),
        durable: q.u64("durable")?.unwrap_or(0),
    };
    if info.from > info.to {
        return Err(Error::bad_param("from", format!("{} is after to={}", info.from, info.to)));
    }
    if info.resume.is_some() && (!info.first || info.snapshot) {
        return Err(Error::bad_param("resume", "only the first batch of a session resumes, and not with a snapshot"));
    }
    let body = read_body(&req, body, crate::replication::BATCH_BYTES + MAX_BATCH_BYTES).await?;
    node.receive_replicate(from, epoch, info, &body).await?;
    let delay = node.args().fault_replicate_delay_ms;
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    Ok(HttpResponse::Ok().json(serde_json::json!({ "acked": info.to })))
}

/// Largest import part: a source sends parts of about 4 MiB, each ending
/// with an entry that may be of the largest value a node takes, and its
/// last part carries every write outcome it remembers.
const MAX_IMPORT_BYTES: usize = (64 << 20) + crate::config::MAX_VALUE_CEILING as usize;

/// `POST /internal/import?from=G&slots=A-B,C,..&last=B&part=N&floor=V&since=T` at a
/// group's leader: a part of a slot move's copy from group G's leader (log
/// frames: entries, and write outcomes; with `since`, a tail: entries older
/// than T named only). Answered once it is durable here.
/// `round=R` names the source leader's round of moves the copy is of.
/// `POST /internal/import?from=G&slots=..&abort=true&round=R`, no body:
/// that move rolled back; what its copies up to round R brought is
/// dropped (`{"dropped": N}`).
pub async fn import(node: ThinData<Node>, req: HttpRequest, body: web::Payload) -> Result<HttpResponse> {
    let q = Query::parse(&req, &["from", "slots", "last", "part", "floor", "since", "abort", "round"])?;
    let from = q.u64("from")?.ok_or_else(|| Error::bad_param("from", "required: the source group"))?;
    let from = u32::try_from(from).map_err(|_| Error::bad_param("from", format!("{from} is not a group number")))?;
    let slots_text = q.get("slots").ok_or_else(|| Error::bad_param("slots", "required: the slots moved"))?;
    let mut slots = std::collections::BTreeSet::new();
    for range in slots_text.split(',') {
        slots.extend(crate::slots::parse_range(range).map_err(|e| Error::bad_param("slots", e))?);
    }
    let import = crate::node::Import {
        from,
        slots,
        last: q.bool("last")?.unwrap_or(false),
        floor: q.u64("floor")?.unwrap_or(0),
        since: q.u64("since")?.unwrap_or(0),
        round: q.u64("round")?.unwrap_or(0),
    };
    let part = q.u64("part")?.unwrap_or(0);
    let body = read_body(&req, body, MAX_IMPORT_BYTES).await?;
    let epoch = epoch_of(&req)?
        .ok_or_else(|| Error::bad_param(crate::node::EPOCH_HEADER, "required: the source leader's epoch"))?;
    if q.bool("abort")?.unwrap_or(false) {
        if !body.is_empty() {
            return Err(Error::bad_param("abort", "an abort has no body"));
        }
        let dropped = node.abort_import(import.from, import.slots, epoch, import.round).await?;
        return Ok(HttpResponse::Ok().json(serde_json::json!({ "dropped": dropped })));
    }
    let stored = node.receive_import(import, epoch, part, &body).await?;
    Ok(HttpResponse::Ok().json(serde_json::json!({ "stored": stored })))
}
