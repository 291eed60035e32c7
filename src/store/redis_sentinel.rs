//! [`RedisStore`] behind Redis Sentinel: the master is found through
//! redis-rs's own Sentinel support ([`SentinelClient`]) and found again
//! after a failover.
//!
//! redis-rs resolves the master once per connection: a
//! [`SentinelClient`] asks the sentinels for the master's address, checks
//! with `ROLE` that the node is a master, and connects to it — it does not
//! follow a failover by itself. The store's connection
//! ([`SentinelConnection`]) therefore keeps one multiplexed connection to the
//! current master and, when a call fails in a way that says the master may
//! be gone (an I/O error: connection lost, refused or timed out; `READONLY`:
//! the node was demoted to a replica), asks the Sentinel client for the
//! master again in a background task, retrying every 25 ms doubling up to
//! 200 ms until a node that says it is a master answers. Meanwhile calls go
//! to the old connection and fail fast (a dead connection answers at once),
//! so the [`ResilientStore`](super::ResilientStore) around the store applies
//! its failure policy and breaker as for any other outage. A failed call is
//! never retried (the admission script is not idempotent).
//!
//! Limitations (redis-rs 1.x): the new master is found by polling the
//! sentinels after a failure, not by subscribing to their `+switch-master`
//! events, so a master that is replaced while no call fails (a manual
//! `SENTINEL FAILOVER` with the old master still reachable) is noticed only
//! when the old master, now a replica, answers `READONLY`; and the
//! sentinels' own addresses are the ones given at construction (sentinels
//! discovered later are not added).

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, MultiplexedConnection};
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

impl RedisStore {
    /// Connects to the master named `master_name` (the name of its
    /// `sentinel monitor` line) through any of the `sentinels`
    /// (`redis://host:26379`), with redis-rs's Sentinel support, and
    /// follows failovers: when a call fails because the master is gone (or
    /// was demoted), the store asks the sentinels again in the background
    /// and switches to the promoted replica. Calls made meanwhile fail, and a
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
        Self::from_sentinel_client(client, AsyncConnectionConfig::new()).await
    }

    /// A store over a [`SentinelClient`] configured by the caller
    /// (authentication, TLS, database, with
    /// [`SentinelClientBuilder`](redis::sentinel::SentinelClientBuilder)),
    /// connecting to the master with `config` (timeouts). The client must
    /// be built for [`SentinelServerType::Master`]: counters are written.
    /// Fails when no master can be found now.
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
    /// let store = RedisStore::from_sentinel_client(client, config).await?;
    /// # Ok(())
    /// # }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "redis-sentinel")))]
    pub async fn from_sentinel_client(
        client: SentinelClient,
        config: AsyncConnectionConfig,
    ) -> RedisResult<Self> {
        let sentinel = tokio::sync::Mutex::new(client);
        let (conn, db) = connect_master(&mut *sentinel.lock().await, &config).await?;
        let inner = Arc::new(Inner {
            sentinel,
            config,
            db,
            state: Mutex::new(State {
                conn,
                resolving: false,
            }),
        });
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

    /// After a call: on an error that may mean a failover, starts looking
    /// for the master (once at a time).
    fn after<T>(&self, result: &RedisResult<T>) {
        let Err(error) = result else { return };
        if !master_may_have_changed(error) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        {
            let mut state = self.inner.state.lock();
            if state.resolving {
                return;
            }
            state.resolving = true;
        }
        tracing::warn!(%error, "Redis Sentinel: a call to the master failed; asking the sentinels for the master");
        runtime.spawn(find_master(Arc::downgrade(&self.inner)));
    }
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
                state.resolving = false;
                return;
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
