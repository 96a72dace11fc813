//! One error type for every adapter, with a kind that callers match on to decide between
//! retrying (the dependency is unavailable) and giving up, and the error that caused it.

use std::error::Error as StdError;
use std::fmt;

/// The error an adapter's dependency gave, kept whole so that callers and logs can follow it.
pub type Source = Box<dyn StdError + Send + Sync + 'static>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InfraErrorKind {
    /// The dependency could not be reached or timed out; trying again later may work.
    Unavailable,
    /// The data read back does not have the expected shape.
    Corrupt,
    /// The request itself is wrong (bad configuration, a name the server refuses).
    Invalid,
}

/// An adapter's failure, one variant per kind, each with what the adapter was doing (which may
/// name hosts and keys, so it is for the log only) and the dependency's own error.
///
/// The message reads "kind: what: cause". The cause's text is part of it because a failed job's
/// record and most log lines carry this message alone; `source()` still hands out the cause.
#[derive(Debug, thiserror::Error)]
pub enum InfraError {
    #[error("unavailable{}", detail(.what, .source))]
    Unavailable {
        what: String,
        /// Why, in words fit for anyone to read (`/health` shows it).
        reason: Option<&'static str>,
        #[source]
        source: Option<Source>,
    },
    #[error("corrupt data{}", detail(.what, .source))]
    Corrupt {
        what: String,
        #[source]
        source: Option<Source>,
    },
    #[error("invalid{}", detail(.what, .source))]
    Invalid {
        what: String,
        #[source]
        source: Option<Source>,
    },
}

fn detail(what: &str, source: &Option<Source>) -> String {
    let mut text = String::new();
    if !what.is_empty() {
        text.push_str(": ");
        text.push_str(what);
    }
    if let Some(source) = source {
        text.push_str(": ");
        text.push_str(&source.to_string());
    }
    text
}

impl InfraError {
    pub fn new(kind: InfraErrorKind, what: impl Into<String>) -> Self {
        let what = what.into();
        match kind {
            InfraErrorKind::Unavailable => InfraError::Unavailable {
                what,
                reason: None,
                source: None,
            },
            InfraErrorKind::Corrupt => InfraError::Corrupt { what, source: None },
            InfraErrorKind::Invalid => InfraError::Invalid { what, source: None },
        }
    }

    /// An error that is only its cause: its message is the cause's own.
    pub fn wrap(kind: InfraErrorKind, source: impl Into<Source>) -> Self {
        Self::new(kind, String::new()).with_source(source)
    }

    /// Keeps `source` as the cause of this error.
    pub fn with_source(mut self, cause: impl Into<Source>) -> Self {
        match &mut self {
            InfraError::Unavailable { source, .. }
            | InfraError::Corrupt { source, .. }
            | InfraError::Invalid { source, .. } => *source = Some(cause.into()),
        }
        self
    }

    pub fn unavailable(what: impl fmt::Display) -> Self {
        Self::new(InfraErrorKind::Unavailable, what.to_string())
    }

    /// An unavailable dependency with a public reason, such as "connection refused".
    pub fn unavailable_because(reason: &'static str, what: impl fmt::Display) -> Self {
        InfraError::Unavailable {
            what: what.to_string(),
            reason: Some(reason),
            source: None,
        }
    }

    /// Why the dependency failed, safe to show to clients: the reason given when the error was
    /// made, or the kind in general terms.
    pub fn reason(&self) -> &'static str {
        match self {
            InfraError::Unavailable { reason, .. } => reason.unwrap_or("did not answer"),
            InfraError::Corrupt { .. } => "answered with data of the wrong shape",
            InfraError::Invalid { .. } => "refused the request",
        }
    }

    pub fn corrupt(what: impl fmt::Display) -> Self {
        Self::new(InfraErrorKind::Corrupt, what.to_string())
    }

    pub fn invalid(what: impl fmt::Display) -> Self {
        Self::new(InfraErrorKind::Invalid, what.to_string())
    }

    pub fn kind(&self) -> InfraErrorKind {
        match self {
            InfraError::Unavailable { .. } => InfraErrorKind::Unavailable,
            InfraError::Corrupt { .. } => InfraErrorKind::Corrupt,
            InfraError::Invalid { .. } => InfraErrorKind::Invalid,
        }
    }
}

pub type Result<T> = std::result::Result<T, InfraError>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cause_is_kept_and_named_in_the_message() {
        let cause = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = InfraError::unavailable_because("connection refused", "redis").with_source(cause);
        assert_eq!(e.to_string(), "unavailable: redis: refused");
        assert_eq!(e.reason(), "connection refused");
        assert_eq!(e.kind(), InfraErrorKind::Unavailable);
        let source = e.source().expect("a source");
        let io = source
            .downcast_ref::<std::io::Error>()
            .expect("the io error");
        assert_eq!(io.kind(), std::io::ErrorKind::ConnectionRefused);
    }

    #[test]
    fn a_wrapped_error_speaks_as_its_cause() {
        let cause = serde_json::from_str::<u32>("x").unwrap_err();
        let text = cause.to_string();
        let e = InfraError::wrap(InfraErrorKind::Corrupt, cause);
        assert_eq!(e.to_string(), format!("corrupt data: {text}"));
        assert!(e.source().unwrap().is::<serde_json::Error>());
        assert_eq!(e.reason(), "answered with data of the wrong shape");
    }

    #[test]
    fn an_error_without_a_cause_has_no_source() {
        let e = InfraError::invalid("storage.url s3:// needs a bucket name");
        assert!(e.source().is_none());
        assert_eq!(
            e.to_string(),
            "invalid: storage.url s3:// needs a bucket name"
        );
    }
}
