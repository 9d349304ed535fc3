//! bincode 2.x through its serde layer, standard config (little endian,
//! varint integers) with a decode limit.
//!
//! Not self-describing: a value decoded as another type fails or misreads.
//! The limit bounds what a length prefix can make the decoder allocate; it
//! equals the largest record payload ([`MAX_PAYLOAD`]).

use serde::de::DeserializeOwned;
use serde::Serialize;

use super::{Serializer, SerializerError};
use crate::record::MAX_PAYLOAD;

/// bincode 2.x (serde).
#[derive(Debug, Clone, Copy, Default)]
pub struct Bincode;

type Config = bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<MAX_PAYLOAD>,
>;

fn config() -> Config {
    bincode::config::standard().with_limit::<MAX_PAYLOAD>()
}

impl Serializer for Bincode {
    const ID: u8 = 1;
    const NAME: &'static str = "bincode";

    fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, SerializerError> {
        bincode::serde::encode_to_vec(v, config())
            .map_err(|e| SerializerError::encode(Self::NAME, e))
    }

    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, SerializerError> {
        let (v, used) = bincode::serde::decode_from_slice::<T, _>(b, config())
            .map_err(|e| SerializerError::decode(Self::NAME, e))?;
        if used != b.len() {
            return Err(SerializerError::decode(
                Self::NAME,
                format_args!("{} trailing bytes", b.len() - used),
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
        conformance::<Bincode>();
    }

    #[test]
    fn huge_length_prefix_is_refused_before_allocating() {
        // A Vec<u8> claiming u64::MAX / 2 bytes, followed by nothing.
        let mut b = vec![253u8];
        b.extend_from_slice(&(u64::MAX / 2).to_le_bytes());
        assert!(Bincode::decode::<Vec<u8>>(&b).is_err());
        assert!(Bincode::decode::<String>(&b).is_err());
        assert!(Bincode::decode::<Vec<String>>(&b).is_err());
    }
}
