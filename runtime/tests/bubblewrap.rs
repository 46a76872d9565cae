//! What only the bubblewrap backend enforces: network cut-off, a read-only system, no host
//! secrets; and that it probes available on this host.

mod common;

use std::io::ErrorKind;
use std::net::TcpListener;

use common::{code, command, run};
use sandstorm_features::{IsolationBackend, Language};
use sandstorm_runtime::{Availability, Engine, RunStatus};

const BWRAP: IsolationBackend = IsolationBackend::Bubblewrap;

/// Runs Python inside bwrap that connects to a listener on the host's loopback.
fn connect_to_host_listener(allow_network: bool) -> (sandstorm_runtime::RunResult, bool) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a host listener");
    listener.set_nonblocking(true).expect("nonblocking");
    let port = listener.local_addr().expect("local addr").port();
    let mut job = code(
        Language::Python,
        &format!(
            "import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=5)\n\
             s.sendall(b'hi')\nprint('connected')\n"
        ),
        30.0,
    );
    job.allow_network = allow_network;
    let r = run(&Engine::new(), BWRAP, &job);
    let accepted = match listener.accept() {
        Ok(_) => true,
        Err(e) if e.kind() == ErrorKind::WouldBlock => false,
        Err(e) => panic!("accept: {e}"),
    };
    (r, accepted)
}

#[test]
fn network_is_blocked_unless_allowed() {
    let (r, accepted) = connect_to_host_listener(false);
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert_ne!(r.exit_code, Some(0));
    assert!(!r.stdout.contains("connected"));
    assert!(!accepted, "the host listener saw a connection");
    assert!(r.enforced_limits.contains(&"network=blocked".to_owned()));

    let (r, accepted) = connect_to_host_listener(true);
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    assert_eq!(r.stdout, "connected\n");
    assert!(accepted, "the host listener saw no connection");
}

#[test]
fn system_directories_are_read_only() {
    let r = run(
        &Engine::new(),
        BWRAP,
        &command("touch /usr/sandstorm-probe", 30.0),
    );
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert!(r.stderr.contains("Read-only file system"), "{r:?}");
    assert!(!std::path::Path::new("/usr/sandstorm-probe").exists());
    for path in ["/x", "/etc/x"] {
        let r = run(
            &Engine::new(),
            BWRAP,
            &command(&format!("touch {path}"), 30.0),
        );
        assert_eq!(r.status, RunStatus::Failed, "{path}: {r:?}");
    }
    // The job directory and /tmp stay writable.
    let r = run(
        &Engine::new(),
        BWRAP,
        &command("touch /work/a /tmp/b && ls /work/a /tmp/b", 30.0),
    );
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
}

#[test]
fn host_secrets_are_not_readable() {
    for path in ["/etc/shadow", "/etc/gshadow", "/etc/ssl/private"] {
        let r = run(&Engine::new(), BWRAP, &command(&format!("ls {path}"), 30.0));
        assert_eq!(r.status, RunStatus::Failed, "{path}: {r:?}");
    }
    // Readable on the host (we run as root in CI), but not inside.
    let r = run(&Engine::new(), BWRAP, &command("cat /etc/shadow", 30.0));
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert!(r.stdout.is_empty());
    let r = run(&Engine::new(), BWRAP, &command("ls -a /root /home", 30.0));
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert!(r.stdout.is_empty(), "{r:?}");
}

#[test]
fn job_runs_in_work_with_no_capabilities() {
    let r = run(
        &Engine::new(),
        BWRAP,
        &command("pwd; grep CapEff /proc/self/status", 30.0),
    );
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    assert_eq!(r.stdout, "/work\nCapEff:\t0000000000000000\n");
}

/// A real segfault inside (the job runs as the namespace's pid 1, which only kernel faults
/// and SIGKILL can kill) comes back as bwrap's exit code 128 + SIGSEGV and a failure.
#[test]
fn segfault_inside_is_reported_as_a_failure() {
    let job = code(
        Language::Python,
        "import ctypes\nctypes.string_at(0)\n",
        30.0,
    );
    let r = run(&Engine::new(), BWRAP, &job);
    assert_eq!(r.status, RunStatus::Failed, "{r:?}");
    assert_eq!(r.exit_code, Some(128 + 11));
    assert_eq!(r.error_class.as_deref(), Some("signal:SIGSEGV"));
}

/// The job's own peak memory reaches the result through bwrap.
#[test]
fn peak_memory_of_the_job_is_measured() {
    let job = code(
        Language::Python,
        "b = bytearray(100 * 1024 * 1024)\nb[::4096] = b'x' * len(b[::4096])\n",
        30.0,
    );
    let r = run(&Engine::new(), BWRAP, &job);
    assert_eq!(r.status, RunStatus::Ok, "{r:?}");
    let peak = r.peak_memory_mib.unwrap_or(0.0);
    assert!(peak > 100.0, "peak {peak} MiB");
}

#[test]
fn process_bubblewrap_and_gvisor_probe_available() {
    let engine = Engine::new();
    let availability = engine.availability();
    let bwrap = &availability[&BWRAP];
    assert!(bwrap.is_available(), "{bwrap}");
    let process = &availability[&IsolationBackend::Process];
    assert!(process.is_available(), "{process}");
    let gvisor = &availability[&IsolationBackend::Gvisor];
    assert!(gvisor.is_available(), "{gvisor}");
    // Tiers this engine has no runner for are listed with the reason.
    for missing in [IsolationBackend::Microvm, IsolationBackend::RootlessOci] {
        match &availability[&missing] {
            Availability::Unavailable { reason } => assert!(!reason.is_empty()),
            other => panic!("{missing}: {other}"),
        }
    }
    // Cached: the same map is returned without probing again.
    assert!(std::ptr::eq(availability, engine.availability()));
}
