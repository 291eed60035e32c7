//! Input bounds over a real socket (issue 8, part 4): hostile requests
//! written byte by byte to the demo (`examples/axum_server.rs`, its router
//! on the in-memory store, served by `axum::serve` with hyper's default
//! limits) on a loopback port: huge header values, too many headers, 10 000
//! query parameters, very long paths.
//!
//! Every request gets a clean answer — 400 with a problem+json `code` when
//! the tenant id is at fault, 404/400 from routing, or hyper's own 431 / 414
//! beyond its limits (100 headers, a 408 KiB read buffer, 65 534-byte URIs)
//! — within a bound of time, never a hang; the extra heap a request takes
//! while it is processed (a counting allocator: peak live bytes minus the
//! level before) stays bounded whatever the input's size; the heap is back
//! at its baseline afterwards and the server still serves.
//!
//! Run with `--nocapture` for the table (lines starting with `FIGURES`).

#[path = "common/counting_alloc.rs"]
mod counting_alloc;
#[path = "../examples/axum_server.rs"]
#[allow(dead_code)]
mod demo;
#[path = "common/http.rs"]
mod http_util;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tower_tenancy::store::{CounterStore, MemoryStore};
use tower_tenancy::{Catalog, MemoryDirectory};

const KIB: usize = 1024;
const MIB: usize = 1024 * 1024;

/// The most a request may take, including writing megabytes in debug builds.
const MAX_TIME: Duration = Duration::from_secs(3);
/// The most extra heap a request may take while processed.
const MAX_PEAK: i64 = MIB as i64;

/// What came back on the socket.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    code: Option<String>,
    took: Duration,
    /// Extra heap at the peak, bytes.
    peak: i64,
    error: Option<String>,
}

/// Writes `bytes` (in a task: the server may answer before reading them
/// all) and reads the answer until the server closes the connection.
async fn raw(addr: SocketAddr, bytes: Vec<u8>) -> Answer {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut rd, mut wr) = stream.into_split();
    // Earlier connections finish closing first: their buffers, freed
    // meanwhile, would hide part of this request's peak.
    tokio::time::sleep(Duration::from_millis(20)).await;
    counting_alloc::reset_peak();
    let base = counting_alloc::live();
    let started = Instant::now();
    // The caller keeps the request until the peak is read: only the
    // server's allocations move the level.
    let bytes = Arc::new(bytes);
    let sending = bytes.clone();
    let writer = tokio::spawn(async move {
        // The server may close (after a 431) before taking everything.
        let _ = wr.write_all(&sending).await;
        let _ = wr.flush().await;
        wr
    });
    let mut buf = Vec::with_capacity(16 * KIB);
    let mut chunk = [0u8; 8192];
    let mut error = None;
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match rd.read(&mut chunk).await {
                Ok(0) => break,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    if complete(&buf) {
                        break;
                    }
                }
                Err(e) => {
                    error = Some(e.to_string());
                    break;
                }
            }
        }
    })
    .await;
    let took = started.elapsed();
    let peak = counting_alloc::peak() - base;
    if read.is_err() {
        error = Some("no answer within 10 s".into());
    }
    writer.abort();
    drop(bytes);
    let text = String::from_utf8_lossy(&buf);
    let status = text
        .strip_prefix("HTTP/1.1 ")
        .and_then(|rest| rest.get(..3))
        .and_then(|s| s.parse().ok());
    let code = text.split_once("\r\n\r\n").and_then(|(_, body)| {
        serde_json::from_str::<serde_json::Value>(body)
            .ok()
            .and_then(|v| v["code"].as_str().map(str::to_owned))
    });
    Answer {
        status,
        code,
        took,
        peak,
        error,
    }
}

/// Whether `buf` holds a whole response (head and a content-length body).
fn complete(buf: &[u8]) -> bool {
    let text = String::from_utf8_lossy(buf);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let length = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse::<usize>().ok())?
        })
        .unwrap_or(0);
    body.len() >= length
}

fn request(method: &str, target: &str, headers: &[(String, String)]) -> Vec<u8> {
    let mut r = format!("{method} {target} HTTP/1.1\r\nhost: localhost\r\n");
    for (k, v) in headers {
        r.push_str(k);
        r.push_str(": ");
        r.push_str(v);
        r.push_str("\r\n");
    }
    r.push_str("connection: close\r\ncontent-length: 0\r\n\r\n");
    r.into_bytes()
}

fn tenant(t: &str) -> Vec<(String, String)> {
    vec![("x-tenant-id".into(), t.into())]
}

/// One hostile input: its description, the request, the statuses (and the
/// problem code) accepted.
struct Case {
    what: String,
    bytes: Vec<u8>,
    expect: &'static [u16],
    code: Option<&'static str>,
}

fn case(
    what: impl Into<String>,
    bytes: Vec<u8>,
    expect: &'static [u16],
    code: Option<&'static str>,
) -> Case {
    Case {
        what: what.into(),
        bytes,
        expect,
        code,
    }
}

fn cases() -> Vec<Case> {
    let mut cases = Vec::new();
    // Header values.
    for size in [KIB, 64 * KIB, 300 * KIB] {
        cases.push(case(
            format!("x-tenant-id of {} KiB", size / KIB),
            request("GET", "/v1/me", &tenant(&"a".repeat(size))),
            &[400],
            Some("malformed_tenant_id"),
        ));
    }
    for size in [MIB, 16 * MIB] {
        cases.push(case(
            format!("x-tenant-id of {} MiB", size / MIB),
            request("GET", "/v1/me", &tenant(&"a".repeat(size))),
            &[431],
            None,
        ));
    }
    cases.push(case(
        "another header of 300 KiB, tenant initech",
        request(
            "GET",
            "/v1/me",
            &[
                ("x-tenant-id".into(), "initech".into()),
                ("x-junk".into(), "j".repeat(300 * KIB)),
            ],
        ),
        &[200],
        None,
    ));
    // Header counts (hyper: at most 100).
    for n in [90usize, 101, 10_000] {
        let mut h = tenant("initech");
        h.extend((0..n.saturating_sub(4)).map(|i| (format!("x-h{i}"), "v".into())));
        cases.push(case(
            format!("{n} headers, tenant initech"),
            request("GET", "/v1/me", &h),
            if n <= 100 { &[200] } else { &[431] },
            None,
        ));
    }
    cases.push(case(
        "x-tenant-id 50 times",
        request(
            "GET",
            "/v1/me",
            &(0..50)
                .map(|_| ("x-tenant-id".into(), "initech".into()))
                .collect::<Vec<_>>(),
        ),
        &[400],
        Some("malformed_tenant_id"),
    ));
    // Query parameters.
    let many = "a=1&".repeat(10_000);
    cases.push(case(
        "10 000 query parameters, then tenant=initech",
        request("GET", &format!("/v1/me?{many}tenant=initech"), &[]),
        &[200],
        None,
    ));
    cases.push(case(
        "10 000 query parameters, then tenant=%2e%2e",
        request("GET", &format!("/v1/me?{many}tenant=%2e%2e"), &[]),
        &[400],
        Some("malformed_tenant_id"),
    ));
    cases.push(case(
        "4 000 times tenant=initech",
        request(
            "GET",
            &format!("/v1/me?{}", "tenant=initech&".repeat(4_000)),
            &[],
        ),
        &[400],
        Some("malformed_tenant_id"),
    ));
    cases.push(case(
        "tenant=<60 000 a>",
        request("GET", &format!("/v1/me?tenant={}", "a".repeat(60_000)), &[]),
        &[400],
        Some("malformed_tenant_id"),
    ));
    cases.push(case(
        "10 000 query parameters to the executions route (axum Query)",
        request(
            "POST",
            &format!("/v1/workflows/1/executions?{many}duration_ms=0"),
            &tenant("initech"),
        ),
        &[200],
        None,
    ));
    // Paths.
    cases.push(case(
        "path of 60 000 bytes",
        request(
            "GET",
            &format!("/v1/{}", "a".repeat(60_000)),
            &tenant("initech"),
        ),
        &[404],
        None,
    ));
    cases.push(case(
        "path of 10 000 segments",
        request(
            "GET",
            &format!("/v1/me{}", "/x".repeat(10_000)),
            &tenant("initech"),
        ),
        &[404],
        None,
    ));
    cases.push(case(
        "path of 20 000 percent-encoded bytes",
        request(
            "GET",
            &format!("/v1/{}", "%2e".repeat(20_000)),
            &tenant("initech"),
        ),
        &[404],
        None,
    ));
    cases.push(case(
        "workflow id of 60 000 digits",
        request(
            "DELETE",
            &format!("/v1/workflows/{}", "9".repeat(60_000)),
            &tenant("initech"),
        ),
        &[400],
        None,
    ));
    cases.push(case(
        "path of 65 535 bytes (beyond hyper's URI limit)",
        request(
            "GET",
            &format!("/{}", "a".repeat(65_534)),
            &tenant("initech"),
        ),
        &[414],
        None,
    ));
    cases.push(case(
        "path of 1 MiB",
        request("GET", &format!("/{}", "a".repeat(MIB)), &tenant("initech")),
        &[414, 431],
        None,
    ));
    cases
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_requests_get_clean_bounded_answers() {
    let started = Instant::now();
    let catalog =
        Catalog::from_path(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/plans.toml")).unwrap();
    let store: Arc<dyn CounterStore> = Arc::new(MemoryStore::new());
    let app = demo::app(
        MemoryDirectory::from_catalog(&catalog),
        store,
        demo::Db::default(),
    );
    let server = http_util::TestServer::start(app).await;
    let addr = server.addr;
    let ok = request("GET", "/health", &[]);
    // Warm-up.
    for _ in 0..20 {
        assert_eq!(raw(addr, ok.clone()).await.status, Some(200));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let baseline = counting_alloc::live_kib();
    let rounds = if std::env::var("TT_LONG").is_ok_and(|v| v == "1") {
        20
    } else {
        2
    };
    let mut rows = Vec::new();
    for round in 0..rounds {
        for c in cases() {
            let size = c.bytes.len();
            let a = raw(addr, c.bytes).await;
            let ok_status = a.status.is_some_and(|s| c.expect.contains(&s));
            assert!(
                ok_status,
                "{}: {a:?} (expected {:?}, error {:?})",
                c.what, c.expect, a.error
            );
            if let Some(code) = c.code {
                assert_eq!(a.code.as_deref(), Some(code), "{}: {a:?}", c.what);
            }
            assert!(a.took <= MAX_TIME, "{}: took {:?}", c.what, a.took);
            assert!(
                a.peak <= MAX_PEAK,
                "{}: {} KiB extra heap",
                c.what,
                a.peak / 1024
            );
            // The server still serves.
            assert_eq!(
                raw(addr, ok.clone()).await.status,
                Some(200),
                "after {}",
                c.what
            );
            if round == 0 {
                rows.push(format!(
                    "| {} | {} | {}{} | {:.1} ms | {} KiB |",
                    c.what,
                    if size >= MIB {
                        format!("{:.1} MiB", size as f64 / MIB as f64)
                    } else {
                        format!("{:.1} KiB", size as f64 / KIB as f64)
                    },
                    a.status.unwrap(),
                    a.code.map(|c| format!(" `{c}`")).unwrap_or_default(),
                    a.took.as_secs_f64() * 1000.0,
                    a.peak / 1024,
                ));
            }
        }
    }
    // Polls (up to 10 s) until the connections of the run are closed and
    // the heap is back near the baseline.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut after = counting_alloc::live_kib();
    while after - baseline >= 1024 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        after = counting_alloc::live_kib();
    }
    println!("FIGURES bounds: | input | request size | answer | time | extra heap at peak |");
    println!("FIGURES bounds: |---|---:|---|---:|---:|");
    for r in rows {
        println!("FIGURES bounds: {r}");
    }
    println!(
        "FIGURES bounds: {rounds} round(s) of {} hostile requests; live heap {baseline} KiB \
         before, {after} KiB after; test took {:?}",
        cases().len(),
        started.elapsed()
    );
    assert!(
        after - baseline < 1024,
        "heap grew from {baseline} KiB to {after} KiB"
    );
}
