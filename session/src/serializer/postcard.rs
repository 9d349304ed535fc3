//! postcard: varint integers, length-prefixed sequences, no field names.
//!
//! Not self-describing: a value decoded as another type fails or misreads.
//! Strings and byte strings are borrowed from the input before being copied,
//! so a length prefix larger than the input fails without allocating.

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Serializer, SerializerError};

/// postcard 1.x.
#[derive(Debug, Clone, Copy, Default)]
pub struct Postcard;

impl Serializer for Postcard {
    const ID: u8 = 2;
    const NAME: &'static str = "postcard";

    fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, SerializerError> {
        postcard::to_stdvec(v).map_err(|e| SerializerError::encode(Self::NAME, e))
    }

    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, SerializerError> {
        let (v, rest) = postcard::take_from_bytes::<T>(b)
            .map_err(|e| SerializerError::decode(Self::NAME, e))?;
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
        conformance::<Postcard>();
    }
}
