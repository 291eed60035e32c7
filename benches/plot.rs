//! Renders the bench results of `target/bench-results/` as PNG plots into
//! `docs/bench/` (run last by `scripts/bench.sh`).
//!
//! ```text
//! cargo bench --bench plot
//! ```
//!
//! * `docs/bench/redis.png`: decisions/s and p99 latency against
//!   concurrency for `RedisStore`, the ceiling (the same call from a minimal client) and
//!   rate-limiter-flexible, from `redis.csv`;
//! * `docs/bench/overhead.png`: in-process ns per request, from
//!   `overhead.csv`.
//!
//! Text uses DejaVu Sans (Debian: `fonts-dejavu-core`). A missing input
//! file skips its plot.

#[path = "common/mod.rs"]
mod common;

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::{register_font, FontStyle};

const W: u32 = 1200;
const H: u32 = 500;

fn font() -> bool {
    for path in [
        "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
        "/usr/share/fonts/TTF/DejaVuSans.ttf",
    ] {
        if let Ok(bytes) = std::fs::read(path) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            return register_font("sans-serif", FontStyle::Normal, bytes).is_ok();
        }
    }
    eprintln!("DejaVuSans.ttf not found (Debian: apt-get install fonts-dejavu-core): no plots");
    false
}

/// Rows of a CSV file as string cells (no quoting beyond stripping `"`).
fn read_csv(path: &Path) -> Option<Vec<Vec<String>>> {
    let text = std::fs::read_to_string(path).ok()?;
    Some(
        text.lines()
            .skip(1)
            .map(|l| {
                l.split(',')
                    .map(|c| c.trim_matches('"').to_owned())
                    .collect()
            })
            .collect(),
    )
}

fn save_png(path: &Path, buffer: &[u8]) {
    let file = std::fs::File::create(path).expect("create png");
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), W, H);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().expect("png header");
    writer.write_image_data(buffer).expect("png data");
    eprintln!("wrote {}", path.display());
}

const COLORS: [RGBColor; 4] = [
    RGBColor(0x1f, 0x77, 0xb4),
    RGBColor(0xd6, 0x27, 0x28),
    RGBColor(0x2c, 0xa0, 0x2c),
    RGBColor(0x94, 0x67, 0xbd),
];

type Series = Vec<(String, Vec<(f64, f64)>)>;

fn redis_plot(rows: &[Vec<String>], out: &Path, load: &str) {
    let mut throughput: Series = Vec::new();
    let mut p99: Series = Vec::new();
    for row in rows {
        let (client, c, rps, p99_ms) = (
            row[0].clone(),
            row[1].parse::<f64>().unwrap_or(f64::NAN),
            row[3].parse::<f64>().unwrap_or(f64::NAN),
            row[5].parse::<f64>().unwrap_or(f64::NAN),
        );
        let label = match client.as_str() {
            "ours" => "tower-tenancy RedisStore".to_owned(),
            "ours (1 connection)" => "tower-tenancy RedisStore (1 connection)".to_owned(),
            "redis-benchmark" => "redis-benchmark (ceiling, same EVALSHA)".to_owned(),
            "ceiling" => "ceiling (minimal client, same script call)".to_owned(),
            "rate-limiter-flexible" => "rate-limiter-flexible RateLimiterRedis".to_owned(),
            other => other.to_owned(),
        };
        for (series, y) in [(&mut throughput, rps / 1000.0), (&mut p99, p99_ms)] {
            match series.iter_mut().find(|s| s.0 == label) {
                Some(s) => s.1.push((c, y)),
                None => series.push((label.clone(), vec![(c, y)])),
            }
        }
    }
    let mut buffer = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (W, H)).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        let root = root
            .titled(
                &format!(
                    "Redis admission: one sliding-window check per call (2 cores, load {load})"
                ),
                ("sans-serif", 20),
            )
            .expect("title");
        let (left, right) = root.split_horizontally(W / 2);
        let max_y = throughput
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(&left)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .caption("throughput", ("sans-serif", 18))
            .build_cartesian_2d((1f64..300f64).log_scale(), 0f64..max_y.max(1.0))
            .expect("chart");
        chart
            .configure_mesh()
            .x_desc("concurrent requests")
            .y_desc("thousand decisions / s")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .expect("mesh");
        for (i, (label, points)) in throughput.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
                .expect("line")
                .label(label)
                .legend(move |(x, y)| {
                    PathElement::new([(x, y), (x + 20, y)], color.stroke_width(3))
                });
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .expect("points");
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .expect("legend");

        let max_p99 = p99
            .iter()
            .flat_map(|s| s.1.iter().map(|p| p.1))
            .fold(0.0, f64::max)
            * 1.5;
        let mut chart = ChartBuilder::on(&right)
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .caption("p99 latency", ("sans-serif", 18))
            .build_cartesian_2d(
                (1f64..300f64).log_scale(),
                (0.01f64..max_p99.max(0.1)).log_scale(),
            )
            .expect("chart");
        chart
            .configure_mesh()
            .x_desc("concurrent requests")
            .y_desc("ms")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .y_label_formatter(&|y| format!("{y}"))
            .draw()
            .expect("mesh");
        for (i, (_, points)) in p99.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            chart
                .draw_series(LineSeries::new(points.clone(), color.stroke_width(3)))
                .expect("line");
            chart
                .draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))
                .expect("points");
        }
        root.present().expect("present");
    }
    save_png(out, &buffer);
}

fn overhead_plot(rows: &[Vec<String>], out: &Path, load: &str) {
    // variant,mode,median_ns_per_request
    let modes: Vec<String> = {
        let mut m: Vec<String> = rows.iter().map(|r| r[1].clone()).collect();
        m.dedup();
        m
    };
    let variants: Vec<String> = {
        let mut v: Vec<String> = Vec::new();
        for r in rows {
            if !v.contains(&r[0]) {
                v.push(r[0].clone());
            }
        }
        v
    };
    let value = |variant: &str, mode: &str| {
        rows.iter()
            .find(|r| r[0] == variant && r[1] == mode)
            .and_then(|r| r[2].parse::<f64>().ok())
    };
    let max = rows
        .iter()
        .filter_map(|r| r[2].parse::<f64>().ok())
        .fold(0.0, f64::max)
        * 1.2;
    let mut buffer = vec![0u8; (W * H * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buffer, (W, H)).into_drawing_area();
        root.fill(&WHITE).expect("fill");
        let n = variants.len() as f64;
        let mut chart = ChartBuilder::on(&root)
            .margin(20)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .caption(
                format!("In-process cost per request (median ns; lower is better; load {load})"),
                ("sans-serif", 20),
            )
            .build_cartesian_2d(0f64..n, 0f64..max.max(1.0))
            .expect("chart");
        let names = variants.clone();
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(variants.len() * 2 + 1)
            .x_label_formatter(&|x| {
                let i = x.floor() as usize;
                if (x - x.floor() - 0.5).abs() < 0.01 && i < names.len() {
                    names[i].clone()
                } else {
                    String::new()
                }
            })
            .y_desc("ns per request")
            .draw()
            .expect("mesh");
        let width = 0.8 / modes.len() as f64;
        for (m, mode) in modes.iter().enumerate() {
            let color = COLORS[m % COLORS.len()];
            let bars: Vec<_> = variants
                .iter()
                .enumerate()
                .filter_map(|(i, v)| {
                    let y = value(v, mode)?;
                    let x0 = i as f64 + 0.1 + m as f64 * width;
                    Some(Rectangle::new(
                        [(x0, 0.0), (x0 + width * 0.95, y)],
                        color.filled(),
                    ))
                })
                .collect();
            chart
                .draw_series(bars)
                .expect("bars")
                .label(mode.as_str())
                .legend(move |(x, y)| {
                    Rectangle::new([(x, y - 6), (x + 14, y + 6)], color.filled())
                });
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .background_style(WHITE.mix(0.8))
            .border_style(BLACK)
            .label_font(("sans-serif", 14))
            .draw()
            .expect("legend");
        root.present().expect("present");
    }
    save_png(out, &buffer);
}

fn load_of(results: &Path, name: &str) -> String {
    std::fs::read_to_string(results.join(name))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| {
            v["load_1m_at_end"]
                .as_str()
                .or(v["machine"]["load_1m_at_start"].as_str())
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "?".into())
}

fn main() {
    if !common::full_run() || !font() {
        return;
    }
    let results = common::results_dir();
    let docs = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/bench");
    std::fs::create_dir_all(&docs).expect("create docs/bench");
    match read_csv(&results.join("redis.csv")) {
        Some(rows) if !rows.is_empty() => redis_plot(
            &rows,
            &docs.join("redis.png"),
            &load_of(&results, "redis.json"),
        ),
        _ => eprintln!("no redis.csv: skipped redis.png"),
    }
    match read_csv(&results.join("overhead.csv")) {
        Some(rows) if !rows.is_empty() => overhead_plot(
            &rows,
            &docs.join("overhead.png"),
            &load_of(&results, "overhead.json"),
        ),
        _ => eprintln!("no overhead.csv: skipped overhead.png"),
    }
}
