//! Leases that follow their work, on a real Redis and a real Redis Cluster
//! (`lease_ttl` = 2 s):
//!
//! * an HTTP response stream and a gRPC server stream that live three times
//!   longer than `lease_ttl` keep their concurrency slot the whole time —
//!   every other request of the tenant is refused until the stream ends —
//!   while the lease's remaining time in Redis never runs out;
//! * a child process holding slots keeps them past `lease_ttl` (renewed),
//!   and after `kill -9` they come back within `lease_ttl` + one renewal
//!   period.
//!
//! Figures are printed (`--nocapture`); RELIABILITY.md §7 has them.
#![cfg(all(feature = "redis", feature = "tonic"))]

#[path = "common/http.rs"]
mod http_util;
#[path = "common/redis_server.rs"]
mod redis_server;

use std::convert::Infallible;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http_body_util::BodyExt;
use http_util::{get as http_get, TestServer};
use redis_server::{RedisCluster, RedisServer};
use tokio::sync::mpsc;
use tonic::transport::server::TcpIncoming;
use tonic::transport::{Channel, Server};
use tonic::Code;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::{Algorithm, Check, CounterStore};
use tower_tenancy::{AdmissionLayer, Catalog, MemoryDirectory, RedisStore, Rule, TenancyLayer};

const TTL: Duration = Duration::from_secs(2);
/// Three times the TTL, and a little more.
const STREAM: Duration = Duration::from_millis(6_500);

const CATALOG: &str = r#"
[[plans]]
name = "p"
concurrency = { jobs = { limit = 1, lease_ttl = "2s" } }
[[tenants]]
id = "http"
plan = "p"
[[tenants]]
id = "grpc"
plan = "p"
"#;

enum Backend {
    Single(RedisServer),
    Cluster(RedisCluster),
}

impl Backend {
    fn name(&self) -> &'static str {
        match self {
            Backend::Single(_) => "redis",
            Backend::Cluster(_) => "cluster",
        }
    }

    async fn store(&self) -> RedisStore {
        match self {
            Backend::Single(s) => RedisStore::connect(s.url()).await.unwrap(),
            Backend::Cluster(c) => RedisStore::connect_cluster(c.urls()).await.unwrap(),
        }
    }

    fn node(&self, key: &str) -> &RedisServer {
        match self {
            Backend::Single(s) => s,
            Backend::Cluster(c) => c.node_for(key),
        }
    }

    /// Milliseconds until the only lease in `key` expires, on the server's
    /// clock (negative: expired; `None`: no lease).
    fn lease_left_ms(&self, key: &str) -> Option<i64> {
        let script = "local t = redis.call('TIME') \
             local s = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES') \
             if #s == 0 then return 'none' end \
             return tonumber(s[2]) - (tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))";
        let out = self.node(key).cli(&["EVAL", script, "1", key]);
        let out = out.trim();
        (out != "none").then(|| {
            out.parse()
                .unwrap_or_else(|_| panic!("unexpected answer {out:?}"))
        })
    }

    /// The `(kind, url)` a child process connects with.
    fn target(&self) -> (&'static str, String) {
        match self {
            Backend::Single(s) => ("single", s.url()),
            Backend::Cluster(c) => ("cluster", c.urls().join(",")),
        }
    }
}

fn layers(store: RedisStore) -> (TenancyLayer, AdmissionLayer<RedisStore>) {
    let catalog = Catalog::from_toml_str(CATALOG).unwrap();
    (
        TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            MemoryDirectory::from_catalog(&catalog),
        ),
        AdmissionLayer::new(store).rule(Rule::concurrency("jobs")),
    )
}

/// What one stream saw.
#[derive(Debug)]
struct Seen {
    lived: Duration,
    probes: usize,
    admitted_during: usize,
    min_left_ms: i64,
    max_left_ms: i64,
}

impl Seen {
    fn check(&self, what: &str) {
        println!(
            "{what}: stream lived {:.1} s (lease_ttl 2 s); {} probes, {} admitted; lease time left in Redis: min {} ms, max {} ms",
            self.lived.as_secs_f64(),
            self.probes,
            self.admitted_during,
            self.min_left_ms,
            self.max_left_ms
        );
        assert!(self.lived >= 3 * TTL, "{what}: {self:?}");
        assert!(self.probes >= 10, "{what}: too few probes: {self:?}");
        assert_eq!(
            self.admitted_during, 0,
            "{what}: the slot was lost: {self:?}"
        );
        assert!(
            self.min_left_ms > 0,
            "{what}: the lease expired in Redis: {self:?}"
        );
    }
}

/// While `alive()` says the stream lives, probes the tenant every 250 ms
/// with `probe()` (true: admitted) and reads the lease's time left.
async fn watch<P, F>(backend: &Backend, key: &str, mut probe: P, alive: impl Fn() -> bool) -> Seen
where
    P: FnMut() -> F,
    F: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    let mut seen = Seen {
        lived: Duration::ZERO,
        probes: 0,
        admitted_during: 0,
        min_left_ms: i64::MAX,
        max_left_ms: i64::MIN,
    };
    while alive() {
        let admitted = probe().await;
        let left = backend.lease_left_ms(key).unwrap_or(i64::MIN);
        // The stream may have ended (and given its slot back) while the
        // probe or the lease reading was on its way: count neither then.
        if !alive() {
            break;
        }
        seen.probes += 1;
        seen.admitted_during += usize::from(admitted);
        seen.min_left_ms = seen.min_left_ms.min(left);
        seen.max_left_ms = seen.max_left_ms.max(left);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    seen.lived = start.elapsed();
    seen
}

async fn http_stream(backend: &Backend) {
    let (tenancy, admission) = layers(backend.store().await);
    // Set by the server just before its stream ends (before the slot is
    // given back), so that no probe after it is counted.
    let ended = Arc::new(AtomicBool::new(false));
    let end_flag = ended.clone();
    let app = Router::new()
        .route(
            "/stream",
            get(move || {
                let end_flag = end_flag.clone();
                async move {
                    // One chunk every 250 ms for STREAM.
                    let (tx, rx) = mpsc::channel::<Result<Bytes, Infallible>>(1);
                    tokio::spawn(async move {
                        let end = tokio::time::Instant::now() + STREAM;
                        while tokio::time::Instant::now() < end {
                            if tx.send(Ok(Bytes::from_static(b"tick\n"))).await.is_err() {
                                return;
                            }
                            tokio::time::sleep(Duration::from_millis(250)).await;
                        }
                        end_flag.store(true, Ordering::SeqCst);
                    });
                    Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
                }
            }),
        )
        .route("/probe", get(|| async { "ok" }))
        .layer(admission)
        .layer(tenancy);
    let server = TestServer::start(app).await;
    let client = http_util::client();
    let tenant = [("x-tenant-id", "http")];

    let resp = client
        .request(
            http::Request::get(server.url("/stream"))
                .header("x-tenant-id", "http")
                .body(http_body_util::Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let reader =
        tokio::spawn(async move { resp.into_body().collect().await.unwrap().to_bytes().len() });
    let url = server.url("/probe");
    let key = "tt:{http}:cc:jobs";
    let seen = watch(
        backend,
        key,
        || {
            let (client, url) = (client.clone(), url.clone());
            async move { http_get(&client, &url, &tenant).await.status == 200 }
        },
        || !ended.load(Ordering::SeqCst),
    )
    .await;
    assert!(reader.await.unwrap() > 0);
    seen.check(&format!("HTTP stream on {}", backend.name()));
    // Once the stream has ended, the slot comes back.
    let start = Instant::now();
    while http_get(&client, &url, &tenant).await.status != 200 {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slot not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn grpc_stream(backend: &Backend) {
    let (tenancy, admission) = layers(backend.store().await);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(
        Server::builder()
            .layer(tenancy)
            .layer(admission)
            .add_service(health)
            .serve_with_incoming(TcpIncoming::from(listener)),
    );
    let channel = Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel);
    let req = || {
        let mut r = tonic::Request::new(HealthCheckRequest { service: "".into() });
        r.metadata_mut()
            .insert("x-tenant-id", "grpc".parse().unwrap());
        r
    };
    // The real Watch stream stays open until the client drops it.
    let mut stream = client.watch(req()).await.unwrap().into_inner();
    stream.message().await.unwrap().unwrap();
    let start = Instant::now();
    let key = "tt:{grpc}:cc:jobs";
    let seen = watch(
        backend,
        key,
        || {
            let mut client = client.clone();
            async move {
                match client.check(req()).await {
                    Ok(_) => true,
                    Err(s) if s.code() == Code::ResourceExhausted => false,
                    Err(s) => panic!("unexpected status {s:?}"),
                }
            }
        },
        || start.elapsed() < STREAM,
    )
    .await;
    seen.check(&format!("gRPC stream on {}", backend.name()));
    drop(stream);
    let start = Instant::now();
    while client.check(req()).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "slot not released"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_three_times_longer_than_the_lease_keep_their_slot() {
    let single = Backend::Single(RedisServer::new());
    let cluster = Backend::Cluster(RedisCluster::new());
    tokio::join!(
        http_stream(&single),
        grpc_stream(&single),
        http_stream(&cluster),
        grpc_stream(&cluster),
    );
}

// ---------------------------------------------------------------------------
// kill -9 of a process holding slots.

const HOLDER_ENV: &str = "TT_LEASE_HOLDER";
const HELD: u64 = 3;

fn jobs_check(units: u64) -> Check {
    Check::new(
        "jobs",
        Algorithm::Concurrency { lease_ttl: TTL },
        HELD,
        units,
    )
}

/// Run by the child process (this test binary, started again with
/// `TT_LEASE_HOLDER=single|cluster,<url>`): takes `HELD` slots of tenant
/// `kill` with renewing leases, says `HELD`, then waits to be killed.
#[tokio::test]
#[ignore = "started by kill_9_frees_the_slots_within_ttl_plus_a_period"]
async fn holder_child() {
    let Ok(target) = std::env::var(HOLDER_ENV) else {
        return;
    };
    let (kind, url) = target.split_once(',').unwrap();
    let store = match kind {
        "single" => RedisStore::connect(url).await.unwrap(),
        _ => RedisStore::connect_cluster(url.split(',')).await.unwrap(),
    };
    let tenant = "kill".parse().unwrap();
    let admission = store.admit(&tenant, &[jobs_check(HELD)]).await.unwrap();
    assert!(admission.allowed());
    let _held = admission.lease;
    println!("HELD");
    std::io::stdout().flush().unwrap();
    std::future::pending::<()>().await;
}

/// The holder process, killed on drop (when a check fails).
struct Holder(std::process::Child);

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts the holder, checks its slots outlive `lease_ttl`, kills it with
/// SIGKILL and returns how long the slots took to come back.
async fn kill_round(backend: &Backend, store: &RedisStore) -> Duration {
    let (kind, url) = backend.target();
    let mut child = Holder(
        Command::new(std::env::current_exe().unwrap())
            .args([
                "holder_child",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(HOLDER_ENV, format!("{kind},{url}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let stdout = child.0.stdout.take().unwrap();
    let held = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // The harness prints `test holder_child ... ` first.
            .any(|line| line.trim_end().ends_with("HELD"))
    });
    assert!(
        tokio::time::timeout(Duration::from_secs(30), held)
            .await
            .expect("the holder did not start within 30 s")
            .unwrap(),
        "the holder exited before holding"
    );
    let tenant = "kill".parse().unwrap();
    let refused = |a: &tower_tenancy::store::Admission| !a.allowed();
    // Past lease_ttl, the slots are still held: renewed by the live holder.
    let start = Instant::now();
    while start.elapsed() < TTL * 2 + TTL / 2 {
        let a = store.admit(&tenant, &[jobs_check(1)]).await.unwrap();
        assert!(
            refused(&a),
            "a slot of the live holder expired after {:?}",
            start.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // kill -9: no release, no more renewals.
    let killed = Instant::now();
    child.0.kill().unwrap();
    child.0.wait().unwrap();
    loop {
        let a = store.admit(&tenant, &[jobs_check(HELD)]).await.unwrap();
        if a.allowed() {
            let back = killed.elapsed();
            drop(a);
            // Given back before the next round's holder asks.
            while store.peek(&tenant, &[jobs_check(0)]).await.unwrap()[0].used > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            return back;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "slots not back 10 s after kill -9"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_frees_the_slots_within_ttl_plus_a_period() {
    let rounds: usize = std::env::var("TT_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    for backend in [
        Backend::Single(RedisServer::new()),
        Backend::Cluster(RedisCluster::new()),
    ] {
        let store = backend.store().await;
        let mut times = Vec::new();
        for _ in 0..rounds {
            let back = kill_round(&backend, &store).await;
            assert!(
                back <= TTL + TTL / 3,
                "{}: slots came back {back:?} after kill -9 (bound: lease_ttl + one period = 2.67 s)",
                backend.name()
            );
            times.push(back.as_millis());
        }
        times.sort();
        println!(
            "kill -9 on {}: {HELD} slots back after {:?} ms ({} rounds; lease_ttl 2000 ms, renewal period 667 ms)",
            backend.name(),
            times,
            rounds
        );
    }
}
