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
use crate::client::{self, Client, Error, PutOptions};
use crate::config::parse_duration;

/// How long one request may take, connecting included: the client's
/// default, above a node's `--failover-wait`.
const REQUEST_TIMEOUT: Duration = client::DEFAULT_TIMEOUT;

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
        let value = client::bearer(token).map_err(|_| "--api-token: not a valid header value".to_string())?;
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
    #[arg(long, env = "TREECACHE_CONSISTENT", value_parser = clap::builder::BoolishValueParser::new())]
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
    /// Expire the key after this long: 90s, 5m, 2h, 1.5s (a bare number is
    /// seconds; the node keeps whole seconds, so a fraction is rounded up).
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

/// A duration as [`parse_duration`] reads it, in whole seconds (the node
/// keeps no finer ttl): a fraction is rounded up, so a key never expires
/// before the time asked for.
pub fn parse_ttl(s: &str) -> Result<u64, String> {
    let d = parse_duration(s)?;
    if d.is_zero() {
        return Err(format!("{s:?}: the ttl must be more than zero"));
    }
    Ok(d.as_secs() + u64::from(d.subsec_nanos() != 0))
}

fn client(target: &Target) -> Result<Client, Failure> {
    // `--node 127.0.0.1:8080` means http://127.0.0.1:8080.
    let node = match target.node.contains("://") {
        true => target.node.clone(),
        false => format!("http://{}", target.node),
    };
    let mut builder = Client::builder(&node).timeout(REQUEST_TIMEOUT);
    if let Some(token) = &target.api_token {
        builder = builder.api_token(token);
    }
    if let Some(ca) = &target.tls_ca {
        let tls = crate::tls::client_config_trusting(ca).map_err(Failure::usage)?;
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .build()
            .map_err(|e| Failure::new(Exit::Other, format!("cannot build an HTTP client: {}", chain(&e))))?;
        builder = builder.http_client(http);
    }
    builder.build().map_err(|e| failure("", e))
}

/// The exit code for a failed request: [`Exit::Unavailable`] for a node
/// that cannot be reached or answers 503, [`Exit::Usage`] for input it
/// refuses.
pub fn exit_for(error: &Error) -> Exit {
    match error {
        Error::NotFound { .. } => Exit::NotFound,
        Error::Unauthorized(_) => Exit::Unauthorized,
        Error::Refused(_) | Error::InvalidToken => Exit::Usage,
        Error::Transport { source, .. } if source.is_builder() => Exit::Usage,
        Error::Unavailable { .. } | Error::Transport { .. } => Exit::Unavailable,
        _ => Exit::Other,
    }
}

/// `what` failed: the node's own message, or the cause ("connection
/// refused") of a request that got no answer.
fn failure(what: &str, error: Error) -> Failure {
    let message = match &error {
        Error::Transport { source, .. } => format!("{what}: {}", chain(source)),
        Error::InvalidToken => "--api-token: not a valid header value".into(),
        Error::Unauthorized(reply) => {
            format!("{what}: {}: {} (pass --api-token or set TREECACHE_API_TOKEN)", reply.status, reply.message)
        }
        Error::Build(source) => format!("cannot build an HTTP client: {}", chain(source)),
        other => match other.reply() {
            Some(reply) => format!("{what}: {}: {}", reply.status, reply.message),
            None => format!("{what}: {}", chain(other)),
        },
    };
    Failure::new(exit_for(&error), message)
}

/// [`failure`], and with `-o json` the error as one JSON object on stdout
/// too, so a script piping to `jq` gets an object, not empty input:
/// `{"key", "error", "code", "status", "exit"}` (`status` and `code` as the
/// node answered; `code` is `unreachable` when no answer came).
fn failed(what: &str, key: &str, format: Format, error: Error) -> Failure {
    let json = (format == Format::Json).then(|| {
        let (status, code) = match error.reply() {
            Some(reply) => (Some(reply.status.as_u16()), reply.code.clone()),
            None if matches!(error, Error::Transport { .. }) => (None, Some("unreachable".to_string())),
            None => (None, None),
        };
        (status, code)
    });
    let failure = failure(what, error);
    if let Some((status, code)) = json {
        let answer = json!({
            "key": key,
            "error": failure.message,
            "code": code,
            "status": status,
            "exit": failure.exit as i32,
        });
        println!("{answer}");
    }
    failure
}

fn print(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout();
    out.write_all(bytes).and_then(|_| out.flush()).map_err(|e| format!("writing stdout: {e}").into())
}

pub async fn get(args: GetArgs) -> Result<(), Failure> {
    let client = client(&args.target)?;
    let query = if args.consistent { "?consistent=true" } else { "" };
    let what = format!("GET {}{query}", client.url(&args.key));
    let read = if args.consistent { client.get_consistent(&args.key).await } else { client.get(&args.key).await };
    let found = read.map_err(|e| failed(&what, &args.key, args.output.output, e))?;
    let (version, cache, node) = (found.version(), found.cache().map(client::Cache::as_str), found.node());
    match args.output.output {
        Format::Text => {
            let dash = |v: Option<String>| v.unwrap_or_else(|| "-".into());
            eprintln!(
                "version {} cache {} node {}",
                dash(version.map(|v| v.to_string())),
                cache.unwrap_or("-"),
                dash(node.map(|n| n.to_string()))
            );
            print(found.value())?;
            if std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                println!();
            }
        }
        Format::Json => {
            let mut answer = json!({
                "key": args.key,
                "version": version,
                "cache": cache,
                "node": node,
            });
            let body = found.value();
            match std::str::from_utf8(body) {
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
            if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                eprintln!("reading the value of {:?} from stdin (end it with Ctrl-D)", args.key);
            }
            let mut buf = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf).map_err(|e| format!("reading stdin: {e}"))?;
            buf
        }
    };
    let client = client(&args.target)?;
    let what = format!("PUT {}", client.url(&args.key));
    let options = PutOptions { ack: args.write.ack.into(), ttl: args.ttl.map(Duration::from_secs) };
    let written = client
        .put_with(&args.key, value, options)
        .await
        .map_err(|e| failed(&what, &args.key, args.write.output.output, e))?;
    write_answer(&written, &what, &args.key, args.write.output.output)
}

pub async fn del(args: DelArgs) -> Result<(), Failure> {
    let client = client(&args.target)?;
    let what = format!("DELETE {}", client.url(&args.key));
    let written = client
        .del_with(&args.key, args.write.ack.into())
        .await
        .map_err(|e| failed(&what, &args.key, args.write.output.output, e))?;
    write_answer(&written, &what, &args.key, args.write.output.output)
}

/// Prints a write's answer: the version (text; nothing when the parent has
/// not learned it yet) or the whole answer with key, status and node (json).
fn write_answer(written: &client::Written, what: &str, key: &str, format: Format) -> Result<(), Failure> {
    let body = written.body();
    let mut answer: Value = serde_json::from_slice(body).map_err(|e| {
        Failure::new(Exit::Other, format!("{what}: the answer is not JSON ({e}): {}", String::from_utf8_lossy(body)))
    })?;
    match format {
        Format::Text => {
            if let Some(version) = answer["version"].as_u64() {
                println!("{version}");
            }
        }
        Format::Json => {
            if let Some(fields) = answer.as_object_mut() {
                fields.insert("key".into(), json!(key));
                fields.insert("status".into(), json!(written.status().as_u16()));
                fields.insert("node".into(), json!(written.node()));
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
        assert_eq!(parse_ttl("500ms"), Ok(1), "rounded up: never earlier than asked");
        assert_eq!(parse_ttl("1.5s"), Ok(2));
        assert_eq!(parse_ttl("1500ms"), Ok(2));
        assert_eq!(parse_ttl("2000ms"), Ok(2));
        assert!(parse_ttl("0").unwrap_err().contains("more than zero"));
        assert!(parse_ttl("0ms").is_err());
        assert!(parse_ttl("soon").is_err());
    }

    /// The error a node's answer with `status` becomes.
    fn answered(status: u16) -> Error {
        let reply = client::Reply {
            method: "GET",
            url: "http://127.0.0.1:1/kv/k".into(),
            status: reqwest::StatusCode::from_u16(status).unwrap(),
            code: None,
            message: "no".into(),
            headers: Default::default(),
        };
        Error::from_reply("k", reply)
    }

    #[test]
    fn statuses_map_to_documented_exit_codes() {
        assert_eq!(exit_for(&answered(404)), Exit::NotFound);
        assert_eq!(exit_for(&answered(400)), Exit::Usage);
        assert_eq!(exit_for(&answered(413)), Exit::Usage);
        assert_eq!(exit_for(&answered(503)), Exit::Unavailable);
        assert_eq!(exit_for(&answered(500)), Exit::Other);
        assert_eq!(exit_for(&answered(409)), Exit::Other);
        assert_eq!(exit_for(&answered(401)), Exit::Unauthorized);
        let failed = failure("GET http://127.0.0.1:1/kv/k", answered(404));
        assert_eq!(failed.message, "GET http://127.0.0.1:1/kv/k: 404 Not Found: no");
    }

    #[test]
    fn a_refused_token_names_the_flag_and_the_variable() {
        let failed = failure("GET u", answered(401));
        assert_eq!(failed.exit, Exit::Unauthorized);
        assert!(
            failed.message.contains("--api-token") && failed.message.contains("TREECACHE_API_TOKEN"),
            "{}",
            failed.message
        );
    }

    #[tokio::test]
    async fn a_node_given_without_a_scheme_is_http() {
        let port = crate::zkserver::free_port().unwrap();
        let args = GetArgs {
            key: "k".into(),
            target: Target { node: format!("127.0.0.1:{port}"), api_token: None, tls_ca: None },
            consistent: false,
            output: OutputArg { output: Format::Text },
        };
        let err = get(args).await.unwrap_err();
        assert_eq!(err.exit, Exit::Unavailable, "reached for, not refused as a bad URL: {}", err.message);
        assert!(err.message.contains(&format!("http://127.0.0.1:{port}/kv/k")), "{}", err.message);
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
