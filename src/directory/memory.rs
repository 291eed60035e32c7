use std::collections::HashMap;
use std::sync::Arc;

use arc_swap::ArcSwap;

use super::{LookupResult, TenantDirectory};
use crate::catalog::Catalog;
use crate::future::MaybeReady;
use crate::tenant::{Tenant, TenantId, TenantIdRef};

/// Tenants by id. Ids come from clients, so the hasher is randomly seeded
/// (foldhash: fast, and the seed keeps lookups of crafted ids from being
/// predictable); only the operator inserts, so no client can grow a chain.
type Map = HashMap<TenantId, Arc<Tenant>, foldhash::fast::RandomState>;

/// An in-memory directory. Reads are lock-free; every change publishes a new
/// snapshot atomically, so the next request sees it (hot reload) and a
/// request never sees half an update.
///
/// Cloning is cheap and clones share the same contents.
///
/// ```
/// use std::sync::Arc;
/// use tower_tenancy::{MemoryDirectory, Plan, Tenant, TenantStatus};
///
/// let free = Arc::new(Plan::new("free"));
/// let dir = MemoryDirectory::new();
/// dir.insert(Tenant::new("acme".parse().unwrap(), free));
/// dir.update(&"acme".parse().unwrap(), |t| t.set_status(TenantStatus::Suspended));
/// assert_eq!(dir.get(&"acme".parse().unwrap()).unwrap().status(), TenantStatus::Suspended);
/// ```
#[derive(Clone, Default)]
pub struct MemoryDirectory {
    tenants: Arc<ArcSwap<Map>>,
    hooks: Arc<parking_lot::RwLock<Vec<ChangeHook>>>,
}

/// Called after a change: `Some(id)` for one tenant, `None` for all.
type ChangeHook = Arc<dyn Fn(Option<&TenantId>) + Send + Sync>;

impl MemoryDirectory {
    /// An empty directory.
    pub fn new() -> Self {
        Self::default()
    }

    /// A directory holding the tenants of `catalog`.
    pub fn from_catalog(catalog: &Catalog) -> Self {
        let dir = Self::new();
        dir.replace_all(catalog.tenants().iter().cloned());
        dir
    }

    /// Replaces the whole contents at once (a catalog reload).
    pub fn replace_all(&self, tenants: impl IntoIterator<Item = Tenant>) {
        let map: Map = tenants
            .into_iter()
            .map(|t| (t.id().clone(), Arc::new(t)))
            .collect();
        self.tenants.store(Arc::new(map));
        self.changed(None);
    }

    /// Calls `hook` after every change, once the new contents are
    /// published: with the tenant's id for [`insert`](Self::insert),
    /// [`update`](Self::update) and [`remove`](Self::remove), with `None`
    /// for [`replace_all`](Self::replace_all). Typically drops what a store
    /// keeps locally about the tenant ([`CounterStore::invalidate`](crate::store::CounterStore::invalidate)).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use tower_tenancy::store::{CounterStore, DenyCache};
    /// use tower_tenancy::{MemoryDirectory, MemoryStore};
    ///
    /// let store: Arc<dyn CounterStore> = Arc::new(DenyCache::new(MemoryStore::new()));
    /// let dir = MemoryDirectory::new();
    /// let hook_store = store.clone();
    /// dir.on_change(move |tenant| match tenant {
    ///     Some(id) => hook_store.invalidate(id),
    ///     None => hook_store.invalidate_all(),
    /// });
    /// ```
    pub fn on_change(&self, hook: impl Fn(Option<&TenantId>) + Send + Sync + 'static) {
        self.hooks.write().push(Arc::new(hook));
    }

    fn changed(&self, tenant: Option<&TenantId>) {
        let hooks = self.hooks.read().clone();
        for hook in hooks {
            hook(tenant);
        }
    }

    /// Adds or replaces one tenant.
    pub fn insert(&self, tenant: Tenant) {
        let tenant = Arc::new(tenant);
        self.tenants.rcu(|map| {
            let mut map = Map::clone(map);
            map.insert(tenant.id().clone(), tenant.clone());
            map
        });
        self.changed(Some(tenant.id()));
    }

    /// Changes one tenant with `f`; returns the new tenant, or `None` when
    /// the tenant is unknown.
    pub fn update(&self, id: &TenantId, f: impl Fn(&Tenant) -> Tenant) -> Option<Arc<Tenant>> {
        let mut updated = None;
        self.tenants.rcu(|map| {
            let mut map = Map::clone(map);
            updated = map.get(id).map(|t| Arc::new(f(t)));
            if let Some(t) = &updated {
                map.insert(id.clone(), t.clone());
            }
            map
        });
        if updated.is_some() {
            self.changed(Some(id));
        }
        updated
    }

    /// Removes a tenant; returns it when it was present.
    pub fn remove(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        let mut removed = None;
        self.tenants.rcu(|map| {
            let mut map = Map::clone(map);
            removed = map.remove(id);
            map
        });
        if removed.is_some() {
            self.changed(Some(id));
        }
        removed
    }

    /// The tenant `id`, if present.
    pub fn get(&self, id: &TenantId) -> Option<Arc<Tenant>> {
        self.tenants.load().get(id).cloned()
    }

    /// All tenants, sorted by id.
    pub fn list(&self) -> Vec<Arc<Tenant>> {
        let mut all: Vec<_> = self.tenants.load().values().cloned().collect();
        all.sort_by(|a, b| a.id().cmp(b.id()));
        all
    }

    /// Number of tenants.
    pub fn len(&self) -> usize {
        self.tenants.load().len()
    }

    /// Whether the directory is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl TenantDirectory for MemoryDirectory {
    fn lookup(&self, id: &TenantId) -> MaybeReady<LookupResult> {
        MaybeReady::ready(Ok(self.get(id)))
    }

    fn lookup_ref(&self, id: &TenantIdRef<'_>) -> MaybeReady<LookupResult> {
        MaybeReady::ready(Ok(self.tenants.load().get(id.as_str()).cloned()))
    }
}

impl std::fmt::Debug for MemoryDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDirectory")
            .field("tenants", &self.len())
            .finish()
    }
}
