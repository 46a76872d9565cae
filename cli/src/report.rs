//! The HTML report of an evaluation (`--report DIR`): `index.html` with the metrics, where the
//! router loses and why, and PNG plots drawn with plotters' bitmap backend. The plots carry no
//! text (so no font is needed); their axes and colours are described in the HTML.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use plotters::prelude::*;

use crate::eval::{EvalResult, POLICIES, StrategyResult, date_of_day, per_request};

/// Policies drawn in the plots, with their colours (named in the HTML).
const DRAWN: [(&str, RGBColor, &str); 5] = [
    ("sandstorm", RGBColor(220, 40, 40), "red"),
    ("lookup_median", RGBColor(40, 90, 220), "blue"),
    ("lookup_ewma", RGBColor(30, 160, 60), "green"),
    ("fixed_best_on_train", RGBColor(0, 0, 0), "black"),
    ("random", RGBColor(150, 150, 150), "grey"),
];
const SIZE: (u32, u32) = (900, 420);

fn policy_index(name: &str) -> usize {
    POLICIES.iter().position(|p| *p == name).unwrap_or(0)
}

pub(crate) fn write(result: &EvalResult, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut html = String::new();
    let _ = write!(
        html,
        "<!doctype html><html><head><meta charset=\"utf-8\"><title>sandstorm eval azure-vm-noise</title>\
         <style>body{{font-family:sans-serif;max-width:1000px;margin:2em auto}}table{{border-collapse:collapse}}\
         td,th{{border:1px solid #ccc;padding:2px 8px;text-align:right}}th{{background:#eee}}</style></head><body>\
         <h1>Routing on the Azure VM Noise Dataset</h1>\
         <p>{} evaluation requests ({} to {}), {} training requests before {}; placements {}; model {}. \
         Protocol and discussion: <code>docs/evaluation.md</code>. Colours in every plot: {}.</p>",
        result.test_requests,
        result.split_at,
        result.last_day,
        result.train_requests,
        result.split_at,
        result.placements.join(", "),
        result.model_version,
        DRAWN
            .iter()
            .map(|(p, _, c)| format!("{p} = {c}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    for s in &result.strategies {
        strategy_section(result, s, dir, &mut html)?;
    }
    html.push_str("</body></html>\n");
    let path = dir.join("index.html");
    std::fs::write(&path, html).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn strategy_section(
    result: &EvalResult,
    s: &StrategyResult,
    dir: &Path,
    html: &mut String,
) -> Result<()> {
    let name = &s.strategy;
    let _ = write!(
        html,
        "<h2>{name}</h2><p>Fixed placement chosen on the training period: {}.</p>\
         <table><tr><th>policy</th><th>geomean chosen/oracle</th><th>95% CI</th><th>p95</th>\
         <th>oracle picks</th><th>captured headroom</th><th>95% CI</th></tr>",
        s.fixed_placement
    );
    for p in &s.policies {
        let _ = write!(
            html,
            "<tr><td style=\"text-align:left\">{}</td><td>{:.4}</td><td>[{:.4}, {:.4}]</td><td>{:.3}</td>\
             <td>{:.3}</td><td>{:.3}</td><td>[{:.3}, {:.3}]</td></tr>",
            p.policy,
            p.geomean.value,
            p.geomean.ci95[0],
            p.geomean.ci95[1],
            p.p95.value,
            p.oracle_picks.value,
            p.captured_headroom.value,
            p.captured_headroom.ci95[0],
            p.captured_headroom.ci95[1]
        );
    }
    html.push_str("</table>");

    let per: Vec<Vec<(f64, bool)>> = s.picks.iter().map(|p| per_request(&s.values, p)).collect();

    // 1. Per-request regret, sorted.
    let file = format!("regret_{name}.png");
    regret_plot(&dir.join(&file), &per)?;
    let _ = write!(
        html,
        "<h3>Per-request regret</h3><img src=\"{file}\"><p>Each curve: the requests of one policy sorted by \
         regret; x = share of requests (0 to 1), y = ln(chosen / oracle) from 0 to ln 2 (clipped).</p>"
    );

    // 2. Captured headroom per week.
    let weeks = weekly(result, s, &per);
    let file = format!("captured_by_week_{name}.png");
    weekly_plot(&dir.join(&file), &weeks)?;
    let _ = write!(
        html,
        "<h3>Captured headroom over time</h3><img src=\"{file}\"><p>Per calendar week of the evaluation \
         period: captured headroom (GM_fixed − GM) / (GM_fixed − 1) of each policy on that week's requests; \
         y from −0.5 (bottom) to 1.0 (top edge = the oracle), black line = 0 (the fixed placement), clipped; weeks left to right; where the red line is not visible it lies under the green one.</p>\
         <table><tr><th>week of</th><th>requests</th><th>GM fixed</th><th>GM sandstorm</th><th>GM lookup_median</th>\
         <th>GM lookup_ewma</th><th>captured sandstorm</th></tr>"
    );
    for w in &weeks {
        let _ = write!(
            html,
            "<tr><td>{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.3}</td></tr>",
            w.start,
            w.n,
            w.gm[3],
            w.gm[0],
            w.gm[1],
            w.gm[2],
            captured(w.gm[3], w.gm[0])
        );
    }
    html.push_str("</table>");

    // 3. Where the router loses: by suite and the worst workloads.
    let data = &result.dataset_data;
    let ix = |p: &str| policy_index(p);
    let mut by_suite: BTreeMap<&str, [f64; 4]> = BTreeMap::new();
    let mut by_workload: BTreeMap<u32, [f64; 4]> = BTreeMap::new();
    for (k, r) in result.test.iter().enumerate() {
        let w = &data.workloads[r.workload as usize];
        let e = by_suite.entry(w.test_suite.as_str()).or_default();
        e[0] += 1.0;
        e[1] += per[ix("sandstorm")][k].0;
        e[2] += per[ix("lookup_median")][k].0;
        e[3] += per[ix("lookup_ewma")][k].0;
        let e = by_workload.entry(r.workload).or_default();
        e[0] += 1.0;
        e[1] += per[ix("sandstorm")][k].0;
        e[2] += per[ix("lookup_median")][k].0;
        e[3] += per[ix("lookup_ewma")][k].0;
    }
    let total: f64 = by_suite.values().map(|v| v[1]).sum::<f64>().max(1e-12);
    let file = format!("loss_by_suite_{name}.png");
    let bars: Vec<[f64; 3]> = by_suite.values().map(|v| [v[1], v[2], v[3]]).collect();
    bar_plot(&dir.join(&file), &bars)?;
    let _ = write!(
        html,
        "<h3>Where the router loses</h3><img src=\"{file}\"><p>Per test suite (left to right: {}), \
         total ln regret Σ ln(chosen/oracle) of sandstorm (red), lookup_median (blue) and lookup_ewma (green); \
         bars share one scale.</p><table><tr><th>test suite</th><th>requests</th><th>GM sandstorm</th>\
         <th>GM lookup_median</th><th>GM lookup_ewma</th><th>share of sandstorm's regret</th></tr>",
        by_suite.keys().copied().collect::<Vec<_>>().join(", ")
    );
    for (suite, v) in &by_suite {
        let _ = write!(
            html,
            "<tr><td style=\"text-align:left\">{suite}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td><td>{:.1}%</td></tr>",
            v[0],
            (v[1] / v[0]).exp(),
            (v[2] / v[0]).exp(),
            (v[3] / v[0]).exp(),
            100.0 * v[1] / total
        );
    }
    html.push_str("</table>");
    let mut worst: Vec<(&u32, &[f64; 4])> = by_workload.iter().collect();
    worst.sort_by(|a, b| (b.1[1] - b.1[2]).total_cmp(&(a.1[1] - a.1[2])));
    html.push_str(
        "<p>The ten tests where sandstorm loses most against the lookup table (total ln regret difference):</p>\
         <table><tr><th>test</th><th>requests</th><th>GM sandstorm</th><th>GM lookup_median</th><th>GM lookup_ewma</th></tr>",
    );
    for (w, v) in worst.iter().take(10) {
        let _ = write!(
            html,
            "<tr><td style=\"text-align:left\">{}</td><td>{}</td><td>{:.4}</td><td>{:.4}</td><td>{:.4}</td></tr>",
            data.workloads[**w as usize].label(),
            v[0],
            (v[1] / v[0]).exp(),
            (v[2] / v[0]).exp(),
            (v[3] / v[0]).exp()
        );
    }
    html.push_str("</table>");

    // Why: how close the oracle's best and second-best placements were when sandstorm missed.
    let mut missed = 0usize;
    let mut close = 0usize;
    let mut regret_close = 0.0;
    let mut regret_all = 0.0;
    for (k, v) in s.values.iter().enumerate() {
        let (lr, hit) = per[ix("sandstorm")][k];
        regret_all += lr;
        if hit {
            continue;
        }
        missed += 1;
        let mut sorted = v.clone();
        sorted.sort_by(f64::total_cmp);
        if sorted.len() > 1 && sorted[1] / sorted[0] < 1.02 {
            close += 1;
            regret_close += lr;
        }
    }
    let _ = write!(
        html,
        "<p>Sandstorm missed the oracle's placement on {missed} of {} requests. On {close} of them \
         ({:.0}%) the best and second-best placements were within 2% of each other that day — below \
         the day-to-day noise of a day median — and those misses make up {:.0}% of sandstorm's total ln \
         regret; the rest comes from days where one placement was clearly better or worse than its history.</p>",
        s.values.len(),
        100.0 * close as f64 / missed.max(1) as f64,
        100.0 * regret_close / regret_all.max(1e-12)
    );
    Ok(())
}

fn captured(gm_fixed: f64, gm: f64) -> f64 {
    if gm_fixed > 1.0 {
        (gm_fixed - gm) / (gm_fixed - 1.0)
    } else {
        f64::NAN
    }
}

struct Week {
    start: String,
    n: usize,
    /// GM of sandstorm, lookup_median, lookup_ewma, fixed, random.
    gm: [f64; 5],
}

fn weekly(result: &EvalResult, _s: &StrategyResult, per: &[Vec<(f64, bool)>]) -> Vec<Week> {
    let mut sums: BTreeMap<i32, (usize, [f64; 5])> = BTreeMap::new();
    for (k, r) in result.test.iter().enumerate() {
        // Weeks start on Monday; 1970-01-01 was a Thursday.
        let week = (r.day + 3).div_euclid(7);
        let e = sums.entry(week).or_default();
        e.0 += 1;
        for (j, (p, _, _)) in DRAWN.iter().enumerate() {
            e.1[j] += per[policy_index(p)][k].0;
        }
    }
    sums.into_iter()
        .map(|(week, (n, s))| Week {
            start: date_of_day(week * 7 - 3).to_string(),
            n,
            gm: s.map(|x| (x / n as f64).exp()),
        })
        .collect()
}

fn plot_err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow::anyhow!("drawing a plot: {e:?}")
}

fn regret_plot(path: &Path, per: &[Vec<(f64, bool)>]) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(0f64..1f64, 0f64..std::f64::consts::LN_2)
        .map_err(plot_err)?;
    grid(&mut chart, 1.0, std::f64::consts::LN_2)?;
    for (p, color, _) in DRAWN {
        let mut v: Vec<f64> = per[policy_index(p)].iter().map(|x| x.0).collect();
        v.sort_by(f64::total_cmp);
        let n = v.len().max(2) as f64 - 1.0;
        chart
            .draw_series(LineSeries::new(
                v.iter()
                    .enumerate()
                    .map(|(i, y)| (i as f64 / n, y.min(std::f64::consts::LN_2))),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

fn weekly_plot(path: &Path, weeks: &[Week]) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let n = weeks.len().max(2) as f64 - 1.0;
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(0f64..n, -0.5f64..1.0f64)
        .map_err(plot_err)?;
    grid(&mut chart, n, 1.0)?;
    chart
        .draw_series(LineSeries::new(
            (0..=n as usize).map(|i| (i as f64, 0.0)),
            BLACK.stroke_width(1),
        ))
        .map_err(plot_err)?;
    for (j, (p, color, _)) in DRAWN.iter().enumerate().take(3) {
        let _ = p;
        chart
            .draw_series(LineSeries::new(
                weeks
                    .iter()
                    .enumerate()
                    .map(|(i, w)| (i as f64, captured(w.gm[3], w.gm[j]).clamp(-0.5, 1.0))),
                color.stroke_width(2),
            ))
            .map_err(plot_err)?;
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

fn bar_plot(path: &Path, bars: &[[f64; 3]]) -> Result<()> {
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE).map_err(plot_err)?;
    let top = bars
        .iter()
        .flat_map(|b| b.iter().copied())
        .fold(1e-9, f64::max);
    let mut chart = ChartBuilder::on(&root)
        .margin(20)
        .build_cartesian_2d(0f64..bars.len().max(1) as f64, 0f64..top * 1.05)
        .map_err(plot_err)?;
    for (i, b) in bars.iter().enumerate() {
        for (j, (_, color, _)) in DRAWN.iter().enumerate().take(3) {
            let x0 = i as f64 + 0.1 + 0.27 * j as f64;
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(x0, 0.0), (x0 + 0.25, b[j].max(0.0))],
                    color.filled(),
                )))
                .map_err(plot_err)?;
        }
    }
    root.present().map_err(plot_err)?;
    Ok(())
}

/// Light grid lines: ten steps on each axis.
fn grid<DB: DrawingBackend>(
    chart: &mut ChartContext<
        '_,
        DB,
        Cartesian2d<plotters::coord::types::RangedCoordf64, plotters::coord::types::RangedCoordf64>,
    >,
    x_max: f64,
    y_max: f64,
) -> Result<()>
where
    DB::ErrorType: 'static,
{
    let light = RGBColor(225, 225, 225);
    let (x_range, y_range) = (chart.x_range(), chart.y_range());
    for k in 0..=10 {
        let x = x_range.start + (x_max - x_range.start) * f64::from(k) / 10.0;
        let y = y_range.start + (y_max - y_range.start) * f64::from(k) / 10.0;
        chart
            .draw_series(LineSeries::new(
                [(x, y_range.start), (x, y_range.end)],
                light.stroke_width(1),
            ))
            .map_err(plot_err)?;
        chart
            .draw_series(LineSeries::new(
                [(x_range.start, y), (x_range.end, y)],
                light.stroke_width(1),
            ))
            .map_err(plot_err)?;
    }
    Ok(())
}
