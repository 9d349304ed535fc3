//! HTTP Basic authentication (nginx `auth_basic` with `auth_basic_user_file`), for locations
//! such as Tomcat's `/manager`.
//!
//! Each `[[balancer.auth_basic]]` names a path prefix (matched like a static location: at a
//! segment boundary, on the normalized path, the longest wins), a realm and an htpasswd file,
//! read when the config is applied (start and `SIGHUP`). An entry with `off = true` exempts
//! its location from a shorter one. The file's entries may be Apache's `$apr1$` MD5 (htpasswd's
//! default), bcrypt (`$2y$`, `$2b$`, `$2a$`, htpasswd `-B`), SHA-512/256-crypt (`$6$`, `$5$`),
//! MD5-crypt (`$1$`), `{SHA}` (htpasswd `-s`), DES crypt, or `{PLAIN}`.
//!
//! An entry may also carry address rules (`access`, nginx's `allow`/`deny` inside the
//! location): with `satisfy = "all"` (the default) a denied address gets 403 whatever its
//! credentials, with `"any"` an allowed address needs none (nginx `satisfy any`). An entry with
//! rules and no `user_file` restricts by address alone.
//!
//! A request without valid credentials gets 401 with `WWW-Authenticate: Basic realm="..."`.
//! Hashes are checked on the blocking pool (bcrypt takes milliseconds by design), and each
//! worker remembers the `Authorization` values it accepted (at most [`REMEMBERED`], forgotten on
//! reload), so a logged-in client costs a hash look-up per request, not a bcrypt run.

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;

use base64::Engine as _;

use crate::config::{AuthBasicConfig, ConfigError, Satisfy};
use crate::netmask::AccessRules;

/// Accepted credentials remembered per worker.
pub(crate) const REMEMBERED: usize = 1024;

/// One user's stored password.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Stored {
    /// `$apr1$<salt>$<hash>`.
    Apr1 { salt: String, hash: String },
    /// A crypt(3) string pwhash checks (`$1$`, `$2?$`, `$5$`, `$6$`, DES).
    Crypt(String),
    /// `{SHA}` + base64 of the password's SHA-1.
    Sha1([u8; 20]),
    /// `{PLAIN}` + the password.
    Plain(String),
}

/// One location's rule.
#[derive(Debug)]
struct Location {
    prefix: String,
    /// `None`: `off` (no authentication here).
    guard: Option<Guard>,
}

#[derive(Debug)]
struct Guard {
    /// The `WWW-Authenticate` value.
    challenge: Vec<u8>,
    /// `None`: by address alone.
    users: Option<Arc<HashMap<String, Stored>>>,
    access: AccessRules,
    any: bool,
}

/// What a guarded location says to a request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// In, as this user (`None`: let in by its address).
    Pass(Option<Rc<str>>),
    /// 401 with the challenge.
    Unauthorized,
    /// 403: its address is denied.
    Forbidden,
}

/// The `[[balancer.auth_basic]]` locations of a config, longest prefix first.
#[derive(Debug, Default)]
pub(crate) struct Locations(Vec<Location>);

impl Locations {
    /// Reads every user file; errors name the entry's key (and the file's line).
    pub fn of(cfg: &[AuthBasicConfig]) -> Result<Self, ConfigError> {
        let mut list = Vec::with_capacity(cfg.len());
        for (i, a) in cfg.iter().enumerate() {
            let key = |k: &str| format!("balancer.auth_basic[{i}].{k}");
            if !a.location.starts_with('/') {
                return Err(ConfigError::new(key("location"), "must start with '/'"));
            }
            let guard = if a.off {
                None
            } else {
                let access = AccessRules::parse(&a.access)
                    .map_err(|(j, m)| ConfigError::new(format!("{}[{j}]", key("access")), m))?;
                if a.user_file.is_none() && access.is_empty() {
                    return Err(ConfigError::new(
                        key("user_file"),
                        "required unless off = true or access rules are given",
                    ));
                }
                if a.realm.is_empty() || a.realm.bytes().any(|b| b == b'"' || b.is_ascii_control())
                {
                    return Err(ConfigError::new(
                        key("realm"),
                        "must be non-empty, without '\"' or control characters",
                    ));
                }
                let users = match &a.user_file {
                    Some(file) => Some(Arc::new(
                        read_users(file).map_err(|m| ConfigError::new(key("user_file"), m))?,
                    )),
                    None => None,
                };
                Some(Guard {
                    challenge: format!("Basic realm=\"{}\", charset=\"UTF-8\"", a.realm)
                        .into_bytes(),
                    users,
                    access,
                    any: a.satisfy == Satisfy::Any,
                })
            };
            list.push(Location {
                prefix: a.location.trim_end_matches('/').to_owned(),
                guard,
            });
        }
        list.sort_by_key(|l| std::cmp::Reverse(l.prefix.len()));
        Ok(Self(list))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The location that guards normalized `path`, if one does (`off` ones guard nothing).
    pub fn find(&self, path: &str) -> Option<usize> {
        let i = self.0.iter().position(|l| {
            path.starts_with(&l.prefix)
                && (path.len() == l.prefix.len() || path.as_bytes()[l.prefix.len()] == b'/')
        })?;
        self.0[i].guard.as_ref().map(|_| i)
    }

    /// The `WWW-Authenticate` value of location `i`.
    pub fn challenge(&self, i: usize) -> &[u8] {
        self.0
            .get(i)
            .and_then(|l| l.guard.as_ref())
            .map_or(b"Basic", |g| g.challenge.as_slice())
    }

    /// The user an `Authorization` value proves to be, for location `i`; `None`: refused.
    pub async fn check(
        &self,
        i: usize,
        client: std::net::IpAddr,
        authorization: &[u8],
        seen: &Remembered,
    ) -> Verdict {
        let Some(guard) = self.0.get(i).and_then(|l| l.guard.as_ref()) else {
            return Verdict::Pass(None);
        };
        let address_ok = guard.access.allows(client);
        let Some(users) = &guard.users else {
            return if address_ok {
                Verdict::Pass(None)
            } else {
                Verdict::Forbidden
            };
        };
        if guard.any {
            // Rules that let this address in are enough (no rules grant nothing).
            if address_ok && !guard.access.is_empty() {
                return Verdict::Pass(None);
            }
        } else if !address_ok {
            return Verdict::Forbidden;
        }
        match Self::user(i, users, authorization, seen).await {
            Some(user) => Verdict::Pass(Some(user)),
            None => Verdict::Unauthorized,
        }
    }

    /// The user an `Authorization` value proves to be, for location `i`; `None`: refused.
    async fn user(
        i: usize,
        users: &HashMap<String, Stored>,
        authorization: &[u8],
        seen: &Remembered,
    ) -> Option<Rc<str>> {
        if let Some(user) = seen.get(i, authorization) {
            return Some(user);
        }
        let (user, password) = credentials(authorization)?;
        // An unknown user is checked against some user's hash all the same, so that the time
        // of the answer does not tell which names exist.
        let (known, stored) = match users.get(&user) {
            Some(s) => (true, s.clone()),
            None => (false, users.values().next()?.clone()),
        };
        // Checked first, then the name: `known && ...` would skip the hash for unknown names.
        let matches = match stored {
            Stored::Plain(p) => same(p.as_bytes(), password.as_bytes()),
            Stored::Sha1(digest) => {
                use sha1::Digest as _;
                same(&sha1::Sha1::digest(password.as_bytes()), &digest)
            }
            // MD5 rounds and bcrypt cost: off the worker.
            slow => tokio::task::spawn_blocking(move || slow_verify(&slow, &password))
                .await
                .unwrap_or(false),
        };
        let ok = matches && known;
        if ok {
            let user: Rc<str> = user.into();
            seen.put(i, authorization, &user);
            Some(user)
        } else {
            None
        }
    }
}

fn slow_verify(stored: &Stored, password: &str) -> bool {
    match stored {
        Stored::Apr1 { salt, hash } => same(
            apr1(password.as_bytes(), salt.as_bytes()).as_bytes(),
            hash.as_bytes(),
        ),
        Stored::Crypt(h) => pwhash::unix::verify(password, h),
        Stored::Sha1(_) | Stored::Plain(_) => false,
    }
}

/// `Basic <base64 of user:password>` split.
fn credentials(authorization: &[u8]) -> Option<(String, String)> {
    let v = authorization.trim_ascii();
    let (scheme, rest) = v.split_at(v.iter().position(|&b| b == b' ')?);
    if !scheme.eq_ignore_ascii_case(b"basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(rest.trim_ascii())
        .ok()?;
    let text = String::from_utf8(decoded).ok()?;
    let (user, password) = text.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

/// Equality in time that depends only on the lengths.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Reads an htpasswd file: `user:stored[:comment]` lines, `#` comments and blank lines.
fn read_users(path: &Path) -> Result<HashMap<String, Stored>, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let mut users = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let at = || format!("{} line {}", path.display(), n + 1);
        let Some((user, rest)) = line.split_once(':') else {
            return Err(format!("{}: expected user:password-hash", at()));
        };
        let hash = rest.split(':').next().unwrap_or(rest);
        let stored = parse_stored(hash).ok_or_else(|| {
            format!(
                "{}: unsupported password hash (use htpasswd's $apr1$ or -B bcrypt, $5$/$6$ \
                 SHA-crypt, $1$, {{SHA}} or {{PLAIN}})",
                at()
            )
        })?;
        users.insert(user.to_owned(), stored);
    }
    Ok(users)
}

fn parse_stored(hash: &str) -> Option<Stored> {
    if let Some(rest) = hash.strip_prefix("$apr1$") {
        let (salt, hash) = rest.split_once('$')?;
        return (salt.len() <= 8 && hash.len() == 22).then(|| Stored::Apr1 {
            salt: salt.to_owned(),
            hash: hash.to_owned(),
        });
    }
    if let Some(b64) = hash.strip_prefix("{SHA}") {
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
        return raw.try_into().ok().map(Stored::Sha1);
    }
    if let Some(p) = hash.strip_prefix("{PLAIN}") {
        return Some(Stored::Plain(p.to_owned()));
    }
    let crypt = ["$1$", "$2a$", "$2b$", "$2y$", "$5$", "$6$"]
        .iter()
        .any(|m| hash.starts_with(m))
        || (hash.len() == 13
            && hash
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'/'));
    crypt.then(|| Stored::Crypt(hash.to_owned()))
}

/// Apache's MD5 crypt (`$apr1$`: PHK's MD5-crypt with its own magic): the 22-character hash.
fn apr1(password: &[u8], salt: &[u8]) -> String {
    use md5::{Digest as _, Md5};
    const MAGIC: &[u8] = b"$apr1$";
    let salt = &salt[..salt.len().min(8)];
    let mut alt = Md5::new();
    alt.update(password);
    alt.update(salt);
    alt.update(password);
    let alt = alt.finalize();
    let mut ctx = Md5::new();
    ctx.update(password);
    ctx.update(MAGIC);
    ctx.update(salt);
    let mut left = password.len();
    while left > 0 {
        let n = left.min(16);
        ctx.update(&alt[..n]);
        left -= n;
    }
    let mut bits = password.len();
    while bits > 0 {
        if bits & 1 == 1 {
            ctx.update([0u8]);
        } else {
            ctx.update(&password[..1]);
        }
        bits >>= 1;
    }
    let mut sum = ctx.finalize();
    for round in 0..1000 {
        let mut c = Md5::new();
        if round & 1 == 1 {
            c.update(password);
        } else {
            c.update(sum);
        }
        if round % 3 != 0 {
            c.update(salt);
        }
        if round % 7 != 0 {
            c.update(password);
        }
        if round & 1 == 1 {
            c.update(sum);
        } else {
            c.update(password);
        }
        sum = c.finalize();
    }
    const ITOA64: &[u8] = b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut out = String::with_capacity(22);
    let mut put = |mut v: u32, n: usize| {
        for _ in 0..n {
            out.push(ITOA64[(v & 0x3f) as usize] as char);
            v >>= 6;
        }
    };
    let s = |i: usize| u32::from(sum[i]);
    for (a, b, c) in [(0, 6, 12), (1, 7, 13), (2, 8, 14), (3, 9, 15), (4, 10, 5)] {
        put((s(a) << 16) | (s(b) << 8) | s(c), 4);
    }
    put(s(11), 2);
    out
}

/// The credentials a worker accepted, by location and `Authorization` value (looked up
/// without copying the value).
#[derive(Default)]
pub(crate) struct Remembered(RefCell<HashMap<usize, Accepted>>);

/// One location's accepted `Authorization` values and their users.
type Accepted = HashMap<Vec<u8>, Rc<str>>;

impl Remembered {
    fn get(&self, i: usize, authorization: &[u8]) -> Option<Rc<str>> {
        self.0.borrow().get(&i)?.get(authorization).cloned()
    }

    fn put(&self, i: usize, authorization: &[u8], user: &Rc<str>) {
        let mut map = self.0.borrow_mut();
        if map.values().map(HashMap::len).sum::<usize>() >= REMEMBERED {
            map.clear();
        }
        map.entry(i)
            .or_default()
            .insert(authorization.to_vec(), user.clone());
    }

    /// Forgets everything (a reload may have changed the users).
    pub fn clear(&self) {
        self.0.borrow_mut().clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apr1_matches_openssl() {
        // `openssl passwd -apr1 -salt SALT PASSWORD`.
        for (password, salt, want) in [
            ("password", "lZL6V/ci", "eIMz/iKDkbtys/uU7LEK00"),
            ("password", "RandSalt", "PgCXHRrkpSt4cbyC2C6bm/"),
            (
                "a much longer password of 30+!",
                "ab",
                "uEYPCQ5pkfznukXboQUnV0",
            ),
        ] {
            assert_eq!(
                apr1(password.as_bytes(), salt.as_bytes()),
                want,
                "{password}"
            );
        }
    }

    #[test]
    fn every_htpasswd_format_is_checked() {
        // `openssl passwd -6/-5 -salt saltsalt secret`, `htpasswd -s` ({SHA}), pwhash's bcrypt
        // vector ("password").
        for (hash, password) in [
            ("$apr1$lZL6V/ci$eIMz/iKDkbtys/uU7LEK00", "password"),
            (
                "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1",
                "secret",
            ),
            ("$5$saltsalt$0IyaXrmV7.sGNS6tirgqHLqX/G.FBvgkYA.lpPdS5sA", "secret"),
            ("$2y$05$bvIG6Nmid91Mu9RcmmWZfO5HJIMCT8riNW0hEp8f6/FuA2/mHZFpe", "password"),
            ("{SHA}5en6G6MezRroT3XKqkdPOmY/BfQ=", "secret"),
            ("{PLAIN}open sesame", "open sesame"),
        ] {
            let stored = parse_stored(hash).expect(hash);
            let check = |p: &str| match &stored {
                Stored::Plain(s) => same(s.as_bytes(), p.as_bytes()),
                Stored::Sha1(d) => {
                    use sha1::Digest as _;
                    same(&sha1::Sha1::digest(p.as_bytes()), d)
                }
                slow => slow_verify(slow, p),
            };
            assert!(check(password), "{hash}");
            assert!(!check("wrong"), "{hash}");
            assert!(!check(""), "{hash}");
        }
        for bad in ["", "$apr1$x", "{SHA}abc", "$9$x$y", "plaintext"] {
            assert!(parse_stored(bad).is_none(), "{bad:?}");
        }
    }

    #[test]
    fn garbage_authorization_and_files_never_panic() {
        use rand::SeedableRng as _;
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        const PIECES: &[&[u8]] = &[
            b"Basic ",
            b"basic",
            b" ",
            b"dG9tOmNhdA==",
            b"=",
            b":",
            b"$apr1$",
            b"$2y$05$",
            b"{SHA}",
            b"\xff",
        ];
        for _ in 0..20_000 {
            let v = crate::test_support::garbage(&mut rng, PIECES, 10, 0.8);
            let _ = credentials(&v);
            let _ = parse_stored(&String::from_utf8_lossy(&v));
        }
    }

    #[test]
    fn credentials_are_basic_base64_user_colon_password() {
        let enc = |s: &str| {
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(s)
            )
        };
        assert_eq!(
            credentials(enc("tom:cat:s").as_bytes()),
            Some(("tom".into(), "cat:s".into()))
        );
        assert_eq!(credentials(enc("tom").as_bytes()), None);
        assert_eq!(credentials(b"Bearer abc"), None);
        assert_eq!(credentials(b"Basic !!!"), None);
        assert_eq!(credentials(b"Basic"), None);
    }
}
