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
use crate::reject::{is_grpc, Rejection, RejectionKind};
use crate::resolve::{AllowedTenants, RequestHead, Resolver};
use crate::tenant::{Tenant, TenantId};
use crate::CurrentTenant;

type BindFn = dyn Fn(&RequestHead<'_>, &TenantId) -> bool + Send + Sync;

struct Config {
    resolver: Box<dyn Resolver>,
    directory: Arc<dyn TenantDirectory>,
    required: bool,
    bind: Option<Box<BindFn>>,
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
    pub fn optional(mut self) -> Self {
        self.config_mut().required = false;
        self
    }

    /// The status for unknown tenants: 403 (default) or, for example, 404.
    pub fn unknown_tenant_status(mut self, status: StatusCode) -> Self {
        self.config_mut().unknown_status = status;
        self
    }

    /// Binds the tenant to the authenticated principal: the request must
    /// carry [`AllowedTenants`] (inserted by the authentication layer) that
    /// permits the resolved tenant, else 403 `tenant_not_permitted`.
    pub fn bind_to_principal(self) -> Self {
        self.bind_with(|head, id| {
            head.extensions
                .get::<AllowedTenants>()
                .is_some_and(|allowed| allowed.permits(id))
        })
    }

    /// Binds the tenant with a custom rule: `permit(head, tenant)` returning
    /// false refuses the request with 403 `tenant_not_permitted`.
    pub fn bind_with(
        mut self,
        permit: impl Fn(&RequestHead<'_>, &TenantId) -> bool + Send + Sync + 'static,
    ) -> Self {
        self.config_mut().bind = Some(Box::new(permit));
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

    fn call(&mut self, mut req: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(req.headers());
        let head = RequestHead::of(&req);
        let id = match self.config.resolver.resolve(&head) {
            Ok(Some(id)) => id,
            Ok(None) if self.config.required => {
                return ResponseFuture::reject(Rejection::new(RejectionKind::TenantRequired), grpc)
            }
            Ok(None) => return ResponseFuture::inner(self.inner.call(req), tracing::Span::none()),
            Err(e) => {
                tracing::debug!(source = %e.source_name, reason = %e.reason, "malformed tenant id");
                return ResponseFuture::reject(
                    Rejection::new(RejectionKind::MalformedTenantId)
                        .detail(format!("malformed tenant id in {e}")),
                    grpc,
                );
            }
        };
        if let Some(bind) = &self.config.bind {
            if !bind(&head, &id) {
                return ResponseFuture::reject(
                    Rejection::new(RejectionKind::TenantNotPermitted).tenant(id),
                    grpc,
                );
            }
        }
        let mut lookup = self.config.directory.lookup(&id);
        match lookup.try_take() {
            // Synchronous directory: no need to move the request into the future.
            Some(result) => match admit(&self.config, id, result) {
                Ok(tenant) => {
                    let span = tenant_span(&tenant);
                    req.extensions_mut().insert(CurrentTenant(tenant));
                    let future = span.in_scope(|| self.inner.call(req));
                    ResponseFuture::inner(future, span)
                }
                Err(rejection) => ResponseFuture::reject(rejection, grpc),
            },
            None => {
                // Take the service that was driven to readiness, leave a clone.
                let clone = self.inner.clone();
                let inner = std::mem::replace(&mut self.inner, clone);
                ResponseFuture {
                    state: State::Lookup {
                        lookup,
                        pending: Some(Pending {
                            inner,
                            req,
                            id,
                            config: self.config.clone(),
                        }),
                        grpc,
                    },
                }
            }
        }
    }
}

fn tenant_span(tenant: &Tenant) -> tracing::Span {
    tracing::info_span!("tenant", tenant.id = %tenant.id())
}

/// Directory answer → tenant or rejection.
fn admit(config: &Config, id: TenantId, result: LookupResult) -> Result<Arc<Tenant>, Rejection> {
    match result {
        Ok(Some(tenant)) if tenant.status().is_active() => Ok(tenant),
        Ok(Some(tenant)) => {
            Err(Rejection::new(RejectionKind::TenantInactive(tenant.status())).tenant(id))
        }
        Ok(None) => Err(Rejection::new(RejectionKind::UnknownTenant)
            .status(config.unknown_status)
            .tenant(id)),
        Err(e) => {
            tracing::warn!(tenant.id = %id, error = %e, "tenant directory failed");
            // A directory outage is transient: tell clients when to try again.
            Err(Rejection::new(RejectionKind::Unavailable)
                .retry_after(std::time::Duration::from_secs(1))
                .tenant(id))
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
            pending: Option<Pending<S, B>>,
            grpc: bool,
        },
        Inner {
            #[pin]
            future: S::Future,
            span: tracing::Span,
        },
        Rejected {
            response: Option<Response<bytes::Bytes>>,
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
        crate::observe::rejected(&rejection);
        Self {
            state: State::Rejected {
                response: Some(rejection.to_response(grpc)),
            },
        }
    }
}

impl<S, B, ResBody> Future for ResponseFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<TenancyBody<ResBody>>, S::Error>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        loop {
            let mut this = self.as_mut().project();
            match this.state.as_mut().project() {
                StateProj::Lookup {
                    lookup,
                    pending,
                    grpc,
                } => {
                    let result = ready!(Pin::new(lookup).poll(cx));
                    let grpc = *grpc;
                    let Some(Pending {
                        mut inner,
                        mut req,
                        id,
                        config,
                    }) = pending.take()
                    else {
                        unreachable!("lookup state polled after completion")
                    };
                    match admit(&config, id, result) {
                        Ok(tenant) => {
                            let span = tenant_span(&tenant);
                            req.extensions_mut().insert(CurrentTenant(tenant));
                            let future = span.in_scope(|| inner.call(req));
                            this.state.set(State::Inner { future, span });
                        }
                        Err(rejection) => self.set(Self::reject(rejection, grpc)),
                    }
                }
                StateProj::Inner { future, span } => {
                    let _enter = span.enter();
                    let response = ready!(future.poll(cx))?;
                    return Poll::Ready(Ok(response.map(TenancyBody::new)));
                }
                StateProj::Rejected { response } => {
                    let response = response.take().expect("polled after completion");
                    return Poll::Ready(Ok(response.map(TenancyBody::full)));
                }
            }
        }
    }
}
