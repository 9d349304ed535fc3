//! Incremental decoder of the chunked transfer coding (RFC 9112 section 7.1).
//!
//! It is fed whatever bytes have arrived, says how many of them belong to the body (so the caller
//! can pass the raw bytes on unchanged, or stop at the end of the body when a pipelined request or
//! garbage follows) and hands out the data bytes. Chunk extensions and trailer fields are checked
//! for length and skipped. Line ends must be CRLF; sizes are hex without sign or prefix.

/// Longest chunk-size line (size, extensions) accepted.
const MAX_LINE: usize = 4096;
/// Longest trailer section accepted.
const MAX_TRAILERS: usize = 16 * 1024;

/// Why a chunked body is malformed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChunkError {
    /// A chunk size is missing, not hex, or too large.
    #[error("invalid chunk size")]
    Size,
    /// A line does not end where and how it must (CRLF).
    #[error("invalid chunk framing")]
    Framing,
    /// A chunk-size line or the trailers are too long.
    #[error("chunk extensions or trailers too long")]
    TooLong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Reading hex digits of a chunk size (`digits` read so far).
    Size {
        digits: u8,
    },
    /// After the size: optional whitespace and extensions up to CR.
    Ext,
    /// Expecting the LF of the size line.
    SizeLf,
    /// Inside chunk data, this many bytes left.
    Data(u64),
    /// Expecting CR then LF after chunk data.
    DataCr,
    DataLf,
    /// At the start of a trailer line (or of the final empty line).
    TrailerStart,
    /// Inside a trailer line.
    Trailer,
    /// Expecting the LF of a trailer line.
    TrailerLf,
    /// Expecting the LF of the final empty line.
    EndLf,
    /// The body is complete.
    Done,
}

/// Decoder state of one chunked body.
#[derive(Debug, Clone)]
pub(crate) struct ChunkedDecoder {
    state: State,
    size: u64,
    line: usize,
    trailers: usize,
    total: u64,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        Self {
            state: State::Size { digits: 0 },
            size: 0,
            line: 0,
            trailers: 0,
            total: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Whether the whole body (last chunk and trailers) has been seen.
    pub fn is_done(&self) -> bool {
        self.state == State::Done
    }

    /// Data bytes decoded so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Decodes from `input`, calling `data` with each run of body data. Returns how many bytes of
    /// `input` were consumed: all of them, or fewer when the body ended inside `input`.
    pub fn feed(&mut self, input: &[u8], mut data: impl FnMut(&[u8])) -> Result<usize, ChunkError> {
        let mut i = 0;
        while i < input.len() {
            let b = input[i];
            match self.state {
                State::Done => return Ok(i),
                State::Data(left) => {
                    let n = usize::try_from(left)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - i);
                    data(&input[i..i + n]);
                    self.total += n as u64;
                    i += n;
                    let left = left - n as u64;
                    self.state = if left == 0 {
                        State::DataCr
                    } else {
                        State::Data(left)
                    };
                    continue;
                }
                State::Size { digits } => {
                    self.line += 1;
                    if let Some(v) = hex(b) {
                        if digits >= 15 {
                            return Err(ChunkError::Size);
                        }
                        self.size = self.size << 4 | u64::from(v);
                        self.state = State::Size { digits: digits + 1 };
                    } else if digits == 0 {
                        return Err(ChunkError::Size);
                    } else if b == b'\r' {
                        self.state = State::SizeLf;
                    } else if b == b';' || b == b' ' || b == b'\t' {
                        self.state = State::Ext;
                    } else {
                        return Err(ChunkError::Size);
                    }
                }
                State::Ext => {
                    self.line += 1;
                    if self.line > MAX_LINE {
                        return Err(ChunkError::TooLong);
                    }
                    match b {
                        b'\r' => self.state = State::SizeLf,
                        b'\n' => return Err(ChunkError::Framing),
                        _ => {}
                    }
                }
                State::SizeLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Framing);
                    }
                    self.line = 0;
                    self.state = if self.size == 0 {
                        State::TrailerStart
                    } else {
                        State::Data(self.size)
                    };
                    self.size = 0;
                }
                State::DataCr => {
                    if b != b'\r' {
                        return Err(ChunkError::Framing);
                    }
                    self.state = State::DataLf;
                }
                State::DataLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Framing);
                    }
                    self.state = State::Size { digits: 0 };
                }
                State::TrailerStart => {
                    self.state = match b {
                        b'\r' => State::EndLf,
                        b'\n' => return Err(ChunkError::Framing),
                        _ => State::Trailer,
                    };
                    self.bump_trailers()?;
                }
                State::Trailer => {
                    match b {
                        b'\r' => self.state = State::TrailerLf,
                        b'\n' => return Err(ChunkError::Framing),
                        _ => {}
                    }
                    self.bump_trailers()?;
                }
                State::TrailerLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Framing);
                    }
                    self.state = State::TrailerStart;
                }
                State::EndLf => {
                    if b != b'\n' {
                        return Err(ChunkError::Framing);
                    }
                    self.state = State::Done;
                    return Ok(i + 1);
                }
            }
            i += 1;
        }
        Ok(i)
    }

    fn bump_trailers(&mut self) -> Result<(), ChunkError> {
        self.trailers += 1;
        if self.trailers > MAX_TRAILERS {
            return Err(ChunkError::TooLong);
        }
        Ok(())
    }
}

/// The value of one hex digit (chunk sizes here, percent-escapes in `crate::uri`).
pub(crate) fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Appends the chunk header for `len` data bytes (`{len:x}\r\n`) to `out`.
pub(crate) fn write_chunk_header(out: &mut Vec<u8>, len: usize) {
    crate::headers::put_digits(out, len as u64, 16);
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Decodes `input` fed in pieces of `step` bytes; returns (data, consumed, done).
    fn decode(input: &[u8], step: usize) -> Result<(Vec<u8>, usize, bool), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut out = Vec::new();
        let mut consumed = 0;
        for piece in input.chunks(step) {
            let n = d.feed(piece, |b| out.extend_from_slice(b))?;
            consumed += n;
            if d.is_done() {
                break;
            }
        }
        Ok((out, consumed, d.is_done()))
    }

    #[test]
    fn chunks_decode_whole_and_byte_by_byte() {
        let body = b"5\r\nhello\r\n7;name=val\r\n, world\r\n0\r\n\r\n";
        for step in [1, 2, 3, 7, body.len()] {
            let (data, consumed, done) = decode(body, step).expect("valid");
            assert_eq!(data, b"hello, world");
            assert_eq!(consumed, body.len());
            assert!(done, "step {step}");
        }
    }

    #[test]
    fn extensions_trailers_and_uppercase_hex_are_accepted() {
        let body = b"A ; ext\r\n0123456789\r\n0;last\r\nX-Sum: 1\r\nX-Other: 2\r\n\r\n";
        let (data, consumed, done) = decode(body, 4).expect("valid");
        assert_eq!(data, b"0123456789");
        assert_eq!(consumed, body.len());
        assert!(done);
    }

    #[test]
    fn decoding_stops_at_the_end_of_the_body() {
        let mut input = b"3\r\nabc\r\n0\r\n\r\n".to_vec();
        let end = input.len();
        input.extend_from_slice(b"GET /next HTTP/1.1\r\n\r\n");
        let mut d = ChunkedDecoder::default();
        let n = d.feed(&input, |_| {}).expect("valid");
        assert_eq!(n, end);
        assert!(d.is_done());
        assert_eq!(d.total(), 3);
    }

    #[test]
    fn bad_sizes_and_framing_are_rejected() {
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"-1\r\n",
            b"0x5\r\nhello\r\n",
            b"1ffffffffffffffff\r\n",
            b"5\nhello\r\n",
            b"5\r\nhelloXX",
            b"5\r\nhello\n",
            b"0\r\n\n",
            b"0\r\nX: 1\n",
        ] {
            assert!(
                decode(bad, 1).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn oversized_extensions_and_trailers_are_rejected() {
        let mut line = b"5;".to_vec();
        line.extend(std::iter::repeat_n(b'a', MAX_LINE + 1));
        assert_eq!(decode(&line, 64), Err(ChunkError::TooLong));
        let mut trailers = b"0\r\n".to_vec();
        for _ in 0..2000 {
            trailers.extend_from_slice(b"X-Long-Trailer: 0123456789\r\n");
        }
        assert_eq!(decode(&trailers, 64), Err(ChunkError::TooLong));
    }

    #[test]
    fn incomplete_body_is_not_done() {
        let (data, _, done) = decode(b"5\r\nhel", 2).expect("valid so far");
        assert_eq!(data, b"hel");
        assert!(!done);
    }

    #[test]
    fn chunk_headers_are_lowercase_hex() {
        let mut out = Vec::new();
        write_chunk_header(&mut out, 0);
        write_chunk_header(&mut out, 255);
        write_chunk_header(&mut out, 65536);
        assert_eq!(out, b"0\r\nff\r\n10000\r\n");
    }
}
