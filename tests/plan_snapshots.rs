//! `plan.json` of each reference model, fused and unfused, pinned by snapshot.
//! Review changes with `cargo insta review` (or `INSTA_UPDATE=always cargo test`).

mod common;

use smelt::onnx::{import_file, ImportOptions};
use smelt::optimize::Options;

#[test]
fn reference_model_plans() {
    for dir in common::model_dirs(&common::root().join("tests/models")) {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut opts = ImportOptions::default();
        for s in common::model_shapes(&dir) {
            let (n, dims) = s.split_once('=').unwrap();
            opts.shapes.insert(
                n.into(),
                dims.split('x').map(|d| d.parse().unwrap()).collect(),
            );
        }
        let graph = import_file(&dir.join("model.onnx"), &opts).unwrap();
        for (fuse, tag) in [(true, "fused"), (false, "unfused")] {
            let c = smelt::compile(
                &graph,
                &Options {
                    fuse,
                    ..Options::default()
                },
            )
            .unwrap();
            insta::assert_snapshot!(format!("{name}_{tag}"), c.plan.to_json());
        }
    }
}
