//! [`RunControl`]: what a caller can do to a job while it runs on another thread — cancel it
//! (SIGKILL to its whole process group, exactly like the wall-clock limit) and watch its output
//! as it is produced (for streaming logs).
//!
//! The supervisor attaches the child's process group to the control right after spawning it
//! and detaches it before reaping the child, so a cancel never signals a process group id
//! that could have been reused.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};

use crate::sys;

/// Which output stream a chunk came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum OutputStream {
    Stdout,
    Stderr,
}

impl OutputStream {
    pub fn as_str(self) -> &'static str {
        match self {
            OutputStream::Stdout => "stdout",
            OutputStream::Stderr => "stderr",
        }
    }
}

/// Called with each chunk of output the job writes, up to the job's output cap (the chunks
/// concatenated are exactly `RunResult::stdout` / `stderr`, before lossy UTF-8 decoding).
/// Runs on the supervisor's reader threads: it must be quick and must not block.
pub type OutputObserver = Arc<dyn Fn(OutputStream, &[u8]) + Send + Sync>;

/// A handle to one run: cancel it from any thread, observe its output. Clones share state.
#[derive(Clone, Default)]
pub struct RunControl {
    state: Arc<Mutex<State>>,
    observer: Option<OutputObserver>,
}

#[derive(Debug, Default)]
struct State {
    cancelled: bool,
    /// The running job's process group, while it may be signalled.
    pgid: Option<libc::pid_t>,
    /// A cancel killed (or prevented) the job.
    killed: bool,
}

impl fmt::Debug for RunControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RunControl")
            .field("state", &*self.lock())
            .field("observer", &self.observer.is_some())
            .finish()
    }
}

impl RunControl {
    /// A control without an output observer.
    pub fn new() -> Self {
        Self::default()
    }

    /// A control that passes every chunk of output to `observer` as it is read.
    pub fn with_output_observer(
        observer: impl Fn(OutputStream, &[u8]) + Send + Sync + 'static,
    ) -> Self {
        Self {
            state: Arc::default(),
            observer: Some(Arc::new(observer)),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Cancels the run: kills its whole process group now if it is running, or makes it end
    /// as soon as it is spawned. The run then reports status `failed` with error class
    /// `cancelled`. Cancelling twice, or after the run ended, does nothing more.
    pub fn cancel(&self) {
        let mut state = self.lock();
        state.cancelled = true;
        if let Some(pgid) = state.pgid {
            match sys::kill_group(pgid) {
                Ok(_) => state.killed = true,
                Err(e) => tracing::error!(pgid, error = %e, "could not kill a cancelled run"),
            }
        }
    }

    /// Whether [`RunControl::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.lock().cancelled
    }

    /// Registers the spawned job's group. Returns `false` when the run was already cancelled:
    /// the caller must kill the group itself.
    pub(crate) fn attach(&self, pgid: libc::pid_t) -> bool {
        let mut state = self.lock();
        if state.cancelled {
            state.killed = true;
            return false;
        }
        state.pgid = Some(pgid);
        true
    }

    /// Forgets the group; must happen before the group leader is reaped.
    pub(crate) fn detach(&self) {
        self.lock().pgid = None;
    }

    /// Whether a cancel killed the job (or stopped it right after its spawn).
    pub(crate) fn killed(&self) -> bool {
        self.lock().killed
    }

    /// Passes one chunk of the job's output to the observer, if there is one (empty chunks are
    /// dropped). Backends call it as output arrives; executors outside this crate (remote
    /// provider adapters) use it to stream their output through the same control.
    pub fn observe(&self, stream: OutputStream, chunk: &[u8]) {
        if let Some(observer) = &self.observer
            && !chunk.is_empty()
        {
            observer(stream, chunk);
        }
    }
}

/// Detaches the control when supervision ends, whichever way it ends.
pub(crate) struct Attached<'a>(pub(crate) &'a RunControl);

impl Drop for Attached<'_> {
    fn drop(&mut self) {
        self.0.detach();
    }
}
