//! Attribute serializers (placeholder; filled in by the serializer work).

/// Which serializer encoded a payload (the byte stored in the record header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum SerializerKind {
    /// serde_json
    #[default]
    Json = 4,
}
