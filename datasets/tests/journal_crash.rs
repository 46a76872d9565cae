//! The SIGKILL test of [`TelemetryWriter`]: a child process (this test binary, re-invoked with
//! `SANDSTORM_JOURNAL_CHILD` set) appends rows from several threads and prints each
//! acknowledged row's `run_id`; the test SIGKILLs it mid-stream (three times, each new child
//! recovering the previous one's write-ahead log), adds a half-written frame to the last
//! child's newest segment (what a power loss leaves), then reopens the writer, compacts, and
//! checks that every acknowledged row is readable exactly once.
//!
//! The same test runs a second time on an object store (a real S3-compatible server, moto):
//! the children spool locally and publish to `s3://crash/telemetry`, and every acknowledged
//! row must be readable exactly once from the bucket.
//!
//! No test harness: `main` is either the child or the test.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use sandstorm_datasets::{
    Location, SimulatorConfig, TelemetryWriter, WriterOptions, read_parquet_location, simulate,
};
use sandstorm_features::Catalog;
use sandstorm_features::telemetry::{self, TelemetryRecord};
use sandstorm_storage::test_s3::S3Server;

const CHILD_ENV: &str = "SANDSTORM_JOURNAL_CHILD";
/// Set for the children of the object-store run: the telemetry URL (`dir` is then the spool).
const URL_ENV: &str = "SANDSTORM_JOURNAL_URL";
const THREADS: usize = 4;
const ROUNDS: usize = 3;
/// Acknowledged rows to wait for before each kill.
const ACKS_BEFORE_KILL: usize = 300;

fn template() -> TelemetryRecord {
    let cfg = SimulatorConfig {
        rows: 1,
        seed: 11,
        ..SimulatorConfig::default()
    };
    simulate(&Catalog::default_catalog(), &cfg)
        .next()
        .expect("one simulated row")
}

/// The child: appends forever, printing `run_id` of every acknowledged row.
fn child(dir: &Path, round: &str) {
    let options = WriterOptions {
        // Small segments and a short age so that rolling and background compaction run while
        // the child is being killed.
        max_segment_bytes: 48 * 1024,
        max_segment_age: Duration::from_millis(100),
        spool_dir: Some(dir.to_owned()),
        ..WriterOptions::default()
    };
    let location = match std::env::var(URL_ENV) {
        Ok(url) => Location::parse("test", &url).expect("url"),
        Err(_) => Location::Local(dir.to_owned()),
    };
    let writer = TelemetryWriter::open_at(&location, options).expect("child opens the writer");
    let base = template();
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let writer = &writer;
            let base = &base;
            s.spawn(move || {
                let mut record = base.clone();
                for i in 0u64.. {
                    record.run_id = format!("r{round}-t{t}-{i}");
                    // Spread rows over several days, hence several partitions.
                    record.ts_request_us = base.ts_request_us + (i as i64 % 5) * 86_400_000_000;
                    writer.append(&record).expect("append");
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "{}", record.run_id).expect("stdout");
                    out.flush().expect("flush");
                }
            });
        }
    });
}

/// Runs one child until it acknowledged `ACKS_BEFORE_KILL` rows, SIGKILLs it, and returns every
/// `run_id` it acknowledged (complete lines only: a line cut by the kill was not printed in
/// full, and its row may or may not be durable — it was acknowledged to no one).
fn run_and_kill(dir: &Path, round: usize, s3: Option<(&S3Server, &str)>) -> Vec<String> {
    let exe = std::env::current_exe().expect("test binary");
    let mut command = Command::new(exe);
    if let Some((server, url)) = s3 {
        command.envs(server.env()).env(URL_ENV, url);
    }
    let mut child = command
        .env(CHILD_ENV, dir)
        .env("SANDSTORM_JOURNAL_ROUND", round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (tx, rx) = mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut line = String::new();
        loop {
            line.clear();
            match reader.read_line(&mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) if line.ends_with('\n') => {
                    if tx.send(line.trim_end().to_owned()).is_err() {
                        break;
                    }
                }
                Ok(_) => break, // cut by the kill
            }
        }
    });
    let mut acked = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(120);
    while acked.len() < ACKS_BEFORE_KILL {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(id) => acked.push(id),
            Err(e) => {
                let _ = child.kill();
                panic!("child acknowledged only {} rows before {e:?}", acked.len());
            }
        }
    }
    child.kill().expect("SIGKILL the child");
    let status = child.wait().expect("wait for the child");
    assert!(!status.success(), "the child was killed, not finished");
    reader.join().expect("reader thread");
    acked.extend(rx.try_iter());
    acked
}

fn sigkill_mid_stream_loses_no_acknowledged_row(s3: Option<&S3Server>) {
    const URL: &str = "s3://crash/telemetry";
    let dir = tempfile::tempdir().expect("tempdir");
    let location = match s3 {
        Some(server) => {
            server.create_bucket("crash");
            Location::parse_with("test", URL, &server.config()).expect("url")
        }
        None => Location::Local(dir.path().to_owned()),
    };
    let mut acked = Vec::new();
    for round in 0..ROUNDS {
        acked.extend(run_and_kill(dir.path(), round, s3.map(|s| (s, URL))));
    }
    // A power loss would also leave a half-written frame: add one to the newest segment of the
    // last child's log.
    let torn = tear_newest_segment(dir.path());
    let options = WriterOptions {
        spool_dir: Some(dir.path().to_owned()),
        ..WriterOptions::default()
    };
    let writer = TelemetryWriter::open_at(&location, options).expect("recover");
    let recovery = writer.recovery().clone();
    assert!(
        recovery.writers >= 1,
        "the last child's wal was recovered: {recovery:?}"
    );
    if torn {
        assert!(recovery.torn_tails >= 1, "{recovery:?}");
    }
    writer.close().expect("close");

    let mut counts: HashMap<String, usize> = HashMap::new();
    let batches = read_parquet_location(&location).expect("read compacted telemetry");
    for batch in &batches {
        for row in telemetry::from_record_batch(batch).expect("rows") {
            *counts.entry(row.run_id).or_default() += 1;
        }
    }
    let duplicated: Vec<_> = counts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(duplicated.is_empty(), "duplicated rows: {duplicated:?}");
    let missing: Vec<_> = acked
        .iter()
        .filter(|id| !counts.contains_key(*id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} of {} acknowledged rows lost, e.g. {:?}",
        missing.len(),
        acked.len(),
        &missing[..missing.len().min(5)]
    );
    // The WAL is gone: everything was compacted.
    let wal = dir.path().join(sandstorm_datasets::WAL_DIR);
    assert!(!wal.exists(), "wal left behind");
    if let Some(remote) = location.as_remote() {
        let spooled = read_parquet_location(&Location::Local(dir.path().to_owned()));
        assert!(spooled.is_err(), "parquet left unpublished in the spool");
        let objects = remote.list().expect("list");
        assert!(
            objects.iter().all(|o| o.name.starts_with("date=")
                && o.name.contains("/part-")
                && o.name.ends_with(".parquet")),
            "hive layout: {objects:?}"
        );
    }
    println!(
        "sigkill ({location}): {} acknowledged rows over {ROUNDS} kills, {} rows stored, last recovery {:?} \
         segments / {} torn tails",
        acked.len(),
        counts.len(),
        recovery.segments,
        recovery.torn_tails
    );
}

/// Appends the start of a frame (header and part of its payload) to the newest segment under
/// `root`'s WAL; false when the child left no segment (all were compacted when it died).
/// Length of a segment's header (`journal::segment::SEGMENT_MAGIC`).
const SEGMENT_HEADER_LEN: u64 = 8;

fn tear_newest_segment(root: &Path) -> bool {
    let wal = root.join(sandstorm_datasets::WAL_DIR);
    let mut segments = Vec::new();
    for writer in std::fs::read_dir(&wal).expect("wal").flatten() {
        for f in std::fs::read_dir(writer.path())
            .expect("writer dir")
            .flatten()
        {
            // A segment killed before its header was written is empty: a power loss cannot
            // add bytes to it later, so only tear segments that have their header.
            let has_header = f.metadata().is_ok_and(|m| m.len() >= SEGMENT_HEADER_LEN);
            if f.path().extension().is_some_and(|e| e == "seg") && has_header {
                segments.push(f.path());
            }
        }
    }
    segments.sort_by_key(|p| p.file_name().map(|n| n.to_owned()));
    let Some(newest) = segments.last() else {
        return false;
    };
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(newest)
        .expect("open segment");
    let mut frame = b"SFRM".to_vec();
    frame.extend_from_slice(&4096u32.to_le_bytes());
    frame.extend_from_slice(&0xdead_beefu32.to_le_bytes());
    frame.extend_from_slice(&[0x5a; 1000]);
    file.write_all(&frame).expect("tear");
    true
}

fn main() {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let round = std::env::var("SANDSTORM_JOURNAL_ROUND").unwrap_or_default();
        child(Path::new(&dir), &round);
        return;
    }
    sigkill_mid_stream_loses_no_acknowledged_row(None);
    println!("test sigkill_mid_stream_loses_no_acknowledged_row ... ok");
    let server = S3Server::start();
    sigkill_mid_stream_loses_no_acknowledged_row(Some(&server));
    println!("test sigkill_mid_stream_on_an_object_store_loses_no_acknowledged_row ... ok");
}
