//! Property tests: tenant id parsing, resolvers, the chain, catalogs and
//! rejection rendering never panic and keep their documented contracts.

use std::borrow::Cow;
use std::time::Duration;

use http::header::{HeaderValue, HOST};
use http::{Request, StatusCode, Uri};
use percent_encoding::percent_decode_str;
use proptest::prelude::*;
use tower_tenancy::reject::{HeaderStyle, RateLimitFields, Rejection, RejectionKind};
use tower_tenancy::resolve::{
    HeaderResolver, HostResolver, PathResolver, QueryResolver, RequestHead, ResolveError,
    ResolveErrorReason, Resolver, ResolverChain,
};
use tower_tenancy::tenant::InvalidTenantId;
use tower_tenancy::{Catalog, TenantId, TenantIdRules, TenantStatus};

// ---------------------------------------------------------------------------
// the documented language

/// The documented rules, written independently: 1..=max bytes of
/// `[A-Za-z0-9._-]`, the first a letter or a digit; errors checked in the
/// order empty, too long, bad character (first offending byte), bad start.
fn reference(value: &[u8], max: usize) -> Result<(), InvalidTenantId> {
    let allowed = |b: &u8| b.is_ascii_alphanumeric() || b"._-".contains(b);
    if value.is_empty() {
        Err(InvalidTenantId::Empty)
    } else if value.len() > max {
        Err(InvalidTenantId::TooLong { max })
    } else if let Some(position) = value.iter().position(|b| !allowed(b)) {
        Err(InvalidTenantId::BadCharacter { position })
    } else if !value[0].is_ascii_alphanumeric() {
        Err(InvalidTenantId::BadStart)
    } else {
        Ok(())
    }
}

fn id_chars() -> impl Strategy<Value = String> {
    prop_oneof![
        "[A-Za-z0-9._-]{0,70}",
        "[A-Za-z0-9][A-Za-z0-9._-]{0,63}",
        "[a-z0-9._/{}% \t\u{0}\u{7f}\u{e9}\u{ff0e}+-]{0,12}",
        any::<String>(),
    ]
}

fn valid_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9][A-Za-z0-9._-]{0,63}"
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn parse_accepts_exactly_the_documented_language(s in id_chars(), max in 0usize..300, lower in any::<bool>()) {
        let rules = TenantIdRules::default().max_len(max).lowercase(lower);
        let effective_max = max.clamp(1, 255);
        let got = rules.parse(&s);
        match reference(s.as_bytes(), effective_max) {
            Ok(()) => {
                let id = got.expect("valid by the reference");
                let want = if lower { s.to_ascii_lowercase() } else { s.clone() };
                prop_assert_eq!(id.as_str(), want.as_str());
            }
            Err(e) => prop_assert_eq!(got, Err(e)),
        }
    }

    #[test]
    fn parse_bytes_agrees_with_parse(bytes in prop::collection::vec(any::<u8>(), 0..80), max in 0usize..300) {
        let rules = TenantIdRules::default().max_len(max);
        let got = rules.parse_bytes(&bytes);
        prop_assert_eq!(got.clone().map(|_| ()), reference(&bytes, max.clamp(1, 255)));
        if let Ok(s) = std::str::from_utf8(&bytes) {
            prop_assert_eq!(got, rules.parse(s));
        }
    }

    #[test]
    fn ids_roundtrip_through_display_fromstr_and_serde(s in id_chars()) {
        let parsed: Result<TenantId, _> = s.parse();
        prop_assert_eq!(parsed.is_ok(), reference(s.as_bytes(), 64).is_ok());
        // Deserializing any JSON string accepts exactly the valid ids.
        let json = serde_json::to_string(&s).unwrap();
        let de: Result<TenantId, _> = serde_json::from_str(&json);
        prop_assert_eq!(de.is_ok(), parsed.is_ok());
        if let Ok(id) = parsed {
            prop_assert_eq!(id.to_string(), s.clone());
            prop_assert_eq!(id.to_string().parse::<TenantId>().unwrap(), id.clone());
            prop_assert_eq!(format!("{id:?}"), format!("{s:?}"));
            let ser = serde_json::to_string(&id).unwrap();
            prop_assert_eq!(&ser, &json);
            prop_assert_eq!(serde_json::from_str::<TenantId>(&ser).unwrap(), id.clone());
            prop_assert_eq!(de.unwrap(), id);
        }
    }
}

// ---------------------------------------------------------------------------
// resolvers never panic, and agree with a straightforward reading

fn uri_of(s: &str) -> Option<Uri> {
    Uri::try_from(s).ok()
}

fn request(uri: Uri, headers: &[(&str, HeaderValue)]) -> Request<()> {
    let mut req = Request::new(());
    *req.uri_mut() = uri;
    for (name, value) in headers {
        req.headers_mut().append(
            http::header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.clone(),
        );
    }
    req
}

fn resolve(r: &dyn Resolver, req: &Request<()>) -> Result<Option<TenantId>, ResolveError> {
    r.resolve(&RequestHead::of(req))
}

fn reason(r: &Result<Option<TenantId>, ResolveError>) -> Option<&ResolveErrorReason> {
    r.as_ref().err().map(|e| &e.reason)
}

/// Path segments: letters, digits, dots, percent escapes (valid, invalid,
/// truncated, UTF-8 and not), '+', and the "tenants" literal.
fn path_strategy() -> impl Strategy<Value = String> {
    let segment = prop_oneof![
        Just("tenants".to_owned()),
        Just("..".to_owned()),
        Just(String::new()),
        "[a-zA-Z0-9._~+-]{0,10}",
        "(%[0-9a-fA-F]{2}|%[g-z]{1,2}|%|[a-z.]){0,12}",
        prop::collection::vec(any::<u8>(), 0..8)
            .prop_map(|b| { b.iter().map(|b| format!("%{b:02x}")).collect::<String>() }),
    ];
    prop::collection::vec(segment, 0..6).prop_map(|s| format!("/{}", s.join("/")))
}

/// The resolver as first written: decode the whole segment, then parse.
fn reference_path(raw: Option<&str>, max: usize) -> Result<Option<String>, ResolveErrorReason> {
    let Some(raw) = raw else { return Ok(None) };
    if raw.len() > 3 * max {
        // bounded-work shortcut: such a segment can only decode to a too-long value
        return Err(InvalidTenantId::TooLong { max }.into());
    }
    let decoded = percent_decode_str(raw)
        .decode_utf8()
        .map_err(|_| ResolveErrorReason::BadEncoding)?;
    TenantId::new(&decoded)
        .map(|id| Some(id.as_str().to_owned()))
        .map_err(Into::into)
}

fn query_strategy() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("tenant".to_owned()),
        Just("%74enant".to_owned()),
        Just("tenant+".to_owned()),
        Just("tenan%74".to_owned()),
        Just("%74%65%6e%61%6e%74".to_owned()),
        Just("%74%65%6e%61%6e%74+".to_owned()),
        Just(String::new()),
        "[a-z%0-9+]{0,8}",
    ];
    let value = prop_oneof![
        valid_id(),
        "[a-zA-Z0-9%+=.;,-]{0,12}",
        "(%[0-9a-fA-F]{2}|%[g-z]|%|\\+){0,10}",
        "[a-z]{60,70}",
        "(%6[1-9]){60,70}",
        "[a-z+]{185,200}",
    ];
    let pair = prop_oneof![
        (key.clone(), value).prop_map(|(k, v)| format!("{k}={v}")),
        key,
    ];
    prop::collection::vec(pair, 0..5).prop_map(|p| p.join("&"))
}

/// The query resolver as first written: `form_urlencoded::parse` over the whole query.
fn reference_query(query: Option<&str>, name: &str) -> Result<Option<String>, ResolveErrorReason> {
    let Some(query) = query else { return Ok(None) };
    let mut found: Option<Cow<'_, str>> = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == name {
            if found.is_some() {
                return Err(ResolveErrorReason::Ambiguous);
            }
            found = Some(value);
        }
    }
    match found {
        None => Ok(None),
        Some(v) => TenantId::new(&v)
            .map(|id| Some(id.as_str().to_owned()))
            .map_err(Into::into),
    }
}

fn simplify(
    r: Result<Option<TenantId>, ResolveError>,
) -> Result<Option<String>, ResolveErrorReason> {
    r.map(|o| o.map(|id| id.as_str().to_owned()))
        .map_err(|e| e.reason)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn header_resolver_never_panics(values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..80), 0..4)) {
        let values: Vec<HeaderValue> = values.iter().filter_map(|v| HeaderValue::from_bytes(v).ok()).collect();
        let headers: Vec<(&str, HeaderValue)> = values.iter().map(|v| ("x-tenant-id", v.clone())).collect();
        let req = request(Uri::from_static("/"), &headers);
        let got = resolve(&HeaderResolver::new("x-tenant-id"), &req);
        match values.as_slice() {
            [] => prop_assert_eq!(got, Ok(None)),
            [one] => prop_assert_eq!(
                simplify(got),
                TenantIdRules::default().parse_bytes(one.as_bytes()).map(|id| Some(id.as_str().to_owned())).map_err(Into::into)
            ),
            _ => prop_assert_eq!(reason(&got), Some(&ResolveErrorReason::Ambiguous)),
        }
    }

    #[test]
    fn path_resolver_never_panics_on_arbitrary_uris(s in any::<String>(), i in 0usize..4) {
        for candidate in [s.clone(), format!("/{s}"), format!("/tenants/{s}")] {
            let Some(uri) = uri_of(&candidate) else { continue };
            let req = request(uri, &[]);
            let _ = resolve(&PathResolver::after("tenants"), &req);
            let _ = resolve(&PathResolver::segment(i), &req);
        }
    }

    #[test]
    fn path_resolver_matches_reference(path in path_strategy(), i in 0usize..4) {
        let Some(uri) = uri_of(&path) else { return Ok(()) };
        let req = request(uri, &[]);
        let p = req.uri().path();
        let segments: Vec<&str> = p.strip_prefix('/').unwrap_or(p).split('/').collect();
        let after = segments.iter().position(|s| *s == "tenants").and_then(|k| segments.get(k + 1).copied());
        prop_assert_eq!(simplify(resolve(&PathResolver::after("tenants"), &req)), reference_path(after, 64));
        prop_assert_eq!(simplify(resolve(&PathResolver::segment(i), &req)), reference_path(segments.get(i).copied(), 64));
    }

    #[test]
    fn query_resolver_never_panics_on_arbitrary_uris(s in any::<String>()) {
        for candidate in [format!("/x?{s}"), format!("/x?tenant={s}"), format!("http://h/?{s}")] {
            let Some(uri) = uri_of(&candidate) else { continue };
            let req = request(uri, &[]);
            let got = simplify(resolve(&QueryResolver::new("tenant"), &req));
            prop_assert_eq!(got, reference_query(req.uri().query(), "tenant"));
        }
    }

    #[test]
    fn query_resolver_matches_form_urlencoded(query in query_strategy()) {
        let Some(uri) = uri_of(&format!("/x?{query}")) else { return Ok(()) };
        let req = request(uri, &[]);
        let got = simplify(resolve(&QueryResolver::new("tenant"), &req));
        prop_assert_eq!(got, reference_query(req.uri().query(), "tenant"));
    }

    #[test]
    fn host_resolver_never_panics_and_only_returns_the_label(
        header in prop::collection::vec(any::<u8>(), 0..60),
        label in "[a-zA-Z0-9._@:\\[\\]-]{0,12}",
        suffix in prop_oneof![Just(".example.com"), Just(".EXAMPLE.com."), Just(".example.com:8080"), Just(".example.org"), Just("")],
        authority in any::<String>(),
    ) {
        let r = HostResolver::subdomain_of("example.com");
        let mut hosts: Vec<Vec<u8>> = vec![header, format!("{label}{suffix}").into_bytes()];
        hosts.retain(|h| HeaderValue::from_bytes(h).is_ok());
        for host in &hosts {
            let req = request(Uri::from_static("/"), &[("host", HeaderValue::from_bytes(host).unwrap())]);
            let got = resolve(&r, &req);
            if let Ok(Some(id)) = &got {
                // The id is the lowercased first label, directly below example.com.
                let host = String::from_utf8_lossy(host).to_ascii_lowercase();
                prop_assert!(host.starts_with(&format!("{id}.example.com")), "{host:?} -> {id}");
                prop_assert!(!id.as_str().contains('.'));
                prop_assert_eq!(id.as_str(), id.as_str().to_ascii_lowercase());
            }
        }
        for candidate in [format!("http://{authority}/"), format!("http://{label}{suffix}/")] {
            let Some(uri) = uri_of(&candidate) else { continue };
            let req = request(uri, &[]);
            if let Ok(Some(id)) = resolve(&r, &req) {
                let host = req.uri().host().unwrap().to_ascii_lowercase();
                prop_assert!(host.starts_with(&format!("{id}.example.com")), "{host:?} -> {id}");
            }
        }
    }

    /// A valid id, each character percent-encoded or not (upper or lower hex),
    /// resolves to the same id from the path and from the query.
    #[test]
    fn percent_encoded_ids_resolve_to_the_same_id(id in valid_id(), choices in prop::collection::vec(0u8..3, 64)) {
        let encoded: String = id
            .bytes()
            .zip(choices.iter().cycle())
            .map(|(b, c)| match c {
                0 => (b as char).to_string(),
                1 => format!("%{b:02X}"),
                _ => format!("%{b:02x}"),
            })
            .collect();
        let want = Ok(Some(id.clone()));
        let req = request(uri_of(&format!("/v1/tenants/{encoded}/jobs?tenant={encoded}")).unwrap(), &[]);
        prop_assert_eq!(simplify(resolve(&PathResolver::after("tenants"), &req)), want.clone());
        prop_assert_eq!(simplify(resolve(&PathResolver::segment(2), &req)), want.clone());
        prop_assert_eq!(simplify(resolve(&QueryResolver::new("tenant"), &req)), want);
    }
}

// ---------------------------------------------------------------------------
// the chain

#[derive(Debug, Clone)]
enum Source {
    Absent,
    Valid(&'static str),
    Malformed,
}

fn source() -> impl Strategy<Value = Source> {
    prop_oneof![
        Just(Source::Absent),
        prop::sample::select(vec!["acme", "globex", "initech"]).prop_map(Source::Valid),
        Just(Source::Malformed),
    ]
}

fn chain() -> ResolverChain {
    ResolverChain::new()
        .or(HeaderResolver::new("x-tenant-id"))
        .or(PathResolver::after("tenants"))
        .or(QueryResolver::new("tenant"))
        .or(HostResolver::subdomain_of("example.com"))
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    /// With header, path, query and host each absent, valid or malformed,
    /// the chain answers with the first source present: its id, or its error.
    #[test]
    fn chain_first_hit_wins(h in source(), p in source(), q in source(), o in source()) {
        let path = match &p {
            Source::Absent => "/x".to_owned(),
            Source::Valid(id) => format!("/tenants/{id}"),
            Source::Malformed => "/tenants/%2e%2e".to_owned(),
        };
        let query = match &q {
            Source::Absent => String::new(),
            Source::Valid(id) => format!("?tenant={id}"),
            Source::Malformed => "?tenant=a&tenant=b".to_owned(),
        };
        let mut headers = vec![];
        match &h {
            Source::Absent => {}
            Source::Valid(id) => headers.push(("x-tenant-id", HeaderValue::from_static(id))),
            Source::Malformed => headers.push(("x-tenant-id", HeaderValue::from_static(".."))),
        }
        match &o {
            Source::Absent => headers.push(("host", HeaderValue::from_static("example.com"))),
            Source::Valid(id) => headers.push(("host", HeaderValue::from_str(&format!("{id}.example.com")).unwrap())),
            Source::Malformed => headers.push(("host", HeaderValue::from_static("a.b.example.com"))),
        }
        let req = request(uri_of(&format!("{path}{query}")).unwrap(), &headers);
        let got = resolve(&chain(), &req);
        let first = [&h, &p, &q, &o].into_iter().find(|s| !matches!(s, Source::Absent));
        match first {
            None => prop_assert_eq!(got, Ok(None)),
            Some(Source::Valid(id)) => prop_assert_eq!(got.map(|o| o.map(|t| t.as_str().to_owned())), Ok(Some((*id).to_owned()))),
            Some(_) => prop_assert!(got.is_err()),
        }
    }

    /// In general: the chain's answer is the first answer of its members that is not `Ok(None)`.
    #[test]
    fn chain_is_the_first_non_empty_member(path in path_strategy(), query in query_strategy(), hdr in prop::collection::vec(any::<u8>(), 0..12), host in "[a-zA-Z0-9.:-]{0,20}") {
        let Some(uri) = uri_of(&format!("{path}?{query}")) else { return Ok(()) };
        let mut headers = vec![];
        if let Ok(v) = HeaderValue::from_bytes(&hdr) {
            if !hdr.is_empty() {
                headers.push(("x-tenant-id", v));
            }
        }
        headers.push((HOST.as_str(), HeaderValue::from_str(&format!("{host}.example.com")).unwrap()));
        let req = request(uri, &headers);
        let members: Vec<Box<dyn Resolver>> = vec![
            Box::new(HeaderResolver::new("x-tenant-id")),
            Box::new(PathResolver::after("tenants")),
            Box::new(QueryResolver::new("tenant")),
            Box::new(HostResolver::subdomain_of("example.com")),
        ];
        let want = members
            .iter()
            .map(|m| resolve(m.as_ref(), &req))
            .find(|r| !matches!(r, Ok(None)))
            .unwrap_or(Ok(None));
        prop_assert_eq!(resolve(&chain(), &req), want);
    }
}

// ---------------------------------------------------------------------------
// catalogs

const TOML_CATALOG: &str = r#"
[[plans]]
name = "free"
features = ["webhooks"]
limits = { workflows = 5, seats = "unlimited" }
rates = { api = { limit = 60, window = "1m" }, log = { limit = 5, window = "30s", algorithm = "sliding_log" } }
quotas = { executions_per_day = { limit = 100, period = "day" } }
concurrency = { runs = { limit = 2, lease_ttl = "5m" } }

[[tenants]]
id = "acme"
plan = "free"
status = "suspended"
overrides = { features = { beta = true }, limits = { workflows = 10 } }
"#;

const JSON_CATALOG: &str = r#"{"plans":[{"name":"free","features":["webhooks"],"limits":{"workflows":5,"seats":"unlimited"},"rates":{"api":{"limit":60,"window":"1m"}},"quotas":{"q":{"limit":100,"period":"month"}},"concurrency":{"runs":{"limit":2}}}],"tenants":[{"id":"acme","plan":"free","status":"expired","overrides":{"limits":{"workflows":10}}}]}"#;

#[derive(Debug, Clone)]
enum Edit {
    Insert(usize, String),
    Delete(usize, usize),
    Replace(usize, String),
}

fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let text = prop_oneof![
        "[\\[\\]{}\",=:.\\n #a-z0-9-]{1,4}",
        Just("\"unlimited\"".to_owned()),
        Just("-1".to_owned()),
        Just("18446744073709551616".to_owned()),
        Just("\"0s\"".to_owned()),
        Just("\"367d\"".to_owned()),
        Just("\"a/b\"".to_owned()),
        any::<String>(),
    ];
    let edit = prop_oneof![
        (any::<usize>(), text.clone()).prop_map(|(i, t)| Edit::Insert(i, t)),
        (any::<usize>(), 1usize..6).prop_map(|(i, n)| Edit::Delete(i, n)),
        (any::<usize>(), text).prop_map(|(i, t)| Edit::Replace(i, t)),
    ];
    prop::collection::vec(edit, 1..4)
}

fn apply(base: &str, edits: &[Edit]) -> String {
    let mut s: Vec<char> = base.chars().collect();
    for e in edits {
        match e {
            Edit::Insert(i, t) => {
                let at = i % (s.len() + 1);
                s.splice(at..at, t.chars());
            }
            Edit::Delete(i, n) => {
                let at = i % (s.len() + 1);
                let end = (at + n).min(s.len());
                s.drain(at..end);
            }
            Edit::Replace(i, t) => {
                let at = i % (s.len() + 1);
                let end = (at + t.chars().count()).min(s.len());
                s.splice(at..end, t.chars());
            }
        }
    }
    s.into_iter().collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn catalogs_never_panic_on_arbitrary_text(s in any::<String>()) {
        let _ = Catalog::from_toml_str(&s);
        let _ = Catalog::from_json_str(&s);
    }

    #[test]
    fn catalogs_never_panic_on_mutated_documents(e in edits()) {
        for (base, toml) in [(TOML_CATALOG, true), (JSON_CATALOG, false)] {
            let text = apply(base, &e);
            let result = if toml { Catalog::from_toml_str(&text) } else { Catalog::from_json_str(&text) };
            if let Ok(catalog) = result {
                // Whatever loads is valid: every tenant's plan exists and every name is a valid id.
                for t in catalog.tenants() {
                    prop_assert!(catalog.plan(&t.base_plan().name).is_some());
                }
                for name in catalog.plans().keys() {
                    prop_assert!(TenantId::new(name).is_ok());
                }
            }
        }
    }
}

#[test]
fn catalog_bases_load() {
    let t = Catalog::from_toml_str(TOML_CATALOG).unwrap();
    assert_eq!(t.tenants()[0].status(), TenantStatus::Suspended);
    let j = Catalog::from_json_str(JSON_CATALOG).unwrap();
    assert_eq!(j.tenants()[0].status(), TenantStatus::Expired);
}

#[test]
fn catalogs_refuse_deep_nesting_without_overflowing_the_stack() {
    for n in [1_000usize, 100_000] {
        let docs = [
            format!("{} = 1", vec!["a"; n].join(".")),
            format!("[{}]\nx = 1", vec!["plans"; n].join(".")),
            format!("plans.{} = 1", vec!["a"; n].join(".")),
            format!("plans = {}", "[".repeat(n)),
            format!("plans = {}", "{a=".repeat(n)),
            format!("[[plans]]\nname = \"x\"\nlimits = {}", "{a=".repeat(n)),
        ];
        for doc in &docs {
            assert!(Catalog::from_toml_str(doc).is_err());
        }
        let docs = [
            format!("{{\"plans\":{}", "[".repeat(n)),
            format!(
                "{{\"plans\":[{{\"name\":\"x\",\"features\":{}",
                "[".repeat(n)
            ),
            "{\"a\":".repeat(n),
        ];
        for doc in &docs {
            assert!(Catalog::from_json_str(doc).is_err());
        }
    }
}

// ---------------------------------------------------------------------------
// rejections

fn kind() -> impl Strategy<Value = RejectionKind> {
    prop::sample::select(vec![
        RejectionKind::TenantRequired,
        RejectionKind::MalformedTenantId,
        RejectionKind::UnknownTenant,
        RejectionKind::TenantInactive(TenantStatus::Suspended),
        RejectionKind::TenantInactive(TenantStatus::Expired),
        RejectionKind::TenantInactive(TenantStatus::Deleted),
        RejectionKind::TenantInactive(TenantStatus::Active),
        RejectionKind::TenantNotPermitted,
        RejectionKind::FeatureNotInPlan,
        RejectionKind::ResourceLimitReached,
        RejectionKind::RateLimited,
        RejectionKind::QuotaExceeded,
        RejectionKind::ConcurrencyLimited,
        RejectionKind::Unavailable,
    ])
}

/// Durations up to (not including) `u64::MAX` seconds: see
/// `retry_after_of_duration_max_overflows` for the excluded end.
fn duration() -> impl Strategy<Value = Duration> {
    prop_oneof![
        (0u64..100_000, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
        (0u64..u64::MAX, 0u32..1_000_000_000).prop_map(|(s, n)| Duration::new(s, n)),
    ]
}

fn text() -> impl Strategy<Value = String> {
    prop_oneof![any::<String>(), "[a-z_\"\\\\%\\n\\r\u{0}\u{e9}]{0,20}"]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn rejections_always_render(
        kind in kind(),
        status in prop::option::of(100u16..1000),
        detail in prop::option::of(text()),
        tenant in prop::option::of(valid_id()),
        plan in prop::option::of(text()),
        feature in prop::option::of(text()),
        policy in prop::option::of(text()),
        usage in prop::option::of((any::<u64>(), any::<u64>())),
        retry in prop::option::of(duration()),
        rate in prop::option::of((text(), any::<u64>(), any::<u64>(), duration(), prop::option::of(duration()), 0u8..3)),
    ) {
        let mut r = Rejection::new(kind);
        if let Some(s) = status {
            r = r.status(StatusCode::from_u16(s).unwrap());
        }
        if let Some(d) = &detail { r = r.detail(d.clone()); }
        if let Some(t) = &tenant { r = r.tenant(t.parse().unwrap()); }
        if let Some(p) = &plan { r = r.plan(p.clone()); }
        if let Some(f) = &feature { r = r.feature(f.clone()); }
        if let Some(p) = &policy { r = r.policy(p.clone()); }
        if let Some((l, u)) = usage { r = r.usage(l, u); }
        if let Some(d) = retry { r = r.retry_after(d); }
        if let Some((policy, limit, remaining, reset, window, style)) = rate {
            r = r.rate_limit(RateLimitFields {
                policy,
                limit,
                remaining,
                reset,
                window,
                style: [HeaderStyle::Ietf, HeaderStyle::IetfAndLegacy, HeaderStyle::None][style as usize],
            });
        }
        let want_status = status.unwrap_or(kind.default_status().as_u16());

        let http = r.to_response(false);
        prop_assert_eq!(http.status().as_u16(), want_status);
        prop_assert_eq!(&http.headers()["content-type"], "application/problem+json");
        let body: serde_json::Value = serde_json::from_slice(http.body()).expect("valid JSON");
        prop_assert_eq!(&body["code"], kind.code());
        prop_assert_eq!(&body["status"], want_status);
        // 429s take the registered quota-exceeded type (issue 13).
        let want_type = if matches!(kind, RejectionKind::RateLimited | RejectionKind::QuotaExceeded | RejectionKind::ConcurrencyLimited) {
            "https://iana.org/assignments/http-problem-types#quota-exceeded".to_owned()
        } else {
            format!("urn:tower-tenancy:problem:{}", kind.code())
        };
        prop_assert_eq!(body["type"].as_str().unwrap(), want_type);
        prop_assert!(body["title"].is_string() && body["detail"].is_string());
        if let Some(t) = &tenant {
            prop_assert_eq!(&body["tenant"], t.as_str());
        }
        if let Some(d) = retry {
            let secs: u64 = http.headers()["retry-after"].to_str().unwrap().parse().unwrap();
            prop_assert!(secs >= 1 && secs >= d.as_secs());
        }

        let grpc = r.to_response(true);
        prop_assert_eq!(grpc.status(), StatusCode::OK);
        prop_assert!(grpc.body().is_empty());
        let code: u8 = grpc.headers()["grpc-status"].to_str().unwrap().parse().unwrap();
        prop_assert_eq!(code, kind.grpc_code());
        prop_assert!([3u8, 7, 8, 14].contains(&code));
        if let Some(m) = grpc.headers().get("grpc-message") {
            prop_assert!(m.as_bytes().iter().all(|b| (0x20..=0x7e).contains(b)));
        }
        // Display never panics either.
        let _ = r.to_string();
    }
}

/// Regression: `Retry-After` of `Duration::MAX` once overflowed while
/// rounding up to whole seconds.
#[test]
fn retry_after_of_duration_max_overflows() {
    let r = Rejection::new(RejectionKind::RateLimited).retry_after(Duration::MAX);
    let res = r.to_response(false);
    assert_eq!(res.headers()["retry-after"], u64::MAX.to_string().as_str());
}

/// Regression: TOML integers arrive as `i64`, and integer-second windows
/// (`window = 30`) were once refused from TOML while JSON accepted them.
#[test]
fn toml_integer_seconds_load() {
    let doc = "[[plans]]\nname = \"free\"\nrates = { api = { limit = 5, window = 30 } }\n";
    Catalog::from_toml_str(doc).unwrap();
}

// ---------------------------------------------------------------------------
// The path resolver against its reference model (tests/common/path_reference.rs,
// also the fuzz target's oracle).

#[path = "common/path_reference.rs"]
mod path_reference;

fn path_piece() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("tenants".to_owned()),
        Just(String::new()),
        Just("acme".to_owned()),
        Just("ACME".to_owned()),
        Just("%61cme".to_owned()),
        Just("%2e%2e".to_owned()),
        Just("a%2Fb".to_owned()),
        Just("%".to_owned()),
        Just("%4".to_owned()),
        Just("%zz".to_owned()),
        Just("%C3%A9".to_owned()),
        Just("%FF".to_owned()),
        Just("-x".to_owned()),
        Just("x.y_z-1".to_owned()),
        "[a-zA-Z0-9._~%-]{0,12}",
        "[a-z]{60,70}",
    ]
}

proptest! {
    #[test]
    fn path_resolver_matches_the_shared_reference(
        pieces in proptest::collection::vec(path_piece(), 0..6),
        query in proptest::option::of("[a-z=&]{0,8}"),
        index in 0usize..7,
        max_len in 1usize..70,
        lowercase in any::<bool>(),
    ) {
        let path = format!("/{}", pieces.join("/"));
        let uri = match &query {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let Ok(req) = Request::get(uri.as_str()).body(()) else {
            return Ok(());
        };
        let head = RequestHead::of(&req);
        let rules = TenantIdRules::default().max_len(max_len).lowercase(lowercase);
        let path = req.uri().path();
        for (resolver, segment) in [
            (PathResolver::after("tenants"), path_reference::Segment::After("tenants")),
            (PathResolver::segment(index), path_reference::Segment::Index(index)),
        ] {
            let got = resolver
                .rules(rules)
                .resolve(&head)
                .map(|id| id.map(|id| id.as_str().to_owned()))
                .map_err(|_| ());
            let want = path_reference::expected(path, segment, &rules);
            prop_assert_eq!(got, want, "{:?} {:?}", path, segment);
        }
    }
}
