//! `--emit DIR`: a design written back as a concrete `.ecar` file.
//!
//! When every axis of the space is written in the space's own file, the
//! emitted file is that file with each `key in ...` replaced by the design's
//! option (the option's own text), the model renamed `MODEL_dINDEX`, relative
//! imports pointed at the same files from `DIR`, and a comment naming the
//! design; then formatted canonically (`ecarc_grammar::fmt`, comments kept).
//! Otherwise (an axis written in an imported file) it is a short file that
//! imports the space's file and overrides each axis on the space's model, the
//! `--set`/`extends` rules: `model MODEL_dINDEX extends MODEL { backbone { depth 24 } }`.
//! Either way the file checks to the design's spec, so it costs the same.

use super::evaluate::Space;
use crate::space;
use ecarc_grammar::ast::{Alternatives, Body, Entry, FieldValue, Item, Value};
use ecarc_grammar::{FileId, SourceMap, Span};
use std::path::{Component, Path, PathBuf};

/// The name of design `index`'s model (and file stem).
pub fn design_name(model: &str, index: u128) -> String {
    format!("{model}_d{index}")
}

/// The text of design `index` as a concrete model file to be written in `out_dir`.
/// `root` is the space's file, as loaded into `sources`.
pub fn emit(space: &Space, index: u128, root: FileId, sources: &SourceMap, out_dir: &Path) -> Result<String, String> {
    let choice = space::choice(&space.axes, index);
    let name = design_name(&space.name.name, index);
    let file = sources.get(root);
    let path = file.path.clone().ok_or("the space's file has no path on disk")?;
    let header: Vec<String> = space
        .axes
        .iter()
        .zip(&choice)
        .map(|(a, &c)| format!("//   {} = {}", a.path.join("."), a.labels[c as usize]))
        .collect();
    let header = format!(
        "// Design {index} of the search space `{}` ({}), written by `ecarc search --emit`:\n{}\n",
        space.name.name,
        file.name,
        header.join("\n")
    );
    let text = if space.axes.iter().all(|a| a.span.file == root) {
        in_place(space, &choice, &name, root, &file.text, &path, out_dir)?
    } else {
        overrides(space, &choice, &name, sources, &path, out_dir)?
    };
    let text = format!("{header}{text}");
    ecarc_grammar::fmt::format_source(&text).map_err(|d| {
        format!("the emitted design does not parse ({}): a bug in ecarc\n{text}", d.first().map_or("", |d| &d.message))
    })
}

/// The space's file with the axes replaced by the design's options.
fn in_place(
    space: &Space,
    choice: &[u32],
    name: &str,
    root: FileId,
    text: &str,
    path: &Path,
    out_dir: &Path,
) -> Result<String, String> {
    let ast = ecarc_grammar::parser::parse_file(root, text).map_err(|_| "the space's file does not parse")?;
    let mut edits: Vec<(usize, usize, String)> = Vec::new();
    for (a, &c) in space.axes.iter().zip(choice) {
        let mut found = None;
        for item in &ast.items {
            if let Item::Definition(d) = item {
                find_axis(&d.body, a.span, &mut found);
            }
        }
        let (key_end, field_end, alts) =
            found.ok_or_else(|| format!("axis `{}` not found in its file", a.path.join(".")))?;
        let option = match alts {
            Alternatives::Set { items, .. } => slice(text, items[c as usize].span()).to_string(),
            Alternatives::Range { .. } => a.labels[c as usize].clone(),
        };
        edits.push((key_end, field_end, format!(" {option}")));
    }
    for item in &ast.items {
        match item {
            Item::Definition(d) if d.kind.name == "model" && d.name.name == space.name.name => {
                edits.push((d.name.span.start as usize, d.name.span.end as usize, name.to_string()));
            }
            Item::Import(i) if !i.path.value.starts_with("std/") => {
                let target = path.parent().unwrap_or(Path::new(".")).join(&i.path.value);
                edits.push((i.path.span.start as usize, i.path.span.end as usize, quote(&relative(out_dir, &target))));
            }
            _ => {}
        }
    }
    edits.sort_by_key(|e| std::cmp::Reverse(e.0));
    let mut out = text.to_string();
    for (s, e, t) in edits {
        out.replace_range(s..e, &t);
    }
    Ok(out)
}

/// `(end of the key, end of the field, the alternatives)` of the field whose
/// alternatives are at `span`.
fn find_axis<'a>(body: &'a Body, span: Span, found: &mut Option<(usize, usize, &'a Alternatives)>) {
    for e in &body.entries {
        let Entry::Field(f) = e else { continue };
        match &f.value {
            FieldValue::Alternatives(a) if a.span().start == span.start && a.span().end == span.end => {
                *found = Some((f.key.span.end as usize, f.span.end as usize, a));
            }
            FieldValue::Value(Value::Component { body, .. }) => find_axis(body, span, found),
            _ => {}
        }
    }
}

/// A file importing the space and overriding its axes.
fn overrides(
    space: &Space,
    choice: &[u32],
    name: &str,
    sources: &SourceMap,
    path: &Path,
    out_dir: &Path,
) -> Result<String, String> {
    // A tree of components: path prefix -> nested block.
    #[derive(Default)]
    struct Block {
        fields: Vec<(String, String)>,
        children: Vec<(String, Block)>,
    }
    fn insert(node: &mut Block, path: &[String], value: String) {
        if path.len() == 1 {
            node.fields.push((path[0].clone(), value));
            return;
        }
        let i = match node.children.iter().position(|(k, _)| *k == path[0]) {
            Some(i) => i,
            None => {
                node.children.push((path[0].clone(), Block::default()));
                node.children.len() - 1
            }
        };
        insert(&mut node.children[i].1, &path[1..], value);
    }
    fn write(node: &Block) -> String {
        let mut parts: Vec<String> = node.fields.iter().map(|(k, v)| format!("{k} {v}")).collect();
        parts.extend(node.children.iter().map(|(k, n)| format!("{k} {{\n{}\n}}", write(n))));
        parts.join("\n")
    }
    let mut root = Block::default();
    for (a, &c) in space.axes.iter().zip(choice) {
        let option = &a.options[c as usize];
        let text = match option {
            ecarc_grammar::merged::MValue::Expr(ecarc_grammar::ast::Expr {
                kind: ecarc_grammar::ast::ExprKind::Number { .. },
                span,
            }) if *span == a.span => a.labels[c as usize].clone(),
            other => sources.text(other.span()).to_string(),
        };
        insert(&mut root, &a.path, text);
    }
    Ok(format!(
        "import {}\n\nmodel {name} extends {} {{\n{}\n}}\n",
        quote(&relative(out_dir, path)),
        space.name.name,
        write(&root)
    ))
}

fn slice(text: &str, span: Span) -> &str {
    &text[span.start as usize..span.end as usize]
}

fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `to` as a path relative to the directory `from` (absolute when they share no root).
fn relative(from: &Path, to: &Path) -> String {
    let abs = |p: &Path| -> PathBuf {
        let p = if p.is_absolute() { p.to_path_buf() } else { std::env::current_dir().unwrap_or_default().join(p) };
        let mut out = PathBuf::new();
        for c in p.components() {
            match c {
                Component::ParentDir => {
                    out.pop();
                }
                Component::CurDir => {}
                c => out.push(c),
            }
        }
        out
    };
    let (from, to) = (abs(from), abs(to));
    let (f, t): (Vec<Component>, Vec<Component>) = (from.components().collect(), to.components().collect());
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    if common == 0 {
        return to.display().to_string();
    }
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out.display().to_string()
}
