//! One error type for every adapter, with a kind that callers match on to decide between
//! retrying (the dependency is unavailable) and giving up.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfraErrorKind {
    /// The dependency could not be reached or timed out; trying again later may work.
    Unavailable,
    /// The data read back does not have the expected shape.
    Corrupt,
    /// The request itself is wrong (bad configuration, a name the server refuses).
    Invalid,
}

#[derive(Debug)]
pub struct InfraError {
    kind: InfraErrorKind,
    what: String,
    /// Why a dependency is unavailable, in words fit for anyone to read (`/health` shows it);
    /// `what` may name hosts and is for the log only.
    reason: Option<&'static str>,
}

impl InfraError {
    pub fn new(kind: InfraErrorKind, what: impl Into<String>) -> Self {
        InfraError {
            kind,
            what: what.into(),
            reason: None,
        }
    }

    pub fn unavailable(what: impl fmt::Display) -> Self {
        Self::new(InfraErrorKind::Unavailable, what.to_string())
    }

    /// An unavailable dependency with a public reason, such as "connection refused".
    pub fn unavailable_because(reason: &'static str, what: impl fmt::Display) -> Self {
        InfraError {
            reason: Some(reason),
            ..Self::unavailable(what)
        }
    }

    /// Why the dependency failed, safe to show to clients: the reason given when the error was
    /// made, or the kind in general terms.
    pub fn reason(&self) -> &'static str {
        self.reason.unwrap_or(match self.kind {
            InfraErrorKind::Unavailable => "did not answer",
            InfraErrorKind::Corrupt => "answered with data of the wrong shape",
            InfraErrorKind::Invalid => "refused the request",
        })
    }

    pub fn corrupt(what: impl fmt::Display) -> Self {
        Self::new(InfraErrorKind::Corrupt, what.to_string())
    }

    pub fn invalid(what: impl fmt::Display) -> Self {
        Self::new(InfraErrorKind::Invalid, what.to_string())
    }

    pub fn kind(&self) -> InfraErrorKind {
        self.kind
    }
}

impl fmt::Display for InfraError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            InfraErrorKind::Unavailable => "unavailable",
            InfraErrorKind::Corrupt => "corrupt data",
            InfraErrorKind::Invalid => "invalid",
        };
        write!(f, "{kind}: {}", self.what)
    }
}

impl std::error::Error for InfraError {}

pub type Result<T> = std::result::Result<T, InfraError>;
