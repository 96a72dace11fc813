//! Pulling from a durable JetStream consumer one message at a time, on inboxes kept from pull to
//! pull. Workers take jobs this way, and their reapers take max-deliveries advisories.

use std::sync::Mutex;
use std::time::Duration;

use async_nats::StatusCode;
use async_nats::jetstream;
use futures::{FutureExt, StreamExt};

use crate::error::{InfraError, Result};

/// Pulls of one consumer. Any number may wait at once, each on an inbox of its own.
pub(crate) struct Pulls {
    consumer: jetstream::consumer::PullConsumer,
    /// Names the pull in errors.
    what: &'static str,
    client: async_nats::Client,
    js: jetstream::Context,
    /// The inboxes pulls are answered on, one per pull waiting at once, made as needed and kept:
    /// a subscription per pull would cost the server and this process a subscribe and an
    /// unsubscribe for every message.
    inboxes: Mutex<Vec<Inbox>>,
}

struct Inbox {
    subject: async_nats::Subject,
    messages: async_nats::Subscriber,
}

/// Why a pull on an inbox ended without a message or a timeout.
enum Closed {
    /// The client closed the inbox's subscription.
    Inbox,
    Error(InfraError),
}

/// How long past its expiry a pull is waited for before it is taken as lost: the server ends
/// every pull with a message or a timeout status, unless it went away meanwhile. A message that
/// comes later still is handed out by the next pull on that inbox (or, if none comes, redelivered
/// after the consumer's `ack_wait`).
const PULL_GRACE: Duration = Duration::from_secs(5);

impl Pulls {
    pub(crate) fn new(
        consumer: jetstream::consumer::PullConsumer,
        what: &'static str,
        client: &async_nats::Client,
        js: &jetstream::Context,
    ) -> Self {
        Pulls {
            consumer,
            what,
            client: client.clone(),
            js: js.clone(),
            inboxes: Mutex::default(),
        }
    }

    /// The next message, answered on a kept inbox; `None` when none came in `wait`.
    pub(crate) async fn next(&self, wait: Duration) -> Result<Option<jetstream::Message>> {
        let kept = self.inboxes.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let mut inbox = match kept {
            Some(inbox) => inbox,
            None => {
                let subject = async_nats::Subject::from(self.client.new_inbox());
                let messages = self
                    .client
                    .subscribe(subject.clone())
                    .await
                    .map_err(|e| InfraError::unavailable(self.what).with_source(e))?;
                Inbox { subject, messages }
            }
        };
        let pulled = self.pull_on(&mut inbox, wait).await;
        // An inbox whose subscription the client closed is dropped; the next pull makes another.
        if !matches!(&pulled, Err(Closed::Inbox)) {
            let mut inboxes = self.inboxes.lock().unwrap_or_else(|p| p.into_inner());
            inboxes.push(inbox);
        }
        pulled.map_err(|e| match e {
            Closed::Inbox => {
                InfraError::unavailable(format!("{}: the inbox was closed", self.what))
            }
            Closed::Error(e) => e,
        })
    }

    async fn pull_on(
        &self,
        inbox: &mut Inbox,
        wait: Duration,
    ) -> std::result::Result<Option<jetstream::Message>, Closed> {
        let unavailable = |e| Closed::Error(InfraError::unavailable(self.what).with_source(e));
        // A message that came after its pull was given up on (a server that restarted, say) is
        // handed out before anything more is asked for.
        while let Some(Some(message)) = inbox.messages.next().now_or_never() {
            if message.status.is_none_or(|s| s == StatusCode::OK) {
                return Ok(Some(self.delivered(message)));
            }
        }
        let request = jetstream::consumer::pull::BatchConfig {
            batch: 1,
            expires: Some(wait),
            ..Default::default()
        };
        self.consumer
            .request_batch(request, inbox.subject.clone())
            .await
            .map_err(unavailable)?;
        let deadline = tokio::time::Instant::now() + wait + PULL_GRACE;
        loop {
            let message = match tokio::time::timeout_at(deadline, inbox.messages.next()).await {
                Err(_) => return Ok(None),
                Ok(Some(message)) => message,
                Ok(None) => return Err(Closed::Inbox),
            };
            match message.status {
                None | Some(StatusCode::OK) => return Ok(Some(self.delivered(message))),
                // The pull expired, or (for an earlier pull given up on) an older one did: either
                // way the caller asks again.
                Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => return Ok(None),
                Some(StatusCode::IDLE_HEARTBEAT) => continue,
                // The consumer was deleted, its leader changed, or it has too many waiting pulls.
                Some(status) => {
                    return Err(Closed::Error(InfraError::unavailable(format!(
                        "{}: {status} {}",
                        self.what,
                        message.description.as_deref().unwrap_or_default()
                    ))));
                }
            }
        }
    }

    fn delivered(&self, message: async_nats::Message) -> jetstream::Message {
        jetstream::Message {
            message,
            context: self.js.clone(),
        }
    }
}
