//! Child processes (the services under test, started from their release binaries) and what
//! `/proc` says about any process: CPU seconds and peak resident memory.

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

/// Clock ticks per second of `/proc/<pid>/stat` times (`getconf CLK_TCK`; 100 on Linux).
fn clock_ticks() -> f64 {
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|o| String::from_utf8(o.stdout).ok())
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(100.0)
    })
}

/// The fields of `/proc/<pid>/stat` after the command name (which may hold spaces), with the
/// command name: index 0 is the state, 1 the parent pid, 11/12 utime/stime, 13/14 the reaped
/// children's cutime/cstime.
fn stat_fields(pid: u32) -> Option<(String, Vec<String>)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat[open + 1..close].to_owned();
    let rest = stat[close + 1..]
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    Some((comm, rest))
}

fn ticks(fields: &[String], index: usize) -> f64 {
    fields
        .get(index)
        .and_then(|f| f.parse::<f64>().ok())
        .unwrap_or(0.0)
}

/// User + system CPU seconds of one process so far; `None` once it is gone.
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let (_, fields) = stat_fields(pid)?;
    Some((ticks(&fields, 11) + ticks(&fields, 12)) / clock_ticks())
}

/// Peak resident memory (`VmHWM`) of a process, in KiB.
pub fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// CPU seconds of every process whose command name is `comm`, plus the CPU of their children
/// that already exited and were reaped by a process outside the group (a PostgreSQL backend that
/// ended is counted in the postmaster's cutime/cstime). Differences of two readings are the
/// group's CPU in between.
pub fn group_cpu_seconds(comm: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    let mut members: BTreeMap<u32, Vec<String>> = BTreeMap::new();
    for entry in entries.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        if let Some((name, fields)) = stat_fields(pid)
            && name == comm
        {
            members.insert(pid, fields);
        }
    }
    let mut total = 0.0;
    for fields in members.values() {
        total += ticks(fields, 11) + ticks(fields, 12);
        let parent: u32 = fields.get(1).and_then(|p| p.parse().ok()).unwrap_or(0);
        if !members.contains_key(&parent) {
            // The group's root (the postmaster): its reaped children count too.
            total += ticks(fields, 13) + ticks(fields, 14);
        }
    }
    total / clock_ticks()
}

/// This process's own CPU seconds (the load generator).
pub fn own_cpu_seconds() -> f64 {
    cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// A service binary running as a child, its output in a log file.
pub struct Service {
    pub name: String,
    child: tokio::process::Child,
    pid: u32,
    pub log: PathBuf,
}

impl Service {
    pub fn spawn(
        name: &str,
        binary: &Path,
        args: &[&str],
        env: &[(String, String)],
        log_dir: &Path,
    ) -> anyhow::Result<Service> {
        std::fs::create_dir_all(log_dir)?;
        let log = log_dir.join(format!("{name}.log"));
        let file = std::fs::File::create(&log)?;
        let child = tokio::process::Command::new(binary)
            .args(args)
            .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| {
                format!(
                    "cannot start {} (build it: cargo build --release)",
                    binary.display()
                )
            })?;
        let pid = child.id().context("the child has no pid")?;
        Ok(Service {
            name: name.to_owned(),
            child,
            pid,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    pub fn cpu_seconds(&self) -> f64 {
        cpu_seconds(self.pid).unwrap_or(0.0)
    }

    pub fn peak_rss_kib(&self) -> u64 {
        peak_rss_kib(self.pid).unwrap_or(0)
    }

    /// Fails when the process has exited (it should run until stopped).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            anyhow::bail!(
                "{} exited early ({status}); see {}",
                self.name,
                self.log.display()
            );
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after `grace`.
    pub async fn stop(&mut self, grace: Duration) {
        let _ = kill(Pid::from_raw(self.pid as i32), Signal::SIGTERM);
        let started = Instant::now();
        while started.elapsed() < grace {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let _ = self.child.kill().await;
    }
}

/// A free TCP port on 127.0.0.1 (bound and released: good enough for a benchmark's children).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Waits for `url` to answer 200 (a service's `/readyz`).
pub async fn wait_ready(
    client: &reqwest::Client,
    url: &str,
    service: &mut Service,
    timeout: Duration,
) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        service.check_running()?;
        if let Ok(response) = client.get(url).send().await
            && response.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(
            started.elapsed() < timeout,
            "{} not ready at {url} after {timeout:?}; see {}",
            service.name,
            service.log.display()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
