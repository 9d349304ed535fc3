//! [`NodeClient`]: the typed operations on one memcached node.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};

use crate::connection::Request;
use crate::pool::{self, Submitted};
use crate::protocol::{preview, Command, Response, SetMode, Status};
use crate::{metadump, ClientOptions, DumpedKey, Key, McError};

/// A value read from memcached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    /// The raw value.
    pub value: Bytes,
    /// Client flags stored with it.
    pub flags: u32,
    /// CAS value, for [`SetMode::Cas`].
    pub cas: u64,
    /// Seconds until it expires; `None` if it never does.
    pub ttl: Option<u32>,
}

/// Outcome of a store.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StoreStatus {
    /// Stored.
    Stored,
    /// Not stored: `Add` on an existing key, or `Replace` on a missing one.
    NotStored,
    /// `Cas`: the item changed since it was read.
    Exists,
    /// `Cas`: the item does not exist.
    NotFound,
}

static NEXT_ID: AtomicU64 = AtomicU64::new(1);

/// Shared state of one client and its clones.
pub(crate) struct Inner {
    pub(crate) id: u64,
    pub(crate) addr: SocketAddr,
    pub(crate) opts: Arc<ClientOptions>,
    /// Dropped with the last clone: every connection task of this client then ends.
    pub(crate) shutdown: watch::Sender<()>,
}

/// Client for one memcached server. `Send + Sync`, cheap to clone; usable from any tokio
/// runtime (see the `pool` module). Connects lazily.
#[derive(Clone)]
pub struct NodeClient {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for NodeClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeClient")
            .field("addr", &self.inner.addr)
            .finish()
    }
}

impl NodeClient {
    /// A client for the node at `addr`; nothing connects until the first operation.
    pub fn new(addr: SocketAddr, opts: ClientOptions) -> NodeClient {
        let (shutdown, _) = watch::channel(());
        NodeClient {
            inner: Arc::new(Inner {
                id: NEXT_ID.fetch_add(1, Ordering::Relaxed),
                addr,
                opts: Arc::new(opts),
                shutdown,
            }),
        }
    }

    /// The node's address.
    pub fn addr(&self) -> SocketAddr {
        self.inner.addr
    }

    /// The options this client was built with.
    pub fn options(&self) -> &ClientOptions {
        &self.inner.opts
    }

    /// Read `key`: `None` on a miss. Bounded by `operation_timeout`.
    pub async fn get(&self, key: &Key) -> Result<Option<Item>, McError> {
        self.get_within(key, self.inner.opts.operation_timeout)
            .await
    }

    /// [`NodeClient::get`] bounded by `limit` instead of `operation_timeout` (queueing,
    /// connecting and the round trip included; fails with [`McError::Timeout`]). The
    /// client's own timer is the only one: callers need no `tokio::time::timeout` around.
    pub async fn get_within(&self, key: &Key, limit: Duration) -> Result<Option<Item>, McError> {
        let r = self.call(Command::Get(key.clone()), limit).await?;
        match r.status {
            Status::Value => Ok(Some(Item {
                value: r.value,
                flags: r.flags,
                cas: r.cas,
                ttl: r.ttl,
            })),
            Status::En => Ok(None),
            _ => Err(self.unexpected("get", &r)),
        }
    }

    /// Store `value` under `key` with `flags`, expiring after `ttl_secs` (0 = never;
    /// memcached reads more than 30 days as an absolute unix time). Copies `value`;
    /// [`NodeClient::set_bytes`] takes an owned buffer without copying.
    pub async fn set(
        &self,
        key: &Key,
        value: &[u8],
        flags: u32,
        ttl_secs: u32,
        mode: SetMode,
    ) -> Result<StoreStatus, McError> {
        self.check_size(value.len())?;
        let value = Bytes::copy_from_slice(value);
        let limit = self.inner.opts.operation_timeout;
        self.set_bytes_within(key, value, flags, ttl_secs, mode, limit)
            .await
    }

    /// [`NodeClient::set`] with an owned value (a `Vec<u8>` converts into [`Bytes`]
    /// without a copy), bounded by `operation_timeout`.
    pub async fn set_bytes(
        &self,
        key: &Key,
        value: Bytes,
        flags: u32,
        ttl_secs: u32,
        mode: SetMode,
    ) -> Result<StoreStatus, McError> {
        let limit = self.inner.opts.operation_timeout;
        self.set_bytes_within(key, value, flags, ttl_secs, mode, limit)
            .await
    }

    /// [`NodeClient::set_bytes`] bounded by `limit` (see [`NodeClient::get_within`]).
    pub async fn set_bytes_within(
        &self,
        key: &Key,
        value: Bytes,
        flags: u32,
        ttl_secs: u32,
        mode: SetMode,
        limit: Duration,
    ) -> Result<StoreStatus, McError> {
        self.set_bytes_cas_within(key, value, flags, ttl_secs, mode, limit)
            .await
            .map(|(status, _)| status)
    }

    /// [`NodeClient::set_bytes_within`] that also returns the CAS value the
    /// stored item got (0 when it was not stored), so that the next write of
    /// the same item can be made conditional without reading it first.
    pub async fn set_bytes_cas_within(
        &self,
        key: &Key,
        value: Bytes,
        flags: u32,
        ttl_secs: u32,
        mode: SetMode,
        limit: Duration,
    ) -> Result<(StoreStatus, u64), McError> {
        self.check_size(value.len())?;
        let cmd = Command::Set {
            key: key.clone(),
            value,
            flags,
            ttl: ttl_secs,
            mode,
        };
        let r = self.call(cmd, limit).await?;
        match r.status {
            Status::Hd => Ok((StoreStatus::Stored, r.cas)),
            Status::Ns => Ok((StoreStatus::NotStored, 0)),
            Status::Ex => Ok((StoreStatus::Exists, 0)),
            Status::Nf => Ok((StoreStatus::NotFound, 0)),
            _ => Err(self.unexpected("set", &r)),
        }
    }

    /// Delete `key`; true if it existed.
    pub async fn delete(&self, key: &Key) -> Result<bool, McError> {
        self.delete_within(key, self.inner.opts.operation_timeout)
            .await
    }

    /// [`NodeClient::delete`] bounded by `limit` (see [`NodeClient::get_within`]).
    pub async fn delete_within(&self, key: &Key, limit: Duration) -> Result<bool, McError> {
        let r = self.call(Command::Delete(key.clone()), limit).await?;
        match r.status {
            Status::Hd => Ok(true),
            Status::Nf => Ok(false),
            _ => Err(self.unexpected("delete", &r)),
        }
    }

    /// Set a new expiry on `key` without rewriting it; true if it existed.
    pub async fn touch(&self, key: &Key, ttl_secs: u32) -> Result<bool, McError> {
        self.touch_within(key, ttl_secs, self.inner.opts.operation_timeout)
            .await
    }

    /// [`NodeClient::touch`] bounded by `limit` (see [`NodeClient::get_within`]).
    pub async fn touch_within(
        &self,
        key: &Key,
        ttl_secs: u32,
        limit: Duration,
    ) -> Result<bool, McError> {
        let r = self
            .call(Command::Touch(key.clone(), ttl_secs), limit)
            .await?;
        match r.status {
            Status::Hd => Ok(true),
            Status::En => Ok(false),
            _ => Err(self.unexpected("touch", &r)),
        }
    }

    /// Health probe: one `mn` round trip.
    pub async fn noop(&self) -> Result<(), McError> {
        self.noop_within(self.inner.opts.operation_timeout).await
    }

    /// [`NodeClient::noop`] bounded by `limit` (see [`NodeClient::get_within`]).
    pub async fn noop_within(&self, limit: Duration) -> Result<(), McError> {
        let r = self.call(Command::Noop, limit).await?;
        match r.status {
            Status::Mn => Ok(()),
            _ => Err(self.unexpected("noop", &r)),
        }
    }

    /// Every key the node holds, with its expiry, from `lru_crawler metadump all` on a
    /// separate short-lived connection (bounded by `ClientOptions::metadump_timeout`).
    pub async fn metadump(&self) -> Result<Vec<DumpedKey>, McError> {
        metadump::dump(self.inner.addr, &self.inner.opts).await
    }

    /// [`NodeClient::metadump`] without the list: each key goes to `sink` as its line arrives,
    /// so memory stays flat for any number of items. The flag is true for keys of a second
    /// LRU walk (servers without `metadump hash`), which may repeat keys already given.
    pub async fn metadump_each(
        &self,
        sink: &mut dyn FnMut(DumpedKey, bool),
    ) -> Result<(), McError> {
        metadump::dump_each(self.inner.addr, &self.inner.opts, sink).await
    }

    fn check_size(&self, size: usize) -> Result<(), McError> {
        let max = self.inner.opts.max_value_size;
        if size > max {
            return Err(McError::ValueTooLarge { size, max });
        }
        Ok(())
    }

    fn unexpected(&self, op: &str, r: &Response) -> McError {
        McError::Protocol {
            addr: self.inner.addr,
            detail: format!("unexpected {:?} answering {op}", r.status),
        }
    }

    /// Send one command and wait for its response, within `limit`.
    async fn call(&self, cmd: Command, limit: Duration) -> Result<Response, McError> {
        let addr = self.inner.addr;
        let op = cmd.op();
        let (reply, rx) = oneshot::channel();
        let (submitted, _in_flight) = pool::submit(&self.inner, Request { cmd, reply })?;
        let exchange = async {
            if let Submitted::Wait(sender, req) = submitted {
                sender.send(req).await.map_err(|_| McError::Closed)?;
            }
            rx.await.map_err(|_| McError::Closed)?
        };
        let resp = tokio::time::timeout(limit, exchange)
            .await
            .map_err(|_| McError::Timeout { addr, op })??;
        if resp.status == Status::ServerError {
            return Err(McError::Server {
                addr,
                detail: preview(&resp.value),
            });
        }
        Ok(resp)
    }
}
