//! The demo on PostgreSQL (`DATABASE_URL` set, `--features postgres`):
//! tenants, plans and API keys in tables, application data under row-level
//! security, changes applied on every instance through LISTEN/NOTIFY.
//!
//! * **Directory**: [`PostgresDirectory`] behind a [`CachedDirectory`]
//!   (10 min TTL: changes arrive as notifications, the TTL is a safety net
//!   and how long cached tenants keep working while PostgreSQL is down).
//! * **Authentication**: `Authorization: Bearer ttk_<id>_<secret>` is looked
//!   up by its public `id` in `tt_api_keys`, where only the key's SHA-256 is
//!   stored, and compared in constant time ([`subtle`]). SHA-256 rather than
//!   a password hash: a key carries 256 random bits, so no dictionary or
//!   brute force can invert its digest, and a slow hash (argon2, bcrypt —
//!   made for low-entropy passwords) would cost tens of milliseconds per
//!   request for nothing. The key's tenant becomes [`AllowedTenants`], and
//!   the [`TenancyLayer`] is bound to it
//!   ([`TenancyLayer::bind_to_principal`]): any other tenant claimed through the header or the query, even next to the
//!   key's own, is refused with 403 `tenant_not_permitted`. A revoked key stops working on every instance with the next notification.
//! * **Row-level security**: every handler runs its statements in a
//!   transaction that starts with `set_config('app.tenant_id', <tenant>,
//!   true)` (`SET LOCAL`); the handlers below have **no** `WHERE tenant_id =`
//!   on purpose: the policies of `migrations/demo/0002_workflows.sql` scope
//!   every statement to the current tenant. The demo refuses to run as a
//!   superuser or a `BYPASSRLS` role, for which RLS does not apply.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Path, Query, State};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use moka::future::Cache;
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::broadcast::error::RecvError;
use tower_tenancy::directory::postgres::{
    deadpool_postgres::{self, Manager, ManagerConfig, Pool, RecyclingMethod},
    migrate, tokio_postgres, Change, Migration, PostgresChanges, PostgresDirectory,
    DIRECTORY_MIGRATIONS, RECHECK,
};
use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
use tower_tenancy::layer::feature::RequireFeatureLayer;
use tower_tenancy::layer::limit::ResourceLimitLayer;
use tower_tenancy::reject::{Rejection, RejectionKind};
use tower_tenancy::resolve::{ExtensionResolver, HeaderResolver, QueryResolver, ResolverChain};
use tower_tenancy::store::CounterStore;
use tower_tenancy::usage::usage_report;
use tower_tenancy::{
    AllowedTenants, CachedDirectory, Catalog, CurrentTenant, Overrides, TenancyLayer, Tenant,
    TenantId, TenantStatus,
};

use super::AdminError;

/// The demo's own tables: API keys, workflows and executions.
pub const DEMO_MIGRATIONS: &[Migration] = &[
    Migration {
        name: "tower_tenancy_demo/0001_api_keys",
        sql: include_str!("../../migrations/demo/0001_api_keys.sql"),
    },
    Migration {
        name: "tower_tenancy_demo/0002_workflows",
        sql: include_str!("../../migrations/demo/0002_workflows.sql"),
    },
];

/// One instance's connections: its pool, its listener, its caches.
#[derive(Clone)]
pub struct Pg {
    pub pool: Pool,
    pub changes: Arc<PostgresChanges>,
    pub directory: Arc<CachedDirectory<PostgresDirectory>>,
    pub keys: ApiKeys,
}

/// Connects (pool of 16), refuses a role that RLS would not apply to,
/// applies the migrations, starts listening for changes.
pub async fn connect(database_url: &str) -> Result<Pg, String> {
    let config: tokio_postgres::Config = database_url
        .parse()
        .map_err(|e| format!("DATABASE_URL: {e}"))?;
    let manager = Manager::from_config(
        config.clone(),
        tokio_postgres::NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let pool = Pool::builder(manager)
        .max_size(16)
        .build()
        .map_err(|e| e.to_string())?;
    let mut client = pool.get().await.map_err(|e| format!("connect: {e}"))?;
    let row = client
        .query_one(
            "SELECT current_user::text, rolsuper OR rolbypassrls FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(db_text)?;
    let (role, bypasses): (String, bool) = (row.get(0), row.get(1));
    if bypasses {
        return Err(format!(
            "role {role:?} is a superuser or has BYPASSRLS: row-level security would not \
             apply to it. Connect as an ordinary role, e.g. `createuser tt_demo && createdb -O \
             tt_demo tt_demo` and DATABASE_URL=postgres://tt_demo@localhost/tt_demo"
        ));
    }
    for set in [DIRECTORY_MIGRATIONS, DEMO_MIGRATIONS] {
        let applied = migrate(&mut client, set).await.map_err(db_text)?;
        for name in applied {
            tracing::info!(migration = name, "applied");
        }
    }
    drop(client);
    let changes = Arc::new(PostgresChanges::listen(config, tokio_postgres::NoTls));
    let directory = Arc::new(
        CachedDirectory::new(
            PostgresDirectory::new(pool.clone())
                .timeout(Duration::from_secs(1))
                .follow(&changes),
        )
        .ttl(Duration::from_secs(600))
        .negative_ttl(Duration::from_secs(10)),
    );
    changes.invalidate(directory.clone());
    let keys = ApiKeys::new(pool.clone(), changes.clone());
    Ok(Pg {
        pool,
        changes,
        directory,
        keys,
    })
}

fn db_text(e: tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("postgres: {}", db.message()),
        None => format!("postgres: {e}"),
    }
}

/// The catalog's plans in `tt_plans` (replaced when `replace_plans`, else
/// only added) and its tenants in `tt_tenants` (only added).
pub async fn seed(pool: &Pool, catalog: &Catalog, replace_plans: bool) -> Result<Value, String> {
    let mut client = pool.get().await.map_err(|e| e.to_string())?;
    let tx = client.transaction().await.map_err(db_text)?;
    let upsert = if replace_plans {
        "INSERT INTO tt_plans (name, definition) VALUES ($1, $2::text::jsonb)
         ON CONFLICT (name) DO UPDATE SET definition = EXCLUDED.definition, updated_at = now()
         WHERE tt_plans.definition IS DISTINCT FROM EXCLUDED.definition"
    } else {
        "INSERT INTO tt_plans (name, definition) VALUES ($1, $2::text::jsonb) ON CONFLICT DO NOTHING"
    };
    let mut plans = 0;
    for (name, plan) in catalog.plans() {
        let mut definition = serde_json::to_value(&**plan).map_err(|e| e.to_string())?;
        if let Value::Object(fields) = &mut definition {
            fields.remove("name");
        }
        plans += tx
            .execute(upsert, &[name, &definition.to_string()])
            .await
            .map_err(db_text)?;
    }
    let mut tenants = 0;
    for t in catalog.tenants() {
        let overrides = serde_json::to_string(t.overrides()).map_err(|e| e.to_string())?;
        tenants += tx
            .execute(
                "INSERT INTO tt_tenants (id, plan, status, overrides)
                 VALUES ($1, $2, $3, $4::text::jsonb) ON CONFLICT DO NOTHING",
                &[
                    &t.id().as_str(),
                    &t.base_plan().name,
                    &t.status().as_str(),
                    &overrides,
                ],
            )
            .await
            .map_err(db_text)?;
    }
    tx.commit().await.map_err(db_text)?;
    Ok(json!({ "plans_written": plans, "tenants_added": tenants }))
}

// ---------------------------------------------------------------------------
// API keys

/// The principal of a request authenticated by an API key (in the request
/// extensions, next to its [`AllowedTenants`]).
#[derive(Debug, Clone)]
pub struct ApiKeyPrincipal {
    pub key_id: Arc<str>,
    pub tenant: TenantId,
}

#[derive(Debug)]
struct KeyRecord {
    sha256: [u8; 32],
    tenant: TenantId,
    revoked: bool,
}

/// API keys in `tt_api_keys`, cached by key id (10 min TTL, 100 000
/// entries, unknown ids included) and dropped from the cache when a
/// notification `api_key:<id>` (or a resync) arrives.
#[derive(Clone)]
pub struct ApiKeys {
    pool: Pool,
    changes: Arc<PostgresChanges>,
    cache: Cache<String, Option<Arc<KeyRecord>>>,
}

const KEY_PREFIX: &str = "ttk_";

/// `ttk_<16 hex>_<64 hex>` → the id; anything else → `None`.
fn key_id(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix(KEY_PREFIX)?;
    let (id, secret) = rest.split_once('_')?;
    let hex = |s: &str, n: usize| {
        s.len() == n && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    };
    (hex(id, 16) && hex(secret, 64)).then_some(id)
}

fn to_hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiKeys {
    pub fn new(pool: Pool, changes: Arc<PostgresChanges>) -> Self {
        let cache: Cache<String, Option<Arc<KeyRecord>>> = Cache::builder()
            .max_capacity(100_000)
            .time_to_live(Duration::from_secs(600))
            .build();
        let mut feed = changes.subscribe();
        let invalidated = cache.clone();
        tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok(Change::Other { kind, key }) if kind == "api_key" => {
                        invalidated.invalidate(&key).await;
                        // A read that raced the notification (see RECHECK).
                        let again = invalidated.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(RECHECK).await;
                            again.invalidate(&key).await;
                        });
                    }
                    Ok(Change::All) | Err(RecvError::Lagged(_)) => invalidated.invalidate_all(),
                    Ok(_) => {}
                    Err(RecvError::Closed) => break,
                }
            }
        });
        Self {
            pool,
            changes,
            cache,
        }
    }

    /// The principal of `presented`, `None` for a malformed, unknown,
    /// revoked or wrong key, `Err` when the database cannot answer.
    pub async fn verify(&self, presented: &str) -> Result<Option<ApiKeyPrincipal>, String> {
        let Some(id) = key_id(presented) else {
            return Ok(None);
        };
        let record = self
            .cache
            .try_get_with(id.to_owned(), self.load(id))
            .await
            .map_err(|e: Arc<String>| (*e).clone())?;
        let Some(record) = record else {
            return Ok(None);
        };
        let digest = Sha256::digest(presented.as_bytes());
        let same: bool = digest.as_slice().ct_eq(&record.sha256).into();
        if !same || record.revoked {
            return Ok(None);
        }
        Ok(Some(ApiKeyPrincipal {
            key_id: Arc::from(id),
            tenant: record.tenant.clone(),
        }))
    }

    /// Reads key `id`; reads again when a change was announced meanwhile.
    async fn load(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, String> {
        let mut attempt = 0;
        loop {
            let before = self.changes.generation();
            let read = tokio::time::timeout(Duration::from_secs(1), self.read(id))
                .await
                .unwrap_or_else(|_| Err("postgres: API key lookup timed out".into()));
            attempt += 1;
            if attempt >= 3 || self.changes.generation() == before {
                return read;
            }
        }
    }

    async fn read(&self, id: &str) -> Result<Option<Arc<KeyRecord>>, String> {
        let client = self.pool.get().await.map_err(|e| e.to_string())?;
        let row = client
            .query_opt(
                "SELECT key_sha256, tenant_id, revoked_at IS NOT NULL FROM tt_api_keys WHERE id = $1",
                &[&id],
            )
            .await
            .map_err(db_text)?;
        let Some(row) = row else { return Ok(None) };
        let hash: Vec<u8> = row.get(0);
        let tenant: String = row.get(1);
        Ok(Some(Arc::new(KeyRecord {
            sha256: hash.try_into().map_err(|_| "bad key_sha256")?,
            tenant: tenant.parse().map_err(|e| format!("bad tenant_id: {e}"))?,
            revoked: row.get(2),
        })))
    }

    /// A new key for `tenant`: `(id, key)`. The key is returned once and
    /// never stored.
    pub async fn create(
        pool: &Pool,
        tenant: &TenantId,
        label: &str,
    ) -> Result<(String, String), String> {
        let mut random = [0u8; 40];
        getrandom::fill(&mut random).map_err(|e| e.to_string())?;
        let id = to_hex(&random[..8]);
        let key = format!("{KEY_PREFIX}{id}_{}", to_hex(&random[8..]));
        let hash = Sha256::digest(key.as_bytes()).to_vec();
        let client = pool.get().await.map_err(|e| e.to_string())?;
        client
            .execute(
                "INSERT INTO tt_api_keys (id, key_sha256, tenant_id, label) VALUES ($1, $2, $3, $4)",
                &[&id, &hash, &tenant.as_str(), &label],
            )
            .await
            .map_err(db_text)?;
        Ok((id, key))
    }

    /// Revokes key `id` everywhere; false when there is no such active key.
    pub async fn revoke(pool: &Pool, id: &str) -> Result<bool, String> {
        let client = pool.get().await.map_err(|e| e.to_string())?;
        let n = client
            .execute(
                "UPDATE tt_api_keys SET revoked_at = now() WHERE id = $1 AND revoked_at IS NULL",
                &[&id],
            )
            .await
            .map_err(db_text)?;
        Ok(n == 1)
    }
}

fn unavailable() -> Response {
    let (parts, body) = Rejection::new(RejectionKind::Unavailable)
        .retry_after(Duration::from_secs(1))
        .to_response(false)
        .into_parts();
    Response::from_parts(parts, axum::body::Body::from(body))
}

/// Middleware: `Authorization: Bearer <API key>` → [`ApiKeyPrincipal`] and
/// [`AllowedTenants`] in the extensions; 401 without a valid key, 503 when
/// the key is not cached and PostgreSQL does not answer.
pub async fn authenticate(
    State(keys): State<ApiKeys>,
    mut req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let presented = req
        .headers()
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let refuse = |detail: &str| {
        let mut resp =
            AdminError(StatusCode::UNAUTHORIZED, "unauthenticated", detail.into()).into_response();
        resp.headers_mut()
            .insert("www-authenticate", HeaderValue::from_static("Bearer"));
        resp
    };
    let Some(presented) = presented else {
        return refuse("missing bearer API key");
    };
    match keys.verify(presented).await {
        Ok(Some(principal)) => {
            req.extensions_mut()
                .insert(AllowedTenants::only([principal.tenant.clone()]));
            req.extensions_mut().insert(principal);
            next.run(req).await
        }
        Ok(None) => refuse("invalid or revoked API key"),
        Err(e) => {
            tracing::warn!(error = %e, "API key lookup failed");
            unavailable()
        }
    }
}

// ---------------------------------------------------------------------------
// The tenant API, on tables under row-level security

/// Opens the request's transaction with `app.tenant_id` set for it alone.
pub async fn tenant_tx<'a>(
    conn: &'a mut deadpool_postgres::Object,
    tenant: &TenantId,
) -> Result<deadpool_postgres::Transaction<'a>, tokio_postgres::Error> {
    let tx = conn.transaction().await?;
    tx.execute(
        "SELECT set_config('app.tenant_id', $1, true)",
        &[&tenant.as_str()],
    )
    .await?;
    Ok(tx)
}

/// A handler's database failure: 404 for a missing row, else 503.
pub enum AppError {
    NotFound(&'static str),
    Db(String),
}

impl From<tokio_postgres::Error> for AppError {
    fn from(e: tokio_postgres::Error) -> Self {
        AppError::Db(db_text(e))
    }
}

impl From<deadpool_postgres::PoolError> for AppError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        AppError::Db(e.to_string())
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        match self {
            AppError::NotFound(what) => AdminError(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no such {what}"),
            )
            .into_response(),
            AppError::Db(e) => {
                tracing::warn!(error = %e, "database failed");
                unavailable()
            }
        }
    }
}

type AppResult<T> = Result<T, AppError>;

/// `SELECT count(*) FROM workflows` for `tenant` (RLS scopes it).
async fn workflow_count(pool: &Pool, tenant: &TenantId) -> AppResult<u64> {
    let mut conn = pool.get().await?;
    let tx = tenant_tx(&mut conn, tenant).await?;
    let n: i64 = tx
        .query_one("SELECT count(*) FROM workflows", &[])
        .await?
        .get(0);
    tx.commit().await?;
    Ok(n as u64)
}

impl std::fmt::Display for AppError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AppError::NotFound(what) => write!(f, "no such {what}"),
            AppError::Db(e) => f.write_str(e),
        }
    }
}

/// The tenant API: same routes and policies as the in-memory demo, behind
/// API-key authentication, on PostgreSQL.
pub fn app(pg: &Pg, store: Arc<dyn CounterStore>) -> Router {
    let api = || AdmissionLayer::new(store.clone()).rule(Rule::rate("api_calls_per_minute"));
    let execution = AdmissionLayer::new(store.clone())
        .rule(Rule::rate("api_calls_per_minute"))
        .rule(Rule::quota("executions_per_day"))
        .rule(Rule::concurrency("concurrent_executions"));
    let pool = pg.pool.clone();
    let workflow_limit =
        ResourceLimitLayer::new("workflows", move |tenant: Arc<Tenant>, _: Arc<str>| {
            let pool = pool.clone();
            async move { workflow_count(&pool, tenant.id()).await }
        });
    let tenant_routes = Router::new()
        .route("/v1/me", get(super::me).route_layer(api()))
        .route(
            "/v1/workflows",
            get(list_workflows).route_layer(api()).merge(
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
            post(run_execution)
                .route_layer(execution)
                .merge(get(list_executions).route_layer(api())),
        )
        .route(
            "/v1/patterns",
            post(super::create_pattern)
                .route_layer(RequireFeatureLayer::new("custom_patterns"))
                .route_layer(api()),
        )
        .layer(
            TenancyLayer::new(
                // A client may name its tenant (header, query) — it must be
                // the key's; without a claim, the key's tenant applies.
                ResolverChain::new()
                    .or(HeaderResolver::new("x-tenant-id"))
                    .or(QueryResolver::new("tenant"))
                    .or(ExtensionResolver::new(|p: &ApiKeyPrincipal| {
                        Some(p.tenant.clone())
                    })),
                pg.directory.clone(),
            )
            .bind_to_principal(),
        )
        .layer(axum::middleware::from_fn_with_state(
            pg.keys.clone(),
            authenticate,
        ))
        .with_state(pg.pool.clone());
    Router::new()
        .route("/health", get(|| async { "ok" }))
        .merge(tenant_routes)
}

// No `WHERE tenant_id = …` below: row-level security scopes every statement.

async fn list_workflows(tenant: CurrentTenant, State(pool): State<Pool>) -> AppResult<Json<Value>> {
    let mut conn = pool.get().await?;
    let tx = tenant_tx(&mut conn, tenant.id()).await?;
    let rows = tx
        .query("SELECT id, name FROM workflows ORDER BY id", &[])
        .await?;
    tx.commit().await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| json!({ "id": r.get::<_, i64>(0), "name": r.get::<_, String>(1) }))
        .collect();
    Ok(Json(json!({ "workflows": list })))
}

#[derive(Deserialize)]
struct NewWorkflow {
    name: String,
}

async fn create_workflow(
    tenant: CurrentTenant,
    State(pool): State<Pool>,
    Json(body): Json<NewWorkflow>,
) -> AppResult<(StatusCode, Json<Value>)> {
    let name: String = body.name.chars().take(100).collect();
    let mut conn = pool.get().await?;
    let tx = tenant_tx(&mut conn, tenant.id()).await?;
    // tenant_id defaults to current_setting('app.tenant_id').
    let id: i64 = tx
        .query_one(
            "INSERT INTO workflows (name) VALUES ($1) RETURNING id",
            &[&name],
        )
        .await?
        .get(0);
    tx.commit().await?;
    Ok((StatusCode::CREATED, Json(json!({ "id": id, "name": name }))))
}

async fn delete_workflow(
    tenant: CurrentTenant,
    State(pool): State<Pool>,
    Path(id): Path<i64>,
) -> AppResult<StatusCode> {
    let mut conn = pool.get().await?;
    let tx = tenant_tx(&mut conn, tenant.id()).await?;
    let n = tx
        .execute("DELETE FROM workflows WHERE id = $1", &[&id])
        .await?;
    tx.commit().await?;
    match n {
        0 => Err(AppError::NotFound("workflow")),
        _ => Ok(StatusCode::NO_CONTENT),
    }
}

#[derive(Deserialize)]
struct RunParams {
    duration_ms: Option<u64>,
}

async fn run_execution(
    tenant: CurrentTenant,
    State(pool): State<Pool>,
    Path(id): Path<i64>,
    Query(params): Query<RunParams>,
) -> AppResult<Json<Value>> {
    {
        let mut conn = pool.get().await?;
        let tx = tenant_tx(&mut conn, tenant.id()).await?;
        let found = tx
            .query_opt("SELECT 1 FROM workflows WHERE id = $1", &[&id])
            .await?;
        tx.commit().await?;
        if found.is_none() {
            return Err(AppError::NotFound("workflow"));
        }
    }
    // Simulated work, bounded; no connection held meanwhile.
    let ms = params.duration_ms.unwrap_or(0).min(10_000);
    tokio::time::sleep(Duration::from_millis(ms)).await;
    let mut conn = pool.get().await?;
    let tx = tenant_tx(&mut conn, tenant.id()).await?;
    let inserted = tx
        .query_one(
            "INSERT INTO executions (workflow_id, status, duration_ms)
             VALUES ($1, 'succeeded', $2) RETURNING id",
            &[&id, &(ms as i64)],
        )
        .await;
    let execution: i64 = match inserted {
        Ok(row) => row.get(0),
        // The workflow was deleted meanwhile (foreign key).
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
            return Err(AppError::NotFound("workflow"))
        }
        Err(e) => return Err(e.into()),
    };
    tx.commit().await?;
    Ok(Json(json!({
        "tenant": tenant.id(), "workflow": id, "execution": execution,
        "status": "succeeded", "duration_ms": ms,
    })))
}

async fn list_executions(
    tenant: CurrentTenant,
    State(pool): State<Pool>,
    Path(id): Path<i64>,
) -> AppResult<Json<Value>> {
    let mut conn = pool.get().await?;
    let tx = tenant_tx(&mut conn, tenant.id()).await?;
    let rows = tx
        .query(
            "SELECT id, status, duration_ms FROM executions WHERE workflow_id = $1 ORDER BY id",
            &[&id],
        )
        .await?;
    tx.commit().await?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({ "id": r.get::<_, i64>(0), "status": r.get::<_, String>(1),
                    "duration_ms": r.get::<_, i64>(2) })
        })
        .collect();
    Ok(Json(json!({ "executions": list })))
}

// ---------------------------------------------------------------------------
// Admin API (bearer ADMIN_TOKEN): tenants, plans and keys in PostgreSQL

#[derive(Clone)]
struct Admin {
    token: Arc<str>,
    plans_path: Arc<str>,
    pool: Pool,
    store: Arc<dyn CounterStore>,
}

type AdminResult = Result<Json<Value>, AdminError>;

fn admin_db(e: impl std::fmt::Display) -> AdminError {
    tracing::warn!(error = %e, "admin: database failed");
    AdminError(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "database unavailable".into(),
    )
}

fn parse_id(id: &str) -> Result<TenantId, AdminError> {
    id.parse().map_err(|e| {
        AdminError(
            StatusCode::BAD_REQUEST,
            "malformed_tenant_id",
            format!("{e}"),
        )
    })
}

async fn read_tenant(pool: &Pool, id: &TenantId) -> Result<Arc<Tenant>, AdminError> {
    let client = pool.get().await.map_err(admin_db)?;
    match PostgresDirectory::read(&**client, id).await {
        Ok(Some(t)) => Ok(t),
        Ok(None) => Err(AdminError(
            StatusCode::NOT_FOUND,
            "unknown_tenant",
            format!("no tenant {id}"),
        )),
        Err(e) => Err(admin_db(e)),
    }
}

/// The admin API on PostgreSQL: every change is a committed row, applied by
/// every instance through its notification.
pub fn admin_routes(
    pg: &Pg,
    plans_path: &str,
    admin_token: &str,
    store: Arc<dyn CounterStore>,
) -> Router {
    let admin = Admin {
        token: Arc::from(admin_token),
        plans_path: Arc::from(plans_path),
        pool: pg.pool.clone(),
        store,
    };
    let token = super::AdminToken(admin.token.clone());
    Router::new()
        .route("/admin/tenants", get(admin_list))
        .route("/admin/tenants/{id}", get(admin_get).patch(admin_update))
        .route("/admin/tenants/{id}/usage", get(admin_usage))
        .route("/admin/tenants/{id}/keys", post(admin_create_key))
        .route("/admin/keys/{key_id}", delete(admin_revoke_key))
        .route("/admin/reload", post(admin_reload))
        .route_layer(axum::middleware::from_fn_with_state(
            token,
            super::authorize,
        ))
        .with_state(admin)
}

/// The whole PostgreSQL demo: tenant API and admin API.
pub fn demo(pg: &Pg, plans_path: &str, admin_token: &str, store: Arc<dyn CounterStore>) -> Router {
    app(pg, store.clone()).merge(admin_routes(pg, plans_path, admin_token, store))
}

async fn admin_list(State(admin): State<Admin>) -> AdminResult {
    let client = admin.pool.get().await.map_err(admin_db)?;
    let rows = client
        .query("SELECT id FROM tt_tenants ORDER BY id", &[])
        .await
        .map_err(admin_db)?;
    drop(client);
    let mut tenants = Vec::new();
    for row in rows {
        let id: String = row.get(0);
        let id = parse_id(&id)?;
        tenants.push(super::tenant_json(&read_tenant(&admin.pool, &id).await?));
    }
    Ok(Json(json!({ "tenants": tenants })))
}

async fn admin_get(State(admin): State<Admin>, Path(id): Path<String>) -> AdminResult {
    let id = parse_id(&id)?;
    Ok(Json(super::tenant_json(
        &read_tenant(&admin.pool, &id).await?,
    )))
}

async fn admin_usage(State(admin): State<Admin>, Path(id): Path<String>) -> AdminResult {
    let tenant = read_tenant(&admin.pool, &parse_id(&id)?).await?;
    let mut report = usage_report(&*admin.store, &tenant).await.map_err(|e| {
        AdminError(
            StatusCode::SERVICE_UNAVAILABLE,
            "store_unavailable",
            e.to_string(),
        )
    })?;
    let n = workflow_count(&admin.pool, tenant.id())
        .await
        .map_err(admin_db)?;
    report.set_used("workflows", n);
    Ok(Json(json!(report)))
}

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
    body: axum::body::Bytes,
) -> AdminResult {
    let id = parse_id(&id)?;
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
    let overrides = patch
        .overrides
        .map(|o| serde_json::to_string(&o))
        .transpose()
        .map_err(admin_db)?;
    let mut client = admin.pool.get().await.map_err(admin_db)?;
    let tx = client.transaction().await.map_err(admin_db)?;
    let n = tx
        .execute(
            "UPDATE tt_tenants SET plan = coalesce($2, plan), status = coalesce($3, status),
                 overrides = coalesce($4::text::jsonb, overrides), updated_at = now()
             WHERE id = $1",
            &[
                &id.as_str(),
                &patch.plan,
                &patch.status.map(|s| s.as_str()),
                &overrides,
            ],
        )
        .await;
    match n {
        Ok(0) => {
            return Err(AdminError(
                StatusCode::NOT_FOUND,
                "unknown_tenant",
                format!("no tenant {id}"),
            ))
        }
        Ok(_) => {}
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::FOREIGN_KEY_VIOLATION) => {
            return Err(AdminError(
                StatusCode::UNPROCESSABLE_ENTITY,
                "unknown_plan",
                format!("no plan {:?}", patch.plan.unwrap_or_default()),
            ))
        }
        Err(e) => return Err(admin_db(e)),
    }
    // Validate the result as every instance will read it, before committing.
    let updated = match PostgresDirectory::read(&*tx, &id).await {
        Ok(Some(t)) => t,
        Ok(None) => return Err(admin_db("tenant vanished")),
        Err(e) => {
            return Err(AdminError(
                StatusCode::UNPROCESSABLE_ENTITY,
                "invalid_tenant",
                e.0,
            ))
        }
    };
    tx.commit().await.map_err(admin_db)?;
    tracing::info!(tenant.id = %id, "tenant updated by admin (committed; notified)");
    Ok(Json(super::tenant_json(&updated)))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct NewKey {
    #[serde(default)]
    label: String,
}

async fn admin_create_key(
    State(admin): State<Admin>,
    Path(id): Path<String>,
    body: axum::body::Bytes,
) -> Result<(StatusCode, Json<Value>), AdminError> {
    let tenant = read_tenant(&admin.pool, &parse_id(&id)?).await?;
    let new: NewKey = if body.is_empty() {
        NewKey::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| AdminError(StatusCode::BAD_REQUEST, "malformed_body", e.to_string()))?
    };
    let label: String = new.label.chars().take(100).collect();
    let (key_id, key) = ApiKeys::create(&admin.pool, tenant.id(), &label)
        .await
        .map_err(admin_db)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({ "id": key_id, "tenant": tenant.id(), "label": label, "key": key })),
    ))
}

async fn admin_revoke_key(
    State(admin): State<Admin>,
    Path(key_id): Path<String>,
) -> Result<StatusCode, AdminError> {
    match ApiKeys::revoke(&admin.pool, &key_id)
        .await
        .map_err(admin_db)?
    {
        true => Ok(StatusCode::NO_CONTENT),
        false => Err(AdminError(
            StatusCode::NOT_FOUND,
            "unknown_key",
            "no such active key".into(),
        )),
    }
}

/// Re-reads the plans file into `tt_plans` (every instance applies it).
async fn admin_reload(State(admin): State<Admin>) -> AdminResult {
    let catalog = Catalog::from_path(&*admin.plans_path).map_err(|e| {
        AdminError(
            StatusCode::UNPROCESSABLE_ENTITY,
            "bad_catalog",
            e.to_string(),
        )
    })?;
    let written = seed(&admin.pool, &catalog, true).await.map_err(admin_db)?;
    Ok(Json(written))
}
