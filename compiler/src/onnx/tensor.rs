//! ONNX `TensorProto` ⇄ [`Tensor`], including external data.

use super::proto::{tensor_proto::DataLocation, tensor_proto::DataType, TensorProto};
use crate::ir::{DType, Data, Tensor};
use half::{bf16, f16};
use std::path::Path;

/// Maps an ONNX element type to an IR dtype, or says which type is unsupported.
pub fn dtype_from_onnx(code: i32) -> Result<DType, String> {
    let dt = DataType::try_from(code).map_err(|_| format!("unknown ONNX element type {code}"))?;
    Ok(match dt {
        DataType::Float => DType::F32,
        DataType::Float16 => DType::F16,
        DataType::Bfloat16 => DType::BF16,
        DataType::Double => DType::F64,
        DataType::Int64 => DType::I64,
        DataType::Int32 => DType::I32,
        DataType::Int8 => DType::I8,
        DataType::Uint8 => DType::U8,
        DataType::Bool => DType::Bool,
        other => {
            return Err(format!(
                "element type {} is not supported (supported: f32, f16, bf16, f64, i64, i32, i8, u8, bool)",
                other.as_str_name()
            ))
        }
    })
}

/// The ONNX element type code of an IR dtype.
pub fn dtype_to_onnx(d: DType) -> i32 {
    (match d {
        DType::F32 => DataType::Float,
        DType::F16 => DataType::Float16,
        DType::BF16 => DataType::Bfloat16,
        DType::F64 => DataType::Double,
        DType::I64 => DataType::Int64,
        DType::I32 => DataType::Int32,
        DType::I8 => DataType::Int8,
        DType::U8 => DataType::Uint8,
        DType::Bool => DataType::Bool,
    }) as i32
}

fn le_chunks<const N: usize>(raw: &[u8]) -> impl Iterator<Item = [u8; N]> + '_ {
    raw.chunks_exact(N)
        .map(|c| c.try_into().expect("chunks_exact yields N bytes"))
}

/// Decodes a tensor; `base_dir` resolves external data files.
pub fn tensor_from_proto(t: &TensorProto, base_dir: Option<&Path>) -> Result<Tensor, String> {
    let name = t.name();
    let dtype = dtype_from_onnx(t.data_type()).map_err(|e| format!("tensor '{name}': {e}"))?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        if d < 0 {
            return Err(format!("tensor '{name}': negative dim {d}"));
        }
        shape.push(d as usize);
    }
    let n = crate::ir::checked_numel(&shape).map_err(|e| format!("tensor '{name}': {e}"))?;
    let external;
    let raw: Option<&[u8]> = if t.data_location() == DataLocation::External {
        external = read_external(t, base_dir)?;
        Some(&external)
    } else {
        t.raw_data.as_deref()
    };
    let data = if let Some(raw) = raw {
        let want = n * dtype.size();
        if raw.len() != want {
            return Err(format!(
                "tensor '{name}': {} bytes of data for {n} elements of {dtype} (expected {want})",
                raw.len()
            ));
        }
        match dtype {
            DType::F32 => Data::F32(le_chunks(raw).map(f32::from_le_bytes).collect()),
            DType::F16 => Data::F16(le_chunks(raw).map(f16::from_le_bytes).collect()),
            DType::BF16 => Data::BF16(le_chunks(raw).map(bf16::from_le_bytes).collect()),
            DType::F64 => Data::F64(le_chunks(raw).map(f64::from_le_bytes).collect()),
            DType::I64 => Data::I64(le_chunks(raw).map(i64::from_le_bytes).collect()),
            DType::I32 => Data::I32(le_chunks(raw).map(i32::from_le_bytes).collect()),
            DType::I8 => Data::I8(raw.iter().map(|&b| b as i8).collect()),
            DType::U8 => Data::U8(raw.to_vec()),
            DType::Bool => Data::Bool(raw.iter().map(|&b| b != 0).collect()),
        }
    } else {
        // Narrow types are stored widened in int32_data: a value that does not fit is a
        // corrupt tensor, not one to truncate.
        fn narrow<T: TryFrom<i32>>(name: &str, dtype: DType, v: &[i32]) -> Result<Vec<T>, String> {
            v.iter()
                .map(|&x| {
                    T::try_from(x).map_err(|_| {
                        format!("tensor '{name}': int32_data value {x} does not fit {dtype}")
                    })
                })
                .collect()
        }
        let ints = t.int32_data.as_slice();
        // 16-bit floats are their bits, written zero- (or by some writers sign-) extended.
        let bits = || -> Result<Vec<u16>, String> {
            ints.iter()
                .map(|&x| match x {
                    0..=0xffff => Ok(x as u16),
                    -0x8000..=-1 => Ok(x as i16 as u16),
                    _ => Err(format!(
                        "tensor '{name}': int32_data value {x} does not fit {dtype}"
                    )),
                })
                .collect()
        };
        match dtype {
            DType::F32 => Data::F32(t.float_data.clone()),
            DType::F64 => Data::F64(t.double_data.clone()),
            DType::I64 => Data::I64(t.int64_data.clone()),
            DType::I32 => Data::I32(t.int32_data.clone()),
            DType::I8 => Data::I8(narrow(name, dtype, ints)?),
            DType::U8 => Data::U8(narrow(name, dtype, ints)?),
            DType::Bool => Data::Bool(t.int32_data.iter().map(|&v| v != 0).collect()),
            DType::F16 => Data::F16(bits()?.into_iter().map(f16::from_bits).collect()),
            DType::BF16 => Data::BF16(bits()?.into_iter().map(bf16::from_bits).collect()),
        }
    };
    if data.len() != n {
        return Err(format!(
            "tensor '{name}': {} values for shape {:?} ({n} elements)",
            data.len(),
            shape
        ));
    }
    Ok(Tensor::new(shape, data).expect("length checked"))
}

fn read_external(t: &TensorProto, base_dir: Option<&Path>) -> Result<Vec<u8>, String> {
    let name = t.name();
    let (mut location, mut offset, mut length) = (None, 0u64, None);
    for kv in &t.external_data {
        match kv.key() {
            "location" => location = Some(kv.value().to_string()),
            "offset" => {
                offset = kv
                    .value()
                    .parse()
                    .map_err(|_| format!("tensor '{name}': bad external offset"))?
            }
            "length" => {
                length = Some(
                    kv.value()
                        .parse::<u64>()
                        .map_err(|_| format!("tensor '{name}': bad external length"))?,
                )
            }
            _ => {}
        }
    }
    let location =
        location.ok_or_else(|| format!("tensor '{name}': external data without a location"))?;
    let rel = Path::new(&location);
    if rel.is_absolute()
        || rel
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(format!(
            "tensor '{name}': external data location '{location}' must be a relative path inside the model's folder"
        ));
    }
    let path = base_dir.unwrap_or(Path::new(".")).join(rel);
    let bytes = std::fs::read(&path).map_err(|e| {
        format!(
            "tensor '{name}': cannot read external data {}: {e}",
            path.display()
        )
    })?;
    let start = offset as usize;
    let end = match length {
        Some(l) => start.saturating_add(l as usize),
        None => bytes.len(),
    };
    if start > bytes.len() || end > bytes.len() || start > end {
        return Err(format!(
            "tensor '{name}': external data {} has {} bytes, need bytes {start}..{end}",
            path.display(),
            bytes.len()
        ));
    }
    Ok(bytes[start..end].to_vec())
}

/// Encodes a tensor as an ONNX `TensorProto` with raw little-endian data.
pub fn tensor_to_proto(name: &str, t: &Tensor) -> TensorProto {
    let raw: Vec<u8> = match t.data() {
        Data::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::F16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::BF16(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
        Data::U8(v) => v.clone(),
        Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
    };
    TensorProto {
        name: Some(name.to_string()),
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: Some(dtype_to_onnx(t.dtype())),
        raw_data: Some(raw.into()),
        ..Default::default()
    }
}
