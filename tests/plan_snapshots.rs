//! `plan.json` of each reference model, fused and unfused, pinned by snapshot.
//! Review changes with `cargo insta review` (or `INSTA_UPDATE=always cargo test`).

mod common;

use smelt::onnx::{import_file, ImportOptions};
use smelt::optimize::Options;

#[test]
fn reference_model_plans() {
    let root = common::root().join("tests/models");
    let mut dirs: Vec<_> = std::fs::read_dir(&root)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("model.onnx").exists())
        .collect();
    dirs.sort();
    for dir in dirs {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
        let mut opts = ImportOptions::default();
        if let Ok(extra) = std::fs::read_to_string(dir.join("shapes.txt")) {
            for s in extra.split_whitespace() {
                let (n, dims) = s.split_once('=').unwrap();
                opts.shapes.insert(
                    n.into(),
                    dims.split('x').map(|d| d.parse().unwrap()).collect(),
                );
            }
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
