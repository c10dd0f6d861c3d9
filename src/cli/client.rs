//! `treecache get|put|del KEY [VALUE] [--node URL]`: one request to a node,
//! the answer printed as a script wants it. `get` prints the value's bytes
//! to stdout and the headers to stderr, so `treecache get k > file` works;
//! `put` and `del` print the version the write got. `-o json` prints the
//! whole answer as one JSON object instead. Failures exit with the codes of
//! [`Exit`]: 3 for a missing key, 4 for a node that cannot be reached.

use std::io::Write;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde_json::{json, Value};

use super::{chain, Exit, Failure};
use crate::cli::bench::AckArg;
use crate::config::parse_duration;
use crate::node::read::encode_key;

/// How long one request may take, connecting included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the request goes (and, later, how it authenticates).
#[derive(Debug, Clone, Args)]
pub struct Target {
    /// Node to send the request to.
    #[arg(long, env = "TREECACHE_NODE", default_value = "http://127.0.0.1:8080")]
    pub node: String,
    /// The node's --api-token, sent as `Authorization: Bearer`.
    #[arg(long, env = "TREECACHE_API_TOKEN", hide_env_values = true)]
    pub api_token: Option<String>,
    /// The CA (PEM) to verify an https:// node against.
    #[arg(long, env = "TREECACHE_TLS_CA")]
    pub tls_ca: Option<std::path::PathBuf>,
}

/// Default headers for a client of `/kv`: the API token, when there is one.
pub fn auth_headers(token: Option<&str>) -> Result<reqwest::header::HeaderMap, String> {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        let mut value = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "--api-token: not a valid header value".to_string())?;
        value.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, value);
    }
    Ok(headers)
}

/// How the answer is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// `get`: the value on stdout, `version V cache C node N` on stderr;
    /// `put`/`del`: the version on stdout.
    Text,
    /// One JSON object on stdout with everything the node answered.
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct OutputArg {
    /// Output format.
    #[arg(short = 'o', long = "output", env = "TREECACHE_OUTPUT", value_enum, default_value_t = Format::Text)]
    pub output: Format,
}

#[derive(Debug, Clone, Args)]
pub struct GetArgs {
    pub key: String,
    #[command(flatten)]
    pub target: Target,
    /// Read at the root, bypassing every cache.
    #[arg(long, env = "TREECACHE_CONSISTENT")]
    pub consistent: bool,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Clone, Args)]
pub struct WriteArgs {
    /// When the write is acknowledged: once the parent holds it, or once
    /// the root has committed it.
    #[arg(long, env = "TREECACHE_ACK", value_enum, default_value_t = AckArg::Parent)]
    pub ack: AckArg,
    #[command(flatten)]
    pub output: OutputArg,
}

#[derive(Debug, Clone, Args)]
pub struct PutArgs {
    pub key: String,
    /// The value; read from stdin when absent.
    pub value: Option<String>,
    #[command(flatten)]
    pub target: Target,
    /// Expire the key after this long: 90s, 5m, 2h (a bare number is
    /// seconds; the node keeps whole seconds).
    #[arg(long, env = "TREECACHE_TTL", value_parser = parse_ttl)]
    pub ttl: Option<u64>,
    #[command(flatten)]
    pub write: WriteArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DelArgs {
    pub key: String,
    #[command(flatten)]
    pub target: Target,
    #[command(flatten)]
    pub write: WriteArgs,
}

/// A duration as [`parse_duration`] reads it, in whole seconds, at least one.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    if d.subsec_nanos() != 0 || d.as_secs() == 0 {
        return Err(format!("{s:?}: the ttl is whole seconds, at least 1s"));
    }
    Ok(d.as_secs())
}

fn ack_str(ack: AckArg) -> &'static str {
    match ack {
        AckArg::Parent => "parent",
        AckArg::Root => "root",
    }
}

fn url(target: &Target, key: &str) -> String {
    format!("{}/kv/{}", target.node.trim_end_matches('/'), encode_key(key))
}

fn client(target: &Target) -> Result<reqwest::Client, Failure> {
    let mut builder = reqwest::Client::builder()
        .default_headers(auth_headers(target.api_token.as_deref()).map_err(Failure::usage)?)
        .timeout(REQUEST_TIMEOUT);
    if let Some(ca) = &target.tls_ca {
        builder = builder.use_preconfigured_tls(crate::tls::client_config_trusting(ca).map_err(Failure::usage)?);
    }
    builder.build().map_err(|e| Failure::new(Exit::Other, format!("cannot build an HTTP client: {}", chain(&e))))
}

/// Sends the request; a node that cannot be reached is [`Exit::Unavailable`],
/// with the cause ("connection refused") in the message.
async fn send(req: reqwest::RequestBuilder, what: &str) -> Result<reqwest::Response, Failure> {
    req.send().await.map_err(|e| {
        let exit = if e.is_builder() { Exit::Usage } else { Exit::Unavailable };
        Failure::new(exit, format!("{what}: {}", chain(&e)))
    })
}

/// The exit code for a node's error status.
pub fn exit_for(status: u16) -> Exit {
    match status {
        404 => Exit::NotFound,
        400 | 405 | 413 => Exit::Usage,
        503 => Exit::Unavailable,
        _ => Exit::Other,
    }
}

/// Turns a non-2xx answer into a failure carrying the node's own message.
async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response, Failure> {
    let status = resp.status();
    if status.is_success() {
        return Ok(resp);
    }
    let body = resp.text().await.unwrap_or_default();
    let message =
        serde_json::from_str::<Value>(&body).ok().and_then(|v| v["error"].as_str().map(str::to_string)).unwrap_or(body);
    Err(Failure::new(exit_for(status.as_u16()), format!("{what}: {status}: {message}")))
}

fn header(resp: &reqwest::Response, name: &str) -> Option<String> {
    resp.headers().get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

fn print(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout();
    out.write_all(bytes).and_then(|_| out.flush()).map_err(|e| format!("writing stdout: {e}").into())
}

pub async fn get(args: GetArgs) -> Result<(), Failure> {
    let mut u = url(&args.target, &args.key);
    if args.consistent {
        u.push_str("?consistent=true");
    }
    let what = format!("GET {u}");
    let resp = check(send(client(&args.target)?.get(&u), &what).await?, &what).await?;
    let (version, cache, node) = (header(&resp, "x-version"), header(&resp, "x-cache"), header(&resp, "x-node"));
    let body = resp.bytes().await.map_err(|e| Failure::unavailable(format!("{what}: {}", chain(&e))))?;
    match args.output.output {
        Format::Text => {
            let dash = |v: &Option<String>| v.clone().unwrap_or_else(|| "-".into());
            eprintln!("version {} cache {} node {}", dash(&version), dash(&cache), dash(&node));
            print(&body)?;
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!();
            }
        }
        Format::Json => {
            let number = |v: &Option<String>| v.as_deref().and_then(|s| s.parse::<u64>().ok());
            let mut answer = json!({
                "key": args.key,
                "version": number(&version),
                "cache": cache,
                "node": number(&node),
            });
            match std::str::from_utf8(&body) {
                Ok(text) => answer["value"] = json!(text),
                Err(_) => answer["value_hex"] = json!(body.iter().map(|b| format!("{b:02x}")).collect::<String>()),
            }
            println!("{answer}");
        }
    }
    Ok(())
}

pub async fn put(args: PutArgs) -> Result<(), Failure> {
    let value = match args.value {
        Some(v) => v.into_bytes(),
        None => {
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|e| format!("reading stdin: {e}"))?;
            buf
        }
    };
    let mut query = vec![("ack", ack_str(args.write.ack).to_string())];
    if let Some(ttl) = args.ttl {
        query.push(("ttl", ttl.to_string()));
    }
    let u = url(&args.target, &args.key);
    let req = client(&args.target)?.put(&u).query(&query).body(value);
    write_answer(req, &format!("PUT {u}"), &args.key, args.write.output.output).await
}

pub async fn del(args: DelArgs) -> Result<(), Failure> {
    let u = url(&args.target, &args.key);
    let req = client(&args.target)?.delete(&u).query(&[("ack", ack_str(args.write.ack))]);
    write_answer(req, &format!("DELETE {u}"), &args.key, args.write.output.output).await
}

/// Prints a write's answer: the version (text; nothing when the parent has
/// not learned it yet) or the whole answer with key, status and node (json).
async fn write_answer(req: reqwest::RequestBuilder, what: &str, key: &str, format: Format) -> Result<(), Failure> {
    let resp = check(send(req, what).await?, what).await?;
    let status = resp.status().as_u16();
    let node = header(&resp, "x-node").and_then(|n| n.parse::<u64>().ok());
    let body = resp.text().await.map_err(|e| Failure::unavailable(format!("{what}: {}", chain(&e))))?;
    let mut answer: Value = serde_json::from_str(&body)
        .map_err(|e| Failure::new(Exit::Other, format!("{what}: the answer is not JSON ({e}): {body}")))?;
    match format {
        Format::Text => {
            if let Some(version) = answer["version"].as_u64() {
                println!("{version}");
            }
        }
        Format::Json => {
            if let Some(fields) = answer.as_object_mut() {
                fields.insert("key".into(), json!(key));
                fields.insert("status".into(), json!(status));
                fields.insert("node".into(), json!(node));
            }
            println!("{answer}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ttl_takes_durations_and_bare_seconds() {
        assert_eq!(parse_ttl("2s"), Ok(2));
        assert_eq!(parse_ttl("90"), Ok(90));
        assert_eq!(parse_ttl("5m"), Ok(300));
        assert_eq!(parse_ttl("1h"), Ok(3600));
        assert!(parse_ttl("500ms").unwrap_err().contains("whole seconds"));
        assert!(parse_ttl("1.5s").unwrap_err().contains("whole seconds"));
        assert!(parse_ttl("0").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    #[test]
    fn statuses_map_to_documented_exit_codes() {
        assert_eq!(exit_for(404), Exit::NotFound);
        assert_eq!(exit_for(400), Exit::Usage);
        assert_eq!(exit_for(413), Exit::Usage);
        assert_eq!(exit_for(503), Exit::Unavailable);
        assert_eq!(exit_for(500), Exit::Other);
        assert_eq!(exit_for(409), Exit::Other);
    }

    #[tokio::test]
    async fn a_refused_connection_says_so_and_is_unavailable() {
        let port = crate::zkserver::free_port().unwrap();
        let args = DelArgs {
            key: "k".into(),
            target: Target { node: format!("http://127.0.0.1:{port}"), api_token: None, tls_ca: None },
            write: WriteArgs { ack: AckArg::Parent, output: OutputArg { output: Format::Text } },
        };
        let err = del(args).await.unwrap_err();
        assert_eq!(err.exit, Exit::Unavailable);
        assert!(err.message.to_lowercase().contains("connection refused"), "{}", err.message);
    }
}
