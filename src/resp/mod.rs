//! The Redis protocol (RESP2 and RESP3), a front door beside `http`:
//! `--resp-listen ADDR` makes a node take redis-cli, redis-benchmark and
//! Redis client libraries. Every command is mapped onto the node calls
//! `/kv` makes (a read is [`Node::read`], a write [`Node::write`], SET
//! NX/XX a conditional write the root decides), so the keys, values,
//! limits, versions, guarantees and metrics are `/kv`'s. docs/resp.md has
//! the command table and every difference from Redis.
//!
//! - [`frame`]: the request decoder, bounded and fuzzed.
//! - [`reply`]: replies in RESP2 or RESP3.
//! - [`conn`]: one connection: read, run commands in order, write.
//! - [`commands`]: the commands, and the table COMMAND reports.
//!
//! The listener and every connection run on one thread of their own (a
//! current-thread runtime, like Redis's event loop): a pipelined hit is
//! read, looked up and answered without crossing threads, which measured
//! 1.5x the GETs per second of the node's shared multi-threaded runtime
//! with `-P 16` (docs/benchmarks.md). Misses and writes wait on the node's
//! own tasks as HTTP's do. [`RespServer::stop`] ends the thread and every
//! connection with it. Must not touch the store, nor build HTTP answers.
//!
//! Under TLS (`--tls-cert`), the listener speaks only TLS, as Redis's
//! `tls-port`: each connection is first a handshake through the node's
//! [`Tls::acceptor`] (the HTTP listener's configuration: the same
//! certificate, `--tls-client-auth` and SIGHUP reloads), then the same
//! [`Conn`] over the TLS stream. A handshake that fails (a plaintext
//! client, a refused certificate) or does not finish within
//! [`HANDSHAKE_TIMEOUT`] closes that connection only.

mod commands;
mod conn;
pub mod frame;
mod reply;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt;
use tokio::task::JoinSet;

use crate::node::{Node, BATCH_BYTES};
use crate::tls::Tls;
use conn::{Conn, Session};
use frame::Limits;

pub use commands::REDIS_VERSION;

/// How long a client has to finish its TLS handshake (as HTTP's request
/// head timeout): a connection that stalls there holds a client slot.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// What every connection of one listener shares.
pub(crate) struct Shared {
    node: Node,
    /// The port the listener has (INFO's tcp_port).
    port: u16,
    started: Instant,
    run_id: u128,
    limits: Limits,
    max_clients: usize,
    next_id: AtomicU64,
    connected: AtomicUsize,
    total_connections: AtomicU64,
    commands: AtomicU64,
    rejected: AtomicU64,
}

impl Shared {
    fn connected(&self) -> usize {
        self.connected.load(Ordering::Relaxed)
    }

    fn count_command(&self) {
        self.commands.fetch_add(1, Ordering::Relaxed);
    }
}

/// The decoder's bounds for a node: an argument may be as long as a value
/// (`--max-value-bytes`); one command's arguments together as long as one
/// write batch of the uplink, or one value and a little more.
pub fn limits(max_value_bytes: u64) -> Limits {
    let max_arg = usize::try_from(max_value_bytes).unwrap_or(usize::MAX);
    Limits { max_arg, max_command: BATCH_BYTES.max(max_arg.saturating_add(64 * 1024)) }
}

/// A running RESP listener.
pub struct RespServer {
    addr: SocketAddr,
    stop: tokio::sync::oneshot::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl RespServer {
    /// Serves RESP on `listener` (bound by the caller, so a taken port
    /// fails before the node starts) for `node`; over TLS with `tls`.
    pub fn start(listener: std::net::TcpListener, node: Node, tls: Option<&Tls>) -> Result<RespServer, String> {
        let acceptor = tls.map(Tls::acceptor);
        let addr = listener.local_addr().map_err(|e| format!("RESP listener: {e}"))?;
        listener.set_nonblocking(true).map_err(|e| format!("RESP listener {addr}: {e}"))?;
        let shared = Arc::new(Shared {
            port: addr.port(),
            started: Instant::now(),
            run_id: rand::random(),
            limits: limits(node.args().max_value_bytes),
            max_clients: node.args().max_connections as usize,
            next_id: AtomicU64::new(1),
            connected: AtomicUsize::new(0),
            total_connections: AtomicU64::new(0),
            commands: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
            node,
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| format!("RESP listener {addr}: cannot start its runtime: {e}"))?;
        let thread = std::thread::Builder::new()
            .name("resp".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(listener) => {
                            tokio::select! {
                                _ = accept(listener, shared, acceptor) => {}
                                _ = stopped => {}
                            }
                        }
                        Err(e) => log::error!("RESP listener {addr}: {e}"),
                    }
                });
            })
            .map_err(|e| format!("RESP listener {addr}: cannot start its thread: {e}"))?;
        Ok(RespServer { addr, stop, thread })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening and closes every connection.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::task::spawn_blocking(move || self.thread.join()).await;
    }
}

/// Counts a connection while it lives.
struct Counted(Arc<Shared>);

impl Drop for Counted {
    fn drop(&mut self) {
        self.0.connected.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes connections until stopped; owns their tasks (dropped with it).
/// A connection past `--max-connections` is answered an error and closed
/// (after its handshake under TLS, so the client can read it).
async fn accept(listener: tokio::net::TcpListener, shared: Arc<Shared>, tls: Option<tokio_rustls::TlsAcceptor>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, addr)) => {
                    shared.total_connections.fetch_add(1, Ordering::Relaxed);
                    let full = shared.connected() >= shared.max_clients;
                    let counted = if full {
                        shared.rejected.fetch_add(1, Ordering::Relaxed);
                        None
                    } else {
                        shared.connected.fetch_add(1, Ordering::Relaxed);
                        Some(Counted(shared.clone()))
                    };
                    let _ = stream.set_nodelay(true);
                    let (shared, tls) = (shared.clone(), tls.clone());
                    connections.spawn(async move {
                        let local = stream.local_addr().ok();
                        match tls {
                            None => serve(shared, stream, addr, local, full).await,
                            Some(acceptor) => match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                                Ok(Ok(stream)) => serve(shared, stream, addr, local, full).await,
                                Ok(Err(e)) => log::debug!("RESP client {addr}: TLS handshake failed, closed: {e}"),
                                Err(_) => log::debug!(
                                    "RESP client {addr}: no TLS handshake within {HANDSHAKE_TIMEOUT:?}, closed"
                                ),
                            },
                        }
                        drop(counted);
                    });
                }
                Err(e) => {
                    // Out of descriptors, most likely: let some close.
                    log::warn!("RESP listener: cannot accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// One connection, plain or TLS: served, or refused when the listener is
/// `full`.
async fn serve<S>(shared: Arc<Shared>, mut stream: S, addr: SocketAddr, local: Option<SocketAddr>, full: bool)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    if full {
        let _ = stream.write_all(b"-ERR max number of clients reached\r\n").await;
        let _ = stream.shutdown().await;
        return;
    }
    let session = Session::new(
        shared.next_id.fetch_add(1, Ordering::Relaxed),
        Some(addr),
        local,
        shared.node.guard().needs_token(),
    );
    Conn::new(shared, stream, session).run().await;
}
