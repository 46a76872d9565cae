//! `sandstorm doctor`: what this host can run and why not — every local isolation tier
//! (probed with a real job), the kernel confinement local jobs get (seccomp, Landlock,
//! control groups), the remote providers' credentials, and the catalog's edge agents.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use clap::Args;
use sandstorm_features::{IsolationBackend, ProviderKind};
use sandstorm_runtime::{Availability, Engine, EngineConfig, HostFact};
use serde::Serialize;

use crate::common::{load_catalog, table};

#[derive(Debug, Args)]
pub(crate) struct DoctorArgs {
    /// Catalog TOML whose edge agents to list (default: the embedded catalog).
    #[arg(long, env = "SANDSTORM_CATALOG")]
    catalog: Option<PathBuf>,
    /// Print JSON instead of tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    backends: Vec<BackendReport>,
    host: Vec<HostFact>,
    providers: Vec<ProviderReport>,
    edge_agents: Vec<EdgeReport>,
}

#[derive(Debug, Serialize)]
struct ProviderReport {
    provider: String,
    configured: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct BackendReport {
    backend: IsolationBackend,
    works: bool,
    detail: String,
}

#[derive(Debug, Serialize)]
struct EdgeReport {
    name: String,
    regions: Vec<String>,
    enabled: bool,
    detail: String,
}

pub(crate) fn doctor(args: &DoctorArgs) -> Result<ExitCode> {
    // No warm pool: the doctor probes once and exits.
    let engine = Engine::with_config(&EngineConfig {
        gvisor_pool_size: 0,
    });
    let backends: Vec<BackendReport> = engine
        .availability()
        .iter()
        .map(|(backend, availability)| BackendReport {
            backend: *backend,
            works: availability.is_available(),
            detail: availability.explanation().to_owned(),
        })
        .collect();
    let catalog = load_catalog(args.catalog.as_deref())?;
    let edge_agents = catalog
        .providers
        .iter()
        .filter(|p| p.kind == ProviderKind::Edge)
        .map(|p| EdgeReport {
            name: p.name.clone(),
            regions: p.regions.clone(),
            enabled: p.enabled,
            detail: match (&p.endpoint, p.enabled) {
                (Some(endpoint), true) => format!("dispatches to {endpoint}"),
                (None, true) => "enabled but has no endpoint".to_owned(),
                (_, false) => "disabled in the catalog".to_owned(),
            },
        })
        .collect();
    let providers = sandstorm_adapters::Providers::from_env()
        .availability()
        .into_iter()
        .map(|(provider, availability)| ProviderReport {
            provider,
            configured: availability.is_available(),
            detail: match availability {
                Availability::Available { detail } => detail,
                Availability::Unavailable { reason } => {
                    format!("{reason} (the router offers this provider nowhere)")
                }
            },
        })
        .collect();
    let report = Report {
        backends,
        host: sandstorm_runtime::host_facts(),
        providers,
        edge_agents,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_report(&report);
    }
    let any_local = report.backends.iter().any(|b| b.works);
    Ok(if any_local {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn print_report(report: &Report) {
    let mut t = table();
    t.set_header(["local backend", "works", "detail"]);
    for b in &report.backends {
        t.add_row([
            b.backend.to_string(),
            if b.works { "yes" } else { "no" }.to_owned(),
            b.detail.clone(),
        ]);
    }
    println!("{t}");
    let mut t = table();
    t.set_header(["confinement", "enforced", "detail"]);
    for f in &report.host {
        t.add_row([
            f.name.to_owned(),
            if f.enforced { "yes" } else { "no" }.to_owned(),
            f.detail.clone(),
        ]);
    }
    println!("{t}");
    let mut t = table();
    t.set_header(["remote provider", "configured", "detail"]);
    for p in &report.providers {
        t.add_row([
            p.provider.clone(),
            if p.configured { "yes" } else { "no" }.to_owned(),
            p.detail.clone(),
        ]);
    }
    println!("{t}");
    if !report.edge_agents.is_empty() {
        let mut t = table();
        t.set_header(["edge agent", "regions", "status"]);
        for e in &report.edge_agents {
            t.add_row([e.name.clone(), e.regions.join(","), e.detail.clone()]);
        }
        println!("{t}");
    }
}

#[derive(Debug, Args)]
pub(crate) struct StatusArgs {
    /// Circuit-breaker state file (default: the one `sandstorm run` and `route` use).
    #[arg(long, env = "SANDSTORM_BREAKER_STATE")]
    breaker_state: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

/// `sandstorm status`: the circuit breakers (per provider/region) that `run` and `route`
/// share through their state file.
pub(crate) fn status(args: &StatusArgs) -> Result<ExitCode> {
    let path = args
        .breaker_state
        .clone()
        .unwrap_or_else(crate::common::default_breaker_state);
    let breakers = sandstorm_executor::Breakers::with_state_file(
        sandstorm_executor::BreakerConfig::default(),
        &path,
    );
    let snapshot = breakers.snapshot();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&snapshot)?);
        return Ok(ExitCode::SUCCESS);
    }
    if snapshot.is_empty() {
        println!(
            "no circuit breaker has recorded anything yet ({})",
            path.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = table();
    t.set_header([
        "provider/region",
        "state",
        "consecutive failures",
        "last error",
        "next probe",
    ]);
    for b in &snapshot {
        t.add_row([
            b.key.clone(),
            b.state.as_str().to_owned(),
            b.consecutive_failures.to_string(),
            b.last_error.clone().unwrap_or_else(|| "-".to_owned()),
            b.next_probe_at.map_or("-".to_owned(), |t| t.to_string()),
        ]);
    }
    println!("{t}");
    println!("state file: {}", path.display());
    Ok(ExitCode::SUCCESS)
}
