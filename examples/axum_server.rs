//! A small SaaS-like API (workflows and their executions) made multi-tenant
//! with tower-tenancy, on the in-memory defaults and `examples/plans.toml`.
//!
//! ```sh
//! cargo run --example axum_server          # serves on 127.0.0.1:3000
//! curl -s localhost:3000/v1/me -H 'x-tenant-id: acme'
//! ```
//!
//! Environment: `ADDR` (default `127.0.0.1:3000`), `PLANS` (default the
//! shipped `examples/plans.toml`), `ADMIN_TOKEN` (default `admin-secret`).
//!
//! Counters are in memory unless `REDIS_URL` is set (build with
//! `--features redis`): `REDIS_URL=redis://127.0.0.1:6379` for one server,
//! a comma-separated list of nodes for a Redis Cluster, or
//! `redis+sentinel://host:26379,host:26380,host:26381/mymaster` for the
//! master named `mymaster` behind Sentinel (build with `--features
//! redis-sentinel`; the store follows a failover). `STORE_FAILURE`
//! chooses what happens when Redis fails: `fallback` (default: a local
//! in-memory limiter), `open` (admit) or `closed` (503); each call has a
//! 100 ms timeout (`STORE_TIMEOUT_MS`). A tenant refused by Redis for a
//! rate or quota is refused locally until its `Retry-After` (a
//! `DenyCache`; `DENY_CACHE=off` asks Redis every time); with a cluster,
//! each master has its own connection and breaker.
//!
//! With `DATABASE_URL` set (build with `--features postgres`), tenants,
//! plans and API keys live in PostgreSQL and workflows in tables under
//! row-level security; every request needs `Authorization: Bearer <API
//! key>`, and changes made on one instance apply on all within a
//! notification (see `examples/postgres/mod.rs`). The plans file seeds
//! missing plans and tenants at start.
//!
//! Tenants come from the `X-Tenant-ID` header, else the `tenant` query
//! parameter (with PostgreSQL: else the API key's tenant, and a claimed
//! tenant must be the key's). Policies, by route:
//!
//! | route | policies |
//! |---|---|
//! | `GET /health` | none (no tenant needed) |
//! | `GET /v1/me`, `GET /v1/workflows` | rate limit `api_calls_per_minute` |
//! | `POST /v1/workflows` | rate limit, resource limit `workflows` (counted by the app) |
//! | `DELETE /v1/workflows/{id}` | rate limit |
//! | `POST /v1/workflows/{id}/executions?duration_ms=N` | rate limit, quota `executions_per_day`, concurrency `concurrent_executions` |
//! | `POST /v1/patterns` | feature `custom_patterns`, rate limit |
//!
//! Admin endpoints (`Authorization: Bearer $ADMIN_TOKEN`, no tenant):
//! `GET /admin/tenants`, `GET /admin/tenants/{id}`,
//! `GET /admin/tenants/{id}/usage`, `PATCH /admin/tenants/{id}` with
//! `{"plan": .., "status": .., "overrides": ..}` (each optional),
//! `POST /admin/reload` (re-reads the plans file; counters are kept).
//! With PostgreSQL also `POST /admin/tenants/{id}/keys` (`{"label": ..}`
//! optional; answers the key, shown once) and `DELETE /admin/keys/{key_id}`
//! (revokes it on every instance).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use parking_lot::Mutex;
use serde::Deserialize;
use serde_json::{json, Value};
use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
use tower_tenancy::layer::feature::RequireFeatureLayer;
use tower_tenancy::layer::limit::ResourceLimitLayer;
use tower_tenancy::resolve::{HeaderResolver, QueryResolver, ResolverChain};
use tower_tenancy::store::{CounterStore, MemoryStore};
use tower_tenancy::usage::usage_report;
use tower_tenancy::{
    Catalog, CurrentTenant, MemoryDirectory, Overrides, TenancyLayer, Tenant, TenantId,
    TenantStatus, UtcTime,
};

/// The PostgreSQL mode (`DATABASE_URL`).
#[cfg(feature = "postgres")]
#[path = "postgres/mod.rs"]
pub mod postgres;

/// The application's own data: workflows per tenant (a database in real life).
#[derive(Clone, Default)]
pub struct Db {
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
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
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
    let store = match store_from_env().await {
        Ok(store) => store,
        Err(e) => {
            eprintln!("cannot set up the counter store: {e}");
            std::process::exit(2);
        }
    };
    let token = std::env::var("ADMIN_TOKEN").unwrap_or_else(|_| "admin-secret".into());
    let app = match std::env::var("DATABASE_URL") {
        Err(_) => demo(&catalog, &plans, &token, store),
        Ok(url) => match postgres_demo(&url, &catalog, &plans, &token, store).await {
            Ok(app) => app,
            Err(e) => {
                eprintln!("cannot set up PostgreSQL: {e}");
                std::process::exit(2);
            }
        },
    };

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

/// The whole demo: the tenant API and the admin API (tests build it too).
pub fn demo(
    catalog: &Catalog,
    plans_path: &str,
    admin_token: &str,
    store: Arc<dyn CounterStore>,
) -> Router {
    let directory = MemoryDirectory::from_catalog(catalog);
    let admin = Admin {
        token: Arc::from(admin_token),
        plans_path: Arc::from(plans_path),
        catalog: Arc::new(ArcSwap::from_pointee(catalog.clone())),
        directory: directory.clone(),
        store: store.clone(),
        db: Db::default(),
    };
    app(directory, store, admin.db.clone()).merge(admin_routes(admin))
}

/// The demo on PostgreSQL: connect, migrate, seed missing plans and tenants
/// from the catalog.
#[cfg_attr(not(feature = "postgres"), allow(unused_variables))]
async fn postgres_demo(
    url: &str,
    catalog: &Catalog,
    plans_path: &str,
    admin_token: &str,
    store: Arc<dyn CounterStore>,
) -> Result<Router, String> {
    #[cfg(feature = "postgres")]
    {
        let pg = postgres::connect(url).await?;
        let seeded = postgres::seed(&pg.pool, catalog, false).await?;
        tracing::info!(%seeded, "tenants and plans in PostgreSQL; API keys required");
        Ok(postgres::demo(&pg, plans_path, admin_token, store))
    }
    #[cfg(not(feature = "postgres"))]
    {
        Err("DATABASE_URL is set, but the demo was built without `--features postgres`".into())
    }
}

/// The memory store, or Redis (single node or cluster) behind a timeout, a
/// breaker and a failure policy when `REDIS_URL` is set.
async fn store_from_env() -> Result<Arc<dyn CounterStore>, String> {
    let Ok(url) = std::env::var("REDIS_URL") else {
        return Ok(Arc::new(MemoryStore::new()));
    };
    let timeout_ms = std::env::var("STORE_TIMEOUT_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100);
    let failure = std::env::var("STORE_FAILURE").ok();
    shared_store(&url, failure.as_deref(), Duration::from_millis(timeout_ms)).await
}

/// The demo's Redis store: `url` is one server, a comma-separated list of
/// cluster nodes or `redis+sentinel://sentinel[,sentinel…]/master`;
/// `failure` is `open`, `closed` or `fallback` (the default).
/// Public for the reliability tests, which run several instances of the
/// demo in one process, each with its own connection.
#[cfg_attr(not(feature = "redis"), allow(unused_variables))]
pub async fn shared_store(
    url: &str,
    failure: Option<&str>,
    timeout: Duration,
) -> Result<Arc<dyn CounterStore>, String> {
    #[cfg(feature = "redis")]
    {
        use tower_tenancy::store::{ClusterShardStore, DenyCache};
        use tower_tenancy::{FailurePolicy, RedisStore, ResilientStore};
        let nodes: Vec<&str> = url
            .split(',')
            .map(str::trim)
            .filter(|n| !n.is_empty())
            .collect();
        // A cluster: a connection and a breaker per master, so that a master
        // failing over degrades only the tenants whose slots it serves.
        let (redis, masters): (Arc<dyn CounterStore>, _) =
            if let Some(rest) = url.strip_prefix("redis+sentinel://") {
                (sentinel_store(rest).await?, None)
            } else if nodes.len() > 1 {
                let shards = ClusterShardStore::connect(nodes)
                    .await
                    .map_err(|e| e.to_string())?;
                let masters = shards.partitions();
                (Arc::new(shards), Some(masters))
            } else {
                let single = RedisStore::connect(url).await.map_err(|e| e.to_string())?;
                (Arc::new(single), None)
            };
        let policy = match failure {
            Some("open") => FailurePolicy::FailOpen,
            Some("closed") => FailurePolicy::FailClosed,
            Some("fallback") | None => FailurePolicy::Fallback(Arc::new(MemoryStore::new())),
            Some(other) => {
                return Err(format!(
                    "STORE_FAILURE={other:?}: use open, closed or fallback"
                ))
            }
        };
        let timeout_ms = timeout.as_millis();
        tracing::info!(%url, ?policy, timeout_ms, "counters in Redis");
        // A tenant refused for a rate or quota is refused here until its
        // Retry-After, without a Redis call (DENY_CACHE=off: always ask).
        let redis: Arc<dyn CounterStore> = match std::env::var("DENY_CACHE").as_deref() {
            Ok("off") => redis,
            _ => Arc::new(DenyCache::new(redis)),
        };
        let resilient = ResilientStore::new(redis).timeout(timeout).policy(policy);
        Ok(match masters {
            Some(masters) => Arc::new(resilient.partitioned(masters)),
            None => Arc::new(resilient),
        })
    }
    #[cfg(not(feature = "redis"))]
    {
        Err(format!(
            "REDIS_URL={url} is set, but the demo was built without `--features redis`"
        ))
    }
}

/// `host:port[,host:port…]/master_name` (the part of a `redis+sentinel://`
/// URL after the scheme): the named master, found through the sentinels.
#[cfg(feature = "redis")]
async fn sentinel_store(sentinels_and_master: &str) -> Result<Arc<dyn CounterStore>, String> {
    let usage = "REDIS_URL=redis+sentinel://host:port[,host:port…]/master_name";
    let Some((sentinels, master)) = sentinels_and_master.split_once('/') else {
        return Err(format!("no master name: use {usage}"));
    };
    let sentinels: Vec<String> = sentinels
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| format!("redis://{s}"))
        .collect();
    if sentinels.is_empty() || master.is_empty() || master.contains('/') {
        return Err(format!("use {usage}"));
    }
    #[cfg(feature = "redis-sentinel")]
    {
        let store = tower_tenancy::RedisStore::connect_sentinel(master, sentinels)
            .await
            .map_err(|e| e.to_string())?;
        Ok(Arc::new(store))
    }
    #[cfg(not(feature = "redis-sentinel"))]
    {
        Err(format!(
            "a Sentinel REDIS_URL (master {master:?} behind {} sentinels) needs `--features redis-sentinel`",
            sentinels.len()
        ))
    }
}

/// The tenant API (public for the reliability tests).
pub fn app(directory: MemoryDirectory, store: Arc<dyn CounterStore>, db: Db) -> Router {
    // A changed plan or override drops what the store keeps locally about
    // the tenant (the deny cache's refusals).
    let hook_store = store.clone();
    directory.on_change(move |tenant| match tenant {
        Some(id) => hook_store.invalidate(id),
        None => hook_store.invalidate_all(),
    });
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
                // Route layers run last-added first: the resource limit is
                // checked before the rate limit, so a refused creation
                // consumes nothing (resolve, validate, gate, check, admit).
                .merge(
                    post(create_workflow)
                        .route_layer(api())
                        .route_layer(workflow_limit),
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
                .route_layer(api())
                .route_layer(RequireFeatureLayer::new("custom_patterns")),
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

// ---------------------------------------------------------------------------
// Admin API: see and change what the layers enforce, while the service runs.

#[derive(Clone)]
struct Admin {
    token: Arc<str>,
    plans_path: Arc<str>,
    catalog: Arc<ArcSwap<Catalog>>,
    directory: MemoryDirectory,
    store: Arc<dyn CounterStore>,
    db: Db,
}

/// An admin error, answered as problem+json.
struct AdminError(StatusCode, &'static str, String);

impl IntoResponse for AdminError {
    fn into_response(self) -> Response {
        let AdminError(status, code, detail) = self;
        let body = json!({
            "type": format!("urn:tower-tenancy-demo:problem:{code}"),
            "title": status.canonical_reason().unwrap_or(""),
            "status": status.as_u16(),
            "code": code,
            "detail": detail,
        });
        (
            status,
            [("content-type", "application/problem+json")],
            body.to_string(),
        )
            .into_response()
    }
}

type AdminResult = Result<Json<Value>, AdminError>;

/// The admin token, as the state of [`authorize`].
#[derive(Clone)]
struct AdminToken(Arc<str>);

/// Middleware: the bearer token must equal the admin token.
async fn authorize(
    State(admin): State<AdminToken>,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let token = admin.0.as_bytes();
    match presented {
        None => AdminError(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing bearer token".into(),
        )
        .into_response(),
        // Compare without an early exit on the first differing byte.
        Some(t)
            if t.len() == token.len()
                && t.bytes().zip(token).fold(0, |acc, (a, b)| acc | (a ^ b)) == 0 =>
        {
            next.run(req).await
        }
        Some(_) => AdminError(
            StatusCode::FORBIDDEN,
            "forbidden",
            "wrong admin token".into(),
        )
        .into_response(),
    }
}

fn find(admin: &Admin, id: &str) -> Result<Arc<Tenant>, AdminError> {
    let id: TenantId = id.parse().map_err(|e| {
        AdminError(
            StatusCode::BAD_REQUEST,
            "malformed_tenant_id",
            format!("{e}"),
        )
    })?;
    admin.directory.get(&id).ok_or_else(|| {
        AdminError(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("no tenant {id}"),
        )
    })
}

fn tenant_json(t: &Arc<Tenant>) -> Value {
    json!({
        "id": t.id(),
        "status": t.status(),
        "plan": t.base_plan().name,
        "overrides": t.overrides(),
        // Overrides with an `until` end by themselves.
        "overrides_active": t.overrides_at(UtcTime::now()).is_some(),
        "effective": &**t.plan(),
    })
}

fn admin_routes(admin: Admin) -> Router {
    Router::new()
        .route("/admin/tenants", get(admin_list))
        .route("/admin/tenants/{id}", get(admin_get).patch(admin_update))
        .route("/admin/tenants/{id}/usage", get(admin_usage))
        .route("/admin/reload", post(admin_reload))
        .route_layer(axum::middleware::from_fn_with_state(
            AdminToken(admin.token.clone()),
            authorize,
        ))
        .with_state(admin)
}

async fn admin_list(State(admin): State<Admin>) -> Json<Value> {
    let tenants: Vec<Value> = admin.directory.list().iter().map(tenant_json).collect();
    Json(json!({ "tenants": tenants }))
}

async fn admin_get(State(admin): State<Admin>, Path(id): Path<String>) -> AdminResult {
    Ok(Json(tenant_json(&find(&admin, &id)?)))
}

async fn admin_usage(State(admin): State<Admin>, Path(id): Path<String>) -> AdminResult {
    let tenant = find(&admin, &id)?;
    let mut report = usage_report(&*admin.store, &tenant).await.map_err(|e| {
        AdminError(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    })?;
    // Workflows are counted by the application, not by the store.
    report.set_used("workflows", admin.db.count(tenant.id()));
    Ok(Json(json!(report)))
}

/// `PATCH /admin/tenants/{id}`: each field optional.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TenantPatch {
    plan: Option<String>,
    status: Option<TenantStatus>,
    overrides: Option<Overrides>,
}

async fn admin_update(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    body: Bytes,
) -> AdminResult {
    let tenant = find(&admin, &id)?;
    let patch: TenantPatch =
        serde_path_to_error::deserialize(&mut serde_json::Deserializer::from_slice(&body))
            .map_err(|e| {
                let at = e.path().to_string();
                AdminError(
                    StatusCode::BAD_REQUEST,
                    "malformed_body",
                    format!("{at}: {}", e.into_inner()),
                )
            })?;
    let plan = match &patch.plan {
        None => None,
        Some(name) => Some(admin.catalog.load().plan(name).cloned().ok_or_else(|| {
            AdminError(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_plan",
                format!("no plan {name:?}"),
            )
        })?),
    };
    let updated = admin.directory.update(tenant.id(), |t| {
        let mut t = t.clone();
        if let Some(plan) = &plan {
            t = t.set_plan(plan.clone());
        }
        if let Some(status) = patch.status {
            t = t.set_status(status);
        }
        if let Some(overrides) = &patch.overrides {
            t = t.set_overrides(overrides.clone());
        }
        t
    });
    let updated = updated.ok_or_else(|| {
        AdminError(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("no tenant {id}"),
        )
    })?;
    tracing::info!(tenant.id = %updated.id(), "tenant updated by admin");
    Ok(Json(tenant_json(&updated)))
}

async fn admin_reload(State(admin): State<Admin>) -> AdminResult {
    let catalog = Catalog::from_path(&*admin.plans_path).map_err(|e| {
        AdminError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_catalog",
            e.to_string(),
        )
    })?;
    admin
        .directory
        .replace_all(catalog.tenants().iter().cloned());
    let body = json!({ "plans": catalog.plans().len(), "tenants": catalog.tenants().len() });
    admin.catalog.store(Arc::new(catalog));
    tracing::info!("catalog reloaded from {}", admin.plans_path);
    Ok(Json(body))
}
