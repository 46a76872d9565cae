//! [`TelemetryWriter`]: appended rows reach date-partitioned Parquet exactly once, concurrent
//! appenders share fsyncs, segments roll by size and age, and recovery of a dead writer's log
//! cuts torn tails, refuses corruption and never duplicates rows. The SIGKILL test is in
//! `journal_crash.rs`.

mod common;

use common::records;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use sandstorm_datasets::{
    DatasetsError, TelemetryWriter, WAL_DIR, WriterOptions, read_parquet_dir,
};
use sandstorm_features::telemetry::{self, TelemetryRecord};

const DAY_US: i64 = 86_400_000_000;

fn read_all(dir: &Path) -> Vec<TelemetryRecord> {
    let mut rows: Vec<TelemetryRecord> = read_parquet_dir(dir)
        .expect("read")
        .iter()
        .flat_map(|b| telemetry::from_record_batch(b).expect("rows"))
        .collect();
    rows.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    rows
}

fn sorted(mut rows: Vec<TelemetryRecord>) -> Vec<TelemetryRecord> {
    rows.sort_by(|a, b| a.run_id.cmp(&b.run_id));
    rows
}

fn quiet() -> WriterOptions {
    WriterOptions {
        background: false,
        ..WriterOptions::default()
    }
}

/// Every file under `dir`, relative, sorted.
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).expect("list") {
            let p = e.expect("entry").path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(
                    p.strip_prefix(dir)
                        .expect("under dir")
                        .to_string_lossy()
                        .into_owned(),
                );
            }
        }
    }
    out.sort();
    out
}

/// Segment files of live writers under `root`.
fn segments(root: &Path) -> Vec<PathBuf> {
    files(&root.join(WAL_DIR))
        .into_iter()
        .filter(|f| f.ends_with(".seg"))
        .map(|f| root.join(WAL_DIR).join(f))
        .collect()
}

/// Copies the segments of a live writer on `from` into a dead writer's WAL under `to`.
fn plant_dead_writer(from: &Path, to: &Path, writer_id: &str) -> Vec<PathBuf> {
    let dead = to.join(WAL_DIR).join(writer_id);
    std::fs::create_dir_all(&dead).expect("mkdir");
    segments(from)
        .into_iter()
        .map(|seg| {
            let target = dead.join(seg.file_name().expect("name"));
            std::fs::copy(&seg, &target).expect("copy");
            target
        })
        .collect()
}

#[test]
fn appended_rows_land_in_date_partitions_exactly_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = records(120, 1);
    let location = format!("file://{}", dir.path().display());
    let writer = TelemetryWriter::open_location(&location, quiet()).expect("open");
    for r in &rows[..100] {
        writer.append(r).expect("append");
    }
    let ack = writer.append_all(&rows[100..]).expect("append all");
    assert_eq!((ack.first_seq, ack.rows), (100, 20));
    assert!(
        ack.segment.is_file(),
        "durable in {}",
        ack.segment.display()
    );
    assert_eq!(writer.stats().rows, 120);
    // Not yet compacted: readers see only Parquet.
    assert!(read_parquet_dir(dir.path()).is_err());
    let written = writer.close().expect("close");
    assert!(!written.is_empty());

    assert_eq!(read_all(dir.path()), sorted(rows.clone()));
    let names = files(dir.path());
    assert!(
        names
            .iter()
            .all(|n| n.starts_with("date=") && n.contains("/part-")),
        "{names:?}"
    );
    // Each row is in the partition of its request date.
    for name in &names {
        let date = &name["date=".len()..name.find('/').expect("slash")];
        let rows = read_all(&dir.path().join(format!("date={date}")));
        for r in rows {
            let d = telemetry::from_micros(r.ts_request_us).date();
            assert_eq!(d.to_string(), date);
        }
    }
    assert!(
        !dir.path().join(WAL_DIR).exists(),
        "a closed writer leaves no wal"
    );
}

#[test]
fn concurrent_appenders_share_fsyncs_and_lose_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = records(800, 2);
    let options = WriterOptions {
        commit_delay: Duration::from_millis(2),
        max_segment_bytes: 256 * 1024,
        ..WriterOptions::default()
    };
    let writer = TelemetryWriter::open(dir.path(), options).expect("open");
    std::thread::scope(|s| {
        for chunk in rows.chunks(100) {
            let writer = &writer;
            s.spawn(move || {
                for r in chunk {
                    writer.append(r).expect("append");
                }
            });
        }
    });
    let stats = writer.stats();
    assert_eq!(stats.rows, 800);
    assert!(
        stats.commits < stats.rows / 2,
        "group commit batches concurrent appends: {stats:?}"
    );
    writer.close().expect("close");
    assert_eq!(read_all(dir.path()), sorted(rows));
}

#[test]
fn segments_roll_by_size_and_by_age_and_compact_in_the_background() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = records(30, 3);
    // Size: every commit fills a segment.
    let writer = TelemetryWriter::open(
        dir.path(),
        WriterOptions {
            max_segment_bytes: 1,
            ..WriterOptions::default()
        },
    )
    .expect("open");
    for r in &rows[..20] {
        writer.append(r).expect("append");
    }
    wait_for_rows(dir.path(), 20);
    assert_eq!(writer.stats().segments_compacted, 20);
    drop(writer);

    // Age: one row in a big segment is published after `max_segment_age`.
    let writer = TelemetryWriter::open(
        dir.path(),
        WriterOptions {
            max_segment_age: Duration::from_millis(50),
            ..WriterOptions::default()
        },
    )
    .expect("open");
    writer.append(&rows[20]).expect("append");
    wait_for_rows(dir.path(), 21);
    drop(writer);
    assert_eq!(read_all(dir.path()), sorted(rows[..21].to_vec()));
}

fn wait_for_rows(dir: &Path, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let got = read_parquet_dir(dir).map_or(0, |b| b.iter().map(|b| b.num_rows()).sum());
        if got == n {
            return;
        }
        assert!(got < n, "{got} rows, expected {n}");
        assert!(Instant::now() < deadline, "{got} of {n} rows compacted");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn recovery_cuts_a_torn_tail_and_keeps_every_complete_frame() {
    let live = tempfile::tempdir().expect("tempdir");
    let crashed = tempfile::tempdir().expect("tempdir");
    let rows = records(40, 4);
    let writer = TelemetryWriter::open(live.path(), quiet()).expect("open");
    for r in &rows {
        writer.append(r).expect("append");
    }
    let planted = plant_dead_writer(live.path(), crashed.path(), "deadwriter1");
    assert_eq!(planted.len(), 1);
    drop(writer);
    // A crash in the middle of the next frame: its header and half its payload.
    let mut bytes = std::fs::read(&planted[0]).expect("read");
    let full = bytes.len();
    bytes.extend_from_slice(b"SFRM");
    bytes.extend_from_slice(&5000u32.to_le_bytes());
    bytes.extend_from_slice(&[0xAB; 1234]);
    std::fs::write(&planted[0], &bytes).expect("write");

    let writer = TelemetryWriter::open(crashed.path(), quiet()).expect("recover");
    let recovery = writer.recovery().clone();
    assert_eq!(recovery.writers, 1);
    assert_eq!(recovery.rows, 40);
    assert_eq!(recovery.torn_tails, 1);
    // The cut bytes are kept, hidden from readers.
    assert_eq!(recovery.kept_tails.len(), 1);
    assert_eq!(
        std::fs::read(&recovery.kept_tails[0]).expect("kept tail"),
        bytes[full..]
    );
    writer.close().expect("close");
    assert_eq!(read_all(crashed.path()), sorted(rows));
    assert!(!crashed.path().join(WAL_DIR).join("deadwriter1").exists());
}

#[test]
fn corrupt_segment_is_a_clear_error_and_is_left_in_place() {
    let live = tempfile::tempdir().expect("tempdir");
    let crashed = tempfile::tempdir().expect("tempdir");
    let rows = records(10, 5);
    let writer = TelemetryWriter::open(live.path(), quiet()).expect("open");
    for r in &rows {
        writer.append(r).expect("append");
    }
    let planted = plant_dead_writer(live.path(), crashed.path(), "deadwriter2");
    drop(writer);
    // Damage the middle of the file: valid frames follow, so this is not a torn tail.
    let mut bytes = std::fs::read(&planted[0]).expect("read");
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    std::fs::write(&planted[0], &bytes).expect("write");

    let err = TelemetryWriter::open(crashed.path(), quiet()).expect_err("corrupt");
    let message = err.to_string();
    assert!(
        matches!(err, DatasetsError::CorruptSegment { .. }),
        "{message}"
    );
    assert!(message.contains("deadwriter2"), "names the file: {message}");
    assert_eq!(
        std::fs::read(&planted[0]).expect("still there"),
        bytes,
        "the damaged segment is kept for inspection"
    );
    assert!(
        read_parquet_dir(crashed.path()).is_err(),
        "nothing half-published"
    );
}

#[test]
fn recovery_after_a_crash_during_compaction_makes_no_duplicates() {
    let live = tempfile::tempdir().expect("tempdir");
    let crashed = tempfile::tempdir().expect("tempdir");
    let mut rows = records(60, 6);
    for (i, r) in rows.iter_mut().enumerate() {
        // Three partitions.
        r.ts_request_us = 1_764_460_800_000_000 + (i as i64 % 3) * DAY_US + i as i64;
    }
    let writer = TelemetryWriter::open(live.path(), quiet()).expect("open");
    writer.append_all(&rows).expect("append");
    let saved = std::fs::read(&segments(live.path())[0]).expect("read segment");
    drop(writer);

    // First recovery compacts the dead writer's segment into three partitions.
    let dead = crashed.path().join(WAL_DIR).join("deadwriter3");
    std::fs::create_dir_all(&dead).expect("mkdir");
    let segment = dead.join("00000000000000000001.seg");
    std::fs::write(&segment, &saved).expect("plant");
    TelemetryWriter::open(crashed.path(), quiet())
        .expect("recover")
        .close()
        .expect("close");
    let parts = files(crashed.path());
    assert_eq!(parts.len(), 3, "{parts:?}");

    // A crash after publishing one partition but before deleting the segment: the segment is
    // back and one of its files missing.
    std::fs::create_dir_all(&dead).expect("mkdir");
    std::fs::write(&segment, &saved).expect("plant again");
    std::fs::remove_file(crashed.path().join(&parts[1])).expect("remove one part");
    let writer = TelemetryWriter::open(crashed.path(), quiet()).expect("recover again");
    assert_eq!(writer.recovery().rows, 60);
    writer.close().expect("close");
    assert_eq!(files(crashed.path()), parts);
    assert_eq!(read_all(crashed.path()), sorted(rows));
}

#[test]
fn a_live_writers_log_is_not_recovered_by_another_writer() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = records(5, 7);
    let first = TelemetryWriter::open(dir.path(), quiet()).expect("open");
    first.append_all(&rows).expect("append");
    let second = TelemetryWriter::open(dir.path(), quiet()).expect("open second");
    assert_eq!(second.recovery().writers, 0, "the first writer is alive");
    assert_eq!(segments(dir.path()).len(), 1);
    second.close().expect("close second");
    first.close().expect("close first");
    assert_eq!(read_all(dir.path()), sorted(rows));
}

#[test]
fn a_writer_that_died_while_opening_leaves_nothing_behind() {
    let dir = tempfile::tempdir().expect("tempdir");
    // What a crash between creating and renaming a writer's directory leaves.
    let staging = dir.path().join(WAL_DIR).join(".tmp-0123");
    std::fs::create_dir_all(&staging).expect("mkdir");
    std::fs::write(staging.join("LOCK"), b"").expect("lock file");
    let writer = TelemetryWriter::open(dir.path(), quiet()).expect("open");
    assert!(!staging.exists(), "the dead staging directory is removed");
    assert_eq!(writer.recovery().writers, 0);
    writer.close().expect("close");
    assert!(!dir.path().join(WAL_DIR).exists());
}
