//! Fusion per region: a large graph is cut, in topological order, where few computed values
//! cross (between the layers of a transformer only the residual stream and a shared mask
//! do), and each region is saturated on its own, on every core, then stitched back. The
//! e-graph's work then grows linearly with the model, not with the model times its depth.
//!
//! Fusion never merges across a cut: a crossing value is a region output (materialized, as a
//! value with users beyond its producer's kernel mostly is anyway) and an input of the
//! regions that read it. Cuts are only taken where at most [`MAX_CROSSING`] values cross.

use super::{saturate, Options, PassStat, Report};
use crate::ir::{Graph, Node, NodeId, Op};
use std::collections::HashMap;
use std::time::Instant;

/// Fewest nodes a region has (graphs smaller than twice this are saturated whole).
pub const REGION_NODES: usize = 120;
/// Most computed values a cut may cross.
pub const MAX_CROSSING: usize = 3;

fn computed(n: &Node) -> bool {
    !matches!(n.op, Op::Input | Op::Constant(_))
}

/// Cut positions (a cut at `i` separates nodes `..i` from `i..`).
fn cuts(g: &Graph) -> Vec<usize> {
    let n = g.nodes.len();
    if n < 2 * REGION_NODES {
        return Vec::new();
    }
    // The last node reading each computed value (graph outputs do not count: an output is
    // produced by its own region).
    let mut last = vec![0usize; n];
    for (j, node) in g.nodes.iter().enumerate() {
        for &i in &node.inputs {
            last[i] = last[i].max(j);
        }
    }
    // crossing[i]: computed values made before i and read at or after i.
    let mut delta = vec![0isize; n + 1];
    for (j, node) in g.nodes.iter().enumerate() {
        if computed(node) && last[j] > j {
            delta[j + 1] += 1;
            delta[last[j] + 1] -= 1;
        }
    }
    let mut crossing = vec![0usize; n + 1];
    let mut c = 0isize;
    for i in 0..=n {
        c += delta[i];
        crossing[i] = c.max(0) as usize;
    }
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        let (lo, hi) = (
            start + REGION_NODES,
            (start + 2 * REGION_NODES).min(n - REGION_NODES),
        );
        if lo > hi {
            break;
        }
        // The fewest crossings in the window, the earliest such position.
        let best = (lo..=hi)
            .min_by_key(|&i| (crossing[i], i))
            .expect("lo <= hi");
        if crossing[best] > MAX_CROSSING {
            // Nothing cheap to cut here: look further on.
            start = hi;
            continue;
        }
        out.push(best);
        start = best;
    }
    out
}

/// Where a region's input comes from.
#[derive(Clone, Copy)]
enum Source {
    /// Graph input `k`.
    Input(usize),
    /// The value of original node `j`, made by an earlier region.
    Value(NodeId),
}

/// A region as a graph of its own, and how it connects.
struct Region {
    graph: Graph,
    /// Per input of `graph`, in order.
    sources: Vec<Source>,
}

/// The name a crossing value has as a region output.
fn value_name(j: NodeId) -> String {
    format!("\u{1}v{j}")
}

fn region(g: &Graph, (s, e): (usize, usize), last: &[usize]) -> Region {
    let mut r = Graph::default();
    let mut sources = Vec::new();
    let mut local: HashMap<NodeId, NodeId> = HashMap::new();
    let graph_input = |i: NodeId| g.inputs.iter().position(|&k| k == i);
    for j in s..e {
        let node = &g.nodes[j];
        if !computed(node) {
            continue;
        }
        let mut inputs = Vec::with_capacity(node.inputs.len());
        for &i in &node.inputs {
            let id = *local.entry(i).or_insert_with(|| {
                let src = &g.nodes[i];
                let id = r.nodes.len();
                match &src.op {
                    Op::Constant(_) => r.nodes.push(src.clone()),
                    _ => {
                        r.nodes.push(Node {
                            name: src.name.clone(),
                            op: Op::Input,
                            inputs: vec![],
                            ty: src.ty.clone(),
                        });
                        r.inputs.push(id);
                        sources.push(match graph_input(i) {
                            Some(k) => Source::Input(k),
                            None => Source::Value(i),
                        });
                    }
                }
                id
            });
            inputs.push(id);
        }
        local.insert(j, r.nodes.len());
        r.nodes.push(Node {
            inputs,
            ..node.clone()
        });
        if last[j] >= e {
            r.outputs.push((value_name(j), local[&j]));
        }
    }
    for (name, id) in &g.outputs {
        if (s..e).contains(id) && computed(&g.nodes[*id]) {
            r.outputs.push((name.clone(), local[id]));
        }
    }
    Region { graph: r, sources }
}

/// Fuses `g` region by region (whole when it is small or has no cheap cut).
pub(super) fn fuse(g: &Graph, opts: &Options, report: &mut Report) -> Graph {
    let rules = super::rules::fuse::rules;
    let phase = super::rules::fuse::PHASE;
    let cuts = if opts.regions { cuts(g) } else { Vec::new() };
    if cuts.is_empty() {
        return saturate(g, rules(), phase, opts, report);
    }
    let t = Instant::now();
    let n = g.nodes.len();
    let mut last = vec![0usize; n];
    for (j, node) in g.nodes.iter().enumerate() {
        for &i in &node.inputs {
            last[i] = last[i].max(j);
        }
    }
    let mut bounds = vec![0];
    bounds.extend(&cuts);
    bounds.push(n);
    let regions: Vec<Region> = bounds
        .windows(2)
        .map(|w| region(g, (w[0], w[1]), &last))
        .collect();
    // Saturate the regions on every core.
    let done: Vec<(Graph, Report)> = crate::parallel::map(&regions, |r| {
        let mut rep = Report::default();
        let fused = saturate(&r.graph, rules(), phase, opts, &mut rep);
        (fused, rep)
    });
    // Stitch: the graph inputs, then each region's nodes with its inputs wired to their
    // sources.
    let mut out = Graph::default();
    for &i in &g.inputs {
        out.inputs.push(out.nodes.len());
        out.nodes.push(g.nodes[i].clone());
    }
    let mut value: HashMap<NodeId, NodeId> = HashMap::new();
    // A constant several regions read (tied embeddings, position tables) stays one node.
    let mut constants: HashMap<*const crate::ir::Tensor, NodeId> = HashMap::new();
    let mut named: HashMap<String, NodeId> = HashMap::new();
    // Node names stay unique: a node the rules made is named by its op and a counter per
    // region (`matmul_0`), which another region may have used.
    let mut names: std::collections::HashSet<String> =
        out.nodes.iter().map(|n| n.name.clone()).collect();
    let mut stop = String::new();
    let mut nodes_out = 0;
    for (ri, (r, (fused, rep))) in regions.iter().zip(&done).enumerate() {
        nodes_out += fused.nodes.len();
        let mut map = vec![usize::MAX; fused.nodes.len()];
        for (k, &inp) in fused.inputs.iter().enumerate() {
            map[inp] = match r.sources[k] {
                Source::Input(k) => out.inputs[k],
                Source::Value(j) => value[&j],
            };
        }
        for (id, node) in fused.nodes.iter().enumerate() {
            if matches!(node.op, Op::Input) {
                continue;
            }
            if let Op::Constant(t) = &node.op {
                let next = out.nodes.len();
                map[id] = *constants.entry(std::sync::Arc::as_ptr(t)).or_insert(next);
                if map[id] != next {
                    continue;
                }
            } else {
                map[id] = out.nodes.len();
            }
            let mut name = node.name.clone();
            let mut k = ri;
            while names.contains(&name) {
                name = format!("{}_r{k}", node.name);
                k += 1;
            }
            names.insert(name.clone());
            out.nodes.push(Node {
                name,
                inputs: node.inputs.iter().map(|&a| map[a]).collect(),
                ..node.clone()
            });
        }
        for (name, id) in &fused.outputs {
            match name.strip_prefix('\u{1}').and_then(|v| v.strip_prefix('v')) {
                Some(j) => {
                    value.insert(j.parse().expect("a node id"), map[*id]);
                }
                None => {
                    named.insert(name.clone(), map[*id]);
                }
            }
        }
        for (rule, k) in &rep.rules_fired {
            *report.rules_fired.entry(rule.clone()).or_insert(0) += k;
        }
        report.folded += rep.folded;
        if stop.is_empty() || rep.stop_reason != "Saturated" {
            stop = rep.stop_reason.clone();
        }
    }
    for (name, id) in &g.outputs {
        let at = match named.get(name) {
            Some(&at) => at,
            // An output that is a graph input or a constant.
            None => match g.inputs.iter().position(|&k| k == *id) {
                Some(k) => out.inputs[k],
                None => {
                    out.nodes.push(g.nodes[*id].clone());
                    out.nodes.len() - 1
                }
            },
        };
        out.outputs.push((name.clone(), at));
    }
    report.stop_reason = format!("{stop} ({} regions)", regions.len());
    report.passes.push(PassStat {
        name: phase,
        time: t.elapsed(),
        nodes_in: n,
        nodes_out,
    });
    out
}
