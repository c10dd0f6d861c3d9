//! Admin routes: `/health`, `/tree`, `/metrics`, `/dump`.

use actix_web::web::ThinData;
use actix_web::{HttpRequest, HttpResponse};
use serde_json::json;

use super::Query;
use crate::clock::now_ms;
use crate::error::{Error, Result};
use crate::node::Node;

/// Largest `/dump` page.
const MAX_DUMP_LIMIT: u64 = 10_000;

pub async fn health(node: ThinData<Node>) -> Result<HttpResponse> {
    if let Some(why) = node.refusing() {
        return Err(Error::NoInSyncRoot(why));
    }
    if node.is_following() {
        // A standby root: 200 once in sync with its leader, 503 before.
        let f = node.standby_in_sync()?;
        return Ok(HttpResponse::Ok().json(json!({
            "status": "ok",
            "id": node.node_id(),
            "role": "standby",
            "parent": null,
            "depth": 0,
            "children": [],
            "epoch": node.epoch(),
            "leader": f.leader,
            "group": node.args().group.unwrap_or(0),
        })));
    }
    let place = node.place()?;
    let t = &place.topology;
    let mut body = json!({
        "status": "ok",
        "id": t.id,
        "role": t.role(),
        "parent": t.parent.as_ref().map(|p| p.id),
        "depth": t.depth,
        "children": t.children.iter().map(|c| c.id).collect::<Vec<_>>(),
        "epoch": t.epoch,
    });
    if node.args().root {
        // A root candidate says which root group it leads (or stands by for).
        body["group"] = json!(node.args().group.unwrap_or(0));
    }
    Ok(HttpResponse::Ok().json(body))
}

pub async fn tree(node: ThinData<Node>) -> Result<HttpResponse> {
    if let Some(f) = node.following() {
        return Ok(HttpResponse::Ok().json(json!({
            "id": node.node_id(),
            "url": node.url(),
            "role": "standby",
            "depth": 0,
            "epoch": node.epoch(),
            "parent": null,
            "children": [],
            "mode": node.args().mode,
            "leader": f.leader,
            "leader_url": f.leader_url,
            "in_sync": f.in_sync,
        })));
    }
    let place = node.place()?;
    let t = &place.topology;
    Ok(HttpResponse::Ok().json(json!({
        "id": t.id,
        "url": node.url(),
        "role": t.role(),
        "depth": t.depth,
        "epoch": t.epoch,
        "parent": t.parent,
        "children": t.children,
        "mode": place.coherence.mode,
        "max_age_ms": place.coherence.max_age_ms,
        "root_url": place.root_url,
    })))
}

/// `GET /metrics`: the gauges that describe state are read now, then the
/// whole registry is encoded (see [`crate::metrics`]).
pub async fn metrics(node: ThinData<Node>) -> HttpResponse {
    let m = node.metrics();
    let store = node.store();
    let t = node.topology();
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    m.entries.set(count(store.len()));
    m.bytes.set(count(store.bytes()));
    m.max_memory_bytes.set(i64::try_from(node.args().max_memory.unwrap_or(0)).unwrap_or(i64::MAX));
    m.tombstones.set(count(store.tombstones()));
    m.holders.set(count(store.holder_records()));
    let following = if t.is_none() { node.following() } else { None };
    m.registered.set(i64::from(t.is_some() || following.is_some()));
    m.is_root.set(i64::from(t.as_ref().is_some_and(|t| t.is_root())));
    let is_root = t.as_ref().is_some_and(|t| t.is_root());
    m.in_sync.set(i64::from(is_root || node.standby_in_sync().is_ok()));
    m.set_role(match (&t, &following) {
        (Some(t), _) => t.role(),
        (None, Some(_)) => "standby",
        (None, None) => "none",
    });
    m.depth.set(t.as_ref().map_or(0, |t| i64::from(t.depth)));
    m.children.set(t.as_ref().map_or(0, |t| count(t.children.len())));
    m.epoch.set(i64::try_from(node.epoch()).unwrap_or(i64::MAX));
    m.insync_roots.set(count(node.insync_roots()));
    m.uplink_pending.set(count(node.uplink_pending()));
    m.uplink_unconfirmed.set(count(node.uplink_unconfirmed()));
    let (ids, ids_bytes) = node.write_ids_remembered();
    m.write_ids_remembered.set(count(ids));
    m.write_ids_bytes.set(count(ids_bytes));
    let (outcomes, outcomes_bytes) = node.write_outcomes_held();
    m.write_outcomes.set(count(outcomes));
    m.write_outcomes_bytes.set(count(outcomes_bytes));
    m.push_queued.set(count(node.push_queued()));
    m.set_zk_state(node.zk_state());
    HttpResponse::Ok().content_type(crate::metrics::CONTENT_TYPE).body(m.render())
}

/// `/dump?prefix=&limit=&after=`: entries in key order, one JSON object a
/// line; pass the last key as `after` for the next page.
pub async fn dump(node: ThinData<Node>, req: HttpRequest) -> Result<HttpResponse> {
    let q = Query::parse(&req, &["prefix", "limit", "after"])?;
    let limit = q.u64("limit")?.unwrap_or(1000);
    if limit == 0 || limit > MAX_DUMP_LIMIT {
        return Err(Error::bad_param("limit", format!("{limit}: must be 1 to {MAX_DUMP_LIMIT}")));
    }
    let entries = node.store().dump(q.get("prefix").unwrap_or(""), q.get("after"), limit as usize, now_ms());
    let mut out = String::new();
    for e in entries {
        let mut line = json!({ "key": e.key, "version": e.version, "expires_at": e.expires_at, "current": e.current });
        match &e.value {
            None => line["tombstone"] = json!(true),
            Some(v) => match std::str::from_utf8(v) {
                Ok(text) => line["value"] = json!(text),
                Err(_) => line["value_hex"] = json!(hex(v)),
            },
        }
        out.push_str(&line.to_string());
        out.push('\n');
    }
    Ok(HttpResponse::Ok().content_type("application/x-ndjson").body(out))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
