//! The `serve`, `mcp`, `agent` and `api-key` commands: thin wrappers around
//! `sandstorm_service` that read the configuration, start a tokio runtime and report errors.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result, bail};
use clap::Args;
use sandstorm_service::{Config, Service};

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// Service configuration (TOML; see docs/service.md and examples/service.toml).
    #[arg(long, env = "SANDSTORM_SERVICE_CONFIG")]
    config: PathBuf,
    /// Listen on this address instead of the configuration's `listen`.
    #[arg(long, env = "SANDSTORM_LISTEN")]
    listen: Option<std::net::SocketAddr>,
    /// Worker threads of the async runtime (default: one per core).
    #[arg(long, env = "SANDSTORM_WORKERS")]
    workers: Option<usize>,
}

#[derive(Debug, Args)]
pub(crate) struct McpArgs {
    /// Service configuration (models, catalog, telemetry, limits); API keys are not used
    /// on stdio. Either this or `--models`.
    #[arg(long, env = "SANDSTORM_SERVICE_CONFIG", conflicts_with = "models")]
    config: Option<PathBuf>,
    /// Model directory written by `sandstorm train` (when no `--config` is given).
    #[arg(long, env = "SANDSTORM_MODELS")]
    models: Option<PathBuf>,
    /// Catalog TOML (default: the embedded catalog), with `--models`.
    #[arg(long, env = "SANDSTORM_CATALOG", requires = "models")]
    catalog: Option<PathBuf>,
    /// Directory that receives each run's telemetry row (Parquet), with `--models`.
    #[arg(long, env = "SANDSTORM_TELEMETRY", requires = "models")]
    telemetry_out: Option<PathBuf>,
    /// Tenant the runs are recorded for.
    #[arg(long, env = "SANDSTORM_MCP_TENANT", default_value = sandstorm_service::mcp::DEFAULT_TENANT)]
    tenant: String,
}

#[derive(Debug, Args)]
pub(crate) struct AgentArgs {
    /// Address to serve the agent API on, e.g. 0.0.0.0:7070.
    #[arg(long, env = "SANDSTORM_AGENT_LISTEN")]
    listen: std::net::SocketAddr,
    /// File holding the bearer token routers must present (at least 16 characters).
    #[arg(long, env = "SANDSTORM_AGENT_TOKEN_FILE")]
    token_file: PathBuf,
    /// The agent's name: the catalog's `edge` provider that points at it.
    #[arg(long, env = "SANDSTORM_AGENT_NAME", default_value = "edge")]
    name: String,
    /// The region (POP) this agent stands in, as in the catalog.
    #[arg(long, env = "SANDSTORM_AGENT_REGION", default_value = "local")]
    region: String,
    /// gVisor sandboxes kept warm.
    #[arg(long, env = "SANDSTORM_GVISOR_POOL", default_value_t = sandstorm_runtime::DEFAULT_GVISOR_POOL_SIZE)]
    gvisor_pool: usize,
}

#[derive(Debug, Args)]
pub(crate) struct ApiKeyArgs {
    /// Tenant to print in the configuration snippet.
    #[arg(long, default_value = "default")]
    tenant: String,
    /// Add the `admin` scope in the snippet.
    #[arg(long)]
    admin: bool,
}

fn runtime(workers: Option<usize>) -> Result<tokio::runtime::Runtime> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = workers {
        builder.worker_threads(n.max(1));
    }
    builder.build().context("starting the async runtime")
}

pub(crate) fn serve(args: &ServeArgs) -> Result<ExitCode> {
    let mut config = Config::load(&args.config)?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if config.api_keys.is_empty() {
        tracing::warn!(
            "no api_keys configured: every request except /healthz and /readyz will get 401"
        );
    }
    runtime(args.workers)?.block_on(async {
        let service = Service::bind(config).await?;
        let addr = service.local_addr()?;
        eprintln!("sandstorm service listening on http://{addr}");
        service.run(sandstorm_service::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn mcp(args: &McpArgs) -> Result<ExitCode> {
    let config = match (&args.config, &args.models) {
        (Some(path), _) => Config::load(path)?,
        (None, Some(models)) => {
            let mut config = Config::new(models);
            config.catalog.clone_from(&args.catalog);
            config.telemetry_dir.clone_from(&args.telemetry_out);
            config
        }
        (None, None) => bail!("give --config FILE or --models DIR"),
    };
    runtime(None)?.block_on(sandstorm_service::mcp::serve_stdio(&config, &args.tenant))?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn agent(args: &AgentArgs) -> Result<ExitCode> {
    let token = std::fs::read_to_string(&args.token_file)
        .with_context(|| format!("cannot read the token file {}", args.token_file.display()))?;
    let config = sandstorm_service::AgentConfig {
        listen: args.listen,
        name: args.name.clone(),
        region: args.region.clone(),
        token: token.trim().to_owned(),
        engine: sandstorm_runtime::EngineConfig {
            gvisor_pool_size: args.gvisor_pool,
        },
        max_retained_runs: 10_000,
        max_body_bytes: 16 * 1024 * 1024,
    };
    runtime(None)?.block_on(async {
        let agent = sandstorm_service::Agent::bind(config).await?;
        let addr = agent.local_addr()?;
        eprintln!("sandstorm agent {} listening on http://{addr}", args.name);
        agent.run(sandstorm_service::shutdown_signal()).await?;
        anyhow::Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}

pub(crate) fn api_key(args: &ApiKeyArgs) -> Result<ExitCode> {
    let key = format!(
        "ss_{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    );
    println!("api key (give it to the client; it is not stored): {key}");
    println!();
    println!("[[api_keys]]");
    println!("sha256 = \"{}\"", sandstorm_service::hash_api_key(&key));
    println!("tenant = \"{}\"", args.tenant);
    if args.admin {
        println!("scopes = [\"admin\"]");
    }
    Ok(ExitCode::SUCCESS)
}
