//! Invariants shared by the fuzz targets: what every verified, normalised webhook item must
//! satisfy, beyond "did not panic".

use mailtrail_shared::tracking::TrackingEvent;
use mailtrail_webhook_sink::providers::Item;

/// Checks every item a normaliser produced:
/// - an event becomes a tracking event the operator accepts (`validate`) and that survives the
///   trip through JSON unchanged (the queue carries JSON);
/// - an unmappable item says why.
pub fn check_items(provider: &str, items: &[Item]) {
    for item in items {
        match item {
            Item::Event(event) => {
                let tracking = event.clone().into_tracking(provider, "acme");
                if let Err(why) = tracking.validate() {
                    panic!(
                        "{provider}: a normalised event the operator refuses ({why}): {tracking:#?}"
                    );
                }
                let json = serde_json::to_vec(&tracking).expect("a tracking event serialises");
                let back: TrackingEvent = serde_json::from_slice(&json).unwrap_or_else(|e| {
                    panic!(
                        "{provider}: a published event does not read back ({e}): {}",
                        String::from_utf8_lossy(&json)
                    )
                });
                assert_eq!(
                    back, tracking,
                    "{provider}: JSON round trip changed the event"
                );
                assert!(
                    !event.provider_event_id.is_empty(),
                    "{provider}: an event without identity cannot be de-duplicated"
                );
            }
            Item::Ignored(what) => assert!(!what.is_empty()),
            Item::Unmapped { detail, .. } => {
                assert!(!detail.is_empty(), "{provider}: set aside without a reason");
            }
        }
    }
}
