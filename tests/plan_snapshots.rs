//! `plan.json` of each reference model, fused and unfused, pinned by snapshot.
//! Review changes with `cargo insta review` (or `INSTA_UPDATE=always cargo test`).

mod common;

use smelt::optimize::Options;

#[test]
fn reference_model_plans() {
    for (dir, graph) in common::reference_models() {
        let name = dir.file_name().unwrap().to_string_lossy().to_string();
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
