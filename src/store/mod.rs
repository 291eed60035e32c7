//! Counter stores: the small, HTTP-agnostic interface behind rate limits,
//! quotas, concurrency limits and gauges.
//!
//! A store receives a batch of [`Check`]s for **one tenant** and answers with
//! one [`Decision`] per check, atomically and all-or-nothing: when any check
//! denies, nothing is consumed. The admission layer makes exactly one store
//! call per request.
//!
//! # Semantics (every store implements exactly these)
//!
//! Times are integer milliseconds since the Unix epoch (`now`), taken from the
//! store's [`Clock`] (the memory store) or from the server (`TIME` in Redis).
//! For each check, `used` is the current level before this request; the check
//! allows when `used + cost <= limit`. If every check of the batch allows,
//! each consumes `cost`; otherwise nothing changes — except with shadowed
//! checks ([`Check::shadow`]): when every check that is not shadowed allows,
//! those consume, and the shadowed ones consume only when every check of
//! the batch allows (exactly what they would do if enforced). The [`Decision`] reports
//! `used` (after consumption when admitted), `remaining = limit - used`
//! (saturating), `reset`, and on denial `retry_after` (`None` when
//! `cost > limit`: the request can never pass).
//!
//! * **Sliding window** (window `W`; `src/store/memory/window.rs`): `k = 8`
//!   sub-buckets per window of `b = ceil(W / k)` ms each, bucket `j` holding
//!   the units admitted in `[j·b, (j+1)·b)`. With `c = floor(now / b)` and
//!   `j0 = floor((now - W + 1) / b)` (0 when negative), `used` is the sum of
//!   buckets `j0..=c`: every admission of the true window `(now - W, now]`
//!   plus the part of bucket `j0` that already left it (less than `b`, so the
//!   error is at most one bucket, `W/k` of time, and only towards refusing).
//!   An admitted request adds `cost` to bucket `c`. Bucket `j` stops being
//!   counted at `expiry(j) = (j+1)·b + W - 1`. `reset` = `expiry` of the
//!   oldest counted non-empty bucket minus `now` (0 when empty; after an
//!   admission into an empty window, bucket `c`'s). Retry: the buckets
//!   expire oldest first; `retry_after = expiry(j) - now` for the first
//!   bucket `j` whose expiry frees at least `used - (limit - cost)` units.
//!   A counter whose newest bucket is later than `c` (a clock that stepped
//!   back) is read at the time of that bucket. When the window of a counter
//!   changes, what it counted (under the old window, at `now`) is moved
//!   into bucket `c` of the new one.
//! * **Sliding window, approximate** (window `W`): fixed windows start at multiples of
//!   `W`; `start = now - now % W`, `elapsed = now - start`. With `curr` the
//!   count of the current fixed window and `prev` of the one before (0 when
//!   older), `used = curr + floor(prev * (W - elapsed) / W)`. `reset =
//!   start + W - now`. Retry: if `curr + cost <= limit`, wait until enough of
//!   `prev` has faded: `e = ceil((prev - (limit - cost - curr)) * W / prev)`,
//!   `retry_after = e - elapsed`; otherwise wait into the next window, where
//!   `prev' = curr`: `e = ceil((curr - (limit - cost)) * W / curr)`,
//!   `retry_after = start + W - now + e`.
//! * **GCRA** (window `W`, burst `B`; `src/store/memory/gcra.rs`): as
//!   governor counts, in nanoseconds: emission interval `T = ceil(W_ns /
//!   limit)`, tolerance `τ = T·(B - 1)`, state `tat` (theoretical arrival
//!   time, `now` when missing). A request of `cost` units is never admitted
//!   when `cost > B` (or `limit = 0`); otherwise it is admitted when `now >=
//!   tat + T·(cost - 1) - τ`, and then `tat' = max(tat, now) + T·cost`. The
//!   decision reports the bucket: `limit = B`, `remaining = floor(min(now +
//!   τ + T - max(tat, now), τ + T) / T)` (after consumption when admitted),
//!   `used = B - remaining`, `reset = max(tat, now) - now` rounded up to the
//!   millisecond (when the bucket is full again), `retry_after = tat +
//!   T·(cost - 1) - τ - now` rounded up to the millisecond.
//! * **Sliding log** (window `W`): entries `(t, units)` with `t > now - W`
//!   count; `used` is their sum; an admitted request adds `(now, cost)`.
//!   `reset = oldest.t + W - now` (0 when empty). Retry: the oldest entries
//!   expire in order; `retry_after = t_k + W - now` for the first entry `k`
//!   whose expiry frees at least `used - (limit - cost)` units.
//! * **Calendar** (period): the count of the UTC-aligned period containing
//!   `now`; `reset = retry_after = period_end - now`.
//! * **Concurrency**: `used` is the number of units held by live leases;
//!   admitted units are held by the returned [`Lease`] until it is dropped
//!   (shared stores also expire leases after `lease_ttl`). `reset = 0`,
//!   `retry_after = 1s`.
//! * **Gauge**: a level moved by admission (`+cost`) and by
//!   [`CounterStore::adjust`]; never expires. `reset = 0`, `retry_after = None`.
//!
//! Counters are keyed by (tenant, algorithm kind, policy name); a shared
//! store puts the tenant in a hash tag (`{tenant}`) so that one batch touches
//! one Redis Cluster slot.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub mod breaker;
pub(crate) mod calendar;
mod clock;
pub mod deny;
mod memory;

pub use clock::{Clock, ManualClock, SystemClock};
pub use memory::{MemoryStore, MemoryStoreBuilder};

use smallvec::SmallVec;

use crate::future::MaybeReady;
use crate::plan::{ConcurrencyRule, Period, QuotaRule, RateAlgorithm, RateRule};
use crate::tenant::TenantId;

#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "redis")]
pub mod redis_partitions;
#[cfg(feature = "redis-sentinel")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis-sentinel")))]
pub mod redis_sentinel;
pub mod resilient;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use breaker::{BreakerConfig, BreakerState};
pub use deny::DenyCache;
#[cfg(feature = "redis")]
pub use redis_partitions::{ClusterPartitions, ClusterShardStore};
pub use resilient::{FailurePolicy, Partitions, ResilientStore};

/// How a check counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// Sliding window of 8 sub-buckets over `window`: never above the limit,
    /// O(1) memory.
    SlidingWindow {
        /// Window length.
        window: Duration,
    },
    /// Sliding log over `window` (exact, O(limit) memory).
    SlidingLog {
        /// Window length.
        window: Duration,
    },
    /// The two-counter sliding window over `window` (approximate, O(1)
    /// memory).
    SlidingWindowApprox {
        /// Window length.
        window: Duration,
    },
    /// GCRA: `limit` units per `window` as a steady rate, bursts of up to
    /// `burst`.
    Gcra {
        /// The time in which `limit` units are replenished.
        window: Duration,
        /// The most units admitted at once (the bucket's capacity).
        burst: u64,
    },
    /// Fixed calendar period, UTC-aligned; resets at the period end.
    Calendar {
        /// The period.
        period: Period,
    },
    /// In-flight count; admitted units are held by the returned [`Lease`]
    /// until it is dropped. Shared stores expire a lease after `lease_ttl`.
    Concurrency {
        /// Longest time a lease is kept when never released.
        lease_ttl: Duration,
    },
    /// A level that only changes when told to (resource counts such as
    /// "workflows"): admission adds `cost`, [`CounterStore::adjust`] moves it.
    Gauge,
}

impl Algorithm {
    /// The window of a rate algorithm (sliding window, sliding log, GCRA);
    /// `None` for the others.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_tenancy::store::Algorithm;
    ///
    /// let gcra = Algorithm::Gcra { window: Duration::from_secs(1), burst: 5 };
    /// assert_eq!(gcra.rate_window(), Some(Duration::from_secs(1)));
    /// assert_eq!(Algorithm::Gauge.rate_window(), None);
    /// ```
    pub fn rate_window(&self) -> Option<Duration> {
        match *self {
            Algorithm::SlidingWindow { window }
            | Algorithm::SlidingLog { window }
            | Algorithm::SlidingWindowApprox { window }
            | Algorithm::Gcra { window, .. } => Some(window),
            _ => None,
        }
    }
}

impl From<&RateRule> for Algorithm {
    fn from(rule: &RateRule) -> Self {
        let window = rule.window;
        match rule.algorithm {
            RateAlgorithm::SlidingWindow => Algorithm::SlidingWindow { window },
            RateAlgorithm::SlidingLog => Algorithm::SlidingLog { window },
            RateAlgorithm::SlidingWindowApprox => Algorithm::SlidingWindowApprox { window },
            RateAlgorithm::Gcra => Algorithm::Gcra {
                window,
                burst: rule.burst.or_else(|| rule.limit.max()).unwrap_or(u64::MAX),
            },
        }
    }
}

impl From<&QuotaRule> for Algorithm {
    fn from(rule: &QuotaRule) -> Self {
        Algorithm::Calendar {
            period: rule.period,
        }
    }
}

impl From<&ConcurrencyRule> for Algorithm {
    fn from(rule: &ConcurrencyRule) -> Self {
        Algorithm::Concurrency {
            lease_ttl: rule.lease_ttl,
        }
    }
}

/// One counter to check and, when the whole batch is allowed, consume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    /// The policy name; together with the tenant it names the counter.
    pub policy: Arc<str>,
    /// The counting algorithm.
    pub algorithm: Algorithm,
    /// The limit.
    pub limit: u64,
    /// Units this request consumes (usually 1).
    pub cost: u64,
    /// Shadow mode: this check never blocks the others. It consumes only
    /// when every check of the batch allows (as it would if enforced); the
    /// others consume when every check that is not shadowed allows. Its
    /// decision says whether it would have refused.
    pub shadow: bool,
    /// Soft threshold in percent of the limit ([`Check::soft`]): when an
    /// admission brings the counter to this level or above, the store
    /// records it for the window or period, in the same call, and reports
    /// the first such admission in [`Admission::soft_crossed`]. `None`: not
    /// tracked. Only rate algorithms and calendar quotas track it.
    pub soft_percent: Option<u8>,
}

impl Check {
    /// A check of `cost` units against `limit`.
    pub fn new(policy: impl Into<Arc<str>>, algorithm: Algorithm, limit: u64, cost: u64) -> Self {
        Self {
            policy: policy.into(),
            algorithm,
            limit,
            cost,
            shadow: false,
            soft_percent: None,
        }
    }

    /// The same check with a soft threshold of `percent` (at most 100) of
    /// the limit ([`Check::soft_percent`]). The first admission of a window
    /// or period that brings `used` to `limit × percent / 100` or above is
    /// reported in [`Admission::soft_crossed`]; the store remembers it (in
    /// Redis: in the same script call, for every instance sharing the
    /// store) until the window has passed (`W` for a rate algorithm) or
    /// the period has ended (a calendar quota).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_tenancy::store::{Algorithm, Check, CounterStore, MemoryStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let acme = "acme".parse().unwrap();
    /// let minute = Algorithm::SlidingWindow { window: Duration::from_secs(60) };
    /// let checks = [Check::new("api", minute, 10, 1).soft(80)];
    /// let mut crossed = Vec::new();
    /// for _ in 0..10 {
    ///     let admission = store.admit(&acme, &checks).await.unwrap();
    ///     crossed.push(admission.soft_crossed(0) == Some(true));
    /// }
    /// // Only the 8th request (8 of 10 = 80 %) crossed first.
    /// assert_eq!(crossed.iter().position(|&c| c), Some(7));
    /// assert_eq!(crossed.iter().filter(|&&c| c).count(), 1);
    /// # });
    /// ```
    #[must_use]
    pub fn soft(mut self, percent: u8) -> Self {
        self.soft_percent = Some(percent.min(100));
        self
    }

    /// The same check in shadow mode ([`Check::shadow`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_tenancy::store::{Algorithm, Check, CounterStore, MemoryStore};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let store = MemoryStore::new();
    /// let acme = "acme".parse().unwrap();
    /// let minute = Algorithm::SlidingWindow { window: Duration::from_secs(60) };
    /// let checks = [Check::new("api", minute, 100, 1), Check::new("new_limit", minute, 1, 1).shadowed()];
    /// let first = store.admit(&acme, &checks).await.unwrap();
    /// assert!(first.decisions.iter().all(|d| d.allowed));
    /// let second = store.admit(&acme, &checks).await.unwrap();
    /// assert!(!second.decisions[1].allowed, "the shadowed check would refuse");
    /// assert_eq!(second.decisions[0].used, 2, "the enforced one consumed");
    /// assert_eq!(second.decisions[1].used, 1, "the shadowed one did not");
    /// # });
    /// ```
    #[must_use]
    pub fn shadowed(mut self) -> Self {
        self.shadow = true;
        self
    }
}

/// The answer for one [`Check`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// Whether this check alone would admit the request.
    pub allowed: bool,
    /// The limit.
    pub limit: u64,
    /// Units in use after this call (including the cost when the batch was admitted).
    pub used: u64,
    /// Units left after this call.
    pub remaining: u64,
    /// Time until the counter has fully recovered (end of the calendar
    /// period; for sliding windows, until the window has slid past).
    pub reset: Duration,
    /// When denied: how long to wait before the same request could pass.
    pub retry_after: Option<Duration>,
}

/// The decisions of one store call, one per check, in the checks' order.
///
/// Up to four decisions live inline: a store call for a usual route (one to
/// four rules) allocates nothing for its answer. Dereferences to
/// `[Decision]`.
///
/// ```
/// use std::time::Duration;
/// use tower_tenancy::store::{Decision, Decisions};
///
/// let d = Decision {
///     allowed: true, limit: 10, used: 1, remaining: 9,
///     reset: Duration::from_secs(60), retry_after: None,
/// };
/// let decisions: Decisions = [d, d].into_iter().collect();
/// assert_eq!(decisions.len(), 2);
/// assert!(decisions.iter().all(|d| d.allowed));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decisions(SmallVec<[Decision; 4]>);

impl Decisions {
    /// No decisions yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a decision.
    pub fn push(&mut self, decision: Decision) {
        self.0.push(decision);
    }
}

impl std::ops::Deref for Decisions {
    type Target = [Decision];
    fn deref(&self) -> &[Decision] {
        &self.0
    }
}

impl std::ops::DerefMut for Decisions {
    fn deref_mut(&mut self) -> &mut [Decision] {
        &mut self.0
    }
}

impl FromIterator<Decision> for Decisions {
    fn from_iter<I: IntoIterator<Item = Decision>>(iter: I) -> Self {
        Self(iter.into_iter().collect())
    }
}

impl Extend<Decision> for Decisions {
    fn extend<I: IntoIterator<Item = Decision>>(&mut self, iter: I) {
        self.0.extend(iter);
    }
}

impl From<Vec<Decision>> for Decisions {
    fn from(decisions: Vec<Decision>) -> Self {
        Self(SmallVec::from_vec(decisions))
    }
}

impl IntoIterator for Decisions {
    type Item = Decision;
    type IntoIter = smallvec::IntoIter<[Decision; 4]>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.into_iter()
    }
}

impl<'a> IntoIterator for &'a Decisions {
    type Item = &'a Decision;
    type IntoIter = std::slice::Iter<'a, Decision>;
    fn into_iter(self) -> Self::IntoIter {
        self.0.iter()
    }
}

/// The outcome of [`CounterStore::admit`]: one decision per check (same
/// order), and a lease holding concurrency units when the batch was admitted.
#[derive(Debug)]
#[non_exhaustive]
pub struct Admission {
    /// One decision per check, in order.
    pub decisions: Decisions,
    /// Held concurrency units; released when dropped.
    pub lease: Option<Lease>,
    /// Which checks crossed their soft threshold ([`Check::soft_percent`])
    /// first in their window or period, as recorded by the store: bit `i`
    /// for check `i` (the first 64 checks of a call). `None` when the store
    /// does not record soft thresholds (a custom store, a
    /// [`ResilientStore`] answering fail-open, a [`DenyCache`] refusal):
    /// the admission layer then deduplicates on its own instance.
    pub soft_crossed_bits: Option<u64>,
}

impl Admission {
    /// An admission of `decisions` holding `lease` (for implementations of
    /// [`CounterStore`]).
    ///
    /// ```
    /// use tower_tenancy::store::{Admission, Decisions};
    /// let nothing = Admission::new(Decisions::new(), None);
    /// assert!(nothing.allowed());
    /// ```
    pub fn new(decisions: impl Into<Decisions>, lease: Option<Lease>) -> Self {
        Self {
            decisions: decisions.into(),
            lease,
            soft_crossed_bits: None,
        }
    }

    /// This admission with soft-threshold crossings recorded by the store
    /// ([`Admission::soft_crossed_bits`]).
    ///
    /// ```
    /// use tower_tenancy::store::{Admission, Decisions};
    /// let admission = Admission::new(Decisions::new(), None).with_soft_crossed(0b10);
    /// assert_eq!(admission.soft_crossed(0), Some(false));
    /// assert_eq!(admission.soft_crossed(1), Some(true));
    /// assert_eq!(Admission::new(Decisions::new(), None).soft_crossed(1), None);
    /// ```
    #[must_use]
    pub fn with_soft_crossed(mut self, bits: u64) -> Self {
        self.soft_crossed_bits = Some(bits);
        self
    }

    /// Whether check `index` crossed its soft threshold first in its
    /// window or period; `None` when the store does not record it.
    pub fn soft_crossed(&self, index: usize) -> Option<bool> {
        self.soft_crossed_bits
            .map(|bits| index < 64 && bits & (1 << index) != 0)
    }

    /// Whether every check allowed the request (and so it was consumed).
    /// With shadowed checks, the request is admitted when every check that
    /// is not shadowed allowed it: see [`admits`](Self::admits).
    pub fn allowed(&self) -> bool {
        self.decisions.iter().all(|d| d.allowed)
    }

    /// Whether the store admitted `checks` (those of the call): every check
    /// that is not [shadowed](Check::shadow) allowed.
    pub fn admits(&self, checks: &[Check]) -> bool {
        checks
            .iter()
            .zip(self.decisions.iter())
            .all(|(c, d)| d.allowed || c.shadow)
    }
}

/// A store could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The call did not finish within the configured timeout.
    #[error("counter store timed out")]
    Timeout,
    /// The breaker is open: the store failed recently and is not called.
    #[error("counter store unavailable (breaker open)")]
    BreakerOpen,
    /// The backend failed (connection refused, script error, …).
    #[error("counter store backend error: {0}")]
    Backend(String),
}

/// Result type of store calls.
pub type StoreResult<T> = Result<T, StoreError>;

/// A counter store. Implementations: [`MemoryStore`]
/// and, with the `redis` feature, the Redis store.
///
/// Every method takes the checks of one tenant; implementations make the
/// batch atomic.
pub trait CounterStore: Send + Sync + 'static {
    /// Checks every counter and, when all allow, consumes `cost` from each —
    /// all or nothing.
    fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>>;

    /// A dry run of [`admit`](Self::admit): the same decisions, nothing
    /// consumed, no lease taken (for usage reports).
    fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>>;

    /// Moves a [`Algorithm::Gauge`] counter by `delta` (saturating at zero)
    /// and returns its new level.
    fn adjust(&self, tenant: &TenantId, policy: &str, delta: i64) -> MaybeReady<StoreResult<u64>>;

    /// Drops anything kept locally about `tenant` (a [`DenyCache`]'s
    /// refusals), for example because its plan or overrides changed. The
    /// counters are not touched. Wrappers pass it on; the default does
    /// nothing.
    ///
    /// ```
    /// use tower_tenancy::store::{CounterStore, DenyCache};
    /// let store = DenyCache::new(tower_tenancy::MemoryStore::new());
    /// store.invalidate(&"acme".parse().unwrap());
    /// ```
    fn invalidate(&self, tenant: &TenantId) {
        let _ = tenant;
    }

    /// Drops anything kept locally about every tenant (see
    /// [`invalidate`](Self::invalidate)).
    ///
    /// ```
    /// use tower_tenancy::store::{CounterStore, DenyCache};
    /// let store = DenyCache::new(tower_tenancy::MemoryStore::new());
    /// store.invalidate_all();
    /// ```
    fn invalidate_all(&self) {}
}

impl<S: CounterStore + ?Sized> CounterStore for Arc<S> {
    fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        (**self).admit(tenant, checks)
    }
    fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        (**self).peek(tenant, checks)
    }
    fn adjust(&self, tenant: &TenantId, policy: &str, delta: i64) -> MaybeReady<StoreResult<u64>> {
        (**self).adjust(tenant, policy, delta)
    }
    fn invalidate(&self, tenant: &TenantId) {
        (**self).invalidate(tenant)
    }
    fn invalidate_all(&self) {
        (**self).invalidate_all()
    }
}

/// Concurrency units held by one request. Dropping the lease releases them.
///
/// ```
/// use std::sync::atomic::{AtomicBool, Ordering};
/// use std::sync::Arc;
/// use tower_tenancy::store::Lease;
///
/// let released = Arc::new(AtomicBool::new(false));
/// let flag = released.clone();
/// let lease = Lease::new(move || flag.store(true, Ordering::SeqCst));
/// drop(lease);
/// assert!(released.load(Ordering::SeqCst));
/// ```
pub struct Lease(LeaseKind);

enum LeaseKind {
    Counter {
        counter: Arc<AtomicU64>,
        units: u64,
    },
    Custom(Option<Box<dyn FnOnce() + Send + Sync>>),
    Many {
        _held: Vec<Lease>,
    },
    Renewing {
        _held: Box<Lease>,
        heartbeat: tokio::task::AbortHandle,
    },
}

impl Lease {
    /// A lease that runs `release` once when dropped.
    pub fn new(release: impl FnOnce() + Send + Sync + 'static) -> Self {
        Self(LeaseKind::Custom(Some(Box::new(release))))
    }

    /// A lease that subtracts `units` from `counter` when dropped.
    pub fn counter(counter: Arc<AtomicU64>, units: u64) -> Self {
        Self(LeaseKind::Counter { counter, units })
    }

    /// This lease, kept alive while it is held: `renew` runs every
    /// `lease_ttl / 3` (first after one period) on the current Tokio
    /// runtime, until the lease is dropped — for a request, until its
    /// response body or stream ends or is dropped. A store whose leases
    /// expire after `lease_ttl` (Redis) moves their expiry forward in
    /// `renew`, so that a slot held by a live stream never expires, while
    /// the slots of a dead process expire within `lease_ttl` of its last
    /// renewal. A renewal that takes longer than a period is abandoned (the
    /// next one runs on time); two missed renewals in a row still leave a
    /// third before the expiry. Without a runtime the lease is returned as
    /// it is (not renewed).
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU32, Ordering};
    /// use std::sync::Arc;
    /// use std::time::Duration;
    /// use tower_tenancy::store::Lease;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_time().start_paused(true).build().unwrap().block_on(async {
    /// let renewals = Arc::new(AtomicU32::new(0));
    /// let counted = renewals.clone();
    /// let lease = Lease::new(|| ()).renewing(Duration::from_secs(3), move || {
    ///     counted.fetch_add(1, Ordering::SeqCst);
    ///     async {}
    /// });
    /// tokio::time::sleep(Duration::from_millis(3_500)).await; // renewed at 1 s, 2 s, 3 s
    /// assert_eq!(renewals.load(Ordering::SeqCst), 3);
    /// drop(lease); // no renewal after this
    /// tokio::time::sleep(Duration::from_secs(10)).await;
    /// assert_eq!(renewals.load(Ordering::SeqCst), 3);
    /// # });
    /// ```
    pub fn renewing<F, Fut>(self, lease_ttl: Duration, renew: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return self;
        };
        let period = (lease_ttl / 3).max(Duration::from_millis(1));
        let heartbeat = runtime.spawn(async move {
            let start = tokio::time::Instant::now() + period;
            let mut ticks = tokio::time::interval_at(start, period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticks.tick().await;
                let _ = tokio::time::timeout(period, renew()).await;
            }
        });
        Self(LeaseKind::Renewing {
            _held: Box::new(self),
            heartbeat: heartbeat.abort_handle(),
        })
    }

    /// One lease holding several.
    pub fn many(leases: Vec<Lease>) -> Option<Self> {
        match leases.len() {
            0 => None,
            1 => leases.into_iter().next(),
            _ => Some(Self(LeaseKind::Many { _held: leases })),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        match &mut self.0 {
            LeaseKind::Counter { counter, units } => {
                let units = *units;
                let _ = counter.fetch_update(Ordering::AcqRel, Ordering::Acquire, |v| {
                    Some(v.saturating_sub(units))
                });
            }
            LeaseKind::Custom(release) => {
                if let Some(release) = release.take() {
                    release();
                }
            }
            LeaseKind::Many { .. } => {}
            // The heartbeat stops first; the held lease is released after.
            LeaseKind::Renewing { heartbeat, .. } => heartbeat.abort(),
        }
    }
}

impl std::fmt::Debug for Lease {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Lease")
    }
}
