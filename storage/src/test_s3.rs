//! Test support (feature `test-s3`): a real S3-compatible server, Python's `moto` (installed
//! by `scripts/setup.sh` into the venv named by `$SANDSTORM_PYTHON`), on a free local port,
//! killed when dropped. Integration tests point locations at it with [`S3Server::config`]
//! (in-process) or [`S3Server::env`] (child processes).

use std::io::{Read as _, Write as _};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::StoreConfig;

/// A running `moto` server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    port: u16,
}

impl S3Server {
    /// Starts the server and waits until it answers. Panics (test set-up) when it cannot.
    pub fn start() -> Self {
        let python = std::env::var("SANDSTORM_PYTHON").unwrap_or_else(|_| "python3".to_owned());
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let child = Command::new(&python)
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot start `{python} -m moto.server` (run scripts/setup.sh): {e}")
            });
        let mut server = Self { child, port };
        let start = Instant::now();
        loop {
            if let Some(status) = server.child.try_wait().expect("moto status") {
                panic!(
                    "moto exited at start ({status}); is moto[server] installed? (scripts/setup.sh)"
                );
            }
            if server
                .request("GET", "/")
                .is_ok_and(|s| s.starts_with("HTTP/1.1 200"))
            {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "moto did not answer on port {port} within 60 s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        server
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Creates bucket `name`.
    pub fn create_bucket(&self, name: &str) {
        let status = self
            .request("PUT", &format!("/{name}"))
            .expect("create bucket");
        assert!(
            status.starts_with("HTTP/1.1 200"),
            "create bucket {name}: {status}"
        );
    }

    /// The environment variables that point the S3 client at this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".to_owned()),
            ("AWS_ACCESS_KEY_ID", "test".to_owned()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
            ("AWS_REGION", "us-east-1".to_owned()),
        ]
    }

    /// The same settings as a [`StoreConfig`], for locations parsed in-process.
    pub fn config(&self) -> StoreConfig {
        StoreConfig {
            options: self
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v))
                .collect(),
        }
    }

    /// One bodiless HTTP/1.1 request; returns the status line and headers.
    fn request(&self, method: &str, path: &str) -> std::io::Result<String> {
        let mut stream = TcpStream::connect(("127.0.0.1", self.port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            stream,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
