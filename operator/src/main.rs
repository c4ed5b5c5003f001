use clap::{Parser, Subcommand};
use mailtrail_operator::{Operator, OperatorConfig, db, keys};
use mailtrail_runtime::{init_tracing, run_with_drain_deadline, stop_on_signal};

/// mailtrail operator: accepts mailbox requests, records every email's history in PostgreSQL
/// and hands dispatch jobs to the dispatcher. Every flag can also be set with the
/// `MAILTRAIL_*` environment variable shown beside it.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    config: OperatorConfig,
    /// Log format: text or json.
    #[arg(
        long,
        env = "MAILTRAIL_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    log_format: String,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the operator (the default).
    Run,
    /// Apply pending database migrations and exit.
    Migrate,
    /// Manage API keys of the HTTP API.
    #[command(subcommand)]
    Keys(KeysCommand),
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Create a key and print it (it is shown only once).
    Create {
        /// A name to recognise the key by.
        #[arg(long)]
        name: String,
        /// Limit the key to one tenant (default: all tenants).
        #[arg(long)]
        tenant: Option<String>,
        /// `read` (histories, search, stats) or `admin` (also changes).
        #[arg(long, default_value = "read")]
        role: keys::Role,
    },
    /// List keys (never the keys themselves).
    List,
    /// Revoke a key by its `mtk_…` prefix or its id.
    Revoke {
        /// The key's prefix (as shown by `keys list`) or id.
        key: String,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_tracing(&cli.log_format);
    mailtrail_runtime::install_metrics();
    match cli.command.unwrap_or(Command::Run) {
        Command::Migrate => {
            let applied = db::migrate(&cli.config.database_url).await?;
            tracing::info!(count = applied.len(), migrations = ?applied, "migrations applied");
            Ok(())
        }
        Command::Keys(command) => manage_keys(&cli.config, command).await,
        Command::Run => {
            let shutdown = stop_on_signal();
            let drain_timeout = std::time::Duration::from_millis(cli.config.drain_timeout_ms);
            let operator = Operator::build(cli.config).await?;
            let stopped = shutdown.clone();
            run_with_drain_deadline(
                &stopped,
                drain_timeout,
                operator.run_until_stopped(shutdown),
            )
            .await
        }
    }
}

async fn manage_keys(config: &OperatorConfig, command: KeysCommand) -> anyhow::Result<()> {
    db::migrate(&config.database_url).await?;
    let pool = db::build_pool(&config.database_url, 1, config.database_timeout())?;
    let mut conn = pool.get().await?;
    match command {
        KeysCommand::Create { name, tenant, role } => {
            let (info, key) = keys::create(&mut conn, &name, tenant.as_deref(), role).await?;
            eprintln!(
                "created key {} ({}, {}); store it now, it is not shown again:",
                info.key_prefix,
                info.role,
                info.tenant.as_deref().unwrap_or("all tenants")
            );
            println!("{key}");
        }
        KeysCommand::List => {
            println!(
                "{:<17} {:<8} {:<16} {:<20} {:<26} status",
                "prefix", "role", "tenant", "name", "created"
            );
            for k in keys::list(&mut conn).await? {
                let status = match k.revoked_at {
                    Some(at) => format!("revoked {}", at.format("%Y-%m-%d %H:%M")),
                    None => "active".to_owned(),
                };
                println!(
                    "{:<17} {:<8} {:<16} {:<20} {:<26} {status}",
                    k.key_prefix,
                    k.role,
                    k.tenant.as_deref().unwrap_or("*"),
                    k.name,
                    k.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string()
                );
            }
        }
        KeysCommand::Revoke { key } => {
            if keys::revoke(&mut conn, &key).await? {
                eprintln!("revoked {key}");
            } else {
                anyhow::bail!("no active key {key:?}: see `operator keys list`");
            }
        }
    }
    Ok(())
}
