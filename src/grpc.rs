//! gRPC with tonic: the layers of this crate on a tonic server, a light
//! [`TenantInterceptor`], and [`TenantRequestExt`] to read the tenant in a
//! handler.
//!
//! # The full path: layers on the server
//!
//! Every layer of this crate is a plain `tower` layer over
//! `http::Request<B>`, so it goes straight into
//! `tonic::transport::Server::builder().layer(..)`. gRPC requests
//! (`content-type: application/grpc*`) are refused with a *trailers-only*
//! response: HTTP 200, `grpc-status`, a percent-encoded `grpc-message` and
//! `grpc-status-details-bin` ([rich error details](#rich-error-details)) in
//! the headers, no body; a tonic client sees a [`Status`] with that code,
//! message and details, and the rate-limit fields (`ratelimit`,
//! `ratelimit-policy`, `retry-after`) in [`Status::metadata`].
//!
//! | refusal | gRPC code |
//! |---|---|
//! | tenant required, malformed tenant id | 3 `INVALID_ARGUMENT` |
//! | unknown, suspended/expired/deleted tenant, not permitted, feature not in plan | 7 `PERMISSION_DENIED` |
//! | resource limit, rate limit, quota, concurrency | 8 `RESOURCE_EXHAUSTED` |
//! | store or directory unavailable (fail-closed) | 14 `UNAVAILABLE` |
//!
//! # Rich error details
//!
//! Every refusal also carries `grpc-status-details-bin`: a
//! `google.rpc.Status` built with `tonic-types`, Google's rich error model,
//! which clients read with [`tonic_types::StatusExt::get_error_details`]:
//!
//! * `ErrorInfo` on every refusal: `reason` is the rejection's
//!   [`code`](crate::reject::RejectionKind::code) in upper case
//!   (`RATE_LIMITED`, `UNKNOWN_TENANT`, `FEATURE_NOT_IN_PLAN`, …), `domain`
//!   is [`ERROR_DOMAIN`](crate::reject::ERROR_DOMAIN), `metadata` has
//!   `tenant`, `plan`, `feature` and `policy` where known;
//! * `QuotaFailure` on `RESOURCE_EXHAUSTED`: one violation per violated
//!   policy (`subject` = the policy, `description` = its usage);
//! * `RetryInfo` whenever the wait is known (rate limits, quotas,
//!   concurrency, an unavailable store): `retry_delay` equals `Retry-After`.
//!
//! A client backing off on `RetryInfo`:
//!
//! ```
//! use std::time::Duration;
//! use tonic::{Code, Status};
//! use tonic_types::StatusExt;
//! use tower_tenancy::reject::{Rejection, RejectionKind};
//!
//! // What a client receives when the server's AdmissionLayer refuses a call
//! // (here built directly; over the wire it arrives the same way).
//! let status: Status = Rejection::new(RejectionKind::RateLimited)
//!     .tenant("acme".parse().unwrap())
//!     .policy("api_calls_per_minute")
//!     .usage(60, 60)
//!     .retry_after(Duration::from_millis(41_200))
//!     .into();
//!
//! assert_eq!(status.code(), Code::ResourceExhausted);
//! let details = status.get_error_details();
//! let wait = details.retry_info().and_then(|r| r.retry_delay);
//! assert_eq!(wait, Some(Duration::from_secs(42)));
//! let violation = &details.quota_failure().unwrap().violations[0];
//! assert_eq!(violation.subject, "api_calls_per_minute");
//! assert_eq!(details.error_info().unwrap().reason, "RATE_LIMITED");
//! assert_eq!(details.error_info().unwrap().metadata["tenant"], "acme");
//! ```
//!
//! A concurrency slot taken by [`AdmissionLayer`](crate::AdmissionLayer) is
//! held by the response body, so a server-streaming call keeps its slot until
//! the stream ends, fails, or the client cancels it.
//!
//! ```no_run
//! use tonic::transport::Server;
//! use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
//! use tower_tenancy::resolve::HeaderResolver;
//! use tower_tenancy::store::MemoryStore;
//! use tower_tenancy::{Catalog, MemoryDirectory, TenancyLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let catalog = Catalog::from_toml_str(r#"
//!     [[plans]]
//!     name = "free"
//!     rates = { api_calls_per_minute = { limit = 60, window = "1m" } }
//!     concurrency = { streams = { limit = 2 } }
//!     [[tenants]]
//!     id = "acme"
//!     plan = "free"
//! "#)?;
//! let (_reporter, health) = tonic_health::server::health_reporter();
//!
//! Server::builder()
//!     // gRPC metadata travels as HTTP/2 headers: the header resolver reads it.
//!     .layer(TenancyLayer::new(
//!         HeaderResolver::new("x-tenant-id"),
//!         MemoryDirectory::from_catalog(&catalog),
//!     ))
//!     .layer(
//!         AdmissionLayer::new(MemoryStore::new())
//!             .rule(Rule::rate("api_calls_per_minute"))
//!             .rule(Rule::concurrency("streams")),
//!     )
//!     .add_service(health)
//!     .serve("127.0.0.1:50051".parse()?)
//!     .await?;
//! # Ok(())
//! # }
//! ```
//!
//! In the handler, [`TenantRequestExt::current_tenant`] (or
//! `request.extensions().get::<CurrentTenant>()`: tonic hands the HTTP
//! request's extensions to the handler) gives the tenant and its plan.
//!
//! # The light path: an interceptor
//!
//! [`TenantInterceptor`] only *resolves*: it reads and validates the tenant id
//! from a metadata key and puts the [`TenantId`] into the request extensions.
//! It is synchronous, as tonic interceptors are, so it cannot look the tenant
//! up in a [`TenantDirectory`](crate::TenantDirectory), refuse unknown or
//! inactive tenants, gate features or count anything. Use it where the
//! application checks the tenant itself; use [`TenancyLayer`](crate::TenancyLayer)
//! (and the other layers) for everything else.

use http::HeaderMap;
use tonic::metadata::{Ascii, MetadataKey, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Code, Request, Status};

use crate::reject::{Rejection, RejectionKind};
use crate::resolve::{ResolveError, ResolveErrorReason};
use crate::tenant::{TenantId, TenantIdRules};
use crate::CurrentTenant;

/// A tonic [`Interceptor`] that reads the tenant id from request metadata,
/// validates it with [`TenantIdRules`] and inserts the [`TenantId`] into the
/// request extensions.
///
/// Refusals, as [`Status`] with the same messages as
/// [`TenancyLayer`](crate::TenancyLayer):
///
/// * the key is absent and a tenant is required (the default):
///   `INVALID_ARGUMENT`, "no tenant found in the request";
/// * the value is malformed (empty, too long, a character outside
///   `[A-Za-z0-9._-]`, not ASCII) or the key occurs more than once:
///   `INVALID_ARGUMENT`, "malformed tenant id in metadata x-tenant-id: …"
///   (the value itself is never echoed).
///
/// What it **cannot** do, because an interceptor is synchronous and sees
/// only the request: look the tenant up in a directory (unknown tenants pass),
/// refuse suspended, expired or deleted tenants, check plan features, or
/// admit against rate limits, quotas and concurrency limits. For that, put
/// [`TenancyLayer`](crate::TenancyLayer) and the other layers on the server
/// (see the [module documentation](self)).
///
/// ```
/// use tonic::service::Interceptor;
/// use tonic::{Code, Request};
/// use tower_tenancy::grpc::TenantInterceptor;
/// use tower_tenancy::TenantId;
///
/// let mut interceptor = TenantInterceptor::new();
///
/// let mut req = Request::new(());
/// req.metadata_mut().insert("x-tenant-id", "acme".parse().unwrap());
/// let req = interceptor.call(req).unwrap();
/// assert_eq!(req.extensions().get::<TenantId>().unwrap().as_str(), "acme");
///
/// let err = interceptor.call(Request::new(())).unwrap_err();
/// assert_eq!(err.code(), Code::InvalidArgument);
///
/// let mut req = Request::new(());
/// req.metadata_mut().insert("x-tenant-id", "../etc".parse().unwrap());
/// assert_eq!(interceptor.call(req).unwrap_err().code(), Code::InvalidArgument);
/// ```
///
/// On a generated server, per service:
///
/// ```
/// use tonic_health::pb::health_server::HealthServer;
/// use tower_tenancy::grpc::TenantInterceptor;
///
/// # struct MyHealth;
/// # #[tonic::async_trait]
/// # impl tonic_health::pb::health_server::Health for MyHealth {
/// #     async fn check(&self, _: tonic::Request<tonic_health::pb::HealthCheckRequest>)
/// #         -> Result<tonic::Response<tonic_health::pb::HealthCheckResponse>, tonic::Status> { todo!() }
/// #     type WatchStream = tokio_stream::Empty<Result<tonic_health::pb::HealthCheckResponse, tonic::Status>>;
/// #     async fn watch(&self, _: tonic::Request<tonic_health::pb::HealthCheckRequest>)
/// #         -> Result<tonic::Response<Self::WatchStream>, tonic::Status> { todo!() }
/// # }
/// let service = HealthServer::with_interceptor(MyHealth, TenantInterceptor::new().key("x-org"));
/// ```
///
/// or for every service of a server, with
/// `Server::builder().layer(tonic::service::InterceptorLayer::new(TenantInterceptor::new()))`.
#[derive(Debug, Clone)]
pub struct TenantInterceptor {
    key: MetadataKey<Ascii>,
    source: String,
    rules: TenantIdRules,
    required: bool,
}

impl Default for TenantInterceptor {
    fn default() -> Self {
        Self::new()
    }
}

impl TenantInterceptor {
    /// The metadata key read by default.
    ///
    /// ```
    /// use tower_tenancy::grpc::TenantInterceptor;
    /// assert_eq!(TenantInterceptor::new().key_name(), TenantInterceptor::DEFAULT_KEY);
    /// ```
    pub const DEFAULT_KEY: &'static str = "x-tenant-id";

    /// Reads [`DEFAULT_KEY`](Self::DEFAULT_KEY) (`x-tenant-id`) with the
    /// default [`TenantIdRules`]; a tenant is required.
    ///
    /// ```
    /// let interceptor = tower_tenancy::grpc::TenantInterceptor::new();
    /// assert_eq!(interceptor.key_name(), "x-tenant-id");
    /// ```
    pub fn new() -> Self {
        Self::with_key(MetadataKey::from_static(Self::DEFAULT_KEY))
    }

    fn with_key(key: MetadataKey<Ascii>) -> Self {
        Self {
            source: format!("metadata {}", key.as_str()),
            key,
            rules: TenantIdRules::default(),
            required: true,
        }
    }

    /// Reads metadata key `key` instead (ASCII metadata; lowercased).
    ///
    /// # Panics
    ///
    /// When `key` is not a valid ASCII metadata key (for example a binary
    /// `-bin` key): a programming error, not input.
    ///
    /// ```
    /// let interceptor = tower_tenancy::grpc::TenantInterceptor::new().key("X-Org");
    /// assert_eq!(interceptor.key_name(), "x-org");
    /// ```
    pub fn key(self, key: &str) -> Self {
        let key = MetadataKey::<Ascii>::from_bytes(key.as_bytes())
            .expect("TenantInterceptor::key: invalid ASCII metadata key");
        Self {
            rules: self.rules,
            required: self.required,
            ..Self::with_key(key)
        }
    }

    /// The metadata key this interceptor reads.
    ///
    /// ```
    /// assert_eq!(tower_tenancy::grpc::TenantInterceptor::default().key_name(), "x-tenant-id");
    /// ```
    pub fn key_name(&self) -> &str {
        self.key.as_str()
    }

    /// Validates with `rules` instead of the defaults.
    ///
    /// ```
    /// use tonic::service::Interceptor;
    /// use tower_tenancy::grpc::TenantInterceptor;
    /// use tower_tenancy::{TenantId, TenantIdRules};
    ///
    /// let mut interceptor = TenantInterceptor::new().rules(TenantIdRules::default().lowercase(true));
    /// let mut req = tonic::Request::new(());
    /// req.metadata_mut().insert("x-tenant-id", "ACME".parse().unwrap());
    /// let req = interceptor.call(req).unwrap();
    /// assert_eq!(req.extensions().get::<TenantId>().unwrap().as_str(), "acme");
    /// ```
    pub fn rules(mut self, rules: TenantIdRules) -> Self {
        self.rules = rules;
        self
    }

    /// Lets requests without the key through (without a [`TenantId`]).
    /// Malformed ids are still refused.
    ///
    /// ```
    /// use tonic::service::Interceptor;
    /// use tower_tenancy::grpc::TenantInterceptor;
    /// use tower_tenancy::TenantId;
    ///
    /// let mut interceptor = TenantInterceptor::new().optional();
    /// let req = interceptor.call(tonic::Request::new(())).unwrap();
    /// assert!(req.extensions().get::<TenantId>().is_none());
    /// ```
    pub fn optional(mut self) -> Self {
        self.required = false;
        self
    }

    /// Reads and validates the tenant id from `metadata`: `Ok(None)` when the
    /// key is absent (whether or not a tenant is required), `Err` with
    /// `INVALID_ARGUMENT` when it is malformed or given more than once.
    ///
    /// ```
    /// use tonic::metadata::MetadataMap;
    /// use tower_tenancy::grpc::TenantInterceptor;
    ///
    /// let interceptor = TenantInterceptor::new();
    /// let mut metadata = MetadataMap::new();
    /// assert_eq!(interceptor.resolve(&metadata).unwrap(), None);
    /// metadata.insert("x-tenant-id", "acme".parse().unwrap());
    /// assert_eq!(interceptor.resolve(&metadata).unwrap().unwrap().as_str(), "acme");
    /// metadata.append("x-tenant-id", "globex".parse().unwrap());
    /// assert_eq!(interceptor.resolve(&metadata).unwrap_err().code(), tonic::Code::InvalidArgument);
    /// ```
    pub fn resolve(&self, metadata: &MetadataMap) -> Result<Option<TenantId>, Status> {
        let all = metadata.get_all(&self.key);
        let mut values = all.iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        let error = if values.next().is_some() {
            ResolveError::new(&self.source, ResolveErrorReason::Ambiguous)
        } else {
            match self.rules.parse_bytes(value.as_encoded_bytes()) {
                Ok(id) => return Ok(Some(id)),
                Err(e) => ResolveError::new(&self.source, e.into()),
            }
        };
        tracing::debug!(source = %error.source_name, reason = %error.reason, "malformed tenant id");
        Err(Rejection::new(RejectionKind::MalformedTenantId)
            .detail(format!("malformed tenant id in {error}"))
            .into())
    }
}

impl Interceptor for TenantInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        match self.resolve(request.metadata())? {
            Some(id) => {
                request.extensions_mut().insert(id);
                Ok(request)
            }
            None if self.required => Err(Rejection::new(RejectionKind::TenantRequired).into()),
            None => Ok(request),
        }
    }
}

/// A [`Rejection`] as a tonic [`Status`]: the same code, message, rich
/// error details and metadata (`retry-after`, rate-limit fields) as the
/// trailers-only response
/// the layers send. Handy when a handler checks a policy itself. Like a
/// layer's refusal, the conversion is recorded (a `tracing` event and, with
/// the `metrics` feature, `tenancy_rejected_total`).
///
/// ```
/// use tonic::{Code, Status};
/// use tower_tenancy::reject::{Rejection, RejectionKind};
///
/// let status: Status = Rejection::new(RejectionKind::FeatureNotInPlan)
///     .feature("webhooks")
///     .plan("free")
///     .into();
/// assert_eq!(status.code(), Code::PermissionDenied);
/// assert_eq!(status.message(), r#"feature "webhooks" is not included in plan "free""#);
/// ```
impl From<Rejection> for Status {
    fn from(rejection: Rejection) -> Self {
        crate::observe::rejected(&rejection);
        let headers: HeaderMap = rejection.to_response(true).into_parts().0.headers;
        Status::from_header_map(&headers).unwrap_or_else(|| {
            Status::new(
                Code::from(i32::from(rejection.kind().grpc_code())),
                rejection.kind().code(),
            )
        })
    }
}

/// Reads the tenant in a tonic handler.
///
/// [`TenancyLayer`](crate::TenancyLayer) inserts [`CurrentTenant`] into the
/// HTTP request's extensions and tonic hands them to the handler's
/// [`tonic::Request`], so `request.extensions().get::<CurrentTenant>()` works;
/// these methods say it shorter. [`TenantInterceptor`] inserts only a
/// [`TenantId`]: read it with [`tenant_id`](Self::tenant_id).
///
/// ```
/// use tonic::{Request, Response, Status};
/// use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
/// use tower_tenancy::grpc::TenantRequestExt;
///
/// async fn check(request: Request<HealthCheckRequest>) -> Result<Response<HealthCheckResponse>, Status> {
///     let tenant = request.require_tenant()?; // &CurrentTenant
///     if !tenant.plan().has_feature("health") {
///         return Err(Status::permission_denied("no health checks on this plan"));
///     }
///     Ok(Response::new(HealthCheckResponse { status: 1 }))
/// }
/// ```
pub trait TenantRequestExt {
    /// The tenant put there by [`TenancyLayer`](crate::TenancyLayer).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_tenancy::grpc::TenantRequestExt;
    /// use tower_tenancy::{CurrentTenant, Plan, Tenant};
    ///
    /// let mut req = tonic::Request::new(());
    /// assert!(req.current_tenant().is_none());
    /// let acme = Tenant::new("acme".parse().unwrap(), Arc::new(Plan::new("free")));
    /// req.extensions_mut().insert(CurrentTenant(Arc::new(acme)));
    /// assert_eq!(req.current_tenant().unwrap().plan().name, "free");
    /// ```
    fn current_tenant(&self) -> Option<&CurrentTenant>;

    /// The tenant id: of the [`CurrentTenant`] when there is one, else the
    /// [`TenantId`] put there by [`TenantInterceptor`].
    ///
    /// ```
    /// use tonic::service::Interceptor;
    /// use tower_tenancy::grpc::{TenantInterceptor, TenantRequestExt};
    ///
    /// let mut req = tonic::Request::new(());
    /// req.metadata_mut().insert("x-tenant-id", "acme".parse().unwrap());
    /// let req = TenantInterceptor::new().call(req).unwrap();
    /// assert_eq!(req.tenant_id().unwrap().as_str(), "acme");
    /// assert!(req.current_tenant().is_none());
    /// ```
    fn tenant_id(&self) -> Option<&TenantId>;

    /// The [`CurrentTenant`], or `INTERNAL` when there is none: the
    /// request did not go through [`TenancyLayer`](crate::TenancyLayer),
    /// which is a server set-up error (the layer refuses requests without a
    /// tenant itself, unless it is [`optional`](crate::TenancyLayer::optional)).
    ///
    /// ```
    /// use tower_tenancy::grpc::TenantRequestExt;
    ///
    /// let req = tonic::Request::new(());
    /// assert_eq!(req.require_tenant().unwrap_err().code(), tonic::Code::Internal);
    /// ```
    fn require_tenant(&self) -> Result<&CurrentTenant, Status>;
}

impl<T> TenantRequestExt for Request<T> {
    fn current_tenant(&self) -> Option<&CurrentTenant> {
        self.extensions().get::<CurrentTenant>()
    }

    fn tenant_id(&self) -> Option<&TenantId> {
        self.current_tenant()
            .map(|t| t.id())
            .or_else(|| self.extensions().get::<TenantId>())
    }

    fn require_tenant(&self) -> Result<&CurrentTenant, Status> {
        self.current_tenant()
            .ok_or_else(|| Status::internal("no tenant: TenancyLayer is not installed"))
    }
}
