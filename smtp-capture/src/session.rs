//! One SMTP connection: read a line, answer it, flush whenever the client may be waiting.

use std::borrow::Cow;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};

use crate::{MAX_MESSAGE_SIZE, Mode, ReceivedMessage, State};

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

/// Queue ids are unique within the process (and carry its pid, so rarely collide across them).
static NEXT_QUEUE_ID: AtomicU64 = AtomicU64::new(1);

type Reader = BufReader<OwnedReadHalf>;
type Writer = BufWriter<OwnedWriteHalf>;

pub(crate) async fn run(stream: TcpStream, state: Arc<State>) {
    if let Err(error) = converse(stream, &state).await {
        tracing::debug!(%error, "SMTP connection ended with an error");
    }
}

#[derive(Default)]
struct Transaction {
    greeted: bool,
    mail_from: Option<String>,
    rcpt_to: Vec<String>,
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
async fn next_line(
    reader: &mut Reader,
    writer: &mut Writer,
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

async fn converse(stream: TcpStream, state: &State) -> io::Result<()> {
    let (reader, writer) = stream.into_split();
    let mut reader = BufReader::with_capacity(64 * 1024, reader);
    let mut writer = BufWriter::with_capacity(16 * 1024, writer);
    if state.mode() == Mode::DropConnections {
        return Ok(());
    }
    if state.mode() == Mode::RefuseService {
        writer
            .write_all(b"554 5.7.1 mailtrail-smtp-capture refuses this client (policy)\r\n")
            .await?;
        writer.flush().await?;
        return Ok(());
    }
    writer.write_all(GREETING).await?;
    let mut transaction = Transaction::default();
    let mut line = Vec::with_capacity(1024);
    loop {
        match next_line(&mut reader, &mut writer, &mut line).await? {
            Line::Complete => {}
            Line::Closed => return Ok(()),
            Line::Partial => {
                // Skip the rest of the over-long line, then refuse it.
                loop {
                    match next_line(&mut reader, &mut writer, &mut line).await? {
                        Line::Complete => break,
                        Line::Partial => {}
                        Line::Closed => return Ok(()),
                    }
                }
                if state.mode() == Mode::DropConnections {
                    return Ok(());
                }
                writer
                    .write_all(b"500 5.5.0 Error: line too long\r\n")
                    .await?;
                continue;
            }
        }
        if state.mode() == Mode::DropConnections {
            return Ok(());
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
                writer.write_all(EHLO_REPLY).await?;
            }
            b"HELO" => {
                transaction.reset();
                transaction.greeted = true;
                writer.write_all(b"250 localhost\r\n").await?;
            }
            b"MAIL" => {
                let reply = mail(&mut transaction, args, state);
                writer.write_all(reply.as_bytes()).await?;
            }
            b"RCPT" => {
                let reply = rcpt(&mut transaction, args, state);
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
                let Some((data, too_big)) =
                    read_data(&mut reader, &mut writer, &mut line, keep).await?
                else {
                    return Ok(());
                };
                if too_big {
                    writer
                        .write_all(b"552 5.3.4 Error: message too big\r\n")
                        .await?;
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
                return Ok(());
            }
            b"HELP" => {
                writer
                    .write_all(b"214 2.0.0 EHLO HELO MAIL RCPT DATA RSET NOOP QUIT\r\n")
                    .await?;
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
    if state.is_rejected(&address) {
        return format!("550 5.1.1 <{address}>: no such user\r\n").into();
    }
    if transaction.rcpt_to.len() >= MAX_RECIPIENTS {
        return "452 4.5.3 Error: too many recipients\r\n".into();
    }
    transaction.rcpt_to.push(address);
    "250 2.1.5 Ok\r\n".into()
}

/// Reads message data up to the line ".", dot-unstuffed. Returns the data (empty unless
/// `keep`) and whether it was over the size limit, or `None` if the client went away.
async fn read_data(
    reader: &mut Reader,
    writer: &mut Writer,
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
