//! One error type for the whole crate. Every variant names *what* is wrong and *where*
//! (file, tensor key, config field) because users bring their own model folders and the
//! message is all they get in a browser tab.

use std::fmt;

/// Result alias used throughout the crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A safetensors file whose header or layout is broken (truncated, bad JSON, bad offsets).
    #[error("{file}: corrupt safetensors file: {reason}")]
    CorruptSafetensors { file: String, reason: String },

    /// A tensor the module needs is absent from every weight file of the component.
    #[error("{file}: missing tensor `{key}`")]
    MissingTensor { file: String, key: String },

    /// Tensors were left over after loading: the checkpoint does not match the config.
    #[error("{file}: unexpected tensor{} {}", if keys.len() > 1 { "s" } else { "" }, KeyList(keys))]
    UnexpectedTensors { file: String, keys: Vec<String> },

    /// A tensor exists but its shape disagrees with what the config implies.
    #[error("{file}: tensor `{key}` has shape {found:?}, expected {expected:?}")]
    ShapeMismatch { file: String, key: String, expected: Vec<usize>, found: Vec<usize> },

    /// A stored dtype we cannot convert to floats (e.g. I64 for a float parameter).
    #[error("{file}: tensor `{key}` has dtype {dtype}, expected F32, F16 or BF16")]
    UnsupportedDtype { file: String, key: String, dtype: String },

    /// A config value the implementation does not honour; never silently ignored.
    #[error("{file}: unsupported value {value} for `{field}`{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    UnsupportedConfig { file: String, field: String, value: String, hint: Option<String> },

    /// A JSON file that does not parse into the expected config struct.
    #[error("{file}: invalid JSON config: {reason}")]
    InvalidConfig { file: String, reason: String },

    /// A file the model folder should have but does not.
    #[error("{path}: not found{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default())]
    MissingFile { path: String, hint: Option<String> },

    /// Errors from reading local files, with the path.
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },

    /// Invalid arguments to a public API (image size, step count, ...).
    #[error("{0}")]
    InvalidArgument(String),

    /// Tokenizer construction or encoding failures.
    #[error("{0}")]
    Tokenizer(String),

    /// A source that answers only from what it was told (the browser's plan, `folder::KnownFiles`)
    /// has not been told about these paths yet: the caller probes them and asks again.
    #[error("not known yet: {}", paths.join(", "))]
    NotYetKnown { paths: Vec<String> },

    /// A component produced NaN or infinite values; the image would be garbage.
    #[error("the {component} produced non-finite values (NaN or infinity), so there is no image: {hint}")]
    NonFinite { component: String, hint: String },

    /// A LoRA file that cannot be applied to this model (unsupported kind, a key matching no
    /// module, factors of the wrong shape).
    #[error("{file}: {}{reason}", key.as_deref().map(|k| format!("`{k}`: ")).unwrap_or_default())]
    InvalidLora { file: String, key: Option<String>, reason: String },

    /// Generation was cancelled between two steps.
    #[error("cancelled")]
    Cancelled,
}

/// Shows at most a handful of keys so an error on a wrong checkpoint stays one readable line.
struct KeyList<'a>(&'a [String]);

impl fmt::Display for KeyList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 5;
        let shown: Vec<String> = self.0.iter().take(SHOWN).map(|k| format!("`{k}`")).collect();
        write!(f, "{}", shown.join(", "))?;
        if self.0.len() > SHOWN {
            write!(f, " and {} more", self.0.len() - SHOWN)?;
        }
        Ok(())
    }
}

impl Error {
    pub fn unsupported(file: &str, field: &str, value: impl fmt::Display) -> Self {
        Error::UnsupportedConfig {
            file: file.to_string(),
            field: field.to_string(),
            value: format!("{value}"),
            hint: None,
        }
    }

    pub fn io(path: impl AsRef<std::path::Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().display().to_string(), source }
    }
}
