//! The crate's one error type: what went wrong and what the user can do.

use std::path::PathBuf;

/// Errors of the pure parts and the runner's adapters.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The image names no binary: add it to the image table (`$STATE/images`).
    #[error("image {image:?} maps to no local binary; add `{image}=<path>` to the image table {table}")]
    UnknownImage { image: String, table: PathBuf },
    /// The mapped binary is missing: build it (`cargo build --workspace --all-targets`).
    #[error("image {image:?} maps to {path}, which does not exist; build it first")]
    MissingBinary { image: String, path: PathBuf },
    /// A line of the image table is not `image=path`.
    #[error("image table line {line}: expected `image=path`, got {text:?}")]
    BadImageTable { line: usize, text: String },
    /// A container has neither `command` nor `args` we can turn into a process.
    #[error("container {container:?}: {reason}")]
    BadContainer { container: String, reason: String },
    /// An env var or volume refers to a ConfigMap/Secret key that does not exist.
    #[error("{kind} {name:?} key {key:?} not found (not optional)")]
    MissingKey {
        kind: &'static str,
        name: String,
        key: String,
    },
    /// An env var or volume refers to a ConfigMap/Secret that does not exist.
    #[error("{kind} {name:?} not found (not optional)")]
    MissingObject { kind: &'static str, name: String },
    /// A downward-API field this runner does not provide.
    #[error("unsupported downward API field {0:?}")]
    UnsupportedField(String),
    /// A volume type this runner does not provide.
    #[error("volume {0:?}: unsupported volume type")]
    UnsupportedVolume(String),
    /// The Kubernetes API refused or failed.
    #[error("kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    /// A local system call or file operation failed.
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// A system command (ip, nft) failed.
    #[error("command {command:?} failed: {stderr}")]
    Command { command: String, stderr: String },
    /// Namespace/mount setup inside the `enter` helper failed.
    #[error("sandbox: {what}: {errno}")]
    Sandbox { what: String, errno: nix::Error },
}

impl Error {
    /// Wraps an I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

/// Result with the crate's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;
