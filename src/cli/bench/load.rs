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
//! (converge does). Every run stops by itself.

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Put,
}

impl Method {
    pub fn op(self) -> &'static str {
        match self {
            Method::Get => "get",
            Method::Put => "put",
        }
    }
}

/// One request to send.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: Method,
    pub url: String,
    pub body: Option<Bytes>,
    /// Read the `{"version":N}` answer of an `ack=root` write.
    pub want_version: bool,
    /// Key index, for workloads that track keys.
    pub key: u64,
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cache {
    Hit,
    Miss,
}

pub trait Workload: Send + Sync + 'static {
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
    let start = Instant::now();
    let shared = Arc::new(Shared {
        workload,
        next: AtomicU64::new(0),
        done: AtomicU64::new(0),
        failed: AtomicU64::new(0),
        exhausted: AtomicBool::new(false),
        start,
        stop_at: load.duration.map(|d| start + d),
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
    for (i, client) in conns.clients.iter().enumerate().take(load.connections) {
        let shared = shared.clone();
        let client = client.clone();
        workers.spawn(worker(i, client, shared));
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

async fn worker<W: Workload>(index: usize, client: reqwest::Client, shared: Arc<Shared<W>>) -> Tally {
    let mut tally = Tally::default();
    let mut rng = StdRng::from_entropy();
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
        let sent = Instant::now();
        let result = send(&client, &req).await;
        let latency = Instant::now() - if late { due } else { sent };
        shared.done.fetch_add(1, Ordering::Relaxed);
        match result {
            Ok((version, cache)) => {
                tally.ok(req.method.op(), latency);
                match cache {
                    Some(Cache::Hit) => tally.hits += 1,
                    Some(Cache::Miss) => tally.misses += 1,
                    None => {}
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

/// Sends one request and reads the whole answer (so the connection is
/// reused). Errors come back as their kind, the key of "errors by kind".
async fn send(client: &reqwest::Client, req: &Request) -> Result<(Option<u64>, Option<Cache>), String> {
    let builder = match req.method {
        Method::Get => client.get(&req.url),
        Method::Put => client.put(&req.url).body(req.body.clone().unwrap_or_default()),
    };
    let resp = builder.send().await.map_err(|e| error_kind(&e))?;
    let status = resp.status();
    let header = |name: &str| resp.headers().get(name).and_then(|v| v.to_str().ok());
    let mut version = header("x-version").and_then(|v| v.parse::<u64>().ok());
    let cache = match header("x-cache") {
        Some("hit") => Some(Cache::Hit),
        Some("miss") => Some(Cache::Miss),
        _ => None,
    };
    let body = resp.bytes().await.map_err(|e| error_kind(&e))?;
    if !status.is_success() {
        return Err(status_kind(status.as_u16()));
    }
    if req.want_version {
        let parsed: Option<u64> =
            serde_json::from_slice::<serde_json::Value>(&body).ok().and_then(|v| v["version"].as_u64());
        match parsed {
            Some(v) => version = Some(v),
            None => return Err("no_version".into()),
        }
    }
    Ok((version, cache))
}

pub fn status_kind(status: u16) -> String {
    match status {
        404 => "not_found".into(),
        503 => "unavailable".into(),
        s => format!("http_{s}"),
    }
}

pub fn error_kind(e: &reqwest::Error) -> String {
    if e.is_timeout() {
        "timeout"
    } else if e.is_connect() {
        "connect"
    } else if e.is_body() || e.is_decode() {
        "body"
    } else {
        "request"
    }
    .into()
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

    struct Nowhere;
    impl Workload for Nowhere {
        fn request(&self, n: u64, _w: usize, _rng: &mut StdRng) -> Option<Request> {
            // Port 9 on loopback (discard) is closed here: every request fails to connect.
            (n < 5).then(|| Request {
                method: Method::Get,
                url: "http://127.0.0.1:9/x".into(),
                body: None,
                want_version: false,
                key: n,
            })
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
        };
        let conns = Connections::new(2, load.timeout, &Default::default(), None).unwrap();
        let (phase, _, exhausted) = run("t", vec![], &load, &conns, Arc::new(Nowhere)).await.unwrap();
        assert!(exhausted, "the workload ran out of requests and ended the run");
        assert_eq!(phase.requests, 5);
        assert_eq!(phase.ok, 0);
        assert_eq!(phase.errors.get("connect"), Some(&5), "{:?}", phase.errors);
    }
}
