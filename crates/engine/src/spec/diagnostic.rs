//! Diagnostics of the pipeline files: [`SpecError`], the source text it points into, and the
//! helpers that turn a YAML location or a typo into a pointed message with a suggestion.

use miette::{Diagnostic, NamedSource, SourceSpan};
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
        src: NamedSource<String>,
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
        src: NamedSource<String>,
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
        src: NamedSource<String>,
        #[label("declared again here")]
        span: SourceSpan,
        #[related]
        first_site: Vec<SpecError>,
    },

    #[error("first declared here")]
    #[diagnostic(severity(Advice))]
    FirstDeclared {
        #[source_code]
        src: NamedSource<String>,
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
        src: NamedSource<String>,
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
    pub fn named(&self) -> NamedSource<String> {
        NamedSource::new(&self.name, self.text.clone()).with_language("yaml")
    }

    pub fn invalid(
        &self,
        span: SourceSpan,
        message: impl Into<String>,
        label: impl Into<String>,
        help: Option<String>,
    ) -> SpecError {
        SpecError::Invalid {
            message: message.into(),
            src: self.named(),
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
    let (message, help) = match err.without_snippet() {
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
    SpecError::Yaml {
        message,
        src: source.named(),
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
