//! A plain RESP client for tests: sends commands as arrays of bulk strings
//! (or raw bytes, for bad frames) and reads replies in full. Written from
//! the protocol, not from the server's code, so it checks what goes over
//! the wire. (redis-cli and redis-py, in tests/resp.rs, are the clients
//! people use.)

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
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

/// A plain or TLS connection.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

type Stream = BufReader<Box<dyn Io>>;

pub struct Resp {
    stream: Stream,
    /// The certificate the server presented (TLS only).
    served: Option<Vec<u8>>,
}

impl Resp {
    pub async fn connect(addr: &str) -> Resp {
        let stream = TcpStream::connect(addr).await.unwrap_or_else(|e| panic!("connect to RESP {addr}: {e}"));
        stream.set_nodelay(true).expect("nodelay");
        Resp { stream: BufReader::new(Box::new(stream)), served: None }
    }

    /// A TLS connection to `addr` (a loopback address) with `config`; the
    /// handshake's error if it fails (under TLS 1.3 a refused client
    /// certificate shows only at the first read).
    pub async fn connect_tls(addr: &str, config: Arc<rustls::ClientConfig>) -> std::io::Result<Resp> {
        let sock = TcpStream::connect(addr).await?;
        sock.set_nodelay(true)?;
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").expect("a server name");
        let stream = tokio_rustls::TlsConnector::from(config).connect(name, sock).await?;
        let served = stream.get_ref().1.peer_certificates().and_then(|c| c.first()).map(|c| c.to_vec());
        Ok(Resp { stream: BufReader::new(Box::new(stream)), served })
    }

    /// The server's certificate (DER), on a TLS connection.
    pub fn served(&self) -> Option<&[u8]> {
        self.served.as_deref()
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
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await.expect("write to RESP");
        stream.flush().await.expect("write to RESP");
    }

    /// [`Resp::raw`] that reports a failed write (a connection the server
    /// may have closed).
    pub async fn try_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        let stream = self.stream.get_mut();
        stream.write_all(bytes).await?;
        stream.flush().await
    }

    /// Reads one reply; `None` when the server closed the connection.
    pub async fn read(&mut self) -> Option<Reply> {
        tokio::time::timeout(REPLY_TIMEOUT, read_reply(&mut self.stream))
            .await
            .unwrap_or_else(|_| panic!("no RESP reply within {REPLY_TIMEOUT:?}"))
    }

    /// Everything the server sends until it closes the connection (an
    /// error ends it too); `None` if it is still open after the reply
    /// timeout.
    pub async fn read_until_closed(&mut self) -> Option<Vec<u8>> {
        let mut got = Vec::new();
        let read = async {
            let mut chunk = [0u8; 1024];
            while let Ok(n @ 1..) = self.stream.read(&mut chunk).await {
                got.extend_from_slice(&chunk[..n]);
            }
        };
        tokio::time::timeout(REPLY_TIMEOUT, read).await.ok()?;
        Some(got)
    }

    /// Whether the server closed the connection (reads end of stream).
    pub async fn is_closed(&mut self) -> bool {
        let mut byte = [0u8; 1];
        matches!(tokio::time::timeout(REPLY_TIMEOUT, self.stream.read(&mut byte)).await, Ok(Ok(0) | Err(_)))
    }
}

fn read_reply(r: &mut Stream) -> std::pin::Pin<Box<dyn std::future::Future<Output = Option<Reply>> + Send + '_>> {
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
