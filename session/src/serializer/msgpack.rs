//! MessagePack via rmp-serde, structs written as maps with their field names
//! (`to_vec_named`): self-describing, so a struct that gains a
//! `#[serde(default)]` field still reads copies written before the change, and
//! a type mismatch is an error rather than a misread.
//!
//! Decoding reads from the slice as a reader: string and byte lengths are
//! checked against the bytes actually present, sequences preallocate only
//! what serde's cautious size hint allows, and nesting is capped at
//! [`MAX_DEPTH`] so hostile input cannot overflow the stack.

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
        let mut rest = b;
        let mut de = rmp_serde::Deserializer::new(&mut rest);
        de.set_max_depth(MAX_DEPTH);
        let v = T::deserialize(&mut de).map_err(|e| SerializerError::decode(Self::NAME, e))?;
        drop(de);
        if !rest.is_empty() {
            return Err(SerializerError::decode(
                Self::NAME,
                format_args!("{} trailing bytes", rest.len()),
            ));
        }
        Ok(v)
    }
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
    fn deep_nesting_is_an_error_not_a_stack_overflow() {
        // 100k nested one-element arrays (0x91), then nil.
        let mut b = vec![0x91u8; 100_000];
        b.push(0xc0);
        assert!(MessagePack::decode::<serde_json::Value>(&b).is_err());
    }
}
