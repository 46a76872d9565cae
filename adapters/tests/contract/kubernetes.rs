//! Kubernetes adapter (kube-rs) against the API server double (whose pods really run their
//! command).

use std::time::{Duration, Instant};

use sandstorm_adapters::{AdapterError, KubernetesConfig, KubernetesProvider, RemoteProvider};
use sandstorm_features::{InputFile, IsolationBackend};
use sandstorm_runtime::{OutputStream, RunControl, RunStatus};

use crate::doubles::Server;
use crate::doubles::kubernetes::{Behavior, KubernetesDouble};
use crate::{Observed, assert_gpu_refused, cancel_when_seen, candidate, command_job, gpu_job};

fn provider(server: &Server, workdir: &std::path::Path) -> KubernetesProvider {
    KubernetesProvider::new(KubernetesConfig {
        cluster_url: Some(server.url.clone()),
        namespace: "jobs".into(),
        workdir: workdir.join("job").display().to_string(),
        poll_interval: Duration::from_millis(20),
        start_timeout: Duration::from_secs(5),
        ..KubernetesConfig::default()
    })
    .expect("provider")
}

#[test]
fn kubernetes_runs_a_pod_streams_its_log_and_deletes_it() {
    let (server, double) = KubernetesDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = command_job("cat data/in.txt; echo to-stderr >&2; exit 3");
    job.files = vec![InputFile {
        path: "data/in.txt".into(),
        content: "payload\n".into(),
    }];
    let observed = Observed::default();
    let candidate = candidate("kubernetes", Some(IsolationBackend::Gvisor));
    let run = provider(&server, dir.path())
        .run(&candidate, &job, &observed.control())
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Failed);
    assert_eq!(run.result.exit_code, Some(3));
    assert_eq!(run.result.error_class.as_deref(), Some("exit_code"));
    assert!(
        run.result.stdout.contains("payload\n"),
        "{}",
        run.result.stdout
    );
    assert!(
        run.result.stdout.contains("to-stderr\n"),
        "{}",
        run.result.stdout
    );
    assert_eq!(observed.text(OutputStream::Stdout), run.result.stdout);

    let creates = double
        .recorder
        .matching("POST", "/api/v1/namespaces/jobs/pods");
    assert_eq!(creates.len(), 1);
    let pod = creates[0].json();
    let spec = &pod["spec"];
    assert_eq!(pod["metadata"]["generateName"], "sandstorm-");
    assert_eq!(
        pod["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "sandstorm"
    );
    assert_eq!(spec["runtimeClassName"], "gvisor");
    assert_eq!(spec["restartPolicy"], "Never");
    assert_eq!(
        spec["activeDeadlineSeconds"], 15,
        "job 10 s + start timeout 5 s"
    );
    assert_eq!(spec["automountServiceAccountToken"], false);
    let container = &spec["containers"][0];
    assert_eq!(container["name"], "job");
    assert_eq!(container["image"], "debian:bookworm-slim");
    assert_eq!(container["command"][0], "/bin/sh");
    assert_eq!(container["resources"]["limits"]["cpu"], "1000m");
    assert_eq!(container["resources"]["limits"]["memory"], "512Mi");
    assert_eq!(container["resources"]["requests"]["cpu"], "1000m");
    assert_eq!(
        container["securityContext"]["allowPrivilegeEscalation"],
        false
    );

    let name = "sandstorm-00001".to_owned();
    let logs = double
        .recorder
        .matching("GET", &format!("/api/v1/namespaces/jobs/pods/{name}/log"));
    assert_eq!(logs.len(), 1);
    assert_eq!(double.deleted(), vec![name.clone()]);
    assert!(double.alive().is_empty());
    let delete = &double
        .recorder
        .matching("DELETE", &format!("/api/v1/namespaces/jobs/pods/{name}"))[0];
    assert_eq!(delete.json()["gracePeriodSeconds"], 0);
    // No network: a deny-all policy selecting this pod only, created before it, deleted after.
    let run_label = pod["metadata"]["labels"]["sandstorm.dev/run"]
        .as_str()
        .expect("run label")
        .to_owned();
    let policies = double.recorder.matching(
        "POST",
        "/apis/networking.k8s.io/v1/namespaces/jobs/networkpolicies",
    );
    assert_eq!(policies.len(), 1);
    let policy = policies[0].json();
    assert_eq!(
        policy["spec"]["podSelector"]["matchLabels"]["sandstorm.dev/run"],
        run_label.as_str()
    );
    assert_eq!(
        policy["spec"]["policyTypes"],
        serde_json::json!(["Ingress", "Egress"])
    );
    assert!(policy["spec"].get("egress").is_none() && policy["spec"].get("ingress").is_none());
    let order: Vec<String> = double
        .recorder
        .all()
        .iter()
        .map(|r| format!("{} {}", r.method, r.path))
        .collect();
    let policy_at = order
        .iter()
        .position(|r| r.contains("networkpolicies"))
        .expect("policy created");
    let pod_at = order
        .iter()
        .position(|r| r.ends_with("/pods"))
        .expect("pod created");
    assert!(policy_at < pod_at, "{order:?}");
    let policy_name = policy["metadata"]["name"]
        .as_str()
        .expect("name")
        .to_owned();
    assert_eq!(
        *crate::doubles::lock(&double.deleted_policies),
        vec![policy_name]
    );
    assert!(
        run.result
            .enforced_limits
            .contains(&"network=blocked_by_network_policy".to_owned())
    );
    assert_eq!(run.usage.sandbox_id.as_deref(), Some(name.as_str()));
    assert_eq!((run.usage.vcpu, run.usage.memory_mib), (1.0, 512));
    assert!(
        run.result
            .enforced_limits
            .contains(&"runtime_class=gvisor".to_owned())
    );
    assert!(run.cost_usd(&candidate) > 0.0);
}

#[test]
fn kubernetes_microvm_candidates_use_kata_and_exit_zero_is_ok() {
    let (server, double) = KubernetesDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let run = provider(&server, dir.path())
        .run(
            &candidate("kubernetes", Some(IsolationBackend::Microvm)),
            &command_job("echo ok"),
            &RunControl::new(),
        )
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Ok);
    assert_eq!(run.result.stdout, "ok\n");
    let pod = double
        .recorder
        .matching("POST", "/api/v1/namespaces/jobs/pods")[0]
        .json();
    assert_eq!(pod["spec"]["runtimeClassName"], "kata");
    assert_eq!(crate::doubles::lock(&double.deleted_policies).len(), 1);
    assert_eq!(double.deleted().len(), 1);
}

#[test]
fn kubernetes_oom_killed_container_is_reported_as_oom() {
    let (server, double) = KubernetesDouble::start(Behavior {
        oom: true,
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = provider(&server, dir.path())
        .run(
            &candidate("kubernetes", Some(IsolationBackend::RootlessOci)),
            &command_job("echo allocating"),
            &RunControl::new(),
        )
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Oom);
    assert_eq!(run.result.exit_code, Some(137));
    assert_eq!(run.result.error_class.as_deref(), Some("memory_limit"));
    assert_eq!(double.deleted().len(), 1);
}

#[test]
fn kubernetes_image_pull_failure_fails_and_deletes_the_pod() {
    let (server, double) = KubernetesDouble::start(Behavior {
        waiting: Some((
            "ImagePullBackOff",
            "Back-off pulling image \"debian:bookworm-slim\"",
        )),
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let failure = provider(&server, dir.path())
        .run(
            &candidate("kubernetes", Some(IsolationBackend::Gvisor)),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("image pull");
    assert!(
        matches!(failure.error, AdapterError::SandboxFailed { .. }),
        "{failure:?}"
    );
    assert!(
        failure.to_string().contains("ImagePullBackOff"),
        "{failure}"
    );
    assert!(failure.retryable(), "another candidate may have the image");
    assert_eq!(double.deleted(), vec!["sandstorm-00001".to_owned()]);
}

#[test]
fn kubernetes_status_errors_are_classified() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        (401, "Unauthorized", "Unauthorized", false, true),
        (
            403,
            "Forbidden",
            "pods is forbidden: User \"ci\" cannot create resource \"pods\"",
            false,
            true,
        ),
        (
            403,
            "Forbidden",
            "pods \"x\" is forbidden: exceeded quota: compute, requested: cpu=1",
            true,
            false,
        ),
        (
            429,
            "TooManyRequests",
            "Too many requests, please try again later.",
            true,
            false,
        ),
        (
            422,
            "Invalid",
            "Pod \"x\" is invalid: spec.runtimeClassName: Invalid value",
            false,
            false,
        ),
        (
            500,
            "InternalError",
            "Internal error occurred: etcd timeout",
            true,
            false,
        ),
    ];
    for (code, reason, message, retryable, auth) in cases {
        let (server, double) = KubernetesDouble::start(Behavior {
            create_error: Some((code, reason, message)),
            ..Behavior::default()
        });
        let failure = provider(&server, dir.path())
            .run(
                &candidate("kubernetes", Some(IsolationBackend::Gvisor)),
                &command_job("true"),
                &RunControl::new(),
            )
            .expect_err("error");
        assert_eq!(failure.retryable(), retryable, "{code}: {failure}");
        assert_eq!(failure.error.is_auth(), auth, "{code}: {failure}");
        assert!(failure.to_string().contains(message), "{failure}");
        assert!(double.deleted().is_empty());
        // The policy created for the pod that was refused is cleaned up too.
        assert!(crate::doubles::lock(&double.policies).is_empty());
        assert_eq!(crate::doubles::lock(&double.deleted_policies).len(), 1);
    }
}

#[test]
fn kubernetes_jobs_with_network_get_no_policy() {
    let (server, double) = KubernetesDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = command_job("echo net");
    job.allow_network = true;
    let run = provider(&server, dir.path())
        .run(
            &candidate("kubernetes", Some(IsolationBackend::Gvisor)),
            &job,
            &RunControl::new(),
        )
        .expect("run");
    assert_eq!(run.result.stdout, "net\n");
    assert!(
        run.result
            .enforced_limits
            .contains(&"network=allowed".to_owned())
    );
    assert!(
        double
            .recorder
            .matching(
                "POST",
                "/apis/networking.k8s.io/v1/namespaces/jobs/networkpolicies"
            )
            .is_empty()
    );
}

#[test]
fn kubernetes_cancel_and_timeout_delete_the_pod() {
    let (server, double) = KubernetesDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = provider(&server, dir.path());
    let candidate = candidate("kubernetes", Some(IsolationBackend::Gvisor));

    let observed = Observed::default();
    let control = observed.control();
    cancel_when_seen(&observed, &control, "started");
    let began = Instant::now();
    let run = provider
        .run(&candidate, &command_job("echo started; sleep 3"), &control)
        .expect("cancelled");
    assert_eq!(run.result.error_class.as_deref(), Some("cancelled"));
    assert_eq!(run.result.stdout, "started\n");
    assert!(
        began.elapsed() < Duration::from_millis(2500),
        "{:?}",
        began.elapsed()
    );
    assert_eq!(double.deleted(), vec!["sandstorm-00001".to_owned()]);

    let mut job = command_job("sleep 3");
    job.timeout = Duration::from_millis(300);
    let run = provider
        .run(&candidate, &job, &RunControl::new())
        .expect("timed out");
    assert_eq!(run.result.status, RunStatus::Timeout);
    assert_eq!(double.deleted().len(), 2);
}

#[test]
fn kubernetes_refuses_backends_that_are_not_pod_runtimes() {
    let (server, double) = KubernetesDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut candidate = candidate("kubernetes", Some(IsolationBackend::Gvisor));
    candidate.backend = IsolationBackend::Bubblewrap;
    let failure = provider(&server, dir.path())
        .run(&candidate, &command_job("true"), &RunControl::new())
        .expect_err("unsupported");
    assert!(matches!(failure.error, AdapterError::Unsupported { .. }));
    assert!(double.recorder.all().is_empty());
}

#[test]
fn kubernetes_refuses_a_gpu_job_before_creating_anything() {
    let (server, double) = KubernetesDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    for backend in [
        IsolationBackend::RootlessOci,
        IsolationBackend::Gvisor,
        IsolationBackend::Microvm,
    ] {
        let failure = provider(&server, dir.path())
            .run(
                &candidate("kubernetes", Some(backend)),
                &gpu_job(),
                &RunControl::new(),
            )
            .expect_err("no GPU");
        assert_gpu_refused(
            &failure,
            "kubernetes",
            "this adapter sets no `nvidia.com/gpu` limit on its pods (the catalog prices no GPU \
             for kubernetes)",
        );
    }
    assert!(double.recorder.all().is_empty());
}
