//! W3C Trace Context (`traceparent`), so that one trace id links an HTTP request, the job it
//! queued and every attempt a worker makes at it. The gateway takes a client's `traceparent` or
//! starts a trace, and sends it with the job in the queue message's headers; the worker
//! continues it. The format is small and fixed (version `00`):
//! `00-<32 hex trace id>-<16 hex parent id>-<2 hex flags>`.

use std::fmt;

/// The header (HTTP and queue message) that carries the trace.
pub const TRACEPARENT: &str = "traceparent";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    /// 32 lower-case hex digits, not all zero.
    trace_id: String,
    /// 16 lower-case hex digits, not all zero: the span that sent it.
    parent_id: String,
    /// Whether the sender records the trace (flag 01).
    sampled: bool,
}

impl TraceParent {
    /// A new trace, for a request that came without one.
    pub fn start() -> Self {
        TraceParent {
            trace_id: uuid::Uuid::new_v4().simple().to_string(),
            parent_id: new_span_id(),
            sampled: true,
        }
    }

    /// Parses a `traceparent` value; `None` for anything that is not version 00 of the format
    /// (a malformed header starts a new trace rather than failing the request).
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace_id, parent_id, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        let hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                && s.bytes().any(|b| b != b'0')
        };
        if parts.next().is_some()
            || version != "00"
            || !hex(trace_id, 32)
            || !hex(parent_id, 16)
            || flags.len() != 2
        {
            return None;
        }
        let flags = u8::from_str_radix(flags, 16).ok()?;
        Some(TraceParent {
            trace_id: trace_id.to_string(),
            parent_id: parent_id.to_string(),
            sampled: flags & 1 == 1,
        })
    }

    /// The same trace, sent on by a new span of this process.
    pub fn child(&self) -> Self {
        TraceParent {
            parent_id: new_span_id(),
            ..self.clone()
        }
    }

    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    pub fn parent_id(&self) -> &str {
        &self.parent_id
    }

    pub fn sampled(&self) -> bool {
        self.sampled
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let flags = if self.sampled { "01" } else { "00" };
        write!(f, "00-{}-{}-{flags}", self.trace_id, self.parent_id)
    }
}

/// 16 random hex digits (half of a random UUID), never all zero.
fn new_span_id() -> String {
    loop {
        let id = uuid::Uuid::new_v4().simple().to_string()[..16].to_string();
        if id.bytes().any(|b| b != b'0') {
            return id;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_traceparent_round_trips_and_children_keep_the_trace() {
        let value = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let parent = TraceParent::parse(value).unwrap();
        assert_eq!(parent.to_string(), value);
        assert_eq!(parent.trace_id(), "4bf92f3577b34da6a3ce929d0e0e4736");
        let child = parent.child();
        assert_eq!(child.trace_id(), parent.trace_id());
        assert_ne!(child.parent_id(), parent.parent_id());
        assert_eq!(TraceParent::parse(&child.to_string()), Some(child));
        let started = TraceParent::start();
        assert_eq!(TraceParent::parse(&started.to_string()), Some(started));
    }

    #[test]
    fn malformed_values_are_refused() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
        ] {
            assert_eq!(TraceParent::parse(bad), None, "{bad:?}");
        }
    }
}
