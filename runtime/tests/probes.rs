//! The security probe suite: on every local backend, a job that is hostile on purpose tries
//! to escape or abuse the host, and the test checks from the host side that it failed and
//! left the host untouched. A backend that cannot run on this host is reported as SKIPPED
//! with its reason (on stderr, visibly), never silently passed.
//!
//! Each attack prints `ESCAPED <what>` when a step succeeds that must not; the tests assert
//! that no such line appears AND check the host's own state (files, processes, sockets).

mod common;

use std::fs;
use std::io::ErrorKind;
use std::net::{TcpListener, UdpSocket};
use std::process::{Child, Command};
use std::time::Duration;

use common::{code, command, eventually_none, live_with_token};
use sandstorm_features::{InputFile, IsolationBackend, Language};
use sandstorm_runtime::{Availability, Engine, JobSpec, RunResult, RunStatus};

/// Runs `job` on `backend`, or returns `None` after reporting why the backend is skipped.
fn attempt(backend: IsolationBackend, job: &JobSpec) -> Option<RunResult> {
    let engine = Engine::new();
    match engine.availability().get(&backend) {
        Some(Availability::Available { .. }) => {}
        Some(Availability::Unavailable { reason }) => {
            eprintln!("SKIPPED {backend}: unavailable on this host: {reason}");
            return None;
        }
        None => {
            eprintln!("SKIPPED {backend}: no such backend in this engine");
            return None;
        }
    }
    let runner = engine.backend(backend)?;
    Some(
        runner
            .run(job)
            .unwrap_or_else(|e| panic!("{backend}: run failed: {e}")),
    )
}

fn python(script: &str, timeout_s: f64) -> JobSpec {
    code(Language::Python, script, timeout_s)
}

fn assert_contained(backend: IsolationBackend, r: &RunResult) {
    assert!(
        !r.stdout.contains("ESCAPED"),
        "{backend}: the attack succeeded:\n{}\nstderr: {}",
        r.stdout,
        r.stderr
    );
    assert!(
        r.stdout.contains("DONE"),
        "{backend}: the probe did not run to its end: {r:?}"
    );
}

/// A host directory only the test knows, holding a secret file.
struct HostSecret {
    dir: tempfile::TempDir,
    token: String,
}

impl HostSecret {
    fn new(tag: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("sandstorm-probe-host-")
            .tempdir()
            .expect("host temp dir");
        let token = format!("secret-{tag}-{}", std::process::id());
        fs::write(dir.path().join("secret.txt"), &token).expect("secret");
        Self { dir, token }
    }

    fn secret_path(&self) -> String {
        self.dir.path().join("secret.txt").display().to_string()
    }
}

fn write_outside_the_job_dir(backend: IsolationBackend) {
    let host = HostSecret::new("write");
    let target = host.dir.path().join("planted.txt");
    let script = format!(
        r#"
import os
for path in [{target:?}, "/etc/sandstorm-planted", "/usr/sandstorm-planted", "/root/sandstorm-planted", "/var/tmp/sandstorm-planted"]:
    try:
        with open(path, "w") as f:
            f.write("x")
        if not path.startswith("/tmp") and os.path.exists(path):
            print("WROTE", path)
    except OSError:
        pass
print("DONE")
"#,
        target = target.display().to_string()
    );
    let Some(r) = attempt(backend, &python(&script, 30.0)) else {
        return;
    };
    assert!(r.stdout.contains("DONE"), "{r:?}");
    for planted in [
        target.clone(),
        "/etc/sandstorm-planted".into(),
        "/usr/sandstorm-planted".into(),
        "/root/sandstorm-planted".into(),
        "/var/tmp/sandstorm-planted".into(),
    ] {
        assert!(
            !planted.exists(),
            "{backend}: the job wrote {}",
            planted.display()
        );
    }
}

fn read_host_secrets(backend: IsolationBackend) {
    let host = HostSecret::new("read");
    let script = format!(
        r#"
for path in [{secret:?}, "/etc/shadow", "/root/.bash_history", "/etc/ssl/private", "/proc/1/environ"]:
    try:
        with open(path, "rb") as f:
            data = f.read()
        # Inside a pid namespace /proc/1 is the job itself: only the host's environment counts.
        if data and (not path.startswith("/proc") or b"CARGO" in data):
            print("READ", path, data[:200])
    except OSError:
        pass
print("DONE")
"#,
        secret = host.secret_path()
    );
    let Some(r) = attempt(backend, &python(&script, 30.0)) else {
        return;
    };
    assert!(r.stdout.contains("DONE"), "{r:?}");
    assert!(!r.stdout.contains(&host.token), "{backend}: {}", r.stdout);
    assert!(
        !r.stdout.contains("READ /etc/shadow"),
        "{backend}: {}",
        r.stdout
    );
    assert!(
        !r.stdout.contains("READ /proc/1/environ"),
        "{backend}: {}",
        r.stdout
    );
}

fn symlink_and_hard_link_tricks(backend: IsolationBackend) {
    let host = HostSecret::new("link");
    let script = format!(
        r#"
import os
secret = {secret:?}
for name, target in [("s1", secret), ("s2", "/etc/shadow"), ("s3", "/proc/1/root/etc/shadow")]:
    try:
        os.symlink(target, name)
        with open(name, "rb") as f:
            print("ESCAPED symlink", target, f.read()[:100])
    except OSError:
        pass
for name, target in [("h1", secret), ("h2", "/etc/shadow")]:
    try:
        os.link(target, name)
        print("ESCAPED hardlink", target)
    except OSError:
        pass
print("DONE")
"#,
        secret = host.secret_path()
    );
    let Some(r) = attempt(backend, &python(&script, 30.0)) else {
        return;
    };
    assert_contained(backend, &r);
    assert!(!r.stdout.contains(&host.token));
    let meta = fs::metadata(host.secret_path()).expect("secret still there");
    assert_eq!(
        std::os::unix::fs::MetadataExt::nlink(&meta),
        1,
        "{backend}: a hard link to the host secret was made"
    );
}

fn proc_probing_of_host_processes(backend: IsolationBackend) {
    let me = std::process::id();
    let script = format!(
        r#"
import os
pid = {me}
for what in ["environ", "mem", "maps", "root/etc/hostname", "cwd"]:
    path = "/proc/%d/%s" % (pid, what)
    try:
        if what == "cwd":
            os.listdir(path)
            print("ESCAPED", path)
            continue
        with open(path, "rb") as f:
            data = f.read(4096)
        if b"CARGO" in data or what in ("mem", "maps"):
            print("ESCAPED", path)
    except OSError:
        pass
print("DONE")
"#
    );
    let Some(r) = attempt(backend, &python(&script, 30.0)) else {
        return;
    };
    assert_contained(backend, &r);
}

fn ptrace_of_the_host(backend: IsolationBackend) {
    let mut victim = spawn_sleeper("7411");
    let script = format!(
        r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
PTRACE_ATTACH, PTRACE_SEIZE = 16, 0x4206
for req in (PTRACE_ATTACH, PTRACE_SEIZE):
    if libc.ptrace(req, {pid}, 0, 0) == 0:
        print("ESCAPED ptrace", req)
child = os.fork()
if child == 0:
    import time; time.sleep(5); os._exit(0)
if libc.ptrace(PTRACE_ATTACH, child, 0, 0) == 0:
    print("ESCAPED ptrace of own child")
os.kill(child, 9)
buf = ctypes.create_string_buffer(16)
class IOV(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
local = IOV(ctypes.cast(buf, ctypes.c_void_p), 16)
remote = IOV(0x400000, 16)
if libc.process_vm_readv({pid}, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) > 0:
    print("ESCAPED process_vm_readv")
print("DONE")
"#,
        pid = victim.id()
    );
    let result = attempt(backend, &python(&script, 30.0));
    let alive = victim.try_wait().expect("victim status").is_none();
    stop(&mut victim);
    let Some(r) = result else {
        return;
    };
    assert_contained(backend, &r);
    assert!(alive, "{backend}: the host process died");
}

fn network_egress(backend: IsolationBackend) {
    let tcp = TcpListener::bind("127.0.0.1:0").expect("tcp listener");
    tcp.set_nonblocking(true).expect("nonblocking");
    let udp = UdpSocket::bind("127.0.0.1:0").expect("udp socket");
    udp.set_nonblocking(true).expect("nonblocking");
    let (tcp_port, udp_port) = (
        tcp.local_addr().expect("addr").port(),
        udp.local_addr().expect("addr").port(),
    );
    let script = format!(
        r#"
import socket, subprocess
def tcp():
    s = socket.create_connection(("127.0.0.1", {tcp_port}), timeout=2)
    s.sendall(b"hello"); s.close()
def udp():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.sendto(b"hello", ("127.0.0.1", {udp_port}))
def dns():
    socket.getaddrinfo("deb.debian.org", 80)
def raw():
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
def ipv6():
    socket.socket(socket.AF_INET6, socket.SOCK_STREAM).connect(("::1", {tcp_port}))
for name, f in [("tcp", tcp), ("udp", udp), ("dns", dns), ("raw", raw), ("ipv6", ipv6)]:
    try:
        f()
        print("ESCAPED", name)
    except OSError:
        pass
bash = subprocess.run(["bash", "-c", "echo hi > /dev/tcp/127.0.0.1/{tcp_port}"], capture_output=True)
if bash.returncode == 0:
    print("ESCAPED /dev/tcp")
print("DONE")
"#
    );
    let Some(r) = attempt(backend, &python(&script, 30.0)) else {
        return;
    };
    assert_contained(backend, &r);
    match tcp.accept() {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{backend}: the host listener saw a connection: {other:?}"),
    }
    let mut buf = [0_u8; 16];
    match udp.recv_from(&mut buf) {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        other => panic!("{backend}: the host UDP socket got a datagram: {other:?}"),
    }
}

fn io_uring(backend: IsolationBackend) {
    let script = r#"
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
params = ctypes.create_string_buffer(120)
fd = libc.syscall(425, 8, params)  # io_uring_setup
if fd >= 0:
    print("ESCAPED io_uring_setup", fd)
print("DONE")
"#;
    let Some(r) = attempt(backend, &python(script, 30.0)) else {
        return;
    };
    assert_contained(backend, &r);
}

fn fork_bomb(backend: IsolationBackend) {
    // Forks until something stops it; each child sleeps with a token the host looks for.
    let script = r#"
import os, time
n = 0
try:
    while n < 20000:
        pid = os.fork()
        if pid == 0:
            time.sleep(60)
            os._exit(0)
        n += 1
except OSError as e:
    print("stopped after", n, e)
if n >= 20000:
    print("ESCAPED fork bomb reached", n)
print("DONE", flush=True)
"#;
    // A file name of its own, so the host can look for the children by their command line.
    let token = format!("bomb{}{}.py", backend.as_str().len(), backend.as_str());
    let mut job = command(&format!("python3 {token}"), 20.0);
    job.files = vec![InputFile {
        path: token.clone(),
        content: script.to_owned(),
    }];
    let Some(r) = attempt(backend, &job) else {
        return;
    };
    assert_contained(backend, &r);
    // The children die with the job; none is left on the host.
    let left = eventually_none(Duration::from_secs(10), || live_with_token(&token));
    assert!(
        left.is_empty(),
        "{backend}: fork-bomb children left: {left:?}"
    );
}

fn memory_bomb(backend: IsolationBackend) {
    let mut job = python(
        "b = bytearray(8 * 1024 ** 3)\nprint('ESCAPED allocated', len(b))\n",
        30.0,
    );
    job.memory_mib = 128;
    let Some(r) = attempt(backend, &job) else {
        return;
    };
    assert!(!r.stdout.contains("ESCAPED"), "{backend}: {r:?}");
    assert_eq!(r.status, RunStatus::Oom, "{backend}: {r:?}");
}

fn disk_fill(backend: IsolationBackend) {
    // One file past the 1 GiB file-size limit: the write fails with EFBIG.
    let script = r#"
import os, signal
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
chunk = b"x" * (16 << 20)
written = 0
try:
    with open("fill.bin", "wb") as f:
        while written < (1536 << 20):
            f.write(chunk)
            written += len(chunk)
            f.flush()
    print("ESCAPED wrote", written)
except OSError as e:
    print("stopped at", written >> 20, "MiB:", e.strerror)
os.remove("fill.bin")
print("DONE")
"#;
    let Some(r) = attempt(backend, &python(script, 60.0)) else {
        return;
    };
    assert_contained(backend, &r);
}

fn fd_exhaustion(backend: IsolationBackend) {
    let script = r#"
files = []
try:
    while len(files) < 100000:
        files.append(open("/dev/null"))
except OSError as e:
    print("stopped at", len(files), e.strerror)
if len(files) > 1024:
    print("ESCAPED opened", len(files))
print("DONE")
"#;
    let Some(r) = attempt(backend, &python(script, 30.0)) else {
        return;
    };
    assert_contained(backend, &r);
}

fn device_access(backend: IsolationBackend) {
    // gVisor always offers its own /dev/fuse, served by its user-space kernel (the host's
    // /dev/fuse is never opened); every other tier must not have one at all.
    let fuse = if backend == IsolationBackend::Gvisor {
        ""
    } else {
        "\"/dev/fuse\", "
    };
    let script = r#"
import os
for dev in [FUSE"/dev/vda", "/dev/sda", "/dev/nvme0n1", "/dev/mem", "/dev/kmem", "/dev/port", "/dev/kmsg", "/dev/kvm", "/dev/loop0"]:
    try:
        fd = os.open(dev, os.O_RDONLY)
        os.close(fd)
        print("ESCAPED opened", dev)
    except OSError:
        pass
try:
    os.mknod("mydisk", 0o600 | 0o060000, os.makedev(8, 0))
    print("ESCAPED mknod")
except OSError:
    pass
print("DONE")
"#
    .replace("FUSE", fuse);
    let Some(r) = attempt(backend, &python(&script, 30.0)) else {
        return;
    };
    assert_contained(backend, &r);
}

fn mount_attempts(backend: IsolationBackend) {
    let script = r#"
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
os.makedirs("m", exist_ok=True)
if libc.mount(b"none", b"m", b"tmpfs", 0, None) == 0:
    print("ESCAPED mount tmpfs")
if libc.mount(b"/", b"m", None, 4096, None) == 0:  # MS_BIND
    print("ESCAPED bind mount of /")
if libc.unshare(0x00020000 | 0x10000000) == 0:  # CLONE_NEWNS | CLONE_NEWUSER
    print("ESCAPED unshare")
print("DONE")
"#;
    let Some(r) = attempt(backend, &python(script, 30.0)) else {
        return;
    };
    assert_contained(backend, &r);
}

fn signals_to_processes_outside(backend: IsolationBackend) {
    let mut victim = spawn_sleeper("7412");
    let script = format!(
        r#"
import os
for sig in (15, 9):
    try:
        os.kill({pid}, sig)
        print("ESCAPED kill", sig)
    except OSError:
        pass
try:
    os.kill(1, 0)
    if os.getpid() != 1 and os.getppid() != 1:
        pass
except OSError:
    pass
print("DONE")
"#,
        pid = victim.id()
    );
    let result = attempt(backend, &python(&script, 30.0));
    std::thread::sleep(Duration::from_millis(200));
    let alive = victim.try_wait().expect("victim status").is_none();
    stop(&mut victim);
    let Some(r) = result else {
        return;
    };
    assert_contained(backend, &r);
    assert!(
        alive,
        "{backend}: the host process was killed from the sandbox"
    );
}

/// A host process for the sandbox to attack.
fn spawn_sleeper(token: &str) -> Child {
    Command::new("sleep")
        .arg(format!("600.{token}"))
        .spawn()
        .expect("spawn sleep")
}

fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

macro_rules! probe_suite {
    ($module:ident, $backend:expr) => {
        mod $module {
            use super::*;

            #[test]
            fn write_outside_the_job_dir() {
                super::write_outside_the_job_dir($backend);
            }
            #[test]
            fn read_host_secrets() {
                super::read_host_secrets($backend);
            }
            #[test]
            fn symlink_and_hard_link_tricks() {
                super::symlink_and_hard_link_tricks($backend);
            }
            #[test]
            fn proc_probing_of_host_processes() {
                super::proc_probing_of_host_processes($backend);
            }
            #[test]
            fn ptrace_of_the_host() {
                super::ptrace_of_the_host($backend);
            }
            #[test]
            fn network_egress() {
                super::network_egress($backend);
            }
            #[test]
            fn io_uring() {
                super::io_uring($backend);
            }
            #[test]
            fn fork_bomb() {
                super::fork_bomb($backend);
            }
            #[test]
            fn memory_bomb() {
                super::memory_bomb($backend);
            }
            #[test]
            fn disk_fill() {
                super::disk_fill($backend);
            }
            #[test]
            fn fd_exhaustion() {
                super::fd_exhaustion($backend);
            }
            #[test]
            fn device_access() {
                super::device_access($backend);
            }
            #[test]
            fn mount_attempts() {
                super::mount_attempts($backend);
            }
            #[test]
            fn signals_to_processes_outside() {
                super::signals_to_processes_outside($backend);
            }
        }
    };
}

probe_suite!(process, IsolationBackend::Process);
probe_suite!(bubblewrap, IsolationBackend::Bubblewrap);
probe_suite!(gvisor, IsolationBackend::Gvisor);
