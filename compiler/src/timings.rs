//! Where compile time goes: named stages with their wall-clock milliseconds, in order (each
//! optimizer pass, lowering and layout per target, rendering, the C compiler or NVRTC,
//! loading). `smelt compile --timings`, `Session::timings` and `smelt bench --json` report
//! them.

use serde::Serialize;
use std::time::Instant;

/// One stage.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Stage {
    /// What ran (`optimize simplify`, `lower gpu`, `cc`, ...).
    pub name: String,
    /// Wall-clock milliseconds.
    pub ms: f64,
}

/// Stages in the order they ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(transparent)]
pub struct Timings {
    /// The stages.
    pub stages: Vec<Stage>,
}

impl Timings {
    /// Runs `f` as stage `name`.
    pub fn time<T>(&mut self, name: &str, f: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let out = f();
        self.add(name, t.elapsed().as_secs_f64() * 1e3);
        out
    }

    /// Records stage `name` as taking `ms` (a stage of the same name adds to it).
    pub fn add(&mut self, name: &str, ms: f64) {
        match self.stages.iter_mut().find(|s| s.name == name) {
            Some(s) => s.ms += ms,
            None => self.stages.push(Stage {
                name: name.to_string(),
                ms,
            }),
        }
    }

    /// Appends another's stages.
    pub fn extend(&mut self, other: &Timings) {
        for s in &other.stages {
            self.add(&s.name, s.ms);
        }
    }

    /// Sum of the stages.
    pub fn total_ms(&self) -> f64 {
        self.stages.iter().map(|s| s.ms).sum()
    }

    /// One line per stage, then the total.
    pub fn lines(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .stages
            .iter()
            .map(|s| format!("{:<28} {:>9.1} ms", s.name, s.ms))
            .collect();
        v.push(format!("{:<28} {:>9.1} ms", "total", self.total_ms()));
        v
    }
}
