//! Data-dependent patterns that have a static-shape form, rewritten before import.
//!
//! A reduction over a boolean selection, as PyTorch exports `x[mask].sum()`:
//! `NonZero(mask) → Transpose → GatherND(x, ·) → ReduceSum/Mean/Max/Min` has a
//! data-dependent intermediate (the selected elements) but a static result. It becomes one
//! [`MASKED_REDUCE`] node, imported as a reduction of `Where(mask, x, identity)`.
//! (`x[mask] = v` already exports as `Where`.)

use super::attrs::Attrs;
use super::proto::{attribute_proto::AttributeType, AttributeProto, GraphProto, NodeProto};
use std::collections::HashMap;

/// Domain of the nodes this pass introduces.
pub const DOMAIN: &str = "ai.smelt";
/// Op type of a reduction over the elements a boolean mask selects: inputs `(x, mask)`,
/// attributes `kind` (`sum`, `mean`, `max`, `min`) and `keepdims`.
pub const MASKED_REDUCE: &str = "MaskedReduce";

fn producer<'a>(nodes: &'a [NodeProto], name: &str) -> Option<(usize, &'a NodeProto)> {
    nodes
        .iter()
        .enumerate()
        .find(|(_, n)| n.output.iter().any(|o| o == name))
}

/// Rewrites every masked reduction in `graph`; returns how many.
pub fn rewrite(graph: &mut GraphProto) -> usize {
    let mut uses: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            *uses.entry(i.clone()).or_insert(0) += 1;
        }
    }
    for o in &graph.output {
        *uses.entry(o.name().to_string()).or_insert(0) += 1;
    }
    let single = |name: &str| uses.get(name).copied() == Some(1);
    let mut replace: Vec<(usize, NodeProto, [usize; 3])> = Vec::new();
    for (ri, r) in graph.node.iter().enumerate() {
        let kind = match r.op_type() {
            "ReduceSum" => "sum",
            "ReduceMean" => "mean",
            "ReduceMax" => "max",
            "ReduceMin" => "min",
            _ => continue,
        };
        let default_domain = r.domain().is_empty() || r.domain() == "ai.onnx";
        // Over the one axis of the selection: no axes, or axes = [0] / [-1] as an attribute.
        let attrs = Attrs::of(r);
        let axes_ok = match attrs.ints("axes") {
            Ok(None) => r.input.len() < 2 || r.input[1].is_empty(),
            Ok(Some(a)) => a == [0] || a == [-1],
            Err(_) => false,
        };
        let Some(src) = r.input.first() else { continue };
        if !default_domain || !axes_ok || !single(src) {
            continue;
        }
        let Some((gi, g)) = producer(&graph.node, src) else {
            continue;
        };
        let batch_dims = Attrs::of(g).int_or("batch_dims", 0).unwrap_or(-1);
        if g.op_type() != "GatherND"
            || batch_dims != 0
            || g.input.len() != 2
            || !single(&g.input[1])
        {
            continue;
        }
        let Some((ti, t)) = producer(&graph.node, &g.input[1]) else {
            continue;
        };
        let perm = Attrs::of(t).ints("perm").ok().flatten();
        let Some(t_in) = t.input.first() else {
            continue;
        };
        if t.op_type() != "Transpose"
            || !matches!(perm.as_deref(), None | Some([1, 0]))
            || !single(t_in)
        {
            continue;
        }
        let Some((ni, nz)) = producer(&graph.node, t_in) else {
            continue;
        };
        let (Some(mask), Some(out)) = (nz.input.first(), r.output.first()) else {
            continue;
        };
        if nz.op_type() != "NonZero" {
            continue;
        }
        let keepdims = attrs.int_or("keepdims", 1).unwrap_or(1);
        let node = NodeProto {
            op_type: Some(MASKED_REDUCE.into()),
            domain: Some(DOMAIN.into()),
            name: Some(if r.name().is_empty() {
                out.clone()
            } else {
                r.name().to_string()
            }),
            input: vec![g.input[0].clone(), mask.clone()],
            output: r.output.clone(),
            attribute: vec![
                AttributeProto {
                    name: Some("kind".into()),
                    r#type: Some(AttributeType::String as i32),
                    s: Some(kind.as_bytes().to_vec()),
                    ..Default::default()
                },
                AttributeProto {
                    name: Some("keepdims".into()),
                    r#type: Some(AttributeType::Int as i32),
                    i: Some(keepdims),
                    ..Default::default()
                },
            ],
            ..Default::default()
        };
        replace.push((ri, node, [gi, ti, ni]));
    }
    let n = replace.len();
    let mut drop = vec![false; graph.node.len()];
    for (ri, node, gone) in replace {
        graph.node[ri] = node;
        for g in gone {
            drop[g] = true;
        }
    }
    let mut k = 0;
    graph.node.retain(|_| {
        k += 1;
        !drop[k - 1]
    });
    n
}
