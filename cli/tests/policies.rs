//! The policy author's workflow through the `sandstorm` binary: scaffold, build, test,
//! sign, publish, list, route with the registry (decisions change visibly, tampered versions
//! are refused) and replay on telemetry.

#![allow(clippy::unwrap_used)] // test helpers: a failed set-up step should abort the test

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use common::{Service, bin, models, repo, route_with_models, telemetry, text};
use serde_json::Value;

/// Runs the binary with guest builds going to one shared target directory, so each test
/// reuses the compiled SDK.
fn run(args: &[&str]) -> Output {
    let mut c = bin();
    if let Some(t) = std::env::var_os("CARGO_TARGET_DIR") {
        c.env("CARGO_TARGET_DIR", PathBuf::from(t).join("policy-guests"));
    }
    c.args(args).output().expect("spawn sandstorm")
}

fn ok(o: &Output) -> String {
    let (out, err) = text(o);
    assert!(o.status.success(), "stdout:\n{out}\nstderr:\n{err}");
    out
}

fn example(name: &str) -> PathBuf {
    repo(&format!("policies-wasm/guest/examples/{name}"))
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

#[test]
fn every_example_policy_passes_its_fixtures() {
    for name in [
        "eu-residency",
        "untrusted-isolation",
        "tenant-cost-cap",
        "edge-rtt",
    ] {
        let out = ok(&run(&["policy", "test", s(&example(name))]));
        assert!(
            out.contains(" 0 failed") && !out.contains("FAIL"),
            "{name}: {out}"
        );
    }
}

#[test]
fn a_failing_expectation_is_reported_and_fails_the_command() {
    let tmp = tempfile::tempdir().unwrap();
    let fixture = tmp.path().join("wrong.yaml");
    std::fs::write(
        &fixture,
        "request:\n  language: python\n  code: print(1)\n  tenant: acme-eu\nexpect:\n  - candidates: \"e2b/*\"\n    verdict: keep\n",
    )
    .unwrap();
    let o = run(&[
        "policy",
        "test",
        s(&example("eu-residency")),
        "--fixtures",
        s(&fixture),
    ]);
    let (out, _) = text(&o);
    assert!(!o.status.success());
    assert!(
        out.contains("FAIL") && out.contains("expected keep, got rejected (EU tenant"),
        "{out}"
    );
}

#[test]
fn new_scaffolds_a_policy_that_builds_and_passes_its_own_test() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("my-guard");
    let out = ok(&run(&["policy", "new", s(&dir)]));
    assert!(out.contains("created policy"), "{out}");
    let out = ok(&run(&["policy", "build", s(&dir)]));
    assert!(out.trim().ends_with("my-guard.component.wasm"), "{out}");
    let out = ok(&run(&["policy", "test", s(&dir), "--wasm", out.trim()]));
    assert!(out.contains("1 passed, 0 failed"), "{out}");
    let err = text(&run(&["policy", "new", s(&dir)])).1;
    assert!(err.contains("already exists"), "{err}");
    let err = text(&run(&["policy", "new", s(&tmp.path().join("Bad_Name"))])).1;
    assert!(err.contains("expected 1-64 characters"), "{err}");
}

/// `sandstorm policy publish DIR --key KEY --registry REGISTRY EXTRA...`
fn publish(dir: &Path, key: &Path, registry: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "policy",
        "publish",
        s(dir),
        "--key",
        s(key),
        "--registry",
        s(registry),
    ];
    args.extend_from_slice(extra);
    run(&args)
}

/// Route `request` as JSON with `extra` arguments.
/// `sandstorm route` with E2B and Daytona configured (routing only: nothing is executed, so
/// the keys are never sent), so that their EU and US regions compete.
fn route_remote(request: &Path, extra: &[&str]) -> Output {
    bin()
        .env("E2B_API_KEY", "test-key-not-used")
        .env("DAYTONA_API_KEY", "test-key-not-used")
        .args([
            "route",
            "--models",
            models().to_str().unwrap(),
            "--request",
            request.to_str().unwrap(),
        ])
        .args(extra)
        .output()
        .expect("spawn sandstorm")
}

fn route_json(request: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["--json"];
    args.extend_from_slice(extra);
    serde_json::from_str(&ok(&route_remote(request, &args))).unwrap()
}

fn area_of(decision: &Value) -> String {
    decision["candidates"][0]["candidate"]["area"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn published_policies_change_routing_and_tampered_ones_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("registry");
    let key = tmp.path().join("author.key");
    let out = ok(&run(&["policy", "keygen", "--out", s(&key)]));
    assert!(out.contains("public key"), "{out}");
    let trusted = tmp.path().join("author.pub");
    let published = ok(&publish(
        &example("eu-residency"),
        &key,
        &registry,
        &["--author", "tests"],
    ));
    assert!(
        published.contains("published eu-residency@1.0.0"),
        "{published}"
    );
    let again = publish(&example("eu-residency"), &key, &registry, &[]);
    assert!(text(&again).1.contains("immutable"), "{:?}", text(&again));

    let listed = ok(&run(&[
        "policy",
        "list",
        "--registry",
        s(&registry),
        "--trusted-keys",
        s(&trusted),
    ]));
    assert!(
        listed.contains("eu-residency") && listed.contains("ok (signed by"),
        "{listed}"
    );

    let request = repo("cli/testdata/eu-tenant.yaml");
    let without = route_json(&request, &[]);
    assert_ne!(
        area_of(&without),
        "eu",
        "the test needs a non-EU winner without the policy"
    );
    let with = route_json(
        &request,
        &["--policies", s(&registry), "--trusted-keys", s(&trusted)],
    );
    assert_eq!(area_of(&with), "eu", "{with:#}");
    let report = &with["policies"][0];
    assert_eq!(report["name"], "eu-residency");
    assert!(report["rejected"].as_u64().unwrap() > 0);
    let rejected: Vec<&Value> = with["candidates"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["verdict"]["constraint"] == "policy:eu-residency")
        .collect();
    assert!(!rejected.is_empty());
    assert!(
        rejected[0]["verdict"]["reason"]
            .as_str()
            .unwrap()
            .contains("EU tenant")
    );
    assert!(
        with["explanation"]
            .as_str()
            .unwrap()
            .contains("Policy eu-residency@1.0.0 rejected")
    );

    // Without trusted keys the router refuses to load policies at all.
    let o = route_remote(&request, &["--policies", s(&registry)]);
    assert!(text(&o).1.contains("--trusted-keys"), "{:?}", text(&o));

    // A tampered module is refused with a warning; routing goes on without the policy.
    let module = registry.join("eu-residency/1.0.0/policy.wasm");
    let mut bytes = std::fs::read(&module).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&module, bytes).unwrap();
    let o = route_remote(
        &request,
        &[
            "--json",
            "--policies",
            s(&registry),
            "--trusted-keys",
            s(&trusted),
        ],
    );
    let (out, err) = text(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains("not loaded") && err.contains("tampered or corrupt"),
        "{err}"
    );
    let decision: Value = serde_json::from_str(&out).unwrap();
    assert!(decision.get("policies").is_none());
}

/// `policy publish --service` uploads a signed version to a running service, which verifies it
/// against its trusted keys and starts using it; refusals come back with the service's reason.
#[test]
fn publish_uploads_to_a_running_service() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("author.key");
    ok(&run(&["policy", "keygen", "--out", s(&key)]));
    let other = tmp.path().join("other.key");
    ok(&run(&["policy", "keygen", "--out", s(&other)]));
    let admin = "admin-key-1";
    let user = "user-key-1";
    let config = tmp.path().join("service.toml");
    std::fs::write(
        &config,
        format!(
            "listen = \"127.0.0.1:0\"\nmodels_dir = {:?}\n\n[policies]\nregistry = \"registry\"\ntrusted_keys = {:?}\n\n\
             [[api_keys]]\nsha256 = \"{}\"\ntenant = \"ops\"\nscopes = [\"admin\"]\n\n\
             [[api_keys]]\nsha256 = \"{}\"\ntenant = \"acme\"\n",
            models(),
            tmp.path().join("author.pub"),
            sandstorm_service::hash_api_key(admin),
            sandstorm_service::hash_api_key(user),
        ),
    )
    .unwrap();
    let service = Service::start(&config);
    let url = format!("http://{}", service.addr);
    let upload = |key: &Path, api_key: &str| {
        run(&[
            "policy",
            "publish",
            s(&example("eu-residency")),
            "--key",
            s(key),
            "--service",
            &url,
            "--api-key",
            api_key,
        ])
    };

    let out = ok(&upload(&key, admin));
    assert!(
        out.contains("published eu-residency@1.0.0") && out.contains("active version 1.0.0"),
        "{out}"
    );
    assert!(
        tmp.path()
            .join("registry/eu-residency/1.0.0/policy.wasm")
            .exists(),
        "the service stores the version in its registry"
    );
    let refused = |o: Output, expected: &str| {
        assert!(!o.status.success());
        let err = text(&o).1;
        assert!(err.contains(expected), "expected {expected:?} in:\n{err}");
    };
    refused(upload(&key, admin), "409");
    refused(upload(&key, user), "403");
    refused(upload(&other, admin), "not among the trusted keys");
    refused(
        run(&[
            "policy",
            "publish",
            s(&example("eu-residency")),
            "--key",
            s(&key),
            "--service",
            &url,
        ]),
        "--api-key",
    );
    drop(service);
    refused(upload(&key, admin), "cannot reach");
}

#[test]
fn replay_reports_what_a_policy_would_have_changed() {
    let o = run(&[
        "policy",
        "replay",
        s(&example("edge-rtt")),
        "--telemetry",
        s(telemetry()),
        "--models",
        s(models()),
        "--limit",
        "500",
        "--json",
    ]);
    let summary: Value = serde_json::from_str(&ok(&o)).unwrap();
    let decisions = summary["decisions"].as_u64().unwrap();
    assert_eq!(decisions, 500, "{summary}");
    let flipped = summary["flipped"].as_u64().unwrap();
    assert!(flipped > 0 && flipped < decisions, "{summary}");
    assert_eq!(summary["policy_failures"], 0);
}

#[test]
fn failing_policies_fail_closed_as_filters_and_open_as_scorers() {
    let tmp = tempfile::tempdir().unwrap();
    let registry = tmp.path().join("registry");
    let key = tmp.path().join("k.key");
    ok(&run(&["policy", "keygen", "--out", s(&key)]));
    let trusted = tmp.path().join("k.pub");
    let trap = repo("policies-wasm/guest/fixtures/trap");
    for (name, kind) in [("guard", "filter"), ("nudge", "scorer")] {
        ok(&publish(
            &trap,
            &key,
            &registry,
            &["--name", name, "--version", "1.0.0", "--kind", kind],
        ));
    }
    let request = tmp.path().join("hostile.yaml");
    std::fs::write(
        &request,
        "language: python\ncode: print(1)\nlabels:\n  hostile: trap\n",
    )
    .unwrap();
    let args = ["--policies", s(&registry), "--trusted-keys", s(&trusted)];

    // The filter traps and fails closed: no candidate is left, and the error names it.
    let o = route_with_models(&request, &args);
    let (_, err) = text(&o);
    assert!(!o.status.success());
    assert!(err.contains("policy:guard removed"), "{err}");

    // Without the filter, the trapping scorer is ignored and the explanation says so.
    std::fs::remove_dir_all(registry.join("guard")).unwrap();
    let mut json_args = vec!["--json"];
    json_args.extend_from_slice(&args);
    let o = route_with_models(&request, &json_args);
    let decision: Value = serde_json::from_str(&ok(&o)).unwrap();
    let report = &decision["policies"][0];
    assert_eq!(report["name"], "nudge");
    assert_eq!(report["failure"]["kind"], "trap");
    assert_eq!(report["failure_mode"], "fail_open");
    let explanation = decision["explanation"].as_str().unwrap();
    assert!(
        explanation.contains("Policy nudge@1.0.0 failed (trap"),
        "{explanation}"
    );
    assert!(
        explanation.contains("ignored (fails open)"),
        "{explanation}"
    );
}
