//! The CI example under `examples/ci/` is valid YAML and every edgebuild command in it parses
//! with today's command line (flags renamed or removed would break users' CI).

use clap::Parser;

#[test]
fn every_edgebuild_command_in_the_github_example_parses() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/ci/github-actions.yml"
    ))
    .unwrap();
    let workflow: serde_json::Value = serde_saphyr::from_str(&text).expect("valid YAML");
    let steps = workflow["jobs"]["pipeline"]["steps"].as_array().unwrap();
    let mut commands = 0;
    for script in steps.iter().filter_map(|s| s["run"].as_str()) {
        // `>` folds the command onto one line; GitHub expressions become plain words.
        let script = evaluate_expressions(script);
        for line in script.lines().map(str::trim) {
            let Some(rest) = line.strip_prefix("edgebuild ") else {
                continue;
            };
            let line = rest.split(" > ").next().unwrap();
            let mut args = vec!["edgebuild".to_string()];
            args.extend(shlex::split(line).expect("shell words"));
            if let Err(e) = edgebuild::cli::Cli::try_parse_from(&args) {
                panic!("`{line}` does not parse: {e}");
            }
            commands += 1;
        }
    }
    assert_eq!(
        commands, 5,
        "pull, plan, build, verify-reproducible, compare"
    );
}

/// Replaces each `${{ ... }}` with what it evaluates to on the main branch, roughly.
fn evaluate_expressions(script: &str) -> String {
    let mut out = String::new();
    let mut rest = script;
    while let Some(start) = rest.find("${{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").expect("closed expression") + start + 2;
        let expression = &rest[start..end];
        out.push_str(if expression.contains("--remote-upload") {
            "--remote-upload"
        } else {
            "main"
        });
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}
