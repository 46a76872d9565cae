//! The policy registry: versioned, signed policy components in a directory.
//!
//! Layout: `ROOT/<name>/<version>/{policy.wasm, manifest.json, signature.json}`. The manifest
//! names the module's sha256; the signature is an ed25519 signature of the manifest's exact
//! bytes. A router loads a version only when its signature verifies against one of its trusted
//! keys and the module's digest matches the manifest. Published versions are immutable.

use std::cmp::Ordering;
use std::fmt;
use std::fs;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use rand::RngCore;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::PoliciesError;
use crate::contract::ABI_VERSION;

const MODULE_FILE: &str = "policy.wasm";
const MANIFEST_FILE: &str = "manifest.json";
const SIGNATURE_FILE: &str = "signature.json";

/// What a policy does, which sets its default failure mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// Rejects candidates (may also adjust); fails closed by default.
    Filter,
    /// Only adjusts scores; fails open by default.
    Scorer,
}

/// What the router does when a policy fails (trap, timeout, memory limit, bad output, error).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureMode {
    /// Every candidate is rejected: no decision rather than one the policy did not check.
    FailClosed,
    /// The policy is ignored for this request.
    FailOpen,
}

impl PolicyKind {
    pub fn default_failure_mode(self) -> FailureMode {
        match self {
            PolicyKind::Filter => FailureMode::FailClosed,
            PolicyKind::Scorer => FailureMode::FailOpen,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            PolicyKind::Filter => "filter",
            PolicyKind::Scorer => "scorer",
        }
    }
}

impl FailureMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FailureMode::FailClosed => "fail_closed",
            FailureMode::FailOpen => "fail_open",
        }
    }
}

/// The manifest of one published policy version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub name: String,
    pub version: String,
    /// Hex sha256 of `policy.wasm`.
    pub sha256: String,
    pub author: String,
    /// The contract version the policy was built against.
    pub abi_version: String,
    pub kind: PolicyKind,
    pub failure_mode: FailureMode,
    #[serde(default)]
    pub description: String,
    /// RFC 3339 time of publication.
    pub published_at: String,
}

impl Manifest {
    /// A manifest for `module`, unsigned, with the kind's default failure mode.
    pub fn for_module(
        name: &str,
        version: &str,
        author: &str,
        kind: PolicyKind,
        module: &[u8],
    ) -> Result<Self, PoliciesError> {
        check_name(name)?;
        parse_version(version)?;
        Ok(Self {
            name: name.to_owned(),
            version: version.to_owned(),
            sha256: sha256_hex(module),
            author: author.to_owned(),
            abi_version: ABI_VERSION.to_owned(),
            kind,
            failure_mode: kind.default_failure_mode(),
            description: String::new(),
            published_at: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        })
    }

    /// `name@version`.
    pub fn id(&self) -> String {
        format!("{}@{}", self.name, self.version)
    }
}

/// Names: 1–64 of `a-z`, `0-9`, `-`, starting with a letter.
pub fn check_name(name: &str) -> Result<(), PoliciesError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(PoliciesError::Invalid(format!(
            "policy name {name:?}: expected 1-64 characters of a-z, 0-9 and '-', starting with a letter"
        )))
    }
}

/// Versions are `MAJOR.MINOR.PATCH`.
pub fn parse_version(version: &str) -> Result<[u64; 3], PoliciesError> {
    let parts: Vec<Option<u64>> = version.split('.').map(|p| p.parse().ok()).collect();
    match parts.as_slice() {
        [Some(a), Some(b), Some(c)] => Ok([*a, *b, *c]),
        _ => Err(PoliciesError::Invalid(format!(
            "policy version {version:?}: expected MAJOR.MINOR.PATCH, e.g. 1.0.0"
        ))),
    }
}

fn cmp_versions(a: &str, b: &str) -> Ordering {
    match (parse_version(a), parse_version(b)) {
        (Ok(a), Ok(b)) => a.cmp(&b),
        _ => a.cmp(b),
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignatureFile {
    /// Hex ed25519 public key of the signer.
    key: String,
    /// Hex ed25519 signature of `manifest.json`'s bytes.
    signature: String,
}

/// The public keys a router trusts, one hex key per line (`#` comments allowed).
#[derive(Debug, Clone, Default)]
pub struct TrustedKeys {
    keys: Vec<VerifyingKey>,
}

impl TrustedKeys {
    pub fn from_file(path: &Path) -> Result<Self, PoliciesError> {
        let text = fs::read_to_string(path).map_err(|e| PoliciesError::io(path, e))?;
        let mut keys = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let hex_key = line.split_whitespace().next().unwrap_or(line);
            keys.push(
                parse_public_key(hex_key).map_err(|reason| PoliciesError::BadFile {
                    path: path.to_owned(),
                    reason: format!("line {}: {reason}", n + 1),
                })?,
            );
        }
        Ok(Self { keys })
    }

    pub fn from_hex(keys: &[&str]) -> Result<Self, PoliciesError> {
        keys.iter()
            .map(|k| parse_public_key(k).map_err(PoliciesError::Invalid))
            .collect::<Result<_, _>>()
            .map(|keys| Self { keys })
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    fn contains(&self, key: &VerifyingKey) -> bool {
        self.keys.iter().any(|k| k == key)
    }
}

fn parse_public_key(hex_key: &str) -> Result<VerifyingKey, String> {
    let bytes: [u8; 32] = hex::decode(hex_key)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| format!("{hex_key:?} is not a 64-character hex ed25519 public key"))?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| format!("invalid ed25519 public key: {e}"))
}

/// An author's signing key.
pub struct PolicyKey {
    key: SigningKey,
}

impl fmt::Debug for PolicyKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PolicyKey")
            .field("public", &self.public_hex())
            .finish_non_exhaustive()
    }
}

impl PolicyKey {
    /// A fresh random key.
    pub fn generate() -> Self {
        let mut seed = [0u8; 32];
        rand::rng().fill_bytes(&mut seed);
        Self {
            key: SigningKey::from_bytes(&seed),
        }
    }

    /// Reads a key file written by [`PolicyKey::write`] (hex secret seed).
    pub fn from_file(path: &Path) -> Result<Self, PoliciesError> {
        let text = fs::read_to_string(path).map_err(|e| PoliciesError::io(path, e))?;
        let seed: [u8; 32] = hex::decode(text.trim())
            .ok()
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| PoliciesError::BadFile {
                path: path.to_owned(),
                reason: "expected a 64-character hex ed25519 secret key (from `sandstorm policy keygen`)".into(),
            })?;
        Ok(Self {
            key: SigningKey::from_bytes(&seed),
        })
    }

    /// Writes the secret key (mode 0600) to `path` and the public key to `path.pub`.
    pub fn write(&self, path: &Path) -> Result<PathBuf, PoliciesError> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(|e| PoliciesError::io(path, e))?;
        writeln!(f, "{}", hex::encode(self.key.to_bytes()))
            .map_err(|e| PoliciesError::io(path, e))?;
        let public = path.with_extension("pub");
        fs::write(&public, format!("{}\n", self.public_hex()))
            .map_err(|e| PoliciesError::io(&public, e))?;
        Ok(public)
    }

    pub fn public_hex(&self) -> String {
        hex::encode(self.key.verifying_key().to_bytes())
    }
}

/// One version found in a registry.
#[derive(Debug, Clone)]
pub struct RegistryEntry {
    pub manifest: Manifest,
    pub dir: PathBuf,
}

/// A policy version whose signature and digest were verified.
#[derive(Debug, Clone)]
pub struct VerifiedPolicy {
    pub manifest: Manifest,
    pub module: Vec<u8>,
    /// Hex public key that signed it.
    pub signer: String,
    /// The exact bytes that were signed and verified, kept to store them unchanged.
    manifest_bytes: Vec<u8>,
    signature_bytes: Vec<u8>,
}

/// The two signed files of a version, as a registry stores them (`manifest.json`,
/// `signature.json`) and `POST /v1/policies` takes them.
#[derive(Debug, Clone)]
pub struct SignedFiles {
    /// The manifest's JSON: the exact bytes that are signed.
    pub manifest: Vec<u8>,
    /// The signer's public key and its ed25519 signature of `manifest`, as JSON.
    pub signature: Vec<u8>,
}

impl SignedFiles {
    /// Signs `manifest` (which must describe `module`) with `key`.
    pub fn sign(
        manifest: &Manifest,
        module: &[u8],
        key: &PolicyKey,
    ) -> Result<Self, PoliciesError> {
        check_name(&manifest.name)?;
        parse_version(&manifest.version)?;
        if manifest.sha256 != sha256_hex(module) {
            return Err(PoliciesError::Invalid(format!(
                "manifest of {} does not describe this module (sha256 differs)",
                manifest.id()
            )));
        }
        let manifest_bytes = serde_json::to_vec_pretty(manifest)
            .map_err(|e| PoliciesError::Internal(format!("serializing a manifest: {e}")))?;
        let signature = SignatureFile {
            key: key.public_hex(),
            signature: hex::encode(key.key.sign(&manifest_bytes).to_bytes()),
        };
        let signature = serde_json::to_vec_pretty(&signature)
            .map_err(|e| PoliciesError::Internal(format!("serializing a signature: {e}")))?;
        Ok(Self {
            manifest: manifest_bytes,
            signature,
        })
    }
}

/// A directory of signed policy versions.
#[derive(Debug, Clone)]
pub struct Registry {
    root: PathBuf,
}

impl Registry {
    pub fn open(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Signs and stores `module` under `manifest`'s name and version. Fails if that version
    /// exists (versions are immutable) or the manifest does not describe `module`.
    pub fn publish(
        &self,
        manifest: &Manifest,
        module: &[u8],
        key: &PolicyKey,
    ) -> Result<PathBuf, PoliciesError> {
        let signed = SignedFiles::sign(manifest, module, key)?;
        self.write_version(manifest, module, &signed.manifest, &signed.signature)
    }

    /// Stores a version that was signed elsewhere and verified with [`verify_bytes`] (what
    /// `POST /v1/policies` receives): the same immutable, atomic write as [`Registry::publish`].
    pub fn add(&self, policy: &VerifiedPolicy) -> Result<PathBuf, PoliciesError> {
        self.write_version(
            &policy.manifest,
            &policy.module,
            &policy.manifest_bytes,
            &policy.signature_bytes,
        )
    }

    /// Whether `name@version` is already in the registry.
    pub fn contains(&self, name: &str, version: &str) -> bool {
        check_name(name).is_ok()
            && parse_version(version).is_ok()
            && self.root.join(name).join(version).exists()
    }

    fn write_version(
        &self,
        manifest: &Manifest,
        module: &[u8],
        manifest_bytes: &[u8],
        signature_bytes: &[u8],
    ) -> Result<PathBuf, PoliciesError> {
        let name_dir = self.root.join(&manifest.name);
        let dir = name_dir.join(&manifest.version);
        if dir.exists() {
            return Err(PoliciesError::AlreadyPublished {
                id: manifest.id(),
                registry: self.root.clone(),
            });
        }
        fs::create_dir_all(&name_dir).map_err(|e| PoliciesError::io(&name_dir, e))?;
        // Write everything into a temporary sibling, then rename: readers never see a
        // half-published version.
        let tmp = name_dir.join(format!(".{}.tmp-{}", manifest.version, std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).map_err(|e| PoliciesError::io(&tmp, e))?;
        for (file, bytes) in [
            (MODULE_FILE, module),
            (MANIFEST_FILE, manifest_bytes),
            (SIGNATURE_FILE, signature_bytes),
        ] {
            let p = tmp.join(file);
            fs::write(&p, bytes).map_err(|e| PoliciesError::io(&p, e))?;
        }
        fs::rename(&tmp, &dir).map_err(|e| PoliciesError::io(&dir, e))?;
        tracing::info!(policy = %manifest.id(), registry = %self.root.display(), "published");
        Ok(dir)
    }

    /// Every version in the registry, by name then version. Versions whose manifest cannot be
    /// read are skipped with a warning (they will not load either).
    pub fn list(&self) -> Result<Vec<RegistryEntry>, PoliciesError> {
        let mut out = Vec::new();
        let names = match fs::read_dir(&self.root) {
            Ok(r) => r,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(PoliciesError::io(&self.root, e)),
        };
        for name in names.flatten() {
            if !name.path().is_dir() || name.file_name().to_string_lossy().starts_with('.') {
                continue;
            }
            let versions =
                fs::read_dir(name.path()).map_err(|e| PoliciesError::io(name.path(), e))?;
            for v in versions.flatten() {
                let dir = v.path();
                if v.file_name().to_string_lossy().starts_with('.') || !dir.is_dir() {
                    continue;
                }
                match read_manifest(&dir) {
                    Ok((manifest, _)) => out.push(RegistryEntry { manifest, dir }),
                    Err(e) => {
                        tracing::warn!(dir = %dir.display(), error = %e, "skipping a registry entry")
                    }
                }
            }
        }
        out.sort_by(|a, b| {
            a.manifest
                .name
                .cmp(&b.manifest.name)
                .then(cmp_versions(&a.manifest.version, &b.manifest.version))
        });
        Ok(out)
    }

    /// The newest version of every policy.
    pub fn latest(&self) -> Result<Vec<RegistryEntry>, PoliciesError> {
        let mut all = self.list()?;
        // `list` sorts by name then version: keep the last of each name.
        let mut out: Vec<RegistryEntry> = Vec::new();
        for e in all.drain(..) {
            match out.last_mut() {
                Some(last) if last.manifest.name == e.manifest.name => *last = e,
                _ => out.push(e),
            }
        }
        Ok(out)
    }

    /// Reads and verifies the version in `entry.dir` against `trust`.
    pub fn verify(
        &self,
        entry: &RegistryEntry,
        trust: &TrustedKeys,
    ) -> Result<VerifiedPolicy, PoliciesError> {
        verify_dir(&entry.dir, trust)
    }
}

fn read_manifest(dir: &Path) -> Result<(Manifest, Vec<u8>), PoliciesError> {
    let path = dir.join(MANIFEST_FILE);
    let bytes = fs::read(&path).map_err(|e| PoliciesError::io(&path, e))?;
    Ok((parse_manifest(&path, &bytes)?, bytes))
}

/// Verifies the signature and digest of the version stored in `dir`.
pub fn verify_dir(dir: &Path, trust: &TrustedKeys) -> Result<VerifiedPolicy, PoliciesError> {
    let (manifest, manifest_bytes) = read_manifest(dir)?;
    let sig_path = dir.join(SIGNATURE_FILE);
    let signature_bytes = match fs::read(&sig_path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(PoliciesError::Untrusted {
                name: manifest.name,
                version: manifest.version,
                reason: "unsigned: no signature.json".into(),
            });
        }
        Err(e) => return Err(PoliciesError::io(&sig_path, e)),
    };
    let module_path = dir.join(MODULE_FILE);
    let module = fs::read(&module_path).map_err(|e| PoliciesError::io(&module_path, e))?;
    verify_parts(
        dir,
        manifest,
        manifest_bytes,
        signature_bytes,
        module,
        trust,
    )
}

/// Verifies a version given as bytes (the exact `manifest.json`, `policy.wasm` and
/// `signature.json`), e.g. one uploaded to the service, before [`Registry::add`] stores it.
pub fn verify_bytes(
    manifest_bytes: Vec<u8>,
    module: Vec<u8>,
    signature_bytes: Vec<u8>,
    trust: &TrustedKeys,
) -> Result<VerifiedPolicy, PoliciesError> {
    let origin = Path::new(MANIFEST_FILE);
    let manifest = parse_manifest(origin, &manifest_bytes)?;
    check_name(&manifest.name)?;
    parse_version(&manifest.version)?;
    verify_parts(
        Path::new("."),
        manifest,
        manifest_bytes,
        signature_bytes,
        module,
        trust,
    )
}

fn parse_manifest(path: &Path, bytes: &[u8]) -> Result<Manifest, PoliciesError> {
    serde_json::from_slice(bytes).map_err(|e| PoliciesError::BadFile {
        path: path.to_owned(),
        reason: format!("not a policy manifest: {e}"),
    })
}

/// Checks the signature against `trust` and the module against the manifest's digest.
/// `origin` names where the files came from in errors.
fn verify_parts(
    origin: &Path,
    manifest: Manifest,
    manifest_bytes: Vec<u8>,
    signature_bytes: Vec<u8>,
    module: Vec<u8>,
    trust: &TrustedKeys,
) -> Result<VerifiedPolicy, PoliciesError> {
    let untrusted = |reason: String| PoliciesError::Untrusted {
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        reason,
    };
    let sig: SignatureFile =
        serde_json::from_slice(&signature_bytes).map_err(|e| PoliciesError::BadFile {
            path: origin.join(SIGNATURE_FILE),
            reason: format!("not a signature file: {e}"),
        })?;
    let key = parse_public_key(&sig.key).map_err(&untrusted)?;
    if !trust.contains(&key) {
        return Err(untrusted(format!(
            "signed by key {} which is not among the trusted keys",
            sig.key
        )));
    }
    let signature: [u8; 64] = hex::decode(&sig.signature)
        .ok()
        .and_then(|b| b.try_into().ok())
        .ok_or_else(|| untrusted("the signature is not 128 hex characters".into()))?;
    key.verify(&manifest_bytes, &Signature::from_bytes(&signature))
        .map_err(|_| {
            untrusted("the signature does not match the manifest (tampered manifest)".into())
        })?;
    let actual = sha256_hex(&module);
    if actual != manifest.sha256 {
        return Err(PoliciesError::DigestMismatch {
            name: manifest.name.clone(),
            version: manifest.version.clone(),
            expected: manifest.sha256.clone(),
            actual,
        });
    }
    Ok(VerifiedPolicy {
        manifest,
        module,
        signer: sig.key,
        manifest_bytes,
        signature_bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_versions_are_checked() {
        assert!(check_name("eu-residency").is_ok());
        for bad in ["", "EU", "1abc", "a_b", &"a".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_version("1.2.3").unwrap(), [1, 2, 3]);
        assert!(parse_version("1.2").is_err());
        assert_eq!(cmp_versions("1.10.0", "1.9.0"), Ordering::Greater);
    }

    #[test]
    fn publish_list_verify_and_refuse_tampering() {
        let dir = tempfile::tempdir().unwrap();
        let reg = Registry::open(dir.path());
        let key = PolicyKey::generate();
        let trust = TrustedKeys::from_hex(&[&key.public_hex()]).unwrap();
        let module = b"\0asm\x0d\0\x01\0not really".to_vec();
        let m1 = Manifest::for_module("p", "1.0.0", "me", PolicyKind::Filter, &module).unwrap();
        let m2 = Manifest::for_module("p", "1.10.0", "me", PolicyKind::Filter, &module).unwrap();
        reg.publish(&m1, &module, &key).unwrap();
        reg.publish(&m2, &module, &key).unwrap();
        let err = reg.publish(&m1, &module, &key).unwrap_err().to_string();
        assert!(err.contains("immutable"), "{err}");
        let latest = reg.latest().unwrap();
        assert_eq!(latest.len(), 1);
        assert_eq!(latest[0].manifest.version, "1.10.0");
        let ok = reg.verify(&latest[0], &trust).unwrap();
        assert_eq!(ok.module, module);

        // Another key is not trusted.
        let other = TrustedKeys::from_hex(&[&PolicyKey::generate().public_hex()]).unwrap();
        let err = reg.verify(&latest[0], &other).unwrap_err().to_string();
        assert!(err.contains("not among the trusted keys"), "{err}");

        // A changed module no longer matches the manifest.
        fs::write(latest[0].dir.join(MODULE_FILE), b"evil").unwrap();
        let err = reg.verify(&latest[0], &trust).unwrap_err().to_string();
        assert!(err.contains("tampered or corrupt"), "{err}");

        // A changed manifest no longer matches the signature.
        let p = latest[0].dir.join(MANIFEST_FILE);
        let text = fs::read_to_string(&p)
            .unwrap()
            .replace("\"me\"", "\"mallory\"");
        fs::write(&p, text).unwrap();
        let err = reg.verify(&latest[0], &trust).unwrap_err().to_string();
        assert!(err.contains("tampered manifest"), "{err}");

        // No signature at all.
        fs::remove_file(latest[0].dir.join(SIGNATURE_FILE)).unwrap();
        let err = reg.verify(&latest[0], &trust).unwrap_err().to_string();
        assert!(err.contains("unsigned"), "{err}");
    }

    #[test]
    fn keys_round_trip_through_files() {
        let dir = tempfile::tempdir().unwrap();
        let key = PolicyKey::generate();
        let path = dir.path().join("author.key");
        let public = key.write(&path).unwrap();
        let back = PolicyKey::from_file(&path).unwrap();
        assert_eq!(back.public_hex(), key.public_hex());
        let trust = TrustedKeys::from_file(&public).unwrap();
        assert!(!trust.is_empty());
        assert!(key.write(&path).is_err(), "never overwrites a key");
    }
}
