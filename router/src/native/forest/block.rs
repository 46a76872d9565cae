//! Bit-sliced evaluation of a block of up to [`BLOCK`] rows, one tree at a time.
//!
//! Instead of walking each row from the root to a leaf, a tree is walked once for the whole
//! block with the *set* of rows that reach each node, a [`RowSet`] of bits. At a node the set
//! splits into the rows that go left and the rest (all of it goes one way at a node on a
//! feature that is constant over the batch); a leaf is noted for every row of its set. Each
//! row still meets exactly the nodes on its own path and gets exactly one leaf per tree, but
//! the work per node is shared by the rows that reach it:
//!
//! * a numerical node reached by many rows compares the whole column of the block with its
//!   threshold in one tight loop over a column-major copy of the block;
//! * a categorical node reached by many rows ORs, for each category in its bitset, the
//!   precomputed set of rows holding that category;
//! * a node reached by few rows tests just those rows, with the same per-row rule as a
//!   single-row walk (`Nodes::goes_left`).
//!
//! Which rows of a block go left at a node depends only on the node and its feature's column.
//! Each column's contents have a generation (the same contents, the same generation, also
//! when a column returns to contents it held a few batches before): the router scores the
//! same candidates for request after request, and most candidate features (provider,
//! region, prices) do not depend on the request, so the set of the block's rows that go left
//! at each node is kept with its column's generation (the last two generations: the
//! candidate set, and so every column, changes back and forth with the request's resources),
//! and while that holds a node costs one AND with the rows that reach it. The leaves
//! themselves are remembered per tree (see [`super::memo`]), one byte per row, written from
//! bit planes (bit `k` of the leaf index for every row) eight rows at a time; with small
//! batches (up to [`SMALL_BATCH`] rows) a missing tree is walked row by row instead of with
//! row sets.
//!
//! The trees' outputs are added to the rows' sums in tree order, several trees per pass.

use super::memo::{Memo, Reached};
use super::{
    CATEGORICAL, EvalScratch, Forest, NAN_LEFT, NO_CATEGORY, Nodes, SMALL_BATCH, TreeRoot, ZERO,
};

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
    /// The rows that reach each node of the current tree (valid for the pending ones).
    sets: Vec<RowSet>,
    /// The nodes of the current tree that some rows reach and that are still to visit.
    pending: Vec<u64>,
    /// Whether `tables` and `table_of` describe the categorical columns in `cols`.
    tables_valid: bool,
    /// Number of rows of the block in `cols` (0: none).
    loaded_rows: usize,
    /// Per feature: whether `cols` holds its column of the last block.
    loaded: Vec<bool>,
    /// Per feature: whether its column has contents seen before (then the row sets cached
    /// for its nodes may apply).
    stable: Vec<bool>,
    /// Per feature: generation of its column's contents, or of its value when it is constant
    /// over the batch. Equal generations of a feature mean bit-identical contents (and number
    /// of rows), or the same value of a constant feature; contents or values not seen before
    /// (or forgotten) get a new one.
    generation: Vec<u64>,
    next_generation: u64,
    /// Per feature: earlier contents of its column and their generations.
    history: Vec<History>,
    /// Per feature: values it held while constant over a batch, and their generations.
    values: Vec<Values>,
    /// The column being loaded.
    fresh: Vec<f64>,
    /// Per node of the forest, for the two generations of its feature's column it was last
    /// needed for (the candidate set, and so every column, changes back and forth with the
    /// request's resources), most recent first: the generation (0: none) and the rows of the
    /// whole block that go left.
    left_cache: Vec<[(u64, RowSet); 2]>,
}

/// Contents a column has held, kept so that a column that returns to one of them gets its
/// generation back, and the row sets and leaves cached for that generation apply again (the
/// burn rate of a candidate depends on the request's resources, which recur).
#[derive(Debug, Clone, Default)]
struct History {
    /// (generation, 0 for an empty slot; when it was kept; the contents).
    versions: Vec<(u64, u64, Vec<f64>)>,
    clock: u64,
}

/// Contents kept per column, and values per constant feature.
const VERSIONS: usize = 16;

/// Values a feature has held while constant over a batch, kept with their generations so
/// that a value that returns gets its generation back.
#[derive(Debug, Clone, Default)]
struct Values {
    /// (value bits, generation).
    kept: Vec<(u64, u64)>,
    /// The slot to replace next when all are taken.
    next: usize,
}

impl Values {
    /// The generation of value `bits`, a new one (from `next_generation`) if not kept.
    fn generation(&mut self, bits: u64, next_generation: &mut u64) -> u64 {
        if let Some((_, generation)) = self.kept.iter().find(|(b, _)| *b == bits) {
            return *generation;
        }
        *next_generation += 1;
        let kept = (bits, *next_generation);
        if self.kept.len() < VERSIONS {
            self.kept.push(kept);
        } else {
            self.kept[self.next] = kept;
            self.next = (self.next + 1) % VERSIONS;
        }
        *next_generation
    }
}

fn same_bits(a: &[f64], b: &[f64]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| x.to_bits() == y.to_bits())
}

impl History {
    fn clear(&mut self) {
        for v in &mut self.versions {
            v.0 = 0;
        }
    }

    /// Keeps `values` as the contents of `generation`, in place of the least recently kept
    /// version when all slots are taken.
    fn keep(&mut self, generation: u64, values: &[f64]) {
        self.clock += 1;
        let slot = match self.versions.iter().position(|v| v.0 == 0) {
            Some(empty) => empty,
            None if self.versions.len() < VERSIONS => {
                self.versions.push((0, 0, Vec::new()));
                self.versions.len() - 1
            }
            None => (0..self.versions.len())
                .min_by_key(|i| self.versions[*i].1)
                .unwrap_or(0),
        };
        let (g, kept_at, contents) = &mut self.versions[slot];
        *g = generation;
        *kept_at = self.clock;
        contents.clear();
        contents.extend_from_slice(values);
    }

    /// The generation of the kept version with exactly these contents, if any; it is no
    /// longer kept (it becomes the column's current contents).
    fn take(&mut self, values: &[f64]) -> Option<u64> {
        let v = self
            .versions
            .iter_mut()
            .find(|v| v.0 != 0 && same_bits(&v.2, values))?;
        Some(std::mem::take(&mut v.0))
    }
}

impl BlockScratch {
    /// Forgets every cached column and row set, for a forest of `n_nodes` internal nodes.
    /// Cheap: no column counts as loaded and no earlier contents are kept, so each gets a
    /// generation newer than any cached set's (generations only grow), which leaves the old
    /// entries unused without clearing them.
    pub(super) fn reset(&mut self, n_nodes: usize) {
        self.tables_valid = false;
        self.loaded_rows = 0;
        self.loaded.clear();
        self.history.iter_mut().for_each(History::clear);
        self.values.iter_mut().for_each(|v| v.kept.clear());
        if self.left_cache.len() < n_nodes {
            self.left_cache.resize(n_nodes, [(0, [0; WORDS]); 2]);
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

impl BlockScratch {
    /// Walks `tree` over the loaded block of `n` rows with row sets; calls `leaf` with every
    /// leaf reached (global index) and its rows. Nodes on `constant` features (values in the
    /// prepared row `x0`) send all their rows one way. Returns the constant nodes passed
    /// and the features of those and of the other nodes some rows reached (nodes and features
    /// beyond 127 are left out: only memoized trees use them).
    fn walk(
        &mut self,
        forest: &Forest,
        tree: &TreeRoot,
        constant: &[bool],
        x0: &[f64],
        n: usize,
        mut leaf: impl FnMut(usize, &RowSet),
    ) -> Reached {
        let all: RowSet = std::array::from_fn(|w| match n.saturating_sub(w * 64) {
            0 => 0,
            r @ 1..64 => (1 << r) - 1,
            _ => u64::MAX,
        });
        let mut reached = Reached::default();
        if tree.root < 0 {
            leaf(!tree.root as usize, &all);
            return reached;
        }
        let BlockScratch {
            cols,
            tables,
            table_of,
            sets,
            pending,
            stable,
            generation,
            left_cache,
            ..
        } = self;
        let ctx = BlockView {
            cols,
            tables,
            table_of,
        };
        let nodes = &forest.nodes;
        let base = tree.root as usize;
        let size = tree.size as usize;
        if sets.len() < size {
            sets.resize(size, [0u64; WORDS]);
        }
        pending.clear();
        pending.resize(size.div_ceil(64), 0);
        sets[0] = all;
        pending[0] = 1;
        // Sends a non-empty set of rows to a leaf, or to a node (which becomes pending).
        let mut send = |child: i32, set: RowSet, sets: &mut [RowSet], pending: &mut [u64]| {
            if is_empty(&set) {
                return;
            }
            if child < 0 {
                leaf(!child as usize, &set);
            } else {
                let k = child as usize - base;
                sets[k] = set;
                pending[k / 64] |= 1 << (k % 64);
            }
        };
        // Only the nodes some rows reach are visited, lowest first: nodes are in pre-order, so
        // a node's set is complete before it is visited.
        let mut word = 0;
        while word < pending.len() {
            let bits = pending[word];
            if bits == 0 {
                word += 1;
                continue;
            }
            pending[word] = bits & (bits - 1);
            let k = word * 64 + bits.trailing_zeros() as usize;
            let rows_here = sets[k];
            let i = base + k;
            let f = nodes.feature[i] as usize;
            let bit = 1u128.checked_shl(f as u32).unwrap_or(0);
            if constant[f] {
                reached.passed |= bit;
                let node_bit = 1u128.checked_shl(k as u32).unwrap_or(0);
                reached.signature.passed |= node_bit;
                let child = if nodes.goes_left(i, x0[f], &forest.cat_words) {
                    reached.signature.left |= node_bit;
                    nodes.left[i]
                } else {
                    nodes.right[i]
                };
                send(child, rows_here, sets, pending);
                continue;
            }
            reached.reads |= bit;
            let left = if stable[f] {
                let ways = &mut left_cache[i];
                let g = generation[f];
                if ways[0].0 != g {
                    ways.swap(0, 1);
                    if ways[0].0 != g {
                        ways[0] = (g, forest.rows_left(nodes, i, &all, &ctx));
                    }
                }
                and(&ways[0].1, &rows_here)
            } else {
                forest.rows_left(nodes, i, &rows_here, &ctx)
            };
            let mut right = rows_here;
            for (r, l) in right.iter_mut().zip(&left) {
                *r &= !l;
            }
            send(nodes.left[i], left, sets, pending);
            send(nodes.right[i], right, sets, pending);
        }
        reached
    }
}

/// Sets `dst[r] = value` for every row `r` of `set`.
#[inline(always)]
fn fill_rows<T: Copy>(dst: &mut [T], set: &RowSet, value: T) {
    // Runs are worth their bookkeeping when they are long.
    let starts: u32 = set.iter().map(|w| (w & !(w << 1)).count_ones()).sum();
    if starts * 4 <= count(set) {
        for_each_run(set, |run| dst[run].fill(value));
    } else {
        for_each_row(set, |r| dst[r] = value);
    }
}

/// Bits of a memoized tree's local leaf index (it has at most 128 leaves).
const LEAF_BITS: usize = 7;

/// `SPREAD[b]` has byte `j` set to 1 where bit `j` of `b` is set.
static SPREAD: [u64; 256] = {
    let mut table = [0u64; 256];
    let mut b = 0;
    while b < 256 {
        let mut j = 0;
        while j < 8 {
            if b >> j & 1 == 1 {
                table[b] |= 1 << (8 * j);
            }
            j += 1;
        }
        b += 1;
    }
    table
};

/// Sets every row's byte in `leaves` from its bits in `planes` (bit `k` of row `r`'s byte
/// is row `r`'s bit in `planes[k]`; the higher bits are 0): eight rows at a time, whatever
/// the leaves' row sets look like.
fn write_leaves(leaves: &mut [u8], planes: &[RowSet]) {
    for (c, chunk) in leaves.chunks_mut(8).enumerate() {
        let shift = (c % 8) * 8;
        let mut bytes = 0u64;
        for (k, plane) in planes.iter().enumerate() {
            bytes |= SPREAD[((plane[c / 8] >> shift) & 0xff) as usize] << k;
        }
        let bytes = bytes.to_le_bytes();
        match <&mut [u8; 8]>::try_from(&mut *chunk) {
            Ok(whole) => *whole = bytes,
            Err(_) => chunk.copy_from_slice(&bytes[..chunk.len()]),
        }
    }
}

/// A tree's output over a block, added to the rows' sums with its neighbours': row `r`
/// adds `leaf_value[first + leaves[r]]`, where `leaves` is a memo entry's.
#[derive(Debug, Clone, Copy)]
pub(super) struct Term {
    /// The memo entry with the leaves.
    entry: usize,
    first: u32,
    len: u32,
}

/// Adds `K` trees' outputs to each row's sum, in order: `values[k][leaves[k][r]]`.
#[inline(always)]
fn add_group<const K: usize>(out: &mut [f64], leaves: [&[u8]; K], values: [&[f64]; K]) {
    let leaves = leaves.map(|l| &l[..out.len()]);
    for (r, o) in out.iter_mut().enumerate() {
        let mut sum = *o;
        for k in 0..K {
            sum += values[k][usize::from(leaves[k][r])];
        }
        *o = sum;
    }
}

impl Forest {
    /// Adds the output of every tree over one block of at most [`BLOCK`] rows to `out`.
    pub(super) fn evaluate_block(&self, scratch: &mut EvalScratch, rows: &[f64], out: &mut [f64]) {
        let nf = self.n_features;
        let n = out.len();
        let small = n <= SMALL_BATCH;
        let EvalScratch {
            x,
            x0,
            constant,
            tree_out,
            block,
            memo,
            terms,
            ..
        } = scratch;
        self.load_block(block, constant, x0, rows, !small);
        memo.begin(&block.generation);
        // Small batches' rows are prepared for their row-by-row walks, once a tree needs one.
        let mut x_ready = false;
        tree_out.resize(BLOCK, 0.0);
        let tree_out = &mut tree_out[..n];
        // Memoized trees are added in groups (see `add_terms`), the others one by one, all in
        // tree order.
        terms.clear();
        for (t, tree) in self.trees.iter().enumerate() {
            if !tree.memoized {
                self.add_terms(out, terms, memo);
                terms.clear();
                if small {
                    if !std::mem::replace(&mut x_ready, true) {
                        self.prepare_rows(rows, x);
                    }
                    let trees = std::iter::once((tree.root, tree.linear));
                    self.walk_rows(trees, x, rows, out);
                    continue;
                }
                block.walk(self, tree, constant, x0, n, |leaf, set| {
                    self.set_leaf(leaf, tree.linear, set, rows, tree_out);
                });
                for (o, v) in out.iter_mut().zip(&*tree_out) {
                    *o += v;
                }
                continue;
            }
            let same_way =
                |signature: &_, changed| self.same_way(tree, signature, changed, constant, x0);
            let entry = match memo.recall(t, n, same_way) {
                Some(entry) => entry,
                None => memo.fill(t, n, |leaves| {
                    let local = |leaf: usize| (leaf - tree.first_leaf as usize) as u8;
                    if small {
                        if !std::mem::replace(&mut x_ready, true) {
                            self.prepare_rows(rows, x);
                        }
                        for (l, rx) in leaves.iter_mut().zip(x.chunks_exact(nf)) {
                            *l =
                                local(!self.nodes.leaf_of(tree.root, rx, &self.cat_words) as usize);
                        }
                        return self.folding(tree, constant, x0);
                    }
                    // Bit b of the leaf index, for every row.
                    let mut planes = [[0u64; WORDS]; LEAF_BITS];
                    let reached = block.walk(self, tree, constant, x0, n, |leaf, set| {
                        let mut index = local(leaf);
                        while index != 0 {
                            let plane = &mut planes[index.trailing_zeros() as usize];
                            for (p, s) in plane.iter_mut().zip(set) {
                                *p |= s;
                            }
                            index &= index - 1;
                        }
                    });
                    let bits = (u32::BITS - tree.size.leading_zeros()) as usize;
                    write_leaves(leaves, &planes[..bits]);
                    reached
                }),
            };
            terms.push(Term {
                entry,
                first: tree.first_leaf,
                len: tree.size + 1,
            });
        }
        self.add_terms(out, terms, memo);
    }

    /// Adds the outputs of `terms` to the rows' sums in order, four trees per pass over the
    /// rows: each row's sum stays in a register across them.
    fn add_terms(&self, out: &mut [f64], terms: &[Term], memo: &Memo) {
        let n = out.len();
        let leaves = |t: &Term| memo.leaves(t.entry, n);
        let values = |t: &Term| &self.leaf_value[t.first as usize..][..t.len as usize];
        for group in terms.chunks(4) {
            match group {
                [a, b, c, d] => add_group(
                    out,
                    [leaves(a), leaves(b), leaves(c), leaves(d)],
                    [values(a), values(b), values(c), values(d)],
                ),
                [a, b, c] => add_group(
                    out,
                    [leaves(a), leaves(b), leaves(c)],
                    [values(a), values(b), values(c)],
                ),
                [a, b] => add_group(out, [leaves(a), leaves(b)], [values(a), values(b)]),
                [a] => add_group(out, [leaves(a)], [values(a)]),
                _ => {}
            }
        }
    }

    /// Fills the column-major copy and the category tables of one block, noting which
    /// columns are the same as in the block before; a constant feature (its value in the
    /// prepared row `x0`) gets its value's generation.
    fn load_block(
        &self,
        scratch: &mut BlockScratch,
        constant: &[bool],
        x0: &[f64],
        rows: &[f64],
        with_tables: bool,
    ) {
        let nf = self.n_features;
        let n_rows = rows.len() / nf;
        scratch.cols.resize(nf * BLOCK, 0.0);
        scratch.loaded.resize(nf, false);
        scratch.stable.resize(nf, false);
        scratch.generation.resize(nf, 0);
        scratch.history.resize_with(nf, History::default);
        scratch.values.resize_with(nf, Values::default);
        let old_rows = scratch.loaded_rows;
        let mut tables_still_valid = true;
        for f in 0..nf {
            if constant[f] {
                scratch.loaded[f] = false;
                scratch.stable[f] = false;
                scratch.generation[f] =
                    scratch.values[f].generation(x0[f].to_bits(), &mut scratch.next_generation);
                continue;
            }
            let prepared = || rows.chunks_exact(nf).map(|row| self.prepare(f, row[f]));
            let col = &mut scratch.cols[f * BLOCK..(f + 1) * BLOCK];
            let same = scratch.loaded[f]
                && old_rows == n_rows
                && prepared()
                    .zip(&*col)
                    .all(|(v, c)| v.to_bits() == c.to_bits());
            let mut seen = same;
            if !same {
                let fresh = &mut scratch.fresh;
                fresh.clear();
                fresh.extend(prepared());
                let history = &mut scratch.history[f];
                if scratch.loaded[f] {
                    history.keep(scratch.generation[f], &col[..old_rows]);
                }
                scratch.generation[f] = match history.take(fresh) {
                    Some(generation) => {
                        seen = true;
                        generation
                    }
                    None => {
                        scratch.next_generation += 1;
                        scratch.next_generation
                    }
                };
                col[..n_rows].copy_from_slice(fresh);
            }
            scratch.loaded[f] = true;
            scratch.stable[f] = seen;
            if self.categorical[f] {
                tables_still_valid &= same;
            }
        }
        scratch.loaded_rows = n_rows;
        if !with_tables {
            scratch.tables_valid = false;
            return;
        }
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
            None => fill_rows(tree_out, set, self.leaf_value[leaf]),
            Some(_) => {
                let nf = self.n_features;
                for_each_row(set, |r| {
                    tree_out[r] = self.leaf_output(linear, leaf, &rows[r * nf..(r + 1) * nf]);
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn leaf_bytes_come_from_their_bit_planes(
            planes in proptest::collection::vec(any::<[u64; WORDS]>(), 0..=LEAF_BITS),
            rows in 0..=BLOCK,
        ) {
            let mut leaves = vec![0xAAu8; rows];
            write_leaves(&mut leaves, &planes);
            for (r, byte) in leaves.iter().enumerate() {
                let want = planes
                    .iter()
                    .enumerate()
                    .map(|(k, p)| (((p[r / 64] >> (r % 64)) & 1) as u8) << k)
                    .sum::<u8>();
                prop_assert_eq!(*byte, want, "row {}", r);
            }
        }
    }
}
