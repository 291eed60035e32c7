//! Hostile input for every resolver, the chain and the `TenancyLayer`.
//!
//! Each table row gives an input and the documented outcome: a tenant
//! (`Id`), nothing from this source (`Nothing`), a refusal with a reason
//! (`Empty`, `TooLong`, `BadChar`, `BadStart`, `Ambiguous`, `BadEncoding`),
//! or `HttpRefuses` when the `http` crate itself will not build such a
//! request (so no server built on `http` can ever hand it to a resolver).

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{HeaderName, HeaderValue};
use http::{Request, Response, StatusCode, Uri};
use http_body_util::BodyExt;
use tower::{service_fn, Layer, ServiceExt};
use tower_tenancy::resolve::{
    DefaultResolver, ExtensionResolver, HeaderResolver, HostResolver, PathResolver, QueryResolver,
    RequestHead, ResolveError, ResolveErrorReason, Resolver, ResolverChain,
};
use tower_tenancy::tenant::InvalidTenantId;
use tower_tenancy::{
    AllowedTenants, CurrentTenant, MemoryDirectory, Plan, TenancyLayer, Tenant, TenantId,
    TenantIdRules, TenantStatus,
};

// ---------------------------------------------------------------------------
// outcomes

#[derive(Debug, Clone, PartialEq, Eq)]
enum Want {
    Id(&'static str),
    Nothing,
    Empty,
    TooLong,
    BadChar,
    BadStart,
    Ambiguous,
    BadEncoding,
    HttpRefuses,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Got {
    Id(String),
    Nothing,
    Empty,
    TooLong,
    BadChar,
    BadStart,
    Ambiguous,
    BadEncoding,
    HttpRefuses,
}

impl Want {
    fn matches(&self, got: &Got) -> bool {
        match (self, got) {
            (Want::Id(a), Got::Id(b)) => a == b,
            (Want::Nothing, Got::Nothing)
            | (Want::Empty, Got::Empty)
            | (Want::TooLong, Got::TooLong)
            | (Want::BadChar, Got::BadChar)
            | (Want::BadStart, Got::BadStart)
            | (Want::Ambiguous, Got::Ambiguous)
            | (Want::BadEncoding, Got::BadEncoding)
            | (Want::HttpRefuses, Got::HttpRefuses) => true,
            _ => false,
        }
    }
}

fn classify(result: Result<Option<TenantId>, ResolveError>) -> Got {
    match result {
        Ok(Some(id)) => Got::Id(id.as_str().to_owned()),
        Ok(None) => Got::Nothing,
        Err(e) => {
            // The error's text never echoes the input: it is short and fixed.
            let text = e.to_string();
            assert!(text.len() < 200, "error text too long: {text}");
            match e.reason {
                ResolveErrorReason::Invalid(InvalidTenantId::Empty) => Got::Empty,
                ResolveErrorReason::Invalid(InvalidTenantId::TooLong { .. }) => Got::TooLong,
                ResolveErrorReason::Invalid(InvalidTenantId::BadCharacter { .. }) => Got::BadChar,
                ResolveErrorReason::Invalid(InvalidTenantId::BadStart) => Got::BadStart,
                ResolveErrorReason::Ambiguous => Got::Ambiguous,
                ResolveErrorReason::BadEncoding => Got::BadEncoding,
                other => panic!("unexpected reason {other:?}"),
            }
        }
    }
}

/// Raw header values, by name.
type Headers<'a> = Vec<(&'a str, Vec<u8>)>;
/// A table row: URI, headers, expected outcome.
type Row<'a, W> = (String, Headers<'a>, W);

/// Builds a request from a URI and raw header values; `None` when `http`
/// refuses the URI or a header value.
fn build(uri: &str, headers: &[(&str, &[u8])]) -> Option<Request<()>> {
    let uri = Uri::try_from(uri).ok()?;
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    for (name, value) in headers {
        let value = HeaderValue::from_bytes(value).ok()?;
        req.headers_mut()
            .append(HeaderName::try_from(*name).unwrap(), value);
    }
    Some(req)
}

fn run(resolver: &dyn Resolver, uri: &str, headers: &[(&str, &[u8])]) -> Got {
    match build(uri, headers) {
        None => Got::HttpRefuses,
        Some(req) => classify(resolver.resolve(&RequestHead::of(&req))),
    }
}

fn check_table(name: &str, resolver: &dyn Resolver, rows: &[Row<'_, Want>]) {
    let mut failures = Vec::new();
    for (uri, headers, want) in rows {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let got = run(resolver, uri, &headers);
        if !want.matches(&got) {
            failures.push(format!(
                "  uri={:?} headers={:?}: want {want:?}, got {got:?}",
                shorten(uri),
                headers
                    .iter()
                    .map(|(n, v)| (n, shorten(&String::from_utf8_lossy(v))))
                    .collect::<Vec<_>>()
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

fn shorten(s: &str) -> String {
    if s.len() > 80 {
        let mut end = 60;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        format!("{}…({} bytes)", &s[..end], s.len())
    } else {
        s.to_owned()
    }
}

const KB10: usize = 10 * 1024;
const KB60: usize = 60 * 1024;
const MB1: usize = 1024 * 1024;

// ---------------------------------------------------------------------------
// header

fn header_rows(values: &[(&[u8], Want)]) -> Vec<Row<'static, Want>> {
    values
        .iter()
        .map(|(v, want)| {
            (
                "/".to_owned(),
                vec![("x-tenant-id", v.to_vec())],
                want.clone(),
            )
        })
        .collect()
}

#[test]
fn header_resolver_hostile_values() {
    let long10k = "a".repeat(KB10);
    let long1m = "a".repeat(MB1);
    let max = "a".repeat(64);
    let over = "a".repeat(65);
    let rows: &[(&[u8], Want)] = &[
        (b"acme", Want::Id("acme")),
        (b"ACME", Want::Id("ACME")),
        (b"Acme-Corp_1.eu", Want::Id("Acme-Corp_1.eu")),
        (
            max.as_bytes(),
            Want::Id(Box::leak(max.clone().into_boxed_str())),
        ),
        (b"", Want::Empty),
        (over.as_bytes(), Want::TooLong),
        (long10k.as_bytes(), Want::TooLong),
        (long1m.as_bytes(), Want::TooLong),
        // control characters: http refuses all but HTAB
        (b"ac\x00me", Want::HttpRefuses),
        (b"ac\x01me", Want::HttpRefuses),
        (b"acme\r\nx-injected: 1", Want::HttpRefuses),
        (b"acme\n", Want::HttpRefuses),
        (b"ac\x7fme", Want::HttpRefuses),
        (b"acme\t", Want::BadChar),
        (b"\tacme", Want::BadChar),
        // whitespace (hyper trims, a hand-built HeaderValue does not)
        (b" acme", Want::BadChar),
        (b"acme ", Want::BadChar),
        (b"ac me", Want::BadChar),
        // non-UTF-8 / non-ASCII bytes
        (b"acme\xff", Want::BadChar),
        (b"\x80", Want::BadChar),
        (b"\xc3\xa9", Want::BadChar),
        (b"\xc0\xae\xc0\xae", Want::BadChar),
        (b"gl\xd0\xbebex", Want::BadChar),
        // dots and traversal
        (b"..", Want::BadStart),
        (b".", Want::BadStart),
        (b"../etc", Want::BadChar),
        (b".acme", Want::BadStart),
        (b"-acme", Want::BadStart),
        (b"_acme", Want::BadStart),
        (b"acme.", Want::Id("acme.")),
        // a header is never percent-decoded
        (b"%2e%2e", Want::BadChar),
        (b"%61cme", Want::BadChar),
        (b"acme%00", Want::BadChar),
        (b"%252e", Want::BadChar),
        (b"%c0%ae", Want::BadChar),
        (b"%zz", Want::BadChar),
        (b"acme%2", Want::BadChar),
        (b"acme+", Want::BadChar),
        // separators and syntax from other layers
        (b"a/b", Want::BadChar),
        (b"a{b}", Want::BadChar),
        (b"acme,globex", Want::BadChar),
        (b"acme;globex", Want::BadChar),
        (b"\"acme\"", Want::BadChar),
        (b"acme=1", Want::BadChar),
        (b"<script>", Want::BadChar),
    ];
    check_table(
        "header",
        &HeaderResolver::new("x-tenant-id"),
        &header_rows(rows),
    );
}

#[test]
fn header_resolver_absent_and_duplicated() {
    let r = HeaderResolver::new("x-tenant-id");
    let rows = vec![
        ("/".to_owned(), vec![], Want::Nothing),
        (
            "/".to_owned(),
            vec![("x-other", b"acme".to_vec())],
            Want::Nothing,
        ),
        (
            "/".to_owned(),
            vec![
                ("x-tenant-id", b"acme".to_vec()),
                ("x-tenant-id", b"acme".to_vec()),
            ],
            Want::Ambiguous,
        ),
        (
            "/".to_owned(),
            vec![
                ("x-tenant-id", b"acme".to_vec()),
                ("x-tenant-id", b"globex".to_vec()),
            ],
            Want::Ambiguous,
        ),
        (
            "/".to_owned(),
            vec![
                ("x-tenant-id", b"".to_vec()),
                ("x-tenant-id", b"acme".to_vec()),
            ],
            Want::Ambiguous,
        ),
        (
            "/".to_owned(),
            vec![
                ("x-tenant-id", b"\xff".to_vec()),
                ("x-tenant-id", b"acme".to_vec()),
            ],
            Want::Ambiguous,
        ),
        (
            "/".to_owned(),
            vec![("X-Tenant-Id", b"acme".to_vec())],
            Want::Id("acme"),
        ),
        // the query or path never feed a header resolver
        (
            "/tenants/acme?x-tenant-id=acme".to_owned(),
            vec![],
            Want::Nothing,
        ),
    ];
    check_table("header (presence)", &r, &rows);

    // 1000 copies of the header: refused, and the resolver stops at the second.
    let mut req = Request::new(());
    for _ in 0..1000 {
        req.headers_mut()
            .append("x-tenant-id", HeaderValue::from_static("acme"));
    }
    assert_eq!(classify(r.resolve(&RequestHead::of(&req))), Got::Ambiguous);
}

#[test]
fn header_resolver_with_rules() {
    let lower = HeaderResolver::new("x-tenant-id").rules(TenantIdRules::default().lowercase(true));
    let short = HeaderResolver::new("x-tenant-id").rules(TenantIdRules::default().max_len(4));
    let rows = header_rows(&[
        (b"ACME", Want::Id("acme")),
        (b"Acme.EU", Want::Id("acme.eu")),
    ]);
    check_table("header lowercase", &lower, &rows);
    let rows = header_rows(&[
        (b"acme", Want::Id("acme")),
        (b"acmes", Want::TooLong),
        (b"\xff\xff\xff\xff\xff", Want::TooLong),
    ]);
    check_table("header max_len 4", &short, &rows);
}

// ---------------------------------------------------------------------------
// path

fn uri_rows(rows: &[(&str, Want)]) -> Vec<Row<'static, Want>> {
    rows.iter()
        .map(|(u, w)| ((*u).to_owned(), vec![], w.clone()))
        .collect()
}

fn path_table() -> Vec<(String, Want)> {
    let s = |u: &str, w: Want| (u.to_owned(), w);
    vec![
        s("/tenants/acme", Want::Id("acme")),
        s("/tenants/acme/jobs/1", Want::Id("acme")),
        s("/tenants/acme?tenant=globex", Want::Id("acme")),
        s("http://h.example/tenants/acme", Want::Id("acme")),
        s("/tenants/ACME", Want::Id("ACME")),
        s("/tenants", Want::Nothing),
        s("/tenant/acme", Want::Nothing),
        s("/TENANTS/acme", Want::Nothing),
        s("/%74enants/acme", Want::Nothing),
        s("/", Want::Nothing),
        s("*", Want::Nothing),
        s("/tenants/", Want::Empty),
        s("/tenants//jobs", Want::Empty),
        // first "tenants" wins; no dot-segment normalisation
        s("/x/tenants/acme/tenants/globex", Want::Id("acme")),
        s("/tenants/acme/../globex", Want::Id("acme")),
        s("/tenants/../tenants/globex", Want::BadStart),
        s("/tenants/..", Want::BadStart),
        s("/tenants/.", Want::BadStart),
        s("/tenants/.acme", Want::BadStart),
        // percent-encoding tricks
        s("/tenants/%2e%2e", Want::BadStart),
        s("/tenants/%2E%2E/jobs", Want::BadStart),
        s("/tenants/%2e", Want::BadStart),
        s("/tenants/acme%2Fglobex", Want::BadChar),
        s("/tenants/%2F", Want::BadChar),
        s("/tenants/%2fetc%2fpasswd", Want::BadChar),
        s("/tenants/acme%00", Want::BadChar),
        s("/tenants/%00", Want::BadChar),
        s("/tenants/acme%00globex", Want::BadChar),
        s("/tenants/%252e%252e", Want::BadChar),
        s("/tenants/%2567lobex", Want::BadChar),
        s("/tenants/%c0%ae%c0%ae", Want::BadEncoding),
        s("/tenants/%c1%a7lobex", Want::BadEncoding),
        s("/tenants/%ff", Want::BadEncoding),
        s("/tenants/acme%80", Want::BadEncoding),
        s("/tenants/%C3%A9", Want::BadChar),
        s("/tenants/gl%D0%BEbex", Want::BadChar),
        s("/tenants/%EF%BD%87lobex", Want::BadChar),
        s("/tenants/%zz", Want::BadChar),
        s("/tenants/acme%2", Want::BadChar),
        s("/tenants/acme%", Want::BadChar),
        s("/tenants/%", Want::BadChar),
        s("/tenants/%%32%65", Want::BadChar),
        s("/tenants/%67lobex", Want::Id("globex")),
        s("/tenants/%61%63%6D%65", Want::Id("acme")),
        s("/tenants/acme%2Dcorp", Want::Id("acme-corp")),
        // '+' and spaces are not special in a path
        s("/tenants/acme+", Want::BadChar),
        s("/tenants/acme%20", Want::BadChar),
        s("/tenants/%20acme", Want::BadChar),
        s("/tenants/a;b", Want::BadChar),
        s("/tenants/acme;v=1", Want::BadChar),
        s("/tenants/a:b", Want::BadChar),
        s("/tenants/a@b", Want::BadChar),
        s("/tenants/a{b}", Want::BadChar),
        // http refuses control characters, raw spaces and raw non-ASCII
        s("/tenants/ac\x01me", Want::HttpRefuses),
        s("/tenants/ac me", Want::HttpRefuses),
        s("/tenants/acme\x7f", Want::HttpRefuses),
        s("/tenants/ac\tme", Want::HttpRefuses),
    ]
}

#[test]
fn path_resolver_after_literal() {
    let mut rows = path_table();
    rows.push((format!("/tenants/{}", "a".repeat(KB10)), Want::TooLong));
    rows.push((format!("/tenants/{}/x", "a".repeat(KB60)), Want::TooLong));
    rows.push((
        format!("/tenants/{}", "%61".repeat(KB10 / 3)),
        Want::TooLong,
    ));
    rows.push((
        format!("/tenants/{}", "%ff".repeat(KB10 / 3)),
        Want::TooLong,
    ));
    rows.push((format!("/tenants/{}", "a".repeat(MB1)), Want::HttpRefuses));
    rows.push((
        format!("/{}/tenants/acme", "x/".repeat(KB10)),
        Want::Id("acme"),
    ));
    let rows: Vec<_> = rows.into_iter().map(|(u, w)| (u, vec![], w)).collect();
    check_table("path after tenants", &PathResolver::after("tenants"), &rows);
}

#[test]
fn path_resolver_by_index() {
    // segment(1) sees the same segment as after("tenants") for "/tenants/{id}/…".
    let rows: Vec<_> = path_table()
        .into_iter()
        .filter(|(u, _)| u.starts_with("/tenants/"))
        .filter(|(u, _)| !u.starts_with("/tenants/../"))
        .map(|(u, w)| (u, vec![], w))
        .collect();
    check_table("path segment 1", &PathResolver::segment(1), &rows);

    let rows = uri_rows(&[
        ("/acme", Want::Id("acme")),
        ("/acme/", Want::Id("acme")),
        ("/acme/x", Want::Id("acme")),
        ("//acme", Want::Empty),
        ("/", Want::Empty),
        ("/%2e%2e/x", Want::BadStart),
    ]);
    check_table("path segment 0", &PathResolver::segment(0), &rows);
    let rows = uri_rows(&[
        ("/a/b/c/d", Want::Nothing),
        ("/", Want::Nothing),
        ("/a/b/c/d/e/f/g/h/i/acme", Want::Id("acme")),
    ]);
    check_table("path segment 9", &PathResolver::segment(9), &rows);
    let huge = PathResolver::segment(usize::MAX);
    assert_eq!(run(&huge, "/a/b", &[]), Got::Nothing);
}

// ---------------------------------------------------------------------------
// query

fn query_table() -> Vec<(String, Want)> {
    let s = |u: &str, w: Want| (u.to_owned(), w);
    vec![
        s("/x?tenant=acme", Want::Id("acme")),
        s("/x?a=1&tenant=acme&b=2", Want::Id("acme")),
        s("/x?tenant=ACME", Want::Id("ACME")),
        s("/x?&&tenant=acme&&", Want::Id("acme")),
        s("/x", Want::Nothing),
        s("/x?", Want::Nothing),
        s("/x?other=acme", Want::Nothing),
        s("/x?TENANT=acme", Want::Nothing),
        s("/x?tenants=acme", Want::Nothing),
        s("/x?tenant+=acme", Want::Nothing),
        s("/x?tenant%20=acme", Want::Nothing),
        s("/x?tenant%00=acme", Want::Nothing),
        s("/x?tenant%ff=acme", Want::Nothing),
        s("/x?x=tenant%3Dglobex", Want::Nothing),
        // the key is form-decoded too
        s("/x?%74enant=acme", Want::Id("acme")),
        s("/x?%74%65%6e%61%6e%74=acme", Want::Id("acme")),
        // empty
        s("/x?tenant=", Want::Empty),
        s("/x?tenant", Want::Empty),
        s("/x?tenant=&x=1", Want::Empty),
        // duplicated, however spelled
        s("/x?tenant=acme&tenant=acme", Want::Ambiguous),
        s("/x?tenant=acme&tenant=globex", Want::Ambiguous),
        s("/x?tenant=&tenant=acme", Want::Ambiguous),
        s("/x?tenant=acme&%74enant=globex", Want::Ambiguous),
        s("/x?tenant=acme&tenant", Want::Ambiguous),
        s("/x?tenant=%ff&tenant=acme", Want::Ambiguous),
        // '+' and %20 both mean a space in a query
        s("/x?tenant=ac+me", Want::BadChar),
        s("/x?tenant=ac%20me", Want::BadChar),
        s("/x?tenant=acme+", Want::BadChar),
        s("/x?tenant=+acme", Want::BadChar),
        s("/x?tenant=acme%2B", Want::BadChar),
        // dots and encodings
        s("/x?tenant=..", Want::BadStart),
        s("/x?tenant=.", Want::BadStart),
        s("/x?tenant=%2e%2e", Want::BadStart),
        s("/x?tenant=%2F", Want::BadChar),
        s("/x?tenant=..%2F..%2Fetc", Want::BadChar),
        s("/x?tenant=acme%00", Want::BadChar),
        s("/x?tenant=%252e%252e", Want::BadChar),
        // the query is decoded leniently (invalid UTF-8 becomes U+FFFD): still refused
        s("/x?tenant=%c0%ae%c0%ae", Want::BadChar),
        s("/x?tenant=%ff", Want::BadChar),
        s("/x?tenant=%C3%A9", Want::BadChar),
        s("/x?tenant=%zz", Want::BadChar),
        s("/x?tenant=acme%2", Want::BadChar),
        s("/x?tenant=acme%", Want::BadChar),
        s("/x?tenant=%67lobex", Want::Id("globex")),
        s("/x?tenant=%61%63%6d%65", Want::Id("acme")),
        // separators
        s("/x?tenant=acme;tenant=globex", Want::BadChar),
        s("/x?tenant=acme=globex", Want::BadChar),
        s("/x?tenant=acme%26tenant%3Dglobex", Want::BadChar),
        s("/x?tenant=acme,globex", Want::BadChar),
        s("/x?tenant[]=acme", Want::Nothing),
        // http refuses raw control characters and spaces
        s("/x?tenant=ac\x01me", Want::HttpRefuses),
        s("/x?tenant=ac me", Want::HttpRefuses),
    ]
}

#[test]
fn query_resolver_hostile_values() {
    let mut rows = query_table();
    rows.push((format!("/x?tenant={}", "a".repeat(KB10)), Want::TooLong));
    rows.push((format!("/x?tenant={}", "a".repeat(KB60)), Want::TooLong));
    rows.push((
        format!("/x?tenant={}", "%61".repeat(KB10 / 3)),
        Want::TooLong,
    ));
    rows.push((format!("/x?tenant={}", "+".repeat(KB10)), Want::TooLong));
    rows.push((
        format!("/x?tenant={}", "%ff".repeat(KB10 / 3)),
        Want::TooLong,
    ));
    rows.push((format!("/x?tenant={}", "a".repeat(MB1)), Want::HttpRefuses));
    rows.push((
        format!("/x?{}tenant=acme", "a=1&".repeat(KB10)),
        Want::Id("acme"),
    ));
    rows.push((
        format!("/x?{}=1&tenant=acme", "%74".repeat(KB10 / 3)),
        Want::Id("acme"),
    ));
    rows.push((
        format!("/x?{}", "tenant=a&".repeat(KB10 / 9)),
        Want::Ambiguous,
    ));
    // a too-long value does not hide a duplicate
    rows.push((
        format!("/x?tenant={}&tenant=acme", "a".repeat(KB10)),
        Want::Ambiguous,
    ));
    let rows: Vec<_> = rows.into_iter().map(|(u, w)| (u, vec![], w)).collect();
    check_table("query", &QueryResolver::new("tenant"), &rows);
}

#[test]
fn query_resolver_odd_names() {
    // A parameter name that itself needs encoding.
    let r = QueryResolver::new("tenant id");
    let rows = uri_rows(&[
        ("/x?tenant+id=acme", Want::Id("acme")),
        ("/x?tenant%20id=acme", Want::Id("acme")),
        ("/x?tenant+id=acme&tenant%20id=acme", Want::Ambiguous),
        ("/x?tenant=acme", Want::Nothing),
    ]);
    check_table("query 'tenant id'", &r, &rows);
    let r = QueryResolver::new("");
    let rows = uri_rows(&[
        ("/x?=acme", Want::Id("acme")),
        ("/x?tenant=acme", Want::Nothing),
    ]);
    check_table("query ''", &r, &rows);
}

// ---------------------------------------------------------------------------
// host

fn host_rows(values: &[(&[u8], Want)]) -> Vec<Row<'static, Want>> {
    values
        .iter()
        .map(|(v, want)| ("/".to_owned(), vec![("host", v.to_vec())], want.clone()))
        .collect()
}

#[test]
fn host_resolver_host_header() {
    let long_label = format!("{}.example.com", "a".repeat(KB10));
    let huge_label = format!("{}.example.com", "a".repeat(MB1));
    let huge_other = "a".repeat(MB1);
    let rows: &[(&[u8], Want)] = &[
        (b"acme.example.com", Want::Id("acme")),
        (b"acme.example.com:8080", Want::Id("acme")),
        (b"acme.example.com:", Want::Id("acme")),
        (b"ACME.EXAMPLE.COM", Want::Id("acme")),
        (b"Acme.Example.Com.", Want::Id("acme")),
        (b"acme.example.com.:443", Want::Id("acme")),
        (b"acme_.example.com", Want::Id("acme_")),
        (b"xn--80ak6aa92e.example.com", Want::Id("xn--80ak6aa92e")),
        (b"1.example.com", Want::Id("1")),
        // not below the base domain
        (b"example.com", Want::Nothing),
        (b"example.com.", Want::Nothing),
        (b"EXAMPLE.COM:80", Want::Nothing),
        (b".example.com", Want::Nothing),
        (b"evilexample.com", Want::Nothing),
        (b"acme.example.com.evil.org", Want::Nothing),
        (b"acme.example.co", Want::Nothing),
        (b"acme.example.com..", Want::Nothing),
        (b"acme%2eexample.com", Want::Nothing),
        (b"acme.example.com:abc", Want::Nothing),
        (b"acme.example.com:80:80", Want::Nothing),
        (b"[::1]", Want::Nothing),
        (b"[::1]:8080", Want::Nothing),
        (b"[2001:db8::1]:443", Want::Nothing),
        (b"127.0.0.1", Want::Nothing),
        (b"127.0.0.1:80", Want::Nothing),
        (b"", Want::Nothing),
        (huge_other.as_bytes(), Want::Nothing),
        // below the base domain but not a single valid label
        (b"a.b.example.com", Want::BadChar),
        (b"acme.globex.example.com", Want::BadChar),
        (b"..example.com", Want::BadChar),
        (b"-acme.example.com", Want::BadStart),
        (b"user@acme.example.com", Want::BadChar),
        (b"user:pw@acme.example.com", Want::BadChar),
        (b"acme .example.com", Want::BadChar),
        (b"acme\t.example.com", Want::BadChar),
        (b"%61cme.example.com", Want::BadChar),
        (long_label.as_bytes(), Want::TooLong),
        (huge_label.as_bytes(), Want::TooLong),
        // not visible ASCII
        (b"acme\xff.example.com", Want::BadEncoding),
        (b"\xc3\xa9.example.com", Want::BadEncoding),
        (b"acme\x00.example.com", Want::HttpRefuses),
        (b"acme.example.com\r\nx: y", Want::HttpRefuses),
    ];
    check_table(
        "host header",
        &HostResolver::subdomain_of("example.com"),
        &host_rows(rows),
    );
}

#[test]
fn host_resolver_duplicates_and_authority() {
    let r = HostResolver::subdomain_of("example.com");
    let h = |v: &str| ("host", v.as_bytes().to_vec());
    let rows = vec![
        ("/".to_owned(), vec![], Want::Nothing),
        (
            "/".to_owned(),
            vec![h("acme.example.com"), h("acme.example.com")],
            Want::Ambiguous,
        ),
        (
            "/".to_owned(),
            vec![h("acme.example.com"), h("globex.example.com")],
            Want::Ambiguous,
        ),
        (
            "/".to_owned(),
            vec![h("example.com"), h("globex.example.com")],
            Want::Ambiguous,
        ),
        // URI authority (HTTP/2 :authority, HTTP/1.1 absolute-form): it wins over
        // the Host header (RFC 9112 §3.2.2).
        (
            "http://acme.example.com/".to_owned(),
            vec![],
            Want::Id("acme"),
        ),
        (
            "https://ACME.Example.com:8443/x".to_owned(),
            vec![],
            Want::Id("acme"),
        ),
        (
            "http://acme.example.com./".to_owned(),
            vec![],
            Want::Id("acme"),
        ),
        (
            "http://acme.example.com/".to_owned(),
            vec![h("globex.example.com")],
            Want::Id("acme"),
        ),
        (
            "http://acme.example.com/".to_owned(),
            vec![h("globex.example.com"), h("globex.example.com")],
            Want::Id("acme"),
        ),
        (
            "http://example.com/".to_owned(),
            vec![h("globex.example.com")],
            Want::Nothing,
        ),
        ("http://[::1]:80/".to_owned(), vec![], Want::Nothing),
        (
            "http://127.0.0.1/".to_owned(),
            vec![h("acme.example.com")],
            Want::Nothing,
        ),
        (
            "http://user@globex.example.com/".to_owned(),
            vec![],
            Want::Id("globex"),
        ),
        (
            "http://user:pw@globex.example.com:1/".to_owned(),
            vec![],
            Want::Id("globex"),
        ),
        ("http://a.b.example.com/".to_owned(), vec![], Want::BadChar),
        ("http://-x.example.com/".to_owned(), vec![], Want::BadStart),
        (
            "http://x_y.example.com/".to_owned(),
            vec![],
            Want::Id("x_y"),
        ),
        (
            "http://%61cme.example.com/".to_owned(),
            vec![],
            Want::HttpRefuses,
        ),
        (
            "http://ac me.example.com/".to_owned(),
            vec![],
            Want::HttpRefuses,
        ),
        (
            format!("http://{}.example.com/", "a".repeat(KB10)),
            vec![],
            Want::TooLong,
        ),
    ];
    check_table("host authority", &r, &rows);

    // Base domain given with dots and capitals.
    let r = HostResolver::subdomain_of(".Example.COM.");
    check_table(
        "host base .Example.COM.",
        &r,
        &host_rows(&[(b"acme.example.com", Want::Id("acme"))]),
    );
    // Custom rules without lowercasing keep the case.
    let r = HostResolver::subdomain_of("example.com").rules(TenantIdRules::default());
    check_table(
        "host case-preserving",
        &r,
        &host_rows(&[(b"ACME.example.com", Want::Id("ACME"))]),
    );
}

// ---------------------------------------------------------------------------
// extension and default

#[derive(Clone)]
struct Claims {
    org: Option<TenantId>,
}

#[test]
fn extension_and_default_resolvers() {
    let r = ExtensionResolver::new(|c: &Claims| c.org.clone());
    let req = Request::new(());
    assert_eq!(classify(r.resolve(&RequestHead::of(&req))), Got::Nothing);
    let mut req = Request::new(());
    req.extensions_mut().insert(Claims { org: None });
    assert_eq!(classify(r.resolve(&RequestHead::of(&req))), Got::Nothing);
    let mut req = build(
        "/tenants/globex?tenant=globex",
        &[("x-tenant-id", b"globex")],
    )
    .unwrap();
    req.extensions_mut().insert(Claims {
        org: Some("acme".parse().unwrap()),
    });
    assert_eq!(
        classify(r.resolve(&RequestHead::of(&req))),
        Got::Id("acme".into())
    );

    let d = DefaultResolver::new("public".parse().unwrap());
    for uri in ["/", "/tenants/%ff", "http://a.b.example.com/"] {
        let req = build(uri, &[("x-tenant-id", b"\xff")]).unwrap();
        assert_eq!(
            classify(d.resolve(&RequestHead::of(&req))),
            Got::Id("public".into())
        );
    }
}

// ---------------------------------------------------------------------------
// chain

fn standard_chain() -> ResolverChain {
    ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
        .or(HostResolver::subdomain_of("example.com"))
}

#[test]
fn chain_priority_and_errors() {
    let hdr = |v: &[u8]| ("x-tenant-id", v.to_vec());
    let host = |v: &str| ("host", v.as_bytes().to_vec());
    let rows = vec![
        ("/".to_owned(), vec![], Want::Nothing),
        ("/".to_owned(), vec![hdr(b"acme")], Want::Id("acme")),
        (
            "/tenants/globex".to_owned(),
            vec![hdr(b"acme")],
            Want::Id("acme"),
        ),
        (
            "/tenants/acme?tenant=globex".to_owned(),
            vec![],
            Want::Id("acme"),
        ),
        (
            "/x?tenant=acme".to_owned(),
            vec![host("globex.example.com")],
            Want::Id("acme"),
        ),
        (
            "/x".to_owned(),
            vec![host("acme.example.com")],
            Want::Id("acme"),
        ),
        // a malformed value stops the chain: no fall-through to a later source
        ("/tenants/acme".to_owned(), vec![hdr(b"..")], Want::BadStart),
        ("/tenants/acme".to_owned(), vec![hdr(b"")], Want::Empty),
        (
            "/tenants/acme".to_owned(),
            vec![hdr(b"\xff")],
            Want::BadChar,
        ),
        (
            "/tenants/acme".to_owned(),
            vec![hdr(b"a"), hdr(b"b")],
            Want::Ambiguous,
        ),
        (
            "/tenants/%2e%2e?tenant=acme".to_owned(),
            vec![],
            Want::BadStart,
        ),
        (
            "/tenants/%c0%ae?tenant=acme".to_owned(),
            vec![],
            Want::BadEncoding,
        ),
        (
            "/x?tenant=a&tenant=b".to_owned(),
            vec![host("acme.example.com")],
            Want::Ambiguous,
        ),
        (
            "/x?tenant=".to_owned(),
            vec![host("acme.example.com")],
            Want::Empty,
        ),
        (
            "/x".to_owned(),
            vec![host("a.b.example.com")],
            Want::BadChar,
        ),
        (
            "/x".to_owned(),
            vec![host("acme.example.com"), host("x.example.com")],
            Want::Ambiguous,
        ),
        // ... but an earlier hit wins before a later source is even read
        (
            "/tenants/acme?tenant=%ff%ff".to_owned(),
            vec![],
            Want::Id("acme"),
        ),
        (
            "/x".to_owned(),
            vec![hdr(b"acme"), host("a.b.example.com")],
            Want::Id("acme"),
        ),
        // sources with nothing to say fall through
        (
            "/other/globex?x=1".to_owned(),
            vec![host("example.com")],
            Want::Nothing,
        ),
    ];
    check_table("chain", &standard_chain(), &rows);

    let with_default = standard_chain().or(DefaultResolver::new("public".parse().unwrap()));
    let rows = vec![
        ("/".to_owned(), vec![], Want::Id("public")),
        ("/x?tenant=acme".to_owned(), vec![], Want::Id("acme")),
        ("/tenants/..".to_owned(), vec![], Want::BadStart),
    ];
    check_table("chain + default", &with_default, &rows);

    let empty = ResolverChain::new();
    check_table(
        "empty chain",
        &empty,
        &[(
            "/tenants/acme".to_owned(),
            vec![hdr(b"acme")],
            Want::Nothing,
        )],
    );
}

// ---------------------------------------------------------------------------
// through the TenancyLayer

type Svc = tower::util::BoxCloneService<
    Request<()>,
    Response<tower_tenancy::body::TenancyBody<String>>,
    Infallible,
>;

fn directory() -> MemoryDirectory {
    let free = Arc::new(Plan::new("free"));
    let dir = MemoryDirectory::new();
    dir.insert(Tenant::new("acme".parse().unwrap(), free.clone()));
    dir.insert(Tenant::new("globex".parse().unwrap(), free.clone()));
    for (id, status) in [
        ("sus", TenantStatus::Suspended),
        ("old", TenantStatus::Expired),
        ("gone", TenantStatus::Deleted),
    ] {
        dir.insert(Tenant::new(id.parse().unwrap(), free.clone()).set_status(status));
    }
    dir
}

fn service(layer: TenancyLayer) -> Svc {
    let inner = service_fn(|req: Request<()>| async move {
        let body = req
            .extensions()
            .get::<CurrentTenant>()
            .map(|t| format!("tenant={}", t.id()))
            .unwrap_or_else(|| "tenant=-".to_owned());
        Ok::<_, Infallible>(Response::new(body))
    });
    tower::util::BoxCloneService::new(layer.layer(inner))
}

struct Answer {
    status: StatusCode,
    content_type: Option<String>,
    grpc_status: Option<String>,
    body: Bytes,
}

async fn call(svc: &Svc, req: Request<()>) -> Answer {
    let res = svc.clone().oneshot(req).await.unwrap();
    let status = res.status();
    let content_type = res
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned());
    let grpc_status = res
        .headers()
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned());
    let body = res.into_body().collect().await.unwrap().to_bytes();
    Answer {
        status,
        content_type,
        grpc_status,
        body,
    }
}

/// What the layer must answer.
#[derive(Debug, Clone, Copy)]
enum Expect {
    Pass(&'static str),
    PassWithout,
    Problem(u16, &'static str),
}

async fn check_layer(name: &str, svc: &Svc, rows: &[Row<'_, Expect>]) {
    let mut failures = Vec::new();
    for (uri, headers, expect) in rows {
        let headers_ref: Vec<(&str, &[u8])> =
            headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let req = build(uri, &headers_ref).expect("rows must be valid http requests");
        let a = call(svc, req).await;
        let text = String::from_utf8_lossy(&a.body).into_owned();
        let ok = match *expect {
            Expect::Pass(id) => a.status == 200 && text == format!("tenant={id}"),
            Expect::PassWithout => a.status == 200 && text == "tenant=-",
            Expect::Problem(status, code) => {
                let json: Option<serde_json::Value> = serde_json::from_slice(&a.body).ok();
                a.status.as_u16() == status
                    && a.content_type.as_deref() == Some("application/problem+json")
                    && json.as_ref().is_some_and(|j| {
                        j["code"] == code
                            && j["status"] == status
                            && j["type"] == format!("urn:tower-tenancy:problem:{code}")
                    })
                    && a.body.len() < 512
                    && !echoes(&a.body, uri, headers)
            }
        };
        if !ok {
            failures.push(format!(
                "  uri={:?}: want {expect:?}, got {} {}",
                shorten(uri),
                a.status,
                shorten(&text)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{name}: {} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

/// Whether the body repeats a hostile part of the request: the raw header
/// values or the part of the URI after "/tenants/" or "tenant=" — unless that
/// value is a valid tenant id (which a body may name).
fn echoes(body: &[u8], uri: &str, headers: &[(&str, Vec<u8>)]) -> bool {
    let body = String::from_utf8_lossy(body);
    let mut hostile: Vec<String> = headers
        .iter()
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    for marker in ["/tenants/", "tenant="] {
        if let Some(i) = uri.find(marker) {
            let rest = &uri[i + marker.len()..];
            let end = rest.find(['/', '&', '?']).unwrap_or(rest.len());
            hostile.push(rest[..end].to_owned());
        }
    }
    hostile
        .iter()
        .filter(|h| h.len() >= 3 && TenantId::new(h).is_err())
        .any(|h| body.contains(h.as_str()))
}

#[tokio::test]
async fn layer_statuses_and_problem_bodies() {
    let svc = service(TenancyLayer::new(standard_chain(), directory()));
    let hdr = |v: &[u8]| ("x-tenant-id", v.to_vec());
    let host = |v: &str| ("host", v.as_bytes().to_vec());
    let malformed = Expect::Problem(400, "malformed_tenant_id");
    let mut rows = vec![
        ("/".to_owned(), vec![hdr(b"acme")], Expect::Pass("acme")),
        (
            "/tenants/%67lobex/x".to_owned(),
            vec![],
            Expect::Pass("globex"),
        ),
        ("/x?tenant=acme".to_owned(), vec![], Expect::Pass("acme")),
        (
            "/x".to_owned(),
            vec![host("ACME.example.com.:80")],
            Expect::Pass("acme"),
        ),
        (
            "/".to_owned(),
            vec![],
            Expect::Problem(400, "tenant_required"),
        ),
        (
            "/other/acme".to_owned(),
            vec![host("example.com")],
            Expect::Problem(400, "tenant_required"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"nope")],
            Expect::Problem(403, "unknown_tenant"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"ACME")],
            Expect::Problem(403, "unknown_tenant"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"acme.")],
            Expect::Problem(403, "unknown_tenant"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"sus")],
            Expect::Problem(403, "tenant_inactive"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"old")],
            Expect::Problem(403, "tenant_inactive"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"gone")],
            Expect::Problem(403, "tenant_inactive"),
        ),
        ("/".to_owned(), vec![hdr(b"")], malformed),
        ("/".to_owned(), vec![hdr(b"..")], malformed),
        (
            "/".to_owned(),
            vec![hdr(b"<script>alert(1)</script>")],
            malformed,
        ),
        ("/".to_owned(), vec![hdr(b"acme\xff\xfe")], malformed),
        ("/".to_owned(), vec![hdr(b"acme\t")], malformed),
        ("/".to_owned(), vec![hdr(b"acme"), hdr(b"acme")], malformed),
        (
            "/".to_owned(),
            vec![hdr("a".repeat(MB1).as_bytes())],
            malformed,
        ),
        ("/".to_owned(), vec![hdr(b"\"},{\"code\":\"ok")], malformed),
        ("/tenants/%2e%2e/x".to_owned(), vec![], malformed),
        ("/tenants/%c0%ae%c0%ae".to_owned(), vec![], malformed),
        ("/tenants/%252e%252e".to_owned(), vec![], malformed),
        ("/tenants/acme%00evil".to_owned(), vec![], malformed),
        ("/tenants/%3Cscript%3E".to_owned(), vec![], malformed),
        ("/tenants/%zz".to_owned(), vec![], malformed),
        (format!("/tenants/{}", "b".repeat(KB60)), vec![], malformed),
        ("/x?tenant=a&tenant=b".to_owned(), vec![], malformed),
        ("/x?tenant=%22%7D%2C%7B".to_owned(), vec![], malformed),
        ("/x?tenant=ac+me".to_owned(), vec![], malformed),
        (
            format!("/x?tenant={}", "%ff".repeat(KB10)),
            vec![],
            malformed,
        ),
        ("/x".to_owned(), vec![host("a.b.example.com")], malformed),
        (
            "/x".to_owned(),
            vec![host("acme.example.com"), host("acme.example.com")],
            malformed,
        ),
    ];
    // host value with a byte http rejects is not a valid row: drop it
    rows.retain(|(u, h, _)| {
        let h: Vec<(&str, &[u8])> = h.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        build(u, &h).is_some()
    });
    check_layer("layer", &svc, &rows).await;
}

#[tokio::test]
async fn layer_options() {
    let hdr = |v: &[u8]| ("x-tenant-id", v.to_vec());
    let svc = service(
        TenancyLayer::new(standard_chain(), directory())
            .unknown_tenant_status(StatusCode::NOT_FOUND),
    );
    let rows = vec![
        (
            "/".to_owned(),
            vec![hdr(b"nope")],
            Expect::Problem(404, "unknown_tenant"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"sus")],
            Expect::Problem(403, "tenant_inactive"),
        ),
        ("/".to_owned(), vec![hdr(b"acme")], Expect::Pass("acme")),
    ];
    check_layer("404 for unknown", &svc, &rows).await;

    let svc = service(TenancyLayer::new(standard_chain(), directory()).optional());
    let rows = vec![
        ("/".to_owned(), vec![], Expect::PassWithout),
        ("/x?tenant=acme".to_owned(), vec![], Expect::Pass("acme")),
        (
            "/".to_owned(),
            vec![hdr(b"..")],
            Expect::Problem(400, "malformed_tenant_id"),
        ),
        (
            "/x?tenant=".to_owned(),
            vec![],
            Expect::Problem(400, "malformed_tenant_id"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"nope")],
            Expect::Problem(403, "unknown_tenant"),
        ),
    ];
    check_layer("optional", &svc, &rows).await;

    let svc = service(TenancyLayer::new(standard_chain(), directory()).bind_to_principal());
    let rows = vec![
        // no AllowedTenants in the request at all: refused
        (
            "/".to_owned(),
            vec![hdr(b"acme")],
            Expect::Problem(403, "tenant_not_permitted"),
        ),
        (
            "/".to_owned(),
            vec![hdr(b"..")],
            Expect::Problem(400, "malformed_tenant_id"),
        ),
    ];
    check_layer("bound, no principal", &svc, &rows).await;
}

#[tokio::test]
async fn layer_not_permitted_and_grpc() {
    let layer = TenancyLayer::new(standard_chain(), directory()).bind_to_principal();
    let inner = service(layer);
    let with_principal = |mut req: Request<()>| {
        req.extensions_mut()
            .insert(AllowedTenants::only(["acme".parse().unwrap()]));
        req
    };
    let req = with_principal(build("/tenants/globex", &[]).unwrap());
    let a = call(&inner, req).await;
    assert_eq!(a.status, 403);
    let json: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(json["code"], "tenant_not_permitted");
    assert_eq!(json["tenant"], "globex");
    // not permitted is decided before the directory is asked: unknown ids
    // do not reveal whether they exist.
    let req = with_principal(build("/tenants/nope", &[]).unwrap());
    let a = call(&inner, req).await;
    let json: serde_json::Value = serde_json::from_slice(&a.body).unwrap();
    assert_eq!(
        (a.status.as_u16(), &json["code"]),
        (403, &"tenant_not_permitted".into())
    );
    let req = with_principal(build("/tenants/acme", &[]).unwrap());
    assert_eq!(call(&inner, req).await.status, 200);

    // gRPC: trailers-only answer with the mapped status, nothing echoed.
    let svc = service(TenancyLayer::new(standard_chain(), directory()));
    let grpc = |uri: &str, id: &[u8]| {
        build(
            uri,
            &[
                ("content-type", b"application/grpc+proto"),
                ("x-tenant-id", id),
            ],
        )
        .unwrap()
    };
    for (id, code) in [
        (&b"..\xff<evil>"[..], "3"),
        (b"", "3"),
        (b"nope", "7"),
        (b"sus", "7"),
    ] {
        let a = call(&svc, grpc("/pkg.Svc/Method", id)).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.grpc_status.as_deref(), Some(code), "{id:?}");
        assert_eq!(a.content_type.as_deref(), Some("application/grpc"));
        assert!(a.body.is_empty());
    }
    let a = call(
        &svc,
        build("/pkg.Svc/Method", &[("content-type", b"application/grpc")]).unwrap(),
    )
    .await;
    assert_eq!(a.grpc_status.as_deref(), Some("3"));
}

// ---------------------------------------------------------------------------
// bounded allocation: resolving never allocates in proportion to the input

struct Counting;

thread_local! {
    /// Bytes this thread holds now, and the most it has held since the last reset.
    static LIVE: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
    static PEAK: std::cell::Cell<isize> = const { std::cell::Cell::new(0) };
}

fn track(delta: isize) {
    let _ = LIVE.try_with(|live| {
        live.set(live.get() + delta);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(live.get())));
    });
}

// SAFETY: forwards every call to the system allocator unchanged.
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        track(layout.size() as isize);
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new: usize) -> *mut u8 {
        track(new as isize - layout.size() as isize);
        unsafe { std::alloc::System.realloc(ptr, layout, new) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        track(-(layout.size() as isize));
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The most memory this thread held at once while `f` ran, beyond what it
/// held before (memory freed by another thread can make it look smaller,
/// never larger).
fn peak_allocated_by(f: impl FnOnce()) -> usize {
    let before = LIVE.with(|l| l.get());
    PEAK.with(|p| p.set(before));
    f();
    usize::try_from(PEAK.with(|p| p.get()) - before).unwrap_or(0)
}

#[test]
fn resolving_hostile_input_allocates_a_small_bounded_amount() {
    const BOUND: usize = 1024;
    let big_host = format!("{}.example.com", "a".repeat(MB1));
    let cases: Vec<(String, Headers<'_>)> = vec![
        (format!("/tenants/{}", "%61".repeat(KB60 / 3)), vec![]),
        (format!("/tenants/{}", "%ff".repeat(KB60 / 3)), vec![]),
        (format!("/tenants/{}", "a".repeat(KB60)), vec![]),
        (format!("/x?tenant={}", "%61".repeat(KB60 / 3)), vec![]),
        (format!("/x?tenant={}", "+".repeat(KB60)), vec![]),
        (format!("/x?{}=1", "%74".repeat(KB60 / 3)), vec![]),
        (
            format!("/x?{}", "%74%65%6e%61%6e%75=1&".repeat(KB60 / 21)),
            vec![],
        ),
        (format!("/x?{}", "a+b=c+d&".repeat(KB60 / 8)), vec![]),
        (
            "/".to_owned(),
            vec![("x-tenant-id", "a".repeat(MB1).into_bytes())],
        ),
        (
            "/".to_owned(),
            vec![("host", big_host.clone().into_bytes())],
        ),
        ("/".to_owned(), vec![("host", "b".repeat(MB1).into_bytes())]),
    ];
    let chain = standard_chain();
    let resolvers: Vec<(&str, Box<dyn Resolver>)> = vec![
        ("header", Box::new(HeaderResolver::new("x-tenant-id"))),
        ("path", Box::new(PathResolver::after("tenants"))),
        ("path index", Box::new(PathResolver::segment(1))),
        ("query", Box::new(QueryResolver::new("tenant"))),
        ("host", Box::new(HostResolver::subdomain_of("example.com"))),
        ("chain", Box::new(chain)),
    ];
    for (uri, headers) in &cases {
        let headers: Vec<(&str, &[u8])> = headers.iter().map(|(n, v)| (*n, v.as_slice())).collect();
        let req = build(uri, &headers).expect("valid request");
        let head = RequestHead::of(&req);
        for (name, resolver) in &resolvers {
            let bytes = peak_allocated_by(|| {
                let _ = std::hint::black_box(resolver.resolve(&head));
            });
            assert!(
                bytes <= BOUND,
                "{name} allocated {bytes} bytes for uri {:?}",
                shorten(uri)
            );
        }
    }
}
