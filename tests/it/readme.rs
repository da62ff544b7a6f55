//! The README's tour, run from the README's own text, so that it cannot drift:
//! in every fenced code block, a line `$ ecarc ARGS` is run (the built binary,
//! through `sh` so that globs and quotes work as typed, in a scratch directory
//! where `models/`, `examples/` and `tests/` are the repository's) and the
//! lines after it, up to the next `$` line or the end of the block, are what it
//! prints (stdout and stderr in one stream, as a terminal shows them):
//! - the shown lines appear in order; without a leading `...` the first shown
//!   line is the first printed, without a trailing `...` the last is the last;
//! - a line `...` stands for any lines (none included), and `...` inside a line
//!   for any text;
//! - the command exits 0, or 1 when a shown line starts with `error:`.
//!
//! Commands that run a full-size model (`sample`, `decode`, `forward`,
//! `dd-pairs`, `init-weights` on `models/`) are exempt: they take minutes.

use crate::common::root;
use std::path::Path;
use std::process::{Command, Stdio};

/// One `$ ecarc ...` line and the output shown after it.
#[derive(Debug)]
struct Example {
    line: usize,
    command: String,
    shown: Vec<String>,
}

/// Every `$ ecarc` example of a markdown text (fenced blocks, indented ones included).
fn examples(markdown: &str) -> Vec<Example> {
    let mut out: Vec<Example> = Vec::new();
    let mut in_block = false;
    let mut current: Option<Example> = None;
    for (i, raw) in markdown.lines().enumerate() {
        let line = raw.trim_start();
        if line.starts_with("```") {
            in_block = !in_block;
            out.extend(current.take());
            continue;
        }
        if !in_block {
            continue;
        }
        if let Some(cmd) = line.strip_prefix("$ ") {
            out.extend(current.take());
            if cmd.starts_with("ecarc ") {
                current = Some(Example { line: i + 1, command: cmd.to_string(), shown: Vec::new() });
            }
        } else if let Some(e) = current.as_mut() {
            // Indented blocks (in a list) are indented as a whole.
            let indent = raw.len() - line.len();
            let block_indent = markdown.lines().nth(e.line - 1).map_or(0, |l| l.len() - l.trim_start().len());
            e.shown.push(raw[indent.min(block_indent)..].to_string());
        }
    }
    out
}

/// Whether `line` matches `pattern`, where `...` stands for any text.
fn line_matches(pattern: &str, line: &str) -> bool {
    let parts: Vec<&str> = pattern.split("...").collect();
    if parts.len() == 1 {
        return pattern == line;
    }
    let mut rest = line;
    for (k, part) in parts.iter().enumerate() {
        if k == 0 {
            match rest.strip_prefix(part) {
                Some(r) => rest = r,
                None => return false,
            }
        } else if k == parts.len() - 1 {
            return rest.ends_with(part);
        } else {
            match rest.find(part) {
                Some(at) => rest = &rest[at + part.len()..],
                None => return false,
            }
        }
    }
    true
}

/// Whether `printed` matches `shown` (see the module docs).
fn output_matches(shown: &[String], printed: &[&str]) -> bool {
    fn go(shown: &[String], printed: &[&str]) -> bool {
        match shown.split_first() {
            None => printed.is_empty(),
            Some((s, rest)) if s.trim() == "..." => (0..=printed.len()).any(|k| go(rest, &printed[k..])),
            Some((s, rest)) => printed.first().is_some_and(|p| line_matches(s, p)) && go(rest, &printed[1..]),
        }
    }
    go(shown, printed)
}

/// Full-size models run by the reference interpreter take minutes.
fn exempt(command: &str) -> bool {
    let words: Vec<&str> = command.split_whitespace().collect();
    let runs = words.iter().any(|w| ["sample", "decode", "forward", "dd-pairs", "init-weights"].contains(w));
    runs && words.iter().any(|w| w.starts_with("models/"))
}

/// Run one example in `dir`; stdout and stderr go to one pipe, in order.
fn run(dir: &Path, command: &str) -> (Option<i32>, String) {
    let bin = Path::new(env!("CARGO_BIN_EXE_ecarc"));
    let path = format!("{}:{}", bin.parent().unwrap().display(), std::env::var("PATH").unwrap_or_default());
    let (reader, writer) = std::io::pipe().unwrap();
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(command)
        .current_dir(dir)
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(writer.try_clone().unwrap())
        .stderr(writer)
        .spawn()
        .unwrap();
    let mut text = String::new();
    std::io::Read::read_to_string(&mut { reader }, &mut text).unwrap();
    (child.wait().unwrap().code(), text)
}

#[test]
fn the_readme_tour_runs_as_shown() {
    let readme = std::fs::read_to_string(root().join("README.md")).unwrap();
    let all = examples(&readme);
    assert!(all.len() >= 5, "found only {} `$ ecarc` examples", all.len());
    let dir = std::env::temp_dir().join(format!("ecarc-readme-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for d in ["models", "examples", "tests"] {
        std::os::unix::fs::symlink(root().join(d), dir.join(d)).unwrap();
    }
    let mut failures = Vec::new();
    for e in all.iter().filter(|e| !exempt(&e.command)) {
        let (code, printed) = run(&dir, &e.command);
        let want = if e.shown.iter().any(|l| l.starts_with("error:")) { 1 } else { 0 };
        let lines: Vec<&str> = printed.lines().collect();
        if code != Some(want) || !output_matches(&e.shown, &lines) {
            failures.push(format!(
                "README.md:{}: `$ {}` exited {code:?} (expected {want}) and printed:\n{printed}\nexpected:\n{}",
                e.line,
                e.command,
                e.shown.join("\n")
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
}

#[test]
fn the_matcher_follows_its_rules() {
    let shown = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    assert!(output_matches(&shown(&["a", "...", "c"]), &["a", "b", "b", "c"]));
    assert!(output_matches(&shown(&["a", "...", "c"]), &["a", "c"]));
    assert!(!output_matches(&shown(&["a", "c"]), &["a", "b", "c"]));
    assert!(!output_matches(&shown(&["b"]), &["a", "b"]));
    assert!(output_matches(&shown(&["...", "b", "..."]), &["a", "b", "c"]));
    assert!(!output_matches(&shown(&["a"]), &["a", "b"]));
    assert!(line_matches("wrote x in ... s", "wrote x in 0.45 s"));
    assert!(!line_matches("wrote x in ... s", "wrote y in 0.45 s"));
    assert!(line_matches("a ... b ... c", "a 1 b 2 c"));
    let md = "text\n```\n$ ecarc check x\nok\n...\n$ ls\nno\n```\n  ```\n  $ ecarc check y\n  ok y\n  ```\n";
    let ex = examples(md);
    assert_eq!(ex.len(), 2, "{ex:?}");
    assert_eq!((ex[0].command.as_str(), ex[0].shown.clone()), ("ecarc check x", vec!["ok".into(), "...".into()]));
    assert_eq!((ex[1].command.as_str(), ex[1].shown.clone()), ("ecarc check y", vec!["ok y".to_string()]));
    assert!(exempt("ecarc sample models/var_d16.ecar -o x.png"));
    assert!(!exempt("ecarc sample examples/tiny/var.ecar -o x.png"));
}
