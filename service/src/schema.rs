//! OpenAPI schemas of the request and decision types. `RunRequest` and `Decision` live in
//! crates that must not depend on a serving framework, so their shapes are described here; a
//! test checks that these descriptions name exactly the fields the real types serialize.

#![allow(dead_code)] // these types only describe JSON for the OpenAPI document

use std::collections::BTreeMap;

use serde::Serialize;
use utoipa::ToSchema;

/// A request to run code somewhere (`sandstorm_features::RunRequest`). Unknown fields are
/// rejected with the field named.
#[derive(Serialize, ToSchema)]
pub(crate) struct RunRequestDoc {
    /// `python`, `node`, `bash` or `sh`.
    #[schema(example = "python")]
    language: String,
    /// A shell command line (`sh -c`); give `command` or `code`.
    #[schema(example = "python3 -c 'print(1)'")]
    command: Option<String>,
    /// Inline code, run with the language's interpreter.
    code: Option<String>,
    /// Files placed in the job directory.
    files: Vec<InputFileDoc>,
    resources: ResourcesDoc,
    /// Wall-clock limit in seconds (default 60).
    timeout_s: Option<f64>,
    /// Whether the code may use the network (default false).
    allow_network: Option<bool>,
    /// `optimize_cost` (default), `optimize_latency` or `balanced`.
    strategy: Option<String>,
    /// For `balanced`: weight of cost against latency in [0, 1].
    cost_weight: Option<f64>,
    constraints: ConstraintsDoc,
    /// Defaults to the api key's tenant; naming another tenant is refused.
    tenant: Option<String>,
    labels: BTreeMap<String, String>,
    /// A stable name for a recurring job (1-512 characters); the router learns its past
    /// outcomes per candidate.
    workload: Option<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct InputFileDoc {
    /// Relative path without `..`.
    path: String,
    content: String,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ResourcesDoc {
    /// vCPUs (default 1).
    cpu: Option<f64>,
    /// Memory in MiB (default 512).
    memory_mib: Option<u64>,
    disk_mib: Option<u64>,
    gpu: Option<GpuDoc>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct GpuDoc {
    count: u32,
    kinds: Vec<String>,
}

#[derive(Serialize, ToSchema)]
pub(crate) struct ConstraintsDoc {
    max_cost_usd: Option<f64>,
    /// On the predicted p95 latency.
    max_latency_ms: Option<f64>,
    region: Option<String>,
    allowed_regions: Vec<String>,
    /// `process`, `namespace`, `gvisor` or `microvm`.
    min_isolation: Option<String>,
    /// e.g. `["local"]` to run on this host.
    allowed_providers: Vec<String>,
    excluded_providers: Vec<String>,
    require_gpu: Option<bool>,
}

/// A ranked, explained decision (`sandstorm_router::Decision`).
#[derive(Serialize, ToSchema)]
pub(crate) struct DecisionDoc {
    decision_id: String,
    decided_at: String,
    /// `{"kind": "optimize_cost" | "optimize_latency" | "balanced", "cost_weight"?}`.
    #[schema(value_type = Object)]
    strategy: serde_json::Value,
    model_version: String,
    /// Id of the chosen candidate, `provider/backend/region`.
    winner: String,
    fallbacks: Vec<String>,
    explanation: String,
    unseen_levels: u32,
    n_candidates: usize,
    n_feasible: usize,
    /// Every candidate with its prediction, score and verdict (winner, fallback, outscored
    /// or filtered with the reason).
    #[schema(value_type = Vec<Object>)]
    candidates: Vec<serde_json::Value>,
    /// Probability with which the winner was chosen: 1 unless the service explores
    /// (`exploration` in the configuration).
    selection_probability: f64,
    /// Whether exploration chose another candidate than the greedy winner (then the first
    /// fallback).
    explored: bool,
}

/// `POST /v1/runs`: the run was accepted and is starting.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunAccepted {
    pub(crate) run_id: String,
    pub(crate) decision_id: String,
    /// The candidate the run executes on.
    pub(crate) candidate: String,
    #[schema(value_type = String)]
    pub(crate) state: crate::runs::RunState,
    /// `GET` it for status and result.
    pub(crate) status_url: String,
    /// Server-sent events of the output.
    pub(crate) logs_url: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Health {
    pub(crate) status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) model_version: Option<String>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct PolicyList {
    pub(crate) policies: Vec<crate::policies::PolicyInfo>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelsView {
    /// The active model set: version, training windows, and per model its trees, parameters
    /// and holdout metrics (`metadata.json` of the model directory).
    #[schema(value_type = Object)]
    pub(crate) active: serde_json::Value,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ModelsReloaded {
    pub(crate) previous_version: String,
    pub(crate) version: String,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct CatalogView {
    pub(crate) schema_version: u32,
    #[schema(value_type = Vec<Object>)]
    pub(crate) regions: serde_json::Value,
    #[schema(value_type = Vec<Object>)]
    pub(crate) providers: serde_json::Value,
    /// Every candidate, with whether this host can run it now.
    #[schema(value_type = Vec<Object>)]
    pub(crate) candidates: Vec<serde_json::Value>,
}

#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RunList {
    pub(crate) runs: Vec<crate::runs::RunView>,
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use sandstorm_features::{GpuRequest, InputFile, Language, RunRequest};
    use utoipa::openapi::{RefOr, schema::Schema};

    use super::*;

    fn keys(v: &serde_json::Value) -> BTreeSet<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }

    fn doc_keys<T: ToSchema>() -> BTreeSet<String> {
        let mut schemas = Vec::new();
        T::schemas(&mut schemas);
        let RefOr::T(Schema::Object(o)) = T::schema() else {
            panic!("not an object schema")
        };
        o.properties.keys().cloned().collect()
    }

    #[test]
    fn request_doc_names_every_field_of_run_request() {
        let mut r = RunRequest::command(Language::Python, "x");
        r.files.push(InputFile {
            path: "a".into(),
            content: "b".into(),
        });
        r.resources.gpu = Some(GpuRequest {
            count: 1,
            kinds: vec![],
        });
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(doc_keys::<RunRequestDoc>(), keys(&v));
        assert_eq!(doc_keys::<ResourcesDoc>(), keys(&v["resources"]));
        assert_eq!(doc_keys::<ConstraintsDoc>(), keys(&v["constraints"]));
        assert_eq!(doc_keys::<InputFileDoc>(), keys(&v["files"][0]));
        assert_eq!(doc_keys::<GpuDoc>(), keys(&v["resources"]["gpu"]));
    }
}
