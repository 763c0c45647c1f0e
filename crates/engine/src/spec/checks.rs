//! Cross-file checks of a loaded workspace: an output path belongs to one stage, no output lies
//! inside another's, every input exists or is produced, no reproducible stage reads a volatile
//! output, and no stage reads its own output (SPEC.md, "Pipeline files" and "Bad input").

use std::collections::BTreeMap;

use super::paths::{ancestors, paths_below};
use super::{SpecError, Workspace};
use crate::stage::{Port, Stage};

impl Workspace {
    /// Cross-stage checks: overlapping outputs, inputs nobody provides.
    pub(super) fn check_graph_inputs(&self) -> Result<(), SpecError> {
        let mut errors = Vec::new();
        // Visit stages in file order so "first declared" means first in the file.
        let mut in_file_order: Vec<&Stage> = self.stages.iter().collect();
        in_file_order.sort_by_key(|s| (s.pipeline, s.span.offset()));
        let mut producers: BTreeMap<&str, (&Stage, &Port)> = BTreeMap::new();
        for stage in in_file_order {
            for port in &stage.outputs {
                let clash = producers.get(port.path.as_str()).copied().or_else(|| {
                    // An output inside, or containing, another stage's output.
                    ancestors(&port.path)
                        .find_map(|a| producers.get(a).copied())
                        .or_else(|| paths_below(&producers, &port.path).next().map(|(_, v)| *v))
                        .filter(|(other, _)| other.id != stage.id)
                });
                if let Some((first, first_port)) = clash {
                    let (src, span) = self.source_of(stage).snippet(port.span);
                    let (first_src, first_span) = self.source_of(first).snippet(first_port.span);
                    errors.push(SpecError::DuplicateOutput {
                        path: port.path.clone(),
                        first_path: first_port.path.clone(),
                        first: first.id.clone(),
                        second: stage.id.clone(),
                        src,
                        span,
                        first_site: vec![SpecError::FirstDeclared {
                            src: first_src,
                            span: first_span,
                        }],
                    });
                } else {
                    producers.insert(&port.path, (stage, port));
                }
            }
        }
        for stage in &self.stages {
            let source = self.source_of(stage);
            for port in &stage.inputs {
                let overlapping: Vec<&Stage> = producers
                    .get(port.path.as_str())
                    .into_iter()
                    .chain(ancestors(&port.path).filter_map(|a| producers.get(a)))
                    .map(|(s, _)| *s)
                    .chain(paths_below(&producers, &port.path).map(|(_, (s, _))| *s))
                    .collect();
                if overlapping.is_empty()
                    && std::fs::symlink_metadata(self.root.join(&port.path)).is_err()
                {
                    errors.push(
                        source.invalid(
                            port.span,
                            format!(
                                "input `{}` of {} does not exist and no stage produces it",
                                port.path, stage.id
                            ),
                            "missing input",
                            Some(
                                if self
                                    .root
                                    .join(format!("{}{}", port.path, crate::layout::POINTER_SUFFIX))
                                    .is_file()
                                {
                                    format!("it is a versioned input outside git ({}{}): run `edgebuild pull`", port.path, crate::layout::POINTER_SUFFIX)
                                } else {
                                    "create the file, fix the path, or add the stage that produces it"
                                        .into()
                                },
                            ),
                        ),
                    );
                }
                if let Some(volatile) = overlapping.iter().find(|s| s.volatile && s.id != stage.id)
                    && !stage.volatile
                {
                    errors.push(source.invalid(
                        port.span,
                        format!(
                            "{} reads `{}`, a volatile output of {}",
                            stage.id, port.path, volatile.id
                        ),
                        "measured values would flow into a reproducible stage",
                        Some("declare this stage `volatile: true` too, or order it with `after:` instead of reading the output (SPEC.md, \"Volatile outputs\")".into()),
                    ));
                }
                if overlapping.iter().any(|s| s.id == stage.id) {
                    errors.push(source.invalid(
                        port.span,
                        format!("{} reads its own output `{}`", stage.id, port.path),
                        "input overlaps an output of this stage",
                        Some("a stage's inputs and outputs must be distinct paths".into()),
                    ));
                }
            }
        }
        SpecError::collect(errors)
    }
}
