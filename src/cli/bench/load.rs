//! The load engine: `connections` workers, each with its own keep-alive
//! HTTP connection, take numbered tickets until the run's duration or
//! request count is reached.
//!
//! Closed loop: a worker sends its next request when the previous one
//! answered. Open loop (`--rate`): ticket n is due at `start + n / rate`
//! whatever happened before, and its latency counts from that due time, so
//! a server that falls behind shows queueing instead of hiding it
//! (coordinated omission, as wrk2 corrects it).
//!
//! A [`Workload`] says what request ticket n is and may look at each answer
//! (converge does). Every run stops by itself. `/kv` requests go through
//! [`crate::client`], one [`Client`] per node on each worker's connection;
//! only `bench url` (any server, not a key) sends a plain GET.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rand::rngs::StdRng;
use rand::SeedableRng;
use tokio::time::Instant;

use super::report::{Phase, Tally};
use crate::client::{self, Ack, Cache, Client, PutOptions};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET a key.
    Get,
    /// PUT a key.
    Put,
    /// DELETE a key.
    Delete,
    /// GET the node's URL as it is, not a key (`bench url`: any server).
    Url,
}

impl Method {
    pub fn op(self) -> &'static str {
        match self {
            Method::Get | Method::Url => "get",
            Method::Put => "put",
            Method::Delete => "delete",
        }
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    /// Which of the workload's [`Workload::nodes`] it goes to.
    pub node: usize,
    /// The key's number: the key is the workload's [`Workload::prefix`]
    /// followed by it.
    pub key: u64,
    pub body: Option<Bytes>,
    /// A write's `?ack=`.
    pub ack: Ack,
    /// Read the `{"version":N}` answer of an `ack=root` write.
    pub want_version: bool,
}

impl Request {
    pub fn get(node: usize, key: u64) -> Request {
        Request { method: Method::Get, node, key, body: None, ack: Ack::Parent, want_version: false }
    }

    pub fn put(node: usize, key: u64, body: Bytes, ack: Ack) -> Request {
        Request { method: Method::Put, node, key, body: Some(body), ack, want_version: false }
    }

    pub fn delete(node: usize, key: u64, ack: Ack) -> Request {
        Request { method: Method::Delete, node, key, body: None, ack, want_version: false }
    }
}

/// What came back for one request that succeeded.
#[derive(Debug, Clone)]
pub struct Answer {
    /// `X-Version`, or the version in an `ack=root` write's body.
    pub version: Option<u64>,
    pub cache: Option<Cache>,
    /// When the request actually went out (open loop: may be after its due time).
    pub sent: Instant,
}

pub trait Workload: Send + Sync + 'static {
    /// The nodes (base URLs) the requests go to; [`Request::node`] indexes them.
    fn nodes(&self) -> &[String];

    /// What every key starts with.
    fn prefix(&self) -> &str {
        ""
    }

    /// The request for ticket `n`, sent by `worker`; `None` ends the run
    /// (the workload ran out, e.g. of cold keys).
    fn request(&self, n: u64, worker: usize, rng: &mut StdRng) -> Option<Request>;

    /// Called for every request that succeeded.
    fn answered(&self, _req: &Request, _answer: &Answer) {}
}

/// How much load, for how long.
#[derive(Debug, Clone)]
pub struct Load {
    pub connections: usize,
    pub duration: Option<Duration>,
    pub requests: Option<u64>,
    /// Requests per second across all connections; `None` is closed loop.
    pub rate: Option<f64>,
    pub timeout: Duration,
    pub progress: bool,
    /// Seeds worker i's random numbers with [`worker_seed`]`(seed, i)`, so
    /// a run's requests can be drawn again (`None`: from entropy).
    pub seed: Option<u64>,
}

/// Worker `index`'s seed in a run seeded with `seed`.
pub fn worker_seed(seed: u64, index: usize) -> u64 {
    seed.wrapping_add((index as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// A bench client: the run's headers, no proxy, no Nagle delay, and the
/// run's TLS configuration (`--tls-ca`) when the nodes serve HTTPS.
pub fn client_builder(
    headers: &reqwest::header::HeaderMap,
    tls: Option<&rustls::ClientConfig>,
) -> reqwest::ClientBuilder {
    let builder = reqwest::Client::builder().default_headers(headers.clone()).no_proxy().tcp_nodelay(true);
    match tls {
        Some(config) => builder.use_preconfigured_tls(config.clone()),
        None => builder,
    }
}

/// The clients of one run: one per connection, each keeping its one
/// connection alive. Built once so warm-up and measurement share connections.
pub struct Connections {
    clients: Vec<reqwest::Client>,
}

impl Connections {
    pub fn new(
        n: usize,
        timeout: Duration,
        headers: &reqwest::header::HeaderMap,
        tls: Option<&rustls::ClientConfig>,
    ) -> Result<Connections, String> {
        let clients = (0..n)
            .map(|_| {
                client_builder(headers, tls)
                    .pool_max_idle_per_host(1)
                    .pool_idle_timeout(Duration::from_secs(90))
                    .timeout(timeout)
                    .connect_timeout(timeout.min(Duration::from_secs(5)))
                    .build()
                    .map_err(|e| format!("cannot build an HTTP client: {e}"))
            })
            .collect::<Result<Vec<_>, String>>()?;
        Ok(Connections { clients })
    }

    pub fn len(&self) -> usize {
        self.clients.len()
    }

    pub fn is_empty(&self) -> bool {
        self.clients.is_empty()
    }
}

/// One [`Client`] per node URL, all sending through `http`.
pub fn clients(urls: &[String], http: &reqwest::Client) -> Result<Vec<Client>, String> {
    urls.iter().map(|url| Client::builder(url).http_client(http.clone()).build().map_err(|e| e.to_string())).collect()
}

/// Whether to draw progress: only for a person at a terminal.
pub fn progress_wanted(json: bool, quiet: bool) -> bool {
    !json && !quiet && std::io::stdout().is_terminal() && std::io::stderr().is_terminal()
}

struct Shared<W> {
    workload: Arc<W>,
    next: AtomicU64,
    done: AtomicU64,
    failed: AtomicU64,
    exhausted: AtomicBool,
    start: Instant,
    stop_at: Option<Instant>,
    max: Option<u64>,
    interval: Option<Duration>,
    seed: Option<u64>,
}

/// Runs `load` with `workload` over `conns` and returns what was measured.
/// `name` and `targets` label the phase.
pub async fn run<W: Workload>(
    name: &str,
    targets: Vec<String>,
    load: &Load,
    conns: &Connections,
    workload: Arc<W>,
) -> Result<(Phase, Tally, bool), String> {
    if load.duration.is_none() && load.requests.is_none() {
        return Err("a run needs a duration or a request count".into());
    }
    // Each worker's own connection, to each node of the workload.
    let mut per_worker = Vec::new();
    for http in conns.clients.iter().take(load.connections) {
        per_worker.push((http.clone(), clients(workload.nodes(), http)?));
    }
    let start = Instant::now();
    let shared = Arc::new(Shared {
        workload,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        exhausted: AtomicBool::new(false),
        start,
        stop_at: load.duration.map(|d| start + d),
        seed: load.seed,
        max: load.requests,
        interval: load.rate.map(|r| Duration::from_secs_f64(1.0 / r)),
    });
    let bar = progress_bar(name, load);
    let ticker = {
        let shared = shared.clone();
        let bar = bar.clone();
        let by_count = load.requests.is_some() && load.duration.is_none();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(200));
            loop {
                tick.tick().await;
                let done = shared.done.load(Ordering::Relaxed);
                let secs = shared.start.elapsed().as_secs_f64().max(1e-3);
                bar.set_position(if by_count { done } else { shared.start.elapsed().as_millis() as u64 });
                bar.set_message(format!(
                    "{done} req, {:.0} req/s, {} errors",
                    done as f64 / secs,
                    shared.failed.load(Ordering::Relaxed)
                ));
            }
        })
    };
    let mut workers = tokio::task::JoinSet::new();
    for (i, (http, nodes)) in per_worker.into_iter().enumerate() {
        workers.spawn(worker(i, http, nodes, shared.clone()));
    }
    let mut total = Tally::default();
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        match joined {
            Ok(t) => total.merge(&t),
            Err(e) => failure = Some(format!("a load worker failed: {e}")),
        }
    }
    let elapsed = start.elapsed();
    ticker.abort();
    bar.finish_and_clear();
    if let Some(f) = failure {
        return Err(f);
    }
    let exhausted = shared.exhausted.load(Ordering::Relaxed);
    Ok((total.phase(name, targets, elapsed), total, exhausted))
}

fn progress_bar(name: &str, load: &Load) -> ProgressBar {
    if !load.progress {
        return ProgressBar::hidden();
    }
    let len = match (load.duration, load.requests) {
        (Some(d), _) => d.as_millis() as u64,
        (None, Some(n)) => n,
        (None, None) => 0,
    };
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr_with_hz(5));
    if let Ok(style) = ProgressStyle::with_template("{prefix:>10} [{bar:30}] {elapsed_precise} {msg}") {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(name.to_string());
    bar
}

async fn worker<W: Workload>(index: usize, http: reqwest::Client, nodes: Vec<Client>, shared: Arc<Shared<W>>) -> Tally {
    let mut tally = Tally::default();
    let mut rng = shared.seed.map_or_else(StdRng::from_entropy, |s| StdRng::seed_from_u64(worker_seed(s, index)));
    // Reused for every key, so naming one allocates nothing.
    let mut key = String::new();
    loop {
        let n = shared.next.fetch_add(1, Ordering::Relaxed);
        if shared.max.is_some_and(|max| n >= max) {
            break;
        }
        let due = match shared.interval {
            Some(iv) => shared.start + iv.mul_f64(n as f64),
            None => Instant::now(),
        };
        if shared.stop_at.is_some_and(|stop| due >= stop) {
            break;
        }
        // Open loop: a request whose worker was still busy when it fell due
        // counts from its due time (that wait is queueing); one whose worker
        // was idle counts from when it went out (the timer's lateness, up to
        // a millisecond, is the generator's, not the server's).
        let late = shared.interval.is_some() && Instant::now() >= due;
        if shared.interval.is_some() && !late {
            tokio::time::sleep_until(due).await;
        }
        let Some(req) = shared.workload.request(n, index, &mut rng) else {
            shared.exhausted.store(true, Ordering::Relaxed);
            break;
        };
        key.clear();
        let _ = write!(key, "{}{}", shared.workload.prefix(), req.key);
        let sent = Instant::now();
        let result = send(&http, &nodes[req.node], &req, &key).await;
        let latency = Instant::now() - if late { due } else { sent };
        shared.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((version, cache)) => {
                tally.ok(req.method.op(), latency);
                match cache {
                    Some(Cache::Hit) => tally.hits += 1,
                    Some(Cache::Miss) => tally.misses += 1,
                    _ => {}
                }
                shared.workload.answered(&req, &Answer { version, cache, sent });
            }
            Err(kind) => {
                shared.failed.fetch_add(1, Ordering::Relaxed);
                tally.error(&kind);
            }
        }
    }
    tally
}

/// Sends one request (the client reads the whole answer, so the
/// connection is reused). Errors come back as their kind, the key of
/// "errors by kind". Only what the run uses is parsed: a read's version
/// and cache, a write's version when asked for.
async fn send(
    http: &reqwest::Client,
    node: &Client,
    req: &Request,
    key: &str,
) -> Result<(Option<u64>, Option<Cache>), String> {
    match req.method {
        Method::Get => {
            let found = node.get(key).await.map_err(|e| failure_kind(&e))?;
            Ok((found.version(), found.cache()))
        }
        Method::Put => {
            let options = PutOptions { ack: req.ack, ttl: None };
            let body = req.body.clone().unwrap_or_default();
            let written = node.put_with(key, body, options).await.map_err(|e| failure_kind(&e))?;
            if !req.want_version {
                return Ok((None, None));
            }
            written.version().map(|v| (Some(v), None)).ok_or_else(|| "no_version".into())
        }
        Method::Delete => {
            node.del_with(key, req.ack).await.map_err(|e| failure_kind(&e))?;
            Ok((None, None))
        }
        Method::Url => get_url(http, node.node_url()).await,
    }
}

/// `bench url`: a GET of any URL, not a key, so not through [`Client`].
async fn get_url(http: &reqwest::Client, url: &str) -> Result<(Option<u64>, Option<Cache>), String> {
    let resp = http.get(url).send().await.map_err(|e| client::no_answer(&e).to_string())?;
    let status = resp.status();
    let cache = resp.headers().get("x-cache").and_then(|v| v.to_str().ok()).and_then(Cache::parse);
    resp.bytes().await.map_err(|e| client::no_answer(&e).to_string())?;
    if !status.is_success() {
        return Err(status_kind(status.as_u16()));
    }
    Ok((None, cache))
}

/// The kind of a failed `/kv` request.
fn failure_kind(e: &client::Error) -> String {
    match e {
        client::Error::Transport { source, .. } => client::no_answer(source).into(),
        other => other.status().map_or_else(|| "request".into(), |s| status_kind(s.as_u16())),
    }
}

pub fn status_kind(status: u16) -> String {
    match status {
        404 => "not_found".into(),
        503 => "unavailable".into(),
        s => format!("http_{s}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_and_errors_have_stable_kinds() {
        assert_eq!(status_kind(404), "not_found");
        assert_eq!(status_kind(503), "unavailable");
        assert_eq!(status_kind(500), "http_500");
    }

    struct Nowhere(Vec<String>);
    impl Workload for Nowhere {
        fn nodes(&self) -> &[String] {
            &self.0
        }

        fn request(&self, n: u64, _w: usize, _rng: &mut StdRng) -> Option<Request> {
            (n < 5).then(|| Request::get(0, n))
        }
    }

    #[tokio::test]
    async fn a_run_stops_by_itself_and_counts_every_failure() {
        let load = Load {
            connections: 2,
            duration: Some(Duration::from_secs(30)),
            requests: None,
            rate: None,
            timeout: Duration::from_secs(2),
            progress: false,
            seed: None,
        };
        let conns = Connections::new(2, load.timeout, &Default::default(), None).unwrap();
        // Port 9 on loopback (discard) is closed here: every request fails to connect.
        let nowhere = Nowhere(vec!["http://127.0.0.1:9".into()]);
        let (phase, _, exhausted) = run("t", vec![], &load, &conns, Arc::new(nowhere)).await.unwrap();
        assert!(exhausted, "the workload ran out of requests and ended the run");
        assert_eq!(phase.requests, 5);
        assert_eq!(phase.ok, 0);
        assert_eq!(phase.errors.get("connect"), Some(&5), "{:?}", phase.errors);
    }
}
