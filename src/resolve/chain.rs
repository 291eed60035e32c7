use super::{RequestHead, ResolveError, Resolver};
use crate::tenant::{TenantId, TenantIdRef};

/// Tries resolvers in order; the first that finds a tenant wins, the first
/// that finds a malformed value stops the chain with its error.
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::*;
///
/// let chain = ResolverChain::new()
///     .or(HeaderResolver::new("x-tenant-id"))
///     .or(PathResolver::after("tenants"))
///     .or(QueryResolver::new("tenant"))
///     .or(DefaultResolver::new("public".parse().unwrap()));
///
/// let req = Request::get("/tenants/acme/workflows").body(()).unwrap();
/// assert_eq!(chain.resolve(&RequestHead::of(&req)).unwrap().unwrap().as_str(), "acme");
/// let req = Request::get("/health").body(()).unwrap();
/// assert_eq!(chain.resolve(&RequestHead::of(&req)).unwrap().unwrap().as_str(), "public");
/// let req = Request::get("/x?tenant=..").body(()).unwrap();
/// assert!(chain.resolve(&RequestHead::of(&req)).is_err());
/// ```
#[derive(Default)]
pub struct ResolverChain {
    resolvers: Vec<Box<dyn Resolver>>,
}

impl ResolverChain {
    /// An empty chain (resolves nothing).
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends a resolver with lower priority than those before it.
    #[must_use]
    pub fn or(mut self, resolver: impl Resolver) -> Self {
        self.resolvers.push(Box::new(resolver));
        self
    }
}

impl Resolver for ResolverChain {
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        for resolver in &self.resolvers {
            if let Some(id) = resolver.resolve(head)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    fn resolve_ref<'a>(
        &self,
        head: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        for resolver in &self.resolvers {
            if let Some(id) = resolver.resolve_ref(head)? {
                return Ok(Some(id));
            }
        }
        Ok(None)
    }

    fn permits_all_claims<'a>(
        &self,
        head: &RequestHead<'a>,
        permit: &mut dyn FnMut(&TenantIdRef<'a>) -> bool,
    ) -> Result<bool, ResolveError> {
        for resolver in &self.resolvers {
            if !resolver.permits_all_claims(head, permit)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

impl std::fmt::Debug for ResolverChain {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResolverChain")
            .field("len", &self.resolvers.len())
            .finish()
    }
}
