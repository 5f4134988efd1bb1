//! Rewrite rules, grouped by topic. Each rule is one function from an e-node (and its
//! e-class) to what the class also equals; [`NodeRule`] turns it into an egg rewrite.
//!
//! - [`simplify`]: exact algebraic identities (`x*1`, `x+0`, `--x`, no-op casts and views);
//! - [`layout`]: composing transposes, reshapes and broadcasts;
//! - [`recognize`]: decomposed patterns rewritten to their fused op (GELU, LayerNorm);
//! - [`fuse`]: operator fusion, growing kernels by absorbing producers;
//! - [`fast`]: inexact rules (`x*0 → 0`, `x-x → 0`, reassociation), only with `--fast-math`.
//!
//! Constant folding ([`fold`]) is not a rewrite but the e-class analysis
//! ([`super::analysis`]), so every new node is folded the moment it is added.

pub mod fast;
pub mod fold;
pub mod fuse;
pub mod horizontal;
pub mod layout;
pub mod recognize;
pub mod simplify;

use super::analysis::{Facts, EG};
use super::lang::{ENode, EOp};
use crate::ir::{infer, DType, Op, Tensor, TensorType};
use egg::{Applier, Id, Rewrite, SearchMatches, Searcher, Subst, Symbol, Var};
use std::sync::Arc;

/// What a rule says an e-class also equals.
#[derive(Clone, Debug)]
pub enum Build {
    /// An existing e-class.
    Class(Id),
    /// A new op node over built children.
    Node(Op, Vec<Build>),
    /// A new constant.
    Const(Tensor),
    /// A new constant: `op` evaluated on these constant classes when the rule is applied
    /// (not when it is searched), however large (folding's size limit does not apply: the
    /// rule decided the constant is worth materializing, e.g. concatenated weights).
    Fold(Op, Vec<Id>),
}

/// Read access to the e-graph for rules.
pub struct Ctx<'a> {
    eg: &'a EG,
}

impl<'a> Ctx<'a> {
    /// Type of an e-class.
    pub fn ty(&self, id: Id) -> &'a TensorType {
        &self.eg[id].data.ty
    }

    /// The constant value of an e-class, if known.
    pub fn value(&self, id: Id) -> Option<&'a Tensor> {
        self.eg[id].data.value.as_deref()
    }

    /// True when the class is a known constant whose every element equals `v`.
    pub fn is_const(&self, id: Id, v: f64) -> bool {
        self.value(id)
            .is_some_and(|t| t.numel() > 0 && t.to_f64().iter().all(|&x| x == v))
    }

    /// True when the class is a known constant whose elements are all within `rel` of `v`,
    /// or within the rounding of `v` to the constant's dtype (an exporter's 0.044715 stored
    /// as f16 is 0.044708; `--dtype f16` stores every f32 constant so).
    pub fn is_near(&self, id: Id, v: f64, rel: f64) -> bool {
        self.value(id).is_some_and(|t| {
            let unit = match t.dtype() {
                DType::F16 => 2f64.powi(-11),
                DType::BF16 => 2f64.powi(-8),
                _ => 0.0,
            };
            let tol = rel.max(unit);
            t.numel() > 0 && t.to_f64().iter().all(|&x| (x - v).abs() <= tol * v.abs())
        })
    }

    /// The first node of the class whose op satisfies `pred`.
    pub fn find(&self, id: Id, pred: impl Fn(&Op) -> bool) -> Option<&'a ENode> {
        self.eg[id]
            .nodes
            .iter()
            .find(|n| n.ir_op().is_some_and(&pred))
    }

    /// All nodes of a class.
    pub fn nodes(&self, id: Id) -> &'a [ENode] {
        &self.eg[id].nodes
    }

    /// How many consumers (and graph outputs) use the class in the program being optimized.
    pub fn users(&self, id: Id) -> usize {
        let id = self.eg.find(id);
        self.eg
            .analysis
            .users
            .iter()
            .filter(|(k, _)| self.eg.find(**k) == id)
            .map(|(_, n)| n)
            .sum()
    }

    /// True when the class is a graph input or a constant.
    pub fn is_leaf(&self, id: Id) -> bool {
        self.eg[id]
            .nodes
            .iter()
            .any(|n| n.args.is_empty() && n.ir_op().is_none())
    }

    /// True when the class is a graph output.
    pub fn is_output(&self, id: Id) -> bool {
        let id = self.eg.find(id);
        self.eg
            .analysis
            .outputs
            .iter()
            .any(|&o| self.eg.find(o) == id)
    }

    /// Canonical id of a class.
    pub fn canon(&self, id: Id) -> Id {
        self.eg.find(id)
    }

    /// The classes holding a node that reads class `id` (canonical, each once).
    pub fn parents(&self, id: Id) -> Vec<Id> {
        let mut out: Vec<Id> = self.eg[id].parents().map(|p| self.eg.find(p)).collect();
        out.sort();
        out.dedup();
        out
    }
}

/// A rule function: given the e-class and one of its nodes, an equal expression (or none).
pub type RuleFn = fn(&Ctx, Id, &ENode) -> Option<Build>;

/// Adapts a [`RuleFn`] to egg's searcher and applier.
#[derive(Clone)]
pub struct NodeRule {
    f: RuleFn,
}

/// Makes an egg rewrite from a rule function.
pub fn rule(name: &str, f: RuleFn) -> Rewrite<ENode, Facts> {
    Rewrite::new(name, NodeRule { f }, NodeRule { f }).expect("node rules bind no variables")
}

impl Searcher<ENode, Facts> for NodeRule {
    fn search_eclass_with_limit(
        &self,
        eg: &EG,
        eclass: Id,
        limit: usize,
    ) -> Option<SearchMatches<'_, ENode>> {
        let ctx = Ctx { eg };
        let hits = eg[eclass]
            .nodes
            .iter()
            .filter(|n| (self.f)(&ctx, eclass, n).is_some())
            .count()
            .min(limit);
        (hits > 0).then(|| SearchMatches {
            eclass,
            substs: vec![Subst::default(); hits],
            ast: None,
        })
    }

    fn vars(&self) -> Vec<Var> {
        vec![]
    }
}

impl Applier<ENode, Facts> for NodeRule {
    fn apply_matches(
        &self,
        eg: &mut EG,
        matches: &[SearchMatches<ENode>],
        _rule: Symbol,
    ) -> Vec<Id> {
        let mut changed = Vec::new();
        for m in matches {
            let id = eg.find(m.eclass);
            let builds: Vec<Build> = {
                let ctx = Ctx { eg };
                eg[id]
                    .nodes
                    .iter()
                    .filter_map(|n| (self.f)(&ctx, id, n))
                    .collect()
            };
            for b in builds {
                let Some(new) = build(eg, &b) else { continue };
                let id = eg.find(id);
                if eg[new].data.ty != eg[id].data.ty {
                    debug_assert!(
                        false,
                        "rule produced {} for a class of {}",
                        eg[new].data.ty, eg[id].data.ty
                    );
                    continue;
                }
                if eg.union(id, new) {
                    changed.push(id);
                }
            }
        }
        changed
    }

    fn apply_one(
        &self,
        _: &mut EG,
        _: Id,
        _: &Subst,
        _: Option<&egg::PatternAst<ENode>>,
        _: Symbol,
    ) -> Vec<Id> {
        unreachable!("NodeRule applies whole matches")
    }
}

/// Adds a built expression, checking every new node's types; `None` if one is ill-typed.
fn build(eg: &mut EG, b: &Build) -> Option<Id> {
    match b {
        Build::Class(id) => Some(*id),
        Build::Const(t) => {
            let k = eg.analysis.intern(Arc::new(t.clone()));
            Some(eg.add(ENode {
                op: EOp::Const(k),
                args: vec![],
            }))
        }
        Build::Fold(op, kids) => {
            let kids: Vec<Id> = kids.iter().map(|&k| eg.find(k)).collect();
            // Several rules' applications fold the same constant (each sibling product
            // builds the one concatenated weight): evaluated once.
            let key = format!("{op:?} {kids:?}");
            let k = match eg.analysis.folds.get(&key) {
                Some(&k) => k,
                None => {
                    let vals: Vec<Arc<Tensor>> = kids
                        .iter()
                        .map(|&k| eg[k].data.value.clone())
                        .collect::<Option<_>>()?;
                    let tys: Vec<TensorType> =
                        kids.iter().map(|&k| eg[k].data.ty.clone()).collect();
                    let ty = infer(op, &tys).ok()?;
                    let refs: Vec<&Tensor> = vals.iter().map(|v| v.as_ref()).collect();
                    let t = crate::interp::eval(op, &refs, &ty).ok()?;
                    let k = eg.analysis.intern(Arc::new(t));
                    eg.analysis.folds.insert(key, k);
                    k
                }
            };
            Some(eg.add(ENode {
                op: EOp::Const(k),
                args: vec![],
            }))
        }
        Build::Node(op, kids) => {
            let ids = kids
                .iter()
                .map(|k| build(eg, k))
                .collect::<Option<Vec<Id>>>()?;
            let tys: Vec<TensorType> = ids.iter().map(|&i| eg[i].data.ty.clone()).collect();
            infer(op, &tys).ok()?;
            Some(eg.add(ENode::ir(op.clone(), ids)))
        }
    }
}

/// The simplification rule set: the exact rules, the recognizers when `recognize` is on,
/// and the inexact rules when `fast_math` is on.
pub fn simplification(fast_math: bool, recognize: bool) -> Vec<Rewrite<ENode, Facts>> {
    let mut rules = Vec::new();
    rules.extend(simplify::rules());
    rules.extend(layout::rules());
    if recognize {
        rules.extend(recognize::rules());
    }
    if fast_math {
        rules.extend(fast::rules());
    }
    rules
}

/// Every rule (for coverage checks): simplification, fast-math and fusion.
pub fn all() -> Vec<Rewrite<ENode, Facts>> {
    let mut rules = simplification(true, true);
    rules.extend(fuse::rules());
    rules
}
