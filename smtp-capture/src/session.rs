//! One SMTP connection: read a line, answer it, flush whenever the client may be waiting.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use tokio::io::{
    AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter,
};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;

use crate::{MAX_MESSAGE_SIZE, Mode, ReceivedMessage, RecipientAnswer, Stage, State};

/// Longest line read in one piece; longer command lines get a 500, longer data lines are kept
/// (read in pieces).
const MAX_LINE: u64 = 64 * 1024;
const MAX_RECIPIENTS: usize = 1000;

const GREETING: &[u8] = b"220 localhost ESMTP mailtrail-smtp-capture\r\n";
const EHLO_REPLY: &[u8] = b"250-localhost\r\n\
250-PIPELINING\r\n\
250-SIZE 52428800\r\n\
250-8BITMIME\r\n\
250-SMTPUTF8\r\n\
250 ENHANCEDSTATUSCODES\r\n";
const READ_BUFFER: usize = 64 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;

/// Queue ids are unique within the process (and carry its pid, so rarely collide across them).
static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

pub(crate) async fn run(stream: TcpStream, state: Arc<State>) {
    if let Err(error) = serve(stream, &state).await {
        tracing::debug!(%error, "SMTP connection ended with an error");
    }
}

/// How a dialogue on one stream ended.
enum End {
    /// The client left, said QUIT, or the connection is to be dropped.
    Closed,
    /// `220 Ready to start TLS` was written (not yet flushed): upgrade with this configuration.
    StartTls(Arc<ServerConfig>),
}

/// One connection: plain (the fast path: the TCP stream's own halves, no locks), plain then
/// upgraded by STARTTLS, or TLS from the first byte.
async fn serve(stream: TcpStream, state: &State) -> io::Result<()> {
    if let Some(config) = state.implicit_tls() {
        if state.mode() == Mode::DropConnections {
            return Ok(());
        }
        let stream = TlsAcceptor::from(config).accept(stream).await?;
        state.count_tls_handshake();
        let (reader, writer) = tokio::io::split(stream);
        let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
        let mut writer = BufWriter::with_capacity(WRITE_BUFFER, writer);
        if greet(&mut writer, state).await? {
            let mut transaction = Transaction {
                tls: true,
                ..Transaction::default()
            };
            converse(&mut reader, &mut writer, state, &mut transaction).await?;
        }
        return Ok(());
    }
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, writer);
    if !greet(&mut writer, state).await? {
        return Ok(());
    }
    let mut transaction = Transaction::default();
    let End::StartTls(config) = converse(&mut reader, &mut writer, state, &mut transaction).await?
    else {
        return Ok(());
    };
    writer.flush().await?;
    if !reader.buffer().is_empty() {
        // RFC 3207: nothing may follow STARTTLS before the handshake (plaintext injected ahead
        // of TLS would be taken as if it came over it).
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the client sent data after STARTTLS before the TLS handshake",
        ));
    }
    let stream = reader
        .into_inner()
        .reunite(writer.into_inner())
        .map_err(io::Error::other)?;
    let stream = TlsAcceptor::from(config).accept(stream).await?;
    state.count_tls_handshake();
    let (reader, writer) = tokio::io::split(stream);
    let mut reader = BufReader::with_capacity(READ_BUFFER, reader);
    let mut writer = BufWriter::with_capacity(WRITE_BUFFER, writer);
    // RFC 3207 4.2: everything learnt before the upgrade (EHLO, AUTH) is forgotten.
    let mut transaction = Transaction {
        tls: true,
        ..Transaction::default()
    };
    converse(&mut reader, &mut writer, state, &mut transaction).await?;
    Ok(())
}

/// The greeting, or the refusal of the current [`Mode`]; `false` when the connection is to close.
async fn greet<W: AsyncWrite + Unpin>(
    writer: &mut BufWriter<W>,
    state: &State,
) -> io::Result<bool> {
    if state.mode() == Mode::DropConnections {
        return Ok(false);
    }
    if state.mode() == Mode::RefuseService {
        writer
            .write_all(b"554 5.7.1 mailtrail-smtp-capture refuses this client (policy)\r\n")
            .await?;
        writer.flush().await?;
        return Ok(false);
    }
    writer.write_all(GREETING).await?;
    Ok(true)
}

#[derive(Default)]
struct Transaction {
    greeted: bool,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
    /// The connection is encrypted (kept across transactions).
    tls: bool,
    /// The user AUTH accepted on this connection (kept across transactions).
    authenticated_as: Option<String>,
}

impl Transaction {
    fn reset(&mut self) {
        self.mail_from = None;
        self.rcpt_to.clear();
    }
}

enum Line {
    /// A whole line (ending in `\n`) is in the buffer.
    Complete,
    /// The first `MAX_LINE` bytes of a longer line are in the buffer.
    Partial,
    /// The client closed the connection (a trailing unterminated line is ignored).
    Closed,
}

/// Reads the next line into `line` (cleared first), flushing the replies written so far if no
/// whole line is buffered (so the client is never left waiting for them).
async fn next_line<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut BufReader<R>,
    writer: &mut BufWriter<W>,
    line: &mut Vec<u8>,
) -> io::Result<Line> {
    if !reader.buffer().contains(&b'\n') {
        writer.flush().await?;
    }
    line.clear();
    let n = (&mut *reader)
        .take(MAX_LINE)
        .read_until(b'\n', line)
        .await?;
    Ok(if line.ends_with(b"\n") {
        Line::Complete
    } else if n as u64 == MAX_LINE {
        Line::Partial
    } else {
        Line::Closed
    })
}

/// Answers commands until the client leaves or STARTTLS is accepted.
async fn converse<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut BufReader<R>,
    writer: &mut BufWriter<W>,
    state: &State,
    transaction: &mut Transaction,
) -> io::Result<End> {
    let mut line = Vec::with_capacity(1024);
    loop {
        match next_line(reader, writer, &mut line).await? {
            Line::Complete => {}
            Line::Closed => return Ok(End::Closed),
            Line::Partial => {
                // Skip the rest of the over-long line, then refuse it.
                loop {
                    match next_line(reader, writer, &mut line).await? {
                        Line::Complete => break,
                        Line::Partial => {}
                        Line::Closed => return Ok(End::Closed),
                    }
                }
                if state.mode() == Mode::DropConnections {
                    return Ok(End::Closed);
                }
                writer
                    .write_all(b"500 5.5.0 Error: line too long\r\n")
                    .await?;
                continue;
            }
        }
        if state.mode() == Mode::DropConnections {
            return Ok(End::Closed);
        }
        let command = trim_line_end(&line);
        let (verb, args) = split_verb(command);
        let mut upper = [0u8; 8];
        let verb = uppercase_verb(verb, &mut upper);
        match verb {
            b"EHLO" | b"HELO" if args.is_empty() => {
                writer
                    .write_all(b"501 5.5.4 Syntax: EHLO hostname\r\n")
                    .await?;
            }
            b"EHLO" => {
                transaction.reset();
                transaction.greeted = true;
                if state.extended() {
                    writer
                        .write_all(ehlo_reply(state, transaction).as_bytes())
                        .await?;
                } else {
                    writer.write_all(EHLO_REPLY).await?;
                }
            }
            b"HELO" => {
                transaction.reset();
                transaction.greeted = true;
                writer.write_all(b"250 localhost\r\n").await?;
            }
            b"MAIL" => {
                let reply = mail(transaction, args, state);
                writer.write_all(reply.as_bytes()).await?;
            }
            b"RCPT" => {
                let reply = rcpt(transaction, args, state);
                writer.write_all(reply.as_bytes()).await?;
            }
            b"DATA" if !args.is_empty() => {
                writer.write_all(b"501 5.5.4 Syntax: DATA\r\n").await?;
            }
            b"DATA" if transaction.mail_from.is_none() => {
                writer
                    .write_all(b"503 5.5.1 Error: need MAIL command\r\n")
                    .await?;
            }
            b"DATA" if transaction.rcpt_to.is_empty() => {
                writer
                    .write_all(b"503 5.5.1 Error: need RCPT command\r\n")
                    .await?;
            }
            b"DATA" => {
                writer
                    .write_all(b"354 End data with <CR><LF>.<CR><LF>\r\n")
                    .await?;
                let keep = state.wants_data();
                let Some((data, too_big)) = read_data(reader, writer, &mut line, keep).await?
                else {
                    return Ok(End::Closed);
                };
                if too_big {
                    writer
                        .write_all(b"552 5.3.4 Error: message too big\r\n")
                        .await?;
                } else if let Some(reply) = state.data_refusal(&transaction.rcpt_to) {
                    writer.write_all(reply.as_bytes()).await?;
                } else {
                    let id = format!(
                        "{:08X}{:08X}",
                        std::process::id(),
                        NEXT_QUEUE_ID.fetch_add(1, Ordering::Relaxed)
                    );
                    let reply = format!("250 2.0.0 Ok: queued as {id}\r\n");
                    let message = keep.then(|| ReceivedMessage {
                        mail_from: transaction.mail_from.take().unwrap_or_default(),
                        rcpt_to: std::mem::take(&mut transaction.rcpt_to),
                        data,
                        message_id: id,
                        tls: transaction.tls,
                        authenticated_as: transaction.authenticated_as.clone(),
                    });
                    state.record(message);
                    writer.write_all(reply.as_bytes()).await?;
                }
                transaction.reset();
            }
            b"RSET" => {
                transaction.reset();
                writer.write_all(b"250 2.0.0 Ok\r\n").await?;
            }
            b"NOOP" => writer.write_all(b"250 2.0.0 Ok\r\n").await?,
            b"QUIT" => {
                writer.write_all(b"221 2.0.0 Bye\r\n").await?;
                writer.flush().await?;
                return Ok(End::Closed);
            }
            b"HELP" => {
                writer
                    .write_all(b"214 2.0.0 EHLO HELO MAIL RCPT DATA RSET NOOP QUIT\r\n")
                    .await?;
            }
            b"STARTTLS" if !transaction.tls => {
                let Some(config) = state.starttls() else {
                    writer
                        .write_all(b"502 5.5.1 Error: command not implemented\r\n")
                        .await?;
                    continue;
                };
                if !args.is_empty() {
                    writer.write_all(b"501 5.5.4 Syntax: STARTTLS\r\n").await?;
                } else if !transaction.greeted {
                    writer
                        .write_all(b"503 5.5.1 Error: send EHLO first\r\n")
                        .await?;
                } else {
                    writer
                        .write_all(b"220 2.0.0 Ready to start TLS\r\n")
                        .await?;
                    return Ok(End::StartTls(config));
                }
            }
            b"STARTTLS" if state.starttls().is_some() || state.implicit_tls().is_some() => {
                writer
                    .write_all(b"503 5.5.1 Error: TLS already active\r\n")
                    .await?;
            }
            b"AUTH" if state.auth_required() => {
                let args = args.to_vec();
                let reply = match auth(reader, writer, &mut line, transaction, &args, state).await?
                {
                    Some(reply) => reply,
                    None => return Ok(End::Closed),
                };
                writer.write_all(reply.as_bytes()).await?;
            }
            b"VRFY" | b"EXPN" | b"STARTTLS" | b"AUTH" | b"BDAT" | b"ETRN" | b"TURN" => {
                writer
                    .write_all(b"502 5.5.1 Error: command not implemented\r\n")
                    .await?;
            }
            _ => {
                writer
                    .write_all(b"500 5.5.2 Error: command not recognized\r\n")
                    .await?;
            }
        }
    }
}

fn mail(transaction: &mut Transaction, args: &[u8], state: &State) -> Cow<'static, str> {
    if !transaction.greeted {
        return "503 5.5.1 Error: send HELO/EHLO first\r\n".into();
    }
    if transaction.mail_from.is_some() {
        return "503 5.5.1 Error: nested MAIL command\r\n".into();
    }
    if transaction.authenticated_as.is_none() && state.auth_required() {
        return "530 5.7.0 Authentication required\r\n".into();
    }
    let Some((path, params)) = strip_keyword(args, b"FROM:").and_then(parse_path) else {
        return "501 5.5.4 Syntax: MAIL FROM:<address>\r\n".into();
    };
    if state.mode() == Mode::TransientFailure {
        return "451 4.3.0 Error: mailtrail-smtp-capture is set to fail transiently\r\n".into();
    }
    for param in params.split(|b| b.is_ascii_whitespace()) {
        let Some(size) = strip_keyword(param, b"SIZE=") else {
            continue;
        };
        match std::str::from_utf8(size)
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
        {
            Some(size) if size > MAX_MESSAGE_SIZE as u64 => {
                return "552 5.3.4 Error: message size exceeds fixed limit\r\n".into();
            }
            Some(_) => {}
            None => return "501 5.5.4 Error: bad SIZE parameter\r\n".into(),
        }
    }
    transaction.mail_from = Some(String::from_utf8_lossy(path).into_owned());
    "250 2.1.0 Ok\r\n".into()
}

fn rcpt(transaction: &mut Transaction, args: &[u8], state: &State) -> Cow<'static, str> {
    if transaction.mail_from.is_none() {
        return "503 5.5.1 Error: need MAIL command\r\n".into();
    }
    let Some((path, _params)) = strip_keyword(args, b"TO:").and_then(parse_path) else {
        return "501 5.5.4 Syntax: RCPT TO:<address>\r\n".into();
    };
    if path.is_empty() {
        return "501 5.1.3 Error: empty recipient address\r\n".into();
    }
    let address = String::from_utf8_lossy(path).into_owned();
    match state.recipient_answer(&address) {
        Some(RecipientAnswer::NoSuchUser) => {
            return format!("550 5.1.1 <{address}>: no such user\r\n").into();
        }
        Some(RecipientAnswer::Busy) => {
            return format!("450 4.2.1 <{address}>: mailbox busy, try again later\r\n").into();
        }
        Some(RecipientAnswer::Custom {
            stage: Stage::Rcpt,
            reply,
        }) => return reply.into(),
        Some(RecipientAnswer::Custom {
            stage: Stage::Data, ..
        })
        | None => {}
    }
    if transaction.rcpt_to.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 Error: too many recipients\r\n".into();
    }
    transaction.rcpt_to.push(address);
    "250 2.1.5 Ok\r\n".into()
}

/// The EHLO reply when STARTTLS or AUTH is on: the fixed extensions, plus STARTTLS on a plain
/// connection and AUTH while required.
fn ehlo_reply(state: &State, transaction: &Transaction) -> String {
    let mut reply = String::from(
        "250-localhost\r\n250-PIPELINING\r\n250-SIZE 52428800\r\n250-8BITMIME\r\n\
         250-SMTPUTF8\r\n",
    );
    if !transaction.tls && state.starttls().is_some() {
        reply.push_str("250-STARTTLS\r\n");
    }
    if state.auth_required() {
        reply.push_str("250-AUTH PLAIN LOGIN\r\n");
    }
    reply.push_str("250 ENHANCEDSTATUSCODES\r\n");
    reply
}

/// `AUTH PLAIN [initial-response]` or `AUTH LOGIN [username]`: reads the client's responses to
/// the `334` challenges and checks the one account. Returns the final reply, or `None` if the
/// client went away mid-exchange.
async fn auth<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut BufReader<R>,
    writer: &mut BufWriter<W>,
    line: &mut Vec<u8>,
    transaction: &mut Transaction,
    args: &[u8],
    state: &State,
) -> io::Result<Option<Cow<'static, str>>> {
    if !transaction.greeted {
        return Ok(Some("503 5.5.1 Error: send HELO/EHLO first\r\n".into()));
    }
    if transaction.authenticated_as.is_some() {
        return Ok(Some("503 5.5.1 Error: already authenticated\r\n".into()));
    }
    if transaction.mail_from.is_some() {
        return Ok(Some(
            "503 5.5.1 Error: MAIL transaction in progress\r\n".into(),
        ));
    }
    let (mechanism, initial) = split_verb(args);
    let mut upper = [0u8; 8];
    let mechanism = uppercase_verb(mechanism, &mut upper);
    let initial = (!initial.is_empty()).then(|| initial.to_vec());
    let (user, password) = match mechanism {
        b"PLAIN" => {
            let response = match initial {
                Some(initial) => match decode(&initial) {
                    Some(response) => response,
                    None => return Ok(Some(MALFORMED.into())),
                },
                None => match challenge(reader, writer, line, "").await? {
                    Challenge::Answer(response) => response,
                    Challenge::Refused(reply) => return Ok(Some(reply.into())),
                    Challenge::Closed => return Ok(None),
                },
            };
            // authzid NUL authcid NUL passwd
            let mut parts = response.split(|&b| b == 0);
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(authzid), Some(user), Some(password), None)
                    if authzid.is_empty() || authzid == user =>
                {
                    (user.to_vec(), password.to_vec())
                }
                _ => (Vec::new(), Vec::new()),
            }
        }
        b"LOGIN" => {
            let user = match initial {
                Some(initial) => match decode(&initial) {
                    Some(user) => user,
                    None => return Ok(Some(MALFORMED.into())),
                },
                None => match challenge(reader, writer, line, "Username:").await? {
                    Challenge::Answer(user) => user,
                    Challenge::Refused(reply) => return Ok(Some(reply.into())),
                    Challenge::Closed => return Ok(None),
                },
            };
            let password = match challenge(reader, writer, line, "Password:").await? {
                Challenge::Answer(password) => password,
                Challenge::Refused(reply) => return Ok(Some(reply.into())),
                Challenge::Closed => return Ok(None),
            };
            (user, password)
        }
        b"" => return Ok(Some("501 5.5.4 Syntax: AUTH mechanism\r\n".into())),
        _ => {
            return Ok(Some(
                "504 5.5.4 Error: unsupported authentication mechanism\r\n".into(),
            ));
        }
    };
    let accepted = state
        .credentials()
        .filter(|c| c.user.as_bytes() == user && c.password.as_bytes() == password);
    state.count_auth(accepted.is_some());
    Ok(Some(match accepted {
        Some(credentials) => {
            transaction.authenticated_as = Some(credentials.user);
            "235 2.7.0 Authentication successful\r\n".into()
        }
        None => "535 5.7.8 Authentication credentials invalid\r\n".into(),
    }))
}

const MALFORMED: &str = "501 5.5.2 Error: cannot decode the response\r\n";

enum Challenge {
    /// The decoded answer.
    Answer(Vec<u8>),
    /// The exchange ends with this reply (cancelled with `*`, not base64, too long).
    Refused(&'static str),
    Closed,
}

/// Sends `334 <base64 of prompt>` and reads the client's base64 answer.
async fn challenge<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut BufReader<R>,
    writer: &mut BufWriter<W>,
    line: &mut Vec<u8>,
    prompt: &str,
) -> io::Result<Challenge> {
    writer
        .write_all(format!("334 {}\r\n", BASE64.encode(prompt)).as_bytes())
        .await?;
    match next_line(reader, writer, line).await? {
        Line::Complete => {}
        Line::Closed => return Ok(Challenge::Closed),
        Line::Partial => loop {
            match next_line(reader, writer, line).await? {
                Line::Complete => return Ok(Challenge::Refused(MALFORMED)),
                Line::Partial => {}
                Line::Closed => return Ok(Challenge::Closed),
            }
        },
    }
    let answer = trim_line_end(line);
    if answer == b"*" {
        return Ok(Challenge::Refused(
            "501 5.7.0 Error: authentication cancelled\r\n",
        ));
    }
    Ok(match decode(answer) {
        Some(decoded) => Challenge::Answer(decoded),
        None => Challenge::Refused(MALFORMED),
    })
}

/// A base64 SASL response (`=` is the empty one).
fn decode(response: &[u8]) -> Option<Vec<u8>> {
    if response == b"=" {
        return Some(Vec::new());
    }
    BASE64.decode(response).ok()
}

/// Reads message data up to the line ".", dot-unstuffed. Returns the data (empty unless
/// `keep`) and whether it was over the size limit, or `None` if the client went away.
async fn read_data<R: AsyncRead + Unpin, W: AsyncWrite + Unpin>(
    reader: &mut BufReader<R>,
    writer: &mut BufWriter<W>,
    line: &mut Vec<u8>,
    keep: bool,
) -> io::Result<Option<(Vec<u8>, bool)>> {
    let mut data = Vec::new();
    let mut size = 0usize;
    let mut at_line_start = true;
    loop {
        let complete = match next_line(reader, writer, line).await? {
            Line::Complete => true,
            Line::Partial => false,
            Line::Closed => return Ok(None),
        };
        let mut piece = line.as_slice();
        if at_line_start {
            if piece == b".\r\n" || piece == b".\n" {
                return Ok(Some((data, size > MAX_MESSAGE_SIZE)));
            }
            if piece.first() == Some(&b'.') {
                piece = &piece[1..];
            }
        }
        size += piece.len();
        if keep && size <= MAX_MESSAGE_SIZE {
            data.extend_from_slice(piece);
        }
        at_line_start = complete;
    }
}

/// The verb in upper case, in `buf` (no allocation); too long a verb comes back as `b""`.
fn uppercase_verb<'a>(verb: &[u8], buf: &'a mut [u8; 8]) -> &'a [u8] {
    if verb.len() > buf.len() {
        return b"";
    }
    let upper = &mut buf[..verb.len()];
    upper.copy_from_slice(verb);
    upper.make_ascii_uppercase();
    upper
}

fn trim_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

/// Splits `VERB args` at the first space; `args` has leading spaces removed.
fn split_verb(command: &[u8]) -> (&[u8], &[u8]) {
    match command.iter().position(|&b| b == b' ') {
        Some(space) => (&command[..space], trim_start(&command[space + 1..])),
        None => (command, &[]),
    }
}

/// `rest` after a case-insensitive `keyword` prefix.
fn strip_keyword<'a>(bytes: &'a [u8], keyword: &[u8]) -> Option<&'a [u8]> {
    (bytes.len() >= keyword.len() && bytes[..keyword.len()].eq_ignore_ascii_case(keyword))
        .then(|| &bytes[keyword.len()..])
}

/// `<path> params` (a space after the colon and a path without brackets are tolerated) into
/// the path without `<>` and the parameters.
fn parse_path(args: &[u8]) -> Option<(&[u8], &[u8])> {
    let args = trim_start(args);
    if let Some(rest) = args.strip_prefix(b"<") {
        let close = rest.iter().position(|&b| b == b'>')?;
        Some((&rest[..close], trim_start(&rest[close + 1..])))
    } else {
        let end = args
            .iter()
            .position(|b| b.is_ascii_whitespace())
            .unwrap_or(args.len());
        (end > 0).then(|| (&args[..end], trim_start(&args[end..])))
    }
}

fn trim_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    &bytes[start..]
}

#[cfg(test)]
mod tests {
    use super::{parse_path, split_verb, strip_keyword};

    #[test]
    fn parses_paths_and_parameters() {
        let (verb, args) = split_verb(b"mail FROM:<a@b> SIZE=123 BODY=8BITMIME SMTPUTF8");
        assert_eq!(verb, b"mail");
        let rest = strip_keyword(args, b"FROM:").expect("FROM: prefix");
        let (path, params) = parse_path(rest).expect("a path");
        assert_eq!(path, b"a@b");
        assert_eq!(params, b"SIZE=123 BODY=8BITMIME SMTPUTF8");
        assert_eq!(parse_path(b" <>").map(|(p, _)| p), Some(&b""[..]));
        assert_eq!(parse_path(b"x@y").map(|(p, _)| p), Some(&b"x@y"[..]));
        assert_eq!(parse_path(b"<unclosed"), None);
        assert_eq!(parse_path(b""), None);
        assert_eq!(strip_keyword(b"to:<x>", b"FROM:"), None);
    }
}
