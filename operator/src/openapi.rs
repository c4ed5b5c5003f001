//! The OpenAPI 3 document of the operator's HTTP API, served (public) at [`OPENAPI_PATH`].
//!
//! It is generated from the handlers' `#[utoipa::path]` annotations. Two rules are applied here,
//! once, rather than on each operation: every operation needs the `api_key` bearer scheme except
//! the paths in [`PUBLIC_PATHS`] (marked `security: []`), and every error answer (4xx, 5xx) is
//! an `application/problem+json` [`Problem`]. Keyed operations also list the middleware's own
//! answers: 401 (no, unknown or revoked key) and 503 (the database cannot check the key); keyed
//! changes also 403 (a session's change without its CSRF token). The history page's session
//! cookie (`crate::sessions`) is the alternative scheme `session`.
//!
//! The integration test `openapi` drives every operation of the document, so an undocumented
//! route or a wrong `security` fails it.

use crate::http::PUBLIC_PATHS;
use actix_web::HttpResponse;
use serde::Serialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, RefOr, ResponseBuilder};
use utoipa::{Modify, OpenApi, ToSchema};

/// Where the document is served.
pub const OPENAPI_PATH: &str = "/v1/openapi.json";

/// An error answer (RFC 9457): the body of every `application/problem+json` response
/// (`ApiError`'s rendering).
#[derive(Debug, Serialize, ToSchema)]
pub struct Problem {
    /// Always `about:blank`.
    #[serde(rename = "type")]
    #[schema(example = "about:blank")]
    pub problem_type: String,
    /// The status's reason phrase.
    #[schema(example = "Not Found")]
    pub title: String,
    #[schema(example = 404)]
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "mailtrail operator",
        description = "Email histories, search and export, suppressions, dead letters, stats \
                       and audit. Every error is `application/problem+json`."
    ),
    paths(
        crate::http::healthz,
        crate::http::readyz,
        crate::http::metrics,
        document,
        crate::search_api::search,
        crate::search_api::export,
        crate::http::message_history,
        crate::http::cancel_message,
        crate::http::list_audit,
        crate::http::list_suppressions,
        crate::http::add_suppression,
        crate::http::get_suppression,
        crate::http::remove_suppression,
        crate::dead_letter_api::list,
        crate::dead_letter_api::show,
        crate::dead_letter_api::replay_one,
        crate::dead_letter_api::replay_many,
        crate::dead_letter_api::discard,
        crate::stats_api::stats,
        crate::sessions::sign_in,
        crate::sessions::current,
        crate::sessions::sign_out,
    ),
    components(schemas(Problem)),
    modifiers(&Rules)
)]
pub struct ApiDoc;

/// The document-wide rules: security and problem answers.
struct Rules;

impl Modify for Rules {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("mtk_<id>_<secret>")
                    .description(Some("An API key (`operator keys create`)."))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(utoipa::openapi::security::ApiKey::Cookie(
                utoipa::openapi::security::ApiKeyValue::with_description(
                    crate::sessions::COOKIE_NAME,
                    "The history page's session (POST /v1/sign-in). Changes also need the \
                     session's CSRF token in `X-CSRF-Token`.",
                ),
            )),
        );
        openapi.security = Some(vec![
            SecurityRequirement::new("api_key", Vec::<String>::new()),
            SecurityRequirement::new("session", Vec::<String>::new()),
        ]);
        let problem = || Content::new(Some(RefOr::Ref(Ref::from_schema_name("Problem"))));
        for (path, item) in openapi.paths.paths.iter_mut() {
            let public = PUBLIC_PATHS.contains(&path.as_str());
            let operations = [
                (false, &mut item.get),
                (true, &mut item.post),
                (true, &mut item.put),
                (true, &mut item.patch),
                (true, &mut item.delete),
            ];
            for (changes, operation) in operations {
                let Some(operation) = operation else { continue };
                let responses = &mut operation.responses.responses;
                if public {
                    operation.security = Some(Vec::new());
                } else {
                    for (status, description) in [
                        ("401", "No key, an unknown key or a revoked key."),
                        ("503", "The database (or the broker) is unavailable."),
                    ] {
                        responses.entry(status.to_owned()).or_insert_with(|| {
                            RefOr::T(ResponseBuilder::new().description(description).build())
                        });
                    }
                    if changes {
                        responses.entry("403".to_owned()).or_insert_with(|| {
                            RefOr::T(
                                ResponseBuilder::new()
                                    .description(
                                        "Made with the session cookie but without its CSRF token.",
                                    )
                                    .build(),
                            )
                        });
                    }
                }
                for (status, response) in responses.iter_mut() {
                    let error = status.starts_with('4') || status.starts_with('5');
                    if let (true, RefOr::T(response)) = (error, response) {
                        // readyz's 503 is its own JSON, not a problem.
                        if response.content.is_empty() {
                            response
                                .content
                                .insert("application/problem+json".to_owned(), problem());
                        }
                    }
                }
            }
        }
    }
}

/// The methods the document lists for a request path, upper case, or `None` when no documented
/// path matches it (a `{parameter}` matches one non-empty segment). As in OpenAPI, a concrete
/// path wins over a templated one (`/v1/messages/export` is not `/v1/messages/{id}`), and the
/// fewer parameters the better. For the `Allow` header of a 405.
pub fn allowed_methods(path: &str) -> Option<Vec<String>> {
    const METHODS: [&str; 8] = [
        "get", "put", "post", "delete", "options", "head", "patch", "trace",
    ];
    static TEMPLATES: std::sync::OnceLock<Vec<(String, Vec<String>)>> = std::sync::OnceLock::new();
    let templates = TEMPLATES.get_or_init(|| {
        let document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        document["paths"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(template, item)| {
                let allowed = METHODS
                    .iter()
                    .filter(|m| item.get(**m).is_some())
                    .map(|m| m.to_uppercase())
                    .collect();
                (template.clone(), allowed)
            })
            .collect()
    });
    // The number of parameters a template needs to match the path, if it does.
    let parameters = |template: &str| {
        let (mut wanted, mut given) = (template.split('/'), path.split('/'));
        let mut parameters = 0;
        loop {
            match (wanted.next(), given.next()) {
                (None, None) => return Some(parameters),
                (Some(w), Some(g)) if w.starts_with('{') && w.ends_with('}') && !g.is_empty() => {
                    parameters += 1;
                }
                (Some(w), Some(g)) if w == g => {}
                _ => return None,
            }
        }
    };
    templates
        .iter()
        .filter_map(|(template, methods)| parameters(template).map(|n| (n, methods)))
        .min_by_key(|(n, _)| *n)
        .map(|(_, methods)| methods.clone())
}

/// `GET /v1/openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/v1/openapi.json",
    tag = "meta",
    responses((status = 200, description = "The OpenAPI 3 document of this API.", body = Object))
)]
pub(crate) async fn document() -> HttpResponse {
    HttpResponse::Ok().json(ApiDoc::openapi())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The source files that register routes (`routes` and the modules it configures).
    const ROUTE_SOURCES: &[&str] = &[
        include_str!("http.rs"),
        include_str!("dead_letter_api.rs"),
        include_str!("search_api.rs"),
        include_str!("stats_api.rs"),
    ];

    fn documented(method: &str) -> usize {
        let document = serde_json::to_value(ApiDoc::openapi()).expect("a document");
        document["paths"]
            .as_object()
            .expect("paths")
            .values()
            .filter(|item| item.get(method).is_some())
            .count()
    }

    /// A route registered without a documented operation (or the reverse) changes a count.
    #[test]
    fn every_registered_route_is_documented() {
        for method in ["get", "post", "put", "patch", "delete", "head"] {
            let registered: usize = ROUTE_SOURCES
                .iter()
                .map(|source| source.matches(&format!("web::{method}()")).count())
                .sum();
            assert_eq!(
                registered,
                documented(method),
                "{method} routes vs documented"
            );
        }
        for source in ROUTE_SOURCES {
            assert!(
                !source.contains("web::resource("),
                "count resources here too"
            );
        }
    }

    #[test]
    fn allowed_methods_come_from_the_document() {
        let allowed = |path: &str| allowed_methods(path).map(|m| m.join(", "));
        assert_eq!(allowed("/healthz").as_deref(), Some("GET"));
        assert_eq!(allowed("/v1/messages/abc").as_deref(), Some("GET, DELETE"));
        // A concrete path wins over a template that matches it too.
        assert_eq!(allowed("/v1/messages/export").as_deref(), Some("GET"));
        assert_eq!(allowed("/v1/dead-letters/replay").as_deref(), Some("POST"));
        assert_eq!(
            allowed("/v1/suppressions/acme/a@b.test").as_deref(),
            Some("GET, DELETE")
        );
        assert_eq!(allowed("/v1/suppressions").as_deref(), Some("GET, POST"));
        assert_eq!(
            allowed("/v1/dead-letters/x/replay").as_deref(),
            Some("POST")
        );
        assert_eq!(allowed("/v1/messages/"), None);
        assert_eq!(allowed("/v1/nothing"), None);
        assert_eq!(allowed("/"), None);
    }

    #[test]
    fn exactly_the_public_paths_need_no_key() {
        for path in mailtrail_runtime::HEALTH_PATHS {
            assert!(PUBLIC_PATHS.contains(path), "{path}");
        }
        let document = serde_json::to_value(ApiDoc::openapi()).expect("a document");
        assert_eq!(
            document["security"],
            serde_json::json!([{"api_key": []}, {"session": []}])
        );
        for (path, item) in document["paths"].as_object().expect("paths") {
            for (method, operation) in item.as_object().expect("an item") {
                let public = operation["security"] == serde_json::json!([]);
                assert_eq!(
                    public,
                    PUBLIC_PATHS.contains(&path.as_str()),
                    "{method} {path}"
                );
            }
        }
    }
}
