//! The flat, struct-of-arrays layout of a forest and its batch evaluation kernel.
//!
//! All trees of a model share one set of node arrays, numbered tree by tree in depth-first
//! pre-order so a root-to-leaf walk moves forward through memory. A child is a node index
//! (`>= 0`) or `!leaf` (`< 0`), with leaves numbered across the whole model into `leaf_value`.
//! LightGBM's per-node rules (`decision_type` bits) are turned into a small `kind` code at load
//! time, so that the common numerical node is one comparison plus a NaN test:
//!
//! * `NumericalDecision` (include/LightGBM/tree.h): with missing type `None` a NaN becomes 0.0,
//!   so NaN goes where 0.0 goes; with `NaN` it goes to the default child; with `Zero` NaN and
//!   `|v| <= kZeroThreshold` go to the default child and everything else compares.
//! * The C API turns every input with `|v| <= kZeroThreshold` into 0.0 before prediction
//!   (`RowPairFunctionFromDenseMatrix`); thresholds in `[-kZeroThreshold, kZeroThreshold)`
//!   are moved so that comparing the raw value gives the same branch.
//! * `CategoricalDecision`: NaN and negative values go right; otherwise `(int)v` is looked up
//!   in the node's bitset (`cat_threshold[cat_boundaries[i]..cat_boundaries[i + 1]]`). A
//!   feature is categorical for all its splits (LightGBM bins it that way), so before a batch
//!   is evaluated its categorical columns are replaced by the category code, computed once per
//!   value instead of at every node.
//!
//! A batch is evaluated tree by tree over blocks of rows (see [`block`]): each tree adds its
//! output to every row's `f64` sum before the next tree does, so every row sums its trees in
//! tree order, as `GBDT::PredictRaw` does. Features that are constant over a batch (the
//! request's features when the rows are the candidates of one request) are folded: nodes on
//! them are resolved once per tree and batch, and rows meet only the nodes that tell them
//! apart. Which leaf each row reaches in a tree is remembered across batches (see [`memo`])
//! while the columns its reached nodes read are unchanged and its constant nodes go the
//! same way.

mod block;
mod memo;

use std::sync::atomic::{AtomicU64, Ordering};

use super::text::RawTree;

/// `kZeroThreshold` of include/LightGBM/meta.h: the float literal `1e-35f` widened to double.
pub(crate) const K_ZERO_THRESHOLD: f64 = 1e-35_f32 as f64;

/// Batches up to this many rows are walked row by row; larger ones with row sets.
const SMALL_BATCH: usize = 32;
/// Largest tree (in internal nodes) whose leaves per row are remembered across batches: its
/// nodes fit the bits of a `u128` signature and its leaf indices a byte.
const MAX_MEMO_NODES: u32 = 127;
/// Most features a forest can have for its trees' leaves to be remembered: the features a
/// tree's reached nodes read are the bits of a `u128`.
const MAX_MEMO_FEATURES: usize = 128;
/// Category code of NaN, negative and out-of-range values: in no bitset.
const NO_CATEGORY: u32 = u32::MAX;

/// `kind` bit: a NaN goes to the left child; for missing type `Zero`, the default is left.
const NAN_LEFT: u8 = 1;
/// `kind` bit: missing type `Zero` — NaN and `|v| <= kZeroThreshold` go to the default child.
const ZERO: u8 = 2;
/// `kind` bit: categorical split; `cat_start`/`cat_len` locate its bitset in `cat_words`.
const CATEGORICAL: u8 = 4;

/// One tree: where its walk starts and whether its leaves are linear models.
#[derive(Debug, Clone, Copy)]
struct TreeRoot {
    /// Node index of the root, or `!leaf` for a single-leaf tree.
    root: i32,
    /// Number of internal nodes; they are `root..root + size`, in pre-order.
    size: u32,
    /// Index into `Forest::linear` when the tree has linear leaves.
    linear: Option<u32>,
    /// Global index of its first leaf; its leaves are `first_leaf..=first_leaf + size`.
    first_leaf: u32,
    /// Whether the leaves its rows reach are remembered across batches (see [`memo`]): it
    /// has internal nodes, no linear leaves, at most [`MAX_MEMO_NODES`] of them, and the
    /// forest at most [`MAX_MEMO_FEATURES`] features.
    memoized: bool,
}

/// The linear models of one tree's leaves (`linear_tree=true`).
#[derive(Debug, Clone)]
struct LinearTree {
    /// Global index of the tree's first leaf.
    first_leaf: usize,
    leaf_const: Vec<f64>,
    terms: Vec<Vec<(usize, f64)>>,
}

/// Internal nodes in struct-of-arrays form.
#[derive(Debug, Clone, Default)]
struct Nodes {
    feature: Vec<u32>,
    /// The threshold raw values compare with (NaN, unused, for categorical nodes).
    threshold: Vec<f64>,
    kind: Vec<u8>,
    left: Vec<i32>,
    right: Vec<i32>,
    /// Start of a categorical node's bitset in `Forest::cat_words` (0 for numerical nodes).
    cat_start: Vec<u32>,
    /// Length in words of a categorical node's bitset (0 for numerical nodes).
    cat_len: Vec<u32>,
}

impl Nodes {
    fn len(&self) -> usize {
        self.feature.len()
    }

    /// Whether a prepared value `v` (see [`Forest::prepare`]) goes to the left child of node
    /// `i`.
    #[inline(always)]
    fn goes_left(&self, i: usize, v: f64, cat_words: &[u32]) -> bool {
        let kind = self.kind[i];
        let nan_left = kind & NAN_LEFT != 0;
        if kind & CATEGORICAL != 0 {
            // The category code is in the low bits; NO_CATEGORY is beyond every bitset.
            let code = v.to_bits() as u32;
            let word = code >> 5;
            word < self.cat_len[i]
                && (cat_words[(self.cat_start[i] + word) as usize] >> (code & 31)) & 1 == 1
        } else if kind & ZERO != 0 && (v.is_nan() || v.abs() <= K_ZERO_THRESHOLD) {
            nan_left
        } else {
            (v <= self.threshold[i]) | (v.is_nan() & nan_left)
        }
    }

    /// The child of node `i` that a prepared row `x` goes to.
    #[inline(always)]
    fn step(&self, i: usize, x: &[f64], cat_words: &[u32]) -> i32 {
        if self.goes_left(i, x[self.feature[i] as usize], cat_words) {
            self.left[i]
        } else {
            self.right[i]
        }
    }

    /// The leaf (`!leaf`) a prepared row reaches from `root`.
    #[inline(always)]
    fn leaf_of(&self, root: i32, x: &[f64], cat_words: &[u32]) -> i32 {
        let mut n = root;
        while n >= 0 {
            n = self.step(n as usize, x, cat_words);
        }
        n
    }
}

/// Reusable buffers for batch prediction (see [`crate::NativeModel::predict_batch_into`]).
/// One per worker and model; never shared.
///
/// What depends only on the input stays cached for the next batch of the same forest: the
/// rows that go left at each node while its feature's column is the same (the candidates of
/// consecutive requests mostly are), and per tree the leaf each row reached, while the
/// columns the reached nodes read are the same and the constant nodes passed go the same
/// way. Using a scratch with another forest drops the caches.
#[derive(Debug, Clone, Default)]
pub struct EvalScratch {
    /// [`Forest::id`] of the forest the caches belong to (0: none yet).
    forest: u64,
    /// Prepared rows (see [`Forest::prepare`]) of a batch walked row by row.
    x: Vec<f64>,
    /// Prepared row 0 of the batch: the values of its constant features.
    x0: Vec<f64>,
    /// Per feature: whether every row has the same value (same bits).
    constant: Vec<bool>,
    /// Per row of the block: the output of the leaf it reached in the current tree.
    tree_out: Vec<f64>,
    block: block::BlockScratch,
    memo: memo::Memo,
    /// The outputs of the block's memoized trees, still to add.
    terms: Vec<block::Term>,
}

/// Source of [`Forest::id`].
static NEXT_FOREST_ID: AtomicU64 = AtomicU64::new(1);

/// Why a forest cannot be laid out.
#[derive(Debug)]
pub(crate) enum BuildError {
    /// Too many nodes, leaves or bitset words for 32-bit indices.
    TooLarge,
    /// A feature is split on both as a number and as a category.
    MixedFeature(u32),
}

/// A forest in struct-of-arrays form.
#[derive(Debug, Clone)]
pub(crate) struct Forest {
    /// Unique per built forest (clones share it: they are the same forest); tells an
    /// [`EvalScratch`] whether its caches are this forest's.
    id: u64,
    n_features: usize,
    /// Per feature: whether its splits are categorical.
    categorical: Vec<bool>,
    trees: Vec<TreeRoot>,
    nodes: Nodes,
    /// Every categorical bitset.
    cat_words: Vec<u32>,
    leaf_value: Vec<f64>,
    linear: Vec<LinearTree>,
}

impl Forest {
    /// Lays out validated trees (see `text::parse_model`).
    pub(crate) fn build(n_features: usize, trees: &[RawTree]) -> Result<Self, BuildError> {
        let n_nodes: usize = trees.iter().map(|t| t.num_leaves - 1).sum();
        let n_leaves: usize = trees.iter().map(|t| t.num_leaves).sum();
        let n_words: usize = trees.iter().map(|t| t.cat_threshold.len()).sum();
        if i32::try_from(n_nodes).is_err()
            || i32::try_from(n_leaves).is_err()
            || u32::try_from(n_words).is_err()
        {
            return Err(BuildError::TooLarge);
        }
        let mut f = Forest {
            id: NEXT_FOREST_ID.fetch_add(1, Ordering::Relaxed),
            n_features,
            categorical: vec![false; n_features],
            trees: Vec::with_capacity(trees.len()),
            nodes: Nodes::default(),
            cat_words: Vec::with_capacity(n_words),
            leaf_value: Vec::with_capacity(n_leaves),
            linear: Vec::new(),
        };
        for tree in trees {
            let first_leaf = f.leaf_value.len();
            f.leaf_value.extend_from_slice(&tree.leaf_value);
            let cat_base = f.cat_words.len();
            f.cat_words.extend_from_slice(&tree.cat_threshold);
            let linear = tree.linear.as_ref().map(|l| {
                f.linear.push(LinearTree {
                    first_leaf,
                    leaf_const: l.leaf_const.clone(),
                    terms: l.terms.clone(),
                });
                (f.linear.len() - 1) as u32
            });
            let root = if tree.num_leaves == 1 {
                !(first_leaf as i32)
            } else {
                f.push_subtree(tree, first_leaf, cat_base)
            };
            let size = (tree.num_leaves - 1) as u32;
            f.trees.push(TreeRoot {
                root,
                size,
                linear,
                first_leaf: first_leaf as u32,
                memoized: root >= 0
                    && linear.is_none()
                    && size <= MAX_MEMO_NODES
                    && n_features <= MAX_MEMO_FEATURES,
            });
        }
        let mut numerical = vec![false; n_features];
        for (&feature, &kind) in f.nodes.feature.iter().zip(&f.nodes.kind) {
            let slot = if kind & CATEGORICAL != 0 {
                &mut f.categorical[feature as usize]
            } else {
                &mut numerical[feature as usize]
            };
            *slot = true;
        }
        if let Some(feature) = (0..n_features).find(|&i| f.categorical[i] && numerical[i]) {
            return Err(BuildError::MixedFeature(feature as u32));
        }
        Ok(f)
    }

    /// Appends the internal nodes of `tree` in pre-order; returns the root's index.
    fn push_subtree(&mut self, tree: &RawTree, first_leaf: usize, cat_base: usize) -> i32 {
        let root = self.nodes.len() as i32;
        // (LightGBM node, our parent node and whether we are its right child).
        let mut stack: Vec<(usize, Option<(usize, bool)>)> = vec![(0, None)];
        let child = |c: i32| -> i32 {
            if c < 0 {
                !((first_leaf + !c as usize) as i32)
            } else {
                0 // placeholder, overwritten when the child is pushed
            }
        };
        while let Some((node, parent)) = stack.pop() {
            let at = self.nodes.len();
            if let Some((p, is_right)) = parent {
                if is_right {
                    self.nodes.right[p] = at as i32;
                } else {
                    self.nodes.left[p] = at as i32;
                }
            }
            let (l, r) = (tree.left_child[node], tree.right_child[node]);
            self.push_node(tree, node, cat_base, child(l), child(r));
            // Pre-order with the left subtree first: push right, then left.
            if r >= 0 {
                stack.push((r as usize, Some((at, true))));
            }
            if l >= 0 {
                stack.push((l as usize, Some((at, false))));
            }
        }
        root
    }

    fn push_node(&mut self, tree: &RawTree, node: usize, cat_base: usize, left: i32, right: i32) {
        let n = &mut self.nodes;
        let dt = tree.decision_type[node];
        let t = tree.threshold[node];
        n.feature.push(tree.split_feature[node] as u32);
        n.left.push(left);
        n.right.push(right);
        let default_left = dt & 2 != 0;
        if dt & 1 != 0 {
            let cat_idx = t as usize; // static_cast<int>; range checked by the parser
            let start = tree.cat_boundaries[cat_idx];
            let end = tree.cat_boundaries[cat_idx + 1];
            n.kind.push(CATEGORICAL);
            n.threshold.push(f64::NAN);
            n.cat_start.push((cat_base + start) as u32);
            n.cat_len.push((end - start) as u32);
            return;
        }
        n.cat_start.push(0);
        n.cat_len.push(0);
        match (dt >> 2) & 3 {
            // Zero: NaN and (near-)zero go to the default child, the rest compares raw values
            // that are all outside [-kZeroThreshold, kZeroThreshold].
            1 => {
                n.kind.push(ZERO | if default_left { NAN_LEFT } else { 0 });
                n.threshold.push(t);
            }
            // NaN: NaN goes to the default child.
            2 => {
                n.kind.push(if default_left { NAN_LEFT } else { 0 });
                n.threshold.push(raw_threshold(t));
            }
            // None: NaN is replaced by 0.0, which goes left when 0.0 <= threshold.
            _ => {
                n.kind.push(if 0.0 <= t { NAN_LEFT } else { 0 });
                n.threshold.push(raw_threshold(t));
            }
        }
    }

    pub(crate) fn n_features(&self) -> usize {
        self.n_features
    }

    pub(crate) fn num_trees(&self) -> usize {
        self.trees.len()
    }

    /// Sets `out[r]` to the raw score (sum of tree outputs) of row `r` of the row-major
    /// matrix `rows`, folding the features that are constant over the batch first when there
    /// are several rows. Requires `rows.len() == out.len() * n_features`.
    pub(crate) fn raw_scores(&self, scratch: &mut EvalScratch, rows: &[f64], out: &mut [f64]) {
        self.raw_scores_with(scratch, rows, None, out);
    }

    /// [`Forest::raw_scores`] with the features that are constant over the batch already
    /// marked (see [`constant_features`]), when the caller scores the same rows with several
    /// forests.
    pub(crate) fn raw_scores_with(
        &self,
        scratch: &mut EvalScratch,
        rows: &[f64],
        known_constant: Option<&[bool]>,
        out: &mut [f64],
    ) {
        debug_assert_eq!(rows.len(), out.len() * self.n_features);
        out.fill(0.0);
        let Some(row0) = rows.get(..self.n_features) else {
            return;
        };
        if out.len() == 1 {
            self.prepare_rows(row0, &mut scratch.x);
            let trees = self.trees.iter().map(|t| (t.root, t.linear));
            self.walk_rows(trees, &scratch.x, rows, out);
            return;
        }
        if scratch.forest != self.id {
            scratch.forest = self.id;
            scratch.block.reset(self.nodes.len());
            scratch.memo.reset(self.trees.len(), self.n_features);
        }
        match known_constant {
            Some(known) => {
                scratch.constant.clear();
                scratch.constant.extend_from_slice(known);
            }
            None => constant_features(rows, self.n_features, &mut scratch.constant),
        }
        self.prepare_rows(row0, &mut scratch.x0);
        let nf = self.n_features;
        for (block_rows, block_out) in rows
            .chunks(block::BLOCK * nf)
            .zip(out.chunks_mut(block::BLOCK))
        {
            self.evaluate_block(scratch, block_rows, block_out);
        }
    }

    /// Adds the outputs of `trees` (root, linear model) to `out`, walking every prepared row
    /// of `x` from the root to its leaf, tree by tree.
    fn walk_rows(
        &self,
        trees: impl Iterator<Item = (i32, Option<u32>)>,
        x: &[f64],
        rows: &[f64],
        out: &mut [f64],
    ) {
        let nf = self.n_features;
        for (root, linear) in trees {
            for ((rx, row), o) in x.chunks_exact(nf).zip(rows.chunks_exact(nf)).zip(&mut *out) {
                let leaf = self.nodes.leaf_of(root, rx, &self.cat_words);
                *o += self.leaf_output(linear, !leaf as usize, row);
            }
        }
    }

    /// The value nodes see for feature `f`: for categorical features the category code
    /// (`(int)v`, or [`NO_CATEGORY`] for NaN, negative and out-of-range values) in the low
    /// 32 bits; numerical values as they are.
    #[inline(always)]
    fn prepare(&self, f: usize, v: f64) -> f64 {
        if !self.categorical[f] {
            return v;
        }
        // `as` truncates toward zero like static_cast<int>; NaN maps to 0 and values beyond
        // i32 saturate, where C++ gives INT_MIN: all of these are no category.
        let category = v as i32;
        let code = if v.is_nan() || category < 0 || category == i32::MAX {
            NO_CATEGORY
        } else {
            category as u32
        };
        f64::from_bits(u64::from(code))
    }

    /// Copies rows with their categorical values replaced by category codes.
    fn prepare_rows(&self, rows: &[f64], x: &mut Vec<f64>) {
        let nf = self.n_features;
        x.clear();
        x.extend(
            rows.iter()
                .enumerate()
                .map(|(i, v)| self.prepare(i % nf, *v)),
        );
    }

    /// The output of global leaf `leaf` for the original `row` (`Tree::Predict`).
    #[inline(always)]
    fn leaf_output(&self, linear: Option<u32>, leaf: usize, row: &[f64]) -> f64 {
        match linear {
            None => self.leaf_value[leaf],
            Some(l) => self.linear_output(&self.linear[l as usize], leaf, row),
        }
    }

    #[inline(never)]
    fn linear_output(&self, lt: &LinearTree, leaf: usize, row: &[f64]) -> f64 {
        let local = leaf - lt.first_leaf;
        let mut output = lt.leaf_const[local];
        for &(feature, coeff) in &lt.terms[local] {
            let v = row[feature];
            if v.is_nan() {
                return self.leaf_value[leaf];
            }
            // The C API hands LightGBM 0.0 for every |v| <= kZeroThreshold.
            let v = if v.abs() <= K_ZERO_THRESHOLD { 0.0 } else { v };
            output += coeff * v;
        }
        output
    }
}

/// Marks the features (of rows of `nf` features) whose value is bit-identical in every row.
pub(crate) fn constant_features(rows: &[f64], nf: usize, constant: &mut Vec<bool>) {
    constant.clear();
    constant.resize(nf, true);
    let Some((first, rest)) = rows.split_at_checked(nf) else {
        return;
    };
    for row in rest.chunks_exact(nf) {
        for ((c, a), b) in constant.iter_mut().zip(first).zip(row) {
            *c &= a.to_bits() == b.to_bits();
        }
    }
}

/// A threshold `t'` with `v <= t'` ⇔ `r(v) <= t` for every non-NaN `v`, where `r` maps
/// `|v| <= kZeroThreshold` to 0.0 as the C API does.
fn raw_threshold(t: f64) -> f64 {
    if (0.0..K_ZERO_THRESHOLD).contains(&t) {
        // r(v) = 0 <= t: every v up to kZeroThreshold goes left.
        K_ZERO_THRESHOLD
    } else if (-K_ZERO_THRESHOLD..0.0).contains(&t) {
        // r(v) = 0 > t: only v below -kZeroThreshold goes left.
        (-K_ZERO_THRESHOLD).next_down()
    } else {
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// LightGBM's `NumericalDecision` on a C-API-rounded value, written out literally.
    fn reference_left(v: f64, t: f64, missing: u8, default_left: bool) -> bool {
        let mut fval = if v.abs() <= K_ZERO_THRESHOLD { 0.0 } else { v };
        if fval.is_nan() && missing != 2 {
            fval = 0.0;
        }
        let is_zero = (-K_ZERO_THRESHOLD..=K_ZERO_THRESHOLD).contains(&fval);
        if (missing == 1 && is_zero) || (missing == 2 && fval.is_nan()) {
            return default_left;
        }
        fval <= t
    }

    fn stump(threshold: f64, decision_type: u8) -> Forest {
        let tree = RawTree {
            num_leaves: 2,
            split_feature: vec![0],
            threshold: vec![threshold],
            decision_type: vec![decision_type],
            left_child: vec![-1],
            right_child: vec![-2],
            leaf_value: vec![1.0, 2.0],
            cat_boundaries: Vec::new(),
            cat_threshold: Vec::new(),
            linear: None,
        };
        Forest::build(1, &[tree]).expect("small")
    }

    fn score(forest: &Forest, rows: &[f64]) -> Vec<f64> {
        let mut out = vec![0.0; rows.len() / forest.n_features()];
        forest.raw_scores(&mut EvalScratch::default(), rows, &mut out);
        out
    }

    #[test]
    fn numerical_nodes_match_lightgbm_at_the_edges() {
        let kz = K_ZERO_THRESHOLD;
        let values = [
            f64::NAN,
            0.0,
            -0.0,
            kz,
            -kz,
            kz.next_up(),
            (-kz).next_down(),
            1e-40,
            -1e-40,
            0.5,
            -0.5,
            1.0,
            f64::INFINITY,
            f64::NEG_INFINITY,
        ];
        let thresholds = [
            0.0,
            -0.0,
            kz,
            -kz,
            kz / 2.0,
            -kz / 2.0,
            kz.next_down(),
            (-kz).next_up(),
            0.5,
            -0.5,
            1.0000000180025095e-35,
        ];
        for missing in 0..3u8 {
            for default_left in [false, true] {
                let dt = (missing << 2) | if default_left { 2 } else { 0 };
                for t in thresholds {
                    let forest = stump(t, dt);
                    for v in values {
                        let expected = if reference_left(v, t, missing, default_left) {
                            1.0
                        } else {
                            2.0
                        };
                        assert_eq!(
                            score(&forest, &[v]),
                            vec![expected],
                            "v={v:e} t={t:e} missing={missing} default_left={default_left}"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn categorical_nodes_check_the_bitset() {
        // Categories 1 and 33 go left.
        let tree = RawTree {
            num_leaves: 2,
            split_feature: vec![0],
            threshold: vec![0.0],
            decision_type: vec![1 | (2 << 2)],
            left_child: vec![-1],
            right_child: vec![-2],
            leaf_value: vec![1.0, 2.0],
            cat_boundaries: vec![0, 2],
            cat_threshold: vec![1 << 1, 1 << 1],
            linear: None,
        };
        let forest = Forest::build(1, &[tree]).expect("small");
        for (v, left) in [
            (1.0, true),
            (1.9, true),
            (33.0, true),
            (0.0, false),
            (-0.5, false),
            (-1.0, false),
            (2.0, false),
            (65.0, false),
            (1e12, false),
            (f64::NAN, false),
            (f64::INFINITY, false),
            (f64::NEG_INFINITY, false),
        ] {
            assert_eq!(
                score(&forest, &[v]),
                vec![if left { 1.0 } else { 2.0 }],
                "v={v}"
            );
        }
    }

    #[test]
    fn lanes_blocks_and_folding_agree_with_single_rows() {
        // Two features; the second is constant over the batch and gets folded.
        let tree = RawTree {
            num_leaves: 3,
            split_feature: vec![1, 0],
            threshold: vec![0.5, 0.25],
            decision_type: vec![2, 2],
            left_child: vec![1, -1],
            right_child: vec![-3, -2],
            leaf_value: vec![1.0, 2.0, 4.0],
            cat_boundaries: Vec::new(),
            cat_threshold: Vec::new(),
            linear: None,
        };
        let forest = Forest::build(2, &[tree.clone(), tree]).expect("small");
        for constant in [0.0, 1.0] {
            let rows: Vec<f64> = (0..(2 * block::BLOCK + 3))
                .flat_map(|i| [i as f64 / 500.0, constant])
                .collect();
            let batch = score(&forest, &rows);
            for (row, b) in rows.chunks(2).zip(&batch) {
                assert_eq!(score(&forest, row), vec![*b]);
            }
        }
    }

    #[test]
    fn a_reused_scratch_follows_changed_rows_and_forests() {
        // Feature 0 numerical, feature 1 categorical (codes 0..8; 1, 3 and 5 go left),
        // feature 2 constant within a batch.
        let tree = |t0: f64, leaf: f64| RawTree {
            num_leaves: 4,
            split_feature: vec![2, 1, 0],
            threshold: vec![0.5, 0.0, t0],
            decision_type: vec![2, 1 | (2 << 2), 2],
            left_child: vec![1, -1, -3],
            right_child: vec![2, -2, -4],
            leaf_value: vec![leaf, 2.0, 4.0, 8.0],
            cat_boundaries: vec![0, 1],
            cat_threshold: vec![0b10_1010],
            linear: None,
        };
        let a = Forest::build(3, &[tree(0.3, 1.0), tree(0.6, 0.5)]).expect("small");
        let b = Forest::build(3, &[tree(0.5, 16.0)]).expect("small");
        let batch = |n: usize, constant: f64, shift: usize| -> Vec<f64> {
            (0..n)
                .flat_map(|i| [((i + shift) % 10) as f64 / 10.0, (i % 9) as f64, constant])
                .collect()
        };
        // Feature 0 constant too.
        let flat = |n: usize, constant: f64, v0: f64| -> Vec<f64> {
            (0..n)
                .flat_map(|i| [v0, (i % 9) as f64, constant])
                .collect()
        };
        let base = batch(100, 0.0, 0);
        let mut changed = base.clone();
        changed[3 * 3 + 1] = 5.0;
        changed[7 * 3] = 0.95;
        let sequence = [
            (&a, base.clone()),
            (&a, base.clone()),
            (&a, base.clone()),
            (&a, changed.clone()),
            (&a, changed),
            (&b, base.clone()),
            (&b, base.clone()),
            (&a, base.clone()),
            (&a, batch(99, 0.0, 0)),
            (&a, batch(100, 1.0, 0)),
            (&a, batch(100, 1.0, 3)),
            (&a, batch(100, 1.0, 3)),
            (&a, base.clone()),
            (&a, base.clone()),
            // Another constant value on the same side of the thresholds: leaves remembered.
            (&a, batch(100, 0.2, 0)),
            // The same constant value with a changed column: not remembered.
            (&a, batch(100, 0.2, 1)),
            // Back to contents seen before: their generation (and leaves) come back.
            (&a, base.clone()),
            (&a, batch(100, 0.2, 1)),
            // Small batches, walked row by row.
            (&a, batch(10, 0.0, 0)),
            (&a, batch(10, 0.3, 0)),
            (&a, batch(10, 0.0, 2)),
            (&a, batch(10, 1.0, 2)),
            (&a, batch(10, 0.0, 0)),
            // A column that becomes constant over the batch, takes another value, returns.
            (&a, flat(100, 0.0, 0.3)),
            (&a, flat(100, 0.0, 0.7)),
            (&a, flat(100, 0.0, 0.3)),
            (&a, base.clone()),
            (&a, flat(100, 0.0, 0.3)),
            // Several blocks: each compares with the block before.
            (&a, batch(2 * block::BLOCK + 44, 0.0, 0)),
            (&a, batch(2 * block::BLOCK + 44, 0.0, 0)),
            (&a, batch(2 * block::BLOCK + 44, 0.0, 1)),
            (&a, base),
        ];
        let mut shared = EvalScratch::default();
        for (i, (forest, rows)) in sequence.into_iter().enumerate() {
            let mut got = vec![0.0; rows.len() / 3];
            forest.raw_scores(&mut shared, &rows, &mut got);
            let want: Vec<f64> = rows.chunks(3).map(|r| score(forest, r)[0]).collect();
            assert_eq!(got, want, "batch {i}");
        }
    }

    #[test]
    fn a_feature_split_both_ways_is_rejected() {
        let tree = RawTree {
            num_leaves: 3,
            split_feature: vec![0, 0],
            threshold: vec![0.0, 0.5],
            decision_type: vec![1, 2],
            left_child: vec![-1, -2],
            right_child: vec![1, -3],
            leaf_value: vec![1.0, 2.0, 4.0],
            cat_boundaries: vec![0, 1],
            cat_threshold: vec![1],
            linear: None,
        };
        assert!(matches!(
            Forest::build(1, &[tree]),
            Err(BuildError::MixedFeature(0))
        ));
    }
}
