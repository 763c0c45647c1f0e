//! Signed releases (the first part of deployment): `edgebuild keygen`, `edgebuild release` and
//! the check a device makes before installing, `edgebuild release verify`.
//!
//! A release is a manifest (release number, version, artifact hashes and sizes, gate verdicts,
//! the lock keys of the stages it comes from) signed with Ed25519. It is made only from a build
//! whose gates all passed and whose lock matches the working tree. Each release after the first
//! also gets a pre-signed rollback manifest numbered one above it that points at the previous
//! release's artifacts (SPEC.md, "Signed releases"), so a server can roll devices back without holding the
//! key. A device accepts only a correctly signed manifest numbered above the one it runs, whose
//! artifacts have the listed hashes. The private key never enters the cache, a lock or a log.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signature, Signer, SigningKey, Verifier, VerifyingKey};
use miette::Diagnostic;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use edgebuild_engine::hash::Digest;

const PRIVATE_HEADER: &str = "edgebuild-ed25519-private-key-v1";
const PUBLIC_HEADER: &str = "edgebuild-ed25519-public-key-v1";
pub const FORMAT: &str = "edgebuild-release-v1";

#[derive(Debug, Error, Diagnostic)]
pub enum ReleaseError {
    #[error("{0}")]
    #[diagnostic(code(edgebuild::release::refused))]
    Refused(String, #[help] Option<String>),

    #[error("{path}: {message}")]
    #[diagnostic(code(edgebuild::release::key))]
    Key { path: String, message: String },

    #[error("manifest rejected: {0}")]
    #[diagnostic(
        code(edgebuild::release::rejected),
        help(
            "a device installs only a release signed by the release key, numbered above the one it runs, whose artifacts match their hashes"
        )
    )]
    Rejected(String),

    #[error("I/O error on {path}: {source}")]
    #[diagnostic(code(edgebuild::release::io))]
    Io {
        path: String,
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ReleaseError + '_ {
    move |source| ReleaseError::Io {
        path: path.display().to_string(),
        source,
    }
}

/// One artifact of a release, addressed by hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub sha256: Digest,
    pub size: u64,
}

/// What is signed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format: String,
    /// Monotonically increasing across releases and rollbacks of the pipeline.
    pub release: u64,
    /// `release`, or `rollback` (back to `rollback_to`'s artifacts).
    pub kind: String,
    pub pipeline: String,
    pub version: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback_to: Option<u64>,
    pub artifacts: Vec<Artifact>,
    /// Gate stage → verdict, as the lock records them.
    pub gates: BTreeMap<String, String>,
    /// Stage → lock key, so the release names exactly the build it comes from.
    pub stages: BTreeMap<String, Digest>,
}

/// A manifest with its signature.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SignedManifest {
    pub manifest: Manifest,
    /// SHA-256 of the public key, to tell keys apart.
    pub key_id: String,
    /// Ed25519 over the canonical JSON of `manifest`, in hex.
    pub signature: String,
}

fn canonical(manifest: &Manifest) -> Vec<u8> {
    let value = serde_json::to_value(manifest).expect("manifests serialize");
    edgebuild_engine::hash::canonical_json(&value).into_bytes()
}

fn key_id(key: &VerifyingKey) -> String {
    Digest::of_bytes(key.as_bytes()).hex()[..16].to_string()
}

impl SignedManifest {
    pub fn sign(manifest: Manifest, key: &SigningKey) -> SignedManifest {
        let signature = key.sign(&canonical(&manifest));
        SignedManifest {
            key_id: key_id(&key.verifying_key()),
            signature: hex::encode(signature.to_bytes()),
            manifest,
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifests serialize");
        bytes.push(b'\n');
        bytes
    }

    /// The device's check: format, signature, number above `current`, and (when given) the
    /// artifacts' bytes by name.
    pub fn verify(
        &self,
        key: &VerifyingKey,
        current: Option<u64>,
        artifact_bytes: &dyn Fn(&Artifact) -> Option<Vec<u8>>,
    ) -> Result<(), ReleaseError> {
        self.verify_signature(key, current)?;
        self.verify_artifacts(artifact_bytes)
    }

    /// The checks before downloading anything: format, signature, number above `current`.
    pub fn verify_signature(
        &self,
        key: &VerifyingKey,
        current: Option<u64>,
    ) -> Result<(), ReleaseError> {
        let reject = |m: String| Err(ReleaseError::Rejected(m));
        if self.manifest.format != FORMAT {
            return reject(format!("unknown format `{}`", self.manifest.format));
        }
        let signature = hex::decode(&self.signature)
            .ok()
            .and_then(|b| Signature::from_slice(&b).ok());
        let Some(signature) = signature else {
            return reject("the signature is malformed or missing".into());
        };
        if key.verify(&canonical(&self.manifest), &signature).is_err() {
            return reject(format!(
                "the signature does not match (signed by key {}, trusted key {}), or the manifest was altered",
                self.key_id,
                key_id(key)
            ));
        }
        if let Some(current) = current
            && self.manifest.release <= current
        {
            return reject(format!(
                "release {} is not newer than the running release {current}",
                self.manifest.release
            ));
        }
        Ok(())
    }

    /// Each artifact's size and SHA-256, from `artifact_bytes` by name.
    pub fn verify_artifacts(
        &self,
        artifact_bytes: &dyn Fn(&Artifact) -> Option<Vec<u8>>,
    ) -> Result<(), ReleaseError> {
        let reject = |m: String| Err(ReleaseError::Rejected(m));
        for artifact in &self.manifest.artifacts {
            let Some(bytes) = artifact_bytes(artifact) else {
                return reject(format!("artifact {} is missing", artifact.name));
            };
            if bytes.len() as u64 != artifact.size || Digest::of_bytes(&bytes) != artifact.sha256 {
                return reject(format!(
                    "artifact {} does not match its hash: corrupted or tampered with",
                    artifact.name
                ));
            }
        }
        Ok(())
    }
}

/// Writes a new key pair: `PATH` (private, mode 0600) and `PATH.pub`. Never overwrites.
pub fn keygen(path: &Path) -> Result<VerifyingKey, ReleaseError> {
    let public = public_path(path);
    for p in [path, public.as_path()] {
        if p.exists() {
            return Err(ReleaseError::Refused(
                format!("{} exists", p.display()),
                Some("a release key is never overwritten: choose another path, or delete it knowingly".into()),
            ));
        }
    }
    let mut seed = [0u8; 32];
    std::io::Read::read_exact(
        &mut std::fs::File::open("/dev/urandom").map_err(io(Path::new("/dev/urandom")))?,
        &mut seed,
    )
    .map_err(io(Path::new("/dev/urandom")))?;
    let key = SigningKey::from_bytes(&seed);
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(io(dir))?;
    }
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .map_err(io(path))?;
        writeln!(file, "{PRIVATE_HEADER}\n{}", hex::encode(seed)).map_err(io(path))?;
    }
    let verifying = key.verifying_key();
    edgebuild_engine::files::write_atomic(
        &public,
        format!("{PUBLIC_HEADER}\n{}\n", hex::encode(verifying.as_bytes())).as_bytes(),
    )
    .map_err(io(&public))?;
    Ok(verifying)
}

pub fn public_path(private: &Path) -> PathBuf {
    let mut name = private.as_os_str().to_owned();
    name.push(".pub");
    PathBuf::from(name)
}

fn read_key_file(path: &Path, header: &str) -> Result<[u8; 32], ReleaseError> {
    let bad = |message: &str| ReleaseError::Key {
        path: path.display().to_string(),
        message: message.to_string(),
    };
    let text = std::fs::read_to_string(path).map_err(|e| bad(&e.to_string()))?;
    let mut lines = text.lines();
    if lines.next() != Some(header) {
        return Err(bad(&format!("not a key file (expected `{header}`)")));
    }
    let bytes = lines
        .next()
        .and_then(|l| hex::decode(l.trim()).ok())
        .ok_or_else(|| bad("the key is not hex"))?;
    bytes.try_into().map_err(|_| bad("the key is not 32 bytes"))
}

pub fn read_signing_key(path: &Path) -> Result<SigningKey, ReleaseError> {
    read_key_file(path, PRIVATE_HEADER).map(|seed| SigningKey::from_bytes(&seed))
}

pub fn read_verifying_key(path: &Path) -> Result<VerifyingKey, ReleaseError> {
    let bytes = read_key_file(path, PUBLIC_HEADER)?;
    VerifyingKey::from_bytes(&bytes).map_err(|e| ReleaseError::Key {
        path: path.display().to_string(),
        message: e.to_string(),
    })
}

/// Where a pipeline's signed manifests live: `releases/PIPELINE/NUMBER.json`.
pub fn releases_dir(root: &Path, pipeline: &str) -> PathBuf {
    root.join("releases").join(pipeline)
}

/// The manifests already made for a pipeline, by number.
pub fn existing(
    root: &Path,
    pipeline: &str,
) -> Result<BTreeMap<u64, SignedManifest>, ReleaseError> {
    let dir = releases_dir(root, pipeline);
    let mut found = BTreeMap::new();
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Ok(found);
    };
    for entry in entries {
        let path = entry.map_err(io(&dir))?.path();
        if path.extension().is_some_and(|e| e == "json") {
            let bytes = std::fs::read(&path).map_err(io(&path))?;
            let signed: SignedManifest = serde_json::from_slice(&bytes)
                .map_err(|e| ReleaseError::Refused(format!("{}: {e}", path.display()), None))?;
            found.insert(signed.manifest.release, signed);
        }
    }
    Ok(found)
}

/// What `release` made.
#[derive(Debug, Serialize)]
pub struct Made {
    pub release: u64,
    pub manifest: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rollback: Option<(u64, String)>,
}

/// Makes release `version` of `pipeline` from its current lock, after checking that its gates
/// passed and that the lock matches the working tree (the plan has nothing to do).
pub fn release(
    ctx: &edgebuild_engine::context::Context,
    pipeline: &str,
    version: &str,
    key: &SigningKey,
    rollback_to: Option<u64>,
) -> Result<Made, ReleaseError> {
    let refuse = |m: String, help: &str| Err(ReleaseError::Refused(m, Some(help.to_string())));
    let Some(index) = ctx.ws.pipeline_index(pipeline) else {
        return refuse(
            format!("no pipeline named `{pipeline}`"),
            "name a pipeline file stem",
        );
    };
    let selected: Vec<usize> = ctx
        .graph
        .order
        .iter()
        .copied()
        .filter(|&s| ctx.ws.stages[s].pipeline == index)
        .collect();
    let plans = edgebuild_engine::plan::plan(ctx, &selected);
    let stale: Vec<&str> = plans
        .iter()
        .filter(|p| p.status != edgebuild_engine::plan::Status::UpToDate)
        .map(|p| p.stage.as_str())
        .collect();
    if !stale.is_empty() {
        return refuse(
            format!(
                "the lock does not match the working tree: {} would run or be restored",
                stale.join(", ")
            ),
            "build first (`edgebuild build`), and release what the lock records",
        );
    }
    let lock = ctx.locks[index]
        .as_ref()
        .expect("up to date implies a lock");
    let mut gates = BTreeMap::new();
    for (name, stage) in &lock.stages {
        if let Some(verdict) = stage.gate {
            let word = format!("{verdict:?}").to_lowercase();
            if verdict == edgebuild_engine::lock::GateVerdict::Failed {
                return refuse(
                    format!("gate {pipeline}:{name} failed"),
                    "a release is made only from a build whose gates all passed",
                );
            }
            gates.insert(format!("{pipeline}:{name}"), word);
        }
    }
    if gates.is_empty() {
        return refuse(
            format!("{pipeline} has no gate stage"),
            "add a `gate` stage: nothing unchecked ships",
        );
    }
    // The artifacts: the outputs of the pipeline's `package` stages (the deployable set).
    let mut artifacts = Vec::new();
    for &s in &selected {
        let stage = &ctx.ws.stages[s];
        if !matches!(&stage.action, edgebuild_engine::spec::Action::Op { name, .. } if name == "package")
        {
            continue;
        }
        let locked = &lock.stages[&stage.name];
        for port in &stage.outputs {
            let out = &locked.outputs[&port.path];
            let (Some(hash), Some(size)) = (out.hash, out.size) else {
                return refuse(
                    format!("{}: output {} is volatile", stage.id, port.path),
                    "a release ships no measured output: a package stage is never volatile",
                );
            };
            artifacts.push(Artifact {
                name: Path::new(&port.path)
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                sha256: hash,
                size,
            });
        }
    }
    if artifacts.is_empty() {
        return refuse(
            format!("{pipeline} has no package stage"),
            "add a `package` stage: it makes the deployable set",
        );
    }
    let stages = lock
        .stages
        .iter()
        .filter(|(_, s)| !s.outputs.values().any(|o| o.volatile))
        .map(|(name, s)| (format!("{pipeline}:{name}"), s.key))
        .collect();
    let made = existing(ctx.root(), pipeline)?;
    let number = made.keys().next_back().map_or(1, |n| n + 1);
    // The way back: the newest release, or the one named (when the newest was itself rolled
    // back, it is not a good place to return to).
    let previous = match rollback_to {
        None => made
            .values()
            .rev()
            .find(|m| m.manifest.kind == "release")
            .map(|m| m.manifest.clone()),
        Some(n) => match made.get(&n) {
            Some(m) if m.manifest.kind == "release" => Some(m.manifest.clone()),
            _ => {
                return refuse(
                    format!("there is no release {n} of {pipeline} to roll back to"),
                    "name a release (not a rollback) in releases/PIPELINE/",
                );
            }
        },
    };
    if made
        .values()
        .any(|m| m.manifest.kind == "release" && m.manifest.version == version)
    {
        return refuse(
            format!("version {version} of {pipeline} was released already"),
            "give a new version",
        );
    }
    let manifest = Manifest {
        format: FORMAT.into(),
        release: number,
        kind: "release".into(),
        pipeline: pipeline.into(),
        version: version.into(),
        rollback_to: None,
        artifacts,
        gates,
        stages,
    };
    let dir = releases_dir(ctx.root(), pipeline);
    let write = |signed: &SignedManifest| -> Result<String, ReleaseError> {
        let path = dir.join(format!("{}.json", signed.manifest.release));
        edgebuild_engine::files::write_atomic(&path, &signed.to_bytes()).map_err(io(&path))?;
        Ok(path
            .strip_prefix(ctx.root())
            .unwrap_or(&path)
            .display()
            .to_string())
    };
    // The rollback first: a release is never on disk without the way back.
    let rollback = match previous {
        Some(previous) => {
            let back = Manifest {
                release: number + 1,
                kind: "rollback".into(),
                rollback_to: Some(previous.release),
                version: previous.version.clone(),
                ..previous
            };
            let signed = SignedManifest::sign(back, key);
            Some((number + 1, write(&signed)?))
        }
        None => None,
    };
    let signed = SignedManifest::sign(manifest, key);
    Ok(Made {
        release: number,
        manifest: write(&signed)?,
        rollback,
    })
}
