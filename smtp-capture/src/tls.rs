//! TLS for the capture server (STARTTLS and implicit TLS), with rustls and the ring provider.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject as _;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// A server configuration presenting the chain in `cert_pem` (leaf first) with `key_pem`.
pub(crate) fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> anyhow::Result<Arc<ServerConfig>> {
    let chain = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .context("cannot read the TLS certificate PEM")?;
    anyhow::ensure!(
        !chain.is_empty(),
        "no certificate in the TLS certificate PEM"
    );
    let key = PrivateKeyDer::from_pem_slice(key_pem).context("cannot read the TLS key PEM")?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()
        .context("TLS protocol versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .context("the TLS certificate does not fit its key")?;
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    //! STARTTLS, implicit TLS and AUTH, driven over real TCP (and TLS) by a tiny client.

    use std::sync::Arc;
    use std::time::Duration;

    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD as BASE64;
    use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
    use tokio::net::TcpStream;
    use tokio_rustls::TlsConnector;
    use tokio_rustls::rustls::pki_types::ServerName;
    use tokio_rustls::rustls::{ClientConfig, RootCertStore};

    use crate::SmtpCapture;

    const IO_TIMEOUT: Duration = Duration::from_secs(5);

    /// A self-signed certificate for localhost and 127.0.0.1: (cert PEM, key PEM, cert DER).
    fn certificate() -> (String, String, Vec<u8>) {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("a self-signed certificate");
        (
            certified.cert.pem(),
            certified.signing_key.serialize_pem(),
            certified.cert.der().to_vec(),
        )
    }

    fn connector(cert_der: &[u8]) -> TlsConnector {
        let mut roots = RootCertStore::empty();
        roots
            .add(cert_der.to_vec().into())
            .expect("the test certificate as a root");
        let config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .expect("protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth();
        TlsConnector::from(Arc::new(config))
    }

    struct Client<S> {
        stream: BufReader<S>,
    }

    impl<S: AsyncRead + AsyncWrite + Unpin> Client<S> {
        async fn send(&mut self, line: &str) {
            let write = async {
                self.stream
                    .get_mut()
                    .write_all(format!("{line}\r\n").as_bytes())
                    .await?;
                self.stream.get_mut().flush().await
            };
            tokio::time::timeout(IO_TIMEOUT, write)
                .await
                .expect("write timed out")
                .expect("write");
        }

        /// The next reply: its code and its lines' text; code 0 when the server closed.
        async fn reply(&mut self) -> (u16, Vec<String>) {
            let mut lines = Vec::new();
            loop {
                let mut line = String::new();
                let n = tokio::time::timeout(IO_TIMEOUT, self.stream.read_line(&mut line))
                    .await
                    .expect("reply timed out")
                    .expect("read");
                if n == 0 {
                    return (0, lines);
                }
                let line = line.trim_end();
                let code = line[..3].parse().expect("a reply code");
                lines.push(line.get(4..).unwrap_or_default().to_owned());
                if line.as_bytes().get(3) != Some(&b'-') {
                    return (code, lines);
                }
            }
        }

        async fn command(&mut self, line: &str) -> (u16, Vec<String>) {
            self.send(line).await;
            self.reply().await
        }

        async fn expect(&mut self, line: &str, code: u16) -> Vec<String> {
            let (got, text) = self.command(line).await;
            assert_eq!(got, code, "{line:?} got {got} {text:?}");
            text
        }

        async fn send_message(&mut self) {
            self.expect("MAIL FROM:<a@example.com>", 250).await;
            self.expect("RCPT TO:<b@example.com>", 250).await;
            self.expect("DATA", 354).await;
            self.expect("Subject: hi\r\n\r\nhello\r\n.", 250).await;
        }
    }

    async fn plain(capture: &SmtpCapture) -> Client<TcpStream> {
        let stream = TcpStream::connect(capture.addr()).await.expect("connect");
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        assert_eq!(client.reply().await.0, 220);
        client
    }

    fn b64(text: &str) -> String {
        BASE64.encode(text)
    }

    #[tokio::test]
    async fn plain_server_advertises_neither_starttls_nor_auth() {
        let capture = SmtpCapture::start().await.expect("server");
        let mut client = plain(&capture).await;
        let ehlo = client.expect("EHLO client", 250).await;
        assert!(
            !ehlo
                .iter()
                .any(|l| l == "STARTTLS" || l.starts_with("AUTH"))
        );
        client.expect("STARTTLS", 502).await;
        client.expect("AUTH PLAIN", 502).await;
        client.send_message().await;
        let message = &capture.messages()[0];
        assert!(!message.tls);
        assert_eq!(message.authenticated_as, None);
    }

    #[tokio::test]
    async fn auth_plain_and_login_are_checked_and_required_before_mail() {
        let capture = SmtpCapture::start().await.expect("server");
        capture.require_auth("ann", "s3cret");
        let mut client = plain(&capture).await;
        let ehlo = client.expect("EHLO client", 250).await;
        assert!(ehlo.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{ehlo:?}");
        let refused = client.expect("MAIL FROM:<a@example.com>", 530).await;
        assert_eq!(refused, ["5.7.0 Authentication required"]);
        let wrong = format!("AUTH PLAIN {}", b64("\0ann\0wrong"));
        let invalid = client.expect(&wrong, 535).await;
        assert_eq!(invalid, ["5.7.8 Authentication credentials invalid"]);
        client.expect("AUTH PLAIN", 334).await;
        client.expect("*", 501).await;
        client.expect("AUTH CRAM-MD5", 504).await;
        client.expect("AUTH PLAIN", 334).await;
        client.expect(&b64("\0ann\0s3cret"), 235).await;
        client.expect("AUTH PLAIN", 503).await;
        client.send_message().await;
        assert_eq!(
            capture.messages()[0].authenticated_as.as_deref(),
            Some("ann")
        );

        // LOGIN, with the prompts lettre and others look for.
        let mut client = plain(&capture).await;
        client.expect("EHLO client", 250).await;
        let prompt = client.expect("AUTH LOGIN", 334).await;
        assert_eq!(prompt, [b64("Username:")]);
        let prompt = client.expect(&b64("ann"), 334).await;
        assert_eq!(prompt, [b64("Password:")]);
        client.expect(&b64("s3cret"), 235).await;
        client.send_message().await;
        let mut client = plain(&capture).await;
        client.expect("EHLO client", 250).await;
        client
            .expect(&format!("AUTH LOGIN {}", b64("ann")), 334)
            .await;
        client.expect(&b64("nope"), 535).await;
        client.expect("AUTH LOGIN", 334).await;
        client.expect("not base64!", 501).await;
        assert_eq!(
            (capture.auth_success_count(), capture.auth_failure_count()),
            (2, 2)
        );

        // A new account applies to the next AUTH; turning AUTH off lets anyone send.
        capture.require_auth("ann", "rotated");
        let mut client = plain(&capture).await;
        client.expect("EHLO client", 250).await;
        client
            .expect(&format!("AUTH PLAIN {}", b64("\0ann\0s3cret")), 535)
            .await;
        client
            .expect(&format!("AUTH PLAIN {}", b64("ann\0ann\0rotated")), 235)
            .await;
        capture.disable_auth();
        let mut client = plain(&capture).await;
        let ehlo = client.expect("EHLO client", 250).await;
        assert!(!ehlo.iter().any(|l| l.starts_with("AUTH")));
        client.send_message().await;
        assert_eq!(capture.message_count(), 3);
    }

    #[tokio::test]
    async fn starttls_upgrades_and_forgets_what_came_before() {
        let (cert, key, der) = certificate();
        let capture = SmtpCapture::start().await.expect("server");
        capture.enable_starttls(&cert, &key).expect("starttls");
        capture.require_auth("ann", "s3cret");
        let mut client = plain(&capture).await;
        client.expect("STARTTLS", 503).await;
        let ehlo = client.expect("EHLO client", 250).await;
        assert!(ehlo.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
        client.expect("STARTTLS now", 501).await;
        client.expect("STARTTLS", 220).await;
        let stream = client.stream.into_inner();
        let stream = connector(&der)
            .connect(ServerName::try_from("localhost").expect("name"), stream)
            .await
            .expect("TLS handshake");
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        // The client must EHLO again; STARTTLS is no longer offered.
        client.expect("MAIL FROM:<a@example.com>", 503).await;
        let ehlo = client.expect("EHLO client", 250).await;
        assert!(!ehlo.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
        assert!(ehlo.iter().any(|l| l == "AUTH PLAIN LOGIN"), "{ehlo:?}");
        client.expect("STARTTLS", 503).await;
        client
            .expect(&format!("AUTH PLAIN {}", b64("\0ann\0s3cret")), 235)
            .await;
        client.send_message().await;
        client.expect("QUIT", 221).await;
        let message = &capture.messages()[0];
        assert!(message.tls);
        assert_eq!(message.authenticated_as.as_deref(), Some("ann"));
        assert_eq!(capture.tls_handshake_count(), 1);

        // Plaintext pipelined behind STARTTLS is not taken as if it came over TLS.
        let mut client = plain(&capture).await;
        client.expect("EHLO client", 250).await;
        client
            .send("STARTTLS\r\nMAIL FROM:<evil@example.com>")
            .await;
        let (code, _) = client.reply().await;
        assert_eq!(code, 220);
        assert_eq!(
            client.reply().await.0,
            0,
            "the server closes the connection"
        );
        assert_eq!(capture.tls_handshake_count(), 1);
    }

    #[tokio::test]
    async fn implicit_tls_starts_with_the_handshake() {
        let (cert, key, der) = certificate();
        let capture = SmtpCapture::start_tls(&cert, &key).await.expect("server");
        assert!(
            capture.url().starts_with("smtps://127.0.0.1:"),
            "{}",
            capture.url()
        );
        let stream = TcpStream::connect(capture.addr()).await.expect("connect");
        let stream = connector(&der)
            .connect(
                ServerName::try_from("127.0.0.1").expect("an IP server name"),
                stream,
            )
            .await
            .expect("TLS handshake");
        let mut client = Client {
            stream: BufReader::new(stream),
        };
        assert_eq!(client.reply().await.0, 220);
        let ehlo = client.expect("EHLO client", 250).await;
        assert!(!ehlo.iter().any(|l| l == "STARTTLS"), "{ehlo:?}");
        client.expect("STARTTLS", 503).await;
        client.send_message().await;
        assert!(capture.messages()[0].tls);
        assert_eq!(capture.tls_handshake_count(), 1);
    }

    #[test]
    fn bad_pem_is_refused() {
        let (cert, key, _) = certificate();
        assert!(super::server_config(b"", key.as_bytes()).is_err());
        assert!(super::server_config(cert.as_bytes(), b"junk").is_err());
        let (_, other_key, _) = certificate();
        assert!(super::server_config(cert.as_bytes(), other_key.as_bytes()).is_err());
    }
}
