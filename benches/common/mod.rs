//! Helpers shared by the bench binaries: where results go, how they are
//! written, and whether this is a real run (`cargo bench`) or a smoke pass
//! (`cargo test --all-targets` runs bench targets without `--bench`).
#![allow(dead_code)]

use std::fmt::Write as _;
use std::path::PathBuf;

/// `cargo bench` passes `--bench`; anything else gets a quick smoke pass.
pub fn full_run() -> bool {
    std::env::args().any(|a| a == "--bench")
}

/// `target/bench-results` (or `$CARGO_TARGET_DIR/bench-results`), created.
pub fn results_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target"));
    let dir = target.join("bench-results");
    std::fs::create_dir_all(&dir).expect("create target/bench-results");
    dir
}

/// Writes `name` (e.g. `scaling.json`) under the results directory.
pub fn write_result(name: &str, contents: &str) {
    let path = results_dir().join(name);
    std::fs::write(&path, contents).expect("write a result file");
    eprintln!("wrote {}", path.display());
}

/// A CSV document from a header and rows of already formatted cells.
pub fn csv(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut out = header.join(",");
    out.push('\n');
    for row in rows {
        out.push_str(&row.join(","));
        out.push('\n');
    }
    out
}

/// The 1-minute load average (first field of /proc/loadavg).
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "?".into())
}

/// `nproc` and the CPU model, for the result files.
pub fn machine() -> serde_json::Value {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines().find_map(|l| {
                l.strip_prefix("model name")
                    .map(|r| r.trim_start_matches([' ', '\t', ':']).to_owned())
            })
        })
        .unwrap_or_default();
    serde_json::json!({
        "nproc": std::thread::available_parallelism().map_or(1, |n| n.get()),
        "cpu": cpu,
        "load_1m_at_start": load_average(),
    })
}

/// Percentile (0..=100) of sorted samples.
pub fn percentile<T: Copy>(sorted: &[T], p: f64) -> T {
    assert!(!sorted.is_empty());
    let rank = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

/// Formats a markdown table row.
pub fn md_row(cells: &[String]) -> String {
    let mut s = String::from("|");
    for c in cells {
        let _ = write!(s, " {c} |");
    }
    s
}
