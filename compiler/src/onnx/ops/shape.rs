//! Shape and data-movement ops whose parameters must be known at import: Tile, Split,
//! Slice, Pad, Range, Constant; and the ONNX rules for axes and Reshape specs.

use super::super::tensor::tensor_from_proto;
use super::{Ctx, Importer, R};
use crate::ir::{fmt_shape, normalize_axis, DType, Op, PadMode, Tensor, Value, F64};

impl Importer {
    pub(super) fn constant_attr(&self, c: &Ctx) -> R<Tensor> {
        let a = &c.attrs;
        if let Some(t) = a.get("value").and_then(|a| a.t.as_ref()) {
            return tensor_from_proto(t, self.base_dir.as_deref());
        }
        if let Some(f) = a.get("value_float") {
            return Ok(Tensor::scalar(DType::F32, f.f() as f64));
        }
        if let Some(v) = a.floats("value_floats")? {
            return Ok(Tensor::f32([v.len()], v));
        }
        if let Some(i) = a.int("value_int")? {
            return Ok(Tensor::i64([], vec![i]));
        }
        if let Some(v) = a.ints("value_ints")? {
            return Ok(Tensor::i64([v.len()], v));
        }
        Err("Constant needs a 'value', 'value_float(s)' or 'value_int(s)' attribute (sparse and string constants are not supported)".into())
    }

    pub(super) fn tile(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let x = c.req(0)?;
        let s = self.shape(x);
        let reps = self.const_ints(c, 1, "repeats")?;
        if reps.len() != s.len() || reps.iter().any(|&r| r < 0) {
            return Err(format!(
                "repeats {reps:?} must have {} non-negative values",
                s.len()
            ));
        }
        // [a, b] tiled by [r, s] = reshape(broadcast([1, a, 1, b] → [r, a, s, b]), [r*a, s*b]).
        let mut inter = Vec::new();
        let mut big = Vec::new();
        let mut out = Vec::new();
        for (d, &r) in s.iter().zip(&reps) {
            inter.extend([1, *d]);
            big.extend([r as usize, *d]);
            out.push(
                (r as usize)
                    .checked_mul(*d)
                    .ok_or("tiled shape overflows")?,
            );
        }
        crate::ir::checked_numel(&big)?;
        let v = self.emit(&format!("{name}/interleave"), Op::Reshape(inter), &[x])?;
        let v = self.emit(&format!("{name}/repeat"), Op::Broadcast(big), &[v])?;
        self.emit(name, Op::Reshape(out), &[v])
    }

    pub(super) fn split(&mut self, c: &Ctx) -> R<Vec<Value>> {
        let x = c.req(0)?;
        let s = self.shape(x);
        let axis = normalize_axis(c.attrs.int_or("axis", 0)?, s.len())?;
        let n_out = c.node.output.len();
        let given = match c.attrs.ints("split")? {
            Some(v) => Some(v),
            None if c.input(1).is_some() => Some(self.const_ints(c, 1, "split")?),
            None => None,
        };
        let sizes: Vec<usize> = if let Some(v) = given {
            if v.iter().any(|&d| d < 0) {
                return Err(format!("split sizes {v:?} must not be negative"));
            }
            v.iter().map(|&d| d as usize).collect()
        } else {
            let parts = c.attrs.int("num_outputs")?.unwrap_or(n_out as i64);
            if parts <= 0 || parts as usize != n_out {
                return Err(format!(
                    "num_outputs {parts} must be positive and match the node's {n_out} outputs"
                ));
            }
            let parts = n_out;
            let chunk = s[axis].div_ceil(parts);
            (0..parts)
                .map(|i| chunk.min(s[axis].saturating_sub(i * chunk)))
                .collect()
        };
        let total = sizes.iter().try_fold(0usize, |a, &d| a.checked_add(d));
        if sizes.len() != n_out || total != Some(s[axis]) {
            return Err(format!(
                "split sizes {sizes:?} do not cover dim {axis} of {} in {n_out} outputs",
                fmt_shape(&s)
            ));
        }
        let mut outs = Vec::new();
        let mut start = 0;
        for (k, &len) in sizes.iter().enumerate() {
            let mut starts = vec![0; s.len()];
            let mut lens = s.clone();
            starts[axis] = start;
            lens[axis] = len;
            let op = Op::Slice {
                starts,
                steps: vec![1; s.len()],
                lens,
            };
            let out_name = c.node.output[k].clone();
            let n = if out_name.is_empty() {
                format!("{}/split{k}", c.out())
            } else {
                out_name
            };
            outs.push(self.emit(&n, op, &[x])?);
            start += len;
        }
        Ok(outs)
    }

    pub(super) fn slice(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let x = c.req(0)?;
        let s = self.shape(x);
        let r = s.len();
        let (starts, ends, axes, steps) = if self.opset < 10 {
            let starts = c.attrs.ints("starts")?.ok_or("missing 'starts'")?;
            let ends = c.attrs.ints("ends")?.ok_or("missing 'ends'")?;
            let axes = c.attrs.ints("axes")?;
            (starts, ends, axes, None)
        } else {
            let starts = self.const_ints(c, 1, "starts")?;
            let ends = self.const_ints(c, 2, "ends")?;
            let axes = match c.input(3) {
                Some(_) => Some(self.const_ints(c, 3, "axes")?),
                None => None,
            };
            let steps = match c.input(4) {
                Some(_) => Some(self.const_ints(c, 4, "steps")?),
                None => None,
            };
            (starts, ends, axes, steps)
        };
        let axes = match axes {
            Some(a) => {
                // Each axis once: a repeated one would silently drop its first bounds.
                norm_axes(&a, r)?;
                norm_axes_ordered(&a, r)?
            }
            None if starts.len() > r => {
                return Err(format!(
                    "{} starts for an input of rank {r} ({})",
                    starts.len(),
                    fmt_shape(&s)
                ))
            }
            None => (0..starts.len()).collect(),
        };
        let steps = steps.unwrap_or(vec![1; starts.len()]);
        if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
            return Err("starts, ends, axes and steps must have the same length".into());
        }
        let mut st = vec![0usize; r];
        let mut sp = vec![1i64; r];
        let mut lens = s.clone();
        for k in 0..starts.len() {
            let d = axes[k];
            let n = s[d] as i64;
            let step = steps[k];
            if step == 0 {
                return Err("slice step 0".into());
            }
            let clampv = |v: i64, lo: i64, hi: i64| v.clamp(lo, hi);
            let adj = |v: i64| if v < 0 { v.saturating_add(n) } else { v };
            let (b, e) = if step > 0 {
                (clampv(adj(starts[k]), 0, n), clampv(adj(ends[k]), 0, n))
            } else {
                (
                    clampv(adj(starts[k]), -1, n - 1),
                    clampv(adj(ends[k]), -1, n - 1),
                )
            };
            // Counted in i128: steps and bounds may be anywhere in i64.
            let (b128, e128, step128) = (b as i128, e as i128, step as i128);
            let len = if step > 0 && e > b {
                (e128 - b128 - 1) / step128 + 1
            } else if step < 0 && b > e {
                (b128 - e128 - 1) / -step128 + 1
            } else {
                0
            };
            st[d] = if len > 0 { b as usize } else { 0 };
            sp[d] = step;
            lens[d] = len as usize;
        }
        let op = Op::Slice {
            starts: st,
            steps: sp,
            lens,
        };
        self.emit(name, op, &[x])
    }

    pub(super) fn range(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let mut vals = Vec::new();
        for (i, what) in ["start", "limit", "delta"].iter().enumerate() {
            let v = c.req(i)?;
            let t = self.constant(v).ok_or_else(|| {
                format!(
                    "input '{}' ({what}) is computed from tensor data at run time, so the output shape depends on data, which would force a host sync; smelt compiles static shapes only",
                    c.input_name(i)
                )
            })?;
            vals.push(t);
        }
        if let Some(i) = vals.iter().position(|t| t.numel() != 1) {
            return Err(format!("input '{}' must be a scalar", c.input_name(i)));
        }
        // Range is computed at import, so its length is bounded like any folded constant.
        const MAX_RANGE: usize = 1 << 24;
        let too_long = |n: f64| format!("range of {n} elements is longer than 2^24");
        let dtype = vals[0].dtype();
        let out = if dtype.is_float() {
            let (s, l, d) = (
                vals[0].to_f64()[0],
                vals[1].to_f64()[0],
                vals[2].to_f64()[0],
            );
            if d == 0.0 || !(s.is_finite() && l.is_finite() && d.is_finite()) {
                return Err(format!(
                    "range({s}, {l}, {d}) needs finite values and a nonzero delta"
                ));
            }
            let n = ((l - s) / d).ceil().max(0.0);
            if n > MAX_RANGE as f64 {
                return Err(too_long(n));
            }
            let v: Vec<f64> = (0..n as usize).map(|i| s + i as f64 * d).collect();
            Tensor::from_f64(dtype, [v.len()], &v)
        } else {
            let (s, l, d) = (
                vals[0].to_i64()[0] as i128,
                vals[1].to_i64()[0] as i128,
                vals[2].to_i64()[0] as i128,
            );
            if d == 0 {
                return Err("delta is 0".into());
            }
            let span = l - s;
            let n = if (span > 0) == (d > 0) && span != 0 {
                (span + d - d.signum()) / d
            } else {
                0
            };
            if n > MAX_RANGE as i128 {
                return Err(too_long(n as f64));
            }
            let v: Vec<i64> = (0..n).map(|i| (s + i * d) as i64).collect();
            Tensor::from_i64(dtype, [v.len()], &v)
        };
        self.konst(name, out)
    }

    pub(super) fn pad(&mut self, c: &Ctx, name: &str) -> R<Value> {
        let x = c.req(0)?;
        let r = self.ty(x).rank();
        let (raw, value) = if self.opset < 11 {
            let p = c.attrs.ints("pads")?.ok_or("missing 'pads'")?;
            (p, c.attrs.float_or("value", 0.0)?)
        } else {
            let p = self.const_ints(c, 1, "pads")?;
            let v = self.const_scalar(c, 2, "constant_value")?.unwrap_or(0.0);
            (p, v)
        };
        let axes = match c.input(3) {
            Some(_) => norm_axes_ordered(&self.const_ints(c, 3, "axes")?, r)?,
            None => (0..r).collect(),
        };
        if raw.len() != 2 * axes.len() {
            return Err(format!(
                "pads has {} values, expected {}",
                raw.len(),
                2 * axes.len()
            ));
        }
        // A pad (or crop) past the element limit cannot be meant; bounded, the index
        // arithmetic of the interpreter and the kernels stays far from overflow.
        let limit = crate::ir::MAX_ELEMENTS as i64;
        if let Some(p) = raw.iter().find(|p| !(-limit..=limit).contains(*p)) {
            return Err(format!("pads {raw:?}: {p} is beyond ±2^32"));
        }
        let mut pads = vec![(0i64, 0i64); r];
        for (k, &d) in axes.iter().enumerate() {
            pads[d] = (raw[k], raw[k + axes.len()]);
        }
        let mode = match c.attrs.string_or("mode", "constant")?.as_str() {
            "constant" => PadMode::Constant(F64(value)),
            "reflect" => PadMode::Reflect,
            "edge" => PadMode::Edge,
            "wrap" => PadMode::Wrap,
            m => return Err(format!("unknown pad mode '{m}'")),
        };
        self.emit(name, Op::Pad { pads, mode }, &[x])
    }
}

/// Normalizes axes (negative from the end), sorted and distinct.
pub(super) fn norm_axes(a: &[i64], rank: usize) -> R<Vec<usize>> {
    let mut v = norm_axes_ordered(a, rank)?;
    v.sort_unstable();
    let n = v.len();
    v.dedup();
    if v.len() != n {
        return Err(format!("axes {a:?} repeat an axis"));
    }
    Ok(v)
}

/// Normalizes axes, keeping their order.
pub(super) fn norm_axes_ordered(a: &[i64], rank: usize) -> R<Vec<usize>> {
    a.iter().map(|&x| normalize_axis(x, rank)).collect()
}

/// Resolves an ONNX Reshape spec (`0` copies a dim unless `allowzero`, `-1` infers one).
pub(super) fn reshape_target(input: &[usize], spec: &[i64], allowzero: bool) -> R<Vec<usize>> {
    let total: usize = input.iter().product();
    let mut out = Vec::with_capacity(spec.len());
    let mut infer_at = None;
    for (i, &d) in spec.iter().enumerate() {
        match d {
            -1 if infer_at.is_none() => {
                infer_at = Some(i);
                out.push(1);
            }
            -1 => return Err(format!("shape {spec:?} has more than one -1")),
            0 if !allowzero => {
                out.push(*input.get(i).ok_or_else(|| {
                    format!("shape {spec:?} copies dim {i}, which the input lacks")
                })?)
            }
            d if d >= 0 => out.push(d as usize),
            d => return Err(format!("invalid dim {d} in shape {spec:?}")),
        }
    }
    if let Some(i) = infer_at {
        let known = crate::ir::checked_numel(&out)?;
        if known == 0 || !total.is_multiple_of(known) {
            return Err(format!("cannot reshape {} to {spec:?}", fmt_shape(input)));
        }
        out[i] = total / known;
    }
    if crate::ir::checked_numel(&out)? != total {
        return Err(format!(
            "cannot reshape {} ({total} elements) to {spec:?}",
            fmt_shape(input)
        ));
    }
    Ok(out)
}
