//! The system C compiler: which one (`$SMELT_CC`, else `cc`), its version (part of every
//! cache key), the flags (`$SMELT_CFLAGS` replaces the optimization flags), and building a
//! shared object from one C source.

use crate::Error;
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;

/// Optimization flags unless `$SMELT_CFLAGS` says otherwise. `-fno-tree-pre`: partial
/// redundancy elimination across a row kernel's passes turns the last pass's loop into
/// branches that gcc 12 then refuses to vectorize.
pub const DEFAULT_CFLAGS: &str = "-O3 -march=native -fopenmp -fno-tree-pre";
/// Added to gcc's default flags on x86-64: no vectorized gathers. With `-march=native` on an
/// AMD Zen 3 (gcc tunes for it and then emits AVX2 gathers), gcc 12.2 compiled the corpus
/// ResNet-18 and MobileNetV3 into code whose outputs were off by 10-15% of their scale
/// (`-fno-tree-loop-vectorize`, `-mtune=generic` or these flags alone each fixed it; the
/// kernel-IR interpreter and the reference agree). Gathers are also slow on these cores,
/// which is why gcc's generic tuning never emits them.
pub const X86_GCC_CFLAGS: &str = "-mtune-ctrl=^use_gather_2parts,^use_gather_4parts,^use_gather";
/// [`DEFAULT_CFLAGS`] for clang, which has no `-fno-tree-pre` (and rejects it).
pub const CLANG_CFLAGS: &str = "-O3 -march=native -fopenmp";
/// Flags every build gets: a position-independent shared object in GNU C11; no errno from
/// math functions so they can be vectorized (results do not change); no contraction of
/// `a*b + c` into fma, so each IR op rounds as the reference says (a row kernel recomputing
/// a value must get the same bits in every pass).
pub const FIXED_CFLAGS: &[&str] = &[
    "-std=gnu11",
    "-fPIC",
    "-shared",
    "-fno-math-errno",
    "-ffp-contract=off",
];

/// What a C compiler says when it fails for the machine's sake rather than the source's: it
/// could not write its output or temporary files.
const ENVIRONMENT_ERRORS: &[&str] = &[
    "No space left on device",
    "Disk quota exceeded",
    "Read-only file system",
    "Permission denied",
];

/// A C compiler that answered `--version`.
#[derive(Clone, Debug)]
pub struct Compiler {
    /// Command (`$SMELT_CC` or `cc`).
    pub command: String,
    /// First line of its `--version`.
    pub version: String,
    /// Flags, optimization flags first.
    pub flags: Vec<String>,
}

/// Why no compiler can be used.
pub fn find() -> Result<Compiler, String> {
    let command = std::env::var("SMELT_CC").unwrap_or_else(|_| "cc".into());
    /// (command, its version or why it cannot be used), probed once per command.
    type Probes = std::sync::Mutex<Vec<(String, Result<String, String>)>>;
    static PROBES: OnceLock<Probes> = OnceLock::new();
    let probes = PROBES.get_or_init(Default::default);
    let mut probes = probes.lock().unwrap_or_else(|p| p.into_inner());
    let version = match probes.iter().find(|(c, _)| *c == command) {
        Some((_, v)) => v.clone(),
        None => {
            let v = match Command::new(&command).arg("--version").output() {
                Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .unwrap_or("")
                    .to_string()),
                Ok(o) => Err(format!(
                    "'{command} --version' failed: {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                )),
                Err(e) => Err(format!("'{command}' cannot be run: {e}")),
            };
            probes.push((command.clone(), v.clone()));
            v
        }
    }?;
    let default = match version.contains("clang") {
        true => CLANG_CFLAGS,
        false => DEFAULT_CFLAGS,
    };
    let default = match (version.contains("clang"), std::env::consts::ARCH) {
        (false, "x86_64") => format!("{default} {X86_GCC_CFLAGS}"),
        _ => default.to_string(),
    };
    let flags_env = std::env::var("SMELT_CFLAGS").unwrap_or(default);
    let mut flags: Vec<String> = flags_env.split_whitespace().map(String::from).collect();
    flags.extend(FIXED_CFLAGS.iter().map(|s| s.to_string()));
    Ok(Compiler {
        command,
        version,
        flags,
    })
}

/// What `-march=native` resolves to on this machine, for the cache key: the first CPU's model
/// name and feature flags from `/proc/cpuinfo` (the architecture name elsewhere). A shared
/// cache directory then never hands one CPU code built for another.
pub fn host_cpu() -> String {
    static HOST: OnceLock<String> = OnceLock::new();
    HOST.get_or_init(|| {
        let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let field = |name: &str| {
            info.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_default()
        };
        format!(
            "{} | {} | {}",
            std::env::consts::ARCH,
            field("model name"),
            field("flags")
        )
    })
    .clone()
}

impl Compiler {
    /// Compiles the translation units `units` (with `headers` under `include/`) into the
    /// shared object `out`, working in the scratch directory `work`: one unit directly; several
    /// each to an object file, at most `jobs` compilers at a time, then linked.
    ///
    /// A file that cannot be written (a read-only or full disk) is an [`Error::Cache`] naming
    /// it, as is a compiler that fails for such a reason; any other compiler failure is an
    /// [`Error::CCompile`].
    pub fn build(
        &self,
        units: &[String],
        headers: &[(&str, &str)],
        work: &Path,
        out: &Path,
        jobs: usize,
    ) -> Result<(), Error> {
        let io = |p: &Path, e: std::io::Error| Error::Cache {
            path: p.display().to_string(),
            why: e.to_string(),
        };
        std::fs::create_dir_all(work).map_err(|e| io(work, e))?;
        let include = work.join("include");
        for (path, text) in headers {
            let p = include.join(path);
            if let Some(d) = p.parent() {
                std::fs::create_dir_all(d).map_err(|e| io(d, e))?;
            }
            std::fs::write(&p, text).map_err(|e| io(&p, e))?;
        }
        let mut sources = Vec::new();
        for (i, text) in units.iter().enumerate() {
            let src = work.join(format!("model{i}.c"));
            std::fs::write(&src, text).map_err(|e| io(&src, e))?;
            sources.push(src);
        }
        if let [src] = sources.as_slice() {
            return self.run(&[], &include, &[src.as_path()], out);
        }
        let objects: Vec<std::path::PathBuf> =
            sources.iter().map(|s| s.with_extension("o")).collect();
        let pairs: Vec<(&std::path::PathBuf, &std::path::PathBuf)> =
            sources.iter().zip(&objects).collect();
        let results = smelt_compiler::parallel::map_on(jobs, &pairs, |&(src, obj)| {
            self.run(&["-c"], &include, &[src], obj)
        });
        for r in results {
            r?;
        }
        let objs: Vec<&Path> = objects.iter().map(|o| o.as_path()).collect();
        self.run(&[], &include, &objs, out)
    }

    /// `cc FLAGS EXTRA -I include INPUTS -o out`, its first errors on failure.
    fn run(
        &self,
        extra: &[&str],
        include: &Path,
        inputs: &[&Path],
        out: &Path,
    ) -> Result<(), Error> {
        let o = Command::new(&self.command)
            .args(&self.flags)
            .args(extra)
            .arg("-I")
            .arg(include)
            .args(inputs)
            .arg("-o")
            .arg(out)
            .output()
            .map_err(|e| Error::CCompile(format!("'{}' cannot be run: {e}", self.command)))?;
        if !o.status.success() {
            let log = String::from_utf8_lossy(&o.stderr);
            if let Some(line) = log
                .lines()
                .find(|l| ENVIRONMENT_ERRORS.iter().any(|m| l.contains(m)))
            {
                return Err(Error::Cache {
                    path: out.display().to_string(),
                    why: format!("'{}' failed: {}", self.command, line.trim()),
                });
            }
            let first: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("error"))
                .take(5)
                .collect();
            let names: Vec<String> = inputs.iter().map(|p| p.display().to_string()).collect();
            return Err(Error::CCompile(format!(
                "'{} {}' failed on {}:\n{}",
                self.command,
                self.flags.join(" "),
                names.join(" "),
                if first.is_empty() {
                    log.trim().to_string()
                } else {
                    first.join("\n")
                }
            )));
        }
        Ok(())
    }
}
