//! The dispatch job: what the operator's relay publishes to `dispatching` (or
//! `dispatching.priority`) and the dispatcher consumes. One job = one recipient's email.
//!
//! Internal contract, versioned like the public one so services can be upgraded one at a time.

use crate::address::Address;
use crate::contract::{Attachment, Priority};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use uuid::Uuid;

pub const DISPATCH_JOB_VERSION: u32 = 1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DispatchJob {
    pub version: u32,
    /// Stable across republishes of the same job: the dispatcher de-duplicates on it.
    pub job_id: Uuid,
    pub email_id: Uuid,
    pub request_id: Uuid,
    pub request_key: String,
    pub tenant: String,
    /// 1 for the first send; retries count up.
    pub attempt: u32,
    pub priority: Priority,
    pub from: Address,
    /// This email's only recipient: each recipient's message shows only their own address.
    pub to: Address,
    pub reply_to: Option<Address>,
    pub subject: String,
    pub text: Option<String>,
    pub html: Option<String>,
    pub headers: BTreeMap<String, String>,
    pub tags: Vec<String>,
    pub metadata: BTreeMap<String, String>,
    pub attachments: Vec<Attachment>,
    /// Attempts that spent nothing: waits while the provider or our account was at fault, which
    /// never count toward the attempt limit.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waits: u32,
    /// When the dispatcher first tried it; past the maximum age the job is given up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_attempt_at: Option<DateTime<Utc>>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl DispatchJob {
    /// Attempts that count toward the limit.
    pub fn counted_attempts(&self) -> u32 {
        self.attempt.saturating_sub(self.waits)
    }
}
