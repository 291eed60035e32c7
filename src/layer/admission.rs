//! [`AdmissionLayer`]: rate limits, calendar quotas, concurrency limits and
//! crate-kept gauges of the tenant's plan, all checked in one store call.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method, Request, Response};
use pin_project_lite::pin_project;
use smallvec::SmallVec;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::TenancyBody;
use crate::future::MaybeReady;
use crate::layer::soft_limit::{SoftLimit, SoftLimitEvent};
use crate::plan::{Period, Plan};
use crate::reject::{
    ceil_secs, is_grpc, render_policy, render_state, sf_string, state_prefix, HeaderStyle,
    PolicyItem, RateLimitHeaders, Refusal, Rejection, RejectionKind, StateItem,
};
use crate::resolve::RequestHead;
use crate::store::{Admission, Algorithm, Check, CounterStore, Decision, Lease, StoreResult};
use crate::tenant::TenantId;
use crate::CurrentTenant;

mod plan_cache;

use plan_cache::{PlanCache, Shared};

/// The checks of one request: up to four inline (no allocation).
type Checks = SmallVec<[Check; 4]>;

type HeadFn<T> = dyn Fn(&RequestHead<'_>) -> T + Send + Sync;
type Undo = Box<dyn FnOnce() + Send>;

/// Which section of the plan a [`Rule`] reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RuleKind {
    Rate,
    Quota,
    Concurrency,
    Gauge,
}

/// One counter policy of a route, named after a rule of the tenant's plan.
/// The plan says how much; the rule says which counter, which requests count
/// and what they cost.
///
/// A rule whose name the tenant's plan does not define, or defines as
/// unlimited, does not limit that tenant.
///
/// ```
/// use http::Method;
/// use tower_tenancy::layer::admission::Rule;
///
/// // Writes cost 1, reads are not counted.
/// let writes = Rule::quota("executions_per_day").skip_methods([Method::GET, Method::HEAD]);
/// // A batch endpoint costs what the client asks for (bounded).
/// let batch = Rule::rate("api_calls_per_minute").cost(|head| {
///     head.headers.get("x-batch-size")
///         .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
///         .unwrap_or(1)
///         .clamp(1, 100)
/// });
/// ```
#[derive(Clone)]
#[must_use]
pub struct Rule {
    kind: RuleKind,
    name: Arc<str>,
    /// The name as an sf-string for the header fields (`None` when it
    /// cannot be one: the rule is then left out of the fields).
    quoted: Option<Bytes>,
    /// `quoted` and `;r=`: the start of the rule's member of `RateLimit`.
    state_prefix: Option<Bytes>,
    skip: Option<Arc<HeadFn<bool>>>,
    cost: Option<Arc<HeadFn<u64>>>,
}

impl Rule {
    fn new(kind: RuleKind, name: &str) -> Self {
        let quoted = sf_string(name);
        Self {
            kind,
            name: Arc::from(name),
            state_prefix: quoted.as_deref().map(state_prefix),
            quoted,
            skip: None,
            cost: None,
        }
    }

    /// The rate limit `name` of the plan (`[plans.rates]`): sliding window
    /// counter or sliding log, as the plan says.
    pub fn rate(name: &str) -> Self {
        Self::new(RuleKind::Rate, name)
    }

    /// The calendar quota `name` of the plan (`[plans.quotas]`).
    pub fn quota(name: &str) -> Self {
        Self::new(RuleKind::Quota, name)
    }

    /// The concurrency limit `name` of the plan (`[plans.concurrency]`): the
    /// slot is held until the response body ends or is dropped.
    pub fn concurrency(name: &str) -> Self {
        Self::new(RuleKind::Concurrency, name)
    }

    /// The resource limit `name` of the plan (`[plans.limits]`) kept as a
    /// gauge in the counter store: an admitted request reserves `cost`
    /// atomically (no race between check and create); a response that is not
    /// a success (2xx; for gRPC, a trailers-only response with a non-zero
    /// `grpc-status`, which is how a unary handler's error travels) gives it
    /// back. Deleting a resource is the application's call:
    /// `store.adjust(tenant, name, -1)`. A unit reserved by a store call
    /// whose answer never came (a timeout) is kept, erring towards refusing:
    /// the Redis store's documentation (`store::redis`, "Leases") says why.
    pub fn gauge(name: &str) -> Self {
        Self::new(RuleKind::Gauge, name)
    }

    /// Does not count requests for which `skip(head)` is true.
    pub fn skip_if(
        mut self,
        skip: impl Fn(&RequestHead<'_>) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.skip = Some(Arc::new(skip));
        self
    }

    /// Does not count requests with these methods (e.g. reads).
    pub fn skip_methods(self, methods: impl IntoIterator<Item = Method>) -> Self {
        let methods: Vec<Method> = methods.into_iter().collect();
        self.skip_if(move |head| methods.contains(head.method))
    }

    /// The units a request costs (default 1). A cost of 0 skips the rule.
    pub fn cost(mut self, cost: impl Fn(&RequestHead<'_>) -> u64 + Send + Sync + 'static) -> Self {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// The plan's limit for this rule: its algorithm, limit and whether the
    /// plan puts it in shadow mode, or `None` when the plan does not define
    /// it or leaves it unlimited. Gauges are never shadowed.
    fn limit_in(&self, plan: &Plan) -> Option<(Algorithm, u64, bool)> {
        let (algorithm, limit, shadow) = match self.kind {
            RuleKind::Rate => plan
                .rates
                .get(&*self.name)
                .map(|r| (r.into(), r.limit, r.shadow || plan.shadow))?,
            RuleKind::Quota => plan
                .quotas
                .get(&*self.name)
                .map(|q| (q.into(), q.limit, q.shadow || plan.shadow))?,
            RuleKind::Concurrency => plan
                .concurrency
                .get(&*self.name)
                .map(|c| (c.into(), c.limit, c.shadow || plan.shadow))?,
            RuleKind::Gauge => (Algorithm::Gauge, plan.limit_of(&self.name)?, false),
        };
        Some((algorithm, limit.max()?, shadow))
    }

    /// The units this request costs under this rule (0: it does not count).
    #[inline]
    fn cost_of(&self, head: &RequestHead<'_>) -> u64 {
        if self.skip.as_ref().is_some_and(|skip| skip(head)) {
            return 0;
        }
        self.cost.as_ref().map_or(1, |cost| cost(head))
    }
}

/// A rule as a given plan sets it.
#[derive(Debug, Clone, Copy)]
struct Limited {
    algorithm: Algorithm,
    limit: u64,
    /// Shadow mode (the layer's, the plan's or the rule's): counted, never
    /// refusing, left out of the header fields.
    shadow: bool,
    /// The first rule of the layer naming the same counter (itself when
    /// none before): requests count once per counter, with the summed cost.
    first: u32,
}

/// How a rule appears in `RateLimit-Policy` (draft-11).
#[derive(Debug, Clone, Copy)]
struct Reported {
    /// `q`.
    quota: u64,
    /// `qu`, when not the default (requests).
    unit: Option<&'static str>,
    /// `w` in seconds, when the policy has a fixed window.
    window: Option<u64>,
}

impl Reported {
    /// The policy item of a rule counted with `algorithm` against `limit`:
    /// rate limits with their window; calendar quotas with the period where
    /// it is a fixed number of seconds (hour, day, week; not month);
    /// concurrency limits in `concurrent-requests`, without a window.
    /// Gauges (resource counts) and algorithms without a mapping are not
    /// reported.
    fn of(algorithm: Algorithm, limit: u64) -> Option<Self> {
        let (unit, window) = match algorithm {
            Algorithm::SlidingWindow { window }
            | Algorithm::SlidingWindowApprox { window }
            | Algorithm::SlidingLog { window }
            | Algorithm::Gcra { window, .. } => {
                // Whole seconds only (the field has no sub-second form);
                // rounding the window up advertises fewer units per time.
                (None, Some(ceil_secs(window).max(1)))
            }
            Algorithm::Calendar { period } => (
                None,
                match period {
                    Period::Hour => Some(3_600),
                    Period::Day => Some(86_400),
                    Period::Week => Some(604_800),
                    Period::Month => None,
                },
            ),
            Algorithm::Concurrency { .. } => (Some("concurrent-requests"), None),
            _ => return None,
        };
        Some(Self {
            quota: limit,
            unit,
            window,
        })
    }
}

/// Rules whose set of reported policies is cached per plan (bit `i` of the
/// set: rule `i`); a request counting against a rule beyond these renders
/// its `RateLimit-Policy` value itself.
const CACHED_SET_RULES: usize = 6;

/// What the layer computes once per plan.
struct PlanRules {
    /// Per rule of the layer, in order.
    rules: SmallVec<[Option<Limited>; 4]>,
    /// Per rule: how it is reported in the fields (draft-11).
    reported: SmallVec<[Option<Reported>; 4]>,
    /// Per rule: its `RateLimit-Policy` value when it is reported alone, in
    /// the 0.1 shape ([`HeaderStyle::MostRestrictive`]).
    policy_one: SmallVec<[Option<HeaderValue>; 4]>,
    /// The `RateLimit-Policy` value of each set of reported rules a request
    /// counts against, rendered on first use.
    policy_sets: Box<[OnceLock<Option<HeaderValue>>]>,
    /// The checks of every request under this plan when no rule of the
    /// layer has a cost function or a skip rule (`None` otherwise): the
    /// store is handed these, borrowed — no check built, no policy name's
    /// reference count touched per request.
    fixed: Option<(Checks, SmallVec<[u32; 4]>)>,
    /// Whether a rule of the layer is a gauge under this plan (only then
    /// can a request hold units to give back).
    gauges: bool,
}

impl PlanRules {
    fn new(rules: &[Rule], plan: &Plan, shadow: bool, soft: Option<&SoftLimit>) -> Self {
        let mut limited: SmallVec<[Option<Limited>; 4]> = SmallVec::new();
        for (index, rule) in rules.iter().enumerate() {
            let entry = rule.limit_in(plan).map(|(algorithm, limit, shadowed)| {
                let first = rules[..index]
                    .iter()
                    .zip(&limited)
                    .position(|(r, l): (&Rule, &Option<Limited>)| {
                        r.name == rule.name && l.is_some_and(|l| l.algorithm == algorithm)
                    })
                    .map_or(index, |i| limited[i].map_or(i, |l| l.first as usize));
                Limited {
                    algorithm,
                    limit,
                    shadow: (shadow && rule.kind != RuleKind::Gauge) || shadowed,
                    first: first as u32,
                }
            });
            limited.push(entry);
        }
        let policy_one = rules
            .iter()
            .zip(&limited)
            .map(|(rule, limited)| {
                let limited = limited.as_ref().filter(|l| !l.shadow)?;
                let window = limited.algorithm.rate_window().map(ceil_secs);
                render_policy(&[PolicyItem {
                    name: rule.quoted.as_ref()?,
                    quota: limited.limit,
                    unit: None,
                    window,
                }])
            })
            .collect();
        let reported = limited
            .iter()
            .map(|l| {
                l.filter(|l| !l.shadow)
                    .and_then(|l| Reported::of(l.algorithm, l.limit))
            })
            .collect();
        let sets = 1usize << rules.len().min(CACHED_SET_RULES);
        let fixed = rules
            .iter()
            .all(|rule| rule.skip.is_none() && rule.cost.is_none())
            .then(|| collect_checks(rules, &limited, soft, |_| 1));
        let gauges = limited
            .iter()
            .any(|l| l.is_some_and(|l| l.algorithm == Algorithm::Gauge));
        Self {
            gauges,
            rules: limited,
            reported,
            policy_one,
            policy_sets: (0..sets).map(|_| OnceLock::new()).collect(),
            fixed,
        }
    }

    /// The `RateLimit-Policy` value listing `rules` (indices, in order).
    fn render_policy(
        &self,
        layer: &[Rule],
        rules: impl Iterator<Item = usize>,
    ) -> Option<HeaderValue> {
        let items: SmallVec<[PolicyItem<'_>; 4]> = rules
            .filter_map(|r| {
                let reported = self.reported[r]?;
                Some(PolicyItem {
                    name: layer[r].quoted.as_ref()?,
                    quota: reported.quota,
                    unit: reported.unit,
                    window: reported.window,
                })
            })
            .collect();
        render_policy(&items)
    }
}
/// The checks of a request: one per counter its rules name (the same
/// counter named twice is one check with the summed cost), a rule costing
/// `cost(index)` units (0: not counted); and for each check the index of its
/// (first) rule.
fn collect_checks(
    rules: &[Rule],
    all: &[Option<Limited>],
    soft: Option<&SoftLimit>,
    mut cost: impl FnMut(usize) -> u64,
) -> (Checks, SmallVec<[u32; 4]>) {
    let mut checks = Checks::new();
    let mut indices: SmallVec<[u32; 4]> = SmallVec::new();
    for (index, (rule, limited)) in rules.iter().zip(all).enumerate() {
        let Some(limited) = limited else { continue };
        let cost = cost(index);
        if cost == 0 {
            continue;
        }
        let first = limited.first;
        let counted = indices
            .iter()
            .position(|&r| all[r as usize].is_some_and(|l| l.first == first));
        match counted {
            Some(i) => checks[i].cost = checks[i].cost.saturating_add(cost),
            None => {
                checks.push(Check {
                    policy: rule.name.clone(),
                    algorithm: limited.algorithm,
                    limit: limited.limit,
                    cost,
                    shadow: limited.shadow,
                    soft_percent: soft
                        .and_then(|soft| soft.percent_for(&limited.algorithm, limited.shadow)),
                });
                indices.push(index as u32);
            }
        }
    }
    (checks, indices)
}

impl std::fmt::Debug for Rule {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rule")
            .field("kind", &self.kind)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

struct Config<St> {
    store: St,
    rules: Vec<Rule>,
    style: HeaderStyle,
    soft: Option<SoftLimit>,
    /// Every rule in shadow mode.
    shadow: bool,
    /// Whether admitted responses name the shadowed policies that would
    /// have refused them.
    shadow_header: bool,
    /// Per-plan limits and `RateLimit-Policy` values.
    plans: PlanCache<PlanRules>,
}

/// What an admitted request carries to its response.
struct Admitted {
    lease: Option<Lease>,
    fields: Option<RateLimitHeaders>,
    /// Rare (opt-in) fields, boxed to keep the response future small.
    extra: Option<Box<Extra>>,
}

/// The fields of an admitted response that only some layers send.
struct Extra {
    /// `x-ratelimit-warning`.
    warning: Option<HeaderValue>,
    /// `x-tenancy-shadow-rejected`.
    shadow_rejected: Option<HeaderValue>,
}

/// The header naming the shadowed policies that would have refused a
/// request ([`AdmissionLayer::shadow_header`]).
pub const SHADOW_REJECTED: HeaderName = HeaderName::from_static("x-tenancy-shadow-rejected");

/// Admits requests against the counter rules of the tenant's plan: rate
/// limits, quotas, concurrency limits and gauges, **all in one store call**,
/// all or nothing. Runs after [`TenancyLayer`](crate::TenancyLayer) (it reads
/// [`CurrentTenant`]); requests without a tenant pass unmetered.
///
/// Admitted and refused responses carry the `RateLimit-Policy` / `RateLimit`
/// fields of every rate limit, quota and concurrency limit the request
/// counts against (draft-ietf-httpapi-ratelimit-headers-11; see
/// [`HeaderStyle`] for the shapes and the 0.1 output). Refusals are 429 with
/// `Retry-After` (the longest wait of the violated policies) and a problem
/// body of type `https://iana.org/assignments/http-problem-types#quota-exceeded`
/// naming every violated policy in `violated-policies`; 403 for a gauge, 503
/// when the store fails — wrap the store in a
/// [`ResilientStore`](crate::store::ResilientStore) to choose fail-open or
/// a local fallback instead.
///
/// Put every counter rule of a route into one `AdmissionLayer`: two layers
/// mean two store calls.
///
/// ```
/// use std::sync::Arc;
/// use axum::{routing::{get, post}, Router};
/// use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
/// use tower_tenancy::store::MemoryStore;
///
/// let store = Arc::new(MemoryStore::new()); // shared by both layers
/// let api = AdmissionLayer::new(store.clone()).rule(Rule::rate("api_calls_per_minute"));
/// let run = AdmissionLayer::new(store)
///     .rule(Rule::rate("api_calls_per_minute"))
///     .rule(Rule::quota("executions_per_day"))
///     .rule(Rule::concurrency("concurrent_executions"));
///
/// let app: Router = Router::new()
///     .route("/workflows", get(|| async { "[]" }).route_layer(api))
///     .route("/executions", post(|| async { "started" }).route_layer(run));
/// // .layer(TenancyLayer::new(..)) around it resolves the tenant.
/// ```
pub struct AdmissionLayer<St> {
    config: Arc<Config<St>>,
}

impl<St> Clone for AdmissionLayer<St> {
    fn clone(&self) -> Self {
        Self {
            config: self.config.clone(),
        }
    }
}

impl<St: CounterStore> AdmissionLayer<St> {
    /// Admission against `store`, with no rules yet.
    pub fn new(store: St) -> Self {
        Self {
            config: Arc::new(Config {
                store,
                rules: Vec::new(),
                style: HeaderStyle::default(),
                soft: None,
                shadow: false,
                shadow_header: false,
                plans: PlanCache::new(),
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config<St> {
        Arc::get_mut(&mut self.config).expect("configure AdmissionLayer before cloning it")
    }

    /// Adds a rule.
    #[must_use]
    pub fn rule(mut self, rule: Rule) -> Self {
        self.config_mut().rules.push(rule);
        self
    }

    /// Soft limit: when an admitted request brings a rate limit or quota to
    /// `percent` of its limit or more, `hook` runs — once per tenant, rule
    /// and window (rate limits: at most once per window length) or period
    /// (quotas) across every instance sharing the store: the store records
    /// the crossing in the same call as the admission (see
    /// [`soft_limit`](crate::layer::soft_limit)). Use it to notify the
    /// tenant before it is refused.
    ///
    /// ```
    /// use tower_tenancy::{AdmissionLayer, Rule};
    /// use tower_tenancy::store::MemoryStore;
    ///
    /// let layer = AdmissionLayer::new(MemoryStore::new())
    ///     .rule(Rule::quota("executions_per_day"))
    ///     .soft_limit(80, |event| {
    ///         println!("{} used {}/{} of {}", event.tenant, event.used, event.limit, event.policy);
    ///     })
    ///     .soft_limit_header(true);
    /// ```
    #[must_use]
    pub fn soft_limit(
        mut self,
        percent: u8,
        hook: impl Fn(&SoftLimitEvent) + Send + Sync + 'static,
    ) -> Self {
        let config = self.config_mut();
        let soft = config.soft.get_or_insert_with(|| SoftLimit::new(percent));
        soft.threshold(percent);
        soft.hook(hook);
        self
    }

    /// Adds `x-ratelimit-warning: "policy";u=85;q=100` to admitted responses
    /// at or above the soft-limit threshold (80 % unless
    /// [`soft_limit`](Self::soft_limit) set another).
    #[must_use]
    pub fn soft_limit_header(mut self, on: bool) -> Self {
        self.config_mut()
            .soft
            .get_or_insert_with(|| SoftLimit::new(80))
            .header(on);
        self
    }

    /// Shadow mode for every rate, quota and concurrency rule of this layer
    /// (gauges stay enforced): requests are counted exactly as if the rules
    /// were enforced, and never refused by them. Each would-be refusal is a
    /// `tracing` event (`info`, target `tower_tenancy::observe`, message
    /// `shadow rejection`) and, with the `metrics` feature, an increment of
    /// `tenancy_shadow_rejected_total{code,policy}` — on requests that are
    /// admitted (a request an enforced rule refuses anyway is reported as
    /// that refusal only), so the figures count exactly the requests that
    /// enforcing the shadowed rules would turn away in addition. Shadowed
    /// rules are left out of the `RateLimit` fields.
    ///
    /// A single rule is shadowed in the catalog (`shadow = true` on a rate,
    /// quota or concurrency rule), a tenant by an override
    /// (`overrides = { shadow = true }`).
    ///
    /// Counting: the shadowed checks consume only when every check of the
    /// request allows — as they would when enforced, so that turning shadow
    /// mode off continues from the same counts; the enforced checks of the
    /// same request consume whenever they all allow (see
    /// [`Check::shadow`](crate::store::Check::shadow)).
    ///
    /// ```
    /// use tower_tenancy::{AdmissionLayer, Rule};
    /// use tower_tenancy::store::MemoryStore;
    ///
    /// let watch_only = AdmissionLayer::new(MemoryStore::new())
    ///     .rule(Rule::rate("api_calls_per_minute"))
    ///     .shadow(true)
    ///     .shadow_header(true); // x-tenancy-shadow-rejected: api_calls_per_minute
    /// ```
    #[must_use]
    pub fn shadow(mut self, on: bool) -> Self {
        self.config_mut().shadow = on;
        self
    }

    /// Adds `x-tenancy-shadow-rejected: <policy>[, <policy>…]` to responses
    /// that a shadowed rule would have refused (default: off).
    #[must_use]
    pub fn shadow_header(mut self, on: bool) -> Self {
        self.config_mut().shadow_header = on;
        self
    }

    /// Which rate-limit header fields to send (default: the draft-11 IETF
    /// fields, every policy); [`HeaderStyle::MostRestrictive`] keeps the 0.1
    /// output.
    #[must_use]
    pub fn header_style(mut self, style: HeaderStyle) -> Self {
        self.config_mut().style = style;
        self
    }
}

impl<S, St> Layer<S> for AdmissionLayer<St> {
    type Service = Admit<S, St>;
    fn layer(&self, inner: S) -> Self::Service {
        Admit {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`AdmissionLayer`].
pub struct Admit<S, St> {
    inner: S,
    config: Arc<Config<St>>,
}

impl<S: Clone, St> Clone for Admit<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            config: self.config.clone(),
        }
    }
}

/// What a request asked of the store, kept to interpret the answer: the
/// tenant, the checks and, for each check, the index of its (first) rule.
/// Borrowed (from the request, the plan's checks or the stack), so that it
/// costs no copy to build.
#[derive(Clone, Copy)]
struct Asked<'p> {
    tenant: &'p TenantId,
    checks: &'p [Check],
    rules: &'p [u32],
}

impl Asked<'_> {
    fn tenant(&self) -> &TenantId {
        self.tenant
    }

    fn checks(&self) -> &[Check] {
        self.checks
    }

    fn rules(&self) -> &[u32] {
        self.rules
    }
}

/// [`Asked`], owned by a request that waits on an asynchronous store.
struct AskedOwned {
    tenant: TenantId,
    checks: Checks,
    rules: SmallVec<[u32; 4]>,
}

impl AskedOwned {
    fn borrow(&self) -> Asked<'_> {
        Asked {
            tenant: &self.tenant,
            checks: &self.checks,
            rules: &self.rules,
        }
    }
}

impl<S, St, ReqBody, ResBody> Service<Request<ReqBody>> for Admit<S, St>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
    St: CounterStore,
{
    type Response = Response<TenancyBody<ResBody>>;
    type Error = S::Error;
    type Future = AdmitFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(tenant) = req.extensions().get::<CurrentTenant>() else {
            return AdmitFuture::inner(self.inner.call(req), None);
        };
        let head = RequestHead::of(&req);
        let config = &*self.config;
        let prepared = config.plans.get(tenant.plan(), |plan| {
            PlanRules::new(&config.rules, plan, config.shadow, config.soft.as_ref())
        });
        // The plan's checks, borrowed, or (with cost functions or skip
        // rules) this request's, built on the stack.
        let own;
        let (checks, rules): (&[Check], &[u32]) = match &prepared.fixed {
            Some((checks, rules)) => (checks, rules),
            None => {
                own = collect_checks(&config.rules, &prepared.rules, config.soft.as_ref(), |i| {
                    config.rules[i].cost_of(&head)
                });
                (&own.0, &own.1)
            }
        };
        if checks.is_empty() {
            return AdmitFuture::inner(self.inner.call(req), None);
        }
        let asked = Asked {
            tenant: tenant.id(),
            checks,
            rules,
        };
        let mut answer = config.store.admit(asked.tenant(), asked.checks());
        let undo = if prepared.gauges {
            gauge_undo(&self.config, &asked)
        } else {
            None
        };
        // The store's answer is read in place (it is large), and the future
        // is built where it is returned (it is large too).
        if let Some(result) = answer.ready_mut() {
            let decided = decide(config, &prepared, &asked, result);
            return match decided {
                Ok(admitted) => AdmitFuture {
                    state: State::Inner {
                        future: self.inner.call(req),
                        admitted: Some(admitted),
                    },
                    undo,
                },
                Err(rejection) => AdmitFuture::reject(rejection, is_grpc(req.headers())),
            };
        }
        // An asynchronous store: the request waits, owning what it asked.
        let asked = AskedOwned {
            tenant: asked.tenant.clone(),
            checks: asked.checks.into(),
            rules: asked.rules.into(),
        };
        let prepared = prepared.shared();
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        AdmitFuture {
            state: State::Waiting {
                waiting: Box::new(Waiting {
                    answer,
                    pending: Some((inner, req, asked, prepared)),
                    config: self.config.clone(),
                }),
            },
            undo,
        }
    }
}

/// The part of the configuration a pending future needs, without the store type.
trait Decide: Send + Sync {
    fn decide(
        &self,
        prepared: &PlanRules,
        asked: &Asked<'_>,
        result: &mut StoreResult<Admission>,
    ) -> Result<Admitted, Rejection>;
}

impl<St: Send + Sync> Decide for Config<St> {
    fn decide(
        &self,
        prepared: &PlanRules,
        asked: &Asked<'_>,
        result: &mut StoreResult<Admission>,
    ) -> Result<Admitted, Rejection> {
        decide(self, prepared, asked, result)
    }
}

/// For admitted gauge checks: gives the reserved units back (called when the
/// response is not a success).
fn gauge_undo<St: CounterStore>(config: &Arc<Config<St>>, asked: &Asked<'_>) -> Option<Undo> {
    if !asked
        .checks()
        .iter()
        .any(|c| c.algorithm == Algorithm::Gauge)
    {
        return None;
    }
    let gauges: Vec<Check> = asked
        .checks()
        .iter()
        .filter(|c| c.algorithm == Algorithm::Gauge)
        .cloned()
        .collect();
    if gauges.is_empty() {
        return None;
    }
    let (config, tenant) = (config.clone(), asked.tenant().clone());
    Some(Box::new(move || {
        for check in gauges {
            let delta = i64::try_from(check.cost).unwrap_or(i64::MAX);
            let mut adjusted = config.store.adjust(&tenant, &check.policy, -delta);
            if adjusted.try_take().is_none() {
                if let Ok(handle) = tokio::runtime::Handle::try_current() {
                    handle.spawn(adjusted);
                }
            }
        }
    }))
}

/// A gRPC error sent as a trailers-only response: HTTP 200, but a non-zero
/// `grpc-status` in the headers.
fn grpc_error(headers: &http::HeaderMap) -> bool {
    headers
        .get("grpc-status")
        .is_some_and(|status| status.as_bytes() != b"0")
}

/// Decides from the store's answer: admitted (with the lease and the header
/// fields) or a rejection. Inlined into the layer's `call`, so that the
/// (large) answer is written where the future is built, not returned and
/// moved.
#[inline]
fn decide<St>(
    config: &Config<St>,
    prepared: &PlanRules,
    asked: &Asked<'_>,
    result: &mut StoreResult<Admission>,
) -> Result<Admitted, Rejection> {
    let admission = match result {
        Ok(admission) => admission,
        Err(e) => {
            tracing::warn!(tenant.id = %asked.tenant(), error = %e, "counter store failed");
            return Err(Rejection::new(RejectionKind::Unavailable)
                .tenant(asked.tenant().clone())
                .retry_after(Duration::from_secs(1)));
        }
    };
    let pairs = || asked.checks().iter().zip(&admission.decisions);
    let enforced = || pairs().filter(|(c, _)| !c.shadow);
    let fields = if config.style == HeaderStyle::None {
        None
    } else if config.style.most_restrictive() {
        most_restrictive(config, prepared, asked, &admission.decisions)
    } else {
        every_policy(config, prepared, asked, &admission.decisions)
    };
    // The usual answer: every check allows and no soft limit is watched —
    // no refusal to pick, no shadow refusal to report, no warning.
    if config.soft.is_none()
        && admission.decisions.len() == asked.checks().len()
        && admission.decisions.iter().all(|d| d.allowed)
    {
        crate::observe::admitted(asked.tenant(), asked.checks());
        return Ok(Admitted {
            lease: admission.lease.take(),
            fields,
            extra: None,
        });
    }
    // The refusal names the check that blocks longest.
    let denied = enforced()
        .filter(|(_, d)| !d.allowed)
        .max_by_key(|(_, d)| d.retry_after.unwrap_or(Duration::MAX));
    let Some((check, decision)) = denied else {
        if admission.decisions.len() != asked.checks().len() {
            return Err(Rejection::new(RejectionKind::Unavailable).tenant(asked.tenant().clone()));
        }
        crate::observe::admitted(asked.tenant(), asked.checks());
        let mut shadow_rejected = SmallVec::<[&str; 4]>::new();
        for (check, decision) in pairs().filter(|(c, d)| c.shadow && !d.allowed) {
            crate::observe::shadow_rejected(
                asked.tenant(),
                refusal_kind(check.algorithm),
                &check.policy,
                decision,
            );
            shadow_rejected.push(&check.policy);
        }
        let shadow_rejected = (config.shadow_header && !shadow_rejected.is_empty())
            .then(|| HeaderValue::from_str(&shadow_rejected.join(", ")).ok())
            .flatten();
        let warning = config
            .soft
            .as_ref()
            .and_then(|soft| soft.observe(asked.tenant(), asked.checks(), admission));
        let extra = (warning.is_some() || shadow_rejected.is_some()).then(|| {
            Box::new(Extra {
                warning,
                shadow_rejected,
            })
        });
        return Ok(Admitted {
            lease: admission.lease.take(),
            fields,
            extra,
        });
    };
    let mut rejection = Rejection::new(refusal_kind(check.algorithm))
        .tenant(asked.tenant().clone())
        .policy(&*check.policy)
        .usage(decision.limit, decision.used)
        .violated_policies(
            enforced()
                .filter(|(_, d)| !d.allowed)
                .map(|(c, _)| String::from(&*c.policy)),
        );
    // The longest wait of the violated policies: never earlier than the
    // end of any violated policy's window as `RateLimit` reports it.
    if let Some(after) = decision.retry_after {
        rejection = rejection.retry_after(after);
    }
    if config.style.most_restrictive() {
        rejection = rejection.with_previous_problem_type();
    }
    if let Some(fields) = fields {
        rejection = rejection.rate_limit(fields);
    }
    Err(rejection)
}

/// The rejection a refusal by a check of `algorithm` is.
fn refusal_kind(algorithm: Algorithm) -> RejectionKind {
    match algorithm {
        Algorithm::Calendar { .. } => RejectionKind::QuotaExceeded,
        Algorithm::Concurrency { .. } => RejectionKind::ConcurrencyLimited,
        Algorithm::Gauge => RejectionKind::ResourceLimitReached,
        // Sliding window, sliding log and any later rate algorithm.
        _ => RejectionKind::RateLimited,
    }
}

/// `t` of a policy in `RateLimit` (draft-11 §4.1.2): the seconds until the
/// policy gives quota back. Admitted: the end of the calendar period or of
/// the current window (0 for a concurrency limit, which has no window: a
/// slot comes back when a request ends). Refused: the wait until this
/// request could pass (`retry_after`), the same figure `Retry-After` takes
/// its maximum over, so `Retry-After` is never earlier (§6).
fn reset_of(check: &Check, decision: &Decision) -> u64 {
    match (decision.allowed, decision.retry_after) {
        (false, Some(after)) => ceil_secs(after),
        _ if matches!(check.algorithm, Algorithm::Concurrency { .. }) => 0,
        _ => ceil_secs(decision.reset),
    }
}

/// The draft-11 fields: every reported policy the request counts against,
/// in rule order. The `RateLimit-Policy` value is rendered once per plan
/// and set of policies; `RateLimit` once per response.
#[inline(always)]
fn every_policy<St>(
    config: &Config<St>,
    prepared: &PlanRules,
    asked: &Asked<'_>,
    decisions: &[Decision],
) -> Option<RateLimitHeaders> {
    // One reported check (the usual route): the same fields, without a
    // list of members to build.
    if let ([check], [decision], [rule]) = (asked.checks(), decisions, asked.rules()) {
        let rule = *rule as usize;
        if let (false, true, Some(_), Some(prefix)) = (
            config.style.legacy(),
            rule < CACHED_SET_RULES,
            prepared.reported[rule],
            config.rules[rule].state_prefix.as_ref(),
        ) {
            let policy = prepared.policy_sets[1 << rule]
                .get_or_init(|| prepared.render_policy(&config.rules, std::iter::once(rule)))
                .clone();
            let state = render_state(&[StateItem {
                prefix,
                remaining: decision.remaining,
                reset: Some(reset_of(check, decision)),
            }]);
            return Some(RateLimitHeaders::new(policy, state, None));
        }
    }
    let mut state: SmallVec<[StateItem<'_>; 4]> = SmallVec::new();
    let mut set = 0usize;
    let mut cached = true;
    for ((check, decision), &rule) in asked.checks().iter().zip(decisions).zip(asked.rules()) {
        let rule = rule as usize;
        let (Some(_), Some(prefix)) = (
            prepared.reported[rule],
            config.rules[rule].state_prefix.as_ref(),
        ) else {
            continue;
        };
        state.push(StateItem {
            prefix,
            remaining: decision.remaining,
            reset: Some(reset_of(check, decision)),
        });
        if rule < CACHED_SET_RULES {
            set |= 1 << rule;
        } else {
            cached = false;
        }
    }
    let legacy = config
        .style
        .legacy()
        .then(|| legacy_fields(asked, decisions))
        .flatten();
    if state.is_empty() {
        return legacy.map(|l| RateLimitHeaders::new(None, None, Some(l)));
    }
    let counted = || asked.rules().iter().map(|&r| r as usize);
    let policy = if cached {
        prepared.policy_sets[set]
            .get_or_init(|| prepared.render_policy(&config.rules, counted()))
            .clone()
    } else {
        prepared.render_policy(&config.rules, counted())
    };
    Some(RateLimitHeaders::new(policy, render_state(&state), legacy))
}

/// `X-RateLimit-Limit/Remaining/Reset` of the rate or quota rule with the
/// least room left.
fn legacy_fields(asked: &Asked<'_>, decisions: &[Decision]) -> Option<[u64; 3]> {
    let (_, decision) = asked
        .checks()
        .iter()
        .zip(decisions)
        .filter(|(c, _)| {
            !c.shadow
                && (c.algorithm.rate_window().is_some()
                    || matches!(c.algorithm, Algorithm::Calendar { .. }))
        })
        .min_by_key(|(_, d)| (d.allowed, d.remaining))?;
    Some([
        decision.limit,
        decision.remaining,
        ceil_secs(decision.reset),
    ])
}

/// The 0.1 fields ([`HeaderStyle::MostRestrictive`]): those of the rate or
/// quota rule with the least room left (concurrency and gauges are not
/// reported). The `RateLimit-Policy` value was rendered once for the plan.
fn most_restrictive<St>(
    config: &Config<St>,
    prepared: &PlanRules,
    asked: &Asked<'_>,
    decisions: &[Decision],
) -> Option<RateLimitHeaders> {
    let windowed = |c: &Check| {
        !c.shadow
            && (c.algorithm.rate_window().is_some()
                || matches!(c.algorithm, Algorithm::Calendar { .. }))
    };
    let (i, decision) = asked
        .checks()
        .iter()
        .zip(decisions)
        .enumerate()
        .filter(|(_, (c, _))| windowed(c))
        .min_by_key(|(_, (_, d))| (d.allowed, d.remaining))
        .map(|(i, (_, d))| (i, d))?;
    let reset = ceil_secs(decision.reset);
    let legacy = config
        .style
        .legacy()
        .then_some([decision.limit, decision.remaining, reset]);
    let rule = asked.rules()[i] as usize;
    let (Some(prefix), Some(policy)) = (
        config.rules[rule].state_prefix.as_ref(),
        prepared.policy_one[rule].clone(),
    ) else {
        return Some(RateLimitHeaders::new(None, None, legacy));
    };
    let state = render_state(&[StateItem {
        prefix,
        remaining: decision.remaining,
        reset: Some(reset),
    }]);
    Some(RateLimitHeaders::new(Some(policy), state, legacy))
}

/// What a request waiting on an asynchronous store needs once answered.
type Pending<S, B> = (S, Request<B>, AskedOwned, Shared<PlanRules>);

/// A request waiting on an asynchronous store.
struct Waiting<S, B> {
    answer: MaybeReady<StoreResult<Admission>>,
    pending: Option<Pending<S, B>>,
    config: Arc<dyn Decide>,
}

pin_project! {
    /// Response future of [`Admit`].
    pub struct AdmitFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: State<S, B>,
        undo: Option<Undo>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<B>>, B> {
        Waiting {
            // Boxed (the answer is large; this path allocates anyway).
            waiting: Box<Waiting<S, B>>,
        },
        Inner {
            #[pin]
            future: S::Future,
            // The lease is held while the inner service runs, then moved into the body.
            admitted: Option<Admitted>,
        },
        Rejected {
            refusal: Option<Refusal>,
        },
    }
}

impl<S: Service<Request<B>>, B> AdmitFuture<S, B> {
    fn inner(future: S::Future, admitted: Option<Admitted>) -> Self {
        Self {
            state: State::Inner { future, admitted },
            undo: None,
        }
    }

    fn reject(rejection: Rejection, grpc: bool) -> Self {
        Self {
            state: State::Rejected {
                refusal: Some(Refusal::new(rejection, grpc)),
            },
            undo: None,
        }
    }
}

impl<S, B, ResBody> Future for AdmitFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<TenancyBody<ResBody>>, S::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Waiting { waiting } => {
                    let mut result = ready!(Pin::new(&mut waiting.answer).poll(cx));
                    let (mut inner, req, asked, prepared) = waiting
                        .pending
                        .take()
                        .expect("AdmitFuture polled after completion");
                    match waiting
                        .config
                        .decide(&prepared, &asked.borrow(), &mut result)
                    {
                        Ok(admitted) => {
                            let future = inner.call(req);
                            this.state.set(State::Inner {
                                future,
                                admitted: Some(admitted),
                            });
                        }
                        Err(rejection) => {
                            let grpc = is_grpc(req.headers());
                            self.set(Self::reject(rejection, grpc))
                        }
                    }
                }
                StateProj::Inner { future, admitted } => {
                    let mut response = ready!(future.poll(cx))?;
                    if let Some(undo) = this.undo.take() {
                        if !response.status().is_success() || grpc_error(response.headers()) {
                            undo();
                        }
                    }
                    let lease = admitted.take().and_then(|a| {
                        if let Some(fields) = a.fields {
                            fields.write(response.headers_mut());
                        }
                        if let Some(extra) = a.extra {
                            if let Some(warning) = extra.warning {
                                response.headers_mut().insert(
                                    HeaderName::from_static("x-ratelimit-warning"),
                                    warning,
                                );
                            }
                            if let Some(policies) = extra.shadow_rejected {
                                response.headers_mut().insert(SHADOW_REJECTED, policies);
                            }
                        }
                        a.lease
                    });
                    return Poll::Ready(Ok(response.map(|b| TenancyBody::with_lease(b, lease))));
                }
                StateProj::Rejected { refusal } => {
                    let refusal = refusal.take().expect("AdmitFuture polled after completion");
                    return Poll::Ready(Ok(refusal.into_response().map(TenancyBody::full)));
                }
            }
        }
    }
}
