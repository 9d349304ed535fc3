//! Signed session cookies: `<sig>.<session id>`.
//!
//! `sig` is HMAC-SHA256 over the id with `cookie_secret`, truncated to 128
//! bits, as 32 hex characters. The id stays readable (not encrypted) so that
//! the balancer can route on its `.route` suffix: the route is always the text
//! after the last `.`, as in Tomcat's `<id>.<jvmRoute>`. Anything that is not a
//! well-formed, correctly signed id of sane length is rejected, and the caller
//! starts a fresh session.
//!
//! While the secret is rotated, a signer also accepts the previous one
//! ([`CookieSigner::with_previous`]); [`CookieSigner::verify_rotating`] tells
//! such cookies apart, so they are signed again with the current secret.

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::id::SessionId;

/// Longest cookie value considered; longer ones are rejected unparsed.
pub const MAX_COOKIE_LEN: usize = 256;
const SIG_HEX_LEN: usize = 32;

/// Why a cookie was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CookieError {
    /// Longer than [`MAX_COOKIE_LEN`].
    #[error("cookie too long")]
    TooLong,
    /// Not `<sig>.<id>`.
    #[error("cookie malformed")]
    Malformed,
    /// The signature does not match (forged or another secret).
    #[error("cookie signature invalid")]
    BadSignature,
}

/// Signs and verifies session cookie values.
#[derive(Clone)]
pub struct CookieSigner {
    /// HMAC state already keyed with the secret: each signature clones it
    /// instead of hashing the key again (two SHA-256 blocks saved per cookie).
    keyed: Hmac<Sha256>,
    /// The secret being rotated out, still accepted.
    previous: Option<Hmac<Sha256>>,
}

impl std::fmt::Debug for CookieSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CookieSigner(..)")
    }
}

impl CookieSigner {
    /// A signer with the shared secret.
    pub fn new(secret: &[u8]) -> Self {
        CookieSigner {
            keyed: keyed(secret),
            previous: None,
        }
    }

    /// This signer, also accepting cookies signed with `previous` (the secret it replaces).
    pub fn with_previous(mut self, previous: &[u8]) -> Self {
        self.previous = Some(keyed(previous));
        self
    }

    /// A signer with a random per-process secret.
    pub fn random() -> Self {
        let mut key = [0u8; 32];
        if getrandom::getrandom(&mut key).is_err() {
            use rand::RngCore;
            rand::thread_rng().fill_bytes(&mut key);
        }
        CookieSigner::new(&key)
    }

    fn mac(&self, id: &str) -> Hmac<Sha256> {
        let mut mac = self.keyed.clone();
        mac.update(id.as_bytes());
        mac
    }

    /// The cookie value for `id`.
    pub fn sign(&self, id: &SessionId) -> String {
        let id = id.to_string();
        let tag = self.mac(&id).finalize().into_bytes();
        format!("{}.{}", hex::encode(&tag[..SIG_HEX_LEN / 2]), id)
    }

    /// Parses and verifies a cookie value (signed with the current or the previous secret).
    pub fn verify(&self, value: &str) -> Result<SessionId, CookieError> {
        self.verify_rotating(value).map(|(id, _)| id)
    }

    /// Parses and verifies a cookie value; the flag is true when the previous secret signed
    /// it (the cookie is due to be signed again).
    pub fn verify_rotating(&self, value: &str) -> Result<(SessionId, bool), CookieError> {
        if value.len() > MAX_COOKIE_LEN {
            return Err(CookieError::TooLong);
        }
        let (sig, id) = value.split_once('.').ok_or(CookieError::Malformed)?;
        if sig.len() != SIG_HEX_LEN {
            return Err(CookieError::Malformed);
        }
        let sig = hex::decode(sig).map_err(|_| CookieError::Malformed)?;
        let parsed = SessionId::parse(id).map_err(|_| CookieError::Malformed)?;
        if self.mac(id).verify_truncated_left(&sig).is_ok() {
            return Ok((parsed, false));
        }
        let mut old = self.previous.clone().ok_or(CookieError::BadSignature)?;
        old.update(id.as_bytes());
        old.verify_truncated_left(&sig)
            .map_err(|_| CookieError::BadSignature)?;
        Ok((parsed, true))
    }
}

/// An HMAC state keyed with `secret`.
fn keyed(secret: &[u8]) -> Hmac<Sha256> {
    // HMAC accepts keys of any length; this cannot fail.
    match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(m) => m,
        Err(_) => unreachable!("HMAC takes keys of any length"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_then_verify() {
        let s = CookieSigner::new(&[7; 32]);
        let id = SessionId::generate(Some("n1"), Some("app1"));
        let v = s.sign(&id);
        assert!(v.ends_with(".app1"), "route must be the last dot-part: {v}");
        assert_eq!(s.verify(&v).unwrap(), id);
    }

    #[test]
    fn forged_and_garbled_are_rejected() {
        let s = CookieSigner::new(&[7; 32]);
        let other = CookieSigner::new(&[8; 32]);
        let id = SessionId::generate(Some("n1"), Some("app1"));
        assert_eq!(other.verify(&s.sign(&id)), Err(CookieError::BadSignature));
        let mut v = s.sign(&id);
        v.replace_range(40..41, if &v[40..41] == "a" { "b" } else { "a" });
        assert!(s.verify(&v).is_err());
        assert_eq!(s.verify(&"x".repeat(8192)), Err(CookieError::TooLong));
        for bad in ["", ".", "zz.zz", "%%%", "0123.abc-n1.app1"] {
            assert!(s.verify(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_rotated_secret_is_still_accepted_and_told_apart() {
        let old = CookieSigner::new(&[7; 32]);
        let new = CookieSigner::new(&[8; 32]).with_previous(&[7; 32]);
        let id = SessionId::generate(Some("n1"), Some("app1"));
        assert_eq!(new.verify_rotating(&old.sign(&id)), Ok((id.clone(), true)));
        assert_eq!(new.verify_rotating(&new.sign(&id)), Ok((id.clone(), false)));
        assert_eq!(new.verify(&old.sign(&id)), Ok(id.clone()));
        let other = CookieSigner::new(&[9; 32]);
        assert_eq!(new.verify(&other.sign(&id)), Err(CookieError::BadSignature));
        // Without the previous secret, the old cookie is refused.
        assert_eq!(
            CookieSigner::new(&[8; 32]).verify(&old.sign(&id)),
            Err(CookieError::BadSignature)
        );
    }
}
