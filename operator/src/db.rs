//! The database: a pool with explicit limits, migrations under a lock, and a deadline on calls.
//!
//! Error policy: a database error inside a step is returned to the consume loop, which releases
//! the deliveries unacked and reconnects with backoff; nothing is acked before its commit.

use anyhow::Context;
use diesel_async::AsyncPgConnection;
use diesel_async::pooled_connection::AsyncDieselConnectionManager;
use diesel_async::pooled_connection::deadpool::{Object, Pool};
use diesel_async::{AsyncConnection, RunQueryDsl, SimpleAsyncConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use std::future::Future;
use std::time::Duration;

pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Key of the session-level advisory lock that serialises migrations across operators.
const MIGRATION_LOCK: i64 = 0x6d61_696c_7472_6d67; // "mailtrmg"

pub type DbPool = Pool<AsyncPgConnection>;
pub type DbConn = Object<AsyncPgConnection>;

/// Builds the pool. Connections are checked with a query when taken, so one that stopped
/// answering is discarded rather than handed out.
///
/// Each connection also asks the server to end a transaction left idle longer than `timeout`
/// (and statements and lock waits running longer): when a client's connection goes silent
/// mid-transaction, the server would otherwise keep that transaction and its row locks forever,
/// and every retry of the same request would wait on them.
pub fn build_pool(url: &str, size: usize, timeout: Duration) -> anyhow::Result<DbPool> {
    let mut manager_config = diesel_async::pooled_connection::ManagerConfig::default();
    manager_config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Verified;
    let millis = timeout.as_millis().max(1);
    let session_settings = format!(
        "SET idle_in_transaction_session_timeout = {millis}; \
         SET statement_timeout = {millis}; SET lock_timeout = {millis}"
    );
    manager_config.custom_setup = Box::new(move |url| {
        let settings = session_settings.clone();
        let url = url.to_owned();
        Box::pin(async move {
            let mut conn = AsyncPgConnection::establish(&url).await?;
            conn.batch_execute(&settings)
                .await
                .map_err(diesel::ConnectionError::CouldntSetupConfiguration)?;
            Ok(conn)
        })
    });
    let manager =
        AsyncDieselConnectionManager::<AsyncPgConnection>::new_with_config(url, manager_config);
    Pool::builder(manager)
        .max_size(size)
        .wait_timeout(Some(timeout))
        .create_timeout(Some(timeout))
        .recycle_timeout(Some(timeout))
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .context("cannot build the database pool")
}

/// Runs `f` with a client-side deadline: a database that stops answering (a black-holed
/// connection, say) becomes an error in seconds instead of a hang.
pub async fn with_deadline<T, F>(deadline: Duration, what: &str, f: F) -> anyhow::Result<T>
where
    F: Future<Output = anyhow::Result<T>>,
{
    match tokio::time::timeout(deadline, f).await {
        Ok(result) => result,
        Err(_) => anyhow::bail!(
            "database call {what:?} took longer than {} ms; is PostgreSQL reachable?",
            deadline.as_millis()
        ),
    }
}

/// Drops every idle connection. Called when a call missed its deadline or a session failed:
/// its siblings share the same network path and are suspect too, and new ones are cheap. The
/// connections in use are verified when they come back.
pub fn discard_idle(pool: &DbPool) {
    pool.retain(|_, _| false);
}

/// Runs `SELECT 1` every `interval` until `stop`; a query that fails or misses `deadline`
/// discards the idle connections, so the next real call opens a fresh one instead of waiting on
/// a silent socket.
pub async fn liveness_loop(
    pool: DbPool,
    interval: Duration,
    deadline: Duration,
    stop: tokio_util::sync::CancellationToken,
) {
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let probe = with_deadline(deadline, "liveness check", async {
            let mut conn = pool.get().await?;
            diesel::sql_query("SELECT 1").execute(&mut conn).await?;
            Ok(())
        })
        .await;
        if let Err(error) = probe {
            tracing::warn!(
                error = %format!("{error:#}"),
                "database liveness check failed; discarding idle connections"
            );
            discard_idle(&pool);
        }
    }
}

/// Applies pending migrations under a database lock, so several operators may start together.
/// Returns the versions applied.
pub async fn migrate(url: &str) -> anyhow::Result<Vec<String>> {
    let mut conn = AsyncPgConnection::establish(url).await.with_context(|| {
        format!(
            "cannot connect to PostgreSQL at {}: is it running, does the database exist \
             (create it with `createdb`), and is MAILTRAIL_DATABASE_URL right?",
            redact(url)
        )
    })?;
    conn.batch_execute(&format!("SELECT pg_advisory_lock({MIGRATION_LOCK})"))
        .await
        .context("cannot take the migration lock")?;
    // The harness is synchronous (it blocks on the async connection): keep it off the workers.
    let (conn, applied) = tokio::task::spawn_blocking(move || {
        let mut harness = diesel_async::AsyncMigrationHarness::new(conn);
        let applied = harness
            .run_pending_migrations(MIGRATIONS)
            .map(|versions| versions.iter().map(|v| v.to_string()).collect::<Vec<_>>())
            .map_err(|e| anyhow::anyhow!("migration failed: {e}"));
        (harness.into_inner(), applied)
    })
    .await
    .context("the migration task panicked")?;
    let mut conn = conn;
    let _ = diesel::sql_query(format!("SELECT pg_advisory_unlock({MIGRATION_LOCK})"))
        .execute(&mut conn)
        .await;
    applied
}

/// The URL with any password replaced by `***`.
pub fn redact(url: &str) -> String {
    mailtrail_broker::redact(url)
}
