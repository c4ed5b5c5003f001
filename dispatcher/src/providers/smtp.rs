//! SMTP as a provider: the message built by `crate::message` (with `X-Mailtrail-Id`) through
//! the pooled `crate::smtp::SmtpSender`.

use super::{Provider, SendError, SendFuture, Sent};
use crate::message;
use crate::smtp::{SmtpSender, envelope};
use mailtrail_shared::dispatch::DispatchJob;

pub const NAME: &str = "smtp";

pub struct SmtpProvider {
    pub sender: SmtpSender,
    pub hello_name: String,
}

impl Provider for SmtpProvider {
    fn name(&self) -> &'static str {
        NAME
    }

    fn send<'a>(&'a self, job: &'a DispatchJob) -> SendFuture<'a> {
        Box::pin(async move {
            let built = message::build(job, &self.hello_name).and_then(|message| {
                let envelope = envelope(&job.from.address, &job.to.address)
                    .map_err(|e| message::BuildError::from_envelope(&e))?;
                Ok((envelope, message.formatted()))
            });
            let (envelope, formatted) = built.map_err(|error| SendError::Rejected {
                reason: error.to_string(),
                mailbox_unknown: false,
            })?;
            let accepted = self.sender.send(&envelope, &formatted).await?;
            Ok(Sent {
                provider_message_id: accepted.queue_id,
                reply: accepted.reply,
            })
        })
    }
}
