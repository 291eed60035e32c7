use std::borrow::Cow;

use http::header::{HeaderName, HOST};
use http::Extensions;
use percent_encoding::percent_decode_str;

use super::{RequestHead, ResolveError, ResolveErrorReason, Resolver};
use crate::tenant::{InvalidTenantId, TenantId, TenantIdRef, TenantIdRules};

/// Reads the tenant from a header, e.g. `X-Tenant-ID`.
///
/// Absent header: no tenant from this source. Present more than once, empty,
/// not ASCII or not a valid id: a 400.
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::{HeaderResolver, RequestHead, Resolver};
///
/// let r = HeaderResolver::new("x-tenant-id");
/// let dup = Request::builder().header("x-tenant-id", "a").header("x-tenant-id", "b").body(()).unwrap();
/// assert!(r.resolve(&RequestHead::of(&dup)).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct HeaderResolver {
    name: HeaderName,
    rules: TenantIdRules,
    source: String,
}

impl HeaderResolver {
    /// Reads header `name`.
    ///
    /// # Panics
    ///
    /// When `name` is not a valid header name (a programming error, not input).
    pub fn new(name: &str) -> Self {
        let name = HeaderName::try_from(name).expect("HeaderResolver::new: invalid header name");
        Self {
            source: format!("header {name}"),
            name,
            rules: TenantIdRules::default(),
        }
    }

    /// Validates with `rules` instead of the defaults.
    #[must_use]
    pub fn rules(mut self, rules: TenantIdRules) -> Self {
        self.rules = rules;
        self
    }
}

impl Resolver for HeaderResolver {
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        owned(self.resolve_ref(head))
    }

    fn resolve_ref<'a>(
        &self,
        head: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        let headers: &'a http::HeaderMap = head.headers;
        let mut values = headers.get_all(&self.name).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ResolveError::new(
                &self.source,
                ResolveErrorReason::Ambiguous,
            ));
        }
        // A short, visible-ASCII value (checked by `to_str`) is the usual
        // case; anything else goes to `validate_bytes`, which refuses it
        // with the precise reason (and before scanning when too long).
        let text = (value.len() <= self.rules.max_bytes())
            .then(|| value.to_str().ok())
            .flatten();
        match text {
            Some(text) => self.rules.validate(text),
            None => self.rules.validate_bytes(value.as_bytes()),
        }
        .map(Some)
        .map_err(|e| ResolveError::new(&self.source, e.into()))
    }
}

/// `resolve` in terms of `resolve_ref`.
fn owned(
    resolved: Result<Option<TenantIdRef<'_>>, ResolveError>,
) -> Result<Option<TenantId>, ResolveError> {
    resolved.map(|id| id.map(TenantIdRef::into_owned))
}

/// Validates a decoded value: borrowed from the request when decoding
/// changed nothing, owned otherwise.
fn validate_decoded<'a>(
    rules: &TenantIdRules,
    decoded: Cow<'a, str>,
) -> Result<TenantIdRef<'a>, InvalidTenantId> {
    match decoded {
        Cow::Borrowed(s) => rules.validate(s),
        Cow::Owned(s) => rules.parse(&s).map(TenantIdRef::from),
    }
}

#[derive(Debug, Clone)]
enum Segment {
    Index(usize),
    After(String),
}

/// Reads the tenant from a path segment, by position or after a literal
/// segment, percent-decoded.
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::{PathResolver, RequestHead, Resolver};
///
/// let req = Request::get("/v1/tenants/acme%2Dcorp/jobs").body(()).unwrap();
/// let head = RequestHead::of(&req);
/// assert_eq!(PathResolver::after("tenants").resolve(&head).unwrap().unwrap().as_str(), "acme-corp");
/// assert_eq!(PathResolver::segment(2).resolve(&head).unwrap().unwrap().as_str(), "acme-corp");
/// assert_eq!(PathResolver::segment(9).resolve(&head).unwrap(), None);
///
/// let req = Request::get("/v1/tenants/%2E%2E/jobs").body(()).unwrap();
/// assert!(PathResolver::after("tenants").resolve(&RequestHead::of(&req)).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct PathResolver {
    segment: Segment,
    rules: TenantIdRules,
    source: String,
}

impl PathResolver {
    /// The segment at `index` (0 is the first segment after the leading `/`).
    pub fn segment(index: usize) -> Self {
        Self {
            segment: Segment::Index(index),
            rules: TenantIdRules::default(),
            source: format!("path segment {index}"),
        }
    }

    /// The segment right after the first segment equal to `literal`
    /// (`/tenants/{id}/…` with `after("tenants")`).
    pub fn after(literal: &str) -> Self {
        Self {
            source: format!("path segment after {literal:?}"),
            segment: Segment::After(literal.to_owned()),
            rules: TenantIdRules::default(),
        }
    }

    /// Validates with `rules` instead of the defaults.
    #[must_use]
    pub fn rules(mut self, rules: TenantIdRules) -> Self {
        self.rules = rules;
        self
    }
}

impl Resolver for PathResolver {
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        owned(self.resolve_ref(head))
    }

    fn resolve_ref<'a>(
        &self,
        head: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        let uri: &'a http::Uri = head.uri;
        let path = uri.path();
        let mut segments = path.strip_prefix('/').unwrap_or(path).split('/');
        let raw = match &self.segment {
            Segment::Index(i) => segments.nth(*i),
            Segment::After(literal) => {
                let mut found = None;
                while let Some(s) = segments.next() {
                    if s == literal {
                        found = segments.next();
                        break;
                    }
                }
                found
            }
        };
        let Some(raw) = raw else { return Ok(None) };
        // A decoded byte takes at most three input bytes (`%XX`): a longer
        // segment cannot be a valid id. Refuse it before decoding, so the work
        // and allocation stay bounded whatever the path's size.
        let max = self.rules.max_bytes();
        if raw.len() > max.saturating_mul(3) {
            return Err(ResolveError::new(
                &self.source,
                InvalidTenantId::TooLong { max }.into(),
            ));
        }
        let decoded = percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| ResolveError::new(&self.source, ResolveErrorReason::BadEncoding))?;
        validate_decoded(&self.rules, decoded)
            .map(Some)
            .map_err(|e| ResolveError::new(&self.source, e.into()))
    }
}

/// Reads the tenant from a query parameter (`?tenant=acme`), form-decoded.
/// Given twice: 400.
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::{QueryResolver, RequestHead, Resolver};
///
/// let r = QueryResolver::new("tenant");
/// let req = Request::get("/x?a=1&tenant=acme").body(()).unwrap();
/// assert_eq!(r.resolve(&RequestHead::of(&req)).unwrap().unwrap().as_str(), "acme");
/// let req = Request::get("/x?tenant=a&tenant=b").body(()).unwrap();
/// assert!(r.resolve(&RequestHead::of(&req)).is_err());
/// ```
#[derive(Debug, Clone)]
pub struct QueryResolver {
    name: String,
    rules: TenantIdRules,
    source: String,
}

impl QueryResolver {
    /// Reads query parameter `name`.
    pub fn new(name: &str) -> Self {
        Self {
            source: format!("query parameter {name:?}"),
            name: name.to_owned(),
            rules: TenantIdRules::default(),
        }
    }

    /// Validates with `rules` instead of the defaults.
    #[must_use]
    pub fn rules(mut self, rules: TenantIdRules) -> Self {
        self.rules = rules;
        self
    }
}

impl Resolver for QueryResolver {
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        owned(self.resolve_ref(head))
    }

    fn resolve_ref<'a>(
        &self,
        head: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        let uri: &'a http::Uri = head.uri;
        let Some(query) = uri.query() else {
            return Ok(None);
        };
        // Same pairs and decoding as `form_urlencoded::parse`, but only what
        // can matter is decoded: a key whose raw form is too long to decode to
        // `name`, or a value too long to decode to a valid id, is never
        // decoded (a decoded byte takes at most three input bytes). Work and
        // allocation stay bounded whatever the query's size.
        let max = self.rules.max_bytes();
        let key_bound = self.name.len().saturating_mul(3);
        let value_bound = max.saturating_mul(3);
        // Some(None): the parameter is present with a value too long to be an id.
        let mut found: Option<Option<Cow<'a, str>>> = None;
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (raw_key, raw_value) = pair.split_once('=').unwrap_or((pair, ""));
            if raw_key.len() > key_bound || form_decode(raw_key) != self.name.as_str() {
                continue;
            }
            if found.is_some() {
                return Err(ResolveError::new(
                    &self.source,
                    ResolveErrorReason::Ambiguous,
                ));
            }
            found = Some((raw_value.len() <= value_bound).then(|| {
                form_urlencoded::parse(pair.as_bytes())
                    .next()
                    .map(|(_, value)| value)
                    .unwrap_or_default()
            }));
        }
        match found {
            None => Ok(None),
            Some(None) => Err(ResolveError::new(
                &self.source,
                InvalidTenantId::TooLong { max }.into(),
            )),
            Some(Some(value)) => validate_decoded(&self.rules, value)
                .map(Some)
                .map_err(|e| ResolveError::new(&self.source, e.into())),
        }
    }
}

/// Form-decodes one key (no `&`, no `=`) exactly as `form_urlencoded::parse` does.
fn form_decode(raw: &str) -> Cow<'_, str> {
    form_urlencoded::parse(raw.as_bytes())
        .next()
        .map(|(key, _)| key)
        .unwrap_or_default()
}

/// Reads the tenant from the subdomain of a base domain:
/// `acme.example.com` → `acme` with `subdomain_of("example.com")`.
///
/// The host comes from the URI authority (HTTP/2) or the `Host` header; it is
/// lowercased and its port and trailing dot removed. The bare base domain and
/// other domains give no tenant; a nested subdomain (`a.b.example.com`) or an
/// invalid label is a 400.
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::{HostResolver, RequestHead, Resolver};
///
/// let r = HostResolver::subdomain_of("example.com");
/// let req = Request::get("/").header("host", "ACME.example.com:8080").body(()).unwrap();
/// assert_eq!(r.resolve(&RequestHead::of(&req)).unwrap().unwrap().as_str(), "acme");
/// let req = Request::get("/").header("host", "example.com").body(()).unwrap();
/// assert_eq!(r.resolve(&RequestHead::of(&req)).unwrap(), None);
/// ```
#[derive(Debug, Clone)]
pub struct HostResolver {
    suffix: String,
    rules: TenantIdRules,
}

impl HostResolver {
    /// Tenants are the labels directly below `domain`.
    pub fn subdomain_of(domain: &str) -> Self {
        let domain = domain.trim_matches('.').to_ascii_lowercase();
        Self {
            suffix: format!(".{domain}"),
            rules: TenantIdRules::default().lowercase(true),
        }
    }

    /// Validates with `rules` instead of the defaults (which lowercase).
    #[must_use]
    pub fn rules(mut self, rules: TenantIdRules) -> Self {
        self.rules = rules;
        self
    }
}

const HOST_SOURCE: &str = "host";

impl Resolver for HostResolver {
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        owned(self.resolve_ref(head))
    }

    fn resolve_ref<'a>(
        &self,
        head: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        let err = |reason| ResolveError::new(HOST_SOURCE, reason);
        let (uri, headers): (&'a http::Uri, &'a http::HeaderMap) = (head.uri, head.headers);
        let host: &'a str = match uri.host() {
            Some(h) => h,
            None => {
                let mut values = headers.get_all(HOST).iter();
                let Some(v) = values.next() else {
                    return Ok(None);
                };
                if values.next().is_some() {
                    return Err(err(ResolveErrorReason::Ambiguous));
                }
                let v = v
                    .to_str()
                    .map_err(|_| err(ResolveErrorReason::BadEncoding))?;
                // Strip the port; IPv6 literals ("[::1]:80") never match a domain.
                match v.rsplit_once(':') {
                    Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
                    _ => v,
                }
            }
        };
        let host = host.strip_suffix('.').unwrap_or(host);
        if host.len() <= self.suffix.len() || !host.is_char_boundary(host.len() - self.suffix.len())
        {
            return Ok(None);
        }
        let (label, suffix) = host.split_at(host.len() - self.suffix.len());
        if !suffix.eq_ignore_ascii_case(&self.suffix) {
            return Ok(None);
        }
        if label.contains('.') {
            return Err(err(InvalidTenantId::BadCharacter {
                position: label.find('.').unwrap_or(0),
            }
            .into()));
        }
        self.rules
            .validate(label)
            .map(Some)
            .map_err(|e| err(e.into()))
    }
}

type ExtensionFn = dyn Fn(&Extensions) -> Option<TenantId> + Send + Sync;

/// Reads the tenant from a value an authentication layer put in the request
/// extensions (a verified token's claims, an API key's owner, …). This is
/// the only source a client cannot choose freely.
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::{ExtensionResolver, RequestHead, Resolver};
/// use tower_tenancy::TenantId;
///
/// #[derive(Clone)]
/// struct Claims { org: TenantId }
///
/// let r = ExtensionResolver::new(|c: &Claims| Some(c.org.clone()));
/// let mut req = Request::new(());
/// req.extensions_mut().insert(Claims { org: "acme".parse().unwrap() });
/// assert_eq!(r.resolve(&RequestHead::of(&req)).unwrap().unwrap().as_str(), "acme");
/// ```
pub struct ExtensionResolver {
    read: Box<ExtensionFn>,
}

impl ExtensionResolver {
    /// Reads extension `T` with `f`; no `T` in the request means no tenant.
    pub fn new<T, F>(f: F) -> Self
    where
        T: Clone + Send + Sync + 'static,
        F: Fn(&T) -> Option<TenantId> + Send + Sync + 'static,
    {
        Self {
            read: Box::new(move |ext| ext.get::<T>().and_then(&f)),
        }
    }
}

impl Resolver for ExtensionResolver {
    fn resolve(&self, head: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        Ok((self.read)(head.extensions))
    }
}

impl std::fmt::Debug for ExtensionResolver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ExtensionResolver")
    }
}

/// Always resolves to the same tenant; put it last in a chain.
///
/// ```
/// use http::Request;
/// use tower_tenancy::resolve::{DefaultResolver, RequestHead, Resolver};
///
/// let r = DefaultResolver::new("public".parse().unwrap());
/// assert_eq!(r.resolve(&RequestHead::of(&Request::new(()))).unwrap().unwrap().as_str(), "public");
/// ```
#[derive(Debug, Clone)]
pub struct DefaultResolver(TenantId);

impl DefaultResolver {
    /// Resolves every request to `id`.
    pub fn new(id: TenantId) -> Self {
        Self(id)
    }
}

impl Resolver for DefaultResolver {
    fn resolve(&self, _: &RequestHead<'_>) -> Result<Option<TenantId>, ResolveError> {
        Ok(Some(self.0.clone()))
    }

    fn resolve_ref<'a>(
        &self,
        _: &RequestHead<'a>,
    ) -> Result<Option<TenantIdRef<'a>>, ResolveError> {
        Ok(Some(TenantIdRef::from(self.0.clone())))
    }

    /// The default tenant is not a claim of the client.
    fn permits_all_claims<'a>(
        &self,
        _: &RequestHead<'a>,
        _: &mut dyn FnMut(&TenantIdRef<'a>) -> bool,
    ) -> Result<bool, ResolveError> {
        Ok(true)
    }
}
