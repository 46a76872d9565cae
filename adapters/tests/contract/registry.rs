//! `Providers` (the registry) and the blocking-call contract: callable from a plain thread and
//! from tokio's `spawn_blocking`, droppable inside async code.

use std::sync::Arc;

use sandstorm_adapters::{
    AdapterError, E2bConfig, E2bProvider, ModalConfig, ModalProvider, Providers, RemoteProvider,
};
use sandstorm_runtime::{Availability, RunControl, RunStatus};

use crate::doubles::e2b::{API_KEY, Behavior, E2bDouble, Event};
use crate::{candidate, command_job};

fn e2b(url: &str) -> E2bProvider {
    E2bProvider::new(E2bConfig {
        api_key: Some(API_KEY.into()),
        api_url: url.to_owned(),
        envd_url: Some(url.to_owned()),
        ..E2bConfig::default()
    })
    .expect("provider")
}

fn ok_behavior() -> Behavior {
    Behavior {
        events: vec![
            Event::Stdout("ok\n"),
            Event::End(Some(0)),
            Event::EndStream(None),
        ],
        ..Behavior::default()
    }
}

#[test]
fn from_env_lists_every_provider_and_says_why_one_is_unavailable() {
    let providers = Providers::from_env();
    let availability = providers.availability();
    let names: Vec<&str> = availability.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["e2b", "daytona", "morph", "kubernetes", "modal"]);
    for (name, variable) in [
        ("e2b", "E2B_API_KEY"),
        ("daytona", "DAYTONA_API_KEY"),
        ("morph", "MORPH_API_KEY"),
    ] {
        let state = &availability
            .iter()
            .find(|(n, _)| n == name)
            .expect("listed")
            .1;
        if std::env::var(variable).is_err() {
            assert_eq!(
                state,
                &Availability::Unavailable {
                    reason: format!("{variable} is not set")
                },
                "{name}"
            );
        }
    }
    let modal = &availability[4].1;
    let modal_profile = std::env::var_os("MODAL_CONFIG_PATH")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".modal.toml")))
        .is_some_and(|p| p.exists());
    if std::env::var("MODAL_TOKEN_ID").is_err()
        && std::env::var("MODAL_TOKEN_SECRET").is_err()
        && !modal_profile
    {
        assert!(!modal.is_available());
        assert!(
            modal
                .to_string()
                .contains("MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are not set"),
            "{modal}"
        );
    }
}

#[test]
fn unconfigured_provider_refuses_to_run_with_its_reason() {
    let provider = E2bProvider::new(E2bConfig::default()).expect("provider");
    assert_eq!(
        provider.availability(),
        Availability::Unavailable {
            reason: "E2B_API_KEY is not set".into()
        }
    );
    let failure = provider
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("not configured");
    assert!(matches!(failure.error, AdapterError::NotConfigured { .. }));
    assert!(!failure.retryable());
    let failure = ModalProvider::new(ModalConfig::default())
        .expect("provider")
        .run(
            &candidate("modal", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("modal");
    assert!(matches!(failure.error, AdapterError::NotConfigured { .. }));
    assert!(failure.to_string().contains("MODAL_TOKEN_ID"), "{failure}");
}

#[test]
fn run_dispatches_on_the_candidates_provider() {
    let (server, double) = E2bDouble::start(ok_behavior());
    let providers = Providers::new(vec![Box::new(e2b(&server.url))]);
    assert!(
        providers
            .get("e2b")
            .is_some_and(|p| p.availability().is_available())
    );
    let run = providers
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect("run");
    assert_eq!(run.result.stdout, "ok\n");
    assert_eq!(double.deleted().len(), 1);
    let failure = providers
        .run(
            &candidate("daytona", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("no adapter");
    assert!(matches!(failure.error, AdapterError::Unsupported { .. }));
}

#[test]
fn runs_from_spawn_blocking_and_drops_inside_async_code() {
    let (server, double) = E2bDouble::start(ok_behavior());
    let provider = Arc::new(e2b(&server.url));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime");
    let status = runtime.block_on(async {
        let provider = Arc::clone(&provider);
        tokio::task::spawn_blocking(move || {
            provider
                .run(
                    &candidate("e2b", None),
                    &command_job("true"),
                    &RunControl::new(),
                )
                .map(|run| run.result.status)
        })
        .await
        .expect("join")
    });
    assert_eq!(status.expect("run"), RunStatus::Ok);
    assert_eq!(double.deleted().len(), 1);
    // The adapter's own runtime shuts down in the background: no panic in async code.
    runtime.block_on(async move { drop(provider) });
}
