//! Diagnostics of the pipeline files: [`SpecError`], the source text it points into, and the
//! helpers that turn a YAML location or a typo into a pointed message with a suggestion.

use miette::{Diagnostic, MietteError, MietteSpanContents, SourceCode, SourceSpan, SpanContents};
use serde_saphyr::Spanned;
use thiserror::Error;

#[derive(Debug, Error, Diagnostic)]
pub enum SpecError {
    #[error("no workspace found: no `pipelines/` directory in {start} or any parent")]
    #[diagnostic(
        code(edgebuild::no_workspace),
        help(
            "run edgebuild inside a workspace (a directory holding `pipelines/`), or pass `-C DIR`"
        )
    )]
    NoWorkspace { start: String },

    #[error("cannot read {path}: {message}")]
    #[diagnostic(code(edgebuild::read))]
    Read { path: String, message: String },

    #[error("{message}")]
    #[diagnostic(code(edgebuild::yaml))]
    Yaml {
        message: String,
        #[source_code]
        src: Snippet,
        #[label("here")]
        span: SourceSpan,
        #[help]
        help: Option<String>,
    },

    #[error("{message}")]
    #[diagnostic(code(edgebuild::invalid_stage))]
    Invalid {
        message: String,
        #[source_code]
        src: Snippet,
        #[label("{label}")]
        span: SourceSpan,
        label: String,
        #[help]
        help: Option<String>,
    },

    #[error("output `{path}` of {second} clashes with output `{first_path}` of {first}")]
    #[diagnostic(
        code(edgebuild::duplicate_output),
        help(
            "an output path belongs to exactly one stage in the workspace, and no output may lie inside another stage's output; rename one of them"
        )
    )]
    DuplicateOutput {
        path: String,
        first_path: String,
        first: String,
        second: String,
        #[source_code]
        src: Snippet,
        #[label("declared again here")]
        span: SourceSpan,
        #[related]
        first_site: Vec<SpecError>,
    },

    #[error("first declared here")]
    #[diagnostic(severity(Advice))]
    FirstDeclared {
        #[source_code]
        src: Snippet,
        #[label("first declaration")]
        span: SourceSpan,
    },

    #[error("dependency cycle: {cycle}")]
    #[diagnostic(
        code(edgebuild::cycle),
        help("a stage cannot depend, through its inputs or `after`, on its own outputs")
    )]
    Cycle {
        cycle: String,
        #[source_code]
        src: Snippet,
        #[label("this stage is part of the cycle")]
        span: SourceSpan,
    },

    #[error("{count} problems in the pipeline files")]
    #[diagnostic(code(edgebuild::invalid_pipelines))]
    Many {
        count: usize,
        #[related]
        errors: Vec<SpecError>,
    },
}

impl SpecError {
    /// One error, or all of them under one heading.
    pub fn collect(mut errors: Vec<SpecError>) -> Result<(), SpecError> {
        match errors.len() {
            0 => Ok(()),
            1 => Err(errors.pop().expect("length checked")),
            count => Err(SpecError::Many { count, errors }),
        }
    }
}

/// The source text of one pipeline file, for diagnostics.
#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub text: String,
}

impl Source {
    /// The lines around `span` for a diagnostic, with the span moved into them. Long lines are
    /// cut around the span (SPEC.md, "Limits"): a diagnostic never holds more than a few lines
    /// of at most [`MAX_SHOWN_LINE`] bytes, whatever the size of the file.
    pub fn snippet(&self, span: SourceSpan) -> (Snippet, SourceSpan) {
        Snippet::around(&self.name, &self.text, span)
    }

    pub fn invalid(
        &self,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> SpecError {
        let (src, span) = self.snippet(span);
        SpecError::Invalid {
            message: message.into(),
            src,
            span,
            label: label.into(),
            help,
        }
    }

    /// The span of the map key `name` that precedes a value at `value`, for pointing at a
    /// stage by its name.
    pub fn key_before(&self, name: &str, value: SourceSpan) -> SourceSpan {
        let head = self.text.get(..value.offset()).unwrap_or_default();
        head.rfind(&format!("{name}:"))
            .map(|at| SourceSpan::from((at, name.len())))
            .unwrap_or(value)
    }

    /// The span of `needle` at or after `start`, falling back to `fallback`.
    pub fn find_from(&self, start: usize, needle: &str, fallback: SourceSpan) -> SourceSpan {
        self.text
            .get(start..)
            .and_then(|rest| rest.find(needle))
            .map(|at| SourceSpan::from((start + at, needle.len())))
            .unwrap_or(fallback)
    }
}

pub fn span_of<T>(spanned: &Spanned<T>) -> SourceSpan {
    let span = spanned.referenced.span();
    let offset = span.byte_offset().unwrap_or(span.offset()) as usize;
    let len = span.byte_len().unwrap_or(span.len()) as usize;
    SourceSpan::from((offset, len.max(1)))
}

pub fn yaml_error(source: &Source, err: &serde_saphyr::Error) -> SpecError {
    yaml_error_in(source, err, "pipeline file")
}

/// A YAML error in a `what` (pipeline file, rollout policy), pointing at its place.
pub fn yaml_error_in(source: &Source, err: &serde_saphyr::Error, what: &str) -> SpecError {
    let span = err
        .location()
        .map(|loc| {
            let s = loc.span();
            SourceSpan::from((
                s.byte_offset().unwrap_or(s.offset()) as usize,
                s.byte_len().unwrap_or(s.len()).max(1) as usize,
            ))
        })
        .unwrap_or_else(|| SourceSpan::from((0, 0)));
    // The error itself, under the wrappers that add snippets and alias locations.
    let mut inner = err.without_snippet();
    while let serde_saphyr::Error::AliasError { error, .. }
    | serde_saphyr::Error::WithSnippet { error, .. } = inner
    {
        inner = error;
    }
    let (message, help) = match inner {
        serde_saphyr::Error::Budget { breach, .. } => budget_message(breach, what),
        serde_saphyr::Error::SerdeUnknownField {
            field, expected, ..
        } => {
            let suggestion = did_you_mean(field, expected.iter().copied());
            let help = match suggestion {
                Some(s) => format!("did you mean `{s}`?"),
                None => format!("known keys: {}", expected.join(", ")),
            };
            (format!("unknown key `{field}`"), Some(help))
        }
        other => {
            let options = serde_saphyr::render_options! {
                snippets: serde_saphyr::SnippetMode::Off,
            };
            let text = other.render_with_options(options);
            let text = text.strip_prefix("error: ").unwrap_or(&text).to_string();
            // The location is shown by the label; drop the "line N column M: " prefix.
            let text = match text.split_once(": ") {
                Some((head, rest)) if head.starts_with("line ") => rest.to_string(),
                _ => text,
            };
            let text = match text.rfind(" at line ") {
                Some(at) => text[..at].to_string(),
                None => text,
            };
            (format!("invalid {what}: {text}"), None)
        }
    };
    let (src, span) = source.snippet(span);
    SpecError::Yaml {
        message,
        src,
        span,
        help,
    }
}

/// The closest candidate to `word`, if any is close enough to be a likely typo.
pub fn did_you_mean<'a>(
    word: &str,
    candidates: impl IntoIterator<Item = &'a str>,
) -> Option<&'a str> {
    candidates
        .into_iter()
        .map(|c| (strsim::jaro_winkler(word, c), c))
        .filter(|(score, _)| *score > 0.8)
        .max_by(|a, b| a.0.total_cmp(&b.0))
        .map(|(_, c)| c)
}

/// The YAML parser's resource limits, as a person reads them (SPEC.md, "Limits"): which limit a
/// file breached, its value, and why there is one.
fn budget_message(
    breach: &serde_saphyr::budget::BudgetBreach,
    what: &str,
) -> (String, Option<String>) {
    use serde_saphyr::budget::BudgetBreach as B;
    let limits = serde_saphyr::Budget::default();
    let (limit, found) = match breach {
        B::Nodes { nodes } => (
            format!("{} YAML nodes (with aliases expanded)", limits.max_nodes),
            *nodes,
        ),
        B::Aliases { aliases } => (format!("{} aliases", limits.max_aliases), *aliases),
        B::Anchors { anchors } => (format!("{} anchors", limits.max_anchors), *anchors),
        B::Events { events } => (format!("{} parser events", limits.max_events), *events),
        B::Depth { depth } => (format!("a nesting depth of {}", limits.max_depth), *depth),
        B::Documents { documents } => (format!("{} documents", limits.max_documents), *documents),
        B::ScalarBytes { total_scalar_bytes } => (
            format!("{} bytes of scalar text", limits.max_total_scalar_bytes),
            *total_scalar_bytes,
        ),
        B::MergeKeys { merge_keys } => {
            (format!("{} merge keys", limits.max_merge_keys), *merge_keys)
        }
        B::AliasAnchorRatio { aliases, anchors } => (
            format!(
                "{} alias uses per anchor (here {aliases} aliases of {anchors} anchors)",
                limits.alias_anchor_ratio_multiplier
            ),
            *aliases,
        ),
        other => (format!("the parser's limits ({other:?})"), 0),
    };
    let found = if found > 0 {
        format!(" (reached {found})")
    } else {
        String::new()
    };
    (
        format!("invalid {what}: it exceeds {limit}{found}"),
        Some(
            "edgebuild bounds what a YAML file may expand to, so that a small file cannot make it \
             use unbounded time and memory (an alias bomb); write the values out, or split the file"
                .into(),
        ),
    )
}

/// Bytes of a source line that a diagnostic shows; longer lines are cut around the problem.
pub const MAX_SHOWN_LINE: usize = 240;
/// Lines shown before and after the lines of a span.
const CONTEXT_LINES: usize = 3;
/// Lines of a span shown at most (a span over more lines is shortened to them).
const MAX_SPAN_LINES: usize = 40;

/// The lines of a source file around a diagnostic's span, with long lines cut: what a
/// diagnostic holds instead of the whole file. It reports the lines' true numbers.
#[derive(Debug, Clone)]
pub struct Snippet {
    name: String,
    text: String,
    /// The number (0-based) of the excerpt's first line in the file.
    first_line: usize,
    /// The excerpt line holding the span's start, and the characters cut from its beginning.
    span_line: usize,
    column_shift: usize,
}

impl Snippet {
    /// The excerpt of `text` around `span`, and the span within it.
    pub fn around(name: &str, text: &str, span: SourceSpan) -> (Snippet, SourceSpan) {
        let start = floor_boundary(text, span.offset().min(text.len()));
        let end = floor_boundary(text, (span.offset() + span.len()).min(text.len())).max(start);
        let line_start = text[..start].rfind('\n').map_or(0, |i| i + 1);
        let mut from = line_start;
        let mut before = 0;
        while before < CONTEXT_LINES && from > 0 {
            from = text[..from - 1].rfind('\n').map_or(0, |i| i + 1);
            before += 1;
        }
        let first_line = text[..from].bytes().filter(|&b| b == b'\n').count();
        // The end of the span's last line (at most MAX_SPAN_LINES lines on), then context.
        let mut to = line_start;
        let mut lines = 0;
        loop {
            let line_end = text[to..].find('\n').map_or(text.len(), |i| to + i + 1);
            to = line_end;
            lines += 1;
            if to >= text.len() || to > end || lines >= MAX_SPAN_LINES {
                break;
            }
        }
        let end = end.min(to);
        for _ in 0..CONTEXT_LINES {
            if to >= text.len() {
                break;
            }
            to = text[to..].find('\n').map_or(text.len(), |i| to + i + 1);
        }
        let mut out = String::new();
        let (mut new_start, mut new_end) = (0, 0);
        let mut span_line = 0;
        let mut column_shift = 0;
        let mut offset = from;
        for (n, line) in text[from..to].split_inclusive('\n').enumerate() {
            let content = line.strip_suffix('\n').unwrap_or(line);
            let holds = |p: usize| p >= offset && p <= offset + content.len();
            // The part of the line shown: all of it, or a window around the span.
            let (cut_from, cut_to) = if content.len() <= MAX_SHOWN_LINE {
                (0, content.len())
            } else {
                let anchor = if holds(start) { start - offset } else { 0 };
                let from = floor_boundary(content, anchor.saturating_sub(MAX_SHOWN_LINE / 4));
                (
                    from,
                    floor_boundary(content, (from + MAX_SHOWN_LINE).min(content.len())),
                )
            };
            if cut_from > 0 {
                out.push('…');
            }
            let shown_at = out.len();
            out.push_str(&content[cut_from..cut_to]);
            if cut_to < content.len() {
                out.push('…');
            }
            if line.len() > content.len() {
                out.push('\n');
            }
            let map = |p: usize| shown_at + (p - offset).clamp(cut_from, cut_to) - cut_from;
            if holds(start) {
                new_start = map(start);
                span_line = n;
                column_shift = content[..cut_from]
                    .chars()
                    .count()
                    .saturating_sub(usize::from(cut_from > 0));
            }
            if holds(end) {
                new_end = map(end);
            } else if end > offset + line.len() {
                new_end = out.len();
            }
            offset += line.len();
        }
        let snippet = Snippet {
            name: name.to_string(),
            text: out,
            first_line,
            span_line,
            column_shift,
        };
        let len = new_end.saturating_sub(new_start);
        (
            snippet,
            SourceSpan::from((new_start, len.max(usize::from(!span.is_empty())))),
        )
    }
}

fn floor_boundary(text: &str, mut at: usize) -> usize {
    while at > 0 && !text.is_char_boundary(at) {
        at -= 1;
    }
    at
}

impl SourceCode for Snippet {
    fn read_span<'a>(
        &'a self,
        span: &SourceSpan,
        context_lines_before: usize,
        context_lines_after: usize,
    ) -> Result<Box<dyn SpanContents<'a> + 'a>, MietteError> {
        let inner = self
            .text
            .read_span(span, context_lines_before, context_lines_after)?;
        let column = if inner.line() == self.span_line {
            inner.column() + self.column_shift
        } else {
            inner.column()
        };
        let contents = MietteSpanContents::new_named(
            self.name.clone(),
            inner.data(),
            *inner.span(),
            inner.line() + self.first_line,
            column,
            inner.line_count(),
        )
        .with_language("yaml");
        Ok(Box::new(contents))
    }
}
