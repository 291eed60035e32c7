//! The Redis counter store: [`RedisStore`], for single servers and Redis
//! Cluster.
//!
//! Every [`admit`](CounterStore::admit) is **one** call of one Lua
//! script (`EVALSHA`, loaded with `SCRIPT LOAD` on `NOSCRIPT`, or `FCALL`:
//! below) that evaluates all checks
//! of the batch atomically with the semantics of [`crate::store`]: a first
//! pass reads every counter and decides, a second pass consumes only when
//! every check allows. A batch of one enforced sliding window (no soft
//! threshold, no lease release to carry), the most common admission, goes
//! to a lean script instead (`window.lua`: `GET`, `PTTL`, one write; the
//! same decisions on the same key; its limit, cost and window packed in one
//! argument of little-endian doubles) that costs Redis about a fifth of the
//! general one (BENCHMARKS.md §4). Both answer a string of little-endian
//! doubles, cheaper for Redis to send than an array; the lean script
//! answers an allowed check as one integer, cheaper still. The three-rule
//! plan — one enforced sliding window, calendar quota and concurrency limit
//! without soft thresholds, in any order — goes to a third script,
//! `plan.lua`: the same decisions, keys and writes as the general one for
//! that batch, with its numbers packed in one argument, no per-check tables,
//! the time from the window's key, the quota's integer read by counting it
//! up (`INCR`, taken back with `DECRBY` when that crossed the quota), and
//! the leases counted with `ZCOUNT` (under a third of the general script's
//! cost; BENCHMARKS.md §4); its common admission (the window on its fast
//! path, 16- or 64-bit counts, a quota of a known period — a month's bounds
//! come from the host's wall clock and are used when the store's time falls
//! in them —, one lease unit) is decided first, in a straight line.
//! [`peek`](CounterStore::peek) runs the general script in dry-run mode.
//!
//! `window.lua` and `plan.lua`, the two lean scripts, are called as Redis
//! functions (`FCALL`, Redis 7+), which cost the server less than
//! `EVALSHA` of the same code (BENCHMARKS.md §4): the store registers each
//! as a library of one function, both named `tt_window_` or `tt_plan_` and
//! the first 16 hex digits of the script's SHA-1, so that instances of
//! different versions during a rolling upgrade each call their own code.
//! Still one round trip per admission: a library is loaded (`FUNCTION LOAD
//! REPLACE`, on every master of a Cluster) only when a call answers that
//! its function is not found (a new or flushed server), then the call is
//! sent again, as a script is loaded on `NOSCRIPT`. A server without
//! `FCALL` (Redis 6.2, or the command renamed or not allowed to the
//! store's user) answers so once; the store then calls both scripts with
//! `EVALSHA` for good. What stays on the server, like scripts in its script
//! cache: one library per version of each script (about 8 KB and 21 KB of
//! source, and the compiled code), kept by `FUNCTION LOAD` in the RDB and
//! AOF and on replicas, until `FUNCTION DELETE` or `FUNCTION FLUSH`. The
//! general script (`admit.lua`, and [`peek`](CounterStore::peek)), lease
//! renewal and gauge adjustment are still called with `EVALSHA`. (One
//! difference from `EVALSHA`: a server over `maxmemory` without eviction
//! refuses the whole `FCALL` with `OOM`, where the script ran until its
//! first write; admissions fail either way, and the store's failure policy
//! applies.)
//!
//! [`RedisStore::connect`] opens [`RedisStore::CONNECTIONS`] (4)
//! multiplexed connections to the server; each call takes the first with
//! the fewest calls in flight (more decisions per second than one
//! connection with 16 calls in flight; the same decisions).
//!
//! The time is the server's (`TIME`), so instances with skewed
//! clocks agree; a test clock can be configured with [`RedisStore::clock`]
//! (it drives windows and periods; leases always expire on the server's
//! clock, since their TTL guards against crashed clients in real time).
//!
//! # Key layout
//!
//! `{prefix}{{tenant}}:{kind}:{policy}`, e.g. `tt:{acme}:sb2:api_calls_per_minute`.
//! The tenant is a hash tag, so all keys of a tenant live in one Redis Cluster
//! slot and a batch is cluster-safe. The default prefix is `tt:`.
//!
//! | algorithm | key | type | content | expiry |
//! |---|---|---|---|---|
//! | sliding window `W` (8 sub-buckets of `b = ceil(W/8)`) | `tt:{t}:sb2:p` | string | 37 or 97 bytes, little-endian: `w` (f64, the window ms), `head` (f64, index `floor(t/b)` of the newest bucket), `off` (u8: bucket `head − off` is the oldest with a count, 9: none), `total` (the sum of the nine counts), the counts of buckets `head`, `head − 1`, …, `head − 8`; `total` and counts as u16 while `total` ≤ 65 535 (37 bytes), else f64 (97) | `PXAT (head+1)·b + W − 1` on the server's clock, when the newest bucket stops counting (with a test clock: `PX`, relative) |
//! | two-counter window `W` | `tt:{t}:sw:p` | hash | `s` window start ms, `c` current count, `p` previous count | when both windows are over (≤ 2W) |
//! | GCRA | `tt:{t}:gc:p` | hash | `m`, `n`: the theoretical arrival time, ms and ns | 1 s after the bucket is full again |
//! | sliding log `W` | `tt:{t}:sl:p` | sorted set | member `n:units`, score = ms; `n` = the sequence after this entry | W after the newest entry |
//! | (its sequence) | `tt:{t}:sq:p` | string | the units ever written to the log (`INCRBY units`) | same as the log |
//! | calendar (period `h`/`d`/`w`/`m`) | `tt:{t}:cald:p` (`calh`, `calw`, `calm`) | string | the count, an integer (`INCRBY`); with a test clock `start:count`, the period's start ms and the count | `PXAT` the period's last ms on the server's clock, so a live key is the current period's (with a test clock: `PX` to the period's end + 1 s, relative) |
//! | concurrency | `tt:{t}:cc:p` | sorted set | one member per unit held: `lease-id:units`, then `lease-id.2:0` … `lease-id.units:0`; score = lease expiry ms; and (`plan.lua`) one marker per bucket of lease expiries: the expiry's decimal digits without the last `k`, score 0 (below) | at least `lease_ttl` after the last admission or renewal (`plan.lua`: the end of the bucket of its lease's expiry, at most `10^k` ms after it) |
//! | gauge | `tt:{t}:g:p` | string | integer level | none |
//!
//! Expiries are relative (`PEXPIRE`, so that a test clock far from the
//! server's works too) and set by every admission that consumes, except the
//! sliding window's: its expiry is absolute on the server's clock and stays
//! while the newest bucket does (an admission in the same bucket rewrites
//! `total` and the newest count in place, `SETRANGE`), so that the lean
//! script reads the server's time from it (`now = expiry − PTTL`, the same
//! millisecond `TIME` gives) instead of calling `TIME`. Its first layout
//! (`tt:{t}:sb:p`, a hash) is never read again: those keys expire within
//! `W + W/8` of an upgrade, and the counts they held are not carried over
//! (during a rolling upgrade, old and new instances count apart).
//! The sliding log is counted without reading its window: the units in it
//! are the sequence minus `n − units` of its oldest entry (two `O(log N)`
//! reads; a refusal reads the oldest entries until they free enough for its
//! `retry`). Its first layout counted one per entry (`INCR`): when the
//! sequence does not fit the entries (it was lost, or is behind them) the
//! script sums the window as before; during a rolling upgrade, an entry of
//! cost > 1 that an older instance writes among newer ones counts as 1 until
//! it leaves the window (entries of cost 1, the usual, count exactly).
//! Stores sharing counters must all use the server's clock or all the same
//! test clock. The window start stored with a count, and the quota's
//! expiry at the end of its period (its start under a test clock), mean
//! that a stale count is never read as the current one. The quota's first
//! layout (`tt:{t}:cal:p`, a hash `{s, c, k}`) is never read again: those
//! keys expire at the end of their period + 1 s, and their counts are not
//! carried over, so in the period of an upgrade a tenant may be admitted
//! up to its quota again; during a rolling upgrade, old and new instances
//! count apart (each up to the quota). `plan.lua` on the server's clock
//! counts a quota up before it knows whether the count stays (once the
//! window and the concurrency limit allowed: `INCR`'s answer is the count,
//! one call instead of `GET` and `INCRBY`) and takes it back when it
//! crossed the quota (`DECRBY`, or `DEL` when the key was new): the stored
//! count is the same, but such a refusal writes (and replicates) two
//! commands; a new key gets `PEXPIREAT` the period's last ms, in the same
//! call. Changing a quota's period starts
//! another key (another count, as the memory store); changing it back
//! within the same period finds the first key's count again.
//! Expired leases are never counted: the general script removes them
//! (`ZREMRANGEBYSCORE`) before a new one is added, `plan.lua` once per
//! bucket of lease expiries. `plan.lua` does not read the set's `PTTL` on
//! each admission (about 3 k instructions of Redis per call): lease
//! expiries fall in buckets of `10^k` ms, the largest power of ten up to
//! the lease TTL (at most 10<sup>6</sup>: 100 s buckets for the default 5
//! minutes), and the set holds a marker member for a bucket once its expiry
//! reaches that bucket's end. The marker (the expiry's digits without the
//! last `k`: no `:`, so never a lease; score 0, so never counted) is added
//! in the same `ZADD` as the lease, whose answer (members added: 2) tells
//! when it is new; then, once per bucket, the script removes the expired
//! leases and the older markers, and raises the set's expiry to the
//! bucket's end when it is below (no script lowers it; renewals raise it as
//! before). So the set outlives its longest lease, expired leases leave
//! within one bucket (≤ `lease_ttl`) of their expiry while the set is in
//! use, and an unused set — its last members released, one marker left —
//! expires within one bucket of its last lease's expiry (before: at once
//! when empty, else up to `2 × lease_ttl` after the last admission); a
//! marker is about 10 bytes of the listpack. This relies on a lease id
//! being new at its admission (a random 64-bit prefix per store and a
//! counter). Sets from before the markers (no marker, expiry `2 ×
//! lease_ttl`) get one at their next admission; an older instance during a
//! rolling upgrade removes the markers with the expired leases when it
//! extends a set, which only makes the next newer call add one again.
//! A lease of `k` units is `k` members, so that `plan.lua` counts the
//! units held with `ZCOUNT` instead of reading the set; the general script
//! sums the units of the members (`lease-id:k` counts `k`, the others 0),
//! which counts a lease of an instance from before this layout (one member
//! `lease-id:k`) as `plan.lua` does not: during a rolling upgrade such a
//! lease counts 1 there. Denied admissions and dry runs write nothing.
//!
//! # Semantics
//!
//! The decisions are those of the [`MemoryStore`](crate::store::MemoryStore)
//! under the same clock (the tests compare both on random batches): a dry run
//! reports what an admission would (the level after the cost when every check
//! allows), a check of cost 0 consumes nothing and takes no lease, and the
//! calendar periods are computed in Lua with the same UTC civil-date
//! arithmetic. Leases expire after `lease_ttl` (the memory store's leases
//! only end when dropped: a crashed process loses them anyway). One more
//! difference, only with a test clock that steps back: the memory store
//! brings a counter forward to the current window or period on every call,
//! dry runs and denials included, while Redis does so only on admissions
//! (which then keep a later window's state, as the memory store does). The
//! same holds for a sliding window whose window changes (a new plan): the
//! memory store moves the counter to the new window on the first call,
//! Redis on the first admission that consumes, so a dry run or a refusal
//! under the new window followed by a return to the old one finds the old
//! buckets in Redis and the moved ones in memory.
//!
//! # Memory per key
//!
//! Measured with `MEMORY USAGE key SAMPLES 0` on Redis 7.0.15 (jemalloc
//! 5.3.0, default configuration) on an x86-64 Linux VM with 2 AMD EPYC cores,
//! 2026-11-23 (the sliding window's row: 2026-12-03, after its layout
//! change), key names like `tt:{tenant-42}:sw:api_calls` (the test
//! `memory_usage_per_key` in `tests/store_redis.rs` prints these figures):
//!
//! | key | 1 entry | 100 entries | 1 000 entries |
//! |---|---|---|---|
//! | sliding window (string, 37 bytes; 97 bytes once a window holds more than 65 535) | 120 B | 120 B | 120 B (184 B wide) |
//! | two-counter window (hash, 3 fields) | 104 B | 104 B | 104 B |
//! | sliding log (sorted set) | 104 B | 1 864 B | 94 144 B |
//! | sliding log sequence (string) | 72 B | 72 B | 72 B |
//! | calendar (integer string; 2026-12-03) | 72 B | 72 B | 72 B |
//! | concurrency (sorted set of leases) | 120 B | 3 656 B | 118 192 B |
//! | gauge (string) | 72 B | 72 B | 72 B |
//!
//! ("entries" are admitted requests in the window, or leases held.) A
//! sorted set stays a compact listpack (about 18 B per sliding-log entry, 35 B
//! per lease) up to `zset-max-listpack-entries` members (128 by default);
//! beyond that Redis converts it to a skip list of roughly 95 B per entry
//! (sliding log) or 118 B per lease. Sliding logs with large limits cost
//! accordingly: prefer the sliding window (120 B whatever the limit) unless
//! exactness matters, or raise `zset-max-listpack-entries`.
//!
//! # Atomicity and retries
//!
//! A call is not retried by the store: if the connection drops after the
//! server ran the script but before the reply arrived, a retry would count
//! twice. For the same reason a call that timed out (for example against a
//! frozen server) may still be counted once the server answers. Wrap the
//! store in a [`ResilientStore`](crate::store::ResilientStore) for timeouts,
//! a failure policy and a breaker.
//!
//! # Leases
//!
//! Lease ids are a random 64-bit prefix per store (per [`connect`](RedisStore::connect))
//! and a counter. Dropping a [`Lease`] spawns a task on the current Tokio
//! runtime that removes its members (`ZREM`), and records them as pending:
//! the next call of the same store for the same tenant removes them first,
//! in the same script call, so that a request made after a lease was dropped
//! never finds it held even if the task has not run yet. Without a runtime,
//! or while Redis is unreachable, pending releases wait for that next call
//! (at most 65 536 are kept); a lease never released expires after its
//! `lease_ttl`.
//!
//! A lease held by a live request is **renewed** ([`Lease::renewing`]):
//! every third of its `lease_ttl` one `renew.lua` call (`ZADD XX` of each
//! member with the expiry `TIME + lease_ttl`, on the server's clock) keeps
//! it alive for as long as the response body or stream lives, however long
//! that is. A member that has already expired is not brought back (its slot
//! may have gone to another request; a warning is logged). When the
//! process holding it dies, renewals stop and the slot comes back within
//! `lease_ttl` of the last renewal (RELIABILITY.md has the measured times).
//!
//! An admission whose answer never arrives — cancelled by a
//! timeout or because its request went away while it waited for Redis, or
//! failed after it was sent — releases its lease id the same way, since the
//! script may have run and taken it (otherwise the slot would stay taken
//! until `lease_ttl`, 5 minutes by default).
//!
//! A **gauge** unit reserved by such an admission is *not* given back: the
//! store cannot tell whether the script ran (a call that timed out may have
//! run, or may still run, or may never have reached the server), and a
//! blind `DECRBY` when it did not run would lower the level below the
//! resources that exist — admitting above the limit. Keeping it errs
//! towards refusing, by at most the reserved units per lost answer, until
//! the application corrects the level (`adjust`). It is also what the
//! request needs when a [`ResilientStore`](crate::store::ResilientStore)
//! fails open or falls back: the request is then served and may create the
//! resource the unit stands for. (The admission layer gives a gauge unit
//! back only when the store answered and the response is not a success.)
//!
//! # Limits
//!
//! Numbers travel as Lua doubles: limits, costs, times and durations are
//! clamped below 2<sup>53</sup> (a cost above its limit stays above it), and
//! the sliding-window products `prev × W` and the sum of a window's nine
//! bucket counts are exact only below that bound. A concurrency check of
//! more than 4 096 units is refused as one above its limit (a lease holds
//! one member per unit). Redis 6.2 or later (`SET … PXAT`).
//! Gauges are Redis integers and saturate at 2<sup>63</sup> − 1. The checks
//! of one batch should name distinct policies.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::{
    Cmd, ErrorKind, IntoConnectionInfo, Pipeline, RedisError, RedisFuture, RedisResult, Script,
    ServerErrorKind, Value,
};

use super::calendar::period_bounds;
use super::memory::GcraParams;
use super::{
    Admission, Algorithm, Check, Clock, CounterStore, Decision, Decisions, Lease, StoreError,
    StoreResult,
};
use crate::future::MaybeReady;
use crate::plan::Period;
use crate::tenant::TenantId;

/// Largest integer a Lua double represents exactly.
const MAX_EXACT: u64 = (1 << 53) - 1;

/// Most units one admission may hold of a concurrency limit: a lease holds
/// one member per unit in the set (so that `plan.lua` counts them with
/// `ZCOUNT`). A check of more units is refused, as a cost above its limit.
const MAX_LEASE_UNITS: u64 = 4096;

/// A [`CounterStore`] in Redis or Redis Cluster, shared by every instance of
/// a service. See the [module documentation](self) for the key layout.
///
/// Cloning is cheap and shares the connection.
///
/// ```no_run
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_tenancy::store::{Algorithm, Check, CounterStore, RedisStore};
/// use tower_tenancy::TenantId;
///
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.prefix("myapp:");
/// let tenant: TenantId = "acme".parse()?;
/// let checks = [
///     Check::new("api_calls_per_minute", Algorithm::SlidingWindow { window: Duration::from_secs(60) }, 600, 1),
///     Check::new("concurrent", Algorithm::Concurrency { lease_ttl: Duration::from_secs(300) }, 4, 1),
/// ];
/// let admission = store.admit(&tenant, &checks).await?;
/// if admission.allowed() {
///     // serve the request; dropping `admission.lease` frees the concurrency slot
/// }
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct RedisStore {
    /// One connection to a Cluster or through Sentinel; to one server, the
    /// multiplexed connections the calls spread over (`RedisStore::conn`).
    conns: Arc<[Conn]>,
    prefix: Arc<str>,
    clock: Option<Arc<dyn Clock>>,
    shared: Arc<Shared>,
}

struct Shared {
    admit: Script,
    /// The lean path of `admit` for a batch of one sliding window, called
    /// as a Redis function where the server has them.
    window: Function,
    /// The lean path of `admit` for the three-rule plan (rate + quota +
    /// concurrency), called as a Redis function where the server has them.
    plan: Function,
    /// Set once the server has shown it runs no functions (Redis 6.2, or
    /// `FCALL` renamed or not allowed): scripts are called with `EVALSHA`
    /// from then on (both `window` and `plan`).
    no_functions: AtomicBool,
    adjust: Script,
    renew: Script,
    lease_prefix: String,
    lease_seq: AtomicU64,
    /// The calls in flight on each connection (several to one server).
    in_flight: Box<[AtomicUsize]>,
    /// Released leases whose removal has not been confirmed yet. The next
    /// script call for the same tenant removes them first, so that a call
    /// made after a lease was dropped never sees it held (the release task
    /// may not have run yet).
    pending: Mutex<Vec<Release>>,
}

/// A call in flight on one of a store's connections (see `RedisStore::conn`).
struct InFlight {
    shared: Arc<Shared>,
    index: usize,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.shared.in_flight[self.index].fetch_sub(1, Ordering::Relaxed);
    }
}

/// One member of a concurrency set to remove.
struct Release {
    lease: u64,
    tenant: TenantId,
    key: String,
    member: String,
}

/// Most releases kept pending (a runtime-less process, a long outage); the
/// oldest beyond are left to expire.
const MAX_PENDING: usize = 65_536;

/// A single-server or a cluster connection, so that both give one store type.
#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
    #[cfg(feature = "redis-sentinel")]
    Sentinel(super::redis_sentinel::SentinelConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Single(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            #[cfg(feature = "redis-sentinel")]
            Conn::Sentinel(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Single(c) => c.req_packed_commands(pipeline, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
            #[cfg(feature = "redis-sentinel")]
            Conn::Sentinel(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Single(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            #[cfg(feature = "redis-sentinel")]
            Conn::Sentinel(c) => c.get_db(),
        }
    }
}

impl RedisStore {
    /// How many connections [`connect`](Self::connect) opens to the server.
    ///
    /// Each is multiplexed (any number of calls in flight); a call takes
    /// the first with the fewest calls in flight, so one caller at a time
    /// keeps to one connection and concurrent calls spread over all. Four
    /// carried 1.07–1.38× the decisions/s of one with 16 calls in flight
    /// and 0.90–1.35× with 64 and 256, in seven runs (BENCHMARKS.md §4,
    /// 2026-12-04, 15:19–16:08 UTC), at about the same server time per
    /// call. Each costs the server one client (its buffers
    /// about 37 KB while busy: `CLIENT LIST`, `tot-mem`, Redis 7.0) and the
    /// process one reconnecting [`ConnectionManager`]. A call's script is
    /// atomic whichever connection carries it, and a lease's pending
    /// release travels with the tenant's next call, so the decisions are
    /// those of one connection. A Cluster or Sentinel store keeps one
    /// connection (the cluster client multiplexes one per node).
    pub const CONNECTIONS: usize = 4;

    /// Connects to one Redis server (`redis://host:port/db`, `rediss://…`)
    /// with [`CONNECTIONS`](Self::CONNECTIONS) multiplexed connections, each
    /// a [`ConnectionManager`], which reconnects by itself (retries with
    /// exponential backoff capped at one second).
    ///
    /// ```no_run
    /// # use tower_tenancy::store::RedisStore;
    /// # async fn run() -> redis::RedisResult<()> {
    /// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect(url: impl IntoConnectionInfo) -> RedisResult<Self> {
        let client = redis::Client::open(url)?;
        let config = ConnectionManagerConfig::new().set_max_delay(Duration::from_secs(1));
        let mut managers = Vec::with_capacity(Self::CONNECTIONS);
        for _ in 0..Self::CONNECTIONS {
            managers
                .push(ConnectionManager::new_with_config(client.clone(), config.clone()).await?);
        }
        Ok(Self::from_connection_managers(managers))
    }

    /// Connects to a Redis Cluster through any of its `nodes`.
    ///
    /// ```no_run
    /// # use tower_tenancy::store::RedisStore;
    /// # async fn run() -> redis::RedisResult<()> {
    /// let store = RedisStore::connect_cluster([
    ///     "redis://10.0.0.1:6379",
    ///     "redis://10.0.0.2:6379",
    ///     "redis://10.0.0.3:6379",
    /// ])
    /// .await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_cluster<T: IntoConnectionInfo>(
        nodes: impl IntoIterator<Item = T>,
    ) -> RedisResult<Self> {
        let client = redis::cluster::ClusterClient::new(nodes)?;
        let conn = client.get_async_connection().await?;
        Ok(Self::from_cluster_connection(conn))
    }

    /// A store over a [`ConnectionManager`] configured by the caller
    /// (timeouts, retries, TLS, …).
    ///
    /// ```no_run
    /// # use tower_tenancy::store::RedisStore;
    /// # async fn run() -> redis::RedisResult<()> {
    /// use redis::aio::{ConnectionManager, ConnectionManagerConfig};
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let config = ConnectionManagerConfig::new().set_number_of_retries(2);
    /// let manager = ConnectionManager::new_with_config(client, config).await?;
    /// let store = RedisStore::from_connection_manager(manager);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_connection_manager(manager: ConnectionManager) -> Self {
        Self::from_connection_managers([manager])
    }

    /// A store over several connections to one server, which its calls
    /// spread over as [`CONNECTIONS`](Self::CONNECTIONS) says
    /// ([`connect`](Self::connect) opens that many).
    ///
    /// # Panics
    ///
    /// If `managers` is empty.
    ///
    /// ```no_run
    /// # use tower_tenancy::store::RedisStore;
    /// # async fn run() -> redis::RedisResult<()> {
    /// use redis::aio::ConnectionManager;
    /// let client = redis::Client::open("redis://127.0.0.1:6379")?;
    /// let mut managers = Vec::new();
    /// for _ in 0..8 {
    ///     managers.push(ConnectionManager::new(client.clone()).await?);
    /// }
    /// let store = RedisStore::from_connection_managers(managers);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_connection_managers(managers: impl IntoIterator<Item = ConnectionManager>) -> Self {
        let conns: Arc<[Conn]> = managers.into_iter().map(Conn::Single).collect();
        assert!(!conns.is_empty(), "a RedisStore needs a connection");
        Self::from_conns(conns)
    }

    /// A store over a cluster connection configured by the caller.
    ///
    /// ```no_run
    /// # use tower_tenancy::store::RedisStore;
    /// # async fn run() -> redis::RedisResult<()> {
    /// use std::time::Duration;
    /// let client = redis::cluster::ClusterClient::builder(["redis://127.0.0.1:7000"])
    ///     .response_timeout(Duration::from_millis(200))
    ///     .build()?;
    /// let store = RedisStore::from_cluster_connection(client.get_async_connection().await?);
    /// # Ok(())
    /// # }
    /// ```
    pub fn from_cluster_connection(conn: ClusterConnection) -> Self {
        Self::from_conns(Arc::new([Conn::Cluster(conn)]))
    }

    /// The cluster connection, for [`ClusterPartitions`](super::ClusterPartitions).
    pub(crate) fn cluster_connection(&self) -> Option<ClusterConnection> {
        match &self.conns[0] {
            Conn::Cluster(c) => Some(c.clone()),
            _ => None,
        }
    }

    /// A store over a connection that follows Sentinel's master.
    #[cfg(feature = "redis-sentinel")]
    pub(crate) fn from_sentinel(conn: super::redis_sentinel::SentinelConnection) -> Self {
        Self::from_conns(Arc::new([Conn::Sentinel(conn)]))
    }

    /// The key prefix.
    pub(crate) fn key_prefix(&self) -> &str {
        &self.prefix
    }

    /// The connection for the next call: of several to one server, the
    /// first of those with the fewest calls in flight, counted until the
    /// returned guard drops. So one caller at a time keeps to one
    /// connection, and concurrent calls spread over all.
    fn conn(&self) -> (Conn, Option<InFlight>) {
        if self.conns.len() == 1 {
            return (self.conns[0].clone(), None);
        }
        let counts = &self.shared.in_flight;
        let index = (0..counts.len())
            .min_by_key(|&i| counts[i].load(Ordering::Relaxed))
            .unwrap_or(0);
        counts[index].fetch_add(1, Ordering::Relaxed);
        let guard = InFlight {
            shared: self.shared.clone(),
            index,
        };
        (self.conns[index].clone(), Some(guard))
    }

    fn from_conns(conns: Arc<[Conn]>) -> Self {
        let in_flight = conns.iter().map(|_| AtomicUsize::new(0)).collect();
        Self {
            conns,
            prefix: Arc::from("tt:"),
            clock: None,
            shared: Arc::new(Shared {
                admit: Script::new(include_str!("admit.lua")),
                window: Function::new("window", include_str!("window.lua")),
                plan: Function::new("plan", include_str!("plan.lua")),
                no_functions: AtomicBool::new(false),
                adjust: Script::new(include_str!("adjust.lua")),
                renew: Script::new(include_str!("renew.lua")),
                lease_prefix: format!("{:016x}", random_u64()),
                lease_seq: AtomicU64::new(0),
                in_flight,
                pending: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Sets the key prefix (default `tt:`), to share a database between
    /// applications.
    ///
    /// ```no_run
    /// # use tower_tenancy::store::RedisStore;
    /// # async fn run() -> redis::RedisResult<()> {
    /// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.prefix("billing:");
    /// # Ok(())
    /// # }
    /// ```
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = Arc::from(prefix.into());
        self
    }

    /// Takes the time from `clock` instead of the server's `TIME` (for
    /// tests: calendar boundaries, windows sliding). Every instance sharing
    /// the counters must then use the same clock.
    ///
    /// ```no_run
    /// # use std::sync::Arc;
    /// # use tower_tenancy::store::{ManualClock, RedisStore};
    /// # async fn run() -> redis::RedisResult<()> {
    /// let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    /// let store = RedisStore::connect("redis://127.0.0.1:6379").await?.clock(clock.clone());
    /// clock.advance_ms(60_000);
    /// # Ok(())
    /// # }
    /// ```
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The Redis key of `policy`'s counter of `tenant` for `algorithm` (for
    /// inspection and tooling).
    ///
    /// ```no_run
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::{Algorithm, RedisStore};
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let store = RedisStore::connect("redis://127.0.0.1:6379").await?;
    /// let key = store.key(&"acme".parse()?, &Algorithm::SlidingWindow { window: Duration::from_secs(60) }, "api");
    /// assert_eq!(key, "tt:{acme}:sb2:api");
    /// # Ok(())
    /// # }
    /// ```
    pub fn key(&self, tenant: &TenantId, algorithm: &Algorithm, policy: &str) -> String {
        key(&self.prefix, tenant, segment(algorithm), policy)
    }

    fn next_lease(&self) -> (u64, String) {
        let n = self.shared.lease_seq.fetch_add(1, Ordering::Relaxed);
        (n, format!("{}{:x}", self.shared.lease_prefix, n))
    }

    /// Runs the admission script; returns the decisions, whether the batch
    /// was admitted, and the lease when it holds concurrency units.
    fn run(
        &self,
        tenant: &TenantId,
        checks: &[Check],
        admit: bool,
    ) -> impl std::future::Future<Output = StoreResult<(Decisions, Option<Lease>, u64)>> + Send + 'static
    {
        let now = self
            .clock
            .as_ref()
            .map(|c| c.now_ms().min(MAX_EXACT).to_string())
            .unwrap_or_default();
        let has_lease = admit
            && checks
                .iter()
                .any(|c| matches!(c.algorithm, Algorithm::Concurrency { .. }) && c.cost > 0);
        let (lease_no, lease_id) = if has_lease {
            self.next_lease()
        } else {
            (0, String::new())
        };
        let mut keys = Vec::with_capacity(checks.len() + 1);
        let mut args = Vec::with_capacity(5 + checks.len() * 5);
        args.push(if admit { "a" } else { "p" }.to_owned());
        args.push(now);
        args.push(lease_id.clone());
        args.push(checks.len().to_string());
        let mut held = Vec::new();
        // Per held member: its lease TTL in ms and whether its check is shadowed.
        let mut renewal = Vec::new();
        for (index, check) in checks.iter().enumerate() {
            let k = kind(&check.algorithm);
            // Clamped into exact doubles, keeping `cost > limit` when it holds.
            let limit = check.limit.min(MAX_EXACT - 1);
            let cost = match check.algorithm {
                // GCRA: never when above the burst (itself below 2^53).
                Algorithm::Gcra { window, burst } => {
                    let burst = GcraParams::new(window, check.limit, burst).burst;
                    check.cost.min(burst.saturating_add(1))
                }
                _ if check.cost > check.limit => limit + 1,
                // One set member per unit held: more units are refused.
                Algorithm::Concurrency { .. } if check.cost > MAX_LEASE_UNITS => limit + 1,
                _ => check.cost.min(limit),
            }
            .to_string();
            let param = match check.algorithm {
                Algorithm::SlidingWindow { window }
                | Algorithm::SlidingWindowApprox { window }
                | Algorithm::SlidingLog { window } => ms(window).max(1).to_string(),
                Algorithm::Gcra { window, burst } => {
                    let p = GcraParams::new(window, check.limit, burst);
                    format!("{}:{}:{}", p.t, p.cap, p.burst)
                }
                Algorithm::Calendar { period } => match period {
                    Period::Hour => "h",
                    Period::Day => "d",
                    Period::Week => "w",
                    Period::Month => "m",
                }
                .to_owned(),
                Algorithm::Concurrency { lease_ttl } => ms(lease_ttl).max(1).to_string(),
                Algorithm::Gauge => String::new(),
            };
            let main = key(
                &self.prefix,
                tenant,
                segment(&check.algorithm),
                &check.policy,
            );
            if let Algorithm::SlidingLog { .. } = check.algorithm {
                keys.push(main);
                keys.push(key(&self.prefix, tenant, "sq", &check.policy));
            } else {
                if let (true, Algorithm::Concurrency { lease_ttl }) =
                    (has_lease && check.cost > 0, check.algorithm)
                {
                    // One member per unit: `id:units`, then `id.2:0` …
                    // `id.units:0` (none when the cost is above the
                    // limit: never admitted).
                    held.push((main.clone(), format!("{lease_id}:{cost}")));
                    renewal.push((ms(lease_ttl).max(1), check.shadow));
                    let units = if check.cost > check.limit.min(MAX_LEASE_UNITS) {
                        1
                    } else {
                        check.cost
                    };
                    for u in 2..=units {
                        held.push((main.clone(), format!("{lease_id}.{u}:0")));
                        renewal.push((ms(lease_ttl).max(1), check.shadow));
                    }
                }
                keys.push(main);
            }
            let soft = soft_arg(index, check);
            if !soft.is_empty() {
                let kind = match check.algorithm {
                    Algorithm::Calendar { .. } => SOFT_MARK_QUOTA,
                    _ => SOFT_MARK,
                };
                keys.push(key(&self.prefix, tenant, kind, &check.policy));
            }
            args.push(if check.shadow {
                format!("~{k}")
            } else {
                k.to_owned()
            });
            args.push(limit.to_string());
            args.push(cost);
            args.push(param);
            args.push(soft);
        }
        // Releases of this tenant not confirmed yet go first, in the same call.
        let mut released = Vec::new();
        {
            let pending = self.shared.pending.lock();
            let mine = || pending.iter().filter(|r| r.tenant == *tenant);
            args.push(mine().count().to_string());
            for r in mine() {
                keys.push(r.key.clone());
                args.push(r.member.clone());
                released.push(r.lease);
            }
        }
        // The lean script for the common batch: one enforced sliding window
        // without a soft threshold nor releases to carry. Its one argument
        // packs the check's limit, cost and window (and the test clock's
        // time) as little-endian doubles.
        let lean = admit
            && released.is_empty()
            && matches!(checks, [c] if matches!(c.algorithm, Algorithm::SlidingWindow { .. })
                && !c.shadow
                && args[8].is_empty());
        let lean_arg = lean.then(|| {
            let mut packed = Vec::with_capacity(32);
            let numbers = [&args[5], &args[6], &args[7], &args[1]];
            for n in numbers.into_iter().filter(|n| !n.is_empty()) {
                // Integers below 2^53 (clamped above): exact as doubles.
                let n: u64 = n.parse().unwrap_or(0);
                packed.extend_from_slice(&(n as f64).to_le_bytes());
            }
            packed
        });
        // The lean script of the three-rule plan: one each of an enforced
        // sliding window, calendar quota and concurrency limit, without
        // soft thresholds. `plan` gives the index in `checks` of each (in
        // that order), its first argument packs their limits, costs and
        // parameters, the lease member, for a month the bounds of the month
        // this host's wall clock is in (the script uses them when the
        // store's time falls in them, which spares it the calendar
        // arithmetic), and the test clock's time; then come the releases.
        let plan = (admit && !lean && checks.len() == 3)
            .then(|| plan_order(checks))
            .flatten()
            .filter(|_| (0..3).all(|i| args[8 + i * 5].is_empty()));
        let plan_call = plan.map(|order| {
            let mut packed = Vec::with_capacity(112);
            let mut number = |n: &str| {
                let n: u64 = match n {
                    "h" => 1,
                    "d" => 2,
                    "w" => 3,
                    "m" => 4,
                    n => n.parse().unwrap_or(0),
                };
                packed.extend_from_slice(&(n as f64).to_le_bytes());
            };
            for i in order {
                for f in 2..5 {
                    number(&args[4 + i * 5 + f - 1]);
                }
            }
            // Then the lease member and a zero byte, in the same argument.
            let cc = order[2];
            packed.extend_from_slice(format!("{}:{}", args[2], args[4 + cc * 5 + 2]).as_bytes());
            packed.push(0);
            if matches!(
                checks[order[1]].algorithm,
                Algorithm::Calendar {
                    period: Period::Month
                }
            ) {
                let (start, end) = period_bounds(Period::Month, crate::utc::now_ms());
                packed.extend_from_slice(&(start as f64).to_le_bytes());
                packed.extend_from_slice(&(end as f64).to_le_bytes());
            }
            // The test clock's time (none: the server's).
            if !args[1].is_empty() {
                let n: u64 = args[1].parse().unwrap_or(0);
                packed.extend_from_slice(&(n as f64).to_le_bytes());
            }
            let mut plan_keys: Vec<String> = order.iter().map(|&i| keys[i].clone()).collect();
            plan_keys.extend(keys[3..].iter().cloned());
            let mut plan_args = vec![packed];
            plan_args.extend(args[4 + 15 + 1..].iter().map(|a| a.clone().into_bytes()));
            (plan_keys, plan_args)
        });
        // Per check: the limit reported (GCRA: the burst).
        let limits: Vec<u64> = checks
            .iter()
            .map(|c| match c.algorithm {
                Algorithm::Gcra { window, burst } => GcraParams::new(window, c.limit, burst).burst,
                _ => c.limit,
            })
            .collect();
        let (mut conn, in_flight) = self.conn();
        let shared = self.shared.clone();
        let tenant = tenant.clone();
        async move {
            // Until the answer is read, the script may have run and taken the
            // lease without anyone left to release it: a call cancelled by a
            // timeout or by a client that went away, or a connection lost
            // after the call was sent. Then the guard releases it.
            let mut unanswered = Unanswered {
                release: (!held.is_empty())
                    .then(|| (conn.clone(), shared.clone(), tenant.clone(), lease_no, held)),
            };
            let reply: RedisResult<Value> = match (&lean_arg, &plan_call) {
                (Some(packed), _) => {
                    shared
                        .window
                        .call(
                            &shared.no_functions,
                            &mut conn,
                            std::slice::from_ref(&keys[0]),
                            std::slice::from_ref(packed),
                        )
                        .await
                }
                (None, Some((plan_keys, plan_args))) => {
                    shared
                        .plan
                        .call(&shared.no_functions, &mut conn, plan_keys, plan_args)
                        .await
                }
                (None, None) => {
                    let mut invocation = shared.admit.prepare_invoke();
                    for k in &keys {
                        invocation.key(k);
                    }
                    for a in &args {
                        invocation.arg(a);
                    }
                    invocation.invoke_async(&mut conn).await
                }
            };
            drop(in_flight);
            let reply = reply.map_err(|e| StoreError::Backend(e.to_string()))?;
            let mut reply = decode_reply(&reply);
            if let (Some(_), &[used, reset, quota_used, quota_reset, leased]) =
                (plan, reply.as_slice())
            {
                // plan.lua's answer when every check allowed: the five
                // numbers that are not implied.
                reply = vec![
                    1,
                    used,
                    reset,
                    -1,
                    0,
                    1,
                    quota_used,
                    quota_reset,
                    -1,
                    0,
                    1,
                    leased,
                    0,
                    -1,
                    0,
                    1,
                ];
            }
            if let (Some(order), 16) = (plan, reply.len()) {
                // plan.lua answers window, quota, concurrency: back to the
                // checks' order.
                let answered = reply.clone();
                for (slot, &i) in order.iter().enumerate() {
                    reply[i * 5..i * 5 + 5].copy_from_slice(&answered[slot * 5..slot * 5 + 5]);
                }
            }
            if !released.is_empty() {
                shared
                    .pending
                    .lock()
                    .retain(|r| !released.contains(&r.lease));
            }
            if reply.len() != limits.len() * 5 + 1 {
                return Err(StoreError::Backend(format!(
                    "admission script answered {} values for {} checks",
                    reply.len(),
                    limits.len()
                )));
            }
            let decisions = limits
                .iter()
                .zip(reply.chunks_exact(5))
                .map(|(&limit, r)| {
                    let used = r[1].max(0) as u64;
                    Decision {
                        allowed: r[0] == 1,
                        limit,
                        used,
                        remaining: limit.saturating_sub(used),
                        reset: Duration::from_millis(r[2].max(0) as u64),
                        retry_after: (r[3] >= 0).then(|| Duration::from_millis(r[3] as u64)),
                    }
                })
                .collect();
            let admitted = reply[reply.len() - 1] == 1;
            // Shadowed checks consumed only if every check allowed.
            let all = reply.chunks_exact(5).all(|r| r[0] == 1);
            let crossed = reply
                .chunks_exact(5)
                .take(64)
                .enumerate()
                .filter(|(_, r)| r[4] == 1)
                .fold(0u64, |bits, (i, _)| bits | 1 << i);
            // Answered: an admitted batch holds the lease (renewed while it is
            // held); a denied one took nothing.
            let lease = unanswered
                .release
                .take()
                .and_then(|(conn, shared, tenant, n, held)| {
                    let renewed: Vec<_> = held
                        .iter()
                        .zip(&renewal)
                        .filter(|(_, (_, shadow))| all || !shadow)
                        .map(|((key, member), (ttl, _))| (key.clone(), member.clone(), *ttl))
                        .collect();
                    admitted.then(|| {
                        let lease = release_on_drop(conn.clone(), shared.clone(), tenant, n, held);
                        renew_while_held(lease, conn, shared, renewed)
                    })
                });
            Ok((decisions, lease, crossed))
        }
    }
}

/// A script also loaded as a Redis function (Redis 7+), whose `FCALL`
/// costs the server less than the script's `EVALSHA` (BENCHMARKS.md §4):
/// the library and its one function are both named `tt_<name>_<the first
/// 16 hex digits of the script's SHA-1>`, so that versions of the crate
/// never call each other's code. See [`Function::call`].
struct Function {
    script: Script,
    name: String,
    /// The library's code for `FUNCTION LOAD`: the script as the body of
    /// `function(KEYS, ARGV)`.
    library: String,
}

impl Function {
    fn new(name: &str, code: &str) -> Self {
        let script = Script::new(code);
        let name = format!("tt_{name}_{}", &script.get_hash()[..16]);
        let library = format!(
            "#!lua name={name}\nredis.register_function('{name}', function(KEYS, ARGV)\n{code}\nend)\n"
        );
        Self {
            script,
            name,
            library,
        }
    }

    /// Calls the function: one `FCALL` in the steady state. When the server
    /// does not have it yet (a new server, a flushed one), `FUNCTION LOAD
    /// REPLACE` (to every master of a Cluster) and `FCALL` again, as
    /// `NOSCRIPT` loads a script; when that load fails, `EVALSHA` this
    /// time. When the server has no `FCALL` (Redis 6.2; renamed, or not
    /// allowed to this user), `no_functions` is set and every later call
    /// is an `EVALSHA` of the script, which does the same.
    async fn call(
        &self,
        no_functions: &AtomicBool,
        conn: &mut Conn,
        keys: &[String],
        args: &[Vec<u8>],
    ) -> RedisResult<Value> {
        if !no_functions.load(Ordering::Relaxed) {
            let mut fcall = redis::cmd("FCALL");
            fcall.arg(&self.name).arg(keys.len()).arg(keys).arg(args);
            match fcall.query_async(conn).await {
                Err(e) if not_found(&e) => {
                    let load = redis::cmd("FUNCTION")
                        .arg("LOAD")
                        .arg("REPLACE")
                        .arg(&self.library)
                        .query_async::<Value>(conn)
                        .await;
                    match load {
                        Ok(_) => return fcall.query_async(conn).await,
                        Err(e) if refused(&e) => no_functions.store(true, Ordering::Relaxed),
                        Err(_) => {}
                    }
                }
                Err(e) if refused(&e) => no_functions.store(true, Ordering::Relaxed),
                answer => return answer,
            }
        }
        let mut invocation = self.script.prepare_invoke();
        for k in keys {
            invocation.key(k);
        }
        for a in args {
            invocation.arg(a.as_slice());
        }
        invocation.invoke_async(conn).await
    }
}

/// `FCALL`'s error for a function the server does not have.
fn not_found(e: &RedisError) -> bool {
    e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
        && e.detail()
            .is_some_and(|d| d.starts_with("Function not found"))
}

/// A server that answered that it does not run this command: unknown (Redis
/// 6.2, or renamed) or not allowed to this user.
fn refused(e: &RedisError) -> bool {
    e.code() == Some("NOPERM")
        || e.kind() == ErrorKind::Server(ServerErrorKind::ResponseError)
            && e.detail().is_some_and(|d| d.starts_with("unknown command"))
}

/// `lease`, renewed every third of the shortest lease TTL of its members
/// while it is held ([`Lease::renewing`]): one `renew.lua` call moves the
/// expiry of each member still alive to the server's time + its TTL.
fn renew_while_held(
    lease: Lease,
    conn: Conn,
    shared: Arc<Shared>,
    members: Vec<(String, String, u64)>,
) -> Lease {
    let Some(shortest) = members.iter().map(|m| m.2).min() else {
        return lease;
    };
    let members: Arc<[(String, String, u64)]> = members.into();
    lease.renewing(Duration::from_millis(shortest), move || {
        let (mut conn, shared, members) = (conn.clone(), shared.clone(), members.clone());
        async move {
            let mut invocation = shared.renew.prepare_invoke();
            for (key, member, ttl) in members.iter() {
                invocation.key(key).arg(member).arg(ttl);
            }
            match invocation.invoke_async::<usize>(&mut conn).await {
                Ok(renewed) if renewed == members.len() => {}
                Ok(renewed) => tracing::warn!(
                    renewed,
                    held = members.len(),
                    "a concurrency lease expired before it was renewed (the store was \
                     unreachable for longer than its TTL): its slot may be taken by another request"
                ),
                Err(error) => {
                    tracing::debug!(%error, "renewing a concurrency lease failed; retried next period")
                }
            }
        }
    })
}

/// The lease an admission asked for, released when dropped unless taken:
/// see [`RedisStore::run`]. Removing a member that was never added is
/// harmless, and a removal sent after the call runs after it on the same
/// connection.
struct Unanswered {
    release: Option<Held>,
}

/// What [`release_on_drop`] needs: the connection, the store's state, the
/// tenant, the lease number and the `(key, member)` pairs it holds.
type Held = (Conn, Arc<Shared>, TenantId, u64, Vec<(String, String)>);

impl Drop for Unanswered {
    fn drop(&mut self) {
        if let Some((conn, shared, tenant, lease, held)) = self.release.take() {
            drop(release_on_drop(conn, shared, tenant, lease, held));
        }
    }
}

/// A lease that removes its members from the concurrency sets when dropped:
/// it records them as pending (so the next call of this store for the tenant
/// removes them first) and spawns a task on the current Tokio runtime that
/// removes them at once. Without a runtime, or while Redis is down, they are
/// removed by the next call for the tenant or expire after `lease_ttl`.
fn release_on_drop(
    conn: Conn,
    shared: Arc<Shared>,
    tenant: TenantId,
    lease: u64,
    held: Vec<(String, String)>,
) -> Lease {
    let conn = Mutex::new(Some(conn));
    Lease::new(move || {
        let Some(mut conn) = conn.lock().take() else {
            return;
        };
        {
            let mut pending = shared.pending.lock();
            if pending.len() + held.len() > MAX_PENDING {
                let excess = (pending.len() + held.len() - MAX_PENDING).min(pending.len());
                pending.drain(..excess);
            }
            for (key, member) in &held {
                pending.push(Release {
                    lease,
                    tenant: tenant.clone(),
                    key: key.clone(),
                    member: member.clone(),
                });
            }
        }
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            return;
        };
        handle.spawn(async move {
            let mut pipe = redis::pipe();
            for (key, member) in &held {
                pipe.zrem(key, member).ignore();
            }
            match pipe.query_async::<()>(&mut conn).await {
                Ok(()) => shared.pending.lock().retain(|r| r.lease != lease),
                Err(error) => {
                    tracing::debug!(%error, "releasing a concurrency lease failed; retried by the next call");
                }
            }
        });
    })
}

impl CounterStore for RedisStore {
    fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        let run = self.run(tenant, checks, true);
        MaybeReady::boxed(async move {
            let (decisions, lease, crossed) = run.await?;
            Ok(Admission::new(decisions, lease).with_soft_crossed(crossed))
        })
    }

    fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        let run = self.run(tenant, checks, false);
        MaybeReady::boxed(async move { Ok(run.await?.0) })
    }

    fn adjust(&self, tenant: &TenantId, policy: &str, delta: i64) -> MaybeReady<StoreResult<u64>> {
        let key = key(&self.prefix, tenant, "g", policy);
        let (mut conn, in_flight) = self.conn();
        let shared = self.shared.clone();
        MaybeReady::boxed(async move {
            let _in_flight = in_flight;
            let level: i64 = shared
                .adjust
                .key(key)
                .arg(delta)
                .invoke_async(&mut conn)
                .await
                .map_err(|e| StoreError::Backend(e.to_string()))?;
            Ok(level.max(0) as u64)
        })
    }
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field(
                "connection",
                &match self.conns[0] {
                    Conn::Single(_) => "single",
                    Conn::Cluster(_) => "cluster",
                    #[cfg(feature = "redis-sentinel")]
                    Conn::Sentinel(_) => "sentinel",
                },
            )
            .field("connections", &self.conns.len())
            .field("prefix", &self.prefix)
            .field("test_clock", &self.clock.is_some())
            .finish()
    }
}

/// The indices in `checks` of one enforced sliding window, calendar quota
/// and concurrency limit, in that order, when the batch is exactly those
/// (the three-rule plan, for plan.lua).
fn plan_order(checks: &[Check]) -> Option<[usize; 3]> {
    let mut order = [usize::MAX; 3];
    for (i, c) in checks.iter().enumerate() {
        let slot = match c.algorithm {
            Algorithm::SlidingWindow { .. } => 0,
            Algorithm::Calendar { .. } => 1,
            Algorithm::Concurrency { .. } => 2,
            _ => return None,
        };
        if c.shadow || order[slot] != usize::MAX {
            return None;
        }
        order[slot] = i;
    }
    order.iter().all(|&i| i < checks.len()).then_some(order)
}

/// The key kind of a rate limit's soft-threshold mark
/// (`{prefix}{tenant}:sf:{policy}`).
const SOFT_MARK: &str = "sf";
/// The key kind of a calendar quota's soft-threshold mark
/// (`{prefix}{tenant}:sfq:{policy}`): a rate and a quota of the same name
/// each have their own.
const SOFT_MARK_QUOTA: &str = "sfq";

/// The `soft` argument of a check for admit.lua: `"P:H"` (percent, and the
/// mark's hold in ms: the window, or 0 for the rest of a calendar period)
/// when the check tracks a soft threshold, else empty.
fn soft_arg(index: usize, check: &Check) -> String {
    let Some(percent) = check.soft_percent.filter(|_| index < 64) else {
        return String::new();
    };
    let hold = match check.algorithm {
        Algorithm::Calendar { .. } => 0,
        algorithm => match algorithm.rate_window() {
            Some(window) => ms(window).max(1),
            None => return String::new(),
        },
    };
    format!("{}:{hold}", percent.min(100))
}

/// The scripts' answer: little-endian doubles (integers below 2^53), as
/// integers; or window.lua's integer `used · 2^27 + reset` for an allowed
/// check: allowed 1, used, reset, retry -1, crossed 0, admitted 1. Anything
/// else, or a length that is not a multiple of 8, gives no values (and the
/// caller an error).
fn decode_reply(reply: &Value) -> Vec<i64> {
    let bytes = match reply {
        Value::Int(r) if *r >= 0 => return vec![1, r >> 27, r & ((1 << 27) - 1), -1, 0, 1],
        Value::BulkString(bytes) => bytes,
        _ => return Vec::new(),
    };
    if !bytes.len().is_multiple_of(8) {
        return Vec::new();
    }
    bytes
        .chunks_exact(8)
        .map(|c| {
            let mut le = [0u8; 8];
            le.copy_from_slice(c);
            f64::from_le_bytes(le) as i64
        })
        .collect()
}

/// The kind of a check in admit.lua.
fn kind(algorithm: &Algorithm) -> &'static str {
    match algorithm {
        Algorithm::SlidingWindow { .. } => "sb",
        Algorithm::SlidingWindowApprox { .. } => "sw",
        Algorithm::Gcra { .. } => "gc",
        Algorithm::SlidingLog { .. } => "sl",
        Algorithm::Calendar { .. } => "cal",
        Algorithm::Concurrency { .. } => "cc",
        Algorithm::Gauge => "g",
    }
}

/// The kind in a key's name: that of admit.lua, except the sliding window's
/// `sb2` (its second layout: keys of the first, `sb` hashes, are never read
/// again and expire within W + W/8 of an upgrade) and the calendar quota's
/// `calh`, `cald`, `calw`, `calm` (its second layout, an integer, one key
/// per period kind: keys of the first, `cal` hashes, are never read again
/// and expire at the end of their period + 1 s).
fn segment(algorithm: &Algorithm) -> &'static str {
    match algorithm {
        Algorithm::SlidingWindow { .. } => "sb2",
        Algorithm::Calendar { period } => match period {
            Period::Hour => "calh",
            Period::Day => "cald",
            Period::Week => "calw",
            Period::Month => "calm",
        },
        other => kind(other),
    }
}

fn key(prefix: &str, tenant: &TenantId, kind: &str, policy: &str) -> String {
    let tenant = tenant.as_str();
    let mut k = String::with_capacity(prefix.len() + tenant.len() + kind.len() + policy.len() + 4);
    k.push_str(prefix);
    k.push('{');
    k.push_str(tenant);
    k.push_str("}:");
    k.push_str(kind);
    k.push(':');
    k.push_str(policy);
    k
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis())
        .unwrap_or(u64::MAX)
        .min(MAX_EXACT)
}

/// 64 random bits without a dependency: the standard library's randomly
/// keyed SipHash over the time and the process id.
fn random_u64() -> u64 {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hash, Hasher};
    let mut h = RandomState::new().build_hasher();
    std::time::SystemTime::now().hash(&mut h);
    std::process::id().hash(&mut h);
    h.finish()
}
