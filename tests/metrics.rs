//! Counters through the `metrics` facade (feature `metrics`), read back with
//! metrics-util's debugging recorder.
#![cfg(feature = "metrics")]

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::MemoryStore;
use tower_tenancy::{AdmissionLayer, MemoryDirectory, Plan, RateRule, Rule, TenancyLayer, Tenant};

#[tokio::test]
async fn admitted_and_rejected_counters_with_optional_tenant_label() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();
    tower_tenancy::observe::label_tenants(true);

    let dir = MemoryDirectory::new();
    let plan = Plan::new("free").rate("api", RateRule::new(2, Duration::from_secs(60)));
    dir.insert(Tenant::new("acme".parse().unwrap(), Arc::new(plan)));
    let svc = ServiceBuilder::new()
        .layer(TenancyLayer::new(HeaderResolver::new("x-tenant-id"), dir))
        .layer(AdmissionLayer::new(MemoryStore::new()).rule(Rule::rate("api")))
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, std::convert::Infallible>(Response::new(String::new()))
        }));
    let call = |tenant: &str| {
        let req = Request::builder()
            .header("x-tenant-id", tenant)
            .body(())
            .unwrap();
        svc.clone().oneshot(req)
    };
    let statuses = [
        call("acme").await.unwrap().status(),
        call("acme").await.unwrap().status(),
        call("acme").await.unwrap().status(),
        call("nobody").await.unwrap().status(),
    ];
    assert_eq!(statuses.map(|s| s.as_u16()), [200, 200, 429, 403]);

    let mut counters = HashMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let (_, key) = key.into_parts();
        let mut labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        labels.sort();
        if let DebugValue::Counter(n) = value {
            counters.insert(format!("{}{{{}}}", key.name(), labels.join(",")), n);
        }
    }
    assert_eq!(
        counters.get("tenancy_admitted_total{policy=api,tenant=acme}"),
        Some(&2),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("tenancy_rejected_total{code=rate_limited,policy=api,tenant=acme}"),
        Some(&1),
        "{counters:?}"
    );
    assert_eq!(
        counters.get("tenancy_rejected_total{code=unknown_tenant,policy=,tenant=nobody}"),
        Some(&1),
        "{counters:?}"
    );
}
