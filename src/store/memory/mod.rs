//! The in-process [`CounterStore`]: [`MemoryStore`].

use std::borrow::{Borrow, BorrowMut};
use std::hash::{BuildHasher, Hash, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

/// The maps of the store: hashbrown with foldhash, seeded per map (a fast,
/// non-cryptographic hash; the random seed keeps tenants that pick their
/// own ids from crafting collisions). SipHash cost 150 instructions per
/// lookup of a short id, foldhash about 20.
type HashMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;

mod approx;
mod calendar;
mod gauge;
mod gcra;
mod hot;
mod leases;
mod log;
mod soft;
mod window;

pub(crate) use gcra::Params as GcraParams;

use approx::ApproxState;
use calendar::CalendarState;
use gauge::{moved, Gauge};
use gcra::GcraState;
use hot::HotWindow;
use leases::{Inflight, Leases};
use log::LogState;
use soft::SoftMarks;
use window::{Geometry, SubBuckets, NARROW_LIMIT};

use super::{
    Admission, Algorithm, Check, Clock, CounterStore, Decision, Decisions, Lease, StoreResult,
    SystemClock,
};
use crate::future::MaybeReady;
use crate::tenant::TenantId;

/// Default minimum number of calls between two sweeps of a shard.
const DEFAULT_SWEEP_EVERY: u64 = 1024;
/// Most shards a store may have.
const MAX_SHARDS: usize = 4096;
/// Contended lock acquisitions in a row, on one shard, for one sliding
/// window key, that make it a hot window (see [`hot`]).
const PROMOTE_AFTER: u32 = 4;
/// Ids of stores, for the per-thread cache of hot windows.
static NEXT_STORE_ID: AtomicU64 = AtomicU64::new(0);

/// An in-memory, sharded [`CounterStore`] for one process.
///
/// It implements every algorithm of the [store
/// semantics](crate::store#semantics-every-store-implements-exactly-these)
/// synchronously: each call answers with [`MaybeReady::ready`], takes one
/// mutex (none for a one-check sliding-window call on a [hot
/// key](MemoryStore#hot-keys)), and allocates nothing for its answer ([`Decisions`](super::Decisions) keeps up to four inline; plus the state of
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
/// nothing of its own. Every algorithm but the gauge has one table per
/// policy keyed by the tenant alone (the policy is found by a short scan of
/// the shard's policy names, pointer first): a lookup hashes and compares
/// the tenant id only. Maps hash with foldhash, seeded per map. Memory per key, counting the
/// hash map's buckets (`size_of::<(Key, Value)>() + 1` control byte per
/// bucket, at a load factor between 7/16 and 7/8):
///
/// | algorithm | bytes per bucket | heap besides the map |
/// |---|---|---|
/// | sliding window (8 sub-buckets), limits ≤ 65 535 | 41 | — |
/// | the same, a limit above 65 535 seen for the policy | 25 | 80-byte box |
/// | sliding window, two counters | 41 | — |
/// | GCRA | 25 | — |
/// | sliding log | 25 | 48-byte box + 16 bytes per distinct admitted millisecond in the window |
/// | calendar | 41 | — |
/// | concurrency | 25 | 24-byte `Arc` |
/// | gauge | 41 | — |
///
/// That is 47 bytes per active sliding-window key when a table is full and
/// 94 right after it has doubled; `benches/memory.rs` (see BENCHMARKS.md)
/// measures the heap from 25 000 to 1 000 000 keys.
///
/// # Hot keys
///
/// When one-check calls on the same sliding-window key find its shard's lock
/// taken several times in a row, the key's state moves out of the table into
/// a *hot window* (about 130 bytes, beside the table): one atomic word holds
/// the newest bucket's index and count, the older buckets sit beside it. A
/// one-check call on that key (without a soft threshold) then decides and
/// counts with one compare-and-swap, without the lock, finding the window in
/// a small per-thread cache (the last four hot windows the thread used); the
/// decisions are exactly those of the locked path. Everything else — a bucket
/// rollover, a batch, a soft threshold — takes the lock as before; a batch
/// moves the key back into the table first. Hot windows are swept like any
/// other counter, and only keys contended on their own lock become hot, so
/// the memory per key above is unchanged. A thread's cache keeps the last
/// hot windows it used (of any store) alive until it replaces them or exits.
///
/// # Eviction
///
/// A counter whose state has fully expired is equivalent to no counter, so it
/// may be dropped: a sub-bucket window once its newest bucket left the
/// window, a two-counter window two windows after the start of the fixed
/// window of its last use, a GCRA bucket once full again, a sliding log once
/// its last entry left the window, a calendar counter once its
/// period is over, a concurrency counter at zero with no lease alive, a gauge
/// at zero. Each shard sweeps itself after `max(sweep_every, n)` calls
/// that take its lock,
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
/// The sliding log is exact. The default sliding window (8 sub-buckets)
/// never admits more than the limit in any window-long span and refuses at
/// most what units admitted up to one bucket (`W/8`) too long ago still
/// block (formula and bound in `src/store/memory/window.rs`, checked against
/// brute force by `tests/rate_algorithms.rs`). GCRA decides as governor
/// does. The two-counter window assumes that the previous fixed window's
/// requests were spread evenly over it, and errs both ways. `cargo bench
/// --bench accuracy` measures every algorithm on seven request traces
/// (BENCHMARKS.md §5).
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
    /// Picks the shard of a tenant (seeded per store).
    hasher: foldhash::fast::RandomState,
    clock: Arc<dyn Clock>,
    sweep_every: u64,
    /// Names the store in the per-thread cache of hot windows.
    id: u64,
    /// Whether a key was ever made a hot window (until then, calls do not
    /// look at the per-thread cache).
    any_hot: AtomicBool,
    /// Contended acquisitions in a row that make a key hot (0: every
    /// sliding-window key is made hot at its first one-check call; tests).
    promote_after: u32,
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
#[must_use]
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
            hasher: foldhash::fast::RandomState::default(),
            clock: self.clock,
            sweep_every: self.sweep_every,
            id: NEXT_STORE_ID.fetch_add(1, Ordering::Relaxed),
            any_hot: AtomicBool::new(false),
            promote_after: PROMOTE_AFTER,
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
        self.shard_hashed(tenant).1
    }

    /// The tenant's hash and shard.
    fn shard_hashed(&self, tenant: &TenantId) -> (u64, &Shard) {
        let hash = self.hasher.hash_one(tenant.as_str());
        // `shards.len()` is a power of two.
        (hash, &self.shards[hash as usize & (self.shards.len() - 1)])
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
        // One sliding-window check on a hot key: without the lock.
        if let [check] = checks {
            if let Algorithm::SlidingWindow { window } = check.algorithm {
                if check.soft_percent.is_none() && self.any_hot.load(Ordering::Relaxed) {
                    let g = Geometry::new(window_ms(window));
                    if let Some(decision) = hot::take_cached(self.id, tenant, check, g, now, commit)
                    {
                        let mut admission = Admission::new(Decisions::new(), None);
                        admission.decisions.push(decision);
                        return admission.with_soft_crossed(0);
                    }
                }
            }
        }
        let (hash, shard) = self.shard_hashed(tenant);
        let (mut tables, contended) = match shard.0.try_lock() {
            Some(tables) => (tables, false),
            None => (shard.0.lock(), true),
        };
        let tables = &mut *tables;
        let mut leases = Leases::default();
        // The answer is built where it is returned: its decisions (inline,
        // ~270 bytes) are written in place, not moved into it.
        let mut admission = Admission::new(Decisions::new(), None);
        if let [check] = checks {
            // One check: one lookup.
            let decision = match check.algorithm {
                Algorithm::SlidingWindow { window } => {
                    let g = Geometry::new(window_ms(window));
                    let promote = self.promote_after == 0
                        || (contended
                            && tables.contended_again(hash, check, g) >= self.promote_after);
                    let op = Op::Take {
                        commit,
                        force: false,
                        evaluated: None,
                    };
                    let (decision, hot) =
                        tables.apply_window(tenant, check, g, now, op, &mut leases, promote);
                    if let Some(hot) = hot {
                        // (Written once: the line is read by every call.)
                        if !self.any_hot.load(Ordering::Relaxed) {
                            self.any_hot.store(true, Ordering::Relaxed);
                        }
                        hot::remember(self.id, tenant, check, g, &hot);
                    }
                    decision
                }
                _ => tables.take(tenant, check, now, commit, &mut leases),
            };
            admission.decisions.push(decision);
        } else if checks.iter().all(|c| !c.shadow) && distinct_counters(checks) {
            tables.run_at_once(
                tenant,
                checks,
                now,
                commit,
                &mut leases,
                &mut admission.decisions,
            );
        } else {
            let decisions = &mut admission.decisions;
            decisions.extend(
                checks
                    .iter()
                    .map(|check| tables.apply(tenant, check, now, Op::Eval, &mut leases)),
            );
            // Shadowed checks consume only when every check allows; the
            // others when every one that is not shadowed does.
            let all = decisions.iter().all(|d| d.allowed);
            let enforced = all
                || decisions
                    .iter()
                    .zip(checks)
                    .all(|(d, c)| d.allowed || c.shadow);
            if enforced {
                for (i, (decision, check)) in decisions.iter_mut().zip(checks).enumerate() {
                    if !all && check.shadow {
                        continue;
                    }
                    // The first pass's decision stands unless an earlier
                    // check of the batch has consumed from the same counter.
                    let fresh = !checks[..i].iter().any(|c| same_counter(c, check));
                    let op = Op::Take {
                        commit,
                        force: true,
                        evaluated: fresh.then_some(*decision),
                    };
                    *decision = tables.apply(tenant, check, now, op, &mut leases);
                }
            }
        }
        let decisions = &admission.decisions;
        let mut crossed = 0;
        if commit && checks.iter().any(|c| c.soft_percent.is_some()) {
            // The checks that consumed: every one when all allow; else,
            // when admitted, those not shadowed.
            let admitted = decisions
                .iter()
                .zip(checks)
                .all(|(d, c)| d.allowed || c.shadow);
            let all = decisions.iter().all(|d| d.allowed);
            for (i, (check, decision)) in checks.iter().zip(decisions.iter()).take(64).enumerate() {
                if admitted
                    && (all || !check.shadow)
                    && tables.soft.cross(tenant, check, decision, now)
                {
                    crossed |= 1 << i;
                }
            }
        }
        self.after_call(tables, now);
        admission.lease = leases.into_lease();
        admission.soft_crossed_bits = Some(crossed);
        admission
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
    #[inline(always)]
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
    windows: Vec<PolicyTable<Windows>>,
    /// Two-counter windows, per policy too.
    approx: Vec<PolicyTable<HashMap<TenantId, ApproxState>>>,
    /// GCRA, sliding logs, calendar quotas and concurrency counters, per
    /// policy keyed by tenant too (one short hash per lookup).
    gcra: Vec<PolicyTable<HashMap<TenantId, GcraState>>>,
    logs: Vec<PolicyTable<HashMap<TenantId, Box<LogState>>>>,
    calendars: Vec<PolicyTable<HashMap<TenantId, CalendarState>>>,
    concurrency: Vec<PolicyTable<HashMap<TenantId, Inflight>>>,
    gauges: HashMap<Key, Gauge>,
    /// Soft-threshold crossings remembered (not counted as counters).
    soft: SoftMarks,
    /// Calls since the last sweep.
    calls: u64,
    /// Counters left by the last sweep: the next one is due after as many
    /// calls (at least `sweep_every`), so that sweeping costs O(1) per call
    /// however many counters each call creates.
    swept_len: u64,
    /// The last sliding-window key (tenant hash, policy, window) whose call
    /// found the lock contended, and how many such calls in a row.
    streak: (u64, u32),
}

/// The counters of one policy keyed by tenant.
struct PolicyTable<M> {
    policy: Arc<str>,
    /// Sub-bucket windows: the window of the counters. Two-counter windows:
    /// the longest window the policy was used with (the sweep needs it and
    /// the 24-byte state does not keep it).
    window: u64,
    counters: M,
}

/// The table of `policy` among `tables`, created (with `window`) when missing.
#[inline(always)]
fn policy_table<'a, M: Default>(
    tables: &'a mut Vec<PolicyTable<M>>,
    policy: &Arc<str>,
    window: u64,
) -> &'a mut PolicyTable<M> {
    let found = tables
        .iter()
        .position(|p| Arc::ptr_eq(&p.policy, policy) || p.policy == *policy);
    let index = found.unwrap_or_else(|| {
        tables.push(PolicyTable {
            policy: policy.clone(),
            window,
            counters: M::default(),
        });
        tables.len() - 1
    });
    &mut tables[index]
}

/// The sub-bucket counters of one policy: in the table, and the hot ones
/// (see [`hot`]) beside it.
#[derive(Default)]
struct Windows {
    cells: Buckets,
    hot: HashMap<TenantId, Arc<HotWindow>>,
}

impl Windows {
    fn len(&self) -> usize {
        self.cells.len() + self.hot.len()
    }

    fn contains(&self, tenant: &TenantId) -> bool {
        self.cells.contains(tenant) || self.hot.contains_key(tenant.as_str())
    }

    /// Removes the tenant's counter (a hot one is retired).
    fn take(&mut self, tenant: &TenantId) -> Option<SubBuckets<u64>> {
        if !self.hot.is_empty() {
            if let Some(hot) = self.hot.remove(tenant.as_str()) {
                let state = hot.begin();
                hot.retire();
                return Some(state);
            }
        }
        self.cells.take(tenant)
    }

    /// Moves the tenant's hot window, if any, back into the table.
    #[inline(always)]
    fn demote(&mut self, tenant: &TenantId) {
        if self.hot.is_empty() {
            return;
        }
        if let Some(hot) = self.hot.remove(tenant.as_str()) {
            let state = hot.begin();
            hot.retire();
            self.cells.put(tenant.clone(), state);
        }
    }

    /// Moves the tenant's counter from the table into a hot window; the
    /// window, or `None` when there is no counter (or its count does not
    /// fit a hot window).
    fn promote(&mut self, tenant: &TenantId) -> Option<Arc<HotWindow>> {
        let state = self.cells.take(tenant)?;
        match HotWindow::new(&state) {
            Some(hot) => {
                let hot = Arc::new(hot);
                self.hot.insert(tenant.clone(), hot.clone());
                Some(hot)
            }
            None => {
                self.cells.put(tenant.clone(), state);
                None
            }
        }
    }

    fn sweep(&mut self, now: u64, g: Geometry) {
        self.cells.sweep(now, g);
        self.hot.retain(|_, hot| {
            let state = hot.begin();
            if state.idle(now, g) {
                hot.retire();
                return false;
            }
            // The state read fits the word it came from.
            hot.publish(&state)
        });
        shrink(&mut self.hot);
    }
}

/// The sub-bucket counters of a policy's table: 16-bit counts while every
/// limit it was checked against fits them, 64-bit (boxed) after.
enum Buckets {
    Narrow(HashMap<TenantId, SubBuckets<u16>>),
    Wide(HashMap<TenantId, Box<SubBuckets<u64>>>),
}

impl Default for Buckets {
    fn default() -> Self {
        Buckets::Narrow(HashMap::default())
    }
}

impl Buckets {
    fn len(&self) -> usize {
        match self {
            Buckets::Narrow(m) => m.len(),
            Buckets::Wide(m) => m.len(),
        }
    }

    /// Widens the counts (a limit above 65 535 was seen).
    fn widen(&mut self) {
        if let Buckets::Narrow(m) = self {
            let wide = m
                .drain()
                .map(|(t, s)| (t, Box::new(s.widen::<u64>())))
                .collect();
            *self = Buckets::Wide(wide);
        }
    }

    fn contains(&self, tenant: &TenantId) -> bool {
        match self {
            Buckets::Narrow(m) => m.contains_key(tenant.as_str()),
            Buckets::Wide(m) => m.contains_key(tenant.as_str()),
        }
    }

    fn take(&mut self, tenant: &TenantId) -> Option<SubBuckets<u64>> {
        match self {
            Buckets::Narrow(m) => m.remove(tenant.as_str()).map(|s| s.widen()),
            Buckets::Wide(m) => m.remove(tenant.as_str()).map(|s| *s),
        }
    }

    fn put(&mut self, tenant: TenantId, state: SubBuckets<u64>) {
        // A hot window counts in 64 bits, also for a limit above 65 535
        // that only ever reached it without the lock (so without widening
        // the table).
        if state.counts().iter().any(|&c| c > NARROW_LIMIT) {
            self.widen();
        }
        match self {
            Buckets::Narrow(m) => {
                m.insert(tenant, state.widen());
            }
            Buckets::Wide(m) => {
                m.insert(tenant, Box::new(state));
            }
        }
    }

    fn sweep(&mut self, now: u64, g: Geometry) {
        match self {
            Buckets::Narrow(m) => {
                m.retain(|_, s| !s.idle(now, g));
                shrink(m);
            }
            Buckets::Wide(m) => {
                m.retain(|_, s| !s.idle(now, g));
                shrink(m);
            }
        }
    }
}

/// What [`Tables::apply`] does with one check.
#[derive(Debug, Clone, Copy)]
enum Op {
    /// The decision as if the batch were denied (nothing consumed).
    Eval,
    /// The decision, and when allowed (or `force`: the whole batch was),
    /// the admitted one, consuming when `commit`. `evaluated`: the decision
    /// an [`Op::Eval`] of the same check made on the same state in this
    /// call (nothing consumed from its counter since), not made again.
    Take {
        commit: bool,
        force: bool,
        evaluated: Option<Decision>,
    },
}

impl Op {
    /// `(commit, force, evaluated)`; all off for [`Op::Eval`].
    #[inline]
    fn parts(self) -> (bool, bool, Option<Decision>) {
        match self {
            Op::Eval => (false, false, None),
            Op::Take {
                commit,
                force,
                evaluated,
            } => (commit, force, evaluated),
        }
    }
}

/// Calls `$f::<State, ..>(map, lookup, key, ctx, $args..)` with the table
/// and state type of `$check`'s algorithm.
macro_rules! with_table {
    ($tables:expr, $tenant:expr, $check:expr, $now:expr, $f:ident($($arg:expr),*)) => {{
        let (tables, tenant, check, now) = ($tables, $tenant, $check, $now);
        let key = || Key::new(tenant, check);
        let view = (tenant.as_str(), &*check.policy);
        // The key of a per-policy table: the tenant, cloned only to insert.
        let id = || tenant.clone();
        match check.algorithm {
            Algorithm::SlidingWindow { window } => {
                let g = Geometry::new(window_ms(window));
                let table = tables.sub_buckets(tenant, check, g, now);
                // A batch counts on the table, under the lock, atomically.
                table.demote(tenant);
                match &mut table.cells {
                    Buckets::Narrow(m) => {
                        $f::<SubBuckets<u16>, _, _, _>(m, tenant, id, g $(, $arg)*)
                    }
                    Buckets::Wide(m) => {
                        $f::<SubBuckets<u64>, _, _, _>(m, tenant, id, g $(, $arg)*)
                    }
                }
            }
            Algorithm::SlidingWindowApprox { window } => {
                let w = window_ms(window);
                let table = policy_table(&mut tables.approx, &check.policy, w);
                table.window = table.window.max(w);
                $f::<ApproxState, _, _, _>(&mut table.counters, tenant, id, w $(, $arg)*)
            }
            Algorithm::Gcra { window, burst } => {
                let p = GcraParams::new(window, check.limit, burst);
                let table = policy_table(&mut tables.gcra, &check.policy, 0);
                $f::<GcraState, _, _, _>(&mut table.counters, tenant, id, p $(, $arg)*)
            }
            Algorithm::SlidingLog { window } => {
                let w = window_ms(window);
                let table = policy_table(&mut tables.logs, &check.policy, 0);
                $f::<LogState, _, _, _>(&mut table.counters, tenant, id, w $(, $arg)*)
            }
            Algorithm::Calendar { period } => {
                let table = policy_table(&mut tables.calendars, &check.policy, 0);
                let bounds = calendar::Bounds::at(period, now);
                $f::<CalendarState, _, _, _>(&mut table.counters, tenant, id, bounds $(, $arg)*)
            }
            Algorithm::Concurrency { .. } => {
                let table = policy_table(&mut tables.concurrency, &check.policy, 0);
                $f::<Inflight, _, _, _>(&mut table.counters, tenant, id, () $(, $arg)*)
            }
            Algorithm::Gauge => $f::<Gauge, _, _, _>(&mut tables.gauges, view, key, () $(, $arg)*),
        }
    }};
}

impl Tables {
    fn len(&self) -> usize {
        self.windows.iter().map(|p| p.counters.len()).sum::<usize>()
            + counted(&self.approx)
            + counted(&self.gcra)
            + counted(&self.logs)
            + counted(&self.calendars)
            + counted(&self.concurrency)
            + self.gauges.len()
    }

    /// The sub-bucket table of `check`'s policy for window `g`, created
    /// when missing and widened for the check's limit. A policy used with
    /// several windows has one table per window; a tenant's counter moves to
    /// the table of the window it is checked with, rebased (see
    /// [`SubBuckets::rebase`]).
    #[inline]
    fn sub_buckets(
        &mut self,
        tenant: &TenantId,
        check: &Check,
        g: Geometry,
        now: u64,
    ) -> &mut Windows {
        // The usual shape: one window table, this policy's with this window
        // (the check carries the table's own name): no scan.
        let only = matches!(
            &self.windows[..],
            [table] if Arc::ptr_eq(&table.policy, &check.policy) && table.window == g.w
        );
        if only {
            let table = &mut self.windows[0].counters;
            if check.limit > NARROW_LIMIT {
                table.cells.widen();
            }
            return table;
        }
        self.sub_buckets_scan(tenant, check, g, now)
    }

    /// [`sub_buckets`](Self::sub_buckets) of any other shape: a scan of
    /// the shard's window tables.
    #[inline(never)]
    fn sub_buckets_scan(
        &mut self,
        tenant: &TenantId,
        check: &Check,
        g: Geometry,
        now: u64,
    ) -> &mut Windows {
        let same = |p: &PolicyTable<Windows>| {
            Arc::ptr_eq(&p.policy, &check.policy) || p.policy == check.policy
        };
        let mut index = None;
        let mut others = false;
        for (i, table) in self.windows.iter().enumerate() {
            if same(table) {
                if table.window == g.w {
                    index = Some(i);
                } else {
                    others = true;
                }
            }
        }
        let index = index.unwrap_or_else(|| {
            self.windows.push(PolicyTable {
                policy: check.policy.clone(),
                window: g.w,
                counters: Windows::default(),
            });
            self.windows.len() - 1
        });
        if check.limit > NARROW_LIMIT {
            self.windows[index].counters.cells.widen();
        }
        if others && !self.windows[index].counters.contains(tenant) {
            let moved = self.windows.iter_mut().find_map(|table| {
                let old = Geometry::new(table.window);
                (same(table) && table.window != g.w)
                    .then(|| table.counters.take(tenant))
                    .flatten()
                    .map(|state| state.rebase::<u64>(now, old, g))
            });
            if let Some(state) = moved {
                self.windows[index]
                    .counters
                    .cells
                    .put(tenant.clone(), state);
            }
        }
        &mut self.windows[index].counters
    }

    /// How many one-check calls in a row found the lock contended for this
    /// sliding-window key (this one included).
    fn contended_again(&mut self, hash: u64, check: &Check, g: Geometry) -> u32 {
        let key = hash ^ (Arc::as_ptr(&check.policy) as *const u8 as u64) ^ g.w.rotate_left(32);
        if self.streak.0 == key {
            self.streak.1 = self.streak.1.saturating_add(1);
        } else {
            self.streak = (key, 1);
        }
        self.streak.1
    }

    /// [`apply`](Self::apply) for the one sliding-window check of a call:
    /// on the key's hot window when it has one (busy meanwhile), else on
    /// the table, then making the key hot when `promote`. Returns the hot
    /// window used or made, for the caller's per-thread cache.
    #[allow(clippy::too_many_arguments)]
    fn apply_window(
        &mut self,
        tenant: &TenantId,
        check: &Check,
        g: Geometry,
        now: u64,
        op: Op,
        leases: &mut Leases,
        promote: bool,
    ) -> (Decision, Option<Arc<HotWindow>>) {
        let table = self.sub_buckets(tenant, check, g, now);
        let hot = if table.hot.is_empty() {
            None
        } else {
            table.hot.get(tenant.as_str()).cloned()
        };
        if let Some(hot) = hot {
            let mut state = hot.begin();
            let decision = apply_to(&mut state, g, now, check, op, leases);
            if hot.publish(&state) {
                return (decision, Some(hot));
            }
            // The count outgrew the word: back into the table.
            hot.retire();
            table.hot.remove(tenant.as_str());
            table.cells.put(tenant.clone(), state);
            return (decision, None);
        }
        let id = || tenant.clone();
        let decision = match &mut table.cells {
            Buckets::Narrow(m) => {
                apply::<SubBuckets<u16>, _, _, _>(m, tenant, id, g, now, check, op, leases)
            }
            Buckets::Wide(m) => {
                apply::<SubBuckets<u64>, _, _, _>(m, tenant, id, g, now, check, op, leases)
            }
        };
        let hot = if promote { table.promote(tenant) } else { None };
        (decision, hot)
    }

    /// Evaluates `check` and, depending on `op`, takes it.
    fn apply(
        &mut self,
        tenant: &TenantId,
        check: &Check,
        now: u64,
        op: Op,
        leases: &mut Leases,
    ) -> Decision {
        with_table!(self, tenant, check, now, apply(now, check, op, leases))
    }

    /// [`apply`](Self::apply) with `Op::Take { commit, force: false,
    /// evaluated: None }`, the operation of a one-check call and of a
    /// batch's first pass: the operation known here, its unused branches
    /// are not compiled in.
    fn take(
        &mut self,
        tenant: &TenantId,
        check: &Check,
        now: u64,
        commit: bool,
        leases: &mut Leases,
    ) -> Decision {
        let op = Op::Take {
            commit,
            force: false,
            evaluated: None,
        };
        with_table!(self, tenant, check, now, apply(now, check, op, leases))
    }

    /// Takes back what a committed [`Op::Take`] of `check` consumed in this
    /// call; the decision before consumption ([`undo`]).
    fn undo(&mut self, tenant: &TenantId, check: &Check, now: u64) -> Decision {
        with_table!(self, tenant, check, now, undo(now, check))
    }

    /// A batch in one pass, for checks that are not shadowed and count on
    /// distinct counters: each check is evaluated and, when it allows,
    /// taken at once (one lookup per check). When a check refuses, what
    /// the checks before it consumed is taken back and the rest are only
    /// evaluated: the same decisions and the same state as evaluating every
    /// check first and taking them all only when every one allows, since no
    /// check's counter is touched by another.
    fn run_at_once(
        &mut self,
        tenant: &TenantId,
        checks: &[Check],
        now: u64,
        commit: bool,
        leases: &mut Leases,
        decisions: &mut Decisions,
    ) {
        for (i, check) in checks.iter().enumerate() {
            let decision = self.take(tenant, check, now, commit, leases);
            if !decision.allowed {
                // Release this call's concurrency units first (dropping the
                // leases), then take back the other checks' units.
                *leases = Leases::default();
                for (earlier, d) in checks[..i].iter().zip(decisions.iter_mut()) {
                    *d = if commit && earlier.cost > 0 {
                        self.undo(tenant, earlier, now)
                    } else {
                        self.apply(tenant, earlier, now, Op::Eval, leases)
                    };
                }
                decisions.push(decision);
                for later in &checks[i + 1..] {
                    decisions.push(self.apply(tenant, later, now, Op::Eval, leases));
                }
                return;
            }
            decisions.push(decision);
        }
    }

    /// Removes the counters whose state has fully expired; returns how many.
    fn sweep(&mut self, now: u64) -> usize {
        let before = self.len();
        for table in &mut self.windows {
            table.counters.sweep(now, Geometry::new(table.window));
        }
        // (A table emptied by a window change goes too.)
        self.windows.retain(|table| table.counters.len() > 0);
        for table in &mut self.approx {
            let longest = table.window;
            table.counters.retain(|_, state| !state.idle(now, longest));
            shrink(&mut table.counters);
        }
        self.approx.retain(|table| !table.counters.is_empty());
        sweep_tables(&mut self.gcra, |state| !state.idle(now));
        sweep_tables(&mut self.logs, |log| {
            log.expire(now);
            log.shrink();
            !log.entries.is_empty()
        });
        sweep_tables(&mut self.calendars, |state| !state.idle(now));
        sweep_tables(&mut self.concurrency, |inflight| !inflight.idle());
        self.gauges.retain(|_, gauge| gauge.0 != 0);
        shrink(&mut self.gauges);
        self.soft.sweep(now);
        let after = self.len();
        self.calls = 0;
        self.swept_len = after as u64;
        before - after
    }
}

/// The counters held in `tables`.
fn counted<V>(tables: &[PolicyTable<HashMap<TenantId, V>>]) -> usize {
    tables.iter().map(|p| p.counters.len()).sum()
}

/// Keeps the counters of `tables` for which `keep` is true; drops the
/// tables left empty.
fn sweep_tables<V>(
    tables: &mut Vec<PolicyTable<HashMap<TenantId, V>>>,
    mut keep: impl FnMut(&mut V) -> bool,
) {
    for table in tables.iter_mut() {
        table.counters.retain(|_, state| keep(state));
        shrink(&mut table.counters);
    }
    tables.retain(|table| !table.counters.is_empty());
}

/// Whether two checks of a batch count on the same counter (the same
/// algorithm kind and policy name), as far as the first pass is concerned.
fn same_counter(a: &Check, b: &Check) -> bool {
    std::mem::discriminant(&a.algorithm) == std::mem::discriminant(&b.algorithm)
        && (Arc::ptr_eq(&a.policy, &b.policy) || a.policy == b.policy)
}

/// Whether no two checks count on the same counter ([`same_counter`]).
fn distinct_counters(checks: &[Check]) -> bool {
    checks
        .iter()
        .enumerate()
        .all(|(i, a)| checks[i + 1..].iter().all(|b| !same_counter(a, b)))
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

    /// Turns `decision`, made by [`eval`](Self::eval) on `state` at `now`,
    /// into the admitted one (before [`consume`](Self::consume)).
    /// `state` is `None` for a counter that does not exist yet.
    fn admitted(
        _state: Option<&Self>,
        _now: u64,
        _ctx: Self::Ctx,
        check: &Check,
        decision: &mut Decision,
    ) {
        add_cost(decision, check);
    }

    /// Adds `cost` (> 0) at `now` (the state is normalized).
    fn consume(&mut self, now: u64, ctx: Self::Ctx, cost: u64) -> Option<Lease>;

    /// Takes back the `cost` units that [`consume`](Self::consume) added at
    /// `now` in this call (a later check of the batch refused), so that the
    /// state counts what it counted before; a lease taken is released by
    /// dropping it first. Returns whether the state now counts nothing at
    /// all (it is then equivalent to no counter and may be removed).
    fn unconsume(&mut self, now: u64, ctx: Self::Ctx, cost: u64) -> bool;
}

/// Whether `used + cost <= limit`, without overflow.
fn fits(used: u64, cost: u64, limit: u64) -> bool {
    used.checked_add(cost).is_some_and(|total| total <= limit)
}

/// A decision before consumption: `retry_ms` is only called on denial when
/// `cost <= limit`, i.e. when `used > limit - cost`.
#[inline(always)]
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

/// Turns a before-consumption decision into the admitted one: `cost` more
/// used.
fn add_cost(decision: &mut Decision, check: &Check) {
    decision.allowed = true;
    decision.retry_after = None;
    decision.used = decision.used.saturating_add(check.cost);
    decision.remaining = check.limit.saturating_sub(decision.used);
}

/// How a map is looked up without building its key: `&TenantId` for the
/// per-policy tables, `(tenant, policy)` as a [`KeyView`] for the
/// others.
trait Lookup<K> {
    fn get_mut<'m, V>(&self, map: &'m mut HashMap<K, V>) -> Option<&'m mut V>;
    fn remove<V>(&self, map: &mut HashMap<K, V>);
}

/// By the id itself (not its text): the table's key is usually a clone of
/// the same id, so the comparison is one of pointers
/// ([`TenantId`]'s `PartialEq`).
impl Lookup<TenantId> for &TenantId {
    #[inline]
    fn get_mut<'m, V>(&self, map: &'m mut HashMap<TenantId, V>) -> Option<&'m mut V> {
        map.get_mut(*self)
    }
    fn remove<V>(&self, map: &mut HashMap<TenantId, V>) {
        map.remove(*self);
    }
}

impl Lookup<Key> for (&str, &str) {
    fn get_mut<'m, V>(&self, map: &'m mut HashMap<Key, V>) -> Option<&'m mut V> {
        map.get_mut(self as &dyn KeyView)
    }
    fn remove<V>(&self, map: &mut HashMap<Key, V>) {
        map.remove(self as &dyn KeyView);
    }
}

/// Evaluates one check with one lookup and, depending on `op`, takes it:
/// the admitted decision, consuming `cost` when committing (creating the
/// counter, keyed `key()`, when missing).
#[allow(clippy::too_many_arguments)]
fn apply<S: Counter, V: BorrowMut<S> + From<S>, K: Eq + Hash, L: Lookup<K>>(
    map: &mut HashMap<K, V>,
    lookup: L,
    key: impl FnOnce() -> K,
    ctx: S::Ctx,
    now: u64,
    check: &Check,
    op: Op,
    leases: &mut Leases,
) -> Decision {
    let (commit, force, evaluated) = op.parts();
    match lookup.get_mut(map) {
        Some(state) => apply_to(state.borrow_mut(), ctx, now, check, op, leases),
        None => {
            let mut decision = evaluated.unwrap_or_else(|| S::eval_missing(now, ctx, check));
            if matches!(op, Op::Take { .. }) && (decision.allowed || force) {
                S::admitted(None, now, ctx, check, &mut decision);
                if commit && check.cost > 0 {
                    let mut state = S::empty(now, ctx);
                    if let Some(lease) = state.consume(now, ctx, check.cost) {
                        leases.push(lease);
                    }
                    map.insert(key(), V::from(state));
                }
            }
            decision
        }
    }
}

/// [`apply`] on an existing counter.
#[inline(always)]
fn apply_to<S: Counter>(
    state: &mut S,
    ctx: S::Ctx,
    now: u64,
    check: &Check,
    op: Op,
    leases: &mut Leases,
) -> Decision {
    let (commit, force, evaluated) = op.parts();
    state.normalize(now, ctx);
    let mut decision = match evaluated {
        Some(decision) => decision,
        None => state.eval(now, ctx, check),
    };
    if matches!(op, Op::Take { .. }) && (decision.allowed || force) {
        S::admitted(Some(state), now, ctx, check, &mut decision);
        if commit && check.cost > 0 {
            if let Some(lease) = state.consume(now, ctx, check.cost) {
                leases.push(lease);
            }
        }
    }
    decision
}

/// Takes back what [`apply`] consumed for `check` in this call (the batch
/// was refused after all; the call's leases are dropped already) and
/// returns the decision as if nothing had been consumed, i.e. what an
/// [`Op::Eval`] said before. A counter left counting nothing (one this call
/// created) is removed.
fn undo<S: Counter, V: BorrowMut<S> + From<S>, K: Eq + Hash, L: Lookup<K>>(
    map: &mut HashMap<K, V>,
    lookup: L,
    _key: impl FnOnce() -> K,
    ctx: S::Ctx,
    now: u64,
    check: &Check,
) -> Decision {
    match lookup.get_mut(map) {
        Some(state) => {
            let state = state.borrow_mut();
            let vacant = state.unconsume(now, ctx, check.cost);
            let decision = state.eval(now, ctx, check);
            if vacant {
                lookup.remove(map);
            }
            decision
        }
        None => S::eval_missing(now, ctx, check),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Period;
    use crate::store::ManualClock;
    use proptest::prelude::*;

    const T0: u64 = 1_795_392_000_000; // 2026-11-23T00:00:00Z

    fn tenant(i: usize) -> TenantId {
        format!("t{i}").parse().unwrap()
    }

    /// A store on a manual clock at `T0`, sweeping every `sweep_every` calls.
    fn store_at_t0(sweep_every: u64) -> (Arc<ManualClock>, MemoryStore) {
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::builder()
            .clock(clock.clone())
            .sweep_every(sweep_every)
            .build();
        (clock, store)
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

    fn approx(ms: u64) -> Algorithm {
        Algorithm::SlidingWindowApprox {
            window: Duration::from_millis(ms),
        }
    }

    fn gcra(ms: u64, burst: u64) -> Algorithm {
        Algorithm::Gcra {
            window: Duration::from_millis(ms),
            burst,
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
                let buckets = |b: &Buckets| match b {
                    Buckets::Narrow(m) => bytes(m),
                    Buckets::Wide(m) => bytes(m) + m.len() * std::mem::size_of::<SubBuckets<u64>>(),
                };
                t.windows
                    .iter()
                    .map(|p| buckets(&p.counters.cells))
                    .sum::<usize>()
                    + t.approx.iter().map(|p| bytes(&p.counters)).sum::<usize>()
                    + t.gcra.iter().map(|p| bytes(&p.counters)).sum::<usize>()
                    + t.logs.iter().map(|p| bytes(&p.counters)).sum::<usize>()
                    + t.calendars
                        .iter()
                        .map(|p| bytes(&p.counters))
                        .sum::<usize>()
                    + t.concurrency
                        .iter()
                        .map(|p| bytes(&p.counters))
                        .sum::<usize>()
                    + bytes(&t.gauges)
            })
            .sum()
    }

    /// The second pass of a batch reuses the first pass's decision only for
    /// a counter no earlier check of the batch consumed from: the same
    /// counter named twice reports what the first consumption left.
    #[test]
    fn same_counter_twice_in_a_batch() {
        let acme = tenant(0);
        let quota = Algorithm::Calendar {
            period: Period::Day,
        };
        for alg in [window(60_000), gcra(60_000, 10), log(60_000), quota] {
            let store = MemoryStore::with_clock(Arc::new(ManualClock::new(T0)));
            let checks = [
                Check::new("a", alg, 10, 1),
                Check::new("a", alg, 10, 2),
                Check::new("b", quota, 10, 1),
            ];
            let admission = admit(&store, &acme, &checks);
            assert!(admission.allowed(), "{alg:?}");
            let used: Vec<u64> = admission.decisions.iter().map(|d| d.used).collect();
            assert_eq!(used, [1, 3, 1], "{alg:?}");
            // The counter holds both costs; a peek with cost 0 reads it.
            let level = store
                .peek(&acme, &[Check::new("a", alg, 10, 0)])
                .try_take()
                .expect("ready")
                .expect("ok");
            assert_eq!(level[0].used, 3, "{alg:?}");
        }
    }

    /// A batch refused by its last check: the checks before it were taken
    /// at once and are taken back — every counter reads as before (those
    /// the call created are gone), the decisions are those before
    /// consumption (as `peek` reports them), and no concurrency unit stays
    /// held. Then the same batch admitted, and a peek of it, for every
    /// algorithm and both with existing and with new counters.
    #[test]
    fn refused_batch_takes_back_what_it_took() {
        let quota = Algorithm::Calendar {
            period: Period::Day,
        };
        let kinds = [
            window(60_000),
            window(100),
            approx(60_000),
            gcra(60_000, 10),
            log(60_000),
            quota,
            concurrency(),
            Algorithm::Gauge,
        ];
        for warm in [false, true] {
            let (clock, store) = store_at_t0(1_000_000);
            let acme = tenant(0);
            let mut checks: Vec<Check> = kinds
                .iter()
                .enumerate()
                .map(|(i, &alg)| Check::new(format!("p{i}"), alg, 10, 2))
                .collect();
            if warm {
                // Every counter exists and holds 3 units (the log in two
                // milliseconds).
                let first: Vec<Check> = kinds
                    .iter()
                    .enumerate()
                    .map(|(i, &alg)| Check::new(format!("p{i}"), alg, 10, 1))
                    .collect();
                std::mem::forget(admit(&store, &acme, &first));
                clock.advance_ms(1);
                let second: Vec<Check> = first
                    .iter()
                    .map(|c| Check::new(c.policy.clone(), c.algorithm, 10, 2))
                    .collect();
                std::mem::forget(admit(&store, &acme, &second));
                clock.advance_ms(1);
            }
            let zero: Vec<Check> = checks
                .iter()
                .map(|c| Check::new(c.policy.clone(), c.algorithm, 10, 0))
                .collect();
            let levels = |store: &MemoryStore| {
                let peeked = store.peek(&acme, &zero).try_take().unwrap().unwrap();
                peeked.to_vec()
            };
            let (len, before) = (store.len(), levels(&store));
            // The last check refuses (a quota already used up).
            checks.push(Check::new("full", quota, 0, 1));
            let expected = store.peek(&acme, &checks).try_take().unwrap().unwrap();
            let refused = admit(&store, &acme, &checks);
            assert!(!refused.allowed());
            assert!(refused.lease.is_none());
            assert_eq!(refused.decisions, expected, "warm {warm}");
            assert_eq!(store.len(), len, "warm {warm}");
            assert_eq!(levels(&store), before, "warm {warm}");
            for (d, check) in refused.decisions.iter().zip(&checks) {
                assert!(d.allowed || check.policy.as_ref() == "full", "{check:?}");
            }
            // Without the refusing check: admitted, each counter 2 more.
            checks.pop();
            let peeked = store.peek(&acme, &checks).try_take().unwrap().unwrap();
            let admitted = admit(&store, &acme, &checks);
            assert!(admitted.allowed() && admitted.lease.is_some());
            assert_eq!(admitted.decisions, peeked, "warm {warm}");
            let after = levels(&store);
            for ((a, b), alg) in after.iter().zip(&before).zip(&kinds) {
                if !matches!(alg, Algorithm::Gcra { .. }) {
                    assert_eq!(a.used, b.used + 2, "{alg:?} warm {warm}");
                }
            }
            drop(admitted);
        }
    }

    #[test]
    fn small_slots() {
        assert_eq!(std::mem::size_of::<(TenantId, SubBuckets<u16>)>(), 40);
        assert_eq!(std::mem::size_of::<(TenantId, ApproxState)>(), 40);
        assert_eq!(std::mem::size_of::<(TenantId, GcraState)>(), 24);
        assert_eq!(std::mem::size_of::<(TenantId, CalendarState)>(), 40);
        assert_eq!(std::mem::size_of::<(TenantId, Box<LogState>)>(), 24);
        assert_eq!(std::mem::size_of::<(TenantId, Inflight)>(), 24);
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
            Check::new("w", approx(1_000), 10, 1),
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
        // A two-counter window used with a long and then a short length keeps
        // the longest.
        let (clock, store) = store_at_t0(1);
        let t = tenant(1);
        let long = Check::new("w", approx(10_000), 2, 1);
        let short = Check::new("w", approx(1_000), 2, 1);
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
        let (clock, store) = store_at_t0(0);
        let t = tenant(1);
        let short = [Check::new("w", approx(1_000), 2, 1)];
        let long = [Check::new("w", approx(10_000), 2, 1)];
        assert!(admit(&store, &t, &short).allowed());
        assert!(admit(&store, &t, &long).allowed());
        clock.advance_ms(2_500);
        assert_eq!(store.evict_idle(), 0);
        assert!(!admit(&store, &t, &long).allowed());
    }

    #[test]
    fn window_change_moves_the_count() {
        // A sub-bucket window checked with another length (a plan reload)
        // keeps what it counted: the units move into the current bucket of
        // the new window, counted for a whole new window.
        let (clock, store) = store_at_t0(1);
        let t = tenant(1);
        let long = [Check::new("w", window(10_000), 2, 1)];
        let short = [Check::new("w", window(1_000), 2, 1)];
        assert!(admit(&store, &t, &long).allowed());
        assert!(admit(&store, &t, &long).allowed());
        clock.advance_ms(5_000);
        let d = admit(&store, &t, &short).decisions[0];
        assert!(!d.allowed);
        assert_eq!(d.retry_after, Some(Duration::from_millis(1_124)));
        assert_eq!(store.len(), 1, "one counter, moved");
        clock.advance_ms(1_124);
        assert!(admit(&store, &t, &short).allowed());
        // Back to 10 s: the one unit moves again.
        let d = admit(&store, &t, &long).decisions[0];
        assert_eq!((d.allowed, d.used), (true, 2));
        assert!(!admit(&store, &t, &long).allowed());
    }

    #[test]
    fn sub_buckets_widen_for_large_limits() {
        let clock = Arc::new(ManualClock::new(T0));
        let store = MemoryStore::with_clock(clock.clone());
        let t = tenant(1);
        let small = [Check::new("w", window(60_000), 65_535, 60_000)];
        let large = [Check::new("w", window(60_000), 1 << 40, 1 << 39)];
        assert!(admit(&store, &t, &small).allowed());
        let d = admit(&store, &t, &large).decisions[0];
        assert_eq!((d.allowed, d.used), (true, 60_000 + (1 << 39)));
        let d = admit(&store, &t, &large).decisions[0];
        assert_eq!((d.allowed, d.used), (false, 60_000 + (1 << 39)));
    }

    #[test]
    fn evicts_sub_buckets_and_gcra() {
        let (clock, store) = store_at_t0(0);
        let t = tenant(1);
        // b = 125 ms: the bucket [T0, T0 + 125) counts until T0 + 1_124.
        // GCRA: T = 100 ms, 3 units: full again at T0 + 300.
        let checks = [
            Check::new("w", window(1_000), 10, 1),
            Check::new("g", gcra(1_000, 10), 10, 3),
        ];
        assert!(admit(&store, &t, &checks).allowed());
        assert_eq!(store.len(), 2);
        clock.set_ms(T0 + 299);
        assert_eq!(store.evict_idle(), 0);
        clock.set_ms(T0 + 300);
        assert_eq!(store.evict_idle(), 1, "the GCRA bucket is full");
        clock.set_ms(T0 + 1_123);
        assert_eq!(store.evict_idle(), 0);
        clock.set_ms(T0 + 1_124);
        assert_eq!(store.evict_idle(), 1, "the sub-buckets expired");
        assert!(store.is_empty());
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
            let log = tables.logs[0].counters.values().next().unwrap();
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

    /// Reference sub-bucket window: counts per bucket index.
    #[derive(Default, Clone)]
    struct RefBuckets {
        counts: std::collections::BTreeMap<u64, u64>,
    }

    impl RefBuckets {
        fn decide(&mut self, now: u64, w: u64, limit: u64, cost: u64) -> Decision {
            let b = w.div_ceil(8);
            let c = now / b;
            let j0 = (now + 1).saturating_sub(w) / b;
            let expiry = |j: u64| (j + 1) * b + w - 1 - now;
            let counted: Vec<(u64, u64)> = self
                .counts
                .range(j0..=c)
                .map(|(&j, &n)| (j, n))
                .filter(|e| e.1 > 0)
                .collect();
            let used: u64 = counted.iter().map(|e| e.1).sum();
            let allowed = used + cost <= limit;
            let mut reset = counted.first().map_or(0, |e| expiry(e.0));
            let retry_after = if allowed || cost > limit {
                None
            } else {
                let need = used - (limit - cost);
                let mut freed = 0;
                counted.iter().find_map(|&(j, n)| {
                    freed += n;
                    (freed >= need).then(|| expiry(j))
                })
            };
            if allowed && cost > 0 {
                if used == 0 {
                    reset = expiry(c);
                }
                *self.counts.entry(c).or_default() += cost;
            }
            let used = if allowed { used + cost } else { used };
            Decision {
                allowed,
                limit,
                used,
                remaining: limit.saturating_sub(used),
                reset: Duration::from_millis(reset),
                retry_after: retry_after.map(Duration::from_millis),
            }
        }
    }

    /// Reference GCRA, literally: `tat` in ns, `T = ceil(W / limit)`,
    /// `τ = T·(B − 1)`, governor's test.
    #[derive(Default, Clone)]
    struct RefGcra {
        tat: Option<u128>,
    }

    impl RefGcra {
        fn decide(&mut self, now: u64, w: u64, limit: u64, burst: u64, cost: u64) -> Decision {
            let now = u128::from(now) * 1_000_000;
            let (limit128, burst128, n) = (u128::from(limit), u128::from(burst), u128::from(cost));
            let ms = |ns: u128| Duration::from_millis(ns.div_ceil(1_000_000) as u64);
            if limit == 0 || burst == 0 {
                return Decision {
                    allowed: cost == 0,
                    limit: burst,
                    used: burst,
                    remaining: 0,
                    reset: Duration::ZERO,
                    retry_after: None,
                };
            }
            let t = (u128::from(w) * 1_000_000).div_ceil(limit128);
            let tau = t * (burst128 - 1);
            let tat = self.tat.unwrap_or(now).max(now);
            let remaining = |tat: u128| ((now + tau + t - tat).min(tau + t) / t) as u64;
            let never = cost > burst;
            // tat + T·(n − 1) − τ ≤ now, written without negatives.
            let allowed = !never && tat + t * n <= now + tau + t;
            let retry_after = (!allowed && !never).then(|| ms(tat + t * n - now - tau - t));
            let after = if allowed { tat + t * n } else { tat };
            if allowed && cost > 0 {
                self.tat = Some(after);
            }
            let remaining = remaining(after);
            Decision {
                allowed,
                limit: burst,
                used: burst - remaining,
                remaining,
                reset: ms(after - now),
                retry_after,
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

    /// A store on `clock` in which every sliding-window key becomes a hot
    /// window at its first one-check call.
    fn hot_store(clock: &Arc<ManualClock>, sweep_every: u64) -> MemoryStore {
        let mut store = MemoryStore::builder()
            .shards(1)
            .sweep_every(sweep_every)
            .clock(clock.clone())
            .build();
        store.promote_after = 0;
        store
    }

    /// The number of hot windows held.
    fn hot_len(store: &MemoryStore) -> usize {
        store
            .shards
            .iter()
            .map(|s| {
                s.0.lock()
                    .windows
                    .iter()
                    .map(|p| p.counters.hot.len())
                    .sum::<usize>()
            })
            .sum()
    }

    /// [`admit`], asserting that the call took the lock-free path.
    fn admit_lock_free(store: &MemoryStore, tenant: &TenantId, checks: &[Check]) -> Admission {
        let before = hot::LOCK_FREE.with(|n| n.get());
        let admission = admit(store, tenant, checks);
        assert_eq!(
            hot::LOCK_FREE.with(|n| n.get()),
            before + 1,
            "not lock-free"
        );
        admission
    }

    /// A batch of `p`'s window check and a GCRA check: it takes the lock.
    fn batch_with(p: Check) -> [Check; 2] {
        [p, Check::new("q", gcra(1_000, 5), 5, 1)]
    }

    #[test]
    fn hot_window_is_exact_under_threads() {
        // Four threads on one key at a fixed time: exactly `limit` calls are
        // admitted, whichever path (lock-free or locked) each one took.
        let clock = Arc::new(ManualClock::new(T0));
        for promote_after in [0, PROMOTE_AFTER] {
            let mut store = MemoryStore::builder().clock(clock.clone()).build();
            store.promote_after = promote_after;
            let store = Arc::new(store);
            let limit = 20_000;
            let check: Arc<[Check]> = Arc::new([Check::new("p", window(60_000), limit, 1)]);
            let handles: Vec<_> = (0..4)
                .map(|_| {
                    let (store, check) = (store.clone(), check.clone());
                    std::thread::spawn(move || {
                        let t = tenant(7);
                        let mut allowed = 0u64;
                        for _ in 0..7_500 {
                            let a = admit(&store, &t, &check);
                            allowed += u64::from(a.allowed());
                            assert!(a.decisions[0].used <= limit);
                        }
                        allowed
                    })
                })
                .collect();
            let allowed: u64 = handles.into_iter().map(|h| h.join().unwrap()).sum();
            assert_eq!(allowed, limit);
            let d = store.peek(&tenant(7), &check).try_take().unwrap().unwrap()[0];
            assert_eq!((d.allowed, d.used), (false, limit));
            assert_eq!(store.len(), 1);
        }
    }

    #[test]
    fn hot_window_batches_windows_and_eviction() {
        // A hot key used by a batch moves back into the table (and becomes
        // hot again at its next one-check call); a window change moves it to
        // the new window's table; the sweep drops it once idle.
        let clock = Arc::new(ManualClock::new(T0));
        let store = hot_store(&clock, 0);
        let t = tenant(1);
        let one = [Check::new("p", window(1_000), 10, 1)];
        assert!(admit(&store, &t, &one).allowed());
        assert_eq!(hot_len(&store), 1);
        assert_eq!(admit_lock_free(&store, &t, &one).decisions[0].used, 2);
        let batch = batch_with(Check::new("p", window(1_000), 10, 1));
        assert_eq!(admit(&store, &t, &batch).decisions[0].used, 3);
        assert_eq!(hot_len(&store), 0);
        assert_eq!(admit(&store, &t, &one).decisions[0].used, 4);
        assert_eq!(hot_len(&store), 1);
        // The same policy with a 2 s window: the 4 units move along.
        let longer = [Check::new("p", window(2_000), 10, 1)];
        assert_eq!(admit(&store, &t, &longer).decisions[0].used, 5);
        assert_eq!(store.len(), 2); // the hot window and the gcra counter
        clock.advance_ms(3_000);
        assert_eq!(store.evict_idle(), 2);
        assert_eq!(hot_len(&store), 0);
        assert!(store.is_empty());
    }

    #[test]
    fn hot_window_keeps_counts_past_16_bits() {
        // The table of a policy seen only with small limits has 16-bit
        // counts; a hot key of it that counted past 65 535 without the lock
        // widens the table when it moves back.
        let clock = Arc::new(ManualClock::new(T0));
        let store = hot_store(&clock, 0);
        let t = tenant(1);
        assert!(admit(&store, &t, &[Check::new("p", window(60_000), 10, 1)]).allowed());
        let big = [Check::new("p", window(60_000), 1_000_000, 70_000)];
        assert_eq!(admit_lock_free(&store, &t, &big).decisions[0].used, 70_001);
        // A batch with the small limit again (refused) moves the key back.
        let batch = batch_with(Check::new("p", window(60_000), 10, 1));
        assert_eq!(admit(&store, &t, &batch).decisions[0].used, 70_001);
        assert_eq!(hot_len(&store), 0);
        let peek = store.peek(&t, &big).try_take().unwrap().unwrap()[0];
        assert_eq!(peek.used, 140_001);
    }

    proptest! {
        #[test]
        fn hot_windows_match_the_locked_store(
            w in 1u64..3_000,
            limit in 0u64..70_000,
            steps in proptest::collection::vec((0u64..1_500, 0u64..4, 0u8..6, any::<bool>()), 1..120),
        ) {
            // Random one-check calls, peeks, batches and window changes on
            // the same key: a store with hot windows decides exactly as one
            // without, and holds the same counters.
            let clock = Arc::new(ManualClock::new(T0 + 3));
            let locked = MemoryStore::builder().shards(1).sweep_every(3).clock(clock.clone()).build();
            let hot = hot_store(&clock, 3);
            let t = tenant(2);
            for (dt, cost, kind, big) in steps {
                clock.advance_ms(dt);
                // Some calls with a limit past 16-bit counts (the table
                // widens when such a call takes the lock).
                let limit = if big { limit + 65_536 } else { limit };
                let a = Check::new("a", window(w), limit, cost);
                let checks = match kind {
                    0 | 1 => vec![a],
                    2 => vec![Check::new("a", window(w * 2), limit, cost)],
                    3 => vec![a, Check::new("b", window(w), limit / 2, 1)],
                    4 => vec![a.clone(), a],
                    _ => vec![Check::new("a", window(w), limit, cost).soft(50)],
                };
                if kind == 1 {
                    let p = locked.peek(&t, &checks).try_take().unwrap().unwrap();
                    prop_assert_eq!(hot.peek(&t, &checks).try_take().unwrap().unwrap(), p);
                }
                let x = admit(&locked, &t, &checks);
                let y = admit(&hot, &t, &checks);
                prop_assert_eq!(&x.decisions, &y.decisions);
                prop_assert_eq!(x.soft_crossed(0), y.soft_crossed(0));
                // (Lock-free calls do not count towards the next automatic
                // sweep: compare what is left once both are swept.)
                locked.evict_idle();
                hot.evict_idle();
                prop_assert_eq!(locked.len(), hot.len());
            }
        }

        #[test]
        fn matches_reference(
            w in 1u64..5_000,
            limit in 0u64..20,
            burst in 0u64..25,
            steps in proptest::collection::vec((0u64..3_000, 0u64..6, any::<bool>()), 1..200),
        ) {
            let clock = Arc::new(ManualClock::new(T0 + 7));
            let store = MemoryStore::builder().shards(1).sweep_every(1).clock(clock.clone()).build();
            // The same calls on hot windows (every sliding-window key hot at
            // once, the lock-free path used whenever it can be).
            let hot = hot_store(&clock, 1);
            let t = tenant(1);
            let (mut rw, mut rb, mut rl, mut rg) =
                (RefWindow::default(), RefBuckets::default(), RefLog::default(), RefGcra::default());
            for (dt, cost, peek) in steps {
                clock.advance_ms(dt);
                let now = clock.now_ms();
                let checks = [
                    Check::new("a", approx(w), limit, cost),
                    Check::new("b", window(w), limit, cost),
                    Check::new("l", log(w), limit, cost),
                    Check::new("g", gcra(w, burst), limit, cost),
                ];
                for (i, check) in checks.iter().enumerate() {
                    let batch = std::slice::from_ref(check);
                    let p = store.peek(&t, batch).try_take().unwrap().unwrap()[0];
                    let a = admit(&store, &t, batch).decisions[0];
                    if peek {
                        prop_assert_eq!(p, a);
                    }
                    prop_assert_eq!(hot.peek(&t, batch).try_take().unwrap().unwrap()[0], p);
                    prop_assert_eq!(admit(&hot, &t, batch).decisions[0], a);
                    let r = match i {
                        0 => rw.decide(now, w, limit, cost),
                        1 => rb.decide(now, w, limit, cost),
                        2 => rl.decide(now, w, limit, cost),
                        _ => rg.decide(now, w, limit, burst, cost),
                    };
                    prop_assert_eq!(a, r, "{:?} at +{}", check.algorithm, now - T0);
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
            // now + retry_after (and, for the sub-bucket window and the exact
            // log, not a millisecond earlier). GCRA's waits are checked
            // against governor in tests/rate_algorithms.rs.
            for kind in 0..3 {
                let algorithm = match kind {
                    0 => approx(w),
                    1 => window(w),
                    _ => log(w),
                };
                let tight = kind > 0;
                let check = |cost| Check::new("p", algorithm, limit, cost);
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
                    if tight && retry.as_millis() > 0 {
                        clock.set_ms(at - 1);
                        let early = store.peek(&t, &[check(cost)]).try_take().unwrap().unwrap()[0];
                        prop_assert!(!early.allowed, "{:?}: allowed 1 ms before retry {:?}", algorithm, retry);
                    }
                    clock.set_ms(at);
                    let later = admit(&store, &t, &[check(cost)]).decisions[0];
                    prop_assert!(later.allowed, "{:?}: not allowed after retry {:?}", algorithm, retry);
                }
            }
        }
    }
}
