//! Tenant resolution: pure functions from the request head to a tenant id.
//!
//! Sources: [`HeaderResolver`], [`PathResolver`], [`QueryResolver`],
//! [`HostResolver`], [`ExtensionResolver`] (a value an authentication layer
//! put in the request extensions) and [`DefaultResolver`]. A
//! [`ResolverChain`] tries them in priority order; the first hit wins. A
//! source that carries a malformed value stops the chain with a
//! [`ResolveError`] (rendered as 400) instead of falling through.
//!
//! **Security:** a header, path, query or host value is chosen by the client:
//! with those sources alone any client can claim any tenant. Bind the tenant
//! to the authenticated principal with [`AllowedTenants`] and
//! [`TenancyLayer::bind_to_principal`](crate::TenancyLayer::bind_to_principal),
//! or resolve from the principal itself with [`ExtensionResolver`].

mod bind;
mod chain;
mod sources;

use http::{Extensions, HeaderMap, Method, Request, Uri};

pub use bind::AllowedTenants;
pub use chain::ResolverChain;
pub use sources::{
    DefaultResolver, ExtensionResolver, HeaderResolver, HostResolver, PathResolver, QueryResolver,
};

use crate::tenant::{InvalidTenantId, TenantId, TenantIdRef};

/// The parts of a request a resolver may read. Built for free from any
/// `http::Request<B>` with [`RequestHead::of`].
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// The method.
    pub method: &'a Method,
    /// The URI (path and query; authority for HTTP/2).
    pub uri: &'a Uri,
    /// The headers.
    pub headers: &'a HeaderMap,
    /// The extensions (where authentication layers put the principal).
    pub extensions: &'a Extensions,
}

impl<'a> RequestHead<'a> {
    /// Borrows the head of `request`.
    pub fn of<B>(request: &'a Request<B>) -> Self {
        Self {
            method: request.method(),
            uri: request.uri(),
            headers: request.headers(),
            extensions: request.extensions(),
        }
    }
}

/// Finds the tenant id of a request, without I/O.
///
/// `Ok(None)` means "this source has nothing to say" and the chain goes on;
/// `Err` means the source carried a malformed value (400).
///
/// Implement [`resolve`](Self::resolve). The
/// [`TenancyLayer`](crate::TenancyLayer) calls
/// [`resolve_ref`](Self::resolve_ref), whose default calls `resolve`; the
/// built-in sources override it to validate the id in place, borrowed from
/// the request, so that a request whose tenant is found costs no allocation
/// for its id. Override it too when your source can borrow.
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::{HeaderResolver, RequestHead, Resolver};
///
/// let req = Request::builder().header("x-tenant-id", "acme").body(()).unwrap();
/// let id = HeaderResolver::new("x-tenant-id").resolve(&RequestHead::of(&req)).unwrap();
/// assert_eq!(id.unwrap().as_str(), "acme");
/// ```
///
/// A source of its own, borrowing from the request:
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::{RequestHead, ResolveError, Resolver};
/// use tower_tenancy::{TenantId, TenantIdRef, TenantIdRules};
///
/// /// The first label of the `x-route` header: `acme.eu-west` → `acme`.
/// struct RouteLabel;
///
/// impl Resolver for RouteLabel {
///     fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
///         Ok(self.resolve_ref(head)?.map(TenantIdRef::into_owned))
///     }
///
///     fn resolve_ref<'a>(&self, head: &RequestHead<'a>) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
///         let headers: &'a http::HeaderMap = head.headers;
///         let Some(label) = headers
///             .get("x-route")
///             .and_then(|v| v.to_str().ok())
///             .and_then(|v| v.split('.').next())
///         else {
///             return Ok(None);
///         };
///         // Not a valid id: nothing from this source.
///         Ok(TenantIdRules::default().validate(label).ok())
///     }
/// }
///
/// let req = Request::builder().header("x-route", "acme.eu-west").body(()).unwrap();
/// assert_eq!(RouteLabel.resolve_ref(&RequestHead::of(&req)).unwrap().unwrap().as_str(), "acme");
/// ```
pub trait Resolver: Send + Sync + 'static {
    /// Resolves the tenant of `head`.
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError>;

    /// Resolves the tenant of `head`, borrowing the id from the request
    /// where the source can. Must agree with [`resolve`](Self::resolve);
    /// the default calls it.
    fn resolve_ref<'a>(
        &self,
        head: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        self.resolve(head).map(|id| id.map(TenantIdRef::from))
    }

    /// Whether `permit` accepts every tenant the request itself names through
    /// this resolver, in priority order, stopping at the first refusal. A
    /// single source names at most one (the default asks
    /// [`resolve_ref`](Self::resolve_ref)); a [`ResolverChain`] asks all of
    /// its resolvers, not only up to the first hit, so that
    /// [`bind_to_principal`](crate::TenancyLayer::bind_to_principal) also
    /// sees a tenant named by a source of lower priority. A
    /// [`DefaultResolver`] names nothing: its tenant is not the client's
    /// claim. A malformed value is an error.
    ///
    /// ```
    /// use http::Request;
    /// use tower_tenancy::resolve::*;
    ///
    /// let chain = ResolverChain::new()
    ///     .or(HeaderResolver::new("x-tenant-id"))
    ///     .or(QueryResolver::new("tenant"))
    ///     .or(DefaultResolver::new("public".parse().unwrap()));
    /// let req = Request::get("/?tenant=globex").header("x-tenant-id", "acme").body(()).unwrap();
    /// let head = RequestHead::of(&req);
    /// // The header wins, but the query names globex too.
    /// assert_eq!(chain.resolve(&head).unwrap().unwrap().as_str(), "acme");
    /// assert!(!chain.permits_all_claims(&head, &mut |id| id.as_str() == "acme").unwrap());
    /// assert!(chain.permits_all_claims(&head, &mut |id| id.as_str() != "public").unwrap());
    /// ```
    fn permits_all_claims<'a>(
        &self,
        head: &RequestHead<'a>,
        permit: &mut dyn FnMut(&TenantIdRef<'a>) -> bool,
    ) -> Result<bool, ResolveError> {
        Ok(self.resolve_ref(head)?.is_none_or(|id| permit(&id)))
    }
}

impl<R: Resolver + ?Sized> Resolver for Box<R> {
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        (**self).resolve(head)
    }
    fn resolve_ref<'a>(
        &self,
        head: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        (**self).resolve_ref(head)
    }
    fn permits_all_claims<'a>(
        &self,
        head: &RequestHead<'a>,
        permit: &mut dyn FnMut(&TenantIdRef<'a>) -> bool,
    ) -> Result<bool, ResolveError> {
        (**self).permits_all_claims(head, permit)
    }
}

impl<R: Resolver + ?Sized> Resolver for std::sync::Arc<R> {
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        (**self).resolve(head)
    }
    fn resolve_ref<'a>(
        &self,
        head: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        (**self).resolve_ref(head)
    }
    fn permits_all_claims<'a>(
        &self,
        head: &RequestHead<'a>,
        permit: &mut dyn FnMut(&TenantIdRef<'a>) -> bool,
    ) -> Result<bool, ResolveError> {
        (**self).permits_all_claims(head, permit)
    }
}

/// Why a source's value was refused. The offending input is never echoed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{source_name}: {reason}")]
pub struct ResolveError {
    /// The source, e.g. `header x-tenant-id`, `path segment 1`, `query tenant`, `host`.
    pub source_name: String,
    /// What is wrong.
    pub reason: ResolveErrorReason,
}

impl ResolveError {
    pub(crate) fn new(source_name: impl Into<String>, reason: ResolveErrorReason) -> Self {
        Self {
            source_name: source_name.into(),
            reason,
        }
    }
}

/// What is wrong with a source's value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ResolveErrorReason {
    /// The decoded value is not a valid tenant id.
    #[error(transparent)]
    Invalid(#[from] InvalidTenantId),
    /// The source occurs more than once (duplicated header or query parameter).
    #[error("given more than once")]
    Ambiguous,
    /// Percent-encoding or UTF-8 is broken.
    #[error("bad encoding")]
    BadEncoding,
}
