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
/// `extends` chains and component references nest at most this deep.
pub(crate) const MAX_DEFINITION_DEPTH: usize = 64;

/// At most this many files per compilation (imports included).
pub(crate) const MAX_FILES: usize = 1024;

/// The standard library's files, embedded at build time: `(name, text)`.
pub(crate) fn std_files() -> &'static [(&'static str, &'static str)] {
    std_lib::STD_FILES
}

/// Keys whose values are components (and may name a definition).
pub(crate) fn is_component_key(key: &str) -> bool {
    matches!(key, "tokenizer" | "backbone" | "block" | "head" | "schedule" | "sample" | "distill")
}

/// Which definition kind a component key refers to (`sample var_eval` names a `sampler`).
pub(crate) fn kind_for_key(key: &str) -> &str {
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
            Err(msg) => {
                let spec = path.display().to_string();
                let u = explain_unreadable(path, &spec, msg, false);
                diags.push(Diag::error("E0201", format!("cannot read `{spec}`: {}", u.label)).help(u.help))
            }
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
            Err(d) => {
                diags.extend(d.into_iter().map(|d| explain_syntax_error(d, &text)));
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
                Diag::error("E0201", "too many imported files")
                    .label(imp.span, format!("more than {MAX_FILES} files"))
                    .help("a model needs a handful of files; check for generated or runaway imports"),
            );
            return;
        }
        // Resolve to (display name, canonical key, text-or-error).
        // An error is (what is wrong, how to fix it).
        let (name, key, text): (String, PathBuf, Result<ReadText, Unreadable>) = if let Some(rest) =
            spec.strip_prefix("std/")
        {
            match &self.std_dir {
                Some(dir) => {
                    let p = dir.join(rest);
                    let key = p.canonicalize().unwrap_or_else(|_| p.clone());
                    (spec.to_string(), key, read_bounded(&p).map_err(|msg| explain_unreadable(&p, spec, msg, true)))
                }
                None => {
                    let key = PathBuf::from(format!("<std>/{rest}"));
                    let text = std_files()
                        .iter()
                        .find(|(n, _)| *n == rest)
                        .map(|(_, t)| ReadText { text: t.to_string(), invalid_utf8_at: None })
                        .ok_or_else(|| {
                            let names: Vec<&str> = std_files().iter().map(|(n, _)| *n).collect();
                            let listed = names.join(", ");
                            Unreadable {
                                label: format!("the standard library has no `{rest}`"),
                                help: match did_you_mean(rest, names.iter().copied()) {
                                    Some(s) => format!("did you mean \"std/{s}\"? the standard library has: {listed}"),
                                    None => format!("the standard library has: {listed}"),
                                },
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
            // Shown relative to how the importing file was named (`tests/bad/x.ecar`
            // imports "../data/tiny.ecar" as `tests/data/tiny.ecar`), not as an
            // absolute path that depends on where the checkout lives.
            let from_file = self.sources.get(from);
            let shown = match &from_file.path {
                Some(_) => normalize(&Path::new(&from_file.name).parent().unwrap_or(Path::new("")).join(spec)),
                None => normalize(Path::new(spec)),
            };
            let text = read_bounded(&p).map_err(|msg| explain_unreadable(&p, spec, msg, true));
            (shown, key, text)
        };
        if let Some(&existing) = self.loaded.get(&key) {
            if let Some(pos) = stack.iter().position(|&f| f == existing) {
                let chain: Vec<String> = stack[pos..]
                    .iter()
                    .map(|&f| self.sources.get(f).name.clone())
                    .chain([self.sources.get(existing).name.clone()])
                    .collect();
                let d = if existing == from {
                    Diag::error("E0203", "a file imports itself")
                        .label(imp.path.span, "this is the importing file")
                        .help("remove this import: a file's own definitions are always in scope")
                } else {
                    Diag::error("E0203", "import cycle").label(imp.path.span, "this import closes a cycle").help(
                        format!(
                            "the cycle is {}; move the shared definitions into a file that all of them import",
                            chain.join(" -> ")
                        ),
                    )
                };
                diags.push(d);
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
            Err(u) => diags.push(
                Diag::error("E0201", format!("cannot import \"{spec}\"")).label(imp.path.span, u.label).help(u.help),
            ),
        }
    }

    pub(crate) fn definition(&self, kind: &str, name: &str) -> Option<&Definition> {
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
    pub(crate) fn names_of_kind<'a>(&'a self, kind: &'a str) -> impl Iterator<Item = &'a str> + 'a {
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

/// Read a whole input file of at most `max` bytes: a regular file only (a
/// directory, named pipe, device or socket is refused before it is opened, so
/// a FIFO never blocks and `/dev/zero` is never slurped), and a larger file is
/// refused after reading `max + 1` bytes. Every input ecarc reads as a whole
/// (model files, artifacts, search results, files to format) goes through here.
pub fn read_capped(path: &Path, max: u64) -> Result<Vec<u8>, String> {
    let meta = std::fs::metadata(path).map_err(|e| e.to_string())?;
    if !meta.is_file() {
        return Err(format!("it is {}, not a regular file", file_kind(&meta)));
    }
    let f = std::fs::File::open(path).map_err(|e| e.to_string())?;
    let mut bytes = Vec::new();
    f.take(max + 1).read_to_end(&mut bytes).map_err(|e| e.to_string())?;
    if bytes.len() as u64 > max {
        return Err(format!("it is larger than {} MiB", max >> 20));
    }
    Ok(bytes)
}

/// What kind of file a non-regular `meta` is, for messages ("it is a named
/// pipe (FIFO)"); the output writer says the same.
pub fn file_kind(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        let t = meta.file_type();
        if t.is_fifo() {
            return "a named pipe (FIFO)";
        }
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "a special file"
}

struct ReadText {
    text: String,
    invalid_utf8_at: Option<usize>,
}

/// Read at most [`MAX_FILE_BYTES`]: `/dev/zero` or a huge file is refused, not slurped.
fn read_bounded(path: &Path) -> Result<ReadText, String> {
    let bytes = read_capped(path, MAX_FILE_BYTES)?;
    Ok(match String::from_utf8(bytes) {
        Ok(text) => ReadText { text, invalid_utf8_at: None },
        Err(e) => {
            let at = e.utf8_error().valid_up_to();
            ReadText { text: String::from_utf8_lossy(e.as_bytes()).into_owned(), invalid_utf8_at: Some(at) }
        }
    })
}

/// The standard-library file that defines `kind name`, if one does (for "add
/// this import" hints). A definition starts a line: `kind name {` or `kind name extends`.
fn std_defines(kind: &str, name: &str) -> Option<&'static str> {
    std_files().iter().find_map(|(file, text)| {
        text.lines()
            .filter(|l| !l.starts_with(char::is_whitespace))
            .any(|l| {
                let mut w = l.split_whitespace();
                w.next() == Some(kind) && w.next() == Some(name)
            })
            .then_some(*file)
    })
}

/// Make a syntax error (E0101) specific where the text shows a common slip:
/// an unclosed `{`, `key = value`, a stage segment without `->`, `step` for
/// `steps`, or an unclosed string. Other diagnostics pass through unchanged.
pub fn explain_syntax_error(d: Diag, text: &str) -> Diag {
    let Some(at) = d.primary_span().filter(|_| d.code == "E0101") else { return d };
    let pos = (at.start as usize).min(text.len());
    let line_start = text[..pos].rfind('\n').map_or(0, |i| i + 1);
    let line_end = text[pos..].find('\n').map_or(text.len(), |i| pos + i);
    let line = &text[line_start..line_end];
    let rest = &text[pos..line_end];
    let word: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
    let span_at = |start: usize, len: usize| Span::new(at.file, start, start + len);
    // `{` still open at `pos` (strings and comments skipped).
    let mut open = Vec::new();
    for (i, b) in crate::lex::code_bytes(&text.as_bytes()[..pos]) {
        match b {
            b'{' => open.push(i),
            b'}' => {
                open.pop();
            }
            _ => {}
        }
    }
    let line_no = |p: usize| text[..p].matches('\n').count() + 1;
    let ends_at_eof = text[pos..].trim().is_empty();
    // `KIND NAME {` or `KIND NAME extends BASE {` at the start of a line.
    let words: Vec<&str> = line.split_whitespace().collect();
    let is_ident = |w: &str| w.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_');
    let definition_line = !line.starts_with(char::is_whitespace)
        && words.len() >= 3
        && is_ident(words[0])
        && is_ident(words[1])
        && (words[2] == "{" || words[2] == "extends");
    if let (Some(&brace), true) = (open.last(), ends_at_eof || definition_line) {
        let before =
            if ends_at_eof { "at the end of the file".to_string() } else { format!("before line {}", line_no(pos)) };
        return Diag::error("E0101", "syntax error: a `{` is never closed")
            .label(span_at(brace, 1), "this `{` has no matching `}`")
            .label(
                if ends_at_eof { at } else { span_at(line_start, words[0].len()) },
                if ends_at_eof { "the file ends inside it" } else { "a new definition starts inside it" },
            )
            .help(format!("add the missing `}}` {before}"));
    }
    if rest.starts_with('=') && !rest.starts_with("==") {
        return Diag::error("E0101", "syntax error: fields are written `key value`, without `=`")
            .label(span_at(pos, 1), "remove this `=`")
            .help("write e.g. `depth 4`; `in` gives alternatives: `depth in { 4, 6 }`");
    }
    if rest.starts_with('"') && !rest[1..].contains('"') {
        return Diag::error("E0101", "syntax error: a string is not closed")
            .label(span_at(pos, rest.trim_end().len()), "this string has no closing `\"`")
            .help("strings end on the line they start: add the closing `\"`");
    }
    let stage_row = line.trim_start().starts_with("stage ");
    if stage_row && word == "step" {
        return Diag::error("E0101", "syntax error: a stage row's ODE steps are written `steps N`")
            .label(span_at(pos, word.len()), "did you mean `steps`?")
            .help("write `stage GRID FROM -> TO steps N`; `step` is the step of a range (`in 2..=8 step 2`)");
    }
    if stage_row && rest.starts_with(|c: char| c.is_ascii_digit()) {
        return Diag::error("E0101", "syntax error: a stage row's flow segment is written `FROM -> TO`")
            .label(at, "expected `->` before this number")
            .help("write `stage GRID FROM -> TO steps N`, e.g. `stage 4x4 0.6 -> 0.4 steps 4`");
    }
    const RESERVED: &[&str] =
        &["import", "extends", "in", "step", "stage", "params", "buffers", "for", "when", "where"];
    if RESERVED.contains(&word.as_str()) {
        let help =
            format!("`{word}` is a reserved word and cannot be used as a name here; reserved: {}", RESERVED.join(", "));
        return Diag { help: Some(help), ..d };
    }
    d
}

/// Why an import cannot be read: the label on the path and the help line.
struct Unreadable {
    label: String,
    help: String,
}

/// Turn a read error into a label and a concrete fix: the closest `.ecar` file
/// when the name is misspelt, the files inside when it names a directory.
fn explain_unreadable(path: &Path, spec: &str, msg: String, import: bool) -> Unreadable {
    let generic = if import {
        "paths are relative to the importing file; `std/...` names the standard library"
    } else {
        "check the path and that the file is a readable .ecar text file"
    };
    let ecar_files = |dir: &Path| -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.ends_with(".ecar"))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    };
    let spec_dir = spec.rfind('/').map(|i| &spec[..=i]).unwrap_or("");
    if path.is_dir() {
        let files = ecar_files(path);
        let inside = spec.trim_end_matches('/');
        let help = match files.as_slice() {
            [] => format!("import a .ecar file, not a directory ({inside}/ holds none)"),
            fs => format!(
                "import a .ecar file inside it: {}",
                fs.iter().take(8).map(|f| format!("\"{inside}/{f}\"")).collect::<Vec<_>>().join(", ")
            ),
        };
        return Unreadable { label: "this is a directory, not a file".into(), help };
    }
    if !path.exists() {
        let dir = path.parent().unwrap_or(Path::new("."));
        if !dir.is_dir() {
            return Unreadable {
                label: format!("no directory `{}`", spec_dir.trim_end_matches('/')),
                help: generic.into(),
            };
        }
        let want = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let files = ecar_files(dir);
        let help = match did_you_mean(&want, files.iter().map(String::as_str)) {
            Some(f) => format!("did you mean \"{spec_dir}{f}\"? ({generic})"),
            None if files.is_empty() => generic.to_string(),
            None => {
                format!("files next to it: {}; {generic}", files.iter().take(8).cloned().collect::<Vec<_>>().join(", "))
            }
        };
        return Unreadable { label: "no such file".into(), help };
    }
    Unreadable { label: format!("cannot read it: {msg}"), help: generic.into() }
}

/// Lexically normalise a relative path for display: drop `.`, fold `dir/..`.
fn normalize(p: &Path) -> String {
    use std::path::Component;
    let mut out: Vec<Component> = Vec::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir if matches!(out.last(), Some(Component::Normal(_))) => {
                out.pop();
            }
            c => out.push(c),
        }
    }
    let s: PathBuf = out.iter().collect();
    s.display().to_string()
}

fn invalid_utf8(id: FileId, at: usize) -> Diag {
    Diag::error("E0202", "file is not valid UTF-8")
        // The text kept is the lossy decoding: the bad byte became U+FFFD.
        .label(Span::new(id, at, at + '\u{FFFD}'.len_utf8()), "this byte is not UTF-8")
        .help("model files are UTF-8 text: re-save it as UTF-8, or check that it is not a binary file")
}

struct Resolver<'p> {
    program: &'p Program,
    /// Definitions being resolved (kind, name, the reference that led here, the
    /// definition's name), to detect `extends` and reference cycles.
    stack: Vec<(String, String, Span, Span)>,
    diags: Vec<Diag>,
}

impl<'p> Resolver<'p> {
    /// Merged body of `def`; `via` is the reference that led here (for cycle reports).
    fn definition(&mut self, def: &'p Definition, via: Span) -> MBody {
        let key = (def.kind.name.clone(), def.name.name.clone());
        // Resolution recurses along `extends` and references: bound the depth
        // rather than the native stack.
        if self.stack.len() >= MAX_DEFINITION_DEPTH {
            let mut d = Diag::error("E0209", format!("definitions nest more than {MAX_DEFINITION_DEPTH} deep"));
            // Point first at where the chain starts (usually the user's model).
            if let Some(start) = self.stack.get(1) {
                d = d.label(start.2, "the chain of `extends` and references starts here");
            }
            self.diags.push(
                d.label(via, format!("reference {MAX_DEFINITION_DEPTH} levels down"))
                    .help("flatten the chain of `extends` or component references"),
            );
            return MBody { entries: vec![], span: def.body.span };
        }
        if let Some(pos) = self.stack.iter().position(|(k, n, _, _)| (k, n) == (&key.0, &key.1)) {
            // The cycle's members, each with the reference that leads to it from
            // the member before. It is reported from the member defined first, so
            // that resolving any member of the cycle gives the same diagnostic
            // (and the session keeps one copy).
            let members: Vec<(&str, Span, Span)> = self.stack[pos..]
                .iter()
                .enumerate()
                .map(|(i, (_, n, v, d))| (n.as_str(), *d, if i == 0 { via } else { *v }))
                .collect();
            let k = members.len();
            let start = (0..k).min_by_key(|&i| (members[i].1.file, members[i].1.start)).expect("a cycle has a member");
            let (first, _, closing) = members[start];
            let chain: Vec<&str> = (0..=k).map(|j| members[(start + j) % k].0).collect();
            let message = match k {
                1 => format!("`{first}` is defined in terms of itself"),
                _ => {
                    let (last, rest) = chain[..k].split_last().expect("k >= 2");
                    format!("`{}` and `{last}` are defined in terms of each other", rest.join("`, `"))
                }
            };
            let last = members[(start + k - 1) % k].0;
            let closing_label = match k {
                1 => format!("`{first}` refers to itself"),
                _ => format!("`{last}` refers back to `{first}`"),
            };
            let mut d = Diag::error("E0206", message).label(closing, closing_label);
            for j in 1..k {
                let (name, _, reference) = members[(start + j) % k];
                let prev = members[(start + j - 1) % k].0;
                d = d.label(reference, format!("`{prev}` refers to `{name}`"));
            }
            self.diags.push(d.help(format!(
                "the cycle is {}; remove one `extends` or reference so that each definition builds on a finished one",
                chain.join(" -> ")
            )));
            return MBody { entries: vec![], span: def.body.span };
        }
        self.stack.push((key.0, key.1, via, def.name.span));
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
                let other_kind = program.defs.keys().find(|(k, n)| *n == name.name && k != kind).map(|(k, _)| k);
                d = match (
                    std_defines(kind, &name.name),
                    other_kind,
                    did_you_mean(&name.name, program.names_of_kind(kind)),
                ) {
                    (Some(file), _, _) => d.help(format!(
                        "`{}` is defined in the standard library: add `import \"std/{file}\"`",
                        name.name
                    )),
                    (None, Some(other), _) => d.help(format!(
                        "`{}` is defined as a `{other}`, not a `{kind}`; a {kind} is needed here",
                        name.name
                    )),
                    (None, None, Some(s)) => d.help(format!("did you mean `{s}`?")),
                    (None, None, None) => {
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
