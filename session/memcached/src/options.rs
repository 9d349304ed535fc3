//! Client configuration.

use std::time::Duration;

/// Default number of connections per node (per runtime thread that uses the client).
pub const DEFAULT_CONNECTIONS: usize = 2;
/// Default time limit of one operation, queueing and connecting included.
pub const DEFAULT_OPERATION_TIMEOUT: Duration = Duration::from_secs(1);
/// Default time limit of a TCP connect.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// Default largest value sent or accepted (memcached's default item size limit).
pub const DEFAULT_MAX_VALUE_SIZE: usize = 1024 * 1024;
/// First pause after a failed connect; doubles per failure up to the maximum.
pub const DEFAULT_BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Longest pause between connect attempts.
pub const DEFAULT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// Default time limit of a whole `lru_crawler metadump`.
pub const DEFAULT_METADUMP_TIMEOUT: Duration = Duration::from_secs(60);

/// How a [`crate::NodeClient`] talks to its node.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClientOptions {
    /// Long-lived connections per node, per runtime thread using the client. Requests
    /// are spread round-robin and pipelined on each.
    pub connections: usize,
    /// Limit for every operation (queueing, connecting, round trip).
    pub operation_timeout: Duration,
    /// Limit for establishing a TCP connection.
    pub connect_timeout: Duration,
    /// Largest value written, and largest value accepted from the node; a larger
    /// announced length is a protocol error (the peer is never trusted with lengths).
    pub max_value_size: usize,
    /// First pause after a failed connect, during which requests fail at once.
    pub reconnect_backoff_min: Duration,
    /// Longest such pause.
    pub reconnect_backoff_max: Duration,
    /// Limit for a whole key dump.
    pub metadump_timeout: Duration,
    /// User name and password for nodes that require authentication (`memcached -Y`);
    /// `None`: connect without.
    pub credentials: Option<Credentials>,
}

/// A user name and password for memcached's ASCII authentication (`memcached -Y <file>`,
/// whose lines are `user:password`). `Debug` does not show the password.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    username: String,
    password: String,
}

impl Credentials {
    /// Checks both: 1 to 128 printable ASCII characters, no spaces (memcached splits the
    /// pair at the space), and no `:` in the user name (the auth file's separator).
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Result<Self, String> {
        let (username, password) = (username.into(), password.into());
        let ok = |s: &str| (1..=128).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_graphic());
        if !ok(&username) || username.contains(':') {
            return Err(
                "user name: 1 to 128 printable ASCII characters without spaces or ':'".into(),
            );
        }
        if !ok(&password) {
            return Err("password: 1 to 128 printable ASCII characters without spaces".into());
        }
        Ok(Self { username, password })
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// The password.
    pub fn password(&self) -> &str {
        &self.password
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<hidden>")
            .finish()
    }
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            connections: DEFAULT_CONNECTIONS,
            operation_timeout: DEFAULT_OPERATION_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            reconnect_backoff_min: DEFAULT_BACKOFF_MIN,
            reconnect_backoff_max: DEFAULT_BACKOFF_MAX,
            metadump_timeout: DEFAULT_METADUMP_TIMEOUT,
            credentials: None,
        }
    }
}

impl ClientOptions {
    /// Set the number of connections per node.
    #[must_use]
    pub fn connections(mut self, n: usize) -> Self {
        self.connections = n.max(1);
        self
    }

    /// Set the operation timeout.
    #[must_use]
    pub fn operation_timeout(mut self, t: Duration) -> Self {
        self.operation_timeout = t;
        self
    }

    /// Set the connect timeout.
    #[must_use]
    pub fn connect_timeout(mut self, t: Duration) -> Self {
        self.connect_timeout = t;
        self
    }

    /// Set the largest value size.
    #[must_use]
    pub fn max_value_size(mut self, n: usize) -> Self {
        self.max_value_size = n;
        self
    }

    /// Authenticate every connection with these credentials (`memcached -Y`).
    #[must_use]
    pub fn credentials(mut self, creds: Option<Credentials>) -> Self {
        self.credentials = creds;
        self
    }

    /// Set the reconnect back-off range.
    #[must_use]
    pub fn reconnect_backoff(mut self, min: Duration, max: Duration) -> Self {
        self.reconnect_backoff_min = min;
        self.reconnect_backoff_max = max.max(min);
        self
    }
}
