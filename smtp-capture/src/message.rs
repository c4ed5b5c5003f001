/// One message the server accepted (its final "." got a 250 reply).
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The reverse-path without `<>` (empty for the null sender `<>`).
    pub mail_from: String,
    /// The forward-paths without `<>`, in the order they were accepted.
    pub rcpt_to: Vec<String>,
    /// The message as received, dot-unstuffed, without the final ".\r\n".
    pub data: Vec<u8>,
    /// The queue id the server gave in its `250 2.0.0 Ok: queued as <id>` reply.
    pub message_id: String,
    /// The message came over TLS (after STARTTLS, or on an implicit-TLS server).
    pub tls: bool,
    /// The user the client authenticated as (AUTH), if it did.
    pub authenticated_as: Option<String>,
}

impl ReceivedMessage {
    /// The first value of a header (case-insensitive name, unfolded, trimmed), e.g.
    /// `X-Mailtrail-Id`. Only the header section (up to the first empty line) is searched.
    pub fn header(&self, name: &str) -> Option<String> {
        let name = name.as_bytes();
        let mut lines = self.data.split(|&b| b == b'\n').map(strip_cr).peekable();
        while let Some(line) = lines.next() {
            if line.is_empty() {
                return None;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                continue;
            };
            let field = trim_end(&line[..colon]);
            if !field.eq_ignore_ascii_case(name) {
                continue;
            }
            let mut value = line[colon + 1..].to_vec();
            // Unfolding: a CRLF followed by white space is removed, the white space kept.
            while let Some(next) = lines.peek() {
                if matches!(next.first(), Some(b' ' | b'\t')) {
                    value.extend_from_slice(next);
                    lines.next();
                } else {
                    break;
                }
            }
            return Some(String::from_utf8_lossy(&value).trim().to_owned());
        }
        None
    }
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_end(bytes: &[u8]) -> &[u8] {
    let end = bytes
        .iter()
        .rposition(|b| !b.is_ascii_whitespace())
        .map_or(0, |i| i + 1);
    &bytes[..end]
}

#[cfg(test)]
mod tests {
    use super::ReceivedMessage;

    fn message(data: &str) -> ReceivedMessage {
        ReceivedMessage {
            mail_from: String::new(),
            rcpt_to: Vec::new(),
            data: data.as_bytes().to_vec(),
            message_id: String::new(),
            tls: false,
            authenticated_as: None,
        }
    }

    #[test]
    fn header_is_case_insensitive_unfolded_and_trimmed() {
        let m = message(
            "Subject: hi\r\nx-mailtrail-id:  abc\r\n\tdef \r\nX-Mailtrail-Id: second\r\n\r\nX-Body: no\r\n",
        );
        assert_eq!(m.header("X-Mailtrail-Id").as_deref(), Some("abc\tdef"));
        assert_eq!(m.header("subject").as_deref(), Some("hi"));
        assert_eq!(m.header("X-Body"), None);
        assert_eq!(m.header("Missing"), None);
    }
}
