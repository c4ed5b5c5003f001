//! Deterministic ids. A redelivered request maps onto the same request, emails, jobs and events,
//! and two tenants never collide, because every id is a UUIDv5 over the tenant and the client's key.

use uuid::Uuid;

/// mailtrail's UUIDv5 namespace (a fixed random UUID; never change it: ids are stored).
pub const NAMESPACE: Uuid = Uuid::from_u128(0x6d61_696c_7472_4a11_9c3e_5b0f_2d7a_81c4);

fn v5(parts: &[&[u8]]) -> Uuid {
    // Length-prefix every part so ("ab","c") and ("a","bc") never hash alike.
    let mut buf = Vec::with_capacity(parts.iter().map(|p| p.len() + 8).sum());
    for part in parts {
        buf.extend_from_slice(&(part.len() as u64).to_be_bytes());
        buf.extend_from_slice(part);
    }
    Uuid::new_v5(&NAMESPACE, &buf)
}

/// The id of a request: tenant and client key.
pub fn request_id(tenant: &str, request_key: &str) -> Uuid {
    v5(&[b"request", tenant.as_bytes(), request_key.as_bytes()])
}

/// The id of one recipient's email: tenant, client key and the canonical recipient address.
pub fn email_id(tenant: &str, request_key: &str, canonical_recipient: &str) -> Uuid {
    v5(&[
        b"email",
        tenant.as_bytes(),
        request_key.as_bytes(),
        canonical_recipient.as_bytes(),
    ])
}

/// The id of an email's first dispatch job. Stable, so a republished job is recognisable.
pub fn dispatch_job_id(email_id: Uuid) -> Uuid {
    v5(&[b"dispatch-job", email_id.as_bytes()])
}

/// The id of an event the operator itself records about an email (`accepted`, `queued`, ...),
/// keyed by what makes it unique (for `queued`: the job id).
pub fn operator_event_id(kind: &str, subject: Uuid) -> Uuid {
    v5(&[b"event", kind.as_bytes(), subject.as_bytes()])
}

/// The id of a dispatcher outcome event: one per job, attempt and outcome, so a republished
/// outcome is recognised and recorded once.
pub fn dispatch_outcome_event_id(job_id: Uuid, attempt: u32, outcome: &str) -> Uuid {
    v5(&[
        b"dispatch-outcome",
        job_id.as_bytes(),
        &attempt.to_be_bytes(),
        outcome.as_bytes(),
    ])
}

/// The id of a set-aside copy of a message: the same message set aside again (after a
/// redelivery) gets the same id, so the dead-letter record counts attempts instead of duplicating.
pub fn dead_letter_id(source_queue: &str, message_id: Option<&str>, body: &[u8]) -> Uuid {
    use sha2::Digest;
    let body_hash = sha2::Sha256::digest(body);
    v5(&[
        b"dead-letter",
        source_queue.as_bytes(),
        message_id.unwrap_or("").as_bytes(),
        body_hash.as_slice(),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_deterministic_and_separate_tenants() {
        let a = email_id("acme", "k1", "bob@example.com");
        assert_eq!(a, email_id("acme", "k1", "bob@example.com"));
        assert_ne!(a, email_id("globex", "k1", "bob@example.com"));
        assert_ne!(a, email_id("acme", "k2", "bob@example.com"));
        assert_ne!(a, email_id("acme", "k1", "eve@example.com"));
        // Length prefixes keep boundaries apart.
        assert_ne!(email_id("ab", "c", "x@y.z"), email_id("a", "bc", "x@y.z"));
        assert_eq!(a.get_version_num(), 5);
        assert_ne!(request_id("acme", "k1"), a);
        assert_ne!(dispatch_job_id(a), a);
    }
}
