//! [`ResilientStore`]: timeouts, a failure policy and circuit breakers
//! around any [`CounterStore`].
//!
//! A shared store (Redis) can be slow or gone. The wrapper bounds every call
//! by a timeout and feeds each outcome to a circuit breaker that tells an
//! outage from a hiccup (see [`breaker`](crate::store::breaker) for the
//! rules: by default it opens after 3 failures in a row spanning 2 × the
//! timeout, or 50 % failures of at least 20 calls over 10 s; it probes again
//! after 250 ms, then 500 ms, then every second while the store stays
//! down). While a breaker is open its store is not called at all, so a
//! dead store does not add a timeout to every request.
//!
//! With [`partitioned`](ResilientStore::partitioned) there is one breaker
//! per partition of the store — per Redis Cluster master with
//! [`ClusterPartitions`](crate::store::ClusterPartitions) — so that a master
//! failing over degrades only the tenants whose slots it serves.
//!
//! While the store cannot answer, the [`FailurePolicy`] decides:
//!
//! * [`FailOpen`](FailurePolicy::FailOpen): admit (every decision allowed,
//!   `remaining = limit`, no lease);
//! * [`FailClosed`](FailurePolicy::FailClosed): return the [`StoreError`]
//!   (the admission layer answers 503 with `Retry-After`);
//! * [`Fallback`](FailurePolicy::Fallback): ask a local store instead
//!   (typically an in-memory store: per-instance limits, better than none).
//!
//! Transitions of a breaker are logged with `tracing` at WARN level; each
//! failure at DEBUG.
//!
//! Typical wiring, Redis with a local fallback:
//!
//! ```no_run
//! # #[cfg(feature = "redis")]
//! # async fn wire() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use tower_tenancy::store::{RedisStore, ResilientStore};
//! use tower_tenancy::MemoryStore;
//!
//! let store = ResilientStore::new(RedisStore::connect("redis://127.0.0.1:6379").await?)
//!     .timeout(Duration::from_millis(50))
//!     .fallback(MemoryStore::new());
//! # Ok(())
//! # }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;
use tokio::time::Instant;

use super::breaker::{Breaker, BreakerConfig, BreakerState};
use super::{Admission, Check, CounterStore, Decision, Decisions, StoreError, StoreResult};
use crate::future::MaybeReady;
use crate::tenant::TenantId;

/// What a [`ResilientStore`] answers while its store cannot.
///
/// ```
/// use std::sync::Arc;
/// use tower_tenancy::store::{CounterStore, FailurePolicy};
///
/// let policy = FailurePolicy::FailClosed;
/// assert!(matches!(policy, FailurePolicy::FailClosed));
/// # fn fallback(local: Arc<dyn CounterStore>) -> FailurePolicy {
/// FailurePolicy::Fallback(local)
/// # }
/// ```
#[derive(Clone, Default)]
pub enum FailurePolicy {
    /// Admit every request: each decision allowed with `remaining = limit`,
    /// no lease. [`CounterStore::adjust`] still fails (there is no level to
    /// report).
    #[default]
    FailOpen,
    /// Refuse: the call returns the [`StoreError`] ([`StoreError::Timeout`],
    /// [`StoreError::Backend`] or [`StoreError::BreakerOpen`]).
    FailClosed,
    /// Ask this local store instead (for example an in-memory store).
    Fallback(Arc<dyn CounterStore>),
}

impl fmt::Debug for FailurePolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailurePolicy::FailOpen => f.write_str("FailOpen"),
            FailurePolicy::FailClosed => f.write_str("FailClosed"),
            FailurePolicy::Fallback(_) => f.write_str("Fallback(..)"),
        }
    }
}

/// Which partition of a store serves a tenant's counters, for one breaker
/// per partition ([`ResilientStore::partitioned`]).
///
/// Names should come from a small set (the masters of a cluster, slot
/// ranges): each name gets a breaker that is kept for the store's life.
/// A closure `Fn(&TenantId) -> Option<Arc<str>>` is a `Partitions`.
///
/// ```
/// use std::sync::Arc;
/// use tower_tenancy::store::Partitions;
/// use tower_tenancy::TenantId;
///
/// // Two shards by the first letter of the tenant id.
/// let shards = |tenant: &TenantId| -> Option<Arc<str>> {
///     Some(Arc::from(if tenant.as_str() < "m" { "a-l" } else { "m-z" }))
/// };
/// assert_eq!(shards.partition(&"acme".parse().unwrap()).as_deref(), Some("a-l"));
/// ```
pub trait Partitions: Send + Sync + 'static {
    /// The partition serving `tenant`, or `None` when unknown (the store's
    /// own breaker, partition `"store"`, is used).
    fn partition(&self, tenant: &TenantId) -> Option<Arc<str>>;

    /// Whether `partition` still exists (a former Cluster master does not):
    /// [`ResilientStore::breaker_states`] lists live partitions only.
    fn live(&self, partition: &str) -> bool {
        let _ = partition;
        true
    }
}

impl<F> Partitions for F
where
    F: Fn(&TenantId) -> Option<Arc<str>> + Send + Sync + 'static,
{
    fn partition(&self, tenant: &TenantId) -> Option<Arc<str>> {
        self(tenant)
    }
}

/// The name of the breaker used without partitions (or for a tenant whose
/// partition is unknown).
const WHOLE: &str = "store";

/// The breakers of one store: one for the whole store, and one per
/// partition when partitioned.
struct Breakers {
    config: BreakerConfig,
    timeout: Duration,
    partitions: Option<Arc<dyn Partitions>>,
    whole: Arc<Breaker>,
    by_partition: RwLock<Vec<Arc<Breaker>>>,
}

impl Breakers {
    fn new(
        config: BreakerConfig,
        timeout: Duration,
        partitions: Option<Arc<dyn Partitions>>,
    ) -> Self {
        Self {
            whole: Arc::new(Breaker::new(Arc::from(WHOLE), &config, timeout)),
            config,
            timeout,
            partitions,
            by_partition: RwLock::new(Vec::new()),
        }
    }

    /// The breaker guarding `tenant`'s calls.
    fn of(&self, tenant: &TenantId) -> Arc<Breaker> {
        let Some(name) = self.partitions.as_ref().and_then(|p| p.partition(tenant)) else {
            return self.whole.clone();
        };
        if let Some(b) = self
            .by_partition
            .read()
            .iter()
            .find(|b| **b.partition() == *name)
        {
            return b.clone();
        }
        let mut all = self.by_partition.write();
        if let Some(b) = all.iter().find(|b| **b.partition() == *name) {
            return b.clone();
        }
        let breaker = Arc::new(Breaker::new(name, &self.config, self.timeout));
        all.push(breaker.clone());
        breaker
    }

    fn all(&self) -> Vec<Arc<Breaker>> {
        let mut all = self.by_partition.read().clone();
        if let Some(partitions) = &self.partitions {
            all.retain(|b| partitions.live(b.partition()));
        }
        all.sort_by(|a, b| a.partition().cmp(b.partition()));
        if self.partitions.is_none() || self.whole.state() != BreakerState::Closed || all.is_empty()
        {
            all.insert(0, self.whole.clone());
        }
        all
    }
}

/// A [`CounterStore`] wrapper with a per-call timeout, a [`FailurePolicy`]
/// and circuit breakers. See the [module documentation](self).
///
/// Defaults: timeout 100 ms, [`FailurePolicy::FailOpen`], one breaker with
/// the [`BreakerConfig`] defaults. Cloning shares the breakers.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_tenancy::future::MaybeReady;
/// use tower_tenancy::store::*;
/// use tower_tenancy::TenantId;
///
/// // A store that is always down.
/// struct Down;
/// impl CounterStore for Down {
///     fn admit(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Admission>> {
///         MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
///     }
///     fn peek(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
///         MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
///     }
///     fn adjust(&self, _: &TenantId, _: &str, _: i64) -> MaybeReady<StoreResult<u64>> {
///         MaybeReady::ready(Err(StoreError::Backend("connection refused".into())))
///     }
/// }
///
/// # tokio::runtime::Builder::new_current_thread().enable_time().build().unwrap().block_on(async {
/// let store = ResilientStore::new(Down)
///     .timeout(Duration::from_millis(50))
///     .policy(FailurePolicy::FailOpen)
///     // Open on 3 failures in a row, however quick.
///     .breaker_config(BreakerConfig::new().consecutive_failures(3).silence(Duration::ZERO));
/// let tenant: TenantId = "acme".parse().unwrap();
/// let checks = [Check::new("api", Algorithm::SlidingWindow { window: Duration::from_secs(60) }, 100, 1)];
/// for _ in 0..3 {
///     let admission = store.admit(&tenant, &checks).await.unwrap();
///     assert!(admission.allowed());
///     assert_eq!(admission.decisions[0].remaining, 100);
/// }
/// assert!(store.is_open());
/// # });
/// ```
pub struct ResilientStore<S> {
    store: Arc<S>,
    timeout: Duration,
    policy: FailurePolicy,
    breakers: Arc<Breakers>,
}

impl<S> Clone for ResilientStore<S> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            timeout: self.timeout,
            policy: self.policy.clone(),
            breakers: self.breakers.clone(),
        }
    }
}

impl<S> fmt::Debug for ResilientStore<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResilientStore")
            .field("timeout", &self.timeout)
            .field("policy", &self.policy)
            .field("breaker", &self.breakers.config)
            .field("partitioned", &self.breakers.partitions.is_some())
            .finish()
    }
}

impl<S: CounterStore> ResilientStore<S> {
    /// Wraps `store` with the defaults (100 ms, fail-open, the
    /// [`BreakerConfig`] defaults).
    ///
    /// ```
    /// # use tower_tenancy::store::{ResilientStore, BreakerState};
    /// # struct Noop;
    /// # impl tower_tenancy::store::CounterStore for Noop {
    /// #   fn admit(&self, _: &tower_tenancy::TenantId, _: &[tower_tenancy::store::Check]) -> tower_tenancy::future::MaybeReady<tower_tenancy::store::StoreResult<tower_tenancy::store::Admission>> { unimplemented!() }
    /// #   fn peek(&self, _: &tower_tenancy::TenantId, _: &[tower_tenancy::store::Check]) -> tower_tenancy::future::MaybeReady<tower_tenancy::store::StoreResult<tower_tenancy::store::Decisions>> { unimplemented!() }
    /// #   fn adjust(&self, _: &tower_tenancy::TenantId, _: &str, _: i64) -> tower_tenancy::future::MaybeReady<tower_tenancy::store::StoreResult<u64>> { unimplemented!() }
    /// # }
    /// let store = ResilientStore::new(Noop);
    /// assert_eq!(store.breaker_state(), BreakerState::Closed);
    /// ```
    pub fn new(store: S) -> Self {
        let timeout = Duration::from_millis(100);
        Self {
            store: Arc::new(store),
            timeout,
            policy: FailurePolicy::FailOpen,
            breakers: Arc::new(Breakers::new(BreakerConfig::default(), timeout, None)),
        }
    }

    /// Rebuilds the breakers (closed) after a change of their settings.
    fn rebuild(mut self, config: BreakerConfig, partitions: Option<Arc<dyn Partitions>>) -> Self {
        self.breakers = Arc::new(Breakers::new(config, self.timeout, partitions));
        self
    }

    /// Sets the longest time a store call may take; a slower call counts as
    /// a failure ([`StoreError::Timeout`]). Calls that the store answers
    /// synchronously are not timed.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::ResilientStore;
    /// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
    /// ResilientStore::new(redis).timeout(Duration::from_millis(20))
    /// # }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        let (config, partitions) = (self.breakers.config, self.breakers.partitions.clone());
        self.rebuild(config, partitions)
    }

    /// Sets what is answered while the store cannot.
    ///
    /// ```
    /// # use tower_tenancy::store::{FailurePolicy, ResilientStore};
    /// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
    /// ResilientStore::new(redis).policy(FailurePolicy::FailClosed)
    /// # }
    /// ```
    pub fn policy(mut self, policy: FailurePolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Shorthand for [`FailurePolicy::Fallback`] with `local`.
    ///
    /// ```
    /// # use tower_tenancy::store::{CounterStore, ResilientStore};
    /// # fn wrap<S: CounterStore, M: CounterStore>(redis: S, memory: M) -> ResilientStore<S> {
    /// ResilientStore::new(redis).fallback(memory)
    /// # }
    /// ```
    pub fn fallback(self, local: impl CounterStore) -> Self {
        self.policy(FailurePolicy::Fallback(Arc::new(local)))
    }

    /// Sets when the breakers open and for how long ([`BreakerConfig`]).
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::{BreakerConfig, ResilientStore};
    /// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
    /// ResilientStore::new(redis).breaker_config(BreakerConfig::new().failure_rate(80))
    /// # }
    /// ```
    pub fn breaker_config(self, config: BreakerConfig) -> Self {
        let partitions = self.breakers.partitions.clone();
        self.rebuild(config, partitions)
    }

    /// Shorthand kept from earlier versions: the outage rule needs
    /// `failures` failures in a row (at least 1) — spanning 2 × the timeout,
    /// as with [`BreakerConfig::consecutive_failures`] — and an open breaker
    /// stays open for `cool_down`, every time (no doubling). The
    /// failure-rate rule keeps its settings.
    /// Before 0.2 the breaker opened on `failures` consecutive failures
    /// alone, however close together.
    ///
    /// ```
    /// # use std::time::Duration;
    /// # use tower_tenancy::store::ResilientStore;
    /// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
    /// ResilientStore::new(redis).breaker(10, Duration::from_secs(5))
    /// # }
    /// ```
    pub fn breaker(self, failures: u32, cool_down: Duration) -> Self {
        let config = self
            .breakers
            .config
            .consecutive_failures(failures)
            .cool_down(cool_down)
            .max_cool_down(Duration::ZERO);
        self.breaker_config(config)
    }

    /// One breaker per partition of the store (for Redis Cluster:
    /// [`ClusterPartitions`](crate::store::ClusterPartitions), one per
    /// master), so that a failing partition degrades only its tenants.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_tenancy::store::ResilientStore;
    /// # use tower_tenancy::TenantId;
    /// # fn wrap<S: tower_tenancy::store::CounterStore>(redis: S) -> ResilientStore<S> {
    /// ResilientStore::new(redis)
    ///     .partitioned(|t: &TenantId| Some(Arc::from(if t.as_str() < "m" { "a" } else { "b" })))
    /// # }
    /// ```
    pub fn partitioned(self, partitions: impl Partitions) -> Self {
        let config = self.breakers.config;
        self.rebuild(config, Some(Arc::new(partitions)))
    }

    /// The wrapped store.
    ///
    /// ```
    /// # use tower_tenancy::store::ResilientStore;
    /// # fn inner<S: tower_tenancy::store::CounterStore>(s: &ResilientStore<S>) -> &S {
    /// s.inner()
    /// # }
    /// ```
    pub fn inner(&self) -> &S {
        &self.store
    }

    /// Whether any breaker is not closed (its store or partition is not
    /// being called; a half-open breaker counts as open until its probe
    /// succeeds).
    ///
    /// ```
    /// # use tower_tenancy::store::ResilientStore;
    /// # fn check<S: tower_tenancy::store::CounterStore>(s: &ResilientStore<S>) {
    /// if s.is_open() {
    ///     // report the store as degraded
    /// }
    /// # }
    /// ```
    pub fn is_open(&self) -> bool {
        self.breaker_state() != BreakerState::Closed
    }

    /// The state of the breaker, or with partitions the worst of them (open,
    /// then half-open, then closed). An open breaker whose cool-down has
    /// ended reports [`BreakerState::HalfOpen`].
    ///
    /// ```
    /// # use tower_tenancy::store::{BreakerState, ResilientStore};
    /// # fn check<S: tower_tenancy::store::CounterStore>(s: &ResilientStore<S>) {
    /// let closed = s.breaker_state() == BreakerState::Closed;
    /// # }
    /// ```
    pub fn breaker_state(&self) -> BreakerState {
        let states = self.breaker_states();
        let has = |s| states.iter().any(|(_, state)| *state == s);
        if has(BreakerState::Open) {
            BreakerState::Open
        } else if has(BreakerState::HalfOpen) {
            BreakerState::HalfOpen
        } else {
            BreakerState::Closed
        }
    }

    /// Each breaker with its partition's name, sorted by name: `"store"`
    /// alone without partitions; with partitions, one per partition seen so
    /// far (plus `"store"`, for tenants of no known partition, while it is
    /// not closed or before any partition was seen).
    ///
    /// ```
    /// # use tower_tenancy::store::{BreakerState, ResilientStore};
    /// # fn check<S: tower_tenancy::store::CounterStore>(s: &ResilientStore<S>) {
    /// for (partition, state) in s.breaker_states() {
    ///     println!("{partition}: {state:?}");
    /// }
    /// # }
    /// ```
    pub fn breaker_states(&self) -> Vec<(Arc<str>, BreakerState)> {
        self.breakers
            .all()
            .iter()
            .map(|b| (b.partition().clone(), b.state()))
            .collect()
    }

    /// The state of the breaker guarding `tenant`'s calls.
    ///
    /// ```
    /// # use tower_tenancy::store::{BreakerState, ResilientStore};
    /// # fn check<S: tower_tenancy::store::CounterStore>(s: &ResilientStore<S>) {
    /// let acme = s.breaker_state_for(&"acme".parse().unwrap());
    /// # }
    /// ```
    pub fn breaker_state_for(&self, tenant: &TenantId) -> BreakerState {
        self.breakers.of(tenant).state()
    }

    /// Runs one store call of `tenant` under its breaker and the timeout;
    /// on failure answers with `fail(error)`.
    fn guarded<T: Send + 'static>(
        &self,
        tenant: &TenantId,
        call: impl FnOnce() -> MaybeReady<StoreResult<T>>,
        fail: impl FnOnce(StoreError) -> MaybeReady<StoreResult<T>> + Send + 'static,
    ) -> MaybeReady<StoreResult<T>> {
        let breaker = self.breakers.of(tenant);
        if !breaker.try_acquire() {
            return fail(StoreError::BreakerOpen);
        }
        let started = Instant::now();
        let mut call = call();
        // Synchronous answers (an in-memory store) need no timer.
        if let Some(result) = call.try_take() {
            return match result {
                Ok(value) => {
                    breaker.success();
                    MaybeReady::ready(Ok(value))
                }
                Err(error) => {
                    breaker.failure(started);
                    fail(error)
                }
            };
        }
        let timeout = self.timeout;
        // Created outside the future so that dropping it unpolled counts too.
        let probe = ProbeGuard(Some(breaker));
        MaybeReady::boxed(async move {
            let mut probe = probe;
            let result = match tokio::time::timeout(timeout, call).await {
                Ok(result) => result,
                Err(_) => Err(StoreError::Timeout),
            };
            let breaker = probe.0.take().expect("set above");
            match result {
                Ok(value) => {
                    breaker.success();
                    Ok(value)
                }
                Err(error) => {
                    breaker.failure(started);
                    fail(error).await
                }
            }
        })
    }
}

impl<S: CounterStore> CounterStore for ResilientStore<S> {
    fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        let on_failure = OnFailure::new(&self.policy, tenant, checks);
        let fail = move |error| match on_failure.answer(error) {
            Answer::Open(decisions) => MaybeReady::ready(Ok(Admission::new(decisions, None))),
            Answer::Error(error) => MaybeReady::ready(Err(error)),
            Answer::Ask(local, tenant, checks) => local.admit(&tenant, &checks),
        };
        self.guarded(tenant, || self.store.admit(tenant, checks), fail)
    }

    fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        let on_failure = OnFailure::new(&self.policy, tenant, checks);
        let fail = move |error| match on_failure.answer(error) {
            Answer::Open(decisions) => MaybeReady::ready(Ok(decisions)),
            Answer::Error(error) => MaybeReady::ready(Err(error)),
            Answer::Ask(local, tenant, checks) => local.peek(&tenant, &checks),
        };
        self.guarded(tenant, || self.store.peek(tenant, checks), fail)
    }

    fn adjust(&self, tenant: &TenantId, policy: &str, delta: i64) -> MaybeReady<StoreResult<u64>> {
        let local = match &self.policy {
            FailurePolicy::Fallback(local) => {
                Some((local.clone(), tenant.clone(), policy.to_owned()))
            }
            _ => None,
        };
        let fail = move |error: StoreError| {
            tracing::debug!(%error, "counter store failed; applying the failure policy to adjust");
            match local {
                Some((local, tenant, policy)) => local.adjust(&tenant, &policy, delta),
                None => MaybeReady::ready(Err(error)),
            }
        };
        self.guarded(tenant, || self.store.adjust(tenant, policy, delta), fail)
    }

    fn invalidate(&self, tenant: &TenantId) {
        self.store.invalidate(tenant);
        if let FailurePolicy::Fallback(local) = &self.policy {
            local.invalidate(tenant);
        }
    }

    fn invalidate_all(&self) {
        self.store.invalidate_all();
        if let FailurePolicy::Fallback(local) = &self.policy {
            local.invalidate_all();
        }
    }
}

/// What the failure policy needs to answer one call, captured up front
/// (the store's future must be `'static`).
enum OnFailure {
    Open(Vec<u64>),
    Closed,
    Fallback(Arc<dyn CounterStore>, TenantId, Arc<[Check]>),
}

#[allow(clippy::large_enum_variant)] // a cold path, answered once
enum Answer {
    Open(Decisions),
    Error(StoreError),
    Ask(Arc<dyn CounterStore>, TenantId, Arc<[Check]>),
}

impl OnFailure {
    fn new(policy: &FailurePolicy, tenant: &TenantId, checks: &[Check]) -> Self {
        match policy {
            FailurePolicy::FailOpen => OnFailure::Open(checks.iter().map(|c| c.limit).collect()),
            FailurePolicy::FailClosed => OnFailure::Closed,
            FailurePolicy::Fallback(local) => {
                OnFailure::Fallback(local.clone(), tenant.clone(), checks.into())
            }
        }
    }

    fn answer(self, error: StoreError) -> Answer {
        tracing::debug!(%error, "counter store failed; applying the failure policy");
        match self {
            // Every check allowed, nothing used.
            OnFailure::Open(limits) => Answer::Open(
                limits
                    .into_iter()
                    .map(|limit| Decision {
                        allowed: true,
                        limit,
                        used: 0,
                        remaining: limit,
                        reset: Duration::ZERO,
                        retry_after: None,
                    })
                    .collect(),
            ),
            OnFailure::Closed => Answer::Error(error),
            OnFailure::Fallback(local, tenant, checks) => Answer::Ask(local, tenant, checks),
        }
    }
}

/// Marks an abandoned call (its future dropped before an answer, e.g. the
/// client went away) so that a half-open breaker can probe again.
struct ProbeGuard(Option<Arc<Breaker>>);

impl Drop for ProbeGuard {
    fn drop(&mut self) {
        if let Some(breaker) = self.0.take() {
            breaker.abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Algorithm, Lease};
    use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

    /// A store that fails or hangs while `down` is set, and counts calls.
    #[derive(Default)]
    struct Flaky {
        down: AtomicBool,
        hang: AtomicBool,
        calls: AtomicU32,
    }

    impl CounterStore for Flaky {
        fn admit(&self, _: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            let decisions: Decisions = checks
                .iter()
                .map(|c| Decision {
                    allowed: true,
                    limit: c.limit,
                    used: 7,
                    remaining: c.limit - 7,
                    reset: Duration::ZERO,
                    retry_after: None,
                })
                .collect();
            if self.hang.load(Ordering::SeqCst) {
                return MaybeReady::boxed(std::future::pending());
            }
            let down = self.down.load(Ordering::SeqCst);
            MaybeReady::boxed(async move {
                if down {
                    Err(StoreError::Backend("refused".into()))
                } else {
                    Ok(Admission::new(decisions, Some(Lease::new(|| {}))))
                }
            })
        }
        fn peek(&self, _: &TenantId, _: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
            MaybeReady::ready(Ok(Decisions::new()))
        }
        fn adjust(&self, _: &TenantId, _: &str, _: i64) -> MaybeReady<StoreResult<u64>> {
            if self.down.load(Ordering::SeqCst) {
                MaybeReady::ready(Err(StoreError::Backend("refused".into())))
            } else {
                MaybeReady::ready(Ok(3))
            }
        }
    }

    fn checks() -> Vec<Check> {
        vec![Check::new(
            "p",
            Algorithm::SlidingWindow {
                window: Duration::from_secs(1),
            },
            10,
            1,
        )]
    }

    fn tenant() -> TenantId {
        "acme".parse().unwrap()
    }

    /// Opens on `n` failures in a row, however quick; 1 s cool-down (the
    /// default maximum: not doubled).
    fn quick(n: u32) -> BreakerConfig {
        BreakerConfig::new()
            .consecutive_failures(n)
            .silence(Duration::ZERO)
            .cool_down(Duration::from_secs(1))
    }

    #[tokio::test(start_paused = true)]
    async fn breaker_opens_half_opens_and_closes() {
        let flaky = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone())
            .timeout(Duration::from_millis(50))
            .policy(FailurePolicy::FailClosed)
            .breaker_config(quick(3));
        flaky.down.store(true, Ordering::SeqCst);
        for _ in 0..3 {
            let err = store.admit(&tenant(), &checks()).await.unwrap_err();
            assert!(matches!(err, StoreError::Backend(_)));
        }
        assert!(store.is_open());
        assert_eq!(store.breaker_state(), BreakerState::Open);
        let err = store.admit(&tenant(), &checks()).await.unwrap_err();
        assert!(matches!(err, StoreError::BreakerOpen));
        assert_eq!(
            flaky.calls.load(Ordering::SeqCst),
            3,
            "open breaker calls nothing"
        );

        tokio::time::advance(Duration::from_millis(1001)).await;
        assert_eq!(store.breaker_state(), BreakerState::HalfOpen);
        // Failed probe: open again.
        assert!(store.admit(&tenant(), &checks()).await.is_err());
        assert_eq!(store.breaker_state(), BreakerState::Open);
        assert_eq!(flaky.calls.load(Ordering::SeqCst), 4);

        tokio::time::advance(Duration::from_millis(1001)).await;
        flaky.down.store(false, Ordering::SeqCst);
        let admission = store.admit(&tenant(), &checks()).await.unwrap();
        assert_eq!(admission.decisions[0].used, 7);
        assert_eq!(store.breaker_state(), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn timeouts_count_as_failures_and_fail_open_admits() {
        let flaky = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone())
            .timeout(Duration::from_millis(50))
            .breaker(2, Duration::from_secs(1));
        flaky.hang.store(true, Ordering::SeqCst);
        let start = Instant::now();
        let admission = store.admit(&tenant(), &checks()).await.unwrap();
        assert_eq!(start.elapsed(), Duration::from_millis(50));
        // Two failures in a row spanning 100 ms (2 × the timeout) open it.
        assert!(admission.allowed());
        assert!(admission.lease.is_none());
        assert_eq!(admission.decisions[0].remaining, 10);
        assert_eq!(admission.decisions[0].used, 0);
        assert!(!store.is_open());
        store.admit(&tenant(), &checks()).await.unwrap();
        assert!(store.is_open());
        // Adjust has no open answer.
        assert!(matches!(
            store.adjust(&tenant(), "g", 1).await,
            Err(StoreError::BreakerOpen)
        ));
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_probe_through() {
        let flaky = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone())
            .timeout(Duration::from_millis(50))
            .policy(FailurePolicy::FailClosed)
            .breaker_config(quick(1));
        flaky.down.store(true, Ordering::SeqCst);
        assert!(store.admit(&tenant(), &checks()).await.is_err());
        assert!(store.is_open());
        tokio::time::advance(Duration::from_millis(1001)).await;
        flaky.down.store(false, Ordering::SeqCst);
        flaky.hang.store(true, Ordering::SeqCst);
        let probe = store.admit(&tenant(), &checks());
        // While the probe is out, other calls get the policy's answer.
        assert!(matches!(
            store.admit(&tenant(), &checks()).await,
            Err(StoreError::BreakerOpen)
        ));
        // The probe is abandoned: the next call probes again.
        drop(probe);
        flaky.hang.store(false, Ordering::SeqCst);
        assert!(store.admit(&tenant(), &checks()).await.is_ok());
        assert!(!store.is_open());
    }

    #[tokio::test]
    async fn fallback_answers_while_down() {
        let flaky = Arc::new(Flaky::default());
        let local = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone()).fallback(local.clone());
        flaky.down.store(true, Ordering::SeqCst);
        let admission = store.admit(&tenant(), &checks()).await.unwrap();
        assert!(admission.lease.is_some(), "the fallback's answer");
        assert_eq!(local.calls.load(Ordering::SeqCst), 1);
        assert_eq!(store.adjust(&tenant(), "g", 1).await.unwrap(), 3);
    }

    /// Fails the calls of tenants whose id starts with `down`.
    struct Partial(Flaky, &'static str);

    impl CounterStore for Partial {
        fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
            if tenant.as_str().starts_with(self.1) {
                return MaybeReady::ready(Err(StoreError::Backend("refused".into())));
            }
            self.0.admit(tenant, checks)
        }
        fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
            self.0.peek(tenant, checks)
        }
        fn adjust(
            &self,
            tenant: &TenantId,
            policy: &str,
            delta: i64,
        ) -> MaybeReady<StoreResult<u64>> {
            self.0.adjust(tenant, policy, delta)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn one_breaker_per_partition() {
        let store = ResilientStore::new(Partial(Flaky::default(), "down"))
            .policy(FailurePolicy::FailClosed)
            .breaker_config(quick(3))
            .partitioned(|t: &TenantId| {
                Some(Arc::from(if t.as_str().starts_with("down") {
                    "node-a"
                } else {
                    "node-b"
                }))
            });
        let down: TenantId = "down-1".parse().unwrap();
        let up: TenantId = "up-1".parse().unwrap();
        for _ in 0..3 {
            assert!(store.admit(&down, &checks()).await.is_err());
        }
        assert_eq!(store.breaker_state_for(&down), BreakerState::Open);
        assert_eq!(store.breaker_state_for(&up), BreakerState::Closed);
        assert!(matches!(
            store.admit(&"down-2".parse().unwrap(), &checks()).await,
            Err(StoreError::BreakerOpen)
        ));
        for _ in 0..10 {
            assert!(store.admit(&up, &checks()).await.unwrap().allowed());
        }
        assert_eq!(store.breaker_state(), BreakerState::Open, "the worst");
        let states = store.breaker_states();
        assert_eq!(
            states,
            vec![
                (Arc::from("node-a"), BreakerState::Open),
                (Arc::from("node-b"), BreakerState::Closed)
            ]
        );
    }

    #[tokio::test(start_paused = true)]
    async fn legacy_breaker_shorthand_needs_a_silence() {
        let flaky = Arc::new(Flaky::default());
        let store = ResilientStore::new(flaky.clone())
            .timeout(Duration::from_millis(50))
            .policy(FailurePolicy::FailClosed)
            .breaker(3, Duration::from_secs(1));
        flaky.down.store(true, Ordering::SeqCst);
        // Ten quick refusals: a hiccup as far as the outage rule goes.
        for _ in 0..10 {
            assert!(store.admit(&tenant(), &checks()).await.is_err());
        }
        assert!(!store.is_open());
        tokio::time::advance(Duration::from_millis(100)).await;
        assert!(store.admit(&tenant(), &checks()).await.is_err());
        assert!(store.is_open());
    }
}
