//! Browser sessions, for the history page (`crate::page`).
//!
//! `POST /v1/sign-in` takes an API key once and answers with a random session token in an
//! `HttpOnly`, `SameSite=Strict` cookie, so the key never sits in page script or storage. The
//! session has exactly its key's scope and dies with the key (authentication joins `api_keys`,
//! so revoking a key ends its sessions at once) or after `MAILTRAIL_SESSION_TTL_SECS`.
//!
//! CSRF: a request authenticated by the cookie that changes anything (any method but GET/HEAD)
//! must carry the session's token in `X-CSRF-Token`; a browser's `Sec-Fetch-Site`, when sent,
//! must say `same-origin`. `SameSite=Strict` already keeps the cookie off cross-site requests;
//! the token is the second, independent lock. Requests with an `Authorization` header never look
//! at the cookie, so API clients are unaffected.

use crate::audit;
use crate::db::with_deadline;
use crate::http::{ApiError, ApiState};
use crate::keys::{self, Principal, Role};
use crate::schema::{api_keys, sessions};
use actix_web::cookie::{Cookie, SameSite};
use actix_web::dev::ServiceRequest;
use actix_web::http::Method;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncConnection, AsyncPgConnection, RunQueryDsl};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::time::Duration;
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// The session cookie.
pub const COOKIE_NAME: &str = "mailtrail_session";
/// The header carrying the CSRF token on changes made with a session.
pub const CSRF_HEADER: &str = "X-CSRF-Token";
/// The public sign-in path (outside the keyed scope).
pub const SIGN_IN_PATH: &str = "/v1/sign-in";

/// When the cookie gets the `Secure` attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SecureCookie {
    /// When the request came over https (directly, or as `X-Forwarded-Proto`/`Forwarded` say).
    Auto,
    /// Always (the page is only reached over https).
    Always,
}

/// How sessions are made.
#[derive(Debug, Clone, Copy)]
pub struct SessionSettings {
    pub ttl: Duration,
    pub secure: SecureCookie,
}

/// The session a request came with, as the middleware found it; kept in the request so
/// `GET /v1/session` can show it and sign-out can end it without looking it up again.
#[derive(Debug, Clone)]
pub struct SessionToken {
    token: String,
    csrf_token: String,
    expires_at: DateTime<Utc>,
}

/// Who is signed in, as `GET /v1/session` and the sign-in answer show it.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct SessionView {
    /// The name of the key the session was made with.
    pub key_name: String,
    /// The key's tenant; `null`: every tenant.
    pub tenant: Option<String>,
    /// `read` or `admin`.
    pub role: String,
    /// Send it in `X-CSRF-Token` with every change; `null` when authenticated by a key.
    pub csrf_token: Option<String>,
    /// When the session ends; `null` when authenticated by a key.
    pub expires_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Deserialize, utoipa::ToSchema)]
pub struct SignIn {
    /// An API key (`mtk_…`), as `operator keys create` printed it.
    pub key: String,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// A verified session: its principal, CSRF token and end.
struct Session {
    principal: Principal,
    csrf_token: String,
    expires_at: DateTime<Utc>,
}

/// (key id, tenant, role, csrf token, expires at) of a live session.
type SessionRow = (Uuid, Option<String>, String, String, DateTime<Utc>);

/// The live session of `token`: unexpired, its key unrevoked. `None` otherwise.
async fn find(conn: &mut AsyncPgConnection, token: &str) -> anyhow::Result<Option<Session>> {
    let row: Option<SessionRow> = sessions::table
        .inner_join(api_keys::table)
        .filter(sessions::token_hash.eq(hash(token)))
        .filter(sessions::expires_at.gt(diesel::dsl::now))
        .filter(api_keys::revoked_at.is_null())
        .select((
            api_keys::id,
            api_keys::tenant,
            api_keys::role,
            sessions::csrf_token,
            sessions::expires_at,
        ))
        .first(conn)
        .await
        .optional()?;
    Ok(
        row.and_then(|(key_id, tenant, role, csrf_token, expires_at)| {
            Some(Session {
                principal: Principal {
                    key_id,
                    tenant,
                    role: role.parse::<Role>().ok()?,
                },
                csrf_token,
                expires_at,
            })
        }),
    )
}

/// Authenticates a request by its session cookie, for the `/v1` middleware. `Ok(None)`: no
/// cookie. An unknown or expired session is 401; a change without the CSRF token, 403.
pub(crate) async fn authenticate(
    state: &ApiState,
    request: &ServiceRequest,
) -> Result<Option<Principal>, ApiError> {
    let Some(cookie) = request.cookie(COOKIE_NAME) else {
        return Ok(None);
    };
    let token = cookie.value().to_owned();
    let session = with_deadline(state.db_timeout, "session", async {
        let mut conn = state.pool.get().await?;
        find(&mut conn, &token).await
    })
    .await
    .map_err(ApiError::Unavailable)?
    .ok_or(ApiError::Unauthorized)?;
    if !matches!(*request.method(), Method::GET | Method::HEAD) {
        check_csrf(request.request(), &session.csrf_token)?;
    }
    request.extensions_mut().insert(SessionToken {
        token,
        csrf_token: session.csrf_token,
        expires_at: session.expires_at,
    });
    Ok(Some(session.principal))
}

fn check_csrf(request: &HttpRequest, expected: &str) -> Result<(), ApiError> {
    let headers = request.headers();
    if let Some(site) = headers.get("sec-fetch-site")
        && site.as_bytes() != b"same-origin"
    {
        return Err(ApiError::Forbidden(
            "CSRF check failed: a change made with the session cookie must come from the \
             history page itself"
                .into(),
        ));
    }
    let presented = headers
        .get(CSRF_HEADER)
        .map(|v| v.as_bytes())
        .unwrap_or_default();
    if presented.is_empty() || !bool::from(presented.ct_eq(expected.as_bytes())) {
        return Err(ApiError::Forbidden(format!(
            "CSRF check failed: a change made with the session cookie needs the session's token \
             in `{CSRF_HEADER}` (see GET /v1/session)"
        )));
    }
    Ok(())
}

fn session_cookie<'c>(
    request: &HttpRequest,
    settings: SessionSettings,
    value: String,
) -> Cookie<'c> {
    let secure = match settings.secure {
        SecureCookie::Always => true,
        SecureCookie::Auto => request.connection_info().scheme() == "https",
    };
    Cookie::build(COOKIE_NAME, value)
        .path("/")
        .http_only(true)
        .same_site(SameSite::Strict)
        .secure(secure)
        .finish()
}

async fn key_name(conn: &mut AsyncPgConnection, key_id: Uuid) -> anyhow::Result<String> {
    Ok(api_keys::table
        .find(key_id)
        .select(api_keys::name)
        .first(conn)
        .await?)
}

#[utoipa::path(post, path = "/v1/sign-in", tag = "session",
    request_body = SignIn,
    responses(
        (status = 200, description = "Signed in: the session cookie is set (`HttpOnly`, `SameSite=Strict`); the body names the key's scope and the CSRF token", body = SessionView),
        (status = 400, description = "The body is not `{\"key\": \"mtk_…\"}`"),
        (status = 401, description = "The key is unknown, malformed or revoked"),
    ))]
pub(crate) async fn sign_in(
    state: web::Data<ApiState>,
    request: HttpRequest,
    body: web::Bytes,
) -> Result<HttpResponse, ApiError> {
    let SignIn { key } = serde_json::from_slice(&body).map_err(|_| {
        ApiError::BadRequest(r#"send the API key as JSON: {"key": "mtk_…"}"#.into())
    })?;
    let token = random_token();
    let csrf_token = random_token();
    let ttl = state.sessions.ttl;
    let made = with_deadline(state.db_timeout, "sign in", async {
        let mut conn = state.pool.get().await?;
        let Some(principal) = keys::authenticate(&mut conn, key.trim()).await? else {
            return Ok(None);
        };
        let expires_at = Utc::now() + ttl;
        let token_hash = hash(&token);
        let csrf = csrf_token.clone();
        let view = conn
            .transaction::<_, anyhow::Error, _>(async |conn| {
                // Expired sessions are swept here: sign-ins are rare and the index makes it cheap.
                diesel::delete(sessions::table.filter(sessions::expires_at.le(diesel::dsl::now)))
                    .execute(conn)
                    .await?;
                diesel::insert_into(sessions::table)
                    .values((
                        sessions::token_hash.eq(token_hash),
                        sessions::key_id.eq(principal.key_id),
                        sessions::csrf_token.eq(&csrf),
                        sessions::expires_at.eq(expires_at),
                    ))
                    .execute(conn)
                    .await?;
                audit::record(
                    conn,
                    audit::Actor::Key(&principal),
                    "session.sign_in",
                    principal.tenant.as_deref(),
                    &principal.key_id.to_string(),
                    serde_json::json!({}),
                )
                .await?;
                Ok(SessionView {
                    key_name: key_name(conn, principal.key_id).await?,
                    tenant: principal.tenant.clone(),
                    role: principal.role.as_str().to_owned(),
                    csrf_token: Some(csrf),
                    expires_at: Some(expires_at),
                })
            })
            .await?;
        Ok(Some(view))
    })
    .await
    .map_err(ApiError::Unavailable)?
    .ok_or(ApiError::Unauthorized)?;
    Ok(HttpResponse::Ok()
        .cookie(session_cookie(&request, state.sessions, token))
        .insert_header(("Cache-Control", "no-store"))
        .json(made))
}

#[utoipa::path(get, path = "/v1/session", tag = "session",
    responses(
        (status = 200, description = "Who is signed in, and the session's CSRF token", body = SessionView),
    ))]
pub(crate) async fn current(
    state: web::Data<ApiState>,
    request: HttpRequest,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse, ApiError> {
    let session = request.extensions().get::<SessionToken>().cloned();
    let principal = principal.into_inner();
    let name = with_deadline(state.db_timeout, "session", async {
        let mut conn = state.pool.get().await?;
        key_name(&mut conn, principal.key_id).await
    })
    .await
    .map_err(ApiError::Unavailable)?;
    Ok(HttpResponse::Ok()
        .insert_header(("Cache-Control", "no-store"))
        .json(SessionView {
            key_name: name,
            tenant: principal.tenant,
            role: principal.role.as_str().to_owned(),
            csrf_token: session.as_ref().map(|s| s.csrf_token.clone()),
            expires_at: session.map(|s| s.expires_at),
        }))
}

#[utoipa::path(post, path = "/v1/sign-out", tag = "session",
    responses(
        (status = 204, description = "The session (if the request came with one) is ended and its cookie cleared"),
    ))]
pub(crate) async fn sign_out(
    state: web::Data<ApiState>,
    request: HttpRequest,
    principal: web::ReqData<Principal>,
) -> Result<HttpResponse, ApiError> {
    let session = request.extensions().get::<SessionToken>().cloned();
    if let Some(SessionToken { token, .. }) = &session {
        let principal = principal.into_inner();
        with_deadline(state.db_timeout, "sign out", async {
            let mut conn = state.pool.get().await?;
            conn.transaction::<_, anyhow::Error, _>(async |conn| {
                let ended = diesel::delete(sessions::table.find(hash(token)))
                    .execute(conn)
                    .await?;
                if ended > 0 {
                    audit::record(
                        conn,
                        audit::Actor::Key(&principal),
                        "session.sign_out",
                        principal.tenant.as_deref(),
                        &principal.key_id.to_string(),
                        serde_json::json!({}),
                    )
                    .await?;
                }
                Ok(())
            })
            .await
        })
        .await
        .map_err(ApiError::Unavailable)?;
    }
    let mut removal = session_cookie(&request, state.sessions, String::new());
    removal.make_removal();
    Ok(HttpResponse::NoContent().cookie(removal).finish())
}
