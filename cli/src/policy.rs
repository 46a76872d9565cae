//! `sandstorm policy ...`: the policy author's workflow (new, build, test, replay, keygen,
//! publish, list) and loading a signed registry for the routing commands.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use sandstorm_features::telemetry::{TelemetryRecord, from_micros};
use sandstorm_features::{
    Candidate, DecisionContext, Language, RunRequest, StrategyKind, static_violation,
};
use sandstorm_policies_wasm::{
    Manifest, PolicyCandidate, PolicyEngine, PolicyKey, PolicyKind, PolicyLimits, PolicyOutcome,
    PolicyStore, Registry, SignedFiles, TrustedKeys, author,
};
use sandstorm_router::{ModelSet, Router, RouterError, Scratch};
use serde::Deserialize;

use crate::common;

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCommand {
    /// Scaffold a new policy crate from the SDK.
    New {
        /// Directory to create; its last component is the policy name (a-z, 0-9, '-').
        dir: PathBuf,
        /// The policy SDK crate (default: the one in this source tree).
        #[arg(long, env = "SANDSTORM_POLICY_SDK")]
        sdk: Option<PathBuf>,
    },
    /// Build a policy crate for wasm32 and wrap it as a component.
    Build {
        /// The policy crate.
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
    /// Run a policy against the request fixtures in DIR/tests/*.yaml and check its verdicts.
    Test(TestArgs),
    /// What a policy would have changed on past decisions recorded in telemetry.
    Replay(ReplayArgs),
    /// Create an ed25519 signing key (FILE) and its public key (FILE.pub).
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Build, check, sign and store a policy version in a registry.
    Publish(PublishArgs),
    /// List the versions in a registry and whether they verify.
    List {
        #[arg(long, env = "SANDSTORM_POLICIES")]
        registry: PathBuf,
        /// Trusted public keys (one hex key per line); without it signatures are not checked.
        #[arg(long, env = "SANDSTORM_TRUSTED_KEYS")]
        trusted_keys: Option<PathBuf>,
        #[arg(long)]
        json: bool,
    },
}

/// Which policy a command runs: a crate to build, or a built component.
#[derive(Debug, Args)]
pub(crate) struct PolicySource {
    /// The policy crate (built first unless --wasm is given).
    #[arg(default_value = ".")]
    dir: PathBuf,
    /// A built policy component, instead of building DIR.
    #[arg(long)]
    wasm: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct TestArgs {
    #[command(flatten)]
    source: PolicySource,
    /// Fixture files or directories (default: DIR/tests).
    #[arg(long)]
    fixtures: Vec<PathBuf>,
    /// Catalog TOML (default: the embedded catalog).
    #[arg(long, env = "SANDSTORM_CATALOG")]
    catalog: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub(crate) struct ReplayArgs {
    #[command(flatten)]
    source: PolicySource,
    /// Telemetry: a directory of Parquet files or an s3:// URL.
    #[arg(long, env = "SANDSTORM_TELEMETRY")]
    telemetry: PathBuf,
    /// Model directory to re-decide the past requests with.
    #[arg(long, env = "SANDSTORM_MODELS")]
    models: PathBuf,
    /// Replay at most this many decisions (the first ones in the files).
    #[arg(long)]
    limit: Option<usize>,
    /// Catalog TOML (default: the embedded catalog).
    #[arg(long, env = "SANDSTORM_CATALOG")]
    catalog: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
pub(crate) struct PublishArgs {
    #[command(flatten)]
    source: PolicySource,
    /// The author's signing key (from `sandstorm policy keygen`).
    #[arg(long, env = "SANDSTORM_POLICY_KEY")]
    key: PathBuf,
    /// Registry directory to publish into.
    #[arg(
        long,
        env = "SANDSTORM_POLICIES",
        required_unless_present = "service",
        conflicts_with = "service"
    )]
    registry: Option<PathBuf>,
    /// Or a running service to upload to (`POST /v1/policies`), e.g. `http://127.0.0.1:8080`:
    /// it verifies the signature against its trusted keys, stores the version in its registry
    /// and starts using it.
    #[arg(long, env = "SANDSTORM_URL")]
    service: Option<String>,
    /// API key with the `admin` scope, for `--service`.
    #[arg(
        long,
        env = "SANDSTORM_API_KEY",
        hide_env_values = true,
        requires = "service"
    )]
    api_key: Option<String>,
    /// Policy name (default: DIR/policy.toml's `name`).
    #[arg(long)]
    name: Option<String>,
    /// Version (default: DIR/policy.toml's `version`).
    #[arg(long)]
    version: Option<String>,
    /// `filter` (fails closed) or `scorer` (fails open) (default: DIR/policy.toml's `kind`).
    #[arg(long)]
    kind: Option<String>,
    /// Override the failure mode: `fail_closed` or `fail_open`.
    #[arg(long)]
    failure_mode: Option<String>,
    #[arg(long, env = "USER", default_value = "unknown")]
    author: String,
}

pub(crate) fn command(cmd: PolicyCommand) -> Result<ExitCode> {
    match cmd {
        PolicyCommand::New { dir, sdk } => {
            let sdk = sdk.unwrap_or_else(author::sdk_dir);
            author::scaffold(&dir, &sdk)?;
            println!(
                "created policy {} (edit src/lib.rs, then: sandstorm policy test {})",
                dir.display(),
                dir.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Build { dir } => {
            let path = build(&dir)?;
            println!("{}", path.display());
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Test(args) => test(&args),
        PolicyCommand::Replay(args) => replay(&args),
        PolicyCommand::Keygen { out } => {
            let key = PolicyKey::generate();
            let public = key.write(&out)?;
            println!("secret key: {} (keep it private)", out.display());
            println!("public key: {} = {}", public.display(), key.public_hex());
            println!("trust it on the router: add the public key to its --trusted-keys file");
            Ok(ExitCode::SUCCESS)
        }
        PolicyCommand::Publish(args) => publish(&args),
        PolicyCommand::List {
            registry,
            trusted_keys,
            json,
        } => list(&registry, trusted_keys.as_deref(), json),
    }
}

fn build(dir: &Path) -> Result<PathBuf> {
    let spin = crate::run::spinner(&format!("building policy {}", dir.display()));
    let path = author::build(dir, None, None);
    spin.finish_and_clear();
    Ok(path?)
}

impl PolicySource {
    fn component(&self) -> Result<(PathBuf, Vec<u8>)> {
        let path = match &self.wasm {
            Some(p) => p.clone(),
            None => build(&self.dir)?,
        };
        let bytes = std::fs::read(&path)
            .with_context(|| format!("cannot read policy {}", path.display()))?;
        Ok((path, bytes))
    }

    /// A store holding only this policy, in deterministic (fuel) mode, with the name and kind
    /// of DIR/policy.toml (default: a filter).
    fn store(&self) -> Result<PolicyStore> {
        let meta = policy_toml(&self.dir)?;
        let kind = meta
            .kind
            .as_deref()
            .map(parse_kind)
            .transpose()?
            .unwrap_or(PolicyKind::Filter);
        let (path, bytes) = self.component()?;
        let name = meta.name.unwrap_or_else(|| "policy".to_owned());
        let store = PolicyStore::new(PolicyEngine::new(PolicyLimits::deterministic())?);
        let manifest = Manifest::for_module(&name, "0.0.0", "local", kind, &bytes)?;
        store
            .install_module(manifest, &bytes)
            .with_context(|| format!("loading {}", path.display()))?;
        Ok(store)
    }
}

/// `policy.toml` next to a policy crate.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyToml {
    name: Option<String>,
    version: Option<String>,
    kind: Option<String>,
    #[serde(default)]
    description: String,
}

fn policy_toml(dir: &Path) -> Result<PolicyToml> {
    let path = dir.join("policy.toml");
    if !path.exists() {
        return Ok(PolicyToml::default());
    }
    let text = std::fs::read_to_string(&path)?;
    toml::from_str(&text).with_context(|| format!("{}", path.display()))
}

fn parse_kind(kind: &str) -> Result<PolicyKind> {
    match kind {
        "filter" => Ok(PolicyKind::Filter),
        "scorer" => Ok(PolicyKind::Scorer),
        other => bail!("policy kind {other:?}: expected filter or scorer"),
    }
}

/// Loads the newest trusted version of every policy in `registry` into a serving store,
/// printing refused versions (the router then runs without them).
pub(crate) fn load_registry(registry: &Path, trusted_keys: Option<&Path>) -> Result<PolicyStore> {
    let trusted_keys = trusted_keys.context(
        "--policies needs --trusted-keys (or SANDSTORM_TRUSTED_KEYS): the router only runs policies signed by keys it trusts",
    )?;
    let trust = TrustedKeys::from_file(trusted_keys)?;
    let store = PolicyStore::new(PolicyEngine::new(PolicyLimits::default())?);
    let report = store.sync(&Registry::open(registry), &trust)?;
    for (id, err) in &report.refused {
        eprintln!("warning: policy {id} not loaded: {err}");
    }
    Ok(store)
}

// ---------------------------------------------------------------------------------------------
// policy test

/// One fixture: a request and the verdicts the policy must give.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    request: serde_json::Value,
    /// Predictions given to the policy: the first matching entry wins; candidates no entry
    /// matches get list-price cost for `assume_runtime_s` and latency from their RTT.
    #[serde(default)]
    predictions: Vec<PredictionFixture>,
    #[serde(default = "one_second")]
    assume_runtime_s: f64,
    expect: Vec<Expectation>,
}

fn one_second() -> f64 {
    1.0
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PredictionFixture {
    candidates: String,
    cost_usd: Option<f64>,
    latency_p50_ms: Option<f64>,
    latency_p95_ms: Option<f64>,
    failure_prob: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Expectation {
    /// Candidate ids (`provider/backend/region`), `*` matches any run of characters.
    candidates: String,
    /// `reject`, `keep` (not rejected), `adjust` (kept with a factor), `error` (the policy
    /// fails for this request).
    verdict: String,
    /// Reason must contain this text.
    #[serde(default)]
    reason_contains: Option<String>,
    /// Exact factor expected (with `adjust`).
    #[serde(default)]
    factor: Option<f64>,
}

/// Matches `*`-globs.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || !text[first.len()..].ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

fn fixture_files(args: &TestArgs) -> Result<Vec<PathBuf>> {
    let roots = if args.fixtures.is_empty() {
        vec![args.source.dir.join("tests")]
    } else {
        args.fixtures.clone()
    };
    let mut files = Vec::new();
    for root in roots {
        if root.is_dir() {
            let mut found: Vec<PathBuf> = std::fs::read_dir(&root)
                .with_context(|| format!("cannot read {}", root.display()))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")))
                .collect();
            found.sort();
            files.extend(found);
        } else {
            files.push(root);
        }
    }
    if files.is_empty() {
        bail!(
            "no fixtures (*.yaml) found; write one under {}/tests",
            args.source.dir.display()
        );
    }
    Ok(files)
}

fn test(args: &TestArgs) -> Result<ExitCode> {
    let files = fixture_files(args)?;
    let store = args.source.store()?;
    let mut worker = store.worker();
    let catalog = common::load_catalog(args.catalog.as_deref())?;
    let all: Vec<Arc<Candidate>> = catalog.candidates().into_iter().map(Arc::new).collect();
    let mut failed = 0usize;
    for file in &files {
        let text = std::fs::read_to_string(file)
            .with_context(|| format!("cannot read fixture {}", file.display()))?;
        let fixture: Fixture =
            serde_norway::from_str(&text).with_context(|| format!("fixture {}", file.display()))?;
        let request = RunRequest::from_json(&fixture.request.to_string())
            .with_context(|| format!("fixture {}: request", file.display()))?;
        let cands: Vec<&Arc<Candidate>> = all
            .iter()
            .filter(|c| static_violation(&request, c).is_none())
            .collect();
        let inputs: Vec<PolicyCandidate<'_>> = cands
            .iter()
            .map(|c| fixture_prediction(&fixture, &request, c))
            .collect();
        let outcomes = worker.evaluate(&request, &DecisionContext::now(), 1, &inputs);
        let problems = check(&fixture.expect, &cands, &outcomes[0]);
        if problems.is_empty() {
            println!("PASS {} ({} candidates)", file.display(), cands.len());
        } else {
            failed += 1;
            println!("FAIL {}", file.display());
            for p in problems {
                println!("  - {p}");
            }
        }
    }
    println!("{} passed, {failed} failed", files.len() - failed);
    Ok(if failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn fixture_prediction<'a>(
    fixture: &Fixture,
    request: &RunRequest,
    c: &'a Arc<Candidate>,
) -> PolicyCandidate<'a> {
    let given = fixture
        .predictions
        .iter()
        .find(|p| glob(&p.candidates, &c.id));
    let runtime_ms = 1000.0 * fixture.assume_runtime_s;
    let p50 = given
        .and_then(|g| g.latency_p50_ms)
        .unwrap_or(runtime_ms + c.rtt_ms);
    PolicyCandidate {
        candidate: c,
        cost_usd: given
            .and_then(|g| g.cost_usd)
            .unwrap_or_else(|| c.list_cost_usd(&request.resources, fixture.assume_runtime_s)),
        latency_p50_ms: p50,
        latency_p95_ms: given.and_then(|g| g.latency_p95_ms).unwrap_or(2.0 * p50),
        failure_prob: given.and_then(|g| g.failure_prob).unwrap_or(0.01),
    }
}

fn check(
    expect: &[Expectation],
    cands: &[&Arc<Candidate>],
    outcome: &PolicyOutcome,
) -> Vec<String> {
    let mut problems = Vec::new();
    for e in expect {
        let matched: Vec<usize> = (0..cands.len())
            .filter(|&i| glob(&e.candidates, &cands[i].id))
            .collect();
        if e.verdict == "error" {
            if outcome.result.is_ok() {
                problems.push(format!(
                    "{}: expected the policy to fail, it answered",
                    e.candidates
                ));
            } else if let (Err(f), Some(text)) = (&outcome.result, &e.reason_contains)
                && !f.message.contains(text.as_str())
            {
                problems.push(format!("expected the error to contain {text:?}, got {f}"));
            }
            continue;
        }
        let v = match &outcome.result {
            Ok(v) => v,
            Err(f) => {
                problems.push(format!("the policy failed: {f}"));
                break;
            }
        };
        if matched.is_empty() {
            problems.push(format!(
                "{}: matches no candidate of this request",
                e.candidates
            ));
            continue;
        }
        for i in matched {
            let id = &cands[i].id;
            let (rejected, adjusted) = (v.rejection(i), v.adjustment(i));
            let reason = rejected.or(adjusted.map(|a| a.1));
            let ok = match e.verdict.as_str() {
                "reject" => rejected.is_some(),
                "keep" => rejected.is_none(),
                "adjust" => {
                    adjusted.is_some()
                        && e.factor
                            .is_none_or(|f| adjusted.is_some_and(|a| (a.0 - f).abs() < 1e-6))
                }
                other => {
                    problems.push(format!(
                        "verdict {other:?}: expected reject, keep, adjust or error"
                    ));
                    return problems;
                }
            };
            let actual = match (rejected, adjusted) {
                (Some(r), _) => format!("rejected ({r})"),
                (None, Some((f, r))) => format!("adjusted ×{f} ({r})"),
                (None, None) => "kept".to_owned(),
            };
            if !ok {
                problems.push(format!("{id}: expected {}, got {actual}", e.verdict));
            } else if let Some(text) = &e.reason_contains
                && !reason.is_some_and(|r| r.contains(text.as_str()))
            {
                problems.push(format!(
                    "{id}: expected a reason containing {text:?}, got {actual}"
                ));
            }
        }
    }
    problems
}

// ---------------------------------------------------------------------------------------------
// policy replay

/// What a policy would have changed on past decisions.
#[derive(Debug, Default, serde::Serialize)]
struct ReplaySummary {
    decisions: usize,
    /// Decisions whose winner would change.
    flipped: usize,
    /// Decisions where the policy would have left no candidate.
    no_candidate_left: usize,
    /// Decisions the policy failed on.
    policy_failures: usize,
    /// Requests that could not be rebuilt or had no feasible candidate even without the policy.
    skipped: usize,
    rejected_candidates: usize,
    /// Mean change of the winner's predicted cost and p50 latency over flipped decisions.
    mean_cost_delta_usd: f64,
    mean_latency_delta_ms: f64,
    /// Sum of the winners' predicted cost before and after, over all replayed decisions.
    total_cost_before_usd: f64,
    total_cost_after_usd: f64,
    /// Winners before → after, counted.
    flips: BTreeMap<String, usize>,
}

fn replay(args: &ReplayArgs) -> Result<ExitCode> {
    let store = args.source.store()?;
    let catalog = common::load_catalog(args.catalog.as_deref())?;
    let models = common::model_dir("--models", &args.models)?;
    let baseline = Router::new(&catalog, ModelSet::load(&models)?);
    let with_policy = Router::new(&catalog, ModelSet::load(&models)?).with_policies(store);
    let (mut scratch_a, mut scratch_b) = (Scratch::new(), Scratch::new());
    let batches = sandstorm_datasets::read_parquet_location(&common::location(
        "--telemetry",
        &args.telemetry,
    )?)?;
    let mut s = ReplaySummary::default();
    let (mut cost_delta, mut latency_delta) = (0.0, 0.0);
    let records = batches
        .iter()
        .map(sandstorm_features::telemetry::from_record_batch)
        .collect::<Result<Vec<_>, _>>()?;
    let first_attempts = records
        .iter()
        .flatten()
        .filter(|r| r.attempt == 0)
        .take(args.limit.unwrap_or(usize::MAX));
    for record in first_attempts {
        s.decisions += 1;
        let Some(request) = request_of(record) else {
            s.skipped += 1;
            continue;
        };
        let ctx = DecisionContext::at(from_micros(record.ts_request_us));
        // The past decision, re-made with today's models, without and with the policy.
        let Ok(before) = baseline.decide_with(&mut scratch_a, &request, &ctx, &|_| None) else {
            s.skipped += 1;
            continue;
        };
        let after = match with_policy.decide_with(&mut scratch_b, &request, &ctx, &|_| None) {
            Ok(d) => d,
            Err(RouterError::NoFeasibleCandidate { .. }) => {
                s.no_candidate_left += 1;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        let report = &after.policies[0];
        if report.failure.is_some() {
            s.policy_failures += 1;
        }
        s.rejected_candidates += report.rejected;
        let (Some(b), Some(a)) = (&before.winner().prediction, &after.winner().prediction) else {
            continue;
        };
        s.total_cost_before_usd += b.cost_usd;
        s.total_cost_after_usd += a.cost_usd;
        if before.winner != after.winner {
            s.flipped += 1;
            cost_delta += a.cost_usd - b.cost_usd;
            latency_delta += a.latency_p50_ms - b.latency_p50_ms;
            *s.flips
                .entry(format!("{} -> {}", before.winner, after.winner))
                .or_default() += 1;
        }
    }
    if s.flipped > 0 {
        s.mean_cost_delta_usd = cost_delta / s.flipped as f64;
        s.mean_latency_delta_ms = latency_delta / s.flipped as f64;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&s)?);
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(["", "value"]);
    let pct = |n: usize| 100.0 * n as f64 / s.decisions.max(1) as f64;
    t.add_row(["decisions replayed".to_owned(), s.decisions.to_string()]);
    t.add_row([
        "winner would change".to_owned(),
        format!("{} ({:.1}%)", s.flipped, pct(s.flipped)),
    ]);
    t.add_row([
        "no candidate left".to_owned(),
        format!("{} ({:.1}%)", s.no_candidate_left, pct(s.no_candidate_left)),
    ]);
    t.add_row(["policy failed".to_owned(), s.policy_failures.to_string()]);
    t.add_row(["skipped".to_owned(), s.skipped.to_string()]);
    t.add_row([
        "candidates rejected".to_owned(),
        s.rejected_candidates.to_string(),
    ]);
    t.add_row([
        "mean Δ predicted cost (flipped)".to_owned(),
        format!("${:+.8}", s.mean_cost_delta_usd),
    ]);
    t.add_row([
        "mean Δ predicted p50 (flipped)".to_owned(),
        format!("{:+.0} ms", s.mean_latency_delta_ms),
    ]);
    t.add_row([
        "total predicted cost before → after".to_owned(),
        format!(
            "${:.6} → ${:.6}",
            s.total_cost_before_usd, s.total_cost_after_usd
        ),
    ]);
    println!("{t}");
    let mut top: Vec<(&String, &usize)> = s.flips.iter().collect();
    top.sort_by(|a, b| b.1.cmp(a.1));
    for (flip, n) in top.into_iter().take(5) {
        println!("  {n:>6}  {flip}");
    }
    println!(
        "Each past request is decided again with the models in {} (host availability ignored), without and with the policy; deltas are predicted.",
        args.models.display()
    );
    Ok(ExitCode::SUCCESS)
}

/// The parts of the original request a policy sees, rebuilt from a telemetry row.
fn request_of(r: &TelemetryRecord) -> Option<RunRequest> {
    let language = Language::ALL
        .into_iter()
        .find(|l| l.as_str() == r.language)?;
    let mut req = RunRequest::command(language, "replay");
    req.tenant = r.tenant.clone();
    req.labels = serde_json::from_str(&r.labels_json).unwrap_or_default();
    req.strategy = StrategyKind::ALL
        .into_iter()
        .find(|s| s.as_str() == r.strategy)?;
    req.cost_weight = r.cost_weight;
    req.resources.cpu = r.vcpu;
    req.resources.memory_mib = r.memory_mib as u64;
    req.timeout_s = r.timeout_s;
    req.allow_network = r.allow_network;
    Some(req)
}

// ---------------------------------------------------------------------------------------------
// publish, list

fn publish(args: &PublishArgs) -> Result<ExitCode> {
    let meta = policy_toml(&args.source.dir)?;
    let name = args
        .name
        .clone()
        .or(meta.name)
        .context("no policy name: pass --name or set `name` in policy.toml")?;
    let version = args
        .version
        .clone()
        .or(meta.version)
        .context("no version: pass --version or set `version` in policy.toml")?;
    let kind = parse_kind(
        args.kind
            .as_deref()
            .or(meta.kind.as_deref())
            .unwrap_or("filter"),
    )?;
    let key = PolicyKey::from_file(&args.key)?;
    let (path, module) = args.source.component()?;
    let mut manifest = Manifest::for_module(&name, &version, &args.author, kind, &module)?;
    manifest.description = meta.description;
    if let Some(mode) = &args.failure_mode {
        manifest.failure_mode = match mode.as_str() {
            "fail_closed" => sandstorm_policies_wasm::FailureMode::FailClosed,
            "fail_open" => sandstorm_policies_wasm::FailureMode::FailOpen,
            other => bail!("--failure-mode {other:?}: expected fail_closed or fail_open"),
        };
    }
    // Refuse to publish what a router would refuse to load.
    PolicyEngine::new(PolicyLimits::default())?.compile(
        &path.display().to_string(),
        &module,
        manifest.clone(),
    )?;
    if let Some(service) = &args.service {
        let signed = SignedFiles::sign(&manifest, &module, &key)?;
        let api_key = args.api_key.as_deref().context(
            "--service needs --api-key (or SANDSTORM_API_KEY): a key with the admin scope",
        )?;
        let installed = upload(service, api_key, &signed, &module)?;
        println!(
            "published {} ({} bytes, sha256 {}) to {service}, signed by {}: {installed}",
            manifest.id(),
            module.len(),
            manifest.sha256,
            key.public_hex()
        );
        return Ok(ExitCode::SUCCESS);
    }
    let registry = args
        .registry
        .as_ref()
        .context("pass --registry DIR or --service URL")?;
    let dir = Registry::open(registry).publish(&manifest, &module, &key)?;
    println!(
        "published {} ({} bytes, sha256 {}) to {}, signed by {}",
        manifest.id(),
        module.len(),
        manifest.sha256,
        dir.display(),
        key.public_hex()
    );
    Ok(ExitCode::SUCCESS)
}

/// Uploads a signed version to a service's `POST /v1/policies`; returns what the service says
/// it installed, or its error message.
fn upload(service: &str, api_key: &str, signed: &SignedFiles, module: &[u8]) -> Result<String> {
    use base64::Engine as _;

    let url = format!("{}/v1/policies", service.trim_end_matches('/'));
    let body = serde_json::json!({
        "manifest": String::from_utf8_lossy(&signed.manifest),
        "signature": String::from_utf8_lossy(&signed.signature),
        "module_base64": base64::engine::general_purpose::STANDARD.encode(module),
    });
    let client = sandstorm_adapters::http_client_builder()?
        .timeout(std::time::Duration::from_secs(60))
        .build()
        .context("building the HTTP client")?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the HTTP client's runtime")?;
    let (status, text) = runtime.block_on(async {
        let response = client
            .post(&url)
            .bearer_auth(api_key)
            .json(&body)
            .send()
            .await
            .with_context(|| format!("--service: cannot reach {url}"))?;
        let status = response.status();
        let text = response.text().await.unwrap_or_default();
        anyhow::Ok((status, text))
    })?;
    let json: Option<serde_json::Value> = serde_json::from_str(&text).ok();
    if !status.is_success() {
        let message = json
            .as_ref()
            .and_then(|v| v.pointer("/error/message"))
            .and_then(serde_json::Value::as_str)
            .unwrap_or(text.trim());
        bail!("{url} refused the policy ({status}): {message}");
    }
    let installed = json.as_ref().and_then(|v| {
        Some(format!(
            "active version {}",
            v.get("active_version")?.as_str()?
        ))
    });
    Ok(installed.unwrap_or_else(|| "accepted".to_owned()))
}

fn list(registry: &Path, trusted_keys: Option<&Path>, json: bool) -> Result<ExitCode> {
    let reg = Registry::open(registry);
    let trust = trusted_keys.map(TrustedKeys::from_file).transpose()?;
    let mut rows = Vec::new();
    for entry in reg.list()? {
        let status = match &trust {
            None => "not checked (no --trusted-keys)".to_owned(),
            Some(t) => match reg.verify(&entry, t) {
                Ok(v) => format!("ok (signed by {}…)", &v.signer[..12]),
                Err(e) => format!("REFUSED: {e}"),
            },
        };
        rows.push((entry.manifest, status));
    }
    if json {
        let out: Vec<serde_json::Value> = rows
            .iter()
            .map(|(m, status)| serde_json::json!({ "manifest": m, "status": status }))
            .collect();
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(ExitCode::SUCCESS);
    }
    if rows.is_empty() {
        println!("no policies in {}", registry.display());
        return Ok(ExitCode::SUCCESS);
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header([
        "policy",
        "version",
        "kind",
        "on failure",
        "author",
        "published",
        "signature",
    ]);
    for (m, status) in rows {
        t.add_row([
            m.name,
            m.version,
            m.kind.as_str().to_owned(),
            m.failure_mode.as_str().to_owned(),
            m.author,
            m.published_at,
            status,
        ]);
    }
    println!("{t}");
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::glob;

    #[test]
    fn globs_match_candidate_ids() {
        assert!(glob("local/process/*", "local/process/local"));
        assert!(glob("*/gvisor/*", "local/gvisor/local"));
        assert!(glob("e2b/microvm/us-west", "e2b/microvm/us-west"));
        assert!(!glob("local/*", "e2b/microvm/us-west"));
        assert!(glob("*", "anything"));
        assert!(!glob("a*b*c", "acb"));
    }
}
