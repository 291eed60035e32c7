//! Multi-tenancy for any `tower` service: hyper, axum and tonic.
//!
//! A request goes through **resolve → validate → gate → check → admit**:
//!
//! 1. [`resolve`]: find the tenant id (header, path, query, host, a value an
//!    auth layer put in the extensions, a default), sources in priority order;
//! 2. [`TenancyLayer`]: look it up in a [`TenantDirectory`], refuse unknown or
//!    inactive tenants, insert [`CurrentTenant`] into the request extensions;
//! 3. later layers gate features, check resource limits and admit the request
//!    against rate limits, quotas and concurrency limits kept in a counter
//!    [`store`].
//!
//! Every refusal is a [`Rejection`](reject::Rejection), rendered in one place
//! as `application/problem+json` (or a gRPC status for gRPC requests).
//!
//! ```
//! use std::sync::Arc;
//! use axum::{routing::get, Router};
//! use tower_tenancy::resolve::{HeaderResolver, PathResolver, ResolverChain};
//! use tower_tenancy::{Catalog, CurrentTenant, MemoryDirectory, TenancyLayer};
//!
//! let catalog = Catalog::from_toml_str(r#"
//!     [[plans]]
//!     name = "free"
//!     features = ["reports"]
//!     [[tenants]]
//!     id = "acme"
//!     plan = "free"
//! "#).unwrap();
//! let directory = MemoryDirectory::from_catalog(&catalog);
//!
//! async fn whoami(tenant: CurrentTenant) -> String {
//!     format!("{} on {}", tenant.id(), tenant.plan().name)
//! }
//!
//! let app: Router = Router::new()
//!     .route("/whoami", get(whoami))
//!     .layer(TenancyLayer::new(
//!         ResolverChain::new()
//!             .or(HeaderResolver::new("x-tenant-id"))
//!             .or(PathResolver::after("tenants")),
//!         directory,
//!     ));
//! ```
#![deny(missing_docs)]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod body;
pub mod catalog;
pub mod directory;
pub mod future;
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub mod grpc;
pub mod layer;
pub mod observe;
pub mod plan;
pub mod reject;
pub mod resolve;
pub mod store;
pub mod tenant;
pub mod usage;
pub mod utc;

#[cfg(feature = "axum")]
mod extract;

/// The README's Rust snippets, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
pub struct ReadmeDoctests;

use std::ops::Deref;
use std::sync::Arc;

pub use catalog::{Catalog, CatalogError};
#[cfg(feature = "postgres")]
pub use directory::postgres::{PostgresChanges, PostgresDirectory};
pub use directory::{CachedDirectory, MemoryDirectory, TenantDirectory};
#[cfg(feature = "tonic")]
#[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
pub use grpc::{TenantInterceptor, TenantRequestExt};
pub use layer::admission::{AdmissionLayer, Rule};
pub use layer::feature::RequireFeatureLayer;
pub use layer::limit::ResourceLimitLayer;
pub use layer::tenancy::TenancyLayer;
pub use plan::{
    ConcurrencyRule, Limit, Overrides, Period, Plan, QuotaRule, RateAlgorithm, RateRule,
};
pub use resolve::AllowedTenants;
#[cfg(feature = "redis")]
#[cfg_attr(docsrs, doc(cfg(feature = "redis")))]
pub use store::RedisStore;
pub use store::{FailurePolicy, MemoryStore, ResilientStore};
pub use tenant::{Tenant, TenantId, TenantIdRef, TenantIdRules, TenantStatus};
pub use utc::UtcTime;

/// The tenant of the current request, inserted into the request extensions
/// by [`TenancyLayer`]. Dereferences to [`Tenant`].
///
/// With the `axum` feature it is an extractor (a request without a tenant is
/// answered 500, since that means the layer is missing; use
/// `Option<CurrentTenant>` on routes where the tenant is optional). In a
/// tonic handler read it with `request.extensions().get::<CurrentTenant>()`.
///
/// ```
/// # use std::sync::Arc;
/// # use tower_tenancy::{CurrentTenant, Plan, Tenant};
/// let t = CurrentTenant(Arc::new(Tenant::new("acme".parse().unwrap(), Arc::new(Plan::new("free")))));
/// assert_eq!(t.id().as_str(), "acme");
/// ```
#[derive(Debug, Clone)]
pub struct CurrentTenant(pub Arc<Tenant>);

impl Deref for CurrentTenant {
    type Target = Tenant;
    fn deref(&self) -> &Tenant {
        &self.0
    }
}
