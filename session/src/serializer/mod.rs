//! Attribute serializers: one trait, one file per implementation, chosen at
//! run time by name (the `serializer` config key).
//!
//! Data flow: the session manager encodes each attribute value with the
//! chosen serializer ([`SerializerKind::encode_value`]), then encodes the
//! whole attribute map (name -> value bytes) with the same serializer
//! ([`SerializerKind::encode_attributes`]). That payload goes into a
//! [`SessionRecord`](crate::record::SessionRecord) whose header carries the
//! serializer id ([`SerializerKind::id`]). A reader takes the serializer from
//! the header ([`SerializerKind::from_id`]), so a node configured with another
//! serializer still decodes the copy; an unknown id or an undecodable payload
//! is a [`SerializerError`], which the caller counts and treats as a miss.
//!
//! Implementations: [`bincode`] (2.x, serde), [`postcard`], [`msgpack`]
//! (rmp-serde, field names kept) and [`json`] (serde_json).
//!
//! Safety on garbage: decoding never panics and never allocates more than a
//! bounded amount because of a length prefix (bincode runs with a byte limit;
//! postcard, rmp-serde and serde_json borrow from the input or grow as they
//! read). Trailing bytes after a value are an error.
//!
//! Not every format describes itself: bincode and postcard store no type
//! information, so decoding a value as a different type than it was encoded
//! with either fails or misreads it (e.g. a `u32` read back as a `u8` list).
//! MessagePack and JSON fail with a type error instead. Callers decode an
//! attribute with the type they stored it with.

pub mod bincode;
pub mod json;
pub mod msgpack;
pub mod postcard;

mod attributes;

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use self::bincode::Bincode;
pub use self::json::Json;
pub use self::msgpack::MessagePack;
pub use self::postcard::Postcard;

/// Session attributes as stored: attribute name -> value bytes, each value
/// encoded with the same serializer as the map.
pub type Attributes = BTreeMap<String, Vec<u8>>;

/// Why a value or a payload could not be encoded or decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SerializerError {
    /// The value could not be encoded (a serde error, or attribute bytes that
    /// are not valid for this format).
    #[error("{serializer}: encode failed: {reason}")]
    Encode {
        /// serializer name
        serializer: &'static str,
        /// what the format library said
        reason: String,
    },
    /// The bytes are not a valid encoding of the requested type (garbage,
    /// truncation, trailing bytes, a length over the limit, a type mismatch).
    /// The caller treats the session as a miss.
    #[error("{serializer}: decode failed: {reason}")]
    Decode {
        /// serializer name
        serializer: &'static str,
        /// what the format library said
        reason: String,
    },
    /// A record header names a serializer this build does not know.
    #[error("unknown serializer id {0}")]
    UnknownId(u8),
}

impl SerializerError {
    pub(crate) fn encode(serializer: &'static str, e: impl std::fmt::Display) -> Self {
        SerializerError::Encode {
            serializer,
            reason: e.to_string(),
        }
    }

    pub(crate) fn decode(serializer: &'static str, e: impl std::fmt::Display) -> Self {
        SerializerError::Decode {
            serializer,
            reason: e.to_string(),
        }
    }
}

/// A serializer of serde values. Stateless: the format is the type.
pub trait Serializer {
    /// The byte written into the record header.
    const ID: u8;
    /// The config name.
    const NAME: &'static str;

    /// Encodes one value.
    fn encode<T: Serialize + ?Sized>(v: &T) -> Result<Vec<u8>, SerializerError>;

    /// Decodes one value; never panics on any input.
    fn decode<T: DeserializeOwned>(b: &[u8]) -> Result<T, SerializerError>;

    /// Encodes the attribute map (the session payload). The default encodes
    /// it as a map of byte strings.
    fn encode_attributes(attrs: &Attributes) -> Result<Vec<u8>, SerializerError> {
        Self::encode(&attributes::AttrsRef(attrs))
    }

    /// Decodes the attribute map (the session payload).
    fn decode_attributes(b: &[u8]) -> Result<Attributes, SerializerError> {
        Self::decode::<attributes::AttrsOwned>(b).map(|a| a.0)
    }
}

/// Which serializer encoded a payload: the runtime choice, and the id byte in
/// the record header. The discriminants are the stored ids; never reuse one.
///
/// The default is bincode, chosen from `benches/benches/serializers.rs`
/// (speed first, size second): the fastest encoder on medium and large
/// sessions (about 1.6x postcard, 4-6x JSON), decoding within a few percent of
/// postcard (the fastest decoder), and sizes within 2-3% of postcard's. A
/// request encodes (to hash and store) as often as it decodes, so encode speed
/// counts. bincode 2.x is its last line (3.0.0 is a tombstone); postcard is the
/// fallback, and since every record names its serializer, changing the
/// default later loses no session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SerializerKind {
    /// bincode 2.x (serde, standard config, byte limit).
    #[default]
    Bincode = 1,
    /// postcard (varint, compact, not self-describing).
    Postcard = 2,
    /// MessagePack via rmp-serde (self-describing, struct field names kept).
    MessagePack = 3,
    /// JSON via serde_json (self-describing, human readable).
    Json = 4,
}

/// Dispatches a call on `kind` to the matching [`Serializer`] implementation.
macro_rules! dispatch {
    ($kind:expr, $s:ident => $body:expr) => {
        match $kind {
            SerializerKind::Bincode => {
                type $s = Bincode;
                $body
            }
            SerializerKind::Postcard => {
                type $s = Postcard;
                $body
            }
            SerializerKind::MessagePack => {
                type $s = MessagePack;
                $body
            }
            SerializerKind::Json => {
                type $s = Json;
                $body
            }
        }
    };
}

impl SerializerKind {
    /// Every serializer, in id order.
    pub const ALL: [SerializerKind; 4] = [
        SerializerKind::Bincode,
        SerializerKind::Postcard,
        SerializerKind::MessagePack,
        SerializerKind::Json,
    ];

    /// The serializer configured as `name` (`bincode`, `postcard`, `msgpack`
    /// or `messagepack`, `json`; ASCII case ignored).
    pub fn from_name(name: &str) -> Option<Self> {
        let name = name.trim();
        Self::ALL
            .into_iter()
            .find(|k| k.name().eq_ignore_ascii_case(name))
            .or_else(|| {
                name.eq_ignore_ascii_case("messagepack")
                    .then_some(SerializerKind::MessagePack)
            })
    }

    /// The serializer whose header id is `id`; `None` for an unknown id (the
    /// caller treats the record as a miss).
    pub fn from_id(id: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.id() == id)
    }

    /// Like [`from_id`](Self::from_id), as a [`SerializerError`].
    pub fn try_from_id(id: u8) -> Result<Self, SerializerError> {
        Self::from_id(id).ok_or(SerializerError::UnknownId(id))
    }

    /// The id stored in the record header.
    pub fn id(self) -> u8 {
        dispatch!(self, S => S::ID)
    }

    /// The config name.
    pub fn name(self) -> &'static str {
        dispatch!(self, S => S::NAME)
    }

    /// Encodes one attribute value.
    pub fn encode_value<T: Serialize + ?Sized>(self, v: &T) -> Result<Vec<u8>, SerializerError> {
        dispatch!(self, S => S::encode(v))
    }

    /// Decodes one attribute value (see the module docs on type mismatches).
    pub fn decode_value<T: DeserializeOwned>(self, b: &[u8]) -> Result<T, SerializerError> {
        dispatch!(self, S => S::decode(b))
    }

    /// Encodes the session payload: attribute name -> value bytes, each value
    /// encoded with this serializer.
    pub fn encode_attributes(self, attrs: &Attributes) -> Result<Vec<u8>, SerializerError> {
        dispatch!(self, S => S::encode_attributes(attrs))
    }

    /// Decodes a session payload written by [`encode_attributes`](Self::encode_attributes).
    pub fn decode_attributes(self, b: &[u8]) -> Result<Attributes, SerializerError> {
        dispatch!(self, S => S::decode_attributes(b))
    }
}

impl std::fmt::Display for SerializerKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for SerializerKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::from_name(s).ok_or_else(|| {
            format!("unknown serializer {s:?} (expected bincode, postcard, msgpack or json)")
        })
    }
}

#[cfg(test)]
pub(crate) mod tests;
