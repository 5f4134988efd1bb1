//! GPU attention kernels: `out = softmax(f(Q·Kᵀ)) · V`, with `f` the fused elementwise
//! chain between the two products (scale, additive or causal mask, …), computed without the
//! score matrix in memory, and stored through the layout ops that merge the heads back.
//!
//! f16/bf16 (head dim and output width ≤ 128): the flash-style tensor-core kernel
//! ([`tensor_core`]). Otherwise the K/V-tiled kernel: a block owns consecutive query rows
//! of one batch; a group of lanes of a warp owns each row, holding its query elements and a
//! share of the output columns in registers. The block stages the keys in tiles (K and V
//! rows in shared memory, shared by its rows); each group walks a tile's keys: the score is
//! a warp-shuffle sum of the lanes' partial dot products, goes through `f`, and updates the
//! online softmax (running max `m`, sum `l`) and the accumulators, rescaled by
//! `exp(m_old - m)` when the max grows. The output is `acc / l`.
//!
//! A causal mask (an additive constant that masks key `j` of query row `i` exactly when
//! `j > i + off`, `off ≥ 0`, with -inf or a value at least `-MASKED` below the row's visible
//! ones) lets a block stop at the last key tile its last query row can see: the tiles past
//! it would only add zeros. (Unless a hidden key's score is NaN: the reference then gives
//! NaN rows, while skipped tiles are never read, as in FlashAttention's causal mode.)

use super::rows::{both, hold, lt, online_step};
use super::unravel;
use super::{add, and, broadcast_index, builtin, div, emitter, exp_sub, mul, ravel, rem};
use super::{Emitter, Kernel, Launch, R, ROW_BLOCK};
use crate::ir::{BinaryOp, DType, Graph, NodeId, Op, Tensor};
use crate::kernel::ir::{
    Builtin, Combiner, Expr, FragRole, Fragment, IndexOp, Precision, ReduceOp, Scope, SharedArray,
    Stmt,
};

/// Registers a lane may spend on query elements and accumulators.
const MAX_HELD: usize = 32;

/// How far below a row's visible mask values a key's must be to count as masked for
/// skipping: its weight `exp(score + mask - max)` is then exactly 0 in f32 (and in the
/// reference's f64) unless scores differ by about 1e8, far outside what f32 attention can
/// represent meaningfully.
pub const MASKED: f64 = -1e8;

/// The attention kernel of a fused body `softmax(f(mm1)) · V` whose output is the second
/// product, possibly through layout ops (the heads' transpose and reshape back to the model
/// dim, which then cost nothing: each output is stored at its place in the final layout),
/// or `None` when the body has another shape (it then lowers as a pointwise kernel).
pub(super) fn lower_attention_gpu(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: &str,
    precision: Precision,
    constant: &dyn Fn(u32) -> Option<std::sync::Arc<Tensor>>,
) -> R<Option<Kernel>> {
    let node = |id: NodeId| &body.nodes[id];
    // The second product, under the layout ops from it to the output.
    let mut root = body.outputs[0].1;
    let mut layout = Vec::new();
    while let Op::Reshape(_) | Op::Transpose(_) = node(root).op {
        layout.push(root);
        root = node(root).inputs[0];
    }
    layout.reverse();
    if node(root).op != Op::MatMul {
        return Ok(None);
    }
    let (mut p, v) = (node(root).inputs[0], node(root).inputs[1]);
    // A NaN guard after the softmax (zero for a fully masked row): rows whose softmax is
    // NaN (no visible key, or a NaN or +inf score) store zeros.
    let mut zero_nan_rows = false;
    if let Some((s, fill)) = crate::optimize::rules::fuse::nan_guard(body, p) {
        let zero = matches!(&node(fill).op, Op::Constant(t) if t.to_f64() == [0.0]);
        if !zero {
            return Ok(None);
        }
        (p, zero_nan_rows) = (s, true);
    }
    if !matches!(node(p).op, Op::Softmax { axis } if axis + 1 == node(p).ty.rank()) {
        return Ok(None);
    }
    let x = node(p).inputs[0];
    let Some(mm1) = (0..body.nodes.len()).find(|&i| i != root && node(i).op == Op::MatMul) else {
        return Ok(None);
    };
    let (q, kt) = (node(mm1).inputs[0], node(mm1).inputs[1]);
    let out_shape = node(root).ty.shape.clone();
    let r = out_shape.len();
    let (sx, sq, sk, sv) = (
        node(x).ty.shape.clone(),
        node(q).ty.shape.clone(),
        node(kt).ty.shape.clone(),
        node(v).ty.shape.clone(),
    );
    let ranked = [&sx, &sq, &sk, &sv].iter().all(|s| s.len() >= 2);
    if !ranked || r < 2 || sx.len() != r || sx[..r - 1] != out_shape[..r - 1] {
        return Ok(None);
    }
    let (d, keys, cols) = (sq[sq.len() - 1], sx[r - 1], out_shape[r - 1]);
    let dtypes = [q, kt, v].map(|id| node(id).ty.dtype);
    let tc =
        dtypes.iter().all(|&t| t == dtypes[0]) && matches!(dtypes[0], DType::F16 | DType::BF16);
    let (dp, ep) = (d.next_multiple_of(FRAG), cols.next_multiple_of(FRAG));
    let tc = tc && dp <= 128 && ep <= 128 && out_shape[r - 2] >= FRAG && keys >= FRAG;
    let causal = causal_offset(body, inputs, x, mm1, (out_shape[r - 2], keys), constant);
    let a = Attention {
        layout,
        q,
        kt,
        v,
        x,
        mm1,
        sq,
        sk,
        sv,
        out_shape,
        d,
        keys,
        cols,
        causal,
        zero_nan_rows,
    };
    match tc {
        true => tensor_core(body, inputs, out, name, &a, dtypes[0]).map(Some),
        false => tiled(body, inputs, out, name, &a, precision),
    }
}

/// The K/V-tiled kernel (see the module's documentation), for any dtype: a group of
/// `width` lanes per query row, holding its query elements and a share of the output
/// columns in registers; `None` when those are more than [`MAX_HELD`].
fn tiled(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: &str,
    a: &Attention,
    precision: Precision,
) -> R<Option<Kernel>> {
    let (q, kt, v, x, mm1) = (a.q, a.kt, a.v, a.x, a.mm1);
    let (d, keys, cols) = (a.d, a.keys, a.cols);
    let (sq, sk, sv, out_shape, layout) = (&a.sq, &a.sk, &a.sv, &a.out_shape, &a.layout);
    let r = out_shape.len();
    let width = d.max(cols).next_power_of_two().clamp(1, 32);
    let (per_d, per_e) = (d.div_ceil(width), cols.div_ceil(width));
    if per_d + per_e > MAX_HELD {
        return Ok(None);
    }
    let rows: usize = out_shape[..r - 1].iter().product();
    let mut e = emitter(body, inputs);
    if rows == 0 {
        return Ok(Some(kernel(e, inputs, out, name, precision, 1)));
    }
    // A block owns `per_block` consecutive query rows of one batch, so its rows share the
    // K and V tiles it stages.
    let per_block = ROW_BLOCK / width;
    let s_len = out_shape[r - 2];
    let q_tiles = s_len.div_ceil(per_block);
    let bid = builtin(Builtin::Block);
    let tid = builtin(Builtin::Thread);
    let bflat = e.bind(div(bid.clone(), q_tiles));
    let batch = unravel(&bflat, &out_shape[..r - 2]);
    let local = e.bind(add(
        mul(rem(bid, q_tiles), Expr::I(per_block as i64)),
        div(tid.clone(), width),
    ));
    // Groups past the last row redo it without storing, so every lane reaches the shuffles
    // and barriers.
    let i = e.bind(Expr::Index(
        IndexOp::Min,
        Box::new(local.clone()),
        Box::new(Expr::I(s_len as i64 - 1)),
    ));
    let live = (!s_len.is_multiple_of(per_block)).then(|| lt(local, s_len));
    let lane = e.bind(rem(tid, width));
    let row = e.bind(add(mul(bflat, Expr::I(s_len as i64)), i.clone()));
    let mut prefix = batch.clone();
    prefix.push(i.clone());
    // Lane l holds elements l, l + width, … of the head dim and of the output columns.
    let share = |e: &mut Emitter, n: usize, per: usize| -> Vec<(Expr, Option<Expr>)> {
        (0..per)
            .map(|k| {
                let j = e.bind(add(lane.clone(), Expr::I((k * width) as i64)));
                let valid = ((k + 1) * width > n).then(|| lt(j.clone(), n));
                (j, valid)
            })
            .collect()
    };
    let ds = share(&mut e, d, per_d);
    let es = share(&mut e, cols, per_e);
    let at = |shape: &[usize], tail: [Expr; 2]| {
        let mut idx = broadcast_index(&batch, &shape[..shape.len() - 2]);
        idx.extend(tail);
        idx
    };
    let qs: Vec<Expr> = ds
        .iter()
        .map(|(dk, valid)| hold(&mut e, q, &at(sq, [i.clone(), dk.clone()]), valid.as_ref()))
        .collect::<R<_>>()?;
    let bin = |op, a: Expr, b: Expr| Expr::Binary(op, Box::new(a), Box::new(b));
    let (m, l) = (e.start(f64::NEG_INFINITY), e.start(0.0));
    let accs: Vec<u32> = (0..per_e).map(|_| e.start(0.0)).collect();
    // Keys per tile: as many (up to 32) as keep the K and V tiles within 40 KB.
    let size = precision.dtype().size();
    let mut tk = 32;
    while tk > 1 && tk * (d + cols) * size > 40 << 10 {
        tk /= 2;
    }
    let tile = e.var();
    e.open();
    let j0 = e.bind(mul(Expr::Var(tile), Expr::I(tk as i64)));
    // The tile: K rows in s0 (key-major, so a group's lanes read consecutive elements) and V
    // rows in s1; 0 past the last key.
    stage(&mut e, 0, tk * d, ROW_BLOCK, &mut |e, flat| {
        let (jj, dk) = (e.bind(div(flat.clone(), d)), e.bind(rem(flat, d)));
        let gj = e.bind(add(j0.clone(), jj));
        let ok = lt(gj.clone(), keys);
        hold(e, kt, &at(sk, [dk, gj]), Some(&ok))
    })?;
    stage(&mut e, 1, tk * cols, ROW_BLOCK, &mut |e, flat| {
        let (jj, c) = (e.bind(div(flat.clone(), cols)), e.bind(rem(flat, cols)));
        let gj = e.bind(add(j0.clone(), jj));
        let ok = lt(gj.clone(), keys);
        hold(e, v, &at(sv, [gj, c]), Some(&ok))
    })?;
    e.push(Stmt::Barrier);
    let jj = e.var();
    e.open();
    let j = e.bind(add(j0.clone(), Expr::Var(jj)));
    // The score: the lanes' partial dot products, summed across the group.
    let s = e.start(0.0);
    for ((dk, valid), qk) in ds.iter().zip(&qs) {
        e.open();
        let kv = Expr::Shared {
            array: 0,
            index: Box::new(add(mul(Expr::Var(jj), Expr::I(d as i64)), dk.clone())),
        };
        e.push(Stmt::Let {
            var: s,
            value: bin(
                BinaryOp::Add,
                Expr::Var(s),
                bin(BinaryOp::Mul, qk.clone(), kv),
            ),
        });
        e.close_under(valid.clone());
    }
    e.push(Stmt::Reduce {
        scope: Scope::Warp(width),
        combiner: Combiner::Op(ReduceOp::Sum),
        vars: vec![s],
    });
    // Through the elementwise chain to the softmax input.
    let mut xi = prefix.clone();
    xi.push(j.clone());
    e.remember(
        mm1,
        &broadcast_index(&xi, &body.nodes[mm1].ty.shape),
        Expr::Var(s),
    );
    let xv = e.value(x, &xi)?;
    let (t, c, pj) = online_step(&mut e, m, xv);
    e.push(Stmt::Let {
        var: l,
        value: bin(
            BinaryOp::Add,
            bin(BinaryOp::Mul, Expr::Var(l), c.clone()),
            pj.clone(),
        ),
    });
    for ((ek, valid), &acc) in es.iter().zip(&accs) {
        e.open();
        let vv = Expr::Shared {
            array: 1,
            index: Box::new(add(mul(Expr::Var(jj), Expr::I(cols as i64)), ek.clone())),
        };
        e.push(Stmt::Let {
            var: acc,
            value: bin(
                BinaryOp::Add,
                bin(BinaryOp::Mul, Expr::Var(acc), c.clone()),
                bin(BinaryOp::Mul, pj.clone(), vv),
            ),
        });
        e.close_under(valid.clone());
    }
    e.push(Stmt::Let { var: m, value: t });
    let walk = e.close();
    // The tile's keys: all but past the last key (the same count in every thread).
    let left = Expr::Index(
        IndexOp::Sub,
        Box::new(Expr::I(keys as i64)),
        Box::new(j0.clone()),
    );
    e.push(Stmt::For {
        var: jj,
        start: Expr::I(0),
        end: Expr::Index(IndexOp::Min, Box::new(Expr::I(tk as i64)), Box::new(left)),
        step: Expr::I(1),
        uniform: true,
        body: walk,
    });
    // The next tile's staging overwrites this one.
    e.push(Stmt::Barrier);
    let tiles = e.close();
    // The block's last query row, for a causal mask's last tile.
    let last = Expr::Index(
        IndexOp::Min,
        Box::new(add(
            mul(
                rem(builtin(Builtin::Block), q_tiles),
                Expr::I(per_block as i64),
            ),
            Expr::I(per_block as i64 - 1),
        )),
        Box::new(Expr::I(s_len as i64 - 1)),
    );
    let end = a.tiles_end(&mut e, last, tk);
    e.push(Stmt::For {
        var: tile,
        start: Expr::I(0),
        end,
        step: Expr::I(1),
        uniform: true,
        body: tiles,
    });
    for ((ek, valid), &acc) in es.iter().zip(&accs) {
        e.open();
        let mut idx = prefix.clone();
        idx.push(ek.clone());
        let flat = add(mul(row.clone(), Expr::I(cols as i64)), ek.clone());
        e.push(Stmt::Store {
            buf: out,
            index: place(body, layout, out_shape, idx, flat),
            value: a.finish(Expr::Var(acc), Expr::Var(l)),
        });
        e.close_under(both(valid.clone(), live.clone()));
    }
    let grid = (rows / s_len * q_tiles).max(1);
    let array = |len| SharedArray {
        dtype: precision.dtype(),
        len,
    };
    Ok(Some(Kernel {
        shared: vec![array(tk * d), array(tk * cols)],
        ..kernel(e, inputs, out, name, precision, grid)
    }))
}

fn kernel(
    e: Emitter,
    inputs: &[u32],
    out: u32,
    name: &str,
    precision: Precision,
    grid: usize,
) -> Kernel {
    let launch = Launch {
        grid,
        block: ROW_BLOCK,
    };
    e.finish(name, launch, precision, inputs, out)
}

/// Fragment edge (`wmma` 16×16×16).
const FRAG: usize = 16;
/// Keys per tile of the tensor-core kernel.
const KEYS: usize = 32;

/// The nodes and sizes of a fused attention body.
struct Attention {
    /// The layout ops from the second product to the output, in order.
    layout: Vec<NodeId>,
    q: NodeId,
    kt: NodeId,
    v: NodeId,
    /// The softmax input (the scores through the fused chain).
    x: NodeId,
    /// The first product (the scores).
    mm1: NodeId,
    sq: Vec<usize>,
    sk: Vec<usize>,
    sv: Vec<usize>,
    out_shape: Vec<usize>,
    /// Head dim, keys, output columns.
    d: usize,
    keys: usize,
    cols: usize,
    /// `Some(off)`: a causal mask hides key `j` from query row `i` when `j > i + off`.
    causal: Option<usize>,
    /// Rows whose softmax is NaN store zeros (the exporters' guard after the softmax).
    zero_nan_rows: bool,
}

impl Attention {
    /// An output element from its accumulator and the row's softmax sum `l`: `acc / l`, or
    /// under a NaN guard 0 where the softmax row is NaN. That is where `l` is not positive:
    /// 0 when every key is masked, NaN when a score is NaN or +inf (a row's softmax is NaN
    /// in every element or in none).
    fn finish(&self, acc: Expr, l: Expr) -> Expr {
        let bin = |op, a: Expr, b: Expr| Expr::Binary(op, Box::new(a), Box::new(b));
        let out = bin(BinaryOp::Div, acc, l.clone());
        if !self.zero_nan_rows {
            return out;
        }
        Expr::Select(
            Box::new(bin(BinaryOp::Greater, l, Expr::F(0.0))),
            Box::new(out),
            Box::new(Expr::F(0.0)),
        )
    }

    /// How many key tiles of `tile` keys a block must walk whose last query row is `last`:
    /// all of them, or with a causal mask those up to the last key that row sees (bound
    /// once, before the loop).
    fn tiles_end(&self, e: &mut Emitter, last: Expr, tile: usize) -> Expr {
        let all = Expr::I(self.keys.div_ceil(tile) as i64);
        match self.causal {
            None => all,
            Some(off) => e.bind(Expr::Index(
                IndexOp::Min,
                Box::new(all),
                Box::new(add(div(add(last, Expr::I(off as i64)), tile), Expr::I(1))),
            )),
        }
    }
}

/// The offset of a causal mask added (as the last op) to the scores `x` of a body's first
/// product `mm1`: `Some(off)` when the added value is a constant read as `[rows, keys]`
/// (leading dims 1) that, in every row `i`, is finite for the keys `j <= i + off` and, for the
/// others, -inf or at least `-MASKED` below the largest of those (so their weight is exactly
/// 0), with `off ≥ 0` (every row sees at least one key) and some key hidden from the first row.
fn causal_offset(
    body: &Graph,
    inputs: &[u32],
    x: NodeId,
    mm1: NodeId,
    (rows, keys): (usize, usize),
    constant: &dyn Fn(u32) -> Option<std::sync::Arc<Tensor>>,
) -> Option<usize> {
    let n = &body.nodes[x];
    if n.op != Op::Binary(BinaryOp::Add) || x == mm1 || rows == 0 || keys == 0 {
        return None;
    }
    // The mask: a constant input, or one cast to the scores' type (a large constant's cast
    // is not folded), its values rounded as the cast rounds them.
    let (node, m) = n.inputs.iter().find_map(|&m| {
        let (input, cast) = match body.nodes[m].op {
            Op::Cast(d) if d.is_float() => (body.nodes[m].inputs[0], Some(d)),
            _ => (m, None),
        };
        let k = body.inputs.iter().position(|&i| i == input)?;
        let t = constant(inputs[k])?;
        let values = match cast {
            Some(d) => Tensor::from_f64(d, t.shape().to_vec(), &t.to_f64()).to_f64(),
            None => t.to_f64(),
        };
        Some((m, values))
    })?;
    // The shape the body reads it as (a reshape shares its input's buffer).
    let s = &body.nodes[node].ty.shape;
    let r = s.len();
    let read_as = r >= 2 && s[r - 2] == rows && s[r - 1] == keys;
    if !read_as || s[..r - 2].iter().any(|&d| d != 1) || m.len() != rows * keys {
        return None;
    }
    // In a row, the keys the row sees (a finite prefix) and those it does not.
    let split = |row: &[f64], seen: usize| {
        let (a, b) = row.split_at(seen);
        let top = a.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        a.iter().all(|v| v.is_finite())
            && b.iter()
                .all(|&v| v == f64::NEG_INFINITY || v <= top + MASKED)
    };
    // The first row fixes the offset: its keys up to the last one not far below its top.
    let row0 = &m[..keys];
    let top0 = row0
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .fold(f64::NEG_INFINITY, f64::max);
    let seen0 = row0
        .iter()
        .rposition(|&v| v.is_finite() && v > top0 + MASKED)?
        + 1;
    let off = seen0 - 1;
    let fits = (0..rows).all(|i| split(&m[i * keys..(i + 1) * keys], (i + off + 1).min(keys)));
    (fits && off + 1 < keys).then_some(off)
}

/// The flash-style tiled kernel for f16/bf16 operands (head dim and output width ≤ 128).
///
/// A block of `W` warps owns `16·W` query rows of one batch; each warp owns 16 of them and
/// keeps their query as tensor-core fragments (staged once through shared memory) and
/// their output accumulators (f32) in shared memory. The keys are walked in tiles of
/// [`KEYS`]: the block stages the tile of Kᵀ and of V in shared memory (in the storage
/// type, 0 past the edges), then each warp
/// 1. computes its 16×KEYS scores with `wmma` (f32 accumulators) into shared memory;
/// 2. applies the fused chain (scale, mask) and the online softmax: two lanes per query
///    row, each with half of the tile's keys, merge the tile max and sum with one shuffle,
///    rescale their half of the row's accumulators by `exp(m_old − m)`, and write the
///    probabilities (in the storage type) to shared memory;
/// 3. adds their product with the V tile to the accumulators (`wmma`: the accumulators
///    are loaded as fragments, multiplied into and stored back).
///
/// Four barriers per tile, each one needed (the interpreter's race check fails without
/// any of them). Nothing of size S×S exists; K and V are read once per block of queries.
/// The output is `acc / l` (NaN for a row whose keys are all masked, as the reference).
/// `W` is 4 when the head dim and output width are at most 64, else 2, so the shared
/// memory stays under 48 KB.
fn tensor_core(
    body: &Graph,
    inputs: &[u32],
    out: u32,
    name: &str,
    a: &Attention,
    dtype: DType,
) -> R<Kernel> {
    let (dp, ep) = (a.d.next_multiple_of(FRAG), a.cols.next_multiple_of(FRAG));
    let warps = if dp.max(ep) <= 64 { 4 } else { 2 };
    let threads = 32 * warps;
    let block_rows = FRAG * warps;
    let r = a.out_shape.len();
    let s_len = a.out_shape[r - 2];
    let q_tiles = s_len.div_ceil(block_rows);
    let batches: usize = a.out_shape[..r - 2].iter().product();
    let mut e = emitter(body, inputs);
    let i = |n: usize| Expr::I(n as i64);
    let bin = |op, x: Expr, y: Expr| Expr::Binary(op, Box::new(x), Box::new(y));
    let bid = builtin(Builtin::Block);
    let tid = builtin(Builtin::Thread);
    let q0 = e.bind(mul(rem(bid.clone(), q_tiles), i(block_rows)));
    let bflat = e.bind(div(bid, q_tiles));
    let batch = unravel(&bflat, &a.out_shape[..r - 2]);
    let warp = e.bind(div(tid.clone(), 32));
    let lane = e.bind(rem(tid.clone(), 32));
    // This lane's query row (of the warp's 16) and half of the row's keys and columns.
    let row = e.bind(div(lane.clone(), 2));
    let half = e.bind(rem(lane, 2));
    let gi = e.bind(add(
        add(q0.clone(), mul(warp.clone(), i(FRAG))),
        row.clone(),
    ));
    let at = |shape: &[usize], tail: [Expr; 2]| {
        let mut idx = broadcast_index(&batch, &shape[..shape.len() - 2]);
        idx.extend(tail);
        idx
    };
    // Shared arrays: s0 queries, s1 a Kᵀ tile, s2 a V tile, s3 f32 scores, s4
    // probabilities, s5 f32 output accumulators.
    let (s_q, s_kt, s_v, s_s, s_p, s_o) = (0u32, 1u32, 2u32, 3u32, 4u32, 5u32);
    // Fragments: the query's (A), then a Kᵀ (B), scores (acc), probabilities (A), V (B),
    // output (acc).
    let nq = dp / FRAG;
    let fq: Vec<u32> = (0..nq as u32).collect();
    let (fk, fs, fp, fv, fo) = (
        nq as u32,
        nq as u32 + 1,
        nq as u32 + 2,
        nq as u32 + 3,
        nq as u32 + 4,
    );
    // Stage the block's queries (0 past the last row and the head dim), then load the
    // warp's query fragments.
    stage(&mut e, s_q, block_rows * dp, threads, &mut |e, flat| {
        let (qi, dk) = (e.bind(div(flat.clone(), dp)), e.bind(rem(flat, dp)));
        let gq = e.bind(add(q0.clone(), qi));
        let ok = and(lt(gq.clone(), s_len), lt(dk.clone(), a.d));
        hold(e, a.q, &at(&a.sq, [gq, dk]), Some(&ok))
    })?;
    // This lane's half of its row's accumulators, zeroed.
    let warp_rows = e.bind(mul(warp.clone(), i(FRAG)));
    let my_acc = e.bind(add(
        mul(add(warp_rows.clone(), row.clone()), i(ep)),
        mul(half.clone(), i(ep / 2)),
    ));
    for c in 0..ep / 2 {
        e.push(Stmt::SharedStore {
            array: s_o,
            index: add(my_acc.clone(), i(c)),
            value: Expr::F(0.0),
        });
    }
    e.push(Stmt::Barrier);
    for (kd, &f) in fq.iter().enumerate() {
        e.push(Stmt::FragLoad {
            frag: f,
            array: s_q,
            offset: add(mul(warp_rows.clone(), i(dp)), i(kd * FRAG)),
            ld: dp,
        });
    }
    let (m, l) = (e.start(f64::NEG_INFINITY), e.start(0.0));
    let scores = e.bind(mul(warp.clone(), i(FRAG * KEYS)));
    let my_scores = e.bind(add(scores.clone(), mul(row.clone(), i(KEYS))));
    let tile = e.var();
    e.open();
    let j0 = e.bind(mul(Expr::Var(tile), i(KEYS)));
    // Stage Kᵀ (dp × KEYS) and V (KEYS × ep) of this tile.
    stage(&mut e, s_kt, dp * KEYS, threads, &mut |e, flat| {
        let (dk, jj) = (e.bind(div(flat.clone(), KEYS)), e.bind(rem(flat, KEYS)));
        let gj = e.bind(add(j0.clone(), jj));
        let ok = and(lt(dk.clone(), a.d), lt(gj.clone(), a.keys));
        hold(e, a.kt, &at(&a.sk, [dk, gj]), Some(&ok))
    })?;
    stage(&mut e, s_v, KEYS * ep, threads, &mut |e, flat| {
        let (jj, c) = (e.bind(div(flat.clone(), ep)), e.bind(rem(flat, ep)));
        let gj = e.bind(add(j0.clone(), jj));
        let ok = and(lt(gj.clone(), a.keys), lt(c.clone(), a.cols));
        hold(e, a.v, &at(&a.sv, [gj, c]), Some(&ok))
    })?;
    e.push(Stmt::Barrier);
    // 1. Scores: the warp's 16 queries × the tile's keys.
    for nb in 0..KEYS / FRAG {
        e.push(Stmt::FragFill {
            frag: fs,
            value: 0.0,
        });
        for (kd, &f) in fq.iter().enumerate() {
            e.push(Stmt::FragLoad {
                frag: fk,
                array: s_kt,
                offset: i(kd * FRAG * KEYS + nb * FRAG),
                ld: KEYS,
            });
            e.push(Stmt::FragMma {
                acc: fs,
                a: f,
                b: fk,
            });
        }
        e.push(Stmt::FragStore {
            array: s_s,
            offset: add(scores.clone(), i(nb * FRAG)),
            ld: KEYS,
            frag: fs,
        });
    }
    e.push(Stmt::Barrier);
    // 2. The fused chain and the online softmax, half a tile row per lane.
    let per = KEYS / 2;
    let first = e.bind(mul(half.clone(), i(per)));
    let mut xs = Vec::with_capacity(per);
    for c in 0..per {
        let jj = e.bind(add(first.clone(), i(c)));
        let gj = e.bind(add(j0.clone(), jj.clone()));
        let score = e.bind(Expr::Shared {
            array: s_s,
            index: Box::new(add(my_scores.clone(), jj)),
        });
        let xv = e.start(f64::NEG_INFINITY);
        e.open();
        let mut xi = batch.clone();
        xi.extend([gi.clone(), gj.clone()]);
        e.remember(
            a.mm1,
            &broadcast_index(&xi, &body.nodes[a.mm1].ty.shape),
            score,
        );
        let val = e.value(a.x, &xi)?;
        e.push(Stmt::Let {
            var: xv,
            value: val,
        });
        e.close_under(Some(and(lt(gi.clone(), s_len), lt(gj, a.keys))));
        xs.push(xv);
    }
    let tmax = e.var();
    let fold = |op, vars: &[u32]| {
        vars[1..].iter().fold(Expr::Var(vars[0]), |acc, &x| {
            Expr::Combine(op, Box::new(acc), Box::new(Expr::Var(x)))
        })
    };
    e.push(Stmt::Let {
        var: tmax,
        value: fold(ReduceOp::Max, &xs),
    });
    e.push(Stmt::Reduce {
        scope: Scope::Warp(2),
        combiner: Combiner::Op(ReduceOp::Max),
        vars: vec![tmax],
    });
    // The new max `t`; `base` is 0 while every key so far is masked (so no -inf - -inf).
    let t = e.bind(Expr::Combine(
        ReduceOp::Max,
        Box::new(Expr::Var(m)),
        Box::new(Expr::Var(tmax)),
    ));
    let base = e.bind(Expr::Select(
        Box::new(bin(BinaryOp::Equal, t.clone(), Expr::F(f64::NEG_INFINITY))),
        Box::new(Expr::F(0.0)),
        Box::new(t.clone()),
    ));
    let c = e.bind(exp_sub(Expr::Var(m), base.clone()));
    let mut ps = Vec::with_capacity(per);
    for (k, &xv) in xs.iter().enumerate() {
        let p = e.var();
        e.push(Stmt::Let {
            var: p,
            value: exp_sub(Expr::Var(xv), base.clone()),
        });
        e.push(Stmt::SharedStore {
            array: s_p,
            index: add(
                add(mul(warp_rows.clone(), i(KEYS)), mul(row.clone(), i(KEYS))),
                add(first.clone(), i(k)),
            ),
            value: Expr::Var(p),
        });
        ps.push(p);
    }
    let tsum = e.var();
    e.push(Stmt::Let {
        var: tsum,
        value: fold(ReduceOp::Sum, &ps),
    });
    e.push(Stmt::Reduce {
        scope: Scope::Warp(2),
        combiner: Combiner::Op(ReduceOp::Sum),
        vars: vec![tsum],
    });
    e.push(Stmt::Let {
        var: l,
        value: bin(
            BinaryOp::Add,
            bin(BinaryOp::Mul, Expr::Var(l), c.clone()),
            Expr::Var(tsum),
        ),
    });
    e.push(Stmt::Let { var: m, value: t });
    for cc in 0..ep / 2 {
        let index = add(my_acc.clone(), i(cc));
        let old = Expr::Shared {
            array: s_o,
            index: Box::new(index.clone()),
        };
        e.push(Stmt::SharedStore {
            array: s_o,
            index,
            value: bin(BinaryOp::Mul, old, c.clone()),
        });
    }
    e.push(Stmt::Barrier);
    // 3. The accumulators += the probabilities × the V tile.
    let warp_acc = e.bind(mul(warp_rows.clone(), i(ep)));
    for nb in 0..ep / FRAG {
        let offset = add(warp_acc.clone(), i(nb * FRAG));
        e.push(Stmt::FragLoad {
            frag: fo,
            array: s_o,
            offset: offset.clone(),
            ld: ep,
        });
        for kk in 0..KEYS / FRAG {
            e.push(Stmt::FragLoad {
                frag: fp,
                array: s_p,
                offset: add(mul(warp_rows.clone(), i(KEYS)), i(kk * FRAG)),
                ld: KEYS,
            });
            e.push(Stmt::FragLoad {
                frag: fv,
                array: s_v,
                offset: i(kk * FRAG * ep + nb * FRAG),
                ld: ep,
            });
            e.push(Stmt::FragMma {
                acc: fo,
                a: fp,
                b: fv,
            });
        }
        e.push(Stmt::FragStore {
            array: s_o,
            offset,
            ld: ep,
            frag: fo,
        });
    }
    // The next tile's staging overwrites the K and V tiles just read.
    e.push(Stmt::Barrier);
    let walk = e.close();
    let last = Expr::Index(
        IndexOp::Min,
        Box::new(add(q0.clone(), i(block_rows - 1))),
        Box::new(i(s_len - 1)),
    );
    let end = a.tiles_end(&mut e, last, KEYS);
    e.push(Stmt::For {
        var: tile,
        start: Expr::I(0),
        end,
        step: Expr::I(1),
        uniform: true,
        body: walk,
    });
    let out_row = e.bind(add(mul(bflat, i(s_len)), gi.clone()));
    for cc in 0..ep / 2 {
        let col = e.bind(add(mul(half.clone(), i(ep / 2)), i(cc)));
        let acc = Expr::Shared {
            array: s_o,
            index: Box::new(add(my_acc.clone(), i(cc))),
        };
        e.open();
        let mut idx = batch.clone();
        idx.extend([gi.clone(), col.clone()]);
        let flat = add(mul(out_row.clone(), i(a.cols)), col.clone());
        e.push(Stmt::Store {
            buf: out,
            index: place(body, &a.layout, &a.out_shape, idx, flat),
            value: a.finish(acc, Expr::Var(l)),
        });
        e.close_under(Some(and(lt(gi.clone(), s_len), lt(col, a.cols))));
    }
    let launch = Launch {
        grid: (batches * q_tiles).max(1),
        block: threads,
    };
    let array = |dtype, len| SharedArray { dtype, len };
    let mut frags: Vec<Fragment> = (0..nq)
        .map(|_| Fragment {
            role: FragRole::A,
            dtype,
        })
        .collect();
    for (role, dt) in [
        (FragRole::B, dtype),
        (FragRole::Acc, DType::F32),
        (FragRole::A, dtype),
        (FragRole::B, dtype),
        (FragRole::Acc, DType::F32),
    ] {
        frags.push(Fragment { role, dtype: dt });
    }
    Ok(Kernel {
        shared: vec![
            array(dtype, block_rows * dp),
            array(dtype, dp * KEYS),
            array(dtype, KEYS * ep),
            array(DType::F32, warps * FRAG * KEYS),
            array(dtype, warps * FRAG * KEYS),
            array(DType::F32, warps * FRAG * ep),
        ],
        frags,
        ..e.finish(name, launch, Precision::F32, inputs, out)
    })
}

/// Stages `len` elements into shared `array` at their flat index, `threads` threads taking
/// turns in a loop (the last turn guarded when `len` is not a multiple; unrolled, the
/// loads' addresses would be held across the key walk: 255 registers and spills at head
/// dim 128); `value` gives element `flat`.
fn stage(
    e: &mut Emitter,
    array: u32,
    len: usize,
    threads: usize,
    value: &mut dyn FnMut(&mut Emitter, Expr) -> R<Expr>,
) -> R<()> {
    e.serial_loop(len.div_ceil(threads), &mut |e, l| {
        let flat = e.bind(add(
            builtin(Builtin::Thread),
            mul(l, Expr::I(threads as i64)),
        ));
        e.open();
        let v = value(e, flat.clone())?;
        e.push(Stmt::SharedStore {
            array,
            index: flat.clone(),
            value: v,
        });
        e.close_under((!len.is_multiple_of(threads)).then(|| lt(flat, len)));
        Ok(())
    })
}

/// The flat output index of element `idx` (flat index `flat`) of the second product (of
/// shape `shape`): its place after the layout ops. Reshapes keep the flat index; from the
/// first transpose on, the multi-index is permuted.
fn place(body: &Graph, layout: &[NodeId], shape: &[usize], idx: Vec<Expr>, flat: Expr) -> Expr {
    let is_transpose = |&n: &NodeId| matches!(body.nodes[n].op, Op::Transpose(_));
    let Some(t) = layout.iter().position(is_transpose) else {
        return flat;
    };
    let (mut idx, mut shape) = match t {
        0 => (idx, shape.to_vec()),
        _ => {
            let s = body.nodes[layout[t - 1]].ty.shape.clone();
            (unravel(&flat, &s), s)
        }
    };
    for &n in &layout[t..] {
        let to = body.nodes[n].ty.shape.clone();
        idx = match &body.nodes[n].op {
            Op::Transpose(perm) => perm.iter().map(|&p| idx[p].clone()).collect(),
            _ => unravel(&ravel(&idx, &shape), &to),
        };
        shape = to;
    }
    ravel(&idx, &shape)
}
