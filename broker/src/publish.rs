use futures_util::future::join_all;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Confirmation, Connection};
use mailtrail_shared::headers::JSON_CONTENT_TYPE;

/// Why a publish did not reach a queue.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("the broker refused the message for {0:?} (nack)")]
    Nacked(String),
    #[error("no queue named {0:?}: the message was returned unroutable")]
    Unroutable(String),
    #[error("no publisher confirm from the broker within {} s; the connection is presumed lost", CONFIRM_TIMEOUT.as_secs())]
    NoConfirm,
    #[error("publishing to {queue:?} failed: {source}")]
    Channel {
        queue: String,
        #[source]
        source: lapin::Error,
    },
}

/// How long a publish waits for its confirm. A confirm that never comes (the connection died
/// with the frames in flight) must become an error the caller can retry, never a hang.
pub const CONFIRM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(15);

/// One message to publish to a queue through the default exchange.
#[derive(Debug, Clone)]
pub struct OutgoingMessage {
    pub routing_key: String,
    pub body: Vec<u8>,
    pub properties: BasicProperties,
}

/// Properties of every mailtrail message: persistent JSON with a message id and headers.
pub fn json_properties(message_id: &str, headers: FieldTable) -> BasicProperties {
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type(JSON_CONTENT_TYPE.into())
        .with_message_id(message_id.into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers)
}

/// A channel in confirm mode, used only for publishing (consumers use channels of their own).
#[derive(Clone)]
pub struct Publisher {
    channel: Channel,
}

impl Publisher {
    pub async fn open(connection: &Connection) -> anyhow::Result<Publisher> {
        let channel = connection.create_channel().await?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Publisher { channel })
    }

    pub fn channel(&self) -> &Channel {
        &self.channel
    }

    /// Publishes every message with `mandatory` set, keeping them all in flight, then waits for
    /// every confirm. Succeeds only if each one was acked *and* routed to a queue.
    pub async fn publish_all(&self, messages: &[OutgoingMessage]) -> Result<(), PublishError> {
        self.publish_via("", true, messages).await
    }

    /// Publishes every message to a (topic) exchange and waits for every confirm. Not
    /// `mandatory`: a message no queue is bound for is the subscribers' choice, not an error
    /// (status events nobody listens to). Acked means the broker took responsibility for it.
    pub async fn publish_to_exchange(
        &self,
        exchange: &str,
        messages: &[OutgoingMessage],
    ) -> Result<(), PublishError> {
        self.publish_via(exchange, false, messages).await
    }

    async fn publish_via(
        &self,
        exchange: &str,
        mandatory: bool,
        messages: &[OutgoingMessage],
    ) -> Result<(), PublishError> {
        let mut pending = Vec::with_capacity(messages.len());
        for message in messages {
            let confirm = self
                .channel
                .basic_publish(
                    exchange.into(),
                    message.routing_key.as_str().into(),
                    BasicPublishOptions {
                        mandatory,
                        ..BasicPublishOptions::default()
                    },
                    &message.body,
                    message.properties.clone(),
                )
                .await
                .map_err(|source| PublishError::Channel {
                    queue: message.routing_key.clone(),
                    source,
                })?;
            pending.push(confirm);
        }
        let confirmations = tokio::time::timeout(CONFIRM_TIMEOUT, join_all(pending))
            .await
            .map_err(|_| PublishError::NoConfirm)?;
        for (message, confirmation) in messages.iter().zip(confirmations) {
            let queue = || message.routing_key.clone();
            match confirmation.map_err(|source| PublishError::Channel {
                queue: queue(),
                source,
            })? {
                Confirmation::Ack(None) => {}
                Confirmation::Ack(Some(_returned)) => {
                    return Err(PublishError::Unroutable(queue()));
                }
                Confirmation::Nack(_) => return Err(PublishError::Nacked(queue())),
                // confirm_select was called in `open`: a missing confirm is a broken promise.
                Confirmation::NotRequested => return Err(PublishError::Nacked(queue())),
            }
        }
        Ok(())
    }

    /// Publishes one message and waits for its confirm.
    pub async fn publish(&self, message: OutgoingMessage) -> Result<(), PublishError> {
        self.publish_all(std::slice::from_ref(&message)).await
    }
}
