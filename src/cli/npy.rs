//! Tensors to and from NumPy `.npy` files (the CLI's; the tests and benchmarks include this
//! file).

use half::{bf16, f16};
use npyz::{Deserialize, NpyFile, NpyHeader, Order, TypeChar, WriteOptions, WriterBuilder};
use smelt_compiler::ir::{DType, Data, Tensor};
use std::path::Path;

/// A `.npy` file that could not be read or written: the file, and what is wrong.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct NpyError {
    /// The file.
    pub path: String,
    /// What went wrong.
    pub message: String,
}

type Error = NpyError;

fn npy_err(path: &Path, message: impl std::fmt::Display) -> Error {
    NpyError {
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Reads a C-ordered `.npy` file of a supported dtype.
pub fn read(path: &Path) -> Result<Tensor, Error> {
    let bytes = std::fs::read(path).map_err(|e| npy_err(path, e))?;
    // The header is parsed off a slice that is then left holding exactly the data bytes.
    let mut data_bytes = bytes.as_slice();
    let header = NpyHeader::from_reader(&mut data_bytes)
        .map_err(|e| npy_err(path, format!("not a valid .npy file ({e})")))?;
    let npy = NpyFile::with_header(header, data_bytes);
    if npy.order() == Order::Fortran {
        return Err(npy_err(
            path,
            "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
        ));
    }
    let shape: Vec<usize> = npy.shape().iter().map(|&d| d as usize).collect();
    let numel = smelt_compiler::ir::checked_numel(&shape).map_err(|e| npy_err(path, e))?;
    let dtype = match npy.dtype() {
        npyz::DType::Plain(ts) => match (ts.type_char(), ts.size_field()) {
            (TypeChar::Float, 4) => DType::F32,
            (TypeChar::Float, 2) => DType::F16,
            (TypeChar::Float, 8) => DType::F64,
            (TypeChar::Int, 8) => DType::I64,
            (TypeChar::Int, 4) => DType::I32,
            (TypeChar::Int, 1) => DType::I8,
            (TypeChar::Uint, 1) => DType::U8,
            (TypeChar::Bool, 1) => DType::Bool,
            _ => return Err(npy_err(path, format!("unsupported dtype '{ts}'"))),
        },
        other => {
            return Err(npy_err(
                path,
                format!("unsupported dtype {}", other.descr()),
            ))
        }
    };
    // The data must be exactly the array: bytes after it are a corrupt or concatenated
    // file, not something to ignore.
    let want = numel * dtype.size();
    if data_bytes.len() > want {
        return Err(npy_err(
            path,
            format!(
                "{} bytes of trailing data after the array ({} {}: {want} bytes)",
                data_bytes.len() - want,
                dtype,
                smelt_compiler::ir::fmt_shape(&shape)
            ),
        ));
    }
    fn vec<T: Deserialize>(npy: NpyFile<&[u8]>, path: &Path) -> Result<Vec<T>, Error> {
        npy.into_vec::<T>()
            .map_err(|e| npy_err(path, format!("truncated or corrupt data ({e})")))
    }
    let data = match dtype {
        DType::F32 => Data::F32(vec(npy, path)?),
        DType::F16 => Data::F16(vec(npy, path)?),
        DType::F64 => Data::F64(vec(npy, path)?),
        DType::I64 => Data::I64(vec(npy, path)?),
        DType::I32 => Data::I32(vec(npy, path)?),
        DType::I8 => Data::I8(vec(npy, path)?),
        DType::U8 => Data::U8(vec(npy, path)?),
        DType::Bool => Data::Bool(vec(npy, path)?),
        DType::BF16 => unreachable!("bf16 has no .npy dtype"),
    };
    Tensor::new(shape, data).ok_or_else(|| npy_err(path, "data length does not match the shape"))
}

/// Writes a tensor as `.npy` in its own dtype. NumPy has no bf16, so bf16 is written as
/// f32 (an exact widening). (The CLI writes through [`to_bytes`]; the tests and benchmarks
/// that include this file use this.)
#[allow(dead_code)]
pub fn write(path: &Path, t: &Tensor) -> Result<(), Error> {
    let bytes = to_bytes(t).map_err(|e| npy_err(path, e))?;
    std::fs::write(path, bytes).map_err(|e| npy_err(path, e))
}

/// A tensor as the bytes of a `.npy` file, as [`write`] writes it.
pub fn to_bytes(t: &Tensor) -> std::io::Result<Vec<u8>> {
    let shape: Vec<u64> = t.shape().iter().map(|&d| d as u64).collect();
    let mut out = Vec::new();
    fn put<T: npyz::AutoSerialize + Copy>(
        out: &mut Vec<u8>,
        shape: &[u64],
        v: impl IntoIterator<Item = T>,
    ) -> std::io::Result<()> {
        let mut w = WriteOptions::new()
            .default_dtype()
            .shape(shape)
            .writer(out)
            .begin_nd()?;
        w.extend(v)?;
        w.finish()
    }
    let r = match t.data() {
        Data::F32(v) => put(&mut out, &shape, v.iter().copied()),
        Data::F16(v) => put::<f16>(&mut out, &shape, v.iter().copied()),
        Data::BF16(v) => put(&mut out, &shape, v.iter().map(|x: &bf16| x.to_f32())),
        Data::F64(v) => put(&mut out, &shape, v.iter().copied()),
        Data::I64(v) => put(&mut out, &shape, v.iter().copied()),
        Data::I32(v) => put(&mut out, &shape, v.iter().copied()),
        Data::I8(v) => put(&mut out, &shape, v.iter().copied()),
        Data::U8(v) => put(&mut out, &shape, v.iter().copied()),
        Data::Bool(v) => put(&mut out, &shape, v.iter().copied()),
    };
    r.map(|()| out)
}
