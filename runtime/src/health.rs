use actix_web::http::StatusCode;
use actix_web::{HttpResponse, web};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The endpoints every service serves without authentication: liveness, readiness, metrics.
pub const HEALTH_PATHS: &[&str] = &["/healthz", "/readyz", crate::metrics::METRICS_PATH];

/// What `/readyz` reports: named dependencies, each up or down, flipped by the code that holds
/// the connection (so a probe never opens connections of its own).
#[derive(Debug, Clone, Default)]
pub struct Readiness {
    checks: Vec<(&'static str, Arc<AtomicBool>)>,
}

impl Readiness {
    /// Adds a dependency, initially down; returns the flag to set when it is reachable.
    pub fn track(&mut self, name: &'static str) -> Arc<AtomicBool> {
        let flag = Arc::new(AtomicBool::new(false));
        self.checks.push((name, flag.clone()));
        flag
    }

    /// Each dependency and whether it is up.
    pub fn report(&self) -> Vec<(&'static str, bool)> {
        self.checks
            .iter()
            .map(|(name, flag)| (*name, flag.load(Ordering::Relaxed)))
            .collect()
    }
}

/// Adds `GET /healthz` (the process is alive), `GET /readyz` (200 when every tracked
/// dependency is up, else 503; the body names each) and `GET /metrics` to an actix-web app.
pub fn health_routes(readiness: Readiness) -> impl FnOnce(&mut web::ServiceConfig) {
    move |config| {
        config
            .app_data(web::Data::new(readiness))
            .route("/healthz", web::get().to(healthz))
            .route("/readyz", web::get().to(readyz))
            .route(
                crate::metrics::METRICS_PATH,
                web::get().to(crate::metrics::metrics_endpoint),
            );
    }
}

async fn healthz() -> HttpResponse {
    HttpResponse::Ok().json(serde_json::json!({"status": "ok"}))
}

async fn readyz(readiness: web::Data<Readiness>) -> HttpResponse {
    let report = readiness.report();
    let all_up = report.iter().all(|(_, up)| *up);
    let word = |up: bool| if up { "ok" } else { "unavailable" };
    let mut body = serde_json::Map::new();
    body.insert("status".into(), word(all_up).into());
    for (name, up) in report {
        body.insert(name.into(), word(up).into());
    }
    let status = if all_up {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    HttpResponse::build(status).json(body)
}

/// Serves only the health endpoints on `listener` until the returned server is stopped.
pub fn serve_health(
    listener: std::net::TcpListener,
    readiness: Readiness,
) -> anyhow::Result<actix_web::dev::Server> {
    let addr = listener.local_addr()?;
    let server = actix_web::HttpServer::new(move || {
        actix_web::App::new().configure(health_routes(readiness.clone()))
    })
    .workers(1)
    .disable_signals()
    .shutdown_timeout(5)
    .listen(listener)?
    .run();
    tracing::info!(%addr, "health endpoints listening (/healthz, /readyz, /metrics)");
    Ok(server)
}
