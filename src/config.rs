//! The node's settings: `treecache node`'s flags and environment variables,
//! parsed by clap into [`NodeArgs`] and then validated. Owns every default of
//! DESIGN.md's `treecache node` synopsis; the other subcommands' arguments
//! live with their commands in [`crate::cli`], and option types with the code
//! that uses them (`Mode` in coherence, `Fsync` in log, `LogFormat` in trace,
//! `Secret` in auth). Nothing else in the crate reads `std::env` for a node's
//! settings.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::builder::BoolishValueParser;
use clap::Args;

use crate::auth::Secret;
use crate::coherence::Mode;
use crate::log::Fsync;
use crate::tls::{ClientAuth, Tls, TlsFiles};
use crate::trace::LogFormat;
use crate::wire::Ack;

#[derive(Debug, Clone, Args)]
pub struct NodeArgs {
    /// ZooKeeper connect string, HOST:PORT[,HOST:PORT..].
    #[arg(long, env = "TREECACHE_ZK")]
    pub zk: String,
    /// Cluster name; the znodes live under /treecache/<cluster>.
    #[arg(long, env = "TREECACHE_CLUSTER", default_value = "default")]
    pub cluster: String,
    /// Address the HTTP server binds.
    #[arg(long, env = "TREECACHE_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// URL other nodes use to reach this one (default: http://<listen>).
    #[arg(long, env = "TREECACHE_ADVERTISE")]
    pub advertise: Option<String>,
    /// Run as a root candidate: the source of truth and the registrar.
    #[arg(long, env = "TREECACHE_ROOT", value_parser = BoolishValueParser::new())]
    pub root: bool,
    /// The root group this root candidate joins (default 0): each group
    /// owns a share of the key space's slots, with its own leader.
    #[arg(long, env = "TREECACHE_GROUP", value_parser = clap::value_parser!(u32).range(0..1024))]
    pub group: Option<u32>,
    /// Root URL to register with, instead of looking it up in ZooKeeper.
    #[arg(long, env = "TREECACHE_ROOT_URL")]
    pub root_url: Option<String>,
    /// Ask for this node id (granted unless a live node holds it).
    #[arg(long, env = "TREECACHE_ID")]
    pub id: Option<u64>,
    /// Children per node before placement goes one level deeper.
    #[arg(long, env = "TREECACHE_FANOUT", default_value_t = 2, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub fanout: u32,
    /// Coherence mode (root only; nodes take the root's).
    #[arg(long, env = "TREECACHE_MODE", value_enum, default_value_t = Mode::Push)]
    pub mode: Mode,
    /// Freshness bound per level in ttl mode, e.g. 500ms, 2s, 1m.
    #[arg(long, env = "TREECACHE_MAX_AGE", value_parser = parse_duration)]
    pub max_age: Option<Duration>,
    /// Directory for the root's commit log.
    #[arg(long, env = "TREECACHE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Roots that must hold a write before an ack=root write is
    /// acknowledged: the leader and its in-sync standbys. With fewer in
    /// sync, ack=root writes get 503 `insync_below_min` with Retry-After.
    #[arg(long, env = "TREECACHE_MIN_INSYNC", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=16))]
    pub min_insync: u32,
    /// How long the leader waits for an in-sync standby to acknowledge a
    /// write before it removes the standby from the in-sync set (a
    /// conditional write on the leader znode) and acknowledges without it.
    #[arg(long, env = "TREECACHE_INSYNC_TIMEOUT", value_parser = parse_duration, default_value = "3s")]
    pub insync_timeout: Duration,
    /// How long a write or a read that needs the leader waits for one while
    /// none is reachable (a failover, a re-election), before 503 with
    /// Retry-After; 0: answer 503 at once. Reads of held keys never wait.
    #[arg(long, env = "TREECACHE_FAILOVER_WAIT", value_parser = parse_duration, default_value = "10s")]
    pub failover_wait: Duration,
    /// Commit log fsync policy: always (acknowledged = fsynced, group commit),
    /// everysec (fsync at most a second later), never (the OS decides).
    #[arg(long, env = "TREECACHE_FSYNC", value_enum, default_value_t = Fsync::Everysec)]
    pub fsync: Fsync,
    /// When the parent cannot be reached, keep serving a stale (ttl mode) or
    /// unconfirmed entry for this long past its freshness, marked
    /// `X-Cache: stale` (default: 503 instead), e.g. 30s.
    #[arg(long, env = "TREECACHE_STALE_IF_ERROR", value_parser = parse_duration)]
    pub stale_if_error: Option<Duration>,
    /// Write a snapshot once the commit log has grown this much, e.g. 64MiB.
    #[arg(long, env = "TREECACHE_SNAPSHOT_BYTES", value_parser = parse_bytes, default_value = "64MiB")]
    pub snapshot_bytes: u64,
    /// Bytes of its newest commits a leader keeps in memory, e.g. 64MiB: a
    /// standby that returns (a restart with its --data-dir, a pause)
    /// while they still reach back to what it holds takes only what it
    /// missed, not a whole snapshot. 0: every return takes a snapshot.
    #[arg(long, env = "TREECACHE_REPLICATION_TAIL", value_parser = parse_bytes, default_value = "64MiB")]
    pub replication_tail: u64,
    /// Start even though the commit log is corrupt: cut it at the damage,
    /// losing every record after it. An operator's decision, never a default.
    #[arg(long, env = "TREECACHE_LOG_TRUNCATE_CORRUPT", value_parser = BoolishValueParser::new())]
    pub log_truncate_corrupt: bool,
    /// Size at which a commit log segment is closed and the next begun.
    #[arg(long, env = "TREECACHE_LOG_SEGMENT_BYTES", hide = true, value_parser = parse_bytes, default_value = "64MiB")]
    pub log_segment_bytes: u64,
    /// Memory bound, e.g. 64MiB. At a cache: past it entries are evicted
    /// in S3-FIFO order. At a root: a write that would pass it is refused
    /// (507 root_full), deletes and overwrites that do not grow still pass;
    /// give a standby no less than its leader (docs/operations-memory.md).
    #[arg(long, env = "TREECACHE_MAX_MEMORY", value_parser = parse_bytes)]
    pub max_memory: Option<u64>,
    /// Largest value accepted, e.g. 1MiB.
    #[arg(long, env = "TREECACHE_MAX_VALUE_BYTES", value_parser = parse_bytes, default_value = "1MiB")]
    pub max_value_bytes: u64,
    /// The cluster's shared secret: every internal route (registration,
    /// fills, forwarded writes, pushes, topology, clear, leave) requires
    /// it, and it derives the ZooKeeper digest ACL. Required (or
    /// --cluster-secret-file); at least 16 printable ASCII characters.
    #[arg(long, env = "TREECACHE_CLUSTER_SECRET", hide_env_values = true, conflicts_with = "cluster_secret_file")]
    pub cluster_secret: Option<String>,
    /// A file holding the cluster secret (surrounding whitespace ignored),
    /// instead of --cluster-secret: it stays out of `ps` and the environment.
    #[arg(long, env = "TREECACHE_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// When set, `/kv`, `/metrics` and `/dump` require `Authorization: Bearer <token>`
    /// (`/health` and `/tree` stay open).
    #[arg(long, env = "TREECACHE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// Serve HTTPS (and RESP over TLS) with this certificate (PEM, the node's own first, then
    /// intermediates), and present it to other nodes. Needs --tls-key and
    /// --tls-ca; reloaded on SIGHUP.
    #[arg(long, env = "TREECACHE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, env = "TREECACHE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// The CA (PEM) that signed every node's certificate: other nodes, and
    /// clients that present a certificate, are verified against it.
    #[arg(long, env = "TREECACHE_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// What a client must present at the TLS handshake: none, request (one
    /// presented must be valid), require. Nodes always present theirs.
    #[arg(long, env = "TREECACHE_TLS_CLIENT_AUTH", value_enum, default_value_t = ClientAuth::None)]
    pub tls_client_auth: ClientAuth,
    /// Reach ZooKeeper over TLS (its secureClientPort), verified against
    /// --tls-ca and presenting --tls-cert.
    #[arg(long, env = "TREECACHE_ZK_TLS", value_parser = BoolishValueParser::new())]
    pub zk_tls: bool,
    /// Also speak the Redis protocol (RESP2/RESP3) on this address, e.g.
    /// 127.0.0.1:6379: redis-cli and Redis clients work against this node
    /// (docs/resp.md). With --tls-cert it speaks TLS only, as the HTTP
    /// port does. Off by default.
    #[arg(long, env = "TREECACHE_RESP_LISTEN")]
    pub resp_listen: Option<SocketAddr>,
    /// When a RESP SET or MSET is acknowledged: once the parent has it, or
    /// once the root has committed it (as `?ack=` on /kv). DEL and SET with
    /// NX, XX or GET always wait for the root: their answer is its decision.
    #[arg(long, env = "TREECACHE_RESP_ACK", value_enum, default_value_t = Ack::Root)]
    pub resp_ack: Ack,
    /// Log lines as text or as one JSON object per line.
    #[arg(long, env = "TREECACHE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
    /// Most client connections open at once (over both HTTP workers); more
    /// wait in the listen backlog.
    #[arg(long, env = "TREECACHE_MAX_CONNECTIONS", default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(2..))]
    pub max_connections: u32,
    /// Most fills this node has in flight to its parent at once (consistent
    /// reads included); past it, a read that needs one more gets 503
    /// `overloaded` with Retry-After.
    #[arg(long, env = "TREECACHE_MAX_UPSTREAM_REQUESTS", default_value_t = 1024, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_upstream_requests: u32,
    /// Fault injection for tests: hold every fill answer this long after
    /// reading it (so a push can overtake it). Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_FILL_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_fill_delay_ms: u64,
    /// Fault injection for tests: a node answering a child's write batch
    /// holds the answer this long after the writes are settled (so the
    /// child's request can time out and resend). Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_WRITE_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_write_delay_ms: u64,
    /// Fault injection for tests: hold every push batch this long before
    /// sending it. Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_PUSH_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_push_delay_ms: u64,
    /// Fault injection for tests: hold every batch the write uplink takes
    /// this long before sending it to the parent (so the tree can change
    /// while writes wait here). Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_UPLINK_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_uplink_delay_ms: u64,
    /// Fault injection for tests: a source group's leader holds each slot
    /// move this long once the slots are frozen, before their last copy
    /// (so a test can kill a root while writes of them wait). Never set in
    /// production.
    #[arg(long, env = "TREECACHE_FAULT_MOVE_PAUSE_MS", hide = true, default_value_t = 0)]
    pub fault_move_pause_ms: u64,
    /// Fault injection for tests: a target holds each part of a slot
    /// move's copy N ms after its checks passed, before it stores it.
    /// Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_IMPORT_APPLY_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_import_apply_delay_ms: u64,
    /// Fault injection for tests: a move whose slots stay frozen this long
    /// without a cutover (its target down, or unreachable) is rolled back
    /// after N ms instead of the usual 30 s. Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_MOVE_ROLLBACK_MS", hide = true, default_value_t = 0)]
    pub fault_move_rollback_ms: u64,
    /// Fault injection for tests: a source group's leader dies (exits at
    /// once, as if killed -9) right after it fenced a move's rollback in
    /// ZooKeeper, before the thaw. Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_DIE_AFTER_ROLLBACK_FENCE", hide = true, value_parser = BoolishValueParser::new())]
    pub fault_die_after_rollback_fence: bool,
    /// Fault injection for tests: a node holds each new slot map (or set
    /// of group leaders) it reads from ZooKeeper this long before it
    /// routes by it (so a test can have a router, or a move's target, act
    /// on the map before a cutover while others act on the one after).
    /// Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_ROUTES_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_routes_delay_ms: u64,
    /// Fault injection for tests: the root holds each listing of `live/`
    /// this long before it reaps by it (a listing answered late, as by a
    /// ZooKeeper or a root starved of CPU). Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_LIVE_LIST_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_live_list_delay_ms: u64,
    /// Fault injection for tests: a node checks its place (registers
    /// again, which also renews the root's grace for its live znode) every
    /// N ms instead of every 5 s. Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_REJOIN_EVERY_MS", hide = true, default_value_t = 0)]
    pub fault_rejoin_every_ms: u64,
    /// Fault injection for tests: a standby root holds its answer to each
    /// replication batch this long after applying it (so the leader waits
    /// for it while other standbys have the batch). Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_REPLICATE_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_replicate_delay_ms: u64,
    /// Fault injection for tests: when the parent answers a write batch,
    /// hold the answer this long before settling it (so a reset, or a
    /// resend from a child, can come first). Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_SETTLE_DELAY_MS", hide = true, default_value_t = 0)]
    pub fault_settle_delay_ms: u64,
    /// Fault injection for tests: the first N write batches this node
    /// answers are settled (committed at the root) and then answered 500,
    /// as if the answer were lost. Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_LOSE_WRITE_REPLIES", hide = true, default_value_t = 0)]
    pub fault_lose_write_replies: u64,
    /// Fault injection for tests: every commit log fsync fails (the root
    /// must stop). Never set in production.
    #[arg(long, env = "TREECACHE_FAULT_FSYNC_ERROR", hide = true, value_parser = BoolishValueParser::new())]
    pub fault_fsync_error: bool,
    /// How long a tombstone is kept after it was stored before it may be
    /// collected (docs/architecture.md, Tombstones). Tests shorten it;
    /// it must stay well above the push and fill timeouts (5 s).
    #[arg(long, env = "TREECACHE_TOMBSTONE_TTL", hide = true, value_parser = parse_duration, default_value = "30s")]
    pub tombstone_ttl: Duration,
}

/// The largest `--max-value-bytes` accepted: one value must fit in one
/// internal batch body (see `http::internal`).
pub const MAX_VALUE_CEILING: u64 = 64 << 20;

impl NodeArgs {
    /// `treecache node ARGS..` as clap reads it (`args` without the program
    /// and subcommand names), defaults and environment variables applied,
    /// not yet validated: how a program embedding a node, and tests, build
    /// the settings without the whole command line.
    pub fn try_parse_from<I, T>(args: I) -> Result<NodeArgs, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        #[derive(clap::Parser)]
        #[command(name = "treecache node")]
        struct Node {
            #[command(flatten)]
            args: NodeArgs,
        }
        let full = std::iter::once(std::ffi::OsString::from("node")).chain(args.into_iter().map(Into::into));
        <Node as clap::Parser>::try_parse_from(full).map(|n| n.args)
    }

    /// Checks what clap cannot: combinations of flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == Mode::Ttl && self.max_age.is_none() {
            return Err("--mode ttl needs --max-age (e.g. --max-age 2s)".into());
        }
        if self.mode == Mode::Push && self.max_age.is_some() {
            return Err("--max-age only applies to --mode ttl".into());
        }
        if let Some(age) = self.max_age {
            if age.is_zero() {
                return Err("--max-age must be greater than zero".into());
            }
        }
        if self.cluster.is_empty() || self.cluster.contains('/') {
            return Err(format!("--cluster {:?}: must be non-empty and contain no '/'", self.cluster));
        }
        if self.max_value_bytes == 0 {
            return Err("--max-value-bytes must be greater than zero".into());
        }
        if self.max_value_bytes > MAX_VALUE_CEILING {
            return Err(format!(
                "--max-value-bytes {}: the most is {MAX_VALUE_CEILING} (64MiB); a cache is no place for larger values",
                self.max_value_bytes
            ));
        }
        if let Some(url) = &self.advertise {
            check_url("--advertise", url)?;
        }
        if let Some(url) = &self.root_url {
            check_url("--root-url", url)?;
        }
        if let Some(id) = self.id {
            if !(1..=u64::from(u32::MAX)).contains(&id) {
                return Err(format!("--id {id}: must be 1 to {}", u32::MAX));
            }
        }
        if self.max_memory == Some(0) {
            return Err("--max-memory must be greater than zero".into());
        }
        if let Some(extra) = self.stale_if_error {
            if extra.is_zero() {
                return Err("--stale-if-error must be greater than zero (leave it out to answer 503)".into());
            }
        }
        if self.failover_wait > Duration::from_secs(300) {
            return Err(format!("--failover-wait {:?}: at most 5m (0 answers at once)", self.failover_wait));
        }
        if self.insync_timeout < Duration::from_millis(100) || self.insync_timeout > Duration::from_secs(60) {
            return Err(format!("--insync-timeout {:?}: must be 100ms to 60s", self.insync_timeout));
        }
        if self.resp_listen.is_some_and(|a| a == self.listen) {
            return Err(format!("--resp-listen {}: the HTTP server listens there (--listen)", self.listen));
        }
        if self.group.is_some() && !self.root {
            return Err("--group applies to root candidates (--root) only: a cache node serves every \
                        group's keys"
                .into());
        }
        if self.min_insync > 1 && !self.root {
            return Err("--min-insync applies to root candidates (--root) only".into());
        }
        if self.snapshot_bytes == 0 {
            return Err("--snapshot-bytes must be greater than zero, e.g. 64MiB".into());
        }
        if self.replication_tail > crate::replication::MAX_QUEUED_BYTES as u64 {
            return Err(format!(
                "--replication-tail {}: at most {}MiB (a standby further behind than a stream holds takes a \
                 snapshot anyway)",
                self.replication_tail,
                crate::replication::MAX_QUEUED_BYTES >> 20
            ));
        }
        if self.log_segment_bytes < 4096 {
            return Err("--log-segment-bytes must be at least 4KiB".into());
        }
        if self.root && self.data_dir.is_none() && self.fsync == Fsync::Always {
            return Err("--fsync always needs --data-dir: without one this root keeps no commit log and \
                        holds acknowledged writes in memory only"
                .into());
        }
        self.secret()?;
        if let Some(token) = &self.api_token {
            check_token(token)?;
        }
        self.check_tls()?;
        Ok(())
    }

    /// The TLS flags go together, and the URLs this node gives and dials
    /// are https; then the files are read and checked ([`Tls::load`]).
    fn check_tls(&self) -> Result<(), String> {
        if self.tls_files()?.is_none() {
            if self.tls_client_auth != ClientAuth::None {
                return Err("--tls-client-auth needs --tls-cert, --tls-key and --tls-ca".into());
            }
            if self.zk_tls {
                return Err("--zk-tls needs --tls-cert, --tls-key and --tls-ca (ZooKeeper is verified against \
                            that CA and the node presents that certificate)"
                    .into());
            }
            for (flag, url) in [("--advertise", &self.advertise), ("--root-url", &self.root_url)] {
                if url.as_deref().is_some_and(|u| u.starts_with("https://")) {
                    return Err(format!(
                        "{flag} is https:// but this node has no --tls-cert: nodes of one \
                                        cluster speak either HTTPS (all of them) or HTTP"
                    ));
                }
            }
            return Ok(());
        }
        for (flag, url) in [("--advertise", &self.advertise), ("--root-url", &self.root_url)] {
            if url.as_deref().is_some_and(|u| !u.starts_with("https://")) {
                return Err(format!("{flag} must be https:// with --tls-cert: nodes talk HTTPS to each other"));
            }
        }
        self.tls()?;
        Ok(())
    }

    /// The three TLS files, when given; an error when only some are.
    pub fn tls_files(&self) -> Result<Option<TlsFiles>, String> {
        match (&self.tls_cert, &self.tls_key, &self.tls_ca) {
            (None, None, None) => Ok(None),
            (Some(cert), Some(key), Some(ca)) => {
                Ok(Some(TlsFiles { cert: cert.clone(), key: key.clone(), ca: ca.clone() }))
            }
            _ => Err("give --tls-cert, --tls-key and --tls-ca together: the node's certificate, its key, and the \
                      CA that signed every node's certificate"
                .into()),
        }
    }

    /// The node's TLS, read from its files and checked against the host it
    /// advertises; `None` without --tls-cert.
    pub fn tls(&self) -> Result<Option<Tls>, String> {
        let Some(files) = self.tls_files()? else { return Ok(None) };
        let url = self.advertise_url();
        let host = url_host(&url);
        Tls::load(files, self.tls_client_auth, host.as_deref()).map(Some)
    }

    /// What the operator should know about these settings that is not an
    /// error: what kind of node this is when a flag does not apply to it.
    /// Logged as warnings when the node starts.
    pub fn notes(&self) -> Vec<String> {
        let mut notes = Vec::new();
        if self.root && self.data_dir.is_none() {
            notes.push(
                "this root keeps no commit log (no --data-dir): memory only, its acknowledged writes outlive \
                 it only on in-sync standby roots"
                    .into(),
            );
        }
        if let Some(path) = &self.cluster_secret_file {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                let mode = meta.permissions().mode() & 0o777;
                if mode & 0o077 != 0 {
                    notes.push(format!(
                        "--cluster-secret-file {} can be read by others (mode {mode:03o}): whoever reads it can \
                         join and rewrite the tree; chmod 600 it",
                        path.display()
                    ));
                }
            }
        }
        if !self.root && self.fsync != Fsync::Everysec {
            notes.push(format!(
                "--fsync {} ignored: only a root keeps a commit log; this node is a cache",
                self.fsync.as_str()
            ));
        }
        notes
    }

    /// The cluster secret, from --cluster-secret or --cluster-secret-file.
    pub fn secret(&self) -> Result<Secret, String> {
        read_secret(self.cluster_secret.as_deref(), self.cluster_secret_file.as_deref())?.ok_or_else(|| {
            "a cluster secret is required: --cluster-secret-file FILE (or --cluster-secret S, \
             TREECACHE_CLUSTER_SECRET); every node of the cluster gets the same one, e.g. made \
             with `head -c 32 /dev/urandom | base64 > FILE`"
                .to_string()
        })
    }

    /// The URL this node gives the tree for itself: https:// with --tls-cert.
    pub fn advertise_url(&self) -> String {
        match &self.advertise {
            Some(url) => url.trim_end_matches('/').to_string(),
            None if self.tls_cert.is_some() => format!("https://{}", self.listen),
            None => format!("http://{}", self.listen),
        }
    }
}

/// The cluster secret from `--cluster-secret` or `--cluster-secret-file`
/// (surrounding whitespace ignored), checked; `None` when neither is given.
pub fn read_secret(value: Option<&str>, file: Option<&std::path::Path>) -> Result<Option<Secret>, String> {
    let text = match (value, file) {
        (Some(s), None) => s.to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| format!("--cluster-secret-file {}: {e}", path.display()))?
            .trim()
            .to_string(),
        (Some(_), Some(_)) => return Err("give --cluster-secret or --cluster-secret-file, not both".into()),
        (None, None) => return Ok(None),
    };
    Secret::new(text).map(Some)
}

/// The host of an http(s) URL (an IPv6 address without its brackets).
fn url_host(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit_once('@').map_or(authority, |(_, a)| a);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then(|| host.to_string())
}

fn check_token(token: &str) -> Result<(), String> {
    if token.is_empty() || !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("--api-token must be non-empty printable ASCII without spaces".into());
    }
    Ok(())
}

fn check_url(flag: &str, url: &str) -> Result<(), String> {
    if url.starts_with("http://") || url.starts_with("https://") {
        Ok(())
    } else {
        Err(format!("{flag} {url:?}: must start with http:// or https://"))
    }
}

/// Parses `250ms`, `2s`, `1.5s`, `3m`, `1h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num.parse().map_err(|_| format!("{s:?} is not a duration (try 500ms, 2s, 1m)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        other => {
            return Err(format!("{s:?}: unknown unit {other:?} (one number and one unit: ms, s, m or h, e.g. 90s)"))
        }
    };
    if !secs.is_finite() || !(0.0..=365.0 * 86400.0).contains(&secs) {
        return Err(format!("{s:?} is out of range (0 to 365 days)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// Parses `1048576`, `512KiB`, `64MiB`, `1.5MiB`, `1GiB`, `10KB`, `2MB`;
/// a fraction is rounded to the nearest byte.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let split = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let not_a_size = || format!("{s:?} is not a size (try 1048576, 512KiB, 1.5MiB)");
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') {
        return Err(not_a_size());
    }
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1000,
        "kib" => 1 << 10,
        "m" | "mb" => 1_000_000,
        "mib" => 1 << 20,
        "g" | "gb" => 1_000_000_000,
        "gib" => 1 << 30,
        other => return Err(format!("{s:?}: unknown unit {other:?} (use B, KiB, MiB, GiB)")),
    };
    if let Ok(n) = num.parse::<u64>() {
        return n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"));
    }
    let n: f64 = num.parse().map_err(|_| not_a_size())?;
    let bytes = (n * mult as f64).round();
    // 2^64 as f64: anything at or above it does not fit.
    if !bytes.is_finite() || bytes >= 18_446_744_073_709_551_616.0 {
        return Err(format!("{s:?} is too large"));
    }
    Ok(bytes as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("2s").unwrap(), Duration::from_secs(2));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1m").unwrap(), Duration::from_secs(60));
        assert!(parse_duration("fast").is_err());
        assert!(parse_duration("2 parsecs").is_err());
        assert!(parse_duration("1m30s").unwrap_err().contains("one number and one unit"));
        assert!(parse_duration("400d").is_err());
        assert!(parse_duration("9000h").unwrap_err().contains("0 to 365 days"));
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1MiB").unwrap(), 1 << 20);
        assert_eq!(parse_bytes("100").unwrap(), 100);
        assert_eq!(parse_bytes("10KB").unwrap(), 10_000);
        assert!(parse_bytes("-1").is_err());
        assert!(parse_bytes("1XB").is_err());
        assert!(parse_bytes("99999999999999999999GiB").is_err());
        assert_eq!(parse_bytes("1.5MiB").unwrap(), 3 << 19);
        assert_eq!(parse_bytes("0.5KiB").unwrap(), 512);
        assert_eq!(parse_bytes("1.0001").unwrap(), 1, "rounded to a byte");
        assert!(parse_bytes("99999999999.5GiB").unwrap_err().contains("too large"));
        for bad in ["1.2.3MiB", ".5MiB", "5.MiB", "MiB", ""] {
            assert!(parse_bytes(bad).unwrap_err().contains("is not a size"), "{bad}");
        }
    }

    const SECRET: &str = "0123456789abcdef-test";

    fn node(args: &[&str]) -> Result<NodeArgs, String> {
        let mut full = vec!["--zk", "127.0.0.1:2181"];
        if !args.iter().any(|a| a.starts_with("--cluster-secret")) {
            full.extend(["--cluster-secret", SECRET]);
        }
        full.extend_from_slice(args);
        let n = parse(&full)?;
        n.validate().map(|_| n)
    }

    fn parse(args: &[&str]) -> Result<NodeArgs, String> {
        NodeArgs::try_parse_from(args).map_err(|e| e.to_string())
    }

    #[test]
    fn ttl_mode_needs_max_age() {
        assert!(node(&["--mode", "ttl"]).is_err());
        assert!(node(&["--mode", "ttl", "--max-age", "1s"]).is_ok());
        assert!(node(&["--max-age", "1s"]).is_err());
        assert!(node(&["--mode", "bogus"]).is_err());
    }

    #[test]
    fn notes_say_what_the_node_is_when_a_flag_does_not_apply() {
        let memory_root = node(&["--root"]).unwrap().notes();
        assert!(memory_root.iter().any(|n| n.contains("keeps no commit log")), "{memory_root:?}");
        assert!(node(&["--root", "--data-dir", "/tmp/x"]).unwrap().notes().is_empty());
        let cache = node(&["--fsync", "always"]).unwrap().notes();
        assert_eq!(cache, ["--fsync always ignored: only a root keeps a commit log; this node is a cache"]);
        assert!(node(&[]).unwrap().notes().is_empty(), "a plain cache has nothing to say");
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("secret");
        std::fs::write(&file, format!("{SECRET}\n")).unwrap();
        let with_mode = |mode: u32| {
            std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
            node(&["--cluster-secret-file", file.to_str().unwrap()]).unwrap().notes()
        };
        let open = with_mode(0o644);
        assert!(open.len() == 1 && open[0].contains("(mode 644)") && open[0].contains("chmod 600"), "{open:?}");
        assert_eq!(with_mode(0o640).len(), 1, "group-readable too");
        assert!(with_mode(0o600).is_empty());
        assert!(with_mode(0o400).is_empty());
    }

    #[test]
    fn bad_flags_are_refused() {
        assert!(node(&["--fanout", "0"]).is_err());
        assert!(node(&["--id", "0"]).is_err());
        assert!(node(&["--cluster", "a/b"]).is_err());
        assert!(node(&["--advertise", "10.0.0.1:80"]).is_err());
        assert!(node(&["--listen", "nowhere"]).is_err());
        assert!(node(&["--snapshot-bytes", "0"]).is_err());
        assert!(node(&["--log-segment-bytes", "1KiB"]).is_err());
        assert!(node(&["--fsync", "sometimes"]).is_err());
        let always = node(&["--root", "--fsync", "always"]).unwrap_err();
        assert!(always.contains("--fsync always needs --data-dir"), "{always}");
        assert!(node(&["--root", "--fsync", "always", "--data-dir", "/tmp/x"]).is_ok());
        let snap = node(&["--snapshot-bytes", "0"]).unwrap_err();
        assert!(snap.contains("--snapshot-bytes") && !snap.contains("segment"), "no hidden flag named: {snap}");
        assert_eq!(node(&["--snapshot-bytes", "1MiB"]).unwrap().snapshot_bytes, 1 << 20);
        assert_eq!(node(&[]).unwrap().replication_tail, 64 << 20);
        assert_eq!(node(&["--replication-tail", "0"]).unwrap().replication_tail, 0, "0: always a snapshot");
        assert_eq!(node(&["--replication-tail", "1.5MiB"]).unwrap().replication_tail, 3 << 19);
        let big = node(&["--replication-tail", "1GiB"]).unwrap_err();
        assert!(big.contains("--replication-tail") && big.contains("256MiB"), "{big}");
        assert!(node(&["--replication-tail", "lots"]).is_err());
        assert!(node(&["--max-memory", "0"]).is_err());
        // A root takes it too: it refuses writes past it.
        assert_eq!(node(&["--root", "--max-memory", "64MiB"]).unwrap().max_memory, Some(64 << 20));
        assert_eq!(node(&["--max-memory", "64MiB"]).unwrap().max_memory, Some(64 << 20));
        let n = node(&[]).unwrap();
        assert_eq!(n.cluster, "default");
        assert_eq!(n.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(n.mode, Mode::Push);
        assert_eq!(n.max_value_bytes, 1 << 20);
        assert_eq!(n.advertise_url(), "http://127.0.0.1:8080");
    }

    #[test]
    fn the_cluster_secret_is_required_and_checked() {
        let err = node(&["--cluster-secret-file", "/nonexistent/secret"]).unwrap_err();
        assert!(err.contains("/nonexistent/secret"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = node(&["--cluster-secret-file", empty.to_str().unwrap()]).unwrap_err();
        assert!(err.contains("empty"), "{err}");
        let good = dir.path().join("good");
        std::fs::write(&good, format!("{SECRET}\n")).unwrap();
        let n = node(&["--cluster-secret-file", good.to_str().unwrap()]).unwrap();
        assert_eq!(n.secret().unwrap().expose(), SECRET);
        assert!(node(&["--cluster-secret", "short"]).unwrap_err().contains("at least 16"));
        assert!(node(&["--cluster-secret", "has a space in it, sadly"]).is_err());
        let both = ["--cluster-secret", SECRET, "--cluster-secret-file", good.to_str().unwrap()];
        assert!(node(&both).is_err());
        let none = parse(&["--zk", "127.0.0.1:2181"]).unwrap();
        assert!(none.validate().unwrap_err().contains("cluster secret is required"));
        assert_eq!(format!("{:?}", n.secret().unwrap()), "Secret(..)");
    }

    #[test]
    fn tls_flags_go_together_and_make_urls_https() {
        let dir = tempfile::tempdir().unwrap();
        let ca = crate::tls::certs::Authority::new("test CA").unwrap();
        let files = ca.write_node_files(dir.path(), "n", &["127.0.0.1"]).unwrap();
        let (cert, key, ca_file) =
            (files.cert.to_str().unwrap(), files.key.to_str().unwrap(), files.ca.to_str().unwrap());
        let tls = ["--tls-cert", cert, "--tls-key", key, "--tls-ca", ca_file];
        let n = node(&tls).unwrap();
        assert_eq!(n.advertise_url(), "https://127.0.0.1:8080");
        assert!(n.tls().unwrap().is_some());
        assert!(node(&[]).unwrap().tls().unwrap().is_none());
        let err = node(&["--tls-cert", cert, "--tls-key", key]).unwrap_err();
        assert!(err.contains("--tls-cert, --tls-key and --tls-ca together"), "{err}");
        assert!(node(&["--tls-ca", ca_file]).unwrap_err().contains("together"));
        assert!(node(&["--zk-tls"]).unwrap_err().contains("--zk-tls needs --tls-cert"));
        assert!(node(&["--tls-client-auth", "require"]).unwrap_err().contains("needs --tls-cert"));
        assert!(node(&["--tls-client-auth", "sometimes"]).is_err());
        let mut with = tls.to_vec();
        with.extend(["--tls-client-auth", "require", "--zk-tls"]);
        let n = node(&with).unwrap();
        assert_eq!((n.tls_client_auth, n.zk_tls), (ClientAuth::Require, true));
        let mut plain_url = tls.to_vec();
        plain_url.extend(["--advertise", "http://127.0.0.1:8080"]);
        assert!(node(&plain_url).unwrap_err().contains("--advertise must be https://"));
        let mut root_url = tls.to_vec();
        root_url.extend(["--root-url", "http://127.0.0.1:9000"]);
        assert!(node(&root_url).unwrap_err().contains("--root-url must be https://"));
        assert!(node(&["--advertise", "https://127.0.0.1:8080"]).unwrap_err().contains("no --tls-cert"));
        // The certificate must name the host this node advertises.
        let mut elsewhere = tls.to_vec();
        elsewhere.extend(["--advertise", "https://node7.example:8080"]);
        assert!(node(&elsewhere).unwrap_err().contains("cannot serve as node7.example"));
    }

    #[test]
    fn url_hosts_are_read_for_the_certificate_check() {
        assert_eq!(url_host("https://10.0.0.1:8080").as_deref(), Some("10.0.0.1"));
        assert_eq!(url_host("https://node1/x").as_deref(), Some("node1"));
        assert_eq!(url_host("https://[::1]:8080").as_deref(), Some("::1"));
        assert_eq!(url_host("https://u@h:1?q").as_deref(), Some("h"));
        assert_eq!(url_host("nonsense"), None);
    }

    #[test]
    fn api_token_and_limits_are_checked() {
        assert!(node(&["--api-token", ""]).is_err());
        assert!(node(&["--api-token", "two words"]).is_err());
        assert_eq!(node(&["--api-token", "t0ken"]).unwrap().api_token.as_deref(), Some("t0ken"));
        assert!(node(&["--max-upstream-requests", "0"]).is_err());
        assert!(node(&["--failover-wait", "10m"]).unwrap_err().contains("--failover-wait"));
        assert_eq!(node(&["--failover-wait", "0"]).unwrap().failover_wait, Duration::ZERO);
        assert_eq!(node(&[]).unwrap().failover_wait, Duration::from_secs(10));
        assert!(node(&["--max-connections", "1"]).is_err());
        assert_eq!(node(&["--log-format", "json"]).unwrap().log_format, LogFormat::Json);
        assert!(node(&["--log-format", "xml"]).is_err());
    }
}
