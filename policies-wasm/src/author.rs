//! Tools for policy authors: scaffold a policy crate from the SDK, build it for
//! `wasm32-unknown-unknown` with cargo, and turn the core module into a component.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::PoliciesError;
use crate::registry::check_name;

/// Wraps a core module built with the SDK (which embeds the contract's type information) into
/// a WebAssembly component.
pub fn componentize(core_module: &[u8]) -> Result<Vec<u8>, PoliciesError> {
    wit_component::ComponentEncoder::default()
        .module(core_module)
        .and_then(|e| e.validate(true).encode())
        .map_err(|e| PoliciesError::InvalidComponent {
            what: "core module".into(),
            reason: format!("{e:#}"),
        })
}

/// Writes a new policy crate `dir` (named after its last component) that depends on the SDK
/// at `sdk`.
pub fn scaffold(dir: &Path, sdk: &Path) -> Result<(), PoliciesError> {
    let name = dir.file_name().and_then(|n| n.to_str()).ok_or_else(|| {
        PoliciesError::Invalid(format!("{}: not a policy directory name", dir.display()))
    })?;
    check_name(name)?;
    if dir.exists() {
        return Err(PoliciesError::Invalid(format!(
            "{} already exists; choose a new directory",
            dir.display()
        )));
    }
    let sdk = fs::canonicalize(sdk).map_err(|e| PoliciesError::io(sdk, e))?;
    if !sdk.join("Cargo.toml").is_file() {
        return Err(PoliciesError::Invalid(format!(
            "{} is not the policy SDK (no Cargo.toml); pass --sdk",
            sdk.display()
        )));
    }
    let type_name: String = name
        .split('-')
        .map(|w| {
            let mut c = w.chars();
            c.next()
                .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                .unwrap_or_default()
        })
        .collect();
    let files = [
        (
            "Cargo.toml",
            format!(
                r#"[package]
name = "{name}"
version = "0.1.0"
edition = "2024"
publish = false

[lib]
crate-type = ["cdylib"]

[dependencies]
sandstorm-policy-sdk = {{ path = {sdk:?} }}

[profile.release]
opt-level = 3
lto = true
codegen-units = 1
panic = "abort"
strip = true

# A policy is its own workspace.
[workspace]
"#,
                sdk = sdk.display().to_string()
            ),
        ),
        (
            "src/lib.rs",
            format!(
                r#"//! {name}: a Sandstorm routing policy.
//!
//! Called once per request with every candidate and its predictions; reject candidates or
//! adjust their objective (lower is better) with a reason.

use sandstorm_policy_sdk::{{Candidates, Policy, Request, Verdicts}};

struct {type_name};

impl Policy for {type_name} {{
    fn filter_score(req: &Request, cands: &Candidates, out: &mut Verdicts) -> Result<(), String> {{
        // Example: keep untrusted code off plain processes.
        if req.label("trust") == Some("untrusted") {{
            for c in cands.iter() {{
                if c.isolation() == sandstorm_policy_sdk::Isolation::Process {{
                    out.reject(c.index(), "untrusted code may not run as a plain process");
                }}
            }}
        }}
        Ok(())
    }}
}}

sandstorm_policy_sdk::export_policy!({type_name});
"#
            ),
        ),
        (
            "tests/untrusted.yaml",
            r#"# A fixture for `sandstorm policy test`: a request, then what the policy must say about
# candidates of the catalog (matched by id; `*` is a wildcard).
request:
  language: python
  code: print("hello")
  allow_network: true
  labels:
    trust: untrusted
expect:
  - candidates: "local/process/*"
    verdict: reject
  - candidates: "local/bubblewrap/*"
    verdict: keep
"#
            .to_owned(),
        ),
        ("policy.toml", format!("# Publishing metadata for `sandstorm policy publish`.\nname = \"{name}\"\nversion = \"0.1.0\"\nkind = \"filter\"        # filter (fails closed) or scorer (fails open)\ndescription = \"\"\n")),
        (".gitignore", "target/\n".to_owned()),
    ];
    for (file, text) in files {
        let p = dir.join(file);
        if let Some(parent) = p.parent() {
            fs::create_dir_all(parent).map_err(|e| PoliciesError::io(parent, e))?;
        }
        fs::write(&p, text).map_err(|e| PoliciesError::io(&p, e))?;
    }
    Ok(())
}

/// Builds the policy crate (or guest workspace) in `dir` for `wasm32-unknown-unknown` in
/// release mode with `cargo`, then componentizes `package`'s module (default: the crate in
/// `dir`). `target_dir` defaults to cargo's own choice (`CARGO_TARGET_DIR`, else the
/// workspace's `target/`). Returns the component's path
/// (`<target>/wasm32-unknown-unknown/release/<package>.component.wasm`).
pub fn build(
    dir: &Path,
    package: Option<&str>,
    target_dir: Option<&Path>,
) -> Result<PathBuf, PoliciesError> {
    let manifest = dir.join("Cargo.toml");
    let build_err = |reason: String| PoliciesError::Build {
        dir: dir.to_owned(),
        reason,
    };
    let package = match package {
        Some(p) => p.to_owned(),
        None => package_name(&manifest)?,
    };
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let target_dir = match target_dir {
        Some(t) => t.to_path_buf(),
        None => cargo_target_dir(&cargo, &manifest).map_err(build_err)?,
    };
    let output = Command::new(cargo)
        .args([
            "build",
            "--release",
            "--target",
            "wasm32-unknown-unknown",
            "--package",
        ])
        .arg(&package)
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target_dir)
        // The host's flags (e.g. coverage or sanitizers) do not apply to wasm guests.
        .env_remove("RUSTFLAGS")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .map_err(|e| build_err(format!("running cargo: {e}")))?;
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        let hint = if stderr.contains("wasm32-unknown-unknown")
            && stderr.contains("target may not be installed")
        {
            "\nhint: rustup target add wasm32-unknown-unknown"
        } else {
            ""
        };
        return Err(build_err(format!("cargo build failed:\n{stderr}{hint}")));
    }
    let release = target_dir.join("wasm32-unknown-unknown").join("release");
    let core_path = release.join(format!("{}.wasm", package.replace('-', "_")));
    let core = fs::read(&core_path).map_err(|e| PoliciesError::io(&core_path, e))?;
    let component = componentize(&core)?;
    let out = release.join(format!("{package}.component.wasm"));
    fs::write(&out, component).map_err(|e| PoliciesError::io(&out, e))?;
    Ok(out)
}

/// The target directory cargo uses for `manifest` (honours `CARGO_TARGET_DIR` and workspaces).
fn cargo_target_dir(cargo: &std::ffi::OsStr, manifest: &Path) -> Result<PathBuf, String> {
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--manifest-path",
        ])
        .arg(manifest)
        .output()
        .map_err(|e| format!("running cargo metadata: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "cargo metadata failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    #[derive(serde::Deserialize)]
    struct Metadata {
        target_directory: PathBuf,
    }
    serde_json::from_slice::<Metadata>(&out.stdout)
        .map(|m| m.target_directory)
        .map_err(|e| format!("reading cargo metadata: {e}"))
}

fn package_name(manifest: &Path) -> Result<String, PoliciesError> {
    let text = fs::read_to_string(manifest).map_err(|e| PoliciesError::io(manifest, e))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[package]";
        } else if in_package
            && line.starts_with("name")
            && let Some(v) = line.split('=').nth(1)
        {
            return Ok(v.trim().trim_matches('"').to_owned());
        }
    }
    Err(PoliciesError::BadFile {
        path: manifest.to_owned(),
        reason: "no [package] name; pass the package to build".into(),
    })
}

/// The guest workspace of this source tree (SDK, example and fixture policies).
pub fn guest_workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("guest")
}

/// The SDK of this source tree, which `sandstorm policy new` scaffolds against by default.
pub fn sdk_dir() -> PathBuf {
    guest_workspace().join("sdk")
}

/// Builds `package` of the guest workspace (an example or fixture policy) into a component,
/// under `$CARGO_TARGET_DIR/policy-guests` when that is set (so CI reuses it) or the guest
/// workspace's own `target/`.
pub fn build_guest(package: &str) -> Result<PathBuf, PoliciesError> {
    let target =
        std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("policy-guests"));
    build(&guest_workspace(), Some(package), target.as_deref())
}
