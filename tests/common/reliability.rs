//! Shared pieces of the reliability tests (`tests/reliability_*.rs`):
//! several instances of the demo (`examples/axum_server.rs`) in one
//! process, each with its own counter store (its own Redis connection), a
//! load driver over real loopback sockets, Redis inspection, and process
//! memory figures.
//!
//! The including test file must declare, at its root:
//!
//! ```ignore
//! #[path = "../examples/axum_server.rs"]
//! #[allow(dead_code)]
//! mod demo;
//! #[path = "common/http.rs"]
//! mod http_util;
//! #[path = "common/redis_server.rs"]
//! mod redis_server;
//! #[path = "common/reliability.rs"]
//! mod rel;
//! ```
#![allow(dead_code)]

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::routing::post;
use axum::Router;
use bytes::Bytes;
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use tower_tenancy::layer::admission::{AdmissionLayer, Rule};
use tower_tenancy::resolve::{HeaderResolver, QueryResolver, ResolverChain};
use tower_tenancy::store::CounterStore;
use tower_tenancy::{Catalog, MemoryDirectory, TenancyLayer};

use crate::http_util::{client, HttpClient, TestServer};
use crate::redis_server::{RedisCluster, RedisServer};

/// `TT_LONG=1` selects the long-run figures (`scripts/reliability.sh`).
pub fn long() -> bool {
    std::env::var("TT_LONG").is_ok_and(|v| v == "1")
}

/// `ci` normally, `long` under `TT_LONG=1`.
pub fn scale(ci: usize, long_run: usize) -> usize {
    if long() {
        long_run
    } else {
        ci
    }
}

/// Milliseconds since the Unix epoch (the clock Redis's `TIME` reads too).
pub fn unix_ms() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
        * 1000.0
}

/// `VmRSS` of this process in KiB.
pub fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// The CPU model and core count, for the figures.
pub fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpu
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
        .unwrap_or_else(|| "?".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    format!("{cores} cores, {model}")
}

/// Serializes the tests of one binary: their timing figures are only
/// meaningful when they do not share the two cores with each other.
pub static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A single Redis server or a Redis Cluster, started by the test.
pub enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    pub fn single() -> Self {
        Backend::Single(RedisServer::new())
    }

    pub fn cluster() -> Self {
        Backend::Cluster(RedisCluster::new())
    }

    pub fn name(&self) -> &'static str {
        match self {
            Backend::Single(_) => "redis-server",
            Backend::Cluster(_) => "3-master cluster",
        }
    }

    /// What the demo reads from `REDIS_URL`: one URL, or the cluster's
    /// nodes separated by commas.
    pub fn url(&self) -> String {
        match self {
            Backend::Single(s) => s.url(),
            Backend::Cluster(c) => c.urls().join(","),
        }
    }

    /// `redis-cli` on the node that serves `key` (panics when it fails).
    pub fn cli(&self, key: &str, args: &[&str]) -> String {
        self.node(key).cli(args)
    }

    fn node(&self, key: &str) -> &RedisServer {
        match self {
            Backend::Single(s) => s,
            Backend::Cluster(c) => c.node_for(key),
        }
    }

    /// An integer reply of `args` (on `key`'s node). Panics, with the
    /// command and the answer, when redis-cli fails or Redis answers
    /// anything but a non-negative integer: a check built on it never
    /// passes because Redis was not asked.
    pub fn int(&self, key: &str, args: &[&str]) -> u64 {
        let n = self.node(key).int(args);
        u64::try_from(n).unwrap_or_else(|_| panic!("{args:?}: negative reply {n}"))
    }

    /// [`int`](Self::int) for `GET`/`HGET`, where nil (no such key or field)
    /// means 0.
    pub fn int_or_nil(&self, key: &str, args: &[&str]) -> u64 {
        let n = self.node(key).int_or_nil(args).unwrap_or(0);
        u64::try_from(n).unwrap_or_else(|_| panic!("{args:?}: negative reply {n}"))
    }

    /// Concurrency slots held in the sorted set `key`: its members scored
    /// with an expiry (`ZCOUNT key (0 +inf`; plan.lua's bucket markers score
    /// 0 and hold none), strict.
    pub fn slots(&self, key: &str) -> u64 {
        self.int(key, &["ZCOUNT", key, "(0", "+inf"])
    }
}

/// Redis keys of the demo's counters (default prefix `tt:`).
pub fn key(tenant: &str, kind: &str, policy: &str) -> String {
    format!("tt:{{{tenant}}}:{kind}:{policy}")
}

/// What the instrumented handler of `/x/jobs` saw: requests inside the
/// handler right now, the most at once, how many ran.
#[derive(Clone)]
pub struct Probe {
    pub in_flight: Arc<AtomicUsize>,
    pub max: Arc<AtomicUsize>,
    pub ran: Arc<AtomicU64>,
    /// Handlers in `hold` mode wait until this is `true`.
    pub gate: Arc<tokio::sync::watch::Sender<bool>>,
}

impl Default for Probe {
    fn default() -> Self {
        Self {
            in_flight: Arc::default(),
            max: Arc::default(),
            ran: Arc::default(),
            gate: Arc::new(tokio::sync::watch::channel(false).0),
        }
    }
}

impl Probe {
    pub fn reset_max(&self) {
        self.max
            .store(self.in_flight.load(Ordering::SeqCst), Ordering::SeqCst);
    }

    /// Lets every `hold` handler finish (now and later), or makes the next
    /// ones wait again.
    pub fn set_gate(&self, open: bool) {
        self.gate.send_replace(open);
    }
}

struct InFlight(Probe);

impl InFlight {
    fn enter(probe: &Probe) -> Self {
        let now = probe.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        probe.max.fetch_max(now, Ordering::SeqCst);
        probe.ran.fetch_add(1, Ordering::Relaxed);
        InFlight(probe.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Routes added next to the demo's, through the same layers and the same
/// store, for what the demo does not have:
///
/// * `POST /x/jobs`: concurrency rule `concurrent_executions`; the handler
///   counts itself in `probe`, and by `x-mode` finishes (`fast`), sleeps
///   `x-sleep-ms` (`sleep`), waits until the probe's gate opens (`hold`),
///   streams an endless body (`stream`) or panics (`panic`);
/// * `POST /x/seats`: a crate-kept gauge `seats` (`Rule::gauge`).
pub fn extras(directory: MemoryDirectory, store: Arc<dyn CounterStore>, probe: Probe) -> Router {
    Router::new()
        .route(
            "/x/jobs",
            post(job).route_layer(
                AdmissionLayer::new(store.clone()).rule(Rule::concurrency("concurrent_executions")),
            ),
        )
        .route(
            "/x/seats",
            post(|| async { (http::StatusCode::CREATED, "seat") })
                .route_layer(AdmissionLayer::new(store).rule(Rule::gauge("seats"))),
        )
        .layer(TenancyLayer::new(
            ResolverChain::new()
                .or(HeaderResolver::new("x-tenant-id"))
                .or(QueryResolver::new("tenant")),
            directory,
        ))
        .with_state(probe)
}

async fn job(State(probe): State<Probe>, headers: HeaderMap) -> axum::response::Response {
    let guard = InFlight::enter(&probe);
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    match header("x-mode") {
        Some("panic") => panic!("handler panicked (on purpose)"),
        Some("hold") => {
            let mut gate = probe.gate.subscribe();
            let _ = gate.wait_for(|open| *open).await;
            drop(guard);
            axum::response::Response::new(Body::from("done"))
        }
        Some("stream") => {
            drop(guard);
            axum::response::Response::new(Body::from_stream(endless()))
        }
        Some("sleep") => {
            let ms = header("x-sleep-ms")
                .and_then(|v| v.parse().ok())
                .unwrap_or(10);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            drop(guard);
            axum::response::Response::new(Body::from("done"))
        }
        _ => axum::response::Response::new(Body::from("done")),
    }
}

/// An endless body: one chunk every 5 ms.
fn endless() -> impl tokio_stream::Stream<Item = Result<Bytes, Infallible>> + Send {
    use tokio_stream::StreamExt;
    tokio_stream::iter(0u64..)
        .throttle(Duration::from_millis(5))
        .map(|i| Ok(Bytes::from(format!("{i}\n"))))
}

/// Panics seen by the hook of [`silence_deliberate_panics`], deliberate or not.
pub static PANICS: AtomicU64 = AtomicU64::new(0);
/// Panics that were not deliberate (`on purpose`).
pub static UNEXPECTED_PANICS: AtomicU64 = AtomicU64::new(0);

/// Keeps deliberate panics (`on purpose`) out of the test output, and
/// counts every panic ([`PANICS`], [`UNEXPECTED_PANICS`]).
pub fn silence_deliberate_panics() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let default = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            let msg = info
                .payload()
                .downcast_ref::<&str>()
                .copied()
                .unwrap_or_default();
            PANICS.fetch_add(1, Ordering::SeqCst);
            if !msg.contains("on purpose") {
                UNEXPECTED_PANICS.fetch_add(1, Ordering::SeqCst);
                default(info);
            }
        }));
    });
}

/// One instance of the demo on a free loopback port, with its own store.
pub struct Instance {
    pub server: TestServer,
    pub store: Arc<dyn CounterStore>,
    pub probe: Probe,
}

impl Instance {
    pub fn url(&self, path: &str) -> String {
        self.server.url(path)
    }
}

/// Starts `n` instances of the demo's router (plus [`extras`]) over
/// `catalog`, each with the store `store(i)` builds.
pub async fn start_instances<F, Fut>(
    n: usize,
    catalog: &str,
    probe: &Probe,
    store: F,
) -> Vec<Instance>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = Arc<dyn CounterStore>>,
{
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let catalog = Catalog::from_toml_str(catalog).expect("test catalog");
        let directory = MemoryDirectory::from_catalog(&catalog);
        let store = store(i).await;
        let app = crate::demo::app(directory.clone(), store.clone(), crate::demo::Db::default())
            .merge(extras(directory, store.clone(), probe.clone()));
        out.push(Instance {
            server: TestServer::start(app).await,
            store,
            probe: probe.clone(),
        });
    }
    out
}

/// `n` demo instances, each with its own connection to `url` through the
/// demo's `shared_store` (Redis behind a `ResilientStore`).
pub async fn start_demo_instances(
    n: usize,
    catalog: &str,
    url: &str,
    failure: &str,
    timeout: Duration,
) -> Vec<Instance> {
    let probe = Probe::default();
    start_instances(n, catalog, &probe, |_| async {
        crate::demo::shared_store(url, Some(failure), timeout)
            .await
            .expect("connect the demo's store")
    })
    .await
}

/// One request of a load run and what came back.
#[derive(Debug, Clone)]
pub struct Shot {
    pub instance: usize,
    /// Unix ms when sent and when the answer's head arrived.
    pub sent_ms: f64,
    pub recv_ms: f64,
    /// From sending to the end of the body.
    pub took: Duration,
    /// `None`: no answer (connection error, or no answer within the client timeout).
    pub status: Option<u16>,
    pub content_type: Option<String>,
    pub retry_after: Option<String>,
    /// The `RateLimit` field.
    pub ratelimit: Option<String>,
    /// `code` of a problem+json body.
    pub code: Option<String>,
    pub error: Option<String>,
}

/// How to drive a load run.
#[derive(Clone)]
pub struct Load {
    /// Concurrent clients per instance.
    pub clients: usize,
    /// Requests per client (`None`: until `until`).
    pub per_client: Option<usize>,
    pub until: Option<Instant>,
    /// Pause between two requests of one client.
    pub pause: Duration,
    /// Longest wait for a whole answer; longer counts as no answer.
    pub timeout: Duration,
    /// Stops the run when set.
    pub stop: Option<Arc<AtomicBool>>,
}

impl Default for Load {
    fn default() -> Self {
        Self {
            clients: 4,
            per_client: Some(10),
            until: None,
            pause: Duration::ZERO,
            timeout: Duration::from_secs(10),
            stop: None,
        }
    }
}

pub type MakeRequest = Arc<dyn Fn(&str, usize) -> Request<Full<Bytes>> + Send + Sync>;

/// Runs `load` against every base URL of `bases` (one per instance); each
/// request is `make(base, seq)`. Returns every shot.
pub async fn drive(bases: &[String], load: Load, make: MakeRequest) -> Vec<Shot> {
    let mut tasks = Vec::new();
    for (instance, base) in bases.iter().enumerate() {
        // One HTTP client (connection pool) per instance, as separate
        // client processes would have.
        let http = client();
        for c in 0..load.clients {
            let (http, base, load, make) = (http.clone(), base.clone(), load.clone(), make.clone());
            tasks.push(tokio::spawn(async move {
                let mut shots = Vec::new();
                let mut seq = c;
                loop {
                    if load.per_client.is_some_and(|n| shots.len() >= n)
                        || load.until.is_some_and(|u| Instant::now() >= u)
                        || load
                            .stop
                            .as_ref()
                            .is_some_and(|s| s.load(Ordering::Relaxed))
                    {
                        break;
                    }
                    shots.push(shoot(&http, instance, make(&base, seq), load.timeout).await);
                    seq += load.clients;
                    if !load.pause.is_zero() {
                        tokio::time::sleep(load.pause).await;
                    }
                }
                shots
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("a load task panicked"));
    }
    all.sort_by(|a, b| a.sent_ms.total_cmp(&b.sent_ms));
    all
}

/// Sends one request and reads the whole answer.
pub async fn shoot(
    http: &HttpClient,
    instance: usize,
    req: Request<Full<Bytes>>,
    timeout: Duration,
) -> Shot {
    let sent_ms = unix_ms();
    let started = Instant::now();
    let mut shot = Shot {
        instance,
        sent_ms,
        recv_ms: sent_ms,
        took: Duration::ZERO,
        status: None,
        content_type: None,
        retry_after: None,
        ratelimit: None,
        code: None,
        error: None,
    };
    let answer = tokio::time::timeout(timeout, async {
        let resp = http.request(req).await?;
        let recv_ms = unix_ms();
        let (parts, body) = resp.into_parts();
        let body = body.collect().await?.to_bytes();
        Ok::<_, Box<dyn std::error::Error + Send + Sync>>((recv_ms, parts, body))
    })
    .await;
    shot.took = started.elapsed();
    match answer {
        Ok(Ok((recv_ms, parts, body))) => {
            shot.recv_ms = recv_ms;
            shot.status = Some(parts.status.as_u16());
            let h = |n: &str| {
                parts
                    .headers
                    .get(n)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            shot.content_type = h("content-type");
            shot.retry_after = h("retry-after");
            shot.ratelimit = h("ratelimit");
            if shot.content_type.as_deref() == Some("application/problem+json") {
                shot.code = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["code"].as_str().map(str::to_owned));
            }
        }
        Ok(Err(e)) => shot.error = Some(e.to_string()),
        Err(_) => shot.error = Some(format!("no answer within {timeout:?}")),
    }
    shot
}

/// A request with the tenant header.
pub fn request(method: http::Method, url: &str, tenant: &str) -> Request<Full<Bytes>> {
    Request::builder()
        .method(method)
        .uri(url)
        .header("x-tenant-id", tenant)
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// Counts of statuses, e.g. `200×100 429×540`.
pub fn histogram(shots: &[Shot]) -> String {
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    for s in shots {
        let k = match s.status {
            Some(code) => code.to_string(),
            None => "error".into(),
        };
        *counts.entry(k).or_default() += 1;
    }
    counts
        .iter()
        .map(|(k, n)| format!("{k}×{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

pub fn count(shots: &[Shot], status: u16) -> usize {
    shots.iter().filter(|s| s.status == Some(status)).count()
}

/// The slowest answer.
pub fn slowest(shots: &[Shot]) -> Duration {
    shots.iter().map(|s| s.took).max().unwrap_or_default()
}

/// The 99th percentile answer time.
pub fn p99(shots: &[Shot]) -> Duration {
    let mut t: Vec<Duration> = shots.iter().map(|s| s.took).collect();
    t.sort();
    t.get((t.len() * 99 / 100).min(t.len().saturating_sub(1)))
        .copied()
        .unwrap_or_default()
}

/// Polls `f` every 20 ms until it returns true; returns the time it took,
/// or `None` after `timeout`.
pub async fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> Option<Duration> {
    let started = Instant::now();
    loop {
        if f() {
            return Some(started.elapsed());
        }
        if started.elapsed() > timeout {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `r` of a `RateLimit` field (`"name";r=12;t=30`).
pub fn remaining(shot: &Shot) -> Option<u64> {
    shot.ratelimit
        .as_deref()?
        .split(';')
        .find_map(|p| p.strip_prefix("r="))?
        .parse()
        .ok()
}
