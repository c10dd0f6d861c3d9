//! A Redis connection speaking just enough RESP for the benches that put
//! Redis beside a node (`policy`, `churn`): one command at a time, blocking.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

pub struct Redis {
    writer: TcpStream,
    reader: BufReader<TcpStream>,
    addr: String,
}

impl Redis {
    pub fn connect(addr: &str) -> Result<Redis, String> {
        let sock: std::net::SocketAddr =
            addr.parse().map_err(|_| format!("--redis {addr:?}: expected HOST:PORT, e.g. 127.0.0.1:6379"))?;
        let writer = TcpStream::connect_timeout(&sock, Duration::from_secs(2))
            .map_err(|e| format!("--redis {addr}: cannot connect: {e}"))?;
        writer.set_read_timeout(Some(Duration::from_secs(10))).map_err(|e| format!("--redis {addr}: {e}"))?;
        writer.set_nodelay(true).map_err(|e| format!("--redis {addr}: {e}"))?;
        let reader = BufReader::new(writer.try_clone().map_err(|e| format!("--redis {addr}: {e}"))?);
        Ok(Redis { writer, reader, addr: addr.to_string() })
    }

    /// Sends one command; returns the reply's first line (for a bulk
    /// string its `$len`: `$-1` is a miss).
    pub fn call(&mut self, args: &[&[u8]]) -> Result<String, String> {
        self.call_with_body(args).map(|(line, _)| line)
    }

    /// [`Redis::call`], also returning a bulk string's body.
    pub fn call_with_body(&mut self, args: &[&[u8]]) -> Result<(String, Option<Vec<u8>>), String> {
        let mut cmd = format!("*{}\r\n", args.len()).into_bytes();
        for a in args {
            cmd.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
            cmd.extend_from_slice(a);
            cmd.extend_from_slice(b"\r\n");
        }
        let fail = |e: std::io::Error| format!("--redis {}: {e}", self.addr);
        self.writer.write_all(&cmd).map_err(fail)?;
        let mut line = String::new();
        self.reader.read_line(&mut line).map_err(fail)?;
        let line = line.trim_end().to_string();
        let mut body = None;
        if let Some(len) = line.strip_prefix('$').and_then(|n| n.parse::<i64>().ok()).filter(|&n| n >= 0) {
            let mut bytes = vec![0u8; len as usize + 2];
            std::io::Read::read_exact(&mut self.reader, &mut bytes).map_err(fail)?;
            bytes.truncate(len as usize);
            body = Some(bytes);
        }
        match line.strip_prefix('-') {
            Some(err) => Err(format!("--redis {}: {err}", self.addr)),
            None if line.is_empty() => Err(format!("--redis {}: the connection closed", self.addr)),
            None => Ok((line, body)),
        }
    }

    /// An integer reply (`:N`), e.g. DBSIZE's.
    pub fn integer(&mut self, args: &[&[u8]]) -> Result<u64, String> {
        let line = self.call(args)?;
        line.strip_prefix(':')
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| format!("--redis {}: {line:?} is not an integer", self.addr))
    }

    /// One `field:value` of `INFO section`, as a number.
    pub fn info_field(&mut self, section: &str, field: &str) -> Result<u64, String> {
        let (_, body) = self.call_with_body(&[b"INFO", section.as_bytes()])?;
        let text = String::from_utf8_lossy(body.as_deref().unwrap_or_default()).into_owned();
        info_value(&text, field).ok_or_else(|| format!("--redis {}: INFO {section} has no {field}", self.addr))
    }
}

/// `field`'s number in INFO's `field:value` lines.
fn info_value(info: &str, field: &str) -> Option<u64> {
    info.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_field_of_info() {
        let info = "# Memory\r\nused_memory:1043616\r\nused_memory_human:1019.16K\r\nused_memory_rss:8126464\r\n";
        assert_eq!(info_value(info, "used_memory"), Some(1_043_616));
        assert_eq!(info_value(info, "used_memory_rss"), Some(8_126_464));
        assert_eq!(info_value(info, "used_memory_peak"), None);
    }
}
