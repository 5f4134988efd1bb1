//! smelt: a compiler that turns deep-learning inference graphs into few, fast, fused kernels.
//!
//! Build a graph with [`GraphBuilder`] (or import ONNX with [`onnx::import_file`]), then run
//! it with a [`Session`]:
//!
//! ```
//! use smelt::{DType, Device, GraphBuilder, Session, Tensor};
//! use std::collections::HashMap;
//!
//! let mut g = GraphBuilder::new();
//! let x = g.input("x", DType::F32, &[2, 3])?;
//! let w1 = g.constant(Tensor::f32([3, 4], vec![0.1; 12]));
//! let b1 = g.constant(Tensor::f32([4], vec![0.5; 4]));
//! let h = g.matmul(x, w1)?;
//! let h = g.add(h, b1)?;
//! let y = g.gelu(h)?;
//! g.output("y", y)?;
//!
//! let session = Session::new(g.build()?, Device::Cpu)?;
//! session.warm_up()?; // one run on zeros: the first request pays nothing more
//! let x = Tensor::f32([2, 3], vec![1.0, 2.0, 3.0, -1.0, -2.0, -3.0]);
//! let out = session.run(&HashMap::from([("x".to_string(), x)]))?;
//! assert_eq!(out[0].1.shape(), &[2, 4]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

#![warn(missing_docs)]

pub use smelt_compiler::codegen;
pub use smelt_compiler::interp;
pub use smelt_compiler::ir::{self, DType, Graph, GraphBuilder, Tensor, Value};
pub use smelt_compiler::kernel;
pub use smelt_compiler::onnx;
pub use smelt_compiler::optimize;
pub use smelt_compiler::schedule;
pub use smelt_compiler::timings;
pub use smelt_compiler::{compile, compile_for, Compiled};
pub use smelt_runtime::{Device, Session, SessionOptions};
