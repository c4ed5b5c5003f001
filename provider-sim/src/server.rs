//! The HTTP server: the accept loop, one hyper HTTP/1.1 connection per task, and the request
//! flow every API shares (route → auth → body → behaviour → answer).

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use http_body_util::{BodyExt as _, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::service::service_fn;
use hyper::{Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::task::JoinSet;

use crate::spec::{self, Answer, Fault, Message, Request};
use crate::{Api, Behaviour, Malformed, Received, State};

/// Returned by the service to make hyper close the connection without an answer.
#[derive(Debug)]
struct Dropped;

impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("connection dropped on purpose")
    }
}

impl std::error::Error for Dropped {}

pub(crate) async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    state.connections.fetch_add(1, Ordering::SeqCst);
                    if let Err(error) = stream.set_nodelay(true) {
                        tracing::debug!(%error, %peer, "cannot set TCP_NODELAY");
                    }
                    connections.spawn(connection(stream, state.clone()));
                }
                Err(error) => {
                    // Usually too many open files: back off a little instead of spinning.
                    tracing::warn!(%error, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

async fn connection(stream: tokio::net::TcpStream, state: Arc<State>) {
    let service = service_fn(move |request| {
        let state = state.clone();
        async move { handle(&state, request).await }
    });
    let served = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .keep_alive(true)
        .serve_connection(TokioIo::new(stream), service)
        .await;
    if let Err(error) = served {
        // Dropped on purpose, or the client went away.
        tracing::debug!(%error, "provider-sim connection ended");
    }
}

async fn handle(
    state: &State,
    request: hyper::Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    state.requests.fetch_add(1, Ordering::SeqCst);
    let (parts, body) = request.into_parts();
    let body = match body.collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => return Err(Dropped),
    };
    let request = Request {
        method: &parts.method,
        path: parts.uri.path(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or(parts.uri.path(), |path| path.as_str()),
        headers: &parts.headers,
        body: &body,
    };
    let answer = respond(state, &request).await?;
    Ok(into_response(answer))
}

async fn respond(state: &State, request: &Request<'_>) -> Result<Answer, Dropped> {
    let spec = spec::spec(state.api);
    let credentials = state.credentials();
    let checked = spec
        .route(request, &credentials)
        .and_then(|()| spec.auth(request, &credentials))
        .and_then(|()| spec.parse(request));
    let message = match checked {
        Ok(message) => message,
        Err(rejection) => {
            if !rejection.problems.is_empty() {
                malformed(state, request, rejection.problems, rejection.answer.status);
            }
            return Ok(rejection.answer);
        }
    };
    let problems = spec::common_problems(spec, &message);
    if let Some(first) = problems.first() {
        let answer = spec.invalid(first);
        malformed(state, request, problems, answer.status);
        return Ok(answer);
    }
    let fault = |fault| spec.fault(fault, &message, &credentials);
    Ok(match state.behaviour_for(&message.to) {
        Behaviour::Accept => accept(state, request, message),
        Behaviour::Slow(delay) => {
            tokio::time::sleep(delay).await;
            accept(state, request, message)
        }
        Behaviour::DropConnection => return Err(Dropped),
        Behaviour::RejectMessage => fault(Fault::RejectMessage),
        Behaviour::BadKey => fault(Fault::BadKey),
        Behaviour::RateLimited => fault(Fault::RateLimited).with_header("retry-after", "1"),
        Behaviour::ServerError => fault(Fault::ServerError),
        Behaviour::Custom { status, body } => Answer::custom(status, &body),
    })
}

/// Accepts `message`: records it and gives the success answer. Resend honours
/// `Idempotency-Key`: a key seen before answers the id given then and records nothing.
fn accept(state: &State, request: &Request<'_>, message: Message) -> Answer {
    let spec = spec::spec(state.api);
    let credentials = state.credentials();
    let idempotency_key = request.header("idempotency-key").map(str::to_owned);
    let id = match (&idempotency_key, state.api) {
        (Some(key), Api::Resend) => {
            let mut seen = state.idempotency.lock().expect("idempotency lock poisoned");
            match seen.get(key) {
                Some((id, raw)) if *raw == message.raw => return spec.accepted(&message, id),
                Some(_) => {
                    drop(seen);
                    let answer = crate::resend::idempotency_conflict();
                    malformed(
                        state,
                        request,
                        vec![format!(
                            "Idempotency-Key {key:?} reused with a different request body"
                        )],
                        answer.status,
                    );
                    return answer;
                }
                None => {
                    let id = spec.new_id(&credentials, state.next_sequence());
                    seen.insert(key.clone(), (id.clone(), message.raw.clone()));
                    id
                }
            }
        }
        _ => spec.new_id(&credentials, state.next_sequence()),
    };
    let answer = spec.accepted(&message, &id);
    state.record(Received {
        mailtrail_id: message.mailtrail_id,
        header_mailtrail_id: message.header_mailtrail_id,
        to: message.to,
        from: message.from,
        subject: message.subject,
        text: message.text,
        html: message.html,
        headers: message.headers,
        provider_message_id: id,
        idempotency_key,
        raw: message.raw,
    });
    answer
}

fn malformed(state: &State, request: &Request<'_>, problems: Vec<String>, status: u16) {
    state.record_malformed(Malformed {
        method: request.method.to_string(),
        path: request.path_and_query.to_owned(),
        problems,
        status,
        body: String::from_utf8_lossy(request.body).into_owned(),
    });
}

fn into_response(answer: Answer) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(answer.body)));
    *response.status_mut() =
        StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let headers = response.headers_mut();
    if let Some(content_type) = answer.content_type {
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    }
    for (name, value) in answer.headers {
        if let Ok(value) = HeaderValue::from_str(&value) {
            headers.append(name, value);
        }
    }
    response
}
