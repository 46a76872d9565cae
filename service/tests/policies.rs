//! WASM policies in the service, over a real socket: `GET /v1/policies` lists what runs,
//! `POST /v1/policies` publishes a signed version (admin only) that changes the next decision,
//! and refuses tampered, untrusted, duplicate and hostile uploads naming the field; versions
//! published straight into the registry are picked up by the background sync; policy metrics.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::{ACME, ADMIN, TestServer};
use sandstorm_policies_wasm::{Manifest, PolicyKey, PolicyKind, Registry, author};
use sandstorm_service::PoliciesConfig;
use serde_json::{Value, json};

fn component(package: &str) -> Vec<u8> {
    let path = author::build_guest(package).unwrap_or_else(|e| panic!("building {package}: {e}"));
    std::fs::read(path).expect("read the component")
}

/// Signs `module` as `name@version` with `key` the way `sandstorm policy publish` does, and
/// returns the `POST /v1/policies` body made of the files it wrote.
fn signed_upload(module: &[u8], name: &str, version: &str, key: &PolicyKey) -> Value {
    let scratch = tempfile::tempdir().expect("tempdir");
    let manifest =
        Manifest::for_module(name, version, "tests", PolicyKind::Filter, module).expect("manifest");
    let dir = Registry::open(scratch.path())
        .publish(&manifest, module, key)
        .expect("sign");
    let read = |f: &str| std::fs::read_to_string(dir.join(f)).expect("read");
    json!({
        "manifest": read("manifest.json"),
        "signature": read("signature.json"),
        "module_base64": base64::engine::general_purpose::STANDARD.encode(module),
    })
}

async fn start(registry: &Path, trusted: &Path) -> TestServer {
    let (registry, trusted) = (registry.to_owned(), trusted.to_owned());
    TestServer::start_with(move |c| {
        c.policies = Some(PoliciesConfig {
            registry,
            trusted_keys: trusted,
            sync_interval_s: 0.2,
        })
    })
    .await
}

fn eu_request() -> Value {
    json!({"language": "python", "command": "python3 -c 'print(1)'", "labels": {"residency": "eu"}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn published_policies_run_and_bad_uploads_are_refused() {
    let keys = tempfile::tempdir().expect("tempdir");
    let key = PolicyKey::generate();
    let trusted = keys.path().join("trusted");
    std::fs::write(&trusted, format!("{}\n", key.public_hex())).expect("trusted keys");
    let registry = keys.path().join("registry");
    let s = start(&registry, &trusted).await;

    let r = s.get("/v1/policies", ACME).await;
    assert_eq!(r.json(), json!({"policies": []}), "{}", r.text());
    // Without policies the EU request runs on this host.
    let r = s.post_json("/v1/route", ACME, &eu_request()).await;
    assert_eq!(r.status, 200, "{}", r.text());

    let eu = component("eu-residency");
    let upload = signed_upload(&eu, "eu-residency", "1.0.0", &key);
    let r = s.post_json("/v1/policies", ACME, &upload).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (403, "forbidden"),
        "{}",
        r.text()
    );
    let r = s.post_json("/v1/policies", ADMIN, &upload).await;
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["name"], "eu-residency");
    assert_eq!(r.json()["active_version"], "1.0.0");
    assert_eq!(r.json()["failure_mode"], "fail_closed");
    assert!(
        registry.join("eu-residency/1.0.0/policy.wasm").is_file(),
        "stored in the registry"
    );
    let r = s.get("/v1/policies", ACME).await;
    assert_eq!(r.json()["policies"][0]["installed_version"], "1.0.0");

    // The next decision runs it: no EU region is available here, so nothing is left.
    let r = s.post_json("/v1/route", ACME, &eu_request()).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (422, "no_feasible_candidate"),
        "{}",
        r.text()
    );
    assert!(r.text().contains("policy:eu-residency"), "{}", r.text());
    // Other tenants are untouched, and the decision reports the policy.
    let r = s
        .post_json(
            "/v1/route",
            ACME,
            &json!({"language": "python", "command": "python3 -c 'print(1)'"}),
        )
        .await;
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(
        r.json()["policies"][0]["name"],
        "eu-residency",
        "{}",
        r.text()
    );

    // Versions are immutable.
    let r = s.post_json("/v1/policies", ADMIN, &upload).await;
    assert_eq!(
        (r.status, r.code().as_str()),
        (409, "conflict"),
        "{}",
        r.text()
    );
    assert!(r.message().contains("immutable"), "{}", r.text());

    // Refusals name the field; the active version stays.
    let refuse = |body: Value, field: &'static str, says: &'static str| {
        let s = &s;
        async move {
            let r = s.post_json("/v1/policies", ADMIN, &body).await;
            assert_eq!(
                (r.status, r.code().as_str()),
                (400, "invalid_request"),
                "{}",
                r.text()
            );
            assert_eq!(
                r.json()["error"]["fields"][0]["field"],
                field,
                "{}",
                r.text()
            );
            assert!(r.message().contains(says), "{says}: {}", r.text());
        }
    };
    let mut tampered = signed_upload(&eu, "eu-residency", "1.0.1", &key);
    let mut bytes = eu.clone();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    tampered["module_base64"] = json!(base64::engine::general_purpose::STANDARD.encode(&bytes));
    refuse(tampered, "module_base64", "does not match the manifest").await;
    let stranger = PolicyKey::generate();
    refuse(
        signed_upload(&eu, "eu-residency", "1.0.2", &stranger),
        "signature",
        "not among the trusted keys",
    )
    .await;
    let mut edited = signed_upload(&eu, "eu-residency", "1.0.3", &key);
    edited["manifest"] = json!(
        edited["manifest"]
            .as_str()
            .unwrap()
            .replace("tests", "mallory")
    );
    refuse(edited, "signature", "tampered manifest").await;
    refuse(
        signed_upload(&component("wasi-import"), "wasi", "1.0.0", &key),
        "module_base64",
        "may import nothing",
    )
    .await;
    let mut not_base64 = signed_upload(&eu, "eu-residency", "1.0.4", &key);
    not_base64["module_base64"] = json!("%%%");
    refuse(not_base64, "module_base64", "not base64").await;
    let r = s
        .post_json(
            "/v1/policies",
            ADMIN,
            &json!({"manifest": "{}", "signature": "{}"}),
        )
        .await;
    assert_eq!(r.status, 400, "{}", r.text());
    assert!(r.message().contains("module_base64"), "{}", r.text());
    let r = s.get("/v1/policies", ACME).await;
    let listed = r.json();
    assert_eq!(listed["policies"].as_array().unwrap().len(), 1, "{listed}");
    assert_eq!(listed["policies"][0]["active_version"], "1.0.0");

    // A version published straight into the registry (by `sandstorm policy publish`) is
    // picked up without a restart.
    let noop = component("noop");
    let manifest =
        Manifest::for_module("noop", "1.0.0", "tests", PolicyKind::Scorer, &noop).unwrap();
    Registry::open(&registry)
        .publish(&manifest, &noop, &key)
        .unwrap();
    let start = Instant::now();
    loop {
        let r = s.get("/v1/policies", ACME).await;
        if r.json()["policies"].as_array().unwrap().len() == 2 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "never synced: {}",
            r.text()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let r = s.get("/metrics", ADMIN).await;
    assert!(
        r.text()
            .contains("sandstorm_policy_duration_seconds_count{policy=\"eu-residency\"}"),
        "{}",
        r.text()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_policies_configuration_is_refused_at_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("trusted");
    std::fs::write(&empty, "# nobody\n").unwrap();
    let mut c = common::config(dir.path());
    c.policies = Some(PoliciesConfig {
        registry: dir.path().join("registry"),
        trusted_keys: empty,
        sync_interval_s: 5.0,
    });
    let e = sandstorm_service::Service::bind(c)
        .await
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("policies.trusted_keys") && e.contains("lists no key"),
        "{e}"
    );
}
