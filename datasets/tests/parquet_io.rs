//! Parquet I/O: round trips through `write_parquet` / `read_parquet_dir`, `append_records`, and
//! the errors a user sees for empty directories, foreign files and broken files.

use std::fs;
use std::sync::Arc;

use arrow::array::{ArrayRef, LargeStringArray, RecordBatch, StringArray};
use arrow::compute::cast;
use arrow::datatypes::{DataType, Field, Schema};
use sandstorm_datasets::{
    DatasetsError, SimulatorConfig, append_records, read_parquet_dir, simulate, write_parquet,
};
use sandstorm_features::Catalog;
use sandstorm_features::telemetry::{self, TelemetryRecord};

fn records(rows: usize, seed: u64) -> Vec<TelemetryRecord> {
    let cfg = SimulatorConfig {
        rows,
        seed,
        ..SimulatorConfig::default()
    };
    simulate(&Catalog::default_catalog(), &cfg).collect()
}

fn read_records(dir: &std::path::Path) -> Vec<TelemetryRecord> {
    read_parquet_dir(dir)
        .expect("read back")
        .iter()
        .flat_map(|b| telemetry::from_record_batch(b).expect("telemetry rows"))
        .collect()
}

/// `batch` without column `name`.
fn without(batch: &RecordBatch, name: &str) -> RecordBatch {
    let index = batch.schema().index_of(name).expect("column exists");
    let mut batch = batch.clone();
    batch.remove_column(index);
    batch
}

#[test]
fn schema_round_trip_through_write_and_read() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = records(700, 3);
    let first = telemetry::to_record_batch(&rows[..400]).expect("batch");
    let second = telemetry::to_record_batch(&rows[400..]).expect("batch");
    write_parquet(&dir.path().join("a.parquet"), &[first, second]).expect("write");

    let batches = read_parquet_dir(dir.path()).expect("read");
    for batch in &batches {
        assert_eq!(batch.schema(), telemetry::schema());
    }
    assert_eq!(read_records(dir.path()), rows);
    // Only the final file remains: the temporary file was renamed.
    let names: Vec<String> = fs::read_dir(dir.path())
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["a.parquet"]);
}

#[test]
fn files_are_read_recursively_in_name_order_and_hidden_files_are_skipped() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = records(90, 4);
    let batch = |r: &[TelemetryRecord]| telemetry::to_record_batch(r).expect("batch");
    write_parquet(&dir.path().join("b.parquet"), &[batch(&rows[30..60])]).expect("write");
    write_parquet(&dir.path().join("a.parquet"), &[batch(&rows[..30])]).expect("write");
    write_parquet(&dir.path().join("c/d.parquet"), &[batch(&rows[60..])]).expect("write");
    fs::write(dir.path().join(".partial.parquet"), b"half a file").expect("write");
    fs::write(dir.path().join("notes.txt"), b"not data").expect("write");
    assert_eq!(read_records(dir.path()), rows);
}

#[test]
fn compatible_foreign_types_and_column_order_are_conformed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rows = records(50, 5);
    let batch = telemetry::to_record_batch(&rows).expect("batch");
    // Reverse the columns, store strings as large strings, and add a column of our own.
    let schema = batch.schema();
    let mut fields = Vec::new();
    let mut columns: Vec<ArrayRef> = Vec::new();
    for (field, column) in schema.fields().iter().zip(batch.columns()).rev() {
        if field.data_type() == &DataType::Utf8 {
            fields.push(Field::new(
                field.name(),
                DataType::LargeUtf8,
                field.is_nullable(),
            ));
            columns.push(cast(column, &DataType::LargeUtf8).expect("cast"));
        } else {
            fields.push(field.as_ref().clone());
            columns.push(Arc::clone(column));
        }
    }
    fields.push(Field::new("comment", DataType::Utf8, false));
    columns.push(Arc::new(StringArray::from(vec!["x"; rows.len()])));
    let foreign = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch");
    assert!(
        foreign
            .column_by_name("decision_id")
            .expect("column")
            .as_any()
            .is::<LargeStringArray>()
    );
    write_parquet(&dir.path().join("foreign.parquet"), &[foreign]).expect("write");
    let batches = read_parquet_dir(dir.path()).expect("read");
    assert_eq!(batches[0].schema(), telemetry::schema());
    assert_eq!(read_records(dir.path()), rows);
}

#[test]
fn append_records_creates_new_readable_files() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("telemetry/runs");
    let rows = records(40, 6);
    let a = append_records(&dir, &rows[..25]).expect("append");
    let b = append_records(&dir, &rows[25..]).expect("append");
    assert_ne!(a, b);
    for path in [&a, &b] {
        assert_eq!(path.parent(), Some(dir.as_path()));
        let name = path.file_name().expect("name").to_string_lossy();
        assert!(
            name.starts_with("runs-") && name.ends_with(".parquet"),
            "{name}"
        );
    }
    let mut read = read_records(&dir);
    let mut expected = rows.clone();
    read.sort_by(|x, y| x.run_id.cmp(&y.run_id));
    expected.sort_by(|x, y| x.run_id.cmp(&y.run_id));
    assert_eq!(read, expected);

    let err = append_records(&dir, &[]).expect_err("nothing to append");
    assert!(err.is_user_error());
    assert!(err.to_string().contains("nothing to write"), "{err}");
}

#[test]
fn a_parquet_file_without_a_telemetry_column_is_a_schema_error_naming_it() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = telemetry::to_record_batch(&records(10, 7)).expect("batch");
    let path = dir.path().join("foreign.parquet");
    write_parquet(&path, &[without(&batch, "status")]).expect("write");
    let err = read_parquet_dir(dir.path()).expect_err("not telemetry");
    assert!(matches!(err, DatasetsError::NotTelemetry { .. }), "{err:?}");
    assert!(err.is_user_error());
    let message = err.to_string();
    assert!(message.contains("column `status` is missing"), "{message}");
    assert!(message.contains("foreign.parquet"), "{message}");
}

#[test]
fn another_telemetry_schema_version_is_refused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = telemetry::to_record_batch(&records(10, 9)).expect("batch");
    let schema = Schema::new_with_metadata(
        batch.schema().fields().clone(),
        [("sandstorm.telemetry.version".to_owned(), "0".to_owned())].into(),
    );
    let old = RecordBatch::try_new(Arc::new(schema), batch.columns().to_vec()).expect("batch");
    write_parquet(&dir.path().join("old.parquet"), &[old]).expect("write");
    let message = read_parquet_dir(dir.path())
        .expect_err("old version")
        .to_string();
    assert!(message.contains("telemetry schema version 0"), "{message}");
}

#[test]
fn a_column_of_the_wrong_type_is_named() {
    let dir = tempfile::tempdir().expect("tempdir");
    let batch = telemetry::to_record_batch(&records(10, 8)).expect("batch");
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    let index = batch.schema().index_of("vcpu").expect("vcpu");
    fields[index] = Field::new("vcpu", DataType::Utf8, false);
    let mut columns = batch.columns().to_vec();
    columns[index] = cast(&columns[index], &DataType::Utf8).expect("cast");
    let wrong = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch");
    write_parquet(&dir.path().join("wrong.parquet"), &[wrong]).expect("write");
    let message = read_parquet_dir(dir.path())
        .expect_err("wrong type")
        .to_string();
    assert!(message.contains("column `vcpu` has type Utf8"), "{message}");
}

#[test]
fn empty_missing_and_broken_inputs_give_clear_errors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let err = read_parquet_dir(dir.path()).expect_err("empty");
    assert!(
        matches!(err, DatasetsError::NoParquetFiles { .. }),
        "{err:?}"
    );
    assert_eq!(
        err.to_string(),
        format!("no parquet files in {}", dir.path().display())
    );

    let missing = dir.path().join("nope");
    let err = read_parquet_dir(&missing).expect_err("missing");
    assert!(err.to_string().contains("is not a directory"), "{err}");

    fs::write(dir.path().join("broken.parquet"), b"this is not parquet").expect("write");
    let err = read_parquet_dir(dir.path()).expect_err("broken");
    assert!(
        matches!(err, DatasetsError::UnreadableParquet { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("broken.parquet"), "{err}");

    let err = write_parquet(&dir.path().join("x.parquet"), &[]).expect_err("no batches");
    assert!(err.to_string().contains("nothing to write"), "{err}");
}
