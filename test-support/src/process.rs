//! Service binaries run as child processes, with their output in a log file per run.

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tokio::process::{Child, Command};

/// The workspace root (the parent of the test-support crate).
pub fn workspace_dir() -> PathBuf {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().unwrap_or(manifest).to_path_buf()
}

/// Where service logs go: `<workspace>/target/test-logs`.
pub fn test_log_dir() -> PathBuf {
    workspace_dir().join("target").join("test-logs")
}

/// A binary built by cargo into the same profile directory as the running test executable
/// (`target/<profile>/<name>`), for tests that run another crate's binary.
/// `cargo test --workspace` builds every binary before running tests; a test in the binary's own
/// crate should prefer `env!("CARGO_BIN_EXE_<name>")`.
pub fn target_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test-exe> → target/<profile>/<name>
    let profile_dir = exe
        .parent()
        .map(|deps| {
            if deps.file_name().is_some_and(|n| n == "deps") {
                deps.parent().unwrap_or(deps)
            } else {
                deps
            }
        })
        .map(Path::to_path_buf)
        .unwrap_or_default();
    profile_dir.join(format!("{name}{}", std::env::consts::EXE_SUFFIX))
}

/// A running service. Killed (SIGKILL) when dropped.
#[derive(Debug)]
pub struct ServiceProcess {
    name: String,
    child: Child,
    pid: u32,
    log_path: PathBuf,
    status: Option<ExitStatus>,
}

impl ServiceProcess {
    /// Starts `program` with `args` and extra environment `envs` (the test's own environment is
    /// inherited). Stdout and stderr are appended to `<workspace>/target/test-logs/<name>-….log`,
    /// whose path is printed to stderr. Must be called inside a tokio runtime.
    pub fn spawn(
        name: &str,
        program: impl AsRef<Path>,
        args: &[&str],
        envs: &[(&str, String)],
    ) -> anyhow::Result<ServiceProcess> {
        let program = program.as_ref();
        let dir = test_log_dir();
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let log_path = dir.join(format!("{name}-{:08x}.log", rand::random::<u32>()));
        let mut log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("opening {}", log_path.display()))?;
        let env_names: Vec<&str> = envs.iter().map(|(k, _)| *k).collect();
        writeln!(
            log,
            "=== {name}: {} {} (env set: {})",
            program.display(),
            args.join(" "),
            env_names.join(", ")
        )?;
        let stderr = log.try_clone()?;
        let mut command = Command::new(program);
        command
            .args(args)
            .envs(envs.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(stderr))
            .kill_on_drop(true);
        let child = command
            .spawn()
            .with_context(|| format!("starting {name} ({})", program.display()))?;
        let pid = child.id().context("the child has no pid")?;
        eprintln!(
            "test-support: {name} started (pid {pid}), log: {}",
            log_path.display()
        );
        Ok(ServiceProcess {
            name: name.to_owned(),
            child,
            pid,
            log_path,
            status: None,
        })
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The name given to [`spawn`](Self::spawn).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The log file.
    pub fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// Everything the process wrote so far (stdout and stderr, interleaved).
    pub fn log_contents(&self) -> String {
        std::fs::read(&self.log_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The exit status if the process has ended (reaping it), `None` while it runs.
    pub fn try_status(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = self.child.try_wait().ok().flatten();
        }
        self.status
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        self.try_status().is_none()
    }

    /// SIGKILL, then waits (briefly, blocking) until the process is reaped.
    pub fn kill(&mut self) {
        if self.try_status().is_some() {
            return;
        }
        let _ = self.child.start_kill();
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.try_status().is_none() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Sends SIGTERM (a graceful shutdown request); see [`wait_exit`](Self::wait_exit).
    pub fn terminate(&self) {
        self.signal(Signal::SIGTERM);
    }

    /// Sends `signal` unless the process is known to have exited.
    pub fn signal(&self, signal: Signal) {
        if self.status.is_some() {
            return;
        }
        let Ok(raw) = i32::try_from(self.pid) else {
            return;
        };
        if let Err(e) = kill(Pid::from_raw(raw), signal) {
            eprintln!(
                "test-support: cannot send {signal} to {} ({}): {e}",
                self.name, self.pid
            );
        }
    }

    /// Waits for the process to exit; an error (naming the log) if it is still running after
    /// `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        if let Some(status) = self.status {
            return Ok(status);
        }
        match tokio::time::timeout(timeout, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.status = Some(status);
                Ok(status)
            }
            Ok(Err(e)) => Err(e).with_context(|| format!("waiting for {}", self.name)),
            Err(_) => bail!(
                "{} (pid {}) still running after {timeout:?}; log: {}",
                self.name,
                self.pid,
                self.log_path.display()
            ),
        }
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        // `kill_on_drop` covers the rest; reaping here frees the service's ports for the next
        // test straight away.
        self.kill();
    }
}
