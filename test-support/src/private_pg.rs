//! A private PostgreSQL cluster in a temp dir on a free port, for faults the shared server must
//! never see (stop, immediate stop, kill -9). Run as the `postgres` user when we are root.

use crate::private_rabbit::{as_service_user, free_low_port, temp_dir_for};
use anyhow::{Context, bail};
use std::path::{Path, PathBuf};

/// A PostgreSQL cluster of the test's own, stopped (`-m immediate`) and deleted on drop, even
/// after a panic.
#[derive(Debug)]
pub struct PrivatePg {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
}

/// The directory of `initdb`/`pg_ctl`: `pg_config --bindir` if it holds them, else the newest
/// `/usr/lib/postgresql/*/bin` (no version is assumed).
pub fn pg_bin_dir() -> anyhow::Result<PathBuf> {
    if let Ok(out) = std::process::Command::new("pg_config")
        .arg("--bindir")
        .output()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if dir.join("initdb").exists() && dir.join("pg_ctl").exists() {
            return Ok(dir);
        }
    }
    let mut found: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .context("no PostgreSQL server binaries (pg_config, /usr/lib/postgresql)")?
        .filter_map(Result::ok)
        .filter_map(|e| {
            let version = e.file_name().to_string_lossy().parse::<u32>().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((version, bin))
        })
        .collect();
    found.sort();
    found
        .pop()
        .map(|(_, bin)| bin)
        .context("no initdb under /usr/lib/postgresql/*/bin")
}

impl PrivatePg {
    /// `initdb` (trust, user `postgres`) and start; about 1.5 s.
    pub async fn start() -> anyhow::Result<PrivatePg> {
        let bin = pg_bin_dir()?;
        let dir = temp_dir_for("mt-pg", "postgres")?;
        let pg = PrivatePg {
            dir,
            bin,
            port: free_low_port()?,
        };
        let data = pg.data_dir();
        pg.run(
            "initdb",
            &[
                "-D",
                path_str(&data)?,
                "-A",
                "trust",
                "-U",
                "postgres",
                "--no-sync",
            ],
        )
        .await?;
        // Small and fast to start; fsync stays on (what is acked must survive an immediate stop).
        let conf = "\nmax_connections = 100\nshared_buffers = 32MB\n";
        let mut file = std::fs::OpenOptions::new()
            .append(true)
            .open(data.join("postgresql.conf"))?;
        std::io::Write::write_all(&mut file, conf.as_bytes())?;
        pg.start_again().await?;
        Ok(pg)
    }

    /// The port it listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `postgres://postgres@127.0.0.1:<port>/<database>`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// Creates a database.
    pub async fn create_database(&self, name: &str) -> anyhow::Result<()> {
        let (client, connection) =
            tokio_postgres::connect(&self.url("postgres"), tokio_postgres::NoTls).await?;
        tokio::spawn(connection);
        client
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await?;
        Ok(())
    }

    /// Starts the (stopped) cluster and waits until it accepts connections.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        let options = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1",
            self.port,
            path_str(&self.dir)?
        );
        let log = self.dir.join("server.log");
        self.run(
            "pg_ctl",
            &[
                "-D",
                path_str(&data)?,
                "-l",
                path_str(&log)?,
                "-o",
                &options,
                "-w",
                "-t",
                "60",
                "start",
            ],
        )
        .await
    }

    /// `pg_ctl stop -m immediate`: every backend killed, no checkpoint; recovery at next start.
    pub async fn stop_immediate(&self) -> anyhow::Result<()> {
        let data = self.data_dir();
        self.run(
            "pg_ctl",
            &["-D", path_str(&data)?, "-m", "immediate", "-w", "stop"],
        )
        .await
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    async fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<()> {
        let program = self.bin.join(tool);
        let out = as_service_user("postgres", &program, args, &[])
            .output()
            .await
            .with_context(|| format!("running {}", program.display()))?;
        if !out.status.success() {
            bail!(
                "{tool} {}: {}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let data = self.data_dir();
        let _ = crate::private_rabbit::as_service_user_blocking(
            "postgres",
            &self.bin.join("pg_ctl"),
            &[
                "-D",
                &data.to_string_lossy(),
                "-m",
                "immediate",
                "-w",
                "-t",
                "10",
                "stop",
            ],
        );
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn path_str(path: &Path) -> anyhow::Result<&str> {
    path.to_str().context("a non-UTF-8 temp path")
}
