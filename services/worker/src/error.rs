//! What goes wrong in an engine or a model, and what an engine reports about itself.
//!
//! It is a leaf: the runtime, the voice analysis and the engines all return these errors, so
//! they depend on nothing else in the worker.

use std::error::Error as StdError;
use std::fmt;
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

#[derive(Debug, Clone)]
pub struct EngineError {
    kind: EngineErrorKind,
    code: &'static str,
    /// Stored in the failed job's record, so clients read it; it names the cause in words.
    message: String,
    /// The error this one wraps, for logs and callers that inspect it. Shared, so that an
    /// engine error stays cheap to clone.
    source: Option<Arc<dyn StdError + Send + Sync + 'static>>,
}

impl EngineError {
    pub fn new(kind: EngineErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        EngineError {
            kind,
            code,
            message: message.into(),
            source: None,
        }
    }

    /// Keeps `source` as the cause of this error; the message is left as it is.
    pub fn with_source(mut self, source: impl Into<Box<dyn StdError + Send + Sync>>) -> Self {
        self.source = Some(Arc::from(source.into()));
        self
    }

    pub fn invalid(code: &'static str, message: impl Into<String>) -> Self {
        Self::new(EngineErrorKind::InvalidInput, code, message)
    }

    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(EngineErrorKind::Internal, "engine_error", message)
    }

    pub fn kind(&self) -> EngineErrorKind {
        self.kind
    }

    /// A stable machine-readable code, reported to clients as the job's `error`.
    pub fn code(&self) -> &'static str {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.code, self.message)
    }
}

impl StdError for EngineError {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|s| s as &(dyn StdError + 'static))
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
