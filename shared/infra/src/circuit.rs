//! A circuit breaker: it remembers that a dependency is down, so that while it is, callers fail
//! at once (and clients get their 503 within a second) instead of each waiting for its own
//! connection attempt to time out, and the dependency is not hammered while it comes back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{InfraError, Result};

pub struct Circuit {
    name: &'static str,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// Calls fail at once until then; `None` while the dependency answers.
    open_until: Option<Instant>,
    /// Why the last call failed, in public words.
    reason: &'static str,
}

impl Circuit {
    /// A closed circuit for the dependency `name` that stays open `cooldown` after a failure.
    pub fn new(name: &'static str, cooldown: Duration) -> Self {
        Circuit {
            name,
            cooldown,
            state: Mutex::new(State::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // Every update is a plain assignment, so a poisoned lock holds consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Lets a call through, or fails at once while the circuit is open. Once the cooldown is
    /// over, one call goes through as a probe and the circuit stays open for the others until
    /// that call reports back, so that a dependency coming back sees one caller, not all.
    pub fn check(&self) -> Result<()> {
        let mut state = self.lock();
        let Some(until) = state.open_until else {
            return Ok(());
        };
        let now = Instant::now();
        if now < until {
            return Err(InfraError::unavailable_because(
                state.reason,
                format!(
                    "{} is down ({}); next try in {} ms",
                    self.name,
                    state.reason,
                    (until - now).as_millis()
                ),
            ));
        }
        state.open_until = Some(now + self.cooldown);
        Ok(())
    }

    /// Records the outcome of a call that [`Circuit::check`] let through.
    pub fn record<T>(&self, result: &Result<T>) {
        match result {
            Ok(_) => self.succeeded(),
            Err(e) if e.kind() == crate::InfraErrorKind::Unavailable => self.failed(e.reason()),
            // The dependency answered, if only with something unexpected: it is up.
            Err(_) => self.succeeded(),
        }
    }

    fn succeeded(&self) {
        let mut state = self.lock();
        if state.open_until.take().is_some() {
            tracing::info!(dependency = self.name, "dependency answers again");
        }
    }

    fn failed(&self, reason: &'static str) {
        let mut state = self.lock();
        if state.open_until.is_none() {
            tracing::warn!(dependency = self.name, reason, "dependency is down");
        }
        state.open_until = Some(Instant::now() + self.cooldown);
        state.reason = reason;
    }

    /// Whether calls are failing at once now.
    #[cfg(test)]
    fn is_open(&self) -> bool {
        self.lock().open_until.is_some_and(|u| Instant::now() < u)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failure_opens_the_circuit_and_one_probe_closes_it() {
        let circuit = Circuit::new("test", Duration::from_millis(50));
        assert!(circuit.check().is_ok());
        circuit.record::<()>(&Err(InfraError::unavailable_because(
            "connection refused",
            "refused",
        )));
        let refused = circuit.check().unwrap_err();
        assert_eq!(refused.reason(), "connection refused");
        assert!(circuit.is_open());

        // After the cooldown one call probes; the others still fail at once meanwhile.
        let deadline = Instant::now() + Duration::from_secs(5);
        while circuit.check().is_err() {
            assert!(
                Instant::now() < deadline,
                "the circuit never let a probe through"
            );
            std::thread::yield_now();
        }
        assert!(
            circuit.check().is_err(),
            "a second caller went through with the probe"
        );
        circuit.record(&Ok(()));
        assert!(circuit.check().is_ok());
        assert!(!circuit.is_open());
    }

    #[test]
    fn answers_that_are_not_outages_keep_it_closed() {
        let circuit = Circuit::new("test", Duration::from_secs(60));
        circuit.record::<()>(&Err(InfraError::corrupt("bad json")));
        assert!(circuit.check().is_ok());
    }
}
