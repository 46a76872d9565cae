//! Shared fixtures of the criterion benchmarks (the benchmarks themselves live under
//! `benches/`).

use sandstorm_features::{Catalog, ProviderKind, RegionSpec};
use sandstorm_policies_wasm::{
    CompiledPolicy, Manifest, PolicyEngine, PolicyKind, PolicyLimits, PolicyStore, author,
};

/// Guest policy `package` (an example or fixture of `policies-wasm/guest`), built and compiled
/// with the serving limits.
pub fn compiled_policy(package: &str) -> CompiledPolicy {
    let path = author::build_guest(package).expect("build the guest policy");
    let module = std::fs::read(path).expect("read the policy component");
    let engine = PolicyEngine::new(PolicyLimits::default()).expect("policy engine");
    let manifest = Manifest::for_module(package, "1.0.0", "bench", PolicyKind::Filter, &module)
        .expect("manifest");
    engine.compile(package, &module, manifest).expect("compile")
}

/// A policy store running only guest policy `package`.
pub fn policy_store(package: &str) -> PolicyStore {
    let store = PolicyStore::new(PolicyEngine::new(PolicyLimits::default()).expect("engine"));
    store.install(compiled_policy(package));
    store
}

/// The default catalog's enabled providers plus synthetic regions until it enumerates
/// exactly `n` candidates. Region `k` always goes to the same provider, so a smaller catalog
/// is a subset of a larger one.
pub fn catalog_with(n: usize) -> Catalog {
    let mut catalog = Catalog::default_catalog();
    catalog.providers.retain(|p| p.enabled);
    let single: Vec<usize> = catalog
        .providers
        .iter()
        .enumerate()
        .filter(|(_, p)| p.backends.len() == 1 && p.kind != ProviderKind::Local)
        .map(|(i, _)| i)
        .collect();
    let areas = ["us", "eu", "ap"];
    let mut k = 0;
    while catalog.candidates().len() < n {
        let name = format!("bench-{k:03}");
        catalog.regions.push(RegionSpec {
            name: name.clone(),
            area: areas[k % areas.len()].to_owned(),
            rtt_ms: 5.0 + ((k * 37) % 230) as f64,
        });
        catalog.providers[single[k % single.len()]]
            .regions
            .push(name);
        k += 1;
    }
    assert_eq!(catalog.candidates().len(), n, "catalog size");
    catalog
}
