//! Tenants, plans and overrides in PostgreSQL, applied on every instance
//! within a notification delay (feature `postgres`).
//!
//! Three pieces:
//!
//! * [`PostgresDirectory`]: a [`TenantDirectory`] that reads one tenant, its
//!   plan and its overrides with one query (a join of `tt_tenants` and
//!   `tt_plans`), validated exactly like a catalog file. Put it behind a
//!   [`CachedDirectory`].
//! * [`PostgresChanges`]: one dedicated connection that `LISTEN`s on the
//!   channel `tower_tenancy`, reconnects by itself, and fans each
//!   notification out as a [`Change`]; [`PostgresChanges::invalidate`] drops
//!   the changed tenants from a [`CachedDirectory`].
//! * [`migrate`] with [`DIRECTORY_MIGRATIONS`]: the schema (`migrations/` in
//!   the repository), whose triggers send `tenant:<id>` or `plan:<name>` when
//!   a change commits.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use tower_tenancy::directory::postgres::{
//!     deadpool_postgres, migrate, tokio_postgres, PostgresChanges, PostgresDirectory,
//!     DIRECTORY_MIGRATIONS,
//! };
//! use tower_tenancy::resolve::HeaderResolver;
//! use tower_tenancy::{CachedDirectory, TenancyLayer};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let config: tokio_postgres::Config = "host=127.0.0.1 user=app dbname=app".parse()?;
//! let pool = deadpool_postgres::Pool::builder(deadpool_postgres::Manager::new(
//!     config.clone(),
//!     tokio_postgres::NoTls,
//! ))
//! .max_size(16)
//! .build()?;
//! let mut client = pool.get().await?;
//! migrate(&mut client, DIRECTORY_MIGRATIONS).await?;
//!
//! let changes = PostgresChanges::listen(config, tokio_postgres::NoTls);
//! let directory = Arc::new(
//!     // Changes arrive as notifications: the TTL is only a safety net, and
//!     // how long cached tenants keep working while PostgreSQL is down.
//!     CachedDirectory::new(PostgresDirectory::new(pool).follow(&changes))
//!         .ttl(Duration::from_secs(600)),
//! );
//! changes.invalidate(directory.clone());
//! let layer = TenancyLayer::new(HeaderResolver::new("x-tenant-id"), directory);
//! # Ok(()) }
//! ```
//!
//! # Why tokio-postgres (with deadpool-postgres) rather than sqlx
//!
//! * **LISTEN/NOTIFY**: both support it (`Connection::poll_message` here,
//!   `PgListener` in sqlx); here the listening connection is an ordinary
//!   connection whose messages we read, so reconnecting and resynchronizing
//!   are ours to decide (see below).
//! * **Pool**: sqlx has one built in; deadpool-postgres is a small, well-kept
//!   pool that hands out plain `tokio_postgres::Client`s with a statement
//!   cache, and that applications already using tokio-postgres share.
//! * **TLS**: sqlx builds it in behind features; tokio-postgres takes any
//!   `MakeTlsConnect` (`NoTls`, postgres-openssl, postgres-native-tls,
//!   tokio-postgres-rustls), so the crate imposes no TLS stack.
//! * **Compile time and weight** (`cargo tree -e normal`, distinct crates,
//!   2026-12-02): tokio-postgres 0.7 + deadpool-postgres 0.14 add 40 crates
//!   to this crate's tree, and no procedural macro besides `async-trait`; in
//!   an empty project they resolve to 65 crates, against 115 for sqlx 0.9
//!   with only its `postgres`, `runtime-tokio` and `migrate` features (its
//!   default `macros` feature adds compile-time query checking, which needs
//!   a database at build time). Default users of this crate pull none of
//!   it: everything here is behind the `postgres` feature.
//!
//! Migrations are a few lines here (one transaction under an advisory lock,
//! applied names recorded in `tt_migrations`) rather than a migration crate.
//!
//! # How a change reaches every instance
//!
//! The schema's triggers call `pg_notify('tower_tenancy', 'tenant:<id>')`
//! (or `plan:<name>`, or `*`); PostgreSQL delivers it to every listening
//! connection when the transaction commits, never for a rolled-back one.
//! Each instance's [`PostgresChanges`] receives it and the wiring of
//! [`PostgresChanges::invalidate`] drops the tenant from the cache (a plan
//! change drops every tenant: plans change rarely), so the next request
//! reads the committed row. Races are closed as follows:
//!
//! * a lookup that read the row **before** the commit but finishes **after**
//!   the notification arrived would cache the old row: every notification
//!   bumps an epoch that [`PostgresDirectory::follow`] watches, and a lookup
//!   during which the epoch moved reads again (at most three times);
//! * a lookup whose epoch check passes just before the notification arrives
//!   is inserted into the cache right after it: each tenant is invalidated a
//!   second time [`RECHECK`] later;
//! * notifications sent while the listener was disconnected are lost: after
//!   every (re)connection the listener announces [`Change::All`] and the
//!   whole cache is dropped, once the `LISTEN` is in place.
//!
//! # Outages
//!
//! While PostgreSQL is down, cached tenants keep working (the cache is only
//! dropped after the listener has reconnected, when the database can answer
//! again); a tenant that is not cached gets the directory error, which the
//! [`TenancyLayer`](crate::TenancyLayer) answers with 503 `unavailable` and
//! `Retry-After`. Each lookup is bounded by [`PostgresDirectory::timeout`]
//! (a stopped server refuses at once, a frozen one is cut off there). The
//! pool drops broken connections and the listener reconnects with a backoff
//! of 50 ms doubling up to 500 ms (so a change committed right after the
//! server comes back applies within about half a second plus a connection
//! set-up), so both recover by themselves. A listener connection that dies
//! silently (no RST) is found by a `SELECT 1` every 5 s with a 2 s timeout:
//! changes committed meanwhile apply when it has reconnected, not within a
//! second.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use deadpool_postgres;
pub use tokio_postgres;

use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::{broadcast, watch};
use tokio_postgres::tls::{MakeTlsConnect, TlsConnect};
use tokio_postgres::{AsyncMessage, Socket};

use super::{CachedDirectory, DirectoryError, LookupResult, TenantDirectory};
use crate::catalog::Catalog;
use crate::future::MaybeReady;
use crate::tenant::TenantId;

/// The notification channel the schema's triggers send on.
pub const CHANNEL: &str = "tower_tenancy";

/// How long after a tenant's notification it is invalidated a second time
/// (see the module docs: a lookup that raced the notification).
pub const RECHECK: Duration = Duration::from_millis(250);

/// One schema change, applied once per database (see [`migrate`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// A unique name, recorded in `tt_migrations` once applied.
    pub name: &'static str,
    /// The SQL (several statements).
    pub sql: &'static str,
}

/// The directory's schema: `tt_plans`, `tt_tenants` and their notification
/// triggers (`migrations/0001_directory.sql`).
pub const DIRECTORY_MIGRATIONS: &[Migration] = &[Migration {
    name: "tower_tenancy/0001_directory",
    sql: include_str!("../../migrations/0001_directory.sql"),
}];

/// Applies the `migrations` not applied yet, in order, in one transaction
/// under an advisory lock (instances starting together apply each one
/// once); returns the names applied now.
///
/// ```no_run
/// # async fn run(pool: tower_tenancy::directory::postgres::deadpool_postgres::Pool) -> Result<(), Box<dyn std::error::Error>> {
/// use tower_tenancy::directory::postgres::{migrate, DIRECTORY_MIGRATIONS};
/// let mut client = pool.get().await?;
/// let applied = migrate(&mut client, DIRECTORY_MIGRATIONS).await?;
/// println!("applied {applied:?}");
/// # Ok(()) }
/// ```
pub async fn migrate(
    client: &mut tokio_postgres::Client,
    migrations: &[Migration],
) -> Result<Vec<&'static str>, tokio_postgres::Error> {
    let tx = client.transaction().await?;
    // Any constant; the same for every instance of every application.
    tx.execute("SELECT pg_advisory_xact_lock(7355608151)", &[])
        .await?;
    let exists = tx
        .query_one("SELECT to_regclass('tt_migrations') IS NOT NULL", &[])
        .await?
        .get::<_, bool>(0);
    if !exists {
        tx.batch_execute(
            "CREATE TABLE tt_migrations (
                 name text PRIMARY KEY,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;
    }
    let mut applied = Vec::new();
    for m in migrations {
        let done = tx
            .query_opt("SELECT 1 FROM tt_migrations WHERE name = $1", &[&m.name])
            .await?
            .is_some();
        if !done {
            tx.batch_execute(m.sql).await?;
            tx.execute("INSERT INTO tt_migrations (name) VALUES ($1)", &[&m.name])
                .await?;
            applied.push(m.name);
        }
    }
    tx.commit().await?;
    Ok(applied)
}

const LOOKUP: &str = "SELECT t.status, t.overrides::text, p.name, p.definition::text \
     FROM tt_tenants t JOIN tt_plans p ON p.name = t.plan WHERE t.id = $1";

/// A [`TenantDirectory`] on the `tt_tenants` and `tt_plans` tables.
///
/// Each lookup takes a connection from the pool and runs one prepared
/// query, bounded by [`timeout`](Self::timeout). Rows are validated like a
/// catalog file (plan rules, names, statuses); a row that does not validate
/// is a [`DirectoryError`] (503), logged with its path, never a panic.
/// Cloning is cheap.
///
/// ```no_run
/// # async fn run(pool: tower_tenancy::directory::postgres::deadpool_postgres::Pool) {
/// use std::time::Duration;
/// use tower_tenancy::directory::postgres::PostgresDirectory;
/// use tower_tenancy::directory::TenantDirectory;
///
/// let directory = PostgresDirectory::new(pool).timeout(Duration::from_secs(1));
/// let acme = directory.lookup(&"acme".parse().unwrap()).await;
/// # }
/// ```
#[derive(Clone)]
pub struct PostgresDirectory {
    pool: Pool,
    timeout: Duration,
    epoch: Option<Arc<AtomicU64>>,
}

impl PostgresDirectory {
    /// Reads tenants through `pool`, with a 2 s timeout per lookup.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            timeout: Duration::from_secs(2),
            epoch: None,
        }
    }

    /// Bounds each lookup (waiting for a connection included).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Reads again when a notification of `changes` arrives during a lookup,
    /// so that a lookup racing a change never caches the row from before it.
    #[must_use]
    pub fn follow(mut self, changes: &PostgresChanges) -> Self {
        self.epoch = Some(changes.shared.epoch.clone());
        self
    }

    /// The pool.
    pub fn pool(&self) -> &Pool {
        &self.pool
    }

    async fn load(&self, id: &TenantId) -> LookupResult {
        let epoch = || self.epoch.as_ref().map(|e| e.load(Ordering::Acquire));
        let mut attempt = 0;
        loop {
            let before = epoch();
            let result = tokio::time::timeout(self.timeout, self.query(id))
                .await
                .unwrap_or_else(|_| {
                    Err(DirectoryError(format!(
                        "postgres lookup timed out after {:?}",
                        self.timeout
                    )))
                });
            attempt += 1;
            if attempt >= 3 || epoch() == before {
                return result;
            }
        }
    }

    async fn query(&self, id: &TenantId) -> LookupResult {
        let client = self
            .pool
            .get()
            .await
            .map_err(|e| DirectoryError(format!("postgres: no connection: {e}")))?;
        let statement = client.prepare_cached(LOOKUP).await.map_err(pg_error)?;
        let row = client
            .query_opt(&statement, &[&id.as_str()])
            .await
            .map_err(pg_error)?;
        tenant_of(id, row)
    }

    /// Reads tenant `id` through `client` (a connection or a transaction),
    /// without cache or timeout, validated as a lookup is: for example to
    /// check a change inside its transaction before committing it.
    ///
    /// ```no_run
    /// # async fn run(mut client: tower_tenancy::directory::postgres::tokio_postgres::Client) -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_tenancy::directory::postgres::PostgresDirectory;
    ///
    /// let id = "acme".parse()?;
    /// let tx = client.transaction().await?;
    /// tx.execute(r#"UPDATE tt_tenants SET overrides = '{"limits": {"a b": 1}}' WHERE id = 'acme'"#, &[]).await?;
    /// if PostgresDirectory::read(&tx, &id).await.is_err() {
    ///     tx.rollback().await?; // "a b" is not a valid rule name
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn read(client: &impl tokio_postgres::GenericClient, id: &TenantId) -> LookupResult {
        let row = client
            .query_opt(LOOKUP, &[&id.as_str()])
            .await
            .map_err(pg_error)?;
        tenant_of(id, row)
    }
}

fn tenant_of(id: &TenantId, row: Option<tokio_postgres::Row>) -> LookupResult {
    {
        let Some(row) = row else {
            return Ok(None);
        };
        let status: String = row.try_get(0).map_err(pg_error)?;
        let overrides: String = row.try_get(1).map_err(pg_error)?;
        let plan: String = row.try_get(2).map_err(pg_error)?;
        let definition: String = row.try_get(3).map_err(pg_error)?;
        tenant_from_row(id, &status, &overrides, &plan, &definition).map(Some)
    }
}

fn pg_error(e: tokio_postgres::Error) -> DirectoryError {
    // `Display` of a server error is only "db error": add its message.
    match e.as_db_error() {
        Some(db) => DirectoryError(format!("postgres: {} ({})", db.message(), db.code().code())),
        None => DirectoryError(format!("postgres: {e}")),
    }
}

/// Builds the tenant through [`Catalog`], so a row is checked exactly like
/// an entry of a catalog file.
fn tenant_from_row(
    id: &TenantId,
    status: &str,
    overrides: &str,
    plan: &str,
    definition: &str,
) -> Result<std::sync::Arc<crate::Tenant>, DirectoryError> {
    let bad = |what: &str, e: &dyn std::fmt::Display| {
        DirectoryError(format!("tenant {id}: invalid {what}: {e}"))
    };
    let mut plan_json: Value =
        serde_json::from_str(definition).map_err(|e| bad("tt_plans.definition", &e))?;
    let Value::Object(fields) = &mut plan_json else {
        return Err(bad("tt_plans.definition", &"not a JSON object"));
    };
    fields.insert("name".into(), Value::String(plan.into()));
    let overrides: Value =
        serde_json::from_str(overrides).map_err(|e| bad("tt_tenants.overrides", &e))?;
    if !overrides.is_object() {
        return Err(bad("tt_tenants.overrides", &"not a JSON object"));
    }
    let document = json!({
        "plans": [plan_json],
        "tenants": [{ "id": id, "plan": plan, "status": status, "overrides": overrides }],
    });
    let catalog = Catalog::from_json_str(&document.to_string()).map_err(|e| {
        let at = e
            .path
            .replace("plans[0]", &format!("plan {plan:?}"))
            .replace("tenants[0]", "tenant row");
        bad("row", &format!("{at}: {}", e.message))
    })?;
    let tenant = catalog.tenants().first().cloned();
    tenant
        .map(std::sync::Arc::new)
        .ok_or_else(|| bad("row", &"no tenant"))
}

impl TenantDirectory for PostgresDirectory {
    fn lookup(&self, id: &TenantId) -> MaybeReady<LookupResult> {
        let (this, id) = (self.clone(), id.clone());
        MaybeReady::boxed(async move { this.load(&id).await })
    }
}

impl std::fmt::Debug for PostgresDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresDirectory")
            .field("timeout", &self.timeout)
            .field("follows_changes", &self.epoch.is_some())
            .finish()
    }
}

/// A committed change, as announced on [`CHANNEL`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Change {
    /// A tenant row was inserted, updated or deleted (`tenant:<id>`).
    Tenant(TenantId),
    /// A plan row was inserted, updated or deleted (`plan:<name>`).
    Plan(String),
    /// Another table's row (`<kind>:<key>`, e.g. `api_key:<id>`).
    Other {
        /// What changed, e.g. `api_key`.
        kind: String,
        /// Which one.
        key: String,
    },
    /// Anything may have changed: a `TRUNCATE`, an unreadable payload,
    /// (re)connection of the listener (notifications may have been missed),
    /// or a receiver that fell behind.
    All,
}

impl Change {
    /// Parses a notification payload.
    ///
    /// ```
    /// use tower_tenancy::directory::postgres::Change;
    ///
    /// assert_eq!(Change::parse("tenant:acme"), Change::Tenant("acme".parse().unwrap()));
    /// assert_eq!(Change::parse("plan:pro"), Change::Plan("pro".into()));
    /// assert_eq!(Change::parse("*"), Change::All);
    /// assert!(matches!(Change::parse("api_key:00ff"), Change::Other { .. }));
    /// ```
    pub fn parse(payload: &str) -> Change {
        match payload.split_once(':') {
            Some(("tenant", id)) => match id.parse() {
                Ok(id) => Change::Tenant(id),
                // Not a valid id: it cannot be cached; drop everything to be safe.
                Err(_) => Change::All,
            },
            Some(("plan", name)) => Change::Plan(name.to_owned()),
            Some((kind, key)) if !kind.is_empty() => Change::Other {
                kind: kind.to_owned(),
                key: key.to_owned(),
            },
            _ => Change::All,
        }
    }
}

struct Shared {
    changes: broadcast::Sender<Change>,
    epoch: Arc<AtomicU64>,
    listening: watch::Sender<bool>,
}

impl Shared {
    fn publish(&self, change: Change) {
        self.epoch.fetch_add(1, Ordering::AcqRel);
        // No receiver is not an error.
        let _ = self.changes.send(change);
    }
}

/// Listens on [`CHANNEL`] over one dedicated connection and announces every
/// committed change as a [`Change`] to its subscribers.
///
/// The connection is re-established by itself (backoff 50 ms doubling to
/// 500 ms); after each (re)connection, once `LISTEN` is in place, it announces
/// [`Change::All`]. The background task stops when this value is dropped.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_tenancy::directory::postgres::{tokio_postgres, Change, PostgresChanges};
///
/// let changes = PostgresChanges::listen("host=127.0.0.1 user=app".parse()?, tokio_postgres::NoTls);
/// let mut feed = changes.subscribe();
/// changes.listening().await;
/// while let Ok(change) = feed.recv().await {
///     if let Change::Other { kind, key } = change {
///         println!("{kind} {key} changed");
///     }
/// }
/// # Ok(()) }
/// ```
pub struct PostgresChanges {
    shared: Arc<Shared>,
    listening: watch::Receiver<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl PostgresChanges {
    /// Starts listening (spawns a task on the current tokio runtime).
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn listen<T>(config: tokio_postgres::Config, tls: T) -> Self
    where
        T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
        T::Stream: Send + 'static,
        T::TlsConnect: Send,
        <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
    {
        let (listening_tx, listening) = watch::channel(false);
        let shared = Arc::new(Shared {
            changes: broadcast::channel(1024).0,
            epoch: Arc::new(AtomicU64::new(0)),
            listening: listening_tx,
        });
        let task = tokio::spawn(run(config, tls, shared.clone()));
        Self {
            shared,
            listening,
            task,
        }
    }

    /// A new receiver of every change announced from now on. A receiver
    /// that falls more than 1024 changes behind gets `Lagged`: treat it as
    /// [`Change::All`].
    pub fn subscribe(&self) -> broadcast::Receiver<Change> {
        self.shared.changes.subscribe()
    }

    /// How many changes were announced so far. A reader that caches what
    /// it reads compares it before and after a read: when it moved, a change
    /// may have committed during the read, so read again.
    pub fn generation(&self) -> u64 {
        self.shared.epoch.load(Ordering::Acquire)
    }

    /// Whether the `LISTEN` is in place right now.
    pub fn is_listening(&self) -> bool {
        *self.listening.borrow()
    }

    /// Waits until the `LISTEN` is in place and every subscriber has taken
    /// the [`Change::All`] announced after it: a tenant read after this
    /// returns is not dropped from a cache wired with
    /// [`invalidate`](Self::invalidate) by that announcement. Every
    /// subscriber must keep reading its feed (as `invalidate` does), or this
    /// waits until the announcement is pushed out of the feed's 1024 slots.
    pub async fn listening(&self) {
        let mut rx = self.listening.clone();
        let _ = rx.wait_for(|up| *up).await;
        while !self.shared.changes.is_empty() {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Drops changed tenants from `cache` from now on: `Tenant(id)`
    /// invalidates `id` (and again [`RECHECK`] later), `Plan`, `All` and a
    /// lag invalidate everything. Runs in a task that ends when this
    /// listener is dropped.
    ///
    /// # Panics
    ///
    /// When called outside a tokio runtime.
    pub fn invalidate<D: TenantDirectory>(&self, cache: Arc<CachedDirectory<D>>) {
        let mut feed = self.subscribe();
        tokio::spawn(async move {
            loop {
                match feed.recv().await {
                    Ok(Change::Tenant(id)) => {
                        cache.invalidate(&id).await;
                        let cache = cache.clone();
                        tokio::spawn(async move {
                            tokio::time::sleep(RECHECK).await;
                            cache.invalidate(&id).await;
                        });
                    }
                    Ok(Change::Plan(_) | Change::All)
                    | Err(broadcast::error::RecvError::Lagged(_)) => cache.invalidate_all(),
                    Ok(Change::Other { .. }) => {}
                    Err(broadcast::error::RecvError::Closed) => break,
                }
            }
        });
    }
}

impl Drop for PostgresChanges {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl std::fmt::Debug for PostgresChanges {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresChanges")
            .field("listening", &self.is_listening())
            .finish()
    }
}

const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);
const PING_EVERY: Duration = Duration::from_secs(5);
const PING_TIMEOUT: Duration = Duration::from_secs(2);

async fn run<T>(config: tokio_postgres::Config, tls: T, shared: Arc<Shared>)
where
    T: MakeTlsConnect<Socket> + Clone + Send + Sync + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let mut backoff = BACKOFF_MIN;
    loop {
        match listen_once(&config, tls.clone(), &shared).await {
            Ok(()) => backoff = BACKOFF_MIN,
            Err(e) => {
                let error = pg_error(e).0;
                tracing::warn!(%error, "postgres change listener: connection failed")
            }
        }
        shared.listening.send_replace(false);
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

/// One connection's life: connect, LISTEN, announce `All`, forward
/// notifications until the connection ends or stops answering pings.
/// `Ok` when a listening connection was lost, `Err` when none was made.
async fn listen_once<T>(
    config: &tokio_postgres::Config,
    tls: T,
    shared: &Shared,
) -> Result<(), tokio_postgres::Error>
where
    T: MakeTlsConnect<Socket> + Send + 'static,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as TlsConnect<Socket>>::Future: Send,
{
    let (client, mut connection) = config.connect(tls).await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Drives the connection; ends (closing `tx`) when the connection does.
    let driver = AbortOnDrop(tokio::spawn(async move {
        while let Some(message) = std::future::poll_fn(|cx| connection.poll_message(cx)).await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    if tx.send(n.payload().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!(error = %e, "postgres change listener: connection lost");
                    break;
                }
            }
        }
    }));
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    // Whatever changed while nobody listened; announced before `listening`
    // turns true, so that `PostgresChanges::listening` can wait for it.
    shared.publish(Change::All);
    shared.listening.send_replace(true);
    tracing::info!("postgres change listener: listening on {CHANNEL}");
    let mut ping = tokio::time::interval(PING_EVERY);
    ping.tick().await;
    loop {
        tokio::select! {
            payload = rx.recv() => match payload {
                Some(payload) => shared.publish(Change::parse(&payload)),
                None => break,
            },
            _ = ping.tick() => {
                let alive = tokio::time::timeout(PING_TIMEOUT, client.simple_query("SELECT 1")).await;
                if !matches!(alive, Ok(Ok(_))) {
                    tracing::warn!("postgres change listener: no answer to ping, reconnecting");
                    break;
                }
            }
        }
    }
    drop(driver);
    Ok(())
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads() {
        assert_eq!(
            Change::parse("tenant:a.b-c_1"),
            Change::Tenant("a.b-c_1".parse().unwrap())
        );
        assert_eq!(Change::parse("tenant:../x"), Change::All);
        assert_eq!(Change::parse("tenant:"), Change::All);
        assert_eq!(Change::parse("garbage"), Change::All);
        assert_eq!(Change::parse(":x"), Change::All);
        assert_eq!(
            Change::parse("api_key:0123:4"),
            Change::Other {
                kind: "api_key".into(),
                key: "0123:4".into()
            }
        );
    }

    #[test]
    fn rows_are_validated_like_a_catalog() {
        let id: TenantId = "acme".parse().unwrap();
        let t = tenant_from_row(
            &id,
            "suspended",
            r#"{"limits":{"workflows":10}}"#,
            "free",
            r#"{"features":["export"],"limits":{"workflows":5}}"#,
        )
        .unwrap();
        assert_eq!(t.status(), crate::TenantStatus::Suspended);
        assert_eq!(t.plan().name, "free");
        assert!(t.plan().has_feature("export"));
        assert_eq!(t.plan().limit_of("workflows"), Some(crate::Limit::Max(10)));

        let e = tenant_from_row(
            &id,
            "active",
            "{}",
            "free",
            r#"{"limits":{"workflows":-1}}"#,
        )
        .unwrap_err();
        assert!(e.0.contains("plan \"free\".limits.workflows"), "{e}");
        let e = tenant_from_row(&id, "gone", "{}", "free", "{}").unwrap_err();
        assert!(e.0.contains("tenant row.status"), "{e}");
        assert!(tenant_from_row(&id, "active", "[]", "free", "{}").is_err());
        assert!(tenant_from_row(&id, "active", "{}", "free", "[1]").is_err());
        assert!(tenant_from_row(&id, "active", "{}", "free", "{").is_err());
    }
}
