//! [`TenancyLayer`]: resolve → validate → attach the tenant.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response, StatusCode};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::TenancyBody;
use crate::directory::{LookupResult, TenantDirectory};
use crate::future::MaybeReady;
use crate::reject::{is_grpc, Refusal, Rejection, RejectionKind};
use crate::resolve::{AllowedTenants, RequestHead, Resolver};
use crate::tenant::{Tenant, TenantId, TenantIdRef};
use crate::CurrentTenant;

type BindFn = dyn Fn(&RequestHead<'_>, &TenantId) -> bool + Send + Sync;

/// How the tenant is bound to the principal.
enum Bind {
    /// [`AllowedTenants`] in the extensions (checked on the borrowed id).
    Principal,
    /// A custom rule (given an owned id).
    Custom(Box<BindFn>),
}

impl Bind {
    /// Whether the resolved tenant, and with [`Bind::Principal`] every
    /// tenant the request names through `resolver`, may be acted for.
    fn permits(
        &self,
        resolver: &dyn Resolver,
        head: &RequestHead<'_>,
        id: &TenantIdRef<'_>,
    ) -> bool {
        match self {
            Bind::Principal => head
                .extensions
                .get::<AllowedTenants>()
                .is_some_and(|allowed| {
                    allowed.permits_str(id.as_str())
                        && resolver
                            .permits_all_claims(head, &mut |claim| {
                                allowed.permits_str(claim.as_str())
                            })
                            .unwrap_or(false)
                }),
            Bind::Custom(permit) => permit(head, &id.to_owned_id()),
        }
    }
}

struct Config {
    resolver: Box<dyn Resolver>,
    directory: Arc<dyn TenantDirectory>,
    required: bool,
    bind: Option<Bind>,
    unknown_status: StatusCode,
}

/// Resolves the tenant of each request, validates it against a
/// [`TenantDirectory`] and inserts it as [`CurrentTenant`] into the request
/// extensions; the inner service runs inside a `tenant` tracing span with
/// the field `tenant.id`.
///
/// Refusals (see [`RejectionKind`]): no tenant while one is required (400),
/// malformed id (400), principal not permitted (403), unknown tenant (403, or
/// the status set with [`unknown_tenant_status`](Self::unknown_tenant_status)),
/// inactive tenant (403), directory failure (503).
///
/// ```
/// use std::sync::Arc;
/// use http::{Request, Response};
/// use tower::{service_fn, ServiceBuilder, ServiceExt};
/// use tower_tenancy::resolve::HeaderResolver;
/// use tower_tenancy::{CurrentTenant, MemoryDirectory, Plan, TenancyLayer, Tenant};
///
/// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
/// let directory = MemoryDirectory::new();
/// directory.insert(Tenant::new("acme".parse().unwrap(), Arc::new(Plan::new("free"))));
///
/// let svc = ServiceBuilder::new()
///     .layer(TenancyLayer::new(HeaderResolver::new("x-tenant-id"), directory))
///     .service(service_fn(|req: Request<String>| async move {
///         let tenant = req.extensions().get::<CurrentTenant>().unwrap();
///         Ok::<_, std::convert::Infallible>(Response::new(tenant.id().to_string()))
///     }));
///
/// let ok = svc.clone().oneshot(Request::builder().header("x-tenant-id", "acme").body(String::new()).unwrap()).await.unwrap();
/// assert_eq!(ok.status(), 200);
/// let unknown = svc.clone().oneshot(Request::builder().header("x-tenant-id", "nope").body(String::new()).unwrap()).await.unwrap();
/// assert_eq!(unknown.status(), 403);
/// let missing = svc.oneshot(Request::new(String::new())).await.unwrap();
/// assert_eq!(missing.status(), 400);
/// # });
/// ```
#[derive(Clone)]
pub struct TenancyLayer {
    config: Arc<Config>,
}

impl TenancyLayer {
    /// Resolves with `resolver` (a single source or a
    /// [`ResolverChain`](crate::resolve::ResolverChain)) and validates against
    /// `directory`. A tenant is required by default.
    pub fn new(resolver: impl Resolver, directory: impl TenantDirectory) -> Self {
        Self {
            config: Arc::new(Config {
                resolver: Box::new(resolver),
                directory: Arc::new(directory),
                required: true,
                bind: None,
                unknown_status: StatusCode::FORBIDDEN,
            }),
        }
    }

    fn config_mut(&mut self) -> &mut Config {
        Arc::get_mut(&mut self.config).expect("configure TenancyLayer before cloning it")
    }

    /// Lets requests without a tenant through (without [`CurrentTenant`]).
    /// Malformed ids are still refused.
    #[must_use]
    pub fn optional(mut self) -> Self {
        self.config_mut().required = false;
        self
    }

    /// The status for unknown tenants: 403 (default) or, for example, 404.
    #[must_use]
    pub fn unknown_tenant_status(mut self, status: StatusCode) -> Self {
        self.config_mut().unknown_status = status;
        self
    }

    /// Binds the tenant to the authenticated principal: the request must
    /// carry [`AllowedTenants`] (inserted by the authentication layer) that
    /// permits the resolved tenant, else 403 `tenant_not_permitted`. Every
    /// tenant the request names is checked, not only the one that wins: a
    /// header naming an allowed tenant and a query or host naming another is
    /// refused too, and so is a malformed claim of lower priority (see
    /// [`Resolver::permits_all_claims`]; a
    /// [`DefaultResolver`](crate::resolve::DefaultResolver)'s tenant is not a
    /// claim). The check runs before the directory
    /// lookup, so a refused caller cannot tell known ids from unknown ones.
    #[must_use]
    pub fn bind_to_principal(mut self) -> Self {
        self.config_mut().bind = Some(Bind::Principal);
        self
    }

    /// Binds the tenant with a custom rule: `permit(head, tenant)` returning
    /// false refuses the request with 403 `tenant_not_permitted`. Like
    /// [`bind_to_principal`](Self::bind_to_principal) it runs before the
    /// directory lookup (with an owned copy of the resolved id).
    #[must_use]
    pub fn bind_with(
        mut self,
        permit: impl Fn(&RequestHead<'_>, &TenantId) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().bind = Some(Bind::Custom(Box::new(permit)));
        self
    }
}

impl<S> Layer<S> for TenancyLayer {
    type Service = Tenancy<S>;
    fn layer(&self, inner: S) -> Self::Service {
        Tenancy {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`TenancyLayer`].
#[derive(Clone)]
pub struct Tenancy<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for Tenancy<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<TenancyBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let head = RequestHead::of(&req);
        // The id stays borrowed from the request until the directory has
        // answered: a known tenant's id is the directory's, never copied.
        let id = match self.config.resolver.resolve_ref(&head) {
            Ok(Some(id)) => id,
            Ok(None) if self.config.required => {
                return ResponseFuture::reject(
                    Rejection::new(RejectionKind::TenantRequired),
                    is_grpc(req.headers()),
                )
            }
            Ok(None) => return ResponseFuture::inner(self.inner.call(req), tracing::Span::none()),
            Err(e) => {
                tracing::debug!(source = %e.source_name, reason = %e.reason, "malformed tenant id");
                return ResponseFuture::reject(
                    Rejection::new(RejectionKind::MalformedTenantId)
                        .detail(format!("malformed tenant id in {e}")),
                    is_grpc(req.headers()),
                );
            }
        };
        if let Some(bind) = &self.config.bind {
            if !bind.permits(&*self.config.resolver, &head, &id) {
                let rejection =
                    Rejection::new(RejectionKind::TenantNotPermitted).tenant(id.into_owned());
                return ResponseFuture::reject(rejection, is_grpc(req.headers()));
            }
        }
        let mut lookup = self.config.directory.lookup_ref(&id);
        match lookup.try_take() {
            // Synchronous directory: no need to move the request into the future.
            Some(result) => match admit(&self.config, id, result) {
                Ok(tenant) => {
                    let span = tenant_span(&tenant);
                    req.extensions_mut().insert(CurrentTenant(tenant));
                    if span.is_disabled() {
                        // Built where it is returned: the inner future
                        // (large) is written into the variant, not moved.
                        return ResponseFuture {
                            state: State::Inner {
                                future: self.inner.call(req),
                                span,
                            },
                        };
                    }
                    let future = span.in_scope(|| self.inner.call(req));
                    ResponseFuture::inner(future, span)
                }
                Err(rejection) => ResponseFuture::reject(rejection, is_grpc(req.headers())),
            },
            None => {
                let id = id.into_owned();
                // Take the service that was driven to readiness, leave a clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Lookup {
                        lookup,
                        // Boxed: the request is large and this path (an
                        // asynchronous directory) allocates anyway.
                        pending: Some(Box::new(Pending {
                            inner,
                            req,
                            id,
                            config: self.config.clone(),
                        })),
                    },
                }
            }
        }
    }
}

/// The `tenant` span. When no subscriber is interested in `INFO` it is not
/// created at all (two loads; the `log` fallback of `tracing` is skipped
/// too), and a disabled span is never entered (see [`enter`]).
#[inline]
fn tenant_span(tenant: &Tenant) -> tracing::Span {
    if tracing::level_enabled!(tracing::Level::INFO) {
        enabled_tenant_span(tenant)
    } else {
        tracing::Span::none()
    }
}

/// [`tenant_span`] when `INFO` is enabled: out of line, so that the check
/// above is inlined into the layer's `call`.
#[inline(never)]
fn enabled_tenant_span(tenant: &Tenant) -> tracing::Span {
    tracing::info_span!("tenant", tenant.id = %tenant.id())
}

/// Runs `f` inside `span`, unless the span is disabled.
fn enter<T>(span: &tracing::Span, f: impl FnOnce() -> T) -> T {
    if span.is_disabled() {
        f()
    } else {
        span.in_scope(f)
    }
}

/// Directory answer → tenant or rejection.
#[inline(always)]
fn admit(
    config: &Config,
    id: TenantIdRef<'_>,
    result: LookupResult,
) -> Result<Arc<Tenant>, Rejection> {
    match result {
        Ok(Some(tenant)) if tenant.status().is_active() => Ok(tenant),
        Ok(Some(tenant)) => Err(
            Rejection::new(RejectionKind::TenantInactive(tenant.status()))
                .tenant(tenant.id().clone()),
        ),
        Ok(None) => Err(Rejection::new(RejectionKind::UnknownTenant)
            .status(config.unknown_status)
            .tenant(id.into_owned())),
        Err(e) => {
            tracing::warn!(tenant.id = %id, error = %e, "tenant directory failed");
            // A directory outage is transient: tell clients when to try again.
            Err(Rejection::new(RejectionKind::Unavailable)
                .retry_after(std::time::Duration::from_secs(1))
                .tenant(id.into_owned()))
        }
    }
}

struct Pending<S, B> {
    inner: S,
    req: Request<B>,
    id: TenantId,
    config: Arc<Config>,
}

pin_project! {
    /// Response future of [`Tenancy`].
    pub struct ResponseFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<B>>, B> {
        Lookup {
            lookup: MaybeReady<LookupResult>,
            pending: Option<Box<Pending<S, B>>>,
        },
        Inner {
            #[pin]
            future: S::Future,
            span: tracing::Span,
        },
        Rejected {
            refusal: Option<Refusal>,
        },
    }
}

impl<S: Service<Request<B>>, B> ResponseFuture<S, B> {
    fn inner(future: S::Future, span: tracing::Span) -> Self {
        Self {
            state: State::Inner { future, span },
        }
    }

    fn reject(rejection: Rejection, grpc: bool) -> Self {
        Self {
            state: State::Rejected {
                refusal: Some(Refusal::new(rejection, grpc)),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<TenancyBody<ResBody>>, S::Error>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Lookup { lookup, pending } => {
                    let result = ready!(Pin::new(lookup).poll(cx));
                    let Some(pending) = pending.take() else {
                        unreachable!("lookup state polled after completion")
                    };
                    let Pending {
                        mut inner,
                        mut req,
                        id,
                        config,
                    } = *pending;
                    match admit(&config, TenantIdRef::from(id), result) {
                        Ok(tenant) => {
                            let span = tenant_span(&tenant);
                            req.extensions_mut().insert(CurrentTenant(tenant));
                            let future = enter(&span, || inner.call(req));
                            this.state.set(State::Inner { future, span });
                        }
                        Err(rejection) => {
                            let grpc = is_grpc(req.headers());
                            self.set(Self::reject(rejection, grpc))
                        }
                    }
                }
                StateProj::Inner { future, span } => {
                    let response = ready!(enter(span, || future.poll(cx)))?;
                    return Poll::Ready(Ok(response.map(TenancyBody::new)));
                }
                StateProj::Rejected { refusal } => {
                    let refusal = refusal.take().expect("polled after completion");
                    return Poll::Ready(Ok(refusal.into_response().map(TenancyBody::full)));
                }
            }
        }
    }
}
