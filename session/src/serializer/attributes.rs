//! The attribute map as serde sees it: name -> value bytes, with the values
//! written as byte strings (`serialize_bytes`), so binary formats store them
//! as one length-prefixed blob instead of a list of numbers.

use std::collections::BTreeMap;
use std::fmt;

use serde::de::{Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde::ser::{Serialize, SerializeMap, Serializer};

use super::Attributes;

/// Largest number of bytes preallocated from a size hint a peer controls.
const MAX_PREALLOC: usize = 64 * 1024;

/// Borrowed attribute map, for encoding.
pub(crate) struct AttrsRef<'a>(pub(crate) &'a Attributes);

/// Owned attribute map, for decoding.
pub(crate) struct AttrsOwned(pub(crate) Attributes);

struct BytesRef<'a>(&'a [u8]);

struct BytesOwned(Vec<u8>);

impl Serialize for BytesRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl Serialize for AttrsRef<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.0.len()))?;
        for (k, v) in self.0 {
            map.serialize_entry(k, &BytesRef(v))?;
        }
        map.end()
    }
}

struct BytesVisitor;

impl<'de> Visitor<'de> for BytesVisitor {
    type Value = BytesOwned;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a byte string")
    }

    fn visit_bytes<E: serde::de::Error>(self, v: &[u8]) -> Result<BytesOwned, E> {
        Ok(BytesOwned(v.to_vec()))
    }

    fn visit_byte_buf<E: serde::de::Error>(self, v: Vec<u8>) -> Result<BytesOwned, E> {
        Ok(BytesOwned(v))
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<BytesOwned, A::Error> {
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_PREALLOC));
        while let Some(b) = seq.next_element::<u8>()? {
            out.push(b);
        }
        Ok(BytesOwned(out))
    }
}

impl<'de> Deserialize<'de> for BytesOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_byte_buf(BytesVisitor)
    }
}

struct AttrsVisitor;

impl<'de> Visitor<'de> for AttrsVisitor {
    type Value = AttrsOwned;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a map of attribute names to byte strings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<AttrsOwned, A::Error> {
        let mut out = BTreeMap::new();
        while let Some((k, v)) = map.next_entry::<String, BytesOwned>()? {
            out.insert(k, v.0);
        }
        Ok(AttrsOwned(out))
    }
}

impl<'de> Deserialize<'de> for AttrsOwned {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_map(AttrsVisitor)
    }
}
