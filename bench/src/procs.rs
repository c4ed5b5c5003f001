//! Child processes (the services under test, started from their release binaries) and what
//! `/proc` says about any process: CPU seconds and peak resident memory.

use anyhow::Context;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
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

/// The pid of the process listening on TCP `port` (IPv4 or IPv6), from `/proc/net/tcp*` and
/// the processes' open sockets. Several RabbitMQ or PostgreSQL servers may run on one machine
/// (private ones for fault tests); the one the benchmark talks to is the one on its port.
pub fn listener_pid(port: u16) -> Option<u32> {
    let mut inodes = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        for line in text.lines().skip(1) {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(local), Some(state), Some(inode)) =
                (fields.get(1), fields.get(3), fields.get(9))
            else {
                continue;
            };
            let local_port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            if *state == "0A" && local_port == Some(port) {
                inodes.push(format!("socket:[{inode}]"));
            }
        }
    }
    if inodes.is_empty() {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            if let Ok(target) = std::fs::read_link(fd.path())
                && inodes.iter().any(|i| target.as_os_str() == i.as_str())
            {
                return Some(pid);
            }
        }
    }
    None
}

/// CPU seconds of a server process and its children (PostgreSQL's postmaster and its backends,
/// RabbitMQ's beam.smp and its helpers), including children that already exited (the root's
/// cutime/cstime). The difference of two readings is the server's CPU in between.
pub fn tree_cpu_seconds(root: u32) -> f64 {
    let Some((_, root_fields)) = stat_fields(root) else {
        return 0.0;
    };
    let mut total: f64 = [11, 12, 13, 14]
        .iter()
        .map(|i| ticks(&root_fields, *i))
        .sum();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for entry in entries.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            if let Some((_, fields)) = stat_fields(pid)
                && fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(root)
            {
                total += ticks(&fields, 11) + ticks(&fields, 12);
            }
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
