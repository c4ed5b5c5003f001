//! The normalisation mapping on its own (provider event → mailtrail tracking event), for every
//! provider, from any JSON the fuzzer makes: each event must become a tracking event the
//! operator accepts and that reads back unchanged; anything else is ignored or set aside whole.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mailtrail_fuzz::check_items;
use mailtrail_webhook_sink::providers::{self, mailgun, postmark, resend, sendgrid, ses, standard};

fuzz_target!(|data: &[u8]| {
    // A batch body read by every batch-taking provider; items_of fails only on non-JSON.
    let json = providers::items_of(data);
    for (provider, result) in [
        (sendgrid::PROVIDER, sendgrid::normalise(data)),
        (
            postmark::PROVIDER,
            postmark::normalise(data, Some("trace-1")),
        ),
        (resend::PROVIDER, resend::normalise(data, "msg_1")),
        (standard::PROVIDER, standard::normalise(data, "msg_1")),
    ] {
        assert_eq!(
            result.is_ok(),
            json.is_ok(),
            "{provider}: only non-JSON is an error"
        );
        if let Ok(items) = result {
            check_items(provider, &items);
        }
    }
    if let Ok(values) = json {
        for value in &values {
            check_items(mailgun::PROVIDER, &[mailgun::normalise(value)]);
        }
    }
    // SES takes the SNS Message as text.
    if let Ok(message) = std::str::from_utf8(data) {
        let items = ses::normalise("22b80b92-fdea-4c2c-8f9d-bdfb0c7bf324", message);
        assert!(
            !items.is_empty(),
            "ses: a notification always yields an item"
        );
        check_items(ses::PROVIDER, &items);
    }
});
