//! The leaves rows reached in each tree, remembered across batches.
//!
//! Folded on a batch's constant features, a tree becomes a function of the other columns
//! only, and which folded tree it becomes depends only on the constant nodes the fold passes
//! and the way each of them goes: its [`Signature`]. When a later batch folds the tree the
//! same way and every column its folded nodes read has the same contents as then (the same
//! generation, see [`super::block::BlockScratch`]), every row reaches the same leaf as then,
//! and the tree's output is a table lookup per row. The router's batches are the candidates
//! of one request after another: the candidates' own columns (provider, region, prices) stay
//! the same, columns that depend on the request too (the burn rate) recur with the request's
//! resources, and requests that differ only in features a tree does not split on, or on the
//! same sides of its thresholds, fold it the same way.
//!
//! To know what a column held when an entry was filled, the memo keeps the generations of
//! all columns of the last [`SNAPSHOTS`] batches; an entry refers to one of them, and is
//! moved to the current batch's whenever it is found valid.

use super::block::BLOCK;
use super::{Forest, MAX_MEMO_NODES, TreeRoot};

/// Entries kept per tree (least recently used replaced first).
const WAYS: usize = 16;
/// Batches whose column generations are kept.
const SNAPSHOTS: u64 = 64;

/// How a tree folds on a batch's constant features: over its internal nodes by pre-order
/// index, the constant ones the fold passes, and which of those go left.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Signature {
    passed: u128,
    left: u128,
}

/// What a tree becomes on a batch.
pub(super) enum Folding {
    /// Every row reaches this leaf (global index).
    Leaf(usize),
    /// A tree that folds as `Signature` and whose folded nodes read the features marked in
    /// the `u128`.
    Tree(Signature, u128),
}

#[derive(Debug, Clone, Copy, Default)]
struct Entry {
    /// [`Memo::epoch`] it was filled in (older: empty).
    epoch: u64,
    signature: Option<Signature>,
    rows: usize,
    /// The snapshot of column generations it is valid for.
    snapshot: u64,
    last_used: u64,
}

/// Per tree, up to [`WAYS`] remembered batches: the local leaf index each row reached.
#[derive(Debug, Clone, Default)]
pub(crate) struct Memo {
    entries: Vec<Entry>,
    /// `BLOCK` leaf indices per entry.
    leaves: Vec<u8>,
    /// Bumped by [`Memo::reset`]; entries of older epochs are empty.
    epoch: u64,
    clock: u64,
    n_features: usize,
    /// Column generations of the last [`SNAPSHOTS`] batches, `n_features` each, snapshot
    /// `s` at `s % SNAPSHOTS`.
    snapshots: Vec<u64>,
    /// The current batch's snapshot (0: none yet).
    current: u64,
}

/// Where a tree's leaves for the current batch are.
pub(super) struct Slot {
    /// The entry's index.
    pub(super) index: usize,
    /// Whether they are already there.
    pub(super) hit: bool,
}

impl Memo {
    /// Forgets every entry, for a forest of `n_trees` trees and `n_features` features.
    /// Cheap: entries of older epochs count as empty.
    pub(super) fn reset(&mut self, n_trees: usize, n_features: usize) {
        self.epoch += 1;
        if self.entries.len() < n_trees * WAYS {
            self.entries.resize(n_trees * WAYS, Entry::default());
            self.leaves.resize(n_trees * WAYS * BLOCK, 0);
        }
        self.n_features = n_features;
        self.snapshots.resize(SNAPSHOTS as usize * n_features, 0);
        self.current = 0;
    }

    /// Starts a batch whose columns have these generations.
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

    /// The slot of tree `tree` for the current batch of `rows` rows, on which it folds as
    /// `signature` and reads the features marked in `reads`: a hit, or the entry to fill.
    pub(super) fn slot(
        &mut self,
        tree: usize,
        signature: Signature,
        reads: u128,
        rows: usize,
    ) -> Slot {
        self.clock += 1;
        let current = self.snapshot(self.current);
        let valid = |e: &Entry| {
            e.epoch == self.epoch
                && e.signature == Some(signature)
                && e.rows == rows
                && e.snapshot + SNAPSHOTS > self.current
                && same_generations(self.snapshot(e.snapshot), current, reads)
        };
        let ways = &self.entries[tree * WAYS..(tree + 1) * WAYS];
        let (way, hit) = match ways.iter().position(valid) {
            Some(w) => (w, true),
            None => {
                let age = |e: &Entry| {
                    if e.epoch == self.epoch {
                        e.last_used
                    } else {
                        0
                    }
                };
                let victim = (0..WAYS).min_by_key(|w| age(&ways[*w])).unwrap_or(0);
                (victim, false)
            }
        };
        let e = &mut self.entries[tree * WAYS + way];
        e.last_used = self.clock;
        e.snapshot = self.current;
        Slot {
            index: tree * WAYS + way,
            hit,
        }
    }

    /// The leaf indices of entry `index` (a [`Slot::index`]), for its batch of `rows` rows.
    pub(super) fn leaves(&self, index: usize, rows: usize) -> &[u8] {
        &self.leaves[index * BLOCK..][..rows]
    }

    /// Fills `slot` for the current batch of `rows` rows, on which the tree folds as
    /// `signature`: `write` gets the leaf indices to set.
    pub(super) fn fill(
        &mut self,
        slot: &Slot,
        signature: Signature,
        rows: usize,
        write: impl FnOnce(&mut [u8]),
    ) {
        write(&mut self.leaves[slot.index * BLOCK..][..rows]);
        let e = &mut self.entries[slot.index];
        e.epoch = self.epoch;
        e.signature = Some(signature);
        e.rows = rows;
    }
}

/// Whether the features marked in `reads` have the same generation in `a` and `b`.
fn same_generations(a: &[u64], b: &[u64], reads: u128) -> bool {
    let mut bits = reads;
    while bits != 0 {
        let f = bits.trailing_zeros() as usize;
        if a[f] != b[f] {
            return false;
        }
        bits &= bits - 1;
    }
    true
}

impl Forest {
    /// How a memoized `tree` folds on the `constant` features (values in the prepared row
    /// `x0`).
    pub(super) fn folding(&self, tree: &TreeRoot, constant: &[bool], x0: &[f64]) -> Folding {
        debug_assert!(tree.memoized);
        let nodes = &self.nodes;
        let base = tree.root as usize;
        let mut signature = Signature { passed: 0, left: 0 };
        // Follows nodes on constant features to the first node that depends on the row.
        let mut resolve = |mut n: i32| {
            while n >= 0 && constant[nodes.feature[n as usize] as usize] {
                let i = n as usize;
                let bit = 1u128 << (i - base);
                signature.passed |= bit;
                n = if nodes.goes_left(i, x0[nodes.feature[i] as usize], &self.cat_words) {
                    signature.left |= bit;
                    nodes.left[i]
                } else {
                    nodes.right[i]
                };
            }
            n
        };
        let root = resolve(tree.root);
        if root < 0 {
            return Folding::Leaf(!root as usize);
        }
        let mut reads = 0u128;
        // Each internal node is pending at most once.
        let mut pending = [0i32; MAX_MEMO_NODES as usize];
        pending[0] = root;
        let mut len = 1;
        while len > 0 {
            len -= 1;
            let i = pending[len] as usize;
            reads |= 1 << nodes.feature[i];
            for child in [nodes.right[i], nodes.left[i]] {
                let child = resolve(child);
                if child >= 0 {
                    pending[len] = child;
                    len += 1;
                }
            }
        }
        Folding::Tree(signature, reads)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_hold_while_the_columns_they_read_keep_their_generation() {
        let mut memo = Memo::default();
        memo.reset(1, 2);
        let sig = Signature { passed: 1, left: 1 };
        // The folded tree reads feature 1 only.
        let reads = 0b10;
        let hit = |memo: &mut Memo, generations: &[u64], sig: Signature, rows: usize| {
            memo.begin(generations);
            memo.slot(0, sig, reads, rows).hit
        };
        memo.begin(&[1, 10]);
        let slot = memo.slot(0, sig, reads, 4);
        assert!(!slot.hit);
        memo.fill(&slot, sig, 4, |leaves| leaves.fill(3));

        // A feature the tree does not read changes: the leaves hold.
        memo.begin(&[2, 10]);
        let slot = memo.slot(0, sig, reads, 4);
        assert!(slot.hit);
        assert_eq!(memo.leaves(slot.index, 4), [3; 4]);
        // One it reads changes, or the fold, or the number of rows: they do not.
        assert!(!hit(&mut memo, &[2, 11], sig, 4));
        let other = Signature { passed: 1, left: 0 };
        assert!(!hit(&mut memo, &[2, 10], other, 4));
        assert!(!hit(&mut memo, &[2, 10], sig, 5));
        // Back to generation 10: they hold again.
        assert!(hit(&mut memo, &[2, 10], sig, 4));

        // More batches than snapshots are kept: the entry's snapshot is gone, and the slot it
        // was in now holds the current batch's generations, which must not make it valid.
        for g in 0..SNAPSHOTS {
            memo.begin(&[2, 1000 + g]);
        }
        assert!(!memo.slot(0, sig, reads, 4).hit);

        // Another forest: nothing holds.
        memo.begin(&[2, 10]);
        let slot = memo.slot(0, sig, reads, 4);
        memo.fill(&slot, sig, 4, |leaves| leaves.fill(1));
        assert!(hit(&mut memo, &[2, 10], sig, 4));
        memo.reset(1, 2);
        assert!(!hit(&mut memo, &[2, 10], sig, 4));
    }
}
