//! The in-process [`CounterStore`]: [`MemoryStore`].

use std::borrow::{Borrow, BorrowMut};
use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::calendar::period_bounds;
use super::{
    Admission, Algorithm, Check, Clock, CounterStore, Decision, Decisions, Lease, StoreResult,
    SystemClock,
};
use crate::future::MaybeReady;
use crate::plan::Period;
use crate::tenant::TenantId;

/// Default minimum number of calls between two sweeps of a shard.
const DEFAULT_SWEEP_EVERY: u64 = 1024;
/// Most shards a store may have.
const MAX_SHARDS: usize = 4096;
/// `retry_after` of a denied concurrency check.
const CONCURRENCY_RETRY_MS: u64 = 1_000;

/// An in-memory, sharded [`CounterStore`] for one process.
///
/// It implements every algorithm of the [store
/// semantics](crate::store#semantics-every-store-implements-exactly-these)
/// synchronously: each call answers with [`MaybeReady::ready`], takes one
/// mutex, and allocates nothing for its answer ([`Decisions`](super::Decisions) keeps up to four inline; plus the state of
/// a counter the first time it is consumed). [`peek`](CounterStore::peek)
/// returns exactly the decisions `admit` would (so `used` includes the cost
/// when every check allows); peek with cost 0 to read current levels.
///
/// ```
/// use std::time::Duration;
/// use tower_tenancy::store::{Algorithm, Check, CounterStore};
/// use tower_tenancy::{MemoryStore, TenantId};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let store = MemoryStore::new();
/// let acme: TenantId = "acme".parse().unwrap();
/// let per_minute = Algorithm::SlidingWindow { window: Duration::from_secs(60) };
/// let checks = [Check::new("api_calls", per_minute, 2, 1)];
///
/// assert!(store.admit(&acme, &checks).await.unwrap().allowed());
/// assert!(store.admit(&acme, &checks).await.unwrap().allowed());
/// let third = store.admit(&acme, &checks).await.unwrap();
/// assert!(!third.allowed());
/// assert!(third.decisions[0].retry_after.is_some());
/// # });
/// ```
///
/// # Layout
///
/// Counters live in `N` shards (by default the next power of two of four
/// times the number of cores), each a [`parking_lot::Mutex`] over one hash
/// map per algorithm. The shard is chosen by a hash of the tenant, so every
/// counter of a tenant lives in the same shard: a batch is atomic under one
/// lock, and tenants in different shards never contend. Concurrency counters
/// are `Arc<AtomicU64>`s: a [`Lease`] releases its units without taking any
/// lock.
///
/// A counter is keyed by (tenant, algorithm kind, policy name); the key holds
/// clones of the caller's `TenantId` and policy `Arc<str>`, so it allocates
/// nothing of its own. Sliding windows, the default rate limit, have one
/// table per policy keyed by the tenant alone (the policy is found by a
/// short scan of the shard's policy names). Memory per key, counting the
/// hash map's buckets (`size_of::<(Key, Value)>() + 1` control byte per
/// bucket, at a load factor between 7/16 and 7/8):
///
/// | algorithm | bytes per bucket | heap besides the map |
/// |---|---|---|
/// | sliding window | 41 | — |
/// | sliding log | 41 | 48-byte box + 16 bytes per distinct admitted millisecond in the window |
/// | calendar | 57 | — |
/// | concurrency | 41 | 24-byte `Arc` |
/// | gauge | 41 | — |
///
/// That is 47 bytes per active sliding-window key when a table is full and
/// 94 right after it has doubled; `benches/memory.rs` (see BENCHMARKS.md)
/// measures the heap from 25 000 to 1 000 000 keys.
///
/// # Eviction
///
/// A counter whose state has fully expired is equivalent to no counter, so it
/// may be dropped: a sliding window two windows after the start of the
/// fixed window of its last use, a sliding
/// log once its last entry left the window, a calendar counter once its
/// period is over, a concurrency counter at zero with no lease alive, a gauge
/// at zero. Each shard sweeps itself after `max(sweep_every, n)` calls,
/// where `n` is the number of counters its previous sweep left (so that the
/// work is amortized to O(1) per call), and shrinks its tables when they are
/// less than a quarter full. Memory is thus bounded by the counters live in
/// the longest window plus those created during one sweep interval.
/// [`MemoryStore::evict_idle`] sweeps every shard at once.
///
/// # Time
///
/// The store reads [`Clock::now_ms`] once per call. If the clock steps back,
/// counters keep the state of the later time (they never forget admissions).
/// Windows are whole milliseconds: a window shorter than 1 ms counts as 1 ms.
/// Concurrency leases are released by dropping them; `lease_ttl` is only
/// used by shared stores (a process that crashes loses its memory store too).
///
/// # Accuracy
///
/// The sliding window counter assumes that the requests of the previous
/// fixed window were spread evenly over it; the sliding log is exact.
/// `examples/accuracy.rs` replays request traces through both with a
/// [`ManualClock`](crate::store::ManualClock) (limit 100 per 60 s window,
/// one hour of simulated time per trace, cost 1, arrivals from a fixed-seed
/// xorshift PRNG: Poisson for the steady traces at the given multiple of the
/// limit; for the bursty ones, bursts of many requests within 1 to 5 s at
/// Poisson times) and compares the decisions request by request, the log's
/// being the truth. Two methods:
///
/// * **independent** (`wrong +`, `wrong -`): a window store and a log store
///   see the same arrivals, each with its own state; `wrong +` is the share
///   of requests the window admits and the log rejects, `wrong -` the other
///   way round. Once the two disagree their histories differ, so this
///   compares two limiters as a client experiences them, and counts a
///   disagreement even when both admit the same number of requests, only
///   not the same ones.
/// * **shadow** (`over`, `under`): an exact log is fed only the requests the
///   window admitted and judges each request against that same history.
///   `over` is the share of requests the window admitted although its own
///   admissions of the last 60 s already numbered 100 (the limit was really
///   exceeded); `under`, those it rejected although they would have fit.
///   `max/60s` is the most requests the window admitted in any 60 s span.
///
/// `cargo run --release --example accuracy`, 2026-11-23, on a 2-core
/// machine (the example is deterministic: the figures do not depend on the
/// machine):
///
/// ```text
/// | trace       | requests | log admits | window admits | wrong + | wrong - | over   | under  | max/60s |
/// |-------------|---------:|-----------:|--------------:|--------:|--------:|-------:|-------:|--------:|
/// | steady 0.8x |     4855 |       4832 |          4848 |   0.43% |   0.10% |  1.61% |  0.06% |     107 |
/// | steady 1.0x |     5931 |       5511 |          5589 |   4.64% |   3.32% | 13.78% |  1.92% |     111 |
/// | steady 1.5x |     9029 |       5904 |          5950 |  15.73% |  15.22% | 18.61% | 10.68% |     107 |
/// | steady 3x   |    18056 |       5999 |          5996 |  19.11% |  19.12% | 14.64% |  4.16% |     104 |
/// | bursty 0.9x |     5067 |       3076 |          3095 |   6.02% |   5.64% |  4.91% | 17.76% |     141 |
/// | bursty 2x   |    12512 |       4269 |          4377 |  10.89% |  10.03% |  6.24% | 30.38% |     176 |
/// | bursty 5x   |    33139 |       4121 |          4218 |   4.76% |   4.47% |  2.75% | 43.34% |     184 |
/// ```
///
/// Reading: under steady load the window admits within 1.5% as many
/// requests as the log, and a true 60 s span never held more than 111 (11%
/// over the limit), but it often picks different requests than the log
/// (up to 19% each way at 3× the limit). Bursts are its weak case: a burst
/// at the end of one fixed window is assumed spread over the whole window
/// and fades too early, so a 60 s span admitted up to 184 (84% over), while
/// a burst at the start of a window keeps weighing after it left the true
/// window (`under`). Use [`Algorithm::SlidingLog`] where the limit must hold
/// exactly; its memory is O(limit) per key instead of O(1).
///
/// A daily quota with a controlled clock:
///
/// ```
/// use std::sync::Arc;
/// use tower_tenancy::store::{Algorithm, Check, CounterStore, ManualClock};
/// use tower_tenancy::{MemoryStore, Period, TenantId};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let clock = Arc::new(ManualClock::new(1_795_392_000_000)); // 2026-11-23T00:00:00Z
/// let store = MemoryStore::with_clock(clock.clone());
/// let acme: TenantId = "acme".parse().unwrap();
/// let daily = [Check::new("executions", Algorithm::Calendar { period: Period::Day }, 1, 1)];
///
/// assert!(store.admit(&acme, &daily).await.unwrap().allowed());
/// let denied = store.admit(&acme, &daily).await.unwrap();
/// assert_eq!(denied.decisions[0].retry_after.unwrap().as_secs(), 86_400);
/// clock.advance_ms(86_400_000); // the next day
/// assert!(store.admit(&acme, &daily).await.unwrap().allowed());
/// # });
/// ```
pub struct MemoryStore {
    shards: Box<[Shard]>,
    hasher: RandomState,
    clock: Arc<dyn Clock>,
    sweep_every: u64,
}

/// Builds a [`MemoryStore`] with non-default options.
///
/// ```
/// use std::sync::Arc;
/// use tower_tenancy::store::ManualClock;
/// use tower_tenancy::MemoryStore;
///
/// let store = MemoryStore::builder()
///     .shards(16)
///     .clock(Arc::new(ManualClock::new(0)))
///     .sweep_every(10_000)
///     .build();
/// assert!(store.is_empty());
/// ```
#[derive(Clone)]
pub struct MemoryStoreBuilder {
    shards: Option<usize>,
    clock: Arc<dyn Clock>,
    sweep_every: u64,
}

impl MemoryStoreBuilder {
    /// The number of shards, rounded up to a power of two (at most 4096).
    /// Default: the next power of two of 4 × the available parallelism.
    /// More shards mean less contention between tenants and a little more
    /// fixed memory (a few hundred bytes per shard).
    pub fn shards(mut self, shards: usize) -> Self {
        self.shards = Some(shards);
        self
    }

    /// The time source. Default: [`SystemClock`]. Tests use a
    /// [`ManualClock`](crate::store::ManualClock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The minimum number of calls a shard serves between two sweeps for
    /// idle counters (the actual interval is the larger of this and the
    /// number of counters the shard kept at its last sweep). `0` disables automatic sweeps;
    /// [`MemoryStore::evict_idle`] still works. Default: 1024.
    pub fn sweep_every(mut self, calls: u64) -> Self {
        self.sweep_every = calls;
        self
    }

    /// The store.
    pub fn build(self) -> MemoryStore {
        let shards = self
            .shards
            .unwrap_or_else(|| {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
                cores.saturating_mul(4)
            })
            .clamp(1, MAX_SHARDS)
            .next_power_of_two();
        MemoryStore {
            shards: (0..shards).map(|_| Shard::default()).collect(),
            hasher: RandomState::new(),
            clock: self.clock,
            sweep_every: self.sweep_every,
        }
    }
}

impl std::fmt::Debug for MemoryStoreBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStoreBuilder")
            .field("shards", &self.shards)
            .field("sweep_every", &self.sweep_every)
            .finish_non_exhaustive()
    }
}

impl MemoryStore {
    /// A store with the default options and the system clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// A store with the default options and the given clock.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_tenancy::store::ManualClock;
    /// use tower_tenancy::MemoryStore;
    ///
    /// let clock = Arc::new(ManualClock::new(0));
    /// let store = MemoryStore::with_clock(clock.clone());
    /// # let _ = store;
    /// ```
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::builder().clock(clock).build()
    }

    /// A builder for the options: shards, clock, sweep interval.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            shards: None,
            clock: Arc::new(SystemClock),
            sweep_every: DEFAULT_SWEEP_EVERY,
        }
    }

    /// The number of counters held (every algorithm, every tenant),
    /// including idle ones not yet evicted.
    pub fn len(&self) -> usize {
        self.shards.iter().map(|s| s.0.lock().len()).sum()
    }

    /// Whether no counter is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every counter whose state has fully expired (see
    /// [Eviction](MemoryStore#eviction)) and returns how many were removed.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tower_tenancy::store::{Algorithm, Check, CounterStore, ManualClock};
    /// use tower_tenancy::{MemoryStore, TenantId};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let clock = Arc::new(ManualClock::new(0));
    /// let store = MemoryStore::with_clock(clock.clone());
    /// let window = Algorithm::SlidingWindow { window: Duration::from_secs(1) };
    /// let acme: TenantId = "acme".parse().unwrap();
    /// store.admit(&acme, &[Check::new("calls", window, 10, 1)]).await.unwrap();
    /// assert_eq!(store.len(), 1);
    /// clock.advance_ms(2_000); // two windows later
    /// assert_eq!(store.evict_idle(), 1);
    /// assert!(store.is_empty());
    /// # });
    /// ```
    pub fn evict_idle(&self) -> usize {
        let now = self.clock.now_ms();
        self.shards.iter().map(|s| s.0.lock().sweep(now)).sum()
    }

    fn shard(&self, tenant: &TenantId) -> &Shard {
        // `shards.len()` is a power of two.
        let index = self.hasher.hash_one(tenant.as_str()) as usize & (self.shards.len() - 1);
        &self.shards[index]
    }

    /// Counts a call on a shard and sweeps it when due.
    fn after_call(&self, tables: &mut Tables, now: u64) {
        tables.calls = tables.calls.saturating_add(1);
        if self.sweep_every > 0 && tables.calls >= self.sweep_every.max(tables.swept_len) {
            tables.sweep(now);
        }
    }

    fn run(&self, tenant: &TenantId, checks: &[Check], commit: bool) -> Admission {
        let now = self.clock.now_ms();
        let mut tables = self.shard(tenant).0.lock();
        let tables = &mut *tables;
        let mut leases = Leases::default();
        let decisions = if let [check] = checks {
            // One check: one lookup.
            Decisions::from_iter([tables.single(tenant, check, now, commit, &mut leases)])
        } else {
            let mut decisions: Decisions = checks
                .iter()
                .map(|check| tables.check(tenant, check, now))
                .collect();
            // Shadowed checks consume only when every check allows; the
            // others when every one that is not shadowed does.
            let all = decisions.iter().all(|d| d.allowed);
            let enforced = all
                || decisions
                    .iter()
                    .zip(checks)
                    .all(|(d, c)| d.allowed || c.shadow);
            if enforced {
                for (decision, check) in decisions.iter_mut().zip(checks) {
                    if !all && check.shadow {
                        continue;
                    }
                    if commit {
                        tables.consume(tenant, check, now, &mut leases);
                    }
                    admitted(decision, check);
                }
            }
            decisions
        };
        self.after_call(tables, now);
        Admission {
            decisions,
            lease: leases.into_lease(),
        }
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryStore")
            .field("shards", &self.shards.len())
            .field("sweep_every", &self.sweep_every)
            .finish_non_exhaustive()
    }
}

impl CounterStore for MemoryStore {
    fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        MaybeReady::ready(Ok(self.run(tenant, checks, true)))
    }

    fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        MaybeReady::ready(Ok(self.run(tenant, checks, false).decisions))
    }

    fn adjust(&self, tenant: &TenantId, policy: &str, delta: i64) -> MaybeReady<StoreResult<u64>> {
        let now = self.clock.now_ms();
        let mut tables = self.shard(tenant).0.lock();
        let view: &dyn KeyView = &(tenant.as_str(), policy);
        let level = match tables.gauges.get_mut(view) {
            Some(gauge) => {
                gauge.0 = moved(gauge.0, delta);
                let level = gauge.0;
                if level == 0 {
                    tables.gauges.remove(view);
                }
                level
            }
            None => {
                let level = moved(0, delta);
                if level > 0 {
                    let key = Key {
                        tenant: tenant.clone(),
                        policy: Arc::from(policy),
                    };
                    tables.gauges.insert(key, Gauge(level));
                }
                level
            }
        };
        self.after_call(&mut tables, now);
        MaybeReady::ready(Ok(level))
    }
}

fn moved(level: u64, delta: i64) -> u64 {
    if delta >= 0 {
        level.saturating_add(delta.unsigned_abs())
    } else {
        level.saturating_sub(delta.unsigned_abs())
    }
}

/// The leases taken by one call, without allocating for the usual zero or one.
#[derive(Default)]
struct Leases {
    first: Option<Lease>,
    more: Vec<Lease>,
}

impl Leases {
    fn push(&mut self, lease: Lease) {
        if self.first.is_none() {
            self.first = Some(lease);
        } else {
            self.more.push(lease);
        }
    }

    fn into_lease(self) -> Option<Lease> {
        match self.first {
            None => None,
            Some(first) if self.more.is_empty() => Some(first),
            Some(first) => {
                let mut all = self.more;
                all.push(first);
                Lease::many(all)
            }
        }
    }
}

/// Cache-line aligned so that two shards' locks never share a line.
#[repr(align(128))]
#[derive(Default)]
struct Shard(Mutex<Tables>);

/// The counters of one shard, one map per algorithm kind.
#[derive(Default)]
struct Tables {
    /// Sliding windows, one table per policy keyed by tenant alone: a
    /// 40-byte slot instead of 56 with the policy in every key. A request
    /// finds its policy by a short scan (pointer comparison first: checks
    /// carry the rule's own `Arc<str>`), there being few policy names.
    windows: Vec<PolicyWindows>,
    logs: HashMap<Key, Box<LogState>>,
    calendars: HashMap<Key, CalendarState>,
    concurrency: HashMap<Key, Inflight>,
    gauges: HashMap<Key, Gauge>,
    /// Calls since the last sweep.
    calls: u64,
    /// Counters left by the last sweep: the next one is due after as many
    /// calls (at least `sweep_every`), so that sweeping costs O(1) per call
    /// however many counters each call creates.
    swept_len: u64,
}

/// The sliding-window counters of one policy.
struct PolicyWindows {
    policy: Arc<str>,
    /// The longest window the policy was used with: the sweep needs it and
    /// the 24-byte window state does not keep it.
    longest: u64,
    counters: HashMap<TenantId, WindowState>,
}

impl Tables {
    fn len(&self) -> usize {
        self.windows.iter().map(|p| p.counters.len()).sum::<usize>()
            + self.logs.len()
            + self.calendars.len()
            + self.concurrency.len()
            + self.gauges.len()
    }

    /// The sliding-window table of `policy`, created when missing, noting
    /// that it is used with window `w`.
    fn windows(&mut self, policy: &Arc<str>, w: u64) -> &mut HashMap<TenantId, WindowState> {
        let found = self
            .windows
            .iter()
            .position(|p| Arc::ptr_eq(&p.policy, policy) || p.policy == *policy);
        let index = found.unwrap_or_else(|| {
            self.windows.push(PolicyWindows {
                policy: policy.clone(),
                longest: w,
                counters: HashMap::new(),
            });
            self.windows.len() - 1
        });
        let table = &mut self.windows[index];
        table.longest = table.longest.max(w);
        &mut table.counters
    }

    /// The decision for `check` as if the batch were denied (nothing consumed).
    fn check(&mut self, tenant: &TenantId, check: &Check, now: u64) -> Decision {
        match check.algorithm {
            Algorithm::SlidingWindow { window } => {
                let w = window_ms(window);
                evaluate(
                    self.windows(&check.policy, w),
                    tenant.as_str(),
                    check,
                    w,
                    now,
                )
            }
            Algorithm::SlidingLog { window } => evaluate::<LogState, _, _, _>(
                &mut self.logs,
                view(tenant, check),
                check,
                window_ms(window),
                now,
            ),
            Algorithm::Calendar { period } => {
                evaluate(&mut self.calendars, view(tenant, check), check, period, now)
            }
            Algorithm::Concurrency { .. } => {
                evaluate(&mut self.concurrency, view(tenant, check), check, (), now)
            }
            Algorithm::Gauge => evaluate(&mut self.gauges, view(tenant, check), check, (), now),
        }
    }

    /// Consumes `check.cost` (the batch was admitted).
    fn consume(&mut self, tenant: &TenantId, check: &Check, now: u64, leases: &mut Leases) {
        match check.algorithm {
            Algorithm::SlidingWindow { window } => {
                let w = window_ms(window);
                let table = self.windows(&check.policy, w);
                consume(
                    table,
                    tenant.as_str(),
                    || tenant.clone(),
                    check,
                    w,
                    now,
                    leases,
                );
            }
            Algorithm::SlidingLog { window } => {
                consume::<LogState, _, _, _>(
                    &mut self.logs,
                    view(tenant, check),
                    || Key::new(tenant, check),
                    check,
                    window_ms(window),
                    now,
                    leases,
                );
            }
            Algorithm::Calendar { period } => {
                consume(
                    &mut self.calendars,
                    view(tenant, check),
                    || Key::new(tenant, check),
                    check,
                    period,
                    now,
                    leases,
                );
            }
            Algorithm::Concurrency { .. } => {
                consume(
                    &mut self.concurrency,
                    view(tenant, check),
                    || Key::new(tenant, check),
                    check,
                    (),
                    now,
                    leases,
                );
            }
            Algorithm::Gauge => {
                consume(
                    &mut self.gauges,
                    view(tenant, check),
                    || Key::new(tenant, check),
                    check,
                    (),
                    now,
                    leases,
                );
            }
        }
    }

    /// A batch of one check: evaluate and, when allowed and `commit`, consume.
    fn single(
        &mut self,
        tenant: &TenantId,
        check: &Check,
        now: u64,
        commit: bool,
        leases: &mut Leases,
    ) -> Decision {
        match check.algorithm {
            Algorithm::SlidingWindow { window } => {
                let w = window_ms(window);
                let table = self.windows(&check.policy, w);
                let key = || tenant.clone();
                single(table, tenant.as_str(), key, check, w, now, commit, leases)
            }
            Algorithm::SlidingLog { window } => single::<LogState, _, _, _>(
                &mut self.logs,
                view(tenant, check),
                || Key::new(tenant, check),
                check,
                window_ms(window),
                now,
                commit,
                leases,
            ),
            Algorithm::Calendar { period } => single(
                &mut self.calendars,
                view(tenant, check),
                || Key::new(tenant, check),
                check,
                period,
                now,
                commit,
                leases,
            ),
            Algorithm::Concurrency { .. } => single(
                &mut self.concurrency,
                view(tenant, check),
                || Key::new(tenant, check),
                check,
                (),
                now,
                commit,
                leases,
            ),
            Algorithm::Gauge => single(
                &mut self.gauges,
                view(tenant, check),
                || Key::new(tenant, check),
                check,
                (),
                now,
                commit,
                leases,
            ),
        }
    }

    /// Removes the counters whose state has fully expired; returns how many.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.len();
        for table in &mut self.windows {
            let longest = table.longest;
            table.counters.retain(|_, state| !state.idle(now, longest));
            shrink(&mut table.counters);
        }
        self.windows.retain(|table| !table.counters.is_empty());
        self.logs.retain(|_, log| {
            log.expire(now);
            log.shrink();
            !log.entries.is_empty()
        });
        self.calendars.retain(|_, state| !state.idle(now));
        self.concurrency.retain(|_, inflight| !inflight.idle());
        self.gauges.retain(|_, gauge| gauge.0 != 0);
        shrink(&mut self.logs);
        shrink(&mut self.calendars);
        shrink(&mut self.concurrency);
        shrink(&mut self.gauges);
        let after = self.len();
        self.calls = 0;
        self.swept_len = after as u64;
        before - after
    }
}

fn shrink<K: Eq + Hash, V>(map: &mut HashMap<K, V>) {
    if map.capacity() > 64 && map.len() < map.capacity() / 4 {
        map.shrink_to(map.len() * 2);
    }
}

/// A window in whole milliseconds, at least 1.
fn window_ms(window: Duration) -> u64 {
    u64::try_from(window.as_millis()).unwrap_or(u64::MAX).max(1)
}

// ---------------------------------------------------------------------------
// Keys: (tenant, policy) within the map of one algorithm kind. Lookups borrow
// the key as `dyn KeyView` so that they need no `Arc` clone.

struct Key {
    tenant: TenantId,
    policy: Arc<str>,
}

impl Key {
    fn new(tenant: &TenantId, check: &Check) -> Self {
        Self {
            tenant: tenant.clone(),
            policy: check.policy.clone(),
        }
    }
}

trait KeyView {
    fn tenant(&self) -> &str;
    fn policy(&self) -> &str;
}

impl KeyView for Key {
    fn tenant(&self) -> &str {
        self.tenant.as_str()
    }
    fn policy(&self) -> &str {
        &self.policy
    }
}

impl KeyView for (&str, &str) {
    fn tenant(&self) -> &str {
        self.0
    }
    fn policy(&self) -> &str {
        self.1
    }
}

impl<'a> Borrow<dyn KeyView + 'a> for Key {
    fn borrow(&self) -> &(dyn KeyView + 'a) {
        self
    }
}

impl Hash for dyn KeyView + '_ {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.tenant().hash(state);
        self.policy().hash(state);
    }
}

impl PartialEq for dyn KeyView + '_ {
    fn eq(&self, other: &Self) -> bool {
        self.tenant() == other.tenant() && self.policy() == other.policy()
    }
}

impl Eq for dyn KeyView + '_ {}

impl Hash for Key {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self as &dyn KeyView).hash(state);
    }
}

impl PartialEq for Key {
    fn eq(&self, other: &Self) -> bool {
        (self as &dyn KeyView) == (other as &dyn KeyView)
    }
}

impl Eq for Key {}

// ---------------------------------------------------------------------------
// Algorithms.

/// The state of one counter of one algorithm kind.
trait Counter: Sized {
    /// What the check says besides limit and cost (window, period).
    type Ctx: Copy;

    /// The state of a counter never consumed (must not allocate).
    fn empty(now: u64, ctx: Self::Ctx) -> Self;

    /// Brings the state to `now` (rolls windows, expires entries); does not
    /// change what it counts at `now`.
    fn normalize(&mut self, now: u64, ctx: Self::Ctx);

    /// The decision at `now` before consumption.
    fn eval(&self, now: u64, ctx: Self::Ctx, check: &Check) -> Decision;

    /// The decision for a counter that does not exist yet.
    fn eval_missing(now: u64, ctx: Self::Ctx, check: &Check) -> Decision {
        Self::empty(now, ctx).eval(now, ctx, check)
    }

    /// Adds `cost` (> 0) at `now` (the state is normalized).
    fn consume(&mut self, now: u64, cost: u64) -> Option<Lease>;
}

/// Whether `used + cost <= limit`, without overflow.
fn fits(used: u64, cost: u64, limit: u64) -> bool {
    used.checked_add(cost).is_some_and(|total| total <= limit)
}

/// A decision before consumption: `retry_ms` is only called on denial when
/// `cost <= limit`, i.e. when `used > limit - cost`.
fn decision(
    check: &Check,
    used: u64,
    reset_ms: u64,
    retry_ms: impl FnOnce() -> Option<u64>,
) -> Decision {
    let allowed = fits(used, check.cost, check.limit);
    let retry_after = if allowed || check.cost > check.limit {
        None
    } else {
        retry_ms().map(Duration::from_millis)
    };
    Decision {
        allowed,
        limit: check.limit,
        used,
        remaining: check.limit.saturating_sub(used),
        reset: Duration::from_millis(reset_ms),
        retry_after,
    }
}

/// Turns a before-consumption decision into the admitted one.
fn admitted(decision: &mut Decision, check: &Check) {
    if let Algorithm::SlidingLog { window } = check.algorithm {
        // The entry just added becomes the oldest one of an empty log.
        if decision.used == 0 && check.cost > 0 {
            decision.reset = Duration::from_millis(window_ms(window));
        }
    }
    decision.used = decision.used.saturating_add(check.cost);
    decision.remaining = check.limit.saturating_sub(decision.used);
}

/// The lookup key of the maps keyed by [`Key`].
fn view<'a>(tenant: &'a TenantId, check: &'a Check) -> (&'a str, &'a str) {
    (tenant.as_str(), &check.policy)
}

/// How a map is looked up without building its key: `&str` (the tenant) for
/// the sliding-window tables, `(tenant, policy)` as a [`KeyView`] for the
/// others.
trait Lookup<K> {
    fn get_mut<'m, V>(&self, map: &'m mut HashMap<K, V>) -> Option<&'m mut V>;
}

impl Lookup<TenantId> for &str {
    fn get_mut<'m, V>(&self, map: &'m mut HashMap<TenantId, V>) -> Option<&'m mut V> {
        map.get_mut(*self)
    }
}

impl Lookup<Key> for (&str, &str) {
    fn get_mut<'m, V>(&self, map: &'m mut HashMap<Key, V>) -> Option<&'m mut V> {
        map.get_mut(self as &dyn KeyView)
    }
}

fn evaluate<S: Counter, V: BorrowMut<S>, K, L: Lookup<K>>(
    map: &mut HashMap<K, V>,
    lookup: L,
    check: &Check,
    ctx: S::Ctx,
    now: u64,
) -> Decision {
    match lookup.get_mut(map) {
        Some(state) => {
            let state = state.borrow_mut();
            state.normalize(now, ctx);
            state.eval(now, ctx, check)
        }
        None => S::eval_missing(now, ctx, check),
    }
}

/// Consumes `check.cost`, creating the counter (keyed `key()`) when missing.
fn consume<S: Counter, V: BorrowMut<S> + From<S>, K: Eq + Hash, L: Lookup<K>>(
    map: &mut HashMap<K, V>,
    lookup: L,
    key: impl FnOnce() -> K,
    check: &Check,
    ctx: S::Ctx,
    now: u64,
    leases: &mut Leases,
) {
    if check.cost == 0 {
        return;
    }
    match lookup.get_mut(map) {
        Some(state) => {
            if let Some(lease) = state.borrow_mut().consume(now, check.cost) {
                leases.push(lease);
            }
        }
        None => insert_consumed::<S, V, K>(map, key(), check, ctx, now, leases),
    }
}

fn insert_consumed<S: Counter, V: BorrowMut<S> + From<S>, K: Eq + Hash>(
    map: &mut HashMap<K, V>,
    key: K,
    check: &Check,
    ctx: S::Ctx,
    now: u64,
    leases: &mut Leases,
) {
    let mut state = S::empty(now, ctx);
    if let Some(lease) = state.consume(now, check.cost) {
        leases.push(lease);
    }
    map.insert(key, V::from(state));
}

/// Evaluates one check and consumes it when allowed and `commit`, with one
/// lookup.
#[allow(clippy::too_many_arguments)]
fn single<S: Counter, V: BorrowMut<S> + From<S>, K: Eq + Hash, L: Lookup<K>>(
    map: &mut HashMap<K, V>,
    lookup: L,
    key: impl FnOnce() -> K,
    check: &Check,
    ctx: S::Ctx,
    now: u64,
    commit: bool,
    leases: &mut Leases,
) -> Decision {
    match lookup.get_mut(map) {
        Some(state) => {
            let state = state.borrow_mut();
            state.normalize(now, ctx);
            let mut decision = state.eval(now, ctx, check);
            if decision.allowed {
                if commit && check.cost > 0 {
                    if let Some(lease) = state.consume(now, check.cost) {
                        leases.push(lease);
                    }
                }
                admitted(&mut decision, check);
            }
            decision
        }
        None => {
            let mut decision = S::eval_missing(now, ctx, check);
            if decision.allowed {
                if commit && check.cost > 0 {
                    insert_consumed::<S, V, K>(map, key(), check, ctx, now, leases);
                }
                admitted(&mut decision, check);
            }
            decision
        }
    }
}

/// Sliding window counter: the counts of the current fixed window (starting
/// at `start`, a multiple of the window) and of the one before.
struct WindowState {
    start: u64,
    curr: u64,
    prev: u64,
}

impl WindowState {
    /// Both windows are over: the state counts nothing any more.
    fn idle(&self, now: u64, longest_window: u64) -> bool {
        now >= self.start.saturating_add(longest_window.saturating_mul(2))
            || (self.curr == 0 && self.prev == 0)
    }
}

impl Counter for WindowState {
    type Ctx = u64;

    fn empty(now: u64, w: u64) -> Self {
        Self {
            start: now - now % w,
            curr: 0,
            prev: 0,
        }
    }

    fn normalize(&mut self, now: u64, w: u64) {
        let start = now - now % w;
        if self.start < start {
            self.prev = if self.start.checked_add(w) == Some(start) {
                self.curr
            } else {
                0
            };
            self.curr = 0;
            self.start = start;
        }
        // `self.start > start`: the clock stepped back; keep the later state.
    }

    fn eval(&self, now: u64, w: u64, check: &Check) -> Decision {
        let elapsed = now % w;
        let (curr, prev) = (self.curr, self.prev);
        let used = curr.saturating_add(mul_div_floor(prev, w - elapsed, w));
        decision(check, used, w - elapsed, || {
            let (limit, cost) = (check.limit, check.cost);
            match (limit - cost).checked_sub(curr) {
                // `curr + cost <= limit`: wait until enough of `prev` has faded.
                Some(room) => {
                    let e = mul_div_ceil(prev.saturating_sub(room), w, prev);
                    Some(e.saturating_sub(elapsed))
                }
                // Wait into the next window, where `prev' = curr`.
                None => {
                    let e = mul_div_ceil(curr - (limit - cost), w, curr);
                    Some((w - elapsed).saturating_add(e))
                }
            }
        })
    }

    fn consume(&mut self, _now: u64, cost: u64) -> Option<Lease> {
        self.curr = self.curr.saturating_add(cost);
        None
    }
}

/// `floor(a * b / c)` without overflow, saturating; 0 when `c == 0`.
fn mul_div_floor(a: u64, b: u64, c: u64) -> u64 {
    if c == 0 {
        return 0;
    }
    u64::try_from(u128::from(a) * u128::from(b) / u128::from(c)).unwrap_or(u64::MAX)
}

/// `ceil(a * b / c)` without overflow, saturating; 0 when `c == 0`.
fn mul_div_ceil(a: u64, b: u64, c: u64) -> u64 {
    if c == 0 {
        return 0;
    }
    let c = u128::from(c);
    u64::try_from((u128::from(a) * u128::from(b)).div_ceil(c)).unwrap_or(u64::MAX)
}

/// Sliding log: `(t, cumulative units)` per distinct admitted millisecond,
/// oldest first. `base` is the cumulative count of the entries already
/// expired, so `used = last.cum - base` and the units freed by the expiry of
/// entry `k` are `cum_k - base` (a binary search finds the retry time).
/// Cumulative counts wrap; differences stay exact because the units in the
/// window never exceed `u64::MAX`.
struct LogState {
    /// The window of the last call (for the sweep).
    window: u64,
    base: u64,
    entries: VecDeque<(u64, u64)>,
}

impl LogState {
    fn used(&self) -> u64 {
        self.entries
            .back()
            .map_or(0, |&(_, cum)| cum.wrapping_sub(self.base))
    }

    fn expire(&mut self, now: u64) {
        while let Some(&(t, cum)) = self.entries.front() {
            if t.saturating_add(self.window) > now {
                break;
            }
            self.base = cum;
            self.entries.pop_front();
        }
    }

    fn shrink(&mut self) {
        if self.entries.capacity() > 16 && self.entries.len() < self.entries.capacity() / 4 {
            self.entries.shrink_to(self.entries.len() * 2);
        }
    }
}

impl Counter for LogState {
    type Ctx = u64;

    fn empty(_now: u64, w: u64) -> Self {
        Self {
            window: w,
            base: 0,
            entries: VecDeque::new(),
        }
    }

    fn normalize(&mut self, now: u64, w: u64) {
        self.window = w;
        self.expire(now);
    }

    fn eval(&self, now: u64, w: u64, check: &Check) -> Decision {
        let used = self.used();
        let expiry = |t: u64| t.saturating_add(w).saturating_sub(now);
        let reset = self.entries.front().map_or(0, |&(t, _)| expiry(t));
        decision(check, used, reset, || {
            // The oldest entries expire first; find the first whose expiry
            // frees `need` units.
            let need = used.saturating_sub(check.limit - check.cost);
            let k = self
                .entries
                .partition_point(|&(_, cum)| cum.wrapping_sub(self.base) < need);
            self.entries.get(k).map(|&(t, _)| expiry(t))
        })
    }

    fn consume(&mut self, now: u64, cost: u64) -> Option<Lease> {
        match self.entries.back_mut() {
            // Same millisecond (or the clock stepped back): merge.
            Some((t, cum)) if *t >= now => *cum = cum.wrapping_add(cost),
            Some(&mut (_, cum)) => self.entries.push_back((now, cum.wrapping_add(cost))),
            None => self.entries.push_back((now, self.base.wrapping_add(cost))),
        }
        None
    }
}

/// Calendar quota: the count of the period starting at `start`.
struct CalendarState {
    start: u64,
    count: u64,
    period: Period,
}

impl CalendarState {
    fn idle(&self, now: u64) -> bool {
        now >= period_bounds(self.period, self.start).1
    }
}

impl Counter for CalendarState {
    type Ctx = Period;

    fn empty(now: u64, period: Period) -> Self {
        Self {
            start: period_bounds(period, now).0,
            count: 0,
            period,
        }
    }

    fn normalize(&mut self, now: u64, period: Period) {
        let start = period_bounds(period, now).0;
        if self.period != period || self.start < start {
            *self = Self {
                start,
                count: 0,
                period,
            };
        }
        // `self.start > start`: the clock stepped back; keep the later state.
    }

    fn eval(&self, now: u64, period: Period, check: &Check) -> Decision {
        let until_end = period_bounds(period, now).1.saturating_sub(now);
        decision(check, self.count, until_end, || Some(until_end))
    }

    fn consume(&mut self, _now: u64, cost: u64) -> Option<Lease> {
        self.count = self.count.saturating_add(cost);
        None
    }
}

/// Concurrency: units held by live leases.
struct Inflight(Arc<AtomicU64>);

impl Inflight {
    fn idle(&self) -> bool {
        // Leases are only created under the shard lock, so with no other
        // reference none can appear while the sweep holds it.
        Arc::strong_count(&self.0) == 1 && self.0.load(Ordering::Acquire) == 0
    }
}

impl Counter for Inflight {
    type Ctx = ();

    fn empty(_now: u64, _: ()) -> Self {
        Self(Arc::new(AtomicU64::new(0)))
    }

    fn normalize(&mut self, _now: u64, _: ()) {}

    fn eval(&self, _now: u64, _: (), check: &Check) -> Decision {
        decision(check, self.0.load(Ordering::Acquire), 0, || {
            Some(CONCURRENCY_RETRY_MS)
        })
    }

    fn eval_missing(_now: u64, _: (), check: &Check) -> Decision {
        decision(check, 0, 0, || Some(CONCURRENCY_RETRY_MS))
    }

    fn consume(&mut self, _now: u64, cost: u64) -> Option<Lease> {
        // Admitted, so `used + cost <= limit`: no overflow. Releases only
        // lower the counter, so it stays within the limit.
        self.0.fetch_add(cost, Ordering::AcqRel);
        Some(Lease::counter(self.0.clone(), cost))
    }
}

/// Gauge: a level moved by admissions and [`CounterStore::adjust`].
struct Gauge(u64);

impl Counter for Gauge {
    type Ctx = ();

    fn empty(_now: u64, _: ()) -> Self {
        Self(0)
    }

    fn normalize(&mut self, _now: u64, _: ()) {}

    fn eval(&self, _now: u64, _: (), check: &Check) -> Decision {
        decision(check, self.0, 0, || None)
    }

    fn consume(&mut self, _now: u64, cost: u64) -> Option<Lease> {
        self.0 = self.0.saturating_add(cost);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::ManualClock;
    use proptest::prelude::*;

    const T0: u64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

    fn tenant(i: usize) -> TenantId {
        format!("t{i}").parse().unwrap()
    }

    fn admit(store: &MemoryStore, tenant: &TenantId, checks: &[Check]) -> Admission {
        store
            .admit(tenant, checks)
            .try_take()
            .expect("ready")
            .expect("ok")
    }

    fn window(ms: u64) -> Algorithm {
        Algorithm::SlidingWindow {
            window: Duration::from_millis(ms),
        }
    }

    fn log(ms: u64) -> Algorithm {
        Algorithm::SlidingLog {
            window: Duration::from_millis(ms),
        }
    }

    fn concurrency() -> Algorithm {
        Algorithm::Concurrency {
            lease_ttl: Duration::from_secs(1),
        }
    }

    /// Bytes held by the tables of every shard: buckets × (slot + control
    /// byte) (hashbrown keeps `capacity = buckets * 7 / 8`).
    fn table_bytes(store: &MemoryStore) -> usize {
        fn bytes<K, V>(map: &HashMap<K, V>) -> usize {
            if map.capacity() == 0 {
                return 0;
            }
            let buckets = (map.capacity() * 8 / 7).next_power_of_two();
            buckets * (std::mem::size_of::<(K, V)>() + 1) + 16
        }
        store
            .shards
            .iter()
            .map(|s| {
                let t = s.0.lock();
                t.windows.iter().map(|p| bytes(&p.counters)).sum::<usize>()
                    + bytes(&t.logs)
                    + bytes(&t.calendars)
                    + bytes(&t.concurrency)
                    + bytes(&t.gauges)
            })
            .sum()
    }

    #[test]
    fn small_slots() {
        assert_eq!(std::mem::size_of::<(TenantId, WindowState)>(), 40);
        assert_eq!(std::mem::size_of::<(Key, CalendarState)>(), 56);
        assert_eq!(std::mem::size_of::<(Key, Box<LogState>)>(), 40);
        assert_eq!(std::mem::size_of::<(Key, Inflight)>(), 40);
        assert_eq!(std::mem::size_of::<(Key, Gauge)>(), 40);
        assert_eq!(std::mem::size_of::<LogState>(), 48);
    }

    #[test]
    fn bytes_per_sliding_window_key() {
        let store = MemoryStore::builder()
            .shards(8)
            .clock(Arc::new(ManualClock::new(T0)))
            .build();
        let checks = [Check::new("calls", window(60_000), 100, 1)];
        let n = 100_000;
        for i in 0..n {
            assert!(admit(&store, &tenant(i), &checks).allowed());
        }
        assert_eq!(store.len(), n);
        let per_key = table_bytes(&store) as f64 / n as f64;
        println!("{per_key:.1} bytes per sliding-window key at {n} keys");
        assert!(per_key <= 100.0, "{per_key}");
    }

    #[test]
    fn evicts_idle_keys_of_every_kind() {
        let clock = Arc::new(ManualClock::new(T0 + 1));
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .sweep_every(0)
            .build();
        let t = tenant(1);
        let checks = [
            Check::new("w", window(1_000), 10, 1),
            Check::new("l", log(1_000), 10, 1),
            Check::new(
                "q",
                Algorithm::Calendar {
                    period: Period::Hour,
                },
                10,
                1,
            ),
            Check::new("c", concurrency(), 10, 1),
            Check::new("g", Algorithm::Gauge, 10, 1),
        ];
        let admission = admit(&store, &t, &checks);
        assert!(admission.allowed());
        assert_eq!(store.len(), 5);
        assert_eq!(store.evict_idle(), 0, "everything is live");
        drop(admission);
        assert_eq!(store.evict_idle(), 1, "the lease is gone");
        clock.advance_ms(999); // T0 + 1_000
        assert_eq!(store.evict_idle(), 0);
        clock.advance_ms(1);
        assert_eq!(store.evict_idle(), 1, "the log entry (T0 + 1) expired");
        clock.advance_ms(998); // T0 + 1_999
        assert_eq!(
            store.evict_idle(),
            0,
            "the window still weighs the previous one"
        );
        clock.advance_ms(1);
        assert_eq!(store.evict_idle(), 1, "two windows after T0");
        clock.set_ms(T0 + 3_600_000 - 1);
        assert_eq!(store.evict_idle(), 0);
        clock.set_ms(T0 + 3_600_000);
        assert_eq!(store.evict_idle(), 1, "the hour is over");
        clock.advance_ms(1_000 * 86_400_000);
        assert_eq!(store.evict_idle(), 0, "gauges never expire");
        assert_eq!(store.len(), 1);
        assert_eq!(store.adjust(&t, "g", -1).try_take().unwrap().unwrap(), 0);
        assert!(store.is_empty(), "a gauge at zero is dropped");
    }

    #[test]
    fn eviction_never_changes_decisions() {
        // A window used with a long and then a short length keeps the longest.
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .sweep_every(1)
            .build();
        let t = tenant(1);
        let long = Check::new("w", window(10_000), 2, 1);
        let short = Check::new("w", window(1_000), 2, 1);
        assert!(admit(&store, &t, std::slice::from_ref(&long)).allowed());
        assert!(admit(&store, &t, std::slice::from_ref(&short)).allowed());
        clock.advance_ms(2_500);
        // Idle for a 1 s window, but the policy was seen with 10 s: kept.
        store.evict_idle();
        assert_eq!(store.len(), 1);
        assert!(!admit(&store, &t, &[long]).allowed());
    }

    #[test]
    fn longer_window_on_an_existing_counter_is_kept() {
        // A policy first used with 1 s, then (say after a plan reload) with
        // 10 s on the same counter: the sweep keeps it for the 10 s window.
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .sweep_every(0)
            .build();
        let t = tenant(1);
        let short = [Check::new("w", window(1_000), 2, 1)];
        let long = [Check::new("w", window(10_000), 2, 1)];
        assert!(admit(&store, &t, &short).allowed());
        assert!(admit(&store, &t, &long).allowed());
        clock.advance_ms(2_500);
        assert_eq!(store.evict_idle(), 0);
        assert!(!admit(&store, &t, &long).allowed());
    }

    #[test]
    fn churn_stays_bounded() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::builder()
            .shards(8)
            .clock(clock.clone())
            .build();
        let mut peak = 0;
        let mut peak_bytes = 0;
        for i in 0..200_000 {
            let t = tenant(i);
            let checks = [
                Check::new("w", window(1_000), 10, 1),
                Check::new("l", log(1_000), 10, 1),
                Check::new("c", concurrency(), 10, 1),
            ];
            assert!(admit(&store, &t, &checks).allowed());
            assert_eq!(store.adjust(&t, "g", 1).try_take().unwrap().unwrap(), 1);
            assert_eq!(store.adjust(&t, "g", -1).try_take().unwrap().unwrap(), 0);
            clock.advance_ms(1);
            if i % 1_000 == 0 {
                peak = peak.max(store.len());
                peak_bytes = peak_bytes.max(table_bytes(&store));
            }
        }
        // Live: 2 000 windows (2 s) and 1 000 logs (1 s), plus what a shard
        // gathers between two sweeps (1 024 calls per shard).
        println!("peak {peak} counters, {peak_bytes} bytes of tables");
        assert!(peak < 30_000, "{peak}");
        assert!(peak_bytes < 4 << 20, "{peak_bytes}");
        clock.advance_ms(2_000);
        store.evict_idle();
        assert!(store.is_empty());
        // The tables shrank with the sweep.
        assert!(table_bytes(&store) < 64 << 10, "{}", table_bytes(&store));
    }

    #[test]
    fn log_merges_milliseconds_and_shrinks() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::builder()
            .shards(1)
            .clock(clock.clone())
            .build();
        let t = tenant(1);
        let c = [Check::new("l", log(10_000), 100_000, 1)];
        for _ in 0..1_000 {
            assert!(admit(&store, &t, &c).allowed());
        }
        let entries = |store: &MemoryStore| {
            let tables = store.shards[0].0.lock();
            let log = tables.logs.values().next().unwrap();
            (log.entries.len(), log.entries.capacity())
        };
        assert_eq!(entries(&store).0, 1);
        for _ in 0..5_000 {
            clock.advance_ms(1);
            assert!(admit(&store, &t, &c).allowed());
        }
        assert_eq!(entries(&store).0, 5_001);
        clock.advance_ms(9_990);
        store.evict_idle();
        let (len, capacity) = entries(&store);
        assert_eq!(len, 10);
        assert!(capacity < 100, "{capacity}");
    }

    #[test]
    fn lease_keeps_concurrency_counter() {
        let store = MemoryStore::with_clock(Arc::new(ManualClock::new(T0)));
        let t = tenant(1);
        let c = [Check::new("c", concurrency(), 1, 1)];
        let held = admit(&store, &t, &c);
        assert!(held.allowed());
        assert_eq!(store.evict_idle(), 0);
        assert!(!admit(&store, &t, &c).allowed());
        drop(held);
        assert_eq!(store.evict_idle(), 1);
        assert!(admit(&store, &t, &c).allowed());
    }

    // -----------------------------------------------------------------------
    // The sliding window and the sliding log against a literal reading of
    // the spec (module docs of `store`), on random request sequences.

    /// Reference sliding window: counts per fixed window index.
    #[derive(Default)]
    struct RefWindow {
        counts: std::collections::BTreeMap<u64, u64>,
    }

    impl RefWindow {
        fn decide(&mut self, now: u64, w: u64, limit: u64, cost: u64) -> Decision {
            let start = now - now % w;
            let elapsed = now - start;
            let curr = self.counts.get(&start).copied().unwrap_or(0);
            let prev = start
                .checked_sub(w)
                .and_then(|p| self.counts.get(&p))
                .copied()
                .unwrap_or(0);
            let used = curr + prev * (w - elapsed) / w;
            let allowed = used + cost <= limit;
            let retry_after = if allowed || cost > limit {
                None
            } else if curr + cost <= limit {
                let e = ((prev - (limit - cost - curr)) * w).div_ceil(prev);
                Some(e - elapsed)
            } else {
                let e = ((curr - (limit - cost)) * w).div_ceil(curr);
                Some(start + w - now + e)
            };
            if allowed {
                *self.counts.entry(start).or_default() += cost;
            }
            let used = if allowed { used + cost } else { used };
            Decision {
                allowed,
                limit,
                used,
                remaining: limit.saturating_sub(used),
                reset: Duration::from_millis(start + w - now),
                retry_after: retry_after.map(Duration::from_millis),
            }
        }
    }

    /// Reference sliding log: every admitted `(t, units)`.
    #[derive(Default)]
    struct RefLog {
        entries: Vec<(u64, u64)>,
    }

    impl RefLog {
        fn decide(&mut self, now: u64, w: u64, limit: u64, cost: u64) -> Decision {
            let live: Vec<(u64, u64)> = self
                .entries
                .iter()
                .copied()
                .filter(|&(t, _)| t + w > now)
                .collect();
            let used: u64 = live.iter().map(|e| e.1).sum();
            let allowed = used + cost <= limit;
            let retry_after = if allowed || cost > limit {
                None
            } else {
                let need = used - (limit - cost);
                let mut freed = 0;
                live.iter().find_map(|&(t, units)| {
                    freed += units;
                    (freed >= need).then_some(t + w - now)
                })
            };
            if allowed && cost > 0 {
                self.entries.push((now, cost));
            }
            let oldest = self.entries.iter().find(|&&(t, _)| t + w > now);
            let used = if allowed { used + cost } else { used };
            Decision {
                allowed,
                limit,
                used,
                remaining: limit.saturating_sub(used),
                reset: Duration::from_millis(oldest.map_or(0, |&(t, _)| t + w - now)),
                retry_after: retry_after.map(Duration::from_millis),
            }
        }
    }

    proptest! {
        #[test]
        fn matches_reference(
            w in 1u64..5_000,
            limit in 0u64..20,
            steps in proptest::collection::vec((0u64..3_000, 0u64..6, any::<bool>()), 1..200),
        ) {
            let clock = Arc::new(ManualClock::new(T0 + 7));
            let store = MemoryStore::builder().shards(1).sweep_every(1).clock(clock.clone()).build();
            let t = tenant(1);
            let (mut rw, mut rl) = (RefWindow::default(), RefLog::default());
            for (dt, cost, peek) in steps {
                clock.advance_ms(dt);
                let now = clock.now_ms();
                let checks = [Check::new("w", window(w), limit, cost), Check::new("l", log(w), limit, cost)];
                for (i, check) in checks.iter().enumerate() {
                    let batch = std::slice::from_ref(check);
                    if peek {
                        let p = store.peek(&t, batch).try_take().unwrap().unwrap()[0];
                        let a = admit(&store, &t, batch).decisions[0];
                        prop_assert_eq!(p, a);
                        let r = if i == 0 { rw.decide(now, w, limit, cost) } else { rl.decide(now, w, limit, cost) };
                        prop_assert_eq!(a, r, "{:?} at +{}", check.algorithm, now - T0);
                    } else {
                        let a = admit(&store, &t, batch).decisions[0];
                        let r = if i == 0 { rw.decide(now, w, limit, cost) } else { rl.decide(now, w, limit, cost) };
                        prop_assert_eq!(a, r, "{:?} at +{}", check.algorithm, now - T0);
                    }
                }
            }
        }

        #[test]
        fn retry_after_is_enough(
            w in 1u64..5_000,
            limit in 1u64..20,
            steps in proptest::collection::vec((0u64..3_000, 1u64..6), 1..60),
        ) {
            // `MemoryStore` itself: replaying the same history on a fresh
            // store, a request denied with `retry_after` passes at exactly
            // now + retry_after (and, for the exact log, not a millisecond
            // earlier).
            for exact in [false, true] {
                let check = |cost| Check::new("p", if exact { log(w) } else { window(w) }, limit, cost);
                let mut history: Vec<(u64, u64)> = Vec::new();
                let mut now = T0;
                for &(dt, cost) in &steps {
                    now += dt;
                    let cost = cost.min(limit);
                    history.push((now, cost));
                    // The store as it was before the last request of `history`.
                    let replay = |until: usize| {
                        let clock = Arc::new(ManualClock::new(T0));
                        let store = MemoryStore::builder().shards(1).clock(clock.clone()).build();
                        let t = tenant(1);
                        for &(at, c) in &history[..until] {
                            clock.set_ms(at);
                            drop(admit(&store, &t, &[check(c)]));
                        }
                        (clock, store, t)
                    };
                    let (clock, store, t) = replay(history.len() - 1);
                    clock.set_ms(now);
                    let d = admit(&store, &t, &[check(cost)]).decisions[0];
                    let Some(retry) = d.retry_after else { continue };
                    prop_assert!(!d.allowed);
                    let at = now + retry.as_millis() as u64;
                    if exact && retry.as_millis() > 0 {
                        clock.set_ms(at - 1);
                        let early = store.peek(&t, &[check(cost)]).try_take().unwrap().unwrap()[0];
                        prop_assert!(!early.allowed, "log: allowed 1 ms before retry {:?}", retry);
                    }
                    clock.set_ms(at);
                    let later = admit(&store, &t, &[check(cost)]).decisions[0];
                    prop_assert!(later.allowed, "exact {}: not allowed after retry {:?}", exact, retry);
                }
            }
        }
    }
}
