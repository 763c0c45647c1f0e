//! The workspace's file layout (SPEC.md, "Workspace"): the directories that belong to edgebuild
//! and git, and the names of the files edgebuild keeps there. Constants only.

/// The directory, under the workspace root, that holds pipeline files and their locks.
pub const PIPELINES_DIR: &str = "pipelines";
/// The directory under the workspace root for state that is local to this checkout.
pub const STATE_DIR: &str = ".edgebuild";
/// The default cache directory under the workspace root.
pub const CACHE_DIR: &str = "cache";
/// Environment variable that overrides the cache directory.
pub const CACHE_ENV: &str = "EDGEBUILD_CACHE_DIR";
/// Top-level names that belong to edgebuild or git, never to a stage.
pub const RESERVED: &[&str] = &[PIPELINES_DIR, STATE_DIR, ".git", CACHE_DIR];
/// The suffix of pointer files (SPEC.md, "Versioned inputs outside git").
pub const POINTER_SUFFIX: &str = ".pointer";

/// Workspace-relative path of the lock file of pipeline `name`.
pub fn lock_file(name: &str) -> String {
    format!("{PIPELINES_DIR}/{name}.lock")
}
