//! The training report: `MODEL_DIR/report.html` with PNG plots under `MODEL_DIR/report/`
//! (referenced relatively, so the directory can be copied or served as is). Plots carry no
//! text (plotters' bitmap backend without fonts); axes, units and colours are described in the
//! HTML next to each plot, and every plotted number is also in a table or in `training.json`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::prelude::*;
use sandstorm_features::model::{ModelMetadata, ModelRole};

use crate::{REPORT_FILE, TrainerError, TrainingDetails};

/// Holdout predictions of one model, in natural units.
#[derive(Debug, Clone)]
pub(crate) struct Outcome {
    pub(crate) pred: Vec<f64>,
    pub(crate) actual: Vec<f64>,
    pub(crate) provider: Vec<String>,
}

const SIZE: (u32, u32) = (720, 400);
const PLOT_DIR: &str = "report";
const BLUE: RGBColor = RGBColor(40, 90, 220);
const RED: RGBColor = RGBColor(220, 40, 40);
const GREY: RGBColor = RGBColor(150, 150, 150);

fn plot_err<E: std::fmt::Debug>(e: E) -> TrainerError {
    TrainerError::Report(format!("drawing a plot: {e:?}"))
}

/// Writes the report and returns the path of `report.html`.
pub(crate) fn write(
    dir: &Path,
    meta: &ModelMetadata,
    training: &TrainingDetails,
    outcomes: &BTreeMap<ModelRole, Outcome>,
) -> Result<PathBuf, TrainerError> {
    let plots = dir.join(PLOT_DIR);
    std::fs::create_dir_all(&plots).map_err(|source| TrainerError::Io {
        path: plots.clone(),
        source,
    })?;
    let mut h = String::new();
    let _ = write!(
        h,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>Sandstorm training report {v}</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto;color:#222}}\
         table{{border-collapse:collapse;margin:.5em 0}}td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}\
         th{{background:#eee}}td.l{{text-align:left}}img{{border:1px solid #ddd;max-width:100%}}\
         .cap{{color:#555;font-size:90%}}</style></head><body>\
         <h1>Training report: model set <code>{v}</code></h1>\
         <p>Created {created}. Feature version {fv}, schema hash <code>{hash}</code>. Seed {seed}; \
         cross-validation folds {folds}; search trials per model {trials} (budget {budget:.0} s). \
         Details in <code>training.json</code>, metrics in <code>metadata.json</code>; \
         how to read this page: <code>docs/training.md</code>.</p>\
         <table><tr><th>rows</th><th>from</th><th>to</th><th>count</th></tr>",
        v = meta.version,
        created = meta.created_at,
        fv = meta.feature_version,
        hash = meta.feature_schema_hash,
        seed = training.seed,
        folds = training.cv_folds,
        trials = training.search_trials,
        budget = training.search_budget_s,
    );
    for (name, w) in [
        ("training", &meta.training_window),
        ("validation (early stopping)", &meta.validation_window),
        ("holdout (metrics)", &meta.holdout_window),
    ] {
        let _ = write!(
            h,
            "<tr><td class=l>{name}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            w.from, w.to, w.rows
        );
    }
    h.push_str("</table>");
    if let Some(d) = &training.data {
        data_section(d, &mut h);
    }
    h.push_str(
        "<h2>Holdout metrics</h2><table><tr><th>model</th><th>trees</th><th>metrics</th></tr>",
    );
    for (role, e) in &meta.models {
        let m = e
            .metrics
            .iter()
            .map(|(k, v)| format!("{k} = {v:.4}"))
            .collect::<Vec<_>>()
            .join("<br>");
        let _ = write!(
            h,
            "<tr><td class=l>{}</td><td>{}</td><td class=l>{m}</td></tr>",
            role.as_str(),
            e.num_trees
        );
    }
    h.push_str("</table>");

    for role in ModelRole::ALL {
        let name = role.as_str();
        let Some(d) = training.models.get(name) else {
            continue;
        };
        let _ = write!(h, "<h2>{name}</h2>");
        if let Some(o) = outcomes.get(&role) {
            outcome_section(&plots, role, o, &mut h)?;
        }
        // Learning curve.
        let file = format!("learning_curve_{name}.png");
        line_plot(&plots.join(&file), &d.valid_curve, d.best_iteration)?;
        let _ = write!(
            h,
            "<h3>Learning curve</h3><img src=\"{PLOT_DIR}/{file}\"><p class=cap>Validation {metric} \
             (y) after each boosting round (x, 1 to {n}); the grey vertical line is the round kept by \
             early stopping ({best}). Best value {bestv:.5}.</p>",
            metric = d.metric,
            n = d.valid_curve.len(),
            best = d.best_iteration,
            bestv = d
                .valid_curve
                .get(d.best_iteration.saturating_sub(1))
                .copied()
                .unwrap_or(f64::NAN),
        );
        if let Some(cv) = &d.cv {
            let _ = write!(
                h,
                "<h3>Time-ordered cross-validation</h3><p>Forward chaining: each fold trains on all \
                 rows before its validation block. Mean {} {:.5}.</p><table><tr><th>fold</th>\
                 <th>training rows</th><th>validation rows</th><th>best round</th><th>{}</th></tr>",
                cv.metric, cv.mean, cv.metric
            );
            for (i, f) in cv.folds.iter().enumerate() {
                let _ = write!(
                    h,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.5}</td></tr>",
                    i + 1,
                    f.train_rows,
                    f.valid_rows,
                    f.best_iteration,
                    f.metric
                );
            }
            h.push_str("</table>");
        }
        if let Some(s) = &d.search {
            let _ = write!(
                h,
                "<h3>Hyper-parameter search</h3><p>{} trials{}; trial 0 is the configured \
                 parameters; the best (bold) was used.</p><table><tr><th>trial</th><th>{}</th>\
                 <th>seconds</th><th>searched parameters</th></tr>",
                s.trials.len(),
                if s.budget_exhausted {
                    " (stopped by the time budget)"
                } else {
                    ""
                },
                s.metric
            );
            for (i, t) in s.trials.iter().enumerate() {
                let p = t
                    .params
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(" ");
                let (b0, b1) = if i == s.best {
                    ("<b>", "</b>")
                } else {
                    ("", "")
                };
                let _ = write!(
                    h,
                    "<tr><td>{b0}{}{b1}</td><td>{b0}{:.5}{b1}</td><td>{:.1}</td><td class=l>{}</td></tr>",
                    t.trial,
                    t.cv.mean,
                    t.seconds,
                    if p.is_empty() {
                        "(configured)".to_owned()
                    } else {
                        p
                    }
                );
            }
            h.push_str("</table>");
        }
        // Importance.
        let mut feats: Vec<(&String, f64)> = d.explain.gain.iter().map(|(k, v)| (k, *v)).collect();
        feats.sort_by(|a, b| b.1.total_cmp(&a.1));
        feats.truncate(15);
        let total_gain: f64 = d.explain.gain.values().sum::<f64>().max(1e-12);
        let file = format!("importance_{name}.png");
        bar_plot(
            &plots.join(&file),
            &feats
                .iter()
                .map(|(k, g)| {
                    (
                        g / total_gain,
                        d.explain.shap_mean_abs.get(*k).copied().unwrap_or(0.0),
                    )
                })
                .collect::<Vec<_>>(),
        )?;
        let _ = write!(
            h,
            "<h3>Importance</h3><img src=\"{PLOT_DIR}/{file}\"><p class=cap>The 15 features with \
             the largest gain, in the order of the table: blue = share of total gain (left scale 0 to 1), \
             red = mean |SHAP| over {} holdout rows (scaled to the largest). Parameters: <code>{}</code></p>\
             <table><tr><th>feature</th><th>gain share</th><th>splits</th><th>mean |SHAP|</th></tr>",
            d.explain.shap_rows,
            html_escape(&serde_json::to_string(&d.params).unwrap_or_default())
        );
        for (k, g) in &feats {
            let _ = write!(
                h,
                "<tr><td class=l>{k}</td><td>{:.3}</td><td>{}</td><td>{:.4}</td></tr>",
                g / total_gain,
                d.explain.split.get(*k).copied().unwrap_or(0.0),
                d.explain.shap_mean_abs.get(*k).copied().unwrap_or(0.0)
            );
        }
        h.push_str("</table>");
    }
    h.push_str("</body></html>\n");
    let path = dir.join(REPORT_FILE);
    std::fs::write(&path, h).map_err(|source| TrainerError::Io {
        path: path.clone(),
        source,
    })?;
    Ok(path)
}

/// The `[data]` selection and how many rows each step kept.
fn data_section(d: &crate::DataSummary, h: &mut String) {
    let setting = |v: Option<String>| v.map_or_else(|| "(all)".to_owned(), |v| html_escape(&v));
    let columns = d
        .columns
        .iter()
        .map(|(k, v)| format!("{} = {}", html_escape(k), html_escape(v)))
        .collect::<Vec<_>>()
        .join("<br>");
    let _ = write!(
        h,
        "<h2>Data</h2><p>Telemetry rows selected by polars (<code>[data]</code> of the \
         configuration): {files_scanned} of {files} Parquet files read (date partitions outside \
         the window are skipped), then each step below.</p><table>\
         <tr><th>setting</th><th>value</th></tr>\
         <tr><td class=l>since</td><td class=l>{since}</td></tr>\
         <tr><td class=l>until</td><td class=l>{until}</td></tr>\
         <tr><td class=l>columns</td><td class=l>{columns}</td></tr>\
         <tr><td class=l>filter</td><td class=l><code>{filter}</code></td></tr>\
         <tr><td class=l>dedupe_by</td><td class=l>{dedupe}</td></tr>\
         <tr><td class=l>max_rows</td><td class=l>{max_rows}</td></tr></table>\
         <table><tr><th>step</th><th>rows</th></tr>\
         <tr><td class=l>in the files read</td><td>{scanned}</td></tr>\
         <tr><td class=l>in the window</td><td>{window}</td></tr>\
         <tr><td class=l>after the filter</td><td>{filtered}</td></tr>\
         <tr><td class=l>after dedupe</td><td>{deduped}</td></tr>\
         <tr><td class=l>selected (most recent max_rows)</td><td>{rows}</td></tr></table>",
        files_scanned = d.files_scanned,
        files = d.files,
        since = setting(d.since.clone()),
        until = setting(d.until.clone()),
        columns = if columns.is_empty() {
            "(none)".to_owned()
        } else {
            columns
        },
        filter = setting(d.filter.clone()),
        dedupe = if d.dedupe_by.is_empty() {
            "(none)".to_owned()
        } else {
            html_escape(&d.dedupe_by.join(", "))
        },
        max_rows = setting(d.max_rows.map(|n| n.to_string())),
        scanned = d.rows_scanned,
        window = d.rows_in_window,
        filtered = d.rows_after_filter,
        deduped = d.rows_after_dedupe,
        rows = d.rows,
    );
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn outcome_section(
    plots: &Path,
    role: ModelRole,
    o: &Outcome,
    h: &mut String,
) -> Result<(), TrainerError> {
    let name = role.as_str();
    let file = format!("predicted_vs_actual_{name}.png");
    if role == ModelRole::Failure {
        let bins = calibration(&o.pred, &o.actual);
        scatter_plot(
            &plots.join(&file),
            &bins.iter().map(|b| (b.0, b.1)).collect::<Vec<_>>(),
            (0.0, 1.0),
        )?;
        let _ = write!(
            h,
            "<h3>Calibration</h3><img src=\"{PLOT_DIR}/{file}\"><p class=cap>Holdout rows in ten bins \
             of predicted failure probability: mean prediction (x, 0 to 1) against the observed \
             failure rate (y, 0 to 1); the grey diagonal is perfect calibration.</p>\
             <table><tr><th>mean predicted</th><th>observed</th><th>rows</th></tr>"
        );
        for b in &bins {
            let _ = write!(
                h,
                "<tr><td>{:.3}</td><td>{:.3}</td><td>{}</td></tr>",
                b.0, b.1, b.2
            );
        }
        h.push_str("</table>");
        return Ok(());
    }
    let pts: Vec<(f64, f64)> = o
        .pred
        .iter()
        .zip(&o.actual)
        .filter(|(p, a)| **p > 0.0 && **a > 0.0)
        .map(|(p, a)| (a.log10(), p.log10()))
        .collect();
    let lo = pts
        .iter()
        .map(|p| p.0.min(p.1))
        .fold(f64::INFINITY, f64::min)
        .floor();
    let hi = pts
        .iter()
        .map(|p| p.0.max(p.1))
        .fold(f64::NEG_INFINITY, f64::max)
        .ceil();
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    scatter_plot(&plots.join(&file), &pts, (lo, hi))?;
    let unit = if role == ModelRole::Cost { "USD" } else { "ms" };
    let _ = write!(
        h,
        "<h3>Predicted vs actual</h3><img src=\"{PLOT_DIR}/{file}\"><p class=cap>Each holdout row: \
         log10 actual {unit} (x) against log10 predicted {unit} (y), both from 10^{lo} to 10^{hi}; \
         the grey diagonal is a perfect prediction.</p>"
    );
    // Per provider: residuals (regressions) and coverage (quantile model).
    let mut by: BTreeMap<&str, Vec<(f64, f64)>> = BTreeMap::new();
    for ((p, a), prov) in o.pred.iter().zip(&o.actual).zip(&o.provider) {
        by.entry(prov.as_str()).or_default().push((*p, *a));
    }
    let providers: Vec<&str> = by.keys().copied().collect();
    if role == ModelRole::LatencyP95 {
        let cov: Vec<f64> = by
            .values()
            .map(|v| v.iter().filter(|(p, a)| a <= p).count() as f64 / v.len() as f64)
            .collect();
        let file = "coverage_by_provider.png";
        coverage_plot(&plots.join(file), &cov, 0.95)?;
        let _ = write!(
            h,
            "<h3>Quantile coverage by provider</h3><img src=\"{PLOT_DIR}/{file}\"><p class=cap>Share \
             of holdout rows at or below the predicted p95 (y, 0 to 1) per provider (x: {}); the grey \
             line is the nominal 0.95.</p><table><tr><th>provider</th><th>rows</th><th>coverage</th></tr>",
            providers.join(", ")
        );
        for ((p, v), c) in by.iter().zip(&cov) {
            let _ = write!(
                h,
                "<tr><td class=l>{p}</td><td>{}</td><td>{c:.3}</td></tr>",
                v.len()
            );
        }
        h.push_str("</table>");
    } else {
        let stats: Vec<[f64; 5]> = by
            .values()
            .map(|v| {
                let mut r: Vec<f64> = v
                    .iter()
                    .filter(|(p, a)| *p > 0.0 && *a > 0.0)
                    .map(|(p, a)| (a / p).ln())
                    .collect();
                r.sort_by(f64::total_cmp);
                [0.1, 0.25, 0.5, 0.75, 0.9].map(|q| quantile_sorted(&r, q))
            })
            .collect();
        let file = format!("residuals_by_provider_{name}.png");
        box_plot(&plots.join(&file), &stats)?;
        let _ = write!(
            h,
            "<h3>Residuals by provider</h3><img src=\"{PLOT_DIR}/{file}\"><p class=cap>ln(actual / \
             predicted) per provider (x: {}): boxes from the 25th to the 75th percentile, whiskers to \
             the 10th and 90th, the dark line is the median; the grey line is 0 (unbiased).</p>\
             <table><tr><th>provider</th><th>rows</th><th>p10</th><th>median</th><th>p90</th></tr>",
            providers.join(", ")
        );
        for ((p, v), s) in by.iter().zip(&stats) {
            let _ = write!(
                h,
                "<tr><td class=l>{p}</td><td>{}</td><td>{:.3}</td><td>{:.3}</td><td>{:.3}</td></tr>",
                v.len(),
                s[0],
                s[2],
                s[4]
            );
        }
        h.push_str("</table>");
    }
    Ok(())
}

/// (mean predicted, observed rate, rows) of ten equal-width probability bins.
fn calibration(pred: &[f64], actual: &[f64]) -> Vec<(f64, f64, usize)> {
    let mut bins = vec![(0.0, 0.0, 0usize); 10];
    for (p, a) in pred.iter().zip(actual) {
        let b = ((p * 10.0) as usize).min(9);
        bins[b].0 += p;
        bins[b].1 += a;
        bins[b].2 += 1;
    }
    bins.into_iter()
        .filter(|b| b.2 > 0)
        .map(|(s, o, n)| (s / n as f64, o / n as f64, n))
        .collect()
}

fn quantile_sorted(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let pos = q * (v.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    v[lo] + (v[hi] - v[lo]) * (pos - lo as f64)
}

type Chart<'a, 'b> = ChartContext<
    'a,
    BitMapBackend<'b>,
    Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
>;

fn chart<'a, 'b>(
    root: &'a DrawingArea<BitMapBackend<'b>, plotters::coord::Shift>,
    x: (f64, f64),
    y: (f64, f64),
) -> Result<Chart<'a, 'b>, TrainerError> {
    root.fill(&WHITE).map_err(plot_err)?;
    let mut c = ChartBuilder::on(root)
        .margin(20)
        .build_cartesian_2d(x.0..x.1, y.0..y.1)
        .map_err(plot_err)?;
    let light = RGBColor(228, 228, 228);
    for k in 0..=10 {
        let gx = x.0 + (x.1 - x.0) * f64::from(k) / 10.0;
        let gy = y.0 + (y.1 - y.0) * f64::from(k) / 10.0;
        c.draw_series(LineSeries::new(
            [(gx, y.0), (gx, y.1)],
            light.stroke_width(1),
        ))
        .map_err(plot_err)?;
        c.draw_series(LineSeries::new(
            [(x.0, gy), (x.1, gy)],
            light.stroke_width(1),
        ))
        .map_err(plot_err)?;
    }
    Ok(c)
}

fn scatter_plot(path: &Path, pts: &[(f64, f64)], range: (f64, f64)) -> Result<(), TrainerError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let mut c = chart(&root, range, range)?;
    c.draw_series(LineSeries::new(
        [(range.0, range.0), (range.1, range.1)],
        GREY.stroke_width(2),
    ))
    .map_err(plot_err)?;
    c.draw_series(
        pts.iter()
            .map(|p| Circle::new(*p, 2, BLUE.mix(0.4).filled())),
    )
    .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

fn line_plot(path: &Path, curve: &[f64], best: usize) -> Result<(), TrainerError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let finite = curve.iter().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(f64::INFINITY, f64::min);
    let hi = finite.fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let pad = (hi - lo) * 0.05;
    let n = curve.len().max(2) as f64;
    let mut c = chart(&root, (1.0, n), (lo - pad, hi + pad))?;
    c.draw_series(LineSeries::new(
        [(best as f64, lo - pad), (best as f64, hi + pad)],
        GREY.stroke_width(2),
    ))
    .map_err(plot_err)?;
    c.draw_series(LineSeries::new(
        curve.iter().enumerate().map(|(i, v)| ((i + 1) as f64, *v)),
        BLUE.stroke_width(2),
    ))
    .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// Pairs of bars (blue share 0..1, red scaled to its maximum).
fn bar_plot(path: &Path, bars: &[(f64, f64)]) -> Result<(), TrainerError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let n = bars.len().max(1) as f64;
    let red_max = bars.iter().map(|b| b.1).fold(1e-12, f64::max);
    let mut c = chart(&root, (0.0, n), (0.0, 1.0))?;
    for (i, (blue, red)) in bars.iter().enumerate() {
        let x = i as f64;
        c.draw_series([
            Rectangle::new(
                [(x + 0.1, 0.0), (x + 0.45, blue.clamp(0.0, 1.0))],
                BLUE.filled(),
            ),
            Rectangle::new(
                [(x + 0.5, 0.0), (x + 0.85, (red / red_max).clamp(0.0, 1.0))],
                RED.filled(),
            ),
        ])
        .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}

fn coverage_plot(path: &Path, cov: &[f64], nominal: f64) -> Result<(), TrainerError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let n = cov.len().max(1) as f64;
    let mut c = chart(&root, (0.0, n), (0.0, 1.0))?;
    c.draw_series(cov.iter().enumerate().map(|(i, v)| {
        Rectangle::new(
            [(i as f64 + 0.15, 0.0), (i as f64 + 0.85, *v)],
            BLUE.filled(),
        )
    }))
    .map_err(plot_err)?;
    c.draw_series(LineSeries::new(
        [(0.0, nominal), (n, nominal)],
        GREY.stroke_width(3),
    ))
    .map_err(plot_err)?;
    root.present().map_err(plot_err)
}

/// Box plots of `[p10, p25, p50, p75, p90]`.
fn box_plot(path: &Path, stats: &[[f64; 5]]) -> Result<(), TrainerError> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    let n = stats.len().max(1) as f64;
    let finite = stats.iter().flatten().copied().filter(|v| v.is_finite());
    let lo = finite.clone().fold(0.0f64, f64::min);
    let hi = finite.fold(0.0f64, f64::max);
    let pad = ((hi - lo) * 0.05).max(0.05);
    let mut c = chart(&root, (0.0, n), (lo - pad, hi + pad))?;
    c.draw_series(LineSeries::new(
        [(0.0, 0.0), (n, 0.0)],
        GREY.stroke_width(2),
    ))
    .map_err(plot_err)?;
    for (i, s) in stats.iter().enumerate() {
        if s.iter().any(|v| !v.is_finite()) {
            continue;
        }
        let x = i as f64;
        c.draw_series([Rectangle::new(
            [(x + 0.2, s[1]), (x + 0.8, s[3])],
            BLUE.mix(0.5).filled(),
        )])
        .map_err(plot_err)?;
        c.draw_series(LineSeries::new(
            [(x + 0.5, s[0]), (x + 0.5, s[4])],
            BLUE.stroke_width(2),
        ))
        .map_err(plot_err)?;
        c.draw_series(LineSeries::new(
            [(x + 0.2, s[2]), (x + 0.8, s[2])],
            BLACK.stroke_width(3),
        ))
        .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)
}
