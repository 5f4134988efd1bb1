//! Which module of the exporting framework each node came from, for explanations grouped by
//! layer (`smelt inspect`). PyTorch's dynamo exporter records it in each node's `namespace`
//! metadata (`: Model/inner.encoder.layer.0: BertLayer/…/softmax: aten.softmax.int`); the
//! TorchScript exporter in the node's name (`/inner/encoder/layer.0/attention/self/MatMul`).

use super::proto::{GraphProto, NodeProto};
use std::collections::BTreeMap;

/// For each output name of the graph's nodes, the dotted module path that produced it
/// (`inner.encoder.layer.0.attention.self`); nodes without one are absent.
pub fn module_scopes(graph: &GraphProto) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for n in &graph.node {
        if let Some(scope) = scope_of(n) {
            for o in n.output.iter().filter(|o| !o.is_empty()) {
                out.insert(o.clone(), scope.clone());
            }
        }
    }
    out
}

fn scope_of(n: &NodeProto) -> Option<String> {
    if let Some(ns) = n.metadata_props.iter().find(|p| p.key() == "namespace") {
        // Segments `name: type`; the last one is the op itself, the one before it the
        // innermost module (whose name is its full dotted path).
        let segments: Vec<&str> = ns.value().split('/').collect();
        let module = segments[..segments.len().saturating_sub(1)]
            .iter()
            .rev()
            .map(|s| s.split_once(':').map_or(*s, |(name, _)| name).trim())
            .find(|name| !name.is_empty())?;
        return Some(module.to_string());
    }
    // `/a/b.0/c/Op_3`: the path without the op's own name. A component may repeat its
    // parent's path (`/layer1/layer1.0/conv1`): only what it adds counts.
    let name = n.name();
    let path = name.strip_prefix('/')?.rsplit_once('/')?.0;
    let mut scope = String::new();
    for c in path.split('/').filter(|c| !c.is_empty()) {
        let repeats = !scope.is_empty()
            && c.strip_prefix(scope.as_str())
                .is_some_and(|r| r.starts_with('.'));
        if !repeats && !scope.is_empty() {
            scope.push('.');
        }
        if repeats {
            scope = c.to_string();
        } else {
            scope.push_str(c);
        }
    }
    Some(scope).filter(|s| !s.is_empty())
}

/// The layer a module path belongs to: the path up to its first numeric component and the
/// numeric ones right after it (`inner.encoder.layer.0.attention.self` ->
/// `inner.encoder.layer.0`, `features.3.1.block.0` -> `features.3.1`), else its first two
/// components (`inner.embeddings`).
pub fn layer_of(scope: &str) -> String {
    let parts: Vec<&str> = scope.split('.').collect();
    let numeric = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    match parts.iter().position(|p| numeric(p)) {
        Some(i) => {
            let end = i + parts[i..].iter().take_while(|p| numeric(p)).count();
            parts[..end].join(".")
        }
        None => parts[..parts.len().min(2)].join("."),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::onnx::proto::StringStringEntryProto;

    #[test]
    fn scopes_from_both_exporters() {
        let dynamo = NodeProto {
            output: vec!["val_107".into()],
            metadata_props: vec![StringStringEntryProto {
                key: Some("namespace".into()),
                value: Some(": __main__.M/inner: BertModel/inner.encoder.layer.0: BertLayer/inner.encoder.layer.0.attention.self: BertSelfAttention/softmax: aten.softmax.int".into()),
            }],
            ..Default::default()
        };
        assert_eq!(
            scope_of(&dynamo).as_deref(),
            Some("inner.encoder.layer.0.attention.self")
        );
        let script = NodeProto {
            name: Some("/inner/encoder/layer.11/output/dense/MatMul".into()),
            ..Default::default()
        };
        assert_eq!(
            scope_of(&script).as_deref(),
            Some("inner.encoder.layer.11.output.dense")
        );
        let top = NodeProto {
            name: Some("node_Add_3".into()),
            ..Default::default()
        };
        assert_eq!(scope_of(&top), None);
        assert_eq!(
            layer_of("inner.encoder.layer.11.output.dense"),
            "inner.encoder.layer.11"
        );
        assert_eq!(layer_of("features.3.1.block.0"), "features.3.1");
        let nested = NodeProto {
            name: Some("/layer1/layer1.0/conv1/Conv".into()),
            ..Default::default()
        };
        assert_eq!(scope_of(&nested).as_deref(), Some("layer1.0.conv1"));
        assert_eq!(layer_of("inner.embeddings.LayerNorm"), "inner.embeddings");
        assert_eq!(layer_of("inner"), "inner");
    }
}
