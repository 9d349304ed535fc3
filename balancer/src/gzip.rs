//! Response compression (nginx `gzip on`, `gzip_types`, `gzip_min_length`, `gzip_comp_level`).
//!
//! An upstream response is compressed on its way to the client when the client accepts gzip
//! (`Accept-Encoding`, a `q=0` refuses it), its status is 200, 403 or 404 (nginx's), it has a
//! body of a listed media type, no `Content-Encoding` of its own, no `Cache-Control:
//! no-transform`, and a known length is at least `gzip_min_length`. The head then loses
//! `Content-Length`, gets `Content-Encoding: gzip`, and a strong `ETag` becomes weak (the bytes
//! differ); every response of a listed type gets `Vary: Accept-Encoding`, compressed or not, so
//! caches keep the two apart. The body streams: each batch read from the upstream is compressed
//! and sync-flushed (a slow page shows as it comes), framed as chunks (HTTP/1.1) or delimited
//! by closing the connection (HTTP/1.0).

use std::io::Write as _;

use flate2::write::GzEncoder;
use flate2::Compression;

use crate::config::{BalancerConfig, ConfigError};

/// The `gzip*` settings of one config.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Media types compressed (lowercase, without parameters); `*` for any.
    types: Vec<String>,
    /// Known lengths below this are sent as they are.
    pub min_length: u64,
    level: u32,
}

impl Policy {
    /// The policy of `cfg`, if `gzip` is on.
    pub fn of(cfg: &BalancerConfig) -> Result<Option<Self>, ConfigError> {
        if !cfg.gzip {
            return Ok(None);
        }
        if !(1..=9).contains(&cfg.gzip_comp_level) {
            return Err(ConfigError::new(
                "balancer.gzip_comp_level",
                "must be between 1 and 9",
            ));
        }
        let types = crate::config::parse_each(&cfg.gzip_types, |t| {
            let t = t.trim().to_ascii_lowercase();
            let valid = t == "*"
                || t.split_once('/').is_some_and(|(a, b)| {
                    !a.is_empty()
                        && !b.is_empty()
                        && t.bytes().filter(|&b| b == b'/').count() == 1
                        && t.bytes()
                            .all(|b| crate::config::is_token_byte(b) || b == b'/')
                });
            if valid {
                Ok(t)
            } else {
                Err(format!("{t:?} is not a media type such as text/html"))
            }
        })
        .map_err(|(i, m)| ConfigError::new(format!("balancer.gzip_types[{i}]"), m))?;
        Ok(Some(Self {
            types,
            min_length: cfg.gzip_min_length,
            level: cfg.gzip_comp_level,
        }))
    }

    /// Whether a response with this `Content-Type` value is of a listed type.
    pub fn compresses_type(&self, content_type: &[u8]) -> bool {
        let media = content_type
            .split(|&b| b == b';')
            .next()
            .unwrap_or_default()
            .trim_ascii();
        self.types
            .iter()
            .any(|t| t == "*" || t.as_bytes().eq_ignore_ascii_case(media))
    }

    /// `data` compressed whole at the configured level (a static file's content).
    pub fn compress(&self, data: &[u8]) -> Option<Vec<u8>> {
        let mut e = GzEncoder::new(
            Vec::with_capacity(data.len() / 3),
            Compression::new(self.level),
        );
        e.write_all(data).ok()?;
        e.finish().ok()
    }

    /// A compressor at the configured level.
    pub fn encoder(&self) -> Encoder {
        Encoder(GzEncoder::new(Vec::new(), Compression::new(self.level)))
    }
}

/// Whether an `Accept-Encoding` value accepts gzip: `gzip` (or `x-gzip`, or `*`) listed
/// without `q=0`. An explicit `gzip;q=0` wins over `*`.
pub(crate) fn accepts(value: &[u8]) -> bool {
    let mut star = false;
    for item in value.split(|&b| b == b',') {
        let mut parts = item.split(|&b| b == b';');
        let coding = parts.next().unwrap_or_default().trim_ascii();
        let refused = parts.any(|p| {
            let p = p.trim_ascii();
            let Some(q) = p.strip_prefix(b"q=").or_else(|| p.strip_prefix(b"Q=")) else {
                return false;
            };
            // q=0, q=0.0, q=0.000: refused.
            q.first() == Some(&b'0') && q.iter().skip(1).all(|&b| b == b'.' || b == b'0')
        });
        if coding.eq_ignore_ascii_case(b"gzip") || coding.eq_ignore_ascii_case(b"x-gzip") {
            return !refused;
        }
        if coding == b"*" {
            star = !refused;
        }
    }
    star
}

/// A streaming gzip compressor for one response body.
pub(crate) struct Encoder(GzEncoder<Vec<u8>>);

impl Encoder {
    /// Compresses `data` and sync-flushes, appending what is ready to `out` as one chunk (or
    /// raw, without `chunked`).
    pub fn feed(&mut self, data: &[u8], out: &mut Vec<u8>, chunked: bool) -> std::io::Result<()> {
        self.0.write_all(data)?;
        self.0.flush()?;
        emit(self.0.get_mut(), out, chunked);
        Ok(())
    }

    /// Ends the stream: the last compressed bytes and the gzip trailer (and the last chunk).
    pub fn finish(self, out: &mut Vec<u8>, chunked: bool) -> std::io::Result<()> {
        let mut rest = self.0.finish()?;
        emit(&mut rest, out, chunked);
        if chunked {
            out.extend_from_slice(b"0\r\n\r\n");
        }
        Ok(())
    }
}

fn emit(ready: &mut Vec<u8>, out: &mut Vec<u8>, chunked: bool) {
    if ready.is_empty() {
        return;
    }
    if chunked {
        crate::h1::chunked::write_chunk_header(out, ready.len());
        out.extend_from_slice(ready);
        out.extend_from_slice(b"\r\n");
    } else {
        out.extend_from_slice(ready);
    }
    ready.clear();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_is_read_as_rfc_9110_says() {
        for yes in [
            "gzip",
            "gzip, deflate, br",
            "br;q=1.0, GZIP;q=0.5",
            "x-gzip",
            "*",
            "deflate, *;q=0.1",
            "gzip;q=0.01",
        ] {
            assert!(accepts(yes.as_bytes()), "{yes}");
        }
        for no in [
            "",
            "br",
            "identity",
            "gzip;q=0",
            "gzip; q=0.000",
            "*, gzip;q=0",
            "gzip;q=0, *",
            "*;q=0",
            "gzipped",
        ] {
            assert!(!accepts(no.as_bytes()), "{no}");
        }
    }

    #[test]
    fn media_types_are_matched_without_parameters_or_case() {
        let cfg = BalancerConfig {
            gzip: true,
            gzip_types: vec!["text/html".into(), "Application/JSON".into()],
            ..BalancerConfig::default()
        };
        let p = Policy::of(&cfg).expect("valid").expect("on");
        assert!(p.compresses_type(b"text/html; charset=utf-8"));
        assert!(p.compresses_type(b"application/json"));
        assert!(p.compresses_type(b" TEXT/HTML"));
        assert!(!p.compresses_type(b"text/htmlx"));
        assert!(!p.compresses_type(b"image/png"));
        let bad = BalancerConfig {
            gzip_types: vec!["text/html".into(), "html".into()],
            ..cfg.clone()
        };
        assert_eq!(
            Policy::of(&bad).expect_err("html").key,
            "balancer.gzip_types[1]"
        );
        let bad = BalancerConfig {
            gzip_comp_level: 0,
            ..cfg
        };
        assert_eq!(
            Policy::of(&bad).expect_err("level").key,
            "balancer.gzip_comp_level"
        );
    }

    #[test]
    fn a_fed_and_finished_stream_decodes_to_the_input() {
        use std::io::Read as _;
        let cfg = BalancerConfig {
            gzip: true,
            ..BalancerConfig::default()
        };
        let p = Policy::of(&cfg).expect("valid").expect("on");
        let mut e = p.encoder();
        let mut out = Vec::new();
        let text = "<p>hello, hello, hello</p>\n".repeat(500);
        for part in text.as_bytes().chunks(1000) {
            e.feed(part, &mut out, false).expect("feed");
        }
        e.finish(&mut out, false).expect("finish");
        assert!(out.len() < text.len() / 10, "{} bytes", out.len());
        let mut back = String::new();
        flate2::read::GzDecoder::new(&out[..])
            .read_to_string(&mut back)
            .expect("gzip");
        assert_eq!(back, text);
    }
}
