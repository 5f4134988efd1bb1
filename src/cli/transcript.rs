//! What a command prints, held back until it succeeds: a command that fails prints only its
//! one-line error, not the progress and results that came before the failure.

use super::outln;

/// Lines for stdout and stderr, in the order they were said.
#[derive(Default)]
pub struct Transcript {
    lines: Vec<(Stream, String)>,
}

enum Stream {
    Out,
    Err,
}

impl Transcript {
    /// A line for stdout (results).
    pub fn out(&mut self, line: impl Into<String>) {
        self.lines.push((Stream::Out, line.into()));
    }

    /// A line for stderr (progress, timings, warnings).
    pub fn err(&mut self, line: impl Into<String>) {
        self.lines.push((Stream::Err, line.into()));
    }

    /// Prints every line, on success.
    pub fn print(self) {
        for (stream, line) in self.lines {
            match stream {
                Stream::Out => outln!("{line}"),
                Stream::Err => eprintln!("{line}"),
            }
        }
    }
}
