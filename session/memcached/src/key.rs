//! Validated memcached keys.

use std::sync::Arc;

use crate::McError;

/// Longest key memcached accepts.
pub const MAX_KEY_LEN: usize = 250;

/// A key memcached accepts as-is: 1..=250 bytes, no whitespace or control characters.
///
/// Because a key can contain neither a space nor `\r`/`\n`, it cannot smuggle extra
/// tokens or commands into the protocol. Cheap to clone (shared string).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Key(Arc<str>);

impl Key {
    /// Validate `s` as a memcached key (one allocation: the shared string).
    pub fn new(s: impl AsRef<str>) -> Result<Key, McError> {
        let s = s.as_ref();
        if s.is_empty() {
            return Err(McError::InvalidKey { reason: "empty" });
        }
        if s.len() > MAX_KEY_LEN {
            return Err(McError::InvalidKey {
                reason: "longer than 250 bytes",
            });
        }
        // ASCII (the usual case): whitespace and control characters are the
        // bytes up to the space, and DEL.
        let bad = if s.is_ascii() {
            s.bytes().any(|b| b <= b' ' || b == 0x7f)
        } else {
            s.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if bad {
            return Err(McError::InvalidKey {
                reason: "contains whitespace or a control character",
            });
        }
        Ok(Key(Arc::from(s)))
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<&str> for Key {
    type Error = McError;
    fn try_from(s: &str) -> Result<Key, McError> {
        Key::new(s)
    }
}

impl TryFrom<String> for Key {
    type Error = McError;
    fn try_from(s: String) -> Result<Key, McError> {
        Key::new(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_ordinary_and_maximal_keys() {
        assert_eq!(
            Key::new("abc-n1.app1").map(|k| k.as_str().to_owned()).ok(),
            Some("abc-n1.app1".into())
        );
        assert!(Key::new("bak:x".repeat(50)).is_ok()); // 250 bytes
        assert!(Key::new("ключ").is_ok());
    }

    #[test]
    fn rejects_empty_long_whitespace_and_control() {
        for bad in [
            String::new(),
            "x".repeat(251),
            "a b".into(),
            "a\r\nmn".into(),
            "a\tb".into(),
            "a\u{0}b".into(),
            "a\u{7f}b".into(),
            "a\u{a0}b".into(),
        ] {
            assert!(
                matches!(Key::new(bad.clone()), Err(McError::InvalidKey { .. })),
                "{bad:?} accepted"
            );
        }
    }

    #[test]
    fn ascii_check_agrees_with_the_unicode_rule_on_every_ascii_character() {
        for b in 0u8..128 {
            let c = char::from(b);
            let key = format!("a{c}b");
            let rejected = c.is_whitespace() || c.is_control();
            assert_eq!(Key::new(&key).is_err(), rejected, "byte {b:#04x}");
            // The same character beside a non-ASCII one takes the Unicode path.
            assert_eq!(
                Key::new(format!("é{c}")).is_err(),
                rejected,
                "byte {b:#04x}"
            );
        }
    }
}
