//! What goes wrong in an engine or a model, and what an engine reports about itself.
//!
//! It is a leaf: the runtime, the voice analysis and the engines all return these errors, so
//! they depend on nothing else in the worker.

use std::fmt;

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
    message: String,
}

impl EngineError {
    pub fn new(kind: EngineErrorKind, code: &'static str, message: impl Into<String>) -> Self {
        EngineError {
            kind,
            code,
            message: message.into(),
        }
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

impl std::error::Error for EngineError {}

impl From<ort::Error> for EngineError {
    fn from(e: ort::Error) -> Self {
        EngineError::internal(format!("onnx runtime: {e}"))
    }
}

/// What an engine reports about itself for `/health`.
#[derive(Debug, Clone, serde::Serialize)]
pub struct EngineHealth {
    pub ready: bool,
    pub device: String,
    pub detail: String,
}
