//! `${...}` references in `cmd` templates (SPEC.md, "Substitution in `cmd`").
//!
//! `${inputs.NAME}` (map form) or `${inputs.0}` (list form), `${inputs}` for all of them
//! space-separated, the same for `outputs`, and `${params.KEY}` (dotted for nested maps). Every
//! substituted value is shell-quoted. `$${` writes a literal `${`. Other `$` uses (`$HOME`,
//! `$(cmd)`) are left to the shell.

use crate::stage::{Port, Stage};

/// A reference that cannot be parsed or resolved.
#[derive(Debug)]
pub struct Problem {
    /// The reference as written, to locate it in the YAML.
    pub reference: String,
    pub message: String,
    pub help: Option<String>,
}

#[derive(Debug, PartialEq)]
enum Piece<'a> {
    Literal(&'a str),
    Reference { text: &'a str, body: &'a str },
}

fn pieces(template: &str) -> Result<Vec<Piece<'_>>, Problem> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push(Piece::Literal(&rest[..at - 1]));
            out.push(Piece::Literal("${"));
            rest = &rest[at + 2..];
            continue;
        }
        out.push(Piece::Literal(&rest[..at]));
        let Some(len) = rest[at..].find('}') else {
            return Err(Problem {
                reference: "${".into(),
                message: "unterminated `${` in cmd".into(),
                help: Some("close it with `}`, or write `$${` for a literal `${`".into()),
            });
        };
        let text = &rest[at..at + len + 1];
        out.push(Piece::Reference {
            text,
            body: &text[2..text.len() - 1],
        });
        rest = &rest[at + len + 1..];
    }
    out.push(Piece::Literal(rest));
    Ok(out)
}

/// Checks the syntax of a template.
pub fn parse(template: &str) -> Result<(), Problem> {
    pieces(template).map(|_| ())
}

/// Expands a stage's command template.
pub fn expand(template: &str, stage: &Stage) -> Result<String, Problem> {
    let mut out = String::with_capacity(template.len());
    for piece in pieces(template)? {
        match piece {
            Piece::Literal(text) => out.push_str(text),
            Piece::Reference { text, body } => out.push_str(&resolve(text, body, stage)?),
        }
    }
    Ok(out)
}

fn quote(value: &str) -> String {
    shlex::try_quote(value)
        .map(|q| q.into_owned())
        .unwrap_or_else(|_| value.to_string())
}

fn resolve(text: &str, body: &str, stage: &Stage) -> Result<String, Problem> {
    let undefined = |message: String, help: Option<String>| Problem {
        reference: text.to_string(),
        message,
        help,
    };
    let (kind, key) = match body.split_once('.') {
        Some((kind, key)) => (kind, Some(key)),
        None => (body, None),
    };
    let port_value = |ports: &[Port], what: &str| -> Result<String, Problem> {
        match key {
            None => Ok(ports
                .iter()
                .map(|p| quote(&p.path))
                .collect::<Vec<_>>()
                .join(" ")),
            Some(name) => ports
                .iter()
                .find(|p| p.name == name)
                .map(|p| quote(&p.path))
                .ok_or_else(|| {
                    let names: Vec<&str> = ports.iter().map(|p| p.name.as_str()).collect();
                    undefined(
                        format!(
                            "`{text}` in {}: the stage has no {what} named `{name}`",
                            stage.id
                        ),
                        Some(if names.is_empty() {
                            format!("the stage declares no {what}s")
                        } else {
                            format!("its {what}s are: {}", names.join(", "))
                        }),
                    )
                }),
        }
    };
    match kind {
        "inputs" => port_value(&stage.inputs, "input"),
        "outputs" => port_value(&stage.outputs, "output"),
        "params" => {
            let Some(key) = key else {
                return Err(undefined(
                    format!(
                        "`{text}` in {}: name a parameter, as in `${{params.KEY}}`",
                        stage.id
                    ),
                    None,
                ));
            };
            let mut value = &stage.params;
            for part in key.split('.') {
                value = match value.get(part) {
                    Some(v) => v,
                    None => {
                        return Err(undefined(
                            format!("`{text}` in {}: no parameter `{key}`", stage.id),
                            Some("declare it under `params:`".into()),
                        ));
                    }
                };
            }
            Ok(match value {
                serde_json::Value::String(s) => quote(s),
                other => quote(&other.to_string()),
            })
        }
        _ => Err(undefined(
            format!("`{text}` in {}: unknown reference", stage.id),
            Some(
                "use ${inputs.NAME}, ${outputs.NAME} or ${params.KEY}; write $${ for a literal ${"
                    .into(),
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stage::Action;

    fn stage() -> Stage {
        let port = |name: &str, path: &str| Port {
            name: name.into(),
            path: path.into(),
            span: (0, 0).into(),
        };
        Stage {
            id: "p:s".into(),
            pipeline: 0,
            name: "s".into(),
            description: None,
            action: Action::Cmd(String::new()),
            inputs: vec![port("0", "data/a b.txt"), port("1", "data/c.txt")],
            outputs: vec![port("report", "out/r.json")],
            named_inputs: false,
            named_outputs: true,
            params: serde_json::json!({"bits": 4, "name": "x;y", "nested": {"k": true}}),
            env: vec![],
            tools: Default::default(),
            volatile: false,
            after: vec![],
            remote: true,
            platform: Default::default(),
            span: (0, 0).into(),
            action_span: (0, 0).into(),
        }
    }

    #[test]
    fn expands_and_quotes() {
        let s = stage();
        assert_eq!(
            expand("cat ${inputs.0} > ${outputs.report}", &s).unwrap(),
            "cat 'data/a b.txt' > out/r.json"
        );
        assert_eq!(
            expand("cat ${inputs}", &s).unwrap(),
            "cat 'data/a b.txt' data/c.txt"
        );
        assert_eq!(
            expand("q ${params.bits} ${params.name} ${params.nested.k}", &s).unwrap(),
            "q 4 'x;y' true"
        );
        assert_eq!(
            expand("echo $${HOME} $HOME", &s).unwrap(),
            "echo ${HOME} $HOME"
        );
    }

    #[test]
    fn rejects_undefined() {
        let s = stage();
        for bad in [
            "${inputs.9}",
            "${outputs.nope}",
            "${params.zz}",
            "${params}",
            "${foo}",
        ] {
            let err = expand(bad, &s).unwrap_err();
            assert_eq!(err.reference, bad);
        }
        assert!(parse("echo ${inputs.0").is_err());
    }
}
