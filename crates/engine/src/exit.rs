//! Process exit codes (SPEC.md, "Exit codes"): one per kind of outcome. A leaf: every layer may
//! name a code, and the CLI maps errors to them in one place.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Ok = 0,
    /// `plan --check`: something would run.
    WouldRun = 1,
    /// Bad input or usage: the pipeline files, a flag, an unknown target.
    BadInput = 2,
    /// A gate stage failed.
    GateFailed = 3,
    /// A stage failed (non-zero exit, missing output, op error).
    StageFailed = 4,
    /// `verify-reproducible`: an artifact does not match its lock.
    NotReproducible = 5,
    /// A remote was required but unavailable.
    RemoteUnavailable = 6,
}
