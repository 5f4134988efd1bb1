//! The e-graph's language: IR ops over e-class children, with constants and graph inputs
//! as leaves that index side tables (so e-nodes stay small and cheap to hash and compare).

use crate::ir::Op;
use egg::{Id, Language};
use std::fmt;

/// An e-node's operator.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum EOp {
    /// Constant number `k` in the analysis' constant table.
    Const(u32),
    /// Graph input number `k`.
    Input(u32),
    /// Any other IR op (never `Op::Input` or `Op::Constant`).
    Ir(Op),
}

/// An e-node: an operator and its child e-classes.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ENode {
    /// The operator.
    pub op: EOp,
    /// Child e-classes, in the op's input order.
    pub args: Vec<Id>,
}

impl ENode {
    /// An IR op applied to children.
    pub fn ir(op: Op, args: Vec<Id>) -> Self {
        ENode {
            op: EOp::Ir(op),
            args,
        }
    }

    /// The IR op, if this is not a leaf.
    pub fn ir_op(&self) -> Option<&Op> {
        match &self.op {
            EOp::Ir(op) => Some(op),
            _ => None,
        }
    }
}

impl Language for ENode {
    type Discriminant = EOp;

    fn discriminant(&self) -> EOp {
        self.op.clone()
    }

    fn matches(&self, other: &Self) -> bool {
        self.op == other.op && self.args.len() == other.args.len()
    }

    fn children(&self) -> &[Id] {
        &self.args
    }

    fn children_mut(&mut self) -> &mut [Id] {
        &mut self.args
    }
}

impl fmt::Display for ENode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.op {
            EOp::Const(k) => write!(f, "const#{k}"),
            EOp::Input(k) => write!(f, "input#{k}"),
            EOp::Ir(op) => write!(f, "{}", op.name()),
        }
    }
}
