//! Telemetry ingestion that loses nothing: [`TelemetryWriter`], a write-ahead log of Arrow IPC
//! segments compacted into date-partitioned Parquet.
//!
//! Layout of a telemetry directory (docs/telemetry.md):
//!
//! ```text
//! <root>/date=2026-11-30/part-<writer id>-<segment id>.parquet   compacted rows
//! <root>/.wal/<writer id>/LOCK                                     held (flock) while the writer lives
//! <root>/.wal/<writer id>/<segment id>.seg                         write-ahead log segments
//! <root>/.quarantine/<writer>-<segment>-at-<offset>.torn           bytes of cut torn tails
//! ```
//!
//! * **Durability.** [`TelemetryWriter::append`] returns only after the row's frame is written
//!   and `fdatasync`ed. Concurrent appends share one write and one fsync (group commit): the
//!   first appender becomes the leader and commits everything queued; the others wait.
//! * **Rolling and compaction.** A segment is sealed when it reaches
//!   [`WriterOptions::max_segment_bytes`] or [`WriterOptions::max_segment_age`]; a background
//!   thread (and [`TelemetryWriter::close`]) compacts sealed segments into Parquet, idempotently
//!   (see `compact.rs`).
//! * **Recovery.** Every writer has its own WAL directory, locked with `flock` for its lifetime.
//!   [`TelemetryWriter::open`] recovers the directories of dead writers (the lock is free): torn
//!   tails are cut at the last complete frame (their bytes kept in `.quarantine/` unless all
//!   zeros), the segments compacted, the directory removed.
//! * **Readers** ([`crate::read_parquet_dir`], the trainer, `sandstorm telemetry query`) read
//!   compacted Parquet only; `.wal` is hidden from them. A row becomes visible at most
//!   `max_segment_age` (plus one compaction) after it was acknowledged, or when its writer
//!   closes, or when the next writer recovers it after a crash.
//! * **Object stores.** On an object-store location ([`TelemetryWriter::open_at`] with an
//!   `s3://` [`Location`]) the write-ahead log and the compaction stay in a local **spool**
//!   directory ([`WriterOptions::spool_dir`], default [`default_spool_dir`]), and every
//!   compacted Parquet file is then *published*: put to the store under the same name
//!   (`date=YYYY-MM-DD/part-<writer>-<segment>.parquet`), and deleted locally only after the
//!   put succeeded. Names derive from (writer, segment), so a crash between put and delete
//!   makes the next writer put the same object again, replacing it: no row lost or doubled.

mod compact;
mod segment;

use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use arrow::array::RecordBatch;
use arrow::compute::concat_batches;
use sandstorm_features::telemetry::{self, TelemetryRecord};
use sandstorm_storage::{Location, Remote, StorageError};

use crate::error::DatasetsError;
use compact::compact_segment;
use segment::{SegmentWriter, parse_segment_file_name, segment_file_name, sync_dir};

/// Name of the hidden directory holding the write-ahead logs.
pub const WAL_DIR: &str = ".wal";
const LOCK_FILE: &str = "LOCK";

/// Settings of a [`TelemetryWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// A segment is sealed (and then compacted) once it holds this many bytes.
    pub max_segment_bytes: u64,
    /// ... or once it is this old and holds at least one row.
    pub max_segment_age: Duration,
    /// How long a commit leader waits for more appends to join its group before writing
    /// (0: commit at once; concurrent appends still share fsyncs).
    pub commit_delay: Duration,
    /// Run a background thread that seals aged segments and compacts sealed ones. Without it,
    /// segments are compacted only by [`TelemetryWriter::compact`] and
    /// [`TelemetryWriter::close`].
    pub background: bool,
    /// With an object-store location: the local directory that holds the write-ahead log and
    /// the Parquet files not yet published (default: [`default_spool_dir`]). It must be on a
    /// local file system with `fsync`, and each location should have its own.
    pub spool_dir: Option<PathBuf>,
}

impl Default for WriterOptions {
    fn default() -> Self {
        Self {
            max_segment_bytes: 8 * 1024 * 1024,
            max_segment_age: Duration::from_secs(60),
            commit_delay: Duration::ZERO,
            background: true,
            spool_dir: None,
        }
    }
}

/// Acknowledgement of durably appended rows: `rows` rows numbered from `first_seq` in this
/// writer's append order, durable in write-ahead-log segment `segment` (which compaction later
/// turns into `date=YYYY-MM-DD/part-<writer>-<segment id>.parquet` files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub first_seq: u64,
    pub rows: u64,
    pub segment: PathBuf,
}

/// Commits remembered to tell followers which segment their rows went to.
const RECENT_COMMITS: usize = 1024;

/// Counters of a writer since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriterStats {
    /// Rows acknowledged.
    pub rows: u64,
    /// Group commits (one write and one fsync each).
    pub commits: u64,
    /// Segments compacted into Parquet (including recovered ones).
    pub segments_compacted: u64,
}

/// What [`TelemetryWriter::open`] recovered from writers that died without closing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Dead writers' WAL directories recovered.
    pub writers: usize,
    /// Segments compacted.
    pub segments: usize,
    /// Segments whose torn tail (a partly written frame, never acknowledged) was cut off.
    pub torn_tails: usize,
    /// Files under `<root>/.quarantine/` keeping the bytes of cut tails that were not all
    /// zeros (a torn write, or a damaged last frame: kept so nothing is destroyed silently).
    pub kept_tails: Vec<PathBuf>,
    /// Rows recovered.
    pub rows: usize,
    /// Parquet files holding them.
    pub files: Vec<PathBuf>,
}

/// Parses a telemetry location given for `what` (a flag or field, named in errors): a
/// directory path, a `file://` URL or an `s3://` URL (docs/telemetry.md).
pub fn telemetry_location(what: &str, location: &str) -> Result<Location, DatasetsError> {
    Ok(Location::parse(what, location)?)
}

/// The default spool directory of object-store location `remote`:
/// `<cache dir>/telemetry-spool/<slug of the URL>`, where the cache directory is
/// `$SANDSTORM_CACHE_DIR`, `$XDG_CACHE_HOME/sandstorm` or `~/.cache/sandstorm`.
pub fn default_spool_dir(remote: &Remote) -> PathBuf {
    sandstorm_storage::default_cache_dir()
        .join("telemetry-spool")
        .join(sandstorm_storage::slug(&remote.url()))
}

/// The one writer of telemetry rows: `Send + Sync`, shared by every thread that appends.
#[derive(Debug)]
pub struct TelemetryWriter {
    inner: Arc<Inner>,
    worker: Option<JoinHandle<()>>,
    recovery: Recovery,
    closed: bool,
}

#[derive(Debug)]
struct Inner {
    root: PathBuf,
    wal_dir: PathBuf,
    writer_id: String,
    options: WriterOptions,
    queue: Mutex<Queue>,
    committed: Condvar,
    segment: Mutex<SegmentSlot>,
    work: Mutex<Work>,
    work_ready: Condvar,
    compacting: Mutex<()>,
    commits: AtomicU64,
    rows: AtomicU64,
    segments_compacted: AtomicU64,
    /// The object store compacted files are published to (`None`: `root` is the telemetry).
    publish: Option<Remote>,
    /// Held (flock) for the writer's lifetime: tells other processes this WAL is alive.
    _lock: File,
}

#[derive(Debug, Default)]
struct Queue {
    /// Appends waiting for the next commit: (sequence number of their first row, rows).
    pending: Vec<(u64, Vec<TelemetryRecord>)>,
    /// Sequence number of the next row enqueued.
    next_seq: u64,
    /// Every row numbered below this is durable, or was rejected (see `rejected`).
    durable: u64,
    /// Recent appends whose rows could not be encoded: (first, end) sequence numbers, error.
    rejected: std::collections::VecDeque<(u64, u64, String)>,
    /// A leader is committing.
    leader: bool,
    /// Recent commits: (rows below this sequence number are durable, segment path).
    recent: std::collections::VecDeque<(u64, PathBuf)>,
    /// Set when a commit failed: the segment's state is unknown, so the writer stops.
    failure: Option<String>,
}

#[derive(Debug)]
struct SegmentSlot {
    active: Option<SegmentWriter>,
    next_id: u64,
}

#[derive(Debug, Default)]
struct Work {
    sealed: Vec<u64>,
    shutdown: bool,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl TelemetryWriter {
    /// Opens a writer on telemetry directory `root` (created when missing), after recovering
    /// the write-ahead logs of writers that died without closing.
    pub fn open(root: &Path, options: WriterOptions) -> Result<Self, DatasetsError> {
        Self::open_inner(root, options, None)
    }

    /// Opens a writer on `location`: a local directory ([`TelemetryWriter::open`]) or an
    /// object store, whose writer spools locally and publishes compacted Parquet (module
    /// documentation). Opening publishes whatever an earlier writer on the same spool left
    /// unpublished.
    pub fn open_at(location: &Location, options: WriterOptions) -> Result<Self, DatasetsError> {
        match location {
            Location::Local(dir) => Self::open(dir, options),
            Location::Remote(remote) => {
                let spool = options
                    .spool_dir
                    .clone()
                    .unwrap_or_else(|| default_spool_dir(remote));
                tracing::info!(to = %remote.url(), spool = %spool.display(), "telemetry spools locally and publishes to an object store");
                Self::open_inner(&spool, options, Some(remote.clone()))
            }
        }
    }

    fn open_inner(
        root: &Path,
        options: WriterOptions,
        publish: Option<Remote>,
    ) -> Result<Self, DatasetsError> {
        std::fs::create_dir_all(root).map_err(|e| DatasetsError::io(root, e))?;
        let wal_root = root.join(WAL_DIR);
        std::fs::create_dir_all(&wal_root).map_err(|e| DatasetsError::io(&wal_root, e))?;
        let mut recovery = recover(root, &wal_root)?;
        if let Some(remote) = &publish {
            // Recovered parts, and parts an earlier writer compacted but did not publish.
            let published = publish_pending(root, remote)?;
            if !recovery.files.is_empty() || !published.is_empty() {
                recovery.files = published;
            }
        }

        let writer_id = uuid::Uuid::new_v4().simple().to_string();
        let wal_dir = wal_root.join(&writer_id);
        // The directory is made under a hidden name, locked, then renamed into place, so that a
        // concurrent recovery never takes it for a dead writer's. `create_dir_all`: `.wal` may
        // have just been removed by a writer closing.
        let staging = wal_root.join(format!(".tmp-{writer_id}"));
        std::fs::create_dir_all(&staging).map_err(|e| DatasetsError::io(&staging, e))?;
        let lock_path = staging.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| DatasetsError::io(&lock_path, e))?;
        lock_file.try_lock().map_err(|e| {
            let e = match e {
                TryLockError::Error(e) => e,
                TryLockError::WouldBlock => std::io::Error::other("lock held by another writer"),
            };
            DatasetsError::io(&lock_path, e)
        })?;
        std::fs::rename(&staging, &wal_dir).map_err(|e| DatasetsError::io(&wal_dir, e))?;
        sync_dir(&wal_dir)?;
        sync_dir(&wal_root)?;
        tracing::info!(root = %root.display(), writer = %writer_id, "telemetry writer open");

        let inner = Arc::new(Inner {
            root: root.to_owned(),
            wal_dir,
            writer_id,
            options,
            queue: Mutex::new(Queue::default()),
            committed: Condvar::new(),
            segment: Mutex::new(SegmentSlot {
                active: None,
                next_id: 1,
            }),
            work: Mutex::new(Work::default()),
            work_ready: Condvar::new(),
            compacting: Mutex::new(()),
            commits: AtomicU64::new(0),
            rows: AtomicU64::new(0),
            segments_compacted: AtomicU64::new(0),
            publish,
            _lock: lock_file,
        });
        let worker = if inner.options.background {
            let worker_inner = Arc::clone(&inner);
            let handle = std::thread::Builder::new()
                .name("telemetry-compactor".to_owned())
                .spawn(move || worker_inner.background())
                .map_err(|e| DatasetsError::io(&inner.wal_dir, e))?;
            Some(handle)
        } else {
            None
        };
        Ok(Self {
            inner,
            worker,
            recovery,
            closed: false,
        })
    }

    /// Opens a writer on a location given as a path, `file://` or `s3://` URL
    /// ([`telemetry_location`]; the S3 client is configured from the `AWS_*` environment).
    pub fn open_location(location: &str, options: WriterOptions) -> Result<Self, DatasetsError> {
        Self::open_at(
            &telemetry_location("telemetry location", location)?,
            options,
        )
    }

    /// The local directory of the writer: the telemetry directory, or the spool of an
    /// object-store location.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The object store compacted files are published to, if any.
    pub fn remote(&self) -> Option<&Remote> {
        self.inner.publish.as_ref()
    }

    /// What opening recovered from dead writers.
    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    pub fn stats(&self) -> WriterStats {
        WriterStats {
            rows: self.inner.rows.load(Ordering::Relaxed),
            commits: self.inner.commits.load(Ordering::Relaxed),
            segments_compacted: self.inner.segments_compacted.load(Ordering::Relaxed),
        }
    }

    /// Appends one row; returns once it is durable.
    pub fn append(&self, record: &TelemetryRecord) -> Result<Ack, DatasetsError> {
        self.append_all(std::slice::from_ref(record))
    }

    /// Appends rows (committed together); returns once all of them are durable.
    pub fn append_all(&self, records: &[TelemetryRecord]) -> Result<Ack, DatasetsError> {
        if records.is_empty() {
            return Err(DatasetsError::NothingToWrite {
                path: self.inner.root.clone(),
                what: "the list of records",
            });
        }
        self.inner.append(records)
    }

    /// Seals the active segment (if it holds rows), so that the next compaction publishes it.
    pub fn roll(&self) -> Result<(), DatasetsError> {
        self.inner.roll(false);
        Ok(())
    }

    /// Seals the active segment and compacts every sealed segment into Parquet now; returns
    /// the files written (on an object store: the URLs of the objects published).
    pub fn flush(&self) -> Result<Vec<PathBuf>, DatasetsError> {
        self.inner.roll(false);
        self.inner.compact()
    }

    /// Stops the background thread, compacts everything appended into Parquet and removes this
    /// writer's WAL directory. Returns the Parquet files written by this last compaction.
    pub fn close(mut self) -> Result<Vec<PathBuf>, DatasetsError> {
        self.closed = true;
        self.stop_worker();
        self.inner.roll(false);
        let files = self.inner.compact()?;
        self.inner.remove_wal_dir()?;
        Ok(files)
    }

    fn stop_worker(&mut self) {
        lock(&self.inner.work).shutdown = true;
        self.inner.work_ready.notify_all();
        if let Some(handle) = self.worker.take()
            && handle.join().is_err()
        {
            tracing::error!("telemetry compactor thread panicked");
        }
    }
}

impl Drop for TelemetryWriter {
    /// Best-effort [`TelemetryWriter::close`]: whatever fails stays in the WAL, which the next
    /// writer recovers.
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        self.stop_worker();
        self.inner.roll(false);
        match self.inner.compact() {
            Ok(_) => {
                if let Err(e) = self.inner.remove_wal_dir() {
                    tracing::warn!(error = %e, "could not remove telemetry wal directory");
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "telemetry left in the wal; the next writer recovers it")
            }
        }
    }
}

impl Inner {
    fn append(&self, records: &[TelemetryRecord]) -> Result<Ack, DatasetsError> {
        let mut queue = lock(&self.queue);
        if let Some(failure) = &queue.failure {
            return Err(DatasetsError::WriterFailed(failure.clone()));
        }
        let first_seq = queue.next_seq;
        let n = records.len() as u64;
        queue.next_seq += n;
        queue.pending.push((first_seq, records.to_vec()));
        let last = queue.next_seq;
        loop {
            if queue.durable >= last {
                if let Some((_, _, error)) = queue
                    .rejected
                    .iter()
                    .find(|(start, _, _)| *start == first_seq)
                {
                    return Err(DatasetsError::RejectedRows(error.clone()));
                }
                let segment = queue
                    .recent
                    .iter()
                    .find(|(upto, _)| *upto >= last)
                    .or(queue.recent.back())
                    .map(|(_, p)| p.clone())
                    .unwrap_or_default();
                return Ok(Ack {
                    first_seq,
                    rows: n,
                    segment,
                });
            }
            if let Some(failure) = &queue.failure {
                return Err(DatasetsError::WriterFailed(failure.clone()));
            }
            if queue.leader {
                queue = self
                    .committed
                    .wait(queue)
                    .unwrap_or_else(PoisonError::into_inner);
                continue;
            }
            queue.leader = true;
            if !self.options.commit_delay.is_zero() {
                drop(queue);
                std::thread::sleep(self.options.commit_delay);
                queue = lock(&self.queue);
            }
            let group = std::mem::take(&mut queue.pending);
            let upto = queue.next_seq;
            drop(queue);
            let (batch, rejected) = encode(&group);
            let result = match &batch {
                Some(batch) => self.commit(batch).map(Some),
                None => Ok(None),
            };
            queue = lock(&self.queue);
            queue.leader = false;
            for r in rejected {
                if queue.rejected.len() == RECENT_COMMITS {
                    queue.rejected.pop_front();
                }
                queue.rejected.push_back(r);
            }
            match result {
                Ok(committed) => {
                    queue.durable = upto;
                    if let Some(segment) = committed {
                        let rows = batch.as_ref().map_or(0, RecordBatch::num_rows);
                        self.rows.fetch_add(rows as u64, Ordering::Relaxed);
                        if queue.recent.len() == RECENT_COMMITS {
                            queue.recent.pop_front();
                        }
                        queue.recent.push_back((upto, segment));
                    }
                }
                Err(e) => {
                    tracing::error!(error = %e, "telemetry commit failed; writer stopped");
                    queue.failure = Some(e.to_string());
                }
            }
            self.committed.notify_all();
        }
    }

    /// Writes `batch` as one frame of the active segment and fsyncs it; returns the segment.
    fn commit(&self, batch: &RecordBatch) -> Result<PathBuf, DatasetsError> {
        let mut slot = lock(&self.segment);
        if slot.active.is_none() {
            let id = slot.next_id;
            slot.next_id += 1;
            slot.active = Some(SegmentWriter::create(&self.wal_dir, id)?);
        }
        let active = slot.active.as_mut().ok_or_else(|| {
            DatasetsError::WriterFailed("internal error: no active segment".to_owned())
        })?;
        active.append(batch)?;
        let segment = active.path.clone();
        self.commits.fetch_add(1, Ordering::Relaxed);
        if active.bytes >= self.options.max_segment_bytes {
            self.seal(&mut slot);
        }
        Ok(segment)
    }

    /// Seals the active segment if it holds rows (and, with `only_if_old`, is old enough).
    fn roll(&self, only_if_old: bool) {
        let mut slot = lock(&self.segment);
        let due = slot.active.as_ref().is_some_and(|a| {
            a.rows > 0 && (!only_if_old || a.created.elapsed() >= self.options.max_segment_age)
        });
        if due {
            self.seal(&mut slot);
        }
    }

    fn seal(&self, slot: &mut SegmentSlot) {
        if let Some(active) = slot.active.take() {
            tracing::debug!(segment = %active.path.display(), rows = active.rows, "sealed segment");
            lock(&self.work).sealed.push(active.id);
            self.work_ready.notify_all();
        }
    }

    /// Compacts every sealed segment, oldest first; on an object store, then publishes every
    /// compacted file of the spool (also those a failed publication left) and returns their
    /// URLs.
    fn compact(&self) -> Result<Vec<PathBuf>, DatasetsError> {
        let files = self.compact_local()?;
        match &self.publish {
            None => Ok(files),
            Some(remote) => {
                let _compacting = lock(&self.compacting);
                publish_pending(&self.root, remote)
            }
        }
    }

    fn compact_local(&self) -> Result<Vec<PathBuf>, DatasetsError> {
        let _compacting = lock(&self.compacting);
        let mut sealed = std::mem::take(&mut lock(&self.work).sealed);
        sealed.sort_unstable();
        let mut files = Vec::new();
        for (i, &id) in sealed.iter().enumerate() {
            let path = self.wal_dir.join(segment_file_name(id));
            match compact_segment(&self.root, &self.wal_dir, &self.writer_id, id, &path) {
                Ok(done) => {
                    self.segments_compacted.fetch_add(1, Ordering::Relaxed);
                    files.extend(done.files);
                }
                Err(e) => {
                    lock(&self.work).sealed.extend_from_slice(&sealed[i..]);
                    return Err(e);
                }
            }
        }
        Ok(files)
    }

    fn remove_wal_dir(&self) -> Result<(), DatasetsError> {
        if lock(&self.segment)
            .active
            .as_ref()
            .is_some_and(|a| a.rows > 0)
            || !lock(&self.work).sealed.is_empty()
        {
            return Ok(());
        }
        remove_wal_dir(&self.wal_dir)
    }

    /// The background thread: seals aged segments, compacts sealed ones.
    fn background(&self) {
        let tick = (self.options.max_segment_age / 4)
            .clamp(Duration::from_millis(10), Duration::from_secs(5));
        let mut backoff = false;
        loop {
            let work = lock(&self.work);
            let wait = if backoff { tick * 4 } else { tick };
            let (work, _) = self
                .work_ready
                .wait_timeout_while(work, wait, |w| {
                    !w.shutdown && (w.sealed.is_empty() || backoff)
                })
                .unwrap_or_else(PoisonError::into_inner);
            if work.shutdown {
                return;
            }
            drop(work);
            self.roll(true);
            backoff = match self.compact() {
                Ok(_) => false,
                Err(e) => {
                    tracing::error!(error = %e, "telemetry compaction failed; will retry");
                    true
                }
            };
        }
    }
}

/// Encodes a commit group as one batch (`None`: nothing to write). Encoding the whole group at
/// once is the fast path; if it fails, each append is encoded alone so that only the appends
/// whose rows cannot be encoded are rejected, returned as (first, end, error).
fn encode(group: &[(u64, Vec<TelemetryRecord>)]) -> (Option<RecordBatch>, Vec<(u64, u64, String)>) {
    let all: Vec<TelemetryRecord> = group.iter().flat_map(|(_, r)| r.iter().cloned()).collect();
    if let Ok(batch) = telemetry::to_record_batch(&all) {
        return (Some(batch), Vec::new());
    }
    let mut good = Vec::new();
    let mut rejected = Vec::new();
    for (first, records) in group {
        match telemetry::to_record_batch(records) {
            Ok(batch) => good.push(batch),
            Err(e) => {
                tracing::error!(error = %e, "telemetry rows rejected: they cannot be encoded");
                rejected.push((*first, *first + records.len() as u64, e.to_string()));
            }
        }
    }
    let batch = match concat_batches(&telemetry::schema(), &good) {
        Ok(batch) if batch.num_rows() > 0 => Some(batch),
        Ok(_) => None,
        Err(e) => {
            // Batches of one schema always concatenate; reject them all rather than panic.
            for (first, records) in group {
                rejected.push((*first, *first + records.len() as u64, e.to_string()));
            }
            None
        }
    };
    (batch, rejected)
}

/// Removes a WAL directory that holds no segment any more (its LOCK file, then itself).
fn remove_wal_dir(dir: &Path) -> Result<(), DatasetsError> {
    let ignore_missing = |r: std::io::Result<()>, path: &Path| match r {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DatasetsError::io(path, e)),
        _ => Ok(()),
    };
    let lock_path = dir.join(LOCK_FILE);
    ignore_missing(std::fs::remove_file(&lock_path), &lock_path)?;
    ignore_missing(std::fs::remove_dir(dir), dir)?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
        // `.wal` itself goes when no other writer uses it (fails harmlessly otherwise).
        if std::fs::remove_dir(parent).is_ok()
            && let Some(root) = parent.parent()
        {
            sync_dir(root)?;
        }
    }
    Ok(())
}

/// Publishes every compacted Parquet file of spool `root` (`date=*/part-*.parquet`, oldest
/// partition first) to `remote` under the same name, deleting each local file only after its
/// put succeeded; returns the URLs of the objects. The names are deterministic, so a file put
/// again after a crash replaces its object. Another process publishing the same spool at the
/// same time is harmless: both put the same bytes, and a file already gone is skipped.
fn publish_pending(root: &Path, remote: &Remote) -> Result<Vec<PathBuf>, DatasetsError> {
    let mut partitions = Vec::new();
    for entry in std::fs::read_dir(root).map_err(|e| DatasetsError::io(root, e))? {
        let entry = entry.map_err(|e| DatasetsError::io(root, e))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.starts_with("date=") && entry.file_type().is_ok_and(|t| t.is_dir()) {
            partitions.push(name);
        }
    }
    partitions.sort();
    let mut published = Vec::new();
    for partition in partitions {
        let dir = root.join(&partition);
        let mut files = Vec::new();
        for entry in std::fs::read_dir(&dir).map_err(|e| DatasetsError::io(&dir, e))? {
            let entry = entry.map_err(|e| DatasetsError::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && name.ends_with(".parquet") {
                files.push(name);
            }
        }
        if files.is_empty() {
            continue;
        }
        files.sort();
        for file in files {
            let path = dir.join(&file);
            let object = format!("{partition}/{file}");
            match remote.put_file(&object, &path) {
                Ok(()) => {}
                Err(StorageError::Io { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    continue; // published and deleted by another writer on this spool
                }
                Err(e) => return Err(e.into()),
            }
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(DatasetsError::io(&path, e)),
            }
            tracing::debug!(object = %remote.object_url(&object), "published telemetry file");
            published.push(PathBuf::from(remote.object_url(&object)));
        }
        sync_dir(&dir)?;
    }
    if !published.is_empty() {
        tracing::info!(to = %remote.url(), files = published.len(), "published telemetry");
    }
    Ok(published)
}

/// Recovers the WAL directories under `wal_root` whose writer is dead (their LOCK is free).
fn recover(root: &Path, wal_root: &Path) -> Result<Recovery, DatasetsError> {
    let mut recovery = Recovery::default();
    let mut dirs = Vec::new();
    for entry in std::fs::read_dir(wal_root).map_err(|e| DatasetsError::io(wal_root, e))? {
        let entry = entry.map_err(|e| DatasetsError::io(wal_root, e))?;
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            dirs.push(entry.path());
        }
    }
    dirs.sort();
    for dir in dirs {
        let staging = dir
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with('.'));
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = match OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
        {
            Ok(f) => f,
            // Removed by another process recovering it at the same time.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DatasetsError::io(&lock_path, e)),
        };
        match lock_file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => continue, // a live writer
            Err(TryLockError::Error(e)) => return Err(DatasetsError::io(&lock_path, e)),
        }
        if staging {
            // A writer died while opening: no segment was ever written there.
            remove_wal_dir(&dir)?;
            continue;
        }
        let writer_id = dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            // Recovered and removed by another process between our listing and our lock.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(DatasetsError::io(&dir, e)),
        };
        let mut segments = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| DatasetsError::io(&dir, e))?;
            if let Some(id) = parse_segment_file_name(&entry.file_name().to_string_lossy()) {
                segments.push(id);
            }
        }
        segments.sort_unstable();
        for id in segments {
            let path = dir.join(segment_file_name(id));
            let done = compact_segment(root, &dir, &writer_id, id, &path)?;
            recovery.segments += 1;
            recovery.rows += done.rows;
            recovery.torn_tails += usize::from(done.torn_tail);
            recovery.kept_tails.extend(done.kept_tail);
            recovery.files.extend(done.files);
        }
        remove_wal_dir(&dir)?;
        drop(lock_file);
        recovery.writers += 1;
    }
    if recovery.writers > 0 {
        tracing::info!(
            writers = recovery.writers,
            segments = recovery.segments,
            rows = recovery.rows,
            torn_tails = recovery.torn_tails,
            "recovered telemetry write-ahead logs"
        );
    }
    Ok(recovery)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_name_the_flag_and_the_supported_schemes() {
        assert_eq!(
            telemetry_location("--telemetry", "file:///var/telemetry")
                .expect("file url")
                .as_local(),
            Some(Path::new("/var/telemetry"))
        );
        let err = telemetry_location("--telemetry", "gs://bucket/telemetry").expect_err("gs");
        assert!(err.is_user_error());
        let message = err.to_string();
        assert!(
            message.contains("--telemetry") && message.contains("scheme `gs`"),
            "{message}"
        );
        let remote = telemetry_location("--telemetry", "s3://bucket/t").expect("s3");
        let spool = default_spool_dir(remote.as_remote().expect("remote"));
        assert!(
            spool.ends_with(sandstorm_storage::slug("s3://bucket/t")),
            "{}",
            spool.display()
        );
    }
}
