//! A private RabbitMQ node in a temp dir on free ports, for faults the shared broker must never
//! see (restart, `kill -9`). Run as the `rabbitmq` user when we are root (it shares that user's
//! Erlang cookie, so `rabbitmqctl` reaches it).

use anyhow::{Context, bail};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tokio::process::Command;

/// A RabbitMQ node of the test's own (`mtf<random>@localhost`), killed and deleted on drop, even
/// after a panic. Boots in about 7 s here; its queues and persistent messages survive
/// [`restart`](Self::restart) and [`kill9`](Self::kill9) + [`start_again`](Self::start_again).
#[derive(Debug)]
pub struct PrivateRabbit {
    dir: PathBuf,
    node: String,
    port: u16,
    dist_port: u16,
}

impl PrivateRabbit {
    /// Starts the node and waits until it takes AMQP connections.
    pub async fn start() -> anyhow::Result<PrivateRabbit> {
        let dir = temp_dir_for("mt-rmq", "rabbitmq")?;
        // An empty config file: the machine's /etc/rabbitmq/rabbitmq.conf binds 5672.
        std::fs::write(dir.join("rabbitmq.conf"), "")?;
        std::fs::write(dir.join("plugins"), "[].\n")?;
        for sub in ["mnesia", "log"] {
            std::fs::create_dir_all(dir.join(sub))?;
        }
        chown_to(&dir, "rabbitmq")?;
        let port = free_low_port()?;
        let rabbit = PrivateRabbit {
            node: format!("mtf{:08x}@localhost", rand::random::<u32>()),
            dir,
            port,
            // Dist ports below the ephemeral range too, so a client socket never holds them.
            dist_port: port - 10_000,
        };
        rabbit.start_again().await?;
        Ok(rabbit)
    }

    /// The AMQP port (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `amqp://guest:guest@127.0.0.1:<port>/%2f`.
    pub fn amqp_url(&self) -> String {
        format!("amqp://guest:guest@127.0.0.1:{}/%2f", self.port)
    }

    /// Starts the (stopped or killed) node and waits until its AMQP port answers.
    pub async fn start_again(&self) -> anyhow::Result<()> {
        let dir = self.dir.to_string_lossy().into_owned();
        let envs = [
            ("RABBITMQ_NODENAME", self.node.clone()),
            ("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1".to_owned()),
            ("RABBITMQ_NODE_PORT", self.port.to_string()),
            ("RABBITMQ_DIST_PORT", self.dist_port.to_string()),
            ("RABBITMQ_MNESIA_BASE", format!("{dir}/mnesia")),
            ("RABBITMQ_LOG_BASE", format!("{dir}/log")),
            ("RABBITMQ_ENABLED_PLUGINS_FILE", format!("{dir}/plugins")),
            ("RABBITMQ_CONFIG_FILE", format!("{dir}/rabbitmq.conf")),
            ("RABBITMQ_PID_FILE", format!("{dir}/pid")),
        ];
        let _ = std::fs::remove_file(self.dir.join("pid"));
        let status = as_service_user(
            "rabbitmq",
            Path::new("rabbitmq-server"),
            &["-detached"],
            &envs,
        )
        .status()
        .await
        .context("running rabbitmq-server")?;
        if !status.success() {
            bail!("rabbitmq-server -detached: {status}");
        }
        // The AMQP listener opens last in the boot: polling it is cheaper than rabbitmqctl.
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", self.port))
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "the private RabbitMQ node {} did not start within 90 s; logs in {}/log",
                    self.node,
                    dir
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A clean stop (`rabbitmqctl stop`), waiting until the node is gone.
    pub async fn stop(&self) -> anyhow::Result<()> {
        let out = as_service_user(
            "rabbitmq",
            Path::new("rabbitmqctl"),
            &["-n", &self.node, "stop"],
            &[],
        )
        .output()
        .await?;
        if !out.status.success() {
            bail!("rabbitmqctl stop: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(())
    }

    /// `stop` then `start_again`.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop().await?;
        self.start_again().await
    }

    /// `kill -9` of the node's Erlang VM (no goodbye to any client).
    pub fn kill9(&self) -> anyhow::Result<()> {
        let pid = self.pid().context("the node wrote no pid file")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid),
            nix::sys::signal::Signal::SIGKILL,
        )
        .context("kill -9 of the node")?;
        Ok(())
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(self.dir.join("pid"))
            .ok()?
            .trim()
            .parse()
            .ok()
    }
}

impl Drop for PrivateRabbit {
    fn drop(&mut self) {
        // kill -9 is instant and certain; nothing of the node is kept anyway.
        let _ = self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A free port below the ephemeral range (a client socket could take one above it between our
/// check and the server's bind), with `port - 10000` free too.
pub(crate) fn free_low_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let port = 20_000 + rand::random::<u16>() % 10_000;
        if TcpListener::bind(("127.0.0.1", port)).is_ok()
            && TcpListener::bind(("127.0.0.1", port - 10_000)).is_ok()
        {
            return Ok(port);
        }
    }
    bail!("no free port pair found")
}

fn running_as_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

/// A fresh directory in the temp dir, owned by `user` when we are root.
pub(crate) fn temp_dir_for(prefix: &str, user: &str) -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{:016x}", rand::random::<u64>()));
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    chown_to(&dir, user)?;
    Ok(dir)
}

fn chown_to(path: &Path, user: &str) -> anyhow::Result<()> {
    if !running_as_root() {
        return Ok(());
    }
    let status = std::process::Command::new("chown")
        .args(["-R", &format!("{user}:{user}")])
        .arg(path)
        .status()?;
    if !status.success() {
        bail!("chown {user} {}: {status}", path.display());
    }
    Ok(())
}

/// `program args` as `user` (through `runuser` when root, else as ourselves).
pub(crate) fn as_service_user(
    user: &str,
    program: &Path,
    args: &[&str],
    envs: &[(&str, String)],
) -> Command {
    let mut command = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    command
        .args(args)
        .envs(envs.iter().map(|(k, v)| (k, v)))
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Like [`as_service_user`], blocking (for `Drop`).
pub(crate) fn as_service_user_blocking(
    user: &str,
    program: &Path,
    args: &[&str],
) -> std::io::Result<std::process::ExitStatus> {
    let mut command = if running_as_root() {
        let mut c = std::process::Command::new("runuser");
        c.args(["-u", user, "--"]).arg(program);
        c
    } else {
        std::process::Command::new(program)
    };
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
}
