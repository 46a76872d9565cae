//! The in-memory run registry: each [`Run`] has its tenant, state, result, and a log (the
//! program's output as it is produced, plus state changes) kept in a buffer and broadcast to
//! live listeners (SSE, MCP). Finished runs beyond `max_retained_runs` are forgotten, oldest
//! first.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock};

use sandstorm_runtime::{OutputStream, RunControl, RunResult};
use serde::Serialize;
use time::OffsetDateTime;
use tokio::sync::{broadcast, watch};
use utoipa::ToSchema;

/// Events buffered for late SSE subscribers beyond which live listeners may lag.
const BROADCAST_CAPACITY: usize = 1024;

/// Where a run is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// Accepted, waiting for an executor thread.
    Queued,
    /// The program is running.
    Running,
    /// The program ran to an end; `result.status` says how it went (ok, failed, timeout, ...).
    Completed,
    /// Cancelled by `DELETE /v1/runs/{id}` (or by shutdown); the process group was killed.
    Cancelled,
    /// The run could not be started at all (`error` says why).
    Error,
}

impl RunState {
    pub fn is_final(self) -> bool {
        matches!(
            self,
            RunState::Completed | RunState::Cancelled | RunState::Error
        )
    }

    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Queued => "queued",
            RunState::Running => "running",
            RunState::Completed => "completed",
            RunState::Cancelled => "cancelled",
            RunState::Error => "error",
        }
    }
}

/// One log entry: a chunk of output or a state change.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct LogEvent {
    /// Position in the run's log, from 0.
    pub seq: u64,
    /// `stdout`, `stderr`, or `state` (then `data` is the new state).
    pub kind: &'static str,
    pub data: String,
}

/// What `GET /v1/runs/{id}` returns.
#[derive(Debug, Clone, Serialize, ToSchema)]
pub struct RunView {
    pub run_id: String,
    pub tenant: String,
    pub state: RunState,
    pub decision_id: String,
    /// The candidate the run executes on.
    pub candidate: String,
    #[serde(with = "time::serde::rfc3339")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: OffsetDateTime,
    #[serde(with = "time::serde::rfc3339::option")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub finished_at: Option<OffsetDateTime>,
    /// The program's outcome, once it ran.
    #[schema(value_type = Option<Object>)]
    pub result: Option<RunResult>,
    /// Why the run could not be started (state `error`).
    pub error: Option<String>,
    /// The telemetry file the run's row went to, if telemetry is configured: the write-ahead
    /// log segment where it is durable (compacted into `date=YYYY-MM-DD/` Parquet later).
    pub telemetry_file: Option<String>,
}

#[derive(Debug)]
struct Inner {
    state: RunState,
    finished_at: Option<OffsetDateTime>,
    result: Option<RunResult>,
    error: Option<String>,
    telemetry_file: Option<String>,
    log: Vec<LogEvent>,
    /// Incomplete UTF-8 sequences at the end of the last chunk of each stream.
    pending: [Vec<u8>; 2],
}

/// One run.
#[derive(Debug)]
pub struct Run {
    pub(crate) id: String,
    pub(crate) tenant: String,
    pub(crate) decision_id: String,
    pub(crate) candidate: String,
    pub(crate) created_at: OffsetDateTime,
    pub(crate) control: RunControl,
    inner: Mutex<Inner>,
    events: broadcast::Sender<LogEvent>,
    done: watch::Sender<bool>,
}

impl Run {
    /// A queued run whose output goes into its own log.
    pub(crate) fn new(tenant: &str, decision_id: &str, candidate: &str) -> Arc<Self> {
        Arc::new_cyclic(|weak: &std::sync::Weak<Run>| {
            let weak = weak.clone();
            let control = RunControl::with_output_observer(move |stream, chunk| {
                if let Some(run) = weak.upgrade() {
                    run.output(stream, chunk);
                }
            });
            let (events, _) = broadcast::channel(BROADCAST_CAPACITY);
            Run {
                id: uuid::Uuid::new_v4().to_string(),
                tenant: tenant.to_owned(),
                decision_id: decision_id.to_owned(),
                candidate: candidate.to_owned(),
                created_at: OffsetDateTime::now_utc(),
                control,
                inner: Mutex::new(Inner {
                    state: RunState::Queued,
                    finished_at: None,
                    result: None,
                    error: None,
                    telemetry_file: None,
                    log: Vec::new(),
                    pending: [Vec::new(), Vec::new()],
                }),
                events,
                done: watch::channel(false).0,
            }
        })
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn state(&self) -> RunState {
        self.lock().state
    }

    /// Appends an event to the log and broadcasts it; the caller holds the lock, so every
    /// listener sees events in log order exactly once (see [`Run::subscribe`]).
    fn push(&self, inner: &mut Inner, kind: &'static str, data: String) {
        let event = LogEvent {
            seq: inner.log.len() as u64,
            kind,
            data,
        };
        inner.log.push(event.clone());
        // No receiver is fine: nobody is streaming this run right now.
        let _ = self.events.send(event);
    }

    fn output(&self, stream: OutputStream, chunk: &[u8]) {
        let mut inner = self.lock();
        let slot = match stream {
            OutputStream::Stdout => 0,
            OutputStream::Stderr => 1,
        };
        let mut bytes = std::mem::take(&mut inner.pending[slot]);
        bytes.extend_from_slice(chunk);
        let (text, rest) = decode_utf8_prefix(&bytes);
        inner.pending[slot] = rest.to_vec();
        if !text.is_empty() {
            self.push(&mut inner, stream.as_str(), text);
        }
    }

    /// Moves the run to `state` (not from a final state) and logs it.
    pub(crate) fn set_state(&self, state: RunState) {
        let mut inner = self.lock();
        if inner.state.is_final() {
            return;
        }
        inner.state = state;
        self.push(&mut inner, "state", state.as_str().to_owned());
    }

    /// Records the end of the run and wakes everyone waiting for it.
    pub(crate) fn finish(
        &self,
        state: RunState,
        result: Option<RunResult>,
        error: Option<String>,
        telemetry_file: Option<String>,
    ) {
        {
            let mut inner = self.lock();
            if inner.state.is_final() {
                return;
            }
            for slot in 0..2 {
                let rest = std::mem::take(&mut inner.pending[slot]);
                if !rest.is_empty() {
                    let kind = if slot == 0 { "stdout" } else { "stderr" };
                    self.push(
                        &mut inner,
                        kind,
                        String::from_utf8_lossy(&rest).into_owned(),
                    );
                }
            }
            inner.state = state;
            inner.finished_at = Some(OffsetDateTime::now_utc());
            inner.result = result;
            inner.error = error;
            inner.telemetry_file = telemetry_file;
            self.push(&mut inner, "state", state.as_str().to_owned());
        }
        self.done.send_replace(true);
    }

    pub fn view(&self) -> RunView {
        let inner = self.lock();
        RunView {
            run_id: self.id.clone(),
            tenant: self.tenant.clone(),
            state: inner.state,
            decision_id: self.decision_id.clone(),
            candidate: self.candidate.clone(),
            created_at: self.created_at,
            finished_at: inner.finished_at,
            result: inner.result.clone(),
            error: inner.error.clone(),
            telemetry_file: inner.telemetry_file.clone(),
        }
    }

    /// The log so far and a receiver of every later event (no gap, no duplicate), plus
    /// whether the run has already finished (then nothing more will come).
    pub(crate) fn subscribe(&self) -> (Vec<LogEvent>, broadcast::Receiver<LogEvent>, bool) {
        let inner = self.lock();
        (
            inner.log.clone(),
            self.events.subscribe(),
            inner.state.is_final(),
        )
    }

    /// The output so far, stdout then stderr, as text.
    pub fn output_text(&self) -> (String, String) {
        let inner = self.lock();
        let mut out = (String::new(), String::new());
        for e in &inner.log {
            match e.kind {
                "stdout" => out.0.push_str(&e.data),
                "stderr" => out.1.push_str(&e.data),
                _ => {}
            }
        }
        out
    }

    /// Waits until the run is finished.
    pub async fn wait(&self) {
        let mut rx = self.done.subscribe();
        // An error means the sender is gone, which only happens with the run itself.
        let _ = rx.wait_for(|done| *done).await;
    }
}

/// Splits `bytes` into the longest valid UTF-8 text (invalid sequences replaced) and an
/// incomplete sequence at the end, kept for the next chunk.
fn decode_utf8_prefix(bytes: &[u8]) -> (String, &[u8]) {
    let mut text = String::new();
    let mut rest = bytes;
    loop {
        match std::str::from_utf8(rest) {
            Ok(s) => {
                text.push_str(s);
                return (text, &[]);
            }
            Err(e) => {
                let (valid, after) = rest.split_at(e.valid_up_to());
                text.push_str(&String::from_utf8_lossy(valid));
                match e.error_len() {
                    None => return (text, after),
                    Some(n) => {
                        text.push(char::REPLACEMENT_CHARACTER);
                        rest = after.get(n..).unwrap_or_default();
                    }
                }
            }
        }
    }
}

/// All runs this process knows, by id.
#[derive(Debug)]
pub(crate) struct Registry {
    runs: RwLock<HashMap<String, Arc<Run>>>,
    order: Mutex<VecDeque<String>>,
    max_retained: usize,
}

impl Registry {
    pub(crate) fn new(max_retained: usize) -> Self {
        Self {
            runs: RwLock::default(),
            order: Mutex::default(),
            max_retained: max_retained.max(1),
        }
    }

    pub(crate) fn insert(&self, run: Arc<Run>) {
        let id = run.id.clone();
        self.runs
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id.clone(), run);
        let mut order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        order.push_back(id);
        if order.len() > self.max_retained {
            // Forget the oldest finished runs; running ones are kept whatever the count.
            let mut runs = self.runs.write().unwrap_or_else(PoisonError::into_inner);
            let mut excess = order.len() - self.max_retained;
            order.retain(|id| {
                if excess > 0 && runs.get(id).is_none_or(|r| r.state().is_final()) {
                    runs.remove(id);
                    excess -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }

    /// The run `id` if it belongs to `tenant` (`None` for every other tenant, so a tenant
    /// cannot even learn that another tenant's run exists).
    pub(crate) fn get(&self, id: &str, tenant: Option<&str>) -> Option<Arc<Run>> {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        runs.get(id)
            .filter(|r| tenant.is_none_or(|t| r.tenant == t))
            .cloned()
    }

    /// Runs not finished yet.
    pub(crate) fn active(&self) -> Vec<Arc<Run>> {
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        runs.values()
            .filter(|r| !r.state().is_final())
            .cloned()
            .collect()
    }

    /// Every run of `tenant` (all runs for `None`), newest first.
    pub(crate) fn list(&self, tenant: Option<&str>) -> Vec<Arc<Run>> {
        let order = self.order.lock().unwrap_or_else(PoisonError::into_inner);
        let runs = self.runs.read().unwrap_or_else(PoisonError::into_inner);
        order
            .iter()
            .rev()
            .filter_map(|id| runs.get(id))
            .filter(|r| tenant.is_none_or(|t| r.tenant == t))
            .cloned()
            .collect()
    }
}

/// The run's log as server-sent events: every past event, then live ones, ending after the
/// final state. A listener too slow for the live stream gets one `lagged` event.
pub(crate) fn sse_logs(
    run: &Run,
) -> axum::response::sse::Sse<
    impl futures_util::Stream<Item = Result<axum::response::sse::Event, std::convert::Infallible>>
    + use<>,
> {
    use axum::response::sse::{Event, KeepAlive, Sse};
    use tokio::sync::broadcast::error::RecvError;
    let (past, rx, finished) = run.subscribe();
    let stream = futures_util::stream::unfold(
        (past.into_iter(), rx, finished, false),
        |(mut past, mut rx, finished, mut ended)| async move {
            if ended {
                return None;
            }
            let event = match past.next() {
                Some(e) => e,
                None if finished => return None,
                None => match rx.recv().await {
                    Ok(e) => e,
                    Err(RecvError::Lagged(n)) => LogEvent {
                        seq: u64::MAX,
                        kind: "lagged",
                        data: format!("{n} events were dropped for this slow listener"),
                    },
                    Err(RecvError::Closed) => return None,
                },
            };
            if event.kind == "state"
                && matches!(event.data.as_str(), "completed" | "cancelled" | "error")
            {
                ended = true;
            }
            let mut sse = Event::default().event(event.kind).data(event.data);
            if event.seq != u64::MAX {
                sse = sse.id(event.seq.to_string());
            }
            Some((Ok(sse), (past, rx, finished, ended)))
        },
    );
    Sse::new(stream).keep_alive(KeepAlive::default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_split_across_chunks_is_joined() {
        let snow = "é☃".as_bytes();
        let (a, rest) = decode_utf8_prefix(&snow[..3]);
        assert_eq!(a, "é");
        assert_eq!(rest, &snow[2..3]);
        let mut joined = rest.to_vec();
        joined.extend_from_slice(&snow[3..]);
        assert_eq!(decode_utf8_prefix(&joined), ("☃".to_owned(), &[][..]));
        assert_eq!(decode_utf8_prefix(b"a\xffb").0, "a\u{fffd}b");
    }

    #[test]
    fn log_is_ordered_and_subscribers_miss_nothing() {
        let run = Run::new("t", "d", "c");
        run.output(OutputStream::Stdout, b"hello ");
        let (past, mut rx, done) = run.subscribe();
        assert!(!done);
        run.output(OutputStream::Stdout, b"world");
        run.finish(RunState::Completed, None, None, None);
        assert_eq!(past.len(), 1);
        assert_eq!(rx.try_recv().unwrap().data, "world");
        assert_eq!(rx.try_recv().unwrap().data, "completed");
        assert_eq!(run.output_text().0, "hello world");
        // A final state is final.
        run.set_state(RunState::Running);
        assert_eq!(run.state(), RunState::Completed);
    }

    #[test]
    fn registry_hides_other_tenants_and_forgets_old_finished_runs() {
        let reg = Registry::new(2);
        let a = Run::new("a", "d", "c");
        a.finish(RunState::Completed, None, None, None);
        let id_a = a.id.clone();
        reg.insert(a);
        assert!(reg.get(&id_a, Some("b")).is_none());
        assert!(reg.get(&id_a, Some("a")).is_some());
        let running = Run::new("a", "d", "c");
        let id_running = running.id.clone();
        reg.insert(running);
        reg.insert(Run::new("a", "d", "c"));
        assert!(
            reg.get(&id_a, None).is_none(),
            "oldest finished run forgotten"
        );
        assert!(reg.get(&id_running, None).is_some());
        assert_eq!(reg.list(Some("a")).len(), 2);
    }
}
