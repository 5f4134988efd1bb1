//! Fusion as rewrites: a kernel absorbs the kernel (or op) that produces one of its inputs,
//! when the merged group still lowers to one kernel and the producer has no other user (so
//! nothing is computed twice). The unfused forms stay in the e-graph; extraction decides.
//!
//! A producer with several users is fused into them (recomputed in each) only when it is
//! elementwise and that moves fewer bytes: each user then reads the producer's inputs
//! instead of the producer writing its result once and every user reading it
//! ([`recompute_pays`]).
//!
//! A fused kernel is an [`Op::Fused`] e-node whose body is a small graph over the kernel's
//! inputs. What one kernel can hold ([`classify`]):
//! - elementwise: elementwise ops and index maps (broadcast, transpose, reshape, slice);
//! - row: reductions, softmax and layernorm over the same trailing dims of one iteration
//!   space, with elementwise producers and consumers (softmax with scale and mask, a
//!   decomposed layernorm, ... each one pass over a row);
//! - gemm / conv: one matmul (operands may be views: a transpose folded into the operand)
//!   or one convolution, with an elementwise epilogue (bias, activation, residual);
//! - attention: `matmul → scale/mask → softmax → matmul`, built by [`fuse_attention`].

use super::{rule, Build, Ctx};
use crate::ir::{
    broadcast_shapes, FusedKernel, Graph, KernelKind, Node, NodeId, Op, TensorType, UnaryOp,
};
use crate::optimize::analysis::Facts;
use crate::optimize::lang::ENode;
use egg::{Id, Rewrite};
use std::sync::Arc;

/// Largest body a fused kernel may grow to (ops), which bounds the e-graph.
pub const MAX_BODY_OPS: usize = 48;

/// The fusion rules.
pub fn rules() -> Vec<Rewrite<ENode, Facts>> {
    vec![
        rule("fuse-producer", fuse_producer),
        rule("fuse-producer-strided", fuse_producer_strided),
        rule("fuse-attention", fuse_attention),
        rule(
            "horizontal-products",
            super::horizontal::horizontal_products,
        ),
    ]
}

/// Fusion runs as its own saturation after simplification, on the extracted program, so
/// that user counts describe the program that will run (a value the recognizers made dead
/// no longer counts as a user).
pub const PHASE: &str = "fuse";

fn is_elementwise(op: &Op) -> bool {
    matches!(op, Op::Unary(_) | Op::Binary(_) | Op::Where | Op::Cast(_))
}

fn is_layout(op: &Op) -> bool {
    matches!(
        op,
        Op::Broadcast(_) | Op::Transpose(_) | Op::Reshape(_) | Op::Slice { .. }
    )
}

fn is_row_op(op: &Op) -> bool {
    matches!(
        op,
        Op::Reduce { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::LayerNorm { .. }
    )
}

/// Ops that can live in a fused body. A concatenation only in elementwise kernels and in
/// attention's operands (each element picks one input's: rotary embedding's rotate-half).
pub fn fusible(op: &Op) -> bool {
    is_elementwise(op)
        || is_layout(op)
        || is_row_op(op)
        || matches!(op, Op::MatMul | Op::Conv(_) | Op::Concat { .. })
}

/// The body graph and input classes of a fusible node (an op becomes a one-op body).
fn body_of(c: &Ctx, n: &ENode) -> Option<(Graph, Vec<Id>)> {
    let args: Vec<(Id, TensorType)> = n
        .args
        .iter()
        .map(|&a| (c.canon(a), c.ty(a).clone()))
        .collect();
    op_body(n.ir_op()?, &args)
}

/// The body of `op` applied to the given (id, type) arguments: a fused kernel's own body, or
/// a one-op body for a fusible op. Repeated arguments become one kernel input.
pub fn op_body(op: &Op, args: &[(Id, TensorType)]) -> Option<(Graph, Vec<Id>)> {
    if let Op::Fused(k) = op {
        return Some((k.body.clone(), args.iter().map(|a| a.0).collect()));
    }
    if !fusible(op) {
        return None;
    }
    let mut children: Vec<Id> = Vec::new();
    let mut g = Graph::default();
    let mut ins = Vec::new();
    for (a, ty) in args {
        let k = match children.iter().position(|x| x == a) {
            Some(k) => k,
            None => {
                children.push(*a);
                g.inputs.push(g.nodes.len());
                g.nodes.push(Node {
                    name: String::new(),
                    op: Op::Input,
                    inputs: vec![],
                    ty: ty.clone(),
                });
                children.len() - 1
            }
        };
        ins.push(g.inputs[k]);
    }
    let tys: Vec<TensorType> = ins.iter().map(|&i| g.nodes[i].ty.clone()).collect();
    let ty = crate::ir::infer(op, &tys).ok()?;
    g.nodes.push(Node {
        name: String::new(),
        op: op.clone(),
        inputs: ins,
        ty,
    });
    g.outputs.push((String::new(), g.nodes.len() - 1));
    Some((canonical(g), children))
}

/// Names inputs `in0..` and other nodes `t0..` so equal bodies hash equal.
fn canonical(mut g: Graph) -> Graph {
    let mut k = 0;
    for (i, node) in g.nodes.iter_mut().enumerate() {
        node.name = match g.inputs.iter().position(|&x| x == i) {
            Some(j) => format!("in{j}"),
            None => {
                k += 1;
                format!("t{}", k - 1)
            }
        };
    }
    for o in &mut g.outputs {
        o.0 = "out".into();
    }
    g
}

/// Replaces input `i` of the consumer body with the producer body.
pub fn inline(cons: &(Graph, Vec<Id>), i: usize, prod: &(Graph, Vec<Id>)) -> (Graph, Vec<Id>) {
    let (cg, cc) = cons;
    let (pg, pc) = prod;
    let mut children: Vec<Id> = cc
        .iter()
        .enumerate()
        .filter(|&(j, _)| j != i)
        .map(|(_, &x)| x)
        .collect();
    for &x in pc {
        if !children.contains(&x) {
            children.push(x);
        }
    }
    let mut g = Graph::default();
    let mut input_node: Vec<NodeId> = Vec::new();
    for &x in &children {
        let ty = match cc.iter().position(|&y| y == x) {
            Some(j) => cg.nodes[cg.inputs[j]].ty.clone(),
            None => pg.nodes[pg.inputs[pc.iter().position(|&y| y == x).expect("child")]]
                .ty
                .clone(),
        };
        input_node.push(g.nodes.len());
        g.inputs.push(g.nodes.len());
        g.nodes.push(Node {
            name: String::new(),
            op: Op::Input,
            inputs: vec![],
            ty,
        });
    }
    let input_of = |x: Id| input_node[children.iter().position(|&y| y == x).expect("child")];
    // Copy a body, mapping its inputs through `map_input`; returns its node-id map.
    let copy = |body: &Graph, g: &mut Graph, map_input: &dyn Fn(usize) -> NodeId| -> Vec<NodeId> {
        let mut map = vec![0; body.nodes.len()];
        for (id, node) in body.nodes.iter().enumerate() {
            map[id] = match body.inputs.iter().position(|&x| x == id) {
                Some(j) => map_input(j),
                None => {
                    g.nodes.push(Node {
                        name: String::new(),
                        op: node.op.clone(),
                        inputs: node.inputs.iter().map(|&a| map[a]).collect(),
                        ty: node.ty.clone(),
                    });
                    g.nodes.len() - 1
                }
            };
        }
        map
    };
    let pmap = copy(pg, &mut g, &|j| input_of(pc[j]));
    let p_out = pmap[pg.outputs[0].1];
    let cmap = copy(cg, &mut g, &|j| {
        if j == i {
            p_out
        } else {
            input_of(cc[j])
        }
    });
    g.outputs.push((String::new(), cmap[cg.outputs[0].1]));
    (canonical(g), children)
}

/// The kernel kind a body lowers to, or `None` if it is not one kernel.
pub fn classify(g: &Graph) -> Option<KernelKind> {
    let ops: Vec<NodeId> = (0..g.nodes.len())
        .filter(|&i| g.nodes[i].op != Op::Input)
        .collect();
    if ops.is_empty() || ops.len() > MAX_BODY_OPS || !ops.iter().all(|&i| fusible(&g.nodes[i].op)) {
        return None;
    }
    let of = |pred: fn(&Op) -> bool| -> Vec<NodeId> {
        ops.iter()
            .copied()
            .filter(|&i| pred(&g.nodes[i].op))
            .collect()
    };
    let mms = of(|op| op == &Op::MatMul);
    let convs = of(|op| matches!(op, Op::Conv(_)));
    let rows = of(is_row_op);
    let concats = of(|op| matches!(op, Op::Concat { .. }));
    match (mms.len(), convs.len(), rows.len()) {
        (0, 0, 0) => Some(KernelKind::Elementwise),
        // Concatenations: elementwise kernels and attention operands only.
        (0, 0, _) | (1, 0, 0) | (0, 1, 0) if !concats.is_empty() => None,
        (0, 0, _) => row_kind(g, &rows),
        (1, 0, 0) => operands_are_views(g, mms[0]).then_some(KernelKind::Gemm),
        (0, 1, 0) => conv_ok(g, convs[0]).then_some(KernelKind::Conv),
        (2, 0, 1) => attention_ok(g, &mms, rows[0], &concats).then_some(KernelKind::Attention),
        _ => None,
    }
}

/// True when `id` is a kernel input seen through index maps only.
fn is_view_of_input(g: &Graph, mut id: NodeId) -> bool {
    loop {
        if g.inputs.contains(&id) {
            return true;
        }
        if !is_layout(&g.nodes[id].op) {
            return false;
        }
        id = g.nodes[id].inputs[0];
    }
}

fn operands_are_views(g: &Graph, mm: NodeId) -> bool {
    g.nodes[mm].inputs.iter().all(|&a| is_view_of_input(g, a))
}

/// A convolution reading kernel inputs directly, followed by an elementwise epilogue over
/// its output.
fn conv_ok(g: &Graph, conv: NodeId) -> bool {
    let out = &g.nodes[conv].ty.shape;
    g.nodes[conv].inputs.iter().all(|a| g.inputs.contains(a))
        && g.nodes
            .iter()
            .all(|n| n.op == Op::Input || !is_layout(&n.op))
        && g.nodes[g.outputs[0].1].ty.shape == *out
}

/// `Where(IsNaN(s), fill, s)` of a one-element `fill`: the guard exporters put after
/// attention's softmax, so a fully masked row (all scores -inf, a NaN softmax row) gives
/// `fill` instead of NaN. Returns `(s, fill)`.
pub fn nan_guard(g: &Graph, id: NodeId) -> Option<(NodeId, NodeId)> {
    let n = &g.nodes[id];
    if n.op != Op::Where {
        return None;
    }
    let (c, fill, s) = (n.inputs[0], n.inputs[1], n.inputs[2]);
    let cn = &g.nodes[c];
    let guard = cn.op == Op::Unary(UnaryOp::IsNaN)
        && cn.inputs[0] == s
        && g.nodes[fill].ty.numel() == 1
        && n.ty.shape == g.nodes[s].ty.shape;
    guard.then_some((s, fill))
}

/// Per node of a body (in order): whether it is an elementwise function of kernel inputs
/// seen through index maps (a product operand the kernel computes as it loads it).
fn prologues(g: &Graph) -> Vec<bool> {
    let mut ok = vec![false; g.nodes.len()];
    for (id, n) in g.nodes.iter().enumerate() {
        ok[id] = g.inputs.contains(&id)
            || matches!(n.op, Op::Constant(_))
            || (is_layout(&n.op) || is_elementwise(&n.op) || matches!(n.op, Op::Concat { .. }))
                && n.inputs.iter().all(|&a| ok[a]);
    }
    ok
}

/// `mm1 → elementwise → softmax(last axis) [→ NaN guard] → mm2`, each operand an
/// elementwise function of views of inputs (a query's scale or rotary embedding, keys and
/// values expanded for grouped-query attention: computed as the kernel loads them).
/// Concatenations (`concats`) only in the operands.
fn attention_ok(g: &Graph, mms: &[NodeId], softmax: NodeId, concats: &[NodeId]) -> bool {
    let (mm1, mm2) = (mms[0], mms[1]);
    let Op::Softmax { axis } = g.nodes[softmax].op else {
        return false;
    };
    let p = g.nodes[mm2].inputs[0];
    let guarded = nan_guard(g, p).is_some_and(|(s, _)| s == softmax);
    if axis + 1 != g.nodes[softmax].ty.rank() || !(p == softmax || guarded) {
        return false;
    }
    // The probabilities feed the second product only.
    let guard_nodes = [p, g.nodes[p].inputs.first().copied().unwrap_or(p)];
    let feeds_only = |x: NodeId, allowed: &[NodeId]| {
        g.nodes
            .iter()
            .enumerate()
            .all(|(i, n)| !n.inputs.contains(&x) || allowed.contains(&i))
    };
    if guarded && !(feeds_only(softmax, &guard_nodes) && feeds_only(p, &[mm2])) {
        return false;
    }
    // From the softmax back to mm1 through elementwise ops only.
    let mut cur = g.nodes[softmax].inputs[0];
    let mut seen_mm1 = false;
    for _ in 0..MAX_BODY_OPS {
        if cur == mm1 {
            seen_mm1 = true;
            break;
        }
        let n = &g.nodes[cur];
        if !is_elementwise(&n.op) {
            return false;
        }
        // Follow the operand that carries the scores (the one of the score shape).
        match n
            .inputs
            .iter()
            .find(|&&a| g.nodes[a].ty.shape == n.ty.shape && !g.inputs.contains(&a))
        {
            Some(&a) => cur = a,
            None => return false,
        }
    }
    let pro = prologues(g);
    let operands = [
        g.nodes[mm1].inputs[0],
        g.nodes[mm1].inputs[1],
        g.nodes[mm2].inputs[1],
    ];
    seen_mm1 && operands.iter().chain(concats).all(|&x| pro[x])
}

/// Row kernel: every row op works on the trailing dims `axis..` of one space.
fn row_kind(g: &Graph, rows: &[NodeId]) -> Option<KernelKind> {
    let out = &g.nodes[g.outputs.first()?.1].ty.shape;
    let fits = |s: &[usize], into: &[usize]| broadcast_shapes(s, into).is_some_and(|b| b == into);
    let space = g.nodes[g.nodes[rows[0]].inputs[0]].ty.shape.clone();
    let rank = space.len();
    let mut axis = None;
    for &r in rows {
        let n = &g.nodes[r];
        if g.nodes[n.inputs[0]].ty.shape != space {
            return None;
        }
        let a = match &n.op {
            Op::Reduce { axes, .. } => {
                let a = *axes.first()?;
                (axes.iter().copied().eq(a..rank)).then_some(a)?
            }
            Op::Softmax { axis } | Op::LogSoftmax { axis } => {
                (*axis + 1 == rank).then_some(*axis)?
            }
            Op::LayerNorm { axis, .. } => *axis,
            _ => return None,
        };
        if *axis.get_or_insert(a) != a {
            return None;
        }
    }
    let axis = axis?;
    let reduced: Vec<usize> = space[..axis].to_vec();
    for (id, n) in g.nodes.iter().enumerate() {
        if n.op == Op::Input {
            continue;
        }
        let s = &n.ty.shape;
        let row_result = matches!(
            n.op,
            Op::Reduce {
                keepdims: false,
                ..
            }
        ) && s == &reduced;
        if !(fits(s, &space) || row_result && g.outputs[0].1 == id) {
            return None;
        }
        // Index maps only on the load side: views of kernel inputs.
        if is_layout(&n.op) && !is_view_of_input(g, id) {
            return None;
        }
    }
    let out_ok = out == &space || fits(out, &space) || out == &reduced;
    out_ok.then_some(KernelKind::Row { axis })
}

/// Absorbs a single-user producer of one of the node's inputs into one kernel: the largest
/// fusible form of the producer that makes one kernel with the consumer (a smaller form
/// may fit where a larger one does not: a softmax absorbs a mask `add` but not the product
/// epilogue that the `add` also belongs to).
pub fn fuse_producer(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    let cons = body_of(c, n)?;
    let (mut body, kind) = absorb_one(c, &cons)?;
    // An attention kernel takes its operands' whole prologues at once (every absorbed
    // producer removes a kernel): one new form, not one per subset of its operands' chains
    // (Q, K and V chains of a rotary embedding would give hundreds).
    if kind == KernelKind::Attention {
        for _ in 0..MAX_BODY_OPS {
            match absorb_one(c, &body) {
                Some((next, KernelKind::Attention)) => body = next,
                _ => break,
            }
        }
    }
    Some(kernel(kind, body.0, body.1))
}

/// The consumer body with the largest fusible form of one of its producers inlined (the
/// first input that has one), and the merged kernel's kind.
#[allow(clippy::type_complexity)]
fn absorb_one(c: &Ctx, cons: &(Graph, Vec<Id>)) -> Option<((Graph, Vec<Id>), KernelKind)> {
    let attention = classify(&cons.0) == Some(KernelKind::Attention);
    for (i, &p) in cons.1.iter().enumerate() {
        let users = c.users(p);
        // An attention kernel holding every user of the producer (a rotary embedding reads
        // the query three times) absorbs it: that computes nothing twice. (Elsewhere the
        // extra forms cost more than they give: a convolution absorbed into its SiLU's two
        // reads made EfficientNet 30% slower on the CPU.)
        let all_inside = attention && users == uses_of_input(&cons.0, i);
        for prod in producer_forms(c, p) {
            if users != 1 && !all_inside && !recompute_pays(c, p, &prod, users) {
                continue;
            }
            let merged = inline(cons, i, &prod);
            let Some(kind) = classify(&merged.0) else {
                continue;
            };
            return Some((merged, kind));
        }
    }
    None
}

/// How many operand slots of a body's nodes read its input `i`.
fn uses_of_input(g: &Graph, i: usize) -> usize {
    let x = g.inputs[i];
    g.nodes
        .iter()
        .map(|n| n.inputs.iter().filter(|&&a| a == x).count())
        .sum()
}

/// The fusible forms of class `p` (each node's body), largest first.
fn producer_forms(c: &Ctx, p: Id) -> Vec<(Graph, Vec<Id>)> {
    let mut forms: Vec<(Graph, Vec<Id>)> =
        c.nodes(p).iter().filter_map(|pn| body_of(c, pn)).collect();
    forms.sort_by_key(|b| std::cmp::Reverse(b.0.nodes.len()));
    forms
}

/// A fused kernel node of `kind` computing `body` over the classes `children`.
fn kernel(kind: KernelKind, body: Graph, children: Vec<Id>) -> Build {
    let op = Op::Fused(Arc::new(FusedKernel { kind, body }));
    Build::Node(op, children.into_iter().map(Build::Class).collect())
}

/// [`fuse_producer`] where the merged kernel holds a matrix product: the largest producer
/// form that leaves every product operand a strided view of a kernel input (see
/// [`gathered_operands`]). The largest form alone would have a product gather heads merged
/// after an attention kernel (a transpose then a reshape) and hide the form where the
/// attention stores them merged and the product reads a plain matrix; extraction picks
/// between the two by cost. Where the largest form is already strided this adds nothing.
pub fn fuse_producer_strided(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    // Cheap tests first (this runs on every node of every iteration): a gathered operand
    // needs a product and a reshape somewhere in the merged body.
    let holds = |e: &ENode, op: &dyn Fn(&Op) -> bool| match e.ir_op() {
        Some(Op::Fused(k)) => k.body.nodes.iter().any(|x| op(&x.op)),
        Some(o) => op(o),
        None => false,
    };
    let is_product = |o: &Op| o == &Op::MatMul;
    let is_reshape = |o: &Op| matches!(o, Op::Reshape(_));
    let (cons_product, cons_reshape) = (holds(n, &is_product), holds(n, &is_reshape));
    let cons = body_of(c, n)?;
    let has_product = |g: &Graph| g.nodes.iter().any(|x| x.op == Op::MatMul);
    'inputs: for (i, &p) in cons.1.iter().enumerate() {
        let producers = c.nodes(p);
        let product = cons_product || producers.iter().any(|e| holds(e, &is_product));
        let reshape = cons_reshape || producers.iter().any(|e| holds(e, &is_reshape));
        if !product || !reshape || !after_attention(c, p, 4) {
            continue;
        }
        let users = c.users(p);
        // Past the form fuse_producer takes (the largest that classifies), which gathers.
        let mut past_largest = false;
        for prod in producer_forms(c, p) {
            if !cons_product && !has_product(&prod.0) {
                continue;
            }
            if users != 1 && !recompute_pays(c, p, &prod, users) {
                continue;
            }
            let (body, children) = inline(&cons, i, &prod);
            let Some(kind) = classify(&body) else {
                continue;
            };
            // Attention reads its operands through index maps in every form.
            if kind != KernelKind::Gemm {
                break;
            }
            let gathers = gathered_operands(&body).next().is_some();
            if !past_largest {
                if !gathers {
                    // fuse_producer adds this one already.
                    continue 'inputs;
                }
                past_largest = true;
            } else if !gathers {
                return Some(kernel(kind, body, children));
            }
        }
    }
    None
}

/// Whether class `p` is an attention kernel's output seen through at most `depth` layout
/// ops and products (a product reading it, whose epilogue is being grown): the one place
/// where a gathered product operand has a producer that can take the layout change as its
/// store instead. Keeps the rule from offering strided forms where nothing would take them
/// (they would only grow the e-graph).
fn after_attention(c: &Ctx, p: Id, depth: usize) -> bool {
    // Breadth-first over classes, each visited once.
    let mut seen = std::collections::HashSet::new();
    let mut frontier = vec![c.canon(p)];
    for level in 0..=depth {
        let mut next = Vec::new();
        for class in frontier {
            if !seen.insert(class) {
                continue;
            }
            for e in c.nodes(class) {
                match e.ir_op() {
                    Some(Op::Fused(k)) if k.kind == KernelKind::Attention => return true,
                    Some(Op::Fused(k)) if k.kind != KernelKind::Gemm => {}
                    Some(op)
                        if level < depth
                            && (is_layout(op) || matches!(op, Op::MatMul | Op::Fused(_))) =>
                    {
                        next.extend(e.args.iter().map(|&a| c.canon(a)));
                    }
                    _ => {}
                }
            }
        }
        frontier = next;
    }
    false
}

/// The operands of a body's matrix products that are not strided views of its inputs:
/// reached from an input through transposes and reshapes, where a reshape merges or splits
/// dims the transposes left non-contiguous. Such an operand must be gathered (copied out
/// on the CPU; on a GPU it keeps the product from being one library call).
pub fn gathered_operands(g: &Graph) -> impl Iterator<Item = NodeId> + '_ {
    g.nodes
        .iter()
        .filter(|n| n.op == Op::MatMul)
        .flat_map(|n| n.inputs.iter().copied())
        .filter(|&x| g.strided_view(x).is_none())
}

/// Whether recomputing an elementwise producer in each of its `users` moves fewer bytes
/// than computing it once: `users × in ≤ in + out + users × out`. Never for graph outputs
/// (written anyway), for non-elementwise producers (recomputing a matmul or a reduction is
/// real work), or for producers that read other kernels' results. The fusion phase repeats,
/// so a chain that became one kernel over inputs is considered again.
pub fn recompute_pays(c: &Ctx, p: Id, prod: &(Graph, Vec<Id>), users: usize) -> bool {
    if c.is_output(p) || classify(&prod.0) != Some(KernelKind::Elementwise) {
        return false;
    }
    // Only producers that read graph inputs or constants: recomputing one that reads other
    // kernels' results would let each user absorb (and so repeat) that whole chain too.
    if !prod.1.iter().all(|&a| c.is_leaf(a)) {
        return false;
    }
    let ins: usize = prod.1.iter().map(|&a| c.ty(a).bytes()).sum();
    let out = c.ty(p).bytes();
    users * ins <= ins + out + users * out
}

/// `matmul(softmax(… matmul(q, k) …), v)`, or with the exporters' NaN guard between the
/// softmax and the second product (`Where(IsNaN(p), 0, p)`): the second matmul absorbs the
/// guard, the softmax row kernel and the first matmul in one step, giving an attention
/// kernel.
pub fn fuse_attention(c: &Ctx, _class: Id, n: &ENode) -> Option<Build> {
    if n.ir_op()? != &Op::MatMul {
        return None;
    }
    let mm2 = body_of(c, n)?;
    let p = mm2.1[0];
    if c.users(p) != 1 {
        return None;
    }
    // The second product over the probabilities' class: itself, or through the guard.
    let mut heads = vec![(mm2.clone(), p)];
    heads.extend(guarded(c, &mm2, p));
    for (head, probs) in heads {
        let at = head.1.iter().position(|&x| x == probs)?;
        for pn in c.nodes(probs) {
            let Some(row) = body_of(c, pn) else { continue };
            let merged = inline(&head, at, &row);
            // The scores input (produced by a single-user matmul) among the merged inputs.
            for (i, &s) in merged.1.iter().enumerate() {
                if c.users(s) != 1 {
                    continue;
                }
                let Some(mm1) = c
                    .find(s, |op| op == &Op::MatMul)
                    .and_then(|m| body_of(c, m))
                else {
                    continue;
                };
                let (body, children) = inline(&merged, i, &mm1);
                if classify(&body) == Some(KernelKind::Attention) && zero_guard(c, &body, &children)
                {
                    return Some(kernel(KernelKind::Attention, body, children));
                }
            }
        }
    }
    None
}

/// The second product `mm2` with the NaN guard over its first operand (class `p`) inlined:
/// `matmul(Where(IsNaN(s), 0, s), v)` over the class `s` (used by the guard only), and `s`.
fn guarded(c: &Ctx, mm2: &(Graph, Vec<Id>), p: Id) -> Option<((Graph, Vec<Id>), Id)> {
    for gn in c.nodes(p) {
        if gn.ir_op() != Some(&Op::Where) {
            continue;
        }
        let (cond, fill, s) = (c.canon(gn.args[0]), gn.args[1], c.canon(gn.args[2]));
        let is_nan = c
            .nodes(cond)
            .iter()
            .find(|x| x.ir_op() == Some(&Op::Unary(UnaryOp::IsNaN)) && c.canon(x.args[0]) == s);
        let Some(is_nan) = is_nan else { continue };
        if !c.is_const(fill, 0.0) || c.users(cond) != 1 || c.users(s) != 2 {
            continue;
        }
        let with_where = inline(mm2, 0, &body_of(c, gn)?);
        let k = with_where.1.iter().position(|&x| x == cond)?;
        let merged = inline(&with_where, k, &body_of(c, is_nan)?);
        return Some((merged, s));
    }
    None
}

/// Whether an attention body's NaN guard, if it has one, fills with zero (the exporters'
/// guard; attention zeroes a row whose softmax is NaN).
fn zero_guard(c: &Ctx, body: &Graph, children: &[Id]) -> bool {
    let mm2 = (0..body.nodes.len())
        .rev()
        .find(|&i| body.nodes[i].op == Op::MatMul);
    let Some((_, fill)) = mm2.and_then(|m| nan_guard(body, body.nodes[m].inputs[0])) else {
        return true;
    };
    body.inputs
        .iter()
        .position(|&i| i == fill)
        .is_some_and(|k| c.is_const(children[k], 0.0))
}
