//! The job to run ([`JobSpec`]) and its working directory ([`PreparedJob`]): a fresh temporary
//! directory holding the request's files and, for inline code, `main.<ext>`, plus the argument
//! vector that runs it there.

use std::collections::BTreeSet;
use std::fs;
use std::io::Write;
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sandstorm_features::{GpuRequest, InputFile, IsolationBackend, Language, RunRequest};

use crate::error::RuntimeError;

/// Output kept per stream when a request does not say otherwise: 1 MiB.
pub(crate) const DEFAULT_MAX_OUTPUT_BYTES: usize = 1024 * 1024;

/// `PATH` inside every job, and where interpreters are looked up.
pub(crate) const SEARCH_PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// The shell that runs `command` jobs.
pub(crate) const SHELL: &str = "/bin/sh";

/// Everything a backend needs to run one job.
#[derive(Debug, Clone, PartialEq)]
pub struct JobSpec {
    /// Language of the code; picks the interpreter for inline `code`.
    pub language: Language,
    /// A shell command line, run with `/bin/sh -c` in the job directory.
    pub command: Option<String>,
    /// Inline code, written to `main.<ext>` and run with the language's interpreter.
    pub code: Option<String>,
    /// Files placed in the job directory before the run.
    pub files: Vec<InputFile>,
    /// vCPUs granted; sets the CPU-time budget (not a rate limit, see the crate docs).
    pub cpu: f64,
    /// Memory in MiB; sets the data-segment limit.
    pub memory_mib: u64,
    /// GPUs the job needs (`None`: a CPU job). The local backends have no GPU and refuse a job
    /// that asks for one; so do remote adapters whose sandboxes have none.
    pub gpu: Option<GpuRequest>,
    /// Wall-clock limit; the whole process group is killed when it passes.
    pub timeout: Duration,
    /// Whether the job may use the network (only sandboxing backends can refuse it).
    pub allow_network: bool,
    /// Bytes of stdout and of stderr kept (each); the rest is read and discarded.
    pub max_output_bytes: usize,
}

impl JobSpec {
    /// The job a request describes, keeping at most 1 MiB of each output stream.
    pub fn from_request(r: &RunRequest) -> Self {
        Self {
            language: r.language,
            command: r.command.clone(),
            code: r.code.clone(),
            files: r.files.clone(),
            cpu: r.resources.cpu,
            memory_mib: r.resources.memory_mib,
            gpu: r.resources.gpu.clone(),
            // A validated request has a finite positive timeout; anything else becomes zero
            // and is refused by `validate`.
            timeout: Duration::try_from_secs_f64(r.timeout_s).unwrap_or(Duration::ZERO),
            allow_network: r.allow_network,
            max_output_bytes: DEFAULT_MAX_OUTPUT_BYTES,
        }
    }

    /// Refuses a job that asks for a GPU on `backend`, a local backend: none of them has one,
    /// and running the job without its GPU would be wrong.
    pub(crate) fn refuse_gpu(&self, backend: IsolationBackend) -> Result<(), RuntimeError> {
        match &self.gpu {
            None => Ok(()),
            Some(gpu) => Err(RuntimeError::Unsupported {
                backend,
                reason: format!("the job asks for {gpu}, and local backends have no GPU"),
            }),
        }
    }

    /// Name of the file inline code is written to, e.g. `main.py`.
    fn code_file_name(&self) -> String {
        format!("main.{}", self.language.interpreter().1)
    }

    /// Checks the rules every backend relies on; a broken rule is the caller's error.
    pub fn validate(&self) -> Result<(), RuntimeError> {
        let invalid = |m: String| Err(RuntimeError::InvalidJob(m));
        match (&self.command, &self.code) {
            (None, None) => return invalid("either `command` or `code` is required".into()),
            (Some(_), Some(_)) => {
                return invalid("give either `command` or `code`, not both".into());
            }
            (Some(text), None) | (None, Some(text)) if text.trim().is_empty() => {
                return invalid("`command` or `code` must not be empty".into());
            }
            _ => {}
        }
        if self.timeout.is_zero() {
            return invalid("timeout must be positive".into());
        }
        if !(self.cpu.is_finite() && self.cpu > 0.0) {
            return invalid(format!("cpu must be a positive number, got {}", self.cpu));
        }
        if self.memory_mib == 0 {
            return invalid("memory_mib must be positive".into());
        }
        if self.gpu.as_ref().is_some_and(|g| g.count == 0) {
            return invalid("gpu count must be positive (leave `gpu` out for a CPU job)".into());
        }
        let mut paths = BTreeSet::new();
        if self.code.is_some() {
            paths.insert(PathBuf::from(self.code_file_name()));
        }
        for (i, file) in self.files.iter().enumerate() {
            let path = Path::new(&file.path);
            let safe = !file.path.is_empty()
                && path.components().all(|c| matches!(c, Component::Normal(_)));
            if !safe {
                return invalid(format!(
                    "files[{i}].path `{}` must be a relative path without `..`",
                    file.path
                ));
            }
            // Compare normalised paths so `a//b` and `a/b` collide.
            let normal: PathBuf = path.components().collect();
            if !paths.insert(normal.clone()) {
                return invalid(format!(
                    "files[{i}].path `{}` names a file twice (or the inline code file)",
                    file.path
                ));
            }
        }
        for path in &paths {
            if let Some(dir) = path.ancestors().skip(1).find(|a| paths.contains(*a)) {
                return invalid(format!(
                    "`{}` is both a file and the directory of `{}`",
                    dir.display(),
                    path.display()
                ));
            }
        }
        Ok(())
    }
}

/// A job directory filled with the job's files, and the command that runs the job in it.
/// The directory is removed by [`PreparedJob::close`] (or when dropped).
#[derive(Debug)]
pub(crate) struct PreparedJob {
    dir: tempfile::TempDir,
    program: String,
    args: Vec<String>,
}

impl PreparedJob {
    /// Creates the directory and writes the files. `job` must have passed `validate`.
    pub(crate) fn prepare(job: &JobSpec) -> Result<Self, RuntimeError> {
        let (program, args) = command_line(job)?;
        let dir = tempfile::Builder::new()
            .prefix("sandstorm-job-")
            .tempdir()
            .map_err(RuntimeError::JobDir)?;
        write_files(job, dir.path())?;
        tracing::debug!(dir = %dir.path().display(), program, "job directory prepared");
        Ok(Self { dir, program, args })
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The program that runs the job: an absolute path, valid on the host and inside the
    /// bubblewrap sandbox (which mounts the host's `/usr` and merged-usr links).
    pub(crate) fn program(&self) -> &str {
        &self.program
    }

    /// Arguments of [`PreparedJob::program`].
    pub(crate) fn args(&self) -> &[String] {
        &self.args
    }

    /// Removes the directory; a failure is logged, not returned, since the run already ended.
    pub(crate) fn close(self) {
        let path = self.dir.path().to_path_buf();
        if let Err(e) = self.dir.close() {
            tracing::warn!(dir = %path.display(), error = %e, "could not remove job directory");
        }
    }
}

/// Writes a file that must not exist yet, creating its parent directories.
/// The program and arguments that run `job` from inside its job directory: `/bin/sh -c
/// COMMAND`, or the language's interpreter on the inline code file.
pub(crate) fn command_line(job: &JobSpec) -> Result<(String, Vec<String>), RuntimeError> {
    match (&job.command, &job.code) {
        (Some(command), _) => Ok((SHELL.to_owned(), vec!["-c".to_owned(), command.clone()])),
        (None, Some(_)) => {
            let interpreter = find_interpreter(job.language)?;
            Ok((
                interpreter.display().to_string(),
                vec![job.code_file_name()],
            ))
        }
        (None, None) => Err(RuntimeError::Internal(
            "prepare called on a job without command or code".into(),
        )),
    }
}

/// Writes the job's files (and its inline code file) under `dir`, never overwriting.
pub(crate) fn write_files(job: &JobSpec, dir: &Path) -> Result<(), RuntimeError> {
    let code_file = job
        .code
        .as_ref()
        .map(|code| (job.code_file_name(), code.as_str()));
    let files = job
        .files
        .iter()
        .map(|f| (f.path.clone(), f.content.as_str()));
    for (path, content) in code_file.into_iter().chain(files) {
        write_new(&dir.join(path), content.as_bytes()).map_err(RuntimeError::JobDir)?;
    }
    Ok(())
}

/// Makes everything under `dir` (written by the engine) owned by `uid` (group `uid` too).
pub(crate) fn chown_tree(dir: &Path, uid: u32) -> std::io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let path = entry?.path();
        std::os::unix::fs::lchown(&path, Some(uid), Some(uid))?;
        if fs::symlink_metadata(&path)?.is_dir() {
            chown_tree(&path, uid)?;
        }
    }
    Ok(())
}

fn write_new(path: &Path, content: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(path)?;
    file.write_all(content)
}

/// The interpreter for `language`, looked up in [`SEARCH_PATH`] only (never the caller's
/// `PATH`, which may point at per-user shims the sandbox cannot see).
pub(crate) fn find_interpreter(language: Language) -> Result<PathBuf, RuntimeError> {
    let program = language.interpreter().0;
    SEARCH_PATH
        .split(':')
        .map(|dir| Path::new(dir).join(program))
        .find(|p| is_executable(p))
        .ok_or(RuntimeError::InterpreterNotFound {
            program,
            language: language.as_str(),
            search_path: SEARCH_PATH,
        })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job_with_files(paths: &[&str]) -> JobSpec {
        let mut request = RunRequest::command(Language::Sh, "true");
        request.files = paths
            .iter()
            .map(|p| InputFile {
                path: (*p).to_owned(),
                content: String::new(),
            })
            .collect();
        JobSpec::from_request(&request)
    }

    fn reason(job: &JobSpec) -> String {
        job.validate()
            .map_or_else(|e| e.to_string(), |()| "ok".into())
    }

    #[test]
    fn unsafe_paths_are_user_errors() {
        for bad in ["../x", "/etc/passwd", "a/../../x", "", "./a"] {
            let err = job_with_files(&[bad])
                .validate()
                .expect_err("unsafe path accepted");
            assert!(err.is_user_error(), "{bad}: {err}");
            assert!(err.to_string().contains("relative path"), "{bad}: {err}");
        }
        assert_eq!(reason(&job_with_files(&["a/b.txt", "c"])), "ok");
    }

    #[test]
    fn duplicate_and_nested_paths_are_refused() {
        assert!(reason(&job_with_files(&["a", "a"])).contains("twice"));
        assert!(reason(&job_with_files(&["a/b", "a//b"])).contains("twice"));
        assert!(reason(&job_with_files(&["a", "a/b/c"])).contains("both a file"));
        let mut job = job_with_files(&["main.py"]);
        job.command = None;
        job.code = Some("print(1)".into());
        job.language = Language::Python;
        assert!(reason(&job).contains("twice"));
    }

    #[test]
    fn command_xor_code_and_positive_limits() {
        let mut job = job_with_files(&[]);
        job.code = Some("x".into());
        assert!(reason(&job).contains("not both"));
        job.command = None;
        job.code = Some("  ".into());
        assert!(reason(&job).contains("must not be empty"));
        let mut job = job_with_files(&[]);
        job.timeout = Duration::ZERO;
        assert!(reason(&job).contains("timeout"));
        let mut job = job_with_files(&[]);
        job.cpu = f64::NAN;
        assert!(reason(&job).contains("cpu"));
    }

    #[test]
    fn from_request_keeps_limits_and_defaults_output_cap() {
        let mut request = RunRequest::command(Language::Python, "python3 -V");
        request.timeout_s = 2.5;
        request.resources.memory_mib = 128;
        request.allow_network = true;
        let job = JobSpec::from_request(&request);
        assert_eq!(job.timeout, Duration::from_millis(2500));
        assert_eq!(job.memory_mib, 128);
        assert!(job.allow_network);
        assert_eq!(job.max_output_bytes, 1024 * 1024);
        request.timeout_s = f64::NAN;
        assert_eq!(JobSpec::from_request(&request).timeout, Duration::ZERO);
    }

    #[test]
    fn from_request_keeps_the_gpu_and_local_backends_refuse_it() {
        let mut request = RunRequest::command(Language::Python, "nvidia-smi");
        assert_eq!(JobSpec::from_request(&request).gpu, None);
        let cpu_job = JobSpec::from_request(&request);
        assert!(cpu_job.refuse_gpu(IsolationBackend::Process).is_ok());
        let gpu = GpuRequest {
            count: 2,
            kinds: vec!["h100".into(), "a100-80gb".into()],
        };
        request.resources.gpu = Some(gpu.clone());
        let job = JobSpec::from_request(&request);
        assert_eq!(job.gpu, Some(gpu));
        assert_eq!(reason(&job), "ok");
        for backend in [
            IsolationBackend::Process,
            IsolationBackend::Bubblewrap,
            IsolationBackend::Gvisor,
        ] {
            let err = job.refuse_gpu(backend).expect_err("no local GPU");
            assert!(!err.is_user_error(), "another candidate may have a GPU");
            assert_eq!(
                err.to_string(),
                format!(
                    "backend `{backend}` cannot run this job: the job asks for 2 GPUs \
                     (h100 or a100-80gb), and local backends have no GPU"
                )
            );
        }
        let mut zero = job.clone();
        zero.gpu = Some(GpuRequest {
            count: 0,
            kinds: Vec::new(),
        });
        assert!(reason(&zero).contains("gpu count must be positive"));
    }

    #[test]
    fn prepare_writes_files_and_the_code_file() {
        let mut job = job_with_files(&["data/in.txt"]);
        job.files[0].content = "hello".into();
        let prepared = PreparedJob::prepare(&job).expect("prepare");
        let text = fs::read_to_string(prepared.dir().join("data/in.txt")).expect("file written");
        assert_eq!(text, "hello");
        assert_eq!(prepared.program(), SHELL);
        assert_eq!(prepared.args(), ["-c".to_owned(), "true".to_owned()]);
        let dir = prepared.dir().to_path_buf();
        prepared.close();
        assert!(!dir.exists());
    }
}
