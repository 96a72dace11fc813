//! What goes wrong in an engine or a model, and what an engine reports about itself.
//!
//! It is a leaf: the runtime, the voice analysis and the engines all return these errors, so
//! they depend on nothing else in the worker.

use std::error::Error as StdError;
use std::sync::Arc;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EngineErrorKind {
    /// The job cannot succeed as asked (unknown voice, unsupported language, text the engine
    /// cannot speak). Retrying is pointless.
    InvalidInput,
    /// Something that may pass (an upstream server busy or unreachable, resources exhausted).
    Transient,
    /// A fault in the model or the runtime. Retried in case it is local to one machine.
    Internal,
    /// The engine's answer for this job cannot be used (an upstream server's audio that does not
    /// decode). The same input would bring the same answer, so retrying is pointless.
    Unusable,
}

/// The error an engine error wraps. Shared, so that an engine error stays cheap to clone.
pub type Source = Arc<dyn StdError + Send + Sync + 'static>;

/// What went wrong, one variant per kind. Each has a stable `code` and a `message` that is stored
/// in the failed job's record (so clients read it; it names the cause in words), and keeps the
/// error it wraps (I/O, ONNX Runtime, HTTP, JSON) as its `source()`.
#[derive(Debug, Clone)]
pub enum EngineError {
    InvalidInput {
        code: &'static str,
        message: String,
        source: Option<Source>,
    },
    Transient {
        code: &'static str,
        message: String,
        source: Option<Source>,
    },
    Internal {
        code: &'static str,
        message: String,
        source: Option<Source>,
    },
    Unusable {
        code: &'static str,
        message: String,
        source: Option<Source>,
    },
}

impl EngineError {
    pub fn new(kind: EngineErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        let message = message.into();
        let source = None;
        match kind {
            EngineErrorKind::InvalidInput => EngineError::InvalidInput {
                code,
                message,
                source,
            },
            EngineErrorKind::Transient => EngineError::Transient {
                code,
                message,
                source,
            },
            EngineErrorKind::Internal => EngineError::Internal {
                code,
                message,
                source,
            },
            EngineErrorKind::Unusable => EngineError::Unusable {
                code,
                message,
                source,
            },
        }
    }

    /// Keeps `cause` as the source of this error; the message is left as it is.
    pub fn with_source(mut self, cause: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        let cause: Source = Arc::from(cause.into());
        match &mut self {
            EngineError::InvalidInput { source, .. }
            | EngineError::Transient { source, .. }
            | EngineError::Internal { source, .. }
            | EngineError::Unusable { source, .. } => *source = Some(cause),
        }
        self
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(EngineErrorKind::InvalidInput, code, message)
    }

    /// The job was cancelled while the engine worked; nobody waits for its audio any more.
    pub fn cancelled() -> Self {
        Self::new(
            EngineErrorKind::Transient,
            tts_contracts::failure::CANCELLED,
            "the job was cancelled",
        )
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(EngineErrorKind::Internal, "engine_error", message)
    }

    pub fn kind(&self) -> EngineErrorKind {
        match self {
            EngineError::InvalidInput { .. } => EngineErrorKind::InvalidInput,
            EngineError::Transient { .. } => EngineErrorKind::Transient,
            EngineError::Internal { .. } => EngineErrorKind::Internal,
            EngineError::Unusable { .. } => EngineErrorKind::Unusable,
        }
    }

    /// A stable machine-readable code, reported to clients as the job's `error`.
    pub fn code(&self) -> &'static str {
        match self {
            EngineError::InvalidInput { code, .. }
            | EngineError::Transient { code, .. }
            | EngineError::Internal { code, .. }
            | EngineError::Unusable { code, .. } => code,
        }
    }

    pub fn message(&self) -> &str {
        match self {
            EngineError::InvalidInput { message, .. }
            | EngineError::Transient { message, .. }
            | EngineError::Internal { message, .. }
            | EngineError::Unusable { message, .. } => message,
        }
    }
}

impl std::fmt::Display for EngineError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code(), self.message())
    }
}

/// Written out rather than derived: the source is shared (`Arc`), and the chain must lead to the
/// wrapped error itself, not to the `Arc` around it.
impl StdError for EngineError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            EngineError::InvalidInput { source, .. }
            | EngineError::Transient { source, .. }
            | EngineError::Internal { source, .. }
            | EngineError::Unusable { source, .. } => {
                source.as_deref().map(|s| s as &(dyn StdError + 'static))
            }
        }
    }
}

impl From<ort::Error> for EngineError {
    fn from(e: ort::Error) -> Self {
        EngineError::internal(format!("onnx runtime: {e}")).with_source(e)
    }
}

/// What an engine reports about itself for `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineHealth {
    pub ready: bool,
    pub device: String,
    pub detail: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wrapped_error_keeps_its_cause_and_its_words() {
        let cause = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = EngineError::internal(format!("cannot run espeak-ng: {cause}")).with_source(cause);
        assert_eq!(e.code(), "engine_error");
        assert_eq!(e.message(), "cannot run espeak-ng: no such file");
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::NotFound);
        // A clone shares the cause.
        assert!(e.clone().source().is_some());
    }

    #[test]
    fn an_error_of_its_own_has_no_source() {
        let e = EngineError::invalid("unsupported_language", "engine piper does not speak xx");
        assert!(e.source().is_none());
        assert_eq!(
            e.to_string(),
            "unsupported_language: engine piper does not speak xx"
        );
    }
}
