//! The baseline for `treecache bench`: a bare actix-web server whose one
//! handler returns a constant body. It runs like a node does (two workers
//! on a tokio runtime, keep-alive), so `hit` against a node compared with
//! `url` against this shows what treecache adds to serving bytes over HTTP.
//!
//! ```text
//! cargo run --release --example bare -- --listen 127.0.0.1:9000 --body-bytes 1024
//! treecache bench url --url http://127.0.0.1:9000/ -c 16 -d 10s
//! ```
//! Prints `listening on http://ADDR` once it serves; stops on Ctrl-C or SIGTERM.

use std::io::Write;
use std::net::SocketAddr;

use actix_web::{web, App, HttpResponse, HttpServer};
use bytes::Bytes;
use clap::Parser;

#[derive(Parser)]
struct Args {
    /// Address to serve on (port 0: any free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// Size of the constant body, e.g. 1024, 4KiB.
    #[arg(long, default_value = "1024", value_parser = treecache::config::parse_bytes)]
    body_bytes: u64,
    /// HTTP worker threads (a node runs 2).
    #[arg(long, default_value_t = 2)]
    workers: usize,
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let args = Args::parse();
    if args.body_bytes > 64 << 20 {
        return Err(format!("--body-bytes {}: at most 64 MiB", args.body_bytes));
    }
    let body = Bytes::from(vec![b'x'; args.body_bytes as usize]);
    let listener =
        std::net::TcpListener::bind(args.listen).map_err(|e| format!("cannot listen on {}: {e}", args.listen))?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let server = HttpServer::new(move || {
        let body = body.clone();
        App::new().default_service(web::to(move || {
            let body = body.clone();
            async move { HttpResponse::Ok().content_type("application/octet-stream").body(body) }
        }))
    })
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
