//! The input root of an action: canonical `Directory` messages of a stage's declared inputs only
//! (SHA-256, the digests of the local store), plus the edgebuild binary and the op description
//! for op stages; and the `Command` and `Action` built around it.

use super::worker::binary_platform;
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::proto::build::bazel::remote::execution::v2 as re;
use prost::Message;

use super::RemoteExecutor;
use super::settings::REMOTE_PATH;
use super::worker::{OpDescription, TOOL_DIR};
use edgebuild_engine::exec::Job;
use edgebuild_engine::hash::Digest;
use edgebuild_engine::stage::Action;

/// A blob to upload: bytes in memory or a file.
#[derive(Clone)]
pub(crate) enum Blob {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

impl Blob {
    pub(crate) fn read(&self) -> std::io::Result<Vec<u8>> {
        match self {
            Blob::Bytes(b) => Ok(b.as_ref().clone()),
            Blob::File(p) => std::fs::read(p),
        }
    }
}

pub(crate) fn digest_of(hash: &Digest, size: u64) -> re::Digest {
    re::Digest {
        hash: hash.hex(),
        size_bytes: size as i64,
    }
}

pub(crate) fn message_digest(message: &impl Message) -> (re::Digest, Vec<u8>) {
    let bytes = message.encode_to_vec();
    (
        digest_of(&Digest::of_bytes(&bytes), bytes.len() as u64),
        bytes,
    )
}

/// A stage as REAPI messages, with every blob they name.
pub(crate) struct Prepared {
    pub(crate) action: re::Digest,
    pub(crate) blobs: HashMap<String, (re::Digest, Blob)>,
    pub(crate) outputs: Vec<String>,
}

#[derive(Default)]
pub(crate) struct DirBuilder {
    pub(crate) files: BTreeMap<String, re::FileNode>,
    pub(crate) dirs: std::collections::BTreeSet<String>,
}

/// The input root: directories by workspace-relative path ("" is the root).
#[derive(Default)]
pub(crate) struct InputRoot {
    pub(crate) dirs: BTreeMap<String, DirBuilder>,
    pub(crate) blobs: HashMap<String, (re::Digest, Blob)>,
}

impl InputRoot {
    pub(crate) fn ensure_dir(&mut self, rel: &str) {
        if self.dirs.contains_key(rel) {
            return;
        }
        self.dirs.insert(rel.to_string(), DirBuilder::default());
        if !rel.is_empty() {
            let (parent, name) = match rel.rsplit_once('/') {
                Some((p, n)) => (p, n),
                None => ("", rel),
            };
            self.ensure_dir(parent);
            self.dirs
                .get_mut(parent)
                .expect("made above")
                .dirs
                .insert(name.to_string());
        }
    }

    pub(crate) fn add_file(
        &mut self,
        rel: &str,
        blob: Blob,
        hash: Digest,
        size: u64,
        executable: bool,
    ) {
        let (parent, name) = match rel.rsplit_once('/') {
            Some((p, n)) => (p, n),
            None => ("", rel),
        };
        self.ensure_dir(parent);
        let digest = digest_of(&hash, size);
        self.blobs.insert(hash.hex(), (digest.clone(), blob));
        self.dirs.get_mut(parent).expect("made above").files.insert(
            name.to_string(),
            re::FileNode {
                name: name.to_string(),
                digest: Some(digest),
                is_executable: executable,
                node_properties: None,
            },
        );
    }

    /// Adds a declared input, a file or a whole directory, from the workspace.
    pub(crate) fn add_path(&mut self, root: &Path, rel: &str) -> std::io::Result<()> {
        let path = root.join(rel);
        let meta = std::fs::metadata(&path)?;
        if meta.is_dir() {
            self.ensure_dir(rel);
            for entry in walkdir::WalkDir::new(&path).sort_by_file_name() {
                let entry = entry.map_err(std::io::Error::other)?;
                let inner = entry
                    .path()
                    .strip_prefix(root)
                    .expect("under the root")
                    .to_string_lossy()
                    .into_owned();
                if entry.file_type().is_dir() {
                    self.ensure_dir(&inner);
                } else {
                    self.add_workspace_file(root, &inner)?;
                }
            }
            Ok(())
        } else {
            self.add_workspace_file(root, rel)
        }
    }

    pub(crate) fn add_workspace_file(&mut self, root: &Path, rel: &str) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        let path = root.join(rel);
        let (hash, size) = edgebuild_engine::hash::hash_file(&path)?;
        let executable = std::fs::metadata(&path)?.permissions().mode() & 0o111 != 0;
        self.add_file(rel, Blob::File(path), hash, size, executable);
        Ok(())
    }

    /// The canonical `Directory` messages, deepest first; returns the root's digest.
    pub(crate) fn finish(mut self) -> (re::Digest, HashMap<String, (re::Digest, Blob)>) {
        self.ensure_dir("");
        let mut digests: HashMap<String, re::Digest> = HashMap::new();
        let mut paths: Vec<String> = self.dirs.keys().cloned().collect();
        paths.sort_by_key(|p| {
            std::cmp::Reverse(if p.is_empty() {
                0
            } else {
                p.matches('/').count() + 1
            })
        });
        for path in paths {
            let builder = &self.dirs[&path];
            let directory = re::Directory {
                files: builder.files.values().cloned().collect(),
                directories: builder
                    .dirs
                    .iter()
                    .map(|name| {
                        let child = if path.is_empty() {
                            name.clone()
                        } else {
                            format!("{path}/{name}")
                        };
                        re::DirectoryNode {
                            name: name.clone(),
                            digest: Some(digests[&child].clone()),
                        }
                    })
                    .collect(),
                symlinks: Vec::new(),
                node_properties: None,
            };
            let (digest, bytes) = message_digest(&directory);
            self.blobs.insert(
                digest.hash.clone(),
                (digest.clone(), Blob::Bytes(Arc::new(bytes))),
            );
            digests.insert(path, digest);
        }
        (digests.remove("").expect("the root"), self.blobs)
    }
}

impl RemoteExecutor {
    pub(crate) fn binary(&self) -> Result<(PathBuf, Digest, u64), String> {
        self.binary
            .get_or_init(|| {
                let path = std::env::current_exe()
                    .map_err(|e| format!("cannot find edgebuild itself: {e}"))?;
                let (hash, size) = edgebuild_engine::hash::hash_file(&path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
                Ok((path, hash, size))
            })
            .clone()
    }

    /// The stage as Command, input root and Action.
    pub(crate) fn prepare(&self, job: &Job) -> Result<Prepared, String> {
        let stage = job.stage;
        let mut root = InputRoot::default();
        for input in &stage.inputs {
            root.add_path(job.root, &input.path)
                .map_err(|e| format!("input {}: {e}", input.path))?;
        }
        let arguments = match &stage.action {
            Action::Manual(_) => return Err("a manual stage is signed off, never executed".into()),
            Action::Cmd(_) => vec![
                "sh".to_string(),
                "-c".to_string(),
                job.command.clone().unwrap_or_default(),
            ],
            Action::Op { name, .. } => {
                let (path, hash, size) = self.binary()?;
                root.add_file(
                    &format!("{TOOL_DIR}/edgebuild"),
                    Blob::File(path),
                    hash,
                    size,
                    true,
                );
                let ports = |ports: &[edgebuild_engine::spec::Port]| -> BTreeMap<String, String> {
                    ports
                        .iter()
                        .map(|p| (p.name.clone(), p.path.clone()))
                        .collect()
                };
                let description = OpDescription {
                    stage: stage.id.clone(),
                    op: name.clone(),
                    inputs: ports(&stage.inputs),
                    outputs: ports(&stage.outputs),
                    params: stage.params.clone(),
                };
                let bytes = serde_json::to_vec(&description).expect("descriptions serialize");
                let hash = Digest::of_bytes(&bytes);
                let size = bytes.len() as u64;
                root.add_file(
                    &format!("{TOOL_DIR}/stage.json"),
                    Blob::Bytes(Arc::new(bytes)),
                    hash,
                    size,
                    false,
                );
                vec![
                    format!("{TOOL_DIR}/edgebuild"),
                    "run-op".to_string(),
                    format!("{TOOL_DIR}/stage.json"),
                ]
            }
        };
        let mut environment: BTreeMap<String, String> = job
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string_lossy().into_owned()))
            .collect();
        // A stage that declares PATH gets its value, as locally.
        environment
            .entry("PATH".into())
            .or_insert_with(|| REMOTE_PATH.into());
        let mut outputs: Vec<String> = stage.outputs.iter().map(|p| p.path.clone()).collect();
        outputs.sort();
        let mut properties = stage.platform.clone();
        if matches!(stage.action, Action::Op { .. }) {
            // The op runs this very binary: the worker must be of its OS and architecture.
            for (name, value) in binary_platform() {
                properties
                    .entry(name.to_string())
                    .or_insert_with(|| value.to_string());
            }
        }
        let platform = re::Platform {
            properties: properties
                .into_iter()
                .map(|(name, value)| re::platform::Property { name, value })
                .collect(),
        };
        // `Command.platform` is deprecated for `Action.platform`; older servers still read it.
        #[allow(deprecated)]
        let command = re::Command {
            arguments,
            environment_variables: environment
                .into_iter()
                .map(|(name, value)| re::command::EnvironmentVariable { name, value })
                .collect(),
            output_paths: outputs.clone(),
            platform: Some(platform.clone()),
            ..Default::default()
        };
        let (input_root, mut blobs) = root.finish();
        let (command_digest, command_bytes) = message_digest(&command);
        blobs.insert(
            command_digest.hash.clone(),
            (command_digest.clone(), Blob::Bytes(Arc::new(command_bytes))),
        );
        let action = re::Action {
            command_digest: Some(command_digest),
            input_root_digest: Some(input_root),
            timeout: Some(crate::proto::google::protobuf::Duration {
                seconds: 3600,
                nanos: 0,
            }),
            // A measurement is taken anew each time: never served from a cache.
            do_not_cache: stage.volatile,
            salt: Vec::new(),
            platform: Some(platform),
        };
        let (action_digest, action_bytes) = message_digest(&action);
        blobs.insert(
            action_digest.hash.clone(),
            (action_digest.clone(), Blob::Bytes(Arc::new(action_bytes))),
        );
        Ok(Prepared {
            action: action_digest,
            blobs,
            outputs,
        })
    }
}
