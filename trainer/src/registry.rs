//! The model registry: versioned model directories under one root, a `champion` pointer file
//! (replaced atomically), promotion of a challenger only when it beats the champion on the same
//! recent telemetry window, rollback, and `promotions.jsonl`, an append-only record of every
//! decision with both sides' metrics.
//!
//! Layout:
//!
//! ```text
//! REGISTRY/
//!   champion                    the champion's version, one line
//!   promotions.jsonl            one JSON object per decision (promote, refuse, rollback)
//!   <version>/                  a complete model directory (what `sandstorm train` wrote)
//!     metadata.json feature_schema.json <role>.txt training.json report.html report/
//!     mlflow/<role>/MLmodel     MLflow model (lightgbm flavour, signature) per model
//!     mlflow/<role>/model.lgb   the LightGBM text model
//! ```
//!
//! The registry may live in an object store (`s3://bucket/registry`, [`Registry::open_at`])
//! with the same layout: a version is uploaded whole with `metadata.json` last (a version
//! without it is incomplete and ignored), the decision is appended to `promotions.jsonl`
//! (read, append, put: one promoter at a time), and the `champion` object is put last, so a
//! reader that sees a new champion finds its version complete and its decision recorded.
//! Versions are downloaded into a local cache to be evaluated
//! ([`sandstorm_storage::models`]).
//!
//! Primary metric per model (lower is better): `latency_p50` `mae_ms`, `latency_p95`
//! `pinball_loss_ms`, `cost` `mae_usd`, `failure` `logloss`. With relative improvements
//! `r = (champion - challenger) / champion`, a challenger is promoted when the mean `r` over
//! the four models is at least the margin and no model is worse by more than the margin.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use lightgbm3::Booster;
use sandstorm_features::encoding::{FEATURES, FeatureInput, N_FEATURES};
use sandstorm_features::model::{
    FEATURE_SCHEMA_FILE, METADATA_FILE, ModelMetadata, ModelRole, StoredFeatureSchema, TimeWindow,
};
use sandstorm_features::telemetry::TelemetryRecord;
use serde::{Deserialize, Serialize};
use serde_json::json;
use sha2::Digest as _;
use time::OffsetDateTime;

use sandstorm_storage::{Location, Remote, models};

use crate::{TrainerError, actual_values, executed, holdout_metrics, predict, rfc3339, select};

/// The champion pointer file.
pub const CHAMPION_FILE: &str = "champion";
/// The decision log.
pub const PROMOTIONS_FILE: &str = "promotions.jsonl";
/// MLflow models of a version, one directory per model.
pub const MLFLOW_DIR: &str = "mlflow";

/// The primary metric of each model (lower is better).
pub fn primary_metric(role: ModelRole) -> &'static str {
    match role {
        ModelRole::LatencyP50 => "mae_ms",
        ModelRole::LatencyP95 => "pinball_loss_ms",
        ModelRole::Cost => "mae_usd",
        ModelRole::Failure => "logloss",
    }
}

/// How a challenger is judged.
#[derive(Debug, Clone)]
pub struct PromotionPolicy {
    /// Required mean relative improvement of the primary metrics (e.g. 0.02), also the largest
    /// relative degradation tolerated on any one model.
    pub margin: f64,
    /// Share of the most recent executed telemetry rows both models are evaluated on.
    pub window_fraction: f64,
}

impl Default for PromotionPolicy {
    fn default() -> Self {
        Self {
            margin: 0.02,
            window_fraction: 0.2,
        }
    }
}

/// Both sides of one model in a decision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    pub metric: String,
    pub champion: Option<f64>,
    pub challenger: f64,
    /// `(champion - challenger) / champion`; positive is better.
    pub improvement: Option<f64>,
}

/// One line of `promotions.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Decision {
    pub at: String,
    /// `promote`, `refuse` or `rollback`.
    pub action: String,
    /// The version the decision is about (the challenger, or the version rolled back to).
    pub version: String,
    /// The champion before the decision.
    pub previous_champion: Option<String>,
    /// Whether the champion pointer changed.
    pub promoted: bool,
    pub reason: String,
    pub margin: Option<f64>,
    /// The telemetry window both models were evaluated on.
    pub window: Option<TimeWindow>,
    pub comparisons: BTreeMap<String, Comparison>,
}

/// A version in the registry.
#[derive(Debug, Clone)]
pub struct VersionInfo {
    pub version: String,
    pub dir: PathBuf,
    pub metadata: ModelMetadata,
    pub champion: bool,
}

/// A registry rooted at a directory or an object-store prefix.
#[derive(Debug, Clone)]
pub struct Registry {
    /// The registry directory; for an object store, the local cache of downloaded versions.
    root: PathBuf,
    /// The object store holding the registry, if it is not local.
    remote: Option<Remote>,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TrainerError + '_ {
    move |source| TrainerError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read_metadata(dir: &Path) -> Result<ModelMetadata, TrainerError> {
    let path = dir.join(METADATA_FILE);
    let text = std::fs::read_to_string(&path).map_err(|e| {
        TrainerError::Input(format!("{} is not a model directory: {e}", dir.display()))
    })?;
    serde_json::from_str(&text).map_err(|e| TrainerError::Input(format!("{}: {e}", path.display())))
}

impl Registry {
    /// Opens (creating it if needed) the registry at `root`.
    pub fn open(root: &Path) -> Result<Self, TrainerError> {
        std::fs::create_dir_all(root).map_err(io(root))?;
        Ok(Self {
            root: root.to_path_buf(),
            remote: None,
        })
    }

    /// Opens the registry at `location`: a local directory ([`Registry::open`]) or an object
    /// store, whose versions are downloaded into `cache` (default:
    /// [`models::default_models_cache`]) when they are evaluated.
    pub fn open_at(location: &Location, cache: Option<&Path>) -> Result<Self, TrainerError> {
        match location {
            Location::Local(dir) => Self::open(dir),
            Location::Remote(remote) => Ok(Self {
                root: cache.map_or_else(|| models::default_models_cache(remote), Path::to_path_buf),
                remote: Some(remote.clone()),
            }),
        }
    }

    /// The registry directory (for an object store: the local cache of its versions).
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the registry is, for messages: its directory or URL.
    pub fn location(&self) -> String {
        match &self.remote {
            Some(remote) => remote.url(),
            None => self.root.display().to_string(),
        }
    }

    /// Object `name` of a remote registry as text, `None` when missing.
    fn remote_text(remote: &Remote, name: &str) -> Result<Option<String>, TrainerError> {
        Ok(remote
            .get(name)?
            .map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    /// The directory of `version`.
    pub fn version_dir(&self, version: &str) -> Result<PathBuf, TrainerError> {
        let valid = !version.is_empty()
            && version
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && !version.starts_with('.');
        let missing = || {
            TrainerError::Registry(format!(
                "no version `{version}` in registry {}",
                self.location()
            ))
        };
        if let Some(remote) = &self.remote {
            if !valid {
                return Err(missing());
            }
            return match models::fetch_model_dir(&remote.child(version), &self.root) {
                Ok(dir) => Ok(dir),
                Err(sandstorm_storage::StorageError::NotFound(_)) => Err(missing()),
                Err(e) => Err(e.into()),
            };
        }
        let dir = self.root.join(version);
        if !valid || !dir.join(METADATA_FILE).is_file() {
            return Err(missing());
        }
        Ok(dir)
    }

    /// Copies the model directory `model_dir` into the registry as `<version>/` (its
    /// `metadata.json` version), with an MLflow model per LightGBM model, and returns the
    /// version. Registering a version again is a no-op.
    pub fn register(&self, model_dir: &Path) -> Result<String, TrainerError> {
        let meta = read_metadata(model_dir)?;
        let version = meta.version.clone();
        if let Some(remote) = &self.remote {
            return self.register_remote(remote, model_dir, &meta);
        }
        let dest = self.root.join(&version);
        if dest.join(METADATA_FILE).is_file() {
            return Ok(version);
        }
        let tmp = self.root.join(format!(".{version}.tmp"));
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(io(&tmp))?;
        }
        copy_dir(model_dir, &tmp)?;
        write_mlflow(&tmp, &meta)?;
        std::fs::rename(&tmp, &dest).map_err(io(&dest))?;
        tracing::info!(%version, registry = %self.location(), "registered model set");
        Ok(version)
    }

    /// Uploads a model directory (with its MLflow models, built in a local temporary
    /// directory) as `<version>/`, `metadata.json` last.
    fn register_remote(
        &self,
        remote: &Remote,
        model_dir: &Path,
        meta: &ModelMetadata,
    ) -> Result<String, TrainerError> {
        let version = meta.version.clone();
        let target = remote.child(&version);
        if target.get(METADATA_FILE)?.is_some() {
            return Ok(version);
        }
        std::fs::create_dir_all(&self.root).map_err(io(&self.root))?;
        let tmp = self
            .root
            .join(format!(".register-{}", uuid::Uuid::new_v4().simple()));
        let uploaded = copy_dir(model_dir, &tmp)
            .and_then(|()| write_mlflow(&tmp, meta))
            .and_then(|()| Ok(target.upload_dir(&tmp, METADATA_FILE)?));
        let _ = std::fs::remove_dir_all(&tmp);
        uploaded?;
        tracing::info!(%version, registry = %remote.url(), "registered model set");
        Ok(version)
    }

    /// Every version, oldest first.
    pub fn versions(&self) -> Result<Vec<VersionInfo>, TrainerError> {
        let champion = self.champion()?;
        if let Some(remote) = &self.remote {
            let mut out = Vec::new();
            for name in remote.list_dirs()? {
                if name.starts_with('.') {
                    continue;
                }
                let version = remote.child(&name);
                let Some(text) = Self::remote_text(&version, METADATA_FILE)? else {
                    continue; // incomplete upload
                };
                let metadata: ModelMetadata = serde_json::from_str(&text).map_err(|e| {
                    TrainerError::Input(format!("{}: {e}", version.object_url(METADATA_FILE)))
                })?;
                out.push(VersionInfo {
                    champion: champion.as_deref() == Some(name.as_str()),
                    dir: PathBuf::from(version.url()),
                    version: name,
                    metadata,
                });
            }
            out.sort_by(|a, b| {
                (&a.metadata.created_at, &a.version).cmp(&(&b.metadata.created_at, &b.version))
            });
            return Ok(out);
        }
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.root).map_err(io(&self.root))? {
            let entry = entry.map_err(io(&self.root))?;
            let dir = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') || !dir.join(METADATA_FILE).is_file() {
                continue;
            }
            let metadata = read_metadata(&dir)?;
            out.push(VersionInfo {
                champion: champion.as_deref() == Some(name.as_str()),
                version: name,
                dir,
                metadata,
            });
        }
        out.sort_by(|a, b| {
            (&a.metadata.created_at, &a.version).cmp(&(&b.metadata.created_at, &b.version))
        });
        Ok(out)
    }

    /// The champion's version, if any.
    pub fn champion(&self) -> Result<Option<String>, TrainerError> {
        if let Some(remote) = &self.remote {
            return Ok(models::read_champion(remote)?);
        }
        let path = self.root.join(CHAMPION_FILE);
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(Some(s.trim().to_owned())),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io(&path)(e)),
        }
    }

    /// The champion's model directory, if any.
    pub fn champion_dir(&self) -> Result<Option<PathBuf>, TrainerError> {
        self.champion()?.map(|v| self.version_dir(&v)).transpose()
    }

    /// Every recorded decision, oldest first.
    pub fn history(&self) -> Result<Vec<Decision>, TrainerError> {
        let (path, text) = match &self.remote {
            Some(remote) => match Self::remote_text(remote, PROMOTIONS_FILE)? {
                Some(t) => (PathBuf::from(remote.object_url(PROMOTIONS_FILE)), t),
                None => return Ok(Vec::new()),
            },
            None => {
                let path = self.root.join(PROMOTIONS_FILE);
                match std::fs::read_to_string(&path) {
                    Ok(t) => (path, t),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
                    Err(e) => return Err(io(&path)(e)),
                }
            }
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .enumerate()
            .map(|(i, l)| {
                serde_json::from_str(l).map_err(|e| {
                    TrainerError::Input(format!("{} line {}: {e}", path.display(), i + 1))
                })
            })
            .collect()
    }

    /// Evaluates `challenger` (a registered version) and the champion on the most recent
    /// `policy.window_fraction` of the executed rows of `telemetry`, promotes the challenger
    /// when it wins by the margin (or when there is no champion), and records the decision.
    pub fn promote(
        &self,
        challenger: &str,
        telemetry: &[TelemetryRecord],
        policy: &PromotionPolicy,
    ) -> Result<Decision, TrainerError> {
        if !(0.0..1.0).contains(&policy.margin) || !(0.0..=1.0).contains(&policy.window_fraction) {
            return Err(TrainerError::Config(
                "margin must be in [0, 1) and the window fraction in (0, 1]".to_owned(),
            ));
        }
        let challenger_dir = self.version_dir(challenger)?;
        let champion = self.champion()?;
        if champion.as_deref() == Some(challenger) {
            return Err(TrainerError::Registry(format!(
                "`{challenger}` is already the champion"
            )));
        }
        let rows = executed(telemetry);
        let n_window = ((rows.len() as f64) * policy.window_fraction).ceil() as usize;
        let window_rows = &rows[rows.len() - n_window.min(rows.len())..];
        if window_rows.len() < 20 {
            return Err(TrainerError::Input(format!(
                "need at least 20 executed telemetry rows in the evaluation window, found {}",
                window_rows.len()
            )));
        }
        let window = crate::window(window_rows);
        let ours = evaluate_dir(&challenger_dir, window_rows)?;
        let theirs = champion
            .as_deref()
            .map(|c| evaluate_dir(&self.version_dir(c)?, window_rows))
            .transpose()?;
        let mut comparisons = BTreeMap::new();
        for role in ModelRole::ALL {
            let metric = primary_metric(role);
            let challenger_value = ours.get(&role).copied().unwrap_or(f64::NAN);
            let champion_value = theirs
                .as_ref()
                .map(|t| t.get(&role).copied().unwrap_or(f64::NAN));
            let improvement = champion_value
                .filter(|c| *c > 0.0)
                .map(|c| (c - challenger_value) / c);
            comparisons.insert(
                role.as_str().to_owned(),
                Comparison {
                    metric: metric.to_owned(),
                    champion: champion_value,
                    challenger: challenger_value,
                    improvement,
                },
            );
        }
        let (promoted, reason) = if champion.is_none() {
            (true, "no champion yet".to_owned())
        } else {
            judge(&comparisons, policy.margin)
        };
        let mut reason = reason;
        let meta = read_metadata(&challenger_dir)?;
        if meta.training_window.to >= window.from || meta.validation_window.to >= window.from {
            reason.push_str(
                " (note: the evaluation window overlaps the challenger's training or validation rows)",
            );
        }
        let decision = Decision {
            at: rfc3339(OffsetDateTime::now_utc()),
            action: if promoted { "promote" } else { "refuse" }.to_owned(),
            version: challenger.to_owned(),
            previous_champion: champion,
            promoted,
            reason,
            margin: Some(policy.margin),
            window: Some(window),
            comparisons,
        };
        // The decision is recorded first and the pointer moved last: whoever sees the new
        // champion finds its decision in the log.
        self.record(&decision)?;
        if promoted {
            self.set_champion(challenger)?;
        }
        Ok(decision)
    }

    /// Makes the champion before the current one champion again (promotions and rollbacks
    /// form a stack) and records it.
    pub fn rollback(&self) -> Result<Decision, TrainerError> {
        let mut stack: Vec<String> = Vec::new();
        for d in self.history()? {
            match d.action.as_str() {
                "promote" if d.promoted => stack.push(d.version),
                "rollback" => {
                    stack.pop();
                }
                _ => {}
            }
        }
        let current = self.champion()?;
        if stack.len() < 2 || stack.last() != current.as_ref() {
            return Err(TrainerError::Registry(
                "no earlier champion to roll back to".to_owned(),
            ));
        }
        stack.pop();
        let target = stack.last().cloned().unwrap_or_default();
        self.version_dir(&target)?;
        let decision = Decision {
            at: rfc3339(OffsetDateTime::now_utc()),
            action: "rollback".to_owned(),
            version: target.clone(),
            previous_champion: current,
            promoted: true,
            reason: "rolled back to the previous champion".to_owned(),
            margin: None,
            window: None,
            comparisons: BTreeMap::new(),
        };
        self.record(&decision)?;
        self.set_champion(&target)?;
        Ok(decision)
    }

    /// Writes the champion pointer atomically (temporary file, fsync, rename).
    fn set_champion(&self, version: &str) -> Result<(), TrainerError> {
        if let Some(remote) = &self.remote {
            // One put: atomic on object stores.
            return Ok(remote.put(CHAMPION_FILE, format!("{version}\n"))?);
        }
        let path = self.root.join(CHAMPION_FILE);
        let tmp = self.root.join(format!(".{CHAMPION_FILE}.tmp"));
        let mut f = std::fs::File::create(&tmp).map_err(io(&tmp))?;
        f.write_all(format!("{version}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io(&path))
    }

    fn record(&self, d: &Decision) -> Result<(), TrainerError> {
        let line = serde_json::to_string(d).map_err(|e| TrainerError::Internal(e.to_string()))?;
        if let Some(remote) = &self.remote {
            // Object stores cannot append: read, append, put the whole log.
            let mut text = Self::remote_text(remote, PROMOTIONS_FILE)?.unwrap_or_default();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&line);
            text.push('\n');
            return Ok(remote.put(PROMOTIONS_FILE, text)?);
        }
        let path = self.root.join(PROMOTIONS_FILE);
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io(&path))?;
        f.write_all(format!("{line}\n").as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(io(&path))
    }
}

/// The promotion rule (see the module documentation).
fn judge(c: &BTreeMap<String, Comparison>, margin: f64) -> (bool, String) {
    let imps: Vec<(&String, f64)> = c
        .iter()
        .map(|(k, v)| (k, v.improvement.unwrap_or(f64::NAN)))
        .collect();
    if let Some((k, _)) = imps.iter().find(|(_, r)| !r.is_finite()) {
        return (
            false,
            format!("the {k} metric could not be compared on the window"),
        );
    }
    let mean = imps.iter().map(|(_, r)| r).sum::<f64>() / imps.len().max(1) as f64;
    if let Some((k, r)) = imps.iter().find(|(_, r)| *r < -margin) {
        return (
            false,
            format!(
                "{k} is {:.1}% worse than the champion (more than the {:.1}% margin)",
                -100.0 * r,
                100.0 * margin
            ),
        );
    }
    if mean < margin {
        return (
            false,
            format!(
                "mean improvement {:.2}% is below the {:.1}% margin",
                100.0 * mean,
                100.0 * margin
            ),
        );
    }
    (
        true,
        format!(
            "mean improvement {:.2}% meets the {:.1}% margin",
            100.0 * mean,
            100.0 * margin
        ),
    )
}

/// Primary metric of each model of the directory `dir` on `rows` (time-ordered).
pub(crate) fn evaluate_dir(
    dir: &Path,
    rows: &[&TelemetryRecord],
) -> Result<BTreeMap<ModelRole, f64>, TrainerError> {
    let path = dir.join(FEATURE_SCHEMA_FILE);
    let schema: StoredFeatureSchema =
        serde_json::from_str(&std::fs::read_to_string(&path).map_err(io(&path))?)
            .map_err(|e| TrainerError::Input(format!("{}: {e}", path.display())))?;
    schema.space.check_compatible()?;
    let meta = read_metadata(dir)?;
    let mut x = Vec::with_capacity(rows.len() * N_FEATURES);
    schema
        .space
        .encode_all(rows.iter().map(|r| FeatureInput::from_record(r)), &mut x);
    let mut out = BTreeMap::new();
    for (role, entry) in &meta.models {
        let (rx, ry, _) = select(*role, rows, &x);
        if ry.is_empty() {
            continue;
        }
        let model = dir.join(&entry.file);
        let text = std::fs::read_to_string(&model).map_err(io(&model))?;
        let booster = Booster::from_string(&text)?;
        let pred = predict(&booster, *role, &rx)?;
        let actual = actual_values(*role, &rx, &ry);
        let m = holdout_metrics(*role, &pred, &actual);
        if let Some(v) = m.get(primary_metric(*role)) {
            out.insert(*role, *v);
        }
    }
    Ok(out)
}

fn copy_dir(from: &Path, to: &Path) -> Result<(), TrainerError> {
    std::fs::create_dir_all(to).map_err(io(to))?;
    for entry in std::fs::read_dir(from).map_err(io(from))? {
        let entry = entry.map_err(io(from))?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        if src.is_dir() {
            copy_dir(&src, &dst)?;
        } else {
            std::fs::copy(&src, &dst).map_err(io(&src))?;
        }
    }
    Ok(())
}

/// `mlflow/<role>/{MLmodel, model.lgb}` for every model of the set in `dir`.
fn write_mlflow(dir: &Path, meta: &ModelMetadata) -> Result<(), TrainerError> {
    let inputs: Vec<serde_json::Value> = FEATURES
        .iter()
        .map(|(name, _)| json!({"type": "double", "name": name, "required": true}))
        .collect();
    let inputs =
        serde_json::to_string(&inputs).map_err(|e| TrainerError::Internal(e.to_string()))?;
    let created = OffsetDateTime::now_utc();
    for (role, entry) in &meta.models {
        let d = dir.join(MLFLOW_DIR).join(role.as_str());
        std::fs::create_dir_all(&d).map_err(io(&d))?;
        let src = dir.join(&entry.file);
        std::fs::copy(&src, d.join("model.lgb")).map_err(io(&src))?;
        let outputs = serde_json::to_string(&[json!({
            "type": "double", "name": role.as_str(), "required": true
        })])
        .map_err(|e| TrainerError::Internal(e.to_string()))?;
        let uuid = hex::encode(sha2::Sha256::digest(
            format!("{}/{}", meta.version, role.as_str()).as_bytes(),
        ));
        let yaml = format!(
            "artifact_path: {role}\n\
             flavors:\n\
             \x20 lightgbm:\n\
             \x20   code: null\n\
             \x20   data: model.lgb\n\
             \x20   lgb_version: {lgb}\n\
             \x20   model_class: lightgbm.basic.Booster\n\
             \x20 python_function:\n\
             \x20   data: model.lgb\n\
             \x20   loader_module: mlflow.lightgbm\n\
             \x20   predict_fn: predict\n\
             metadata:\n\
             \x20 sandstorm_version: {version}\n\
             \x20 feature_schema: ../../{schema}\n\
             \x20 feature_schema_hash: {hash}\n\
             \x20 target: {target}\n\
             \x20 target_transform: {transform}\n\
             \x20 note: {note}\n\
             model_uuid: {uuid}\n\
             run_id: null\n\
             signature:\n\
             \x20 inputs: '{inputs}'\n\
             \x20 outputs: '{outputs}'\n\
             \x20 params: null\n\
             utc_time_created: '{created}'\n",
            role = role.as_str(),
            lgb = LIGHTGBM_VERSION,
            version = meta.version,
            schema = FEATURE_SCHEMA_FILE,
            hash = meta.feature_schema_hash,
            target = yaml_quote(&entry.target),
            transform = yaml_quote(&format!("{:?}", entry.target_transform).to_lowercase()),
            note = yaml_quote(
                "inputs are rows encoded by sandstorm's feature schema; the raw output plus the row's base margin, through target_transform, is the prediction"
            ),
            uuid = &uuid[..32],
            created = created
                .format(&time::macros::format_description!(
                    "[year]-[month]-[day] [hour]:[minute]:[second].[subsecond digits:6]"
                ))
                .unwrap_or_default(),
        );
        std::fs::write(d.join("MLmodel"), yaml).map_err(io(&d))?;
        std::fs::write(
            d.join("requirements.txt"),
            format!("lightgbm>={LIGHTGBM_VERSION}\n"),
        )
        .map_err(io(&d))?;
    }
    Ok(())
}

/// The LightGBM version linked in by `lightgbm3-sys`.
const LIGHTGBM_VERSION: &str = "4.7.0";

/// A YAML double-quoted scalar.
fn yaml_quote(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmp(champion: f64, challenger: f64) -> Comparison {
        Comparison {
            metric: "m".into(),
            champion: Some(champion),
            challenger,
            improvement: Some((champion - challenger) / champion),
        }
    }

    #[test]
    fn the_rule_needs_a_mean_gain_and_no_large_loss() {
        let all = |c: f64| -> BTreeMap<String, Comparison> {
            ["a", "b", "c", "d"]
                .iter()
                .map(|k| ((*k).to_owned(), cmp(1.0, c)))
                .collect()
        };
        assert!(judge(&all(0.9), 0.02).0);
        assert!(!judge(&all(0.99), 0.02).0);
        assert!(!judge(&all(1.1), 0.02).0);
        let mut mixed = all(0.8);
        mixed.insert("d".into(), cmp(1.0, 1.05));
        let (ok, reason) = judge(&mixed, 0.02);
        assert!(!ok && reason.contains("d is 5.0% worse"), "{reason}");
    }
}
