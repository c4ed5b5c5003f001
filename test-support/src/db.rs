//! A PostgreSQL database per test, cloned from a migrated template.

use anyhow::{Context, bail};
use diesel::migration::MigrationSource;
use diesel_async::{AsyncConnection, AsyncMigrationHarness, AsyncPgConnection};
use diesel_migrations::{EmbeddedMigrations, MigrationHarness, embed_migrations};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;
use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, NoTls};

/// The workspace's migrations, compiled in.
pub const MIGRATIONS: EmbeddedMigrations = embed_migrations!("../migrations");

/// Advisory-lock key (on the `postgres` database) guarding template creation: "mt-tmpl".
const TEMPLATE_LOCK_KEY: i64 = 0x6d74_2d74_6d70_6c00;

/// How many times an admin statement is retried while another session holds the template open.
const IN_USE_ATTEMPTS: u32 = 20;

/// The PostgreSQL server the tests use, without a database name:
/// `MAILTRAIL_TEST_DATABASE_URL` or `postgres://postgres@127.0.0.1:5432`.
pub fn database_server_url() -> String {
    std::env::var("MAILTRAIL_TEST_DATABASE_URL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// `url` with its database (path) replaced by `database`; a query string is kept.
pub fn url_with_database(url: &str, database: &str) -> String {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let authority_start = base.find("://").map(|i| i + 3).unwrap_or(0);
    let base = match base[authority_start..].find('/') {
        Some(slash) => &base[..authority_start + slash],
        None => base,
    };
    match query {
        Some(q) => format!("{base}/{database}?{q}"),
        None => format!("{base}/{database}"),
    }
}

/// A database of its own for one test, migrated to the workspace's latest schema.
///
/// Created as `mt_test_<random>` from the template `mt_template_<hash of migrations/>` (the
/// template is built once per migrations version, by whichever test gets there first, under an
/// advisory lock). Dropped (`WITH (FORCE)`) when the value is dropped.
#[derive(Debug)]
pub struct TestDb {
    name: String,
    url: String,
}

impl TestDb {
    /// Creates the database. Panics with a helpful message when PostgreSQL cannot be used.
    pub async fn new() -> TestDb {
        match Self::try_new().await {
            Ok(db) => db,
            Err(e) => panic!(
                "cannot create a test database on {} (set MAILTRAIL_TEST_DATABASE_URL, or run \
                 scripts/ensure-services.sh): {e:#}",
                mailtrail_broker::redact(&database_server_url())
            ),
        }
    }

    /// Creates the database, returning an error instead of panicking.
    pub async fn try_new() -> anyhow::Result<TestDb> {
        let server = database_server_url();
        let template = ensure_template(&server).await?;
        let name = format!("mt_test_{:016x}", rand::random::<u64>());
        let admin = admin_client(&server).await?;
        let create = format!("CREATE DATABASE \"{name}\" TEMPLATE \"{template}\"");
        retry_in_use(&admin, &create).await?;
        tracing::debug!(database = %name, %template, "created test database");
        Ok(TestDb {
            url: url_with_database(&server, &name),
            name,
        })
    }

    /// The URL of this test's database.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The database name (`mt_test_…`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A tokio-postgres client on this database (its connection runs on the current runtime).
    pub async fn client(&self) -> Client {
        match connect(&self.url).await {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to test database {}: {e:#}", self.name),
        }
    }

    /// A diesel-async connection on this database.
    pub async fn diesel(&self) -> AsyncPgConnection {
        match AsyncPgConnection::establish(&self.url).await {
            Ok(c) => c,
            Err(e) => panic!("cannot connect to test database {}: {e}", self.name),
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let server = database_server_url();
        let statement = format!("DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)", self.name);
        let name = self.name.clone();
        let result = crate::run_detached(Duration::from_secs(30), async move {
            let admin = admin_client(&server).await?;
            admin.batch_execute(&statement).await?;
            anyhow::Ok(())
        });
        match result {
            Ok(()) => tracing::debug!(database = %name, "dropped test database"),
            Err(e) => eprintln!("test-support: could not drop test database {name}: {e:#}"),
        }
    }
}

/// The template name for the current migrations: `mt_template_<12 hex>`.
pub fn template_name() -> &'static str {
    static NAME: OnceLock<String> = OnceLock::new();
    NAME.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../migrations");
        let digest = match hash_dir(&dir) {
            Ok(d) => d,
            // Unreadable at run time (tests run elsewhere): fall back to the compiled-in list.
            Err(_) => {
                let mut hasher = Sha256::new();
                let migrations =
                    MigrationSource::<diesel::pg::Pg>::migrations(&MIGRATIONS).unwrap_or_default();
                for m in migrations {
                    hasher.update(m.name().to_string().as_bytes());
                    hasher.update([0]);
                }
                hex::encode(hasher.finalize())
            }
        };
        format!("mt_template_{}", &digest[..12])
    })
}

/// SHA-256 over every file under `dir` (relative path and contents), sorted by path.
fn hash_dir(dir: &Path) -> anyhow::Result<String> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            if path.is_dir() {
                walk(root, &path, out)?;
            } else {
                out.push(path.strip_prefix(root).unwrap_or(&path).to_path_buf());
            }
        }
        Ok(())
    }
    let mut files = Vec::new();
    walk(dir, dir, &mut files).with_context(|| format!("reading {}", dir.display()))?;
    files.sort();
    let mut hasher = Sha256::new();
    for rel in files {
        let contents = std::fs::read(dir.join(&rel))?;
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update([0]);
        hasher.update((contents.len() as u64).to_le_bytes());
        hasher.update(&contents);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// Makes sure the template exists (once per process; across processes under an advisory lock).
async fn ensure_template(server: &str) -> anyhow::Result<&'static str> {
    static READY: tokio::sync::Mutex<bool> = tokio::sync::Mutex::const_new(false);
    let template = template_name();
    let mut ready = READY.lock().await;
    if *ready {
        return Ok(template);
    }
    let admin = admin_client(server).await?;
    admin
        .execute("SELECT pg_advisory_lock($1)", &[&TEMPLATE_LOCK_KEY])
        .await
        .context("taking the template advisory lock")?;
    let result = build_template_locked(server, &admin, template).await;
    // Unlocking is also implied by closing the session; errors here do not matter.
    let _ = admin
        .execute("SELECT pg_advisory_unlock($1)", &[&TEMPLATE_LOCK_KEY])
        .await;
    drop(admin);
    result?;
    *ready = true;
    Ok(template)
}

/// With the advisory lock held: builds `template` unless it exists. The schema is migrated into
/// a scratch database that is renamed only when complete, so an interrupted run never leaves a
/// half-migrated template behind.
async fn build_template_locked(server: &str, admin: &Client, template: &str) -> anyhow::Result<()> {
    let exists = admin
        .query_opt("SELECT 1 FROM pg_database WHERE datname = $1", &[&template])
        .await?
        .is_some();
    if exists {
        return Ok(());
    }
    let scratch = format!("{template}_building");
    admin
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS \"{scratch}\" WITH (FORCE)"
        ))
        .await
        .with_context(|| format!("dropping leftover {scratch}"))?;
    admin
        .batch_execute(&format!("CREATE DATABASE \"{scratch}\" TEMPLATE template0"))
        .await
        .with_context(|| format!("creating {scratch}"))?;
    run_migrations(url_with_database(server, &scratch))
        .await
        .with_context(|| format!("migrating {scratch}"))?;
    let rename = format!("ALTER DATABASE \"{scratch}\" RENAME TO \"{template}\"");
    retry_in_use(admin, &rename).await?;
    tracing::info!(%template, "built the test template database");
    Ok(())
}

/// Runs the embedded migrations on `url` and closes the connection. `AsyncMigrationHarness`
/// needs a multi-threaded runtime (`block_in_place`) while `#[tokio::test]` is single-threaded,
/// so this runs on a thread with a runtime of its own.
async fn run_migrations(url: String) -> anyhow::Result<()> {
    let handle = std::thread::spawn(move || -> anyhow::Result<()> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()?;
        runtime.block_on(async move {
            let conn = AsyncPgConnection::establish(&url).await?;
            let mut harness = AsyncMigrationHarness::new(conn);
            harness
                .run_pending_migrations(MIGRATIONS)
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            drop(harness.into_inner());
            anyhow::Ok(())
        })
    });
    tokio::task::spawn_blocking(move || match handle.join() {
        Ok(r) => r,
        Err(_) => bail!("the migration thread panicked"),
    })
    .await?
}

/// Runs `statement`, retrying while PostgreSQL reports the object in use ("being accessed by other users":
/// a just-closed session may linger for a moment on the server).
async fn retry_in_use(client: &Client, statement: &str) -> anyhow::Result<()> {
    let mut delay = Duration::from_millis(50);
    for attempt in 1..=IN_USE_ATTEMPTS {
        match client.batch_execute(statement).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(&SqlState::OBJECT_IN_USE) && attempt < IN_USE_ATTEMPTS => {
                tracing::debug!(%statement, attempt, "object in use, retrying");
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_millis(500));
            }
            Err(e) => return Err(anyhow::Error::new(e).context(statement.to_owned())),
        }
    }
    bail!("{statement}: still in use after {IN_USE_ATTEMPTS} attempts")
}

/// A client on the server's `postgres` database, for admin statements.
async fn admin_client(server: &str) -> anyhow::Result<Client> {
    connect(&url_with_database(server, "postgres")).await
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    let (client, connection) = tokio_postgres::connect(url, NoTls)
        .await
        .with_context(|| format!("connecting to {}", mailtrail_broker::redact(url)))?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!("test-support postgres connection ended: {e}");
        }
    });
    Ok(client)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_is_put_in_the_url_path() {
        assert_eq!(
            url_with_database("postgres://postgres@127.0.0.1:5432", "x"),
            "postgres://postgres@127.0.0.1:5432/x"
        );
        assert_eq!(
            url_with_database("postgres://u:p@h:1/old?sslmode=disable", "x"),
            "postgres://u:p@h:1/x?sslmode=disable"
        );
        assert_eq!(url_with_database("postgres://h/", "x"), "postgres://h/x");
    }

    #[test]
    fn template_name_is_stable_and_short() {
        let name = template_name();
        assert!(name.starts_with("mt_template_"));
        assert_eq!(name.len(), "mt_template_".len() + 12);
        assert_eq!(name, template_name());
    }
}
