//! [`ResourceLimitLayer`]: compares a plan limit ("5 workflows") with the
//! current usage reported by the application.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::TenancyBody;
use crate::future::MaybeReady;
use crate::layer::feature::GateFuture;
use crate::reject::{is_grpc, Rejection, RejectionKind};
use crate::tenant::Tenant;
use crate::CurrentTenant;

/// The usage source could not answer. Rendered as 503; the message is
/// logged, not sent.
#[derive(Debug, Clone, thiserror::Error)]
#[error("usage source error: {0}")]
pub struct UsageError(pub String);

/// Reports how much of a resource a tenant uses now (for example by counting
/// rows in the application's database).
///
/// Closures `Fn(Arc<Tenant>, Arc<str>) -> impl Future<Output = Result<u64, E>>`
/// implement it.
pub trait UsageSource: Send + Sync + 'static {
    /// Current usage of `resource` by `tenant`.
    fn usage(
        &self,
        tenant: &Arc<Tenant>,
        resource: &Arc<str>,
    ) -> MaybeReady<Result<u64, UsageError>>;
}

impl<F, Fut, E> UsageSource for F
where
    F: Fn(Arc<Tenant>, Arc<str>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<u64, E>> + Send + 'static,
    E: std::fmt::Display,
{
    fn usage(
        &self,
        tenant: &Arc<Tenant>,
        resource: &Arc<str>,
    ) -> MaybeReady<Result<u64, UsageError>> {
        let future = self(tenant.clone(), resource.clone());
        MaybeReady::boxed(async move { future.await.map_err(|e| UsageError(e.to_string())) })
    }
}

/// Refuses a request (403 `resource_limit_reached`, with limit and usage)
/// when the tenant already uses its plan's limit `resource`. Apply it to the
/// routes that create the resource. Unlimited or undefined limits skip the
/// check without asking the usage source.
///
/// For a count the crate keeps itself, atomically with the other counters,
/// use [`Rule::gauge`](crate::layer::admission::Rule::gauge) instead.
///
/// ```
/// use std::{convert::Infallible, sync::Arc};
/// use axum::{routing::post, Router};
/// use tower_tenancy::layer::limit::ResourceLimitLayer;
/// use tower_tenancy::Tenant;
///
/// let limit = ResourceLimitLayer::new("workflows", |tenant: Arc<Tenant>, _resource: Arc<str>| async move {
///     // SELECT count(*) FROM workflows WHERE tenant_id = $1
///     Ok::<u64, Infallible>(3)
/// });
/// let app: Router = Router::new().route("/workflows", post(|| async { "created" }).route_layer(limit));
/// ```
#[derive(Clone)]
pub struct ResourceLimitLayer {
    resource: Arc<str>,
    source: Arc<dyn UsageSource>,
}

impl ResourceLimitLayer {
    /// Checks the plan limit `resource` against `source`.
    #[must_use]
    pub fn new(resource: &str, source: impl UsageSource) -> Self {
        Self {
            resource: Arc::from(resource),
            source: Arc::new(source),
        }
    }
}

impl<S> Layer<S> for ResourceLimitLayer {
    type Service = ResourceLimit<S>;
    fn layer(&self, inner: S) -> Self::Service {
        ResourceLimit {
            inner,
            resource: self.resource.clone(),
            source: self.source.clone(),
        }
    }
}

/// The service of [`ResourceLimitLayer`].
#[derive(Clone)]
pub struct ResourceLimit<S> {
    inner: S,
    resource: Arc<str>,
    source: Arc<dyn UsageSource>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for ResourceLimit<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>> + Clone,
{
    type Response = Response<TenancyBody<ResBody>>;
    type Error = S::Error;
    type Future = LimitFuture<S, ReqBody>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let grpc = is_grpc(req.headers());
        let Some(tenant) = req.extensions().get::<CurrentTenant>().map(|t| t.0.clone()) else {
            let rejection = Rejection::new(RejectionKind::TenantRequired);
            return LimitFuture::gate(GateFuture::reject(rejection, grpc));
        };
        let Some(limit) = tenant.plan().limit_of(&self.resource).and_then(|l| l.max()) else {
            return LimitFuture::gate(GateFuture::inner(self.inner.call(req)));
        };
        let usage = self.source.usage(&tenant, &self.resource);
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        LimitFuture {
            state: State::Waiting {
                usage,
                pending: Some((inner, req)),
                check: Some((tenant, self.resource.clone(), limit, grpc)),
            },
        }
    }
}

fn judge(
    result: Result<u64, UsageError>,
    tenant: &Tenant,
    resource: &str,
    limit: u64,
) -> Option<Rejection> {
    match result {
        Ok(used) if used < limit => None,
        Ok(used) => Some(
            Rejection::new(RejectionKind::ResourceLimitReached)
                .tenant(tenant.id().clone())
                .plan(&tenant.plan().name)
                .policy(resource)
                .usage(limit, used),
        ),
        Err(e) => {
            tracing::warn!(tenant.id = %tenant.id(), resource, error = %e, "usage source failed");
            Some(Rejection::new(RejectionKind::Unavailable).tenant(tenant.id().clone()))
        }
    }
}

type Check = (Arc<Tenant>, Arc<str>, u64, bool);

pin_project! {
    /// Response future of [`ResourceLimit`].
    pub struct LimitFuture<S: Service<Request<B>>, B> {
        #[pin]
        state: State<S, B>,
    }
}

pin_project! {
    #[project = LimitProj]
    enum State<S: Service<Request<B>>, B> {
        Waiting {
            usage: MaybeReady<Result<u64, UsageError>>,
            pending: Option<(S, Request<B>)>,
            check: Option<Check>,
        },
        Gate { #[pin] gate: GateFuture<S::Future> },
    }
}

impl<S: Service<Request<B>>, B> LimitFuture<S, B> {
    fn gate(gate: GateFuture<S::Future>) -> Self {
        Self {
            state: State::Gate { gate },
        }
    }
}

impl<S, B, ResBody> Future for LimitFuture<S, B>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Output = Result<Response<TenancyBody<ResBody>>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut state = self.project().state;
        loop {
            match state.as_mut().project() {
                LimitProj::Waiting {
                    usage,
                    pending,
                    check,
                } => {
                    let result = ready!(Pin::new(usage).poll(cx));
                    let (tenant, resource, limit, grpc) =
                        check.take().expect("LimitFuture polled after completion");
                    let (mut inner, req) =
                        pending.take().expect("LimitFuture polled after completion");
                    let gate = match judge(result, &tenant, &resource, limit) {
                        None => GateFuture::inner(inner.call(req)),
                        Some(rejection) => GateFuture::reject(rejection, grpc),
                    };
                    state.set(State::Gate { gate });
                }
                LimitProj::Gate { gate } => return gate.poll(cx),
            }
        }
    }
}
