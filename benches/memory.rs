//! Heap bytes per tracked sliding-window key in the `MemoryStore`, and
//! eviction of idle keys (issue 7, item 3).
//!
//! ```text
//! cargo bench --bench memory
//! ```
//!
//! A counting global allocator tracks the bytes currently allocated. The
//! tenant ids are created first (in an application they belong to the tenant
//! directory; the store keeps clones of the same `Arc`s), then one
//! sliding-window key per tenant is admitted into a fresh store (default
//! shards, `ManualClock`), and the growth is divided by the number of keys,
//! at checkpoints from 25 000 to 1 000 000 keys. Then the clock moves two
//! windows on, `evict_idle()` runs, and the remaining bytes are reported.
//! Writes `target/bench-results/memory.{csv,json}`.

#[path = "common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tower_tenancy::store::{Algorithm, Check, CounterStore, ManualClock};
use tower_tenancy::{MemoryStore, TenantId};

/// The system allocator, counting the bytes currently allocated.
struct Counting;

static CURRENT: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to `System` with the same arguments.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            CURRENT.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            CURRENT.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        CURRENT.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            CURRENT.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

fn allocated() -> isize {
    CURRENT.load(Ordering::Relaxed)
}

/// 2026-11-23T00:00:00Z.
const T0: u64 = 1_795_392_000_000;
const WINDOW_MS: u64 = 60_000;

fn main() {
    let full = common::full_run();
    let max = if full { 1_000_000 } else { 20_000 };
    let step = if full { 25_000 } else { 5_000 };

    let before_ids = allocated();
    let tenants: Vec<TenantId> = (0..max)
        .map(|i| format!("tenant-{i}").parse().expect("valid id"))
        .collect();
    let id_bytes = (allocated() - before_ids) as f64 / max as f64;

    let clock = Arc::new(ManualClock::new(T0));
    let baseline = allocated();
    let store = MemoryStore::builder().clock(clock.clone()).build();
    let empty_store = allocated() - baseline;
    let checks = [Check::new(
        "api_calls_per_minute",
        Algorithm::SlidingWindow {
            window: Duration::from_millis(WINDOW_MS),
        },
        1_000,
        1,
    )];
    // Reserved before the baseline so that the checkpoints allocate nothing.
    let mut points: Vec<(usize, isize, f64)> = Vec::with_capacity(max / step + 1);
    let baseline = baseline + (allocated() - baseline - empty_store);
    for (i, tenant) in tenants.iter().enumerate() {
        let admission = store
            .admit(tenant, &checks)
            .try_take()
            .expect("ready")
            .expect("ok");
        assert!(admission.allowed());
        drop(admission);
        let n = i + 1;
        if n % step == 0 {
            let bytes = allocated() - baseline - empty_store;
            points.push((n, bytes, bytes as f64 / n as f64));
        }
    }
    assert_eq!(store.len(), max);
    let active = allocated() - baseline;

    // Two windows later every key is idle.
    clock.advance_ms(2 * WINDOW_MS);
    let evicted = store.evict_idle();
    let after_evict = allocated() - baseline;
    assert_eq!(store.len(), 0);
    drop(store);
    let after_drop = allocated() - baseline;

    let rows: Vec<Vec<String>> = points
        .iter()
        .map(|(n, bytes, per_key)| vec![n.to_string(), bytes.to_string(), format!("{per_key:.1}")])
        .collect();
    let at = |n: usize| points.iter().find(|p| p.0 == n).map(|p| p.2);
    let (lo, hi) = points
        .iter()
        .fold((f64::MAX, 0f64), |(lo, hi), p| (lo.min(p.2), hi.max(p.2)));
    println!(
        "sliding-window keys in a MemoryStore (default shards: 4 x cores, power of two); \
         tenant ids not counted ({id_bytes:.1} B each, owned by the directory)"
    );
    println!("| keys | store bytes | bytes per key |");
    println!("|---:|---:|---:|");
    for (n, bytes, per_key) in &points {
        if [100_000, 1_000_000, max].contains(n) || n % 250_000 == 0 {
            println!("| {n} | {bytes} | {per_key:.1} |");
        }
    }
    println!("range over checkpoints every {step} keys: {lo:.1} .. {hi:.1} bytes per key");
    println!(
        "empty store: {empty_store} B; with {max} keys: {active} B; after evict_idle() two windows later ({evicted} evicted): {after_evict} B; after drop: {after_drop} B"
    );
    if !full {
        return;
    }
    common::write_result(
        "memory.csv",
        &common::csv(&["keys", "store_bytes", "bytes_per_key"], &rows),
    );
    let out = serde_json::json!({
        "machine": common::machine(),
        "bytes_per_key_at_1e5": at(100_000),
        "bytes_per_key_at_1e6": at(1_000_000),
        "bytes_per_key_min": lo,
        "bytes_per_key_max": hi,
        "checkpoint_step": step,
        "tenant_id_bytes_each": id_bytes,
        "empty_store_bytes": empty_store,
        "active_bytes": active,
        "evicted": evicted,
        "after_evict_bytes": after_evict,
        "after_drop_bytes": after_drop,
    });
    common::write_result(
        "memory.json",
        &serde_json::to_string_pretty(&out).expect("json"),
    );
}
