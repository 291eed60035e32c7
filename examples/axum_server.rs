//! A small SaaS-like API (workflows and their executions) made multi-tenant
//! with tower-tenancy, on the in-memory defaults and `examples/plans.toml`.
//!
//! ```sh
//! cargo run --example axum_server          # serves on 127.0.0.1:3000
//! curl -s localhost:3000/v1/me -H 'x-tenant-id: acme'
//! ```
//!
//! Environment: `ADDR` (default `127.0.0.1:3000`), `PLANS` (default the
//! shipped `examples/plans.toml`).
//!
//! Tenants come from the `X-Tenant-ID` header, else the `tenant` query
//! parameter. Policies, by route:
//!
//! | route | policies |
//! |---|---|
//! | `GET /health` | none (no tenant needed) |
//! | `GET /v1/me`, `GET /v1/workflows` | rate limit `api_calls_per_minute` |
//! | `POST /v1/workflows` | rate limit, resource limit `workflows` (counted by the app) |
//! | `DELETE /v1/workflows/{id}` | rate limit |
//! | `POST /v1/workflows/{id}/executions?duration_ms=N` | rate limit, quota `executions_per_day`, concurrency `concurrent_executions` |
//! | `POST /v1/patterns` | feature `custom_patterns`, rate limit |

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
use tower_tenancy::layer::feature::RequireFeatureLayer;
use tower_tenancy::layer::limit::ResourceLimitLayer;
use tower_tenancy::resolve::{HeaderResolver, QueryResolver, ResolverChain};
use tower_tenancy::store::MemoryStore;
use tower_tenancy::{Catalog, CurrentTenant, MemoryDirectory, TenancyLayer, Tenant, TenantId};

/// The application's own data: workflows per tenant (a database in real life).
#[derive(Clone, Default)]
struct Db {
    workflows: Arc<Mutex<BTreeMap<TenantId, BTreeMap<u64, String>>>>,
    next_id: Arc<Mutex<u64>>,
}

impl Db {
    fn count(&self, tenant: &TenantId) -> u64 {
        self.workflows
            .lock()
            .get(tenant)
            .map_or(0, |w| w.len() as u64)
    }
}

#[tokio::main]
async fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,tower_tenancy=info".into()),
        )
        .init();
    let addr = std::env::var("ADDR").unwrap_or_else(|_| "127.0.0.1:3000".into());
    let plans = std::env::var("PLANS")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.toml").into());
    let catalog = match Catalog::from_path(&plans) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("cannot load {plans}: {e}");
            std::process::exit(2);
        }
    };
    let directory = MemoryDirectory::from_catalog(&catalog);
    let store = Arc::new(MemoryStore::new());
    let app = app(directory, store, Db::default());

    let listener = match tokio::net::TcpListener::bind(&addr).await {
        Ok(l) => l,
        Err(e) => {
            eprintln!("cannot listen on {addr}: {e}");
            std::process::exit(2);
        }
    };
    tracing::info!(
        "listening on http://{addr} with {} tenants from {plans}",
        catalog.tenants().len()
    );
    axum::serve(listener, app).await.unwrap();
}

fn app(directory: MemoryDirectory, store: Arc<MemoryStore>, db: Db) -> Router {
    let api = || AdmissionLayer::new(store.clone()).rule(Rule::rate("api_calls_per_minute"));
    let execution = AdmissionLayer::new(store.clone())
        .rule(Rule::rate("api_calls_per_minute"))
        .rule(Rule::quota("executions_per_day"))
        .rule(Rule::concurrency("concurrent_executions"));
    let db_for_limit = db.clone();
    let workflow_limit =
        ResourceLimitLayer::new("workflows", move |tenant: Arc<Tenant>, _: Arc<str>| {
            let count = db_for_limit.count(tenant.id());
            async move { Ok::<_, Infallible>(count) }
        });

    let tenant_routes = Router::new()
        .route("/v1/me", get(me).route_layer(api()))
        .route(
            "/v1/workflows",
            get(list_workflows)
                .route_layer(api())
                // Layers run outside-in: the rate limit is checked before the resource limit.
                .merge(
                    post(create_workflow)
                        .route_layer(workflow_limit)
                        .route_layer(api()),
                ),
        )
        .route(
            "/v1/workflows/{id}",
            delete(delete_workflow).route_layer(api()),
        )
        .route(
            "/v1/workflows/{id}/executions",
            post(run_execution).route_layer(execution),
        )
        .route(
            "/v1/patterns",
            post(create_pattern)
                .route_layer(RequireFeatureLayer::new("custom_patterns"))
                .route_layer(api()),
        )
        .layer(TenancyLayer::new(
            ResolverChain::new()
                .or(HeaderResolver::new("x-tenant-id"))
                .or(QueryResolver::new("tenant")),
            directory,
        ))
        .with_state(db);

    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(tenant_routes)
}

async fn me(tenant: CurrentTenant) -> Json<Value> {
    let plan = tenant.plan();
    Json(json!({
        "tenant": tenant.id(),
        "status": tenant.status(),
        "plan": plan.name,
        "features": plan.features,
        "limits": plan.limits,
        "rates": plan.rates,
        "quotas": plan.quotas,
        "concurrency": plan.concurrency,
    }))
}

async fn list_workflows(tenant: CurrentTenant, State(db): State<Db>) -> Json<Value> {
    let all = db.workflows.lock();
    let list: Vec<Value> = all
        .get(tenant.id())
        .into_iter()
        .flatten()
        .map(|(id, name)| json!({ "id": id, "name": name }))
        .collect();
    Json(json!({ "workflows": list }))
}

#[derive(Deserialize)]
struct NewWorkflow {
    name: String,
}

async fn create_workflow(
    tenant: CurrentTenant,
    State(db): State<Db>,
    Json(body): Json<NewWorkflow>,
) -> (StatusCode, Json<Value>) {
    let id = {
        let mut next = db.next_id.lock();
        *next += 1;
        *next
    };
    let name: String = body.name.chars().take(100).collect();
    db.workflows
        .lock()
        .entry(tenant.id().clone())
        .or_default()
        .insert(id, name.clone());
    (StatusCode::CREATED, Json(json!({ "id": id, "name": name })))
}

async fn delete_workflow(
    tenant: CurrentTenant,
    State(db): State<Db>,
    Path(id): Path<u64>,
) -> StatusCode {
    let removed = db
        .workflows
        .lock()
        .get_mut(tenant.id())
        .and_then(|w| w.remove(&id));
    match removed {
        Some(_) => StatusCode::NO_CONTENT,
        None => StatusCode::NOT_FOUND,
    }
}

#[derive(Deserialize)]
struct RunParams {
    duration_ms: Option<u64>,
}

async fn run_execution(
    tenant: CurrentTenant,
    Path(id): Path<u64>,
    Query(params): Query<RunParams>,
) -> Json<Value> {
    // Simulated work; bounded so a client cannot park a task forever.
    let ms = params.duration_ms.unwrap_or(0).min(10_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    Json(json!({ "tenant": tenant.id(), "workflow": id, "status": "succeeded", "duration_ms": ms }))
}

async fn create_pattern(tenant: CurrentTenant) -> (StatusCode, Json<Value>) {
    (
        StatusCode::CREATED,
        Json(json!({ "tenant": tenant.id(), "pattern": "created" })),
    )
}
