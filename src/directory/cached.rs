use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use super::{DirectoryError, LookupResult, TenantDirectory};
use crate::future::MaybeReady;
use crate::tenant::{Tenant, TenantId, TenantIdRef};

/// Ids are chosen by clients (the negative cache stores unknown ones), so
/// the caches hash them with a randomly seeded hasher.
type Cache<V> = moka::future::Cache<TenantId, V, foldhash::fast::RandomState>;

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
    positive: Cache<Arc<Tenant>>,
    negative: Cache<()>,
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
            positive: Self::cache(0, Duration::from_secs(1)),
            negative: Self::cache(0, Duration::from_secs(1)),
        }
        .rebuild()
    }

    fn cache<V: Clone + Send + Sync + 'static>(capacity: u64, ttl: Duration) -> Cache<V> {
        moka::future::Cache::builder()
            .max_capacity(capacity)
            .time_to_live(ttl)
            .build_with_hasher(foldhash::fast::RandomState::default())
    }

    fn rebuild(mut self) -> Self {
        self.positive = Self::cache(self.max_entries, self.ttl);
        self.negative = Self::cache(self.max_negative, self.negative_ttl);
        self
    }

    /// How long a found tenant is cached.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self.rebuild()
    }

    /// How long an unknown id is remembered.
    #[must_use]
    pub fn negative_ttl(mut self, ttl: Duration) -> Self {
        self.negative_ttl = ttl;
        self.rebuild()
    }

    /// Most tenants cached.
    #[must_use]
    pub fn max_entries(mut self, n: u64) -> Self {
        self.max_entries = n;
        self.rebuild()
    }

    /// Most unknown ids remembered.
    #[must_use]
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
    /// A cached answer is given at once, borrowing the id (no allocation,
    /// no boxed future); anything else goes through [`lookup`](Self::lookup).
    fn lookup_ref(&self, id: &TenantIdRef<'_>) -> MaybeReady<LookupResult> {
        // The cache's read does not wait on anything in practice; it is
        // polled once, and dropped unfinished in the (unexpected) case it
        // would wait.
        let mut cached = std::pin::pin!(self.positive.get(id.as_str()));
        if let Poll::Ready(found) = cached
            .as_mut()
            .poll(&mut Context::from_waker(Waker::noop()))
        {
            if let Some(tenant) = found {
                return MaybeReady::ready(Ok(Some(tenant)));
            }
            if self.negative.contains_key(id.as_str()) {
                return MaybeReady::ready(Ok(None));
            }
        }
        self.lookup(&id.to_owned_id())
    }

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
