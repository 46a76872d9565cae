//! The lifecycle every adapter shares: create a sandbox, wait until it is ready, upload the
//! job's files, run the job under its wall-clock limit and the caller's cancel, and *always*
//! delete the sandbox — after success, failure, timeout or cancel. Each provider implements
//! [`Sandbox`] (its API calls); [`drive`] owns the order, the clocks, the output cap and the
//! measured sandbox lifetime that cost accounting needs.
//!
//! Also here: [`Bridge`], the adapters' own tokio runtime, which lets the synchronous
//! [`crate::RemoteProvider::run`] be called from a plain thread or a `spawn_blocking` thread
//! without ever calling `block_on` inside someone else's runtime.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use sandstorm_features::{Candidate, Language};
use sandstorm_runtime::{
    Availability, JobSpec, OutputStream, RunControl, RunResult, RunStatus, RuntimeError,
};

use crate::error::AdapterError;
use crate::{GpuUsage, RemoteRun, RunFailure, Usage};

/// How often a running job checks its [`RunControl`] for a cancel.
const CANCEL_POLL: Duration = Duration::from_millis(25);

/// Largest shell script passed inline (as one `sh -c` argument): Linux refuses a single
/// argument longer than 128 KiB (`MAX_ARG_STRLEN`), so files embedded in the script must fit
/// well below that.
pub(crate) const MAX_INLINE_SCRIPT_BYTES: usize = 96 * 1024;

/// Tries to delete a sandbox when the provider answers with a transient error.
const DELETE_ATTEMPTS: u32 = 3;

/// Pause before the second delete attempt (doubled before the third).
const DELETE_BACKOFF: Duration = Duration::from_millis(250);

/// Exit status of the script when it could not set up the job directory or its files.
pub(crate) const SETUP_FAILED_EXIT: i32 = 97;

/// The adapters' own async runtime. Work is spawned on it and the calling thread waits on a
/// plain channel, so callers need no runtime and an enclosing runtime is never blocked on.
pub(crate) struct Bridge {
    runtime: Option<tokio::runtime::Runtime>,
}

impl std::fmt::Debug for Bridge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bridge").finish_non_exhaustive()
    }
}

impl Bridge {
    pub(crate) fn new() -> Result<Arc<Self>, AdapterError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("sandstorm-adapters")
            .enable_all()
            .build()
            .map_err(|e| {
                AdapterError::Internal(format!("could not start the async runtime: {e}"))
            })?;
        Ok(Arc::new(Self {
            runtime: Some(runtime),
        }))
    }

    /// Runs `future` on the adapters' runtime and waits for it on this thread. Call it from
    /// synchronous code only (a plain thread or `spawn_blocking`), never from async code.
    pub(crate) fn run<F>(&self, future: F) -> Result<F::Output, AdapterError>
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        let runtime = self
            .runtime
            .as_ref()
            .ok_or_else(|| AdapterError::Internal("the async runtime was shut down".into()))?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        runtime.spawn(async move {
            let _ = tx.send(future.await);
        });
        rx.recv()
            .map_err(|_| AdapterError::Internal("an adapter task panicked".into()))
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        // Dropping a runtime blocks; shutting it down in the background never does, so the
        // providers can be dropped from async code too.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// How a job's process ended, as far as the provider tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Exit {
    pub(crate) code: Option<i32>,
    /// The provider killed it for memory (Kubernetes `OOMKilled`).
    pub(crate) oom: bool,
    /// The provider killed it at its own deadline (Kubernetes `DeadlineExceeded`).
    pub(crate) deadline: bool,
}

impl Exit {
    pub(crate) fn code(code: i32) -> Self {
        Self {
            code: Some(code),
            oom: false,
            deadline: false,
        }
    }
}

/// A provider adapter's state: its sandbox API once configured (or why it is not) and the
/// adapters' runtime. The REST adapters (E2B, Daytona, Morph) wrap one and differ only in
/// what they say is configured.
#[derive(Debug)]
pub(crate) struct Configured<S> {
    provider: &'static str,
    sandbox: Result<Arc<S>, String>,
    bridge: Arc<Bridge>,
}

impl<S: Sandbox> Configured<S> {
    /// `sandbox` is the configured API, or the reason it is not configured.
    pub(crate) fn new(
        provider: &'static str,
        sandbox: Result<S, String>,
        bridge: Arc<Bridge>,
    ) -> Self {
        Self {
            provider,
            sandbox: sandbox.map(Arc::new),
            bridge,
        }
    }

    /// Available with `detail` of the configured API, or unavailable with the reason.
    pub(crate) fn availability(&self, detail: impl FnOnce(&S) -> String) -> Availability {
        match &self.sandbox {
            Ok(s) => Availability::Available { detail: detail(s) },
            Err(reason) => Availability::Unavailable {
                reason: reason.clone(),
            },
        }
    }

    /// Runs `job` on the adapters' runtime through [`drive`]; refused when not configured.
    pub(crate) fn run(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
        control: &RunControl,
    ) -> Result<RemoteRun, RunFailure> {
        let sandbox = self
            .sandbox
            .as_ref()
            .map_err(|reason| AdapterError::NotConfigured {
                provider: self.provider.into(),
                reason: reason.clone(),
            })?;
        self.bridge.run(drive(
            Arc::clone(sandbox),
            candidate.clone(),
            job.clone(),
            control.clone(),
        ))?
    }
}

/// One provider's API calls, in lifecycle order.
pub(crate) trait Sandbox: Send + Sync + 'static {
    /// What a created sandbox is known by (its id and whatever the later calls need).
    type Handle: Send + Sync;

    fn provider(&self) -> &'static str;

    /// vCPUs and memory the sandbox is provisioned with for `job` (billed resources).
    fn provisioned(&self, job: &JobSpec) -> (f64, u64);

    /// Limits and isolation this provider applies, for `RunResult::enforced_limits`.
    fn enforced_limits(&self, candidate: &Candidate, job: &JobSpec) -> Vec<String>;

    /// Refuses what this provider cannot run before anything is created.
    fn check(&self, _candidate: &Candidate, _job: &JobSpec) -> Result<(), AdapterError> {
        Ok(())
    }

    /// The GPUs the sandbox is given for `job` (`None` for a CPU job), decided before anything
    /// is created. A job that asks for a GPU must never run without one, so the default refuses
    /// it: only an adapter that really asks its provider for GPUs overrides this.
    fn gpu(&self, _candidate: &Candidate, job: &JobSpec) -> Result<Option<GpuUsage>, AdapterError> {
        let provider = self.provider();
        refuse_gpu(
            provider,
            job,
            &format!("this adapter creates {provider} sandboxes without a GPU"),
        )
    }

    /// vCPUs and memory (MiB) the provider reports for the created sandbox, when it does;
    /// they replace [`Sandbox::provisioned`] in the usage.
    fn reported_resources(&self, _handle: &Self::Handle) -> Option<(f64, u64)> {
        None
    }

    /// Creates the sandbox; returns its handle and id.
    fn create(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
    ) -> impl Future<Output = Result<(Self::Handle, String), AdapterError>> + Send;

    /// Waits until the sandbox accepts work.
    fn wait_ready(
        &self,
        handle: &mut Self::Handle,
    ) -> impl Future<Output = Result<(), AdapterError>> + Send;

    /// Places the job's files (and inline code) in the sandbox. The default uploads nothing:
    /// for providers whose command carries the files (Kubernetes, Morph, Modal).
    fn upload(
        &self,
        _handle: &Self::Handle,
        _job: &JobSpec,
    ) -> impl Future<Output = Result<(), AdapterError>> + Send {
        std::future::ready(Ok(()))
    }

    /// Runs the job, passing its output to `output` as it arrives.
    fn exec(
        &self,
        handle: &Self::Handle,
        job: &JobSpec,
        output: &mut Output,
    ) -> impl Future<Output = Result<Exit, AdapterError>> + Send;

    /// Deletes the sandbox (and so kills whatever still runs in it).
    fn delete(
        &self,
        handle: &Self::Handle,
    ) -> impl Future<Output = Result<(), AdapterError>> + Send;
}

/// Output of one run: kept up to the job's cap per stream, passed to the control's observer
/// as it arrives (the observed chunks concatenated are exactly what is kept).
#[derive(Debug)]
pub(crate) struct Output {
    control: RunControl,
    cap: usize,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
    stdout_truncated: bool,
    stderr_truncated: bool,
}

impl Output {
    pub(crate) fn new(control: RunControl, cap: usize) -> Self {
        Self {
            control,
            cap,
            stdout: Vec::new(),
            stderr: Vec::new(),
            stdout_truncated: false,
            stderr_truncated: false,
        }
    }

    pub(crate) fn push(&mut self, stream: OutputStream, chunk: &[u8]) {
        let (kept, truncated) = match stream {
            OutputStream::Stdout => (&mut self.stdout, &mut self.stdout_truncated),
            OutputStream::Stderr => (&mut self.stderr, &mut self.stderr_truncated),
        };
        let room = self.cap.saturating_sub(kept.len());
        let take = chunk.len().min(room);
        if take < chunk.len() {
            *truncated = true;
        }
        if take > 0 {
            kept.extend_from_slice(&chunk[..take]);
            self.control.observe(stream, &chunk[..take]);
        }
    }
}

/// What ended the supervised part of a run.
enum Ending {
    Exited(Exit),
    TimedOut,
    Cancelled,
}

/// Resolves when `control` is cancelled (polled every [`CANCEL_POLL`]).
async fn cancelled(control: &RunControl) {
    while !control.is_cancelled() {
        tokio::time::sleep(CANCEL_POLL).await;
    }
}

/// Runs `future` unless `control` is cancelled first (`None`).
async fn until_cancelled<F: Future>(future: F, control: &RunControl) -> Option<F::Output> {
    tokio::select! {
        output = future => Some(output),
        () = cancelled(control) => None,
    }
}

/// Runs `future` until it finishes, `timeout` passes or `control` is cancelled.
async fn supervise<F: Future<Output = Result<Exit, AdapterError>>>(
    future: F,
    control: &RunControl,
    timeout: Duration,
) -> Result<Ending, AdapterError> {
    tokio::select! {
        exit = future => exit.map(Ending::Exited),
        () = tokio::time::sleep(timeout) => Ok(Ending::TimedOut),
        () = cancelled(control) => Ok(Ending::Cancelled),
    }
}

/// Runs `job` on `sandbox` through its whole lifecycle. The sandbox is deleted whatever
/// happens once it was created; its measured lifetime (create request sent → delete
/// answered) is in the returned [`Usage`], also when the run fails.
pub(crate) async fn drive<S: Sandbox>(
    sandbox: Arc<S>,
    candidate: Candidate,
    job: JobSpec,
    control: RunControl,
) -> Result<RemoteRun, RunFailure> {
    let provider = sandbox.provider();
    job.validate().map_err(|e| match e {
        RuntimeError::InvalidJob(reason) => AdapterError::InvalidJob(reason),
        other => AdapterError::Internal(other.to_string()),
    })?;
    if candidate.provider != provider {
        return Err(AdapterError::Unsupported {
            provider: provider.into(),
            reason: format!(
                "candidate `{}` belongs to provider `{}`",
                candidate.id, candidate.provider
            ),
        }
        .into());
    }
    sandbox.check(&candidate, &job)?;
    let gpu = sandbox.gpu(&candidate, &job)?;
    let clock = Clock::start();
    let (vcpu, memory_mib) = sandbox.provisioned(&job);
    let mut usage = Usage {
        provider: provider.to_owned(),
        sandbox_id: None,
        sandbox_seconds: 0.0,
        vcpu,
        memory_mib,
        gpu,
        deleted: false,
    };
    let mut output = Output::new(control.clone(), job.max_output_bytes);
    let limits = sandbox.enforced_limits(&candidate, &job);
    if control.is_cancelled() {
        let result = finish(&clock, None, None, output, Ending::Cancelled, limits);
        return Ok(RemoteRun { result, usage });
    }

    let created_at = Instant::now();
    let (mut handle, id) = sandbox.create(&candidate, &job).await?;
    tracing::info!(provider, sandbox = %id, candidate = %candidate.id, "sandbox created");
    usage.sandbox_id = Some(id.clone());

    let mut exec_started = None;
    let mut exec_ended = None;
    let outcome: Result<Ending, AdapterError> = async {
        if until_cancelled(sandbox.wait_ready(&mut handle), &control)
            .await
            .transpose()?
            .is_none()
        {
            return Ok(Ending::Cancelled);
        }
        if until_cancelled(sandbox.upload(&handle, &job), &control)
            .await
            .transpose()?
            .is_none()
        {
            return Ok(Ending::Cancelled);
        }
        exec_started = Some(Instant::now());
        let ending = supervise(
            sandbox.exec(&handle, &job, &mut output),
            &control,
            job.timeout,
        )
        .await;
        exec_ended = Some(Instant::now());
        ending
    }
    .await;

    if let Some((vcpu, memory_mib)) = sandbox.reported_resources(&handle) {
        usage.vcpu = vcpu;
        usage.memory_mib = memory_mib;
    }
    let mut attempt = 1;
    loop {
        match sandbox.delete(&handle).await {
            Ok(()) => {
                usage.deleted = true;
                tracing::info!(provider, sandbox = %id, "sandbox deleted");
                break;
            }
            Err(e) if e.retryable() && attempt < DELETE_ATTEMPTS => {
                tracing::warn!(provider, sandbox = %id, error = %e, attempt, "sandbox delete failed; retrying");
                tokio::time::sleep(DELETE_BACKOFF * attempt).await;
                attempt += 1;
            }
            Err(e) => {
                tracing::error!(provider, sandbox = %id, error = %e, "could not delete the sandbox; it lives until the provider's own timeout");
                break;
            }
        }
    }
    usage.sandbox_seconds = created_at.elapsed().as_secs_f64();

    match outcome {
        Ok(ending) => {
            let exec = exec_started.map(|s| (s, exec_ended.unwrap_or_else(Instant::now)));
            let result = finish(&clock, exec, Some(&id), output, ending, limits);
            Ok(RemoteRun { result, usage })
        }
        Err(error) => Err(RunFailure {
            error,
            usage: Some(Box::new(usage)),
        }),
    }
}

/// Wall clocks of one run.
struct Clock {
    started_at: time::OffsetDateTime,
    entered: Instant,
}

impl Clock {
    fn start() -> Self {
        Self {
            started_at: time::OffsetDateTime::now_utc(),
            entered: Instant::now(),
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn finish(
    clock: &Clock,
    exec: Option<(Instant, Instant)>,
    sandbox_id: Option<&str>,
    output: Output,
    ending: Ending,
    mut enforced_limits: Vec<String>,
) -> RunResult {
    let (status, exit_code, error_class) = match ending {
        Ending::Exited(exit) if exit.oom => (RunStatus::Oom, exit.code, Some("memory_limit")),
        Ending::Exited(exit) if exit.deadline => {
            (RunStatus::Timeout, exit.code, Some("wall_clock_timeout"))
        }
        Ending::Exited(Exit { code: Some(0), .. }) => (RunStatus::Ok, Some(0), None),
        Ending::Exited(Exit { code: Some(c), .. }) => {
            (RunStatus::Failed, Some(c), Some("exit_code"))
        }
        Ending::Exited(Exit { code: None, .. }) => (RunStatus::Failed, None, Some("killed")),
        Ending::TimedOut => (RunStatus::Timeout, None, Some("wall_clock_timeout")),
        Ending::Cancelled => (RunStatus::Failed, None, Some("cancelled")),
    };
    if let Some(id) = sandbox_id {
        enforced_limits.push(format!("sandbox_id={id}"));
    }
    let total = clock.entered.elapsed();
    let (start_ms, exec_ms) = match exec {
        Some((s, e)) => (ms(s - clock.entered), ms(e - s)),
        None => (ms(total), 0.0),
    };
    RunResult {
        status,
        exit_code,
        signal: None,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        stdout_truncated: output.stdout_truncated,
        stderr_truncated: output.stderr_truncated,
        started_at: clock.started_at,
        start_ms,
        exec_ms,
        total_ms: ms(total),
        peak_memory_mib: None,
        error_class: error_class.map(str::to_owned),
        enforced_limits,
    }
}

/// `Ok(None)` for a CPU job; for a GPU job, the refusal of `provider`, which cannot give one
/// because of `why` (e.g. "E2B sandboxes have no GPU").
pub(crate) fn refuse_gpu(
    provider: &str,
    job: &JobSpec,
    why: &str,
) -> Result<Option<GpuUsage>, AdapterError> {
    match &job.gpu {
        None => Ok(None),
        Some(gpu) => Err(AdapterError::Unsupported {
            provider: provider.into(),
            reason: format!("the job asks for {gpu}, but {why}"),
        }),
    }
}

/// `text` quoted for a POSIX shell.
pub(crate) fn sh_quote(text: &str) -> String {
    format!("'{}'", text.replace('\'', r"'\''"))
}

/// Name of the file inline code is written to, e.g. `main.py` (as the local runtime does).
pub(crate) fn code_file_name(language: Language) -> String {
    format!("main.{}", language.interpreter().1)
}

/// The shell command that runs `job` once its files are in the current directory: the
/// command under `/bin/sh -c`, or the language's interpreter on the inline code file.
pub(crate) fn run_line(job: &JobSpec) -> String {
    match &job.command {
        Some(command) => format!("exec /bin/sh -c {}", sh_quote(command)),
        None => format!(
            "exec {} {}",
            job.language.interpreter().0,
            code_file_name(job.language)
        ),
    }
}

/// Every file the job needs: its input files and, for inline code, the code file.
pub(crate) fn job_files(job: &JobSpec) -> Vec<(String, &str)> {
    let code = job
        .code
        .as_deref()
        .filter(|_| job.command.is_none())
        .map(|code| (code_file_name(job.language), code));
    code.into_iter()
        .chain(
            job.files
                .iter()
                .map(|f| (f.path.clone(), f.content.as_str())),
        )
        .collect()
}

/// A shell script that creates `workdir`, enters it, (when `embed_files`) writes the job's
/// files there from base64 embedded in the script, and runs the job. Set-up failures exit
/// with [`SETUP_FAILED_EXIT`].
pub(crate) fn job_script(
    provider: &str,
    job: &JobSpec,
    workdir: &str,
    embed_files: bool,
) -> Result<String, AdapterError> {
    job_script_within(provider, job, workdir, embed_files, MAX_INLINE_SCRIPT_BYTES)
}

/// [`job_script`] for a provider whose limit on the command is `max_bytes` (below
/// [`MAX_INLINE_SCRIPT_BYTES`]).
pub(crate) fn job_script_within(
    provider: &str,
    job: &JobSpec,
    workdir: &str,
    embed_files: bool,
    max_bytes: usize,
) -> Result<String, AdapterError> {
    use base64::Engine;
    let fail = format!("exit {SETUP_FAILED_EXIT}");
    let mut script = format!(
        "mkdir -p {dir} && cd {dir} || {fail}\n",
        dir = sh_quote(workdir)
    );
    if embed_files {
        for (path, content) in job_files(job) {
            let encoded = base64::engine::general_purpose::STANDARD.encode(content.as_bytes());
            let quoted = sh_quote(&path);
            script.push_str(&format!(
                "mkdir -p \"$(dirname {quoted})\" && printf '%s' '{encoded}' | base64 -d > {quoted} || {fail}\n"
            ));
        }
    }
    script.push_str(&run_line(job));
    script.push('\n');
    if script.len() > max_bytes {
        return Err(AdapterError::InvalidJob(format!(
            "{provider} receives files inline in the command, and this job's command and files \
             need {} bytes, more than the {max_bytes} allowed",
            script.len()
        )));
    }
    Ok(script)
}

/// A `wait`-phase timeout once `started` is `limit` old: a sandbox that is still not ready.
pub(crate) fn check_start_deadline(
    provider: &str,
    started: std::time::Instant,
    limit: std::time::Duration,
) -> Result<(), AdapterError> {
    let waited = started.elapsed();
    if waited >= limit {
        return Err(AdapterError::Timeout {
            provider: provider.into(),
            phase: crate::error::Phase::Wait,
            seconds: waited.as_secs_f64(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use sandstorm_features::{InputFile, RunRequest};
    use std::sync::Mutex;

    #[test]
    fn output_is_capped_and_observed_exactly() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&seen);
        let control = RunControl::with_output_observer(move |stream, chunk| {
            if let Ok(mut s) = sink.lock() {
                s.push((stream, chunk.to_vec()));
            }
        });
        let mut out = Output::new(control, 5);
        out.push(OutputStream::Stdout, b"abc");
        out.push(OutputStream::Stdout, b"defg");
        out.push(OutputStream::Stdout, b"h");
        out.push(OutputStream::Stderr, b"e");
        assert_eq!(out.stdout, b"abcde");
        assert!(out.stdout_truncated);
        assert!(!out.stderr_truncated);
        let seen = seen.lock().map(|s| s.clone()).unwrap_or_default();
        assert_eq!(
            seen,
            vec![
                (OutputStream::Stdout, b"abc".to_vec()),
                (OutputStream::Stdout, b"de".to_vec()),
                (OutputStream::Stderr, b"e".to_vec()),
            ]
        );
    }

    #[test]
    fn scripts_quote_commands_and_embed_files() {
        let mut request = RunRequest::command(Language::Sh, "echo 'hi' > out");
        request.files = vec![InputFile {
            path: "d/it's.txt".into(),
            content: "x".into(),
        }];
        let job = JobSpec::from_request(&request);
        let script = job_script("morph", &job, "/tmp/job", true).expect("script");
        assert!(script.starts_with("mkdir -p '/tmp/job' && cd '/tmp/job' || exit 97\n"));
        assert!(script.contains("printf '%s' 'eA==' | base64 -d > 'd/it'\\''s.txt'"));
        assert!(script.ends_with("exec /bin/sh -c 'echo '\\''hi'\\'' > out'\n"));
        let plain = job_script("e2b", &job, "/w", false).expect("script");
        assert!(!plain.contains("base64"));
    }

    #[test]
    fn inline_code_runs_with_the_interpreter_and_big_scripts_are_refused() {
        let mut request = RunRequest::command(Language::Python, "unused");
        request.command = None;
        request.code = Some("print(1)".into());
        let job = JobSpec::from_request(&request);
        assert_eq!(run_line(&job), "exec python3 main.py");
        assert_eq!(job_files(&job), vec![("main.py".to_owned(), "print(1)")]);
        let mut big = job.clone();
        big.code = Some("#".repeat(MAX_INLINE_SCRIPT_BYTES));
        let err = job_script("kubernetes", &big, "/w", true).expect_err("too big");
        assert!(err.is_user_error(), "{err}");
    }
}
