//! Session ids as msm writes them: `<random>-<node>[.<route>]`.
//!
//! * `random`: 128 bits from the operating system's CSPRNG, as 32 lowercase hex
//!   characters. It never changes for the life of a session, except on renewal
//!   (login), which draws a new one.
//! * `node`: the id of the backend node that holds the primary copy
//!   (`n1`, `n2`, ... for memcached; `local` for the in-process store). Any app
//!   node can find a session's copies from the id and the node list alone.
//! * `route`: the app node that owns the session in sticky mode (Tomcat's
//!   jvmRoute). The balancer routes on it. Non-sticky sessions have none.
//!
//! The storage key of a session is `<random>-<node>` ([`SessionId::key`]): the
//! route is a balancer concern and is not part of the key, so a sticky takeover
//! (route rewrite) does not move data.

use std::fmt;

/// Length of the random part in hex characters (16 bytes = 128 bits).
pub const RANDOM_HEX_LEN: usize = 32;
/// Longest node id or route accepted in a session id.
pub const MAX_NAME_LEN: usize = 64;

/// Why a string is not a session id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The random part is not 32 lowercase hex characters.
    #[error("session id random part must be {RANDOM_HEX_LEN} lowercase hex characters")]
    BadRandom,
    /// A node id or route is empty, too long or has characters outside `[A-Za-z0-9_]`.
    #[error("invalid {part} in session id")]
    BadName {
        /// `node` or `route`.
        part: &'static str,
    },
}

/// A parsed, validated session id.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct SessionId {
    random: String,
    node: Option<String>,
    route: Option<String>,
}

/// Checks a node id or route: 1..=64 characters of `[A-Za-z0-9_]`.
pub fn is_valid_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= MAX_NAME_LEN
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl SessionId {
    /// Draws a fresh random part from the OS CSPRNG.
    pub fn generate(node: Option<&str>, route: Option<&str>) -> Self {
        let mut buf = [0u8; RANDOM_HEX_LEN / 2];
        // The OS RNG failing is not recoverable in any sane way; fall back to
        // the thread RNG (itself seeded from the OS) rather than panic.
        if getrandom::getrandom(&mut buf).is_err() {
            use rand::RngCore;
            rand::thread_rng().fill_bytes(&mut buf);
        }
        SessionId {
            random: hex::encode(buf),
            node: node.map(str::to_owned),
            route: route.map(str::to_owned),
        }
    }

    /// Parses `<random>[-<node>][.<route>]`, rejecting anything else.
    pub fn parse(s: &str) -> Result<Self, IdError> {
        let (rest, route) = match s.split_once('.') {
            Some((rest, route)) => (rest, Some(route)),
            None => (s, None),
        };
        let (random, node) = match rest.split_once('-') {
            Some((random, node)) => (random, Some(node)),
            None => (rest, None),
        };
        if random.len() != RANDOM_HEX_LEN
            || !random
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(IdError::BadRandom);
        }
        if let Some(n) = node {
            if !is_valid_name(n) {
                return Err(IdError::BadName { part: "node" });
            }
        }
        if let Some(r) = route {
            if !is_valid_name(r) {
                return Err(IdError::BadName { part: "route" });
            }
        }
        Ok(SessionId {
            random: random.to_owned(),
            node: node.map(str::to_owned),
            route: route.map(str::to_owned),
        })
    }

    /// The random part (stable across failover and takeover).
    pub fn random(&self) -> &str {
        &self.random
    }

    /// The backend node holding the primary copy, if any.
    pub fn node(&self) -> Option<&str> {
        self.node.as_deref()
    }

    /// The owning app node's route (sticky mode), if any.
    pub fn route(&self) -> Option<&str> {
        self.route.as_deref()
    }

    /// The same session on another backend node (failover/relocation).
    #[must_use]
    pub fn with_node(&self, node: Option<&str>) -> Self {
        SessionId {
            node: node.map(str::to_owned),
            ..self.clone()
        }
    }

    /// The same session owned by another app node (sticky takeover).
    #[must_use]
    pub fn with_route(&self, route: Option<&str>) -> Self {
        SessionId {
            route: route.map(str::to_owned),
            ..self.clone()
        }
    }

    /// Storage key: `<random>-<node>` (or `<random>`), never the route.
    /// At most 32 + 1 + 64 bytes of `[0-9a-f-A-Za-z_]`: always a valid
    /// memcached key, also with a `bak:`/`lock:` prefix.
    pub fn key(&self) -> String {
        match &self.node {
            Some(n) => format!("{}-{}", self.random, n),
            None => self.random.clone(),
        }
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.random)?;
        if let Some(n) = &self.node {
            write!(f, "-{n}")?;
        }
        if let Some(r) = &self.route {
            write!(f, ".{r}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Ids are credentials: log only a prefix.
        write!(
            f,
            "SessionId({}…-{}.{})",
            &self.random[..8],
            self.node.as_deref().unwrap_or(""),
            self.route.as_deref().unwrap_or("")
        )
    }
}

impl std::str::FromStr for SessionId {
    type Err = IdError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        SessionId::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roundtrip_full_id() {
        let id = SessionId::generate(Some("n1"), Some("app1"));
        let s = id.to_string();
        assert_eq!(s.len(), 32 + 3 + 5);
        assert_eq!(SessionId::parse(&s).unwrap(), id);
        assert_eq!(id.key(), format!("{}-n1", id.random()));
    }

    #[test]
    fn ids_are_distinct() {
        let a = SessionId::generate(None, None);
        let b = SessionId::generate(None, None);
        assert_ne!(a.random(), b.random());
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "abc",
            "zz3a5e1c0d0e0f00112233445566778899-n1",
            "0123456789abcdef0123456789abcdef-",
            "0123456789abcdef0123456789abcdef-n 1",
            "0123456789abcdef0123456789abcdef-n1.",
            "0123456789abcdef0123456789abcdef-n1.app1.x",
            "0123456789ABCDEF0123456789abcdef-n1",
            "0123456789abcdef0123456789abcdef-n1\r\nset x",
        ] {
            assert!(SessionId::parse(bad).is_err(), "accepted {bad:?}");
        }
    }

    #[test]
    fn relocation_keeps_random_part() {
        let id = SessionId::generate(Some("n1"), Some("app1"));
        let moved = id.with_node(Some("n2")).with_route(Some("app2"));
        assert_eq!(moved.random(), id.random());
        assert_eq!(moved.to_string(), format!("{}-n2.app2", id.random()));
    }
}
