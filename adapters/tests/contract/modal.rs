//! Modal adapter against the Modal gRPC test double (whose sandboxes really run their
//! entrypoint on this host): metadata and request fields checked one by one, output streamed
//! per file descriptor in several chunks and resumed across streams, GPUs asked for and billed,
//! every error class, and the sandbox terminated after success, failure, cancel and timeout.

use std::time::Duration;

use sandstorm_adapters::{
    AdapterError, GpuUsage, ModalConfig, ModalProvider, Phase, RemoteProvider,
};
use sandstorm_features::{GpuRequest, InputFile, Resources};
use sandstorm_runtime::{Availability, OutputStream, RunControl, RunStatus};
use tonic::Code;

use crate::doubles::Server;
use crate::doubles::modal::proto::{self, generic_result::GenericStatus};
use crate::doubles::modal::{
    APP_ID, Behavior, Failure, Message, ModalDouble, TOKEN_ID, TOKEN_SECRET,
};
use crate::{Observed, cancel_when_seen, candidate, code_job, command_job};

fn config(server: &Server, workdir: &std::path::Path) -> ModalConfig {
    ModalConfig {
        token_id: Some(TOKEN_ID.into()),
        token_secret: Some(TOKEN_SECRET.into()),
        server_url: server.url.clone(),
        workdir: workdir.join("job").display().to_string(),
        poll_interval: Duration::from_millis(20),
        ..ModalConfig::default()
    }
}

fn provider(server: &Server, workdir: &std::path::Path) -> ModalProvider {
    ModalProvider::new(config(server, workdir)).expect("provider")
}

/// Runs `command` against a double with `behavior`; the failure it ends with.
fn failing_run(
    behavior: Behavior,
) -> (sandstorm_adapters::RunFailure, std::sync::Arc<ModalDouble>) {
    let (server, double) = ModalDouble::start(behavior);
    let dir = tempfile::tempdir().expect("tempdir");
    let failure = provider(&server, dir.path())
        .run(
            &candidate("modal", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("the run fails");
    (failure, double)
}

#[test]
fn modal_runs_the_job_as_the_sandbox_entrypoint_and_streams_its_output() {
    let (server, double) = ModalDouble::start(Behavior {
        // Modal ends a log stream when its hold is over: the adapter must resume after the
        // last entry, losing and repeating nothing.
        batches_per_stream: 1,
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = command_job(
        "cat \"data/it's.txt\"; sleep 0.2; echo err >&2; sleep 0.2; echo two; sleep 0.2; echo three",
    );
    job.files = vec![InputFile {
        path: "data/it's.txt".into(),
        content: "it's ✓ here\n".into(),
    }];
    let observed = Observed::default();
    let candidate = candidate("modal", None);
    let run = provider(&server, dir.path())
        .run(&candidate, &job, &observed.control())
        .expect("run");

    assert_eq!(run.result.status, RunStatus::Ok, "{:?}", run.result);
    assert_eq!(run.result.exit_code, Some(0));
    assert_eq!(run.result.stdout, "it's ✓ here\ntwo\nthree\n");
    assert_eq!(run.result.stderr, "err\n");
    assert_eq!(observed.text(OutputStream::Stdout), run.result.stdout);
    assert_eq!(observed.text(OutputStream::Stderr), "err\n");
    let stdout_chunks = observed
        .chunks()
        .into_iter()
        .filter(|(s, _)| *s == OutputStream::Stdout)
        .count();
    assert!(
        stdout_chunks >= 3,
        "output streamed in chunks: {:?}",
        observed.chunks()
    );

    // Every call carries the SDK's metadata.
    let calls = double.calls();
    assert!(!calls.is_empty());
    for call in &calls {
        assert_eq!(
            call.header("x-modal-token-id"),
            Some(TOKEN_ID),
            "{}",
            call.rpc
        );
        assert_eq!(
            call.header("x-modal-token-secret"),
            Some(TOKEN_SECRET),
            "{}",
            call.rpc
        );
        assert_eq!(
            call.header("x-modal-client-type"),
            Some("1"),
            "{}",
            call.rpc
        );
        assert_eq!(
            call.header("x-modal-client-version"),
            Some("1.6.4"),
            "{}",
            call.rpc
        );
    }
    let order: Vec<&str> = calls.iter().map(|c| c.rpc).collect();
    assert_eq!(
        &order[..4],
        [
            "AppGetOrCreate",
            "ImageGetOrCreate",
            "SandboxCreate",
            "SandboxGetTaskId"
        ]
    );
    assert_eq!(order.last(), Some(&"SandboxTerminate"));

    let Message::AppGetOrCreate(app) = &double.calls_of("AppGetOrCreate")[0].message else {
        panic!("app request");
    };
    assert_eq!(app.app_name, "sandstorm");
    assert_eq!(app.environment_name, "");
    assert_eq!(
        app.object_creation_type,
        proto::ObjectCreationType::CreateIfMissing as i32
    );
    let Message::ImageGetOrCreate(image) = &double.calls_of("ImageGetOrCreate")[0].message else {
        panic!("image request");
    };
    assert_eq!(image.app_id, APP_ID);
    assert_eq!(
        image.image.as_ref().map(|i| i.dockerfile_commands.clone()),
        Some(vec!["FROM debian:bookworm-slim".to_owned()]),
        "shell jobs run in the shell image"
    );
    assert_eq!(image.builder_version, "2024.10");
    assert_eq!(
        image.namespace,
        proto::DeploymentNamespace::Workspace as i32
    );

    let creates = double.creates();
    assert_eq!(creates.len(), 1);
    let create = &creates[0];
    assert_eq!(create.app_id, APP_ID);
    let definition = create.definition.as_ref().expect("definition");
    assert_eq!(definition.image_id, "im-1");
    assert_eq!(definition.entrypoint_args[..2], ["/bin/sh", "-c"]);
    assert_eq!(definition.entrypoint_args.len(), 3);
    let script = &definition.entrypoint_args[2];
    assert!(script.contains("&& cd '"), "{script}");
    assert!(
        script.contains("base64 -d > 'data/it'\\''s.txt'"),
        "{script}"
    );
    assert!(script.ends_with("exec /bin/sh -c 'cat \"data/it'\\''s.txt\"; sleep 0.2; echo err >&2; sleep 0.2; echo two; sleep 0.2; echo three'\n"), "{script}");
    let resources = definition.resources.as_ref().expect("resources");
    assert_eq!(resources.milli_cpu, 500, "1 vCPU = half a physical core");
    assert_eq!(resources.milli_cpu_max, 500);
    assert_eq!(resources.memory_mb, 512);
    assert_eq!(resources.memory_mb_max, 512);
    assert_eq!(resources.gpu_config, None, "a CPU job asks for no GPU");
    assert_eq!(
        definition.timeout_secs, 70,
        "job timeout 10 s + 60 s margin"
    );
    assert_eq!(
        definition
            .scheduler_placement
            .as_ref()
            .map(|p| p.regions.clone()),
        Some(vec![candidate.region.clone()])
    );
    assert_eq!(
        definition
            .network_access
            .as_ref()
            .map(|n| n.network_access_type),
        Some(proto::network_access::NetworkAccessType::Blocked as i32)
    );
    assert!(
        create
            .tags
            .iter()
            .any(|t| t.tag_name == "managed-by" && t.tag_value == "sandstorm")
    );
    assert!(
        create
            .tags
            .iter()
            .any(|t| t.tag_name == "candidate" && t.tag_value == candidate.id)
    );
    let sandbox_id = "sb-0000000000000000000001";

    // Output: both descriptors followed, each resumed after its last entry.
    let logs = double.log_requests();
    for fd in [proto::FileDescriptor::Stdout, proto::FileDescriptor::Stderr] {
        let of_fd: Vec<_> = logs
            .iter()
            .filter(|l| l.file_descriptor == fd as i32)
            .collect();
        assert!(of_fd.len() >= 2, "{fd:?} streamed and resumed: {of_fd:?}");
        assert!(
            of_fd
                .iter()
                .all(|l| l.sandbox_id == sandbox_id && l.timeout == 55.0)
        );
        assert_eq!(of_fd[0].last_entry_id, "");
        assert!(
            of_fd[1..].iter().all(|l| !l.last_entry_id.is_empty()),
            "{of_fd:?}"
        );
    }
    let waits = double.calls_of("SandboxWait");
    assert!(!waits.is_empty());
    for wait in waits {
        let Message::SandboxWait(wait) = wait.message else {
            panic!("wait request");
        };
        assert_eq!((wait.sandbox_id.as_str(), wait.timeout), (sandbox_id, 10.0));
    }

    for call in double.calls_of("SandboxGetTaskId") {
        let Message::SandboxGetTaskId(poll) = call.message else {
            panic!("task id request");
        };
        assert_eq!(poll.sandbox_id, sandbox_id);
    }
    let Message::SandboxTerminate(terminate) = &double.calls_of("SandboxTerminate")[0].message
    else {
        panic!("terminate request");
    };
    assert_eq!(terminate.sandbox_id, sandbox_id);
    assert_eq!(double.terminated(), vec![sandbox_id.to_owned()]);
    assert!(double.running().is_empty());
    assert!(
        run.result
            .enforced_limits
            .contains(&format!("sandbox_id={sandbox_id}"))
    );
    assert!(
        run.result
            .enforced_limits
            .contains(&"network=blocked".to_owned())
    );
    assert_eq!(run.usage.sandbox_id.as_deref(), Some(sandbox_id));
    assert!(run.usage.deleted);
    assert_eq!((run.usage.vcpu, run.usage.memory_mib), (1.0, 512));
    assert_eq!(run.usage.gpu, None);
    let expected = candidate.prices.start
        + (1.0 * candidate.prices.vcpu_second + 0.5 * candidate.prices.gib_second)
            * run
                .usage
                .sandbox_seconds
                .max(candidate.prices.min_billed_seconds);
    assert!((run.cost_usd(&candidate) - expected).abs() < 1e-15);
    assert!(run.cost_usd(&candidate) > 0.0);
}

#[test]
fn modal_gives_a_gpu_job_its_gpus_and_bills_them() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = provider(&server, dir.path());
    let candidate = candidate("modal", None);
    // (accepted kinds, count) → Modal's `gpu_type` and the catalog kind billed: the kind the
    // router priced, i.e. the cheapest accepted one (also for "any kind").
    let cases: [(&[&str], u32, &str, &str); 3] = [
        (&[], 1, "T4", "t4"),
        (&["H100"], 2, "H100", "h100"),
        (&["h100", "a100-80gb"], 4, "A100-80GB", "a100-80gb"),
    ];
    for (kinds, count, gpu_type, kind) in cases {
        let mut job = command_job("echo on the gpu");
        job.gpu = Some(GpuRequest {
            count,
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        });
        let run = provider
            .run(&candidate, &job, &RunControl::new())
            .expect("run");
        assert_eq!(run.result.status, RunStatus::Ok, "{:?}", run.result);
        assert_eq!(run.result.stdout, "on the gpu\n");

        let create = double.creates().pop().expect("a create");
        let resources = create
            .definition
            .and_then(|d| d.resources)
            .expect("resources");
        let gpu = resources.gpu_config.expect("gpu_config sent");
        assert_eq!(gpu.gpu_type, gpu_type, "{kinds:?}");
        assert_eq!(gpu.count, count, "{kinds:?}");
        assert_eq!(
            (
                resources.milli_cpu,
                resources.milli_cpu_max,
                resources.memory_mb,
                resources.memory_mb_max
            ),
            (500, 500, 512, 512),
            "CPU and memory as for any job"
        );
        assert!(
            run.result
                .enforced_limits
                .contains(&format!("gpu={gpu_type}:{count}")),
            "{:?}",
            run.result.enforced_limits
        );

        assert_eq!(
            run.usage.gpu,
            Some(GpuUsage {
                kind: kind.to_owned(),
                count
            })
        );
        let prices = &candidate.prices;
        let gpu_second = prices.gpu_second[kind];
        let expected = prices.start
            + (1.0 * prices.vcpu_second + 0.5 * prices.gib_second + f64::from(count) * gpu_second)
                * run.usage.sandbox_seconds.max(prices.min_billed_seconds);
        assert!(
            (run.cost_usd(&candidate) - expected).abs() < 1e-15,
            "{} != {expected}",
            run.cost_usd(&candidate)
        );
        // What the router predicted for the request, at the measured lifetime.
        let resources = Resources {
            gpu: job.gpu.clone(),
            ..Resources::default()
        };
        let listed = candidate.list_cost_usd(&resources, run.usage.sandbox_seconds);
        assert!((run.cost_usd(&candidate) - listed).abs() < 1e-15);
    }
    assert_eq!(double.terminated().len(), 3);
}

#[test]
fn modal_refuses_a_gpu_it_cannot_give_before_calling() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = provider(&server, dir.path());
    let gpu_job = |kinds: &[&str]| {
        let mut job = command_job("nvidia-smi");
        job.gpu = Some(GpuRequest {
            count: 1,
            kinds: kinds.iter().map(|k| (*k).to_owned()).collect(),
        });
        job
    };
    // A kind Modal does not have: the job's fault.
    let failure = provider
        .run(
            &candidate("modal", None),
            &gpu_job(&["rtx-4090"]),
            &RunControl::new(),
        )
        .expect_err("unknown kind");
    assert!(failure.error.is_user_error(), "{failure}");
    assert!(!failure.retryable());
    assert_eq!(failure.error.class(), "invalid_job");
    let text = failure.to_string();
    assert!(
        text.contains("Modal has no GPU of kind `rtx-4090`") && text.contains("h100"),
        "{text}"
    );
    // A Modal kind the catalog does not price for this candidate.
    let failure = provider
        .run(
            &candidate("modal", None),
            &gpu_job(&["l40s"]),
            &RunControl::new(),
        )
        .expect_err("unpriced kind");
    assert!(
        matches!(failure.error, AdapterError::Unsupported { .. }),
        "{failure:?}"
    );
    assert!(failure.usage.is_none());
    assert!(double.calls().is_empty(), "refused before any call");
}

#[test]
fn modal_inline_code_runs_in_the_python_image_and_a_nonzero_exit_is_reported() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = code_job("import sys\nprint(open('data/in.txt').read())\nsys.exit(3)");
    job.files = vec![InputFile {
        path: "data/in.txt".into(),
        content: "payload".into(),
    }];
    job.allow_network = true;
    job.cpu = 2.0;
    job.memory_mib = 2048;
    let run = provider(&server, dir.path())
        .run(&candidate("modal", None), &job, &RunControl::new())
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Failed);
    assert_eq!(run.result.exit_code, Some(3));
    assert_eq!(run.result.error_class.as_deref(), Some("exit_code"));
    assert_eq!(run.result.stdout, "payload\n");
    let Message::ImageGetOrCreate(image) = &double.calls_of("ImageGetOrCreate")[0].message else {
        panic!("image request");
    };
    assert_eq!(
        image.image.as_ref().map(|i| i.dockerfile_commands.clone()),
        Some(vec!["FROM python:3.12-slim".to_owned()])
    );
    let definition = double.creates()[0].definition.clone().expect("definition");
    assert!(definition.entrypoint_args[2].ends_with("exec python3 main.py\n"));
    assert_eq!(
        definition.network_access.map(|n| n.network_access_type),
        Some(proto::network_access::NetworkAccessType::Open as i32)
    );
    let resources = definition.resources.expect("resources");
    assert_eq!((resources.milli_cpu, resources.memory_mb), (1000, 2048));
    assert_eq!((run.usage.vcpu, run.usage.memory_mib), (2.0, 2048));
    assert!(
        run.result
            .enforced_limits
            .contains(&"network=allowed".to_owned())
    );
    assert_eq!(double.terminated().len(), 1);
}

#[test]
fn modal_output_is_capped_per_stream() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let observed = Observed::default();
    let mut job = command_job("printf abcdefgh; printf 12345678 >&2");
    job.max_output_bytes = 4;
    let run = provider(&server, dir.path())
        .run(&candidate("modal", None), &job, &observed.control())
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Ok);
    assert_eq!(run.result.stdout, "abcd");
    assert_eq!(run.result.stderr, "1234");
    assert!(run.result.stdout_truncated && run.result.stderr_truncated);
    assert_eq!(observed.text(OutputStream::Stdout), "abcd");
    assert_eq!(double.terminated().len(), 1);
}

#[test]
fn modal_follows_an_image_build_through_the_build_stream() {
    let (server, double) = ModalDouble::start(Behavior {
        build_image: true,
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = provider(&server, dir.path())
        .run(
            &candidate("modal", None),
            &command_job("echo built"),
            &RunControl::new(),
        )
        .expect("run");
    assert_eq!(run.result.stdout, "built\n");
    let joins: Vec<_> = double
        .calls_of("ImageJoinStreaming")
        .into_iter()
        .filter_map(|c| match c.message {
            Message::ImageJoinStreaming(m) => Some(m),
            _ => None,
        })
        .collect();
    assert_eq!(joins.len(), 2, "the first stream ended without a result");
    assert!(
        joins
            .iter()
            .all(|j| j.image_id == "im-1" && j.timeout == 55.0)
    );
    assert_eq!(joins[0].last_entry_id, "");
    assert_eq!(
        joins[1].last_entry_id, "b-1",
        "resumed after the last entry"
    );
    assert_eq!(double.creates().len(), 1);
}

#[test]
fn modal_image_that_does_not_build_fails_before_a_sandbox_exists() {
    let (failure, double) = failing_run(Behavior {
        build_image: true,
        image_build_fails: true,
        ..Behavior::default()
    });
    assert!(
        matches!(
            failure.error,
            AdapterError::SandboxFailed {
                phase: Phase::Create,
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert!(
        failure.to_string().contains("manifest unknown"),
        "{failure}"
    );
    assert!(failure.usage.is_none());
    assert!(double.creates().is_empty());
}

#[test]
fn modal_quota_is_retryable_with_the_providers_message() {
    let (failure, double) = failing_run(Behavior {
        failures: vec![Failure::always(
            "SandboxCreate",
            Code::ResourceExhausted,
            "You have reached the limit of 100 concurrent sandboxes",
        )],
        ..Behavior::default()
    });
    assert!(failure.retryable(), "{failure}");
    assert!(failure.error.is_quota());
    assert_eq!(failure.error.class(), "quota");
    assert_eq!(failure.error.run_status(), RunStatus::Quota);
    assert!(
        failure
            .to_string()
            .contains("limit of 100 concurrent sandboxes"),
        "{failure}"
    );
    assert!(failure.usage.is_none());
    assert!(double.terminated().is_empty());
}

#[test]
fn modal_bad_token_is_an_auth_error_that_does_not_leak_it() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let wrong = "as-wrong-secret-with-bits";
    let provider = ModalProvider::new(ModalConfig {
        token_secret: Some(wrong.into()),
        ..config(&server, dir.path())
    })
    .expect("provider");
    let failure = provider
        .run(
            &candidate("modal", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("unauthenticated");
    assert!(!failure.retryable());
    assert!(failure.error.is_auth());
    assert_eq!(failure.error.class(), "auth");
    assert!(failure.to_string().contains("Invalid token"), "{failure}");
    for text in [failure.to_string(), format!("{failure:?}")] {
        assert!(!text.contains(wrong) && !text.contains(TOKEN_ID), "{text}");
    }
    assert_eq!(double.calls_of("AppGetOrCreate").len(), 1);
    assert!(double.creates().is_empty());

    let (failure, _double) = failing_run(Behavior {
        failures: vec![Failure::always(
            "AppGetOrCreate",
            Code::PermissionDenied,
            "token does not have access to workspace",
        )],
        ..Behavior::default()
    });
    assert!(failure.error.is_auth() && !failure.retryable(), "{failure}");
}

#[test]
fn modal_not_found_and_invalid_argument_are_not_retryable() {
    let (failure, _double) = failing_run(Behavior {
        failures: vec![Failure::always(
            "AppGetOrCreate",
            Code::NotFound,
            "Environment 'nope' not found",
        )],
        ..Behavior::default()
    });
    assert!(!failure.retryable());
    assert_eq!(failure.error.class(), "rpc_not_found");
    assert!(failure.to_string().contains("Environment 'nope' not found"));

    let (failure, _double) = failing_run(Behavior {
        failures: vec![Failure::always(
            "SandboxCreate",
            Code::InvalidArgument,
            "memory must be at least 128 MiB",
        )],
        ..Behavior::default()
    });
    assert!(!failure.retryable());
    assert_eq!(failure.error.class(), "rpc_invalid_argument");
    assert!(
        !failure.error.is_user_error(),
        "the provider's rule, not the job's"
    );
}

#[test]
fn modal_server_errors_are_retryable() {
    for (rpc, code, class) in [
        ("SandboxCreate", Code::Unavailable, "rpc_unavailable"),
        ("ImageGetOrCreate", Code::Internal, "rpc_internal"),
    ] {
        let (failure, double) = failing_run(Behavior {
            failures: vec![Failure::always(rpc, code, "upstream connect error")],
            ..Behavior::default()
        });
        assert!(failure.retryable(), "{rpc}: {failure}");
        assert_eq!(failure.error.class(), class);
        assert_eq!(failure.error.run_status(), RunStatus::Unavailable);
        assert!(!failure.error.job_may_have_started());
        assert!(failure.to_string().contains("upstream connect error"));
        assert!(double.terminated().is_empty(), "nothing was created");
    }
}

#[test]
fn modal_transient_errors_of_polls_and_output_streams_are_ridden_out() {
    let (server, double) = ModalDouble::start(Behavior {
        failures: vec![
            Failure::once("SandboxGetTaskId", Code::Unavailable, "try again"),
            Failure::once("SandboxGetLogs", Code::Unavailable, "try again"),
            Failure::once("SandboxWait", Code::Internal, "try again"),
        ],
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = provider(&server, dir.path())
        .run(
            &candidate("modal", None),
            &command_job("echo fine"),
            &RunControl::new(),
        )
        .expect("run");
    assert_eq!(run.result.status, RunStatus::Ok);
    assert_eq!(run.result.stdout, "fine\n");
    assert_eq!(double.calls_of("SandboxGetTaskId").len(), 2);
    assert!(double.calls_of("SandboxGetLogs").len() >= 3);
    assert!(double.calls_of("SandboxWait").len() >= 2);
}

#[test]
fn modal_error_after_the_job_started_is_not_retried_and_the_sandbox_is_terminated() {
    let (failure, double) = failing_run(Behavior {
        failures: vec![Failure::always(
            "SandboxWait",
            Code::Unavailable,
            "worker lost",
        )],
        ..Behavior::default()
    });
    assert!(failure.error.job_may_have_started(), "{failure:?}");
    assert!(
        matches!(
            failure.error,
            AdapterError::Rpc {
                phase: Phase::Exec,
                ..
            }
        ),
        "{failure:?}"
    );
    assert_eq!(double.calls_of("SandboxWait").len(), 4, "1 + 3 repeats");
    let usage = failure
        .usage
        .as_ref()
        .expect("usage of the created sandbox");
    assert!(usage.deleted);
    assert_eq!(double.terminated().len(), 1);
    assert!(failure.cost_usd(&candidate("modal", None)) > 0.0);
}

#[test]
fn modal_cancel_terminates_the_sandbox_while_the_job_runs() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let observed = Observed::default();
    let control = observed.control();
    cancel_when_seen(&observed, &control, "started");
    let run = provider(&server, dir.path())
        .run(
            &candidate("modal", None),
            &command_job("echo started; sleep 600"),
            &control,
        )
        .expect("cancelled run");
    assert_eq!(run.result.status, RunStatus::Failed);
    assert_eq!(run.result.error_class.as_deref(), Some("cancelled"));
    assert_eq!(run.result.stdout, "started\n");
    assert_eq!(double.terminated().len(), 1);
    assert!(double.running().is_empty(), "the job's process was killed");
    assert!(run.usage.deleted);
}

#[test]
fn modal_cancel_before_start_creates_nothing() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let control = RunControl::new();
    control.cancel();
    let run = provider(&server, dir.path())
        .run(&candidate("modal", None), &command_job("true"), &control)
        .expect("cancelled run");
    assert_eq!(run.result.error_class.as_deref(), Some("cancelled"));
    assert!(double.calls().is_empty());
    assert_eq!(run.cost_usd(&candidate("modal", None)), 0.0);
}

#[test]
fn modal_wall_clock_timeout_terminates_the_sandbox() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let mut job = command_job("echo tick; sleep 600");
    job.timeout = Duration::from_millis(500);
    let run = provider(&server, dir.path())
        .run(&candidate("modal", None), &job, &RunControl::new())
        .expect("timed-out run");
    assert_eq!(run.result.status, RunStatus::Timeout);
    assert_eq!(
        run.result.error_class.as_deref(),
        Some("wall_clock_timeout")
    );
    assert_eq!(run.result.stdout, "tick\n");
    assert!(run.result.exec_ms >= 500.0, "{}", run.result.exec_ms);
    assert_eq!(
        double.creates()[0]
            .definition
            .as_ref()
            .map(|d| d.timeout_secs),
        Some(61)
    );
    assert_eq!(double.terminated().len(), 1);
    assert!(double.running().is_empty());
}

#[test]
fn modal_sandbox_that_is_never_scheduled_times_out_retryably_and_is_terminated() {
    let (server, double) = ModalDouble::start(Behavior {
        unscheduled_polls: u32::MAX,
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = ModalProvider::new(ModalConfig {
        start_timeout: Duration::from_millis(200),
        ..config(&server, dir.path())
    })
    .expect("provider");
    let failure = provider
        .run(
            &candidate("modal", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("not scheduled");
    assert!(
        matches!(
            failure.error,
            AdapterError::Timeout {
                phase: Phase::Wait,
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert!(double.calls_of("SandboxGetTaskId").len() >= 2);
    assert_eq!(double.terminated().len(), 1);
}

#[test]
fn modal_sandbox_that_fails_to_start_is_retryable() {
    let (failure, double) = failing_run(Behavior {
        init_failure: true,
        ..Behavior::default()
    });
    assert!(
        matches!(
            failure.error,
            AdapterError::SandboxFailed {
                phase: Phase::Wait,
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert!(
        failure.to_string().contains("Image pull failed"),
        "{failure}"
    );
    assert_eq!(double.terminated().len(), 1);
}

#[test]
fn modal_terminate_of_a_gone_sandbox_counts_and_a_failing_one_is_retried_then_reported() {
    let (server, double) = ModalDouble::start(Behavior {
        failures: vec![Failure::always(
            "SandboxTerminate",
            Code::NotFound,
            "Sandbox not found",
        )],
        ..Behavior::default()
    });
    let dir = tempfile::tempdir().expect("tempdir");
    let run = provider(&server, dir.path())
        .run(
            &candidate("modal", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect("run");
    assert!(run.usage.deleted, "already gone: nothing left to pay for");
    assert_eq!(double.calls_of("SandboxTerminate").len(), 1);

    let (server, double) = ModalDouble::start(Behavior {
        failures: vec![Failure::always(
            "SandboxTerminate",
            Code::Unavailable,
            "try later",
        )],
        ..Behavior::default()
    });
    let run = provider(&server, dir.path())
        .run(
            &candidate("modal", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect("the job's result stands when the terminate fails");
    assert_eq!(run.result.status, RunStatus::Ok);
    assert!(!run.usage.deleted);
    assert_eq!(double.calls_of("SandboxTerminate").len(), 3);
}

#[test]
fn modal_unreachable_server_is_a_retryable_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    let provider = ModalProvider::new(ModalConfig {
        token_id: Some(TOKEN_ID.into()),
        token_secret: Some(TOKEN_SECRET.into()),
        server_url: url,
        ..ModalConfig::default()
    })
    .expect("provider");
    let failure = provider
        .run(
            &candidate("modal", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("connect");
    assert!(
        matches!(
            failure.error,
            AdapterError::Connect {
                phase: Phase::Create,
                ..
            }
        ),
        "{failure:?}"
    );
    assert!(failure.retryable());
    assert!(failure.usage.is_none());
    assert!(!failure.to_string().contains(TOKEN_SECRET));
}

#[test]
fn modal_refuses_what_it_cannot_run_before_calling() {
    let (server, double) = ModalDouble::start(Behavior::default());
    let dir = tempfile::tempdir().expect("tempdir");
    let provider = provider(&server, dir.path());
    // Files travel in the entrypoint, which Modal limits to 64 KiB (less than other adapters).
    let mut job = command_job("true");
    job.files = vec![InputFile {
        path: "big.txt".into(),
        content: "x".repeat(60 * 1024),
    }];
    let failure = provider
        .run(&candidate("modal", None), &job, &RunControl::new())
        .expect_err("too big");
    assert!(failure.error.is_user_error(), "{failure}");
    assert!(failure.to_string().contains("65520"), "{failure}");
    let failure = provider
        .run(
            &candidate("e2b", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("other provider");
    assert!(matches!(failure.error, AdapterError::Unsupported { .. }));
    assert!(double.calls().is_empty());
}

#[test]
fn modal_without_a_token_is_unavailable_and_refuses_to_run() {
    let provider = ModalProvider::new(ModalConfig::default()).expect("provider");
    let Availability::Unavailable { reason } = provider.availability() else {
        panic!("available without a token");
    };
    assert!(
        reason.contains("MODAL_TOKEN_ID and MODAL_TOKEN_SECRET are not set"),
        "{reason}"
    );
    let failure = provider
        .run(
            &candidate("modal", None),
            &command_job("true"),
            &RunControl::new(),
        )
        .expect_err("not configured");
    assert!(matches!(failure.error, AdapterError::NotConfigured { .. }));
    assert!(!failure.retryable());
    let configured = ModalProvider::new(ModalConfig {
        token_id: Some(TOKEN_ID.into()),
        token_secret: Some(TOKEN_SECRET.into()),
        ..ModalConfig::default()
    })
    .expect("provider");
    let availability = configured.availability();
    assert!(availability.is_available());
    assert!(availability.to_string().contains("https://api.modal.com"));
    assert!(!availability.to_string().contains(TOKEN_SECRET));
    // The generated enum names are the published ones.
    assert_eq!(
        GenericStatus::KernelOomKill.as_str_name(),
        "GENERIC_STATUS_KERNEL_OOM_KILL"
    );
}
