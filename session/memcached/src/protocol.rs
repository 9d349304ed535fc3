//! Meta-protocol framing: encoding requests and parsing responses.
//!
//! Pure functions over byte buffers, no i/o. Requests carry an opaque token (`O<n>`) that
//! memcached echoes, so the reader can check each response belongs to the oldest pending
//! request. The parser never trusts the peer: header lines are bounded, value lengths are
//! capped, and anything unexpected becomes an error string (the caller turns it into
//! `McError::Protocol` and drops the connection).

use bytes::{BufMut, Bytes, BytesMut};

use crate::Key;

/// Longest response header line accepted (memcached's are well under 1 KiB).
pub const MAX_LINE: usize = 8 * 1024;

/// How a set stores its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SetMode {
    /// Store unconditionally.
    Set,
    /// Store only if the key does not exist.
    Add,
    /// Store only if the key exists.
    Replace,
    /// Store only if the item's CAS value is still this one.
    Cas(u64),
}

/// One request, as handed to a connection.
#[derive(Debug)]
pub enum Command {
    /// `mg <key> v f c t`.
    Get(Key),
    /// `ms <key> <len> T F M [C] c` (the reply carries the new CAS value).
    Set {
        /// Key.
        key: Key,
        /// Raw value bytes.
        value: Bytes,
        /// Client flags.
        flags: u32,
        /// Expiry in seconds (0 = never).
        ttl: u32,
        /// Store mode.
        mode: SetMode,
    },
    /// `md <key>`.
    Delete(Key),
    /// `mg <key> T<ttl>`.
    Touch(Key, u32),
    /// `mn`.
    Noop,
}

impl Command {
    /// Operation name for errors.
    pub fn op(&self) -> &'static str {
        match self {
            Command::Get(_) => "get",
            Command::Set { .. } => "set",
            Command::Delete(_) => "delete",
            Command::Touch(..) => "touch",
            Command::Noop => "noop",
        }
    }

    /// Append the wire form to `buf`; `opaque` is echoed by the server (`mn` has none).
    /// Returns whether the response will carry the opaque.
    pub fn encode(&self, opaque: u32, buf: &mut BytesMut) -> bool {
        let mut num = itoa_buf();
        match self {
            Command::Get(key) => {
                put(buf, &[b"mg ", key.as_str().as_bytes(), b" v f c t O"]);
                buf.put_slice(fmt_u64(&mut num, opaque.into()));
            }
            Command::Set {
                key,
                value,
                flags,
                ttl,
                mode,
            } => {
                put(buf, &[b"ms ", key.as_str().as_bytes(), b" "]);
                buf.put_slice(fmt_u64(&mut num, value.len() as u64));
                buf.put_slice(b" T");
                buf.put_slice(fmt_u64(&mut num, (*ttl).into()));
                buf.put_slice(b" F");
                buf.put_slice(fmt_u64(&mut num, (*flags).into()));
                match mode {
                    SetMode::Set => buf.put_slice(b" MS"),
                    SetMode::Add => buf.put_slice(b" ME"),
                    SetMode::Replace => buf.put_slice(b" MR"),
                    SetMode::Cas(cas) => {
                        buf.put_slice(b" MS C");
                        buf.put_slice(fmt_u64(&mut num, *cas));
                    }
                }
                buf.put_slice(b" c O");
                buf.put_slice(fmt_u64(&mut num, opaque.into()));
                buf.put_slice(b"\r\n");
                buf.put_slice(value);
            }
            Command::Delete(key) => {
                put(buf, &[b"md ", key.as_str().as_bytes(), b" O"]);
                buf.put_slice(fmt_u64(&mut num, opaque.into()));
            }
            Command::Touch(key, ttl) => {
                put(buf, &[b"mg ", key.as_str().as_bytes(), b" T"]);
                buf.put_slice(fmt_u64(&mut num, (*ttl).into()));
                buf.put_slice(b" O");
                buf.put_slice(fmt_u64(&mut num, opaque.into()));
            }
            Command::Noop => {
                buf.put_slice(b"mn\r\n");
                return false;
            }
        }
        buf.put_slice(b"\r\n");
        true
    }
}

fn put(buf: &mut BytesMut, parts: &[&[u8]]) {
    for p in parts {
        buf.put_slice(p);
    }
}

fn itoa_buf() -> [u8; 20] {
    [0; 20]
}

/// Format `n` in decimal into `buf`, returning the digits.
fn fmt_u64(buf: &mut [u8; 20], mut n: u64) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    &buf[i..]
}

/// The status of a parsed response.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    /// `VA`: value follows.
    Value,
    /// `HD`: success, no value.
    Hd,
    /// `EN`: miss.
    En,
    /// `NS`: not stored.
    Ns,
    /// `EX`: CAS mismatch.
    Ex,
    /// `NF`: not found.
    Nf,
    /// `MN`: end of a noop.
    Mn,
    /// `SERVER_ERROR ...`.
    ServerError,
}

/// A complete response frame.
#[derive(Debug, Clone)]
pub struct Response {
    /// Status code.
    pub status: Status,
    /// Echoed opaque (`O` flag), if any.
    pub opaque: Option<u32>,
    /// Client flags (`f`).
    pub flags: u32,
    /// CAS value (`c`).
    pub cas: u64,
    /// Remaining lifetime in seconds (`t`); `None` when the item never expires or the flag
    /// was not asked for.
    pub ttl: Option<u32>,
    /// The value (`VA` only), or the message of a `SERVER_ERROR`.
    pub value: Bytes,
}

/// Try to parse one response from the front of `buf`.
///
/// `Ok(None)`: incomplete, read more. `Ok(Some(r))`: the frame was consumed from `buf`.
/// `Err(detail)`: garbage; the connection must be dropped.
pub fn parse(buf: &mut BytesMut, max_value: usize) -> Result<Option<Response>, String> {
    let Some(eol) = find_crlf(buf)? else {
        return Ok(None);
    };
    let line = &buf[..eol];
    if let Some(msg) = line.strip_prefix(b"SERVER_ERROR") {
        let detail = Bytes::copy_from_slice(msg.trim_ascii());
        let _ = buf.split_to(eol + 2);
        return Ok(Some(Response {
            status: Status::ServerError,
            opaque: None,
            flags: 0,
            cas: 0,
            ttl: None,
            value: detail,
        }));
    }
    let mut tokens = line.split(|b| *b == b' ').filter(|t| !t.is_empty());
    let code = tokens.next().unwrap_or_default();
    let status = match code {
        b"VA" => Status::Value,
        b"HD" => Status::Hd,
        b"EN" => Status::En,
        b"NS" => Status::Ns,
        b"EX" => Status::Ex,
        b"NF" => Status::Nf,
        b"MN" => Status::Mn,
        _ => return Err(format!("unexpected response line {:?}", preview(line))),
    };
    let mut value_len = 0usize;
    if status == Status::Value {
        let size = tokens
            .next()
            .and_then(parse_num)
            .ok_or_else(|| format!("bad value size in {:?}", preview(line)))?;
        if size > max_value as u64 {
            return Err(format!(
                "value of {size} bytes exceeds the limit of {max_value}"
            ));
        }
        value_len = size as usize;
    }
    let mut resp = Response {
        status,
        opaque: None,
        flags: 0,
        cas: 0,
        ttl: None,
        value: Bytes::new(),
    };
    for t in tokens {
        let (flag, arg) = t.split_at(1);
        let bad = || format!("bad {:?} flag in {:?}", flag[0] as char, preview(line));
        match flag[0] {
            b'O' => {
                resp.opaque = Some(
                    parse_num(arg)
                        .and_then(|n| u32::try_from(n).ok())
                        .ok_or_else(bad)?,
                )
            }
            b'f' => {
                resp.flags = parse_num(arg)
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or_else(bad)?
            }
            b'c' => resp.cas = parse_num(arg).ok_or_else(bad)?,
            // `t-1`: never expires.
            b't' if arg == b"-1" => resp.ttl = None,
            b't' => {
                resp.ttl = Some(
                    parse_num(arg)
                        .map(|n| u32::try_from(n).unwrap_or(u32::MAX))
                        .ok_or_else(bad)?,
                )
            }
            _ => {}
        }
    }
    let header = eol + 2;
    if status == Status::Value {
        let total = header + value_len + 2;
        if buf.len() < total {
            buf.reserve(total - buf.len());
            return Ok(None);
        }
        if &buf[total - 2..total] != b"\r\n" {
            return Err("value not terminated by \\r\\n (wrong length)".into());
        }
        let mut frame = buf.split_to(total);
        frame.truncate(total - 2);
        resp.value = frame.freeze().slice(header..);
    } else {
        let _ = buf.split_to(header);
    }
    Ok(Some(resp))
}

/// Position of the `\r` ending the first line, `None` if incomplete.
fn find_crlf(buf: &[u8]) -> Result<Option<usize>, String> {
    let window = &buf[..buf.len().min(MAX_LINE + 2)];
    match window.iter().position(|b| *b == b'\n') {
        Some(i) if i > 0 && buf[i - 1] == b'\r' => Ok(Some(i - 1)),
        Some(_) => Err("bare \\n in a response line".into()),
        None if buf.len() > MAX_LINE => Err(format!("response line longer than {MAX_LINE} bytes")),
        None => Ok(None),
    }
}

/// A decimal number of at most 20 digits.
pub fn parse_num(t: &[u8]) -> Option<u64> {
    if t.is_empty() || t.len() > 20 || !t.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(t).ok()?.parse().ok()
}

/// A printable, bounded excerpt of peer data for error messages.
pub fn preview(b: &[u8]) -> String {
    String::from_utf8_lossy(&b[..b.len().min(64)]).into_owned()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn enc(c: Command) -> String {
        let mut b = BytesMut::new();
        c.encode(7, &mut b);
        String::from_utf8(b.to_vec()).unwrap()
    }

    #[test]
    fn encodes_meta_commands_with_opaque() {
        let k = Key::new("k1").unwrap();
        assert_eq!(enc(Command::Get(k.clone())), "mg k1 v f c t O7\r\n");
        assert_eq!(enc(Command::Delete(k.clone())), "md k1 O7\r\n");
        assert_eq!(enc(Command::Touch(k.clone(), 60)), "mg k1 T60 O7\r\n");
        assert_eq!(enc(Command::Noop), "mn\r\n");
        let set = Command::Set {
            key: k,
            value: Bytes::from_static(b"a\r\nb"),
            flags: 3,
            ttl: 0,
            mode: SetMode::Cas(99),
        };
        assert_eq!(enc(set), "ms k1 4 T0 F3 MS C99 c O7\r\na\r\nb\r\n");
    }

    #[test]
    fn parses_values_split_across_reads() {
        let full = b"VA 4 f5 c9 O3\r\na\r\nb\r\nHD O4\r\n";
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for byte in full {
            buf.put_u8(*byte);
            while let Some(r) = parse(&mut buf, 100).unwrap() {
                got.push(r);
            }
        }
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].status, Status::Value);
        assert_eq!(&got[0].value[..], b"a\r\nb");
        assert_eq!((got[0].flags, got[0].cas, got[0].opaque), (5, 9, Some(3)));
        assert_eq!((got[1].status, got[1].opaque), (Status::Hd, Some(4)));
        assert!(buf.is_empty());
    }

    #[test]
    fn parses_the_remaining_lifetime() {
        let mut buf = BytesMut::from(&b"VA 1 t1790 O1\r\nx\r\nVA 1 t-1 O2\r\ny\r\n"[..]);
        let a = parse(&mut buf, 100).unwrap().expect("first");
        let b = parse(&mut buf, 100).unwrap().expect("second");
        assert_eq!((a.ttl, b.ttl), (Some(1790), None));
        let mut bad = BytesMut::from(&b"VA 1 t-5 O1\r\nx\r\n"[..]);
        assert!(parse(&mut bad, 100).is_err());
    }

    #[test]
    fn rejects_garbage_without_panicking() {
        for bad in [
            &b"HELLO\r\n"[..],
            b"VA x\r\n",
            b"VA 99999999999 O1\r\n",
            b"VA 2 O1\r\nabcd\r\n",
            b"HD Ox\r\n",
            b"HD f99999999999\r\n",
            b"\r\n",
            b"VA -1\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(parse(&mut buf, 1000).is_err(), "{:?}", preview(bad));
        }
        let mut long = BytesMut::from(&vec![b'x'; MAX_LINE + 10][..]);
        assert!(parse(&mut long, 1000).is_err());
    }

    #[test]
    fn server_error_is_a_response() {
        let mut buf = BytesMut::from(&b"SERVER_ERROR object too large for cache\r\n"[..]);
        let r = parse(&mut buf, 10).unwrap().unwrap();
        assert_eq!(r.status, Status::ServerError);
        assert_eq!(&r.value[..], b"object too large for cache");
    }
}
