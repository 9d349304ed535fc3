//! Attribute serializers (temporary JSON-only stand-in; replaced by the
//! serializer module with bincode, postcard, MessagePack and JSON).
#![allow(missing_docs)]
use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct SerializerError(String);

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SerializerKind {
    #[default]
    Json = 4,
}

impl SerializerKind {
    pub fn from_name(s: &str) -> Option<Self> {
        (s == "json").then_some(SerializerKind::Json)
    }
    pub fn from_id(id: u8) -> Option<Self> {
        (id == 4).then_some(SerializerKind::Json)
    }
    pub fn id(self) -> u8 {
        4
    }
    pub fn name(self) -> &'static str {
        "json"
    }
    pub fn encode_value<T: Serialize + ?Sized>(self, v: &T) -> Result<Vec<u8>, SerializerError> {
        serde_json::to_vec(v).map_err(|e| SerializerError(e.to_string()))
    }
    pub fn decode_value<T: DeserializeOwned>(self, b: &[u8]) -> Result<T, SerializerError> {
        serde_json::from_slice(b).map_err(|e| SerializerError(e.to_string()))
    }
    pub fn encode_attributes(
        self,
        a: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Vec<u8>, SerializerError> {
        self.encode_value(a)
    }
    pub fn decode_attributes(self, b: &[u8]) -> Result<BTreeMap<String, Vec<u8>>, SerializerError> {
        self.decode_value(b)
    }
}
