//! RESP replies, written into a connection's output buffer in the
//! protocol the connection speaks: RESP2 until `HELLO 3`, RESP3 after.
//! The two differ here only in nulls, maps and verbatim text (INFO).
//!
//! Error replies are `-KIND message`: the kind is a word clients branch on
//! (`ERR`, `NOAUTH`, `WRONGPASS`, `NOPROTO`, `READONLY`, `TRYAGAIN` for the
//! errors `/kv` answers 503), and a treecache error's message ends with its
//! `/kv` code in parentheses: `-ERR bad key: key is empty (bad_key)`.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::Error;

/// A value at least this long goes out by reference (a vectored write),
/// not copied into the output buffer.
const BY_REFERENCE: usize = 1024;

/// The protocol a connection speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proto {
    Resp2,
    Resp3,
}

impl Proto {
    pub fn number(self) -> i64 {
        match self {
            Proto::Resp2 => 2,
            Proto::Resp3 => 3,
        }
    }
}

/// A connection's output: replies appended in order. Small replies are
/// written into `buf`; a large value is kept by reference in `parts`
/// (after what `buf` held before it), so it is not copied here.
pub struct Out {
    pub buf: BytesMut,
    /// What goes out before `buf`, in order.
    pub parts: Vec<Bytes>,
    parts_len: usize,
    pub proto: Proto,
}

impl Out {
    pub fn new() -> Out {
        Out { buf: BytesMut::with_capacity(16 * 1024), parts: Vec::new(), parts_len: 0, proto: Proto::Resp2 }
    }

    /// Bytes waiting to be sent.
    pub fn len(&self) -> usize {
        self.parts_len + self.buf.len()
    }

    /// Everything waiting, in order, as one list of chunks (`buf` emptied).
    pub fn take_parts(&mut self) -> Vec<Bytes> {
        let mut parts = std::mem::take(&mut self.parts);
        if !self.buf.is_empty() {
            parts.push(self.buf.split().freeze());
        }
        self.parts_len = 0;
        parts
    }

    /// A stored value as a bulk string: a large one by reference.
    pub fn value(&mut self, data: &Bytes) {
        if data.len() < BY_REFERENCE {
            return self.bulk(data);
        }
        self.int_line(b'$', data.len() as i64);
        let head = self.buf.split().freeze();
        self.parts_len += head.len() + data.len();
        self.parts.push(head);
        self.parts.push(data.clone());
        self.buf.put_slice(b"\r\n");
    }

    fn line(&mut self, kind: u8, text: &[u8]) {
        self.buf.put_u8(kind);
        self.buf.put_slice(text);
        self.buf.put_slice(b"\r\n");
    }

    fn int_line(&mut self, kind: u8, n: i64) {
        let mut digits = [0u8; 20];
        let mut at = digits.len();
        let mut m = n.unsigned_abs();
        loop {
            at -= 1;
            digits[at] = b'0' + (m % 10) as u8;
            m /= 10;
            if m == 0 {
                break;
            }
        }
        self.buf.put_u8(kind);
        if n < 0 {
            self.buf.put_u8(b'-');
        }
        self.buf.put_slice(&digits[at..]);
        self.buf.put_slice(b"\r\n");
    }

    pub fn ok(&mut self) {
        self.buf.put_slice(b"+OK\r\n");
    }

    /// `+text` (no CR or LF in it).
    pub fn simple(&mut self, text: &str) {
        self.line(b'+', text.as_bytes());
    }

    /// `-KIND message`; CR and LF in the message become spaces.
    pub fn error(&mut self, kind: &str, message: &str) {
        let clean: String = message.chars().map(|c| if c == '\r' || c == '\n' { ' ' } else { c }).collect();
        self.line(b'-', format!("{kind} {clean}").as_bytes());
    }

    /// A treecache error, as the kind its `/kv` status calls for.
    pub fn node_error(&mut self, e: &Error) {
        let kind = match e {
            // Redis's kind for a write past maxmemory.
            Error::RootFull { .. } => "OOM",
            e if e.is_retryable() => "TRYAGAIN",
            _ => "ERR",
        };
        self.error(kind, &format!("{e} ({})", e.code()));
    }

    pub fn int(&mut self, n: i64) {
        self.int_line(b':', n);
    }

    pub fn bulk(&mut self, data: &[u8]) {
        self.int_line(b'$', data.len() as i64);
        self.buf.put_slice(data);
        self.buf.put_slice(b"\r\n");
    }

    /// No value: `$-1` in RESP2, `_` in RESP3.
    pub fn null(&mut self) {
        match self.proto {
            Proto::Resp2 => self.buf.put_slice(b"$-1\r\n"),
            Proto::Resp3 => self.buf.put_slice(b"_\r\n"),
        }
    }

    pub fn array(&mut self, len: usize) {
        self.int_line(b'*', len as i64);
    }

    /// A map of `len` pairs (RESP2: an array of twice as many elements).
    pub fn map(&mut self, len: usize) {
        match self.proto {
            Proto::Resp2 => self.int_line(b'*', 2 * len as i64),
            Proto::Resp3 => self.int_line(b'%', len as i64),
        }
    }

    /// Text for people (INFO, CLIENT INFO): verbatim in RESP3, bulk in RESP2.
    pub fn text(&mut self, text: &str) {
        match self.proto {
            Proto::Resp2 => self.bulk(text.as_bytes()),
            Proto::Resp3 => {
                self.int_line(b'=', text.len() as i64 + 4);
                self.buf.put_slice(b"txt:");
                self.buf.put_slice(text.as_bytes());
                self.buf.put_slice(b"\r\n");
            }
        }
    }
}

impl Default for Out {
    fn default() -> Self {
        Out::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn written(proto: Proto, f: impl FnOnce(&mut Out)) -> String {
        let mut out = Out::new();
        out.proto = proto;
        f(&mut out);
        let len = out.len();
        let all: Vec<u8> = out.take_parts().concat();
        assert_eq!((all.len(), out.len()), (len, 0));
        String::from_utf8(all).unwrap()
    }

    #[test]
    fn a_large_value_goes_by_reference_between_the_replies_around_it() {
        let big = Bytes::from("v".repeat(BY_REFERENCE));
        let text = written(Proto::Resp2, |o| {
            o.ok();
            o.value(&big);
            o.value(&Bytes::from_static(b"small"));
            assert_eq!(o.parts.len(), 2, "the head before it, then the value itself");
        });
        assert_eq!(text, format!("+OK\r\n${}\r\n{}\r\n$5\r\nsmall\r\n", BY_REFERENCE, "v".repeat(BY_REFERENCE)));
    }

    #[test]
    fn each_reply_is_written_in_the_connection_s_protocol() {
        assert_eq!(written(Proto::Resp2, |o| o.int(-1234567890123)), ":-1234567890123\r\n");
        assert_eq!(written(Proto::Resp2, |o| o.int(0)), ":0\r\n");
        assert_eq!(written(Proto::Resp2, |o| o.int(i64::MIN)), ":-9223372036854775808\r\n");
        assert_eq!(written(Proto::Resp2, |o| o.bulk(b"a\r\nb")), "$4\r\na\r\nb\r\n");
        assert_eq!(written(Proto::Resp2, Out::null), "$-1\r\n");
        assert_eq!(written(Proto::Resp3, Out::null), "_\r\n");
        assert_eq!(written(Proto::Resp2, |o| o.map(2)), "*4\r\n");
        assert_eq!(written(Proto::Resp3, |o| o.map(2)), "%2\r\n");
        assert_eq!(written(Proto::Resp2, |o| o.text("a:1")), "$3\r\na:1\r\n");
        assert_eq!(written(Proto::Resp3, |o| o.text("a:1")), "=7\r\ntxt:a:1\r\n");
        assert_eq!(written(Proto::Resp2, |o| o.error("ERR", "two\r\nlines")), "-ERR two  lines\r\n");
    }

    #[test]
    fn node_errors_keep_their_code_and_503s_say_try_again() {
        let e = Error::BadKey("key is empty".into());
        assert_eq!(written(Proto::Resp2, |o| o.node_error(&e)), "-ERR bad key: key is empty (bad_key)\r\n");
        let e = Error::parent_unreachable("http://p", std::io::Error::other("refused"));
        assert!(written(Proto::Resp2, |o| o.node_error(&e)).starts_with("-TRYAGAIN parent http://p unreachable"));
        let e = Error::RootFull { key: "k".into(), bytes: 10, max: 10 };
        let full = written(Proto::Resp2, |o| o.node_error(&e));
        assert!(full.starts_with("-OOM root full: writing k") && full.ends_with("(root_full)\r\n"), "{full}");
    }
}
