//! mailtrail's webhook sink. So far: the signature checks every provider webhook must pass
//! before its body is even parsed ([`verify`]); the endpoints, normalisation and hand-off to the
//! tracking queue come with the rest of the "Webhook sink" issue.

pub mod verify;
