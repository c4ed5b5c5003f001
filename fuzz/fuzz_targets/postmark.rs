//! Postmark: Basic credentials and the IP allow-list parser on hostile text, then the
//! normaliser on any body (Postmark signs nothing: what passes is the credential).
#![no_main]

use arbitrary::Arbitrary;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use libfuzzer_sys::fuzz_target;
use mailtrail_fuzz::check_items;
use mailtrail_webhook_sink::providers::postmark::{PROVIDER, normalise};
use mailtrail_webhook_sink::verify::postmark::{
    BasicCredential, allowed, basic_header, parse_allow_list, verify,
};

const CREDENTIAL: &str = "postmark-acme:old-pass-7Qm2";

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    authorization: Option<&'a str>,
    credential: &'a str,
    allow_list: &'a str,
    peer: Option<[u8; 4]>,
    trace_id: Option<&'a str>,
    body: &'a [u8],
}

fuzz_target!(|input: Input<'_>| {
    let credentials = [BasicCredential::parse(CREDENTIAL).expect("credential")];
    let verdict = verify(&credentials, input.authorization);
    if verdict.is_ok() {
        // Only the exact user:password, base64-encoded, passes.
        let encoded = input
            .authorization
            .and_then(|h| h.trim().get(6..))
            .map(str::trim)
            .and_then(|b64| STANDARD.decode(b64).ok());
        assert_eq!(encoded.as_deref(), Some(CREDENTIAL.as_bytes()));
    }
    assert!(verify(&credentials, Some(&basic_header(CREDENTIAL))).is_ok());
    let _ = BasicCredential::parse(input.credential);
    if let Ok(list) = parse_allow_list(input.allow_list) {
        let peer = input.peer.map(|octets| std::net::IpAddr::from(octets));
        let _ = allowed(&list, peer);
        // An empty list allows every peer; a list never allows an unknown peer.
        if !list.is_empty() {
            assert!(!allowed(&list, None));
        }
    }
    if let Ok(items) = normalise(input.body, input.trace_id) {
        check_items(PROVIDER, &items);
    }
});
