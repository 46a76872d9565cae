//! Many sequential runs leave nothing behind: no process, no mount, no temporary directory,
//! no control group. 1,000 runs on `process` and `bubblewrap`, 100 on `gvisor` (each of its
//! runs starts and deletes a whole sandbox, so fewer keep the suite's time reasonable).

mod common;

use std::fs;
use std::time::Duration;

use common::{command, eventually_none, live_with_token};
use sandstorm_features::IsolationBackend;
use sandstorm_runtime::{Availability, Engine, EngineConfig, RunStatus};

fn temp_entries() -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(std::env::temp_dir())
        .map(|d| {
            d.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("sandstorm-job-") || n.starts_with("sandstorm-gvisor-"))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

fn mounts() -> usize {
    fs::read_to_string("/proc/self/mountinfo").map_or(0, |m| m.lines().count())
}

fn job_cgroups() -> usize {
    ["/sys/fs/cgroup/pids/sandstorm", "/sys/fs/cgroup/sandstorm"]
        .iter()
        .filter_map(|d| fs::read_dir(d).ok())
        .flat_map(|d| d.filter_map(Result::ok))
        .filter(|e| e.path().is_dir())
        .count()
}

fn sequential_runs_leave_nothing_behind(backend: IsolationBackend, runs: usize, token: &str) {
    let engine = Engine::with_config(&EngineConfig {
        gvisor_pool_size: 1,
    });
    if let Some(Availability::Unavailable { reason }) = engine.availability().get(&backend) {
        eprintln!("SKIPPED {backend}: unavailable on this host: {reason}");
        return;
    }
    let runner = engine.backend(backend).expect("backend");
    let (mounts_before, cgroups_before, temp_before) = (mounts(), job_cgroups(), temp_entries());
    // A background child per run that would outlive a sloppy clean-up.
    let job = command(&format!("sleep 30.{token} & echo $$"), 30.0);
    for i in 0..runs {
        let r = runner.run(&job).expect("run");
        assert_eq!(r.status, RunStatus::Ok, "run {i}: {r:?}");
    }
    drop(engine);
    let left = eventually_none(Duration::from_secs(10), || live_with_token(token));
    assert!(left.is_empty(), "{backend}: processes left: {left:?}");
    // Used gVisor sandboxes are deleted by a background thread: give it a moment.
    let new_temp = || -> Vec<String> {
        temp_entries()
            .into_iter()
            .filter(|n| !temp_before.contains(n))
            .collect()
    };
    let mut temp = new_temp();
    for _ in 0..100 {
        if temp.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
        temp = new_temp();
    }
    assert!(
        temp.is_empty(),
        "{backend}: temporary directories left: {temp:?}"
    );
    assert_eq!(mounts(), mounts_before, "{backend}: mounts changed");
    assert!(
        job_cgroups() <= cgroups_before,
        "{backend}: control groups left"
    );
}

/// One test, the tiers one after the other: the checks look at host-wide state (processes,
/// `/tmp`, mounts, control groups) that parallel runs would disturb.
#[test]
fn sequential_runs_on_every_tier_leave_nothing_behind() {
    sequential_runs_leave_nothing_behind(IsolationBackend::Process, 1000, "7501");
    sequential_runs_leave_nothing_behind(IsolationBackend::Bubblewrap, 1000, "7502");
    sequential_runs_leave_nothing_behind(IsolationBackend::Gvisor, 100, "7503");
}
