//! `treecache node` as a process: where the node and its front doors
//! meet. Validates the settings, binds (HTTP, and RESP with
//! `--resp-listen`), opens the commit log, builds the [`Node`], serves
//! [`crate::http::routes`] with the node's limits and [`RespServer`],
//! starts the node's tasks, and on SIGTERM or Ctrl-C leaves the tree before
//! the servers stop. The node knows nothing of the servers, nor the routes
//! of the process. Under TLS the HTTP listener takes the node's
//! [`crate::tls::Tls`] (HTTPS, client certificates marked per connection),
//! and SIGHUP reloads its files; the RESP listener takes the same TLS.

use std::time::Duration;

use actix_web::web::ThinData;
use actix_web::{App, HttpServer};

use crate::config::NodeArgs;
use crate::node::{Node, CLIENT_POOL_IDLE};
use crate::process::wait_for_signal;
use crate::resp::RespServer;

/// How long the server keeps an idle connection open.
const SERVER_KEEP_ALIVE: Duration = Duration::from_secs(75);
const _: () = assert!(SERVER_KEEP_ALIVE.as_secs() > CLIENT_POOL_IDLE.as_secs(), "the client must close first");
/// How long a client has to send a request's head before a 408 (slowloris).
const CLIENT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a closing connection may take to shut down before it is dropped.
const CLIENT_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// HTTP worker threads.
const WORKERS: u32 = 2;

/// `treecache node`: validate, bind, serve, register; on SIGTERM or Ctrl-C
/// leave the tree cleanly.
pub async fn run(args: NodeArgs) -> std::result::Result<(), String> {
    args.validate()?;
    for note in args.notes() {
        log::warn!("{note}");
    }
    let listener =
        std::net::TcpListener::bind(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let resp_listener = match args.resp_listen {
        Some(addr) => {
            Some(std::net::TcpListener::bind(addr).map_err(|e| format!("cannot listen for RESP on {addr}: {e}"))?)
        }
        None => None,
    };
    let log = Node::open_log(&args)?;
    let node = Node::with_log(args, log).map_err(|e| e.to_string())?;
    let max_body = node.args().max_value_bytes as usize;
    let app_node = node.clone();
    let max_connections = (node.args().max_connections / WORKERS).max(1) as usize;
    raise_open_files_limit();
    let tls = node.tls().cloned();
    let server = HttpServer::new(move || {
        App::new()
            .app_data(ThinData(app_node.clone()))
            .wrap(crate::http::guard::Track::new(app_node.clone()))
            .configure(|cfg| crate::http::routes(cfg, max_body))
    })
    .workers(WORKERS as usize)
    // Abuse limits (docs/security.md): connections per worker; a request
    // head must arrive within CLIENT_REQUEST_TIMEOUT (else 408 and close),
    // so half-open connections do not pile up; heads over 128 KiB get 431
    // (actix's fixed buffer).
    .max_connections(max_connections)
    .client_request_timeout(CLIENT_REQUEST_TIMEOUT)
    .client_disconnect_timeout(CLIENT_DISCONNECT_TIMEOUT)
    // Longer than the clients' pool idle timeout (60 s, build_http): the
    // client closes an idle connection first. With actix's default (5 s)
    // a child reusing a pooled connection the parent was closing got a
    // connection error, and its reader a 503, after any pause over 5 s.
    .keep_alive(SERVER_KEEP_ALIVE)
    .disable_signals();
    let server = match &tls {
        Some(tls) => {
            let marks = tls.clone();
            server
                .on_connect(move |conn, ext| marks.on_connect(conn, ext))
                .listen_rustls_0_23(listener, (*tls.server_config()).clone())
        }
        None => server.listen(listener),
    }
    .map_err(|e| format!("cannot serve: {e}"))?
    .run();
    if let Some(tls) = tls {
        reload_on_sighup(tls)?;
    }
    let handle = server.handle();
    let serving = tokio::spawn(server);
    log::info!("treecache node listening on {} (advertised as {})", node.args().listen, node.url());
    let resp = resp_listener.map(|l| RespServer::start(l, node.clone(), node.tls())).transpose()?;
    if let Some(resp) = &resp {
        let over = if node.tls().is_some() { " over TLS" } else { "" };
        log::info!("RESP (Redis protocol) listening on {}{over}", resp.addr());
    }
    node.start();
    wait_for_signal().await;
    log::info!("shutting down: leaving the tree");
    node.shutdown().await;
    if let Some(resp) = resp {
        resp.stop().await;
    }
    handle.stop(true).await;
    let _ = serving.await;
    Ok(())
}

/// Reloads the TLS files on every SIGHUP (a bad file is logged and
/// changes nothing); open connections are not touched. Installed before
/// the node starts, so a SIGHUP never kills the process.
fn reload_on_sighup(tls: crate::tls::Tls) -> std::result::Result<(), String> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangups = signal(SignalKind::hangup()).map_err(|e| format!("cannot handle SIGHUP: {e}"))?;
    tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            let files = tls.files();
            match tls.reload() {
                Ok(()) => log::info!(
                    "SIGHUP: reloaded TLS certificate {}, key {} and CA {}",
                    files.cert.display(),
                    files.key.display(),
                    files.ca.display()
                ),
                Err(e) => log::error!("SIGHUP: TLS files not reloaded, the old ones stay in use: {e}"),
            }
        }
    });
    Ok(())
}

/// Raises this process's soft open-files limit to its hard limit: each
/// client connection is a descriptor, and a service manager's default soft
/// limit (often 1024) is below `--max-connections`.
fn raise_open_files_limit() {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit/setrlimit only read or write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            if libc::setrlimit(libc::RLIMIT_NOFILE, &lim) != 0 {
                log::warn!("cannot raise the open-files limit: {}", std::io::Error::last_os_error());
            }
        }
    }
}
