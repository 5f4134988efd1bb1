//! Tensor values: constants in the graph, and the values the interpreter computes.

use super::dtype::{DType, TensorType};
use half::{bf16, f16};
use serde::{Deserialize, Serialize};
use std::hash::{Hash, Hasher};

/// Typed element storage, row-major.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[allow(missing_docs)]
pub enum Data {
    F32(Vec<f32>),
    F16(Vec<f16>),
    BF16(Vec<bf16>),
    F64(Vec<f64>),
    I64(Vec<i64>),
    I32(Vec<i32>),
    I8(Vec<i8>),
    U8(Vec<u8>),
    Bool(Vec<bool>),
}

/// A dense tensor with a static shape.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Tensor {
    shape: Vec<usize>,
    data: Data,
    /// A digest of the elements' bits, computed once when first hashed or compared: the
    /// optimizer hash-conses every constant (weights of hundreds of MB) in every pass.
    #[serde(skip)]
    digest: std::sync::OnceLock<u64>,
}

/// Applies `$body` to the vector inside any `Data` variant.
macro_rules! with_data {
    ($data:expr, $v:ident => $body:expr) => {
        match $data {
            Data::F32($v) => $body,
            Data::F16($v) => $body,
            Data::BF16($v) => $body,
            Data::F64($v) => $body,
            Data::I64($v) => $body,
            Data::I32($v) => $body,
            Data::I8($v) => $body,
            Data::U8($v) => $body,
            Data::Bool($v) => $body,
        }
    };
}

impl Data {
    /// Element type of this storage.
    pub fn dtype(&self) -> DType {
        match self {
            Data::F32(_) => DType::F32,
            Data::F16(_) => DType::F16,
            Data::BF16(_) => DType::BF16,
            Data::F64(_) => DType::F64,
            Data::I64(_) => DType::I64,
            Data::I32(_) => DType::I32,
            Data::I8(_) => DType::I8,
            Data::U8(_) => DType::U8,
            Data::Bool(_) => DType::Bool,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_data!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Tensor {
    /// A deterministic pseudo-random tensor: floats uniform in [-2, 2), integers in -3..=3,
    /// bool `x != 0`; the same `seed` gives the same values everywhere (benchmarks, checks
    /// and tests draw their inputs with it). Never all zeros for more than a few elements.
    ///
    /// ```
    /// use smelt_compiler::ir::{DType, Tensor};
    /// let t = Tensor::random(DType::F32, &[2, 3], 7);
    /// assert_eq!(t, Tensor::random(DType::F32, &[2, 3], 7));
    /// assert!(t.to_f64().iter().all(|x| (-2.0..2.0).contains(x)));
    /// ```
    pub fn random(dtype: DType, shape: &[usize], seed: u64) -> Tensor {
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407)
            | 1;
        let mut vals = Vec::with_capacity(n);
        for _ in 0..n {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            let u = (s >> 11) as f64 / (1u64 << 53) as f64;
            vals.push(if dtype.is_float() {
                u * 4.0 - 2.0
            } else {
                (u * 7.0).floor() - 3.0
            });
        }
        Tensor::from_f64(dtype, shape.to_vec(), &vals)
    }

    /// Builds a tensor; `None` when the element count does not match the shape.
    pub fn new(shape: impl Into<Vec<usize>>, data: Data) -> Option<Tensor> {
        let shape = shape.into();
        let n = shape
            .iter()
            .try_fold(1usize, |a: usize, &d| a.checked_mul(d))?;
        (n == data.len()).then_some(Tensor {
            shape,
            data,
            digest: Default::default(),
        })
    }

    /// A f32 tensor. Panics if `values.len()` does not match the shape (a programming error).
    pub fn f32(shape: impl Into<Vec<usize>>, values: Vec<f32>) -> Tensor {
        Tensor::new(shape, Data::F32(values)).expect("f32 tensor: shape and data length differ")
    }

    /// A i64 tensor. Panics if `values.len()` does not match the shape (a programming error).
    pub fn i64(shape: impl Into<Vec<usize>>, values: Vec<i64>) -> Tensor {
        Tensor::new(shape, Data::I64(values)).expect("i64 tensor: shape and data length differ")
    }

    /// A scalar of any dtype holding `v` (converted as by [`Tensor::from_f64`]).
    pub fn scalar(dtype: DType, v: f64) -> Tensor {
        Tensor::from_f64(dtype, vec![], &[v])
    }

    /// Element type.
    pub fn dtype(&self) -> DType {
        self.data.dtype()
    }

    /// Shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// Static type.
    pub fn ty(&self) -> TensorType {
        TensorType::new(self.dtype(), self.shape.clone())
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.data.len()
    }

    /// The storage.
    pub fn data(&self) -> &Data {
        &self.data
    }

    /// The shape and the storage, to reuse the storage (see `Tensor::new` to rebuild).
    pub fn into_parts(self) -> (Vec<usize>, Data) {
        (self.shape, self.data)
    }

    /// The same data with another shape of equal element count.
    pub fn reshaped(mut self, shape: Vec<usize>) -> Option<Tensor> {
        let n = shape
            .iter()
            .try_fold(1usize, |a: usize, &d| a.checked_mul(d))?;
        (n == self.numel()).then(|| {
            self.shape = shape;
            self
        })
    }

    /// Writes the elements, little-endian, into `out` (exactly `numel × dtype size` bytes;
    /// bool as one byte 0/1). Returns false, writing nothing, when the length differs.
    pub fn write_le_bytes(&self, out: &mut [u8]) -> bool {
        if out.len() != self.numel() * self.dtype().size() {
            return false;
        }
        macro_rules! put {
            ($v:expr, $n:expr, $f:expr) => {
                for (chunk, x) in out.chunks_exact_mut($n).zip($v) {
                    chunk.copy_from_slice(&$f(x));
                }
            };
        }
        match &self.data {
            Data::F32(v) => put!(v, 4, |x: &f32| x.to_le_bytes()),
            Data::F16(v) => put!(v, 2, |x: &f16| x.to_le_bytes()),
            Data::BF16(v) => put!(v, 2, |x: &bf16| x.to_le_bytes()),
            Data::F64(v) => put!(v, 8, |x: &f64| x.to_le_bytes()),
            Data::I64(v) => put!(v, 8, |x: &i64| x.to_le_bytes()),
            Data::I32(v) => put!(v, 4, |x: &i32| x.to_le_bytes()),
            Data::I8(v) => put!(v, 1, |x: &i8| x.to_le_bytes()),
            Data::U8(v) => put!(v, 1, |x: &u8| [*x]),
            Data::Bool(v) => put!(v, 1, |x: &bool| [*x as u8]),
        }
        true
    }

    /// A tensor from little-endian element bytes (bool: nonzero is true); `None` when the
    /// byte count does not match the shape.
    pub fn from_le_bytes(dtype: DType, shape: impl Into<Vec<usize>>, b: &[u8]) -> Option<Tensor> {
        let shape = shape.into();
        let n = shape
            .iter()
            .try_fold(1usize, |a: usize, &d| a.checked_mul(d))?;
        if n.checked_mul(dtype.size())? != b.len() {
            return None;
        }
        fn arr<const N: usize>(c: &[u8]) -> [u8; N] {
            let mut a = [0u8; N];
            a.copy_from_slice(c);
            a
        }
        let data = match dtype {
            DType::F32 => Data::F32(
                b.chunks_exact(4)
                    .map(|c| f32::from_le_bytes(arr(c)))
                    .collect(),
            ),
            DType::F16 => Data::F16(
                b.chunks_exact(2)
                    .map(|c| f16::from_le_bytes(arr(c)))
                    .collect(),
            ),
            DType::BF16 => Data::BF16(
                b.chunks_exact(2)
                    .map(|c| bf16::from_le_bytes(arr(c)))
                    .collect(),
            ),
            DType::F64 => Data::F64(
                b.chunks_exact(8)
                    .map(|c| f64::from_le_bytes(arr(c)))
                    .collect(),
            ),
            DType::I64 => Data::I64(
                b.chunks_exact(8)
                    .map(|c| i64::from_le_bytes(arr(c)))
                    .collect(),
            ),
            DType::I32 => Data::I32(
                b.chunks_exact(4)
                    .map(|c| i32::from_le_bytes(arr(c)))
                    .collect(),
            ),
            DType::I8 => Data::I8(b.iter().map(|&c| c as i8).collect()),
            DType::U8 => Data::U8(b.to_vec()),
            DType::Bool => Data::Bool(b.iter().map(|&c| c != 0).collect()),
        };
        Tensor::new(shape, data)
    }

    /// Every element widened to f64 (bool as 0/1; i64 beyond 2^53 rounds).
    pub fn to_f64(&self) -> Vec<f64> {
        match &self.data {
            Data::F32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::F16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::BF16(v) => v.iter().map(|x| x.to_f64()).collect(),
            Data::F64(v) => v.clone(),
            Data::I64(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I32(v) => v.iter().map(|&x| x as f64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as f64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as u8 as f64).collect(),
        }
    }

    /// Every element as i64 (floats truncate toward zero, saturating; bool as 0/1).
    pub fn to_i64(&self) -> Vec<i64> {
        match &self.data {
            Data::I64(v) => v.clone(),
            Data::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Data::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Data::Bool(v) => v.iter().map(|&x| x as i64).collect(),
            _ => self.to_f64().into_iter().map(|x| x as i64).collect(),
        }
    }

    /// A tensor of `dtype` from f64 values: floats round to nearest, integers truncate toward
    /// zero and saturate, bool is `x != 0`.
    pub fn from_f64(dtype: DType, shape: impl Into<Vec<usize>>, v: &[f64]) -> Tensor {
        let data = match dtype {
            DType::F32 => Data::F32(v.iter().map(|&x| x as f32).collect()),
            DType::F16 => Data::F16(v.iter().map(|&x| f16::from_f64(x)).collect()),
            DType::BF16 => Data::BF16(v.iter().map(|&x| bf16::from_f64(x)).collect()),
            DType::F64 => Data::F64(v.to_vec()),
            DType::I64 => Data::I64(v.iter().map(|&x| x as i64).collect()),
            DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
            DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
            DType::Bool => Data::Bool(v.iter().map(|&x| x != 0.0).collect()),
        };
        Tensor {
            shape: shape.into(),
            data,
            digest: Default::default(),
        }
    }

    /// A tensor of `dtype` from i64 values: integers wrap (two's complement), floats convert,
    /// bool is `x != 0`.
    pub fn from_i64(dtype: DType, shape: impl Into<Vec<usize>>, v: &[i64]) -> Tensor {
        let data = match dtype {
            DType::I64 => Data::I64(v.to_vec()),
            DType::I32 => Data::I32(v.iter().map(|&x| x as i32).collect()),
            DType::I8 => Data::I8(v.iter().map(|&x| x as i8).collect()),
            DType::U8 => Data::U8(v.iter().map(|&x| x as u8).collect()),
            DType::Bool => Data::Bool(v.iter().map(|&x| x != 0).collect()),
            _ => {
                let f: Vec<f64> = v.iter().map(|&x| x as f64).collect();
                return Tensor::from_f64(dtype, shape, &f);
            }
        };
        Tensor {
            shape: shape.into(),
            data,
            digest: Default::default(),
        }
    }

    /// Picks elements by flat index (used by the interpreter for layout ops).
    pub fn gather_flat(&self, shape: Vec<usize>, idx: &[usize]) -> Tensor {
        let data = match &self.data {
            Data::F32(v) => Data::F32(idx.iter().map(|&i| v[i]).collect()),
            Data::F16(v) => Data::F16(idx.iter().map(|&i| v[i]).collect()),
            Data::BF16(v) => Data::BF16(idx.iter().map(|&i| v[i]).collect()),
            Data::F64(v) => Data::F64(idx.iter().map(|&i| v[i]).collect()),
            Data::I64(v) => Data::I64(idx.iter().map(|&i| v[i]).collect()),
            Data::I32(v) => Data::I32(idx.iter().map(|&i| v[i]).collect()),
            Data::I8(v) => Data::I8(idx.iter().map(|&i| v[i]).collect()),
            Data::U8(v) => Data::U8(idx.iter().map(|&i| v[i]).collect()),
            Data::Bool(v) => Data::Bool(idx.iter().map(|&i| v[i]).collect()),
        };
        Tensor {
            shape,
            data,
            digest: Default::default(),
        }
    }

    /// Element bytes, little-endian, for hashing and equality.
    /// The digest of the elements' bits, which hashing the tensor uses: computed once, on
    /// first use (an importer computes it for each weight on the thread that decoded it, so
    /// the optimizer's first pass does not walk every weight on one core).
    pub fn digest(&self) -> u64 {
        *self.digest.get_or_init(|| match &self.data {
            // Two elements to a word: half the mixing steps over the largest tensors.
            Data::F32(v) => digest_words(v.chunks(2).map(|c| {
                let hi = c.get(1).map_or(0, |x| x.to_bits() as u64);
                c[0].to_bits() as u64 | hi << 32
            })),
            Data::F16(v) => digest_words(v.iter().map(|x| x.to_bits() as u64)),
            Data::BF16(v) => digest_words(v.iter().map(|x| x.to_bits() as u64)),
            Data::F64(v) => digest_words(v.iter().map(|x| x.to_bits())),
            Data::I64(v) => digest_words(v.iter().map(|&x| x as u64)),
            Data::I32(v) => digest_words(v.iter().map(|&x| x as u32 as u64)),
            Data::I8(v) => digest_words(v.iter().map(|&x| x as u8 as u64)),
            Data::U8(v) => digest_words(v.iter().map(|&x| x as u64)),
            Data::Bool(v) => digest_words(v.iter().map(|&x| x as u64)),
        })
    }

    fn bytes(&self) -> Vec<u8> {
        match &self.data {
            Data::F32(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            Data::F16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            Data::BF16(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            Data::F64(v) => v.iter().flat_map(|x| x.to_bits().to_le_bytes()).collect(),
            Data::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            Data::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Data::U8(v) => v.clone(),
            Data::Bool(v) => v.iter().map(|&x| x as u8).collect(),
        }
    }

    /// A short deterministic rendering: the values when small, else a summary.
    pub fn summary(&self) -> String {
        if self.numel() <= 8 {
            let vals: Vec<String> = match &self.data {
                Data::Bool(v) => v.iter().map(|b| b.to_string()).collect(),
                d if d.dtype().is_float() => self.to_f64().iter().map(|x| format!("{x}")).collect(),
                _ => self.to_i64().iter().map(|x| x.to_string()).collect(),
            };
            format!("[{}]", vals.join(","))
        } else {
            format!("<{} values>", self.numel())
        }
    }
}

/// Bit-exact equality (NaN equals the same NaN), so constants can be hash-consed.
impl PartialEq for Tensor {
    fn eq(&self, other: &Self) -> bool {
        if std::ptr::eq(self, other) {
            return true;
        }
        if self.dtype() != other.dtype()
            || self.shape != other.shape
            || self.digest() != other.digest()
        {
            return false;
        }
        match (&self.data, &other.data) {
            (Data::F32(a), Data::F32(b)) => a
                .iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())),
            (Data::F16(a), Data::F16(b)) => a
                .iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())),
            (Data::BF16(a), Data::BF16(b)) => a
                .iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())),
            (Data::F64(a), Data::F64(b)) => a
                .iter()
                .map(|x| x.to_bits())
                .eq(b.iter().map(|x| x.to_bits())),
            (Data::I64(a), Data::I64(b)) => a == b,
            (Data::I32(a), Data::I32(b)) => a == b,
            (Data::I8(a), Data::I8(b)) => a == b,
            (Data::U8(a), Data::U8(b)) => a == b,
            (Data::Bool(a), Data::Bool(b)) => a == b,
            _ => false,
        }
    }
}
impl Eq for Tensor {}

impl PartialOrd for Tensor {
    fn partial_cmp(&self, o: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(o))
    }
}
/// A total order consistent with bit equality (dtype, shape, then element bytes).
impl Ord for Tensor {
    fn cmp(&self, o: &Self) -> std::cmp::Ordering {
        if self == o {
            return std::cmp::Ordering::Equal;
        }
        (self.dtype(), &self.shape, self.bytes()).cmp(&(o.dtype(), &o.shape, o.bytes()))
    }
}

impl Hash for Tensor {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.dtype().hash(state);
        self.shape.hash(state);
        self.digest().hash(state);
    }
}

/// Mixes 64-bit words into a digest: four independent lanes (so the loop is not one long
/// dependency chain), each a multiply-rotate, folded at the end.
fn digest_words(words: impl Iterator<Item = u64>) -> u64 {
    const K: [u64; 4] = [
        0x9e37_79b9_7f4a_7c15,
        0xc2b2_ae3d_27d4_eb4f,
        0x1656_67b1_9e37_79f9,
        0x85eb_ca77_c2b2_ae63,
    ];
    let mut lanes = K;
    let mut n = 0u64;
    for (i, w) in words.enumerate() {
        let l = &mut lanes[i & 3];
        *l = (*l ^ w).wrapping_mul(K[i & 3]).rotate_left(29);
        n += 1;
    }
    lanes.iter().fold(n.wrapping_mul(K[0]), |h, &l| {
        (h ^ l).wrapping_mul(K[1]).rotate_left(31)
    })
}
