//! [`RedisStore`] behind Redis Sentinel: the master is found through
//! redis-rs's own Sentinel support ([`SentinelClient`]) and found again
//! after a failover.
//!
//! redis-rs resolves the master once per connection: a
//! [`SentinelClient`] asks the sentinels for the master's address, checks
//! with `ROLE` that the node is a master, and connects to it — it does not
//! follow a failover by itself. The store therefore keeps one multiplexed
//! connection to the current master and asks the Sentinel client for the
//! master again, in a background task, when
//!
//! * a sentinel announces a failover: the store subscribes to
//!   `+switch-master` on one sentinel (through
//!   [`SentinelClient::async_get_sentinel_client`], re-subscribing on another
//!   when it goes, and looking for the master once after each
//!   re-subscription, in case an event was missed); without this, after a
//!   requested failover (`SENTINEL FAILOVER`) the store kept writing to the
//!   old master until the sentinels demoted it, about 10 s later — writes
//!   that are lost;
//! * a call fails in a way that says the master may be gone: an I/O error
//!   (connection lost, refused or timed out) or `READONLY` (the node was
//!   demoted to a replica).
//!
//! The lookup is retried every 25 ms doubling up to 200 ms until a node that
//! says it is a master answers. Meanwhile calls go to the old connection and
//! fail fast when it is dead, so the [`ResilientStore`](super::ResilientStore)
//! around the store applies its failure policy and breaker as for any other
//! outage. A failed call is never retried (the admission script is not
//! idempotent).
//!
//! Limitations: writes the old master accepted after the replica was
//! promoted and before the store switched are lost (Redis replication is
//! asynchronous; `min-replicas-to-write` on the server narrows this); the
//! sentinels' addresses are the ones given at construction (sentinels added
//! later are not discovered).

use std::sync::{Arc, Weak};
use std::time::Duration;

use futures_util::StreamExt;
use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection, PubSub};
use redis::sentinel::{SentinelClient, SentinelServerType};
use redis::{
    AsyncConnectionConfig, Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture,
    RedisResult, ServerErrorKind, Value,
};

use super::RedisStore;

/// First pause between two attempts to find the master; doubled up to
/// [`LAST_RETRY`].
const FIRST_RETRY: Duration = Duration::from_millis(25);
const LAST_RETRY: Duration = Duration::from_millis(200);
/// How often the `+switch-master` listener checks that the store still exists.
const WATCH_CHECK: Duration = Duration::from_secs(1);
/// The sentinels' channel announcing a new master: `name old-ip old-port new-ip new-port`.
const SWITCH_MASTER: &str = "+switch-master";

impl RedisStore {
    /// Connects to the master named `master_name` (the name of its
    /// `sentinel monitor` line) through any of the `sentinels`
    /// (`redis://host:26379`), with redis-rs's Sentinel support, and
    /// follows failovers: when a sentinel announces one (`+switch-master`)
    /// or a call fails because the master is gone (or was demoted), the
    /// store asks the sentinels again in the background and switches to the
    /// promoted replica (see [`store::redis_sentinel`](super::redis_sentinel)
    /// for the details and the writes a failover loses). Calls made
    /// meanwhile fail, and a
    /// [`ResilientStore`](super::ResilientStore) around the store answers
    /// them by its failure policy (RELIABILITY.md, section 8, "Sentinel",
    /// measures how long a failover takes).
    ///
    /// The master is reached without password and on database 0; for
    /// authentication, TLS or another database build the
    /// [`SentinelClient`] yourself and use
    /// [`from_sentinel_client`](Self::from_sentinel_client).
    ///
    /// ```no_run
    /// use std::time::Duration;
    /// use tower_tenancy::store::{RedisStore, ResilientStore};
    /// use tower_tenancy::MemoryStore;
    ///
    /// # async fn run() -> redis::RedisResult<()> {
    /// let redis = RedisStore::connect_sentinel(
    ///     "mymaster",
    ///     ["redis://10.0.0.1:26379", "redis://10.0.0.2:26379", "redis://10.0.0.3:26379"],
    /// )
    /// .await?;
    /// let store = ResilientStore::new(redis)
    ///     .timeout(Duration::from_millis(100))
    ///     .fallback(MemoryStore::new());
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-sentinel")))]
    pub async fn connect_sentinel<T: IntoConnectionInfo>(
        master_name: &str,
        sentinels: impl IntoIterator<Item = T>,
    ) -> RedisResult<Self> {
        let client = SentinelClient::build(
            sentinels.into_iter().collect(),
            master_name.to_owned(),
            None,
            SentinelServerType::Master,
        )?;
        Self::from_sentinel_client(client, master_name, AsyncConnectionConfig::new()).await
    }

    /// A store over a [`SentinelClient`] configured by the caller
    /// (authentication, TLS, database, with
    /// [`SentinelClientBuilder`](redis::sentinel::SentinelClientBuilder)),
    /// connecting to the master with `config` (timeouts). The client must
    /// be built for [`SentinelServerType::Master`] (counters are written)
    /// and `master_name` must be the one it was built with (the store
    /// listens to the sentinels' failover events for it). Fails when no
    /// master can be found now.
    ///
    /// ```no_run
    /// # use tower_tenancy::store::RedisStore;
    /// # async fn run() -> redis::RedisResult<()> {
    /// use redis::sentinel::{SentinelClientBuilder, SentinelServerType};
    /// use redis::{AsyncConnectionConfig, ConnectionAddr};
    ///
    /// let sentinels = [26379, 26380, 26381].map(|port| ConnectionAddr::Tcp("127.0.0.1".into(), port));
    /// let client = SentinelClientBuilder::new(sentinels, "mymaster", SentinelServerType::Master)?
    ///     .set_client_to_redis_password("secret")
    ///     .set_client_to_redis_db(2)
    ///     .build()?;
    /// let config = AsyncConnectionConfig::new().set_response_timeout(Some(std::time::Duration::from_millis(200)));
    /// let store = RedisStore::from_sentinel_client(client, "mymaster", config).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-sentinel")))]
    pub async fn from_sentinel_client(
        client: SentinelClient,
        master_name: &str,
        config: AsyncConnectionConfig,
    ) -> RedisResult<Self> {
        let master_name = master_name.to_owned();
        let sentinel = tokio::sync::Mutex::new(client);
        let (conn, db) = connect_master(&mut *sentinel.lock().await, &config).await?;
        let inner = Arc::new(Inner {
            sentinel,
            config,
            db,
            state: Mutex::new(State {
                conn,
                resolving: false,
                again: false,
            }),
        });
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(watch_switches(Arc::downgrade(&inner), master_name));
        }
        Ok(Self::from_sentinel(SentinelConnection { inner }))
    }
}

/// A connection to the master that Sentinel names, replaced after a
/// failover (see the [module documentation](self)). Cloning shares it.
#[derive(Clone)]
pub(crate) struct SentinelConnection {
    inner: Arc<Inner>,
}

struct Inner {
    sentinel: tokio::sync::Mutex<SentinelClient>,
    config: AsyncConnectionConfig,
    db: i64,
    state: Mutex<State>,
}

struct State {
    /// The connection to the last master found.
    conn: MultiplexedConnection,
    /// Whether a task is looking for the master.
    resolving: bool,
    /// Whether that task must look again once it found one (a failover
    /// was announced while it looked).
    again: bool,
}

/// Asks the sentinels for the master (checked with `ROLE` by redis-rs) and
/// connects to it; the connection and its database.
async fn connect_master(
    sentinel: &mut SentinelClient,
    config: &AsyncConnectionConfig,
) -> RedisResult<(MultiplexedConnection, i64)> {
    let client = sentinel.async_get_client().await?;
    let info = client.get_connection_info();
    let (addr, db) = (info.addr().to_string(), info.redis_settings().db());
    let conn = client
        .get_multiplexed_async_connection_with_config(config)
        .await?;
    tracing::info!(master = %addr, "Redis Sentinel: connected to the master");
    Ok((conn, db))
}

/// Whether `error` says the master may have changed: the connection is
/// lost, refused or timed out, or the node is now a replica.
fn master_may_have_changed(error: &RedisError) -> bool {
    error.is_io_error()
        || error.is_unrecoverable_error()
        || error.kind() == ErrorKind::Server(ServerErrorKind::ReadOnly)
}

impl SentinelConnection {
    fn current(&self) -> MultiplexedConnection {
        self.inner.state.lock().conn.clone()
    }

    /// After a call: on an error that may mean a failover, looks for the
    /// master.
    fn after<T>(&self, result: &RedisResult<T>) {
        let Err(error) = result else { return };
        if master_may_have_changed(error) {
            tracing::warn!(%error, "Redis Sentinel: a call to the master failed");
            look_for_master(&self.inner);
        }
    }
}

/// Starts a task asking the sentinels for the master, unless one runs.
fn look_for_master(inner: &Arc<Inner>) {
    let Ok(runtime) = tokio::runtime::Handle::try_current() else {
        return;
    };
    {
        let mut state = inner.state.lock();
        if state.resolving {
            state.again = true;
            return;
        }
        state.resolving = true;
    }
    runtime.spawn(find_master(Arc::downgrade(inner)));
}

/// Asks the sentinels for the master until one is connected, then makes it
/// the current connection. Ends when the store is dropped.
async fn find_master(inner: Weak<Inner>) {
    let mut pause = FIRST_RETRY;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let found = {
            let mut sentinel = strong.sentinel.lock().await;
            connect_master(&mut sentinel, &strong.config).await
        };
        match found {
            Ok((conn, _)) => {
                let mut state = strong.state.lock();
                state.conn = conn;
                if !std::mem::take(&mut state.again) {
                    state.resolving = false;
                    return;
                }
                pause = FIRST_RETRY;
                continue;
            }
            Err(error) => {
                tracing::debug!(%error, retry_in = ?pause, "Redis Sentinel: no master found yet");
            }
        }
        drop(strong);
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LAST_RETRY);
    }
}

/// Subscribes to `+switch-master` on one of the sentinels.
async fn subscribe(inner: &Inner) -> RedisResult<PubSub> {
    let client = inner
        .sentinel
        .lock()
        .await
        .async_get_sentinel_client()
        .await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(SWITCH_MASTER).await?;
    Ok(pubsub)
}

/// Listens to the sentinels' `+switch-master` events for `master_name` and
/// looks for the master at each; subscribes again (to any sentinel) when
/// the subscription is lost, and then looks for the master once. Ends
/// within [`WATCH_CHECK`] of the store being dropped.
async fn watch_switches(inner: Weak<Inner>, master_name: String) {
    let mut pause = FIRST_RETRY;
    let mut first = true;
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let subscribed = subscribe(&strong).await;
        match subscribed {
            Ok(mut pubsub) => {
                pause = FIRST_RETRY;
                if !std::mem::take(&mut first) {
                    look_for_master(&strong);
                }
                drop(strong);
                let mut messages = pubsub.on_message();
                loop {
                    match tokio::time::timeout(WATCH_CHECK, messages.next()).await {
                        Err(_) if inner.strong_count() == 0 => return,
                        Err(_) => {}
                        Ok(None) => break,
                        Ok(Some(message)) => {
                            let payload: String = message.get_payload().unwrap_or_default();
                            if payload.split(' ').next() != Some(master_name.as_str()) {
                                continue;
                            }
                            let Some(strong) = inner.upgrade() else {
                                return;
                            };
                            tracing::warn!(%payload, "Redis Sentinel: failover announced");
                            look_for_master(&strong);
                        }
                    }
                }
                tracing::debug!("Redis Sentinel: the +switch-master subscription was lost");
            }
            Err(error) => {
                drop(strong);
                tracing::debug!(%error, retry_in = ?pause, "Redis Sentinel: cannot subscribe to +switch-master");
            }
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(LAST_RETRY);
    }
}

impl ConnectionLike for SentinelConnection {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        let mut conn = self.current();
        Box::pin(async move {
            let result = conn.req_packed_command(cmd).await;
            self.after(&result);
            result
        })
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        let mut conn = self.current();
        Box::pin(async move {
            let result = conn.req_packed_commands(pipeline, offset, count).await;
            self.after(&result);
            result
        })
    }

    fn get_db(&self) -> i64 {
        self.inner.db
    }
}
