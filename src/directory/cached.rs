use std::sync::Arc;
use std::time::Duration;

use moka::future::Cache;

use super::{DirectoryError, LookupResult, TenantDirectory};
use crate::future::MaybeReady;
use crate::tenant::{Tenant, TenantId};

/// A cache in front of a slow directory (for example a database).
///
/// Known tenants are kept for `ttl`; unknown ids are remembered for
/// `negative_ttl` in a separate cache bounded to `max_negative` entries, so a
/// flood of random ids neither reaches the backend nor grows memory without
/// bound. Concurrent lookups of the same id share one backend call. Errors
/// are not cached.
///
/// ```
/// use std::time::Duration;
/// use tower_tenancy::{CachedDirectory, MemoryDirectory};
///
/// let cached = CachedDirectory::new(MemoryDirectory::new())
///     .ttl(Duration::from_secs(30))
///     .negative_ttl(Duration::from_secs(5))
///     .max_entries(100_000)
///     .max_negative(10_000);
/// ```
pub struct CachedDirectory<D> {
    inner: Arc<D>,
    ttl: Duration,
    negative_ttl: Duration,
    max_entries: u64,
    max_negative: u64,
    positive: Cache<TenantId, Arc<Tenant>>,
    negative: Cache<TenantId, ()>,
}

impl<D: TenantDirectory> CachedDirectory<D> {
    /// Caches `inner` with a 60 s TTL, 10 s negative TTL, 100 000 entries
    /// and 10 000 negative entries.
    pub fn new(inner: D) -> Self {
        Self {
            inner: Arc::new(inner),
            ttl: Duration::from_secs(60),
            negative_ttl: Duration::from_secs(10),
            max_entries: 100_000,
            max_negative: 10_000,
            positive: Cache::new(0),
            negative: Cache::new(0),
        }
        .rebuild()
    }

    fn rebuild(mut self) -> Self {
        self.positive = Cache::builder()
            .max_capacity(self.max_entries)
            .time_to_live(self.ttl)
            .build();
        self.negative = Cache::builder()
            .max_capacity(self.max_negative)
            .time_to_live(self.negative_ttl)
            .build();
        self
    }

    /// How long a found tenant is cached.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.rebuild()
    }

    /// How long an unknown id is remembered.
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self.rebuild()
    }

    /// Most tenants cached.
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self.rebuild()
    }

    /// Most unknown ids remembered.
    pub fn max_negative(mut self, n: u64) -> Self {
        self.max_negative = n;
        self.rebuild()
    }

    /// Forgets `id` (after changing it in the backend), so the next lookup
    /// reads it again.
    pub async fn invalidate(&self, id: &TenantId) {
        self.positive.invalidate(id).await;
        self.negative.invalidate(id).await;
    }

    /// Forgets everything.
    pub fn invalidate_all(&self) {
        self.positive.invalidate_all();
        self.negative.invalidate_all();
    }
}

impl<D: TenantDirectory> TenantDirectory for CachedDirectory<D> {
    fn lookup(&self, id: &TenantId) -> MaybeReady<LookupResult> {
        let (positive, negative, inner, id) = (
            self.positive.clone(),
            self.negative.clone(),
            self.inner.clone(),
            id.clone(),
        );
        MaybeReady::boxed(async move {
            if let Some(t) = positive.get(&id).await {
                return Ok(Some(t));
            }
            if negative.contains_key(&id) {
                return Ok(None);
            }
            let loaded: Result<Arc<Tenant>, Arc<Option<DirectoryError>>> = positive
                .try_get_with(id.clone(), async {
                    match inner.lookup(&id).await {
                        Ok(Some(t)) => Ok(t),
                        Ok(None) => Err(None),
                        Err(e) => Err(Some(e)),
                    }
                })
                .await;
            match loaded {
                Ok(t) => Ok(Some(t)),
                Err(e) => match &*e {
                    None => {
                        negative.insert(id, ()).await;
                        Ok(None)
                    }
                    Some(err) => Err(err.clone()),
                },
            }
        })
    }
}

impl<D> std::fmt::Debug for CachedDirectory<D> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CachedDirectory")
            .field("ttl", &self.ttl)
            .field("negative_ttl", &self.negative_ttl)
            .finish()
    }
}
