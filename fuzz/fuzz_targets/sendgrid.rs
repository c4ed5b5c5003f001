//! SendGrid: the ECDSA P-256 verifier on hostile signature and timestamp headers and hostile
//! public keys, then — signed here with our own key to get past it — the batch normaliser.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mailtrail_fuzz::check_items;
use mailtrail_webhook_sink::providers::sendgrid::{PROVIDER, normalise};
use mailtrail_webhook_sink::verify::sendgrid::{PublicKey, testing, verify};
use p256::ecdsa::SigningKey;
use std::sync::OnceLock;
use std::time::Duration;

const NOW: i64 = 1_796_119_200;
const WINDOW: Duration = Duration::from_secs(600);

#[derive(Arbitrary, Debug)]
struct Input<'a> {
    public_key: &'a str,
    timestamp: Option<&'a str>,
    signature: Option<&'a str>,
    skew: i16,
    body: &'a [u8],
}

fn keys() -> &'static (SigningKey, PublicKey) {
    static KEYS: OnceLock<(SigningKey, PublicKey)> = OnceLock::new();
    KEYS.get_or_init(|| {
        let signing = SigningKey::from_slice(&[7u8; 32]).expect("a P-256 scalar");
        let public = PublicKey::parse(&testing::public_key_base64(&signing)).expect("public key");
        (signing, public)
    })
}

fuzz_target!(|input: Input<'_>| {
    let (signing, public) = keys();
    // Any configured key text parses or is refused.
    let _ = PublicKey::parse(input.public_key);

    // Hostile headers: the fuzzer cannot forge ECDSA, so only a genuine signature passes.
    let verdict = verify(
        std::slice::from_ref(public),
        input.timestamp,
        input.signature,
        input.body,
        NOW,
        WINDOW,
    );
    if let (Ok(_), Some(ts)) = (&verdict, input.timestamp) {
        let genuine = testing::sign(signing, ts, input.body);
        // ECDSA signatures are randomised by nonce; ours is deterministic (RFC 6979), and a
        // fuzzer-made one is a forgery unless it is ours.
        assert_eq!(
            input.signature.map(str::trim),
            Some(genuine.as_str()),
            "forged"
        );
    }

    // Signed here: accepted exactly inside the window, then normalised.
    let ts = (NOW + i64::from(input.skew)).to_string();
    let signature = testing::sign(signing, &ts, input.body);
    let verdict = verify(
        std::slice::from_ref(public),
        Some(&ts),
        Some(&signature),
        input.body,
        NOW,
        WINDOW,
    );
    let inside = u64::from(input.skew.unsigned_abs()) <= WINDOW.as_secs();
    assert_eq!(verdict.is_ok(), inside, "skew {}: {verdict:?}", input.skew);
    if let Ok(items) = normalise(input.body) {
        check_items(PROVIDER, &items);
    }
});
