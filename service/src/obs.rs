//! Observability: the Prometheus recorder behind `GET /metrics`, the metric names, and the
//! middleware that opens one tracing span per request (with the tenant, decision id and run id
//! recorded as they become known) and counts requests by route and status.
//!
//! Metrics (all prefixed `sandstorm_`):
//! - `decisions_total{strategy, provider, backend}`: decisions by strategy and chosen provider;
//! - `decision_errors_total{strategy, reason}`;
//! - `decide_duration_seconds`: whole decisions (enumerate, filter, predict, rank);
//! - `policy_duration_seconds{policy}`, `policy_errors_total{policy, kind}`: each policy's call;
//! - `runs_total{state, status, backend}`, `runs_in_flight`;
//! - `breaker_state{breaker}`: 0 closed, 1 half-open, 2 open, per provider/region (set by
//!   `sandstorm_executor`'s breakers whenever one changes);
//! - `rate_limited_total{kind}`: 429 answers, `kind` = `rate` or `concurrency`;
//! - `http_requests_total{method, route, status}`, `http_request_duration_seconds{route}`.

use std::sync::OnceLock;
use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::Response;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing::Instrument;

pub(crate) const DECISIONS: &str = "sandstorm_decisions_total";
pub(crate) const DECISION_ERRORS: &str = "sandstorm_decision_errors_total";
pub(crate) const DECIDE_SECONDS: &str = "sandstorm_decide_duration_seconds";
pub(crate) const POLICY_SECONDS: &str = "sandstorm_policy_duration_seconds";
pub(crate) const POLICY_ERRORS: &str = "sandstorm_policy_errors_total";
pub(crate) const RUNS: &str = "sandstorm_runs_total";
pub(crate) const RUNS_IN_FLIGHT: &str = "sandstorm_runs_in_flight";
pub(crate) const BREAKER_STATE: &str = "sandstorm_breaker_state";
pub(crate) const RATE_LIMITED: &str = "sandstorm_rate_limited_total";
pub(crate) const HTTP_REQUESTS: &str = "sandstorm_http_requests_total";
pub(crate) const HTTP_SECONDS: &str = "sandstorm_http_request_duration_seconds";

/// Histogram buckets, in seconds: 10 µs to 10 s.
const BUCKETS: [f64; 14] = [
    0.000_01, 0.000_025, 0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.05,
    0.25, 1.0, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use).
pub(crate) fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = || {
            PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), &BUCKETS)
        };
        let handle = match builder().and_then(|b| b.install_recorder()) {
            Ok(handle) => handle,
            Err(e) => {
                // Another recorder is installed (an embedding program's): serve an empty page.
                tracing::warn!(error = %e, "could not install the prometheus recorder");
                builder()
                    .map(|b| b.build_recorder().handle())
                    .unwrap_or_else(|_| PrometheusBuilder::new().build_recorder().handle())
            }
        };
        describe();
        handle
    })
}

fn describe() {
    use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};
    describe_counter!(
        DECISIONS,
        "decisions by strategy and chosen provider/backend"
    );
    describe_counter!(
        DECISION_ERRORS,
        "requests that could not be decided, by reason"
    );
    describe_histogram!(DECIDE_SECONDS, Unit::Seconds, "time of whole decisions");
    describe_histogram!(POLICY_SECONDS, Unit::Seconds, "time of policy evaluation");
    describe_counter!(POLICY_ERRORS, "policy evaluations that failed");
    describe_counter!(RUNS, "finished runs by state, status and backend");
    describe_gauge!(RUNS_IN_FLIGHT, "runs queued or executing");
    describe_gauge!(
        BREAKER_STATE,
        "circuit breaker state per candidate: 0 closed, 1 half-open, 2 open"
    );
    describe_counter!(RATE_LIMITED, "requests refused with 429, by kind");
    describe_counter!(HTTP_REQUESTS, "http requests by method, route and status");
    describe_histogram!(
        HTTP_SECONDS,
        Unit::Seconds,
        "http request handling time by route"
    );
    // Make the series exist before the first event, so dashboards see zeros.
    metrics::counter!(POLICY_ERRORS).absolute(0);
    metrics::gauge!(RUNS_IN_FLIGHT).set(0.0);
}

/// One span per request; counts and times it.
pub(crate) async fn observe_requests(request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = request.method().as_str().to_owned();
    let span = tracing::info_span!(
        "request",
        method = %method,
        route = %route,
        tenant = tracing::field::Empty,
        decision_id = tracing::field::Empty,
        run_id = tracing::field::Empty,
    );
    let start = Instant::now();
    let response = next.run(request).instrument(span.clone()).await;
    let elapsed = start.elapsed();
    let status = response.status().as_u16();
    tracing::debug!(parent: &span, status, elapsed_us = elapsed.as_micros() as u64, "handled");
    metrics::counter!(HTTP_REQUESTS, "method" => method, "route" => route.clone(), "status" => status.to_string())
        .increment(1);
    metrics::histogram!(HTTP_SECONDS, "route" => route).record(elapsed.as_secs_f64());
    response
}
