//! Usage reports: for one tenant, every counter policy of its plan with its
//! limit, current usage, remaining units, reset time and utilization — read
//! from the configured store without consuming anything — and where each
//! limit comes from: the plan, or an override (with its `until` and the
//! plan's value that applies then).

use serde::Serialize;

use crate::plan::{Limit, Overrides, Plan};
use crate::reject::ceil_secs;
use crate::store::{Algorithm, Check, CounterStore, StoreError};
use crate::tenant::Tenant;
use crate::utc::UtcTime;

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
    /// Where the limit comes from: `plan` or `override`.
    pub source: &'static str,
    /// When the override ends (`None`: it does not, or the limit is the plan's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<UtcTime>,
    /// The limit that applies after `until` (the plan's; `"unlimited"` when
    /// the plan has no such rule).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<Limit>,
    /// Whether the rule runs in shadow mode (counted, never refusing).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub shadow: bool,
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
                let origin = Origin {
                    source: p.source,
                    until: p.until,
                    then: p.then,
                    shadow: p.shadow,
                };
                *p = PolicyUsage::new(
                    std::mem::take(&mut p.policy),
                    p.kind,
                    p.limit,
                    used,
                    p.reset_seconds,
                    origin,
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
        origin: Origin,
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
            source: origin.source,
            until: origin.until,
            then: origin.then,
            shadow: origin.shadow,
        }
    }
}

/// Where a policy's limit comes from.
#[derive(Debug, Clone, Copy)]
struct Origin {
    source: &'static str,
    until: Option<UtcTime>,
    then: Option<Limit>,
    shadow: bool,
}

impl Origin {
    /// The origin of rule `name` of `kind` in the effective plan, given the
    /// overrides in force (`None`: none) and the base plan.
    fn of(kind: &str, name: &str, active: Option<&Overrides>, base: &Plan, shadow: bool) -> Self {
        let overridden = active.is_some_and(|o| match kind {
            "rate" => o.rates.contains_key(name),
            "quota" => o.quotas.contains_key(name),
            "concurrency" => o.concurrency.contains_key(name),
            _ => o.limits.contains_key(name),
        });
        if !overridden {
            return Self {
                source: "plan",
                until: None,
                then: None,
                shadow,
            };
        }
        let until = active.and_then(|o| o.until);
        let then = until.map(|_| {
            match kind {
                "rate" => base.rates.get(name).map(|r| r.limit),
                "quota" => base.quotas.get(name).map(|q| q.limit),
                "concurrency" => base.concurrency.get(name).map(|c| c.limit),
                _ => base.limit_of(name),
            }
            .unwrap_or(Limit::Unlimited)
        });
        Self {
            source: "override",
            until,
            then,
            shadow,
        }
    }
}

/// The checks that read every counter of `tenant`'s plan (cost 0: a dry run
/// reports the level without needing room). Unlimited policies are read with
/// the largest limit so that their usage is reported too.
fn checks_for(tenant: &Tenant, now: UtcTime) -> Vec<(Check, &'static str, Limit, Origin)> {
    let plan = tenant.plan_at(now);
    let active = tenant.overrides_at(now);
    let limit_of = |l: Limit| l.max().unwrap_or(u64::MAX);
    let check = |name: &str, algorithm, limit| Check::new(name, algorithm, limit_of(limit), 0);
    let origin = |kind, name: &str, shadow| {
        Origin::of(
            kind,
            name,
            active,
            tenant.base_plan(),
            shadow || plan.shadow,
        )
    };
    let rates = plan.rates.iter().map(|(name, r)| {
        let o = origin("rate", name, r.shadow);
        (check(name, r.into(), r.limit), "rate", r.limit, o)
    });
    let quotas = plan.quotas.iter().map(|(name, q)| {
        let o = origin("quota", name, q.shadow);
        (check(name, q.into(), q.limit), "quota", q.limit, o)
    });
    let concurrency = plan.concurrency.iter().map(|(name, c)| {
        let o = origin("concurrency", name, c.shadow);
        (check(name, c.into(), c.limit), "concurrency", c.limit, o)
    });
    // Gauges are always enforced.
    let gauges = plan.limits.iter().map(|(name, l)| {
        let o = Origin::of("gauge", name, active, tenant.base_plan(), false);
        (check(name, Algorithm::Gauge, *l), "gauge", *l, o)
    });
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
    let now = UtcTime::now();
    let entries = checks_for(tenant, now);
    let checks: Vec<Check> = entries.iter().map(|(c, ..)| c.clone()).collect();
    let decisions = if checks.is_empty() {
        Default::default()
    } else {
        store.peek(tenant.id(), &checks).await?
    };
    let policies = entries
        .into_iter()
        .zip(decisions)
        .map(|((check, kind, limit, origin), d)| {
            PolicyUsage::new(
                check.policy.to_string(),
                kind,
                limit,
                d.used,
                ceil_secs(d.reset),
                origin,
            )
        })
        .collect();
    Ok(UsageReport {
        tenant: tenant.id().to_string(),
        plan: tenant.plan_at(now).name.clone(),
        policies,
    })
}
