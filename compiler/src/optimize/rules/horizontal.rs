//! Horizontal fusion: products that read the same input with constant weights (a layer's
//! Q, K and V projections, a gated MLP's gate and up) are also one product over the weights
//! concatenated at compile time, each original product a slice of its columns:
//! `x·Wq = (x·[Wq Wk Wv])[…, 0..n]`. The rule only adds that form; extraction takes it where
//! one kernel reads every slice (an attention kernel reading Q, K and V as views of the
//! one product's output counts that product once), and leaves the separate products
//! elsewhere (each slice's consumer would count the whole product).

use super::{Build, Ctx};
use crate::ir::Op;
use crate::optimize::lang::ENode;
use egg::Id;

/// The product `x·W` (`W` a constant matrix) as a column slice of the product of `x` with
/// its siblings' weights concatenated (siblings: the other products of `x` with constant
/// matrices of the same rows and dtype in the program, in weight-class order).
pub fn horizontal_products(c: &Ctx, class: Id, n: &ENode) -> Option<Build> {
    if n.ir_op()? != &Op::MatMul || c.users(class) == 0 {
        return None;
    }
    let (x, w) = (c.canon(n.args[0]), c.canon(n.args[1]));
    let weight = |w: Id| {
        let t = c.ty(w);
        (c.value(w).is_some() && t.rank() == 2).then(|| (t.shape[0], t.dtype))
    };
    let (k, dtype) = weight(w)?;
    if c.is_leaf(x) && c.value(x).is_some() {
        return None;
    }
    // Already offered: the class holds a slice of a product of `x`.
    let offered = c.nodes(class).iter().any(|e| {
        matches!(e.ir_op(), Some(Op::Slice { .. }))
            && c.nodes(e.args[0])
                .iter()
                .any(|m| m.ir_op() == Some(&Op::MatMul) && c.canon(m.args[0]) == x)
    });
    if offered {
        return None;
    }
    let mut siblings: Vec<Id> = Vec::new();
    for p in c.parents(x) {
        if c.users(p) == 0 {
            // Not in the program (a product this rule added, say).
            continue;
        }
        for m in c.nodes(p) {
            if m.ir_op() != Some(&Op::MatMul) || c.canon(m.args[0]) != x {
                continue;
            }
            let mw = c.canon(m.args[1]);
            if weight(mw) == Some((k, dtype)) && !siblings.contains(&mw) {
                siblings.push(mw);
            }
        }
    }
    if siblings.len() < 2 {
        return None;
    }
    siblings.sort();
    let mut off = 0;
    for &s in &siblings {
        if s == w {
            break;
        }
        off += c.ty(s).shape[1];
    }
    let product = Build::Node(
        Op::MatMul,
        vec![
            Build::Class(x),
            Build::Fold(Op::Concat { axis: 1 }, siblings.clone()),
        ],
    );
    let out = &c.ty(class).shape;
    let r = out.len();
    let mut starts = vec![0; r];
    starts[r - 1] = off;
    Some(Build::Node(
        Op::Slice {
            starts,
            steps: vec![1; r],
            lens: out.clone(),
        },
        vec![product],
    ))
}
