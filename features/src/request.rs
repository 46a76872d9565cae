//! `RunRequest`: what to run and what matters, parsed from JSON or YAML and validated field by
//! field, plus the `DecisionContext` (the moment of the decision) that features may depend on.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::candidate::IsolationLevel;
use crate::error::{FeaturesError, FieldError};

/// Maximum inline code + files accepted in one request, in bytes.
pub const MAX_PAYLOAD_BYTES: usize = 8 * 1024 * 1024;

/// The language of the code; decides the interpreter for inline code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Language {
    Python,
    Node,
    Bash,
    Sh,
}

impl Language {
    pub const ALL: [Language; 4] = [
        Language::Python,
        Language::Node,
        Language::Bash,
        Language::Sh,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Language::Python => "python",
            Language::Node => "node",
            Language::Bash => "bash",
            Language::Sh => "sh",
        }
    }

    /// Interpreter program and file extension used to run inline code.
    pub fn interpreter(self) -> (&'static str, &'static str) {
        match self {
            Language::Python => ("python3", "py"),
            Language::Node => ("node", "js"),
            Language::Bash => ("bash", "sh"),
            Language::Sh => ("sh", "sh"),
        }
    }
}

impl fmt::Display for Language {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A file placed in the job's working directory before the command runs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    /// Relative path inside the job directory (no `..`, not absolute).
    pub path: String,
    /// UTF-8 content.
    pub content: String,
}

/// GPU needs of a request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GpuRequest {
    /// Number of GPUs.
    pub count: u32,
    /// Accepted GPU kinds (e.g. `["a10g", "l4"]`); empty means any kind.
    #[serde(default)]
    pub kinds: Vec<String>,
}

/// For messages: `2 GPUs (h100 or a100-80gb)`, `1 GPU (any kind)`.
impl fmt::Display for GpuRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.count == 1 { "" } else { "s" };
        write!(f, "{} GPU{s} (", self.count)?;
        if self.kinds.is_empty() {
            f.write_str("any kind")?;
        } else {
            f.write_str(&self.kinds.join(" or "))?;
        }
        f.write_str(")")
    }
}

/// Compute resources requested.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Resources {
    /// vCPUs (fractions allowed, e.g. 0.5).
    pub cpu: f64,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Scratch disk in MiB.
    pub disk_mib: u64,
    /// GPUs, if any.
    pub gpu: Option<GpuRequest>,
}

impl Default for Resources {
    fn default() -> Self {
        Self {
            cpu: 1.0,
            memory_mib: 512,
            disk_mib: 1024,
            gpu: None,
        }
    }
}

impl Resources {
    pub fn gpu_count(&self) -> u32 {
        self.gpu.as_ref().map_or(0, |g| g.count)
    }

    pub fn memory_gib(&self) -> f64 {
        self.memory_mib as f64 / 1024.0
    }
}

/// What the caller wants optimised.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StrategyKind {
    /// Cheapest expected cost that meets the latency and cost constraints.
    #[default]
    OptimizeCost,
    /// Lowest expected latency that meets the constraints.
    OptimizeLatency,
    /// A weighted mix of cost and latency, see `cost_weight`.
    Balanced,
}

impl StrategyKind {
    pub const ALL: [StrategyKind; 3] = [
        StrategyKind::OptimizeCost,
        StrategyKind::OptimizeLatency,
        StrategyKind::Balanced,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StrategyKind::OptimizeCost => "optimize_cost",
            StrategyKind::OptimizeLatency => "optimize_latency",
            StrategyKind::Balanced => "balanced",
        }
    }
}

/// The resolved strategy, with the balance weight where it applies.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Strategy {
    OptimizeCost,
    OptimizeLatency,
    /// `cost_weight` in [0, 1]: 1 is pure cost, 0 is pure latency.
    Balanced {
        cost_weight: f64,
    },
}

/// Hard constraints: a candidate that breaks one is never chosen.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Constraints {
    /// Maximum predicted cost of the run, in USD.
    pub max_cost_usd: Option<f64>,
    /// Maximum predicted p95 end-to-end latency, in milliseconds.
    pub max_latency_ms: Option<f64>,
    /// Run in exactly this region.
    pub region: Option<String>,
    /// Run in one of these regions.
    pub allowed_regions: Vec<String>,
    /// Minimum isolation level (`process`, `namespace`, `gvisor`, `microvm`).
    pub min_isolation: Option<IsolationLevel>,
    /// Only these providers (empty: all).
    pub allowed_providers: Vec<String>,
    /// Never these providers.
    pub excluded_providers: Vec<String>,
    /// Only candidates with a GPU.
    pub require_gpu: bool,
}

/// A request to run code somewhere.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunRequest {
    /// Language of the code or command.
    pub language: Language,
    /// A shell command line, run with `sh -c` in the job directory.
    #[serde(default)]
    pub command: Option<String>,
    /// Inline code, written to `main.<ext>` and run with the language's interpreter.
    #[serde(default)]
    pub code: Option<String>,
    /// Files placed in the job directory.
    #[serde(default)]
    pub files: Vec<InputFile>,
    /// Compute resources.
    #[serde(default)]
    pub resources: Resources,
    /// Wall-clock limit in seconds.
    #[serde(default = "default_timeout_s")]
    pub timeout_s: f64,
    /// Whether the code may use the network.
    #[serde(default)]
    pub allow_network: bool,
    /// What to optimise.
    #[serde(default)]
    pub strategy: StrategyKind,
    /// For `balanced`: weight of cost against latency, in [0, 1] (default 0.5).
    #[serde(default)]
    pub cost_weight: Option<f64>,
    /// Hard constraints.
    #[serde(default)]
    pub constraints: Constraints,
    /// Tenant the request is billed to.
    #[serde(default = "default_tenant")]
    pub tenant: String,
    /// Free-form labels, copied to telemetry.
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// A stable name of the repeated job this request is an instance of (a CI suite, a
    /// benchmark, a nightly build). Past outcomes of the same workload on each candidate become
    /// history features (`features::history`).
    #[serde(default)]
    pub workload: Option<String>,
}

fn default_timeout_s() -> f64 {
    60.0
}

fn default_tenant() -> String {
    "default".to_owned()
}

impl RunRequest {
    /// A request running `command` with every other field at its default.
    pub fn command(language: Language, command: impl Into<String>) -> Self {
        Self {
            language,
            command: Some(command.into()),
            code: None,
            files: Vec::new(),
            resources: Resources::default(),
            timeout_s: default_timeout_s(),
            allow_network: false,
            strategy: StrategyKind::default(),
            cost_weight: None,
            constraints: Constraints::default(),
            tenant: default_tenant(),
            labels: BTreeMap::new(),
            workload: None,
        }
    }

    /// Parses and validates a JSON request.
    pub fn from_json(text: &str) -> Result<Self, FeaturesError> {
        let de = &mut serde_json::Deserializer::from_str(text);
        let request: Self =
            serde_path_to_error::deserialize(de).map_err(|e| FeaturesError::RequestSyntax {
                format: "json",
                message: describe_path_error(&e),
            })?;
        request.validate()?;
        Ok(request)
    }

    /// Parses and validates a YAML request.
    pub fn from_yaml(text: &str) -> Result<Self, FeaturesError> {
        let de = serde_norway::Deserializer::from_str(text);
        let request: Self =
            serde_path_to_error::deserialize(de).map_err(|e| FeaturesError::RequestSyntax {
                format: "yaml",
                message: describe_path_error(&e),
            })?;
        request.validate()?;
        Ok(request)
    }

    /// Parses by file extension: `.json` is JSON, `.yaml`/`.yml` YAML; anything else is tried
    /// as JSON when it starts with `{`, YAML otherwise.
    pub fn from_text(text: &str, file_name: &str) -> Result<Self, FeaturesError> {
        let lower = file_name.to_ascii_lowercase();
        if lower.ends_with(".json")
            || (!lower.ends_with(".yaml")
                && !lower.ends_with(".yml")
                && text.trim_start().starts_with('{'))
        {
            Self::from_json(text)
        } else {
            Self::from_yaml(text)
        }
    }

    /// The resolved strategy.
    pub fn strategy(&self) -> Strategy {
        match self.strategy {
            StrategyKind::OptimizeCost => Strategy::OptimizeCost,
            StrategyKind::OptimizeLatency => Strategy::OptimizeLatency,
            StrategyKind::Balanced => Strategy::Balanced {
                cost_weight: self.cost_weight.unwrap_or(0.5),
            },
        }
    }

    /// Bytes of inline code, command and files: a size descriptor of the workload.
    pub fn payload_bytes(&self) -> u64 {
        let files: usize = self.files.iter().map(|f| f.content.len()).sum();
        (self.code.as_ref().map_or(0, String::len)
            + self.command.as_ref().map_or(0, String::len)
            + files) as u64
    }

    /// Checks every field rule and reports all broken rules at once.
    pub fn validate(&self) -> Result<(), FeaturesError> {
        let mut errors = Vec::new();
        let mut check = |ok: bool, field: &str, message: &str| {
            if !ok {
                errors.push(FieldError::new(field, message));
            }
        };
        match (&self.command, &self.code) {
            (None, None) => check(false, "command", "either `command` or `code` is required"),
            (Some(_), Some(_)) => check(false, "code", "give either `command` or `code`, not both"),
            (Some(c), None) => check(!c.trim().is_empty(), "command", "must not be empty"),
            (None, Some(c)) => check(!c.trim().is_empty(), "code", "must not be empty"),
        }
        check(
            self.payload_bytes() as usize <= MAX_PAYLOAD_BYTES,
            "files",
            "code, command and files together must be at most 8 MiB",
        );
        for (i, file) in self.files.iter().enumerate() {
            let p = std::path::Path::new(&file.path);
            let safe = !file.path.is_empty()
                && p.is_relative()
                && p.components()
                    .all(|c| matches!(c, std::path::Component::Normal(_)));
            check(
                safe,
                &format!("files[{i}].path"),
                "must be a relative path without `..`",
            );
        }
        let r = &self.resources;
        check(
            r.cpu.is_finite() && r.cpu > 0.0 && r.cpu <= 256.0,
            "resources.cpu",
            "must be a number of vCPUs in (0, 256]",
        );
        check(
            (16..=1_048_576).contains(&r.memory_mib),
            "resources.memory_mib",
            "must be between 16 and 1048576 MiB",
        );
        check(
            r.disk_mib <= 10_485_760,
            "resources.disk_mib",
            "must be at most 10485760 MiB",
        );
        if let Some(gpu) = &r.gpu {
            check(
                (1..=16).contains(&gpu.count),
                "resources.gpu.count",
                "must be between 1 and 16",
            );
        }
        check(
            self.timeout_s.is_finite() && self.timeout_s > 0.0 && self.timeout_s <= 86_400.0,
            "timeout_s",
            "must be in (0, 86400] seconds",
        );
        match (self.strategy, self.cost_weight) {
            (StrategyKind::Balanced, Some(w)) => {
                check((0.0..=1.0).contains(&w), "cost_weight", "must be in [0, 1]")
            }
            (_, Some(_)) => check(false, "cost_weight", "only applies to strategy `balanced`"),
            _ => {}
        }
        let c = &self.constraints;
        if let Some(v) = c.max_cost_usd {
            check(
                v.is_finite() && v > 0.0,
                "constraints.max_cost_usd",
                "must be a positive number of USD",
            );
        }
        if let Some(v) = c.max_latency_ms {
            check(
                v.is_finite() && v > 0.0,
                "constraints.max_latency_ms",
                "must be a positive number of milliseconds",
            );
        }
        if let Some(region) = &c.region {
            check(
                !region.is_empty(),
                "constraints.region",
                "must not be empty",
            );
            check(
                c.allowed_regions.is_empty() || c.allowed_regions.contains(region),
                "constraints.region",
                "is not in constraints.allowed_regions",
            );
        }
        let excluded_allowed: Vec<_> = c
            .allowed_providers
            .iter()
            .filter(|p| c.excluded_providers.contains(p))
            .collect();
        check(
            excluded_allowed.is_empty(),
            "constraints.excluded_providers",
            "names a provider that allowed_providers also names",
        );
        check(
            !self.tenant.trim().is_empty() && self.tenant.len() <= 128,
            "tenant",
            "must be 1 to 128 characters",
        );
        if let Some(w) = &self.workload {
            check(
                !w.trim().is_empty() && w.len() <= 512,
                "workload",
                "must be 1 to 512 characters",
            );
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FeaturesError::RequestInvalid(errors))
        }
    }
}

fn describe_path_error<E: fmt::Display>(e: &serde_path_to_error::Error<E>) -> String {
    let path = e.path().to_string();
    if path == "." || path.is_empty() {
        e.inner().to_string()
    } else {
        format!("field `{path}`: {}", e.inner())
    }
}

/// The moment and place of a decision: everything a feature may use besides request and
/// candidate. Telemetry records it so training sees exactly what serving saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecisionContext {
    /// When the request arrived (UTC).
    pub now: OffsetDateTime,
    /// Seed of the decision's random choices (exploration); `None` derives it from the
    /// decision id. Not a feature: tests and replays set it to get reproducible choices.
    pub seed: Option<u64>,
}

impl DecisionContext {
    pub fn at(now: OffsetDateTime) -> Self {
        Self { now, seed: None }
    }

    pub fn now() -> Self {
        Self::at(OffsetDateTime::now_utc())
    }

    /// This context with the random choices of the decision seeded by `seed`.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = Some(seed);
        self
    }
}
