//! Native (pure Rust) inference of LightGBM text models.
//!
//! [`NativeModel::from_text`] reads the text format LightGBM writes (`tree`/`version=v4`
//! header, one `Tree=` block per tree: numerical and categorical splits, missing-value types,
//! single-leaf trees and linear leaves) into a flat struct-of-arrays forest. Prediction
//! reproduces LightGBM's `GBDT::Predict` bit for bit: the same branch at every node for every
//! input (NaN, ±0, values within `kZeroThreshold` of zero, infinities, any category code),
//! tree outputs summed in `f64` in tree order, then the objective's output transform. The model
//! is immutable, `Send` and `Sync`; predicting allocates nothing.
//!
//! Not supported, and rejected with a clear error at load time: multiclass models, random
//! forests (`average_output`) and objectives other than the regression family and binary.

mod forest;
mod objective;
mod text;

pub use forest::EvalScratch;
pub(crate) use forest::constant_features;
pub use objective::OutputTransform;

use forest::{BuildError, Forest};

use crate::RouterError;

/// A LightGBM model ready for native batch prediction.
#[derive(Debug, Clone)]
pub struct NativeModel {
    forest: Forest,
    transform: OutputTransform,
}

impl NativeModel {
    /// Parses and validates a model in LightGBM's text format.
    pub fn from_text(text: &str) -> Result<Self, RouterError> {
        let (header, trees) = text::parse_model(text)?;
        let transform = OutputTransform::parse(&header.objective)?;
        let forest = Forest::build(header.n_features, &trees).map_err(|e| {
            RouterError::ModelText(match e {
                BuildError::TooLarge => "the model has too many nodes".to_owned(),
                BuildError::MixedFeature(f) => {
                    format!("feature {f} is split on both as a number and as a category")
                }
            })
        })?;
        Ok(Self { forest, transform })
    }

    /// Number of features a row must have (`max_feature_idx + 1`).
    pub fn n_features(&self) -> usize {
        self.forest.n_features()
    }

    pub fn num_trees(&self) -> usize {
        self.forest.num_trees()
    }

    /// The objective's output transform.
    pub fn transform(&self) -> OutputTransform {
        self.transform
    }

    /// Writes the raw score (sum of tree outputs, before the objective's transform) of every
    /// row of the row-major matrix `rows` into `out`, one value per row. Allocates its working
    /// buffers; see [`NativeModel::predict_batch_into`] for the allocation-free path.
    pub fn raw_scores_into(&self, rows: &[f64], out: &mut [f64]) -> Result<(), RouterError> {
        self.check_shape(rows, out.len())?;
        self.forest
            .raw_scores(&mut EvalScratch::default(), rows, out);
        Ok(())
    }

    /// Writes the prediction of every row of the row-major matrix `rows` into `out`, one value
    /// per row, as LightGBM's `predict` returns it. Allocates its working buffers.
    pub fn predict_into(&self, rows: &[f64], out: &mut [f64]) -> Result<(), RouterError> {
        self.raw_scores_into(rows, out)?;
        self.transform_in_place(out);
        Ok(())
    }

    /// [`NativeModel::predict_into`] with the caller's reusable buffers: once `scratch` has
    /// grown to the batch size, predicting allocates nothing. When the rows share feature
    /// values (such as the candidates of one request), nodes on those features are resolved
    /// once per batch. Same results, bit for bit.
    pub fn predict_batch_into(
        &self,
        scratch: &mut EvalScratch,
        rows: &[f64],
        out: &mut [f64],
    ) -> Result<(), RouterError> {
        self.predict_batch(scratch, rows, None, out)
    }

    /// [`NativeModel::predict_batch_into`] for rows whose constant features the caller has
    /// marked already (`constant`, as [`constant_features`] marks them), when it scores the
    /// same rows with several models.
    pub(crate) fn predict_batch_with_constant(
        &self,
        scratch: &mut EvalScratch,
        rows: &[f64],
        constant: &[bool],
        out: &mut [f64],
    ) -> Result<(), RouterError> {
        if constant.len() != self.n_features() {
            return Err(RouterError::Prediction(format!(
                "{} constant-feature flags for {} features",
                constant.len(),
                self.n_features()
            )));
        }
        self.predict_batch(scratch, rows, Some(constant), out)
    }

    fn predict_batch(
        &self,
        scratch: &mut EvalScratch,
        rows: &[f64],
        constant: Option<&[bool]>,
        out: &mut [f64],
    ) -> Result<(), RouterError> {
        self.check_shape(rows, out.len())?;
        self.forest.raw_scores_with(scratch, rows, constant, out);
        self.transform_in_place(out);
        Ok(())
    }

    fn transform_in_place(&self, out: &mut [f64]) {
        let transform = self.transform;
        if transform != OutputTransform::Identity {
            for o in out.iter_mut() {
                *o = transform.apply(*o);
            }
        }
    }

    /// Predicts every row of `rows` into a new vector.
    pub fn predict(&self, rows: &[f64]) -> Result<Vec<f64>, RouterError> {
        let n = self.n_rows(rows)?;
        let mut out = vec![0.0; n];
        self.predict_into(rows, &mut out)?;
        Ok(out)
    }

    fn n_rows(&self, rows: &[f64]) -> Result<usize, RouterError> {
        let nf = self.n_features();
        if !rows.len().is_multiple_of(nf) {
            return Err(RouterError::Prediction(format!(
                "{} values are not whole rows of {nf} features",
                rows.len()
            )));
        }
        Ok(rows.len() / nf)
    }

    fn check_shape(&self, rows: &[f64], n_out: usize) -> Result<(), RouterError> {
        let n = self.n_rows(rows)?;
        if n != n_out {
            return Err(RouterError::Prediction(format!(
                "{n} rows but room for {n_out} predictions"
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEADER: &str = "tree\nversion=v4\nnum_class=1\nnum_tree_per_iteration=1\nlabel_index=0\nmax_feature_idx=1\n";

    fn model(objective: &str, trees: &str) -> String {
        format!(
            "{HEADER}objective={objective}\nfeature_names=a b\nfeature_infos=none none\n\n{trees}end of trees\n\nparameters:\nend of parameters\n"
        )
    }

    const TWO_TREES: &str = "Tree=0\nnum_leaves=3\nnum_cat=1\nsplit_feature=0 1\nsplit_gain=1 1\nthreshold=0 0.5\ndecision_type=1 2\nleft_child=-1 -2\nright_child=1 -3\nleaf_value=0.25 -0.5 1.5\nleaf_weight=1 1 1\nleaf_count=1 1 1\ninternal_value=0 0\ninternal_weight=0 0\ninternal_count=2 1\ncat_boundaries=0 1\ncat_threshold=10\nis_linear=0\nshrinkage=1\n\n\nTree=1\nnum_leaves=1\nnum_cat=0\nsplit_feature=\nsplit_gain=\nthreshold=\ndecision_type=\nleft_child=\nright_child=\nleaf_value=0.125\nleaf_weight=\nleaf_count=\ninternal_value=\ninternal_weight=\ninternal_count=\nis_linear=0\nshrinkage=1\n\n\n";

    #[test]
    fn native_models_are_send_and_sync() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<NativeModel>();
    }

    #[test]
    fn evaluates_categorical_numerical_and_single_leaf_trees() {
        let m = NativeModel::from_text(&model("regression", TWO_TREES)).expect("valid model");
        assert_eq!(m.n_features(), 2);
        assert_eq!(m.num_trees(), 2);
        // Category bitset 10 = {1, 3}.
        let rows = [1.0, 9.0, 3.0, 0.0, 0.0, 0.5, 0.0, 0.75, f64::NAN, f64::NAN];
        let out = m.predict(&rows).expect("shape");
        assert_eq!(out, vec![0.375, 0.375, -0.375, 1.625, -0.375]);
    }

    #[test]
    fn applies_the_binary_sigmoid() {
        let m = NativeModel::from_text(&model("binary sigmoid:1", TWO_TREES)).expect("valid");
        let out = m.predict(&[1.0, 0.0]).expect("shape");
        assert_eq!(out, vec![1.0 / (1.0 + (-0.375f64).exp())]);
    }

    #[test]
    fn evaluates_linear_leaves() {
        let tree = "Tree=0\nnum_leaves=2\nnum_cat=0\nsplit_feature=0\nthreshold=0.5\ndecision_type=2\nleft_child=-1\nright_child=-2\nleaf_value=1 2\nis_linear=1\nleaf_const=0.5 -1\nnum_features=1 0\nleaf_features=1  \nleaf_coeff=2  \nshrinkage=1\n\n";
        let m = NativeModel::from_text(&model("regression", tree)).expect("valid");
        let out = m
            .predict(&[0.0, 3.0, 1.0, 3.0, 0.0, f64::NAN, 0.0, 1e-40])
            .expect("shape");
        assert_eq!(out, vec![0.5 + 2.0 * 3.0, -1.0, 1.0, 0.5]);
    }

    #[test]
    fn rejects_bad_models_with_clear_errors() {
        let cases = [
            ("nonsense".to_owned(), "not a lightgbm text model"),
            (
                model("multiclass num_class:3", TWO_TREES),
                "unsupported objective",
            ),
            (
                model("regression", TWO_TREES).replace("num_class=1", "num_class=3"),
                "num_class=3",
            ),
            (
                model("regression", TWO_TREES)
                    .split("end of trees")
                    .next()
                    .unwrap_or_default()
                    .to_owned(),
                "truncated",
            ),
            (
                model("regression", TWO_TREES).replace("left_child=-1 -2", "left_child=1 -2"),
                "do not form a tree",
            ),
            (
                model("regression", TWO_TREES).replace("split_feature=0 1", "split_feature=0 7"),
                "feature 7",
            ),
            (
                model("regression", TWO_TREES)
                    .replace("leaf_value=0.25 -0.5 1.5", "leaf_value=0.25"),
                "`leaf_value` holds 1 values, expected 3",
            ),
            (
                model("regression", TWO_TREES).replace("threshold=0 0.5", "threshold=4 0.5"),
                "bitset 4",
            ),
            (
                model("regression", TWO_TREES).replace(
                    "objective=regression\n",
                    "average_output\nobjective=regression\n",
                ),
                "average_output",
            ),
        ];
        for (text, needle) in cases {
            let err = NativeModel::from_text(&text).expect_err(needle).to_string();
            assert!(err.contains(needle), "expected `{needle}` in `{err}`");
        }
    }

    #[test]
    fn rejects_rows_of_the_wrong_shape() {
        let m = NativeModel::from_text(&model("regression", TWO_TREES)).expect("valid");
        assert!(m.predict(&[1.0, 2.0, 3.0]).is_err());
        let mut out = [0.0; 3];
        assert!(m.predict_into(&[1.0, 2.0], &mut out).is_err());
    }
}
