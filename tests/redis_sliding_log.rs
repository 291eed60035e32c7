//! The sliding log in Redis (`admit.lua`, layout in `src/store/redis.rs`):
//! counted from its sequence and its oldest entry, not by reading the
//! window. Against a real `redis-server` on a free port, under a test
//! clock, with the in-memory store as the reference:
//!
//! * long windows (hundreds of entries, many in the same millisecond,
//!   costs 0–3 and over the limit, a clock that sometimes steps back, dry
//!   runs) give the same decisions, `retry_after` included (a refusal reads
//!   the oldest entries a page at a time);
//! * when the sequence is lost, or behind the entries, the script sums the
//!   window and still decides as the reference.

#[path = "common/checks.rs"]
mod checks;
#[path = "common/lcg.rs"]
mod lcg;
#[path = "common/redis_server.rs"]
mod redis_server;

use checks::sl as log;
use lcg::Lcg;
use std::sync::Arc;

use redis_server::RedisServer;
use tower_tenancy::store::{Clock, CounterStore, ManualClock, MemoryStore, RedisStore};
use tower_tenancy::TenantId;

/// Random admissions and dry runs of one or two sliding logs; every
/// `lose_every` steps (0: never) the sequence of the first log is deleted
/// (lost) or set behind its entries.
async fn same_decisions(seed: u64, lose_every: u64) -> (u64, u64, u64) {
    let server = RedisServer::new();
    let clock = Arc::new(ManualClock::new(1_704_067_200_000));
    let redis = RedisStore::connect(server.url())
        .await
        .unwrap()
        .clock(clock.clone());
    let memory = MemoryStore::with_clock(clock.clone());
    let tenant: TenantId = "logs".parse().unwrap();
    let pool = [log("long", 10_000, 300, 1), log("short", 700, 9, 1)];
    let log_key = redis.key(&tenant, &pool[0].algorithm, "long");
    let seq_key = log_key.replace(":sl:", ":sq:");
    let mut rng = Lcg(seed);
    let (mut allowed, mut denied, mut lost, mut back) = (0, 0, 0, 0);
    // Per log, the latest time any call saw (the memory store expires
    // entries then) and the latest time an admission wrote it (Redis trims
    // then): the clock may step back only while they are equal, since Redis
    // does not trim on dry runs and refusals (src/store/redis.rs, "Semantics").
    let mut seen = [0u64; 2];
    let mut written = [0u64; 2];
    let start = clock.now_ms();
    for step in 0..3_000u64 {
        match rng.below(40) {
            // A clock that steps back: an entry is added at the newest time.
            0 if seen == written => {
                let now = clock.now_ms();
                clock.set_ms(now - rng.below(3_000).min(now - start));
                back += 1;
            }
            1 => clock.advance_ms(rng.below(12_000)),
            2..=19 => {} // the same millisecond: entries that share a score
            _ => clock.advance_ms(rng.below(60)),
        }
        if lose_every > 0 && step % lose_every == lose_every - 1 {
            if rng.below(2) == 0 {
                server.cli(&["DEL", &seq_key]);
            } else {
                server.cli(&["SET", &seq_key, "1"]);
            }
            lost += 1;
        }
        let mut checks = vec![pool[0].clone()];
        if rng.below(3) == 0 {
            checks.push(pool[1].clone());
        }
        for c in &mut checks {
            c.cost = match rng.below(14) {
                0 => 0,
                1 => 2,
                2 => 3,
                3 => c.limit + 1,
                // A refusal whose retry waits for more than a page of entries.
                4 => c.limit / 6,
                _ => 1,
            };
        }
        let dry = rng.below(6) == 0;
        let (got, expected) = if dry {
            (
                redis.peek(&tenant, &checks).await.unwrap(),
                memory.peek(&tenant, &checks).await.unwrap(),
            )
        } else {
            (
                redis.admit(&tenant, &checks).await.unwrap().decisions,
                memory.admit(&tenant, &checks).await.unwrap().decisions,
            )
        };
        assert_eq!(
            got,
            expected,
            "step {step}, now {}, checks {checks:?}",
            clock.now_ms()
        );
        let now = clock.now_ms();
        let consumed = !dry && got.iter().all(|d| d.allowed);
        for (i, c) in checks.iter().enumerate() {
            seen[i] = seen[i].max(now);
            if consumed && c.cost > 0 {
                written[i] = written[i].max(now);
            }
        }
        for d in &got {
            if d.allowed {
                allowed += 1;
            } else {
                denied += 1;
            }
        }
    }
    assert!(back > 10, "the clock stepped back {back} times");
    (allowed, denied, lost)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_sliding_logs_decide_as_the_memory_store() {
    let (allowed, denied, _) = same_decisions(11, 0).await;
    println!("long logs: {allowed} allowed, {denied} denied");
    // Both outcomes, many times: the window was full and emptied again.
    assert!(
        allowed > 1_000 && denied > 500,
        "{allowed} allowed, {denied} denied"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_or_stale_sequence_is_summed_from_the_window() {
    let (allowed, denied, lost) = same_decisions(29, 97).await;
    println!("lost sequence: {allowed} allowed, {denied} denied, {lost} losses");
    assert!(
        lost >= 30 && allowed > 1_000 && denied > 500,
        "{allowed} allowed, {denied} denied"
    );
}
