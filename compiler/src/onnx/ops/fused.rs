//! The fused transformer ops of opset 23 (Attention, RMSNormalization, RotaryEmbedding),
//! written out as the IR ops they are made of. The optimizer's recognizers and fusion rules
//! then build the kernels (a row kernel for the normalization, an attention kernel for the
//! `matmul → scale/mask → softmax → matmul` chain) as they do for the decomposed forms older
//! exporters write.

use super::{Ctx, Importer, R};
use crate::ir::{
    broadcast_shapes, fmt_shape, normalize_axis, BinaryOp, DType, Op, ReduceKind, Tensor, UnaryOp,
    Value,
};

impl Importer {
    /// `x / sqrt(mean(x², axes axis..) + epsilon) * scale`, computed in f32 for f16/bf16
    /// input (`stash_type` 1, the only one defined).
    pub(super) fn rms_normalization(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let (x, scale) = (c.req(0)?, c.req(1)?);
        let rank = self.ty(x).rank();
        let axis = normalize_axis(c.attrs.int_or("axis", -1)?, rank)?;
        let eps = c.attrs.float_or("epsilon", 1e-5)?;
        if c.attrs.int_or("stash_type", 1)? != 1 {
            return Err("stash_type other than 1 (float32) is not defined".into());
        }
        let d = self.dtype(x);
        if !d.is_float() {
            return Err(format!("input has dtype {d}, a float type is needed"));
        }
        let wide = matches!(d, DType::F16 | DType::BF16);
        let xf = if wide {
            self.emit(&format!("{name}/x_f32"), Op::Cast(DType::F32), &[x])?
        } else {
            x
        };
        let sq = self.bin(&format!("{name}/square"), BinaryOp::Mul, xf, xf)?;
        let mean = Op::Reduce {
            kind: ReduceKind::Mean,
            axes: (axis..rank).collect(),
            keepdims: true,
        };
        let ms = self.emit(&format!("{name}/mean_square"), mean, &[sq])?;
        let rms = self.std_dev(ms, eps, name)?;
        let inv = self.un(&format!("{name}/inv_rms"), UnaryOp::Reciprocal, rms)?;
        let mut y = self.bin(&format!("{name}/normalized"), BinaryOp::Mul, xf, inv)?;
        if wide {
            y = self.emit(&format!("{name}/cast"), Op::Cast(d), &[y])?;
        }
        self.bin(name, BinaryOp::Mul, y, scale)
    }

    /// Rotates pairs of the first `rotary_embedding_dim` features of each head by the
    /// position's angle: halves (`x[..r/2]`, `x[r/2..r]`) or, `interleaved`, even and odd
    /// features. `cos`/`sin` are `[batch, seq, r/2]` (broadcast over a batch of 1), or
    /// `[positions, r/2]` rows picked by `position_ids`.
    pub(super) fn rotary_embedding(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let (x, mut cos, mut sin) = (c.req(0)?, c.req(1)?, c.req(2)?);
        let xs = self.shape(x);
        let interleaved = c.attrs.int_or("interleaved", 0)? != 0;
        let heads = c.attrs.int_or("num_heads", 0)?;
        // Work on [batch, heads, seq, head] (the 4-D layout).
        let (xh, back) = match xs.len() {
            4 => (x, None),
            3 => {
                let h = usize::try_from(heads)
                    .ok()
                    .filter(|&h| h > 0 && xs[2].is_multiple_of(h))
                    .ok_or_else(|| {
                        format!(
                            "3-D input {} needs num_heads dividing its hidden size, got {heads}",
                            fmt_shape(&xs)
                        )
                    })?;
                let split = vec![xs[0], xs[1], h, xs[2] / h];
                let r = self.emit(&format!("{name}/heads"), Op::Reshape(split), &[x])?;
                let t = self.emit(
                    &format!("{name}/bhsd"),
                    Op::Transpose(vec![0, 2, 1, 3]),
                    &[r],
                )?;
                (t, Some(xs.clone()))
            }
            r => return Err(format!("input must be 3-D or 4-D, got rank {r}")),
        };
        let s = self.shape(xh);
        let (b, seq, head) = (s[0], s[2], s[3]);
        let rot = match c.attrs.int_or("rotary_embedding_dim", 0)? {
            0 => head,
            r if r > 0 && r as usize <= head && r % 2 == 0 => r as usize,
            r => {
                return Err(format!(
                    "rotary_embedding_dim {r} must be even and at most the head size {head}"
                ))
            }
        };
        let half = rot / 2;
        if let Some(pos) = c.input(3) {
            cos = self.emit(
                &format!("{name}/cos_at"),
                Op::Gather { axis: 0 },
                &[cos, pos],
            )?;
            sin = self.emit(
                &format!("{name}/sin_at"),
                Op::Gather { axis: 0 },
                &[sin, pos],
            )?;
        }
        for (v, what) in [(cos, "cos"), (sin, "sin")] {
            let vs = self.shape(v);
            let ok = vs.len() == 3 && (vs[0] == b || vs[0] == 1) && vs[1] == seq && vs[2] == half;
            if !ok {
                let batch = if b == 1 {
                    "1".to_string()
                } else {
                    format!("{b} or 1")
                };
                return Err(format!(
                    "{what} cache (after position_ids) is {}, expected [{batch}, {seq}, {half}] for input {}",
                    fmt_shape(&vs),
                    fmt_shape(&xs)
                ));
            }
        }
        // [batch, 1, seq, r/2]: the same angle for every head.
        let cs = self.shape(cos);
        let per_head = vec![cs[0], 1, seq, half];
        let cos = self.emit(
            &format!("{name}/cos"),
            Op::Reshape(per_head.clone()),
            &[cos],
        )?;
        let sin = self.emit(&format!("{name}/sin"), Op::Reshape(per_head), &[sin])?;
        let pick = |me: &mut Self, tag: &str, start: usize, step: i64| -> R<Value> {
            let op = Op::Slice {
                starts: vec![0, 0, 0, start],
                steps: vec![1, 1, 1, step],
                lens: vec![s[0], s[1], s[2], half],
            };
            me.emit(&format!("{name}/{tag}"), op, &[xh])
        };
        let (x1, x2) = if interleaved {
            (pick(self, "x_even", 0, 2)?, pick(self, "x_odd", 1, 2)?)
        } else {
            (
                pick(self, "x_first", 0, 1)?,
                pick(self, "x_second", half, 1)?,
            )
        };
        let c1 = self.bin(&format!("{name}/cos_x1"), BinaryOp::Mul, cos, x1)?;
        let s2 = self.bin(&format!("{name}/sin_x2"), BinaryOp::Mul, sin, x2)?;
        let real = self.bin(&format!("{name}/real"), BinaryOp::Sub, c1, s2)?;
        let s1 = self.bin(&format!("{name}/sin_x1"), BinaryOp::Mul, sin, x1)?;
        let c2 = self.bin(&format!("{name}/cos_x2"), BinaryOp::Mul, cos, x2)?;
        let imag = self.bin(&format!("{name}/imag"), BinaryOp::Add, s1, c2)?;
        let mut y = if interleaved {
            let mut pair = s.clone();
            pair[3] = half;
            pair.push(1);
            let re = self.emit(
                &format!("{name}/real_pair"),
                Op::Reshape(pair.clone()),
                &[real],
            )?;
            let im = self.emit(&format!("{name}/imag_pair"), Op::Reshape(pair), &[imag])?;
            let both = self.emit(&format!("{name}/pairs"), Op::Concat { axis: 4 }, &[re, im])?;
            let mut flat = s.clone();
            flat[3] = rot;
            self.emit(&format!("{name}/rotated"), Op::Reshape(flat), &[both])?
        } else {
            self.emit(
                &format!("{name}/rotated"),
                Op::Concat { axis: 3 },
                &[real, imag],
            )?
        };
        if rot < head {
            let rest = Op::Slice {
                starts: vec![0, 0, 0, rot],
                steps: vec![1, 1, 1, 1],
                lens: vec![s[0], s[1], s[2], head - rot],
            };
            let pass = self.emit(&format!("{name}/pass"), rest, &[xh])?;
            y = self.emit(
                &format!("{name}/joined"),
                Op::Concat { axis: 3 },
                &[y, pass],
            )?;
        }
        match back {
            None => Ok(y),
            Some(shape) => {
                let t = self.emit(
                    &format!("{name}/bshd"),
                    Op::Transpose(vec![0, 2, 1, 3]),
                    &[y],
                )?;
                self.emit(name, Op::Reshape(shape), &[t])
            }
        }
    }

    /// Scaled dot-product attention (opset 23/24): 3-D inputs split into heads, the past
    /// key/value concatenated in front, a boolean or additive mask (padded with "masked" to
    /// the key length), a causal mask aligned to the last query, grouped-query heads, softcap,
    /// and rows with no visible key giving zeros. Outputs `Y`, `present_key`,
    /// `present_value` and the QK product (`qk_matmul_output_mode` 0–3).
    pub(super) fn attention(&mut self, c: &Ctx, name: &str) -> R<Vec<Value>> {
        let (q, k, v) = (c.req(0)?, c.req(1)?, c.req(2)?);
        let d = self.dtype(q);
        if !d.is_float() {
            return Err(format!("Q has dtype {d}, a float type is needed"));
        }
        let rank = self.ty(q).rank();
        if self.ty(k).rank() != rank || self.ty(v).rank() != rank {
            return Err("Q, K and V must have the same rank".into());
        }
        let q_heads = c.attrs.int("q_num_heads")?;
        let kv_heads = c.attrs.int("kv_num_heads")?;
        let (q, k, v) = match rank {
            4 => (q, k, v),
            3 => {
                let need = |h: Option<i64>, what: &str| {
                    h.filter(|&h| h > 0).map(|h| h as usize).ok_or_else(|| {
                        format!("3-D inputs need the attribute '{what}' (a positive head count)")
                    })
                };
                let (hq, hkv) = (
                    need(q_heads, "q_num_heads")?,
                    need(kv_heads, "kv_num_heads")?,
                );
                (
                    self.split_heads(q, hq, &format!("{name}/q"))?,
                    self.split_heads(k, hkv, &format!("{name}/k"))?,
                    self.split_heads(v, hkv, &format!("{name}/v"))?,
                )
            }
            r => return Err(format!("inputs must be 3-D or 4-D, got rank {r}")),
        };
        let (qs, ks, vs) = (self.shape(q), self.shape(k), self.shape(v));
        let (batch, hq, sq, dh) = (qs[0], qs[1], qs[2], qs[3]);
        let mut k = k;
        let mut v = v;
        let past = match (c.input(4), c.input(5)) {
            (Some(pk), Some(pv)) => Some((pk, pv)),
            (None, None) => None,
            _ => return Err("past_key and past_value must be given together".into()),
        };
        let past_len = match past {
            Some((pk, pv)) => {
                k = self.emit(
                    &format!("{name}/present_key"),
                    Op::Concat { axis: 2 },
                    &[pk, k],
                )?;
                v = self.emit(
                    &format!("{name}/present_value"),
                    Op::Concat { axis: 2 },
                    &[pv, v],
                )?;
                self.shape(pk)[2]
            }
            None => 0,
        };
        let (present_k, present_v) = (k, v);
        let (ks2, vs2) = (self.shape(k), self.shape(v));
        let hkv = ks2[1];
        let skv = ks2[2];
        if ks2[0] != batch || vs2[0] != batch || vs2[1] != hkv || vs2[2] != skv || ks2[3] != dh {
            return Err(format!(
                "Q {}, K {} and V {} do not agree (batch, heads, key length, head size)",
                fmt_shape(&qs),
                fmt_shape(&ks),
                fmt_shape(&vs)
            ));
        }
        if hkv == 0 || !hq.is_multiple_of(hkv) {
            return Err(format!(
                "{hq} query heads cannot share {hkv} key/value heads"
            ));
        }
        let nonpad = c.input(6);
        if nonpad.is_some() && past.is_some() {
            return Err("nonpad_kv_seqlen cannot be combined with past key/values".into());
        }

        // The additive bias: 0 where a key is visible, -inf where it is not.
        let ninf = self.konst(
            &format!("{name}/neg_inf"),
            Tensor::scalar(d, f64::NEG_INFINITY),
        )?;
        let zero = self.konst(&format!("{name}/zero"), Tensor::scalar(d, 0.0))?;
        let mut bias: Option<Value> = None;
        if let Some(m) = c.input(3) {
            let mut m = m;
            let full = [batch, hq, sq, skv];
            let given = self.shape(m);
            if given.len() > 4 {
                return Err(format!(
                    "attn_mask {} has rank {}; it must broadcast to (batch, q_num_heads, q_sequence_length, total_sequence_length) {}",
                    fmt_shape(&given),
                    given.len(),
                    fmt_shape(&full)
                ));
            }
            if given.is_empty() {
                // A scalar broadcasts to every query and key: it has no key dim to pad.
                m = self.emit(
                    &format!("{name}/mask_keys"),
                    Op::Broadcast(vec![1, skv]),
                    &[m],
                )?;
            }
            let ms = self.shape(m);
            let short = skv.checked_sub(*ms.last().unwrap_or(&0)).ok_or_else(|| {
                format!("attn_mask {} is longer than the {skv} keys", fmt_shape(&ms))
            })?;
            let is_bool = self.dtype(m) == DType::Bool;
            if short > 0 {
                // Keys past the mask's end are hidden.
                let mut pads = vec![(0, 0); ms.len()];
                if let Some(last) = pads.last_mut() {
                    *last = (0, short as i64);
                }
                let fill = if is_bool { 0.0 } else { f64::NEG_INFINITY };
                let op = Op::Pad {
                    pads,
                    mode: crate::ir::PadMode::Constant(crate::ir::F64(fill)),
                };
                m = self.emit(&format!("{name}/mask_padded"), op, &[m])?;
            }
            // Broadcasting the mask must not grow the scores (a larger batch or more heads
            // would silently change the output's shape).
            let padded = self.shape(m);
            if broadcast_shapes(&padded, &full).as_deref() != Some(&full[..]) {
                return Err(format!(
                    "attn_mask {} does not broadcast to (batch, q_num_heads, q_sequence_length, total_sequence_length) {}",
                    fmt_shape(&given),
                    fmt_shape(&full)
                ));
            }
            m = if is_bool {
                self.emit(&format!("{name}/mask_bias"), Op::Where, &[m, zero, ninf])?
            } else if self.dtype(m) != d {
                self.emit(&format!("{name}/mask_cast"), Op::Cast(d), &[m])?
            } else {
                m
            };
            bias = Some(m);
        }
        // Causal and sliding-window masks bound `diff = i + offset - j` for query i and key
        // j, where the offset is the number of keys before this query block: the past
        // length, or per batch `nonpad_kv_seqlen[b] - sq` (an external cache).
        let mut bounds: Vec<(Option<i64>, Option<i64>)> = Vec::new();
        if c.attrs.int_or("is_causal", 0)? != 0 {
            bounds.push((Some(0), None));
        }
        let left = c.attrs.int_or("left_window_size", -1)?;
        let right = c.attrs.int_or("right_window_size", -1)?;
        for (w, attr) in [(left, "left_window_size"), (right, "right_window_size")] {
            if w < -1 {
                return Err(format!("{attr} {w} must be -1 or nonnegative"));
            }
        }
        if left >= 0 {
            bounds.push((None, Some(left)));
        }
        if right >= 0 {
            bounds.push((Some(-right), None));
        }
        if !bounds.is_empty() {
            let positional =
                self.positional_bias(name, (sq, skv), (past_len, nonpad), &bounds, d)?;
            bias = Some(match bias {
                None => positional,
                Some(b) => self.bin(
                    &format!("{name}/mask_positional"),
                    BinaryOp::Add,
                    b,
                    positional,
                )?,
            });
        }
        if let Some(n) = nonpad {
            let pos: Vec<i64> = (0..skv as i64).collect();
            let pos = self.konst(&format!("{name}/key_pos"), Tensor::i64([1, 1, 1, skv], pos))?;
            let n = self.emit(&format!("{name}/nonpad"), Op::Cast(DType::I64), &[n])?;
            let n = self.emit(
                &format!("{name}/nonpad4"),
                Op::Reshape(vec![batch, 1, 1, 1]),
                &[n],
            )?;
            let ok = self.bin(&format!("{name}/key_ok"), BinaryOp::Less, pos, n)?;
            let pad = self.emit(&format!("{name}/key_pad"), Op::Where, &[ok, zero, ninf])?;
            bias = Some(match bias {
                None => pad,
                Some(b) => self.bin(&format!("{name}/mask_pad"), BinaryOp::Add, b, pad)?,
            });
        }

        // Grouped-query attention: each key/value head serves hq / hkv query heads in turn.
        if hq != hkv {
            let r = hq / hkv;
            for (t, tag) in [(&mut k, "k"), (&mut v, "v")] {
                let s = self.shape(*t);
                let one = self.emit(
                    &format!("{name}/{tag}_group"),
                    Op::Reshape(vec![s[0], s[1], 1, s[2], s[3]]),
                    &[*t],
                )?;
                let rep = self.emit(
                    &format!("{name}/{tag}_repeat"),
                    Op::Broadcast(vec![s[0], s[1], r, s[2], s[3]]),
                    &[one],
                )?;
                *t = self.emit(
                    &format!("{name}/{tag}_heads"),
                    Op::Reshape(vec![s[0], hq, s[2], s[3]]),
                    &[rep],
                )?;
            }
        }

        let scale = match c.attrs.get("scale") {
            Some(_) => c.attrs.float_or("scale", 0.0)?,
            None => 1.0 / (dh as f64).sqrt(),
        };
        let kt = self.emit(
            &format!("{name}/k_t"),
            Op::Transpose(vec![0, 1, 3, 2]),
            &[k],
        )?;
        let qk = self.emit(&format!("{name}/qk"), Op::MatMul, &[q, kt])?;
        let sc = self.scalar_like(&format!("{name}/scale"), qk, scale)?;
        let mut scores = self.bin(&format!("{name}/scores"), BinaryOp::Mul, qk, sc)?;
        let raw = scores;
        let softcap = c.attrs.float_or("softcap", 0.0)?;
        if softcap > 0.0 {
            let cap = self.scalar_like(&format!("{name}/softcap"), scores, softcap)?;
            let t = self.bin(&format!("{name}/capped"), BinaryOp::Div, scores, cap)?;
            let t = self.un(&format!("{name}/capped_tanh"), UnaryOp::Tanh, t)?;
            scores = self.bin(&format!("{name}/softcapped"), BinaryOp::Mul, t, cap)?;
        }
        let capped = scores;
        if let Some(b) = bias {
            scores = self.bin(&format!("{name}/biased"), BinaryOp::Add, scores, b)?;
        }
        let biased = scores;
        let rank4 = self.ty(scores).rank();
        let mut p = self.emit(
            &format!("{name}/probs"),
            Op::Softmax { axis: rank4 - 1 },
            &[scores],
        )?;
        if let Some(b) = bias {
            if self.may_mask_whole_rows(b) {
                // A row whose bias hides every key gives zeros, not NaN.
                let bs = self.shape(b);
                let row = Op::Reduce {
                    kind: ReduceKind::Max,
                    axes: vec![bs.len() - 1],
                    keepdims: true,
                };
                let top = self.emit(&format!("{name}/row_max"), row, &[b])?;
                let none = self.bin(&format!("{name}/row_hidden"), BinaryOp::Equal, top, ninf)?;
                p = self.emit(
                    &format!("{name}/probs_guarded"),
                    Op::Where,
                    &[none, zero, p],
                )?;
            }
        }
        let probs = p;
        let mut y = self.emit(&format!("{name}/pv"), Op::MatMul, &[p, v])?;
        if rank == 3 {
            let t = self.emit(
                &format!("{name}/y_bshd"),
                Op::Transpose(vec![0, 2, 1, 3]),
                &[y],
            )?;
            let ys = self.shape(t);
            y = self.emit(name, Op::Reshape(vec![ys[0], ys[1], ys[2] * ys[3]]), &[t])?;
        }
        let mut outs = vec![y, present_k, present_v];
        if c.node.output.len() > 3 && !c.node.output[3].is_empty() {
            outs.push(match c.attrs.int_or("qk_matmul_output_mode", 0)? {
                0 => raw,
                1 => capped,
                2 => biased,
                3 => probs,
                m => return Err(format!("qk_matmul_output_mode {m} is not defined")),
            });
        }
        Ok(outs)
    }

    /// The additive bias (0 visible, -inf hidden) of keys whose `diff = i + offset - j` lies
    /// outside any of `bounds` (inclusive lower, upper): a constant `[sq, skv]` for the
    /// past length as offset, or computed per batch from `nonpad_kv_seqlen`.
    fn positional_bias(
        &mut self,
        name: &str,
        (sq, skv): (usize, usize),
        (past_len, nonpad): (usize, Option<Value>),
        bounds: &[(Option<i64>, Option<i64>)],
        d: DType,
    ) -> R<Value> {
        // Built at import: bounded like any tensor before it is allocated.
        crate::ir::checked_numel(&[sq, skv])?;
        let inside = |diff: i64| {
            bounds
                .iter()
                .all(|&(lo, hi)| lo.is_none_or(|l| diff >= l) && hi.is_none_or(|h| diff <= h))
        };
        let Some(n) = nonpad else {
            let mut t = vec![0.0; sq * skv];
            for i in 0..sq {
                for j in 0..skv {
                    if !inside(i as i64 + past_len as i64 - j as i64) {
                        t[i * skv + j] = f64::NEG_INFINITY;
                    }
                }
            }
            return self.konst(
                &format!("{name}/positional"),
                Tensor::from_f64(d, vec![sq, skv], &t),
            );
        };
        let batch = self.ty(n).numel();
        let rel: Vec<i64> = (0..sq as i64)
            .flat_map(|i| (0..skv as i64).map(move |j| i - j - sq as i64))
            .collect();
        let rel = self.konst(
            &format!("{name}/rel_pos"),
            Tensor::i64([1, 1, sq, skv], rel),
        )?;
        let n = self.emit(&format!("{name}/kv_len"), Op::Cast(DType::I64), &[n])?;
        let n = self.emit(
            &format!("{name}/kv_len4"),
            Op::Reshape(vec![batch, 1, 1, 1]),
            &[n],
        )?;
        let diff = self.bin(&format!("{name}/diff"), BinaryOp::Add, rel, n)?;
        let mut ok: Option<Value> = None;
        for (k, &(lo, hi)) in bounds.iter().enumerate() {
            for (bound, op) in [(lo, BinaryOp::GreaterOrEqual), (hi, BinaryOp::LessOrEqual)] {
                let Some(b) = bound else { continue };
                let b = self.konst(&format!("{name}/bound{k}_{op:?}"), Tensor::i64([], vec![b]))?;
                let c = self.bin(&format!("{name}/within{k}_{op:?}"), op, diff, b)?;
                ok = Some(match ok {
                    None => c,
                    Some(o) => {
                        self.bin(&format!("{name}/within{k}_{op:?}_all"), BinaryOp::And, o, c)?
                    }
                });
            }
        }
        let ok = ok.expect("bounds is not empty");
        let zero = self.konst(&format!("{name}/pos_zero"), Tensor::scalar(d, 0.0))?;
        let ninf = self.konst(
            &format!("{name}/pos_neg_inf"),
            Tensor::scalar(d, f64::NEG_INFINITY),
        )?;
        self.emit(&format!("{name}/positional"), Op::Where, &[ok, zero, ninf])
    }

    /// `[batch, seq, heads·size]` as `[batch, heads, seq, size]`.
    fn split_heads(&mut self, x: Value, heads: usize, name: &str) -> R<Value> {
        let s = self.shape(x);
        if !s[2].is_multiple_of(heads) {
            return Err(format!(
                "hidden size {} of {} is not a multiple of {heads} heads",
                s[2],
                fmt_shape(&s)
            ));
        }
        let r = self.emit(
            &format!("{name}_heads"),
            Op::Reshape(vec![s[0], s[1], heads, s[2] / heads]),
            &[x],
        )?;
        self.emit(
            &format!("{name}_bhsd"),
            Op::Transpose(vec![0, 2, 1, 3]),
            &[r],
        )
    }

    /// False only for a bias known at compile time whose every row shows some key.
    fn may_mask_whole_rows(&self, bias: Value) -> bool {
        let Some(t) = self.constant(bias) else {
            return true;
        };
        let s = t.shape();
        let n = s.last().copied().unwrap_or(1).max(1);
        t.to_f64()
            .chunks(n)
            .any(|row| row.iter().all(|&x| x == f64::NEG_INFINITY))
    }
}
