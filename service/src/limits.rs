//! Per-tenant limits: a GCRA rate limiter (`governor`) on every authenticated request, and a
//! semaphore bounding the runs a tenant executes at once. Both answer 429 with a clear message
//! and `Retry-After`.

use std::collections::HashMap;
use std::num::NonZeroU32;
use std::sync::{Arc, Mutex, PoisonError};

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultDirectRateLimiter, Quota};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::{Config, Limits};
use crate::error::ApiError;

/// One tenant's limiters.
#[derive(Debug)]
struct TenantLimiter {
    limits: Limits,
    rate: DefaultDirectRateLimiter,
    runs: Arc<Semaphore>,
}

impl TenantLimiter {
    fn new(limits: Limits) -> Self {
        let per_second = NonZeroU32::new(limits.requests_per_second).unwrap_or(NonZeroU32::MIN);
        let burst = NonZeroU32::new(limits.burst).unwrap_or(NonZeroU32::MIN);
        Self {
            limits,
            rate: governor::RateLimiter::direct(Quota::per_second(per_second).allow_burst(burst)),
            runs: Arc::new(Semaphore::new(limits.max_concurrent_runs as usize)),
        }
    }
}

/// The limiters of every tenant, created on first use from the configuration.
#[derive(Debug)]
pub(crate) struct TenantLimits {
    config: Config,
    tenants: Mutex<HashMap<String, Arc<TenantLimiter>>>,
    clock: DefaultClock,
}

impl TenantLimits {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            config: config.clone(),
            tenants: Mutex::default(),
            clock: DefaultClock::default(),
        }
    }

    fn tenant(&self, tenant: &str) -> Arc<TenantLimiter> {
        let mut tenants = self.tenants.lock().unwrap_or_else(PoisonError::into_inner);
        Arc::clone(
            tenants
                .entry(tenant.to_owned())
                .or_insert_with(|| Arc::new(TenantLimiter::new(self.config.limits_for(tenant)))),
        )
    }

    /// Takes one request from `tenant`'s rate budget, or says how long to wait.
    pub(crate) fn check_rate(&self, tenant: &str) -> Result<(), ApiError> {
        let limiter = self.tenant(tenant);
        limiter.rate.check().map_err(|not_until| {
            let wait = not_until.wait_time_from(self.clock.now());
            metrics::counter!(crate::obs::RATE_LIMITED, "kind" => "rate").increment(1);
            ApiError::TooManyRequests {
                code: "rate_limited",
                message: format!(
                    "rate limit of tenant `{tenant}` exceeded ({} requests/s, burst {}); retry in {} ms",
                    limiter.limits.requests_per_second,
                    limiter.limits.burst,
                    wait.as_millis().max(1)
                ),
                retry_after_s: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// A slot for one run of `tenant`, held until the run ends.
    pub(crate) fn acquire_run(&self, tenant: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        let limiter = self.tenant(tenant);
        Arc::clone(&limiter.runs).try_acquire_owned().map_err(|_| {
            metrics::counter!(crate::obs::RATE_LIMITED, "kind" => "concurrency").increment(1);
            ApiError::TooManyRequests {
                code: "concurrency_limited",
                message: format!(
                    "tenant `{tenant}` already has {} runs in flight (its limit); retry when one finishes",
                    limiter.limits.max_concurrent_runs
                ),
                retry_after_s: 1,
            }
        })
    }
}
