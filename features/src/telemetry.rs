//! The telemetry row: one per execution attempt, holding the request's features, the chosen
//! candidate, every candidate's decision scores, and the outcome. [`schema`] is the canonical
//! Arrow schema; [`to_record_batch`] / [`from_record_batch`] convert rows both ways, so the
//! simulator, the runtime and the trainer share one definition.

use std::fmt;
use std::sync::{Arc, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::{DataType, Field, FieldRef, Fields, Schema, SchemaRef, TimeUnit};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::candidate::Candidate;
use crate::error::FeaturesError;
use crate::history::HistoryFeatures;
use crate::request::{DecisionContext, RunRequest};

/// Version of the telemetry schema, stored in the Arrow schema metadata.
///
/// Version 2 added `workload` and `history` (the history features the decision saw).
pub const TELEMETRY_SCHEMA_VERSION: &str = "2";

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RunStatus {
    /// Exit code 0.
    Ok,
    /// The program ran and exited non-zero (or was killed by a signal).
    Failed,
    /// Killed at the wall-clock limit.
    Timeout,
    /// Killed for exceeding its memory limit.
    Oom,
    /// The provider refused for quota or rate limits.
    Quota,
    /// The backend or provider could not start the run.
    Unavailable,
    /// Sandstorm could not route or execute it (e.g. no executor for the winner).
    NotExecuted,
}

impl RunStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            RunStatus::Ok => "ok",
            RunStatus::Failed => "failed",
            RunStatus::Timeout => "timeout",
            RunStatus::Oom => "oom",
            RunStatus::Quota => "quota",
            RunStatus::Unavailable => "unavailable",
            RunStatus::NotExecuted => "not_executed",
        }
    }

    /// Whether this outcome counts as a failure for the failure-risk model: the run was
    /// attempted on the candidate and did not deliver a result.
    pub fn is_infrastructure_failure(self) -> bool {
        matches!(
            self,
            RunStatus::Timeout | RunStatus::Oom | RunStatus::Quota | RunStatus::Unavailable
        )
    }
}

impl fmt::Display for RunStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What the router thought of one candidate when it decided.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateScore {
    pub candidate_id: String,
    /// False when a constraint or policy removed it before scoring.
    pub feasible: bool,
    pub pred_latency_p50_ms: Option<f64>,
    pub pred_latency_p95_ms: Option<f64>,
    pub pred_cost_usd: Option<f64>,
    pub pred_failure_prob: Option<f64>,
    /// Objective value under the request's strategy (lower is better).
    pub score: Option<f64>,
}

/// One telemetry row. Field order and names are those of [`schema`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TelemetryRecord {
    // identity
    pub decision_id: String,
    pub run_id: String,
    /// 0 for the first attempt, then 1, 2, ... for failovers.
    pub attempt: u32,
    /// `simulator`, `runtime`, `import:<dataset>`, ...
    pub source: String,
    // time, microseconds since the Unix epoch, UTC
    pub ts_request_us: i64,
    pub ts_start_us: Option<i64>,
    pub ts_end_us: Option<i64>,
    // request
    pub tenant: String,
    /// Request labels as a JSON object.
    pub labels_json: String,
    pub language: String,
    pub strategy: String,
    pub cost_weight: Option<f64>,
    pub vcpu: f64,
    pub memory_mib: f64,
    pub disk_mib: f64,
    pub gpu_count: u32,
    pub timeout_s: f64,
    pub payload_bytes: u64,
    pub file_count: u32,
    pub allow_network: bool,
    /// The request's workload label.
    pub workload: Option<String>,
    /// History of the workload on the chosen candidate, as the decision saw it.
    pub history: HistoryFeatures,
    // chosen candidate
    pub candidate_id: String,
    pub provider: String,
    pub provider_kind: String,
    pub backend: String,
    pub region: String,
    pub area: String,
    pub isolation_level: u8,
    pub rtt_ms: f64,
    pub price_vcpu_s: f64,
    pub price_gib_s: f64,
    pub price_start: f64,
    /// Price per GPU-second of the GPU kind this request would get (0 without GPU).
    pub price_gpu_s: f64,
    pub price_is_estimate: bool,
    // decision
    pub n_candidates: u32,
    pub n_feasible: u32,
    /// Probability with which the chosen candidate was selected (1 for a greedy choice).
    pub selection_probability: f64,
    pub model_version: Option<String>,
    pub policy_versions: Vec<String>,
    pub pred_latency_p50_ms: Option<f64>,
    pub pred_latency_p95_ms: Option<f64>,
    pub pred_cost_usd: Option<f64>,
    pub pred_failure_prob: Option<f64>,
    pub score: Option<f64>,
    pub decision_scores: Vec<CandidateScore>,
    // outcome
    pub status: RunStatus,
    pub error_class: Option<String>,
    pub exit_code: Option<i32>,
    pub queue_ms: f64,
    pub start_ms: f64,
    pub exec_ms: f64,
    pub total_latency_ms: f64,
    pub cost_usd: f64,
    pub peak_memory_mib: Option<f64>,
}

/// Converts a timestamp to the microseconds stored in telemetry.
pub fn to_micros(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 1_000) as i64
}

/// Converts stored microseconds back to a timestamp (saturating at the representable range).
pub fn from_micros(us: i64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(us) * 1_000)
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

impl TelemetryRecord {
    /// A row describing `candidate` chosen for `request` at `ctx`, with the outcome fields
    /// zeroed and status `not_executed`; callers fill in decision scores and the outcome.
    pub fn for_choice(request: &RunRequest, candidate: &Candidate, ctx: &DecisionContext) -> Self {
        Self {
            decision_id: String::new(),
            run_id: String::new(),
            attempt: 0,
            source: String::new(),
            ts_request_us: to_micros(ctx.now),
            ts_start_us: None,
            ts_end_us: None,
            tenant: request.tenant.clone(),
            labels_json: serde_json::to_string(&request.labels).unwrap_or_else(|_| "{}".to_owned()),
            language: request.language.as_str().to_owned(),
            strategy: request.strategy.as_str().to_owned(),
            cost_weight: request.cost_weight,
            vcpu: request.resources.cpu,
            memory_mib: request.resources.memory_mib as f64,
            disk_mib: request.resources.disk_mib as f64,
            gpu_count: request.resources.gpu_count(),
            timeout_s: request.timeout_s,
            payload_bytes: request.payload_bytes(),
            file_count: request.files.len() as u32,
            allow_network: request.allow_network,
            workload: request.workload.clone(),
            history: HistoryFeatures::default(),
            candidate_id: candidate.id.clone(),
            provider: candidate.provider.clone(),
            provider_kind: candidate.provider_kind.as_str().to_owned(),
            backend: candidate.backend.as_str().to_owned(),
            region: candidate.region.clone(),
            area: candidate.area.clone(),
            isolation_level: candidate.isolation_level().strength(),
            rtt_ms: candidate.rtt_ms,
            price_vcpu_s: candidate.prices.vcpu_second,
            price_gib_s: candidate.prices.gib_second,
            price_start: candidate.prices.start,
            price_gpu_s: candidate.gpu_price_for(&request.resources).unwrap_or(0.0),
            price_is_estimate: candidate.prices.estimate,
            n_candidates: 0,
            n_feasible: 0,
            selection_probability: 1.0,
            model_version: None,
            policy_versions: Vec::new(),
            pred_latency_p50_ms: None,
            pred_latency_p95_ms: None,
            pred_cost_usd: None,
            pred_failure_prob: None,
            score: None,
            decision_scores: Vec::new(),
            status: RunStatus::NotExecuted,
            error_class: None,
            exit_code: None,
            queue_ms: 0.0,
            start_ms: 0.0,
            exec_ms: 0.0,
            total_latency_ms: 0.0,
            cost_usd: 0.0,
            peak_memory_mib: None,
        }
    }
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}
fn utf8_null(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}
fn f64_(name: &str) -> Field {
    Field::new(name, DataType::Float64, false)
}
fn f64_null(name: &str) -> Field {
    Field::new(name, DataType::Float64, true)
}
fn ts(name: &str, nullable: bool) -> Field {
    Field::new(
        name,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        nullable,
    )
}

fn history_fields() -> Fields {
    Fields::from(vec![
        Field::new("count", DataType::UInt32, false),
        f64_null("days_since_last"),
        f64_null("ln_ewma_fast"),
        f64_null("ln_ewma_slow"),
        f64_null("ln_median"),
        f64_null("ln_recent_median"),
        f64_null("ln_last"),
        f64_null("ln_std"),
        f64_null("rel_ewma_fast"),
        f64_null("rel_ewma_slow"),
        f64_null("rel_median"),
        f64_null("rel_recent_median"),
        f64_null("rel_last"),
        f64_null("rank_median"),
    ])
}

fn score_fields() -> Fields {
    Fields::from(vec![
        utf8("candidate_id"),
        Field::new("feasible", DataType::Boolean, false),
        f64_null("pred_latency_p50_ms"),
        f64_null("pred_latency_p95_ms"),
        f64_null("pred_cost_usd"),
        f64_null("pred_failure_prob"),
        f64_null("score"),
    ])
}

/// The canonical Arrow schema of telemetry.
pub fn schema() -> SchemaRef {
    static SCHEMA: OnceLock<SchemaRef> = OnceLock::new();
    SCHEMA
        .get_or_init(|| {
            let fields = vec![
                utf8("decision_id"),
                utf8("run_id"),
                Field::new("attempt", DataType::UInt32, false),
                utf8("source"),
                ts("ts_request_us", false),
                ts("ts_start_us", true),
                ts("ts_end_us", true),
                utf8("tenant"),
                utf8("labels_json"),
                utf8("language"),
                utf8("strategy"),
                f64_null("cost_weight"),
                f64_("vcpu"),
                f64_("memory_mib"),
                f64_("disk_mib"),
                Field::new("gpu_count", DataType::UInt32, false),
                f64_("timeout_s"),
                Field::new("payload_bytes", DataType::UInt64, false),
                Field::new("file_count", DataType::UInt32, false),
                Field::new("allow_network", DataType::Boolean, false),
                utf8_null("workload"),
                Field::new("history", DataType::Struct(history_fields()), false),
                utf8("candidate_id"),
                utf8("provider"),
                utf8("provider_kind"),
                utf8("backend"),
                utf8("region"),
                utf8("area"),
                Field::new("isolation_level", DataType::UInt8, false),
                f64_("rtt_ms"),
                f64_("price_vcpu_s"),
                f64_("price_gib_s"),
                f64_("price_start"),
                f64_("price_gpu_s"),
                Field::new("price_is_estimate", DataType::Boolean, false),
                Field::new("n_candidates", DataType::UInt32, false),
                Field::new("n_feasible", DataType::UInt32, false),
                f64_("selection_probability"),
                utf8_null("model_version"),
                Field::new(
                    "policy_versions",
                    DataType::List(Arc::new(Field::new("item", DataType::Utf8, false))),
                    false,
                ),
                f64_null("pred_latency_p50_ms"),
                f64_null("pred_latency_p95_ms"),
                f64_null("pred_cost_usd"),
                f64_null("pred_failure_prob"),
                f64_null("score"),
                Field::new(
                    "decision_scores",
                    DataType::List(Arc::new(Field::new(
                        "item",
                        DataType::Struct(score_fields()),
                        false,
                    ))),
                    false,
                ),
                utf8("status"),
                utf8_null("error_class"),
                Field::new("exit_code", DataType::Int32, true),
                f64_("queue_ms"),
                f64_("start_ms"),
                f64_("exec_ms"),
                f64_("total_latency_ms"),
                f64_("cost_usd"),
                f64_null("peak_memory_mib"),
            ];
            let metadata = [(
                "sandstorm.telemetry.version".to_owned(),
                TELEMETRY_SCHEMA_VERSION.to_owned(),
            )]
            .into();
            Arc::new(Schema::new_with_metadata(fields, metadata))
        })
        .clone()
}

/// Builds one Arrow batch from rows.
pub fn to_record_batch(rows: &[TelemetryRecord]) -> Result<RecordBatch, FeaturesError> {
    let schema = schema();
    let fields: Vec<FieldRef> = schema.fields().iter().cloned().collect();
    let batch = serde_arrow::to_record_batch(&fields, &rows)
        .map_err(|e| FeaturesError::TelemetrySchema(e.to_string()))?;
    Ok(batch.with_schema(schema)?)
}

/// Checks that `batch` has every telemetry column with the expected type, naming the first
/// one that does not.
pub fn check_schema(batch_schema: &Schema) -> Result<(), FeaturesError> {
    for expected in schema().fields() {
        let found = batch_schema.field_with_name(expected.name()).map_err(|_| {
            FeaturesError::TelemetrySchema(format!("column `{}` is missing", expected.name()))
        })?;
        if !types_compatible(expected.data_type(), found.data_type()) {
            return Err(FeaturesError::TelemetrySchema(format!(
                "column `{}` has type {}, expected {}",
                expected.name(),
                found.data_type(),
                expected.data_type()
            )));
        }
    }
    Ok(())
}

fn types_compatible(expected: &DataType, found: &DataType) -> bool {
    match (expected, found) {
        (DataType::Utf8, DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View) => true,
        (DataType::Utf8, DataType::Dictionary(_, value)) => types_compatible(expected, value),
        (DataType::Timestamp(unit_e, _), DataType::Timestamp(unit_f, _)) => unit_e == unit_f,
        (DataType::List(_), DataType::List(_) | DataType::LargeList(_)) => true,
        (DataType::Struct(e), DataType::Struct(f)) => {
            e.len() == f.len()
                && e.iter().zip(f.iter()).all(|(e, f)| {
                    e.name() == f.name() && types_compatible(e.data_type(), f.data_type())
                })
        }
        (e, f) => e == f,
    }
}

/// Reads rows back from a batch with the telemetry schema.
pub fn from_record_batch(batch: &RecordBatch) -> Result<Vec<TelemetryRecord>, FeaturesError> {
    check_schema(batch.schema_ref())?;
    serde_arrow::from_record_batch(batch).map_err(|e| FeaturesError::TelemetrySchema(e.to_string()))
}
