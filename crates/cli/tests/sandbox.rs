//! `build --sandbox`: a `cmd` stage sees only its declared inputs, so an undeclared one fails and
//! is named as the likely cause; verify-reproducible builds in the sandbox too.

mod common;

use common::{Workspace, stderr};

fn pipeline(read: &str) -> String {
    format!(
        r#"
version: 1
stages:
  words:
    cmd: "mkdir -p out/words && tr ' ' '\\n' < data/in.txt > out/words/list.txt && cp -r data/dict out/words/dict"
    inputs: [data/in.txt, data/dict]
    outputs: [out/words]
  sneaky:
    cmd: "cat out/words/list.txt {read} > out/sneaky.txt"
    inputs: [out/words]
    outputs: [out/sneaky.txt]
"#
    )
}

fn workspace(read: &str) -> Workspace {
    let ws = Workspace::new();
    ws.write("data/in.txt", "a b c")
        .write("data/dict/one.txt", "1")
        .write("data/extra.txt", "undeclared\n")
        .pipeline("p", &pipeline(read));
    ws
}

#[test]
fn an_undeclared_input_fails_only_in_the_sandbox() {
    let ws = workspace("data/extra.txt");
    ws.build(&[], 0);
    let local = ws.read("out/sneaky.txt");
    assert!(local.contains("undeclared"));

    let ws = workspace("data/extra.txt");
    let out = ws.run(&["build", "--sandbox", "-k"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("FAILED   p:sneaky"), "{err}");
    assert!(
        err.contains("an undeclared input is the likely cause"),
        "{err}"
    );
    assert!(
        err.contains("data/extra.txt: No such file or directory"),
        "{err}"
    );
    // Declared inputs, directories included, work, and the outputs are the local ones.
    assert_eq!(ws.read("out/words/list.txt"), "a\nb\nc");
    assert_eq!(ws.read("out/words/dict/one.txt"), "1");
    assert!(!ws.exists("out/sneaky.txt"));

    // Declared, it works.
    let fixed = Workspace::new();
    fixed
        .write("data/in.txt", "a b c")
        .write("data/dict/one.txt", "1")
        .write("data/extra.txt", "undeclared\n")
        .pipeline(
            "p",
            &pipeline("data/extra.txt")
                .replace("inputs: [out/words]", "inputs: [out/words, data/extra.txt]"),
        );
    let out = fixed.run(&["build", "--sandbox"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(fixed.read("out/sneaky.txt"), local);
}

#[test]
fn bubblewrap_hides_the_workspace_from_absolute_paths() {
    let ws = workspace("");
    let absolute = ws.file("data/extra.txt").display().to_string();
    ws.pipeline("p", &pipeline(&absolute));
    let doctor = ws.run(&["doctor"]);
    assert!(
        common::stdout(&doctor).contains("ok   sandbox   bubblewrap at"),
        "bubblewrap is installed (.ci/run installs it): {}",
        common::stdout(&doctor)
    );
    ws.build(&[], 0); // outside the sandbox the absolute path works
    let ws2 = workspace("");
    let absolute = ws2.file("data/extra.txt").display().to_string();
    ws2.pipeline("p", &pipeline(&absolute));
    let out = ws2.run(&["build", "--sandbox"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("in a bubblewrap sandbox"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn verification_builds_in_the_sandbox() {
    // The undeclared file is committed: an ordinary rebuild would pass, the sandbox does not.
    let ws = workspace("data/extra.txt");
    ws.git_init();
    ws.build(&[], 0);
    ws.commit("reads an undeclared input");
    let out = ws.run(&["verify-reproducible", "HEAD"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("an undeclared input is the likely cause"),
        "{err}"
    );
    assert!(
        err.contains("the pipelines do not build at commit"),
        "{err}"
    );
}

#[test]
fn an_output_through_a_symlink_the_stage_made_is_not_collected() {
    let victim = tempfile::tempdir().unwrap();
    std::fs::write(victim.path().join("secret.txt"), "SECRET\n").unwrap();
    let ws = Workspace::new();
    ws.pipeline(
        "p",
        &format!(
            "version: 1\nstages:\n  trick:\n    cmd: \"rm -rf out && ln -s {} out\"\n    outputs: [out/secret.txt]\n",
            victim.path().display()
        ),
    );
    let out = ws.run(&["build", "--sandbox"]);
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("goes through a symlink the stage made"),
        "{}",
        stderr(&out)
    );
    assert_eq!(
        std::fs::read_to_string(victim.path().join("secret.txt")).unwrap(),
        "SECRET\n",
        "the file the link points to stays where it is"
    );
}
