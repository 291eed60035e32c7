//! [`AdmissionLayer`]: rate limits, calendar quotas, concurrency limits and
//! crate-kept gauges of the tenant's plan, all checked in one store call.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::HeaderName;
use http::{HeaderValue, Method, Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::TenancyBody;
use crate::future::MaybeReady;
use crate::layer::soft_limit::{SoftLimit, SoftLimitEvent};
use crate::plan::Plan;
use crate::reject::{is_grpc, HeaderStyle, RateLimitFields, Rejection, RejectionKind};
use crate::resolve::RequestHead;
use crate::store::{Admission, Algorithm, Check, CounterStore, Decision, Lease, StoreResult};
use crate::tenant::TenantId;
use crate::CurrentTenant;

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
pub struct Rule {
    kind: RuleKind,
    name: Arc<str>,
    skip: Option<Arc<HeadFn<bool>>>,
    cost: Option<Arc<HeadFn<u64>>>,
}

impl Rule {
    fn new(kind: RuleKind, name: &str) -> Self {
        Self {
            kind,
            name: Arc::from(name),
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
    /// `store.adjust(tenant, name, -1)`.
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

    /// The rule's check for this request, or `None` when it does not apply.
    fn check(&self, plan: &Plan, head: &RequestHead<'_>) -> Option<Check> {
        if self.skip.as_ref().is_some_and(|skip| skip(head)) {
            return None;
        }
        let (algorithm, limit) = match self.kind {
            RuleKind::Rate => plan.rates.get(&*self.name).map(|r| (r.into(), r.limit))?,
            RuleKind::Quota => plan.quotas.get(&*self.name).map(|q| (q.into(), q.limit))?,
            RuleKind::Concurrency => plan
                .concurrency
                .get(&*self.name)
                .map(|c| (c.into(), c.limit))?,
            RuleKind::Gauge => (Algorithm::Gauge, plan.limit_of(&self.name)?),
        };
        let limit = limit.max()?;
        let cost = self.cost.as_ref().map_or(1, |cost| cost(head));
        (cost > 0).then(|| Check {
            policy: self.name.clone(),
            algorithm,
            limit,
            cost,
        })
    }
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
}

/// What an admitted request carries to its response.
struct Admitted {
    lease: Option<Lease>,
    fields: Option<RateLimitFields>,
    warning: Option<HeaderValue>,
}

/// Admits requests against the counter rules of the tenant's plan: rate
/// limits, quotas, concurrency limits and gauges, **all in one store call**,
/// all or nothing. Runs after [`TenancyLayer`](crate::TenancyLayer) (it reads
/// [`CurrentTenant`]); requests without a tenant pass unmetered.
///
/// Admitted and refused responses carry the `RateLimit-Policy` / `RateLimit`
/// fields of the most restrictive rate or quota rule; refusals are 429 with
/// `Retry-After` (403 for a gauge, 503 when the store fails — wrap the store
/// in a [`ResilientStore`](crate::store::ResilientStore) to choose fail-open
/// or a local fallback instead).
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
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config<St> {
        Arc::get_mut(&mut self.config).expect("configure AdmissionLayer before cloning it")
    }

    /// Adds a rule.
    pub fn rule(mut self, rule: Rule) -> Self {
        self.config_mut().rules.push(rule);
        self
    }

    /// Soft limit: when an admitted request brings a rate limit or quota to
    /// `percent` of its limit or more, `hook` runs — once per tenant, rule
    /// and window/period on this instance (instances sharing Redis each fire
    /// once). Use it to notify the tenant before it is refused.
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
    pub fn soft_limit_header(mut self, on: bool) -> Self {
        self.config_mut()
            .soft
            .get_or_insert_with(|| SoftLimit::new(80))
            .header(on);
        self
    }

    /// Which rate-limit header fields to send (default: IETF only).
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

/// What a request asked of the store, kept to interpret the answer.
struct Asked {
    tenant: TenantId,
    checks: Vec<Check>,
    grpc: bool,
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

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let Some(tenant) = req.extensions().get::<CurrentTenant>() else {
            return AdmitFuture::inner(self.inner.call(req), None);
        };
        let head = RequestHead::of(&req);
        let plan = tenant.plan();
        let mut checks: Vec<Check> = Vec::with_capacity(self.config.rules.len());
        for check in self
            .config
            .rules
            .iter()
            .filter_map(|rule| rule.check(plan, &head))
        {
            // The same counter named twice is one check with the summed cost.
            match checks
                .iter_mut()
                .find(|c| c.policy == check.policy && c.algorithm == check.algorithm)
            {
                Some(c) => c.cost = c.cost.saturating_add(check.cost),
                None => checks.push(check),
            }
        }
        if checks.is_empty() {
            return AdmitFuture::inner(self.inner.call(req), None);
        }
        let asked = Asked {
            tenant: tenant.id().clone(),
            checks,
            grpc: is_grpc(req.headers()),
        };
        let mut answer = self.config.store.admit(&asked.tenant, &asked.checks);
        let undo = gauge_undo(&self.config, &asked);
        match answer.try_take() {
            Some(result) => match decide(&self.config, &asked, result) {
                Ok(admitted) => {
                    let mut future = AdmitFuture::inner(self.inner.call(req), Some(admitted));
                    future.undo = undo;
                    future
                }
                Err(rejection) => AdmitFuture::reject(rejection, asked.grpc),
            },
            None => {
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                AdmitFuture {
                    state: State::Waiting {
                        answer,
                        pending: Some((inner, req, asked)),
                        config: self.config.clone(),
                    },
                    undo,
                }
            }
        }
    }
}

/// The part of the configuration a pending future needs, without the store type.
trait Decide: Send + Sync {
    fn decide(&self, asked: &Asked, result: StoreResult<Admission>) -> Result<Admitted, Rejection>;
}

impl<St: Send + Sync> Decide for Config<St> {
    fn decide(&self, asked: &Asked, result: StoreResult<Admission>) -> Result<Admitted, Rejection> {
        decide(self, asked, result)
    }
}

/// For admitted gauge checks: gives the reserved units back (called when the
/// response is not a success).
fn gauge_undo<St: CounterStore>(config: &Arc<Config<St>>, asked: &Asked) -> Option<Undo> {
    let gauges: Vec<Check> = asked
        .checks
        .iter()
        .filter(|c| c.algorithm == Algorithm::Gauge)
        .cloned()
        .collect();
    if gauges.is_empty() {
        return None;
    }
    let (config, tenant) = (config.clone(), asked.tenant.clone());
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
/// fields) or a rejection.
fn decide<St>(
    config: &Config<St>,
    asked: &Asked,
    result: StoreResult<Admission>,
) -> Result<Admitted, Rejection> {
    let admission = match result {
        Ok(admission) => admission,
        Err(e) => {
            tracing::warn!(tenant.id = %asked.tenant, error = %e, "counter store failed");
            return Err(Rejection::new(RejectionKind::Unavailable)
                .tenant(asked.tenant.clone())
                .retry_after(Duration::from_secs(1)));
        }
    };
    let pairs = || asked.checks.iter().zip(&admission.decisions);
    let fields = most_restrictive(pairs(), config.style);
    // The refusal names the check that blocks longest.
    let denied = pairs()
        .filter(|(_, d)| !d.allowed)
        .max_by_key(|(_, d)| d.retry_after.unwrap_or(Duration::MAX));
    let Some((check, decision)) = denied else {
        if admission.decisions.len() != asked.checks.len() {
            return Err(Rejection::new(RejectionKind::Unavailable).tenant(asked.tenant.clone()));
        }
        crate::observe::admitted(&asked.tenant, &asked.checks);
        let warning = config
            .soft
            .as_ref()
            .and_then(|soft| soft.observe(&asked.tenant, pairs()));
        return Ok(Admitted {
            lease: admission.lease,
            fields,
            warning,
        });
    };
    let kind = match check.algorithm {
        Algorithm::SlidingWindow { .. } | Algorithm::SlidingLog { .. } => {
            RejectionKind::RateLimited
        }
        Algorithm::Calendar { .. } => RejectionKind::QuotaExceeded,
        Algorithm::Concurrency { .. } => RejectionKind::ConcurrencyLimited,
        Algorithm::Gauge => RejectionKind::ResourceLimitReached,
    };
    let mut rejection = Rejection::new(kind)
        .tenant(asked.tenant.clone())
        .policy(&*check.policy)
        .usage(decision.limit, decision.used);
    if let Some(after) = decision.retry_after {
        rejection = rejection.retry_after(after);
    }
    if let Some(fields) = fields {
        rejection = rejection.rate_limit(fields);
    }
    Err(rejection)
}

/// The header fields of the rate or quota rule with the least room left
/// (concurrency and gauges have no window and are not reported).
fn most_restrictive<'a>(
    pairs: impl Iterator<Item = (&'a Check, &'a Decision)>,
    style: HeaderStyle,
) -> Option<RateLimitFields> {
    if style == HeaderStyle::None {
        return None;
    }
    let (check, decision, window) = pairs
        .filter_map(|(c, d)| {
            let window = match c.algorithm {
                Algorithm::SlidingWindow { window } | Algorithm::SlidingLog { window } => window,
                Algorithm::Calendar { .. } => d.reset,
                Algorithm::Concurrency { .. } | Algorithm::Gauge => return None,
            };
            Some((c, d, window))
        })
        .min_by_key(|(_, d, _)| (d.allowed, d.remaining))?;
    Some(RateLimitFields {
        // Not `to_string()`: `Arc<str>` would go through `Display`.
        policy: String::from(&*check.policy),
        limit: decision.limit,
        remaining: decision.remaining,
        reset: decision.reset,
        window: matches!(
            check.algorithm,
            Algorithm::SlidingWindow { .. } | Algorithm::SlidingLog { .. }
        )
        .then_some(window),
        style,
    })
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
            answer: MaybeReady<StoreResult<Admission>>,
            pending: Option<(S, Request<B>, Asked)>,
            config: Arc<dyn Decide>,
        },
        Inner {
            #[pin]
            future: S::Future,
            // The lease is held while the inner service runs, then moved into the body.
            admitted: Option<Admitted>,
        },
        Rejected {
            response: Option<Response<Bytes>>,
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
        crate::observe::rejected(&rejection);
        Self {
            state: State::Rejected {
                response: Some(rejection.to_response(grpc)),
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

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Waiting {
                    answer,
                    pending,
                    config,
                } => {
                    let result = ready!(Pin::new(answer).poll(cx));
                    let (mut inner, req, asked) =
                        pending.take().expect("AdmitFuture polled after completion");
                    match config.decide(&asked, result) {
                        Ok(admitted) => {
                            let future = inner.call(req);
                            this.state.set(State::Inner {
                                future,
                                admitted: Some(admitted),
                            });
                        }
                        Err(rejection) => self.set(Self::reject(rejection, asked.grpc)),
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
                        if let Some(fields) = &a.fields {
                            fields.apply(response.headers_mut());
                        }
                        if let Some(warning) = a.warning {
                            response
                                .headers_mut()
                                .insert(HeaderName::from_static("x-ratelimit-warning"), warning);
                        }
                        a.lease
                    });
                    return Poll::Ready(Ok(response.map(|b| TenancyBody::with_lease(b, lease))));
                }
                StateProj::Rejected { response } => {
                    let response = response
                        .take()
                        .expect("AdmitFuture polled after completion");
                    return Poll::Ready(Ok(response.map(TenancyBody::full)));
                }
            }
        }
    }
}
