//! Tenant directories: where the validation step looks tenants up.
//!
//! [`MemoryDirectory`] holds tenants in memory and can be replaced or edited
//! at run time (hot reload). [`CachedDirectory`] puts a TTL cache with
//! bounded negative caching in front of a slow directory (a database).
//! With the `postgres` feature, [`postgres::PostgresDirectory`] keeps tenants
//! in PostgreSQL and [`postgres::PostgresChanges`] applies a change committed
//! anywhere to every instance's cache.

mod cached;
mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;

use std::sync::Arc;

pub use cached::CachedDirectory;
pub use memory::MemoryDirectory;

use crate::future::MaybeReady;
use crate::tenant::{Tenant, TenantId, TenantIdRef};

/// The directory could not answer (database down, …). Rendered as 503;
/// the message is logged, never sent to the client.
#[derive(Debug, Clone, thiserror::Error)]
#[error("tenant directory error: {0}")]
pub struct DirectoryError(pub String);

/// The result of a lookup: `Ok(None)` for an unknown tenant.
pub type LookupResult = Result<Option<Arc<Tenant>>, DirectoryError>;

/// Looks tenants up by id.
///
/// Synchronous directories answer with [`MaybeReady::ready`]; asynchronous
/// ones (a database) with [`MaybeReady::boxed`]:
///
/// ```
/// use std::sync::Arc;
/// use tower_tenancy::directory::{LookupResult, TenantDirectory};
/// use tower_tenancy::future::MaybeReady;
/// use tower_tenancy::{Plan, Tenant, TenantId};
///
/// struct FromDatabase { free: Arc<Plan> }
///
/// impl TenantDirectory for FromDatabase {
///     fn lookup(&self, id: &TenantId) -> MaybeReady<LookupResult> {
///         let (id, plan) = (id.clone(), self.free.clone());
///         MaybeReady::boxed(async move {
///             // SELECT status, plan FROM tenants WHERE id = $1
///             Ok(Some(Arc::new(Tenant::new(id, plan))))
///         })
///     }
/// }
/// ```
///
/// The [`TenancyLayer`](crate::TenancyLayer) calls
/// [`lookup_ref`](TenantDirectory::lookup_ref) with the id as the resolver
/// found it, usually borrowed from the request; its default makes an owned
/// [`TenantId`] (one allocation) and calls `lookup`. A directory that can
/// find a tenant by `&str` overrides it and answers with its own
/// `Arc<Tenant>`, whose id is the owned one: [`MemoryDirectory`] does, and
/// [`CachedDirectory`] does for cached answers.
pub trait TenantDirectory: Send + Sync + 'static {
    /// Finds the tenant `id`.
    fn lookup(&self, id: &TenantId) -> MaybeReady<LookupResult>;

    /// Finds the tenant `id`, borrowed from the request. Must agree with
    /// [`lookup`](Self::lookup); the default calls it with an owned id.
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_tenancy::{MemoryDirectory, Plan, Tenant, TenantDirectory, TenantIdRules};
    ///
    /// let directory = MemoryDirectory::new();
    /// directory.insert(Tenant::new("acme".parse().unwrap(), Arc::new(Plan::new("free"))));
    /// let header = String::from("acme"); // as read from a request
    /// let id = TenantIdRules::default().validate(&header).unwrap();
    /// let found = directory.lookup_ref(&id).try_take().unwrap().unwrap().unwrap();
    /// assert_eq!(found.id().as_str(), "acme");
    /// ```
    fn lookup_ref(&self, id: &TenantIdRef<'_>) -> MaybeReady<LookupResult> {
        self.lookup(&id.to_owned_id())
    }
}

impl<D: TenantDirectory + ?Sized> TenantDirectory for Arc<D> {
    fn lookup(&self, id: &TenantId) -> MaybeReady<LookupResult> {
        (**self).lookup(id)
    }
    fn lookup_ref(&self, id: &TenantIdRef<'_>) -> MaybeReady<LookupResult> {
        (**self).lookup_ref(id)
    }
}
