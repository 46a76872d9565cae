//! Append throughput of [`TelemetryWriter`]: `T` threads each append `N` rows (each `append`
//! returns only once its row is fsynced), for several `T`; prints rows/s, group commits
//! (fsyncs), rows per commit and the p50/p99 latency of one `append`. Results and the machine
//! go to docs/benchmarks.md.
//!
//! ```sh
//! cargo run -p sandstorm-datasets --example append_throughput -- [DIR] [ROWS_PER_THREAD]
//! ```
//!
//! DIR (default: a temporary directory under the system's) must be on the file system to
//! measure: tmpfs makes fsync free.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use sandstorm_datasets::{SimulatorConfig, TelemetryWriter, WriterOptions, simulate};
use sandstorm_features::Catalog;

fn main() {
    let mut args = std::env::args().skip(1);
    let base = args.next().map(std::path::PathBuf::from);
    let per_thread: usize = args
        .next()
        .map_or(200, |n| n.parse().expect("rows per thread"));
    let cfg = SimulatorConfig {
        rows: 1,
        seed: 3,
        ..SimulatorConfig::default()
    };
    let template = simulate(&Catalog::default_catalog(), &cfg).next().unwrap();
    println!(
        "| threads | rows | seconds | rows/s | commits (fsyncs) | rows per commit | append p50 | append p99 |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    for threads in [1usize, 4, 16, 64] {
        let tmp = match &base {
            Some(dir) => tempfile::tempdir_in(dir).unwrap(),
            None => tempfile::tempdir().unwrap(),
        };
        let options = WriterOptions {
            background: true,
            ..WriterOptions::default()
        };
        let writer = TelemetryWriter::open(tmp.path(), options).unwrap();
        let start = Instant::now();
        let mut latencies: Vec<Duration> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let writer = &writer;
                    let template = &template;
                    s.spawn(move || {
                        let mut record = template.clone();
                        let mut lat = Vec::with_capacity(per_thread);
                        for i in 0..per_thread {
                            record.run_id = format!("t{t}-{i}");
                            let t0 = Instant::now();
                            writer.append(&record).unwrap();
                            lat.push(t0.elapsed());
                        }
                        lat
                    })
                })
                .collect();
            handles
                .into_iter()
                .flat_map(|h| h.join().unwrap())
                .collect()
        });
        let secs = start.elapsed().as_secs_f64();
        let stats = writer.stats();
        writer.close().unwrap();
        latencies.sort();
        let q = |p: f64| latencies[((latencies.len() - 1) as f64 * p) as usize];
        let rows = stats.rows;
        println!(
            "| {threads} | {rows} | {secs:.2} | {:.0} | {} | {:.1} | {:.2} ms | {:.2} ms |",
            rows as f64 / secs,
            stats.commits,
            rows as f64 / stats.commits as f64,
            q(0.5).as_secs_f64() * 1e3,
            q(0.99).as_secs_f64() * 1e3,
        );
    }
}
