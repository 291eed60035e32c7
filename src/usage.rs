//! Usage reports: for one tenant, every counter policy of its plan with its
//! limit, current usage, remaining units, reset time and utilization — read
//! from the configured store without consuming anything.

use serde::Serialize;

use crate::plan::Limit;
use crate::reject::ceil_secs;
use crate::store::{Algorithm, Check, CounterStore, StoreError};
use crate::tenant::Tenant;

/// The usage of one policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PolicyUsage {
    /// The rule name, e.g. `api_calls_per_minute`.
    pub policy: String,
    /// `rate`, `quota`, `concurrency` or `gauge`.
    pub kind: &'static str,
    /// The limit (`"unlimited"` or a number).
    pub limit: Limit,
    /// Units in use now (for the sliding window counter, the weighted estimate).
    pub used: u64,
    /// Units left (`None` when unlimited).
    pub remaining: Option<u64>,
    /// Seconds until the counter resets (0 for concurrency and gauges).
    pub reset_seconds: u64,
    /// `used / limit` in percent, one decimal (`None` when unlimited).
    pub utilization_percent: Option<f64>,
}

/// The usage of every counter policy of a tenant's plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UsageReport {
    /// The tenant id.
    pub tenant: String,
    /// The plan name.
    pub plan: String,
    /// One entry per rate, quota, concurrency rule and limit kept as a gauge,
    /// in that order, sorted by name within each kind.
    pub policies: Vec<PolicyUsage>,
}

impl UsageReport {
    /// Sets the usage of a resource limit whose count the application keeps
    /// itself (the one a [`ResourceLimitLayer`](crate::ResourceLimitLayer)
    /// asks its usage source for), recomputing remaining and utilization.
    /// Returns false when the report has no such policy.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use tower_tenancy::{Plan, Tenant, store::MemoryStore, usage::usage_report};
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let tenant = Tenant::new("acme".parse().unwrap(), Arc::new(Plan::new("free").limit("workflows", 5)));
    /// let mut report = usage_report(&MemoryStore::new(), &tenant).await.unwrap();
    /// assert!(report.set_used("workflows", 4));
    /// assert_eq!(report.policies[0].remaining, Some(1));
    /// assert_eq!(report.policies[0].utilization_percent, Some(80.0));
    /// # });
    /// ```
    pub fn set_used(&mut self, policy: &str, used: u64) -> bool {
        match self.policies.iter_mut().find(|p| p.policy == policy) {
            Some(p) => {
                *p = PolicyUsage::new(
                    std::mem::take(&mut p.policy),
                    p.kind,
                    p.limit,
                    used,
                    p.reset_seconds,
                );
                true
            }
            None => false,
        }
    }
}

impl PolicyUsage {
    fn new(
        policy: String,
        kind: &'static str,
        limit: Limit,
        used: u64,
        reset_seconds: u64,
    ) -> Self {
        Self {
            policy,
            kind,
            limit,
            used,
            remaining: limit.max().map(|max| max.saturating_sub(used)),
            reset_seconds,
            utilization_percent: limit.max().map(|max| {
                if max == 0 {
                    100.0
                } else {
                    (used as f64 * 1000.0 / max as f64).round() / 10.0
                }
            }),
        }
    }
}

/// The checks that read every counter of `tenant`'s plan (cost 0: a dry run
/// reports the level without needing room). Unlimited policies are read with
/// the largest limit so that their usage is reported too.
fn checks_for(tenant: &Tenant) -> Vec<(Check, &'static str, Limit)> {
    let plan = tenant.plan();
    let limit_of = |l: Limit| l.max().unwrap_or(u64::MAX);
    let check = |name: &str, algorithm, limit| Check::new(name, algorithm, limit_of(limit), 0);
    let rates = plan
        .rates
        .iter()
        .map(|(name, r)| (check(name, r.into(), r.limit), "rate", r.limit));
    let quotas = plan
        .quotas
        .iter()
        .map(|(name, q)| (check(name, q.into(), q.limit), "quota", q.limit));
    let concurrency = plan
        .concurrency
        .iter()
        .map(|(name, c)| (check(name, c.into(), c.limit), "concurrency", c.limit));
    let gauges = plan
        .limits
        .iter()
        .map(|(name, l)| (check(name, Algorithm::Gauge, *l), "gauge", *l));
    rates
        .chain(quotas)
        .chain(concurrency)
        .chain(gauges)
        .collect()
}

/// Reads the usage of every counter policy of `tenant` from `store`, in one
/// store call, consuming nothing.
///
/// Limits kept as gauges are read from the store: for resource limits whose
/// usage the application reports itself, the store shows 0.
///
/// ```
/// use std::sync::Arc;
/// use std::time::Duration;
/// use tower_tenancy::store::{Algorithm, Check, CounterStore, MemoryStore};
/// use tower_tenancy::usage::usage_report;
/// use tower_tenancy::{Plan, RateRule, Tenant};
///
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let plan = Plan::new("free").rate("api", RateRule::new(10, Duration::from_secs(60)));
/// let tenant = Tenant::new("acme".parse().unwrap(), Arc::new(plan));
/// let store = MemoryStore::new();
/// let check = Check::new("api", Algorithm::SlidingWindow { window: Duration::from_secs(60) }, 10, 3);
/// store.admit(tenant.id(), &[check]).await.unwrap();
///
/// let report = usage_report(&store, &tenant).await.unwrap();
/// assert_eq!(report.policies[0].used, 3);
/// assert_eq!(report.policies[0].remaining, Some(7));
/// assert_eq!(report.policies[0].utilization_percent, Some(30.0));
/// # });
/// ```
pub async fn usage_report<S: CounterStore + ?Sized>(
    store: &S,
    tenant: &Tenant,
) -> Result<UsageReport, StoreError> {
    let entries = checks_for(tenant);
    let checks: Vec<Check> = entries.iter().map(|(c, _, _)| c.clone()).collect();
    let decisions = if checks.is_empty() {
        Default::default()
    } else {
        store.peek(tenant.id(), &checks).await?
    };
    let policies = entries
        .into_iter()
        .zip(decisions)
        .map(|((check, kind, limit), d)| {
            PolicyUsage::new(
                check.policy.to_string(),
                kind,
                limit,
                d.used,
                ceil_secs(d.reset),
            )
        })
        .collect();
    Ok(UsageReport {
        tenant: tenant.id().to_string(),
        plan: tenant.plan().name.clone(),
        policies,
    })
}
