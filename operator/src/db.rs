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
pub fn build_pool(url: &str, size: usize, timeout: Duration) -> anyhow::Result<DbPool> {
    let mut manager_config = diesel_async::pooled_connection::ManagerConfig::default();
    manager_config.recycling_method = diesel_async::pooled_connection::RecyclingMethod::Verified;
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
