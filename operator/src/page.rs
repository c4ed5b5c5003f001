//! The history page: `GET /` and its two assets, embedded in the binary (no build step).
//!
//! The page is plain HTML, CSS and a little JavaScript (`operator/page/`). It signs in through
//! `POST /v1/sign-in` (the key is sent once and never kept by the page) and reads the same API as
//! everyone else with the session cookie. Everything it shows comes from outsiders (subjects,
//! user agents, URLs, diagnostics), so the script only ever writes text nodes, links only http(s)
//! URLs, and the Content-Security-Policy below allows no inline script or style and no other
//! origin: an injected `<script>` or `javascript:` URL has nothing to run with.
//!
//! These paths are not API operations and are not in the OpenAPI document; they answer without
//! a key because they hold no data.

use actix_web::http::header::{CACHE_CONTROL, CONTENT_TYPE};
use actix_web::{HttpResponse, web};

/// The page's Content-Security-Policy: its own script, style and API; nothing else.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; \
     frame-ancestors 'none'; base-uri 'none'";

/// The paths the page is served at.
pub const PAGE_PATHS: &[&str] = &["/", "/assets/history.js", "/assets/history.css"];

const INDEX_HTML: &str = include_str!("../page/index.html");
const HISTORY_JS: &str = include_str!("../page/history.js");
const HISTORY_CSS: &str = include_str!("../page/history.css");

/// Registers the page's routes (outside the keyed `/v1` scope).
pub fn routes(config: &mut web::ServiceConfig) {
    config
        .route(PAGE_PATHS[0], web::get().to(index))
        .route(PAGE_PATHS[1], web::get().to(script))
        .route(PAGE_PATHS[2], web::get().to(style));
}

fn asset(content_type: &str, body: &'static str, cache: &str) -> HttpResponse {
    HttpResponse::Ok()
        .insert_header((CONTENT_TYPE, content_type))
        .insert_header((CACHE_CONTROL, cache))
        .insert_header(("Content-Security-Policy", CONTENT_SECURITY_POLICY))
        .insert_header(("X-Content-Type-Options", "nosniff"))
        .insert_header(("X-Frame-Options", "DENY"))
        .insert_header(("Referrer-Policy", "no-referrer"))
        .insert_header(("Cross-Origin-Opener-Policy", "same-origin"))
        .body(body)
}

async fn index() -> HttpResponse {
    asset("text/html; charset=utf-8", INDEX_HTML, "no-store")
}

async fn script() -> HttpResponse {
    // Short caching: a new operator version's script is picked up within minutes.
    asset(
        "text/javascript; charset=utf-8",
        HISTORY_JS,
        "public, max-age=300",
    )
}

async fn style() -> HttpResponse {
    asset(
        "text/css; charset=utf-8",
        HISTORY_CSS,
        "public, max-age=300",
    )
}
