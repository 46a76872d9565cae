//! Importer of the Azure VM Noise Dataset 2024 (CC-BY 4.0; see `docs/evaluation.md`).
//!
//! Reads either our Parquet conversion (`measurements.parquet`) or the public repository's raw
//! CSV layout (`test_suite=*/test_name=*/vm_lifespan=*/vm_region=*/vm_sku=*/unit=*.csv` with
//! columns `value, runtime, starttime, VM_id`), plus `units.csv` (direction of each unit) and
//! `prices.csv` (list price per SKU and region), and turns them into what Sandstorm speaks:
//!
//! * a [`Catalog`] whose candidates are the placements (VM SKU × region) with their real prices,
//! * day outcomes: the median value of each (test, placement, UTC day), as time per unit of
//!   work in milliseconds (`1000 / value` for per-second throughput units, `value` converted
//!   to milliseconds for time units),
//! * requests: one per (test, day) measured on every placement, each with the placements'
//!   outcomes and the history features ([`sandstorm_features::history`]) of the test on each
//!   placement from the days strictly before,
//! * telemetry rows ([`AzureVmNoise::telemetry`]), one per request and placement, which
//!   `sandstorm train` trains on like any other telemetry.

use std::collections::{BTreeMap, HashMap};
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, ArrayRef, AsArray, RecordBatch};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Float64Type, TimeUnit, TimestampMillisecondType};
use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::file::statistics::Statistics;
use sandstorm_features::history::{HistoryFeatures, OutcomeHistory, relate};
use sandstorm_features::telemetry::{RunStatus, TelemetryRecord};
use sandstorm_features::{Candidate, Catalog, DecisionContext, Language, RunRequest, StrategyKind};
use time::OffsetDateTime;

use crate::error::DatasetsError;

/// Name of the dataset in telemetry (`source = import:azure-vm-noise`).
pub const DATASET_NAME: &str = "azure-vm-noise";
const SECONDS_PER_DAY: i64 = 86_400;
/// Units of work in one imported request. Telemetry latency is the time of this many units,
/// so that the fastest metrics (tens of millions of operations per second) stay well above
/// the trainer's 1 µs latency floor; ratios between placements do not change.
pub const WORK_UNITS_PER_REQUEST: f64 = 1000.0;

/// One metric of the dataset: a test and the unit it reports.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Workload {
    pub test_suite: String,
    pub test_name: String,
    pub unit: String,
    pub higher_is_better: bool,
}

impl Workload {
    /// The workload label of requests for this metric: `suite/test/unit`.
    pub fn label(&self) -> String {
        format!("{}/{}/{}", self.test_suite, self.test_name, self.unit)
    }

    /// Milliseconds of time per unit of work for a measured `value` (higher-is-better units
    /// are rates per second; time units are converted to milliseconds). Units this importer
    /// does not know keep their own scale; only ratios between placements matter.
    pub fn time_per_unit_ms(&self, value: f64) -> f64 {
        if self.higher_is_better {
            // Every higher-is-better unit of the dataset is a rate per second.
            1000.0 / value
        } else {
            let scale = match self.unit.as_str() {
                "ms" | "msec" => 1.0,
                "us Per Event" | "us" => 1e-3,
                "ns" | "Ns Per Event" => 1e-6,
                "s" | "sec" => 1e3,
                _ => 1.0,
            };
            value * scale
        }
    }

    /// Milliseconds of one request ([`WORK_UNITS_PER_REQUEST`] units of work).
    pub fn request_ms(&self, value: f64) -> f64 {
        self.time_per_unit_ms(value) * WORK_UNITS_PER_REQUEST
    }
}

/// One placement: a VM SKU in a region, with its on-demand list price.
#[derive(Debug, Clone, PartialEq)]
pub struct Placement {
    pub vm_region: String,
    pub vm_sku: String,
    pub price_usd_per_hour: f64,
    pub vcpus: f64,
    pub memory_gib: f64,
    pub source: String,
    /// Id of the catalog candidate of this placement.
    pub candidate_id: String,
}

/// The median outcome of one test on one placement on one UTC day.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct DayOutcome {
    pub workload: u32,
    pub placement: u32,
    /// Days since 1970-01-01 (UTC).
    pub day: i32,
    /// Median measured value.
    pub median_value: f64,
    /// Number of measurements that day.
    pub measurements: u32,
}

/// A request of the evaluation protocol: one test on one day, measured on every placement.
#[derive(Debug, Clone, PartialEq)]
pub struct DayRequest {
    pub workload: u32,
    pub day: i32,
    /// Per placement (in [`AzureVmNoise::placements`] order): time of the request's
    /// [`WORK_UNITS_PER_REQUEST`] units of work, ms.
    pub time_ms: Vec<f64>,
    /// Per placement: history features from the days strictly before `day`.
    pub history: Vec<HistoryFeatures>,
}

/// What to import.
#[derive(Debug, Clone)]
pub struct ImportOptions {
    /// `short` (fresh VMs, the protocol's choice) or `long`.
    pub vm_lifespan: String,
    /// Only these test suites (all when empty).
    pub test_suites: Vec<String>,
}

impl Default for ImportOptions {
    fn default() -> Self {
        Self {
            vm_lifespan: "short".to_owned(),
            test_suites: Vec::new(),
        }
    }
}

/// The imported dataset.
#[derive(Debug, Clone)]
pub struct AzureVmNoise {
    pub workloads: Vec<Workload>,
    pub placements: Vec<Placement>,
    /// Sorted by (day, workload, placement).
    pub outcomes: Vec<DayOutcome>,
    /// Measurements read (after the lifespan and suite filters).
    pub measurements: usize,
    /// Measurements skipped because the value was not a positive number.
    pub skipped_measurements: usize,
}

fn invalid(path: &Path, message: impl Into<String>) -> DatasetsError {
    DatasetsError::InvalidDataset {
        path: path.to_owned(),
        message: message.into(),
    }
}

/// Imports the dataset under `dir`: `units.csv`, `prices.csv` and either
/// `measurements.parquet` or the raw CSV tree (`test_suite=*/...`).
pub fn load(dir: &Path, options: &ImportOptions) -> Result<AzureVmNoise, DatasetsError> {
    if !dir.is_dir() {
        return Err(DatasetsError::NotADirectory {
            path: dir.to_owned(),
        });
    }
    let units = read_units(&dir.join("units.csv"))?;
    let placements = read_prices(&dir.join("prices.csv"))?;
    let mut acc = Accumulator::new(units, placements, options);
    let parquet = dir.join("measurements.parquet");
    if parquet.is_file() {
        read_measurements_parquet(&parquet, &mut acc)?;
    } else {
        let files = csv_files(dir)?;
        if files.is_empty() {
            return Err(invalid(
                dir,
                "holds neither measurements.parquet nor test_suite=*/.../unit=*.csv files",
            ));
        }
        for file in &files {
            read_measurements_csv(dir, file, &mut acc)?;
        }
    }
    acc.finish(dir)
}

/// Reads `units.csv`: `unit,higher_is_better[,notes]`.
fn read_units(path: &Path) -> Result<BTreeMap<String, bool>, DatasetsError> {
    let rows = read_small_csv(path, &["unit", "higher_is_better"])?;
    let mut out = BTreeMap::new();
    for (line, row) in rows {
        let hib = match row[1].as_str() {
            "true" | "True" | "TRUE" | "1" => true,
            "false" | "False" | "FALSE" | "0" => false,
            other => {
                return Err(invalid(
                    path,
                    format!(
                        "line {line}: column higher_is_better is `{other}`, expected true or false"
                    ),
                ));
            }
        };
        out.insert(row[0].clone(), hib);
    }
    if out.is_empty() {
        return Err(invalid(path, "no units"));
    }
    Ok(out)
}

/// Reads `prices.csv`: `vm_sku,vm_region,price_usd_per_hour,...,vcpus,memory_gib,source`.
fn read_prices(path: &Path) -> Result<Vec<Placement>, DatasetsError> {
    let cols = [
        "vm_sku",
        "vm_region",
        "price_usd_per_hour",
        "vcpus",
        "memory_gib",
        "source",
    ];
    let rows = read_small_csv(path, &cols)?;
    let mut out = Vec::new();
    for (line, row) in rows {
        let num = |i: usize| {
            row[i]
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite() && *v > 0.0)
                .ok_or_else(|| {
                    invalid(
                        path,
                        format!(
                            "line {line}: column {} is `{}`, expected a positive number",
                            cols[i], row[i]
                        ),
                    )
                })
        };
        out.push(Placement {
            vm_sku: row[0].clone(),
            vm_region: row[1].clone(),
            price_usd_per_hour: num(2)?,
            vcpus: num(3)?,
            memory_gib: num(4)?,
            source: row[5].clone(),
            candidate_id: String::new(),
        });
    }
    out.sort_by(|a, b| (&a.vm_region, &a.vm_sku).cmp(&(&b.vm_region, &b.vm_sku)));
    if out.is_empty() {
        return Err(invalid(path, "no prices"));
    }
    Ok(out)
}

/// A small CSV with a header: returns `(line number, wanted columns)` per data row. Handles
/// double-quoted fields (with `""` escapes); fields may not span lines.
fn read_small_csv(
    path: &Path,
    wanted: &[&str],
) -> Result<Vec<(usize, Vec<String>)>, DatasetsError> {
    let text = std::fs::read_to_string(path).map_err(|e| DatasetsError::io(path, e))?;
    let mut lines = text
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty());
    let Some((_, header)) = lines.next() else {
        return Err(invalid(path, "is empty"));
    };
    let header = split_csv_line(header);
    let idx: Vec<usize> = wanted
        .iter()
        .map(|w| {
            header
                .iter()
                .position(|h| h == w)
                .ok_or_else(|| invalid(path, format!("has no column `{w}`")))
        })
        .collect::<Result<_, _>>()?;
    let mut out = Vec::new();
    for (i, line) in lines {
        let fields = split_csv_line(line);
        let row: Vec<String> = idx
            .iter()
            .map(|&k| fields.get(k).cloned().unwrap_or_default())
            .collect();
        out.push((i + 1, row));
    }
    Ok(out)
}

fn split_csv_line(line: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut field = String::new();
    let mut quoted = false;
    let mut chars = line.trim_end_matches('\r').chars().peekable();
    while let Some(c) = chars.next() {
        match (c, quoted) {
            ('"', true) if chars.peek() == Some(&'"') => {
                field.push('"');
                chars.next();
            }
            ('"', _) => quoted = !quoted,
            (',', false) => out.push(std::mem::take(&mut field)),
            (c, _) => field.push(c),
        }
    }
    out.push(field);
    out
}

/// Collects measurements into day buckets.
struct Accumulator {
    units: BTreeMap<String, bool>,
    placements: Vec<Placement>,
    options: ImportOptions,
    workload_index: HashMap<(String, String, String), u32>,
    workloads: Vec<Workload>,
    buckets: HashMap<(u32, u32, i32), Vec<f64>>,
    measurements: usize,
    skipped: usize,
}

impl Accumulator {
    fn new(
        units: BTreeMap<String, bool>,
        placements: Vec<Placement>,
        options: &ImportOptions,
    ) -> Self {
        Self {
            units,
            placements,
            options: options.clone(),
            workload_index: HashMap::new(),
            workloads: Vec::new(),
            buckets: HashMap::new(),
            measurements: 0,
            skipped: 0,
        }
    }

    fn wants(&self, lifespan: &str, suite: &str) -> bool {
        lifespan == self.options.vm_lifespan
            && (self.options.test_suites.is_empty()
                || self.options.test_suites.iter().any(|s| s == suite))
    }

    /// The workload index of (suite, test, unit), registering it on first sight.
    fn workload(
        &mut self,
        path: &Path,
        suite: &str,
        name: &str,
        unit: &str,
    ) -> Result<u32, DatasetsError> {
        let key = (suite.to_owned(), name.to_owned(), unit.to_owned());
        if let Some(&i) = self.workload_index.get(&key) {
            return Ok(i);
        }
        let Some(&higher_is_better) = self.units.get(unit) else {
            return Err(invalid(
                path,
                format!("unit `{unit}` (test {suite}/{name}) is not listed in units.csv"),
            ));
        };
        let i = self.workloads.len() as u32;
        self.workloads.push(Workload {
            test_suite: key.0.clone(),
            test_name: key.1.clone(),
            unit: key.2.clone(),
            higher_is_better,
        });
        self.workload_index.insert(key, i);
        Ok(i)
    }

    fn placement(&self, path: &Path, region: &str, sku: &str) -> Result<u32, DatasetsError> {
        self.placements
            .iter()
            .position(|p| p.vm_region == region && p.vm_sku == sku)
            .map(|i| i as u32)
            .ok_or_else(|| {
                invalid(
                    path,
                    format!("placement {sku} in {region} has no row in prices.csv"),
                )
            })
    }

    fn add(&mut self, workload: u32, placement: u32, start_s: i64, value: f64) {
        self.measurements += 1;
        if !(value.is_finite() && value > 0.0) {
            self.skipped += 1;
            return;
        }
        let day = start_s.div_euclid(SECONDS_PER_DAY) as i32;
        self.buckets
            .entry((workload, placement, day))
            .or_default()
            .push(value);
    }

    fn finish(self, dir: &Path) -> Result<AzureVmNoise, DatasetsError> {
        if self.buckets.is_empty() {
            return Err(invalid(
                dir,
                format!(
                    "no measurements with vm_lifespan = {}{}",
                    self.options.vm_lifespan,
                    if self.options.test_suites.is_empty() {
                        String::new()
                    } else {
                        format!(" in test suites {}", self.options.test_suites.join(", "))
                    }
                ),
            ));
        }
        // Workloads in a stable order: sorted by (suite, test, unit).
        let mut order: Vec<u32> = (0..self.workloads.len() as u32).collect();
        order.sort_by(|&a, &b| self.workloads[a as usize].cmp(&self.workloads[b as usize]));
        let mut remap = vec![0u32; order.len()];
        for (new, &old) in order.iter().enumerate() {
            remap[old as usize] = new as u32;
        }
        let workloads: Vec<Workload> = order
            .iter()
            .map(|&i| self.workloads[i as usize].clone())
            .collect();
        let mut outcomes: Vec<DayOutcome> = self
            .buckets
            .into_iter()
            .map(|((w, p, day), mut values)| {
                values.sort_by(f64::total_cmp);
                let n = values.len();
                let median_value = if n % 2 == 1 {
                    values[n / 2]
                } else {
                    0.5 * (values[n / 2 - 1] + values[n / 2])
                };
                DayOutcome {
                    workload: remap[w as usize],
                    placement: p,
                    day,
                    median_value,
                    measurements: n as u32,
                }
            })
            .collect();
        outcomes.sort_by_key(|o| (o.day, o.workload, o.placement));
        let mut placements = self.placements;
        let catalog_ids = candidate_ids(&placements);
        for (p, id) in placements.iter_mut().zip(catalog_ids) {
            p.candidate_id = id;
        }
        tracing::info!(
            measurements = self.measurements,
            outcomes = outcomes.len(),
            workloads = workloads.len(),
            "imported azure vm noise"
        );
        Ok(AzureVmNoise {
            workloads,
            placements,
            outcomes,
            measurements: self.measurements,
            skipped_measurements: self.skipped,
        })
    }
}

/// Provider name of a SKU in the generated catalog.
fn provider_name(sku: &str) -> String {
    format!("azure-{}", sku.to_ascii_lowercase().replace('_', "-"))
}

/// Whether every region of `sku` has the same price (then one provider per SKU suffices).
fn uniform_price(placements: &[Placement], sku: &str) -> bool {
    let mut prices = placements
        .iter()
        .filter(|p| p.vm_sku == sku)
        .map(|p| p.price_usd_per_hour);
    let first = prices.next();
    prices.all(|p| Some(p) == first)
}

fn provider_of(placements: &[Placement], p: &Placement) -> String {
    if uniform_price(placements, &p.vm_sku) {
        provider_name(&p.vm_sku)
    } else {
        format!("{}-{}", provider_name(&p.vm_sku), p.vm_region)
    }
}

fn candidate_ids(placements: &[Placement]) -> Vec<String> {
    placements
        .iter()
        .map(|p| format!("{}/microvm/{}", provider_of(placements, p), p.vm_region))
        .collect()
}

fn read_measurements_parquet(path: &Path, acc: &mut Accumulator) -> Result<(), DatasetsError> {
    let unreadable = |source| DatasetsError::UnreadableParquet {
        path: path.to_owned(),
        source,
    };
    let file = File::open(path).map_err(|e| DatasetsError::io(path, e))?;
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(unreadable)?;
    let wanted = [
        "test_suite",
        "test_name",
        "unit",
        "vm_lifespan",
        "vm_region",
        "vm_sku",
        "value",
        "start_time",
    ];
    let schema = builder.parquet_schema();
    let mut leaves = Vec::new();
    for name in wanted {
        let i = (0..schema.num_columns())
            .find(|&i| schema.column(i).name() == name)
            .ok_or_else(|| invalid(path, format!("has no column `{name}`")))?;
        leaves.push(i);
    }
    let mask = ProjectionMask::leaves(schema, leaves.clone());
    // Skip row groups whose statistics rule out the wanted lifespan or test suites (the file
    // is sorted by lifespan and suite, so this skips most of it for small slices).
    let row_groups: Vec<usize> = builder
        .metadata()
        .row_groups()
        .iter()
        .enumerate()
        .filter(|(_, rg)| {
            let may_hold = |leaf: usize, wanted: &[String]| -> bool {
                let Some(Statistics::ByteArray(st)) = rg.column(leaf).statistics() else {
                    return true;
                };
                let (Some(min), Some(max)) = (st.min_opt(), st.max_opt()) else {
                    return true;
                };
                let (Ok(min), Ok(max)) = (min.as_utf8(), max.as_utf8()) else {
                    return true;
                };
                wanted.is_empty()
                    || wanted
                        .iter()
                        .any(|w| min <= w.as_str() && w.as_str() <= max)
            };
            may_hold(leaves[3], std::slice::from_ref(&acc.options.vm_lifespan))
                && may_hold(leaves[0], &acc.options.test_suites)
        })
        .map(|(i, _)| i)
        .collect();
    let reader = builder
        .with_row_groups(row_groups)
        .with_projection(mask)
        .with_batch_size(65_536)
        .build()
        .map_err(unreadable)?;
    for batch in reader {
        let batch = batch.map_err(|e| unreadable(e.into()))?;
        add_batch(path, &batch, acc)?;
    }
    Ok(())
}

/// A column of `batch` cast to `to`, the error naming the file and column.
fn column_as(
    path: &Path,
    batch: &RecordBatch,
    name: &str,
    to: &DataType,
) -> Result<ArrayRef, DatasetsError> {
    let col = batch
        .column_by_name(name)
        .ok_or_else(|| invalid(path, format!("has no column `{name}`")))?;
    if col.null_count() > 0 {
        return Err(invalid(path, format!("column `{name}` holds nulls")));
    }
    cast(col, to).map_err(|e| {
        invalid(
            path,
            format!(
                "column `{name}` of type {} cannot be read as {to}: {e}",
                col.data_type()
            ),
        )
    })
}

fn add_batch(path: &Path, batch: &RecordBatch, acc: &mut Accumulator) -> Result<(), DatasetsError> {
    let s = |name| column_as(path, batch, name, &DataType::Utf8);
    let (suite, name, unit, life, region, sku) = (
        s("test_suite")?,
        s("test_name")?,
        s("unit")?,
        s("vm_lifespan")?,
        s("vm_region")?,
        s("vm_sku")?,
    );
    let (suite, name, unit, life, region, sku) = (
        suite.as_string::<i32>(),
        name.as_string::<i32>(),
        unit.as_string::<i32>(),
        life.as_string::<i32>(),
        region.as_string::<i32>(),
        sku.as_string::<i32>(),
    );
    let value = column_as(path, batch, "value", &DataType::Float64)?;
    let value = value.as_primitive::<Float64Type>();
    let start = column_as(
        path,
        batch,
        "start_time",
        &DataType::Timestamp(TimeUnit::Millisecond, None),
    )?;
    let start = start.as_primitive::<TimestampMillisecondType>();
    // Rows are sorted by test, so the last key's indices are almost always reused.
    let mut last_w: Option<((usize, usize, usize), u32)> = None;
    let mut last_p: Option<(usize, u32)> = None;
    for i in 0..batch.num_rows() {
        if !acc.wants(life.value(i), suite.value(i)) {
            continue;
        }
        let w = match last_w {
            Some((k, w))
                if suite.value(k.0) == suite.value(i)
                    && name.value(k.1) == name.value(i)
                    && unit.value(k.2) == unit.value(i) =>
            {
                w
            }
            _ => {
                let w = acc.workload(path, suite.value(i), name.value(i), unit.value(i))?;
                last_w = Some(((i, i, i), w));
                w
            }
        };
        let p = match last_p {
            Some((k, p)) if region.value(k) == region.value(i) && sku.value(k) == sku.value(i) => p,
            _ => {
                let p = acc.placement(path, region.value(i), sku.value(i))?;
                last_p = Some((i, p));
                p
            }
        };
        acc.add(w, p, start.value(i).div_euclid(1000), value.value(i));
    }
    Ok(())
}

/// Every `unit=*.csv` file under `dir`, sorted.
fn csv_files(dir: &Path) -> Result<Vec<PathBuf>, DatasetsError> {
    let mut out = Vec::new();
    let mut pending = vec![dir.to_owned()];
    while let Some(d) = pending.pop() {
        let entries = std::fs::read_dir(&d).map_err(|e| DatasetsError::io(&d, e))?;
        for entry in entries {
            let entry = entry.map_err(|e| DatasetsError::io(&d, e))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if path.is_dir() {
                pending.push(path);
            } else if name.starts_with("unit=") && name.ends_with(".csv") {
                out.push(path);
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Reads one raw CSV file; the test, lifespan, placement and unit come from its path.
fn read_measurements_csv(
    root: &Path,
    path: &Path,
    acc: &mut Accumulator,
) -> Result<(), DatasetsError> {
    let rel = path.strip_prefix(root).unwrap_or(path);
    let mut keys: BTreeMap<&str, String> = BTreeMap::new();
    for comp in rel.components() {
        let comp = comp.as_os_str().to_string_lossy();
        let comp = comp.strip_suffix(".csv").unwrap_or(&comp);
        if let Some((k, v)) = comp.split_once('=') {
            keys.insert(
                match k {
                    "test_suite" => "test_suite",
                    "test_name" => "test_name",
                    "vm_lifespan" => "vm_lifespan",
                    "vm_region" => "vm_region",
                    "vm_sku" => "vm_sku",
                    "unit" => "unit",
                    _ => continue,
                },
                v.to_owned(),
            );
        }
    }
    let key = |k: &str| {
        keys.get(k).cloned().ok_or_else(|| {
            invalid(
                path,
                format!("path lacks the `{k}=` component (expected test_suite=*/test_name=*/vm_lifespan=*/vm_region=*/vm_sku=*/unit=*.csv)"),
            )
        })
    };
    let (suite, name, life, region, sku, unit) = (
        key("test_suite")?,
        key("test_name")?,
        key("vm_lifespan")?,
        key("vm_region")?,
        key("vm_sku")?,
        key("unit")?,
    );
    if !acc.wants(&life, &suite) {
        return Ok(());
    }
    let w = acc.workload(path, &suite, &name, &unit)?;
    let p = acc.placement(path, &region, &sku)?;
    let rows = read_small_csv(path, &["value", "starttime"])?;
    for (line, row) in rows {
        let value: f64 = row[0].trim().parse().map_err(|_| {
            invalid(
                path,
                format!(
                    "line {line}: column value is `{}`, expected a number",
                    row[0]
                ),
            )
        })?;
        let start = parse_start_time(row[1].trim()).ok_or_else(|| {
            invalid(
                path,
                format!(
                    "line {line}: column starttime is `{}`, expected YYYY-MM-DD HH:MM:SS[.fff]",
                    row[1]
                ),
            )
        })?;
        acc.add(w, p, start, value);
    }
    Ok(())
}

/// Parses `YYYY-MM-DD HH:MM:SS[.fff]` (taken as UTC) into Unix seconds, dropping fractions.
fn parse_start_time(text: &str) -> Option<i64> {
    let whole = text.split('.').next()?;
    let format = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]:[second]");
    let t = time::PrimitiveDateTime::parse(whole, format).ok()?;
    Some(t.assume_utc().unix_timestamp())
}

impl AzureVmNoise {
    /// The catalog of the placements: one remote provider per SKU (per SKU and region when
    /// a SKU's price differs between regions), isolation `microvm` (a hardware-virtualised
    /// VM), the whole VM's on-demand price expressed per vCPU-second.
    pub fn catalog_toml(&self) -> String {
        let mut regions: Vec<&str> = self
            .placements
            .iter()
            .map(|p| p.vm_region.as_str())
            .collect();
        regions.sort_unstable();
        regions.dedup();
        let mut text = String::from(
            "# Catalog of the Azure VM Noise Dataset placements (generated by sandstorm's importer).\n\
             # Prices: on-demand list prices from the dataset's prices.csv, per whole VM, expressed\n\
             # per vCPU-second (price per hour / 3600 / vCPUs). rtt_ms is not measured (0).\n\
             schema_version = 1\n",
        );
        for r in &regions {
            text.push_str(&format!(
                "\n[[regions]]\nname = {}\narea = \"us\"\nrtt_ms = 0.0\n",
                toml_str(r)
            ));
        }
        let mut providers: BTreeMap<String, Vec<&Placement>> = BTreeMap::new();
        for p in &self.placements {
            providers
                .entry(provider_of(&self.placements, p))
                .or_default()
                .push(p);
        }
        for (name, ps) in providers {
            let first = ps[0];
            let regions: Vec<String> = ps.iter().map(|p| toml_str(&p.vm_region)).collect();
            let vcpus = ps.iter().map(|p| p.vcpus).fold(0.0, f64::max);
            let memory = ps.iter().map(|p| p.memory_gib).fold(0.0, f64::max);
            text.push_str(&format!(
                "\n[[providers]]\nname = {}\nkind = \"remote\"\nbackends = [\"microvm\"]\nregions = [{}]\n\
                 [providers.prices]\nvcpu_second = {:e}\ngib_second = 0.0\nestimate = false\nsource = {}\nas_of = \"2026-11-29\"\n\
                 [providers.quotas]\nmax_vcpu = {vcpus:?}\nmax_memory_mib = {}\n",
                toml_str(&name),
                regions.join(", "),
                first.price_usd_per_hour / 3600.0 / first.vcpus,
                toml_str(&format!("{} (Azure {} on-demand list price {} USD/h)", first.source, first.vm_sku, first.price_usd_per_hour)),
                (memory * 1024.0).round() as u64,
            ));
        }
        text
    }

    /// The parsed catalog of [`AzureVmNoise::catalog_toml`].
    pub fn catalog(&self) -> Result<Catalog, DatasetsError> {
        Catalog::from_toml(&self.catalog_toml())
            .map_err(|e| DatasetsError::CatalogUnusable(format!("generated catalog: {e}")))
    }

    /// The requests of the protocol: every (test, day) with an outcome on every placement,
    /// sorted by (day, workload), with history features from all earlier days' outcomes of
    /// the same test on each placement.
    pub fn requests(&self) -> Vec<DayRequest> {
        let n_p = self.placements.len();
        let mut histories: Vec<Vec<OutcomeHistory>> =
            vec![vec![OutcomeHistory::new(); n_p]; self.workloads.len()];
        let mut out = Vec::new();
        let mut i = 0;
        while i < self.outcomes.len() {
            let day = self.outcomes[i].day;
            let end = self.outcomes[i..]
                .iter()
                .position(|o| o.day != day)
                .map_or(self.outcomes.len(), |k| i + k);
            let today = &self.outcomes[i..end];
            let at_s = i64::from(day) * SECONDS_PER_DAY;
            let mut j = 0;
            while j < today.len() {
                let w = today[j].workload;
                let k = today[j..]
                    .iter()
                    .position(|o| o.workload != w)
                    .map_or(today.len(), |k| j + k);
                let group = &today[j..k];
                if group.len() == n_p {
                    let wl = &self.workloads[w as usize];
                    let mut history: Vec<HistoryFeatures> = histories[w as usize]
                        .iter()
                        .map(|h| h.features(at_s))
                        .collect();
                    relate(&mut history);
                    out.push(DayRequest {
                        workload: w,
                        day,
                        time_ms: group
                            .iter()
                            .map(|o| wl.request_ms(o.median_value))
                            .collect(),
                        history,
                    });
                }
                j = k;
            }
            for o in today {
                let wl = &self.workloads[o.workload as usize];
                histories[o.workload as usize][o.placement as usize]
                    .push(at_s, wl.request_ms(o.median_value).ln());
            }
            i = end;
        }
        out
    }

    /// The Sandstorm request of a protocol request under `strategy`.
    pub fn run_request(&self, request: &DayRequest, strategy: StrategyKind) -> RunRequest {
        let w = &self.workloads[request.workload as usize];
        let vcpus = self.placements.iter().map(|p| p.vcpus).fold(1.0, f64::max);
        let memory = self
            .placements
            .iter()
            .map(|p| p.memory_gib)
            .fold(1.0, f64::max);
        let mut r = RunRequest::command(
            Language::Sh,
            format!(
                "phoronix-test-suite benchmark {} # {}",
                w.test_suite, w.test_name
            ),
        );
        r.resources.cpu = vcpus;
        r.resources.memory_mib = (memory * 1024.0).round() as u64;
        r.timeout_s = 86_400.0;
        r.strategy = strategy;
        r.tenant = DATASET_NAME.to_owned();
        r.workload = Some(w.label());
        r
    }

    /// The decision context of a request: the start of its UTC day.
    pub fn context(request: &DayRequest) -> DecisionContext {
        DecisionContext::at(
            OffsetDateTime::from_unix_timestamp(i64::from(request.day) * SECONDS_PER_DAY)
                .unwrap_or(OffsetDateTime::UNIX_EPOCH),
        )
    }

    /// Telemetry rows of `requests`: one per request and placement, as if the request had
    /// run there (status ok, latency = time per unit of work, cost = list price × time),
    /// with the history features the router would have seen.
    pub fn telemetry(
        &self,
        catalog_candidates: &[Candidate],
        requests: &[DayRequest],
    ) -> Result<Vec<TelemetryRecord>, DatasetsError> {
        let by_id: HashMap<&str, &Candidate> = catalog_candidates
            .iter()
            .map(|c| (c.id.as_str(), c))
            .collect();
        let mut out = Vec::with_capacity(requests.len() * self.placements.len());
        for (n, req) in requests.iter().enumerate() {
            let run = self.run_request(req, StrategyKind::OptimizeCost);
            let ctx = Self::context(req);
            for (p, placement) in self.placements.iter().enumerate() {
                let candidate = by_id.get(placement.candidate_id.as_str()).ok_or_else(|| {
                    DatasetsError::CatalogUnusable(format!(
                        "the catalog has no candidate {}",
                        placement.candidate_id
                    ))
                })?;
                let ms = req.time_ms[p];
                let mut r = TelemetryRecord::for_choice(&run, candidate, &ctx);
                r.decision_id = format!("{DATASET_NAME}-{n}");
                r.run_id = format!("{DATASET_NAME}-{n}-{p}");
                r.source = format!("import:{DATASET_NAME}");
                r.history = req.history[p];
                r.n_candidates = self.placements.len() as u32;
                r.n_feasible = self.placements.len() as u32;
                r.ts_start_us = Some(r.ts_request_us);
                r.ts_end_us = Some(r.ts_request_us + (ms * 1000.0) as i64);
                r.status = RunStatus::Ok;
                r.exit_code = Some(0);
                r.exec_ms = ms;
                r.total_latency_ms = ms;
                r.cost_usd = candidate.list_cost_usd(&run.resources, ms / 1000.0);
                out.push(r);
            }
        }
        Ok(out)
    }
}

fn toml_str(s: &str) -> String {
    let escaped: String = s
        .chars()
        .flat_map(|c| match c {
            '"' => vec!['\\', '"'],
            '\\' => vec!['\\', '\\'],
            c => vec![c],
        })
        .collect();
    format!("\"{escaped}\"")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_lines_split_with_quotes() {
        assert_eq!(
            split_csv_line(r#"a,"b, c",,"d ""e""""#),
            vec!["a", "b, c", "", r#"d "e""#]
        );
    }

    #[test]
    fn start_times_parse_as_utc_seconds() {
        assert_eq!(parse_start_time("1970-01-02 00:00:01.999"), Some(86_401));
        assert_eq!(parse_start_time("yesterday"), None);
    }

    #[test]
    fn time_per_unit_follows_the_direction() {
        let w = |unit: &str, hib| Workload {
            test_suite: "s".into(),
            test_name: "t".into(),
            unit: unit.into(),
            higher_is_better: hib,
        };
        assert_eq!(w("IOPS", true).time_per_unit_ms(500.0), 2.0);
        assert_eq!(w("ms", false).time_per_unit_ms(3.0), 3.0);
        assert_eq!(w("ns", false).time_per_unit_ms(2e6), 2.0);
    }
}
