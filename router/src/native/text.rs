//! Parsing LightGBM's text model format into plain per-tree arrays.
//!
//! Mirrors `GBDT::LoadModelFromString` (src/boosting/gbdt_model_text.cpp) and
//! `Tree::Tree(const char*, size_t*)` (src/io/tree.cpp): a header of `key=value` lines up to
//! the first `Tree=` line, then one block of `key=value` lines per tree, ending at
//! `end of trees`. Every array is checked for its exact length, every child and feature index
//! for its range, and the tree structure for being a tree (so evaluation always terminates).
//! Numbers are parsed correctly rounded, as LightGBM's `AtofPrecise`/`std::stod` do.

use std::collections::HashMap;
use std::str::FromStr;

use crate::RouterError;

/// The header fields the evaluator needs.
#[derive(Debug)]
pub(crate) struct Header {
    /// `max_feature_idx + 1`.
    pub(crate) n_features: usize,
    /// The `objective=` value, e.g. `binary sigmoid:1`.
    pub(crate) objective: String,
}

/// One tree, as stored in the text (LightGBM's node numbering, `~leaf` children).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawTree {
    pub(crate) num_leaves: usize,
    pub(crate) split_feature: Vec<usize>,
    pub(crate) threshold: Vec<f64>,
    pub(crate) decision_type: Vec<u8>,
    pub(crate) left_child: Vec<i32>,
    pub(crate) right_child: Vec<i32>,
    pub(crate) leaf_value: Vec<f64>,
    pub(crate) cat_boundaries: Vec<usize>,
    pub(crate) cat_threshold: Vec<u32>,
    pub(crate) linear: Option<RawLinear>,
}

/// The per-leaf linear models of a tree trained with `linear_tree=true`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RawLinear {
    pub(crate) leaf_const: Vec<f64>,
    /// For each leaf, its `(feature, coefficient)` terms in stored order.
    pub(crate) terms: Vec<Vec<(usize, f64)>>,
}

/// More features than any model here has; a larger `max_feature_idx` means a corrupt file.
const MAX_FEATURES: usize = 1 << 20;

fn bad(message: impl Into<String>) -> RouterError {
    RouterError::ModelText(message.into())
}

/// Parses a whole model text.
pub(crate) fn parse_model(text: &str) -> Result<(Header, Vec<RawTree>), RouterError> {
    let mut lines = text.lines().map(|l| l.trim_end_matches('\r')).peekable();
    let mut header: HashMap<&str, &str> = HashMap::new();
    while let Some(line) = lines.peek() {
        if line.starts_with("Tree=") || *line == "end of trees" {
            break;
        }
        if !line.is_empty() {
            let (key, value) = line.split_once('=').unwrap_or((line, ""));
            header.insert(key, value);
        }
        lines.next();
    }
    if !header.contains_key("tree") && !header.contains_key("version") {
        return Err(bad(
            "not a lightgbm text model (no `tree` or `version=` header line)",
        ));
    }
    let int = |key: &str| -> Result<i64, RouterError> {
        let value = header
            .get(key)
            .ok_or_else(|| bad(format!("the header has no `{key}=` line")))?;
        value
            .trim()
            .parse::<i64>()
            .map_err(|_| bad(format!("header `{key}={value}` is not an integer")))
    };
    let num_class = int("num_class")?;
    if num_class != 1 {
        return Err(bad(format!(
            "num_class={num_class}: only single-output models (regression, binary) are supported"
        )));
    }
    if header.contains_key("num_tree_per_iteration") {
        let per_iteration = int("num_tree_per_iteration")?;
        if per_iteration != 1 {
            return Err(bad(format!(
                "num_tree_per_iteration={per_iteration}: only one tree per iteration is supported"
            )));
        }
    }
    if header.contains_key("average_output") {
        return Err(bad(
            "average_output (random forest) models are not supported",
        ));
    }
    let max_feature_idx = int("max_feature_idx")?;
    let n_features = usize::try_from(max_feature_idx + 1)
        .ok()
        .filter(|n| (1..=MAX_FEATURES).contains(n))
        .ok_or_else(|| bad(format!("max_feature_idx={max_feature_idx} is out of range")))?;
    let objective = header
        .get("objective")
        .map(|o| o.trim().to_owned())
        .ok_or_else(|| {
            bad("the header has no `objective=` line, so the output transform is unknown (custom objectives are not supported)")
        })?;

    let mut trees = Vec::new();
    let mut ended = false;
    while let Some(line) = lines.next() {
        if line == "end of trees" {
            ended = true;
            break;
        }
        if line.is_empty() {
            continue;
        }
        let Some(index) = line.strip_prefix("Tree=") else {
            return Err(bad(format!(
                "expected `Tree=` or `end of trees`, found `{line}`"
            )));
        };
        if index.trim().parse::<usize>() != Ok(trees.len()) {
            return Err(bad(format!(
                "tree `{line}` is out of order (expected Tree={})",
                trees.len()
            )));
        }
        let mut fields: HashMap<&str, &str> = HashMap::new();
        while let Some(field) = lines.peek() {
            if field.is_empty() || field.starts_with("Tree=") || *field == "end of trees" {
                break;
            }
            let (key, value) = field.split_once('=').ok_or_else(|| {
                bad(format!(
                    "tree {}: line `{field}` is not key=value",
                    trees.len()
                ))
            })?;
            fields.insert(key, value);
            lines.next();
        }
        let tree = parse_tree(&fields, n_features)
            .map_err(|e| bad(format!("tree {}: {}", trees.len(), message_of(e))))?;
        trees.push(tree);
    }
    if !ended {
        return Err(bad("the model is truncated (no `end of trees` line)"));
    }
    if trees.is_empty() {
        return Err(bad("the model has no trees"));
    }
    Ok((
        Header {
            n_features,
            objective,
        },
        trees,
    ))
}

fn message_of(e: RouterError) -> String {
    match e {
        RouterError::ModelText(m) => m,
        other => other.to_string(),
    }
}

fn array<T: FromStr>(
    fields: &HashMap<&str, &str>,
    key: &str,
    len: usize,
) -> Result<Vec<T>, RouterError> {
    let text = fields
        .get(key)
        .ok_or_else(|| bad(format!("no `{key}=` line")))?;
    let values = text
        .split_ascii_whitespace()
        .map(|t| {
            t.parse::<T>().map_err(|_| {
                bad(format!(
                    "`{key}` holds `{t}`, not a number of the right type"
                ))
            })
        })
        .collect::<Result<Vec<T>, _>>()?;
    if values.len() != len {
        return Err(bad(format!(
            "`{key}` holds {} values, expected {len}",
            values.len()
        )));
    }
    Ok(values)
}

fn scalar<T: FromStr>(fields: &HashMap<&str, &str>, key: &str) -> Result<Option<T>, RouterError> {
    fields
        .get(key)
        .map(|v| {
            v.trim()
                .parse::<T>()
                .map_err(|_| bad(format!("`{key}={v}` is not a number of the right type")))
        })
        .transpose()
}

fn parse_tree(fields: &HashMap<&str, &str>, n_features: usize) -> Result<RawTree, RouterError> {
    let num_leaves: usize =
        scalar(fields, "num_leaves")?.ok_or_else(|| bad("no `num_leaves=` line"))?;
    if num_leaves == 0 {
        return Err(bad("num_leaves is 0"));
    }
    let num_cat: usize = scalar(fields, "num_cat")?.ok_or_else(|| bad("no `num_cat=` line"))?;
    let leaf_value: Vec<f64> = array(fields, "leaf_value", num_leaves)?;
    let is_linear = scalar::<i32>(fields, "is_linear")?.unwrap_or(0) != 0;
    let linear = if is_linear {
        Some(parse_linear(fields, num_leaves, n_features)?)
    } else {
        None
    };
    let mut tree = RawTree {
        num_leaves,
        split_feature: Vec::new(),
        threshold: Vec::new(),
        decision_type: Vec::new(),
        left_child: Vec::new(),
        right_child: Vec::new(),
        leaf_value,
        cat_boundaries: Vec::new(),
        cat_threshold: Vec::new(),
        linear,
    };
    if num_leaves == 1 {
        return Ok(tree);
    }
    let n_internal = num_leaves - 1;
    tree.split_feature = array(fields, "split_feature", n_internal)?;
    tree.threshold = array(fields, "threshold", n_internal)?;
    tree.left_child = array(fields, "left_child", n_internal)?;
    tree.right_child = array(fields, "right_child", n_internal)?;
    tree.decision_type = if fields.contains_key("decision_type") {
        array(fields, "decision_type", n_internal)?
    } else {
        vec![0; n_internal]
    };
    if num_cat > 0 {
        tree.cat_boundaries = array(fields, "cat_boundaries", num_cat + 1)?;
        let words = *tree.cat_boundaries.last().unwrap_or(&0);
        if tree.cat_boundaries[0] != 0 || tree.cat_boundaries.windows(2).any(|w| w[0] > w[1]) {
            return Err(bad("`cat_boundaries` must start at 0 and never decrease"));
        }
        tree.cat_threshold = array(fields, "cat_threshold", words)?;
    }
    for node in 0..n_internal {
        if tree.split_feature[node] >= n_features {
            return Err(bad(format!(
                "node {node} splits on feature {} but the model has {n_features}",
                tree.split_feature[node]
            )));
        }
        let dt = tree.decision_type[node];
        if dt > 15 || (dt >> 2) & 3 == 3 {
            return Err(bad(format!("node {node} has invalid decision_type {dt}")));
        }
        if dt & 1 == 1 {
            // CategoricalDecision: cat_idx = static_cast<int>(threshold).
            let t = tree.threshold[node];
            if !(t >= 0.0 && t < num_cat as f64) {
                return Err(bad(format!(
                    "categorical node {node} points to bitset {t}, the tree has {num_cat}"
                )));
            }
        }
    }
    check_structure(&tree)?;
    Ok(tree)
}

fn parse_linear(
    fields: &HashMap<&str, &str>,
    num_leaves: usize,
    n_features: usize,
) -> Result<RawLinear, RouterError> {
    let leaf_const: Vec<f64> = array(fields, "leaf_const", num_leaves)?;
    let counts: Vec<usize> = array(fields, "num_features", num_leaves)?;
    let total: usize = counts.iter().sum();
    let (features, coeffs): (Vec<usize>, Vec<f64>) = if total == 0 {
        (Vec::new(), Vec::new())
    } else {
        (
            array(fields, "leaf_features", total)?,
            array(fields, "leaf_coeff", total)?,
        )
    };
    if let Some(f) = features.iter().find(|f| **f >= n_features) {
        return Err(bad(format!(
            "a linear leaf uses feature {f} but the model has {n_features}"
        )));
    }
    let mut terms = Vec::with_capacity(num_leaves);
    let mut at = 0;
    for count in counts {
        terms.push(
            features[at..at + count]
                .iter()
                .copied()
                .zip(coeffs[at..at + count].iter().copied())
                .collect(),
        );
        at += count;
    }
    Ok(RawLinear { leaf_const, terms })
}

/// Checks that following children from node 0 reaches every internal node and every leaf
/// exactly once: a tree, so evaluation always ends in a leaf.
fn check_structure(tree: &RawTree) -> Result<(), RouterError> {
    let n_internal = tree.num_leaves - 1;
    let mut seen_node = vec![false; n_internal];
    let mut seen_leaf = vec![false; tree.num_leaves];
    let mut stack = vec![0i32];
    while let Some(child) = stack.pop() {
        if child >= 0 {
            let node = child as usize;
            if node >= n_internal || std::mem::replace(&mut seen_node[node], true) {
                return Err(bad(format!(
                    "node {node} is out of range or reached twice; the nodes do not form a tree"
                )));
            }
            stack.push(tree.left_child[node]);
            stack.push(tree.right_child[node]);
        } else {
            let leaf = !child as usize;
            if leaf >= tree.num_leaves || std::mem::replace(&mut seen_leaf[leaf], true) {
                return Err(bad(format!(
                    "leaf {leaf} is out of range or reached twice; the nodes do not form a tree"
                )));
            }
        }
    }
    if seen_node.contains(&false) || seen_leaf.contains(&false) {
        return Err(bad("some nodes or leaves are unreachable from the root"));
    }
    Ok(())
}
