//! `treecache get|put|del KEY [VALUE] [--node URL]`: one request to a node,
//! the answer printed as a person reads it. `get` prints the value's bytes
//! to stdout and the headers to stderr, so `treecache get k > file` works.

use clap::Args;
use std::io::Write;

use crate::node::read::encode_key;

#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Node to send the request to.
    #[arg(long, env = "TREECACHE_NODE", default_value = "http://127.0.0.1:8080")]
    pub node: String,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    pub key: String,
    #[command(flatten)]
    pub target: Target,
    /// Read at the root, bypassing every cache.
    #[arg(long)]
    pub consistent: bool,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    pub key: String,
    /// The value; read from stdin when absent.
    pub value: Option<String>,
    #[command(flatten)]
    pub target: Target,
    /// Expire the key after this many seconds.
    #[arg(long)]
    pub ttl: Option<u64>,
    /// parent (default) or root: when the write is acknowledged.
    #[arg(long, default_value = "parent")]
    pub ack: String,
}

#[derive(Debug, Clone, Args)]
pub struct DelArgs {
    pub key: String,
    #[command(flatten)]
    pub target: Target,
    /// parent (default) or root.
    #[arg(long, default_value = "parent")]
    pub ack: String,
}

fn url(target: &Target, key: &str) -> String {
    format!("{}/kv/{}", target.node.trim_end_matches('/'), encode_key(key))
}

async fn send(req: reqwest::RequestBuilder, node: &str) -> Result<reqwest::Response, String> {
    req.timeout(std::time::Duration::from_secs(10)).send().await.map_err(|e| format!("{node}: {e}"))
}

/// Turns a non-2xx answer into the node's own error message.
async fn check(resp: reqwest::Response) -> Result<reqwest::Response, String> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    let message = serde_json::from_str::<serde_json::Value>(&body)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or(body);
    Err(format!("{status}: {message}"))
}

pub async fn get(args: GetArgs) -> Result<(), String> {
    let mut u = url(&args.target, &args.key);
    if args.consistent {
        u.push_str("?consistent=true");
    }
    let resp = check(send(reqwest::Client::new().get(&u), &args.target.node).await?).await?;
    let header = |n: &str| resp.headers().get(n).and_then(|v| v.to_str().ok()).unwrap_or("-").to_string();
    eprintln!("version {} cache {} node {}", header("x-version"), header("x-cache"), header("x-node"));
    let body = resp.bytes().await.map_err(|e| e.to_string())?;
    let mut out = std::io::stdout();
    out.write_all(&body).and_then(|_| out.flush()).map_err(|e| e.to_string())?;
    if std::io::IsTerminal::is_terminal(&out) {
        println!();
    }
    Ok(())
}

pub async fn put(args: PutArgs) -> Result<(), String> {
    let value = match args.value {
        Some(v) => v.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|e| format!("reading stdin: {e}"))?;
            buf
        }
    };
    let mut query = vec![("ack", args.ack.clone())];
    if let Some(ttl) = args.ttl {
        query.push(("ttl", ttl.to_string()));
    }
    let req = reqwest::Client::new().put(url(&args.target, &args.key)).query(&query).body(value);
    let resp = check(send(req, &args.target.node).await?).await?;
    println!("{} {}", resp.status().as_u16(), resp.text().await.unwrap_or_default());
    Ok(())
}

pub async fn del(args: DelArgs) -> Result<(), String> {
    let req = reqwest::Client::new().delete(url(&args.target, &args.key)).query(&[("ack", args.ack.clone())]);
    let resp = check(send(req, &args.target.node).await?).await?;
    println!("{} {}", resp.status().as_u16(), resp.text().await.unwrap_or_default());
    Ok(())
}
