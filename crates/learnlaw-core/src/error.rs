//! The library's typed errors. The CLI wraps them with context; nothing here panics on user input.
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A tensor or argument has the wrong shape.
    #[error("shape mismatch in {what}: expected {expected}, got {got}")]
    Shape { what: String, expected: String, got: String },

    /// Input data is present but unusable (NaN/Inf, labels out of range, wrong dtype, …).
    #[error("bad input in {what}: {problem}")]
    BadInput { what: String, problem: String },

    /// A configuration value is out of its valid range.
    #[error("invalid setting {name} = {value}: {problem}")]
    Config { name: String, value: String, problem: String },

    /// A file could not be parsed (corrupt safetensors, malformed TOML/JSON, …).
    #[error("cannot read {path}: {problem}")]
    Format { path: PathBuf, problem: String },

    #[error("I/O error on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },

    /// A backend is not available on this machine (no driver, no adapter, not compiled in).
    #[error("backend {backend} unavailable: {reason}")]
    Unavailable { backend: String, reason: String },

    /// A device that was found failed while working: a kernel that does not compile, a lost
    /// device, a failed transfer. Unlike `Unavailable`, never a reason to skip.
    #[error("{backend} device error: {problem}")]
    Device { backend: String, problem: String },

    /// The numerics broke down (a loss or gradient became NaN/Inf).
    #[error("numerical failure: {0}")]
    Numerical(String),

    /// A run directory is owned by another process (`holder`: its pid and command line).
    #[error("{} is in use by another learnlaw process ({holder}); wait for it to finish or stop it", .dir.display())]
    Busy { dir: PathBuf, holder: String },

    /// A job would need more memory than is available (bytes), refused before allocating.
    #[error("{what} needs about {} of memory, more than the {} available: {advice}", crate::memory::human(*.needed), crate::memory::human(*.available))]
    Memory { what: String, needed: u64, available: u64, advice: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn shape(what: impl Into<String>, expected: impl ToString, got: impl ToString) -> Self {
        Error::Shape { what: what.into(), expected: expected.to_string(), got: got.to_string() }
    }
    pub fn bad_input(what: impl Into<String>, problem: impl Into<String>) -> Self {
        Error::BadInput { what: what.into(), problem: problem.into() }
    }
    pub fn config(name: impl Into<String>, value: impl ToString, problem: impl Into<String>) -> Self {
        Error::Config { name: name.into(), value: value.to_string(), problem: problem.into() }
    }
    pub fn format(path: impl Into<PathBuf>, problem: impl ToString) -> Self {
        Error::Format { path: path.into(), problem: problem.to_string() }
    }
    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
    /// A policy update produced a non-finite value at flat index `index` of a [T, row_len] policy.
    /// The search checks ∂J/∂γ before its update, so there the outer step itself overflowed.
    pub fn non_finite_policy(index: usize, row_len: usize) -> Self {
        Error::Numerical(format!(
            "non-finite policy value at row {}, example {} after the outer update (lower the outer learning rate)",
            index / row_len.max(1),
            index % row_len.max(1)
        ))
    }
}
