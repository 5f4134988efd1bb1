//! The e-class analysis: every class knows its tensor type and, when it is a known constant,
//! its value. Constant folding happens here: a node whose children are all constants is
//! evaluated by the reference interpreter, and its class gains a constant leaf.

use super::lang::{ENode, EOp};
use crate::ir::{infer, Tensor, TensorType};
use egg::{Analysis, DidMerge, EGraph, Id};
use std::collections::HashMap;
use std::sync::Arc;

pub use super::rules::fold::FOLD_LIMIT;

/// What the analysis knows about an e-class.
#[derive(Clone, Debug)]
pub struct Meta {
    /// The tensor type every node of the class produces.
    pub ty: TensorType,
    /// The value, when the class is a known constant.
    pub value: Option<Arc<Tensor>>,
}

/// The analysis state: the constant table and the graph inputs' types.
#[derive(Debug, Default)]
pub struct Facts {
    /// Constants by leaf index.
    pub consts: Vec<Arc<Tensor>>,
    index: HashMap<Arc<Tensor>, u32>,
    /// Graph input types by leaf index.
    pub inputs: Vec<TensorType>,
    /// How many nodes were folded to constants.
    pub folded: usize,
    /// Users (consumer nodes plus graph outputs) of each class of the input program.
    pub users: HashMap<Id, usize>,
    /// Classes that are graph outputs (always written to memory).
    pub outputs: Vec<Id>,
    /// Constants rules folded ([`super::rules::Build::Fold`]), by op and argument classes.
    pub folds: HashMap<String, u32>,
}

impl Facts {
    /// Facts for a graph with these input types and no constants yet.
    pub fn new(inputs: Vec<TensorType>) -> Self {
        Facts {
            inputs,
            ..Default::default()
        }
    }

    /// The leaf index of a constant, adding it if new (identical constants share an index).
    pub fn intern(&mut self, t: Arc<Tensor>) -> u32 {
        if let Some(&k) = self.index.get(&t) {
            return k;
        }
        let k = self.consts.len() as u32;
        self.consts.push(t.clone());
        self.index.insert(t, k);
        k
    }
}

/// The e-graph type used by the optimizer.
pub type EG = EGraph<ENode, Facts>;

impl Analysis<ENode> for Facts {
    type Data = Meta;

    fn make(egraph: &mut EG, enode: &ENode, _id: Id) -> Meta {
        match &enode.op {
            EOp::Const(k) => {
                let t = egraph.analysis.consts[*k as usize].clone();
                Meta {
                    ty: t.ty(),
                    value: Some(t),
                }
            }
            EOp::Input(k) => Meta {
                ty: egraph.analysis.inputs[*k as usize].clone(),
                value: None,
            },
            EOp::Ir(op) => {
                let tys: Vec<TensorType> = enode
                    .args
                    .iter()
                    .map(|&a| egraph[a].data.ty.clone())
                    .collect();
                let ty = infer(op, &tys).expect("rules only add well-typed nodes");
                let vals: Option<Vec<Arc<Tensor>>> = enode
                    .args
                    .iter()
                    .map(|&a| egraph[a].data.value.clone())
                    .collect();
                let value = vals.and_then(|vals| super::rules::fold::fold(op, &vals, &ty));
                Meta { ty, value }
            }
        }
    }

    fn merge(&mut self, a: &mut Meta, b: Meta) -> DidMerge {
        debug_assert_eq!(a.ty, b.ty, "merged e-classes of different types");
        match (&a.value, b.value) {
            (None, Some(v)) => {
                a.value = Some(v);
                DidMerge(true, false)
            }
            (Some(_), None) => DidMerge(false, true),
            _ => DidMerge(false, false),
        }
    }

    fn modify(egraph: &mut EG, id: Id) {
        let Some(value) = egraph[id].data.value.clone() else {
            return;
        };
        if egraph[id]
            .nodes
            .iter()
            .any(|n| matches!(n.op, EOp::Const(_)))
        {
            return;
        }
        let k = egraph.analysis.intern(value);
        egraph.analysis.folded += 1;
        let leaf = egraph.add(ENode {
            op: EOp::Const(k),
            args: vec![],
        });
        egraph.union(id, leaf);
    }
}
