//! `Lease::renewing` under Tokio's paused clock: a lease is renewed every
//! `lease_ttl / 3` for as long as it is held — through the admission layer,
//! for as long as the response body lives — and never after it is dropped;
//! a renewal that hangs is abandoned and the next one runs on time.

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_tenancy::future::MaybeReady;
use tower_tenancy::resolve::HeaderResolver;
use tower_tenancy::store::{
    Admission, Check, CounterStore, Decisions, Lease, MemoryStore, StoreResult,
};
use tower_tenancy::{AdmissionLayer, Catalog, MemoryDirectory, Rule, TenancyLayer, TenantId};

fn counter() -> (
    Arc<AtomicU32>,
    impl Fn() -> std::future::Ready<()> + Send + Sync + 'static,
) {
    let n = Arc::new(AtomicU32::new(0));
    let m = n.clone();
    (n, move || {
        m.fetch_add(1, Ordering::SeqCst);
        std::future::ready(())
    })
}

#[tokio::test(start_paused = true)]
async fn renewed_every_third_of_the_ttl_until_dropped() {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let (renewals, renew) = counter();
    let lease = Lease::new(move || flag.store(true, Ordering::SeqCst))
        .renewing(Duration::from_secs(6), renew);
    tokio::time::sleep(Duration::from_millis(1_999)).await;
    assert_eq!(
        renewals.load(Ordering::SeqCst),
        0,
        "first renewal after one period"
    );
    tokio::time::sleep(Duration::from_millis(2)).await;
    assert_eq!(renewals.load(Ordering::SeqCst), 1);
    // Three times the TTL: 9 periods.
    tokio::time::sleep(Duration::from_millis(18_001 - 2_001)).await;
    assert_eq!(renewals.load(Ordering::SeqCst), 9);
    assert!(!released.load(Ordering::SeqCst));
    drop(lease);
    assert!(released.load(Ordering::SeqCst), "released when dropped");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(
        renewals.load(Ordering::SeqCst),
        9,
        "no renewal after the drop"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_renewal_is_abandoned_and_the_next_runs_on_time() {
    let started = Arc::new(AtomicU32::new(0));
    let s = started.clone();
    let lease = Lease::new(|| ()).renewing(Duration::from_secs(3), move || {
        let n = s.fetch_add(1, Ordering::SeqCst);
        async move {
            if n == 0 {
                // The first renewal never finishes (a frozen store).
                std::future::pending::<()>().await;
            }
        }
    });
    // Renewals start at 1 s, 2 s, 3 s, 4 s: the hanging one is cut at 2 s.
    tokio::time::sleep(Duration::from_millis(4_500)).await;
    assert_eq!(started.load(Ordering::SeqCst), 4);
    drop(lease);
}

#[test]
fn without_a_runtime_the_lease_is_not_renewed_but_still_released() {
    let released = Arc::new(AtomicBool::new(false));
    let flag = released.clone();
    let (renewals, renew) = counter();
    let lease = Lease::new(move || flag.store(true, Ordering::SeqCst))
        .renewing(Duration::from_secs(3), renew);
    drop(lease);
    assert!(released.load(Ordering::SeqCst));
    assert_eq!(renewals.load(Ordering::SeqCst), 0);
}

/// A memory store whose leases are renewed like shared stores' (counting
/// the renewals), as a store with expiring leases does.
struct Renewing {
    inner: MemoryStore,
    renewals: Arc<AtomicU32>,
}

impl CounterStore for Renewing {
    fn admit(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Admission>> {
        let mut answer = self.inner.admit(tenant, checks);
        let mut admission = answer
            .try_take()
            .expect("the memory store answers at once")
            .unwrap();
        let n = self.renewals.clone();
        admission.lease = admission.lease.take().map(|lease| {
            lease.renewing(Duration::from_secs(3), move || {
                n.fetch_add(1, Ordering::SeqCst);
                std::future::ready(())
            })
        });
        MaybeReady::ready(Ok(admission))
    }
    fn peek(&self, tenant: &TenantId, checks: &[Check]) -> MaybeReady<StoreResult<Decisions>> {
        self.inner.peek(tenant, checks)
    }
    fn adjust(&self, tenant: &TenantId, policy: &str, delta: i64) -> MaybeReady<StoreResult<u64>> {
        self.inner.adjust(tenant, policy, delta)
    }
}

/// A response body that sends one chunk per second, `n` times.
struct Ticking {
    left: u32,
    sleep: Pin<Box<tokio::time::Sleep>>,
}

impl Body for Ticking {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.left == 0 {
            return Poll::Ready(None);
        }
        std::task::ready!(self.sleep.as_mut().poll(cx));
        self.left -= 1;
        let next = tokio::time::Instant::now() + Duration::from_secs(1);
        self.sleep.as_mut().reset(next);
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"tick\n")))))
    }
}

use std::future::Future;

#[tokio::test(start_paused = true)]
async fn the_admission_layer_keeps_renewing_while_the_body_lives() {
    let catalog = Catalog::from_toml_str(
        "[[plans]]\nname = \"p\"\nconcurrency = { jobs = { limit = 1, lease_ttl = \"3s\" } }\n\
         [[tenants]]\nid = \"acme\"\nplan = \"p\"\n",
    )
    .unwrap();
    let renewals = Arc::new(AtomicU32::new(0));
    let store = Arc::new(Renewing {
        inner: MemoryStore::new(),
        renewals: renewals.clone(),
    });
    let svc = ServiceBuilder::new()
        .layer(TenancyLayer::new(
            HeaderResolver::new("x-tenant-id"),
            MemoryDirectory::from_catalog(&catalog),
        ))
        .layer(AdmissionLayer::new(store.clone()).rule(Rule::concurrency("jobs")))
        .service(service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(Ticking {
                left: 9,
                sleep: Box::pin(tokio::time::sleep(Duration::from_secs(1))),
            }))
        }));
    let req = || {
        Request::builder()
            .header("x-tenant-id", "acme")
            .body(())
            .unwrap()
    };
    let response = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(response.status(), 200);
    let mut body = response.into_body();
    // 9 s of body, three times the TTL: renewed every second.
    let mut chunks = 0;
    while let Some(frame) = body.frame().await {
        frame.unwrap();
        chunks += 1;
        // The slot is held the whole time.
        let refused = svc.clone().oneshot(req()).await.unwrap();
        if chunks < 9 {
            assert_eq!(refused.status(), 429, "chunk {chunks}");
        }
    }
    assert_eq!(chunks, 9);
    let seen = renewals.load(Ordering::SeqCst);
    assert!((8..=9).contains(&seen), "{seen} renewals over 9 s");
    // The body has ended: the lease was dropped, renewals stop.
    drop(body);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(renewals.load(Ordering::SeqCst), seen);
    let again = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(again.status(), 200, "the slot came back");
}
