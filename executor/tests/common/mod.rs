//! Shared set-up of the executor's integration tests: a small catalog, a real router over a
//! model directory of constant models (every candidate predicted alike, so the ranking is by
//! candidate id), and `ScriptedProviderDouble`, a test double of a remote provider that
//! answers what the test scripted (quota, 5xx, auth, a lost connection, or a run with an exit
//! code) with real `AdapterError` values.

#![allow(dead_code, unreachable_pub)]

use std::collections::{BTreeMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use sandstorm_adapters::{
    AdapterError, Availability, Phase, RemoteProvider, RemoteRun, RunFailure, Usage,
};
use sandstorm_executor::{BreakerConfig, Breakers, Executor, FailoverPolicy};
use sandstorm_features::encoding::{FEATURE_VERSION, FeatureInput, FeatureSpace, N_FEATURES};
use sandstorm_features::model::{
    FEATURE_SCHEMA_FILE, METADATA_FILE, ModelEntry, ModelMetadata, ModelRole, StoredFeatureSchema,
    TimeWindow,
};
use sandstorm_features::telemetry::RunStatus;
use sandstorm_features::{Candidate, Catalog, DecisionContext, RunRequest};
use sandstorm_router::{Decision, ModelSet, Router};
use sandstorm_runtime::{Engine, EngineConfig, JobSpec, RunControl, RunResult};

/// Two remote test providers (`alpha` in us-east, `beta` in eu-west), the real E2B adapter's
/// provider `e2b` (us-east) and the local backends.
pub const CATALOG: &str = r#"
schema_version = 1

[[regions]]
name = "local"
area = "local"
rtt_ms = 0.0

[[regions]]
name = "us-east"
area = "us"
rtt_ms = 8.0

[[regions]]
name = "eu-west"
area = "eu"
rtt_ms = 80.0

[[providers]]
name = "alpha"
kind = "remote"
backends = ["microvm"]
regions = ["us-east"]
[providers.prices]
vcpu_second = 0.00002
gib_second = 0.000004
start = 0.0001
estimate = true
source = "executor test catalog"
as_of = "2026-11-30"
[providers.quotas]
max_vcpu = 8.0
max_memory_mib = 8192

[[providers]]
name = "beta"
kind = "remote"
backends = ["rootless_oci"]
regions = ["eu-west"]
[providers.prices]
vcpu_second = 0.00001
gib_second = 0.000002
estimate = true
source = "executor test catalog"
as_of = "2026-11-30"
[providers.quotas]
max_vcpu = 8.0
max_memory_mib = 8192

[[providers]]
name = "e2b"
kind = "remote"
backends = ["microvm"]
regions = ["us-east"]
[providers.prices]
vcpu_second = 0.000014
gib_second = 0.0000045
estimate = false
source = "executor test catalog"
as_of = "2026-11-30"
[providers.quotas]
max_vcpu = 8.0
max_memory_mib = 8192

[[providers]]
name = "local"
kind = "local"
backends = ["process", "bubblewrap"]
regions = ["local"]
[providers.prices]
vcpu_second = 0.000001
gib_second = 0.0000001
estimate = true
source = "executor test catalog"
as_of = "2026-11-30"
[providers.quotas]
max_vcpu = 4.0
max_memory_mib = 4096
"#;

pub const ALPHA: &str = "alpha/microvm/us-east";
pub const BETA: &str = "beta/rootless_oci/eu-west";
pub const E2B: &str = "e2b/microvm/us-east";

pub fn catalog() -> Catalog {
    Catalog::from_toml(CATALOG).expect("test catalog is valid")
}

pub fn candidate(id: &str) -> Candidate {
    catalog()
        .candidates()
        .into_iter()
        .find(|c| c.id == id)
        .expect("candidate of the test catalog")
}

/// Writes a model directory whose four models are single constant trees: p50 100 ms, p95
/// 200 ms, cost $0.00001, failure risk 5%, for every candidate.
pub fn write_constant_models(dir: &Path) {
    let space = FeatureSpace::fit(std::iter::empty::<FeatureInput<'_>>());
    let hash = space.hash();
    let schema = StoredFeatureSchema {
        hash: hash.clone(),
        space,
    };
    std::fs::write(
        dir.join(FEATURE_SCHEMA_FILE),
        serde_json::to_string(&schema).expect("schema json"),
    )
    .expect("write feature schema");
    let mut models = BTreeMap::new();
    for role in ModelRole::ALL {
        let leaf = match role {
            ModelRole::LatencyP50 => 100f64.ln(),
            ModelRole::LatencyP95 => 200f64.ln(),
            ModelRole::Cost => 0.00001f64.ln(),
            ModelRole::Failure => 0.05,
        };
        std::fs::write(dir.join(role.file_name()), constant_model(leaf)).expect("write model");
        models.insert(
            role,
            ModelEntry {
                file: role.file_name(),
                target: format!("constant {}", role.as_str()),
                target_transform: role.target_transform(),
                params: serde_json::Map::new(),
                num_trees: 1,
                metrics: BTreeMap::new(),
            },
        );
    }
    let window = TimeWindow {
        from: "2026-11-01T00:00:00Z".into(),
        to: "2026-11-02T00:00:00Z".into(),
        rows: 0,
    };
    let metadata = ModelMetadata {
        version: "constant-test-models".into(),
        created_at: "2026-11-30T00:00:00Z".into(),
        feature_version: FEATURE_VERSION,
        feature_schema_hash: hash,
        training_window: window.clone(),
        validation_window: window.clone(),
        holdout_window: window,
        models,
    };
    std::fs::write(
        dir.join(METADATA_FILE),
        serde_json::to_string_pretty(&metadata).expect("metadata json"),
    )
    .expect("write metadata");
}

/// A LightGBM text model with one single-leaf tree.
fn constant_model(leaf: f64) -> String {
    let max_feature_idx = N_FEATURES - 1;
    format!(
        "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx={max_feature_idx}\nobjective=regression\n\n\
         Tree=0\nnum_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\nthreshold=\ndecision_type=\nleft_child=\nright_child=\nleaf_value={leaf:e}\nleaf_weight=\nleaf_count=\ninternal_value=\ninternal_weight=\ninternal_count=\nis_linear=0\nshrinkage=1\n\n\n\
         end of trees\n\nparameters:\nend of parameters\n"
    )
}

/// A real router over the test catalog and the constant models.
pub fn router() -> Router {
    let dir = tempfile::tempdir().expect("tempdir");
    write_constant_models(dir.path());
    let models = ModelSet::load(dir.path()).expect("constant models load");
    Router::new(&catalog(), models)
}

/// A request for `providers`, running `command` with bash.
pub fn request(providers: &[&str], command: &str) -> RunRequest {
    let mut r = RunRequest::from_yaml(&format!(
        "language: bash\ncommand: {command:?}\ntimeout_s: 20\ntenant: executor-tests\n"
    ))
    .expect("valid request");
    r.constraints.allowed_providers = providers.iter().map(|p| (*p).to_owned()).collect();
    r
}

/// Decides `request` with the executor's availability filter.
pub fn decide(
    router: &Router,
    executor: &Executor,
    request: &RunRequest,
    ctx: &DecisionContext,
) -> Decision {
    router
        .decide(request, ctx, &|c| executor.unavailable_reason(c))
        .expect("a feasible candidate")
}

/// Failover without noticeable waits.
pub fn fast_policy() -> FailoverPolicy {
    FailoverPolicy {
        max_attempts: 4,
        backoff_base: Duration::from_millis(1),
        backoff_max: Duration::from_millis(2),
    }
}

pub fn breaker_config(threshold: u32, cooldown: Duration) -> BreakerConfig {
    BreakerConfig {
        failure_threshold: threshold,
        cooldown,
    }
}

/// What a [`ScriptedProviderDouble`] answers to one run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Answer {
    /// HTTP 429 on create (concurrent sandbox limit).
    Quota,
    /// HTTP 503 on create.
    ServerError,
    /// HTTP 401 on create.
    Auth,
    /// The connection broke while the job ran (it may have started), after a sandbox existed.
    LostDuringExec,
    /// The job ran and exited with this code.
    Exit(i32),
}

#[derive(Debug)]
struct Script {
    queue: VecDeque<Answer>,
    default: Answer,
    calls: u32,
}

/// The test's handle on a [`ScriptedProviderDouble`]: change its answers, count its runs.
#[derive(Debug, Clone)]
pub struct ScriptHandle(Arc<Mutex<Script>>);

impl ScriptHandle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Script> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Answers `answer` from now on (after the queued ones).
    pub fn answer(&self, answer: Answer) {
        self.lock().default = answer;
    }

    /// Answers `answer` once, before the default.
    pub fn then(&self, answer: Answer) {
        self.lock().queue.push_back(answer);
    }

    /// How many runs it was asked for.
    pub fn calls(&self) -> u32 {
        self.lock().calls
    }
}

/// Test double of a remote provider: answers each run as scripted, with the errors and
/// results a real adapter returns.
#[derive(Debug)]
pub struct ScriptedProviderDouble {
    name: String,
    script: ScriptHandle,
}

impl ScriptedProviderDouble {
    /// The double, boxed for `Providers::new`, and the handle that scripts it.
    pub fn boxed(name: &str, answer: Answer) -> (Box<dyn RemoteProvider>, ScriptHandle) {
        let script = ScriptHandle(Arc::new(Mutex::new(Script {
            queue: VecDeque::new(),
            default: answer,
            calls: 0,
        })));
        let double = Self {
            name: name.to_owned(),
            script: script.clone(),
        };
        (Box::new(double), script)
    }

    fn api_error(&self, status: u16, message: &str) -> RunFailure {
        AdapterError::Api {
            provider: self.name.clone(),
            phase: Phase::Create,
            status,
            message: message.to_owned(),
        }
        .into()
    }

    fn usage(&self, seconds: f64) -> Usage {
        Usage {
            provider: self.name.clone(),
            sandbox_id: Some(format!("{}-sbx", self.name)),
            sandbox_seconds: seconds,
            vcpu: 1.0,
            memory_mib: 1024,
            gpu: None,
            deleted: true,
        }
    }
}

impl RemoteProvider for ScriptedProviderDouble {
    fn name(&self) -> &str {
        &self.name
    }

    fn availability(&self) -> Availability {
        Availability::Available {
            detail: "scripted test double".to_owned(),
        }
    }

    fn run(
        &self,
        candidate: &Candidate,
        job: &JobSpec,
        _control: &RunControl,
    ) -> Result<RemoteRun, RunFailure> {
        assert_eq!(
            candidate.provider, self.name,
            "routed to the wrong provider"
        );
        job.validate().expect("the executor passes valid jobs");
        let answer = {
            let mut script = self.script.lock();
            script.calls += 1;
            let default = script.default;
            script.queue.pop_front().unwrap_or(default)
        };
        match answer {
            Answer::Quota => Err(self.api_error(429, "concurrent sandbox limit reached")),
            Answer::ServerError => Err(self.api_error(503, "service unavailable")),
            Answer::Auth => Err(self.api_error(401, "invalid api key")),
            Answer::LostDuringExec => Err(RunFailure {
                error: AdapterError::Connect {
                    provider: self.name.clone(),
                    phase: Phase::Exec,
                    message: "connection reset by peer".to_owned(),
                },
                usage: Some(Box::new(self.usage(2.0))),
            }),
            Answer::Exit(code) => Ok(RemoteRun {
                result: RunResult {
                    status: if code == 0 {
                        RunStatus::Ok
                    } else {
                        RunStatus::Failed
                    },
                    exit_code: Some(code),
                    signal: None,
                    stdout: format!("ran on {}\n", candidate.id),
                    stderr: String::new(),
                    stdout_truncated: false,
                    stderr_truncated: false,
                    started_at: time::OffsetDateTime::now_utc(),
                    start_ms: 40.0,
                    exec_ms: 60.0,
                    total_ms: 120.0,
                    peak_memory_mib: None,
                    error_class: (code != 0).then(|| "exit_code".to_owned()),
                    enforced_limits: vec![format!("sandbox_id={}-sbx", self.name)],
                },
                usage: self.usage(1.5),
            }),
        }
    }
}

/// The real local engine, without a warm gVisor pool (the tests run no gVisor jobs).
pub fn engine() -> Arc<Engine> {
    Arc::new(Engine::with_config(&EngineConfig {
        gvisor_pool_size: 0,
    }))
}

/// An executor over `providers` and `breakers` with `policy` and the real local engine.
pub fn executor_with(
    providers: Vec<Box<dyn RemoteProvider>>,
    breakers: Breakers,
    policy: FailoverPolicy,
) -> Executor {
    Executor::new(
        engine(),
        sandstorm_adapters::Providers::new(providers),
        breakers,
        policy,
    )
}

/// [`executor_with`] the fast failover policy.
pub fn executor(providers: Vec<Box<dyn RemoteProvider>>, breakers: Breakers) -> Executor {
    executor_with(providers, breakers, fast_policy())
}
