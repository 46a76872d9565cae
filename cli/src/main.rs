//! The `sandstorm` command line: generate telemetry, train models, route and run requests
//! (exploring on request), evaluate the routing on real data and new models on logged
//! decisions, write and publish routing policies, the router service
//! (`serve`, `mcp`), SQL over telemetry (`telemetry`), and the quickstart that does the whole
//! loop on embedded defaults.

mod common;
mod doctor;
mod eval;
mod eval_cmd;
mod models;
mod offline;
mod policy;
mod quickstart;
mod report;
mod run;
mod serve;
mod telemetry;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "sandstorm",
    version,
    about = "Decide where code should run, run it there, and learn from the result"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Rank every candidate for a request and print the decision.
    Route(RouteArgs),
    /// Route a request and execute it when the winner is a local backend.
    Run(RunArgs),
    /// Generate telemetry, train, route and run example requests, all on embedded defaults.
    Quickstart(quickstart::QuickstartArgs),
    /// Train the latency, cost and failure models from telemetry Parquet.
    Train(TrainArgs),
    /// Synthetic and imported datasets.
    Datasets {
        #[command(subcommand)]
        command: DatasetsCommand,
    },
    /// Estimate how a model set would have decided on logged decisions (IPS, self-normalised
    /// IPS, doubly robust) from telemetry with selection probabilities.
    EvalOffline(offline::EvalOfflineArgs),
    /// Evaluate the routing on real measurements against baselines and the oracle.
    Eval {
        #[command(subcommand)]
        dataset: EvalDataset,
    },
    /// Inspect or check a catalog.
    Catalog {
        #[command(subcommand)]
        command: CatalogCommand,
    },
    /// Write, test, replay and publish routing policies (WebAssembly).
    Policy {
        #[command(subcommand)]
        command: policy::PolicyCommand,
    },
    /// Run the router service: the HTTP API (route, run, logs, cancel, models, catalog,
    /// metrics, OpenAPI) with API keys and per-tenant limits.
    Serve(serve::ServeArgs),
    /// Serve the MCP protocol on stdin/stdout so an AI agent can route and run code.
    Mcp(serve::McpArgs),
    /// Query telemetry with SQL, print reports, compact write-ahead logs.
    Telemetry {
        #[command(subcommand)]
        command: telemetry::TelemetryCommand,
    },
    /// Make a new random API key and print it with the SHA-256 the configuration stores.
    ApiKey(serve::ApiKeyArgs),
    /// Show the circuit breakers (per provider/region) that `run` and `route` share.
    Status(doctor::StatusArgs),
    /// Serve this host's local runtime to routers elsewhere (an edge agent), authenticated
    /// with a bearer token.
    Agent(serve::AgentArgs),
    /// Check what this host can run: local isolation tiers (probed with a real job), kernel
    /// confinement, edge agents.
    Doctor(doctor::DoctorArgs),
    /// The model registry: list versions, promote a challenger, roll back the champion.
    Models {
        #[command(subcommand)]
        command: models::ModelsCommand,
    },
}

/// Options shared by commands that route.
#[derive(Debug, Args)]
struct RoutingArgs {
    /// Model directory written by `sandstorm train`, or an s3:// URL of a model directory or
    /// registry (its champion), downloaded into ~/.cache/sandstorm/models/.
    #[arg(long, env = "SANDSTORM_MODELS")]
    models: PathBuf,
    /// Request file (.json, .yaml or .yml).
    #[arg(long)]
    request: PathBuf,
    /// Catalog TOML (default: the embedded catalog).
    #[arg(long, env = "SANDSTORM_CATALOG")]
    catalog: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
    /// Policy registry: the newest signed version of each policy runs on the decision.
    #[arg(long, env = "SANDSTORM_POLICIES")]
    policies: Option<PathBuf>,
    /// Public keys whose signatures the router trusts (one hex key per line).
    #[arg(long, env = "SANDSTORM_TRUSTED_KEYS")]
    trusted_keys: Option<PathBuf>,
    /// Circuit-breaker state shared by `sandstorm` processes (default:
    /// `$XDG_STATE_HOME/sandstorm/breakers.json` or `~/.local/state/sandstorm/breakers.json`).
    #[arg(long, env = "SANDSTORM_BREAKER_STATE")]
    breaker_state: Option<PathBuf>,
    /// Consecutive infrastructure failures that open a provider/region's circuit breaker.
    #[arg(long, env = "SANDSTORM_BREAKER_THRESHOLD", default_value_t = 3)]
    breaker_threshold: u32,
    /// Seconds an open breaker waits before letting one probe through.
    #[arg(long, env = "SANDSTORM_BREAKER_COOLDOWN_S", default_value_t = 30.0)]
    breaker_cooldown_s: f64,
    /// Explore among the feasible candidates: `off` (default), `epsilon:E` (a uniformly
    /// random feasible candidate with probability E) or `thompson[:DRAWS]` (sample each
    /// candidate's predicted distribution); see docs/exploration.md.
    #[arg(
        long,
        env = "SANDSTORM_EXPLORE",
        value_name = "off|epsilon:E|thompson[:DRAWS]"
    )]
    explore: Option<sandstorm_router::Exploration>,
}

#[derive(Debug, Args)]
struct RouteArgs {
    #[command(flatten)]
    routing: RoutingArgs,
}

#[derive(Debug, Args)]
struct RunArgs {
    #[command(flatten)]
    routing: RoutingArgs,
    /// Telemetry location that receives the run's rows: a directory or an s3:// URL (spooled
    /// locally, then published).
    #[arg(
        long,
        env = "SANDSTORM_TELEMETRY",
        default_value = "sandstorm-telemetry"
    )]
    telemetry_out: PathBuf,
}

#[derive(Debug, Args)]
struct TrainArgs {
    /// Telemetry: a directory of Parquet files or an s3:// URL.
    #[arg(long)]
    telemetry: PathBuf,
    /// Model directory to write, or an s3:// URL to upload it to.
    #[arg(long)]
    out: PathBuf,
    /// Print the metadata as JSON.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    tuning: models::TrainTuning,
}

#[derive(Debug, Subcommand)]
enum DatasetsCommand {
    /// Simulate telemetry from the documented test world (docs/simulator.md).
    Generate {
        #[arg(long, default_value_t = 20_000)]
        rows: usize,
        #[arg(long, default_value_t = 7)]
        seed: u64,
        #[arg(long)]
        out: PathBuf,
        /// Catalog TOML (default: the embedded catalog).
        #[arg(long, env = "SANDSTORM_CATALOG")]
        catalog: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
enum EvalDataset {
    /// The Azure VM Noise Dataset 2024 (docs/evaluation.md describes the protocol).
    AzureVmNoise(eval_cmd::EvalArgs),
}

#[derive(Debug, Subcommand)]
enum CatalogCommand {
    /// Print a catalog (the embedded default when no file is given) to start editing from.
    Show {
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// Validate a catalog and list its candidates.
    Check {
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SANDSTORM_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Route(args) => run::route(&args.routing),
        Command::Run(args) => run::run(&args.routing, &args.telemetry_out),
        Command::Quickstart(args) => quickstart::quickstart(&args),
        Command::Train(args) => models::train(&args.telemetry, &args.out, args.json, &args.tuning),
        Command::Datasets {
            command:
                DatasetsCommand::Generate {
                    rows,
                    seed,
                    out,
                    catalog,
                },
        } => run::generate(rows, seed, &out, catalog.as_deref()),
        Command::Eval {
            dataset: EvalDataset::AzureVmNoise(args),
        } => eval_cmd::run(&args),
        Command::EvalOffline(args) => offline::run(&args),
        Command::Catalog { command } => match command {
            CatalogCommand::Show { catalog } => run::catalog_show(catalog.as_deref()),
            CatalogCommand::Check { catalog } => run::catalog_check(catalog.as_deref()),
        },
        Command::Policy { command } => policy::command(command),
        Command::Serve(args) => serve::serve(&args),
        Command::Mcp(args) => serve::mcp(&args),
        Command::ApiKey(args) => serve::api_key(&args),
        Command::Doctor(args) => doctor::doctor(&args),
        Command::Agent(args) => serve::agent(&args),
        Command::Status(args) => doctor::status(&args),
        Command::Telemetry { command } => telemetry::command(command),
        Command::Models { command } => models::command(command),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
