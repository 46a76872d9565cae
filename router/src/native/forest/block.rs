//! Bit-sliced evaluation of a block of up to [`BLOCK`] rows, one tree at a time.
//!
//! Instead of walking each row from the root to a leaf, a tree is walked once for the whole
//! block with the *set* of rows that reach each node, a [`RowSet`] of bits. At a node the set
//! splits into the rows that go left and the rest; a leaf adds its value to every row of its
//! set. Each row still meets exactly the nodes on its own path and gets exactly one leaf per
//! tree, but the work per node is shared by the rows that reach it:
//!
//! * a numerical node reached by many rows compares the whole column of the block with its
//!   threshold in one tight loop over a column-major copy of the block;
//! * a categorical node reached by many rows ORs, for each category in its bitset, the
//!   precomputed set of rows holding that category;
//! * a node reached by few rows tests just those rows, with the same per-row rule as a
//!   single-row walk (`Nodes::goes_left`).
//!
//! Which rows of a block go left at a node depends only on the node and its feature's column.
//! When a column is bit-identical to the one of the previous block evaluated with the same
//! scratch — the router scores the same candidates for request after request, and most
//! candidate features (provider, region, prices) do not depend on the request — the set of
//! the block's rows that go left at each node on that feature is computed once and kept, and
//! a node costs one AND with the rows that reach it.

use super::{CATEGORICAL, Forest, NAN_LEFT, NO_CATEGORY, Nodes, ZERO};

/// Rows per block.
pub(super) const BLOCK: usize = 256;
const WORDS: usize = BLOCK / 64;
/// Rows of a block, one bit each.
type RowSet = [u64; WORDS];
/// Below this many rows at a node, its rows are tested one by one.
const SPARSE_ROWS: u32 = 24;
/// Largest category code with a row-set table; larger codes are tested row by row.
const MAX_TABLE_CODE: u32 = 4095;

/// Per-block working buffers.
#[derive(Debug, Clone, Default)]
pub(super) struct BlockScratch {
    /// The block's prepared values, column-major: feature `f` of row `r` at `f * BLOCK + r`
    /// (only the columns that are not constant over the batch).
    cols: Vec<f64>,
    /// Row sets by category code, for the categorical columns of the block.
    tables: Vec<RowSet>,
    /// Per feature: `(offset into tables, number of codes)`; 0 codes means no table.
    table_of: Vec<(u32, u32)>,
    /// The rows that reach each node of the current tree.
    sets: Vec<RowSet>,
    /// Per row of the block: the output of the leaf it reached in the current tree.
    tree_out: Vec<f64>,
    /// Whether `tables` and `table_of` describe the categorical columns in `cols`.
    tables_valid: bool,
    /// Number of rows of the block in `cols` (0: none).
    loaded_rows: usize,
    /// Per feature: whether `cols` holds its column of the last block.
    loaded: Vec<bool>,
    /// Per feature: whether its column is the same as in the block before (then the cached
    /// row sets of its nodes apply).
    stable: Vec<bool>,
    /// Per feature: generation of its column's contents; a new one whenever it changes.
    generation: Vec<u64>,
    next_generation: u64,
    /// Per node of the forest (by `Nodes::orig`): the generation of its feature's column the
    /// set was computed for (0: never) and the rows of the whole block that go left.
    left_cache: Vec<(u64, RowSet)>,
}

impl BlockScratch {
    /// Forgets every cached column and row set, for a forest of `n_nodes` internal nodes.
    /// Cheap: no column counts as loaded, so each gets a generation newer than any cached
    /// set's (generations only grow), which leaves the old entries unused without clearing
    /// them.
    pub(super) fn reset(&mut self, n_nodes: usize) {
        self.tables_valid = false;
        self.loaded_rows = 0;
        self.loaded.clear();
        if self.left_cache.len() < n_nodes {
            self.left_cache.resize(n_nodes, (0, [0; WORDS]));
        }
    }
}

/// The loaded block, as nodes read it.
struct BlockView<'a> {
    cols: &'a [f64],
    tables: &'a [RowSet],
    table_of: &'a [(u32, u32)],
}

fn and(a: &RowSet, b: &RowSet) -> RowSet {
    std::array::from_fn(|w| a[w] & b[w])
}

fn count(s: &RowSet) -> u32 {
    s.iter().map(|w| w.count_ones()).sum()
}

fn is_empty(s: &RowSet) -> bool {
    s.iter().all(|w| *w == 0)
}

/// Calls `f` with every run of consecutive rows of `s` (as a range), in increasing order.
/// Rows that go the same way tend to be neighbours (candidates of one provider are), so
/// runs are often long.
#[inline(always)]
fn for_each_run(s: &RowSet, mut f: impl FnMut(std::ops::Range<usize>)) {
    for (w, word) in s.iter().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            let start = bits.trailing_zeros();
            let len = (bits >> start).trailing_ones();
            let end = start + len;
            f(w * 64 + start as usize..w * 64 + end as usize);
            bits = if end == 64 {
                0
            } else {
                bits & (u64::MAX << end)
            };
        }
    }
}

/// Calls `f` with every row index of `s`, in increasing order.
#[inline(always)]
fn for_each_row(s: &RowSet, mut f: impl FnMut(usize)) {
    for (w, word) in s.iter().enumerate() {
        let mut bits = *word;
        while bits != 0 {
            f(w * 64 + bits.trailing_zeros() as usize);
            bits &= bits - 1;
        }
    }
}

/// The rows `r < len` (of a column) whose value goes left at a numerical node without
/// missing type `Zero`: `v <= t`, or NaN when NaN goes left.
#[inline(always)]
#[expect(
    clippy::neg_cmp_op_on_partial_ord,
    reason = "`!(v > t)` is meant to be true for NaN"
)]
fn compare_column(col: &[f64], t: f64, nan_left: bool) -> RowSet {
    let mut out = [0u64; WORDS];
    for (word, chunk) in out.iter_mut().zip(col.chunks(64)) {
        let mut bits = 0u64;
        if nan_left {
            for (j, v) in chunk.iter().enumerate() {
                bits |= u64::from(!(*v > t)) << j;
            }
        } else {
            for (j, v) in chunk.iter().enumerate() {
                bits |= u64::from(*v <= t) << j;
            }
        }
        *word = bits;
    }
    out
}

impl Forest {
    /// Adds the outputs of `trees` (root, number of internal nodes, linear model) over
    /// `nodes` to `out`, block by block.
    /// Features marked in `constant` have been folded away and are never looked at.
    pub(super) fn evaluate_blocks(
        &self,
        scratch: &mut BlockScratch,
        nodes: &Nodes,
        trees: impl Iterator<Item = (i32, u32, Option<u32>)> + Clone,
        constant: &[bool],
        rows: &[f64],
        out: &mut [f64],
    ) {
        let nf = self.n_features;
        for (block_rows, block_out) in rows.chunks(BLOCK * nf).zip(out.chunks_mut(BLOCK)) {
            self.load_block(scratch, constant, block_rows);
            let mut all = [0u64; WORDS];
            for r in 0..block_out.len() {
                all[r / 64] |= 1 << (r % 64);
            }
            let BlockScratch {
                cols,
                tables,
                table_of,
                sets,
                tree_out,
                stable,
                generation,
                left_cache,
                ..
            } = &mut *scratch;
            let ctx = BlockView {
                cols,
                tables,
                table_of,
            };
            tree_out.resize(BLOCK, 0.0);
            let tree_out = &mut tree_out[..block_out.len()];
            for (root, size, linear) in trees.clone() {
                if root < 0 {
                    // A single leaf: every row gets it.
                    self.set_leaf(!root as usize, linear, &all, block_rows, tree_out);
                } else {
                    // Nodes are in pre-order, so a node's set is complete before it is visited.
                    let base = root as usize;
                    sets.clear();
                    sets.resize(size as usize, [0u64; WORDS]);
                    sets[0] = all;
                    for k in 0..size as usize {
                        let rows_here = sets[k];
                        if is_empty(&rows_here) {
                            continue;
                        }
                        let i = base + k;
                        let f = nodes.feature[i] as usize;
                        let left = if stable[f] {
                            let (generation_of, cached) = &mut left_cache[nodes.orig[i] as usize];
                            if *generation_of != generation[f] {
                                *cached = self.rows_left(nodes, i, &all, &ctx);
                                *generation_of = generation[f];
                            }
                            and(cached, &rows_here)
                        } else {
                            self.rows_left(nodes, i, &rows_here, &ctx)
                        };
                        let mut right = rows_here;
                        for (r, l) in right.iter_mut().zip(&left) {
                            *r &= !l;
                        }
                        for (child, set) in [(nodes.left[i], left), (nodes.right[i], right)] {
                            if child < 0 {
                                self.set_leaf(!child as usize, linear, &set, block_rows, tree_out);
                            } else {
                                sets[child as usize - base] = set;
                            }
                        }
                    }
                }
                // Every row reached exactly one leaf: one vectorizable pass adds the tree.
                for (o, t) in block_out.iter_mut().zip(&*tree_out) {
                    *o += t;
                }
            }
        }
    }

    /// Fills the column-major copy and the category tables of one block, noting which
    /// columns are the same as in the block before.
    fn load_block(&self, scratch: &mut BlockScratch, constant: &[bool], rows: &[f64]) {
        let nf = self.n_features;
        let n_rows = rows.len() / nf;
        scratch.cols.resize(nf * BLOCK, 0.0);
        scratch.loaded.resize(nf, false);
        scratch.stable.resize(nf, false);
        scratch.generation.resize(nf, 0);
        let same_rows = scratch.loaded_rows == n_rows;
        let mut tables_still_valid = true;
        for f in 0..nf {
            if constant[f] {
                scratch.loaded[f] = false;
                scratch.stable[f] = false;
                continue;
            }
            let col = &mut scratch.cols[f * BLOCK..(f + 1) * BLOCK];
            let mut same = same_rows && scratch.loaded[f];
            for (c, row) in col.iter_mut().zip(rows.chunks_exact(nf)) {
                let v = self.prepare(f, row[f]);
                same &= c.to_bits() == v.to_bits();
                *c = v;
            }
            if !same {
                scratch.next_generation += 1;
                scratch.generation[f] = scratch.next_generation;
            }
            scratch.loaded[f] = true;
            scratch.stable[f] = same;
            if self.categorical[f] {
                tables_still_valid &= same;
            }
        }
        scratch.loaded_rows = n_rows;
        if tables_still_valid && scratch.tables_valid {
            // Every column they were built from is unchanged.
            return;
        }
        scratch.tables.clear();
        scratch.table_of.clear();
        scratch.table_of.resize(nf, (0, 0));
        scratch.tables_valid = true;
        for f in (0..nf).filter(|f| !constant[*f] && self.categorical[*f]) {
            let col = &scratch.cols[f * BLOCK..(f + 1) * BLOCK];
            let codes = || col[..n_rows].iter().map(|v| v.to_bits() as u32);
            let Some(max) = codes().filter(|c| *c != NO_CATEGORY).max() else {
                continue;
            };
            if max > MAX_TABLE_CODE {
                continue;
            }
            let offset = scratch.tables.len();
            scratch
                .tables
                .resize(offset + max as usize + 1, [0u64; WORDS]);
            for (r, code) in codes().enumerate() {
                if code != NO_CATEGORY {
                    scratch.tables[offset + code as usize][r / 64] |= 1 << (r % 64);
                }
            }
            scratch.table_of[f] = (offset as u32, max + 1);
        }
    }

    /// The rows of `rows_here` that go to the left child of node `i`.
    #[inline(always)]
    fn rows_left(
        &self,
        nodes: &Nodes,
        i: usize,
        rows_here: &RowSet,
        ctx: &BlockView<'_>,
    ) -> RowSet {
        let BlockView {
            cols,
            tables,
            table_of,
        } = ctx;
        let f = nodes.feature[i] as usize;
        let col = &cols[f * BLOCK..(f + 1) * BLOCK];
        let kind = nodes.kind[i];
        let dense = count(rows_here) >= SPARSE_ROWS;
        let mut left = if dense && kind & (CATEGORICAL | ZERO) == 0 {
            compare_column(col, nodes.threshold[i], kind & NAN_LEFT != 0)
        } else if dense && kind & CATEGORICAL != 0 && table_of[f].1 > 0 {
            let (offset, n_codes) = table_of[f];
            self.rows_in_bitset(nodes, i, &tables[offset as usize..][..n_codes as usize])
        } else {
            let mut left = [0u64; WORDS];
            for_each_row(rows_here, |r| {
                if nodes.goes_left(i, col[r], &self.cat_words) {
                    left[r / 64] |= 1 << (r % 64);
                }
            });
            return left;
        };
        for (l, h) in left.iter_mut().zip(rows_here) {
            *l &= h;
        }
        left
    }

    /// The union of the row sets of the categories in node `i`'s bitset.
    fn rows_in_bitset(&self, nodes: &Nodes, i: usize, table: &[RowSet]) -> RowSet {
        let start = nodes.cat_start[i] as usize;
        let words = (nodes.cat_len[i] as usize).min(table.len().div_ceil(32));
        let mut acc = [0u64; WORDS];
        for (w, word) in self.cat_words[start..start + words].iter().enumerate() {
            let mut bits = *word;
            while bits != 0 {
                let code = w * 32 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                if let Some(set) = table.get(code) {
                    for (a, s) in acc.iter_mut().zip(set) {
                        *a |= s;
                    }
                }
            }
        }
        acc
    }

    /// Writes leaf `leaf`'s output into `tree_out` at the rows of `set`.
    #[inline(always)]
    fn set_leaf(
        &self,
        leaf: usize,
        linear: Option<u32>,
        set: &RowSet,
        rows: &[f64],
        tree_out: &mut [f64],
    ) {
        match linear {
            None => {
                let value = self.leaf_value[leaf];
                // Runs are worth their bookkeeping when they are long.
                let starts: u32 = set.iter().map(|w| (w & !(w << 1)).count_ones()).sum();
                if starts * 4 <= count(set) {
                    for_each_run(set, |run| tree_out[run].fill(value));
                } else {
                    for_each_row(set, |r| tree_out[r] = value);
                }
            }
            Some(_) => {
                let nf = self.n_features;
                for_each_row(set, |r| {
                    tree_out[r] = self.leaf_output(linear, leaf, &rows[r * nf..(r + 1) * nf]);
                });
            }
        }
    }
}
