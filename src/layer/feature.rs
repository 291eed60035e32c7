//! [`RequireFeatureLayer`]: refuses tenants whose plan lacks a feature.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tower_layer::Layer;
use tower_service::Service;

use crate::body::TenancyBody;
use crate::reject::{is_grpc, Refusal, Rejection, RejectionKind};
use crate::CurrentTenant;

/// Lets a request through only when the tenant's effective plan (plan plus
/// overrides) includes `feature`; otherwise 403 `feature_not_in_plan` naming
/// the feature and the plan. A request without a tenant is refused with 400
/// `tenant_required`.
///
/// ```
/// use axum::{routing::post, Router};
/// use tower_tenancy::layer::feature::RequireFeatureLayer;
///
/// let app: Router = Router::new().route(
///     "/patterns",
///     post(|| async { "created" }).route_layer(RequireFeatureLayer::new("custom_patterns")),
/// );
/// ```
#[derive(Debug, Clone)]
pub struct RequireFeatureLayer {
    feature: Arc<str>,
}

impl RequireFeatureLayer {
    /// Requires `feature`.
    #[must_use]
    pub fn new(feature: &str) -> Self {
        Self {
            feature: Arc::from(feature),
        }
    }
}

impl<S> Layer<S> for RequireFeatureLayer {
    type Service = RequireFeature<S>;
    fn layer(&self, inner: S) -> Self::Service {
        RequireFeature {
            inner,
            feature: self.feature.clone(),
        }
    }
}

/// The service of [`RequireFeatureLayer`].
#[derive(Debug, Clone)]
pub struct RequireFeature<S> {
    inner: S,
    feature: Arc<str>,
}

impl<S, ReqBody, ResBody> Service<Request<ReqBody>> for RequireFeature<S>
where
    S: Service<Request<ReqBody>, Response = Response<ResBody>>,
{
    type Response = Response<TenancyBody<ResBody>>;
    type Error = S::Error;
    type Future = GateFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqBody>) -> Self::Future {
        let permitted = req
            .extensions()
            .get::<CurrentTenant>()
            .is_some_and(|tenant| tenant.plan().has_feature(&self.feature));
        if permitted {
            // Built where it is returned: the inner future (large) is
            // written into the gate's variant, not moved into it.
            return GateFuture {
                kind: Gate::Inner {
                    future: self.inner.call(req),
                },
            };
        }
        refuse(&req, &self.feature)
    }
}

/// The refusal of a request whose tenant lacks `feature` (or that has no
/// tenant); out of line, off the usual path.
#[cold]
#[inline(never)]
fn refuse<F, B>(req: &Request<B>, feature: &str) -> GateFuture<F> {
    let rejection = match req.extensions().get::<CurrentTenant>() {
        Some(tenant) => Rejection::new(RejectionKind::FeatureNotInPlan)
            .tenant(tenant.id().clone())
            .plan(&tenant.plan().name)
            .feature(feature),
        None => Rejection::new(RejectionKind::TenantRequired),
    };
    GateFuture::reject(rejection, is_grpc(req.headers()))
}

pin_project! {
    /// Response future of layers that decide before calling the inner
    /// service: the inner future, or a rendered rejection.
    pub struct GateFuture<F> {
        #[pin]
        kind: Gate<F>,
    }
}

pin_project! {
    #[project = GateProj]
    enum Gate<F> {
        Inner { #[pin] future: F },
        Rejected { refusal: Option<Refusal> },
    }
}

impl<F> GateFuture<F> {
    pub(crate) fn inner(future: F) -> Self {
        Self {
            kind: Gate::Inner { future },
        }
    }

    pub(crate) fn reject(rejection: Rejection, grpc: bool) -> Self {
        Self {
            kind: Gate::Rejected {
                refusal: Some(Refusal::new(rejection, grpc)),
            },
        }
    }
}

impl<F, B, E> Future for GateFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<TenancyBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            GateProj::Inner { future } => {
                let response = ready!(future.poll(cx))?;
                Poll::Ready(Ok(response.map(TenancyBody::new)))
            }
            GateProj::Rejected { refusal } => {
                let refusal = refusal.take().expect("GateFuture polled after completion");
                Poll::Ready(Ok(refusal.into_response().map(TenancyBody::full)))
            }
        }
    }
}
