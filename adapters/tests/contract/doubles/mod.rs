//! Test doubles of the providers' APIs: loopback HTTP servers (axum) that follow each
//! provider's documented contract — paths, methods, auth headers, JSON bodies, streaming, and
//! the providers' own error bodies — and record every request so tests can check it field by
//! field. They are doubles for tests only, never a provider.
//!
//! Every HTTP double is one fallback handler that dispatches on method and path segments, so a
//! request the contract does not have is answered 404 and shows up in the record. Modal's API
//! is gRPC: its double (`modal`) is a tonic server of the same generated service the adapter
//! calls.

pub(crate) mod daytona;
pub(crate) mod e2b;
pub(crate) mod kubernetes;
pub(crate) mod modal;
pub(crate) mod morph;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

/// One request a double received.
#[derive(Debug, Clone)]
pub(crate) struct Recorded {
    pub(crate) method: Method,
    pub(crate) path: String,
    pub(crate) query: BTreeMap<String, String>,
    pub(crate) headers: HeaderMap,
    pub(crate) body: Bytes,
}

impl Recorded {
    pub(crate) fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    pub(crate) fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or(serde_json::Value::Null)
    }
}

/// Locks a mutex even if a panicking test poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The requests a double received, in order.
#[derive(Debug, Clone, Default)]
pub(crate) struct Recorder(Arc<Mutex<Vec<Recorded>>>);

impl Recorder {
    pub(crate) fn record(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &Bytes,
    ) -> Recorded {
        let query = uri
            .query()
            .map(|q| {
                q.split('&')
                    .filter_map(|pair| pair.split_once('='))
                    .map(|(k, v)| (decode(k), decode(v)))
                    .collect()
            })
            .unwrap_or_default();
        let recorded = Recorded {
            method: method.clone(),
            path: uri.path().to_owned(),
            query,
            headers: headers.clone(),
            body: body.clone(),
        };
        lock(&self.0).push(recorded.clone());
        recorded
    }

    pub(crate) fn all(&self) -> Vec<Recorded> {
        lock(&self.0).clone()
    }

    /// Requests with this method whose path matches `path` (`*` matches one segment).
    pub(crate) fn matching(&self, method: &str, path: &str) -> Vec<Recorded> {
        self.all()
            .into_iter()
            .filter(|r| r.method.as_str() == method && path_matches(path, &r.path))
            .collect()
    }
}

fn path_matches(pattern: &str, path: &str) -> bool {
    let p: Vec<_> = pattern.split('/').collect();
    let a: Vec<_> = path.split('/').collect();
    p.len() == a.len() && p.iter().zip(&a).all(|(p, a)| *p == "*" || p == a)
}

/// Percent-decoding of a query component (`+` is a space).
fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
                match u8::from_str_radix(hex, 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                    }
                    Err(_) => {
                        out.push(b'%');
                        i += 1;
                    }
                }
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A running double: its base URL; the server stops when this is dropped.
pub(crate) struct Server {
    pub(crate) url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves `router` on a loopback port from its own thread and runtime.
pub(crate) fn serve(router: Router) -> Server {
    serve_on_loopback(|listener, stop| async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async {
                let _ = stop.await;
            })
            .await
            .expect("serve");
    })
}

/// Binds a loopback port on a thread with its own runtime and runs the server `run` makes
/// from the listener and the stop signal (sent when the [`Server`] is dropped).
pub(crate) fn serve_on_loopback<F, Fut>(run: F) -> Server
where
    F: FnOnce(tokio::net::TcpListener, tokio::sync::oneshot::Receiver<()>) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()>,
{
    let (url_tx, url_rx) = std::sync::mpsc::channel();
    let (shutdown, stop) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("double runtime");
        runtime.block_on(async move {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
                .await
                .expect("bind loopback");
            let addr = listener.local_addr().expect("local addr");
            url_tx.send(format!("http://{addr}")).expect("send url");
            run(listener, stop).await;
        });
        runtime.shutdown_timeout(Duration::from_millis(100));
    });
    let url = url_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("double started");
    Server {
        url,
        shutdown: Some(shutdown),
        thread: Some(thread),
    }
}

/// A JSON answer.
pub(crate) fn json(status: u16, value: serde_json::Value) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(value)).into_response()
}

/// A streamed answer whose chunks come from `rx` until it closes.
pub(crate) fn streamed(content_type: &str, rx: tokio::sync::mpsc::Receiver<Vec<u8>>) -> Response {
    let stream = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|chunk| (Ok::<_, std::io::Error>(Bytes::from(chunk)), rx))
    });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", content_type)
        .body(Body::from_stream(stream))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The `file` part of a `multipart/form-data` body: its file name and content.
pub(crate) fn multipart_file(headers: &HeaderMap, body: &[u8]) -> Option<(String, Vec<u8>)> {
    let content_type = headers.get("content-type")?.to_str().ok()?;
    let boundary = content_type.split("boundary=").nth(1)?.trim_matches('"');
    let delimiter = format!("--{boundary}");
    let text = body;
    let mut parts = split_bytes(text, delimiter.as_bytes());
    parts.find_map(|part| {
        let header_end = find(part, b"\r\n\r\n")?;
        let head = String::from_utf8_lossy(&part[..header_end]).into_owned();
        if !head.contains("name=\"file\"") {
            return None;
        }
        let name = head
            .split("filename=\"")
            .nth(1)
            .and_then(|rest| rest.split('"').next())
            .unwrap_or_default()
            .to_owned();
        let content = &part[header_end + 4..];
        let content = content.strip_suffix(b"\r\n").unwrap_or(content);
        Some((name, content.to_vec()))
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn split_bytes<'a>(mut data: &'a [u8], delimiter: &'a [u8]) -> impl Iterator<Item = &'a [u8]> {
    std::iter::from_fn(move || {
        if data.is_empty() {
            return None;
        }
        match find(data, delimiter) {
            Some(at) => {
                let part = &data[..at];
                data = &data[at + delimiter.len()..];
                Some(part)
            }
            None => {
                let part = data;
                data = &[];
                Some(part)
            }
        }
    })
}
