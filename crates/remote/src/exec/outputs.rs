//! A finished action's outputs: downloaded, checked against their digests and the stage's
//! declared outputs, and only then written into the workspace; and the command's log.

use super::merkle::message_digest;
use super::worker::binary_platform;
use edgebuild_engine::exec::{ExecSuccess, RemoteRun};
use edgebuild_engine::op::OpOutcome;
use std::collections::HashMap;

use crate::proto::build::bazel::remote::execution::v2 as re;
use prost::Message;

use super::RemoteExecutor;
use super::execute::Fault;
use super::merkle::Prepared;
use edgebuild_engine::exec::{ExecFailure, Job};

pub(crate) enum CollectError {
    /// The stage itself failed (its exit code): no retry, no fallback.
    Stage(ExecFailure),
    /// The server or its outputs are at fault.
    Fault(Fault),
}

/// The files of an output `Tree`: (relative path, digest, executable).
pub(crate) fn tree_files(
    dir: &re::Directory,
    prefix: &str,
    children: &HashMap<String, re::Directory>,
    out: &mut Vec<(String, re::Digest, bool)>,
    depth: usize,
) -> Result<(), String> {
    if depth > 64 {
        return Err("nested too deeply".into());
    }
    if out.len() > 1_000_000 {
        return Err("more than a million files".into());
    }
    let safe = |name: &str| !name.is_empty() && name != "." && name != ".." && !name.contains('/');
    if let Some(link) = dir.symlinks.first() {
        return Err(format!(
            "symlink {} in an output is not supported",
            link.name
        ));
    }
    for file in &dir.files {
        if !safe(&file.name) {
            return Err(format!("unsafe name `{}`", file.name));
        }
        out.push((
            format!("{prefix}{}", file.name),
            file.digest.clone().unwrap_or_default(),
            file.is_executable,
        ));
    }
    for sub in &dir.directories {
        if !safe(&sub.name) {
            return Err(format!("unsafe name `{}`", sub.name));
        }
        let digest = sub.digest.clone().unwrap_or_default();
        let child = children
            .get(&digest.hash)
            .ok_or_else(|| format!("directory {} is missing from the tree", sub.name))?;
        tree_files(
            child,
            &format!("{prefix}{}/", sub.name),
            children,
            out,
            depth + 1,
        )?;
    }
    Ok(())
}

impl RemoteExecutor {
    /// Forgets that the action's blobs are on the server, so that they are asked for again.
    pub(crate) fn forget(&self, prepared: &Prepared) {
        let mut present = self.present.lock().expect("present");
        for hash in prepared.blobs.keys() {
            present.remove(hash);
        }
    }

    /// Removes whatever a failed collection wrote.
    pub(crate) fn clear_outputs(&self, job: &Job) {
        for output in &job.stage.outputs {
            let _ = edgebuild_engine::files::remove_path(&job.root.join(&output.path));
        }
    }

    /// Checks the result, downloads and verifies the outputs, writes them into the workspace.
    pub(crate) async fn collect(
        &self,
        job: &Job<'_>,
        prepared: &Prepared,
        result: &re::ActionResult,
    ) -> Result<ExecSuccess, CollectError> {
        let stdout = self
            .log_text(&result.stdout_raw, result.stdout_digest.as_ref())
            .await;
        let stderr = self
            .log_text(&result.stderr_raw, result.stderr_digest.as_ref())
            .await;
        let op = self.ops.of(job.stage);
        let outcome = match (result.exit_code, op) {
            (0, _) => OpOutcome::Success,
            (3, Some(op)) if op.is_gate() => OpOutcome::GateFailed,
            (code, _) => {
                let text = format!("{stdout}{stderr}");
                let tail = edgebuild_engine::exec::tail(text.as_bytes());
                return Err(CollectError::Stage(ExecFailure {
                    message: match op {
                        Some(_) if code == 126 || code == 127 => {
                            let [(_, os), (_, isa)] = binary_platform();
                            format!(
                                "the worker could not start the edgebuild binary (exit code {code}): it is built for {os} {isa}; give the stage `platform:` properties of such workers"
                            )
                        }
                        Some(_) => {
                            format!("the op failed on the remote executor (exit code {code})")
                        }
                        None => {
                            format!(
                                "command failed on the remote executor with exit code {code}: {}",
                                edgebuild_engine::sandbox::UNDECLARED_HINT
                            )
                        }
                    },
                    log_tail: tail,
                    bad_input: op.is_some() && code == 2,
                }));
            }
        };
        #[allow(deprecated)]
        let links = result
            .output_symlinks
            .iter()
            .chain(&result.output_file_symlinks)
            .chain(&result.output_directory_symlinks)
            .next();
        if let Some(link) = links {
            return Err(CollectError::Stage(ExecFailure {
                message: format!(
                    "output {} is a symlink (to {}): outputs are files and directories",
                    link.path, link.target
                ),
                log_tail: Vec::new(),
                bad_input: false,
            }));
        }
        let undigested = result
            .output_files
            .iter()
            .filter(|f| f.digest.is_none())
            .map(|f| f.path.as_str())
            .chain(
                result
                    .output_directories
                    .iter()
                    .filter(|d| d.tree_digest.is_none())
                    .map(|d| d.path.as_str()),
            )
            .next();
        if let Some(path) = undigested {
            return Err(CollectError::Fault(Fault(format!(
                "the server returned output {path} without a digest"
            ))));
        }
        // Every blob first, verified; then the files, each atomically.
        let mut wanted: Vec<re::Digest> = result
            .output_files
            .iter()
            .filter_map(|f| f.digest.clone())
            .collect();
        wanted.extend(
            result
                .output_directories
                .iter()
                .filter_map(|d| d.tree_digest.clone()),
        );
        let mut blobs = self
            .read_blobs(&wanted)
            .await
            .map_err(CollectError::Fault)?;
        let mut trees = Vec::new();
        for dir in &result.output_directories {
            let digest = dir.tree_digest.clone().unwrap_or_default();
            let tree = re::Tree::decode(blobs[&digest.hash].as_slice()).map_err(|e| {
                CollectError::Fault(Fault(format!("output directory {}: {e}", dir.path)))
            })?;
            let mut files = Vec::new();
            let mut children = HashMap::new();
            for child in &tree.children {
                children.insert(message_digest(child).0.hash, child.clone());
            }
            tree_files(
                tree.root.as_ref().unwrap_or(&re::Directory::default()),
                "",
                &children,
                &mut files,
                0,
            )
            .map_err(|e| {
                CollectError::Fault(Fault(format!("output directory {}: {e}", dir.path)))
            })?;
            trees.push((dir.path.clone(), files));
        }
        let more: Vec<re::Digest> = trees
            .iter()
            .flat_map(|(_, f)| f.iter().map(|(_, d, _)| d.clone()))
            .collect();
        blobs.extend(self.read_blobs(&more).await.map_err(CollectError::Fault)?);
        let declared: std::collections::BTreeSet<&str> =
            prepared.outputs.iter().map(String::as_str).collect();
        let produced: std::collections::BTreeSet<&str> = result
            .output_files
            .iter()
            .map(|f| f.path.as_str())
            .chain(result.output_directories.iter().map(|d| d.path.as_str()))
            .collect();
        if let Some(extra) = produced.difference(&declared).next() {
            return Err(CollectError::Fault(Fault(format!(
                "the server returned an undeclared output {extra}"
            ))));
        }
        let write = |rel: &str, bytes: &[u8], executable: bool| -> std::io::Result<()> {
            let path = job.root.join(rel);
            edgebuild_engine::files::write_atomic(&path, bytes)?;
            if executable {
                use std::os::unix::fs::PermissionsExt;
                std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755))?;
            }
            Ok(())
        };
        let fail = |e: std::io::Error, rel: &str| {
            CollectError::Fault(Fault(format!("cannot write output {rel}: {e}")))
        };
        // Every output passes the engine's path guard before it is replaced (SPEC.md, "Path
        // guard").
        for output in &job.stage.outputs {
            if let Err(why) = job.guard.output(&output.path, &job.stage.id) {
                return Err(CollectError::Fault(Fault(format!(
                    "refusing to write output {}: it {why}",
                    output.path
                ))));
            }
        }
        for file in &result.output_files {
            let digest = file.digest.clone().unwrap_or_default();
            let _ = edgebuild_engine::files::remove_path(&job.root.join(&file.path));
            write(&file.path, &blobs[&digest.hash], file.is_executable)
                .map_err(|e| fail(e, &file.path))?;
        }
        for (dir, files) in &trees {
            let target = job.root.join(dir);
            let _ = edgebuild_engine::files::remove_path(&target);
            std::fs::create_dir_all(&target).map_err(|e| fail(e, dir))?;
            for (rel, digest, executable) in files {
                let path = format!("{dir}/{rel}");
                write(&path, &blobs[&digest.hash], *executable).map_err(|e| fail(e, &path))?;
            }
        }
        let mut log: Vec<String> = stdout.lines().map(str::to_string).collect();
        if op.is_none() {
            log.clear();
        }
        Ok(ExecSuccess {
            outcome,
            log,
            remote: Some(RemoteRun::Executed),
        })
    }

    pub(crate) async fn log_text(&self, raw: &[u8], digest: Option<&re::Digest>) -> String {
        if !raw.is_empty() {
            return String::from_utf8_lossy(raw).into_owned();
        }
        match digest.filter(|d| d.size_bytes > 0) {
            Some(d) => match self.read_blobs(std::slice::from_ref(d)).await {
                Ok(found) => String::from_utf8_lossy(&found[&d.hash]).into_owned(),
                Err(_) => String::new(),
            },
            None => String::new(),
        }
    }
}
