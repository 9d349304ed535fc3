//! The stored form of a session: a small versioned header plus the payload.
//!
//! ```text
//! offset size field
//!      0    3 magic "FCS"
//!      3    1 format version (1)
//!      4    1 kind: 0 live, 1 deleted (tombstone), 2 moved (payload = new id)
//!      5    1 serializer id of the payload (see `serializer`)
//!      6    8 version: +1 on every write; the newer copy always wins
//!     14    8 created, ms since the Unix epoch
//!     22    8 last access, ms since the Unix epoch
//!     30    4 max inactive interval, seconds
//!     34    4 payload length
//!     38    n payload
//! ```
//!
//! Everything a peer sends is checked: a short, oversized or inconsistent
//! buffer is a [`RecordError`], which callers count and treat as a miss.

use std::time::{SystemTime, UNIX_EPOCH};

/// Magic bytes at the start of every stored session.
pub const MAGIC: &[u8; 3] = b"FCS";
/// Current header format.
pub const FORMAT_VERSION: u8 = 1;
/// Header length in bytes.
pub const HEADER_LEN: usize = 38;
/// Largest payload accepted on decode (memcached's default item limit is 1 MiB).
pub const MAX_PAYLOAD: usize = 16 * 1024 * 1024;

/// What a stored copy says about the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecordKind {
    /// A live session; the payload holds its attributes.
    Live,
    /// The session was invalidated (logout). A tombstone outlives any stale
    /// copy that an unreachable node may still hold, so it never comes back.
    Deleted,
    /// The session moved to another id (failover relocation); the payload is
    /// the new id. Requests still carrying the old cookie follow it.
    Moved(String),
}

/// A decoded stored session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionRecord {
    /// Live, deleted or moved.
    pub kind: RecordKind,
    /// Serializer id of `payload` (see [`crate::serializer::SerializerKind`]).
    pub serializer: u8,
    /// Write counter: every write stores `loaded + 1`; repair keeps the larger.
    pub version: u64,
    /// Creation time, ms since the Unix epoch.
    pub created_ms: u64,
    /// Last access time, ms since the Unix epoch.
    pub last_access_ms: u64,
    /// Max inactive interval in seconds; also the memcached expiry.
    pub max_inactive_secs: u32,
    /// Serialized attributes (live) or empty.
    pub payload: Vec<u8>,
}

/// Why a stored buffer could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    /// Fewer bytes than a header.
    #[error("record truncated: {len} bytes")]
    Truncated {
        /// bytes received
        len: usize,
    },
    /// Wrong magic or unknown format version.
    #[error("record header not recognised")]
    BadHeader,
    /// Unknown record kind byte.
    #[error("unknown record kind {0}")]
    BadKind(u8),
    /// The payload length does not match the buffer.
    #[error("payload length {declared} does not match {actual} bytes present")]
    LengthMismatch {
        /// length in the header
        declared: usize,
        /// bytes after the header
        actual: usize,
    },
    /// A moved record whose target is not a session id.
    #[error("moved record with an invalid target id")]
    BadMoveTarget,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl SessionRecord {
    /// A new live record at version 1.
    pub fn new_live(serializer: u8, max_inactive_secs: u32, payload: Vec<u8>) -> Self {
        let now = now_ms();
        SessionRecord {
            kind: RecordKind::Live,
            serializer,
            version: 1,
            created_ms: now,
            last_access_ms: now,
            max_inactive_secs,
            payload,
        }
    }

    /// The same record (version, times, kind) holding `payload` instead.
    #[must_use]
    pub fn with_payload(&self, payload: Vec<u8>) -> Self {
        SessionRecord {
            kind: self.kind.clone(),
            serializer: self.serializer,
            version: self.version,
            created_ms: self.created_ms,
            last_access_ms: self.last_access_ms,
            max_inactive_secs: self.max_inactive_secs,
            payload,
        }
    }

    /// A tombstone that supersedes `self`.
    #[must_use]
    pub fn tombstone(&self) -> Self {
        SessionRecord {
            kind: RecordKind::Deleted,
            version: self.version + 1,
            last_access_ms: now_ms(),
            payload: Vec::new(),
            ..self.clone()
        }
    }

    /// A "moved to `new_id`" marker that supersedes `self`.
    #[must_use]
    pub fn moved_to(&self, new_id: &str) -> Self {
        SessionRecord {
            kind: RecordKind::Moved(new_id.to_owned()),
            version: self.version + 1,
            payload: Vec::new(),
            ..self.clone()
        }
    }

    /// True for a live session.
    pub fn is_live(&self) -> bool {
        self.kind == RecordKind::Live
    }

    /// Whether `self` should replace `other` (newer version; ties broken by
    /// last access, then a tombstone beats a live copy).
    pub fn supersedes(&self, other: &SessionRecord) -> bool {
        (self.version, self.last_access_ms, !self.is_live())
            > (other.version, other.last_access_ms, !other.is_live())
    }

    /// True when the session has been idle longer than its max inactive interval.
    pub fn is_expired(&self, now_ms: u64) -> bool {
        self.max_inactive_secs > 0
            && now_ms.saturating_sub(self.last_access_ms) > u64::from(self.max_inactive_secs) * 1000
    }

    /// Serializes header + payload.
    pub fn encode(&self) -> Vec<u8> {
        let (kind, payload): (u8, &[u8]) = match &self.kind {
            RecordKind::Live => (0, &self.payload),
            RecordKind::Deleted => (1, &[]),
            RecordKind::Moved(to) => (2, to.as_bytes()),
        };
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(MAGIC);
        out.push(FORMAT_VERSION);
        out.push(kind);
        out.push(self.serializer);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&self.created_ms.to_be_bytes());
        out.extend_from_slice(&self.last_access_ms.to_be_bytes());
        out.extend_from_slice(&self.max_inactive_secs.to_be_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        out.extend_from_slice(payload);
        out
    }

    /// Parses a stored buffer; never panics on any input.
    pub fn decode(buf: &[u8]) -> Result<Self, RecordError> {
        if buf.len() < HEADER_LEN {
            return Err(RecordError::Truncated { len: buf.len() });
        }
        if &buf[0..3] != MAGIC || buf[3] != FORMAT_VERSION {
            return Err(RecordError::BadHeader);
        }
        let u64_at = |o: usize| {
            let mut b = [0u8; 8];
            b.copy_from_slice(&buf[o..o + 8]);
            u64::from_be_bytes(b)
        };
        let u32_at = |o: usize| {
            let mut b = [0u8; 4];
            b.copy_from_slice(&buf[o..o + 4]);
            u32::from_be_bytes(b)
        };
        let declared = u32_at(34) as usize;
        let actual = buf.len() - HEADER_LEN;
        if declared != actual || declared > MAX_PAYLOAD {
            return Err(RecordError::LengthMismatch { declared, actual });
        }
        let payload = &buf[HEADER_LEN..];
        let kind = match buf[4] {
            0 => RecordKind::Live,
            1 => RecordKind::Deleted,
            2 => {
                let to = std::str::from_utf8(payload).map_err(|_| RecordError::BadMoveTarget)?;
                crate::id::SessionId::parse(to).map_err(|_| RecordError::BadMoveTarget)?;
                RecordKind::Moved(to.to_owned())
            }
            k => return Err(RecordError::BadKind(k)),
        };
        Ok(SessionRecord {
            payload: if kind == RecordKind::Live {
                payload.to_vec()
            } else {
                Vec::new()
            },
            kind,
            serializer: buf[5],
            version: u64_at(6),
            created_ms: u64_at(14),
            last_access_ms: u64_at(22),
            max_inactive_secs: u32_at(30),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_all_kinds() {
        let live = SessionRecord::new_live(1, 1800, b"hello".to_vec());
        assert_eq!(SessionRecord::decode(&live.encode()).unwrap(), live);
        let dead = live.tombstone();
        assert_eq!(SessionRecord::decode(&dead.encode()).unwrap(), dead);
        let id = crate::id::SessionId::generate(Some("n2"), None).to_string();
        let moved = live.moved_to(&id);
        assert_eq!(SessionRecord::decode(&moved.encode()).unwrap(), moved);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let good = SessionRecord::new_live(1, 60, vec![7; 100]).encode();
        for cut in 0..good.len() {
            assert!(SessionRecord::decode(&good[..cut]).is_err());
        }
        let mut bad = good.clone();
        bad[0] = b'X';
        assert_eq!(SessionRecord::decode(&bad), Err(RecordError::BadHeader));
        let mut bad = good.clone();
        bad[4] = 9;
        assert_eq!(SessionRecord::decode(&bad), Err(RecordError::BadKind(9)));
        let mut longer = good;
        longer.push(0);
        assert!(SessionRecord::decode(&longer).is_err());
    }

    #[test]
    fn newer_copy_wins_and_tombstone_beats_its_parent() {
        let v1 = SessionRecord::new_live(1, 60, vec![]);
        let mut v2 = v1.clone();
        v2.version = 2;
        assert!(v2.supersedes(&v1));
        assert!(!v1.supersedes(&v2));
        assert!(v1.tombstone().supersedes(&v1));
    }
}
