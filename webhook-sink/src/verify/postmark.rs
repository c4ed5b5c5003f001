//! Postmark does not sign webhooks: it sends HTTP Basic credentials set on the webhook (and
//! calls from known addresses). Credentials are compared as SHA-256 digests in constant time,
//! so neither their content nor their length leaks through timing.

use super::VerifyError;
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use ipnet::IpNet;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use std::net::IpAddr;
use subtle::ConstantTimeEq;

/// One accepted `user:password` pair.
pub struct BasicCredential(SecretString);

impl BasicCredential {
    pub fn parse(user_password: &str) -> Result<BasicCredential, String> {
        match user_password.split_once(':') {
            Some((user, password)) if !user.is_empty() && !password.is_empty() => {
                Ok(BasicCredential(user_password.into()))
            }
            _ => Err("a Postmark credential is <user>:<password>, both non-empty".into()),
        }
    }

    fn digest(&self) -> [u8; 32] {
        Sha256::digest(self.0.expose_secret().as_bytes()).into()
    }
}

/// Checks an `Authorization: Basic …` header against every credential; returns the index of
/// the one that matched.
pub fn verify(
    credentials: &[BasicCredential],
    authorization: Option<&str>,
) -> Result<usize, VerifyError> {
    if credentials.is_empty() {
        return Err(VerifyError::NoKeys);
    }
    let header = authorization.ok_or(VerifyError::MissingHeader("Authorization"))?;
    let encoded = header
        .trim()
        .strip_prefix("Basic ")
        .or_else(|| header.trim().strip_prefix("basic "))
        .ok_or_else(|| VerifyError::Malformed("not Basic authorization".into()))?;
    let presented = STANDARD
        .decode(encoded.trim())
        .map_err(|_| VerifyError::Malformed("the Basic credentials are not base64".into()))?;
    let presented: [u8; 32] = Sha256::digest(&presented).into();
    let mut signer = None;
    for (index, credential) in credentials.iter().enumerate() {
        if bool::from(credential.digest().ct_eq(&presented)) && signer.is_none() {
            signer = Some(index);
        }
    }
    signer.ok_or(VerifyError::NoMatch)
}

/// Parses `192.0.2.0/24, 198.51.100.7` (a bare address is a one-address range).
pub fn parse_allow_list(list: &str) -> Result<Vec<IpNet>, String> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            entry
                .parse::<IpNet>()
                .or_else(|_| entry.parse::<IpAddr>().map(IpNet::from))
                .map_err(|_| format!("{entry:?} is not an IP address or CIDR range"))
        })
        .collect()
}

/// Is `peer` allowed? An empty list allows every address.
pub fn allowed(list: &[IpNet], peer: Option<IpAddr>) -> bool {
    if list.is_empty() {
        return true;
    }
    let Some(peer) = peer else { return false };
    // An IPv4 peer may arrive as an IPv4-mapped IPv6 address on a dual-stack socket.
    let peer = match peer {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(peer),
        v4 => v4,
    };
    list.iter().any(|net| net.contains(&peer))
}

/// The header value a client with `user:password` sends.
pub fn basic_header(user_password: &str) -> String {
    format!("Basic {}", STANDARD.encode(user_password))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_rotation_and_refusals() {
        let creds = [
            BasicCredential::parse("postmark:old-pass").expect("credential"),
            BasicCredential::parse("postmark:new-pass").expect("credential"),
        ];
        assert_eq!(
            verify(&creds, Some(&basic_header("postmark:new-pass"))),
            Ok(1)
        );
        assert_eq!(
            verify(&creds, Some(&basic_header("postmark:old-pass"))),
            Ok(0)
        );
        assert_eq!(
            verify(&creds, Some(&basic_header("postmark:wrong"))),
            Err(VerifyError::NoMatch)
        );
        assert_eq!(
            verify(&creds, None),
            Err(VerifyError::MissingHeader("Authorization"))
        );
        assert!(matches!(
            verify(&creds, Some("Bearer abc")),
            Err(VerifyError::Malformed(_))
        ));
        assert!(matches!(
            verify(&creds, Some("Basic !!!")),
            Err(VerifyError::Malformed(_))
        ));
        assert_eq!(
            verify(&[], Some(&basic_header("a:b"))),
            Err(VerifyError::NoKeys)
        );
        assert!(BasicCredential::parse("no-colon").is_err());
        assert!(BasicCredential::parse(":pass").is_err());
    }

    #[test]
    fn allow_lists() {
        let list = parse_allow_list("192.0.2.0/24, 198.51.100.7").expect("list");
        let ip = |s: &str| Some(s.parse::<IpAddr>().expect("ip"));
        assert!(allowed(&list, ip("192.0.2.55")));
        assert!(allowed(&list, ip("198.51.100.7")));
        assert!(allowed(&list, ip("::ffff:192.0.2.1")));
        assert!(!allowed(&list, ip("198.51.100.8")));
        assert!(!allowed(&list, None));
        assert!(allowed(&[], ip("203.0.113.1")));
        assert!(parse_allow_list("not-an-ip").is_err());
    }
}
