//! Header, path, query and host resolvers on requests built from arbitrary
//! bytes (inputs that `http` refuses are skipped): never panic, and every
//! id they return comes from where they say. The path resolver's answer
//! (id, none, or refusal) must equal the reference model's
//! (`tests/common/path_reference.rs`, shared with the property tests).
#![no_main]

#[path = "../../tests/common/path_reference.rs"]
mod path_reference;

use arbitrary::Arbitrary;
use http::header::{HeaderValue, HOST};
use http::{Request, Uri};
use libfuzzer_sys::fuzz_target;
use tower_tenancy::resolve::{
    HeaderResolver, HostResolver, PathResolver, QueryResolver, RequestHead, Resolver,
};
use tower_tenancy::TenantIdRules;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    uri: &'a [u8],
    tenant_headers: Vec<&'a [u8]>,
    host_headers: Vec<&'a [u8]>,
    segment: u8,
    max_len: u8,
}

fuzz_target!(|input: Input<'_>| {
    let mut req = Request::new(());
    if let Ok(uri) = Uri::try_from(input.uri) {
        *req.uri_mut() = uri;
    }
    for v in input.tenant_headers.iter().take(4) {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            req.headers_mut().append("x-tenant-id", v);
        }
    }
    for v in input.host_headers.iter().take(3) {
        if let Ok(v) = HeaderValue::from_bytes(v) {
            req.headers_mut().append(HOST, v);
        }
    }
    let head = RequestHead::of(&req);
    let rules = TenantIdRules::default().max_len(usize::from(input.max_len));

    let header = HeaderResolver::new("x-tenant-id").rules(rules);
    if let Ok(Some(id)) = header.resolve(&head) {
        let values: Vec<_> = req.headers().get_all("x-tenant-id").iter().collect();
        assert_eq!(values.len(), 1);
        assert_eq!(values[0].as_bytes(), id.as_str().as_bytes());
    }

    let path = req.uri().path();
    let index = usize::from(input.segment % 8);
    for (resolver, segment) in [
        (
            PathResolver::after("tenants"),
            path_reference::Segment::After("tenants"),
        ),
        (PathResolver::segment(index), path_reference::Segment::Index(index)),
    ] {
        let got = resolver
            .rules(rules)
            .resolve(&head)
            .map(|id| id.map(|id| id.as_str().to_owned()))
            .map_err(|_| ());
        let want = path_reference::expected(path, segment, &rules);
        assert_eq!(got, want, "{path:?} {segment:?}");
    }

    let query = QueryResolver::new("tenant").rules(rules);
    let got = query.resolve(&head);
    if let Ok(Some(id)) = &got {
        // Exactly one "tenant" pair, and it decodes to the id.
        let q = req.uri().query().unwrap();
        let hits: Vec<_> = form_urlencoded::parse(q.as_bytes())
            .filter(|(k, _)| k == "tenant")
            .collect();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].1, id.as_str());
    }

    let host = HostResolver::subdomain_of("example.com");
    if let Ok(Some(id)) = host.resolve(&head) {
        let h = match req.uri().host() {
            Some(h) => h.to_ascii_lowercase(),
            None => req.headers()[HOST].to_str().unwrap().to_ascii_lowercase(),
        };
        assert!(!id.as_str().contains('.'));
        assert!(h.starts_with(&format!("{id}.example.com")), "{h:?} -> {id}");
    }
});
