//! The catalog: an editable TOML file listing providers, the isolation backends and regions each
//! offers, and their price sheets. [`Catalog::candidates`] expands it into [`Candidate`]s.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::candidate::{Candidate, IsolationBackend, ProviderKind};
use crate::error::{FeaturesError, FieldError};

/// The catalog shipped with Sandstorm: real list prices, each with its source and date.
pub const DEFAULT_CATALOG_TOML: &str = include_str!("../catalog/default.toml");

/// A region or site candidates can run in.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpec {
    pub name: String,
    /// Coarse geography: `us`, `eu`, `ap`, `local`, ...
    pub area: String,
    /// Typical round trip from the router's site, in milliseconds (edit for your site).
    pub rtt_ms: f64,
}

/// A provider's list prices. Every figure names its source; an estimate says so.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceSheet {
    /// USD per vCPU-second.
    pub vcpu_second: f64,
    /// USD per GiB of memory per second.
    pub gib_second: f64,
    /// USD per sandbox start.
    #[serde(default)]
    pub start: f64,
    /// USD per GPU-second, by GPU kind.
    #[serde(default)]
    pub gpu_second: BTreeMap<String, f64>,
    /// Runs shorter than this are billed as this long.
    #[serde(default)]
    pub min_billed_seconds: f64,
    /// Factor applied to every price when the run is pinned to one region (Modal charges extra
    /// for region pinning); candidates are per region, so their prices include it.
    #[serde(default = "one")]
    pub region_multiplier: f64,
    /// True when the figures are Sandstorm's estimate rather than a published list price.
    pub estimate: bool,
    /// Where the figures come from (URL or description of the estimate).
    pub source: String,
    /// When the source was read, `YYYY-MM-DD`.
    pub as_of: String,
}

/// Limits of one run on a provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quotas {
    pub max_vcpu: f64,
    pub max_memory_mib: u64,
    /// Concurrent runs allowed for this account (informational for now).
    #[serde(default)]
    pub max_concurrency: Option<u32>,
    /// Longest run the provider allows, in seconds.
    #[serde(default)]
    pub max_timeout_s: Option<f64>,
}

/// One provider entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderSpec {
    pub name: String,
    pub kind: ProviderKind,
    /// Disabled providers stay in the catalog but are never offered.
    #[serde(default = "yes")]
    pub enabled: bool,
    pub backends: Vec<IsolationBackend>,
    pub regions: Vec<String>,
    pub prices: PriceSheet,
    pub quotas: Quotas,
    /// Base URL of an edge agent (`kind = "edge"` only).
    #[serde(default)]
    pub endpoint: Option<String>,
    /// Free text shown to users.
    #[serde(default)]
    pub notes: Option<String>,
}

fn yes() -> bool {
    true
}

fn one() -> f64 {
    1.0
}

impl PriceSheet {
    /// The sheet with `region_multiplier` folded into every price.
    fn pinned_to_region(&self) -> PriceSheet {
        let m = self.region_multiplier;
        PriceSheet {
            vcpu_second: self.vcpu_second * m,
            gib_second: self.gib_second * m,
            start: self.start * m,
            gpu_second: self
                .gpu_second
                .iter()
                .map(|(k, v)| (k.clone(), v * m))
                .collect(),
            region_multiplier: 1.0,
            ..self.clone()
        }
    }
}

/// The whole catalog.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Catalog {
    pub schema_version: u32,
    pub regions: Vec<RegionSpec>,
    pub providers: Vec<ProviderSpec>,
}

impl Catalog {
    /// The embedded default catalog.
    pub fn default_catalog() -> Self {
        // The default catalog is validated by a unit test, so this cannot fail in a released build.
        #[allow(clippy::expect_used)]
        Self::from_toml(DEFAULT_CATALOG_TOML).expect("embedded default catalog is valid")
    }

    /// Parses and validates a catalog.
    pub fn from_toml(text: &str) -> Result<Self, FeaturesError> {
        let catalog: Catalog =
            toml::from_str(text).map_err(|e| FeaturesError::CatalogSyntax(e.to_string()))?;
        catalog.validate()?;
        Ok(catalog)
    }

    pub fn region(&self, name: &str) -> Option<&RegionSpec> {
        self.regions.iter().find(|r| r.name == name)
    }

    pub fn provider(&self, name: &str) -> Option<&ProviderSpec> {
        self.providers.iter().find(|p| p.name == name)
    }

    fn validate(&self) -> Result<(), FeaturesError> {
        let mut errors = Vec::new();
        if self.schema_version != 1 {
            errors.push(FieldError::new("schema_version", "must be 1"));
        }
        let mut region_names = BTreeSet::new();
        for (i, r) in self.regions.iter().enumerate() {
            if r.name.is_empty() || !region_names.insert(r.name.as_str()) {
                errors.push(FieldError::new(
                    format!("regions[{i}].name"),
                    format!("`{}` is empty or repeated", r.name),
                ));
            }
            if !(r.rtt_ms.is_finite() && r.rtt_ms >= 0.0) {
                errors.push(FieldError::new(
                    format!("regions[{i}].rtt_ms"),
                    "must be a non-negative number",
                ));
            }
        }
        let mut provider_names = BTreeSet::new();
        for (i, p) in self.providers.iter().enumerate() {
            let at = |field: &str| format!("providers[{i}] ({}).{field}", p.name);
            if p.name.is_empty() || !provider_names.insert(p.name.as_str()) {
                errors.push(FieldError::new(
                    format!("providers[{i}].name"),
                    format!("`{}` is empty or repeated", p.name),
                ));
            }
            if p.backends.is_empty() {
                errors.push(FieldError::new(
                    at("backends"),
                    "must list at least one isolation backend",
                ));
            }
            if p.regions.is_empty() {
                errors.push(FieldError::new(
                    at("regions"),
                    "must list at least one region",
                ));
            }
            for region in &p.regions {
                if !region_names.contains(region.as_str()) {
                    errors.push(FieldError::new(
                        at("regions"),
                        format!("unknown region `{region}`; declare it under [[regions]]"),
                    ));
                }
            }
            let local_only = [IsolationBackend::Process, IsolationBackend::Bubblewrap];
            if p.kind == ProviderKind::Remote || p.kind == ProviderKind::Kubernetes {
                for b in p.backends.iter().filter(|b| local_only.contains(b)) {
                    errors.push(FieldError::new(
                        at("backends"),
                        format!("`{b}` only runs on local hosts or edge agents"),
                    ));
                }
            }
            match (p.kind, &p.endpoint) {
                (ProviderKind::Edge, None) => errors.push(FieldError::new(
                    at("endpoint"),
                    "an edge agent needs its endpoint URL",
                )),
                (ProviderKind::Edge, Some(url))
                    if !(url.starts_with("http://") || url.starts_with("https://")) =>
                {
                    errors.push(FieldError::new(
                        at("endpoint"),
                        "must be an http:// or https:// URL",
                    ));
                }
                (kind, Some(_)) if kind != ProviderKind::Edge => {
                    errors.push(FieldError::new(
                        at("endpoint"),
                        "only edge agents have an endpoint",
                    ));
                }
                _ => {}
            }
            let s = &p.prices;
            let mut prices = vec![
                ("prices.vcpu_second", s.vcpu_second),
                ("prices.gib_second", s.gib_second),
                ("prices.start", s.start),
                ("prices.min_billed_seconds", s.min_billed_seconds),
                ("prices.region_multiplier", s.region_multiplier),
            ];
            prices.extend(s.gpu_second.values().map(|v| ("prices.gpu_second", *v)));
            for (field, value) in prices {
                if !(value.is_finite() && value >= 0.0) {
                    errors.push(FieldError::new(at(field), "must be a non-negative number"));
                }
            }
            if s.source.trim().is_empty() {
                errors.push(FieldError::new(
                    at("prices.source"),
                    "every price needs its source (a URL, or how the estimate was made)",
                ));
            }
            if time::Date::parse(
                &s.as_of,
                time::macros::format_description!("[year]-[month]-[day]"),
            )
            .is_err()
            {
                errors.push(FieldError::new(
                    at("prices.as_of"),
                    "must be a date YYYY-MM-DD",
                ));
            }
            if !(p.quotas.max_vcpu.is_finite() && p.quotas.max_vcpu > 0.0)
                || p.quotas.max_memory_mib == 0
            {
                errors.push(FieldError::new(
                    at("quotas"),
                    "max_vcpu and max_memory_mib must be positive",
                ));
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(FeaturesError::CatalogInvalid(errors))
        }
    }

    /// Every candidate of every enabled provider: provider × backend × region, in catalog order.
    pub fn candidates(&self) -> Vec<Candidate> {
        let mut out = Vec::new();
        for p in self.providers.iter().filter(|p| p.enabled) {
            let prices = p.prices.pinned_to_region();
            for backend in &p.backends {
                for region in &p.regions {
                    let Some(r) = self.region(region) else {
                        continue;
                    };
                    out.push(Candidate {
                        id: format!("{}/{}/{}", p.name, backend, region),
                        provider: p.name.clone(),
                        provider_kind: p.kind,
                        backend: *backend,
                        region: r.name.clone(),
                        area: r.area.clone(),
                        rtt_ms: r.rtt_ms,
                        prices: prices.clone(),
                        quotas: p.quotas.clone(),
                        endpoint: p.endpoint.clone(),
                    });
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_catalog_is_valid_and_covers_every_provider_kind() {
        let catalog = Catalog::from_toml(DEFAULT_CATALOG_TOML).unwrap();
        for name in ["e2b", "daytona", "modal", "morph", "kubernetes", "local"] {
            assert!(
                catalog.provider(name).is_some(),
                "default catalog lacks {name}"
            );
        }
        assert!(
            catalog
                .providers
                .iter()
                .any(|p| p.kind == ProviderKind::Edge)
        );
        assert!(catalog.candidates().len() >= 10);
    }

    #[test]
    fn typo_in_field_name_is_reported_with_its_location() {
        let text = DEFAULT_CATALOG_TOML.replacen("vcpu_second", "vcpu_secnd", 1);
        let err = Catalog::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("vcpu_secnd"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn unknown_region_and_negative_price_are_field_errors() {
        let text =
            DEFAULT_CATALOG_TOML.replacen("regions = [\"us-west\"]", "regions = [\"mars-1\"]", 1);
        let err = Catalog::from_toml(&text).unwrap_err().to_string();
        assert!(err.contains("unknown region `mars-1`"), "{err}");
        let text = DEFAULT_CATALOG_TOML.replacen("gib_second = 0.0000045", "gib_second = -1.0", 1);
        let err = Catalog::from_toml(&text).unwrap_err().to_string();
        assert!(
            err.contains("prices.gib_second: must be a non-negative number"),
            "{err}"
        );
    }
}
