//! The commands: each parses its arguments, calls the node as `/kv` does
//! ([`Node::read`], [`Node::get`] for a consistent read, [`Node::write`]
//! with a [`Condition`]) and writes its reply. No command reads or writes
//! the store itself; what a command adds is only what RESP asks on top
//! (several keys in one command, SET's options, the connection's state).
//!
//! Every call is held through a failover as `/kv` holds it
//! ([`Node::through_failover`], `--failover-wait`): writes and consistent
//! reads, and plain reads of keys not held here, are tried again while no
//! leader can be reached, and fail (`-TRYAGAIN`) only once the wait is
//! over. A batch of writes (pipelined SETs, MSET, DEL) keeps its order
//! through that: see [`write_in_order`].
//!
//! The table [`COMMANDS`] is what COMMAND, COMMAND INFO, COUNT and DOCS
//! report, and its arity is checked before a command runs.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use bytes::Bytes;
use futures::future::join_all;

use super::conn::{Conn, Flow};
use super::reply::Proto;
use crate::clock::now_ms;
use crate::error::Error;
use crate::metrics::{Metrics, Outcome, RESP_DELETE_LABEL, RESP_OTHER_LABEL, RESP_READ_LABEL, RESP_WRITE_LABEL};
use crate::node::{refusal, Ack, Found, Node, MAX_TTL_SECS};
use crate::store::{check_key, Condition};
use crate::wire::WriteResult;

/// The Redis version whose commands (and their replies) this follows, as
/// HELLO and INFO report it: clients gate features on it.
pub const REDIS_VERSION: &str = "7.2.0";

/// Tries of SET ... GET (a consistent read, then a write conditional on
/// what it read) before it gives up under contention.
const SET_GET_TRIES: usize = 32;

/// Keys read or written at once by one MGET, EXISTS, DEL or MSET: the
/// replies of one batch are written before the next is asked for, so a
/// large MGET holds at most this many values.
const KEYS_AT_ONCE: usize = 64;

/// One command as COMMAND describes it.
pub struct Spec {
    pub name: &'static str,
    /// Redis's arity: N exactly N arguments (the name included), -N at least N.
    pub arity: i64,
    pub flags: &'static [&'static str],
    pub first_key: i64,
    pub last_key: i64,
    pub step: i64,
    pub group: &'static str,
    pub since: &'static str,
    pub summary: &'static str,
}

const fn spec(
    name: &'static str,
    arity: i64,
    flags: &'static [&'static str],
    keys: (i64, i64, i64),
    group: &'static str,
    since: &'static str,
    summary: &'static str,
) -> Spec {
    Spec { name, arity, flags, first_key: keys.0, last_key: keys.1, step: keys.2, group, since, summary }
}

const NO_KEYS: (i64, i64, i64) = (0, 0, 0);
const CONN: &[&str] = &["noscript", "loading", "stale", "fast"];
const NOAUTH: &[&str] = &["noscript", "loading", "stale", "fast", "no_auth"];

/// Every command this front door answers; anything else is
/// `-ERR unknown command`.
pub const COMMANDS: &[Spec] = &[
    spec("get", 2, &["readonly", "fast"], (1, 1, 1), "string", "1.0.0", "Returns the string value of a key."),
    spec(
        "set",
        -3,
        &["write", "denyoom"],
        (1, 1, 1),
        "string",
        "1.0.0",
        "Sets the string value of a key, ignoring its type. The key is created if it doesn't exist.",
    ),
    spec("del", -2, &["write"], (1, -1, 1), "generic", "1.0.0", "Deletes one or more keys."),
    spec(
        "exists",
        -2,
        &["readonly", "fast"],
        (1, -1, 1),
        "generic",
        "3.0.3",
        "Determines whether one or more keys exist.",
    ),
    spec(
        "mget",
        -2,
        &["readonly", "fast"],
        (1, -1, 1),
        "string",
        "1.0.0",
        "Atomically returns the string values of one or more keys.",
    ),
    spec("mset", -3, &["write", "denyoom"], (1, -1, 2), "string", "1.0.1", "Sets the string values of multiple keys."),
    spec(
        "ttl",
        2,
        &["readonly", "fast"],
        (1, 1, 1),
        "generic",
        "1.0.0",
        "Returns the expiration time in seconds of a key.",
    ),
    spec(
        "pttl",
        2,
        &["readonly", "fast"],
        (1, 1, 1),
        "generic",
        "2.6.0",
        "Returns the expiration time in milliseconds of a key.",
    ),
    spec("ping", -1, &["fast", "no_auth"], NO_KEYS, "connection", "1.0.0", "Returns the server's liveliness response."),
    spec("echo", 2, &["fast"], NO_KEYS, "connection", "1.0.0", "Returns the given string."),
    spec("hello", -1, NOAUTH, NO_KEYS, "connection", "6.0.0", "Handshakes with the Redis server."),
    spec("auth", -2, NOAUTH, NO_KEYS, "connection", "1.0.0", "Authenticates the connection."),
    spec("select", 2, CONN, NO_KEYS, "connection", "1.0.0", "Changes the selected database."),
    spec(
        "client",
        -2,
        &["noscript", "loading", "stale"],
        NO_KEYS,
        "connection",
        "2.4.0",
        "A container for client connection commands.",
    ),
    spec(
        "info",
        -1,
        &["loading", "stale"],
        NO_KEYS,
        "server",
        "1.0.0",
        "Returns information and statistics about the server.",
    ),
    spec("dbsize", 1, &["readonly", "fast"], NO_KEYS, "server", "1.0.0", "Returns the number of keys in the database."),
    spec(
        "command",
        -1,
        &["loading", "stale"],
        NO_KEYS,
        "server",
        "2.8.13",
        "Returns detailed information about all commands.",
    ),
    spec("quit", -1, NOAUTH, NO_KEYS, "connection", "1.0.0", "Closes the connection."),
    spec("reset", 1, NOAUTH, NO_KEYS, "connection", "6.2.0", "Resets the connection."),
];

/// Why a command failed, written as its error reply.
pub enum Fail {
    /// What `/kv` would answer, as a RESP error (see `reply`).
    Node(Error),
    /// A Redis error: its kind and message.
    Redis(&'static str, String),
}

impl From<Error> for Fail {
    fn from(e: Error) -> Fail {
        Fail::Node(e)
    }
}

fn err(message: impl Into<String>) -> Fail {
    Fail::Redis("ERR", message.into())
}

fn syntax() -> Fail {
    err("syntax error")
}

fn not_an_integer() -> Fail {
    err("value is not an integer or out of range")
}

/// A command's result: how it went, for the request metric.
type Done = Result<Outcome, Fail>;

fn lookup(name: &[u8]) -> Option<&'static Spec> {
    COMMANDS.iter().find(|s| s.name.as_bytes().eq_ignore_ascii_case(name))
}

fn arity_ok(spec: &Spec, n: usize) -> bool {
    let n = n as i64;
    if spec.arity >= 0 {
        n == spec.arity
    } else {
        n >= -spec.arity
    }
}

/// A key as `/kv` takes it: 1–250 bytes of UTF-8, no control characters.
fn key(arg: &[u8]) -> Result<&str, Fail> {
    let key = std::str::from_utf8(arg).map_err(|_| Error::BadKey("not valid UTF-8".into()))?;
    check_key(key).map_err(Error::BadKey)?;
    Ok(key)
}

fn keys(args: &[Bytes]) -> Result<Vec<&str>, Fail> {
    args.iter().map(|a| key(a)).collect()
}

fn int(arg: &[u8]) -> Result<i64, Fail> {
    std::str::from_utf8(arg).ok().and_then(|s| s.parse().ok()).ok_or_else(not_an_integer)
}

fn text(arg: &[u8]) -> String {
    String::from_utf8_lossy(arg).into_owned()
}

/// The outcome a read's answer counts as.
fn read_outcome(found: &Found) -> Outcome {
    match found.cache {
        crate::node::CacheStatus::Hit => Outcome::Hit,
        crate::node::CacheStatus::Miss => Outcome::Miss,
        crate::node::CacheStatus::Stale => Outcome::Stale,
    }
}

/// A read's value, `None` when the root has no such key.
fn found_or_none(result: Result<Found, Error>) -> Result<Option<Found>, Fail> {
    match result {
        Ok(found) => Ok(Some(found)),
        Err(Error::NotFound(_)) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

/// A SET's options.
struct SetOpts {
    ttl_ms: Option<u64>,
    cond: Condition,
    get: bool,
}

/// `[EX s | PX ms] [NX | XX] [GET]`, each at most once.
fn set_opts(opts: &[Bytes]) -> Result<SetOpts, Fail> {
    let (mut ttl_ms, mut cond, mut get) = (None, Condition::Always, false);
    let mut opts = opts.iter();
    while let Some(opt) = opts.next() {
        let upper = opt.to_ascii_uppercase();
        match upper.as_slice() {
            b"EX" | b"PX" if ttl_ms.is_none() => {
                let n = int(opts.next().ok_or_else(syntax)?)?;
                let ms = if upper == b"EX" { n.checked_mul(1000) } else { Some(n) };
                match ms {
                    Some(ms) if ms > 0 && ms as u64 <= MAX_TTL_SECS * 1000 => ttl_ms = Some(ms as u64),
                    _ => return Err(err("invalid expire time in 'set' command")),
                }
            }
            b"NX" if cond == Condition::Always => cond = Condition::IfAbsent,
            b"XX" if cond == Condition::Always => cond = Condition::IfPresent,
            b"GET" if !get => get = true,
            _ => return Err(syntax()),
        }
    }
    Ok(SetOpts { ttl_ms, cond, get })
}

/// Whether `args` is a SET that may be written together with the SETs
/// around it in a pipeline: a good key, no NX, XX or GET (their replies
/// depend on what came before), good options.
pub(super) fn plain_set(args: &[Bytes]) -> bool {
    args.len() >= 3
        && args[0].eq_ignore_ascii_case(b"set")
        && key(&args[1]).is_ok()
        && set_opts(&args[3..]).is_ok_and(|o| !o.get && o.cond == Condition::Always)
}

/// A plain read (`GET /kv/key`), held through a failover unless the key
/// is held here: a held key is answered as it is, as on `/kv`.
async fn read(node: &Node, key: &str) -> Result<Found, Error> {
    node.through_failover(|| !node.holds(key), || node.read(key)).await
}

/// A consistent read (`?consistent=true`), held through a failover; not at
/// a standby root, which does not pass it on from RESP (its
/// `NotRegistered` becomes `-READONLY` at once).
async fn read_consistent(node: &Node, key: &str) -> Result<Found, Error> {
    node.through_failover(|| !node.is_following(), || node.get(key, true)).await
}

/// A write (`PUT`/`DELETE /kv/key`), held through a failover.
async fn write(
    node: &Node,
    key: &str,
    value: Option<Bytes>,
    ttl_ms: Option<u64>,
    ack: Ack,
    cond: Condition,
) -> Result<WriteResult, Error> {
    node.through_failover(|| true, || node.write(key, value.clone(), ttl_ms, ack, cond)).await
}

/// One unconditional write of a batch ([`write_in_order`]).
struct Plain<'a> {
    key: &'a str,
    value: Option<Bytes>,
    ttl_ms: Option<u64>,
    ack: Ack,
}

/// Writes `batch` as one after another would be written, each held through
/// a failover. All are first tried together: their futures are first
/// polled in the order given, so they join the uplink in order and share
/// its round trips. From the first that meets no leader on (it failed before doing
/// anything, at its first poll: the node is not registered), the later
/// ones are not tried with it; they are tried after it, one at a time and
/// in order, each held through the failover. So a write that waited for a
/// leader is never overtaken by a later one of the same batch (guarantee
/// 5 for a pipeline, an MSET, a DEL of several keys).
async fn write_in_order(node: &Node, batch: &[Plain<'_>]) -> Vec<Result<WriteResult, Error>> {
    let held = AtomicBool::new(false);
    let first = batch.iter().map(|w| {
        let held = &held;
        async move {
            if held.load(Ordering::Relaxed) {
                return None;
            }
            match node.write(w.key, w.value.clone(), w.ttl_ms, w.ack, Condition::Always).await {
                Err(e) if e.awaits_leader() => {
                    held.store(true, Ordering::Relaxed);
                    None
                }
                result => Some(result),
            }
        }
    });
    let tried = join_all(first).await;
    let mut results = Vec::with_capacity(batch.len());
    for (w, result) in batch.iter().zip(tried) {
        results.push(match result {
            Some(result) => result,
            None => write(node, w.key, w.value.clone(), w.ttl_ms, w.ack, Condition::Always).await,
        });
    }
    results
}

/// The metric label of a command.
fn label(spec: &Spec) -> usize {
    match spec.name {
        "get" | "mget" | "exists" | "ttl" | "pttl" => RESP_READ_LABEL,
        "set" | "mset" => RESP_WRITE_LABEL,
        "del" => RESP_DELETE_LABEL,
        _ => RESP_OTHER_LABEL,
    }
}

impl<S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin> Conn<S> {
    /// Runs one command and writes its reply.
    pub(super) async fn command(&mut self, args: Vec<Bytes>) -> Flow {
        let started = Instant::now();
        let Some(spec) = lookup(&args[0]) else {
            let shown: Vec<String> = args[1..].iter().take(8).map(|a| format!("'{}'", text(a))).collect();
            let message =
                format!("unknown command '{}', with args beginning with: {}", text(&args[0]), shown.join(" "));
            self.fail(Fail::Redis("ERR", message));
            return Flow::Continue;
        };
        if !arity_ok(spec, args.len()) {
            self.fail(err(format!("wrong number of arguments for '{}' command", spec.name)));
            return Flow::Continue;
        }
        if !self.session.authed && !spec.flags.contains(&"no_auth") {
            self.fail(Fail::Redis("NOAUTH", "Authentication required.".into()));
            return Flow::Continue;
        }
        let mut flow = Flow::Continue;
        let done = match spec.name {
            "get" => self.get(&args[1]).await,
            "set" => self.set(&args).await,
            "del" => self.del(&args[1..]).await,
            "exists" => self.exists(&args[1..]).await,
            "mget" => self.mget(&args[1..]).await,
            "mset" => self.mset(&args[1..]).await,
            "ttl" => self.ttl(&args[1], 1000).await,
            "pttl" => self.ttl(&args[1], 1).await,
            "ping" => self.ping(&args),
            "echo" => {
                self.out.bulk(&args[1]);
                Ok(Outcome::Ok)
            }
            "hello" => self.hello(&args),
            "auth" => self.auth(&args[1..]),
            "select" => self.select(&args[1]),
            "client" => self.client(&args),
            "info" => self.info(&args[1..]),
            "dbsize" => {
                let store = self.shared.node.store();
                self.out.int(store.len().saturating_sub(store.tombstones()) as i64);
                Ok(Outcome::Ok)
            }
            "command" => self.command_info(&args),
            "quit" => {
                self.out.ok();
                flow = Flow::Close;
                Ok(Outcome::Ok)
            }
            "reset" => {
                self.session.reset(self.shared.node.guard().needs_token());
                self.out.proto = Proto::Resp2;
                self.out.simple("RESET");
                Ok(Outcome::Ok)
            }
            _ => Err(err(format!("'{}' is in the table but not served", spec.name))),
        };
        let outcome = match done {
            Ok(outcome) => outcome,
            Err(fail) => self.fail(fail),
        };
        self.shared.node.metrics().request(label(spec), outcome, started.elapsed());
        flow
    }

    /// Writes `fail` as the command's error reply.
    pub(super) fn fail(&mut self, fail: Fail) -> Outcome {
        match fail {
            Fail::Node(e) => {
                self.out.node_error(&e);
                match actix_web::ResponseError::status_code(&e).as_u16() {
                    404 => Outcome::NotFound,
                    500.. => Outcome::Error,
                    400 | 413 => {
                        Metrics::inc(&self.shared.node.metrics().bad_requests);
                        Outcome::ClientError
                    }
                    _ => Outcome::ClientError,
                }
            }
            Fail::Redis(kind, message) => {
                self.out.error(kind, &message);
                Outcome::ClientError
            }
        }
    }

    /// A refusal with `NotRegistered` at a standby root: its plain writes
    /// go to the leader with ids of its own (`Node::write`), but SET .. GET
    /// needs a consistent read first, which RESP does not pass on: it says
    /// where to go.
    fn write_error(&self, e: Error) -> Fail {
        match (&e, self.shared.node.following()) {
            (Error::NotRegistered, Some(f)) => Fail::Redis(
                "READONLY",
                format!(
                    "this node is a standby root: it takes no writes; write through the leader (node {} at {}) \
                     or any cache node",
                    f.leader, f.leader_url
                ),
            ),
            _ => e.into(),
        }
    }

    async fn get(&mut self, arg: &Bytes) -> Done {
        let key = key(arg)?;
        match found_or_none(read(&self.shared.node, key).await)? {
            Some(found) => {
                self.out.value(&found.value);
                Ok(read_outcome(&found))
            }
            None => {
                self.out.null();
                Ok(Outcome::NotFound)
            }
        }
    }

    /// `SET key value [EX s | PX ms] [NX | XX] [GET]`.
    async fn set(&mut self, args: &[Bytes]) -> Done {
        let key = key(&args[1])?;
        let value = args[2].clone();
        let SetOpts { ttl_ms, cond, get } = set_opts(&args[3..])?;
        if get {
            return self.set_get(key, value, ttl_ms, cond).await;
        }
        let node = &self.shared.node;
        let result = write(node, key, Some(value), ttl_ms, node.args().resp_ack, cond).await;
        self.set_reply(key, result)
    }

    /// A SET's reply from its write's result: nil when its condition failed.
    fn set_reply(&mut self, key: &str, result: Result<WriteResult, Error>) -> Done {
        match result.map_err(|e| self.write_error(e))? {
            WriteResult::ConditionFailed { .. } => self.out.null(),
            result => match refusal(key, &result) {
                Some(e) => return Err(e.into()),
                None => self.out.ok(),
            },
        }
        Ok(Outcome::Ok)
    }

    /// Consecutive plain SETs of a pipeline (see [`plain_set`]), written
    /// together ([`write_in_order`]: in the order they came, as one after
    /// another would be); the replies go out in order. A connection's
    /// pipelined SETs then share the uplink's round trips instead of
    /// taking one each.
    pub(super) async fn sets(&mut self, batch: Vec<Vec<Bytes>>) {
        let started = Instant::now();
        let node = self.shared.node.clone();
        let ack = node.args().resp_ack;
        let writes: Vec<Plain<'_>> = batch
            .iter()
            .map(|args| Plain {
                // Checked by `plain_set` before the SET joined the batch.
                key: std::str::from_utf8(&args[1]).unwrap_or_default(),
                value: Some(args[2].clone()),
                ttl_ms: set_opts(&args[3..]).ok().and_then(|o| o.ttl_ms),
                ack,
            })
            .collect();
        for (args, result) in batch.iter().zip(write_in_order(&node, &writes).await) {
            let done = self.set_reply(std::str::from_utf8(&args[1]).unwrap_or_default(), result);
            let outcome = match done {
                Ok(outcome) => outcome,
                Err(fail) => self.fail(fail),
            };
            node.metrics().request(RESP_WRITE_LABEL, outcome, started.elapsed());
        }
    }

    /// SET ... GET: the old value, read from the root, then the write on
    /// condition that the key is still at what was read (so nothing comes
    /// between, as in Redis); again if something did. With NX or XX the
    /// write is skipped when the read already shows the condition false.
    async fn set_get(&mut self, key: &str, value: Bytes, ttl_ms: Option<u64>, cond: Condition) -> Done {
        let node = self.shared.node.clone();
        for _ in 0..SET_GET_TRIES {
            let read = read_consistent(&node, key).await;
            if let Err(Error::NotRegistered) = read {
                return Err(self.write_error(Error::NotRegistered));
            }
            let old = found_or_none(read)?;
            let live = old.as_ref().map(|f| f.version);
            if cond.holds(live) {
                let exact = live.map_or(Condition::IfAbsent, Condition::IfVersion);
                let result = write(&node, key, Some(value.clone()), ttl_ms, Ack::Root, exact).await;
                match result.map_err(|e| self.write_error(e))? {
                    WriteResult::ConditionFailed { .. } => continue,
                    result => {
                        if let Some(e) = refusal(key, &result) {
                            return Err(e.into());
                        }
                    }
                }
            }
            match old {
                Some(f) => self.out.value(&f.value),
                None => self.out.null(),
            }
            return Ok(Outcome::Ok);
        }
        Err(Fail::Redis("TRYAGAIN", format!("SET GET: {key:?} changed {SET_GET_TRIES} times while it was set")))
    }

    /// DEL waits for the root whatever `--resp-ack` says: its reply counts
    /// the keys that were there.
    async fn del(&mut self, args: &[Bytes]) -> Done {
        let keys = keys(args)?;
        let node = self.shared.node.clone();
        let mut deleted = 0;
        for chunk in keys.chunks(KEYS_AT_ONCE) {
            let writes: Vec<Plain<'_>> =
                chunk.iter().map(|&key| Plain { key, value: None, ttl_ms: None, ack: Ack::Root }).collect();
            for (k, result) in chunk.iter().zip(write_in_order(&node, &writes).await) {
                let result = result.map_err(|e| self.write_error(e))?;
                if let Some(e) = refusal(k, &result) {
                    return Err(e.into());
                }
                deleted += i64::from(result.version().is_some());
            }
        }
        self.out.int(deleted);
        Ok(Outcome::Ok)
    }

    async fn exists(&mut self, args: &[Bytes]) -> Done {
        let keys = keys(args)?;
        let node = self.shared.node.clone();
        let mut n = 0;
        for chunk in keys.chunks(KEYS_AT_ONCE) {
            for result in join_all(chunk.iter().map(|k| read(&node, k))).await {
                n += i64::from(found_or_none(result)?.is_some());
            }
        }
        self.out.int(n);
        Ok(Outcome::Ok)
    }

    /// Values in order, nil for a key the root does not have. Read
    /// [`KEYS_AT_ONCE`] at a time, each batch's replies written (and sent
    /// when the output is large) before the next.
    async fn mget(&mut self, args: &[Bytes]) -> Done {
        let keys = keys(args)?;
        let node = self.shared.node.clone();
        let mut reads = Vec::with_capacity(keys.len().min(KEYS_AT_ONCE));
        for (i, chunk) in keys.chunks(KEYS_AT_ONCE).enumerate() {
            reads.clear();
            for result in join_all(chunk.iter().map(|k| read(&node, k))).await {
                reads.push(found_or_none(result)?);
            }
            if i == 0 {
                self.out.array(keys.len());
            }
            for found in &reads {
                match found {
                    Some(f) => self.out.value(&f.value),
                    None => self.out.null(),
                }
            }
            reads.clear();
            if self.flush_if_large().await.is_err() {
                return Ok(Outcome::Error);
            }
        }
        Ok(Outcome::Ok)
    }

    /// Each key its own write, acknowledged as `--resp-ack` says; +OK
    /// once every one is (not atomic: see docs/resp.md).
    async fn mset(&mut self, args: &[Bytes]) -> Done {
        if !args.len().is_multiple_of(2) {
            return Err(err("wrong number of arguments for 'mset' command"));
        }
        let pairs: Vec<(&str, Bytes)> =
            args.chunks(2).map(|p| Ok((key(&p[0])?, p[1].clone()))).collect::<Result<_, Fail>>()?;
        let node = self.shared.node.clone();
        let ack = node.args().resp_ack;
        for chunk in pairs.chunks(KEYS_AT_ONCE) {
            let writes: Vec<Plain<'_>> =
                chunk.iter().map(|(key, v)| Plain { key, value: Some(v.clone()), ttl_ms: None, ack }).collect();
            for ((k, _), result) in chunk.iter().zip(write_in_order(&node, &writes).await) {
                let result = result.map_err(|e| self.write_error(e))?;
                if let Some(e) = refusal(k, &result) {
                    return Err(e.into());
                }
            }
        }
        self.out.ok();
        Ok(Outcome::Ok)
    }

    /// TTL (`unit` 1000) or PTTL (1): -2 for a key the root does not
    /// have, -1 for one that does not expire.
    async fn ttl(&mut self, arg: &Bytes, unit: u64) -> Done {
        let key = key(arg)?;
        let Some(found) = found_or_none(read(&self.shared.node, key).await)? else {
            self.out.int(-2);
            return Ok(Outcome::NotFound);
        };
        let left = match found.expires_at {
            None => -1,
            Some(at) => match at.saturating_sub(now_ms()) {
                0 => -2,
                ms => ((ms + unit / 2) / unit) as i64,
            },
        };
        self.out.int(left);
        Ok(read_outcome(&found))
    }

    fn ping(&mut self, args: &[Bytes]) -> Done {
        match args {
            [_] => self.out.simple("PONG"),
            [_, message] => self.out.bulk(message),
            _ => return Err(err("wrong number of arguments for 'ping' command")),
        }
        Ok(Outcome::Ok)
    }

    /// Checks `user` (only `default` exists) and `password` against
    /// `--api-token`.
    fn check_password(&mut self, user: &[u8], password: &[u8]) -> Result<(), Fail> {
        let guard = self.shared.node.guard();
        if !guard.needs_token() {
            return Err(err(
                "AUTH <password> called without any password configured for the default user. Are you sure your \
                 configuration is correct?",
            ));
        }
        if user != b"default" || !guard.token_matches(password) {
            return Err(Fail::Redis("WRONGPASS", "invalid username-password pair or user is disabled.".into()));
        }
        self.session.authed = true;
        Ok(())
    }

    fn auth(&mut self, args: &[Bytes]) -> Done {
        match args {
            [password] => self.check_password(b"default", password)?,
            [user, password] => self.check_password(user, password)?,
            _ => return Err(syntax()),
        }
        self.out.ok();
        Ok(Outcome::Ok)
    }

    /// `HELLO [protover [AUTH user password] [SETNAME name]]`.
    fn hello(&mut self, args: &[Bytes]) -> Done {
        let mut proto = self.out.proto;
        let mut rest = args[1..].iter();
        if let Some(v) = rest.next() {
            proto = match int(v) {
                Ok(2) => Proto::Resp2,
                Ok(3) => Proto::Resp3,
                Ok(_) => return Err(Fail::Redis("NOPROTO", "unsupported protocol version".into())),
                Err(_) => return Err(err("Protocol version is not an integer or out of range")),
            };
        }
        let mut name = None;
        while let Some(opt) = rest.next() {
            if opt.eq_ignore_ascii_case(b"AUTH") {
                let (user, password) = (rest.next().ok_or_else(syntax)?, rest.next().ok_or_else(syntax)?);
                self.check_password(user, password)?;
            } else if opt.eq_ignore_ascii_case(b"SETNAME") {
                name = Some(client_name(rest.next().ok_or_else(syntax)?)?);
            } else {
                return Err(err(format!("Syntax error in HELLO option '{}'", text(opt))));
            }
        }
        if !self.session.authed {
            return Err(Fail::Redis(
                "NOAUTH",
                "HELLO must be called with the client already authenticated, otherwise the HELLO <proto> AUTH \
                 <user> <pass> option can be used to authenticate the client and select the RESP protocol \
                 version at the same time"
                    .into(),
            ));
        }
        if let Some(name) = name {
            self.session.name = name;
        }
        self.out.proto = proto;
        let out = &mut self.out;
        out.map(7);
        out.bulk(b"server");
        out.bulk(b"treecache");
        out.bulk(b"version");
        out.bulk(REDIS_VERSION.as_bytes());
        out.bulk(b"proto");
        out.int(proto.number());
        out.bulk(b"id");
        out.int(self.session.id as i64);
        out.bulk(b"mode");
        out.bulk(b"standalone");
        out.bulk(b"role");
        out.bulk(b"master");
        out.bulk(b"modules");
        out.array(0);
        Ok(Outcome::Ok)
    }

    fn select(&mut self, arg: &[u8]) -> Done {
        match int(arg)? {
            0 => {
                self.out.ok();
                Ok(Outcome::Ok)
            }
            _ => Err(err("DB index is out of range")),
        }
    }

    /// CLIENT SETNAME | GETNAME | ID | INFO | SETINFO.
    fn client(&mut self, args: &[Bytes]) -> Done {
        let sub = args[1].to_ascii_uppercase();
        match (sub.as_slice(), &args[2..]) {
            (b"SETNAME", [name]) => {
                self.session.name = client_name(name)?;
                self.out.ok();
            }
            (b"GETNAME", []) => match self.session.name.clone() {
                Some(name) => self.out.bulk(name.as_bytes()),
                None => self.out.null(),
            },
            (b"ID", []) => self.out.int(self.session.id as i64),
            (b"INFO", []) => {
                let query = (self.buf.len(), self.buf.capacity() - self.buf.len());
                let line = self.session.info_line(self.out.proto, query, self.out.len());
                self.out.text(&line);
            }
            (b"SETINFO", [attr, value]) => {
                let value = client_name(value)?;
                match attr.to_ascii_uppercase().as_slice() {
                    b"LIB-NAME" => self.session.lib_name = value,
                    b"LIB-VER" => self.session.lib_ver = value,
                    _ => return Err(err(format!("Unrecognized option '{}'", text(attr)))),
                }
                self.out.ok();
            }
            (b"SETNAME" | b"GETNAME" | b"ID" | b"INFO" | b"SETINFO", _) => {
                return Err(err(format!("wrong number of arguments for 'client|{}' command", text(&args[1]))))
            }
            _ => {
                return Err(err(format!("unknown subcommand '{}'. Try CLIENT HELP.", text(&args[1]))));
            }
        }
        Ok(Outcome::Ok)
    }

    /// `INFO [section ..]`: server, clients, stats, replication,
    /// keyspace (all of them without a section, or with all, default or
    /// everything).
    fn info(&mut self, sections: &[Bytes]) -> Done {
        let all = sections.is_empty()
            || sections.iter().any(|s| {
                s.eq_ignore_ascii_case(b"all")
                    || s.eq_ignore_ascii_case(b"default")
                    || s.eq_ignore_ascii_case(b"everything")
            });
        let wants = |name: &str| all || sections.iter().any(|s| s.eq_ignore_ascii_case(name.as_bytes()));
        let mut text = String::new();
        for (name, section) in [
            ("server", Self::info_server as fn(&Self) -> Vec<(String, String)>),
            ("clients", Self::info_clients),
            ("stats", Self::info_stats),
            ("replication", Self::info_replication),
            ("keyspace", Self::info_keyspace),
        ] {
            if wants(name) {
                if !text.is_empty() {
                    text.push_str("\r\n");
                }
                let mut title = name.to_string();
                title[..1].make_ascii_uppercase();
                text.push_str(&format!("# {title}\r\n"));
                for (k, v) in section(self) {
                    text.push_str(&format!("{k}:{v}\r\n"));
                }
            }
        }
        self.out.text(&text);
        Ok(Outcome::Ok)
    }

    fn info_server(&self) -> Vec<(String, String)> {
        let uptime = self.shared.started.elapsed().as_secs();
        let pairs = [
            ("redis_version", REDIS_VERSION.to_string()),
            ("treecache_version", env!("CARGO_PKG_VERSION").to_string()),
            ("redis_mode", "standalone".into()),
            ("os", std::env::consts::OS.into()),
            ("arch_bits", (usize::BITS).to_string()),
            ("process_id", std::process::id().to_string()),
            ("run_id", format!("{:040x}", self.shared.run_id)),
            ("tcp_port", self.shared.port.to_string()),
            ("uptime_in_seconds", uptime.to_string()),
            ("uptime_in_days", (uptime / 86_400).to_string()),
        ];
        pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
    }

    fn info_clients(&self) -> Vec<(String, String)> {
        let s = &self.shared;
        vec![("connected_clients".into(), s.connected().to_string()), ("maxclients".into(), s.max_clients.to_string())]
    }

    fn info_stats(&self) -> Vec<(String, String)> {
        use std::sync::atomic::Ordering::Relaxed;
        let s = &self.shared;
        let m = s.node.metrics();
        vec![
            ("total_connections_received".into(), s.total_connections.load(Relaxed).to_string()),
            ("total_commands_processed".into(), s.commands.load(Relaxed).to_string()),
            ("rejected_connections".into(), s.rejected.load(Relaxed).to_string()),
            ("keyspace_hits".into(), m.hits.get().to_string()),
            ("keyspace_misses".into(), m.misses.get().to_string()),
            ("expired_keys".into(), m.expired.get().to_string()),
            ("evicted_keys".into(), m.evictions.get().to_string()),
        ]
    }

    /// Every node takes writes, so to a Redis client each is a master;
    /// its place in the tree follows.
    fn info_replication(&self) -> Vec<(String, String)> {
        let node = &self.shared.node;
        let mut v: Vec<(String, String)> = vec![("role".into(), "master".into())];
        let id = node.node_id().map_or_else(|| "-".into(), |id| id.to_string());
        match (node.topology(), node.following()) {
            (Some(t), _) => {
                v.push(("connected_slaves".into(), t.children.len().to_string()));
                v.push(("tree_role".into(), t.role().into()));
                v.push(("node_id".into(), id));
                v.push(("depth".into(), t.depth.to_string()));
                v.push(("parent".into(), t.parent.as_ref().map_or_else(|| "-".into(), |p| p.id.to_string())));
                v.push(("parent_url".into(), t.parent.as_ref().map_or_else(|| "-".into(), |p| p.url.clone())));
                v.push(("children".into(), t.children.iter().map(|c| c.id.to_string()).collect::<Vec<_>>().join(",")));
            }
            (None, Some(f)) => {
                v.push(("connected_slaves".into(), "0".into()));
                v.push(("tree_role".into(), "standby".into()));
                v.push(("node_id".into(), id));
                v.push(("depth".into(), "0".into()));
                v.push(("parent".into(), "-".into()));
                v.push(("leader".into(), f.leader.to_string()));
                v.push(("leader_url".into(), f.leader_url));
            }
            (None, None) => {
                v.push(("connected_slaves".into(), "0".into()));
                v.push(("tree_role".into(), "unregistered".into()));
            }
        }
        v.push(("epoch".into(), node.epoch().to_string()));
        v
    }

    /// Keys held here (values, not tombstones); expiries are not counted.
    fn info_keyspace(&self) -> Vec<(String, String)> {
        let store = self.shared.node.store();
        match store.len().saturating_sub(store.tombstones()) {
            0 => Vec::new(),
            n => vec![("db0".into(), format!("keys={n},expires=0,avg_ttl=0"))],
        }
    }

    /// `COMMAND`, `COMMAND COUNT`, `COMMAND INFO name..`, `COMMAND DOCS [name..]`.
    fn command_info(&mut self, args: &[Bytes]) -> Done {
        let sub = args.get(1).map(|s| s.to_ascii_uppercase());
        let named = |names: &[Bytes]| -> Vec<Option<&'static Spec>> { names.iter().map(|n| lookup(n)).collect() };
        match sub.as_deref() {
            None => {
                self.out.array(COMMANDS.len());
                for spec in COMMANDS {
                    self.spec_info(spec);
                }
            }
            Some(b"COUNT") if args.len() == 2 => self.out.int(COMMANDS.len() as i64),
            Some(b"INFO") => {
                let specs: Vec<_> =
                    if args.len() == 2 { COMMANDS.iter().map(Some).collect() } else { named(&args[2..]) };
                self.out.array(specs.len());
                for spec in specs {
                    match spec {
                        Some(spec) => self.spec_info(spec),
                        None => self.out.null(),
                    }
                }
            }
            Some(b"DOCS") => {
                let specs: Vec<_> = if args.len() == 2 {
                    COMMANDS.iter().collect()
                } else {
                    named(&args[2..]).into_iter().flatten().collect()
                };
                self.out.map(specs.len());
                for spec in specs {
                    self.out.bulk(spec.name.as_bytes());
                    self.out.map(3);
                    for (k, v) in [("summary", spec.summary), ("since", spec.since), ("group", spec.group)] {
                        self.out.bulk(k.as_bytes());
                        self.out.bulk(v.as_bytes());
                    }
                }
            }
            Some(_) => {
                return Err(err(format!("unknown subcommand or wrong number of arguments for '{}'", text(&args[1]))))
            }
        }
        Ok(Outcome::Ok)
    }

    /// One command as COMMAND INFO gives it (Redis 7's ten fields).
    fn spec_info(&mut self, spec: &Spec) {
        let out = &mut self.out;
        out.array(10);
        out.bulk(spec.name.as_bytes());
        out.int(spec.arity);
        out.array(spec.flags.len());
        for flag in spec.flags {
            out.simple(flag);
        }
        out.int(spec.first_key);
        out.int(spec.last_key);
        out.int(spec.step);
        let category = match spec.group {
            "string" => "@string",
            "generic" => "@keyspace",
            _ => "@connection",
        };
        out.array(1);
        out.simple(category);
        out.array(0);
        out.array(0);
        out.array(0);
    }
}

/// A client name or library attribute: no spaces, newlines or other
/// special characters (as Redis); empty clears it.
fn client_name(arg: &[u8]) -> Result<Option<String>, Fail> {
    if arg.iter().any(|&b| !(b'!'..=b'~').contains(&b)) {
        return Err(err("Client names cannot contain spaces, newlines or special characters."));
    }
    Ok((!arg.is_empty()).then(|| text(arg)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_found_by_any_case_and_arity_is_redis_s() {
        assert_eq!(lookup(b"gEt").map(|s| s.name), Some("get"));
        assert!(lookup(b"FLUSHALL").is_none());
        let get = lookup(b"get").unwrap();
        assert!(arity_ok(get, 2) && !arity_ok(get, 1) && !arity_ok(get, 3));
        let del = lookup(b"del").unwrap();
        assert!(arity_ok(del, 2) && arity_ok(del, 9) && !arity_ok(del, 1));
        for spec in COMMANDS {
            assert_eq!(spec.name, spec.name.to_ascii_lowercase());
            assert!(!spec.summary.is_empty());
        }
    }

    #[test]
    fn keys_are_checked_as_kv_checks_them() {
        assert_eq!(key(b"a/b c").ok(), Some("a/b c"));
        for bad in [&b""[..], b"\xff", b"a\nb", &[b'k'; 251]] {
            assert!(matches!(key(bad), Err(Fail::Node(Error::BadKey(_)))));
        }
    }

    #[test]
    fn client_names_have_no_spaces() {
        assert_eq!(client_name(b"app-1").ok().flatten().as_deref(), Some("app-1"));
        assert_eq!(client_name(b"").ok().flatten(), None);
        assert!(client_name(b"a b").is_err() && client_name(b"a\n").is_err());
    }
}
