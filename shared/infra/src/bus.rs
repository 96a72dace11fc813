//! Fire-and-forget publish/subscribe for job events and heartbeats.
//!
//! Events are not the source of truth (the job store is), so an at-most-once bus is enough:
//! a subscriber that misses one reads the store.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures::StreamExt;
use futures::stream::BoxStream;
use tokio::sync::broadcast;

use crate::error::{InfraError, InfraErrorKind, Result};

#[derive(Debug, Clone)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
}

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<()>;

    /// Subscribes to a subject, with NATS wildcards (`*` one token, `>` the rest). The
    /// subscription is active when this returns, so nothing published afterwards is missed.
    async fn subscribe(&self, subject: String) -> Result<BoxStream<'static, BusMessage>>;

    /// As [`Bus::subscribe`], without waiting for the server to confirm the subscription: one
    /// round trip less, for a subject nothing can publish to before this process acts. A server
    /// handles one connection's messages in order, so the subscription is in place before
    /// anything this process publishes afterwards over the same connection, and before whatever
    /// others publish in answer to it (the events of a job queued just after). Not for a caller
    /// that goes on to read state that others may change meanwhile: that needs `subscribe`.
    async fn subscribe_unconfirmed(
        &self,
        subject: String,
    ) -> Result<BoxStream<'static, BusMessage>> {
        self.subscribe(subject).await
    }

    /// As [`Bus::subscribe`], but each message goes to one member of `group` only.
    async fn queue_subscribe(
        &self,
        subject: String,
        group: String,
    ) -> Result<BoxStream<'static, BusMessage>>;

    /// Waits until everything published so far has reached the server, so that a process
    /// about to exit does not lose its last messages.
    async fn flush(&self) -> Result<()>;

    /// Whether the bus is connected, for health checks.
    fn is_connected(&self) -> bool;
}

/// The bus over core NATS.
#[derive(Clone)]
pub struct NatsBus {
    client: async_nats::Client,
}

impl NatsBus {
    pub fn new(client: async_nats::Client) -> Self {
        NatsBus { client }
    }
}

fn to_bus_message(m: async_nats::Message) -> BusMessage {
    BusMessage {
        subject: m.subject.to_string(),
        payload: m.payload,
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<()> {
        self.client
            .publish(subject, payload)
            .await
            .map_err(|e| InfraError::wrap(InfraErrorKind::Unavailable, e))
    }

    async fn subscribe(&self, subject: String) -> Result<BoxStream<'static, BusMessage>> {
        let sub = self.subscribe_unconfirmed(subject).await?;
        // The flush round-trip makes sure the server has registered the subscription before
        // the caller goes on to read state that later events would update.
        self.client
            .flush()
            .await
            .map_err(|e| InfraError::wrap(InfraErrorKind::Unavailable, e))?;
        Ok(sub)
    }

    async fn subscribe_unconfirmed(
        &self,
        subject: String,
    ) -> Result<BoxStream<'static, BusMessage>> {
        crate::nats::ensure_connected(&self.client)?;
        let sub = self
            .client
            .subscribe(subject)
            .await
            .map_err(|e| InfraError::wrap(InfraErrorKind::Unavailable, e))?;
        Ok(sub.map(to_bus_message).boxed())
    }

    async fn queue_subscribe(
        &self,
        subject: String,
        group: String,
    ) -> Result<BoxStream<'static, BusMessage>> {
        crate::nats::ensure_connected(&self.client)?;
        let sub = self
            .client
            .queue_subscribe(subject, group)
            .await
            .map_err(|e| InfraError::wrap(InfraErrorKind::Unavailable, e))?;
        self.client
            .flush()
            .await
            .map_err(|e| InfraError::wrap(InfraErrorKind::Unavailable, e))?;
        Ok(sub.map(to_bus_message).boxed())
    }

    async fn flush(&self) -> Result<()> {
        self.client
            .flush()
            .await
            .map_err(|e| InfraError::wrap(InfraErrorKind::Unavailable, e))
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
    }
}

/// The in-process bus of standalone mode: one broadcast channel, filtered per subscriber.
#[derive(Clone)]
pub struct LocalBus {
    tx: Arc<broadcast::Sender<BusMessage>>,
}

impl Default for LocalBus {
    fn default() -> Self {
        let (tx, _) = broadcast::channel(4096);
        LocalBus { tx: Arc::new(tx) }
    }
}

impl LocalBus {
    fn filtered(&self, pattern: String) -> BoxStream<'static, BusMessage> {
        let rx = self.tx.subscribe();
        futures::stream::unfold(rx, |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(m) => return Some((m, rx)),
                    // A slow subscriber loses old events; it reads the job store instead.
                    Err(broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(broadcast::error::RecvError::Closed) => return None,
                }
            }
        })
        .filter(move |m| std::future::ready(subject_matches(&pattern, &m.subject)))
        .boxed()
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<()> {
        // No receivers is not an error: nobody is listening to this job.
        let _ = self.tx.send(BusMessage { subject, payload });
        Ok(())
    }

    async fn subscribe(&self, subject: String) -> Result<BoxStream<'static, BusMessage>> {
        Ok(self.filtered(subject))
    }

    async fn queue_subscribe(
        &self,
        subject: String,
        _group: String,
    ) -> Result<BoxStream<'static, BusMessage>> {
        // One process is the whole group.
        Ok(self.filtered(subject))
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn is_connected(&self) -> bool {
        true
    }
}

/// NATS subject matching: `*` matches one token, `>` one or more trailing tokens.
pub fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut p = pattern.split('.');
    let mut s = subject.split('.');
    loop {
        match (p.next(), s.next()) {
            (Some(">"), Some(_)) => return true,
            (Some("*"), Some(_)) => continue,
            (Some(a), Some(b)) if a == b => continue,
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("tts.events.*", "tts.events.abc"));
        assert!(!subject_matches("tts.events.*", "tts.events.abc.def"));
        assert!(subject_matches("tts.heartbeat.>", "tts.heartbeat.piper.n1"));
        assert!(!subject_matches("tts.heartbeat.>", "tts.heartbeat"));
        assert!(subject_matches("a.b", "a.b"));
        assert!(!subject_matches("a.b", "a.c"));
        assert!(!subject_matches("a.b", "a.b.c"));
    }

    #[tokio::test]
    async fn local_bus_delivers_matching_subjects_in_order() {
        let bus = LocalBus::default();
        let mut sub = bus.subscribe("tts.events.j1".into()).await.unwrap();
        for (subject, n) in [
            ("tts.events.j1", 1),
            ("tts.events.j2", 2),
            ("tts.events.j1", 3),
        ] {
            bus.publish(subject.into(), Bytes::from(vec![n]))
                .await
                .unwrap();
        }
        assert_eq!(sub.next().await.unwrap().payload[0], 1);
        assert_eq!(sub.next().await.unwrap().payload[0], 3);
    }
}
