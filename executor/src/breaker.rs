//! Circuit breakers per provider × region ([`Breakers`]), optionally persisted to a JSON state
//! file so that separate processes (one `sandstorm run` after another, a `sandstorm route`)
//! share what they learned.
//!
//! A breaker is closed until [`BreakerConfig::failure_threshold`] consecutive attempts on its
//! key fail for infrastructure reasons; it is then open (candidates of the key are not
//! offered) for [`BreakerConfig::cooldown`]; after that it is half-open: one probe attempt is
//! let through, whose success closes the breaker and whose failure re-opens it for another
//! cooldown. An attempt that says nothing about the provider (an invalid job, a cancel) only
//! releases a probe.
//!
//! The state file holds, per key, the consecutive failures, when the breaker opened, the last
//! error class and when the entry last changed. It is read when [`Breakers`] is created
//! (missing: all closed; unreadable or corrupt: a warning and all closed) and rewritten
//! atomically (temporary file + rename) after every change, merged with what other processes
//! wrote meanwhile (per key, the entry changed last wins). A probe in flight is known only to
//! the process that sends it, so each process may send one probe per key.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use sandstorm_features::Candidate;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

/// The gauge of every breaker's state (0 closed, 1 half-open, 2 open), label `breaker` =
/// `provider/region`.
pub(crate) const BREAKER_STATE_METRIC: &str = "sandstorm_breaker_state";

/// Version of the state file's format.
const STATE_FILE_VERSION: u32 = 1;

/// When breakers open and how long they stay open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive infrastructure failures that open a breaker (at least 1).
    pub failure_threshold: u32,
    /// How long an open breaker refuses its key before letting one probe through.
    pub cooldown: Duration,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 3,
            cooldown: Duration::from_secs(30),
        }
    }
}

/// Where a breaker is in its cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Attempts pass.
    Closed,
    /// The cooldown is over: the next attempt is a probe (or a probe is in flight).
    HalfOpen,
    /// Attempts are refused until the cooldown is over.
    Open,
}

impl BreakerState {
    pub fn as_str(self) -> &'static str {
        match self {
            BreakerState::Closed => "closed",
            BreakerState::HalfOpen => "half_open",
            BreakerState::Open => "open",
        }
    }

    /// The value of the `sandstorm_breaker_state` gauge: 0 closed, 1 half-open, 2 open.
    pub fn gauge_value(self) -> f64 {
        match self {
            BreakerState::Closed => 0.0,
            BreakerState::HalfOpen => 1.0,
            BreakerState::Open => 2.0,
        }
    }
}

/// One breaker, for status output.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BreakerStatus {
    /// `provider/region`.
    pub key: String,
    pub state: BreakerState,
    /// Infrastructure failures since the last success.
    pub consecutive_failures: u32,
    /// Error class of the last failure (e.g. `quota`, `http_503`).
    pub last_error: Option<String>,
    /// When the breaker (last) opened; `None` while closed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub opened_at: Option<OffsetDateTime>,
    /// When an open breaker lets a probe through; `None` while closed.
    #[serde(with = "time::serde::rfc3339::option")]
    pub next_probe_at: Option<OffsetDateTime>,
}

/// One breaker's state, in memory and in the state file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Entry {
    consecutive_failures: u32,
    /// Set while open or half-open.
    #[serde(default, with = "time::serde::rfc3339::option")]
    opened_at: Option<OffsetDateTime>,
    #[serde(default)]
    last_error: Option<String>,
    /// When this entry last changed; the later entry wins when files are merged.
    #[serde(with = "time::serde::rfc3339")]
    updated_at: OffsetDateTime,
    /// This process sent the half-open probe and waits for its outcome.
    #[serde(skip)]
    probe_in_flight: bool,
}

impl Entry {
    fn closed(now: OffsetDateTime) -> Self {
        Self {
            consecutive_failures: 0,
            opened_at: None,
            last_error: None,
            updated_at: now,
            probe_in_flight: false,
        }
    }
}

/// The state file's document.
#[derive(Debug, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    breakers: BTreeMap<String, Entry>,
}

/// The circuit breakers of every `provider/region`. Cheap to clone; clones share state.
/// Thread-safe.
#[derive(Debug, Clone)]
pub struct Breakers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: BreakerConfig,
    path: Option<PathBuf>,
    entries: Mutex<BTreeMap<String, Entry>>,
    /// Serializes this process's writes of the state file, so that `entries` is never locked
    /// during file I/O (the router's filter reads it on every decision).
    io: Mutex<()>,
}

impl Breakers {
    /// Breakers kept in memory only (all closed).
    pub fn new(config: BreakerConfig) -> Self {
        Self::build(config, None, BTreeMap::new())
    }

    /// Breakers shared through the JSON file at `path`: loaded now (a missing file means all
    /// closed; an unreadable or corrupt one is ignored with a warning) and rewritten
    /// atomically after every change (creating its directory if needed).
    pub fn with_state_file(config: BreakerConfig, path: impl Into<PathBuf>) -> Self {
        let path = path.into();
        let entries = load(&path);
        Self::build(config, Some(path), entries)
    }

    fn build(
        mut config: BreakerConfig,
        path: Option<PathBuf>,
        entries: BTreeMap<String, Entry>,
    ) -> Self {
        config.failure_threshold = config.failure_threshold.max(1);
        let breakers = Self {
            inner: Arc::new(Inner {
                config,
                path,
                entries: Mutex::new(entries),
                io: Mutex::new(()),
            }),
        };
        breakers.publish_all();
        breakers
    }

    pub fn config(&self) -> &BreakerConfig {
        &self.inner.config
    }

    /// The state file, when there is one.
    pub fn state_file(&self) -> Option<&Path> {
        self.inner.path.as_deref()
    }

    /// The breaker key of a candidate: `provider/region`.
    pub fn key(candidate: &Candidate) -> String {
        format!("{}/{}", candidate.provider, candidate.region)
    }

    /// Why `candidate` must not be offered now because of its breaker, e.g. "circuit open
    /// for e2b/us-east after 3 consecutive failures (last: quota); next probe at
    /// 2026-11-30T02:10:00Z". `None` when the breaker is closed, or half-open with no probe
    /// in flight (the next attempt is the probe).
    pub fn unavailable_reason(&self, candidate: &Candidate) -> Option<String> {
        let key = Self::key(candidate);
        let entries = self.lock();
        let entry = entries.get(&key)?;
        self.refusal(&key, entry, OffsetDateTime::now_utc())
    }

    /// Every breaker that has seen a failure or a recovery, by key, and publishes each one's
    /// state to the `sandstorm_breaker_state` gauge.
    pub fn snapshot(&self) -> Vec<BreakerStatus> {
        let now = OffsetDateTime::now_utc();
        let entries = self.lock();
        entries
            .iter()
            .map(|(key, entry)| {
                let state = self.state(entry, now);
                publish(key, state);
                BreakerStatus {
                    key: key.clone(),
                    state,
                    consecutive_failures: entry.consecutive_failures,
                    last_error: entry.last_error.clone(),
                    opened_at: entry.opened_at,
                    next_probe_at: entry.opened_at.map(|t| self.next_probe_at(t)),
                }
            })
            .collect()
    }

    /// Asks to send an attempt to `candidate`: refused with the reason while its breaker is
    /// open (or half-open with a probe in flight); when the cooldown is over the permit is the
    /// half-open probe. The permit must be settled with the attempt's outcome; dropping it
    /// unsettled releases a probe.
    pub(crate) fn acquire(&self, candidate: &Candidate) -> Result<Permit<'_>, String> {
        let key = Self::key(candidate);
        let now = OffsetDateTime::now_utc();
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(&key) else {
            return Ok(Permit::new(self, key, false));
        };
        match self.state(entry, now) {
            BreakerState::Closed => Ok(Permit::new(self, key, false)),
            BreakerState::HalfOpen if !entry.probe_in_flight => {
                entry.probe_in_flight = true;
                tracing::info!(breaker = %key, "circuit half-open: sending a probe");
                publish(&key, BreakerState::HalfOpen);
                Ok(Permit::new(self, key, true))
            }
            BreakerState::HalfOpen | BreakerState::Open => Err(self
                .refusal(&key, entry, now)
                .unwrap_or_else(|| format!("circuit for {key} refused the attempt"))),
        }
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<String, Entry>> {
        self.inner
            .entries
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn state(&self, entry: &Entry, now: OffsetDateTime) -> BreakerState {
        match entry.opened_at {
            None => BreakerState::Closed,
            Some(_) if entry.probe_in_flight => BreakerState::HalfOpen,
            Some(t) if now >= self.next_probe_at(t) => BreakerState::HalfOpen,
            Some(_) => BreakerState::Open,
        }
    }

    fn next_probe_at(&self, opened_at: OffsetDateTime) -> OffsetDateTime {
        time::Duration::try_from(self.inner.config.cooldown)
            .ok()
            .and_then(|d| opened_at.checked_add(d))
            .unwrap_or(opened_at)
    }

    fn refusal(&self, key: &str, entry: &Entry, now: OffsetDateTime) -> Option<String> {
        let last = entry
            .last_error
            .as_deref()
            .map(|e| format!(" (last: {e})"))
            .unwrap_or_default();
        match (self.state(entry, now), entry.opened_at) {
            (BreakerState::Open, Some(opened)) => Some(format!(
                "circuit open for {key} after {} consecutive failures{last}; next probe at {}",
                entry.consecutive_failures,
                format_time(self.next_probe_at(opened))
            )),
            (BreakerState::HalfOpen, _) if entry.probe_in_flight => Some(format!(
                "circuit half-open for {key} after {} consecutive failures{last}: a probe run is in flight",
                entry.consecutive_failures
            )),
            _ => None,
        }
    }

    /// The attempt on `key` succeeded (the job ran): closes the breaker.
    fn record_success(&self, key: &str) {
        let now = OffsetDateTime::now_utc();
        let mut entries = self.lock();
        let Some(entry) = entries.get_mut(key) else {
            return; // never failed: nothing to record
        };
        let was = self.state(entry, now);
        let changed = entry.consecutive_failures > 0 || entry.opened_at.is_some();
        *entry = Entry::closed(now);
        if was != BreakerState::Closed {
            tracing::info!(breaker = %key, "circuit closed: the probe succeeded");
        }
        publish(key, BreakerState::Closed);
        drop(entries);
        if changed {
            self.persist(key);
        }
    }

    /// The attempt on `key` failed for infrastructure reasons (`class`: the error class).
    fn record_failure(&self, key: &str, class: &str) {
        let now = OffsetDateTime::now_utc();
        let threshold = self.inner.config.failure_threshold;
        let mut entries = self.lock();
        let entry = entries
            .entry(key.to_owned())
            .or_insert_with(|| Entry::closed(now));
        entry.consecutive_failures = entry.consecutive_failures.saturating_add(1);
        entry.last_error = Some(class.to_owned());
        entry.updated_at = now;
        if entry.opened_at.is_some() {
            // A failed probe (or a failure of an attempt that started before the breaker
            // opened): open for another cooldown.
            entry.opened_at = Some(now);
            entry.probe_in_flight = false;
            tracing::warn!(breaker = %key, class, failures = entry.consecutive_failures, "circuit re-opened");
        } else if entry.consecutive_failures >= threshold {
            entry.opened_at = Some(now);
            tracing::warn!(breaker = %key, class, failures = entry.consecutive_failures, "circuit opened");
        }
        let state = self.state(entry, now);
        publish(key, state);
        drop(entries);
        self.persist(key);
    }

    /// The attempt said nothing about the provider: releases a probe in flight.
    fn release(&self, key: &str) {
        if let Some(entry) = self.lock().get_mut(key) {
            entry.probe_in_flight = false;
        }
    }

    /// Writes every entry to the state file (if any), after adopting the entries of other
    /// keys that another process changed later than this one did. The file is read and
    /// written without holding the lock on the entries.
    fn persist(&self, changed: &str) {
        let Some(path) = &self.inner.path else {
            return;
        };
        let _io = self.inner.io.lock().unwrap_or_else(PoisonError::into_inner);
        let theirs = match read_state(path) {
            Ok(file) => file.map(|f| f.breakers).unwrap_or_default(),
            Err(e) => {
                tracing::debug!(path = %path.display(), error = %e, "replacing the breaker state file");
                BTreeMap::new()
            }
        };
        let breakers = {
            let mut entries = self.lock();
            for (key, theirs) in theirs {
                if key == changed {
                    continue;
                }
                let probe = match entries.get(&key) {
                    Some(ours) if ours.updated_at >= theirs.updated_at => continue,
                    Some(ours) => ours.probe_in_flight,
                    None => false,
                };
                entries.insert(
                    key,
                    Entry {
                        probe_in_flight: probe,
                        ..theirs
                    },
                );
            }
            entries.clone()
        };
        let doc = StateFile {
            version: STATE_FILE_VERSION,
            breakers,
        };
        if let Err(e) = write_atomically(path, &doc) {
            tracing::warn!(path = %path.display(), error = %e, "could not write the breaker state file");
        }
    }

    fn publish_all(&self) {
        let now = OffsetDateTime::now_utc();
        for (key, entry) in self.lock().iter() {
            publish(key, self.state(entry, now));
        }
    }
}

/// Leave to send one attempt through a breaker; settle it with the attempt's outcome.
#[derive(Debug)]
pub(crate) struct Permit<'a> {
    breakers: &'a Breakers,
    key: String,
    probe: bool,
    settled: bool,
}

impl<'a> Permit<'a> {
    fn new(breakers: &'a Breakers, key: String, probe: bool) -> Self {
        Self {
            breakers,
            key,
            probe,
            settled: false,
        }
    }

    /// Whether this attempt is the half-open probe.
    pub(crate) fn is_probe(&self) -> bool {
        self.probe
    }

    /// The provider ran the job.
    pub(crate) fn success(mut self) {
        self.settled = true;
        self.breakers.record_success(&self.key);
    }

    /// The attempt failed for infrastructure reasons.
    pub(crate) fn failure(mut self, class: &str) {
        self.settled = true;
        self.breakers.record_failure(&self.key, class);
    }

    /// The attempt says nothing about the provider (invalid job, cancel).
    pub(crate) fn neutral(mut self) {
        self.settled = true;
        self.breakers.release(&self.key);
    }
}

impl Drop for Permit<'_> {
    fn drop(&mut self) {
        if !self.settled {
            self.breakers.release(&self.key);
        }
    }
}

fn publish(key: &str, state: BreakerState) {
    metrics::gauge!(BREAKER_STATE_METRIC, "breaker" => key.to_owned()).set(state.gauge_value());
}

/// A timestamp for messages, to the second.
fn format_time(t: OffsetDateTime) -> String {
    let format =
        time::macros::format_description!("[year]-[month]-[day]T[hour]:[minute]:[second]Z");
    t.to_offset(time::UtcOffset::UTC)
        .format(&format)
        .unwrap_or_else(|_| t.to_string())
}

/// The state file's entries; empty (with a warning) when it cannot be used.
fn load(path: &Path) -> BTreeMap<String, Entry> {
    match read_state(path) {
        Ok(Some(file)) => {
            tracing::debug!(path = %path.display(), breakers = file.breakers.len(), "loaded breaker state");
            file.breakers
        }
        Ok(None) => BTreeMap::new(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "ignoring the breaker state file; all breakers start closed");
            BTreeMap::new()
        }
    }
}

/// Reads the state file: `None` when it does not exist, `Err` when it is unreadable, corrupt
/// or of another version.
fn read_state(path: &Path) -> Result<Option<StateFile>, String> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read it: {e}")),
    };
    let file: StateFile =
        serde_json::from_str(&text).map_err(|e| format!("it is not a breaker state file: {e}"))?;
    if file.version != STATE_FILE_VERSION {
        return Err(format!(
            "it has format version {}, this build reads version {STATE_FILE_VERSION}",
            file.version
        ));
    }
    Ok(Some(file))
}

/// Writes `doc` to a temporary file next to `path` and renames it over `path`.
fn write_atomically(path: &Path, doc: &StateFile) -> std::io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let json = serde_json::to_vec_pretty(doc).map_err(std::io::Error::other)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".breakers-")
        .suffix(".tmp")
        .tempfile_in(dir)?;
    tmp.write_all(&json)?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstorm_features::Catalog;

    fn candidate(provider: &str) -> Candidate {
        Catalog::default_catalog()
            .candidates()
            .into_iter()
            .find(|c| c.provider == provider)
            .expect("provider in the default catalog")
    }

    fn config(cooldown_ms: u64) -> BreakerConfig {
        BreakerConfig {
            failure_threshold: 2,
            cooldown: Duration::from_millis(cooldown_ms),
        }
    }

    fn fail(b: &Breakers, c: &Candidate) {
        b.acquire(c)
            .expect("breaker lets the attempt through")
            .failure("http_503");
    }

    #[test]
    fn opens_after_consecutive_failures_and_a_success_resets_the_count() {
        let b = Breakers::new(config(60_000));
        let e2b = candidate("e2b");
        fail(&b, &e2b);
        b.acquire(&e2b).expect("closed").success();
        fail(&b, &e2b);
        assert_eq!(
            b.unavailable_reason(&e2b),
            None,
            "one failure after a success"
        );
        fail(&b, &e2b);
        let reason = b.unavailable_reason(&e2b).expect("open");
        let key = Breakers::key(&e2b);
        assert!(
            reason.starts_with(&format!(
                "circuit open for {key} after 2 consecutive failures (last: http_503); next probe at "
            )),
            "{reason}"
        );
        assert_eq!(b.acquire(&e2b).map(|_| ()), Err(reason));
        let status = &b.snapshot()[0];
        assert_eq!(status.state, BreakerState::Open);
        assert_eq!(status.consecutive_failures, 2);
        assert!(status.next_probe_at > status.opened_at);
        // Other keys are not affected.
        assert_eq!(b.unavailable_reason(&candidate("daytona")), None);
    }

    #[test]
    fn half_open_allows_one_probe_whose_failure_reopens() {
        let b = Breakers::new(config(50));
        let e2b = candidate("e2b");
        fail(&b, &e2b);
        fail(&b, &e2b);
        assert!(b.unavailable_reason(&e2b).is_some());
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(b.unavailable_reason(&e2b), None, "cooldown over: offer it");
        assert_eq!(b.snapshot()[0].state, BreakerState::HalfOpen);
        let probe = b.acquire(&e2b).expect("the probe");
        assert!(probe.is_probe());
        let second = b
            .acquire(&e2b)
            .map(|_| ())
            .expect_err("one probe at a time");
        assert!(second.contains("a probe run is in flight"), "{second}");
        probe.failure("quota");
        let reason = b.unavailable_reason(&e2b).expect("re-opened");
        assert!(
            reason.contains("after 3 consecutive failures (last: quota)"),
            "{reason}"
        );
        std::thread::sleep(Duration::from_millis(80));
        b.acquire(&e2b).expect("next probe").success();
        assert_eq!(b.snapshot()[0].state, BreakerState::Closed);
        assert_eq!(b.snapshot()[0].consecutive_failures, 0);
    }

    #[test]
    fn an_unsettled_or_neutral_probe_is_released() {
        let b = Breakers::new(config(10));
        let e2b = candidate("e2b");
        fail(&b, &e2b);
        fail(&b, &e2b);
        std::thread::sleep(Duration::from_millis(30));
        drop(b.acquire(&e2b).expect("probe"));
        b.acquire(&e2b).expect("probe released by drop").neutral();
        assert!(b.acquire(&e2b).expect("probe released").is_probe());
    }

    #[test]
    fn state_file_merges_keys_changed_by_another_process() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("nested").join("breakers.json");
        let a = Breakers::with_state_file(config(60_000), &path);
        let b = Breakers::with_state_file(config(60_000), &path);
        let e2b = candidate("e2b");
        let daytona = candidate("daytona");
        fail(&a, &e2b);
        fail(&a, &e2b);
        // `b` never saw e2b fail; its write about daytona keeps a's e2b entry.
        fail(&b, &daytona);
        let c = Breakers::with_state_file(config(60_000), &path);
        assert!(c.unavailable_reason(&e2b).is_some());
        let snapshot = c.snapshot();
        assert_eq!(snapshot.len(), 2);
        assert_eq!(
            snapshot.iter().map(|s| s.consecutive_failures).sum::<u32>(),
            3
        );
        // No temporary files are left behind.
        let names: Vec<_> = std::fs::read_dir(path.parent().expect("parent"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("breakers.json")]);
    }

    #[test]
    fn a_file_of_another_version_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("breakers.json");
        std::fs::write(&path, r#"{"version": 99, "breakers": {}}"#).expect("write");
        assert!(
            read_state(&path)
                .expect_err("version")
                .contains("version 99")
        );
        let b = Breakers::with_state_file(config(60_000), &path);
        assert!(b.snapshot().is_empty());
    }
}
