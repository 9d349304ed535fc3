//! MessagePack via rmp-serde, structs written as maps with their field names
//! (`to_vec_named`): self-describing, so a struct that gains a
//! `#[serde(default)]` field still reads copies written before the change, and
//! a type mismatch is an error rather than a misread.
//!
//! Decoding first checks the framing (one complete value, no trailing bytes)
//! in a single pass, then lets rmp-serde borrow from the slice: string and
//! byte lengths are checked against the bytes actually present, sequences
//! preallocate only what serde's cautious size hint allows, and nesting is
//! capped at [`MAX_DEPTH`] so hostile input cannot overflow the stack.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Serializer, SerializerError};

/// Deepest nesting accepted on decode (serde_json's default is 128 too).
pub const MAX_DEPTH: usize = 128;

/// MessagePack (rmp-serde).
#[derive(Debug, Clone, Copy, Default)]
pub struct MessagePack;

impl Serializer for MessagePack {
    const ID: u8 = 3;
    const NAME: &'static str = "msgpack";

    fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, SerializerError> {
        rmp_serde::to_vec_named(v).map_err(|e| SerializerError::encode(Self::NAME, e))
    }

    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, SerializerError> {
        // rmp-serde does not tell how much of a slice it used, so the
        // framing is checked first: exactly one value, no trailing bytes.
        match value_len(b) {
            Some(n) if n == b.len() => {}
            Some(n) => {
                return Err(SerializerError::decode(
                    Self::NAME,
                    format_args!("{} trailing bytes", b.len() - n),
                ))
            }
            None => {
                return Err(SerializerError::decode(
                    Self::NAME,
                    "truncated or invalid value",
                ))
            }
        }
        let mut de = rmp_serde::Deserializer::from_read_ref(b);
        de.set_max_depth(MAX_DEPTH);
        T::deserialize(&mut de).map_err(|e| SerializerError::decode(Self::NAME, e))
    }
}

/// The length of the first MessagePack value in `b`, or `None` when `b` does
/// not start with a complete value. One pass, no allocation, no recursion.
fn value_len(b: &[u8]) -> Option<usize> {
    let be = |at: usize, n: usize| -> Option<u64> {
        let bytes = b.get(at..at.checked_add(n)?)?;
        Some(bytes.iter().fold(0u64, |acc, &x| (acc << 8) | u64::from(x)))
    };
    let mut pos = 0usize;
    // Values still to read; containers add their items.
    let mut pending: u64 = 1;
    while pending > 0 {
        pending -= 1;
        let m = *b.get(pos)?;
        pos += 1;
        // (bytes of length field, fixed payload bytes, items a length counts)
        let (len_bytes, fixed, per_item): (usize, usize, u64) = match m {
            0x00..=0x7f | 0xe0..=0xff | 0xc0 | 0xc2 | 0xc3 => (0, 0, 0),
            0x80..=0x8f => {
                pending += u64::from(m & 0x0f) * 2;
                (0, 0, 0)
            }
            0x90..=0x9f => {
                pending += u64::from(m & 0x0f);
                (0, 0, 0)
            }
            0xa0..=0xbf => (0, usize::from(m & 0x1f), 0),
            0xc4 | 0xd9 => (1, 0, 0),
            0xc5 | 0xda => (2, 0, 0),
            0xc6 | 0xdb => (4, 0, 0),
            0xc7 => (1, 1, 0),
            0xc8 => (2, 1, 0),
            0xc9 => (4, 1, 0),
            0xca => (0, 4, 0),
            0xcb => (0, 8, 0),
            0xcc | 0xd0 => (0, 1, 0),
            0xcd | 0xd1 => (0, 2, 0),
            0xce | 0xd2 => (0, 4, 0),
            0xcf | 0xd3 => (0, 8, 0),
            0xd4 => (0, 2, 0),
            0xd5 => (0, 3, 0),
            0xd6 => (0, 5, 0),
            0xd7 => (0, 9, 0),
            0xd8 => (0, 17, 0),
            0xdc => (2, 0, 1),
            0xdd => (4, 0, 1),
            0xde => (2, 0, 2),
            0xdf => (4, 0, 2),
            0xc1 => return None,
        };
        let len = if len_bytes > 0 {
            be(pos, len_bytes)?
        } else {
            0
        };
        pos = pos.checked_add(len_bytes)?;
        if per_item > 0 {
            pending = pending.checked_add(len * per_item)?;
        } else {
            pos = pos
                .checked_add(fixed)?
                .checked_add(usize::try_from(len).ok()?)?;
        }
        if pos > b.len() {
            return None;
        }
    }
    Some(pos)
}

#[cfg(test)]
mod tests {
    use super::super::tests::conformance;
    use super::*;

    #[test]
    fn conforms() {
        conformance::<MessagePack>();
    }

    #[test]
    fn framing_matches_the_encoder() {
        let mut big = std::collections::BTreeMap::new();
        big.insert("k".repeat(300), vec![0u8; 70_000]);
        let samples = [
            MessagePack::encode(&(1u8, -5i64, u64::MAX, 1.5f32, 2.5f64, "x".repeat(40))).unwrap(),
            MessagePack::encode(&big).unwrap(),
            MessagePack::encode(&vec![vec![Some(true), None]; 20]).unwrap(),
            rmp_serde::to_vec(&(0..70_000u32).collect::<Vec<_>>()).unwrap(),
        ];
        for b in samples {
            assert_eq!(value_len(&b), Some(b.len()));
            assert_eq!(value_len(&b[..b.len() - 1]), None);
        }
        // ext types: fixext4 and ext8
        assert_eq!(value_len(&[0xd6, 1, 0, 0, 0, 0]), Some(6));
        assert_eq!(value_len(&[0xc7, 2, 5, 0, 0, 0xc0]), Some(5));
        assert_eq!(value_len(&[0xc1]), None);
        assert_eq!(value_len(&[0xdd, 0xff, 0xff, 0xff, 0xff]), None);
    }

    #[test]
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // 100k nested one-element arrays (0x91), then nil.
        let mut b = vec![0x91u8; 100_000];
        b.push(0xc0);
        assert!(MessagePack::decode::<serde_json::Value>(&b).is_err());
    }
}
