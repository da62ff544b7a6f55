//! Loading files (imports, bounded reads, the embedded standard library) and
//! resolving definitions: `extends` chains and component references become
//! merged bodies ([`MBody`]). Cycles and missing names are diagnostics.

use crate::ast::{self, Definition, Entry, FieldValue, Item, Value};
use crate::diag::{did_you_mean, Diag};
use crate::merged::{Choice, Component, MBody, MEntry, MField, MValue};
use crate::parser;
use crate::source::{FileId, SourceMap, Span};
use std::collections::{BTreeMap, HashMap};
use std::io::Read;
use std::path::{Path, PathBuf};

mod std_lib {
    include!(concat!(env!("OUT_DIR"), "/std_files.rs"));
}

/// Source files larger than this are refused before they are read in full.
pub const MAX_FILE_BYTES: u64 = 16 << 20;
/// At most this many files per compilation (imports included).
pub const MAX_FILES: usize = 1024;

/// The standard library's files, embedded at build time: `(name, text)`.
pub fn std_files() -> &'static [(&'static str, &'static str)] {
    std_lib::STD_FILES
}

/// Keys whose values are components (and may name a definition).
pub fn is_component_key(key: &str) -> bool {
    matches!(key, "tokenizer" | "backbone" | "block" | "head" | "schedule" | "sample" | "distill")
}

/// Which definition kind a component key refers to (`sample var_eval` names a `sampler`).
pub fn kind_for_key(key: &str) -> &str {
    match key {
        "sample" => "sampler",
        k => k,
    }
}

/// Every parsed file and every definition of one compilation.
#[derive(Debug, Default)]
pub struct Program {
    pub sources: SourceMap,
    pub files: Vec<(FileId, ast::File)>,
    /// (kind, name) -> definition.
    defs: BTreeMap<(String, String), Definition>,
    /// The files given on the command line (not imported ones).
    pub roots: Vec<FileId>,
    /// Where `std/...` imports come from: a directory, or the embedded copy.
    std_dir: Option<PathBuf>,
    loaded: HashMap<PathBuf, FileId>,
}

impl Program {
    pub fn new() -> Self {
        Program { std_dir: std::env::var_os("ECARC_STD").map(PathBuf::from), ..Default::default() }
    }

    /// Read the standard library from a directory instead of the embedded copy.
    pub fn with_std_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.std_dir = Some(dir.into());
        self
    }

    /// Load a root file from disk, with its imports. Diagnostics are returned,
    /// not thrown: whatever loaded stays usable.
    pub fn load_path(&mut self, path: &Path) -> Vec<Diag> {
        let mut diags = Vec::new();
        match read_bounded(path) {
            Ok(text) => {
                let canonical = path.canonicalize().unwrap_or_else(|_| path.to_path_buf());
                let id = self.sources.add(path.display().to_string(), Some(canonical.clone()), text.text);
                self.loaded.insert(canonical, id);
                self.roots.push(id);
                if let Some(bad) = text.invalid_utf8_at {
                    diags.push(invalid_utf8(id, bad));
                    return diags;
                }
                self.parse_and_follow(id, &mut vec![id], &mut diags);
            }
            Err(msg) => diags.push(
                Diag::error("E0201", format!("cannot read `{}`: {msg}", path.display()))
                    .help("check the path and that the file is a readable .ecar text file"),
            ),
        }
        diags
    }

    /// Load a root file from a string (tests, `--set`, editors).
    pub fn load_str(&mut self, name: &str, text: &str) -> Vec<Diag> {
        let mut diags = Vec::new();
        let id = self.sources.add(name, None, text);
        self.roots.push(id);
        self.parse_and_follow(id, &mut vec![id], &mut diags);
        diags
    }

    fn parse_and_follow(&mut self, id: FileId, stack: &mut Vec<FileId>, diags: &mut Vec<Diag>) {
        let text = self.sources.get(id).text.clone();
        let file = match parser::parse_file(id, &text) {
            Ok(f) => f,
            Err(mut d) => {
                diags.append(&mut d);
                return;
            }
        };
        for item in &file.items {
            match item {
                Item::Import(imp) => self.import(id, imp, stack, diags),
                Item::Definition(def) => {
                    let key = (def.kind.name.clone(), def.name.name.clone());
                    if let Some(prev) = self.defs.get(&key) {
                        diags.push(
                            Diag::error("E0204", format!("`{} {}` is defined twice", def.kind.name, def.name.name))
                                .label(def.name.span, "defined again here")
                                .label(prev.name.span, "first defined here")
                                .help("rename one of them, or use `extends` to derive one from the other"),
                        );
                    } else {
                        self.defs.insert(key, def.clone());
                    }
                }
            }
        }
        self.files.push((id, file));
    }

    fn import(&mut self, from: FileId, imp: &ast::Import, stack: &mut Vec<FileId>, diags: &mut Vec<Diag>) {
        let spec = imp.path.value.as_str();
        if self.sources.files().count() >= MAX_FILES {
            diags.push(
                Diag::error("E0201", "too many imported files").label(imp.span, format!("more than {MAX_FILES} files")),
            );
            return;
        }
        // Resolve to (display name, canonical key, text-or-error).
        let (name, key, text): (String, PathBuf, Result<ReadText, String>) = if let Some(rest) =
            spec.strip_prefix("std/")
        {
            match &self.std_dir {
                Some(dir) => {
                    let p = dir.join(rest);
                    let key = p.canonicalize().unwrap_or_else(|_| p.clone());
                    (spec.to_string(), key, read_bounded(&p))
                }
                None => {
                    let key = PathBuf::from(format!("<std>/{rest}"));
                    let text = std_files()
                        .iter()
                        .find(|(n, _)| *n == rest)
                        .map(|(_, t)| ReadText { text: t.to_string(), invalid_utf8_at: None })
                        .ok_or_else(|| {
                            let names: Vec<&str> = std_files().iter().map(|(n, _)| *n).collect();
                            match did_you_mean(rest, names.iter().copied()) {
                                Some(s) => format!("the standard library has no `{rest}` (did you mean `std/{s}`?)"),
                                None => format!("the standard library has no `{rest}`; it has: {}", names.join(", ")),
                            }
                        });
                    (spec.to_string(), key, text)
                }
            }
        } else {
            let base = self
                .sources
                .get(from)
                .path
                .as_ref()
                .and_then(|p| p.parent().map(Path::to_path_buf))
                .unwrap_or_else(|| PathBuf::from("."));
            let p = base.join(spec);
            let key = p.canonicalize().unwrap_or_else(|_| p.clone());
            (p.display().to_string(), key, read_bounded(&p))
        };
        if let Some(&existing) = self.loaded.get(&key) {
            if let Some(pos) = stack.iter().position(|&f| f == existing) {
                let chain: Vec<String> =
                    stack[pos..].iter().map(|&f| self.sources.get(f).name.clone()).chain([name]).collect();
                diags.push(Diag::error("E0203", "import cycle").label(imp.span, "this import closes a cycle").help(
                    format!("the cycle is {}; move the shared definitions into a file both import", chain.join(" -> ")),
                ));
            }
            return;
        }
        match text {
            Ok(t) => {
                let id = self.sources.add(name, Some(key.clone()), t.text);
                self.loaded.insert(key, id);
                if let Some(bad) = t.invalid_utf8_at {
                    diags.push(invalid_utf8(id, bad));
                    return;
                }
                stack.push(id);
                self.parse_and_follow(id, stack, diags);
                stack.pop();
            }
            Err(msg) => diags.push(
                Diag::error("E0201", format!("cannot import \"{spec}\""))
                    .label(imp.path.span, msg)
                    .help("paths are relative to the importing file; `std/...` names the standard library"),
            ),
        }
    }

    pub fn definition(&self, kind: &str, name: &str) -> Option<&Definition> {
        self.defs.get(&(kind.to_string(), name.to_string()))
    }

    /// Definitions written in the root files, in source order.
    pub fn root_definitions(&self) -> Vec<&Definition> {
        let mut out = Vec::new();
        for (id, f) in &self.files {
            if self.roots.contains(id) {
                for item in &f.items {
                    if let Item::Definition(d) = item {
                        if self.defs.get(&(d.kind.name.clone(), d.name.name.clone())).is_some_and(|x| x.span == d.span)
                        {
                            out.push(d);
                        }
                    }
                }
            }
        }
        out
    }

    /// Names of all definitions of one kind (for "did you mean").
    pub fn names_of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.defs.keys().filter(move |(k, _)| k == kind).map(|(_, n)| n.as_str())
    }

    /// The merged body of a definition, `extends` chain followed.
    pub fn resolve<'a>(&'a self, def: &'a Definition) -> Result<MBody, Vec<Diag>> {
        let mut r = Resolver { program: self, stack: Vec::new(), diags: Vec::new() };
        let body = r.definition(def, def.name.span);
        if r.diags.is_empty() {
            Ok(body)
        } else {
            Err(r.diags)
        }
    }

    /// Resolve one value given on the command line (`--set`), as the value of `key`.
    pub fn resolve_value<'a>(&'a self, key: &str, value: &'a FieldValue) -> Result<MValue, Vec<Diag>> {
        let mut r = Resolver { program: self, stack: Vec::new(), diags: Vec::new() };
        let v = r.field_value(key, value);
        if r.diags.is_empty() {
            Ok(v)
        } else {
            Err(r.diags)
        }
    }
}

struct ReadText {
    text: String,
    invalid_utf8_at: Option<usize>,
}

/// Read at most [`MAX_FILE_BYTES`]: `/dev/zero` or a huge file is refused, not slurped.
fn read_bounded(path: &Path) -> Result<ReadText, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if meta.is_dir() {
        return Err("it is a directory".into());
    }
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > MAX_FILE_BYTES {
        return Err(format!("it is larger than {} MiB", MAX_FILE_BYTES >> 20));
    }
    Ok(match String::from_utf8(bytes) {
        Ok(text) => ReadText { text, invalid_utf8_at: None },
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            ReadText { text: String::from_utf8_lossy(e.as_bytes()).into_owned(), invalid_utf8_at: Some(at) }
        }
    })
}

fn invalid_utf8(id: FileId, at: usize) -> Diag {
    Diag::error("E0202", "file is not valid UTF-8")
        .label(Span::new(id, at, at + 1), "invalid byte here")
        .help("model files are UTF-8 text; was a binary file passed by mistake?")
}

struct Resolver<'p> {
    program: &'p Program,
    /// Definitions being resolved, to detect `extends` and reference cycles.
    stack: Vec<(String, String, Span)>,
    diags: Vec<Diag>,
}

impl<'p> Resolver<'p> {
    /// Merged body of `def`; `via` is the reference that led here (for cycle reports).
    fn definition(&mut self, def: &'p Definition, via: Span) -> MBody {
        let key = (def.kind.name.clone(), def.name.name.clone());
        if let Some(pos) = self.stack.iter().position(|(k, n, _)| (k, n) == (&key.0, &key.1)) {
            let chain: Vec<String> =
                self.stack[pos..].iter().map(|(_, n, _)| n.clone()).chain([def.name.name.clone()]).collect();
            self.diags.push(
                Diag::error("E0206", format!("`{}` is defined in terms of itself", def.name.name))
                    .label(via, "this reference closes the cycle")
                    .label(def.name.span, "cycle starts here")
                    .help(format!(
                        "the cycle is {}; break it by removing one `extends` or reference",
                        chain.join(" -> ")
                    )),
            );
            return MBody { entries: vec![], span: def.body.span };
        }
        self.stack.push((key.0, key.1, via));
        let own = self.body(&def.body);
        let body = match &def.extends {
            Some(base) => match self.lookup(&def.kind.name, base) {
                Some(base_def) => self.definition(base_def, base.span).merge(&own),
                None => own,
            },
            None => own,
        };
        self.stack.pop();
        body
    }

    fn lookup(&mut self, kind: &str, name: &ast::Ident) -> Option<&'p Definition> {
        let program = self.program;
        match program.definition(kind, &name.name) {
            Some(d) => Some(d),
            None => {
                let mut d = Diag::error("E0205", format!("no {kind} named `{}`", name.name))
                    .label(name.span, format!("unknown {kind}"));
                d = match did_you_mean(&name.name, program.names_of_kind(kind)) {
                    Some(s) => d.help(format!("did you mean `{s}`?")),
                    None => {
                        let names: Vec<&str> = program.names_of_kind(kind).collect();
                        if names.is_empty() {
                            d.help(format!("no {kind} definitions are in scope; import one (e.g. `import \"std/...\"`) or write it inline with `{{ ... }}`"))
                        } else {
                            d.help(format!("known {kind} definitions: {}", names.join(", ")))
                        }
                    }
                };
                self.diags.push(d);
                None
            }
        }
    }

    fn body(&mut self, body: &'p ast::Body) -> MBody {
        let mut entries = Vec::new();
        let mut seen: Vec<&ast::Ident> = Vec::new();
        for e in &body.entries {
            if let Entry::Field(f) = e {
                match seen.iter().find(|k| k.name == f.key.name) {
                    Some(first) => self.diags.push(
                        Diag::error("E0207", format!("`{}` is given twice", f.key.name))
                            .label(f.key.span, "given again here")
                            .label(first.span, "first given here")
                            .help("remove one of them; to try several values, write `key in { a, b }`"),
                    ),
                    None => seen.push(&f.key),
                }
            }
        }
        for e in &body.entries {
            entries.push(match e {
                Entry::Field(f) => MEntry::Field(MField {
                    key: f.key.clone(),
                    value: self.field_value(&f.key.name, &f.value),
                    span: f.span,
                }),
                Entry::Stage(s) => MEntry::Stage(s.clone()),
                Entry::Params(p) => MEntry::Params(p.clone()),
                Entry::Constraint(c) => MEntry::Constraint(c.clone()),
            });
        }
        MBody { entries, span: body.span }
    }

    fn field_value(&mut self, key: &str, v: &'p FieldValue) -> MValue {
        match v {
            FieldValue::Value(v) => self.value(key, v),
            FieldValue::Alternatives(a) => {
                let items = match a {
                    ast::Alternatives::Set { items, .. } => items.iter().map(|i| self.value(key, i)).collect(),
                    ast::Alternatives::Range { .. } => vec![],
                };
                MValue::Choice(Choice::from_ast(a, items))
            }
        }
    }

    fn value(&mut self, key: &str, v: &'p Value) -> MValue {
        match v {
            // `tokenizer kl16`: a bare name under a component key references a definition.
            Value::Expr(e)
                if is_component_key(key) && e.as_name().is_some_and(|n| !matches!(n, "none" | "true" | "false")) =>
            {
                let name = ast::Ident { name: e.as_name().unwrap_or_default().to_string(), span: e.span };
                let kind = kind_for_key(key).to_string();
                match self.lookup(&kind, &name) {
                    Some(def) => {
                        let body = self.definition(def, name.span);
                        MValue::Component(Component { bases: self.chain(def), body, span: e.span })
                    }
                    None => MValue::Component(Component {
                        bases: vec![name],
                        body: MBody { entries: vec![], span: e.span },
                        span: e.span,
                    }),
                }
            }
            Value::Expr(e) => MValue::Expr(e.clone()),
            Value::Segment { from, to, span } => MValue::Segment { from: from.clone(), to: to.clone(), span: *span },
            Value::Component { base, body, span } => {
                let own = self.body(body);
                match base {
                    None => MValue::Component(Component { bases: vec![], body: own, span: *span }),
                    Some(b) => {
                        let kind = kind_for_key(key).to_string();
                        let (bases, merged) = match self.lookup(&kind, b) {
                            Some(def) => {
                                let base_body = self.definition(def, b.span);
                                (self.chain(def), base_body.merge(&own))
                            }
                            None => (vec![b.clone()], own),
                        };
                        MValue::Component(Component { bases, body: merged, span: *span })
                    }
                }
            }
        }
    }

    /// `extends` chain of a definition, nearest first, for reports.
    fn chain(&self, def: &Definition) -> Vec<ast::Ident> {
        let mut out = vec![def.name.clone()];
        let mut cur = def;
        while let Some(b) = &cur.extends {
            match self.program.definition(&def.kind.name, &b.name) {
                Some(d) if out.len() < 64 && !out.iter().any(|i| i.name == d.name.name) => {
                    out.push(d.name.clone());
                    cur = d;
                }
                _ => break,
            }
        }
        out
    }
}
