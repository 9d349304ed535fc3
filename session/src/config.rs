//! The `[session]` section: parse, then validate.
//!
//! Pipeline: TOML file -> `FERROCAT__SESSION__*` environment overrides (both
//! applied by the server's loader) -> [`SessionConfig`] (serde, unknown keys
//! rejected) -> [`SessionConfig::validate`] -> [`SessionSettings`] (typed,
//! checked values the manager runs on). Names follow msm's attributes in
//! snake_case.

use std::time::Duration;

use regex::Regex;
use serde::Deserialize;

use crate::manager::locking::LockingMode;
use crate::serializer::SerializerKind;

/// Default `lock_expiration` (msm's lockExpiration).
pub const DEFAULT_LOCK_EXPIRATION: Duration = Duration::from_secs(5);
/// Default `session_backup_timeout` (msm's sessionBackupTimeout).
pub const DEFAULT_BACKUP_TIMEOUT: Duration = Duration::from_millis(100);
/// Default `operation_timeout` (msm's operationTimeout).
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Default `max_inactive_interval` (Tomcat's 30 minutes).
pub const DEFAULT_MAX_INACTIVE: Duration = Duration::from_secs(30 * 60);
/// Default `request_uri_ignore_pattern`: static files.
pub const DEFAULT_IGNORE_PATTERN: &str = r".*\.(png|gif|jpg|css|js|ico)$";
/// Default cookie name (Tomcat's).
pub const DEFAULT_COOKIE_NAME: &str = "JSESSIONID";
/// Shortest accepted `cookie_secret`.
pub const MIN_SECRET_LEN: usize = 32;
/// Default sticky cache bounds.
pub const DEFAULT_CACHE_MAX_ENTRIES: usize = 100_000;
/// Default for `cache_revalidate_after`.
pub const DEFAULT_CACHE_REVALIDATE_AFTER: Duration = Duration::from_secs(1);
/// Default sticky cache byte bound (256 MiB).
pub const DEFAULT_CACHE_MAX_BYTES: u64 = 256 * 1024 * 1024;

/// A config value that failed validation; `key` is the dotted path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    /// e.g. `session.locking_mode`
    pub key: String,
    /// why the value is rejected
    pub reason: String,
}

fn err(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        key: format!("session.{key}"),
        reason: reason.into(),
    }
}

/// Serde helpers for human-readable durations ("5s", "100ms", "30m").
pub mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    /// Deserializes a humantime string.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(s.trim()).map_err(|e| {
            serde::de::Error::custom(format!(
                "invalid duration {s:?} ({e}); use e.g. \"100ms\", \"5s\", \"30m\""
            ))
        })
    }
}

/// Parses a size such as `256m`, `64k`, `1g` or `1024`.
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim().to_ascii_lowercase();
    let (num, mult) = match s.chars().last()? {
        'k' => (&s[..s.len() - 1], 1024),
        'm' => (&s[..s.len() - 1], 1024 * 1024),
        'g' => (&s[..s.len() - 1], 1024 * 1024 * 1024),
        _ => (s.as_str(), 1),
    };
    num.trim().parse::<u64>().ok()?.checked_mul(mult)
}

/// The `[session]` section as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SessionConfig {
    /// msm's memcachedNodes: `n1:host:port n2:host:port`; empty = in-process store.
    pub memcached_nodes: String,
    /// msm's failoverNodes: node ids used only when no other node is up.
    pub failover_nodes: String,
    /// Sticky sessions: the app node caches sessions and backs them up.
    pub sticky: bool,
    /// `none` | `all` | `auto` | `uriPattern:<regex>` (non-sticky only).
    pub locking_mode: String,
    /// Expiry of the lock key.
    #[serde(with = "duration_str")]
    pub lock_expiration: Duration,
    /// Requests whose URI matches neither load nor store the session.
    pub request_uri_ignore_pattern: String,
    /// msm's `sessionAttributeFilter`: only attributes whose whole name matches this
    /// regex are written to the store; empty: all. In sticky mode the node's cache keeps
    /// every attribute.
    pub session_attribute_filter: String,
    /// Response goes first; the persistence actor stores.
    pub session_backup_async: bool,
    /// Longest a response waits for the store in sync mode.
    #[serde(with = "duration_str")]
    pub session_backup_timeout: Duration,
    /// Bound on every memcached operation.
    #[serde(with = "duration_str")]
    pub operation_timeout: Duration,
    /// bincode | postcard | msgpack | json
    pub serializer: String,
    /// Session expiry after inactivity (also the memcached expiry).
    #[serde(with = "duration_str")]
    pub max_inactive_interval: Duration,
    /// Session cookie name.
    pub cookie_name: String,
    /// Signs the cookie; the same on every app node; >= 32 bytes.
    pub cookie_secret: Option<String>,
    /// A file holding `cookie_secret` (a mounted secret, say), read when the config is
    /// validated; a trailing line end is not part of it. Not together with `cookie_secret`.
    pub cookie_secret_file: Option<std::path::PathBuf>,
    /// The secret `cookie_secret` replaces, while it is rotated: cookies signed with it are
    /// still accepted and signed again with `cookie_secret` in the answer, so rotating the
    /// secret logs nobody out. Remove it once the sessions have moved (after
    /// `max_inactive_interval`).
    pub cookie_secret_previous: Option<String>,
    /// Sets the cookie's Secure flag (HTTPS deployments).
    pub cookie_secure: bool,
    /// The cookie's Path (Tomcat: the context path, e.g. `/shop`).
    pub cookie_path: String,
    /// The cookie's Domain (e.g. `example.com`, for its subdomains too); empty: none (the
    /// host that set it only).
    pub cookie_domain: String,
    /// The cookie's SameSite: `lax` (default), `strict` or `none` (needs `cookie_secure`).
    pub cookie_same_site: String,
    /// Sticky cache bound: sessions held in memory.
    pub cache_max_entries: usize,
    /// Sticky cache bound: bytes held in memory ("256m").
    pub cache_max_bytes: String,
    /// Sticky mode: a cached session not confirmed by the store for this
    /// long is read from the store again before it is served (another app
    /// node may have taken it over and changed or logged it out); `0s`:
    /// before every request.
    #[serde(with = "duration_str")]
    pub cache_revalidate_after: Duration,
    /// Connections per memcached node.
    pub memcached_connections: usize,
    /// msm's `storageKeyPrefix`: written as `<prefix>:` before every memcached key, so
    /// several apps can share the memcached nodes (each reads, locks and warms up only its
    /// own keys). Every app node of one app needs the same value. Empty: no prefix.
    pub storage_key_prefix: String,
    /// User name for memcached nodes that require authentication (`memcached -Y`,
    /// msm's `username`); empty: none. Set together with `memcached_password`.
    pub memcached_username: String,
    /// Its password (better from the environment:
    /// `FERROCAT__SESSION__MEMCACHED_PASSWORD`).
    pub memcached_password: String,
}

impl Default for SessionConfig {
    fn default() -> Self {
        SessionConfig {
            memcached_nodes: String::new(),
            failover_nodes: String::new(),
            sticky: false,
            locking_mode: "none".into(),
            lock_expiration: DEFAULT_LOCK_EXPIRATION,
            request_uri_ignore_pattern: DEFAULT_IGNORE_PATTERN.into(),
            session_attribute_filter: String::new(),
            session_backup_async: false,
            session_backup_timeout: DEFAULT_BACKUP_TIMEOUT,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            serializer: SerializerKind::default().name().into(),
            max_inactive_interval: DEFAULT_MAX_INACTIVE,
            cookie_name: DEFAULT_COOKIE_NAME.into(),
            cookie_secret: None,
            cookie_secret_previous: None,
            cookie_secret_file: None,
            cookie_secure: false,
            cookie_path: "/".into(),
            cookie_domain: String::new(),
            cookie_same_site: "lax".into(),
            cache_max_entries: DEFAULT_CACHE_MAX_ENTRIES,
            cache_max_bytes: "256m".into(),
            cache_revalidate_after: DEFAULT_CACHE_REVALIDATE_AFTER,
            memcached_connections: 2,
            storage_key_prefix: String::new(),
            memcached_username: String::new(),
            memcached_password: String::new(),
        }
    }
}

/// Validated, typed session settings.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// The memcached node list as written (empty: in-process store).
    pub memcached_nodes: String,
    /// Failover node ids as written.
    pub failover_nodes: String,
    /// Sticky mode.
    pub sticky: bool,
    /// Parsed locking mode.
    pub locking: LockingMode,
    /// Lock key expiry.
    pub lock_expiration: Duration,
    /// Compiled ignore pattern (None when empty).
    pub ignore: Option<Regex>,
    /// Attributes written to the store: names matching this (anchored) regex; None: all.
    pub attribute_filter: Option<Regex>,
    /// Async backups.
    pub backup_async: bool,
    /// Sync backup bound.
    pub backup_timeout: Duration,
    /// Store operation bound.
    pub operation_timeout: Duration,
    /// Serializer for new writes.
    pub serializer: SerializerKind,
    /// Max inactive interval.
    pub max_inactive: Duration,
    /// Cookie name.
    pub cookie_name: String,
    /// Cookie secret (None: generate one per process).
    pub cookie_secret: Option<Vec<u8>>,
    /// The secret being rotated out, still accepted.
    pub cookie_secret_previous: Option<Vec<u8>>,
    /// Cookie Secure flag.
    pub cookie_secure: bool,
    /// Cookie Path.
    pub cookie_path: String,
    /// Cookie Domain (None: not set).
    pub cookie_domain: Option<String>,
    /// Cookie SameSite.
    pub cookie_same_site: actix_web::cookie::SameSite,
    /// Sticky cache entry bound.
    pub cache_max_entries: usize,
    /// Sticky cache byte bound.
    pub cache_max_bytes: usize,
    /// Sticky mode: how long a cached session is served without asking the store.
    pub cache_revalidate_after: Duration,
    /// Connections per memcached node.
    pub memcached_connections: usize,
    /// Prefix of every memcached key (empty: none).
    pub storage_key_prefix: String,
    /// Credentials for memcached nodes that require authentication.
    pub memcached_credentials: Option<ferrocat_memcached::Credentials>,
}

impl SessionConfig {
    /// Checks every value; the error names the first bad key.
    pub fn validate(&self) -> Result<SessionSettings, ConfigError> {
        let locking = LockingMode::parse(&self.locking_mode).map_err(|r| err("locking_mode", r))?;
        if self.sticky && locking != LockingMode::None {
            return Err(err(
                "locking_mode",
                "locking applies to non-sticky sessions only; use \"none\" with sticky = true",
            ));
        }
        let ignore =
            if self.request_uri_ignore_pattern.is_empty() {
                None
            } else {
                Some(Regex::new(&self.request_uri_ignore_pattern).map_err(|e| {
                    err("request_uri_ignore_pattern", format!("invalid regex: {e}"))
                })?)
            };
        // msm matches the whole attribute name (`Matcher.matches`), so the pattern is anchored.
        let attribute_filter = if self.session_attribute_filter.is_empty() {
            None
        } else {
            Some(
                Regex::new(&format!("^(?:{})$", self.session_attribute_filter))
                    .map_err(|e| err("session_attribute_filter", format!("invalid regex: {e}")))?,
            )
        };
        let serializer = SerializerKind::from_name(&self.serializer).ok_or_else(|| {
            err(
                "serializer",
                format!(
                    "unknown serializer {:?}; use bincode, postcard, msgpack or json",
                    self.serializer
                ),
            )
        })?;
        for (key, d) in [
            ("lock_expiration", self.lock_expiration),
            ("session_backup_timeout", self.session_backup_timeout),
            ("operation_timeout", self.operation_timeout),
            ("max_inactive_interval", self.max_inactive_interval),
        ] {
            if d.is_zero() {
                return Err(err(key, "must be greater than zero"));
            }
        }
        if self.max_inactive_interval.as_secs() > u64::from(u32::MAX) {
            return Err(err("max_inactive_interval", "too large"));
        }
        if self.cookie_name.is_empty()
            || !self
                .cookie_name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        {
            return Err(err("cookie_name", "must be non-empty [A-Za-z0-9_-]"));
        }
        let from_file = match (&self.cookie_secret_file, &self.cookie_secret) {
            (Some(_), Some(_)) => {
                return Err(err(
                    "cookie_secret_file",
                    "set cookie_secret or cookie_secret_file, not both",
                ))
            }
            (Some(path), None) => {
                let text = std::fs::read_to_string(path).map_err(|e| {
                    err(
                        "cookie_secret_file",
                        format!("cannot read {}: {e}", path.display()),
                    )
                })?;
                let secret = text.strip_suffix('\n').unwrap_or(&text);
                Some(secret.strip_suffix('\r').unwrap_or(secret).to_owned())
            }
            _ => None,
        };
        let (secret_key, secret) = match &from_file {
            Some(s) => ("cookie_secret_file", Some(s)),
            None => ("cookie_secret", self.cookie_secret.as_ref()),
        };
        let cookie_secret = match secret {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(err(
                    secret_key,
                    format!("must be at least {MIN_SECRET_LEN} bytes (got {})", s.len()),
                ))
            }
            Some(s) => Some(s.as_bytes().to_vec()),
            None => None,
        };
        let cookie_secret_previous = match &self.cookie_secret_previous {
            Some(s) if s.len() < MIN_SECRET_LEN => {
                return Err(err(
                    "cookie_secret_previous",
                    format!("must be at least {MIN_SECRET_LEN} bytes (got {})", s.len()),
                ))
            }
            Some(_) if cookie_secret.is_none() => {
                return Err(err(
                    "cookie_secret_previous",
                    "needs cookie_secret (the secret that replaces it)",
                ))
            }
            Some(s) => Some(s.as_bytes().to_vec()),
            None => None,
        };
        if !self.cookie_path.starts_with('/')
            || !self
                .cookie_path
                .bytes()
                .all(|b| b.is_ascii_graphic() && b != b';' && b != b',')
        {
            return Err(err(
                "cookie_path",
                "must start with / and hold no spaces, ';' or ','",
            ));
        }
        let domain = self.cookie_domain.trim().trim_start_matches('.');
        if !domain
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.')
        {
            return Err(err(
                "cookie_domain",
                "must be a host name such as example.com",
            ));
        }
        let cookie_same_site = match self.cookie_same_site.to_ascii_lowercase().as_str() {
            "lax" => actix_web::cookie::SameSite::Lax,
            "strict" => actix_web::cookie::SameSite::Strict,
            "none" if self.cookie_secure => actix_web::cookie::SameSite::None,
            "none" => {
                return Err(err(
                    "cookie_same_site",
                    "\"none\" needs cookie_secure = true (browsers reject it otherwise)",
                ))
            }
            _ => return Err(err("cookie_same_site", "use lax, strict or none")),
        };
        if self.cache_max_entries == 0 {
            return Err(err("cache_max_entries", "must be at least 1"));
        }
        let cache_max_bytes = parse_size(&self.cache_max_bytes)
            .filter(|b| *b > 0)
            .ok_or_else(|| err("cache_max_bytes", "expected a size such as \"256m\""))?;
        if self.memcached_connections == 0 || self.memcached_connections > 64 {
            return Err(err("memcached_connections", "must be between 1 and 64"));
        }
        crate::store::memcached::check_key_prefix(&self.storage_key_prefix)
            .map_err(|r| err("storage_key_prefix", r))?;
        let memcached_credentials = match (
            self.memcached_username.is_empty(),
            self.memcached_password.is_empty(),
        ) {
            (true, true) => None,
            (false, true) => {
                return Err(err(
                    "memcached_password",
                    "memcached_username is set: set its password too",
                ))
            }
            (true, false) => {
                return Err(err(
                    "memcached_username",
                    "memcached_password is set: set the user name too",
                ))
            }
            (false, false) => Some(
                ferrocat_memcached::Credentials::new(
                    &self.memcached_username,
                    &self.memcached_password,
                )
                .map_err(|r| {
                    let key = if r.starts_with("password") {
                        "memcached_password"
                    } else {
                        "memcached_username"
                    };
                    err(key, r)
                })?,
            ),
        };
        if !self.memcached_nodes.trim().is_empty() {
            crate::store::memcached::parse_memcached_nodes(&self.memcached_nodes)
                .map_err(|r| err("memcached_nodes", r))?;
            crate::store::memcached::MemcachedStoreConfig::from_msm(
                &self.memcached_nodes,
                &self.failover_nodes,
            )
            .map_err(|r| err("failover_nodes", r))?;
        } else if !self.failover_nodes.trim().is_empty() {
            return Err(err("failover_nodes", "set without memcached_nodes"));
        }
        Ok(SessionSettings {
            memcached_nodes: self.memcached_nodes.trim().to_owned(),
            failover_nodes: self.failover_nodes.trim().to_owned(),
            sticky: self.sticky,
            locking,
            lock_expiration: self.lock_expiration,
            ignore,
            attribute_filter,
            backup_async: self.session_backup_async,
            backup_timeout: self.session_backup_timeout,
            operation_timeout: self.operation_timeout,
            serializer,
            max_inactive: self.max_inactive_interval,
            cookie_name: self.cookie_name.clone(),
            cookie_secret,
            cookie_secret_previous,
            cookie_secure: self.cookie_secure,
            cookie_path: self.cookie_path.clone(),
            cookie_domain: (!domain.is_empty()).then(|| domain.to_owned()),
            cookie_same_site,
            cache_max_entries: self.cache_max_entries,
            cache_max_bytes: usize::try_from(cache_max_bytes).unwrap_or(usize::MAX),
            cache_revalidate_after: self.cache_revalidate_after,
            memcached_connections: self.memcached_connections,
            storage_key_prefix: self.storage_key_prefix.clone(),
            memcached_credentials,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(f: impl FnOnce(&mut SessionConfig)) -> ConfigError {
        let mut c = SessionConfig::default();
        f(&mut c);
        c.validate().expect_err("should be rejected")
    }

    #[test]
    fn defaults_are_valid() {
        let s = SessionConfig::default().validate().unwrap();
        assert!(s.ignore.as_ref().unwrap().is_match("/static/a.css"));
        assert_eq!(s.locking, LockingMode::None);
    }

    #[test]
    fn storage_key_prefix_is_checked() {
        for p in ["shop app", "caf\u{e9}", &"x".repeat(65)] {
            assert_eq!(
                bad(|c| c.storage_key_prefix = p.into()).key,
                "session.storage_key_prefix"
            );
        }
        let c = SessionConfig {
            storage_key_prefix: "shop-v2".into(),
            ..Default::default()
        };
        assert_eq!(c.validate().unwrap().storage_key_prefix, "shop-v2");
    }

    #[test]
    fn memcached_credentials_come_in_pairs_and_are_checked() {
        let with = |user: &str, pass: &str| {
            let c = SessionConfig {
                memcached_username: user.into(),
                memcached_password: pass.into(),
                ..Default::default()
            };
            c.validate()
        };
        assert_eq!(
            with("app", "").unwrap_err().key,
            "session.memcached_password"
        );
        assert_eq!(
            with("", "pw").unwrap_err().key,
            "session.memcached_username"
        );
        assert_eq!(
            with("a:b", "pw").unwrap_err().key,
            "session.memcached_username"
        );
        let e = with("app", "two words").unwrap_err();
        assert_eq!(e.key, "session.memcached_password");
        assert!(
            !e.reason.contains("two words"),
            "the password is not echoed: {e}"
        );
        let ok = with("app", "s3cret").unwrap();
        let creds = ok.memcached_credentials.unwrap();
        assert_eq!((creds.username(), creds.password()), ("app", "s3cret"));
        assert!(!format!("{creds:?}").contains("s3cret"));
        assert!(with("", "").unwrap().memcached_credentials.is_none());
    }

    #[test]
    fn cookie_attributes_are_checked() {
        assert_eq!(
            bad(|c| c.cookie_path = "shop".into()).key,
            "session.cookie_path"
        );
        assert_eq!(
            bad(|c| c.cookie_path = "/a;b".into()).key,
            "session.cookie_path"
        );
        assert_eq!(
            bad(|c| c.cookie_domain = "exa mple.com".into()).key,
            "session.cookie_domain"
        );
        assert_eq!(
            bad(|c| c.cookie_same_site = "sometimes".into()).key,
            "session.cookie_same_site"
        );
        assert_eq!(
            bad(|c| c.cookie_same_site = "none".into()).key,
            "session.cookie_same_site"
        );
        let c = SessionConfig {
            cookie_same_site: "None".into(),
            cookie_secure: true,
            ..Default::default()
        };
        let s = c.validate().unwrap();
        assert_eq!(s.cookie_same_site, actix_web::cookie::SameSite::None);
        assert_eq!((s.cookie_path.as_str(), s.cookie_domain), ("/", None));
    }

    #[test]
    fn cookie_secret_file_is_read_without_its_line_end() {
        let path = std::env::temp_dir().join(format!("ferrocat-secret-{}", std::process::id()));
        std::fs::write(&path, format!("{}\r\n", "s".repeat(40))).unwrap();
        let with = |f: &dyn Fn(&mut SessionConfig)| {
            let mut c = SessionConfig {
                cookie_secret_file: Some(path.clone()),
                ..Default::default()
            };
            f(&mut c);
            c.validate()
        };
        let s = with(&|_| {}).unwrap();
        assert_eq!(s.cookie_secret.as_deref(), Some("s".repeat(40).as_bytes()));
        let both = with(&|c| c.cookie_secret = Some("x".repeat(32))).unwrap_err();
        assert_eq!(both.key, "session.cookie_secret_file");
        std::fs::write(&path, "short\n").unwrap();
        assert_eq!(with(&|_| {}).unwrap_err().key, "session.cookie_secret_file");
        std::fs::remove_file(&path).unwrap();
        let missing = with(&|_| {}).unwrap_err();
        assert_eq!(missing.key, "session.cookie_secret_file");
        assert!(missing.reason.contains("cannot read"), "{}", missing.reason);
    }

    #[test]
    fn locking_mode_is_checked() {
        assert_eq!(
            bad(|c| c.locking_mode = "sometimes".into()).key,
            "session.locking_mode"
        );
        assert_eq!(
            bad(|c| c.locking_mode = "uriPattern:(".into()).key,
            "session.locking_mode"
        );
    }

    #[test]
    fn sticky_with_locking_is_rejected() {
        let e = bad(|c| {
            c.sticky = true;
            c.locking_mode = "all".into();
        });
        assert_eq!(e.key, "session.locking_mode");
    }

    #[test]
    fn ignore_pattern_must_compile() {
        assert_eq!(
            bad(|c| c.request_uri_ignore_pattern = "[".into()).key,
            "session.request_uri_ignore_pattern"
        );
    }

    #[test]
    fn attribute_filter_must_compile_and_matches_whole_names() {
        assert_eq!(
            bad(|c| c.session_attribute_filter = "(".into()).key,
            "session.session_attribute_filter"
        );
        let s = SessionConfig {
            session_attribute_filter: "user|cart.*".into(),
            ..Default::default()
        }
        .validate()
        .expect("valid");
        let f = s.attribute_filter.expect("a filter");
        assert!(f.is_match("user") && f.is_match("cart") && f.is_match("cart_items"));
        assert!(!f.is_match("username") && !f.is_match("my_cart"));
        assert!(SessionConfig::default()
            .validate()
            .expect("valid")
            .attribute_filter
            .is_none());
    }

    #[test]
    fn serializer_must_be_known() {
        assert_eq!(
            bad(|c| c.serializer = "kryo".into()).key,
            "session.serializer"
        );
    }

    #[test]
    fn durations_must_be_positive() {
        assert_eq!(
            bad(|c| c.operation_timeout = Duration::ZERO).key,
            "session.operation_timeout"
        );
    }

    #[test]
    fn short_secret_is_rejected() {
        assert_eq!(
            bad(|c| c.cookie_secret = Some("short".into())).key,
            "session.cookie_secret"
        );
    }

    #[test]
    fn cookie_name_is_checked() {
        assert_eq!(
            bad(|c| c.cookie_name = "a b".into()).key,
            "session.cookie_name"
        );
    }

    #[test]
    fn cache_bounds_are_checked() {
        assert_eq!(
            bad(|c| c.cache_max_entries = 0).key,
            "session.cache_max_entries"
        );
        assert_eq!(
            bad(|c| c.cache_max_bytes = "lots".into()).key,
            "session.cache_max_bytes"
        );
        assert_eq!(parse_size("64k"), Some(65536));
        assert_eq!(parse_size("2m"), Some(2 * 1024 * 1024));
    }

    #[test]
    fn memcached_nodes_are_checked() {
        assert_eq!(
            bad(|c| c.memcached_nodes = "n1:127.0.0.1".into()).key,
            "session.memcached_nodes"
        );
        let e = bad(|c| {
            c.memcached_nodes = "n1:127.0.0.1:11211 n2:127.0.0.1:11212".into();
            c.failover_nodes = "n9".into();
        });
        assert_eq!(e.key, "session.failover_nodes");
        let c = SessionConfig {
            memcached_nodes: "n1:127.0.0.1:11211,n2:127.0.0.1:11212".into(),
            failover_nodes: "n2".into(),
            ..Default::default()
        };
        assert!(c.validate().is_ok());
    }

    #[test]
    fn connections_are_bounded() {
        assert_eq!(
            bad(|c| c.memcached_connections = 0).key,
            "session.memcached_connections"
        );
    }
}
