//! Training configuration files for data scientists: `train.toml` (LightGBM parameters by their
//! own names in a `[params]` table, per-model overrides, cross-validation, search and report
//! settings, inverse-propensity weighting, the `[data]` row selection evaluated by polars) or
//! LightGBM's own `key = value` `.conf` format.
//! Every parameter name is checked against the names and aliases of the LightGBM library
//! linked in, so a typo is an error that names the key instead of a silently ignored setting.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use sandstorm_features::model::ModelRole;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::pipeline::{DataSelection, parse_time};
use crate::weighting::{DEFAULT_MAX_WEIGHT, IpwConfig};
use crate::{TrainConfig, TrainerError, lgbm};

/// `train.toml`. Every table and key is optional; absent values keep [`TrainConfig`]'s.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct TrainFile {
    seed: Option<u64>,
    holdout_fraction: Option<f64>,
    valid_fraction: Option<f64>,
    num_iterations: Option<usize>,
    early_stopping_rounds: Option<usize>,
    min_rows: Option<usize>,
    /// LightGBM parameters for every model.
    #[serde(default)]
    params: toml::Table,
    /// Per-model LightGBM parameters, by model name (`latency_p50`, ...).
    #[serde(default)]
    models: BTreeMap<String, toml::Table>,
    cv: Option<CvSection>,
    search: Option<SearchSection>,
    report: Option<ReportSection>,
    weighting: Option<WeightingSection>,
    data: Option<DataSection>,
}

/// `[data]`: which telemetry rows to train on (`crate::pipeline`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DataSection {
    /// A date (`"2026-11-01"` or TOML's `2026-11-01`) or an RFC 3339 time.
    since: Option<toml::Value>,
    until: Option<toml::Value>,
    /// A polars SQL predicate.
    filter: Option<String>,
    #[serde(default)]
    dedupe_by: Vec<String>,
    max_rows: Option<usize>,
    /// Derived columns: name = polars SQL expression.
    #[serde(default)]
    columns: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct CvSection {
    folds: usize,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct SearchSection {
    trials: usize,
    /// e.g. `"60s"`, `"5m"`.
    budget: Option<String>,
}

/// `[weighting]`: inverse-propensity weighting of training rows.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct WeightingSection {
    #[serde(default)]
    ipw: bool,
    /// Weights above it are clipped to it (default 20).
    max_weight: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReportSection {
    enabled: Option<bool>,
    shap_sample: Option<usize>,
}

/// Reads `path` (`.toml`, or LightGBM's `key = value` format for any other extension) over
/// `base` and returns the resulting configuration.
pub(crate) fn load(path: &Path, base: TrainConfig) -> Result<TrainConfig, TrainerError> {
    let text = std::fs::read_to_string(path).map_err(|source| TrainerError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    let is_toml = path.extension().is_some_and(|e| e == "toml");
    let file = if is_toml {
        toml::from_str::<TrainFile>(&text)
            .map_err(|e| TrainerError::Config(format!("{}: {e}", path.display())))?
    } else {
        TrainFile {
            params: parse_lightgbm_conf(&text)
                .map_err(|e| TrainerError::Config(format!("{}: {e}", path.display())))?,
            ..TrainFile::default()
        }
    };
    apply(file, base)
}

fn apply(file: TrainFile, mut cfg: TrainConfig) -> Result<TrainConfig, TrainerError> {
    macro_rules! set {
        ($($f:ident),*) => { $(if let Some(v) = file.$f { cfg.$f = v; })* };
    }
    set!(
        seed,
        holdout_fraction,
        valid_fraction,
        num_iterations,
        early_stopping_rounds,
        min_rows
    );
    cfg.params.extend(to_json_params(&file.params)?);
    for (name, table) in &file.models {
        let role = ModelRole::ALL
            .into_iter()
            .find(|r| r.as_str() == name)
            .ok_or_else(|| {
                TrainerError::Config(format!(
                    "unknown model `{name}` in [models] (expected one of {})",
                    ModelRole::ALL.map(ModelRole::as_str).join(", ")
                ))
            })?;
        cfg.model_params
            .entry(role)
            .or_default()
            .extend(to_json_params(table)?);
    }
    if let Some(cv) = file.cv {
        cfg.cv_folds = cv.folds;
    }
    if let Some(s) = file.search {
        cfg.search_trials = s.trials;
        if let Some(b) = s.budget {
            cfg.search_budget = parse_duration(&b)?;
        }
    }
    if let Some(w) = file.weighting {
        if w.ipw {
            let ipw = IpwConfig {
                max_weight: w.max_weight.unwrap_or(DEFAULT_MAX_WEIGHT),
            };
            ipw.validate()?;
            cfg.ipw = Some(ipw);
        } else if w.max_weight.is_some() {
            return Err(TrainerError::Config(
                "weighting.max_weight is set but weighting.ipw is not true".to_owned(),
            ));
        } else {
            cfg.ipw = None;
        }
    }
    if let Some(d) = file.data {
        let time = |key: &str, v: Option<toml::Value>| match v {
            None => Ok(None),
            Some(toml::Value::String(s)) => parse_time(key, &s).map(Some),
            Some(toml::Value::Datetime(d)) => parse_time(key, &d.to_string()).map(Some),
            Some(other) => Err(TrainerError::Config(format!(
                "{key}: expected a date such as \"2026-11-01\" or an RFC 3339 time, found {other}"
            ))),
        };
        cfg.data = DataSelection {
            since_us: time("data.since", d.since)?,
            until_us: time("data.until", d.until)?,
            columns: d.columns,
            filter: d.filter,
            dedupe_by: d.dedupe_by,
            max_rows: d.max_rows,
        };
        cfg.data.validate()?;
    }
    if let Some(r) = file.report {
        if let Some(e) = r.enabled {
            cfg.report = e;
        }
        if let Some(n) = r.shap_sample {
            cfg.shap_sample = n;
        }
    }
    Ok(cfg)
}

/// LightGBM's config format: `key = value` lines, `#` comments.
fn parse_lightgbm_conf(text: &str) -> Result<toml::Table, String> {
    let mut table = toml::Table::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        let (k, v) = line
            .split_once('=')
            .ok_or_else(|| format!("line {}: expected `key = value`", i + 1))?;
        let v = v.trim();
        let value = if let Ok(n) = v.parse::<i64>() {
            toml::Value::Integer(n)
        } else if let Ok(x) = v.parse::<f64>() {
            toml::Value::Float(x)
        } else {
            toml::Value::String(v.to_owned())
        };
        table.insert(k.trim().to_owned(), value);
    }
    Ok(table)
}

/// LightGBM parameters as JSON values, names checked (values are checked by LightGBM itself
/// when a dataset or booster is created).
fn to_json_params(table: &toml::Table) -> Result<Map<String, Value>, TrainerError> {
    let mut out = Map::new();
    for (k, v) in table {
        check_param_name(k)?;
        let value = match v {
            toml::Value::String(s) => Value::String(s.clone()),
            toml::Value::Integer(n) => Value::from(*n),
            toml::Value::Float(x) => Value::from(*x),
            toml::Value::Boolean(b) => Value::Bool(*b),
            toml::Value::Array(items) => Value::String(
                items
                    .iter()
                    .map(|i| match i {
                        toml::Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
            ),
            other => {
                return Err(TrainerError::Config(format!(
                    "lightgbm parameter `{k}` has an unsupported value {other}"
                )));
            }
        };
        out.insert(k.clone(), value);
    }
    Ok(out)
}

/// Parameters the trainer sets from its own options or data and which a file must not change.
const RESERVED: [&str; 3] = [
    "categorical_feature",
    "num_iterations",
    "early_stopping_round",
];

/// Errors unless `name` is a LightGBM parameter or alias that a file may set.
pub(crate) fn check_param_name(name: &str) -> Result<(), TrainerError> {
    let canonical = canonical_name(name)?.ok_or_else(|| {
        TrainerError::Config(format!(
            "unknown lightgbm parameter `{name}` (see https://lightgbm.readthedocs.io/en/latest/Parameters.html)"
        ))
    })?;
    if RESERVED.contains(&canonical.as_str()) {
        return Err(TrainerError::Config(format!(
            "lightgbm parameter `{name}` is set by the trainer (use the top-level num_iterations / early_stopping_rounds keys; categorical features come from the feature encoding)"
        )));
    }
    Ok(())
}

/// The canonical LightGBM name of a parameter or alias, `None` when LightGBM does not know it.
pub(crate) fn canonical_name(name: &str) -> Result<Option<String>, TrainerError> {
    static TABLE: OnceLock<BTreeMap<String, String>> = OnceLock::new();
    if TABLE.get().is_none() {
        let mut t = BTreeMap::new();
        for (canonical, aliases) in lgbm::param_aliases()? {
            for a in aliases {
                t.insert(a, canonical.clone());
            }
            t.insert(canonical.clone(), canonical);
        }
        let _ = TABLE.set(t);
    }
    Ok(TABLE.get().and_then(|t| t.get(name).cloned()))
}

/// Overlays `overrides` on `params`: a key given under any alias replaces the default given
/// under another name, and is kept under the name the user wrote.
pub(crate) fn merge_params(
    params: &mut Map<String, Value>,
    overrides: &Map<String, Value>,
) -> Result<(), TrainerError> {
    for (k, v) in overrides {
        let canon = canonical_name(k)?;
        let clashes: BTreeSet<String> = params
            .keys()
            .filter(|p| canonical_name(p).ok().flatten() == canon)
            .cloned()
            .collect();
        for c in clashes {
            params.remove(&c);
        }
        params.insert(k.clone(), v.clone());
    }
    Ok(())
}

/// `"90s"`, `"2m"`, `"1h"`, `"500ms"` or plain seconds.
pub fn parse_duration(text: &str) -> Result<Duration, TrainerError> {
    let t = text.trim();
    let (num, scale) = if let Some(n) = t.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = t.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = t.strip_suffix('m') {
        (n, 60.0)
    } else if let Some(n) = t.strip_suffix('h') {
        (n, 3600.0)
    } else {
        (t, 1.0)
    };
    num.trim()
        .parse::<f64>()
        .ok()
        .filter(|v| v.is_finite() && *v >= 0.0)
        .map(|v| Duration::from_secs_f64(v * scale))
        .ok_or_else(|| {
            TrainerError::Config(format!("invalid duration `{text}` (e.g. 60s, 5m, 1h)"))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_and_aliases_pass_unknown_ones_fail() {
        for ok in [
            "num_leaves",
            "eta",
            "learning_rate",
            "lambda_l2",
            "reg_alpha",
            "verbosity",
        ] {
            check_param_name(ok).unwrap();
        }
        let err = check_param_name("num_leafs").unwrap_err().to_string();
        assert!(
            err.contains("unknown lightgbm parameter `num_leafs`"),
            "{err}"
        );
        assert!(check_param_name("num_boost_round").is_err());
    }

    #[test]
    fn alias_overrides_replace_defaults_and_keep_the_users_spelling() {
        let mut p = Map::new();
        p.insert("learning_rate".into(), Value::from(0.05));
        p.insert("num_leaves".into(), Value::from(31));
        let mut o = Map::new();
        o.insert("eta".into(), Value::from(0.2));
        merge_params(&mut p, &o).unwrap();
        assert_eq!(p.get("eta"), Some(&Value::from(0.2)));
        assert!(!p.contains_key("learning_rate"));
        assert_eq!(p.get("num_leaves"), Some(&Value::from(31)));
    }

    #[test]
    fn lightgbm_conf_and_toml_files_load() {
        let dir = tempfile::tempdir().unwrap();
        let conf = dir.path().join("train.conf");
        std::fs::write(&conf, "# comment\nnum_leaves = 15\nboosting = gbdt\n").unwrap();
        let cfg = load(&conf, TrainConfig::default()).unwrap();
        assert_eq!(cfg.params["num_leaves"], 15);
        assert_eq!(cfg.params["boosting"], "gbdt");

        let toml_path = dir.path().join("train.toml");
        std::fs::write(
            &toml_path,
            "seed = 9\n[params]\nlearning_rate = 0.1\n[models.latency_p95]\nalpha = 0.9\n\
             [cv]\nfolds = 3\n[search]\ntrials = 4\nbudget = \"2m\"\n",
        )
        .unwrap();
        let cfg = load(&toml_path, TrainConfig::default()).unwrap();
        assert_eq!(cfg.seed, 9);
        assert_eq!(cfg.cv_folds, 3);
        assert_eq!(cfg.search_trials, 4);
        assert_eq!(cfg.search_budget, Duration::from_secs(120));
        assert_eq!(cfg.model_params[&ModelRole::LatencyP95]["alpha"], 0.9);

        assert_eq!(cfg.ipw, None);

        std::fs::write(&toml_path, "[weighting]\nipw = true\nmax_weight = 50\n").unwrap();
        let cfg = load(&toml_path, TrainConfig::default()).unwrap();
        assert_eq!(cfg.ipw, Some(IpwConfig { max_weight: 50.0 }));
        std::fs::write(&toml_path, "[weighting]\nipw = true\n").unwrap();
        let cfg = load(&toml_path, TrainConfig::default()).unwrap();
        assert_eq!(cfg.ipw, Some(IpwConfig::default()));
        for (bad, why) in [
            (
                "[weighting]\nipw = true\nmax_weight = 0.5\n",
                "weighting.max_weight",
            ),
            ("[weighting]\nmax_weight = 5\n", "weighting.ipw is not true"),
            (
                "[weighting]\nipw = true\nclip = 5\n",
                "unknown field `clip`",
            ),
        ] {
            std::fs::write(&toml_path, bad).unwrap();
            let err = load(&toml_path, TrainConfig::default())
                .unwrap_err()
                .to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }

        std::fs::write(&toml_path, "[params]\nnum_leafs = 3\n").unwrap();
        let err = load(&toml_path, TrainConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("`num_leafs`"), "{err}");
        std::fs::write(&toml_path, "[models.latency_p99]\nalpha = 0.9\n").unwrap();
        let err = load(&toml_path, TrainConfig::default())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown model `latency_p99`"), "{err}");
    }

    #[test]
    fn data_section_reads_times_sql_and_limits() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("train.toml");
        std::fs::write(
            &path,
            "[data]\nsince = \"2026-11-01\"\nuntil = 2026-12-01T06:00:00Z\n\
             filter = \"provider != 'local' AND attempt = 0\"\ndedupe_by = [\"run_id\", \"attempt\"]\n\
             max_rows = 5000\n[data.columns]\nslow = \"total_latency_ms > 1000\"\n",
        )
        .unwrap();
        let cfg = load(&path, TrainConfig::default()).unwrap();
        let d = &cfg.data;
        assert_eq!(d.since_us, Some(parse_time("t", "2026-11-01").unwrap()));
        assert_eq!(
            d.until_us,
            Some(parse_time("t", "2026-12-01T06:00:00Z").unwrap())
        );
        assert_eq!(
            d.filter.as_deref(),
            Some("provider != 'local' AND attempt = 0")
        );
        assert_eq!(d.dedupe_by, ["run_id", "attempt"]);
        assert_eq!(d.max_rows, Some(5000));
        assert_eq!(d.columns["slow"], "total_latency_ms > 1000");
        assert!(TrainConfig::default().data.is_everything());

        for (bad, why) in [
            (
                "[data]\nsince = \"last week\"\n",
                "data.since: invalid time `last week`",
            ),
            ("[data]\nuntil = 3\n", "data.until: expected a date"),
            (
                "[data]\nsince = \"2026-12-01\"\nuntil = \"2026-11-01\"\n",
                "data.since (2026-12-01T00:00:00Z) must be before data.until",
            ),
            (
                "[data]\nfilter = \"provider = \"\n",
                "data.filter: `provider = `",
            ),
            ("[data]\nfilter = \"  \"\n", "data.filter is empty"),
            (
                "[data]\ndedupe_by = [\"nope\"]\n",
                "data.dedupe_by: unknown column `nope`",
            ),
            ("[data]\nmax_rows = 0\n", "data.max_rows must be at least 1"),
            ("[data]\nwhere = \"x\"\n", "unknown field `where`"),
            ("[data.columns]\nstatus = \"1\"\n", "data.columns.status"),
        ] {
            std::fs::write(&path, bad).unwrap();
            let err = load(&path, TrainConfig::default()).unwrap_err().to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("60s").unwrap(), Duration::from_secs(60));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("1.5").unwrap(), Duration::from_millis(1500));
        assert!(parse_duration("soon").is_err());
    }
}
