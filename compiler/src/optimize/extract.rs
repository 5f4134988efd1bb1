//! Extraction: the cheapest program in the saturated e-graph, rebuilt as an IR graph.
//!
//! Cost of a node = bytes it reads + bytes it writes + [`LAUNCH_BYTES`] per kernel launch;
//! constants and inputs cost nothing (they are already in memory). A product kernel whose
//! operand is not a strided view of its input (a transpose followed by a reshape that
//! merges the transposed dims) also pays that operand's bytes twice more: the CPU backend
//! copies it out before its library product, and on a GPU it keeps the product from being
//! one cuBLASLt call. Where the layout change can go elsewhere at no cost (an attention
//! kernel storing its output with heads merged), that form wins the tie.

use super::analysis::EG;
use super::lang::{ENode, EOp};
use super::rules::fuse::gathered_operands;
use crate::ir::{Graph, KernelKind, Node, NodeId, Op};
use egg::{CostFunction, Id};
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;

/// One kernel launch, in bytes-equivalent: ~5 µs of launch and synchronization overhead at
/// ~1 TB/s of effective bandwidth on a current GPU, ~1 µs at ~5 GB/s on one CPU core: both
/// about 5 KB. Chosen so that removing a launch is worth moving a few KB more.
pub const LAUNCH_BYTES: f64 = 5_000.0;

/// Bytes moved plus launches.
pub struct BytesAndLaunches<'a> {
    /// The e-graph, for class types.
    pub eg: &'a EG,
}

impl CostFunction<ENode> for BytesAndLaunches<'_> {
    type Cost = f64;

    fn cost<C: FnMut(Id) -> f64>(&mut self, enode: &ENode, mut costs: C) -> f64 {
        let own = match &enode.op {
            EOp::Const(_) | EOp::Input(_) => 0.0,
            // A reshape of a contiguous buffer is a view: no kernel, no bytes.
            EOp::Ir(Op::Reshape(_)) => 0.0,
            EOp::Ir(op) => {
                let reads: usize = enode.args.iter().map(|&a| self.eg[a].data.ty.bytes()).sum();
                let out = out_bytes(self.eg, op, enode);
                LAUNCH_BYTES + (reads + out + gathered_operand_bytes(op)) as f64
            }
        };
        enode.args.iter().fold(own, |acc, &a| acc + costs(a))
    }
}

/// Bytes of a product kernel's operands that are not strided views of its inputs, twice
/// (written out and read back).
fn gathered_operand_bytes(op: &Op) -> usize {
    let Op::Fused(k) = op else { return 0 };
    if k.kind != KernelKind::Gemm {
        return 0;
    }
    let g = &k.body;
    gathered_operands(g)
        .map(|x| 2 * g.nodes[x].ty.bytes())
        .sum()
}

fn out_bytes(eg: &EG, op: &Op, enode: &ENode) -> usize {
    let tys: Vec<_> = enode.args.iter().map(|&a| eg[a].data.ty.clone()).collect();
    crate::ir::infer(op, &tys).map(|t| t.bytes()).unwrap_or(0)
}

/// The cheapest node of every class under [`BytesAndLaunches`] (a node's cost is its own
/// plus its children's). A worklist recomputes a class only when one of its children got
/// cheaper: egg's `Extractor` sweeps every class until a sweep changes nothing, which takes
/// about as many sweeps as the graph is deep (quadratic on a stack of layers). The first
/// visit goes over the classes in egg's order and, as egg does, a class's choice changes only
/// when a node is strictly cheaper; ties go to the first node of the class.
pub struct Best {
    choice: HashMap<Id, (f64, usize)>,
}

impl Best {
    /// The cheapest nodes of `eg`'s classes.
    pub fn new(eg: &EG) -> Best {
        let mut cf = BytesAndLaunches { eg };
        let mut choice: HashMap<Id, (f64, usize)> = HashMap::new();
        let mut queue: VecDeque<Id> = eg.classes().map(|c| c.id).collect();
        let mut queued: HashSet<Id> = queue.iter().copied().collect();
        while let Some(id) = queue.pop_front() {
            queued.remove(&id);
            let mut best: Option<(f64, usize)> = None;
            for (i, node) in eg[id].nodes.iter().enumerate() {
                if !node.args.iter().all(|&a| choice.contains_key(&eg.find(a))) {
                    continue;
                }
                let c = cf.cost(node, |a| choice[&eg.find(a)].0);
                if best.is_none_or(|(b, _)| c < b) {
                    best = Some((c, i));
                }
            }
            let Some(new) = best else { continue };
            if choice.get(&id).is_some_and(|old| new.0 >= old.0) {
                continue;
            }
            choice.insert(id, new);
            for p in eg[id].parents() {
                let p = eg.find(p);
                if queued.insert(p) {
                    queue.push_back(p);
                }
            }
        }
        Best { choice }
    }

    /// The cheapest node of `class`.
    pub fn node<'a>(&self, eg: &'a EG, class: Id) -> &'a ENode {
        let class = eg.find(class);
        let (_, i) = self.choice[&class];
        &eg[class].nodes[i]
    }
}

/// Rebuilds a graph from the best node of each class reachable from `roots`.
///
/// `names` gives a preferred node name per class (from the original graph); other classes get
/// generated names. Inputs keep their names and order.
pub fn rebuild(
    eg: &EG,
    input_names: &[String],
    roots: &[(String, Id)],
    names: &HashMap<Id, String>,
) -> Graph {
    let extractor = Best::new(eg);
    let mut g = Graph::default();
    let mut memo: HashMap<Id, NodeId> = HashMap::new();
    let mut used: HashSet<String> = input_names.iter().cloned().collect();
    // Inputs first, all of them, in order.
    for (k, name) in input_names.iter().enumerate() {
        g.nodes.push(Node {
            name: name.clone(),
            op: Op::Input,
            inputs: vec![],
            ty: eg.analysis.inputs[k].clone(),
        });
        g.inputs.push(k);
    }
    let mut counters: HashMap<String, usize> = HashMap::new();
    for (out_name, root) in roots {
        let id = emit(
            eg,
            &extractor,
            *root,
            &mut g,
            &mut memo,
            names,
            &mut used,
            &mut counters,
        );
        g.outputs.push((out_name.clone(), id));
    }
    g
}

#[allow(clippy::too_many_arguments)]
fn emit(
    eg: &EG,
    ex: &Best,
    class: Id,
    g: &mut Graph,
    memo: &mut HashMap<Id, NodeId>,
    names: &HashMap<Id, String>,
    used: &mut HashSet<String>,
    counters: &mut HashMap<String, usize>,
) -> NodeId {
    let class = eg.find(class);
    if let Some(&n) = memo.get(&class) {
        return n;
    }
    let node = ex.node(eg, class).clone();
    let id = match &node.op {
        EOp::Input(k) => *k as usize,
        EOp::Const(k) => {
            let t = eg.analysis.consts[*k as usize].clone();
            push(
                g,
                eg,
                class,
                Op::Constant(Arc::clone(&t)),
                vec![],
                names,
                used,
                counters,
            )
        }
        EOp::Ir(op) => {
            let inputs: Vec<NodeId> = node
                .args
                .iter()
                .map(|&a| emit(eg, ex, a, g, memo, names, used, counters))
                .collect();
            push(g, eg, class, op.clone(), inputs, names, used, counters)
        }
    };
    memo.insert(class, id);
    id
}

#[allow(clippy::too_many_arguments)]
fn push(
    g: &mut Graph,
    eg: &EG,
    class: Id,
    op: Op,
    inputs: Vec<NodeId>,
    names: &HashMap<Id, String>,
    used: &mut HashSet<String>,
    counters: &mut HashMap<String, usize>,
) -> NodeId {
    let preferred = names.get(&class).filter(|n| !used.contains(*n)).cloned();
    let name = preferred.unwrap_or_else(|| loop {
        let base = op.name();
        let k = counters.entry(base.clone()).or_insert(0);
        let candidate = format!("{base}_{k}");
        *k += 1;
        if !used.contains(&candidate) {
            break candidate;
        }
    });
    used.insert(name.clone());
    g.nodes.push(Node {
        name,
        op,
        inputs,
        ty: eg[class].data.ty.clone(),
    });
    g.nodes.len() - 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ir::{DType, GraphBuilder, Tensor};
    use crate::optimize::analysis::Facts;

    /// A stack of `layers` MLP blocks with residuals and LayerNorms, as an e-graph saturated
    /// by the simplification and fusion rules (many classes with several nodes).
    fn saturated(layers: usize) -> EG {
        let mut b = GraphBuilder::new();
        let mut x = b.input("x", DType::F32, &[4, 16]).unwrap();
        for l in 0..layers as u64 {
            let w1 = b.constant(Tensor::random(DType::F32, &[16, 32], 10 * l + 1));
            let b1 = b.constant(Tensor::random(DType::F32, &[32], 10 * l + 2));
            let w2 = b.constant(Tensor::random(DType::F32, &[32, 16], 10 * l + 3));
            let g = b.constant(Tensor::random(DType::F32, &[16], 10 * l + 4));
            let h = b.matmul(x, w1).unwrap();
            let h = b.add(h, b1).unwrap();
            let h = b.gelu(h).unwrap();
            let h = b.matmul(h, w2).unwrap();
            let h = b.add(h, x).unwrap();
            x = b.layer_norm(h, g, None, -1, 1e-5).unwrap();
        }
        b.output("y", x).unwrap();
        let graph = b.build().unwrap();
        let mut eg = EG::new(Facts::new(vec![graph.nodes[graph.inputs[0]].ty.clone()]));
        let mut class_of: Vec<Id> = Vec::new();
        for n in &graph.nodes {
            let node = match &n.op {
                Op::Input => ENode {
                    op: EOp::Input(0),
                    args: vec![],
                },
                Op::Constant(t) => ENode {
                    op: EOp::Const(eg.analysis.intern(Arc::clone(t))),
                    args: vec![],
                },
                op => ENode::ir(op.clone(), n.inputs.iter().map(|&i| class_of[i]).collect()),
            };
            let id = eg.add(node);
            for &i in &n.inputs {
                *eg.analysis.users.entry(class_of[i]).or_insert(0) += 1;
            }
            class_of.push(id);
        }
        let (_, out) = graph.outputs[0];
        *eg.analysis.users.entry(class_of[out]).or_insert(0) += 1;
        eg.analysis.outputs.push(class_of[out]);
        eg.rebuild();
        let mut rules = crate::optimize::rules::simplification(false, true);
        rules.extend(crate::optimize::rules::fuse::rules());
        egg::Runner::default()
            .with_egraph(eg)
            .with_iter_limit(12)
            .run(&rules)
            .egraph
    }

    /// The worklist finds, for every class, the cost egg's sweeping extractor finds.
    #[test]
    fn worklist_costs_equal_eggs() {
        for layers in [1, 3] {
            let eg = saturated(layers);
            let best = Best::new(&eg);
            let egg = egg::Extractor::new(&eg, BytesAndLaunches { eg: &eg });
            let mut several = 0;
            for c in eg.classes() {
                several += usize::from(c.nodes.len() > 1);
                let ours = best.choice[&c.id].0;
                let theirs = egg.find_best_cost(c.id);
                assert!(
                    (ours - theirs).abs() <= 1e-9 * theirs.abs().max(1.0),
                    "class {}: {ours} vs egg's {theirs}",
                    c.id
                );
                // The chosen node has that cost.
                let mut cf = BytesAndLaunches { eg: &eg };
                let node = best.node(&eg, c.id);
                let c2 = cf.cost(node, |a| best.choice[&eg.find(a)].0);
                assert_eq!(c2, ours);
            }
            assert!(
                several >= 3 * layers,
                "{layers} layers: only {several} classes with choices"
            );
        }
    }
}
