//! Spoofing table (issue 8): a principal of tenant `acme` tries to act for
//! tenant `globex` through every source and encoding. The stack is an auth
//! stand-in that inserts `AllowedTenants::only([acme])`, then a
//! `TenancyLayer` bound to the principal with the chain
//! header → path after "tenants" → query "tenant" → host subdomain of
//! example.com, over a directory with `acme` and `globex` (both active).
//!
//! Every row must either reach the handler as `acme` or be refused (403, or
//! 400 for malformed or missing input); the handler counts the tenants it
//! sees, and must never see another tenant than `acme`.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, Uri};
use http_body_util::BodyExt;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_tenancy::resolve::{
    HeaderResolver, HostResolver, PathResolver, QueryResolver, ResolverChain,
};
use tower_tenancy::{AllowedTenants, CurrentTenant, MemoryDirectory, Plan, TenancyLayer, Tenant};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Expect {
    /// Reaches the handler, as acme.
    Acme,
    /// Refused before the handler: 403 tenant_not_permitted.
    NotPermitted,
    /// Refused before the handler: 400 malformed_tenant_id.
    Malformed,
    /// Refused before the handler: 400 tenant_required (no source matched).
    Required,
}

struct Row {
    what: &'static str,
    uri: String,
    headers: Vec<(&'static str, Vec<u8>)>,
    expect: Expect,
}

fn row(what: &'static str, uri: &str, headers: &[(&'static str, &[u8])], expect: Expect) -> Row {
    Row {
        what,
        uri: uri.to_owned(),
        headers: headers.iter().map(|(n, v)| (*n, v.to_vec())).collect(),
        expect,
    }
}

const H: &str = "x-tenant-id";
const HOST: &str = "host";

fn table() -> Vec<Row> {
    use Expect::*;
    vec![
        // --- acme, the principal's own tenant, passes from every source
        row("header acme", "/", &[(H, b"acme")], Acme),
        row("path acme", "/tenants/acme/jobs", &[], Acme),
        row("query acme", "/jobs?tenant=acme", &[], Acme),
        row("host acme", "/jobs", &[(HOST, b"acme.example.com")], Acme),
        row(
            "host ACME (hosts are case-insensitive)",
            "/",
            &[(HOST, b"ACME.Example.COM.:443")],
            Acme,
        ),
        row("path %61cme", "/tenants/%61cme", &[], Acme),
        row("query %61%63%6d%65", "/?tenant=%61%63%6d%65", &[], Acme),
        row(
            "uri authority acme",
            "http://acme.example.com/jobs",
            &[],
            Acme,
        ),
        // --- globex, plainly, from every source
        row("header globex", "/", &[(H, b"globex")], NotPermitted),
        row(
            "header name in capitals",
            "/",
            &[("X-Tenant-ID", b"globex")],
            NotPermitted,
        ),
        row("path globex", "/tenants/globex/jobs", &[], NotPermitted),
        row("query globex", "/jobs?tenant=globex", &[], NotPermitted),
        row(
            "host globex",
            "/",
            &[(HOST, b"globex.example.com")],
            NotPermitted,
        ),
        row(
            "host globex with port",
            "/",
            &[(HOST, b"globex.example.com:8443")],
            NotPermitted,
        ),
        row(
            "host globex trailing dot",
            "/",
            &[(HOST, b"globex.example.com.")],
            NotPermitted,
        ),
        row(
            "uri authority globex",
            "http://globex.example.com/",
            &[],
            NotPermitted,
        ),
        row(
            "uri authority with userinfo",
            "http://acme@globex.example.com/",
            &[],
            NotPermitted,
        ),
        // --- case variants: a different id, never acme's, never globex's data
        row("header GLOBEX", "/", &[(H, b"GLOBEX")], NotPermitted),
        row("header Globex", "/", &[(H, b"Globex")], NotPermitted),
        row("path GLOBEX", "/tenants/GLOBEX", &[], NotPermitted),
        row("path GloBex", "/tenants/GloBex", &[], NotPermitted),
        row("query Globex", "/?tenant=Globex", &[], NotPermitted),
        row(
            "host GLOBEX (lowercased to globex)",
            "/",
            &[(HOST, b"GLOBEX.example.com")],
            NotPermitted,
        ),
        row(
            "header ACME (ids are case-sensitive)",
            "/",
            &[(H, b"ACME")],
            NotPermitted,
        ),
        row("path Acme", "/tenants/Acme", &[], NotPermitted),
        // --- encodings
        row("path %67lobex", "/tenants/%67lobex", &[], NotPermitted),
        row(
            "path fully encoded globex",
            "/tenants/%67%6C%6F%62%65%78",
            &[],
            NotPermitted,
        ),
        row("query %67lobex", "/?tenant=%67lobex", &[], NotPermitted),
        row("query key %74enant", "/?%74enant=globex", &[], NotPermitted),
        row(
            "header %67lobex (headers are not decoded)",
            "/",
            &[(H, b"%67lobex")],
            Malformed,
        ),
        row(
            "host %67lobex",
            "/",
            &[(HOST, b"%67lobex.example.com")],
            Malformed,
        ),
        row(
            "path double-encoded %2567lobex",
            "/tenants/%2567lobex",
            &[],
            Malformed,
        ),
        row(
            "path overlong UTF-8",
            "/tenants/%c1%a7lobex",
            &[],
            Malformed,
        ),
        row(
            "path NUL truncation acme%00globex",
            "/tenants/acme%00globex",
            &[],
            Malformed,
        ),
        row(
            "path NUL after globex",
            "/tenants/globex%00",
            &[],
            Malformed,
        ),
        row(
            "query NUL after globex",
            "/?tenant=globex%00",
            &[],
            Malformed,
        ),
        row(
            "path encoded slash acme/../globex",
            "/tenants/acme%2F..%2Fglobex",
            &[],
            Malformed,
        ),
        row(
            "path encoded slash globex/../acme",
            "/tenants/globex%2F..%2Facme",
            &[],
            Malformed,
        ),
        row("path Cyrillic o", "/tenants/gl%D0%BEbex", &[], Malformed),
        row(
            "path fullwidth g",
            "/tenants/%EF%BD%87lobex",
            &[],
            Malformed,
        ),
        row(
            "header Cyrillic o",
            "/",
            &[(H, "glоbex".as_bytes())],
            Malformed,
        ),
        row(
            "header latin-1 bytes",
            "/",
            &[(H, b"globex\xa0")],
            Malformed,
        ),
        // --- whitespace and trailing dots
        row("header leading space", "/", &[(H, b" globex")], Malformed),
        row("header trailing space", "/", &[(H, b"globex ")], Malformed),
        row("header trailing tab", "/", &[(H, b"globex\t")], Malformed),
        row("query trailing +", "/?tenant=globex+", &[], Malformed),
        row("query leading +", "/?tenant=+globex", &[], Malformed),
        row("query %20", "/?tenant=globex%20", &[], Malformed),
        row("header trailing dot", "/", &[(H, b"globex.")], NotPermitted),
        row("path trailing dot", "/tenants/globex.", &[], NotPermitted),
        row(
            "header acme. is not acme",
            "/",
            &[(H, b"acme.")],
            NotPermitted,
        ),
        row(
            "header acme, host globex with two trailing dots",
            "/",
            &[(H, b"acme"), (HOST, b"globex.example.com..")],
            Acme,
        ),
        // --- duplicates and lists
        row(
            "header acme then globex",
            "/",
            &[(H, b"acme"), (H, b"globex")],
            Malformed,
        ),
        row(
            "header globex then acme",
            "/",
            &[(H, b"globex"), (H, b"acme")],
            Malformed,
        ),
        row("header comma list", "/", &[(H, b"acme,globex")], Malformed),
        row("header space list", "/", &[(H, b"acme globex")], Malformed),
        row(
            "query acme then globex",
            "/?tenant=acme&tenant=globex",
            &[],
            Malformed,
        ),
        row(
            "query globex then acme",
            "/?tenant=globex&tenant=acme",
            &[],
            Malformed,
        ),
        row(
            "query acme then encoded-key globex",
            "/?tenant=acme&%74enant=globex",
            &[],
            Malformed,
        ),
        row(
            "query semicolon",
            "/?tenant=acme;tenant=globex",
            &[],
            Malformed,
        ),
        row(
            "query smuggled &",
            "/?tenant=acme%26tenant%3Dglobex",
            &[],
            Malformed,
        ),
        row(
            "host acme then globex",
            "/",
            &[(HOST, b"acme.example.com"), (HOST, b"globex.example.com")],
            Malformed,
        ),
        row(
            "host globex then acme",
            "/",
            &[(HOST, b"globex.example.com"), (HOST, b"acme.example.com")],
            Malformed,
        ),
        // --- mixed sources: every tenant named must be permitted, not only
        // the higher-priority one that the chain resolves
        row(
            "header acme, path globex",
            "/tenants/globex",
            &[(H, b"acme")],
            NotPermitted,
        ),
        row(
            "header globex, path acme",
            "/tenants/acme",
            &[(H, b"globex")],
            NotPermitted,
        ),
        row(
            "header acme, query globex",
            "/?tenant=globex",
            &[(H, b"acme")],
            NotPermitted,
        ),
        row(
            "header globex, query acme",
            "/?tenant=acme",
            &[(H, b"globex")],
            NotPermitted,
        ),
        row(
            "header acme, host globex",
            "/",
            &[(H, b"acme"), (HOST, b"globex.example.com")],
            NotPermitted,
        ),
        row(
            "header globex, host acme",
            "/",
            &[(H, b"globex"), (HOST, b"acme.example.com")],
            NotPermitted,
        ),
        row(
            "path acme, query globex",
            "/tenants/acme?tenant=globex",
            &[],
            NotPermitted,
        ),
        row(
            "path globex, query acme",
            "/tenants/globex?tenant=acme",
            &[],
            NotPermitted,
        ),
        row(
            "path acme, host globex",
            "/tenants/acme",
            &[(HOST, b"globex.example.com")],
            NotPermitted,
        ),
        row(
            "path globex, host acme",
            "/tenants/globex",
            &[(HOST, b"acme.example.com")],
            NotPermitted,
        ),
        row(
            "query acme, host globex",
            "/?tenant=acme",
            &[(HOST, b"globex.example.com")],
            NotPermitted,
        ),
        row(
            "query globex, host acme",
            "/?tenant=globex",
            &[(HOST, b"acme.example.com")],
            NotPermitted,
        ),
        row(
            "uri authority acme, Host header globex",
            "http://acme.example.com/",
            &[(HOST, b"globex.example.com")],
            Acme,
        ),
        row(
            "uri authority globex, Host header acme",
            "http://globex.example.com/",
            &[(HOST, b"acme.example.com")],
            NotPermitted,
        ),
        row(
            "uri authority without tenant, Host header globex",
            "http://example.com/",
            &[(HOST, b"globex.example.com")],
            Required,
        ),
        // a malformed higher source never falls through to a lower one
        row(
            "header malformed, path acme",
            "/tenants/acme",
            &[(H, b"..")],
            Malformed,
        ),
        row(
            "header empty, query acme",
            "/?tenant=acme",
            &[(H, b"")],
            Malformed,
        ),
        row(
            "path malformed, query acme",
            "/tenants/%2e%2e?tenant=acme",
            &[],
            Malformed,
        ),
        row(
            "query duplicated, host acme",
            "/?tenant=a&tenant=b",
            &[(HOST, b"acme.example.com")],
            Malformed,
        ),
        // --- path tricks
        row(
            "path second tenants segment",
            "/tenants/globex/tenants/acme",
            &[],
            NotPermitted,
        ),
        row(
            "path acme then globex",
            "/tenants/acme/tenants/globex",
            &[],
            Acme,
        ),
        row(
            "path dot-dot after acme",
            "/tenants/acme/../globex",
            &[],
            Acme,
        ),
        row(
            "path dot-dot before globex",
            "/tenants/../tenants/globex",
            &[],
            Malformed,
        ),
        row(
            "path encoded dot-dot",
            "/tenants/%2e%2e/tenants/globex",
            &[],
            Malformed,
        ),
        row("path literal in capitals", "/Tenants/globex", &[], Required),
        row("path literal encoded", "/%74enants/globex", &[], Required),
        row("query key in capitals", "/?TENANT=globex", &[], Required),
        // --- host tricks
        row(
            "host nested acme.globex",
            "/",
            &[(HOST, b"acme.globex.example.com")],
            Malformed,
        ),
        row(
            "host nested globex.acme",
            "/",
            &[(HOST, b"globex.acme.example.com")],
            Malformed,
        ),
        row(
            "host userinfo",
            "/",
            &[(HOST, b"acme.example.com@globex.example.com")],
            Malformed,
        ),
        row(
            "host other domain",
            "/",
            &[(HOST, b"globex.example.org")],
            Required,
        ),
        row(
            "host suffix lookalike",
            "/",
            &[(HOST, b"globexexample.com")],
            Required,
        ),
        row(
            "host acme label under evil domain",
            "/",
            &[(HOST, b"globex.example.com.evil.org")],
            Required,
        ),
    ]
}

type Seen = Arc<Mutex<BTreeMap<String, usize>>>;

fn stack(
    seen: Seen,
) -> impl tower::Service<
    Request<()>,
    Response = Response<tower_tenancy::body::TenancyBody<String>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let free = Arc::new(Plan::new("free"));
    let directory = MemoryDirectory::new();
    directory.insert(Tenant::new("acme".parse().unwrap(), free.clone()));
    directory.insert(Tenant::new("globex".parse().unwrap(), free));
    let chain = ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
        .or(HostResolver::subdomain_of("example.com"));
    ServiceBuilder::new()
        // auth stand-in: the principal belongs to acme
        .map_request(|mut req: Request<()>| {
            req.extensions_mut()
                .insert(AllowedTenants::only(["acme".parse().unwrap()]));
            req
        })
        .layer(TenancyLayer::new(chain, directory).bind_to_principal())
        .service(service_fn(move |req: Request<()>| {
            let seen = seen.clone();
            async move {
                let tenant = req
                    .extensions()
                    .get::<CurrentTenant>()
                    .map(|t| t.id().to_string())
                    .unwrap_or_else(|| "(none)".to_owned());
                *seen.lock().unwrap().entry(tenant.clone()).or_default() += 1;
                Ok::<_, Infallible>(Response::new(tenant))
            }
        }))
}

#[tokio::test]
async fn a_principal_of_acme_never_acts_for_another_tenant() {
    let rows = table();
    assert!(rows.len() >= 50, "issue 8 asks for at least 50 variants");
    let seen: Seen = Arc::default();
    let svc = stack(seen.clone());
    let mut failures = Vec::new();
    let mut passed = 0;
    for r in &rows {
        let mut req = Request::new(());
        *req.uri_mut() = Uri::try_from(r.uri.as_str()).expect(r.what);
        for (name, value) in &r.headers {
            req.headers_mut().append(
                HeaderName::try_from(*name).unwrap(),
                HeaderValue::from_bytes(value).expect(r.what),
            );
        }
        let before = seen.lock().unwrap().clone();
        let res = svc.clone().oneshot(req).await.unwrap();
        let status = res.status().as_u16();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let after = seen.lock().unwrap().clone();
        let code = serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|j| j["code"].as_str().map(str::to_owned));
        let handler_ran = before != after;
        let ok = match r.expect {
            Expect::Acme => {
                passed += 1;
                status == 200
                    && body == "acme"
                    && after.get("acme") == Some(&(before.get("acme").copied().unwrap_or(0) + 1))
            }
            Expect::NotPermitted => {
                !handler_ran && status == 403 && code.as_deref() == Some("tenant_not_permitted")
            }
            Expect::Malformed => {
                !handler_ran && status == 400 && code.as_deref() == Some("malformed_tenant_id")
            }
            Expect::Required => {
                !handler_ran && status == 400 && code.as_deref() == Some("tenant_required")
            }
        };
        if !ok {
            failures.push(format!(
                "  {}: want {:?}, got {status} {:?} (handler ran: {handler_ran})",
                r.what,
                r.expect,
                String::from_utf8_lossy(&body)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    let seen = seen.lock().unwrap().clone();
    assert_eq!(
        seen,
        BTreeMap::from([("acme".to_owned(), passed)]),
        "the handler ran only for acme, once per passing row"
    );
    let refused = rows.len() - passed;
    assert!(
        refused >= 50,
        "at least 50 refused spoofing variants, got {refused}"
    );
}

#[tokio::test]
async fn without_a_principal_nothing_passes() {
    // The binding also refuses requests whose auth layer inserted nothing.
    let seen: Seen = Arc::default();
    let free = Arc::new(Plan::new("free"));
    let directory = MemoryDirectory::new();
    directory.insert(Tenant::new("acme".parse().unwrap(), free));
    let svc = ServiceBuilder::new()
        .layer(TenancyLayer::new(HeaderResolver::new("x-tenant-id"), directory).bind_to_principal())
        .service(service_fn({
            let seen = seen.clone();
            move |_req: Request<()>| {
                *seen.lock().unwrap().entry("any".into()).or_default() += 1;
                async { Ok::<_, Infallible>(Response::new(String::new())) }
            }
        }));
    let req = Request::builder()
        .header("x-tenant-id", "acme")
        .body(())
        .unwrap();
    let res = svc.oneshot(req).await.unwrap();
    assert_eq!(res.status(), 403);
    assert!(seen.lock().unwrap().is_empty());
}
