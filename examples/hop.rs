//! The one-hop baseline for `treecache bench`: an actix-web server whose
//! handler makes one keep-alive reqwest GET to `--upstream` (usually
//! examples/bare) and returns its body. `url` against this minus `url`
//! against the upstream is the cost of one bare HTTP hop, the yardstick
//! for each extra level a treecache miss travels.
//!
//! ```text
//! cargo run --release --example hop -- --upstream http://127.0.0.1:9000/ --listen 127.0.0.1:9001
//! ```
//! Prints `listening on http://ADDR` once it serves; stops on Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;
use std::time::Duration;

use actix_web::web::ThinData;
use actix_web::{web, App, HttpResponse, HttpServer};
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// URL each request is forwarded to.
    #[arg(long)]
    upstream: String,
    /// Address to serve on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// HTTP worker threads (a node runs 2).
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[derive(Clone)]
struct Hop {
    http: reqwest::Client,
    upstream: String,
}

async fn forward(hop: ThinData<Hop>) -> HttpResponse {
    let answer = match hop.http.get(&hop.upstream).send().await {
        Ok(resp) => resp.bytes().await,
        Err(e) => Err(e),
    };
    match answer {
        Ok(body) => HttpResponse::Ok().content_type("application/octet-stream").body(body),
        Err(e) => HttpResponse::BadGateway().body(format!("upstream {}: {e}", hop.upstream)),
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if !args.upstream.starts_with("http://") {
        return Err(format!("--upstream {:?}: not an http:// URL", args.upstream));
    }
    // Built like a node's client: one per process, pooled, keep-alive.
    let http = reqwest::Client::builder()
        .no_proxy()
        .pool_idle_timeout(Duration::from_secs(60))
        .pool_max_idle_per_host(64)
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(2))
        .build()
        .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
    let hop = Hop { http, upstream: args.upstream.clone() };
    let listener =
        std::net::TcpListener::bind(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = HttpServer::new(move || App::new().app_data(ThinData(hop.clone())).default_service(web::to(forward)))
        .workers(args.workers.max(1))
        .disable_signals()
        .listen(listener)
        .map_err(|e| format!("cannot serve: {e}"))?
        .run();
    let handle = server.handle();
    let serving = tokio::spawn(server);
    println!("listening on http://{addr}");
    let _ = std::io::stdout().flush();
    treecache::process::wait_for_signal().await;
    handle.stop(true).await;
    let _ = serving.await;
    Ok(())
}
