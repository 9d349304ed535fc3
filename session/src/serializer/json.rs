//! JSON via serde_json: self-describing and human readable.
//!
//! The attribute map is written as one JSON object whose values are the
//! attribute values' own JSON text (not byte arrays), e.g.
//! `{"cart":[{"sku":"a1"}],"user":"alice"}`, so a stored session can be read
//! by people and by other languages. Encoding therefore checks that every
//! value is valid JSON; decoding keeps each value's raw text.

use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::value::RawValue;

use super::{Attributes, Serializer, SerializerError};

/// JSON (serde_json).
#[derive(Debug, Clone, Copy, Default)]
pub struct Json;

impl Serializer for Json {
    const ID: u8 = 4;
    const NAME: &'static str = "json";

    fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, SerializerError> {
        serde_json::to_vec(v).map_err(|e| SerializerError::encode(Self::NAME, e))
    }

    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, SerializerError> {
        serde_json::from_slice(b).map_err(|e| SerializerError::decode(Self::NAME, e))
    }

    fn encode_attributes(attrs: &Attributes) -> Result<Vec<u8>, SerializerError> {
        let mut map = std::collections::BTreeMap::new();
        for (k, v) in attrs {
            let raw: &RawValue = serde_json::from_slice(v).map_err(|e| {
                SerializerError::encode(Self::NAME, format_args!("attribute {k:?}: {e}"))
            })?;
            map.insert(k.as_str(), raw);
        }
        Self::encode(&map)
    }

    fn decode_attributes(b: &[u8]) -> Result<Attributes, SerializerError> {
        let map: std::collections::BTreeMap<String, &RawValue> =
            serde_json::from_slice(b).map_err(|e| SerializerError::decode(Self::NAME, e))?;
        Ok(map
            .into_iter()
            .map(|(k, v)| (k, v.get().as_bytes().to_vec()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::conformance;
    use super::*;

    #[test]
    fn conforms() {
        conformance::<Json>();
    }

    #[test]
    fn payload_is_readable_json() {
        let mut attrs = Attributes::new();
        attrs.insert("user".into(), Json::encode("alice").unwrap());
        attrs.insert("n".into(), Json::encode(&3u8).unwrap());
        let b = Json::encode_attributes(&attrs).unwrap();
        assert_eq!(b, br#"{"n":3,"user":"alice"}"#);
    }

    #[test]
    fn attribute_bytes_that_are_not_json_are_refused() {
        let mut attrs = Attributes::new();
        attrs.insert("x".into(), vec![0xff, 0x00]);
        assert!(Json::encode_attributes(&attrs).is_err());
    }
}
