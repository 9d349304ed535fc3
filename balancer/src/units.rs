//! Human-readable units in the config: durations as humantime strings (`"10s"`, `"100ms"`) and
//! sizes as nginx writes them (`"100m"`, `"512k"`, `"1g"`, or a plain number of bytes).
//!
//! Both are serde helpers used with `#[serde(with = ...)]` so that a wrong value is reported by
//! serde with the key path (the lead's loader wraps it in `serde_path_to_error`).

use std::time::Duration;

use serde::{de, Deserialize, Deserializer};

/// Parses an nginx-like size: a number of bytes with an optional `k`, `m` or `g` suffix
/// (case-insensitive, powers of 1024).
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let (digits, mult) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mult = match c.to_ascii_lowercase() {
                'k' => 1u64 << 10,
                'm' => 1 << 20,
                'g' => 1 << 30,
                _ => {
                    return Err(format!(
                        "unknown size suffix {c:?} in {text:?} (use k, m or g)"
                    ))
                }
            };
            (&t[..i], mult)
        }
        _ => (t, 1),
    };
    let n: u64 = digits
        .trim()
        .parse()
        .map_err(|_| format!("invalid size {text:?} (e.g. \"100m\", \"512k\", \"1g\", 4096)"))?;
    n.checked_mul(mult)
        .ok_or_else(|| format!("size {text:?} is too large"))
}

/// serde helper for sizes: accepts a string such as `"100m"` or a non-negative integer.
pub mod size {
    use super::*;

    /// Deserializes a size in bytes.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)
            .map_err(|_| de::Error::custom("expected a size such as \"100m\" or a byte count"))?
        {
            Raw::Bytes(n) => Ok(n),
            Raw::Text(s) => parse_size(&s).map_err(de::Error::custom),
        }
    }
}

/// serde helper for an optional size (a missing key is `None`; use with `#[serde(default)]`).
pub mod opt_size {
    use super::*;

    /// Deserializes a size in bytes, present.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
        super::size::deserialize(d).map(Some)
    }
}

/// serde helper for durations written as humantime strings (`"10s"`, `"1m 30s"`, `"100ms"`).
pub mod duration {
    use super::*;

    /// Deserializes a duration.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map_err(|e| de::Error::custom(format!("invalid duration {s:?}: {e} (e.g. \"10s\")")))
    }
}

/// serde helper for an optional duration (a missing key is `None`; use with `#[serde(default)]`).
pub mod opt_duration {
    use super::*;

    /// Deserializes a duration, present.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        super::duration::deserialize(d).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_like_nginx() {
        assert_eq!(parse_size("100m"), Ok(100 << 20));
        assert_eq!(parse_size("1K"), Ok(1024));
        assert_eq!(parse_size("1g"), Ok(1 << 30));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0"), Ok(0));
        assert!(parse_size("12x").is_err());
        assert!(parse_size("-1m").is_err());
        assert!(parse_size("m").is_err());
    }
}
