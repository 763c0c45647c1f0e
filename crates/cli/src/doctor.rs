//! `edgebuild doctor`: the checks a newcomer's machine needs, each problem with its fix.
//!
//! Toolchain against the locks, the cache's place and free space, the remote (reachable, with
//! credentials present: never printed), the git state (locks committed, tree clean), the device
//! profiles, pointed files and runbooks. It reads; it changes nothing.

use std::path::Path;
use std::process::Command;

use serde::Serialize;

use std::sync::Arc;

use edgebuild_engine::context::Context;
use edgebuild_engine::op::OpRegistry;
use edgebuild_engine::spec::Action;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub check: &'static str,
    pub level: Level,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

fn finding(check: &'static str, level: Level, message: String, fix: Option<&str>) -> Finding {
    Finding {
        check,
        level,
        message,
        fix: fix.map(str::to_string),
    }
}

/// Free bytes on the file system holding `path`.
fn free_bytes(path: &Path) -> Option<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid C string and `stat` a writable statvfs.
    (unsafe { libc::statvfs(c.as_ptr(), &mut stat) } == 0)
        .then(|| stat.f_bavail as u64 * stat.f_frsize as u64)
}

fn git(root: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .current_dir(root)
        .args(args)
        .env("LC_ALL", "C")
        .output()
        .ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs every check. `workspace` is the opened workspace, or why it could not be opened (then
/// the checks that need it are replaced by that failure); `remote` is the configured remote,
/// opened without probing.
pub fn check(
    root: &Path,
    workspace: std::result::Result<&Context, &crate::error::Error>,
    remote: std::result::Result<Option<&edgebuild_remote::cache::Remote>, &crate::error::Error>,
    ops: &Arc<OpRegistry>,
) -> Vec<Finding> {
    let mut found = Vec::new();
    match workspace {
        Ok(ctx) => {
            toolchain(ctx, &mut found);
            cache(ctx, &mut found);
        }
        Err(e) => {
            let pointed = !edgebuild_engine::pointer::find(root).is_empty();
            found.push(finding(
                "pipelines",
                Level::Fail,
                format!("the workspace does not load: {e}"),
                Some(if pointed {
                    "`edgebuild pull` if an input is a pointed file, else fix what `edgebuild plan` shows"
                } else {
                    "fix what `edgebuild plan` shows"
                }),
            ));
        }
    }
    match remote {
        Ok(remote) => remote_check(remote, &mut found),
        Err(e) => found.push(finding(
            "remote",
            Level::Fail,
            e.to_string(),
            Some("fix the remote's settings (edgebuild.yaml, EDGEBUILD_REMOTE)"),
        )),
    }
    executor_check(root, ops, &mut found);
    git_state(root, &mut found);
    if let Ok(ctx) = workspace {
        profiles(ctx, &mut found);
        device_tools(ctx, &mut found);
    }
    pointers(root, &mut found);
    match edgebuild_engine::sandbox::bubblewrap() {
        Some(path) => found.push(finding(
            "sandbox",
            Level::Ok,
            format!("bubblewrap at {}: `build --sandbox` and verify-reproducible see the system read-only, without the workspace or network", path.display()),
            None,
        )),
        None => found.push(finding(
            "sandbox",
            Level::Warn,
            "no working bubblewrap: `build --sandbox` uses plain temporary directories, where an absolute path still reaches undeclared files".into(),
            Some("install it (Debian: `apt-get install bubblewrap`)"),
        )),
    }
    if let Ok(ctx) = workspace {
        let all = (0..ctx.ws.pipelines.len()).collect();
        for file in crate::runbook::stale(ctx, &all) {
            found.push(finding(
                "runbook",
                Level::Warn,
                format!("{file} no longer matches its pipeline"),
                Some("`edgebuild runbook --write` and commit it"),
            ));
        }
    }
    found
}

fn toolchain(ctx: &Context, found: &mut Vec<Finding>) {
    let now = edgebuild_engine::lock::Toolchain::current();
    let mut drift = Vec::new();
    for (pipeline, lock) in ctx.ws.pipelines.iter().zip(&ctx.locks) {
        let Some(lock) = lock else { continue };
        for line in lock.toolchain.drift(&now) {
            drift.push(format!("{}: {line}", pipeline.lock_file()));
        }
    }
    // Tools and op fingerprints (candle's kernels, its version) are part of keys: a plan shows
    // them as reasons.
    let plans = edgebuild_engine::plan::plan(ctx, &ctx.graph.order);
    for plan in &plans {
        for reason in &plan.reasons {
            if reason.is_toolchain() {
                drift.push(format!("{}: {reason}", plan.stage));
            }
        }
    }
    if drift.is_empty() {
        found.push(finding(
            "toolchain",
            Level::Ok,
            format!(
                "edgebuild {}, {}: as the locks record",
                now.edgebuild, now.rustc
            ),
            None,
        ));
    } else {
        found.push(finding(
            "toolchain",
            Level::Warn,
            format!("differs from the locks: {}", drift.join("; ")),
            Some(
                "install the versions the locks record (rust-toolchain.toml pins rustc), or rebuild and commit the new locks if the upgrade is intended",
            ),
        ));
    }
}

fn cache(ctx: &Context, found: &mut Vec<Finding>) {
    let dir = ctx.store.dir();
    let shown = dir
        .strip_prefix(ctx.root())
        .map(|d| d.display().to_string())
        .unwrap_or_else(|_| dir.display().to_string());
    let used: u64 = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum();
    match free_bytes(dir) {
        Some(free) if free < 1 << 30 => found.push(finding(
            "cache",
            Level::Warn,
            format!("{shown}: {} used, only {} free", human(used), human(free)),
            Some("free some space, or `edgebuild gc` to drop entries no lock refers to"),
        )),
        free => found.push(finding(
            "cache",
            Level::Ok,
            format!(
                "{shown}: {} used, {} free",
                human(used),
                free.map_or("?".into(), human)
            ),
            None,
        )),
    }
}

fn human(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n if n >= 1 << 10 => format!("{:.1} KiB", n as f64 / 1024.0),
        n => format!("{n} B"),
    }
}

/// The environment variables that hold credentials for a remote URL's scheme: any one of each
/// group is enough. Names only: values are never shown.
fn credential_variables(url: &str) -> Option<&'static [&'static [&'static str]]> {
    let scheme = url.split("://").next().unwrap_or_default();
    match scheme {
        "s3" => Some(&[&[
            "AWS_ACCESS_KEY_ID",
            "AWS_PROFILE",
            "AWS_WEB_IDENTITY_TOKEN_FILE",
            "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        ]]),
        "gs" => Some(&[&[
            "GOOGLE_APPLICATION_CREDENTIALS",
            "GOOGLE_SERVICE_ACCOUNT",
            "GOOGLE_SERVICE_ACCOUNT_PATH",
            "GOOGLE_SERVICE_ACCOUNT_KEY",
        ]]),
        "az" => Some(&[&[
            "AZURE_STORAGE_ACCOUNT_KEY",
            "AZURE_STORAGE_SAS_KEY",
            "AZURE_STORAGE_TOKEN",
            "AZURE_CLIENT_SECRET",
            "AZURE_FEDERATED_TOKEN_FILE",
        ]]),
        _ => None,
    }
}

/// The remote executor, when one is configured: reachable, and executing with SHA-256.
fn executor_check(root: &Path, ops: &Arc<OpRegistry>, found: &mut Vec<Finding>) {
    let settings = match edgebuild_remote::config::remote_exec_settings(root, &Default::default()) {
        Ok(Some(settings)) => settings,
        Ok(None) => return,
        Err(e) => {
            found.push(finding(
                "executor",
                Level::Fail,
                e.to_string(),
                Some("fix `remote_exec` in edgebuild.yaml or EDGEBUILD_REMOTE_EXEC"),
            ));
            return;
        }
    };
    let local = Box::new(edgebuild_engine::exec::LocalExecutor {
        ops: ops.clone(),
        variation_env: Vec::new(),
    });
    let (level, message) =
        match edgebuild_remote::exec::RemoteExecutor::new(&settings, ops.clone(), local) {
            Ok(executor) => match executor.probe() {
                Ok(offer) => (Level::Ok, format!("{}: {offer}", executor.url())),
                Err(status) => (Level::Fail, format!("{}: {status}", executor.url())),
            },
            Err(e) => (Level::Fail, e),
        };
    let fix = (level == Level::Fail)
        .then_some("check the server, the URL and EDGEBUILD_REMOTE_EXEC_TOKEN / _HEADER_* (or build without --remote-exec)");
    found.push(finding("executor", level, message, fix));
}

fn remote_check(remote: Option<&edgebuild_remote::cache::Remote>, found: &mut Vec<Finding>) {
    let Some(remote) = remote else {
        found.push(finding(
            "remote",
            Level::Ok,
            "no remote cache configured: builds use the local cache only".into(),
            None,
        ));
        return;
    };
    let url = remote.url().to_string();
    if let Some(groups) = credential_variables(&url) {
        for group in groups {
            if !group
                .iter()
                .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()))
            {
                found.push(finding(
                    "remote",
                    Level::Fail,
                    format!("{url}: no credentials in the environment"),
                    Some(&format!("set one of {}", group.join(", "))),
                ));
                return;
            }
        }
    } else if url.starts_with("http") && remote.upload {
        let has = [
            edgebuild_remote::cache::TOKEN_ENV,
            edgebuild_remote::cache::USER_ENV,
        ]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|v| !v.is_empty()));
        if !has {
            found.push(finding(
                "remote",
                Level::Warn,
                format!("{url}: uploads are on but no credentials are set"),
                Some(&format!(
                    "set {} (or {} and {}) unless the server accepts anonymous uploads",
                    edgebuild_remote::cache::TOKEN_ENV,
                    edgebuild_remote::cache::USER_ENV,
                    edgebuild_remote::cache::PASSWORD_ENV
                )),
            ));
        }
    }
    match remote.probe() {
        Ok(()) => found.push(finding(
            "remote",
            Level::Ok,
            format!(
                "{url}: reachable ({})",
                if remote.upload { "read and upload" } else { "read-only" }
            ),
            None,
        )),
        Err(e) => found.push(finding(
            "remote",
            Level::Fail,
            e.to_string(),
            Some("check the URL, the network and the credentials; builds fall back to local work meanwhile"),
        )),
    }
}

fn git_state(root: &Path, found: &mut Vec<Finding>) {
    if git(root, &["rev-parse", "--git-dir"]).is_none() {
        found.push(finding(
            "git",
            Level::Warn,
            "the workspace is not in a git repository".into(),
            Some("`git init` and commit the pipelines and their locks: a commit is what verify-reproducible proves"),
        ));
        return;
    }
    let status = git(
        root,
        &["status", "--porcelain", "--untracked-files=all", "--", "."],
    )
    .unwrap_or_default();
    let lines: Vec<&str> = status.lines().collect();
    let pipeline_status = git(
        root,
        &[
            "status",
            "--porcelain",
            "--untracked-files=all",
            "--",
            edgebuild_engine::spec::PIPELINES_DIR,
        ],
    )
    .unwrap_or_default();
    let locks: Vec<&str> = pipeline_status
        .lines()
        .filter(|l| l.ends_with(".lock"))
        .map(|l| l[3..].trim())
        .collect();
    if !locks.is_empty() {
        found.push(finding(
            "git",
            Level::Fail,
            format!("lock files not committed: {}", locks.join(", ")),
            Some("commit them with their pipelines: the lock is what a later commit is verified against"),
        ));
    }
    if lines.is_empty() {
        found.push(finding("git", Level::Ok, "working tree clean".into(), None));
    } else {
        let shown: Vec<&str> = lines.iter().take(5).map(|l| l[3..].trim()).collect();
        found.push(finding(
            "git",
            Level::Warn,
            format!(
                "working tree not clean: {} file(s) changed or untracked ({}{})",
                lines.len(),
                shown.join(", "),
                if lines.len() > 5 { ", ..." } else { "" }
            ),
            Some("commit or stash the changes before a release: a build of a dirty tree cannot be reproduced from a commit"),
        ));
    }
}

fn profiles(ctx: &Context, found: &mut Vec<Finding>) {
    let mut files: Vec<&str> = ctx
        .ws
        .stages
        .iter()
        .filter(|s| matches!(&s.action, Action::Op { name, .. } if name == "report"))
        .flat_map(|s| s.inputs.iter().filter(|p| p.name == "profiles"))
        .map(|p| p.path.as_str())
        .collect();
    files.sort_unstable();
    files.dedup();
    for file in files {
        match edgebuild_ml::ops::report::ProfilesFile::load(&ctx.root().join(file)) {
            Ok(profiles) => found.push(finding(
                "profiles",
                Level::Ok,
                format!(
                    "{file}: {}",
                    profiles.profiles.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                None,
            )),
            Err(e) => found.push(finding(
                "profiles",
                Level::Fail,
                e,
                Some("fix the profile (SPEC.md, `report`); `edgebuild profile-host` measures this machine"),
            )),
        }
    }
}

/// The C compilers and the emulator that `runtime` and `firmware` stages run (SPEC.md,
/// "`firmware`"), checked only where a pipeline has such a stage.
fn device_tools(ctx: &Context, found: &mut Vec<Finding>) {
    let uses = |op: &str| {
        ctx.ws
            .stages
            .iter()
            .any(|s| matches!(&s.action, Action::Op { name, .. } if name == op))
    };
    let (runtime, firmware) = (uses("runtime"), uses("firmware"));
    if !runtime && !firmware {
        return;
    }
    for (tool, version, hint) in edgebuild_ml::ops::firmware::tools() {
        if tool != "cc" && !firmware {
            continue;
        }
        match version {
            Some(v) => found.push(finding(
                "device tools",
                Level::Ok,
                format!("{tool}: {v}"),
                None,
            )),
            None => found.push(finding(
                "device tools",
                Level::Fail,
                format!(
                    "{tool} is not installed: the pipelines' runtime and firmware stages need it"
                ),
                Some(hint),
            )),
        }
    }
}

fn pointers(root: &Path, found: &mut Vec<Finding>) {
    for pointer_file in edgebuild_engine::pointer::find(root) {
        let rel = pointer_file
            .strip_prefix(root)
            .unwrap_or(&pointer_file)
            .display()
            .to_string();
        let Ok(pointer) = edgebuild_engine::pointer::Pointer::read(&pointer_file) else {
            found.push(finding(
                "inputs",
                Level::Fail,
                format!("{rel} is not a pointer file"),
                Some("restore it from git"),
            ));
            continue;
        };
        let file = pointer_file.with_file_name(&pointer.file);
        let ok = edgebuild_engine::hash::hash_file(&file).is_ok_and(|(h, _)| h == pointer.sha256);
        if !ok {
            found.push(finding(
                "inputs",
                Level::Fail,
                format!("{rel}: the file it points to is missing or differs"),
                Some("`edgebuild pull`"),
            ));
        }
    }
}
