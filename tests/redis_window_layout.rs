//! The sliding window's Redis layout (a string, `src/store/redis.rs`) and
//! its two scripts: the lean one (`window.lua`, a batch of one enforced
//! sliding window) and the general one (`admit.lua`). Against a real
//! `redis-server` on a free port.
//!
//! * under a test clock, random single-check and two-check batches on the
//!   same keys, with the window changing under them, give the decisions of
//!   the in-memory store (the reference);
//! * on the server's clock (the lean script reads the time from the key's
//!   `PTTL`), four stores hammering one key through both scripts admit
//!   exactly the limit;
//! * the key is 37 bytes, 97 once a window holds more than 65 535 units,
//!   and expires when its newest bucket stops counting.

#[path = "common/checks.rs"]
mod checks;
#[path = "common/lcg.rs"]
mod lcg;
#[path = "common/redis_server.rs"]
mod redis_server;

use checks::sw as window;
use lcg::Lcg;
use std::sync::Arc;
use std::time::Duration;

use redis_server::RedisServer;
use tower_tenancy::store::{
    Algorithm, Check, Clock, CounterStore, ManualClock, MemoryStore, RedisStore,
};
use tower_tenancy::{Period, TenantId};

/// A gauge that never refuses: it sends a batch to the general script.
fn open_gauge() -> Check {
    Check::new("open", Algorithm::Gauge, u64::MAX >> 12, 0)
}

/// A `redis-server` of its own, and a Redis store and a memory store on one
/// manual clock starting at `start_ms`.
async fn on_manual_clock(
    start_ms: u64,
) -> (RedisServer, Arc<ManualClock>, RedisStore, MemoryStore) {
    let server = RedisServer::new();
    let clock = Arc::new(ManualClock::new(start_ms));
    let redis = RedisStore::connect(server.url())
        .await
        .unwrap()
        .clock(clock.clone());
    let memory = MemoryStore::with_clock(clock.clone());
    (server, clock, redis, memory)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_and_general_scripts_decide_as_the_memory_store() {
    let (_server, clock, redis, memory) = on_manual_clock(1_704_067_200_000).await;
    let tenant: TenantId = "layout".parse().unwrap();
    let mut rng = Lcg(7);
    let (mut lean, mut general, mut allowed, mut denied, mut moved) = (0, 0, 0, 0, 0);
    // Windows a policy switches between (a plan change), and limits that
    // cross the 16-bit counts.
    let windows = [1_000, 7_000, 8_003];
    let limits = [6, 20, 70_000];
    let mut last_window = [0u64; 2];
    for step in 0..1_500 {
        clock.advance_ms(match rng.below(10) {
            0..=5 => rng.below(400),
            6..=8 => rng.below(3_000),
            _ => rng.below(20_000),
        });
        let p = rng.below(2) as usize;
        let w = if rng.below(10) == 0 {
            windows[rng.below(3) as usize]
        } else {
            windows[p]
        };
        let change = last_window[p] != 0 && last_window[p] != w;
        moved += usize::from(change);
        last_window[p] = w;
        let mut limit = limits[p + usize::from(rng.below(4) == 0)];
        let mut cost = match rng.below(12) {
            0 => limit + 1,
            1 => 0,
            2 => 3,
            3 if limit > 1_000 => 30_000,
            _ => 1,
        };
        if change {
            // The first call under a new window is an admission: Redis
            // moves a counter to a new window only when it writes, the
            // memory store on any call (see the module docs of RedisStore).
            (limit, cost) = (1 << 40, 1);
        }
        let check = window(&format!("p{p}"), w, limit, cost);
        let batch = if rng.below(3) == 0 {
            general += 1;
            vec![check, open_gauge()]
        } else {
            lean += 1;
            vec![check]
        };
        let got = redis.admit(&tenant, &batch).await.unwrap();
        let expected = memory.admit(&tenant, &batch).await.unwrap();
        assert_eq!(
            got.decisions,
            expected.decisions,
            "step {step}, now {}, {batch:#?}",
            clock.now_ms()
        );
        if got.decisions[0].allowed {
            allowed += 1;
        } else {
            denied += 1;
        }
    }
    println!("{lean} lean, {general} general, {allowed} allowed, {denied} denied, {moved} window changes");
    assert!(lean > 500 && general > 300 && allowed > 300 && denied > 100 && moved > 20);
}

/// The lean script's fast path (the same window, the same bucket, allowed:
/// total and the newest count written in place, 16-bit or 64-bit) against
/// the memory store: small clock steps inside buckets, limits reached often,
/// costs of 0, 1, 3 and above the limit, the 16-bit boundary, and a window
/// whose counts stay wide. Only the fast path writes with `SETRANGE` under a
/// test clock, so its count shows that it ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lean_fast_path_decides_as_the_memory_store() {
    let (server, clock, redis, memory) = on_manual_clock(1_704_067_200_123).await;
    let tenant: TenantId = "fast".parse().unwrap();
    let mut rng = Lcg(11);
    let (mut allowed, mut denied, mut at_limit) = (0, 0, 0);
    // (window ms, limit, usual cost): b = 1 000, 1 001 and 2 ms; a limit
    // across the 16-bit counts; counts above them.
    let policies = [
        (8_000, 10, 1),
        (8_003, 25, 1),
        (9, 4, 1),
        (60_000, 70_000, 20_000),
        (60_000, 1 << 40, 20_000),
    ];
    for step in 0..4_000 {
        clock.advance_ms(match rng.below(20) {
            0..=16 => rng.below(120),
            17 | 18 => rng.below(2_500),
            _ => rng.below(12_000),
        });
        let p = rng.below(policies.len() as u64) as usize;
        let (w, limit, usual) = policies[p];
        let cost = match rng.below(15) {
            0 => limit + 1,
            1 => 0,
            2 => 3,
            _ => usual,
        };
        let batch = [window(&format!("f{p}"), w, limit, cost)];
        let got = redis.admit(&tenant, &batch).await.unwrap();
        let expected = memory.admit(&tenant, &batch).await.unwrap();
        assert_eq!(
            got.decisions,
            expected.decisions,
            "step {step}, now {}, {batch:#?}",
            clock.now_ms()
        );
        let d = &got.decisions[0];
        if d.allowed {
            allowed += 1;
            at_limit += usize::from(d.used == limit);
        } else {
            denied += 1;
        }
    }
    let in_place = server.command_calls("setrange");
    println!(
        "{allowed} allowed ({at_limit} reaching the limit), {denied} denied, {in_place} in place"
    );
    assert!(allowed > 1_000 && denied > 300 && at_limit > 30 && in_place > 400);
}

/// The lean script of the three-rule plan (`plan.lua`: a sliding window, a
/// calendar quota and a concurrency limit in one batch), the general script
/// (the same batch plus a gauge that never refuses) and the memory store
/// decide alike on random sequences: the checks in any order, costs of 0,
/// 1, 2 and above a limit, hours, days, weeks and months crossed, leases
/// held and dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_script_decides_as_the_general_one_and_the_memory_store() {
    let (server, clock, redis, memory) = on_manual_clock(1_706_745_599_000).await;
    let tenant: TenantId = "plan".parse().unwrap();
    let mut rng = Lcg(5);
    let periods = [Period::Hour, Period::Day, Period::Week, Period::Month];
    let mut held = Vec::new();
    let (mut lean, mut general, mut admitted, mut by) = (0, 0, 0, [0; 3]);
    for step in 0..2_500 {
        clock.advance_ms(match rng.below(20) {
            0..=13 => rng.below(300),
            14..=17 => rng.below(20_000),
            18 => rng.below(4_000_000),
            _ => rng.below(700_000_000),
        });
        // A period per quota (the stores differ on a quota whose period
        // changes under the same name).
        let p = rng.below(4);
        let cost = |rng: &mut Lcg, limit: u64| match rng.below(14) {
            0 => 0,
            1 => 2,
            2 => limit + 1,
            _ => 1,
        };
        let (rate_limit, quota_limit, conc_limit) = (8 + 4 * (p % 2), 30 + 10 * p, 3);
        let mut batch = vec![
            window(
                &format!("r{p}"),
                [1_000, 8_003][p as usize % 2],
                rate_limit,
                cost(&mut rng, rate_limit),
            ),
            Check::new(
                format!("q{p}"),
                Algorithm::Calendar {
                    period: periods[p as usize],
                },
                quota_limit,
                cost(&mut rng, quota_limit),
            ),
            Check::new(
                format!("c{p}"),
                Algorithm::Concurrency {
                    lease_ttl: Duration::from_secs(300),
                },
                conc_limit,
                cost(&mut rng, conc_limit),
            ),
        ];
        // Any order.
        for i in (1..3).rev() {
            batch.swap(i, rng.below(i as u64 + 1) as usize);
        }
        if rng.below(4) == 0 {
            general += 1;
            batch.push(open_gauge());
        } else {
            lean += 1;
        }
        let got = redis.admit(&tenant, &batch).await.unwrap();
        let expected = memory.admit(&tenant, &batch).await.unwrap();
        assert_eq!(
            got.decisions,
            expected.decisions,
            "step {step}, now {}, {batch:#?}",
            clock.now_ms()
        );
        assert_eq!(got.allowed(), expected.allowed());
        if got.allowed() {
            admitted += 1;
            held.push((got.lease, expected.lease));
        }
        for (i, d) in got.decisions.iter().take(3).enumerate() {
            if !d.allowed {
                by[i] += 1;
            }
        }
        // Drop some leases (both stores release them).
        while !held.is_empty() && rng.below(3) == 0 {
            let at = rng.below(held.len() as u64) as usize;
            drop(held.swap_remove(at));
        }
    }
    let plan_calls = server.command_calls("zcount");
    println!(
        "{lean} lean, {general} general, {admitted} admitted, refusals by position {by:?}, \
         plan.lua ran {plan_calls} times"
    );
    assert!(lean > 1_500 && general > 400 && admitted > 500);
    assert!(by.iter().all(|&n| n > 100), "{by:?}");
    assert!(plan_calls as usize >= lean - 10, "{plan_calls}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_stores_on_the_server_clock_admit_exactly_the_limit() {
    let server = RedisServer::new();
    let tenant: TenantId = "hammered".parse().unwrap();
    let limit = 1_000;
    let mut tasks = Vec::new();
    for instance in 0..4 {
        let store = RedisStore::connect(server.url()).await.unwrap();
        let tenant = tenant.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            for i in 0..600 {
                // A window of one hour: nothing leaves it during the test.
                let mut batch = vec![window("api", 3_600_000, limit, 1)];
                if (i + instance) % 3 == 0 {
                    batch.push(open_gauge());
                }
                let a = store.admit(&tenant, &batch).await.unwrap();
                admitted += u64::from(a.allowed());
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(admitted, limit, "2 400 attempts, limit {limit}");
    let store = RedisStore::connect(server.url()).await.unwrap();
    let key = store.key(
        &tenant,
        &window("api", 3_600_000, limit, 1).algorithm,
        "api",
    );
    assert_eq!(server.int(&["STRLEN", &key]), 37);
    // Expires when its newest bucket (450 s wide) stops counting: within
    // W + W/8 of now, after at least W − (time since the first admission).
    let pttl = server.int(&["PTTL", &key]);
    assert!(pttl > 3_000_000 && pttl <= 4_050_000, "{pttl}");
    // A peek through the general script sees what the lean one wrote.
    let peek = store
        .peek(&tenant, &[window("api", 3_600_000, limit, 1)])
        .await
        .unwrap();
    assert_eq!(peek[0].used, limit);
    assert!(!peek[0].allowed);
    assert!(peek[0].retry_after.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_widen_beyond_sixteen_bits() {
    let server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let tenant: TenantId = "wide".parse().unwrap();
    let big = window("big", 60_000, 1 << 40, 40_000);
    let key = store.key(&tenant, &big.algorithm, "big");
    assert!(store
        .admit(&tenant, std::slice::from_ref(&big))
        .await
        .unwrap()
        .allowed());
    assert_eq!(server.int(&["STRLEN", &key]), 37);
    // 80 000 units: above 65 535, in place or not.
    let a = store
        .admit(&tenant, std::slice::from_ref(&big))
        .await
        .unwrap();
    assert!(a.allowed());
    assert_eq!(a.decisions[0].used, 80_000);
    assert_eq!(server.int(&["STRLEN", &key]), 97);
    let a = store
        .admit(&tenant, &[big.clone(), open_gauge()])
        .await
        .unwrap();
    assert_eq!(a.decisions[0].used, 120_000);
    // The lean script's fast path on the wide counts: written in place,
    // read back by the next call.
    let a = store
        .admit(&tenant, std::slice::from_ref(&big))
        .await
        .unwrap();
    assert_eq!(a.decisions[0].used, 160_000);
    let a = store.admit(&tenant, &[big]).await.unwrap();
    assert_eq!(a.decisions[0].used, 200_000);
    assert_eq!(server.int(&["STRLEN", &key]), 97);
    let pttl = server.int(&["PTTL", &key]);
    assert!(pttl > 50_000 && pttl <= 67_500, "{pttl}");
}

fn plan_batch(quota: u64, concurrency: u64, lease_ms: u64) -> Vec<Check> {
    vec![
        Check::new(
            "conc",
            Algorithm::Concurrency {
                lease_ttl: Duration::from_millis(lease_ms),
            },
            concurrency,
            1,
        ),
        window("rate", 3_600_000, 1_000_000, 1),
        Check::new(
            "daily",
            Algorithm::Calendar {
                period: Period::Day,
            },
            quota,
            1,
        ),
    ]
}

/// The leases held in a concurrency set: its members scored with an expiry
/// (plan.lua's bucket markers score 0).
fn leases(server: &RedisServer, set: &str) -> i64 {
    server.int(&["ZCOUNT", set, "(0", "+inf"])
}

/// The set outlives its longest lease, by at most one bucket of lease
/// expiries (`bucket_ms`, plan.lua's power of ten up to the lease TTL), and
/// holds one marker (score 0); when `newest_admitted` (no renewal since the
/// last admission), the marker names the bucket of the newest lease's
/// expiry: its digits without the last `log10(bucket_ms)`.
fn assert_set_expiry(server: &RedisServer, set: &str, bucket_ms: i64, newest_admitted: bool) {
    let newest = server.cli(&["ZRANGE", set, "-1", "-1", "WITHSCORES"]);
    let newest: i64 = newest.lines().nth(1).unwrap().trim().parse().unwrap();
    let at = server.int(&["PEXPIRETIME", set]);
    assert!(at >= newest && at <= newest + bucket_ms, "{at} {newest}");
    assert_eq!(server.int(&["ZCOUNT", set, "0", "0"]), 1);
    if newest_admitted {
        let marker = server.cli(&["ZRANGE", set, "0", "0"]);
        let digits = newest.to_string();
        let k = bucket_ms.to_string().len() - 1;
        assert_eq!(marker.trim(), &digits[..digits.len() - k]);
        assert!(at > newest);
    }
}

/// The three-rule plan on the server's clock through plan.lua: four stores
/// admit exactly the quota, then exactly the concurrency limit while the
/// leases are held; expired leases stop counting and are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_stores_through_the_plan_script_admit_exactly_the_limits() {
    let server = RedisServer::new();
    let tenant: TenantId = "planned".parse().unwrap();
    let mut stores = Vec::new();
    for _ in 0..4 {
        stores.push(RedisStore::connect(server.url()).await.unwrap());
    }
    // The quota: 4 × 200 attempts, each lease dropped at once.
    let mut tasks = Vec::new();
    for store in &stores {
        let (store, tenant) = (store.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            for _ in 0..200 {
                let a = store
                    .admit(&tenant, &plan_batch(300, 4, 60_000))
                    .await
                    .unwrap();
                admitted += u64::from(a.allowed());
            }
            admitted
        }));
    }
    let mut admitted = 0;
    for task in tasks {
        admitted += task.await.unwrap();
    }
    assert_eq!(admitted, 300);
    let plan_calls = server.command_calls("zcount");
    assert!(plan_calls >= 800, "{plan_calls}");

    // The concurrency limit: leases held, 4 × 3 attempts on another tenant.
    let tenant: TenantId = "held".parse().unwrap();
    let mut tasks = Vec::new();
    for store in &stores {
        let (store, tenant) = (store.clone(), tenant.clone());
        tasks.push(tokio::spawn(async move {
            let mut held = Vec::new();
            for _ in 0..3 {
                let a = store
                    .admit(&tenant, &plan_batch(1_000, 5, 400))
                    .await
                    .unwrap();
                if a.allowed() {
                    held.push(a);
                }
            }
            held
        }));
    }
    let mut held = Vec::new();
    for task in tasks {
        held.extend(task.await.unwrap());
    }
    assert_eq!(held.len(), 5);
    let set = stores[0].key(
        &tenant,
        &Algorithm::Concurrency {
            lease_ttl: Duration::from_millis(400),
        },
        "conc",
    );
    assert_eq!(leases(&server, &set), 5);
    assert_set_expiry(&server, &set, 100, false);
    // Leases of a crashed instance: members whose expiry has passed (the
    // live ones released).
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(leases(&server, &set), 0);
    // The set stays with its marker until its expiry, within one bucket
    // (100 ms for a lease TTL of 400 ms) of its last lease's.
    assert_eq!(server.int(&["ZCARD", &set]), 1);
    assert!(server.int(&["PTTL", &set]) <= 400 + 100);
    for i in 0..6 {
        server.cli(&["ZADD", &set, "1000", &format!("crashed{i}:1")]);
    }
    let a = stores[1]
        .admit(&tenant, &plan_batch(1_000, 5, 400))
        .await
        .unwrap();
    assert!(a.allowed());
    assert_eq!(a.decisions[0].used, 1);
    // The expired members were removed when the new lease was added (in a
    // new bucket of expiries: 300 ms later), and the older marker with them.
    assert_eq!(leases(&server, &set), 1);
    assert_eq!(server.int(&["ZCARD", &set]), 2);
    assert_set_expiry(&server, &set, 100, true);
}

/// The quota and lease layouts on the server's clock, through plan.lua and
/// the general script alike: the quota is an integer counted up in place
/// that expires at the last millisecond of its period; a lease of two units
/// is two members of the set, counted by both scripts; a lease of more
/// units than a lease may hold members (4 096) is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_integer_and_one_member_per_unit_on_the_server_clock() {
    let server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let tenant: TenantId = "units".parse().unwrap();
    let mut batch = plan_batch(5, 6, 60_000);
    batch[0].cost = 2;
    let quota = store.key(&tenant, &batch[2].algorithm, "daily");
    assert_eq!(quota, "tt:{units}:cald:daily");
    let set = store.key(&tenant, &batch[0].algorithm, "conc");
    let mut held = Vec::new();
    for n in 1..=3 {
        // The lean script twice, then the general one (an open gauge).
        let mut b = batch.clone();
        if n == 3 {
            b.push(open_gauge());
        }
        let a = store.admit(&tenant, &b).await.unwrap();
        assert!(a.allowed(), "{n}: {:?}", a.decisions);
        assert_eq!(a.decisions[0].used, 2 * n);
        assert_eq!(a.decisions[2].used, n);
        held.push(a);
        assert_eq!(server.cli(&["GET", &quota]).trim(), n.to_string());
        assert_eq!(leases(&server, &set), 2 * n as i64);
        if n < 3 {
            // (The general script removes the markers with the expired
            // members: the next plan.lua call adds one again.)
            assert_set_expiry(&server, &set, 10_000, true);
        }
    }
    // Expires at its day's last millisecond.
    let at = server.int(&["PEXPIRETIME", &quota]);
    assert_eq!(at % 86_400_000, 86_399_999, "{at}");
    // Six units held of six: refused by both scripts, nothing written.
    for general in [false, true] {
        let mut b = batch.clone();
        if general {
            b.push(open_gauge());
        }
        let a = store.admit(&tenant, &b).await.unwrap();
        assert!(!a.allowed());
        assert_eq!(a.decisions[0].used, 6);
        assert!(!a.decisions[0].allowed && a.decisions[2].allowed);
        assert_eq!(server.cli(&["GET", &quota]).trim(), "3");
    }
    // One lease dropped frees its two members.
    drop(held.pop());
    let a = store.admit(&tenant, &batch).await.unwrap();
    assert!(a.allowed());
    assert_eq!((a.decisions[0].used, a.decisions[2].used), (6, 4));
    // The quota's limit (5) reached through plan.lua, then refused.
    held.push(a);
    drop(held.remove(0));
    let a = store.admit(&tenant, &batch).await.unwrap();
    assert!(a.allowed());
    assert_eq!(a.decisions[2].used, 5);
    drop(held.remove(0));
    let a = store.admit(&tenant, &batch).await.unwrap();
    assert!(!a.allowed() && !a.decisions[2].allowed);
    assert_eq!(server.cli(&["GET", &quota]).trim(), "5");
    // More units than a lease may hold members.
    let mut big = plan_batch(5, 10_000, 60_000);
    big[0].cost = 5_000;
    let tenant: TenantId = "big".parse().unwrap();
    let a = store.admit(&tenant, &big).await.unwrap();
    assert!(!a.allowed() && !a.decisions[0].allowed && a.decisions[0].retry_after.is_none());
    big[0].cost = 4_096;
    let a = store.admit(&tenant, &big).await.unwrap();
    assert!(a.allowed());
    assert_eq!(leases(&server, &set.replace("units", "big")), 4_096);
}

/// plan.lua on the server's clock reads the quota by counting it up
/// (`INCR`) once the window and the concurrency limit allowed, and takes
/// the count back when it crossed the quota: the decisions are the general
/// script's for the same batch (on a twin tenant, an open gauge added), and
/// a refusal leaves the count as it was — no key when there was none. A
/// test clock's value left in the key (`start:count`; stores sharing keys
/// must share the clock) is overwritten when the count is read with `GET`
/// (here: the window's key is new, so the time comes from `TIME`), and
/// makes the call fail when it is counted up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_counted_up_and_taken_back_on_the_server_clock() {
    let server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let plan: TenantId = "lazy".parse().unwrap();
    let twin: TenantId = "twin".parse().unwrap();
    let quota = |t: &TenantId| store.key(t, &plan_batch(2, 5, 60_000)[2].algorithm, "daily");
    let mut held = Vec::new();
    // Costs of the quota, one call each: above the limit on a new key, 1, 1,
    // then 1 and 2 over the limit.
    for (step, cost) in [3, 1, 1, 1, 2].into_iter().enumerate() {
        let mut batch = plan_batch(2, 5, 60_000);
        batch[2].cost = cost;
        let a = store.admit(&plan, &batch).await.unwrap();
        batch.push(open_gauge());
        let b = store.admit(&twin, &batch).await.unwrap();
        let fields = |d: &tower_tenancy::store::Decision| {
            (d.allowed, d.used, d.remaining, d.retry_after.is_some())
        };
        for i in 0..3 {
            assert_eq!(
                fields(&a.decisions[i]),
                fields(&b.decisions[i]),
                "{step}, {i}"
            );
        }
        assert_eq!(a.allowed(), b.allowed(), "{step}");
        assert_eq!(a.allowed(), step == 1 || step == 2, "{step}");
        let count = server.int_or_nil(&["GET", &quota(&plan)]);
        assert_eq!(count, server.int_or_nil(&["GET", &quota(&twin)]), "{step}");
        assert_eq!(
            count,
            [None, Some(1), Some(2), Some(2), Some(2)][step],
            "{step}"
        );
        if a.allowed() {
            held.push((a, b));
        }
    }
    let at = server.int(&["PEXPIRETIME", &quota(&plan)]);
    assert_eq!(at % 86_400_000, 86_399_999, "{at}");
    // A test clock's value under the server's clock.
    let mixed: TenantId = "mixed".parse().unwrap();
    server.cli(&["SET", &quota(&mixed), "1706745600000:7", "PX", "600000"]);
    let a = store
        .admit(&mixed, &plan_batch(2, 5, 60_000))
        .await
        .unwrap();
    assert!(a.allowed());
    assert_eq!(a.decisions[2].used, 1);
    assert_eq!(server.cli(&["GET", &quota(&mixed)]).trim(), "1");
    let at = server.int(&["PEXPIRETIME", &quota(&mixed)]);
    assert_eq!(at % 86_400_000, 86_399_999, "{at}");
    server.cli(&["SET", &quota(&mixed), "1706745600000:7", "PX", "600000"]);
    let failed = store.admit(&mixed, &plan_batch(2, 5, 60_000)).await;
    assert!(failed.is_err(), "{failed:?}");
}

/// plan.lua on the server's clock, on a window whose counts are wide (above
/// 65 535 units, 97 bytes) and with a monthly quota: the decisions (allowed,
/// used, remaining, resets and retries to within a second), the window's
/// string and the quota's count and expiry are the general script's for the
/// same batch (on a twin tenant, an open gauge added), through admissions,
/// refusals by the quota (above the quota, then at it) and by the
/// concurrency limit. The admissions after the first take the script's
/// common path (the window's fast path, now for wide counts too); the
/// month's bounds come from the store's host (its wall clock agrees with
/// the server's here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_common_path_on_wide_counts_and_a_month_on_the_server_clock() {
    let server = RedisServer::new();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let plan: TenantId = "wideplan".parse().unwrap();
    let twin: TenantId = "widetwin".parse().unwrap();
    let batch = |rate_cost: u64, quota_cost: u64| {
        vec![
            Check::new(
                "conc",
                Algorithm::Concurrency {
                    lease_ttl: Duration::from_secs(60),
                },
                3,
                1,
            ),
            window("rate", 3_600_000, 1 << 40, rate_cost),
            Check::new(
                "monthly",
                Algorithm::Calendar {
                    period: Period::Month,
                },
                6,
                quota_cost,
            ),
        ]
    };
    let key = |t: &TenantId, i: usize, name: &str| store.key(t, &batch(1, 1)[i].algorithm, name);
    let mut held = Vec::new();
    let steps = [(70_000, 1), (1, 1), (3, 200), (1, 4), (1, 1), (2, 1)];
    let mut used = (0, 0);
    for (step, (rate_cost, quota_cost)) in steps.into_iter().enumerate() {
        if step == 5 {
            // A lease released: the quota refuses next.
            drop(held.swap_remove(0));
        }
        let a = store
            .admit(&plan, &batch(rate_cost, quota_cost))
            .await
            .unwrap();
        let mut general = batch(rate_cost, quota_cost);
        general.push(open_gauge());
        let b = store.admit(&twin, &general).await.unwrap();
        assert_eq!(a.allowed(), b.allowed(), "{step}");
        assert_eq!(a.allowed(), [0, 1, 3].contains(&step), "{step}");
        let ms = |d: Option<Duration>| d.map(|d| d.as_millis());
        for i in 0..3 {
            let (x, y) = (&a.decisions[i], &b.decisions[i]);
            assert_eq!(
                (x.allowed, x.used, x.remaining, x.retry_after.is_some()),
                (y.allowed, y.used, y.remaining, y.retry_after.is_some()),
                "{step}, {i}"
            );
            let near = |p: u128, q: u128| p.abs_diff(q) < 1_000;
            assert!(
                near(x.reset.as_millis(), y.reset.as_millis()),
                "{step}, {i}: {x:?} {y:?}"
            );
            let (p, q) = (
                ms(x.retry_after).unwrap_or(0),
                ms(y.retry_after).unwrap_or(0),
            );
            assert!(near(p, q), "{step}, {i}: {x:?} {y:?}");
        }
        if a.allowed() {
            used = (used.0 + rate_cost, used.1 + quota_cost);
        }
        assert_eq!((a.decisions[1].used, a.decisions[2].used), used, "{step}");
        let (w, wt) = (key(&plan, 1, "rate"), key(&twin, 1, "rate"));
        assert_eq!(server.int(&["STRLEN", &w]), 97, "{step}");
        assert_eq!(
            server.cli(&["GET", &w]),
            server.cli(&["GET", &wt]),
            "{step}"
        );
        let (q, qt) = (key(&plan, 2, "monthly"), key(&twin, 2, "monthly"));
        assert_eq!(
            server.int(&["GET", &q]),
            server.int(&["GET", &qt]),
            "{step}"
        );
        let at = server.int(&["PEXPIRETIME", &q]);
        assert_eq!(at, server.int(&["PEXPIRETIME", &qt]), "{step}");
        assert_eq!((at + 1) % 86_400_000, 0, "{at}");
        if a.allowed() {
            held.push((a, b));
        }
    }
    assert_eq!(used, (70_002, 6));
}

/// plan.lua given the bounds of another month than the server's (a host
/// whose clock is off, here by a month) finds the server's month itself:
/// the quota's count expires at the end of the server's month either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_script_finds_its_month_when_the_host_clock_is_off() {
    let server = RedisServer::new();
    let client = redis::Client::open(server.url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let script = redis::Script::new(include_str!("../src/store/plan.lua"));
    let now: i64 = server
        .cli(&["TIME"])
        .lines()
        .next()
        .unwrap()
        .trim()
        .parse::<i64>()
        .unwrap()
        * 1_000;
    let day = 86_400_000i64;
    // The month of the server's time, as the general script finds it.
    let twin: TenantId = "monthtwin".parse().unwrap();
    let store = RedisStore::connect(server.url()).await.unwrap();
    let monthly = Check::new(
        "m",
        Algorithm::Calendar {
            period: Period::Month,
        },
        10,
        1,
    );
    assert!(store
        .admit(&twin, &[monthly.clone(), open_gauge()])
        .await
        .unwrap()
        .allowed());
    let expected = server.int(&["PEXPIRETIME", &store.key(&twin, &monthly.algorithm, "m")]);
    assert!(
        expected > now && expected - now <= 31 * day,
        "{expected} {now}"
    );
    // Bounds that hold the server's time (taken as they are, even when they
    // are not a month), then a month before them, then none.
    for (i, (start, end)) in [
        (now - 10 * day, now + 10 * day),
        (now - 62 * day, now - 31 * day),
        (0, 0),
    ]
    .into_iter()
    .enumerate()
    {
        let keys = [
            format!("tt:{{m{i}}}:sb2:r"),
            format!("tt:{{m{i}}}:calm:q"),
            format!("tt:{{m{i}}}:cc:c"),
        ];
        let mut arg = Vec::new();
        for n in [1e12, 1.0, 60_000.0, 10.0, 1.0, 4.0, 5.0, 1.0, 60_000.0] {
            arg.extend_from_slice(&f64::to_le_bytes(n));
        }
        arg.extend_from_slice(b"lease-1:1\0");
        arg.extend_from_slice(&(start as f64).to_le_bytes());
        arg.extend_from_slice(&(end as f64).to_le_bytes());
        let _: Vec<u8> = script
            .key(&keys[0])
            .key(&keys[1])
            .key(&keys[2])
            .arg(arg)
            .invoke_async(&mut conn)
            .await
            .unwrap();
        let at = server.int(&["PEXPIRETIME", &keys[1]]);
        if i == 0 {
            // Bounds that hold the server's time are taken as they are.
            assert_eq!(at, end - 1, "{i}");
        } else {
            assert_eq!(at, expected, "{i}");
        }
    }
}
