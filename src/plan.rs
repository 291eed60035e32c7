//! Plans: features, resource limits, rate limits, quotas and concurrency
//! limits; per-tenant [`Overrides`]; the serde form used by catalogs.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::utc::UtcTime;

/// A numeric limit: a maximum, or unlimited.
///
/// In a catalog a limit is a non-negative integer or the string `"unlimited"`.
///
/// ```
/// use tower_tenancy::Limit;
///
/// let l: Limit = serde_json::from_str("\"unlimited\"").unwrap();
/// assert_eq!(l, Limit::Unlimited);
/// assert_eq!(serde_json::from_str::<Limit>("5").unwrap(), Limit::Max(5));
/// assert!(serde_json::from_str::<Limit>("-1").is_err());
/// assert!(Limit::Max(5).allows(5) && !Limit::Max(5).allows(6));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Limit {
    /// No limit: checks are skipped.
    Unlimited,
    /// At most this many.
    Max(u64),
}

impl Limit {
    /// Whether a total of `amount` stays within the limit.
    pub fn allows(self, amount: u64) -> bool {
        match self {
            Limit::Unlimited => true,
            Limit::Max(max) => amount <= max,
        }
    }

    /// The maximum, or `None` when unlimited.
    pub fn max(self) -> Option<u64> {
        match self {
            Limit::Unlimited => None,
            Limit::Max(max) => Some(max),
        }
    }
}

impl From<u64> for Limit {
    fn from(max: u64) -> Self {
        Limit::Max(max)
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Limit::Unlimited => f.write_str("unlimited"),
            Limit::Max(n) => write!(f, "{n}"),
        }
    }
}

impl Serialize for Limit {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match self {
            Limit::Unlimited => serializer.serialize_str("unlimited"),
            Limit::Max(n) => serializer.serialize_u64(*n),
        }
    }
}

impl<'de> Deserialize<'de> for Limit {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Limit;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a non-negative integer or \"unlimited\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Limit, E> {
                Ok(Limit::Max(v))
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Limit, E> {
                u64::try_from(v)
                    .map(Limit::Max)
                    .map_err(|_| E::custom(format!("limit must not be negative (got {v})")))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Limit, E> {
                if v.eq_ignore_ascii_case("unlimited") {
                    Ok(Limit::Unlimited)
                } else {
                    Err(E::custom(
                        "expected a non-negative integer or \"unlimited\"",
                    ))
                }
            }
        }
        deserializer.deserialize_any(V)
    }
}

/// A span of time in a catalog: integer seconds, or a string with a unit:
/// `"500ms"`, `"30s"`, `"1m"`, `"1h"`, `"1d"`.
///
/// ```
/// use std::time::Duration;
/// use tower_tenancy::plan::parse_duration;
///
/// assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
/// assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(parse_duration("1 fortnight").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected e.g. \"30s\", \"1m\", \"1h\""))?;
    let ms_per_unit: u64 = match unit.trim() {
        "ms" => 1,
        "" | "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ))
        }
    };
    let ms = n
        .checked_mul(ms_per_unit)
        .filter(|ms| *ms > 0 && *ms <= 366 * 86_400_000)
        .ok_or_else(|| format!("duration {s:?} must be between 1ms and 366d"))?;
    Ok(Duration::from_millis(ms))
}

mod duration_serde {
    use super::*;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        let ms = d.as_millis();
        if ms.is_multiple_of(1000) {
            s.serialize_str(&format!("{}s", ms / 1000))
        } else {
            s.serialize_str(&format!("{ms}ms"))
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Duration;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("seconds as an integer or a string such as \"1m\"")
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Duration, E> {
                parse_duration(&format!("{v}s")).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Duration, E> {
                // TOML integers arrive signed.
                match u64::try_from(v) {
                    Ok(v) => self.visit_u64(v),
                    Err(_) => Err(E::custom(format!("duration must be positive (got {v})"))),
                }
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Duration, E> {
                parse_duration(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// How a rate limit counts. Which to pick:
///
/// * [`SlidingWindow`](Self::SlidingWindow) (the default, `"sliding_window"`):
///   never admits more than `limit` in any window-long span; may refuse up to
///   one eighth of a window early. 24 bytes of state per key in memory.
/// * [`Gcra`](Self::Gcra) (`"gcra"`): a steady rate of `limit / window` with
///   bursts of up to `burst` (default: `limit`), as governor and
///   tower_governor count; 8 bytes per key.
/// * [`SlidingLog`](Self::SlidingLog) (`"sliding_log"`): exact, O(limit)
///   memory per key.
/// * [`SlidingWindowApprox`](Self::SlidingWindowApprox)
///   (`"sliding_window_approx"`): the two-counter estimate; O(1) memory but
///   it may admit up to about twice the limit in a span after a burst.
///
/// The measured accuracy of each is in BENCHMARKS.md §5 and in
/// [`MemoryStore`](crate::MemoryStore#accuracy).
///
/// ```
/// use tower_tenancy::{RateAlgorithm, RateRule};
///
/// let r: RateRule = serde_json::from_str(r#"{"limit":10,"window":"1s","algorithm":"gcra","burst":20}"#).unwrap();
/// assert_eq!((r.algorithm, r.burst), (RateAlgorithm::Gcra, Some(20)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RateAlgorithm {
    /// Sliding window of 8 sub-buckets: counts every admission of the last
    /// window, the oldest (partly expired) sub-bucket in full. Never over the
    /// limit; O(1) memory.
    #[default]
    SlidingWindow,
    /// Sliding log: one timestamp per admitted unit. O(limit) memory, exact.
    SlidingLog,
    /// The two-counter sliding window (the previous fixed window weighted by
    /// its overlap): O(1) memory, approximate in both directions.
    SlidingWindowApprox,
    /// Generic cell rate algorithm: one unit every `window / limit`, bursts
    /// of up to `burst`.
    Gcra,
}

/// A rate limit: at most `limit` units per sliding `window`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateRule {
    /// Units admitted per window.
    pub limit: Limit,
    /// The window length.
    #[serde(with = "duration_serde")]
    pub window: Duration,
    /// The counting algorithm.
    #[serde(default)]
    pub algorithm: RateAlgorithm,
    /// [`RateAlgorithm::Gcra`] only: the most units admitted at once after
    /// an idle period (default: `limit`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub burst: Option<u64>,
    /// Shadow mode: counted exactly as if enforced, never refusing; each
    /// would-be refusal is reported (see [`AdmissionLayer::shadow`](crate::AdmissionLayer::shadow)).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
}

impl RateRule {
    /// A sliding-window rule.
    pub fn new(limit: impl Into<Limit>, window: Duration) -> Self {
        Self {
            limit: limit.into(),
            window,
            algorithm: RateAlgorithm::SlidingWindow,
            burst: None,
            shadow: false,
        }
    }

    /// A GCRA rule: `limit` units per `window` as a steady rate, bursts of
    /// up to `burst` units.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_tenancy::{RateAlgorithm, RateRule};
    ///
    /// let rule = RateRule::gcra(100, Duration::from_secs(60), 10);
    /// assert_eq!(rule.algorithm, RateAlgorithm::Gcra);
    /// assert_eq!(rule.burst, Some(10));
    /// ```
    pub fn gcra(limit: impl Into<Limit>, window: Duration, burst: u64) -> Self {
        Self {
            limit: limit.into(),
            window,
            algorithm: RateAlgorithm::Gcra,
            burst: Some(burst),
            shadow: false,
        }
    }

    /// The same rule in shadow mode (counted, never refusing).
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    /// The same rule counted with another algorithm.
    #[must_use]
    pub fn algorithm(mut self, algorithm: RateAlgorithm) -> Self {
        self.algorithm = algorithm;
        self
    }

    /// The same rule with a burst ([`RateAlgorithm::Gcra`] only).
    #[must_use]
    pub fn burst(mut self, burst: u64) -> Self {
        self.burst = Some(burst);
        self
    }
}

/// A calendar period, aligned to UTC: quotas reset at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Period {
    /// From hh:00:00 to the next hour.
    Hour,
    /// From 00:00:00 UTC to the next midnight.
    Day,
    /// From Monday 00:00:00 UTC to the next Monday (ISO weeks).
    Week,
    /// From the 1st 00:00:00 UTC to the 1st of the next month.
    Month,
}

impl Period {
    /// The lowercase name.
    pub fn as_str(self) -> &'static str {
        match self {
            Period::Hour => "hour",
            Period::Day => "day",
            Period::Week => "week",
            Period::Month => "month",
        }
    }
}

/// A quota: at most `limit` units per calendar `period` (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaRule {
    /// Units admitted per period.
    pub limit: Limit,
    /// The calendar period.
    pub period: Period,
    /// Shadow mode: counted exactly as if enforced, never refusing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
}

impl QuotaRule {
    /// A quota of `limit` per `period`.
    pub fn new(limit: impl Into<Limit>, period: Period) -> Self {
        Self {
            limit: limit.into(),
            period,
            shadow: false,
        }
    }

    /// The same quota in shadow mode (counted, never refusing).
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }
}

/// A concurrency limit: at most `limit` requests in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyRule {
    /// Requests in flight at once.
    pub limit: Limit,
    /// How long a slot is held at most when its holder never releases it
    /// (a crashed instance); shared stores expire leases after this. A live
    /// request or stream renews its lease every `lease_ttl / 3`, so it keeps
    /// its slot however long it lives; a dead instance's slots come back
    /// within `lease_ttl` of its last renewal.
    #[serde(
        with = "duration_serde",
        default = "ConcurrencyRule::default_lease_ttl"
    )]
    pub lease_ttl: Duration,
    /// Shadow mode: counted (the slot is taken) exactly as if enforced,
    /// never refusing.
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
}

impl ConcurrencyRule {
    /// A limit of `limit` in-flight requests with the default lease TTL (5 minutes).
    pub fn new(limit: impl Into<Limit>) -> Self {
        Self {
            limit: limit.into(),
            lease_ttl: Self::default_lease_ttl(),
            shadow: false,
        }
    }

    /// The same limit in shadow mode (counted, never refusing).
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = on;
        self
    }

    fn default_lease_ttl() -> Duration {
        Duration::from_secs(300)
    }
}

/// A plan (tier): boolean features, numeric resource limits and counter rules.
///
/// Rules are looked up by name: the layers say which rule of the tenant's plan
/// applies (for example `"api_calls_per_minute"`), the plan says how much.
///
/// ```
/// use std::time::Duration;
/// use tower_tenancy::{Limit, Period, Plan, QuotaRule, RateRule};
///
/// let free = Plan::new("free")
///     .feature("webhooks")
///     .limit("workflows", 5)
///     .rate("api_calls_per_minute", RateRule::new(60, Duration::from_secs(60)))
///     .quota("executions_per_day", QuotaRule::new(100, Period::Day))
///     .concurrency("concurrent_executions", 2);
/// assert_eq!(free.limit_of("workflows"), Some(Limit::Max(5)));
/// assert_eq!(free.limit_of("unknown"), None);
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The plan name, e.g. `free`.
    pub name: String,
    /// Features included.
    #[serde(default)]
    pub features: BTreeSet<String>,
    /// Resource limits by name, e.g. `workflows = 5`.
    #[serde(default)]
    pub limits: BTreeMap<String, Limit>,
    /// Rate limits by name.
    #[serde(default)]
    pub rates: BTreeMap<String, RateRule>,
    /// Calendar quotas by name.
    #[serde(default)]
    pub quotas: BTreeMap<String, QuotaRule>,
    /// Concurrency limits by name.
    #[serde(default)]
    pub concurrency: BTreeMap<String, ConcurrencyRule>,
    /// Every rate, quota and concurrency rule of the plan in shadow mode
    /// (usually set per tenant through [`Overrides::shadow`]).
    #[serde(default, skip_serializing_if = "is_false")]
    pub shadow: bool,
}

impl Plan {
    /// An empty plan.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            features: BTreeSet::new(),
            limits: BTreeMap::new(),
            rates: BTreeMap::new(),
            quotas: BTreeMap::new(),
            concurrency: BTreeMap::new(),
            shadow: false,
        }
    }

    /// Adds a feature.
    pub fn feature(mut self, name: impl Into<String>) -> Self {
        self.features.insert(name.into());
        self
    }

    /// Sets a resource limit.
    pub fn limit(mut self, name: impl Into<String>, limit: impl Into<Limit>) -> Self {
        self.limits.insert(name.into(), limit.into());
        self
    }

    /// Sets a rate limit.
    pub fn rate(mut self, name: impl Into<String>, rule: RateRule) -> Self {
        self.rates.insert(name.into(), rule);
        self
    }

    /// Sets a calendar quota.
    pub fn quota(mut self, name: impl Into<String>, rule: QuotaRule) -> Self {
        self.quotas.insert(name.into(), rule);
        self
    }

    /// Sets a concurrency limit.
    pub fn concurrency(mut self, name: impl Into<String>, limit: impl Into<Limit>) -> Self {
        self.concurrency
            .insert(name.into(), ConcurrencyRule::new(limit));
        self
    }

    /// Whether the plan includes `feature`.
    #[inline]
    pub fn has_feature(&self, feature: &str) -> bool {
        self.features.contains(feature)
    }

    /// The resource limit `name`, if the plan defines it.
    pub fn limit_of(&self, name: &str) -> Option<Limit> {
        self.limits.get(name).copied()
    }

    /// This plan with `overrides` applied: overridden entries replace the
    /// plan's, features can be granted (`true`) or revoked (`false`).
    pub fn merged(&self, overrides: &Overrides) -> Plan {
        let mut plan = self.clone();
        for (feature, on) in &overrides.features {
            if *on {
                plan.features.insert(feature.clone());
            } else {
                plan.features.remove(feature);
            }
        }
        plan.limits.extend(overrides.limits.clone());
        plan.rates.extend(overrides.rates.clone());
        plan.quotas.extend(overrides.quotas.clone());
        plan.concurrency.extend(overrides.concurrency.clone());
        if let Some(shadow) = overrides.shadow {
            plan.shadow = shadow;
        }
        plan
    }
}

/// Per-tenant changes to its plan: features granted or revoked, and limits or
/// rules replaced.
///
/// ```
/// use tower_tenancy::{Limit, Overrides, Plan};
///
/// let plan = Plan::new("free").limit("workflows", 5);
/// let overrides = Overrides::default().feature("beta", true).limit("workflows", Limit::Unlimited);
/// let effective = plan.merged(&overrides);
/// assert!(effective.has_feature("beta"));
/// assert_eq!(effective.limit_of("workflows"), Some(Limit::Unlimited));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Overrides {
    /// Features granted (`true`) or revoked (`false`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub features: BTreeMap<String, bool>,
    /// Resource limits replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub limits: BTreeMap<String, Limit>,
    /// Rate limits replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub rates: BTreeMap<String, RateRule>,
    /// Quotas replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub quotas: BTreeMap<String, QuotaRule>,
    /// Concurrency limits replaced.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub concurrency: BTreeMap<String, ConcurrencyRule>,
    /// Every rate, quota and concurrency rule of this tenant in shadow mode
    /// (`true`); `false` undoes a plan-wide `shadow = true` (a rule marked
    /// `shadow` itself stays in shadow mode).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shadow: Option<bool>,
    /// When these overrides end (RFC 3339, UTC): from then on the plan
    /// applies again, on the next request, without anyone acting
    /// ([`Tenant::plan`](crate::Tenant::plan) switches by itself). `None`:
    /// they never end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<UtcTime>,
}

impl Overrides {
    /// Grants (`true`) or revokes (`false`) a feature.
    pub fn feature(mut self, name: impl Into<String>, on: bool) -> Self {
        self.features.insert(name.into(), on);
        self
    }

    /// Replaces a resource limit.
    pub fn limit(mut self, name: impl Into<String>, limit: impl Into<Limit>) -> Self {
        self.limits.insert(name.into(), limit.into());
        self
    }

    /// Replaces a rate limit.
    pub fn rate(mut self, name: impl Into<String>, rule: RateRule) -> Self {
        self.rates.insert(name.into(), rule);
        self
    }

    /// Replaces a quota.
    pub fn quota(mut self, name: impl Into<String>, rule: QuotaRule) -> Self {
        self.quotas.insert(name.into(), rule);
        self
    }

    /// Replaces a concurrency limit.
    pub fn concurrency(mut self, name: impl Into<String>, limit: impl Into<Limit>) -> Self {
        self.concurrency
            .insert(name.into(), ConcurrencyRule::new(limit));
        self
    }

    /// Puts every rate, quota and concurrency rule of the tenant in shadow
    /// mode (`true`); see [`Overrides::shadow`](#structfield.shadow).
    pub fn shadow(mut self, on: bool) -> Self {
        self.shadow = Some(on);
        self
    }

    /// Ends these overrides at `until`; see [`Overrides::until`](#structfield.until).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_tenancy::{Overrides, Plan, Tenant, TenantStatus, UtcTime};
    ///
    /// let plan = Arc::new(Plan::new("free").limit("workflows", 5));
    /// let until: UtcTime = "2026-12-31T00:00:00Z".parse().unwrap();
    /// let boost = Overrides::default().limit("workflows", 50).until(until);
    /// let tenant = Tenant::with_overrides("acme".parse().unwrap(), plan, TenantStatus::Active, boost);
    /// let before = UtcTime::from_unix_ms(until.unix_ms() - 1);
    /// assert_eq!(tenant.plan_at(before).limit_of("workflows"), Some(50.into()));
    /// assert_eq!(tenant.plan_at(until).limit_of("workflows"), Some(5.into()));
    /// ```
    pub fn until(mut self, until: UtcTime) -> Self {
        self.until = Some(until);
        self
    }
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A shared plan, as held by tenants.
pub type SharedPlan = Arc<Plan>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("1d"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("0s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999d").is_err());
        assert!(parse_duration("367d").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn rule_serde() {
        let r: RateRule = serde_json::from_str(r#"{"limit":60,"window":"1m"}"#).unwrap();
        assert_eq!(r, RateRule::new(60, Duration::from_secs(60)));
        let r: RateRule =
            serde_json::from_str(r#"{"limit":"unlimited","window":30,"algorithm":"sliding_log"}"#)
                .unwrap();
        assert_eq!(r.algorithm, RateAlgorithm::SlidingLog);
        for (name, algorithm) in [
            ("sliding_window", RateAlgorithm::SlidingWindow),
            ("sliding_window_approx", RateAlgorithm::SlidingWindowApprox),
            ("gcra", RateAlgorithm::Gcra),
        ] {
            let json = format!(r#"{{"limit":5,"window":"1s","algorithm":"{name}"}}"#);
            let r: RateRule = serde_json::from_str(&json).unwrap();
            assert_eq!((r.algorithm, r.burst), (algorithm, None));
        }
        let r: RateRule =
            serde_json::from_str(r#"{"limit":5,"window":"1s","algorithm":"gcra","burst":9}"#)
                .unwrap();
        assert_eq!(r, RateRule::gcra(5, Duration::from_secs(1), 9));
        assert!(
            serde_json::from_str::<RateRule>(r#"{"limit":1,"window":"1m","burst":-1}"#).is_err()
        );
        assert!(serde_json::from_str::<RateRule>(r#"{"limit":1,"window":"1m","x":1}"#).is_err());
        let c: ConcurrencyRule = serde_json::from_str(r#"{"limit":2}"#).unwrap();
        assert_eq!(c.lease_ttl, Duration::from_secs(300));
    }
}
