//! A plain RESP client for tests: sends commands as arrays of bulk strings
//! (or raw bytes, for bad frames) and reads replies in full. Written from
//! the protocol, not from the server's code, so it checks what goes over
//! the wire. (redis-cli and redis-py, in tests/resp.rs, are the clients
//! people use.)

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

/// How long a reply may take.
const REPLY_TIMEOUT: Duration = Duration::from_secs(40);

/// One reply, RESP2 or RESP3.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Vec<u8>),
    Nil,
    Array(Vec<Reply>),
    /// RESP3 map, as pairs.
    Map(Vec<(Reply, Reply)>),
    /// RESP3 verbatim text, without its format prefix.
    Verbatim(String),
}

impl Reply {
    pub fn bulk(s: &str) -> Reply {
        Reply::Bulk(s.as_bytes().to_vec())
    }

    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// The text of a bulk, simple or verbatim reply.
    pub fn text(&self) -> String {
        match self {
            Reply::Simple(s) | Reply::Error(s) | Reply::Verbatim(s) => s.clone(),
            Reply::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            other => panic!("not text: {other:?}"),
        }
    }

    pub fn is_error_starting(&self, prefix: &str) -> bool {
        matches!(self, Reply::Error(e) if e.starts_with(prefix))
    }
}

pub struct Resp {
    stream: BufReader<TcpStream>,
}

impl Resp {
    pub async fn connect(addr: &str) -> Resp {
        let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to RESP {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        Resp { stream: BufReader::new(stream) }
    }

    /// Sends one command and reads its reply.
    pub async fn cmd(&mut self, args: &[&[u8]]) -> Reply {
        self.send(args).await;
        self.read().await.expect("a reply")
    }

    /// [`Resp::cmd`] with text arguments.
    pub async fn call(&mut self, args: &[&str]) -> Reply {
        let args: Vec<&[u8]> = args.iter().map(|a| a.as_bytes()).collect();
        self.cmd(&args).await
    }

    /// Sends one command without reading (pipelining).
    pub async fn send(&mut self, args: &[&[u8]]) {
        let mut out = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            out.extend_from_slice(a);
            out.extend_from_slice(b"\r\n");
        }
        self.raw(&out).await;
    }

    /// Sends bytes as they are.
    pub async fn raw(&mut self, bytes: &[u8]) {
        self.stream.get_mut().write_all(bytes).await.expect("write to RESP");
    }

    /// Reads one reply; `None` when the server closed the connection.
    pub async fn read(&mut self) -> Option<Reply> {
        tokio::time::timeout(REPLY_TIMEOUT, read_reply(&mut self.stream))
            .await
            .unwrap_or_else(|_| panic!("no RESP reply within {REPLY_TIMEOUT:?}"))
    }

    /// Whether the server closed the connection (reads end of stream).
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }
}

fn read_reply(
    r: &mut BufReader<TcpStream>,
) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Reply>> + Send + '_>> {
    Box::pin(async move {
        let mut line = Vec::new();
        if r.read_until(b'\n', &mut line).await.ok()? == 0 {
            return None;
        }
        let line = String::from_utf8_lossy(line.strip_suffix(b"\r\n").unwrap_or(&line)).into_owned();
        let (kind, rest) = line.split_at(1);
        let n = || rest.parse::<i64>().unwrap_or_else(|_| panic!("bad RESP line {line:?}"));
        Some(match kind {
            "+" => Reply::Simple(rest.into()),
            "-" => Reply::Error(rest.into()),
            ":" => Reply::Int(n()),
            "_" => Reply::Nil,
            "$" | "=" if n() < 0 => Reply::Nil,
            "$" | "=" => {
                let mut data = vec![0; n() as usize + 2];
                r.read_exact(&mut data).await.ok()?;
                data.truncate(data.len() - 2);
                if kind == "=" {
                    Reply::Verbatim(String::from_utf8_lossy(&data[4..]).into_owned())
                } else {
                    Reply::Bulk(data)
                }
            }
            "*" if n() < 0 => Reply::Nil,
            "*" | "~" => {
                let mut items = Vec::new();
                for _ in 0..n() {
                    items.push(read_reply(r).await?);
                }
                Reply::Array(items)
            }
            "%" => {
                let mut pairs = Vec::new();
                for _ in 0..n() {
                    let k = read_reply(r).await?;
                    pairs.push((k, read_reply(r).await?));
                }
                Reply::Map(pairs)
            }
            _ => panic!("unexpected RESP line {line:?}"),
        })
    })
}
