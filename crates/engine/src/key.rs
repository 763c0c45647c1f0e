//! Stage keys and the ingredients they are made of (SPEC.md, "Keys").
//!
//! A key is the SHA-256 of the canonical JSON of a stage's [`Ingredients`]: its command text or
//! op name and version, canonical params, the name, path and hash of each input, the declared
//! output paths, the hashes of declared env values, the output of declared tool version commands
//! and an op's own fingerprint. The lock stores the ingredients next to the key, so `plan` can say
//! exactly which field changed ([`StaleReason`]), even on a fresh clone.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::hash::Digest;
use crate::op::OpRegistry;
use crate::stage::{Action, Stage};

/// The output of each declared tool version command, run once per process and remembered.
#[derive(Debug)]
pub struct ToolVersions {
    root: PathBuf,
    seen: Mutex<BTreeMap<String, String>>,
}

impl ToolVersions {
    /// Version commands run in `root` (the workspace root), with only `PATH` set.
    pub fn new(root: &Path) -> ToolVersions {
        ToolVersions {
            root: root.to_path_buf(),
            seen: Mutex::new(BTreeMap::new()),
        }
    }

    /// What `command` prints (stdout, else stderr), trimmed; `(failed: ...)` when it fails.
    pub fn version(&self, command: &str) -> String {
        if let Some(v) = self.seen.lock().expect("tool cache poisoned").get(command) {
            return v.clone();
        }
        let output = std::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.root)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .output();
        let version = match output {
            Ok(out) if out.status.success() => {
                let text = if out.stdout.is_empty() {
                    out.stderr
                } else {
                    out.stdout
                };
                String::from_utf8_lossy(&text).trim().to_string()
            }
            Ok(out) => format!("(failed: {})", out.status),
            Err(e) => format!("(failed: {e})"),
        };
        self.seen
            .lock()
            .expect("tool cache poisoned")
            .insert(command.to_string(), version.clone());
        version
    }
}

/// The ingredients of a stage given the hashes of its inputs: the one place a key is assembled.
pub fn ingredients(
    stage: &Stage,
    inputs: Vec<InputIngredient>,
    ops: &OpRegistry,
    tools: &ToolVersions,
) -> Ingredients {
    let (cmd, op, fingerprint) = match &stage.action {
        Action::Cmd(template) => (Some(template.clone()), None, BTreeMap::new()),
        // The checklist is part of the key: a changed list needs a new sign-off.
        Action::Manual(items) => (
            Some(format!("manual:\n- {}", items.join("\n- "))),
            None,
            BTreeMap::new(),
        ),
        Action::Op { name, version } => (
            None,
            Some(OpIdentity {
                name: name.clone(),
                version: *version,
            }),
            ops.find(name)
                .map(|op| op.fingerprint())
                .unwrap_or_default(),
        ),
    };
    Ingredients {
        cmd,
        op,
        params: stage.params.clone(),
        inputs,
        outputs: stage
            .outputs
            .iter()
            .map(|p| OutputIngredient {
                name: p.name.clone(),
                path: p.path.clone(),
            })
            .collect(),
        env: stage
            .env
            .iter()
            .map(|name| {
                let value = std::env::var_os(name);
                let hash = value.map(|v| Digest::of_bytes(v.as_encoded_bytes()));
                (name.clone(), hash)
            })
            .collect(),
        tools: stage
            .tools
            .iter()
            .map(|(name, command)| (name.clone(), tools.version(command)))
            .collect(),
        fingerprint,
    }
}

/// An op's identity inside a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpIdentity {
    pub name: String,
    pub version: u32,
}

/// One input as it entered the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputIngredient {
    pub name: String,
    pub path: String,
    pub hash: Digest,
}

/// One declared output as it entered the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputIngredient {
    pub name: String,
    pub path: String,
}

/// Everything that makes up a stage's key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingredients {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub op: Option<OpIdentity>,
    #[serde(default)]
    pub params: serde_json::Value,
    /// In declaration order: `${inputs}` expands in this order.
    #[serde(default)]
    pub inputs: Vec<InputIngredient>,
    #[serde(default)]
    pub outputs: Vec<OutputIngredient>,
    /// SHA-256 of each declared variable's value (`null` when unset); never the value itself.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, Option<Digest>>,
    /// Output of each declared tool version command.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tools: BTreeMap<String, String>,
    /// What else changes an op's results (for example the CPU kernel level).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub fingerprint: BTreeMap<String, String>,
}

impl Ingredients {
    /// SHA-256 of the canonical JSON: fields in declaration order, params with sorted keys.
    pub fn key(&self) -> Digest {
        Digest::of_bytes(&serde_json::to_vec(self).expect("ingredients serialize"))
    }

    /// Why a stage with these (new) ingredients differs from `old`.
    pub fn diff(old: &Ingredients, new: &Ingredients) -> Vec<StaleReason> {
        let mut reasons = Vec::new();
        if old.cmd != new.cmd || old.op != new.op {
            let show = |i: &Ingredients| match (&i.cmd, &i.op) {
                (Some(cmd), _) => cmd.clone(),
                (_, Some(op)) => format!("op {} v{}", op.name, op.version),
                _ => String::new(),
            };
            reasons.push(StaleReason::ActionChanged {
                old: show(old),
                new: show(new),
            });
        }
        diff_json("", &old.params, &new.params, &mut reasons);
        let find =
            |list: &'_ [InputIngredient], name: &str| list.iter().find(|i| i.name == name).cloned();
        for input in &new.inputs {
            let name = &input.name;
            match find(&old.inputs, name) {
                Some(prev) if prev.path != input.path => {
                    reasons.push(StaleReason::InputPathChanged {
                        name: name.clone(),
                        old: prev.path.clone(),
                        new: input.path.clone(),
                    })
                }
                Some(prev) if prev.hash != input.hash => reasons.push(StaleReason::InputChanged {
                    path: input.path.clone(),
                    old: prev.hash.short(),
                    new: input.hash.short(),
                }),
                Some(_) => {}
                None => reasons.push(StaleReason::InputAdded {
                    path: input.path.clone(),
                }),
            }
        }
        for input in &old.inputs {
            if find(&new.inputs, &input.name).is_none() {
                reasons.push(StaleReason::InputRemoved {
                    path: input.path.clone(),
                });
            }
        }
        let names =
            |list: &[InputIngredient]| list.iter().map(|i| i.name.clone()).collect::<Vec<_>>();
        if old.outputs != new.outputs {
            reasons.push(StaleReason::OutputsChanged);
        } else if reasons.is_empty() && names(&old.inputs) != names(&new.inputs) {
            reasons.push(StaleReason::InputsReordered);
        }
        for name in old
            .env
            .keys()
            .chain(new.env.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            if old.env.get(name) != new.env.get(name) {
                reasons.push(StaleReason::EnvChanged { name: name.clone() });
            }
        }
        diff_maps(
            &old.tools,
            &new.tools,
            |name, old, new| StaleReason::ToolChanged { name, old, new },
            &mut reasons,
        );
        diff_maps(
            &old.fingerprint,
            &new.fingerprint,
            |name, old, new| StaleReason::FingerprintChanged { name, old, new },
            &mut reasons,
        );
        reasons
    }
}

fn diff_maps(
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
    make: impl Fn(String, String, String) -> StaleReason,
    reasons: &mut Vec<StaleReason>,
) {
    let none = String::from("(none)");
    for name in old
        .keys()
        .chain(new.keys())
        .collect::<std::collections::BTreeSet<_>>()
    {
        let (a, b) = (
            old.get(name).unwrap_or(&none),
            new.get(name).unwrap_or(&none),
        );
        if a != b {
            reasons.push(make(name.clone(), a.clone(), b.clone()));
        }
    }
}

fn diff_json(
    path: &str,
    old: &serde_json::Value,
    new: &serde_json::Value,
    out: &mut Vec<StaleReason>,
) {
    use serde_json::Value;
    if old == new {
        return;
    }
    if let (Value::Object(a), Value::Object(b)) = (old, new) {
        for key in a
            .keys()
            .chain(b.keys())
            .collect::<std::collections::BTreeSet<_>>()
        {
            let sub = if path.is_empty() {
                key.clone()
            } else {
                format!("{path}.{key}")
            };
            diff_json(
                &sub,
                a.get(key).unwrap_or(&Value::Null),
                b.get(key).unwrap_or(&Value::Null),
                out,
            );
        }
        return;
    }
    let show = |v: &Value| match v {
        Value::Null => "(unset)".to_string(),
        other => crate::hash::canonical_json(other),
    };
    out.push(StaleReason::ParamChanged {
        path: if path.is_empty() {
            "(all)".into()
        } else {
            path.into()
        },
        old: show(old),
        new: show(new),
    });
}

/// Why a stage will run or be restored. Rendered in one place ([`fmt::Display`]), so `plan`,
/// `build` and `--json` say the same thing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum StaleReason {
    NeverBuilt,
    /// The lock entry's key is not the key of its own ingredients: the lock was edited.
    LockEdited,
    ActionChanged {
        old: String,
        new: String,
    },
    ParamChanged {
        path: String,
        old: String,
        new: String,
    },
    InputChanged {
        path: String,
        old: String,
        new: String,
    },
    InputPathChanged {
        name: String,
        old: String,
        new: String,
    },
    InputAdded {
        path: String,
    },
    InputRemoved {
        path: String,
    },
    OutputsChanged,
    InputsReordered,
    EnvChanged {
        name: String,
    },
    ToolChanged {
        name: String,
        old: String,
        new: String,
    },
    FingerprintChanged {
        name: String,
        old: String,
        new: String,
    },
    OutputMissing {
        path: String,
    },
    OutputModified {
        path: String,
        expected: String,
        actual: String,
    },
    UpstreamWillRun {
        stage: String,
    },
}

impl StaleReason {
    /// A change of the toolchain (a tool's version, an op's fingerprint) rather than of the
    /// stage or its inputs.
    pub fn is_toolchain(&self) -> bool {
        matches!(
            self,
            StaleReason::ToolChanged { .. } | StaleReason::FingerprintChanged { .. }
        )
    }
}

impl fmt::Display for StaleReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StaleReason::NeverBuilt => write!(f, "never built"),
            StaleReason::LockEdited => write!(
                f,
                "the lock entry's key does not match its recorded ingredients (the lock was edited by hand?)"
            ),
            StaleReason::ActionChanged { old, new } => {
                write!(f, "command changed: `{old}` → `{new}`")
            }
            StaleReason::ParamChanged { path, old, new } => {
                write!(f, "param {path}: {old} → {new}")
            }
            StaleReason::InputChanged { path, old, new } => {
                write!(f, "input {path} changed: {old} → {new}")
            }
            StaleReason::InputPathChanged { name, old, new } => {
                write!(f, "input {name} moved: {old} → {new}")
            }
            StaleReason::InputAdded { path } => write!(f, "input {path} added"),
            StaleReason::InputRemoved { path } => write!(f, "input {path} removed"),
            StaleReason::OutputsChanged => write!(f, "declared outputs changed"),
            StaleReason::InputsReordered => write!(f, "inputs reordered"),
            StaleReason::EnvChanged { name } => write!(f, "env {name} changed"),
            StaleReason::ToolChanged { name, old, new } => write!(f, "tool {name}: {old} → {new}"),
            StaleReason::FingerprintChanged { name, old, new } => {
                write!(f, "toolchain {name}: {old} → {new}")
            }
            StaleReason::OutputMissing { path } => write!(f, "output {path} missing"),
            StaleReason::OutputModified {
                path,
                expected,
                actual,
            } => {
                write!(f, "output {path} modified on disk: {expected} → {actual}")
            }
            StaleReason::UpstreamWillRun { stage } => write!(f, "upstream {stage} will run"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn base() -> Ingredients {
        Ingredients {
            cmd: Some("cat a > b".into()),
            op: None,
            params: json!({"bits": 8, "types": {"default": "q8_0"}}),
            inputs: vec![InputIngredient {
                name: "0".into(),
                path: "a".into(),
                hash: Digest::of_bytes(b"a"),
            }],
            outputs: vec![OutputIngredient {
                name: "0".into(),
                path: "b".into(),
            }],
            env: BTreeMap::new(),
            tools: BTreeMap::new(),
            fingerprint: BTreeMap::new(),
        }
    }

    #[test]
    fn param_change_names_the_leaf() {
        let mut new = base();
        new.params = json!({"bits": 4, "types": {"default": "q8_0"}});
        assert_ne!(base().key(), new.key());
        let reasons = Ingredients::diff(&base(), &new);
        assert_eq!(reasons.len(), 1);
        assert_eq!(reasons[0].to_string(), "param bits: 8 → 4");
    }

    #[test]
    fn key_ignores_map_order() {
        let mut a = base();
        a.params = serde_json::from_str(r#"{"x": 1, "y": 2}"#).unwrap();
        let mut b = base();
        b.params = serde_json::from_str(r#"{"y": 2, "x": 1}"#).unwrap();
        assert_eq!(a.key(), b.key());
    }
}
