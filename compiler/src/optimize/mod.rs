//! The optimizer: equality saturation with `egg` over the IR.
//!
//! The graph goes into an e-graph (CSE is hash-consing), the e-class analysis folds constants,
//! the rules in [`rules`] add equal forms, and extraction picks the cheapest program by bytes
//! moved and launches; whatever no output needs is not extracted (dead-node removal).
//! The runner is bounded by node, iteration and time limits: hitting one degrades the
//! result, never fails the compile.

pub mod analysis;
pub mod explain;
pub mod extract;
pub mod lang;
pub mod regions;
pub mod rules;

use crate::error::Result;
use crate::ir::{Graph, Op};
use analysis::{Facts, EG};
use egg::{Id, Runner};
use lang::{ENode, EOp};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Optimizer settings.
#[derive(Clone, Debug)]
pub struct Options {
    /// Also apply rules that change results beyond rounding (`x*0 → 0`, reassociation).
    pub fast_math: bool,
    /// Stop saturating past this many e-nodes.
    pub node_limit: usize,
    /// Stop after this many rewrite iterations.
    pub iter_limit: usize,
    /// Stop saturating after this long.
    pub time_limit: Duration,
    /// Fuse ops into kernels. Off gives the unfused baseline, one kernel per op of the
    /// source graph: no fusion and no recognizers (which fuse decomposed patterns); exact
    /// folding, identities, CSE and dead-node removal still apply.
    pub fuse: bool,
    /// Fuse large graphs region by region ([`regions`]), on every core; off saturates the
    /// whole graph at once (for comparison).
    pub regions: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            fast_math: false,
            node_limit: 50_000,
            iter_limit: 30,
            time_limit: Duration::from_secs(2),
            fuse: true,
            regions: true,
        }
    }
}

/// One pass of the optimizer: its time and the node counts around it.
#[derive(Clone, Debug)]
pub struct PassStat {
    /// Pass name.
    pub name: &'static str,
    /// Wall time.
    pub time: Duration,
    /// Nodes (graph nodes or e-nodes) going in.
    pub nodes_in: usize,
    /// Nodes coming out.
    pub nodes_out: usize,
}

/// What the optimizer did.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// Per pass, in order.
    pub passes: Vec<PassStat>,
    /// How often each rule fired.
    pub rules_fired: BTreeMap<String, usize>,
    /// Why saturation stopped (saturated, or which limit).
    pub stop_reason: String,
    /// Nodes replaced by constants.
    pub folded: usize,
}

impl Report {
    /// One line per pass: name, time, node counts.
    pub fn lines(&self) -> Vec<String> {
        self.passes
            .iter()
            .map(|p| {
                format!(
                    "{:<10} {:>8.2} ms  {:>6} -> {:<6} nodes",
                    p.name,
                    p.time.as_secs_f64() * 1e3,
                    p.nodes_in,
                    p.nodes_out
                )
            })
            .collect()
    }
}

/// Optimizes a valid graph. The result computes the same outputs (within rounding; exactly
/// the same operations unless `fast_math`) and validates.
///
/// Two saturations: simplification (folding, identities, layout, recognizers) and then, on
/// the extracted program, fusion.
pub fn optimize(graph: &Graph, opts: &Options) -> Result<(Graph, Report)> {
    graph.validate()?;
    let mut report = Report::default();
    let simplified = saturate(
        graph,
        rules::simplification(opts.fast_math, opts.fuse),
        "simplify",
        opts,
        &mut report,
    );
    simplified.validate()?;
    if !opts.fuse {
        return Ok((simplified, report));
    }
    let fused = regions::fuse(&simplified, opts, &mut report);
    fused.validate()?;
    Ok((fused, report))
}

/// One equality saturation: graph → e-graph → rules → cheapest graph.
fn saturate(
    graph: &Graph,
    rules: Vec<egg::Rewrite<ENode, Facts>>,
    phase: &'static str,
    opts: &Options,
    report: &mut Report,
) -> Graph {
    let t = Instant::now();
    let mut eg = EG::new(Facts::new(
        graph
            .inputs
            .iter()
            .map(|&i| graph.nodes[i].ty.clone())
            .collect(),
    ));
    let mut class_of: Vec<Id> = Vec::with_capacity(graph.nodes.len());
    for node in &graph.nodes {
        let enode = match &node.op {
            Op::Input => {
                let k = graph
                    .inputs
                    .iter()
                    .position(|&i| class_of.len() == i)
                    .expect("listed input");
                ENode {
                    op: EOp::Input(k as u32),
                    args: vec![],
                }
            }
            Op::Constant(t) => {
                let k = eg.analysis.intern(Arc::clone(t));
                ENode {
                    op: EOp::Const(k),
                    args: vec![],
                }
            }
            op => ENode::ir(
                op.clone(),
                node.inputs.iter().map(|&i| class_of[i]).collect(),
            ),
        };
        let id = eg.add(enode);
        for &i in &node.inputs {
            *eg.analysis.users.entry(class_of[i]).or_insert(0) += 1;
        }
        class_of.push(id);
    }
    for (_, id) in &graph.outputs {
        *eg.analysis.users.entry(class_of[*id]).or_insert(0) += 1;
        eg.analysis.outputs.push(class_of[*id]);
    }
    eg.rebuild();
    let start_nodes = eg.total_number_of_nodes();
    let runner = Runner::default()
        .with_egraph(eg)
        .with_node_limit(opts.node_limit)
        .with_iter_limit(opts.iter_limit)
        .with_time_limit(opts.time_limit)
        .run(&rules);
    for it in &runner.iterations {
        for (rule, n) in &it.applied {
            *report.rules_fired.entry(rule.to_string()).or_insert(0) += n;
        }
    }
    if let Some(reason) = &runner.stop_reason {
        report.stop_reason = format!("{reason:?}");
    }
    let eg = runner.egraph;
    report.folded += eg.analysis.folded;
    let mut names: HashMap<Id, String> = HashMap::new();
    for (node, &c) in graph.nodes.iter().zip(&class_of) {
        names.entry(eg.find(c)).or_insert_with(|| node.name.clone());
    }
    let input_names: Vec<String> = graph
        .inputs
        .iter()
        .map(|&i| graph.nodes[i].name.clone())
        .collect();
    let roots: Vec<(String, Id)> = graph
        .outputs
        .iter()
        .map(|(n, id)| (n.clone(), eg.find(class_of[*id])))
        .collect();
    let out = extract::rebuild(&eg, &input_names, &roots, &names);
    report.passes.push(PassStat {
        name: phase,
        time: t.elapsed(),
        nodes_in: graph.nodes.len(),
        nodes_out: out.nodes.len(),
    });
    let _ = start_nodes;
    out
}
