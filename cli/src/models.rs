//! The `train` options for data scientists (configuration file, cross-validation, search,
//! report, registry) and the `models list|promote|rollback` commands of the model registry.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Args, Subcommand};
use sandstorm_storage::Location;
use sandstorm_trainer::registry::{Decision, PromotionPolicy, Registry, primary_metric};

use crate::common;

/// Training options beyond `--telemetry` and `--out`; given flags override the file.
#[derive(Debug, Args)]
pub(crate) struct TrainTuning {
    /// `train.toml` (LightGBM parameters in `[params]`, see docs/training.md) or a LightGBM
    /// `key = value` config file.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Time-ordered (forward-chaining) cross-validation folds.
    #[arg(long)]
    cv_folds: Option<usize>,
    /// Random-search trials per model (0: no search).
    #[arg(long)]
    search_trials: Option<usize>,
    /// Time budget of the whole search, e.g. 60s, 5m.
    #[arg(long)]
    search_budget: Option<String>,
    /// Random seed (training is deterministic for a seed).
    #[arg(long)]
    seed: Option<u64>,
    /// Maximum boosting rounds per model.
    #[arg(long)]
    num_iterations: Option<usize>,
    /// Do not write report.html and its plots.
    #[arg(long)]
    no_report: bool,
    /// Also register the trained model set in this model registry (a directory or an s3://
    /// URL).
    #[arg(long)]
    registry: Option<PathBuf>,
    /// Weight rows by 1 / selection_probability (inverse-propensity weighting), so models
    /// trained on the router's own choices are not biased toward past winners.
    #[arg(long)]
    ipw: bool,
    /// With --ipw: weights above this are clipped to it (default 20, or the file's).
    #[arg(long, requires = "ipw")]
    ipw_max_weight: Option<f64>,
    /// Train only on rows requested at or after this date (2026-11-01) or RFC 3339 time
    /// (`[data] since`).
    #[arg(long)]
    since: Option<String>,
    /// Train only on rows requested before this date or time (`[data] until`).
    #[arg(long)]
    until: Option<String>,
    /// Train only on rows for which this polars SQL predicate holds, e.g.
    /// "provider != 'local' AND attempt = 0" (`[data] filter`).
    #[arg(long)]
    filter: Option<String>,
}

impl TrainTuning {
    fn config(&self) -> Result<sandstorm_trainer::TrainConfig> {
        let mut cfg = sandstorm_trainer::TrainConfig::default();
        if let Some(path) = &self.config {
            cfg = cfg.with_file(path)?;
        }
        if let Some(v) = self.cv_folds {
            cfg.cv_folds = v;
        }
        if let Some(v) = self.search_trials {
            cfg.search_trials = v;
        }
        if let Some(v) = &self.search_budget {
            cfg.search_budget = sandstorm_trainer::parse_duration(v)?;
        }
        if let Some(v) = self.seed {
            cfg.seed = v;
        }
        if let Some(v) = self.num_iterations {
            cfg.num_iterations = v;
        }
        if self.no_report {
            cfg.report = false;
        }
        if self.ipw {
            let mut ipw = cfg.ipw.unwrap_or_default();
            if let Some(w) = self.ipw_max_weight {
                ipw.max_weight = w;
            }
            cfg.ipw = Some(ipw);
        }
        if let Some(v) = &self.since {
            cfg.data.set_since(v)?;
        }
        if let Some(v) = &self.until {
            cfg.data.set_until(v)?;
        }
        if let Some(v) = &self.filter {
            cfg.data.filter = Some(v.clone());
        }
        cfg.progress = true;
        Ok(cfg)
    }
}

/// The registry given for `flag`: a directory or an object-store URL.
fn open_registry(flag: &str, value: &Path) -> Result<Registry> {
    Ok(Registry::open_at(&common::location(flag, value)?, None)?)
}

/// Trains into `out`, registers the model set in `registry` and uploads `out` to `upload`
/// (`metadata.json` last), when given.
fn train_and_publish(
    selected: &sandstorm_trainer::Selected,
    out: &Path,
    cfg: &sandstorm_trainer::TrainConfig,
    registry: Option<&Path>,
    upload: Option<&sandstorm_storage::Remote>,
) -> Result<(sandstorm_trainer::TrainReport, Option<String>)> {
    let report = sandstorm_trainer::train_selection(selected, out, cfg)?;
    let version = match registry {
        Some(root) => Some(open_registry("--registry", root)?.register(out)?),
        None => None,
    };
    if let Some(remote) = upload {
        remote.upload_dir(out, sandstorm_features::model::METADATA_FILE)?;
    }
    Ok((report, version))
}

pub(crate) fn train(telemetry: &Path, out: &Path, json: bool, t: &TrainTuning) -> Result<ExitCode> {
    let cfg = t.config()?;
    let selected =
        sandstorm_trainer::select_at(&common::location("--telemetry", telemetry)?, &cfg.data)?;
    // An object-store --out: train into a local directory, then upload it whole.
    let out_location = common::location("--out", out)?;
    let (local_out, upload) = match &out_location {
        Location::Local(dir) => (dir.clone(), None),
        Location::Remote(remote) => (
            sandstorm_storage::default_cache_dir()
                .join("train-out")
                .join(uuid::Uuid::new_v4().simple().to_string()),
            Some(remote.clone()),
        ),
    };
    let trained = train_and_publish(
        &selected,
        &local_out,
        &cfg,
        t.registry.as_deref(),
        upload.as_ref(),
    );
    if upload.is_some() {
        let _ = std::fs::remove_dir_all(&local_out);
    }
    let (mut report, version) = trained?;
    if let Some(remote) = &upload {
        report.report_html = report
            .report_html
            .map(|_| PathBuf::from(remote.object_url(sandstorm_trainer::REPORT_FILE)));
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&report.metadata)?);
    } else {
        crate::run::print_metrics(&report.metadata);
        println!(
            "model {} written to {out_location}",
            report.metadata.version
        );
        if let Some(html) = &report.report_html {
            println!("report: {}", html.display());
        }
        if let Some(d) = &report.data {
            println!(
                "telemetry: {} rows selected ({} in {} of {} Parquet files, {} in the window, {} after the filter, {} after dedupe)",
                d.rows,
                d.rows_scanned,
                d.files_scanned,
                d.files,
                d.rows_in_window,
                d.rows_after_filter,
                d.rows_after_dedupe
            );
        }
        if let Some(w) = &report.weighting {
            println!(
                "inverse-propensity weights of {} training rows: 1/p from {:.2} to {:.2} (mean {:.2}), {:.1}% clipped at {}, worth {:.0} unweighted rows",
                w.rows,
                w.min,
                w.max,
                w.mean,
                100.0 * w.clipped_share,
                w.max_weight,
                w.effective_sample_size
            );
        }
        if let (Some(v), Some(root)) = (&version, &t.registry) {
            println!("registered {v} in {}", root.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[derive(Debug, Subcommand)]
pub(crate) enum ModelsCommand {
    /// List the versions of a model registry, the champion marked.
    List {
        #[arg(long)]
        registry: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Promote a challenger if it beats the champion on the recent telemetry window by the
    /// margin; the decision is recorded in promotions.jsonl. Exit code 2 when refused.
    Promote {
        #[arg(long)]
        registry: PathBuf,
        /// Telemetry Parquet directory; both models are evaluated on its most recent rows.
        #[arg(long)]
        telemetry: PathBuf,
        /// Required mean relative improvement of the primary metrics (docs/training.md).
        #[arg(long, default_value_t = 0.02)]
        margin: f64,
        /// Share of the most recent executed telemetry rows evaluated.
        #[arg(long, default_value_t = 0.2)]
        window_fraction: f64,
        #[arg(long)]
        json: bool,
        /// A registered version, or a model directory (registered first).
        challenger: String,
    },
    /// Make the previous champion champion again.
    Rollback {
        #[arg(long)]
        registry: PathBuf,
    },
}

pub(crate) fn command(cmd: ModelsCommand) -> Result<ExitCode> {
    match cmd {
        ModelsCommand::List { registry, json } => list(&registry, json),
        ModelsCommand::Promote {
            registry,
            telemetry,
            margin,
            window_fraction,
            json,
            challenger,
        } => {
            let reg = open_registry("--registry", &registry)?;
            let path = Path::new(&challenger);
            let version = if path.join("metadata.json").is_file() {
                reg.register(path)?
            } else {
                challenger
            };
            let rows = common::load_telemetry("--telemetry", &telemetry)?;
            let d = reg.promote(
                &version,
                &rows,
                &PromotionPolicy {
                    margin,
                    window_fraction,
                },
            )?;
            if json {
                println!("{}", serde_json::to_string_pretty(&d)?);
            } else {
                print_decision(&d);
            }
            Ok(if d.promoted {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            })
        }
        ModelsCommand::Rollback { registry } => {
            let d = open_registry("--registry", &registry)?.rollback()?;
            println!(
                "champion is now {} (was {})",
                d.version,
                d.previous_champion.as_deref().unwrap_or("none")
            );
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn list(root: &Path, json: bool) -> Result<ExitCode> {
    let reg = open_registry("--registry", root)?;
    let versions = reg.versions()?;
    if json {
        let v: Vec<_> = versions
            .iter()
            .map(|v| {
                serde_json::json!({
                    "version": v.version,
                    "champion": v.champion,
                    "created_at": v.metadata.created_at,
                    "dir": v.dir,
                })
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = common::table();
    t.set_header(vec!["", "version", "created", "holdout primary metrics"]);
    for v in &versions {
        let metrics = v
            .metadata
            .models
            .iter()
            .filter_map(|(role, e)| {
                let m = primary_metric(*role);
                e.metrics
                    .get(m)
                    .map(|x| format!("{} {m}={x:.4}", role.as_str()))
            })
            .collect::<Vec<_>>()
            .join("  ");
        t.add_row(vec![
            if v.champion { "champion" } else { "" }.to_owned(),
            v.version.clone(),
            v.metadata.created_at.clone(),
            metrics,
        ]);
    }
    println!("{t}");
    if versions.is_empty() {
        println!("no versions in {}", reg.location());
    }
    Ok(ExitCode::SUCCESS)
}

fn print_decision(d: &Decision) {
    let mut t = common::table();
    t.set_header(vec![
        "model",
        "metric",
        "champion",
        "challenger",
        "improvement",
    ]);
    for (role, c) in &d.comparisons {
        t.add_row(vec![
            role.clone(),
            c.metric.clone(),
            c.champion.map_or("-".to_owned(), |v| format!("{v:.5}")),
            format!("{:.5}", c.challenger),
            c.improvement
                .map_or("-".to_owned(), |v| format!("{:+.2}%", 100.0 * v)),
        ]);
    }
    println!("{t}");
    if let Some(w) = &d.window {
        println!("evaluated on {} rows from {} to {}", w.rows, w.from, w.to);
    }
    println!(
        "{} {}: {}",
        if d.promoted { "promoted" } else { "refused" },
        d.version,
        d.reason
    );
}
