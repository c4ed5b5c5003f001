use lapin::BasicProperties;
use lapin::types::AMQPValue;
use mailtrail_shared::topology::Queue;

/// A consumed message, detached from its channel so a step function can handle it and tests can
/// build one by hand. The consume loop keeps the delivery tag to ack after the step.
#[derive(Debug, Clone)]
pub struct Incoming {
    pub body: Vec<u8>,
    pub properties: BasicProperties,
    /// The role of the queue it came from.
    pub queue: Queue,
    /// The full name of that queue (for set-aside headers).
    pub queue_name: String,
    pub redelivered: bool,
}

impl Incoming {
    pub fn message_id(&self) -> Option<&str> {
        self.properties.message_id().as_ref().map(|s| s.as_str())
    }

    pub fn user_id(&self) -> Option<&str> {
        self.properties.user_id().as_ref().map(|s| s.as_str())
    }

    pub fn content_type(&self) -> Option<&str> {
        self.properties.content_type().as_ref().map(|s| s.as_str())
    }

    pub fn header(&self, name: &str) -> Option<String> {
        header_string(&self.properties, name)
    }
}

/// A header as a string, whatever string-like AMQP type the publisher used.
pub fn header_string(properties: &BasicProperties, name: &str) -> Option<String> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        AMQPValue::ShortString(s) => Some(s.as_str().to_owned()),
        AMQPValue::ByteArray(b) => Some(String::from_utf8_lossy(b.as_slice()).into_owned()),
        _ => None,
    }
}

/// A header as an integer, whatever integer AMQP type the publisher used.
pub fn header_i64(properties: &BasicProperties, name: &str) -> Option<i64> {
    let headers = properties.headers().as_ref()?;
    match headers.inner().get(name)? {
        AMQPValue::ShortShortInt(v) => Some((*v).into()),
        AMQPValue::ShortShortUInt(v) => Some((*v).into()),
        AMQPValue::ShortInt(v) => Some((*v).into()),
        AMQPValue::ShortUInt(v) => Some((*v).into()),
        AMQPValue::LongInt(v) => Some((*v).into()),
        AMQPValue::LongUInt(v) => Some((*v).into()),
        AMQPValue::LongLongInt(v) => Some(*v),
        AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).parse().ok(),
        _ => None,
    }
}
