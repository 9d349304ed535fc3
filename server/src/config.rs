//! The ferrocat config file: parse, then validate.
//!
//! Pipeline:
//! 1. the TOML file (`--config FILE`; none = every default),
//! 2. environment overrides `FERROCAT__SECTION__KEY=value` (e.g.
//!    `FERROCAT__SESSION__COOKIE_SECRET`, `FERROCAT__NODE__NAME`), which win
//!    over the file,
//! 3. serde into [`Config`]: unknown keys and wrong types are rejected, and
//!    the error names the key's full path (`balancer.upstream[0].weight`),
//! 4. each section's `validate()`: value rules, again naming the key.
//!
//! Sections: `[node]` (this app node), `[session]` (see
//! `ferrocat_session::config`), `[balancer]` and `[[balancer.upstream]]` (see
//! `ferrocat_balancer::config`).

use std::net::SocketAddr;
use std::path::Path;

use ferrocat_balancer::config::BalancerConfig;
use ferrocat_session::config::{SessionConfig, SessionSettings};
use serde::Deserialize;

/// Default app node name (route).
pub const DEFAULT_NODE_NAME: &str = "app1";
/// Default app node listen address.
pub const DEFAULT_NODE_LISTEN: &str = "127.0.0.1:8081";
/// Environment variable prefix for overrides.
pub const ENV_PREFIX: &str = "FERROCAT";

/// A config error that names the key and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read or is not TOML.
    #[error("{path}: {reason}")]
    File {
        /// the file
        path: String,
        /// why
        reason: String,
    },
    /// A key is unknown, missing, of the wrong type, or has an invalid value.
    #[error("{key}: {reason}")]
    Invalid {
        /// dotted path of the key
        key: String,
        /// why
        reason: String,
    },
}

impl ConfigError {
    /// The key the error is about, if any.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::Invalid { key, .. } => Some(key),
            ConfigError::File { .. } => None,
        }
    }
}

/// `[node]`: this app node.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NodeConfig {
    /// The node's name and route (Tomcat's jvmRoute), written into session ids.
    pub name: String,
    /// Where the app node listens.
    pub listen: SocketAddr,
    /// actix workers; 0 = one per core.
    pub workers: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            name: DEFAULT_NODE_NAME.into(),
            listen: DEFAULT_NODE_LISTEN
                .parse()
                .unwrap_or(SocketAddr::from(([127, 0, 0, 1], 8081))),
            workers: 0,
        }
    }
}

impl NodeConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !ferrocat_session::id::is_valid_name(&self.name) {
            return Err(ConfigError::Invalid {
                key: "node.name".into(),
                reason: format!(
                    "{:?} is not a valid route: 1 to 64 characters of [A-Za-z0-9_]",
                    self.name
                ),
            });
        }
        if self.workers > 1024 {
            return Err(ConfigError::Invalid {
                key: "node.workers".into(),
                reason: "at most 1024".into(),
            });
        }
        Ok(())
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// `[node]`
    pub node: NodeConfig,
    /// `[session]`
    pub session: SessionConfig,
    /// `[balancer]`
    pub balancer: BalancerConfig,
}

/// A loaded and validated config.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// As written (plus overrides).
    pub config: Config,
    /// The validated session settings.
    pub session: SessionSettings,
}

impl Config {
    /// Reads `path` (or nothing), applies the environment, deserializes and validates.
    pub fn load(path: Option<&Path>) -> Result<Loaded, ConfigError> {
        Self::load_with_env(path, std::env::vars())
    }

    /// Like [`Config::load`] with explicit environment variables (for tests).
    pub fn load_with_env(
        path: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Loaded, ConfigError> {
        let mut builder = config::Config::builder();
        if let Some(p) = path {
            let text = std::fs::read_to_string(p).map_err(|e| ConfigError::File {
                path: p.display().to_string(),
                reason: e.to_string(),
            })?;
            // The file alone, strictly: the merged view below coerces types
            // (`sticky = 1`, `workers = "2"`) because environment values are
            // strings, and that leniency must not hide a mistake in the file.
            check_file_strictly(&text).map_err(|e| match e {
                ConfigError::File { reason, .. } => ConfigError::File {
                    path: p.display().to_string(),
                    reason,
                },
                e => e,
            })?;
            builder = builder.add_source(config::File::from_str(&text, config::FileFormat::Toml));
        }
        let overrides: config::Map<String, String> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}__")))
            .collect();
        builder = builder.add_source(
            config::Environment::with_prefix(ENV_PREFIX)
                .prefix_separator("__")
                .separator("__")
                .source(Some(overrides)),
        );
        let raw = builder.build().map_err(|e| ConfigError::File {
            path: path.map_or("<defaults>".into(), |p| p.display().to_string()),
            reason: e.to_string(),
        })?;
        let config: Config = serde_path_to_error::deserialize(raw).map_err(|e| {
            let path = e.path().to_string();
            invalid(path, e.into_inner().to_string())
        })?;
        config.validate()
    }

    /// Validates every section.
    pub fn validate(self) -> Result<Loaded, ConfigError> {
        self.node.validate()?;
        let session = self.session.validate().map_err(|e| ConfigError::Invalid {
            key: e.key,
            reason: e.reason,
        })?;
        self.balancer.validate().map_err(|e| ConfigError::Invalid {
            key: e.key,
            reason: e.reason,
        })?;
        Ok(Loaded {
            config: self,
            session,
        })
    }
}

/// Deserializes the TOML text as typed (no coercion): a wrong type, an
/// unknown key or a syntax error in the file is reported with its key (or
/// line and column).
fn check_file_strictly(text: &str) -> Result<(), ConfigError> {
    let de = toml::Deserializer::new(text);
    match serde_path_to_error::deserialize::<_, Config>(de) {
        Ok(_) => Ok(()),
        Err(e) => {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "."
                && inner.span().is_some()
                && !inner.message().starts_with("unknown field")
            {
                // Not about a key: the text is not TOML.
                return Err(ConfigError::File {
                    path: String::new(),
                    reason: inner.to_string().trim_end().to_owned(),
                });
            }
            Err(invalid(path, inner.message().to_owned()))
        }
    }
}

/// A deserialization error at `path` (serde_path_to_error's dotted path).
fn invalid(path: String, reason: String) -> ConfigError {
    // serde reports an unknown key at its parent's path; name the key itself.
    let unknown = reason
        .strip_prefix("unknown field `")
        .and_then(|r| r.split_once('`'))
        .map(|(field, _)| field.to_owned());
    let key = match (path.as_str(), unknown) {
        (".", Some(f)) => f,
        (p, Some(f)) if p != f && !p.ends_with(&format!(".{f}")) => format!("{p}.{f}"),
        (".", None) => "(top level)".into(),
        (p, _) => p.to_owned(),
    };
    ConfigError::Invalid { key, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Loaded, ConfigError> {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        f.write_all(toml.as_bytes()).unwrap();
        Config::load_with_env(
            Some(f.path()),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_load_without_a_file() {
        let l = Config::load_with_env(None, Vec::new()).unwrap();
        assert_eq!(l.config.node.name, "app1");
    }

    #[test]
    fn full_example_loads() {
        let l = load(
            r#"
            [node]
            name = "app2"
            listen = "127.0.0.1:9081"
            [session]
            locking_mode = "uriPattern:^/api/"
            lock_expiration = "5s"
            session_backup_timeout = "100ms"
            max_inactive_interval = "30m"
            cookie_secret = "0123456789abcdef0123456789abcdef"
            [balancer]
            listen = "127.0.0.1:9080"
            client_max_body_size = "100m"
            deny = ['^/(WEB-INF)/']
            [[balancer.upstream]]
            address = "127.0.0.1:9081"
            route = "app2"
            weight = 2
            "#,
            &[],
        )
        .unwrap();
        assert_eq!(l.config.node.name, "app2");
        assert_eq!(l.config.balancer.upstream.len(), 1);
    }

    #[test]
    fn misspelt_key_is_named() {
        let e = load("[session]\nstickyy = true\n", &[]).unwrap_err();
        assert_eq!(e.key(), Some("session.stickyy"), "{e}");
        assert!(e.to_string().contains("stickyy"), "{e}");
    }

    #[test]
    fn negative_weight_is_named() {
        let e = load(
            "[[balancer.upstream]]\naddress = \"127.0.0.1:1\"\nweight = -1\n",
            &[],
        )
        .unwrap_err();
        assert!(e.key().unwrap_or("").ends_with("weight"), "{e}");
    }

    #[test]
    fn bad_duration_is_named() {
        let e = load("[session]\noperation_timeout = \"soon\"\n", &[]).unwrap_err();
        assert_eq!(e.key(), Some("session.operation_timeout"), "{e}");
    }

    #[test]
    fn sticky_cache_revalidation_is_read_and_checked() {
        let l = load(
            "[session]\nsticky = true\ncache_revalidate_after = \"0s\"\n",
            &[],
        )
        .unwrap();
        assert_eq!(l.session.cache_revalidate_after, std::time::Duration::ZERO);
        let l = load("[session]\nsticky = true\n", &[]).unwrap();
        assert_eq!(
            l.session.cache_revalidate_after,
            std::time::Duration::from_secs(1)
        );
        let e = load("[session]\ncache_revalidate_after = \"often\"\n", &[]).unwrap_err();
        assert_eq!(e.key(), Some("session.cache_revalidate_after"), "{e}");
    }

    #[test]
    fn env_overrides_the_file() {
        let l = load(
            "[node]\nname = \"app1\"\n",
            &[
                ("FERROCAT__NODE__NAME", "app7"),
                ("FERROCAT__SESSION__STICKY", "true"),
                ("UNRELATED", "x"),
            ],
        )
        .unwrap();
        assert_eq!(l.config.node.name, "app7");
        assert!(l.session.sticky);
    }

    #[test]
    fn wrong_types_in_the_file_are_named_not_coerced() {
        for (toml, key) in [
            ("[session]\nsticky = 1\n", "session.sticky"),
            ("[session]\nsticky = \"yes\"\n", "session.sticky"),
            ("[node]\nworkers = \"2\"\n", "node.workers"),
            (
                "[session]\nmemcached_nodes = 5\n",
                "session.memcached_nodes",
            ),
            (
                "[[balancer.upstream]]\naddress = \"127.0.0.1:1\"\nweight = \"2\"\n",
                "balancer.upstream[0].weight",
            ),
            ("[Session]\nsticky = true\n", "Session"),
        ] {
            let e = load(toml, &[]).unwrap_err();
            assert_eq!(e.key(), Some(key), "{toml}: {e}");
        }
    }

    #[test]
    fn environment_values_are_still_parsed_from_text() {
        let l = load(
            "[node]\nworkers = 3\n",
            &[
                ("FERROCAT__NODE__WORKERS", "2"),
                // All digits: must stay this text (a number would lose digits).
                (
                    "FERROCAT__SESSION__COOKIE_SECRET",
                    "12345678901234567890123456789012",
                ),
                ("FERROCAT__SESSION__SESSION_BACKUP_ASYNC", "true"),
                ("FERROCAT__BALANCER__KEEPALIVE_REQUESTS", "7"),
                ("FERROCAT__BALANCER__CLIENT_MAX_BODY_SIZE", "2m"),
                ("FERROCAT__BALANCER__ACCESS_LOG", "/tmp/access.log"),
                ("FERROCAT__BALANCER__STICKY_COOKIE", "1234"),
            ],
        )
        .unwrap();
        assert_eq!(l.config.node.workers, 2);
        assert!(l.config.session.session_backup_async);
        assert_eq!(l.config.balancer.keepalive_requests, 7);
        assert_eq!(l.config.balancer.client_max_body_size, 2 * 1024 * 1024);
        assert_eq!(
            l.config.balancer.access_log.as_deref(),
            Some(Path::new("/tmp/access.log"))
        );
        assert_eq!(l.config.balancer.sticky_cookie, "1234");
        let e = load("", &[("FERROCAT__NODE__WORKERS", "two")]).unwrap_err();
        assert_eq!(e.key(), Some("node.workers"), "{e}");
        assert_eq!(
            l.session.cookie_secret.as_deref(),
            Some(&b"12345678901234567890123456789012"[..])
        );
    }

    #[test]
    fn a_syntax_error_names_the_file_and_line() {
        let e = load("[node]\nname = \"app1\"\nworkers = = 2\n", &[]).unwrap_err();
        let ConfigError::File { path, reason } = &e else {
            panic!("expected a file error, got {e}");
        };
        assert!(!path.is_empty(), "{e}");
        assert!(reason.contains("line 3"), "{e}");
    }

    #[test]
    fn bad_node_name_is_named() {
        let e = load("[node]\nname = \"app 1\"\n", &[]).unwrap_err();
        assert_eq!(e.key(), Some("node.name"));
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let e = Config::load_with_env(Some(Path::new("/nonexistent/ferrocat.toml")), Vec::new());
        assert!(matches!(e, Err(ConfigError::File { .. })));
    }
}
