//! The leaves rows reached in each tree, remembered across batches.
//!
//! Which leaf a row reaches in a tree depends only on the values of the features of the nodes
//! on its way. Over a batch, the nodes some rows reach are of two kinds: nodes on features
//! that are constant over the batch (the request's, when the rows are the candidates of one
//! request), which send all their rows one way, and nodes on the other columns. An entry
//! keeps the leaf every row reached, with what they depended on: the constant nodes passed
//! and the way each went (a [`Signature`]), the features of those nodes, and the columns the
//! other nodes read. For a later batch with the same number of rows, if every column read
//! has the same contents (the same generation, see [`super::block::BlockScratch`]) and every
//! passed constant node goes the same way, every row meets the same nodes with the same
//! values, so it reaches the same leaf, and the tree's output is a table lookup per row.
//! When the passed features hold the same values as then (constant features have a
//! generation per value, from the same counter as the columns', so a constant feature never
//! has the generation of a column) nothing needs evaluating; when some of them changed, only
//! the passed nodes on those features are evaluated again. The router's batches are the
//! candidates of one request after another: the candidates' own columns (provider, region,
//! prices) stay the same, columns that depend on the request too (the burn rate) recur with
//! the request's resources, and requests that differ in features a tree's reached nodes do
//! not split on, or on the same sides of their thresholds, share entries.
//!
//! To know what a feature held when an entry was filled, the memo keeps the generations of
//! all features of the last [`SNAPSHOTS`] batches; an entry refers to one of them, and is
//! moved to the current batch's whenever it is found valid. During a batch each snapshot
//! entries refer to is compared with the current one once, into a mask of the features that
//! differ, so checking which of an entry's features changed is one AND.

use super::block::BLOCK;
use super::{Forest, MAX_MEMO_NODES, TreeRoot};

/// Entries kept per tree (least recently used replaced first).
const WAYS: usize = 16;
/// Batches whose feature generations are kept.
const SNAPSHOTS: u64 = 64;

/// The constant nodes a batch's rows passed in a tree, by pre-order index within the tree,
/// and which of those went left.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(super) struct Signature {
    pub(super) passed: u128,
    pub(super) left: u128,
}

/// What the leaves a batch's rows reached in a tree depend on: the constant nodes passed,
/// and the features of those (`passed`) and of the other nodes reached (`reads`). A superset
/// of the nodes reached (the tree folded on the constant features) is fine too.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Reached {
    pub(super) signature: Signature,
    pub(super) passed: u128,
    pub(super) reads: u128,
}

/// What is checked to find an entry, kept apart from the rest so that looking entries up
/// reads little memory.
#[derive(Debug, Clone, Copy, Default)]
struct Key {
    /// [`Reached::reads`].
    reads: u128,
    /// [`Reached::passed`].
    passed: u128,
    /// The snapshot of feature generations it was last valid for (0: empty).
    snapshot: u64,
    rows: u32,
}

/// Per tree, up to [`WAYS`] remembered batches: the local leaf index each row reached.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memo {
    keys: Vec<Key>,
    signatures: Vec<Signature>,
    last_used: Vec<u64>,
    /// `BLOCK` leaf indices per entry.
    leaves: Vec<u8>,
    clock: u64,
    n_features: usize,
    /// Feature generations of the last [`SNAPSHOTS`] batches, `n_features` each, snapshot
    /// `s` at `s % SNAPSHOTS`.
    snapshots: Vec<u64>,
    /// Per kept snapshot (at `s % SNAPSHOTS`): the current snapshot when it was last compared
    /// with it, and the features whose generation differed.
    differs: Vec<(u64, u128)>,
    /// The current batch's snapshot (0: none yet).
    current: u64,
}

impl Memo {
    /// Forgets every entry, for a forest of `n_trees` trees and `n_features` features.
    pub(super) fn reset(&mut self, n_trees: usize, n_features: usize) {
        self.keys.clear();
        self.keys.resize(n_trees * WAYS, Key::default());
        self.signatures.resize(n_trees * WAYS, Signature::default());
        self.last_used.resize(n_trees * WAYS, 0);
        self.leaves.resize(n_trees * WAYS * BLOCK, 0);
        self.n_features = n_features;
        self.snapshots.resize(SNAPSHOTS as usize * n_features, 0);
        self.differs.clear();
        self.differs.resize(SNAPSHOTS as usize, (0, 0));
        self.current = 0;
    }

    /// Starts a batch whose features have these generations.
    pub(super) fn begin(&mut self, generation: &[u64]) {
        let nf = self.n_features;
        if self.current > 0 && self.snapshot(self.current) == generation {
            return;
        }
        self.current += 1;
        let at = (self.current % SNAPSHOTS) as usize * nf;
        self.snapshots[at..at + nf].copy_from_slice(generation);
    }

    fn snapshot(&self, s: u64) -> &[u64] {
        let at = (s % SNAPSHOTS) as usize * self.n_features;
        &self.snapshots[at..at + self.n_features]
    }

    /// The features whose generations differ between snapshot `s` and the current batch
    /// (`None` for an empty or forgotten snapshot). Each kept snapshot is compared with the
    /// current one once per batch, when first asked about.
    fn changed_since(&mut self, s: u64) -> Option<u128> {
        if s == 0 || s + SNAPSHOTS <= self.current {
            return None;
        }
        let at = (s % SNAPSHOTS) as usize;
        if self.differs[at].0 != self.current {
            let current = self.snapshot(self.current);
            let mut differs = 0u128;
            for (f, (a, b)) in self.snapshot(s).iter().zip(current).enumerate() {
                differs |= u128::from(a != b) << f;
            }
            self.differs[at] = (self.current, differs);
        }
        Some(self.differs[at].1)
    }

    /// Moves entry `index` to the current batch.
    fn touch(&mut self, index: usize) {
        self.clock += 1;
        self.keys[index].snapshot = self.current;
        self.last_used[index] = self.clock;
    }

    /// The entry of tree `tree` that holds the leaves of the current batch of `rows` rows,
    /// if any: the columns it read are unchanged, and the constant nodes it passed on
    /// features whose value changed go the same way, as `same_way(signature, changed)` tells.
    pub(super) fn recall(
        &mut self,
        tree: usize,
        rows: usize,
        same_way: impl Fn(&Signature, u128) -> bool,
    ) -> Option<usize> {
        for index in tree * WAYS..(tree + 1) * WAYS {
            let key = self.keys[index];
            if key.rows as usize != rows {
                continue;
            }
            let Some(changed) = self.changed_since(key.snapshot) else {
                continue;
            };
            if changed & key.reads != 0 {
                continue;
            }
            if changed & key.passed == 0 || same_way(&self.signatures[index], changed) {
                self.touch(index);
                return Some(index);
            }
        }
        None
    }

    /// The leaf indices of entry `index`, for its batch of `rows` rows.
    pub(super) fn leaves(&self, index: usize, rows: usize) -> &[u8] {
        &self.leaves[index * BLOCK..][..rows]
    }

    /// Fills a new entry of tree `tree` (an empty way, or the least recently used) for the
    /// current batch of `rows` rows: `write` sets the leaf indices and tells what they depend
    /// on. Returns the entry's index.
    pub(super) fn fill(
        &mut self,
        tree: usize,
        rows: usize,
        write: impl FnOnce(&mut [u8]) -> Reached,
    ) -> usize {
        let ways = tree * WAYS..(tree + 1) * WAYS;
        let age = |i: &usize| {
            if self.keys[*i].snapshot == 0 {
                0
            } else {
                self.last_used[*i]
            }
        };
        let index = ways.clone().min_by_key(age).unwrap_or(ways.start);
        let reached = write(&mut self.leaves[index * BLOCK..][..rows]);
        self.keys[index] = Key {
            reads: reached.reads,
            passed: reached.passed,
            snapshot: 0,
            rows: rows as u32,
        };
        self.signatures[index] = reached.signature;
        self.touch(index);
        index
    }
}

impl Forest {
    /// Whether the constant nodes of `signature` (of a memoized `tree`) on the features marked
    /// in `changed` still go the same way with the `constant` features' values in the
    /// prepared row `x0`.
    pub(super) fn same_way(
        &self,
        tree: &TreeRoot,
        signature: &Signature,
        changed: u128,
        constant: &[bool],
        x0: &[f64],
    ) -> bool {
        let base = tree.root as usize;
        let mut bits = signature.passed;
        while bits != 0 {
            let k = bits.trailing_zeros();
            bits &= bits - 1;
            let i = base + k as usize;
            let f = self.nodes.feature[i] as usize;
            if changed >> f & 1 == 0 {
                continue;
            }
            let left = signature.left >> k & 1 == 1;
            if !constant[f] || self.nodes.goes_left(i, x0[f], &self.cat_words) != left {
                return false;
            }
        }
        true
    }

    /// How a memoized `tree` folds on the `constant` features (values in the prepared row
    /// `x0`): the constant nodes any row can pass and the features of those and of the other
    /// nodes any row can reach.
    pub(super) fn folding(&self, tree: &TreeRoot, constant: &[bool], x0: &[f64]) -> Reached {
        debug_assert!(tree.memoized);
        let nodes = &self.nodes;
        let base = tree.root as usize;
        let mut reached = Reached::default();
        // Each internal node is pending at most once.
        let mut pending = [0i32; MAX_MEMO_NODES as usize];
        pending[0] = tree.root;
        let mut len = 1;
        while len > 0 {
            len -= 1;
            let i = pending[len] as usize;
            let f = nodes.feature[i] as usize;
            let children = if constant[f] {
                let bit = 1u128 << (i - base);
                reached.signature.passed |= bit;
                reached.passed |= 1 << f;
                if nodes.goes_left(i, x0[f], &self.cat_words) {
                    reached.signature.left |= bit;
                    [nodes.left[i], -1]
                } else {
                    [nodes.right[i], -1]
                }
            } else {
                reached.reads |= 1 << f;
                [nodes.right[i], nodes.left[i]]
            };
            for child in children.into_iter().filter(|c| *c >= 0) {
                pending[len] = child;
                len += 1;
            }
        }
        reached
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_while_what_they_depend_on_is_the_same() {
        let mut memo = Memo::default();
        memo.reset(1, 3);
        // The rows passed a constant node on feature 0 (node 0, to the left) and read column
        // 1; feature 2 is elsewhere in the batch.
        let reached = Reached {
            signature: Signature { passed: 1, left: 1 },
            passed: 0b001,
            reads: 0b010,
        };
        let fill = |memo: &mut Memo, rows: usize, leaf: u8| {
            memo.fill(0, rows, |leaves| {
                leaves.fill(leaf);
                reached
            })
        };
        // `same_way` answers for the constant node's new value; it must only be asked when
        // the passed feature changed.
        let going = |left: bool| {
            move |_: &Signature, changed: u128| {
                assert_ne!(changed & 0b001, 0);
                left
            }
        };
        memo.begin(&[1, 10, 100]);
        assert_eq!(memo.recall(0, 4, going(true)), None);
        let index = fill(&mut memo, 4, 3);

        // Only a feature the tree does not depend on changes: recalled as is.
        memo.begin(&[1, 10, 101]);
        assert_eq!(memo.recall(0, 4, going(false)), Some(index));
        assert_eq!(memo.leaves(index, 4), [3; 4]);
        // The constant feature takes another value: recalled when the node goes the same
        // way, and from then on without asking.
        memo.begin(&[2, 10, 101]);
        assert_eq!(memo.recall(0, 4, going(false)), None);
        assert_eq!(memo.recall(0, 4, going(true)), Some(index));
        memo.begin(&[2, 10, 102]);
        assert_eq!(memo.recall(0, 4, going(false)), Some(index));
        // A column it reads changes, or the number of rows: not recalled.
        memo.begin(&[2, 11, 102]);
        assert_eq!(memo.recall(0, 4, going(true)), None);
        memo.begin(&[2, 10, 102]);
        assert_eq!(memo.recall(0, 5, going(true)), None);
        // Back to column generation 10: recalled again.
        assert_eq!(memo.recall(0, 4, going(true)), Some(index));

        // A second entry goes to another way; both are found.
        memo.begin(&[3, 12, 102]);
        let second = fill(&mut memo, 4, 5);
        assert_ne!(second, index);
        memo.begin(&[2, 10, 102]);
        assert_eq!(memo.recall(0, 4, going(true)), Some(index));
        memo.begin(&[3, 12, 102]);
        assert_eq!(memo.recall(0, 4, going(true)), Some(second));
        assert_eq!(memo.leaves(second, 4), [5; 4]);

        // More batches than snapshots are kept: the entries' snapshots are gone, and the
        // slots they were in now hold the current batch's generations, which must not make
        // them valid.
        for g in 0..SNAPSHOTS {
            memo.begin(&[2, 10, 1000 + g]);
        }
        assert_eq!(memo.recall(0, 4, going(true)), None);

        // Another forest: nothing holds.
        memo.begin(&[2, 10, 100]);
        fill(&mut memo, 4, 1);
        assert!(memo.recall(0, 4, going(true)).is_some());
        memo.reset(1, 3);
        memo.begin(&[2, 10, 100]);
        assert_eq!(memo.recall(0, 4, going(true)), None);
    }
}
