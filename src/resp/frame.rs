//! RESP request framing: the bytes a client sends, cut into commands one at
//! a time, each length checked before anything is buffered for it.
//!
//! A request is an array of bulk strings (`*N\r\n`, then N times
//! `$LEN\r\n` + LEN bytes + `\r\n`), as every client library,
//! redis-cli and redis-benchmark send it, or an inline command (one line of
//! words separated by spaces, as typed into telnet; no quoting).
//!
//! Bounds, so a connection holds little whatever it is sent:
//! - an argument longer than [`Limits::max_arg`] (`--max-value-bytes`) is
//!   read and dropped as it arrives, never buffered, and the command is
//!   refused ([`Frame::Refused`]) with the same error `/kv` gives an
//!   oversized value; so is a command whose arguments together pass
//!   [`Limits::max_command`] (its further arguments are dropped too);
//! - a bulk length over [`MAX_BULK`] (Redis's own `proto-max-bulk-len`, so a
//!   1 GB length), more than [`MAX_ARGS`] arguments, a header line or an
//!   inline command that does not end where it must, a header that is not a
//!   number, an element that is not a bulk string, or a bulk not followed
//!   by CRLF is a [`FrameError`]: the connection is answered once and
//!   closed, as Redis does (what follows an error in a stream cannot be
//!   framed).
//!
//! Arguments are slices of the read buffer (`Bytes`), not copies. No
//! async, no I/O: the connection feeds bytes in and takes frames out, so
//! the decoder is fuzzed on its own (tests/fuzz.rs).

use bytes::{Buf, Bytes, BytesMut};

/// Most arguments in one command (Redis's limit too).
pub const MAX_ARGS: usize = 1024 * 1024;
/// Longest bulk length accepted at all; anything longer is a protocol error.
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// Longest inline command.
pub const MAX_INLINE: usize = 64 * 1024;
/// Longest `*N` or `$LEN` header line, CRLF included.
const MAX_HEADER: usize = 32;
/// What an argument costs beyond its bytes, against [`Limits::max_command`]:
/// its `Bytes` handle.
const ARG_COST: usize = 32;

/// The per-connection bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Longest argument kept (a value: `--max-value-bytes`).
    pub max_arg: usize,
    /// Most bytes one command's arguments may take together.
    pub max_command: usize,
}

/// What one complete request is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// The arguments, the command's name first (never empty).
    Command(Vec<Bytes>),
    /// A command read in full but not kept: too large.
    Refused(Refused),
}

/// Why a command was read and dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Argument `index` (0 is the name) is `size` bytes, over `max`.
    ArgTooLarge { index: usize, size: usize, max: usize },
    /// The arguments pass `max` bytes together.
    CommandTooLarge { max: usize },
}

/// A stream that cannot be framed: answered, then the connection closes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct FrameError(pub String);

/// Where the decoder is between calls.
#[derive(Debug, Default)]
enum State {
    /// Between commands.
    #[default]
    Idle,
    /// Inside an array of `left` more bulk strings.
    Array {
        left: usize,
        args: Vec<Bytes>,
        cost: usize,
        refused: Option<Refused>,
        /// The bulk whose header was read: its length.
        bulk: Option<usize>,
        /// Bytes still to drop (an argument not kept, and its CRLF).
        skip: usize,
    },
}

/// A streaming decoder: feed it the connection's read buffer, take frames.
#[derive(Debug)]
pub struct Decoder {
    limits: Limits,
    state: State,
}

impl Decoder {
    pub fn new(limits: Limits) -> Decoder {
        Decoder { limits, state: State::Idle }
    }

    /// How many more bytes the request under way needs before the next
    /// step can be taken (0 when unknown): what the reader should make room
    /// for. Never more than an argument's length and its CRLF.
    pub fn wants(&self, buf: &BytesMut) -> usize {
        match &self.state {
            State::Array { bulk: Some(len), .. } => (len + 2).saturating_sub(buf.len()),
            _ => 0,
        }
    }

    /// Whether a request has begun and not ended (a connection closing now
    /// cut it short).
    pub fn in_request(&self, buf: &BytesMut) -> bool {
        matches!(self.state, State::Array { .. }) || !buf.is_empty()
    }

    /// Takes the next complete request out of `buf`: `Ok(None)` when more
    /// bytes are needed. Consumes what it has framed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Frame>, FrameError> {
        loop {
            match &mut self.state {
                State::Idle => {
                    let Some(&first) = buf.first() else { return Ok(None) };
                    if first != b'*' {
                        match inline(buf)? {
                            None => return Ok(None),
                            Some(args) if args.is_empty() => continue,
                            Some(args) => return Ok(Some(Frame::Command(args))),
                        }
                    }
                    let Some(n) = header(buf, b'*')? else { return Ok(None) };
                    if n <= 0 {
                        continue; // an empty or null array: nothing to do, as Redis
                    }
                    let n = usize::try_from(n).unwrap_or(usize::MAX);
                    if n > MAX_ARGS {
                        return Err(FrameError(format!("invalid multibulk length {n} (most {MAX_ARGS})")));
                    }
                    self.state = State::Array {
                        left: n,
                        args: Vec::with_capacity(n.min(16)),
                        cost: 0,
                        refused: None,
                        bulk: None,
                        skip: 0,
                    };
                }
                State::Array { left, args, cost, refused, bulk, skip } => {
                    if *skip > 0 {
                        let n = (*skip).min(buf.len());
                        buf.advance(n);
                        *skip -= n;
                        if *skip > 0 {
                            return Ok(None);
                        }
                        continue;
                    }
                    if let Some(len) = *bulk {
                        if buf.len() < len + 2 {
                            return Ok(None);
                        }
                        if &buf[len..len + 2] != b"\r\n" {
                            return Err(FrameError("a bulk string is not followed by CRLF".into()));
                        }
                        args.push(buf.split_to(len).freeze());
                        buf.advance(2);
                        *bulk = None;
                        *left -= 1;
                        continue;
                    }
                    if *left == 0 {
                        let frame = match refused.take() {
                            Some(why) => Frame::Refused(why),
                            None => Frame::Command(std::mem::take(args)),
                        };
                        self.state = State::Idle;
                        return Ok(Some(frame));
                    }
                    let Some(&first) = buf.first() else { return Ok(None) };
                    if first != b'$' {
                        return Err(FrameError(format!("expected '$', got '{}'", char::from(first).escape_default())));
                    }
                    let Some(len) = header(buf, b'$')? else { return Ok(None) };
                    let len = match usize::try_from(len) {
                        Ok(len) if len <= MAX_BULK => len,
                        _ => return Err(FrameError(format!("invalid bulk length {len} (most {MAX_BULK})"))),
                    };
                    let index = args.len();
                    if refused.is_none() {
                        if len > self.limits.max_arg {
                            *refused = Some(Refused::ArgTooLarge { index, size: len, max: self.limits.max_arg });
                        } else if *cost + len + ARG_COST > self.limits.max_command {
                            *refused = Some(Refused::CommandTooLarge { max: self.limits.max_command });
                        }
                    }
                    if refused.is_some() {
                        // Dropped as it arrives; what was kept goes too.
                        *args = Vec::new();
                        *skip = len + 2;
                        *left -= 1;
                    } else {
                        *cost += len + ARG_COST;
                        *bulk = Some(len);
                    }
                }
            }
        }
    }
}

/// Reads a `*N` or `$LEN` line (`kind` is its first byte) from the front
/// of `buf`: the number, or `None` if the line has not fully arrived.
fn header(buf: &mut BytesMut, kind: u8) -> Result<Option<i64>, FrameError> {
    let what = if kind == b'*' { "multibulk length" } else { "bulk length" };
    let Some(end) = buf.iter().take(MAX_HEADER).position(|&b| b == b'\r') else {
        return if buf.len() >= MAX_HEADER { Err(FrameError(format!("{what} line too long"))) } else { Ok(None) };
    };
    if buf.len() < end + 2 {
        return Ok(None);
    }
    if buf[end + 1] != b'\n' {
        return Err(FrameError(format!("{what} line not ended by CRLF")));
    }
    let digits = &buf[1..end];
    let n = std::str::from_utf8(digits)
        .ok()
        .filter(|s| !s.is_empty() && !s.starts_with('+'))
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| FrameError(format!("invalid {what} {:?}", String::from_utf8_lossy(digits))))?;
    buf.advance(end + 2);
    Ok(Some(n))
}

/// An inline command: the words of one line (`\n` or `\r\n` ended), or
/// `None` if the line has not fully arrived. A blank line is no words.
fn inline(buf: &mut BytesMut) -> Result<Option<Vec<Bytes>>, FrameError> {
    let Some(end) = buf.iter().take(MAX_INLINE).position(|&b| b == b'\n') else {
        return if buf.len() >= MAX_INLINE {
            Err(FrameError(format!("inline command longer than {MAX_INLINE} bytes")))
        } else {
            Ok(None)
        };
    };
    let line = buf.split_to(end + 1).freeze();
    let line = line.slice(..line.len() - 1);
    let line = match line.last() {
        Some(b'\r') => line.slice(..line.len() - 1),
        _ => line,
    };
    let mut words = Vec::new();
    let mut start = None;
    for (i, &b) in line.iter().enumerate() {
        match (b == b' ' || b == b'\t', start) {
            (true, Some(s)) => {
                words.push(line.slice(s..i));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        words.push(line.slice(s..));
    }
    Ok(Some(words))
}

/// Encodes `args` as a client sends them (an array of bulk strings): for
/// tests and the fuzzer's round trips.
pub fn encode_command(args: &[&[u8]]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits { max_arg: 16, max_command: 200 };

    fn all(input: &[u8]) -> Result<Vec<Frame>, FrameError> {
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(input);
        let mut out = Vec::new();
        while let Some(f) = d.decode(&mut buf)? {
            out.push(f);
        }
        Ok(out)
    }

    fn cmd(args: &[&str]) -> Frame {
        Frame::Command(args.iter().map(|a| Bytes::copy_from_slice(a.as_bytes())).collect())
    }

    #[test]
    fn arrays_of_bulk_strings_and_inline_commands_are_framed() {
        let mut input = encode_command(&[b"SET", b"k", b"a\r\nb"]);
        input.extend_from_slice(b"PING\r\n  GET   k \n\r\n*0\r\n*-1\r\n");
        input.extend_from_slice(&encode_command(&[b"GET", b""]));
        assert_eq!(
            all(&input).unwrap(),
            vec![cmd(&["SET", "k", "a\r\nb"]), cmd(&["PING"]), cmd(&["GET", "k"]), cmd(&["GET", ""])]
        );
    }

    #[test]
    fn a_request_split_anywhere_gives_the_same_frames() {
        let mut input = encode_command(&[b"MSET", b"a", b"1", b"b", b"22"]);
        input.extend_from_slice(b"ECHO hi\r\n");
        let whole = all(&input).unwrap();
        for cut in 0..input.len() {
            let mut d = Decoder::new(LIMITS);
            let mut buf = BytesMut::from(&input[..cut]);
            let mut got = Vec::new();
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
            buf.extend_from_slice(&input[cut..]);
            while let Some(f) = d.decode(&mut buf).unwrap() {
                got.push(f);
            }
            assert_eq!(got, whole, "cut at {cut}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn an_argument_over_the_limit_is_dropped_and_the_stream_goes_on() {
        let big = vec![b'x'; 17];
        let mut input = encode_command(&[b"SET", b"k", &big]);
        input.extend_from_slice(&encode_command(&[b"GET", b"k"]));
        assert_eq!(
            all(&input).unwrap(),
            vec![Frame::Refused(Refused::ArgTooLarge { index: 2, size: 17, max: 16 }), cmd(&["GET", "k"])]
        );
        // Dropped piecewise: what it wants is the header's promise, not the value.
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(&b"*2\r\n$3\r\nSET\r\n$1000\r\nxxxx"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert!(buf.is_empty(), "the dropped bytes are not kept");
        assert_eq!(d.wants(&buf), 0);
    }

    #[test]
    fn a_command_over_its_budget_is_dropped_whole() {
        let v = [b'v'; 16];
        let args: Vec<&[u8]> = std::iter::once(&b"MSET"[..]).chain(std::iter::repeat_n(&v[..], 8)).collect();
        let mut input = encode_command(&args);
        input.extend_from_slice(b"PING\r\n");
        assert_eq!(all(&input).unwrap(), vec![Frame::Refused(Refused::CommandTooLarge { max: 200 }), cmd(&["PING"])]);
    }

    #[test]
    fn bad_frames_are_errors() {
        for bad in [
            &b"*1\r\n:5\r\n"[..],
            b"*1\r\n$-1\r\n",
            b"*1\r\n$1073741824\r\n",
            b"*1\r\n$99999999999999999999\r\n",
            b"*1\r\n$abc\r\n",
            b"*1\r\n$\r\n",
            b"*1\r\n$+1\r\nx\r\n",
            b"*x\r\n",
            b"*2000000\r\n",
            b"*1\r\n$1\r\nxy\r\n",
            b"*1\r\n$1\rx",
            b"*11111111111111111111111111111111111111",
        ] {
            assert!(all(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let long_inline = vec![b'a'; MAX_INLINE + 1];
        assert!(all(&long_inline).is_err());
    }

    #[test]
    fn a_truncated_request_waits_for_more() {
        let input = encode_command(&[b"SET", b"key", b"value"]);
        for cut in 0..input.len() {
            let mut d = Decoder::new(LIMITS);
            let mut buf = BytesMut::from(&input[..cut]);
            assert_eq!(d.decode(&mut buf).unwrap(), None, "cut at {cut}");
            assert_eq!(d.in_request(&buf), cut > 0);
        }
        let mut d = Decoder::new(LIMITS);
        let mut buf = BytesMut::from(&b"*1\r\n$10\r\nab"[..]);
        assert_eq!(d.decode(&mut buf).unwrap(), None);
        assert_eq!(d.wants(&buf), 10);
    }
}
