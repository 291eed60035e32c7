//! [`ClusterPartitions`]: which Redis Cluster master serves a tenant, for
//! one breaker per master ([`ResilientStore::partitioned`](crate::store::ResilientStore::partitioned)).
//!
//! The slot of a tenant's keys is Redis Cluster's: `CRC16(tag) mod 16384`,
//! CRC16-XMODEM (polynomial 0x1021, initial value 0) over the hash tag — the
//! bytes between the first `{` of the key and the next `}` — which for the
//! store's keys `{prefix}{{tenant}}:…` is the tenant id (or, when the prefix
//! holds a `{`, what the same rule picks). The slot → master map comes from
//! `CLUSTER SLOTS`, asked through the store's own cluster connection at
//! start and then every `refresh` (1 s by default) by a background task that
//! ends when the last clone is dropped. Between a failover and the next
//! refresh, a moved slot still maps to its former master (whose breaker may
//! be open): at most one refresh interval of degraded answers for those
//! tenants, on top of the failover itself.
//!
//! One breaker per master is not enough on its own with one shared cluster
//! connection: redis-rs's cluster connection holds **every** request while
//! it refreshes its slot map, which it does again and again while a master
//! is down, so tenants of healthy masters miss their timeouts too.
//! [`ClusterShardStore`] gives each master's slots a cluster connection of
//! their own (one [`RedisStore`] per master at connection time), and reads
//! the slot map through one more: a failing master stalls only the
//! connection of its own slots, and a `CLUSTER SLOTS` that lands on it
//! stalls no shard.

use std::sync::{Arc, Weak};
use std::time::Duration;

use arc_swap::ArcSwap;
use redis::{RedisResult, Value};

use super::resilient::Partitions;
use super::RedisStore;
use crate::tenant::TenantId;

/// Slots of a Redis Cluster.
const SLOTS: usize = 16_384;
/// No master known for a slot.
const UNKNOWN: u16 = u16::MAX;

/// The masters of a Redis Cluster by slot, refreshed in the background. See
/// the [module documentation](self).
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use tower_tenancy::store::{ClusterPartitions, RedisStore, ResilientStore};
///
/// let redis = RedisStore::connect_cluster(["redis://127.0.0.1:7000"]).await?;
/// let masters = ClusterPartitions::discover(&redis, Duration::from_secs(1)).await?;
/// let store = ResilientStore::new(redis).partitioned(masters);
/// for (master, state) in store.breaker_states() {
///     println!("{master}: {state:?}");
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClusterPartitions {
    inner: Arc<Inner>,
}

struct Inner {
    prefix: parking_lot::RwLock<Arc<str>>,
    store: RedisStore,
    map: ArcSwap<SlotMap>,
}

struct SlotMap {
    /// Index into `masters` per slot, or [`UNKNOWN`].
    slots: Box<[u16]>,
    masters: Vec<Arc<str>>,
}

impl std::fmt::Debug for ClusterPartitions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterPartitions")
            .field("masters", &self.masters())
            .finish()
    }
}

impl ClusterPartitions {
    /// Reads the slot map of the cluster behind `store` (which must come
    /// from [`RedisStore::connect_cluster`] or
    /// [`RedisStore::from_cluster_connection`]) and refreshes it every
    /// `refresh` on the current Tokio runtime.
    ///
    /// ```no_run
    /// # async fn run(redis: tower_tenancy::store::RedisStore) -> redis::RedisResult<()> {
    /// # use std::time::Duration;
    /// use tower_tenancy::store::ClusterPartitions;
    /// let masters = ClusterPartitions::discover(&redis, Duration::from_secs(1)).await?;
    /// println!("{:?}", masters.masters());
    /// # Ok(())
    /// # }
    /// ```
    pub async fn discover(store: &RedisStore, refresh: Duration) -> RedisResult<Self> {
        if store.cluster_connection().is_none() {
            return Err(redis::RedisError::from((
                redis::ErrorKind::InvalidClientConfig,
                "ClusterPartitions needs a Redis Cluster store",
            )));
        }
        let map = fetch(store).await?;
        let inner = Arc::new(Inner {
            prefix: parking_lot::RwLock::new(Arc::from(store.key_prefix())),
            store: store.clone(),
            map: ArcSwap::from_pointee(map),
        });
        let weak = Arc::downgrade(&inner);
        tokio::spawn(refresh_every(weak, refresh.max(Duration::from_millis(10))));
        Ok(Self { inner })
    }

    /// Reads the slot map again now.
    ///
    /// ```no_run
    /// # async fn run(masters: tower_tenancy::store::ClusterPartitions) -> redis::RedisResult<()> {
    /// masters.refresh().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn refresh(&self) -> RedisResult<()> {
        let map = fetch(&self.inner.store).await?;
        self.inner.map.store(Arc::new(map));
        Ok(())
    }

    /// The masters (`host:port`) serving at least one slot.
    ///
    /// ```no_run
    /// # fn run(masters: tower_tenancy::store::ClusterPartitions) {
    /// assert!(!masters.masters().is_empty());
    /// # }
    /// ```
    pub fn masters(&self) -> Vec<Arc<str>> {
        self.inner.map.load().masters.clone()
    }

    /// The master serving `tenant`'s keys, when known.
    ///
    /// ```no_run
    /// # fn run(masters: tower_tenancy::store::ClusterPartitions) {
    /// let master = masters.master_of(&"acme".parse().unwrap());
    /// # }
    /// ```
    pub fn master_of(&self, tenant: &TenantId) -> Option<Arc<str>> {
        let slot = slot_of(&self.inner.prefix.read(), tenant.as_str());
        let map = self.inner.map.load();
        let index = map.slots[slot as usize];
        (index != UNKNOWN).then(|| map.masters[index as usize].clone())
    }
}

/// A Redis Cluster counter store with one cluster connection per master
/// (see the [module documentation](self)): the slots each master served
/// when it connected go through a [`RedisStore`] of their own. Its
/// [`partitions`](Self::partitions) give one breaker per master.
///
/// Decisions, keys and semantics are [`RedisStore`]'s. Cost: one cluster
/// connection (a connection to each master) per master, so `masters²`
/// connections per instance.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_tenancy::store::{ClusterShardStore, FailurePolicy, ResilientStore};
///
/// let redis = ClusterShardStore::connect(["redis://127.0.0.1:7000"]).await?;
/// let masters = redis.partitions();
/// let store = ResilientStore::new(redis)
///     .policy(FailurePolicy::FailClosed)
///     .partitioned(masters);
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct ClusterShardStore {
    shards: Arc<[RedisStore]>,
    /// Shard per slot.
    slot_shard: Arc<[u16]>,
    partitions: ClusterPartitions,
}

impl std::fmt::Debug for ClusterShardStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterShardStore")
            .field("shards", &self.shards.len())
            .field("partitions", &self.partitions)
            .finish()
    }
}

impl ClusterShardStore {
    /// Connects to the cluster through any of `nodes`, reads its masters
    /// and opens one cluster connection per master. The slot map for the
    /// breakers is refreshed every second.
    ///
    /// ```no_run
    /// # async fn run() -> redis::RedisResult<()> {
    /// use tower_tenancy::store::ClusterShardStore;
    /// let store = ClusterShardStore::connect(["redis://127.0.0.1:7000", "redis://127.0.0.1:7001"]).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect<T: redis::IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> RedisResult<Self> {
        let client = redis::cluster::ClusterClient::new(nodes)?;
        Self::from_client(&client).await
    }

    /// As [`connect`](Self::connect), with a cluster client configured by
    /// the caller (timeouts, TLS, …).
    ///
    /// ```no_run
    /// # async fn run() -> redis::RedisResult<()> {
    /// use std::time::Duration;
    /// use tower_tenancy::store::ClusterShardStore;
    /// let client = redis::cluster::ClusterClient::builder(["redis://127.0.0.1:7000"])
    ///     .connection_timeout(Duration::from_millis(250))
    ///     .build()?;
    /// let store = ClusterShardStore::from_client(&client).await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn from_client(client: &redis::cluster::ClusterClient) -> RedisResult<Self> {
        // The slot map is read through a connection of its own: a `CLUSTER
        // SLOTS` sent to a dead node (and the slot refresh redis-rs starts
        // after it) then holds no shard's admissions.
        let slot_reader = RedisStore::from_cluster_connection(client.get_async_connection().await?);
        let partitions = ClusterPartitions::discover(&slot_reader, Duration::from_secs(1)).await?;
        let first = RedisStore::from_cluster_connection(client.get_async_connection().await?);
        let (slot_shard, masters): (Arc<[u16]>, usize) = {
            let map = partitions.inner.map.load();
            let slots = map
                .slots
                .iter()
                .map(|&i| if i == UNKNOWN { 0 } else { i })
                .collect();
            (slots, map.masters.len().max(1))
        };
        let mut shards = vec![first];
        for _ in 1..masters {
            shards.push(RedisStore::from_cluster_connection(
                client.get_async_connection().await?,
            ));
        }
        Ok(Self {
            shards: shards.into(),
            slot_shard,
            partitions,
        })
    }

    /// Sets the key prefix of every shard (see [`RedisStore::prefix`]).
    ///
    /// ```no_run
    /// # async fn run(store: tower_tenancy::store::ClusterShardStore) {
    /// let store = store.prefix("billing:");
    /// # }
    /// ```
    pub fn prefix(self, prefix: impl Into<String>) -> Self {
        let prefix: String = prefix.into();
        *self.partitions.inner.prefix.write() = Arc::from(prefix.as_str());
        self.map_shards(|s| s.prefix(prefix.clone()))
    }

    /// Sets the clock of every shard (see [`RedisStore::clock`]).
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use tower_tenancy::store::ManualClock;
    /// # async fn run(store: tower_tenancy::store::ClusterShardStore) {
    /// let store = store.clock(Arc::new(ManualClock::new(1_700_000_000_000)));
    /// # }
    /// ```
    pub fn clock(self, clock: Arc<dyn super::Clock>) -> Self {
        self.map_shards(|s| s.clock(clock.clone()))
    }

    fn map_shards(mut self, f: impl Fn(RedisStore) -> RedisStore) -> Self {
        self.shards = self.shards.iter().cloned().map(f).collect();
        self
    }

    /// The masters by slot, for one breaker per master
    /// ([`ResilientStore::partitioned`](crate::store::ResilientStore::partitioned)).
    ///
    /// ```no_run
    /// # fn run(store: tower_tenancy::store::ClusterShardStore) {
    /// println!("{:?}", store.partitions().masters());
    /// # }
    /// ```
    pub fn partitions(&self) -> ClusterPartitions {
        self.partitions.clone()
    }

    /// The store serving `tenant`.
    ///
    /// ```no_run
    /// # fn run(store: tower_tenancy::store::ClusterShardStore) {
    /// let key = store.shard(&"acme".parse().unwrap()).key(
    ///     &"acme".parse().unwrap(),
    ///     &tower_tenancy::store::Algorithm::Gauge,
    ///     "workflows",
    /// );
    /// # }
    /// ```
    pub fn shard(&self, tenant: &TenantId) -> &RedisStore {
        let slot = slot_of(&self.partitions.inner.prefix.read(), tenant.as_str());
        &self.shards[self.slot_shard[slot as usize] as usize % self.shards.len()]
    }
}

impl super::CounterStore for ClusterShardStore {
    fn admit(
        &self,
        tenant: &TenantId,
        checks: &[super::Check],
    ) -> crate::future::MaybeReady<super::StoreResult<super::Admission>> {
        self.shard(tenant).admit(tenant, checks)
    }

    fn peek(
        &self,
        tenant: &TenantId,
        checks: &[super::Check],
    ) -> crate::future::MaybeReady<super::StoreResult<super::Decisions>> {
        self.shard(tenant).peek(tenant, checks)
    }

    fn adjust(
        &self,
        tenant: &TenantId,
        policy: &str,
        delta: i64,
    ) -> crate::future::MaybeReady<super::StoreResult<u64>> {
        self.shard(tenant).adjust(tenant, policy, delta)
    }
}

impl Partitions for ClusterPartitions {
    fn partition(&self, tenant: &TenantId) -> Option<Arc<str>> {
        self.master_of(tenant)
    }

    fn live(&self, partition: &str) -> bool {
        self.inner
            .map
            .load()
            .masters
            .iter()
            .any(|m| &**m == partition)
    }
}

async fn refresh_every(inner: Weak<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let Some(inner) = inner.upgrade() else { return };
        // Bounded, so that a frozen node does not stall the refreshes.
        match tokio::time::timeout(every.max(Duration::from_millis(500)), fetch(&inner.store)).await
        {
            Ok(Ok(map)) => inner.map.store(Arc::new(map)),
            Ok(Err(e)) => tracing::debug!(error = %e, "CLUSTER SLOTS failed; keeping the slot map"),
            Err(_) => tracing::debug!("CLUSTER SLOTS timed out; keeping the slot map"),
        }
    }
}

/// `CLUSTER SLOTS` through the store's cluster connection (a random node).
async fn fetch(store: &RedisStore) -> RedisResult<SlotMap> {
    let mut conn = store.cluster_connection().expect("checked in discover");
    let reply: Value = redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await?;
    parse_slots(&reply).ok_or_else(|| {
        redis::RedisError::from((redis::ErrorKind::Parse, "unexpected CLUSTER SLOTS reply"))
    })
}

/// `[[start, end, [host, port, id, …], replicas…], …]`.
fn parse_slots(reply: &Value) -> Option<SlotMap> {
    let Value::Array(ranges) = reply else {
        return None;
    };
    let mut map = SlotMap {
        slots: vec![UNKNOWN; SLOTS].into_boxed_slice(),
        masters: Vec::new(),
    };
    for range in ranges {
        let Value::Array(range) = range else {
            return None;
        };
        let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(master))) =
            (range.first(), range.get(1), range.get(2))
        else {
            return None;
        };
        let host = match master.first() {
            Some(Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
            Some(Value::SimpleString(s)) => s.clone(),
            _ => return None,
        };
        let Some(Value::Int(port)) = master.get(1) else {
            return None;
        };
        let name = format!("{host}:{port}");
        let index = match map.masters.iter().position(|m| **m == *name) {
            Some(i) => i,
            None => {
                map.masters.push(Arc::from(name));
                map.masters.len() - 1
            }
        };
        let (start, end) = (*start as usize, *end as usize);
        if start > end || end >= SLOTS {
            return None;
        }
        for slot in &mut map.slots[start..=end] {
            *slot = index as u16;
        }
    }
    Some(map)
}

/// The Redis Cluster slot of the keys `{prefix}{{tenant}}:…`.
fn slot_of(prefix: &str, tenant: &str) -> u16 {
    let key = || {
        prefix
            .bytes()
            .chain(std::iter::once(b'{'))
            .chain(tenant.bytes())
            .chain(std::iter::once(b'}'))
    };
    let open = key().position(|b| b == b'{').expect("there is one");
    let tag_len = key()
        .skip(open + 1)
        .position(|b| b == b'}')
        .expect("there is one");
    let crc = if tag_len == 0 {
        // An empty tag: the whole key counts; the store's keys continue
        // with `:kind:policy`, so no single slot (not a cluster-safe prefix).
        crc16(key())
    } else {
        crc16(key().skip(open + 1).take(tag_len))
    };
    crc % SLOTS as u16
}

/// CRC16-XMODEM, as Redis Cluster computes key slots.
fn crc16(bytes: impl Iterator<Item = u8>) -> u16 {
    bytes.fold(0u16, |crc, b| {
        (crc << 8) ^ CRC16_TABLE[(((crc >> 8) as u8) ^ b) as usize]
    })
}

const CRC16_TABLE: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut i = 0;
    while i < 256 {
        let mut crc = (i as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[i] = crc;
        i += 1;
    }
    table
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_match_redis() {
        // CLUSTER KEYSLOT values from Redis 7.
        assert_eq!(crc16(b"123456789".iter().copied()), 0x31C3);
        assert_eq!(slot_of("tt:", "foo"), 12182);
        assert_eq!(slot_of("tt:", "bar"), 5061);
        assert_eq!(slot_of("", "user1000"), 3443);
        // A prefix with a tag of its own decides the slot.
        assert_eq!(slot_of("{foo}:", "anything"), 12182);
    }

    #[test]
    fn parses_cluster_slots() {
        let node = |host: &str, port: i64| {
            Value::Array(vec![
                Value::BulkString(host.as_bytes().to_vec()),
                Value::Int(port),
                Value::BulkString(b"id".to_vec()),
            ])
        };
        let reply = Value::Array(vec![
            Value::Array(vec![
                Value::Int(0),
                Value::Int(8191),
                node("127.0.0.1", 7001),
                node("127.0.0.1", 7004),
            ]),
            Value::Array(vec![
                Value::Int(8192),
                Value::Int(16383),
                node("127.0.0.1", 7000),
            ]),
        ]);
        let map = parse_slots(&reply).unwrap();
        assert_eq!(map.masters.len(), 2);
        assert_eq!(&*map.masters[map.slots[0] as usize], "127.0.0.1:7001");
        assert_eq!(&*map.masters[map.slots[16383] as usize], "127.0.0.1:7000");
        assert!(parse_slots(&Value::Int(3)).is_none());
    }
}
