//! Small parsers for what the APIs carry: content types, form bodies (multipart and
//! urlencoded), address lists and MIME header blocks.

/// The media type of a `Content-Type` value, lowercased, without parameters.
pub(crate) fn media_type(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase()
}

/// A parameter of a header value like `multipart/form-data; boundary="x"` or
/// `form-data; name="to"` (name compared case-insensitively, quotes removed).
pub(crate) fn parameter(value: &str, name: &str) -> Option<String> {
    split_unquoted(value, ';')
        .into_iter()
        .skip(1)
        .find_map(|part| {
            let (key, value) = part.split_once('=')?;
            key.trim()
                .eq_ignore_ascii_case(name)
                .then(|| unquote(value.trim()))
        })
}

fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut escaped = false;
            for c in inner.chars() {
                if escaped || c != '\\' {
                    out.push(c);
                    escaped = false;
                } else {
                    escaped = true;
                }
            }
            out
        }
        None => value.to_owned(),
    }
}

/// Splits at `separator` outside double quotes and angle brackets.
fn split_unquoted(value: &str, separator: char) -> Vec<&str> {
    let mut parts = Vec::new();
    let (mut quoted, mut escaped, mut angle) = (false, false, false);
    let mut start = 0;
    for (index, c) in value.char_indices() {
        if escaped {
            escaped = false;
            continue;
        }
        match c {
            '\\' if quoted => escaped = true,
            '"' => quoted = !quoted,
            '<' if !quoted => angle = true,
            '>' if !quoted => angle = false,
            c if c == separator && !quoted && !angle => {
                parts.push(&value[start..index]);
                start = index + c.len_utf8();
            }
            _ => {}
        }
    }
    parts.push(&value[start..]);
    parts
}

/// The bare address of a mailbox: `Name <a@b>` → `a@b`, `a@b` → `a@b`.
pub(crate) fn address(mailbox: &str) -> String {
    let mailbox = mailbox.trim();
    match (mailbox.rfind('<'), mailbox.rfind('>')) {
        (Some(open), Some(close)) if open < close => mailbox[open + 1..close].trim().to_owned(),
        _ => mailbox.to_owned(),
    }
}

/// The bare addresses of a comma-separated mailbox list (`"Doe, J" <j@x>, k@y`).
pub(crate) fn addresses(list: &str) -> Vec<String> {
    split_unquoted(list, ',')
        .into_iter()
        .map(address)
        .filter(|address| !address.is_empty())
        .collect()
}

/// Whether `address` looks like `local@domain` (what the providers' validators reject
/// otherwise: no `@`, empty parts, spaces, brackets).
pub(crate) fn is_address(address: &str) -> bool {
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !address
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || matches!(c, '<' | '>' | ','))
}

/// Whether `value` is a valid tag name or value for SES and Resend: 1–256 characters from
/// `A-Z a-z 0-9 _ -`.
pub(crate) fn is_tag_text(value: &str) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// One form field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Field {
    pub name: String,
    pub value: String,
    /// Set for a file part.
    pub filename: Option<String>,
}

/// The fields of an `application/x-www-form-urlencoded` body.
pub(crate) fn urlencoded(body: &[u8]) -> Vec<Field> {
    form_urlencoded::parse(body)
        .map(|(name, value)| Field {
            name: name.into_owned(),
            value: value.into_owned(),
            filename: None,
        })
        .collect()
}

/// The fields of a `multipart/form-data` body; a file part's value is
/// `<file NAME, N bytes>`.
pub(crate) fn multipart(body: &[u8], boundary: &str) -> Result<Vec<Field>, String> {
    if boundary.is_empty() || boundary.len() > 70 {
        return Err(format!("invalid multipart boundary {boundary:?}"));
    }
    let delimiter = format!("--{boundary}");
    let delimiter = delimiter.as_bytes();
    let mut position = find(body, delimiter, 0)
        .ok_or_else(|| "multipart body without its boundary".to_owned())?
        + delimiter.len();
    let mut fields = Vec::new();
    loop {
        let rest = &body[position..];
        if rest.starts_with(b"--") {
            return Ok(fields);
        }
        // The delimiter line may carry trailing whitespace before its CRLF.
        let line_end =
            find(body, b"\n", position).ok_or_else(|| "truncated multipart body".to_owned())?;
        let headers_start = line_end + 1;
        let (headers_end, content_start) = match find(body, b"\r\n\r\n", headers_start) {
            Some(end) => (end, end + 4),
            None => match find(body, b"\n\n", headers_start) {
                Some(end) => (end, end + 2),
                None => {
                    return Err("multipart part without the blank line after its headers".into());
                }
            },
        };
        let headers = String::from_utf8_lossy(&body[headers_start..headers_end]);
        let mut close = Vec::with_capacity(delimiter.len() + 2);
        close.extend_from_slice(b"\r\n");
        close.extend_from_slice(delimiter);
        let (content_end, next) = match find(body, &close, content_start) {
            Some(end) => (end, end + close.len()),
            None => {
                let mut close = Vec::with_capacity(delimiter.len() + 1);
                close.push(b'\n');
                close.extend_from_slice(delimiter);
                let end = find(body, &close, content_start)
                    .ok_or_else(|| "multipart part without a closing boundary".to_owned())?;
                (end, end + close.len())
            }
        };
        let disposition = headers
            .lines()
            .find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.trim()
                    .eq_ignore_ascii_case("content-disposition")
                    .then(|| value.trim().to_owned())
            })
            .ok_or_else(|| "multipart part without Content-Disposition".to_owned())?;
        let name = parameter(&disposition, "name")
            .ok_or_else(|| "multipart part without a name".to_owned())?;
        let filename = parameter(&disposition, "filename");
        let content = &body[content_start..content_end];
        let value = match &filename {
            Some(filename) => format!("<file {filename}, {} bytes>", content.len()),
            None => String::from_utf8_lossy(content).into_owned(),
        };
        fields.push(Field {
            name,
            value,
            filename,
        });
        position = next;
    }
}

fn find(haystack: &[u8], needle: &[u8], from: usize) -> Option<usize> {
    if needle.is_empty() || from > haystack.len() {
        return None;
    }
    haystack[from..]
        .windows(needle.len())
        .position(|window| window == needle)
        .map(|index| index + from)
}

/// The header block of a MIME message (up to the first empty line), unfolded, in order.
pub(crate) fn mime_headers(message: &str) -> Vec<(String, String)> {
    let mut headers: Vec<(String, String)> = Vec::new();
    for line in message.lines() {
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if line.starts_with([' ', '\t']) {
            if let Some((_, value)) = headers.last_mut() {
                value.push(' ');
                value.push_str(line.trim());
            }
            continue;
        }
        if let Some((name, value)) = line.split_once(':') {
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }
    headers
}

/// The value of the first header named `name` (case-insensitive).
pub(crate) fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(key, _)| key.eq_ignore_ascii_case(name))
        .map(|(_, value)| value.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_respect_quotes_and_brackets() {
        assert_eq!(
            addresses(r#""Doe, John" <john@example.com>, jane@example.com , <x@y.z>"#),
            vec!["john@example.com", "jane@example.com", "x@y.z"]
        );
        assert!(is_address("a@b.c"));
        assert!(!is_address("John"));
        assert!(!is_address("a b@c"));
        assert!(!is_address("@c"));
    }

    #[test]
    fn multipart_fields_and_files() {
        let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"from\"\r\n\r\na@b.c\r\n\
--XyZ\r\nContent-Disposition: form-data; name=\"attachment\"; filename=\"a.txt\"\r\n\
Content-Type: text/plain\r\n\r\nhello\r\n--XyZ--\r\n";
        let fields = multipart(body, "XyZ").expect("a valid body");
        assert_eq!(fields.len(), 2);
        assert_eq!(fields[0].name, "from");
        assert_eq!(fields[0].value, "a@b.c");
        assert_eq!(fields[1].value, "<file a.txt, 5 bytes>");
        assert!(multipart(b"nothing", "XyZ").is_err());
    }

    #[test]
    fn content_type_parameters() {
        assert_eq!(
            parameter("multipart/form-data; boundary=\"a b\"", "BOUNDARY").as_deref(),
            Some("a b")
        );
        assert_eq!(
            media_type("Application/JSON; charset=utf-8"),
            "application/json"
        );
    }

    #[test]
    fn mime_headers_unfold() {
        let headers = mime_headers("To: a@b.c,\r\n d@e.f\r\nSubject: Hi\r\n\r\nX-Not: body\r\n");
        assert_eq!(header(&headers, "to"), Some("a@b.c, d@e.f"));
        assert_eq!(header(&headers, "x-not"), None);
    }
}
