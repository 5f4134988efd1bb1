//! Why fusions were not taken, and Graphviz views of a graph before and after optimization.

use super::rules::fuse::{classify, inline, op_body, MAX_BODY_OPS};
use crate::ir::{Graph, NodeId, Op, TensorType};
use egg::Id;
use std::fmt::Write;

/// A producer → consumer edge of the optimized graph that stayed two kernels, and why.
#[derive(Clone, Debug)]
pub struct MissedFusion {
    /// Producing node.
    pub producer: String,
    /// Consuming node.
    pub consumer: String,
    /// The reason, with numbers where a cost decided it.
    pub reason: String,
}

fn is_kernel(op: &Op) -> bool {
    !matches!(op, Op::Input | Op::Constant(_) | Op::Reshape(_))
}

fn body(g: &Graph, id: NodeId) -> Option<(Graph, Vec<Id>)> {
    let n = &g.nodes[id];
    let args: Vec<(Id, TensorType)> = n
        .inputs
        .iter()
        .map(|&i| (Id::from(i), g.nodes[i].ty.clone()))
        .collect();
    op_body(&n.op, &args)
}

fn mb(bytes: f64) -> String {
    format!("{:.2} MB", bytes / 1e6)
}

/// Every kernel-to-kernel edge of an optimized graph, with the reason it was not fused.
pub fn missed_fusions(g: &Graph) -> Vec<MissedFusion> {
    let mut users = vec![0usize; g.nodes.len()];
    for n in &g.nodes {
        for &i in &n.inputs {
            users[i] += 1;
        }
    }
    for (_, id) in &g.outputs {
        users[*id] += 1;
    }
    let mut out = Vec::new();
    for (c, cn) in g.nodes.iter().enumerate() {
        if !is_kernel(&cn.op) {
            continue;
        }
        let mut seen = Vec::new();
        for (slot, &p) in cn.inputs.iter().enumerate() {
            let pn = &g.nodes[p];
            if !is_kernel(&pn.op) || seen.contains(&p) {
                continue;
            }
            seen.push(p);
            let reason = match (body(g, p), body(g, c)) {
                (None, _) => format!(
                    "{} is not fusible (it runs as its own kernel)",
                    pn.op.name()
                ),
                (_, None) => format!(
                    "{} is not fusible (it runs as its own kernel)",
                    cn.op.name()
                ),
                (Some(_), Some(_)) if users[p] > 1 => {
                    let u = users[p] as f64;
                    let ins: f64 = pn
                        .inputs
                        .iter()
                        .map(|&i| g.nodes[i].ty.bytes() as f64)
                        .sum();
                    let out_b = pn.ty.bytes() as f64;
                    // Apart: read inputs once, write the result, each user reads it.
                    // Fused into every user: each user reads the producer's inputs.
                    let extra = u * ins - (ins + out_b + u * out_b);
                    if extra > 0.0 {
                        format!(
                            "producer has {} users: recomputing it in each costs {} more than it saves",
                            users[p],
                            mb(extra)
                        )
                    } else {
                        format!(
                            "producer has {} users and is {}: only elementwise producers that are not graph outputs are recomputed",
                            users[p],
                            pn.op.name()
                        )
                    }
                }
                (Some(pb), Some(cb)) => {
                    let i = cb.1.iter().position(|&x| x == Id::from(p)).unwrap_or(slot);
                    let (merged, _) = inline(&cb, i, &pb);
                    reject_reason(&merged)
                }
            };
            out.push(MissedFusion {
                producer: pn.name.clone(),
                consumer: cn.name.clone(),
                reason,
            });
        }
    }
    out
}

/// Why a merged body is not one kernel.
fn reject_reason(body: &Graph) -> String {
    if classify(body).is_some() {
        return "fusible, but the cost model kept them apart".into();
    }
    let ops: Vec<&Op> = body
        .nodes
        .iter()
        .map(|n| &n.op)
        .filter(|op| **op != Op::Input)
        .collect();
    if ops.len() > MAX_BODY_OPS {
        return format!(
            "the merged kernel would have {} ops (limit {MAX_BODY_OPS})",
            ops.len()
        );
    }
    let count = |f: fn(&Op) -> bool| ops.iter().filter(|op| f(op)).count();
    let mms = count(|op| *op == Op::MatMul);
    let convs = count(|op| matches!(op, Op::Conv(_)));
    let rows = count(|op| {
        matches!(
            op,
            Op::Reduce { .. } | Op::Softmax { .. } | Op::LogSoftmax { .. } | Op::LayerNorm { .. }
        )
    });
    if mms + convs > 1 && !(mms == 2 && rows == 1) {
        return format!(
            "one kernel holds one matrix product or convolution; this would hold {}",
            mms + convs
        );
    }
    if (mms + convs) == 1 && rows > 0 {
        return "a reduction cannot be a matmul or conv prologue or epilogue (only attention's softmax can)".into();
    }
    if mms + convs == 1 {
        return "the matmul/conv operand would be computed, not a view of an input (prologues are index maps only)".into();
    }
    "the reductions do not share one row (same space, same trailing axes), or an index map would apply to a computed row value".into()
}

/// Graphviz text of a graph; fused kernels are drawn as clusters of their body ops.
pub fn dot(g: &Graph, title: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "digraph \"{title}\" {{\n  rankdir=TB;\n  node [shape=box, fontname=\"monospace\", fontsize=10];");
    let esc = |t: &str| t.replace('"', "\\\"");
    for (id, n) in g.nodes.iter().enumerate() {
        match &n.op {
            Op::Fused(k) => {
                let _ = writeln!(s, "  subgraph cluster_{id} {{\n    label=\"{} ({:?})\"; style=rounded; color=blue;", esc(&n.name), k.kind);
                for (bi, bn) in k.body.nodes.iter().enumerate() {
                    if bn.op != Op::Input {
                        let _ = writeln!(
                            s,
                            "    n{id}_{bi} [label=\"{}\\n{}\"];",
                            bn.op.name(),
                            bn.ty
                        );
                    }
                }
                for (bi, bn) in k.body.nodes.iter().enumerate() {
                    for &a in &bn.inputs {
                        if k.body.nodes[a].op != Op::Input {
                            let _ = writeln!(s, "    n{id}_{a} -> n{id}_{bi};");
                        }
                    }
                }
                let _ = writeln!(s, "  }}");
                let out = k.body.outputs[0].1;
                let _ = writeln!(
                    s,
                    "  n{id} [label=\"{}\", shape=point];\n  n{id}_{out} -> n{id};",
                    esc(&n.name)
                );
                for (j, &a) in n.inputs.iter().enumerate() {
                    let bi = k.body.inputs[j];
                    for (ci, cn) in k.body.nodes.iter().enumerate() {
                        if cn.inputs.contains(&bi) {
                            let _ = writeln!(s, "  n{a} -> n{id}_{ci};");
                        }
                    }
                }
            }
            op => {
                let shape = match op {
                    Op::Input => ", shape=ellipse",
                    Op::Constant(_) => ", shape=note, color=gray",
                    _ => "",
                };
                let _ = writeln!(
                    s,
                    "  n{id} [label=\"{}\\n{}\\n{}\"{shape}];",
                    esc(&n.name),
                    op.name(),
                    n.ty
                );
                for &a in &n.inputs {
                    let _ = writeln!(s, "  n{a} -> n{id};");
                }
            }
        }
    }
    let _ = writeln!(s, "}}");
    s
}

/// One layer's share of a plan (a layer as the exporter's module names say:
/// [`crate::onnx::scopes::layer_of`]): its kernels in launch order and the fusions not taken
/// inside it.
#[derive(Clone, Debug)]
pub struct LayerReport {
    /// The layer (`inner.encoder.layer.0`), or `(unattributed)` for kernels whose nodes
    /// carry no module name.
    pub layer: String,
    /// Its kernels' names, in launch order.
    pub kernels: Vec<String>,
    /// What each kernel is (`gemm`, `fused/row`, …), as the plan says, with its ops.
    pub kinds: Vec<String>,
    /// The fusions not taken whose consumer is in this layer.
    pub missed: Vec<MissedFusion>,
}

/// The plan's kernels and the optimized graph's missed fusions, grouped by the layer that
/// `layer` names for an original node name (the first of the nodes fused into the kernel
/// that has one, else the kernel's own); layers in the order of their first kernel.
pub fn by_layer(
    g: &Graph,
    plan: &crate::schedule::Plan,
    layer: &dyn Fn(&str) -> Option<String>,
) -> Vec<LayerReport> {
    const NONE: &str = "(unattributed)";
    let index: std::collections::HashMap<&str, NodeId> = g
        .nodes
        .iter()
        .enumerate()
        .map(|(i, n)| (n.name.as_str(), i))
        .collect();
    // A fused kernel belongs where its first op with a module name does (the product, for
    // a product with an epilogue that reaches into the next layer).
    let named_layer = |name: &str| -> Option<String> {
        if let Some(Op::Fused(k)) = index.get(name).map(|&i| &g.nodes[i].op) {
            for n in &k.body.nodes {
                if let Some(l) = layer(&n.name) {
                    return Some(l);
                }
            }
        }
        layer(name)
    };
    // A kernel whose nodes the optimizer made (a horizontal product over concatenated
    // weights) carries no module name: it belongs to the layer of the next kernel that
    // does (which reads it), or else of the one before.
    let named: Vec<Option<String>> = plan.kernels.iter().map(|k| named_layer(&k.node)).collect();
    let kernel_layer = |i: usize| -> String {
        named[i..]
            .iter()
            .chain(named[..i].iter().rev())
            .flatten()
            .next()
            .cloned()
            .unwrap_or_else(|| NONE.to_string())
    };
    let layer_of_node = |name: &str| -> String {
        match plan.kernels.iter().position(|k| k.node == name) {
            Some(i) => kernel_layer(i),
            None => named_layer(name).unwrap_or_else(|| NONE.to_string()),
        }
    };
    let mut out: Vec<LayerReport> = Vec::new();
    let slot = |name: String, out: &mut Vec<LayerReport>| -> usize {
        if let Some(i) = out.iter().position(|r| r.layer == name) {
            return i;
        }
        out.push(LayerReport {
            layer: name,
            kernels: Vec::new(),
            kinds: Vec::new(),
            missed: Vec::new(),
        });
        out.len() - 1
    };
    for k in &plan.kernels {
        let i = slot(layer_of_node(&k.node), &mut out);
        out[i].kernels.push(k.name.clone());
        let kind = k
            .fusion
            .map_or(k.kind.to_string(), |f| format!("{}/{f}", k.kind));
        out[i].kinds.push(format!("{kind}[{}]", k.ops.join(" ")));
    }
    for m in missed_fusions(g) {
        let i = slot(layer_of_node(&m.consumer), &mut out);
        out[i].missed.push(m);
    }
    out
}

/// Runs of consecutive layers alike: `(first, end)` index ranges of `reports` where each
/// layer after the first is of the same stack (its name but the last component:
/// `encoder.layer.3` -> `encoder.layer`) and has the same kernels and the same reasons for
/// the fusions not taken as the first. Every report is in exactly one run.
pub fn alike_runs(reports: &[LayerReport]) -> Vec<(usize, usize)> {
    let stack = |l: &str| l.rsplit_once('.').map_or(l, |(s, _)| s).to_string();
    let alike = |a: &LayerReport, b: &LayerReport| {
        stack(&a.layer) == stack(&b.layer)
            && a.kinds == b.kinds
            && a.missed.len() == b.missed.len()
            && a.missed
                .iter()
                .zip(&b.missed)
                .all(|(x, y)| x.reason == y.reason)
    };
    let mut runs = Vec::new();
    let mut i = 0;
    while i < reports.len() {
        let mut j = i + 1;
        while j < reports.len() && alike(&reports[i], &reports[j]) {
            j += 1;
        }
        runs.push((i, j));
        i = j;
    }
    runs
}

#[cfg(test)]
mod tests {
    use super::*;

    fn layer(name: &str, kinds: &[&str], reasons: &[&str]) -> LayerReport {
        LayerReport {
            layer: name.into(),
            kernels: kinds
                .iter()
                .enumerate()
                .map(|(i, _)| format!("k{i}"))
                .collect(),
            kinds: kinds.iter().map(|k| k.to_string()).collect(),
            missed: reasons
                .iter()
                .map(|r| MissedFusion {
                    producer: "p".into(),
                    consumer: "c".into(),
                    reason: r.to_string(),
                })
                .collect(),
        }
    }

    #[test]
    fn alike_layers_run_together() {
        let g = ["gemm[matmul add]", "fused[layernorm]"];
        let reports = [
            layer("emb", &["fused[gather]"], &[]),
            layer("enc.layer.0", &g, &["a reduction"]),
            layer("enc.layer.1", &g, &["a reduction"]),
            layer("enc.layer.2", &g, &["a reduction"]),
            layer("enc.layer.3", &g, &["another reason"]),
            layer("dec.layer.0", &g, &["another reason"]),
        ];
        assert_eq!(alike_runs(&reports), [(0, 1), (1, 4), (4, 5), (5, 6)]);
        assert!(alike_runs(&[]).is_empty());
    }
}
