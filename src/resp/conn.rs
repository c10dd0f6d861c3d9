//! One client connection: read, frame, run each command in order, write
//! the replies. Pipelined commands are answered in the order they came;
//! the replies of everything already received go out in one write.
//!
//! Memory per connection is bounded: the read buffer holds at most one
//! argument (the decoder's limits) and what one read brings; the output is
//! sent once it passes [`FLUSH_AT`], also in the middle of an MGET. A
//! frame that cannot be decoded is answered with a protocol error and
//! closes this connection only.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::commands::plain_set;
use super::frame::{Decoder, Frame, Refused};
use super::reply::{Out, Proto};
use super::Shared;
use crate::error::Error;

/// Read at least this much at a time.
const READ_CHUNK: usize = 16 * 1024;
/// Send the output once it holds this much.
const FLUSH_AT: usize = 64 * 1024;
/// Most pipelined SETs written together (fewer than `join_all`'s 30, so
/// their writes are first polled, and queued, in order).
const SETS_AT_ONCE: usize = 16;

/// Whether the connection goes on after a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Flow {
    Continue,
    Close,
}

/// What a connection remembers between commands.
pub(super) struct Session {
    pub(super) id: u64,
    pub(super) addr: Option<SocketAddr>,
    pub(super) local: Option<SocketAddr>,
    pub(super) name: Option<String>,
    pub(super) lib_name: Option<String>,
    pub(super) lib_ver: Option<String>,
    /// Authenticated, or no `--api-token` to present.
    pub(super) authed: bool,
    created: Instant,
    last: Instant,
}

impl Session {
    pub(super) fn new(id: u64, addr: Option<SocketAddr>, local: Option<SocketAddr>, needs_token: bool) -> Session {
        let now = Instant::now();
        Session {
            id,
            addr,
            local,
            name: None,
            lib_name: None,
            lib_ver: None,
            authed: !needs_token,
            created: now,
            last: now,
        }
    }

    /// RESET: as a new connection (the id stays).
    pub(super) fn reset(&mut self, needs_token: bool) {
        *self = Session::new(self.id, self.addr, self.local, needs_token);
    }

    /// This connection as CLIENT INFO describes it: `query` is the read
    /// buffer (bytes held, room left), `out` the output's bytes.
    pub(super) fn info_line(&self, proto: Proto, query: (usize, usize), out: usize) -> String {
        let show = |a: Option<SocketAddr>| a.map_or_else(String::new, |a| a.to_string());
        format!(
            "id={} addr={} laddr={} name={} age={} idle={} flags=N db=0 sub=0 psub=0 ssub=0 multi=-1 qbuf={} \
             qbuf-free={} argv-mem=0 multi-mem=0 obl={out} oll=0 omem=0 tot-mem={} cmd=client|info user=default \
             resp={} lib-name={} lib-ver={}\n",
            self.id,
            show(self.addr),
            show(self.local),
            self.name.as_deref().unwrap_or(""),
            self.created.elapsed().as_secs(),
            self.last.elapsed().as_secs(),
            query.0,
            query.1,
            query.0 + query.1 + out,
            proto.number(),
            self.lib_name.as_deref().unwrap_or(""),
            self.lib_ver.as_deref().unwrap_or(""),
        )
    }
}

pub(super) struct Conn<S> {
    pub(super) shared: Arc<Shared>,
    pub(super) session: Session,
    pub(super) out: Out,
    stream: S,
    pub(super) buf: BytesMut,
    decoder: Decoder,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Conn<S> {
    pub(super) fn new(shared: Arc<Shared>, stream: S, session: Session) -> Conn<S> {
        let decoder = Decoder::new(shared.limits);
        Conn { shared, session, out: Out::new(), stream, buf: BytesMut::with_capacity(READ_CHUNK), decoder }
    }

    /// Serves the connection until the client leaves, sends QUIT, or sends
    /// what cannot be framed.
    pub(super) async fn run(mut self) {
        // A frame decoded while gathering SETs, to be handled next.
        let mut held = None;
        loop {
            loop {
                let decoded = match held.take() {
                    Some(decoded) => decoded,
                    None => self.decoder.decode(&mut self.buf),
                };
                match decoded {
                    Ok(Some(Frame::Command(args))) if self.session.authed && plain_set(&args) => {
                        self.shared.count_command();
                        let mut batch = vec![args];
                        while batch.len() < SETS_AT_ONCE {
                            match self.decoder.decode(&mut self.buf) {
                                Ok(Some(Frame::Command(args))) if plain_set(&args) => {
                                    self.shared.count_command();
                                    batch.push(args);
                                }
                                other => {
                                    held = Some(other);
                                    break;
                                }
                            }
                        }
                        self.sets(batch).await;
                        if self.flush_if_large().await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Frame::Command(args))) => {
                        self.shared.count_command();
                        if self.command(args).await == Flow::Close {
                            let _ = self.flush().await;
                            return;
                        }
                        if self.flush_if_large().await.is_err() {
                            return;
                        }
                    }
                    Ok(Some(Frame::Refused(why))) => {
                        self.shared.count_command();
                        self.refused(why);
                    }
                    Ok(None) => break,
                    Err(e) => {
                        log::debug!("RESP client {:?} (id {}): {e}; closing", self.session.addr, self.session.id);
                        self.out.error("ERR", &e.to_string());
                        let _ = self.flush().await;
                        return;
                    }
                }
            }
            if self.flush().await.is_err() {
                return;
            }
            let room = self.decoder.wants(&self.buf).max(READ_CHUNK);
            self.buf.reserve(room);
            match self.stream.read_buf(&mut self.buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => self.session.last = Instant::now(),
            }
        }
    }

    /// A command read but not kept: the error `/kv` gives what is too large.
    fn refused(&mut self, why: Refused) {
        let started = Instant::now();
        let fail = match why {
            Refused::ArgTooLarge { size, max, .. } => Error::ValueTooLarge { size, max: max as u64 },
            Refused::CommandTooLarge { max } => Error::BadRequest(format!(
                "the command's arguments pass {max} bytes together, the most one command may carry (send it in parts)"
            )),
        };
        let outcome = self.fail(fail.into());
        self.shared.node.metrics().request(crate::metrics::RESP_OTHER_LABEL, outcome, started.elapsed());
    }

    /// Sends the output, and flushes the stream: a TLS stream may keep
    /// records back that a write could not send at once.
    async fn flush(&mut self) -> std::io::Result<()> {
        self.write_out().await?;
        self.stream.flush().await
    }

    async fn write_out(&mut self) -> std::io::Result<()> {
        if self.out.parts.is_empty() {
            if !self.out.buf.is_empty() {
                self.stream.write_all(&self.out.buf).await?;
                self.out.buf.clear();
            }
            return Ok(());
        }
        let mut parts = self.out.take_parts();
        let mut first = 0;
        while first < parts.len() {
            let slices: Vec<std::io::IoSlice<'_>> =
                parts[first..].iter().take(64).map(|p| std::io::IoSlice::new(p)).collect();
            let mut n = self.stream.write_vectored(&slices).await?;
            if n == 0 {
                return Err(std::io::ErrorKind::WriteZero.into());
            }
            while n > 0 {
                let len = parts[first].len();
                if n >= len {
                    n -= len;
                    first += 1;
                } else {
                    bytes::Buf::advance(&mut parts[first], n);
                    n = 0;
                }
            }
        }
        Ok(())
    }

    /// Sends the output if it is large (mid-command too: MGET).
    pub(super) async fn flush_if_large(&mut self) -> std::io::Result<()> {
        if self.out.len() >= FLUSH_AT {
            self.flush().await?;
        }
        Ok(())
    }
}
