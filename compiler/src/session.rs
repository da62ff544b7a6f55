//! One `ecarc check` run as a library call: load files, apply `--set`
//! overrides, resolve every model, expand search spaces and check each point.
//! The CLI, tests and later commands (build, search) all start here.

use crate::check::check_model;
use crate::check::memo::{check_point, Memo};
use crate::space;
use crate::spec::ModelSpec;
use ecarc_grammar::ast::Definition;
use ecarc_grammar::merged::{Component, MBody, MField, MValue};
use ecarc_grammar::{parser, Diag, Program, Span};
use std::path::Path;

/// Points of a search space checked by `check` (larger spaces are sampled evenly).
pub(crate) const MAX_CHECKED_POINTS: u128 = 100_000;
/// The work a space check may do, in declared tensors evaluated (summed over
/// the points checked, each point also counting [`POINT_WORK`]): about two
/// seconds of checking on the reference machine.
pub(crate) const WORK_BUDGET: u128 = 2_000_000;
/// The work of checking one point besides the tensors it evaluates afresh
/// (its own fields, cross-field rules, reused parts), in tensor-equivalents.
pub(crate) const POINT_WORK: u128 = 10;
/// The work one run (`check`, `build`, a run command) may do over all the
/// models of its files: tensors evaluated, search-space points included
/// (three spaces at their [`WORK_BUDGET`]).
pub(crate) const RUN_WORK_BUDGET: u128 = 3 * WORK_BUDGET;
/// The declared tensors of the checked models one run keeps (each model also
/// counting [`MODEL_WORK`]): about half a GB of specs, a few seconds of checking.
/// Together with [`RUN_WORK_BUDGET`] this bounds what any input file, up to its
/// 16 MiB, makes `check` do: a file of 168,000 small models is refused in
/// seconds (E0210) instead of exhausting memory.
pub(crate) const MAX_KEPT_TENSORS: u128 = 200_000;
/// What checking and keeping one model costs besides its tensors.
pub(crate) const MODEL_WORK: u128 = 100;
/// An axis with more options is shown abbreviated (first and last options).
pub(crate) const MAX_AXIS_LABELS: usize = 12;

/// `--set path.to.key=value`, applied to every model after resolution.
#[derive(Clone, Debug)]
pub struct Override {
    pub path: Vec<String>,
    pub value: String,
}

impl std::str::FromStr for Override {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (k, v) = s.split_once('=').ok_or_else(|| format!("`{s}` is not KEY=VALUE (e.g. backbone.depth=20)"))?;
        let path: Vec<String> = k.trim().split('.').map(|p| p.trim().to_string()).collect();
        let ident_ok = |p: &str| {
            !p.is_empty()
                && p.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
                && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        };
        if !path.iter().all(|p| ident_ok(p)) {
            return Err(format!("`{k}` is not a key path (names joined by dots, e.g. sample.cfg)"));
        }
        Ok(Override { path, value: v.trim().to_string() })
    }
}

impl std::fmt::Display for Override {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.path.join("."), self.value)
    }
}

/// The longest variant name before it is shortened with a hash.
const MAX_VARIANT_NAME: usize = 120;

/// The name of model `base` with `--set` overrides applied, used in reports
/// and as the artifact's file name: `base` itself without overrides, else
/// `base+KEY=VALUE+...` in the order given, where each value keeps only
/// `[A-Za-z0-9.-]` (any other run of characters becomes one `_`, e.g.
/// `schedule.scales=[1, 2, 4]` -> `+schedule.scales=1_2_4`). A name longer
/// than 120 bytes keeps its first 103 and ends in `+` and 16 hex digits of a
/// hash of the overrides, so that distinct variants keep distinct names.
pub fn variant_name(base: &str, sets: &[Override]) -> String {
    let mut name = base.to_string();
    for o in sets {
        let mut value = String::new();
        for c in o.value.chars() {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                value.push(c);
            } else if !value.ends_with('_') {
                value.push('_');
            }
        }
        name.push_str(&format!("+{}={}", o.path.join("."), value.trim_matches('_')));
    }
    if name.len() <= MAX_VARIANT_NAME {
        return name;
    }
    // FNV-1a over the overrides as written: stable across runs and platforms.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for o in sets {
        for b in o.to_string().bytes().chain([0]) {
            h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    let mut cut = MAX_VARIANT_NAME - 17;
    while !name.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{}+{h:016x}", &name[..cut])
}

/// What checking one model gave.
#[derive(Debug)]
pub enum Outcome {
    Model(Box<ModelSpec>),
    Space(SpaceSummary),
    Failed,
}

#[derive(Debug)]
pub struct SpaceSummary {
    /// Paths of the fields with alternatives and their option labels; an axis
    /// with more than [`MAX_AXIS_LABELS`] options shows its first and last few
    /// around a `...` label.
    pub axes: Vec<(String, Vec<String>)>,
    pub total: u128,
    pub checked: u128,
    pub valid: u128,
    pub first_valid: Option<Box<ModelSpec>>,
}

#[derive(Debug)]
pub struct CheckedModel {
    pub name: String,
    pub span: Span,
    pub body: Option<MBody>,
    pub outcome: Outcome,
}

/// Everything one run produced: sources for rendering, diagnostics, models.
#[derive(Debug)]
pub struct Session {
    pub program: Program,
    pub diags: Vec<Diag>,
    pub models: Vec<CheckedModel>,
}

impl Session {
    pub fn has_errors(&self) -> bool {
        self.diags.iter().any(Diag::is_error)
    }
    pub fn render_diags(&self) -> String {
        ecarc_grammar::diag::render_all_plain(&self.diags, &self.program.sources)
    }
}

/// Check files from disk.
pub fn check_paths(paths: &[impl AsRef<Path>], sets: &[Override]) -> Session {
    let mut program = Program::new();
    let mut diags = Vec::new();
    for p in paths {
        diags.extend(program.load_path(p.as_ref()));
    }
    finish(program, diags, sets)
}

/// Check one source text (tests, editors). `name` is shown in diagnostics;
/// relative imports resolve from the current directory.
pub fn check_source(name: &str, text: &str, sets: &[Override]) -> Session {
    let mut program = Program::new();
    let diags = program.load_str(name, text);
    finish(program, diags, sets)
}

/// The root models of files, resolved (imports, `extends`, `--set`) but not
/// checked: what `ecarc search` starts from (it checks every design itself).
pub struct Loaded {
    pub program: Program,
    pub diags: Vec<Diag>,
    /// Each model's name and merged body (search spaces keep their alternatives).
    pub models: Vec<(ecarc_grammar::ast::Ident, MBody)>,
}

/// Load and resolve files without checking their models.
pub fn load_models(paths: &[impl AsRef<Path>], sets: &[Override]) -> Loaded {
    let mut program = Program::new();
    let mut diags = Vec::new();
    for p in paths {
        diags.extend(program.load_path(p.as_ref()));
    }
    let mut models = Vec::new();
    if !diags.iter().any(Diag::is_error) {
        let set_values = parse_sets(&mut program, sets, &mut diags);
        let defs: Vec<Definition> = program.root_definitions().into_iter().cloned().collect();
        for def in defs.iter().filter(|d| d.kind.name == "model") {
            match program.resolve(def) {
                Ok(mut body) => {
                    if apply_sets(&program, &mut body, &set_values, &mut diags) {
                        models.push((def.name.clone(), body));
                    }
                }
                Err(d) => diags.extend(d),
            }
        }
    }
    Loaded { program, diags, models }
}

type SetValue = (Vec<String>, ecarc_grammar::ast::FieldValue, ecarc_grammar::FileId);

/// Parse `--set` values once, each into its own source file.
fn parse_sets(program: &mut Program, sets: &[Override], diags: &mut Vec<Diag>) -> Vec<SetValue> {
    let mut set_values = Vec::new();
    for o in sets {
        let id = program.sources.add(format!("--set {}", o.path.join(".")), None, o.value.clone());
        match parser::parse_set_value(id, &o.value) {
            Ok(v) => set_values.push((o.path.clone(), v, id)),
            Err(d) => diags.extend(d.into_iter().map(|d| ecarc_grammar::resolve::explain_syntax_error(d, &o.value))),
        }
    }
    set_values
}

/// Apply `--set` values to a resolved model; false when one does not resolve.
fn apply_sets(program: &Program, body: &mut MBody, set_values: &[SetValue], diags: &mut Vec<Diag>) -> bool {
    let mut ok = true;
    for (path, value, id) in set_values {
        let key = path.last().expect("non-empty path");
        match program.resolve_value(key, value) {
            Ok(v) => {
                let whole = Span::new(*id, 0, program.sources.get(*id).text.len());
                set_path(body, path, v, whole);
            }
            Err(d) => {
                diags.extend(d);
                ok = false;
            }
        }
    }
    ok
}

/// Check an already loaded program.
pub(crate) fn finish(mut program: Program, mut diags: Vec<Diag>, sets: &[Override]) -> Session {
    let mut models = Vec::new();
    if diags.iter().any(Diag::is_error) {
        return Session { program, diags, models };
    }
    // Parse override values once, into their own source file.
    let set_values = parse_sets(&mut program, sets, &mut diags);
    let defs: Vec<Definition> = program.root_definitions().into_iter().cloned().collect();
    let (mut work, mut kept) = (0u128, 0u128);
    for (i, def) in defs.iter().enumerate() {
        if def.kind.name == "model" && (work > RUN_WORK_BUDGET || kept > MAX_KEPT_TENSORS) {
            let left = defs[i..].iter().filter(|d| d.kind.name == "model").count();
            diags.push(
                Diag::error("E0210", "too much to check in one run")
                    .label(def.name.span, format!("checking stops here: {left} more model(s) are not checked"))
                    .help(format!(
                        "the models before it declare {kept} tensors and took {work} tensor evaluations (one run checks at most {MAX_KEPT_TENSORS} and {RUN_WORK_BUDGET}); split the models over several files"
                    )),
            );
            break;
        }
        let body = match program.resolve(def) {
            Ok(b) => b,
            Err(d) => {
                diags.extend(d);
                if def.kind.name == "model" {
                    models.push(CheckedModel {
                        name: def.name.name.clone(),
                        span: def.name.span,
                        body: None,
                        outcome: Outcome::Failed,
                    });
                }
                continue;
            }
        };
        if def.kind.name != "model" {
            if !KINDS.contains(&def.kind.name.as_str()) {
                let d = Diag::error("E0208", format!("unknown definition kind `{}`", def.kind.name))
                    .label(def.kind.span, "not a kind");
                diags.push(match ecarc_grammar::diag::did_you_mean(&def.kind.name, KINDS.iter().copied()) {
                    Some(s) => d.help(format!("did you mean `{s}`? kinds: {}", KINDS.join(", "))),
                    None => d.help(format!("kinds: {}", KINDS.join(", "))),
                });
            }
            continue;
        }
        let mut body = body;
        if !apply_sets(&program, &mut body, &set_values, &mut diags) {
            continue;
        }
        let outcome = check_body(&program, &def.name, &body, &mut diags, &mut work);
        kept += MODEL_WORK
            + match &outcome {
                Outcome::Model(spec) => declared_tensors(spec),
                Outcome::Space(s) => s.first_valid.as_deref().map_or(0, declared_tensors),
                Outcome::Failed => 0,
            };
        models.push(CheckedModel { name: def.name.name.clone(), span: def.name.span, body: Some(body), outcome });
    }
    // A mistake in a shared definition shows up once, not once per model using it.
    let mut unique: Vec<Diag> = Vec::with_capacity(diags.len());
    for d in diags {
        let d = primary_in_roots(d, &program.roots);
        if !unique.contains(&d) {
            unique.push(d);
        }
    }
    Session { program, diags: unique, models }
}

/// When a rule involves fields in several files (a base in an imported file, an
/// override in the file being checked), point first at the one in a file given
/// on the command line: that is the line the user wrote and can change.
fn primary_in_roots(mut d: Diag, roots: &[ecarc_grammar::FileId]) -> Diag {
    let in_root = |l: &ecarc_grammar::diag::Label| roots.contains(&l.span.file);
    if d.labels.first().is_some_and(|l| !in_root(l)) {
        if let Some(i) = d.labels.iter().position(in_root) {
            let l = d.labels.remove(i);
            d.labels.insert(0, l);
        }
    }
    d
}

/// The definition kinds the language has.
pub(crate) const KINDS: &[&str] =
    &["model", "tokenizer", "backbone", "block", "head", "sampler", "schedule", "distill"];

/// The tensors a checked model declares (parameters and buffers, loops expanded).
fn declared_tensors(spec: &ModelSpec) -> u128 {
    let groups = spec.params.iter().chain(&spec.buffers).chain(&spec.tokenizer.params);
    groups.map(|g| g.tensors.len() as u128 * g.repeat.as_ref().map_or(1, |r| u128::from(r.count))).sum()
}

/// Check one model or search space, adding the tensors it evaluated to `spent`.
fn check_body(
    program: &Program,
    name: &ecarc_grammar::ast::Ident,
    body: &MBody,
    diags: &mut Vec<Diag>,
    spent: &mut u128,
) -> Outcome {
    let axes = match space::axes(body, &program.sources) {
        Ok(a) => a,
        Err(d) => {
            diags.extend(d);
            return Outcome::Failed;
        }
    };
    if axes.is_empty() {
        let (result, tensors) = crate::check::check_model_counted(name, body);
        *spent += u128::from(tensors) + MODEL_WORK;
        return match result {
            Ok(spec) => Outcome::Model(Box::new(spec)),
            Err(d) => {
                diags.extend(d);
                Outcome::Failed
            }
        };
    }
    let total = space::size(&axes);
    // A point budget and a work budget, so that a `check` always finishes in
    // seconds, also when the points grow (huge loops, many tensors): evenly
    // spaced points are visited coarse-to-fine (bit-reversed order), each one's
    // work is what its check actually evaluated, and checking stops when the
    // budget is spent. The points checked so far are spread over the space.
    let planned = total.min(MAX_CHECKED_POINTS);
    // Group failures: one diagnostic per distinct problem (code, message and
    // primary location), with how many points it breaks and a few examples. The
    // labels shown are those of the first example.
    type Assignment = Vec<(String, String)>;
    let mut groups: Vec<(Diag, u128, Vec<Assignment>)> = Vec::new();
    let mut valid = 0u128;
    let mut first_valid = None;
    let mut work = 0u128;
    let mut checked = 0u128;
    // Every point is checked by the checker's rules, with the parts of the check
    // whose inputs did not change reused (`check::memo`: the same results and
    // diagnostics as checking each point afresh); one body changed in place.
    let memo = Memo::for_space(body, &axes);
    let mut point = body.clone();
    let mut current = vec![u32::MAX; axes.len()];
    for k in coarse_to_fine(planned) {
        if work >= WORK_BUDGET {
            break;
        }
        let index = if total > planned { k * total / planned } else { k };
        let choice = space::choice(&axes, index);
        for (i, a) in axes.iter().enumerate() {
            if current[i] != choice[i] {
                space::apply(&mut point, a, choice[i] as usize);
                current[i] = choice[i];
            }
        }
        let before = memo.stats().tensors;
        let result = check_point(name, &point, &choice, &memo);
        work += POINT_WORK + (memo.stats().tensors - before) as u128;
        checked += 1;
        let assignment = || -> Assignment {
            axes.iter().zip(&choice).map(|(a, &c)| (a.path.join("."), a.labels[c as usize].clone())).collect()
        };
        match result {
            Ok(_) => {
                valid += 1;
                if first_valid.is_none() {
                    first_valid = check_model(name, &point).ok().map(Box::new);
                }
            }
            Err(ds) => {
                for d in ds {
                    let same =
                        |g: &Diag| g.code == d.code && g.message == d.message && g.primary_span() == d.primary_span();
                    match groups.iter_mut().find(|g| same(&g.0)) {
                        Some(g) => {
                            g.1 += 1;
                            if g.2.len() < 3 {
                                let a = assignment();
                                if !g.2.contains(&a) {
                                    g.2.push(a);
                                }
                            }
                        }
                        None => groups.push((d, 1, vec![assignment()])),
                    }
                }
            }
        }
    }
    for (d, count, examples) in groups {
        let shown: Vec<String> = examples
            .iter()
            .map(|ex| ex.iter().map(|(k, v)| format!("{k} = {v}")).collect::<Vec<_>>().join(", "))
            .collect();
        let more = if count > shown.len() as u128 { ", ..." } else { "" };
        let note = if count == checked {
            format!("this breaks all {checked} design points")
        } else {
            format!("this breaks {count} of {checked} design points: {}{more}", shown.join("; "))
        };
        let help = match &d.help {
            Some(h) => format!("{h}\n{note}"),
            None => note,
        };
        diags.push(Diag { help: Some(help), ..d });
    }
    if total > checked {
        diags.push(
            Diag::warning(
                "W0501",
                format!("the space has {total} points; {checked} spread evenly over it were checked"),
            )
            .label(name.span, "large search space")
            .help("`ecarc search` enumerates or samples the whole space"),
        );
    }
    *spent += work;
    Outcome::Space(SpaceSummary {
        axes: axes.iter().map(|a| (a.path.join("."), abbreviate(&a.labels))).collect(),
        total,
        checked,
        valid,
        first_valid,
    })
}

/// `0..n` in bit-reversed order (0, n/2, n/4, 3n/4, ...): every prefix is
/// spread over the whole range.
fn coarse_to_fine(n: u128) -> impl Iterator<Item = u128> {
    let bits = 128 - n.saturating_sub(1).leading_zeros();
    (0..1u128 << bits)
        .map(move |i| if bits == 0 { i } else { i.reverse_bits() >> (128 - bits) })
        .filter(move |&i| i < n)
}

/// The labels of a long axis: the first and last few around `...`.
pub(crate) fn abbreviate(labels: &[String]) -> Vec<String> {
    if labels.len() <= MAX_AXIS_LABELS {
        return labels.to_vec();
    }
    let (head, tail) = (MAX_AXIS_LABELS - 3, 2);
    let mut out: Vec<String> = labels[..head].to_vec();
    out.push(format!("... ({} more) ...", labels.len() - head - tail));
    out.extend_from_slice(&labels[labels.len() - tail..]);
    out
}

/// Set `path` in a merged body: intermediate components are created inline
/// when missing; an inline component merges into an existing one.
pub(crate) fn set_path(body: &mut MBody, path: &[String], value: MValue, span: Span) {
    let key = ecarc_grammar::ast::Ident { name: path[0].clone(), span };
    if path.len() == 1 {
        // The same rules as `extends`: a field replaces, an inline component
        // merges, and any way of listing stages replaces the others.
        let over = MBody { entries: vec![ecarc_grammar::merged::MEntry::Field(MField { key, value, span })], span };
        let keep = body.span;
        *body = body.merge(&over);
        body.span = keep;
        return;
    }
    if body.field(&path[0]).is_none_or(|f| !matches!(f.value, MValue::Component(_))) {
        let inner = MValue::Component(Component { bases: vec![], body: MBody { entries: vec![], span }, span });
        match body.field_mut(&path[0]) {
            Some(f) => f.value = inner,
            None => body.entries.push(ecarc_grammar::merged::MEntry::Field(MField { key, value: inner, span })),
        }
    }
    if let Some(MField { value: MValue::Component(c), .. }) = body.field_mut(&path[0]) {
        set_path(&mut c.body, &path[1..], value, span);
    }
}

#[cfg(test)]
mod variant_name_tests {
    use super::*;

    fn sets(list: &[&str]) -> Vec<Override> {
        list.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn variant_names_are_file_name_safe_and_distinct() {
        assert_eq!(variant_name("var_d16", &[]), "var_d16");
        assert_eq!(variant_name("var_d16", &sets(&["backbone.depth=20"])), "var_d16+backbone.depth=20");
        assert_eq!(
            variant_name("m", &sets(&["schedule.scales=[1, 2, 4, 8, 16]", "sample.cfg=1e-3"])),
            "m+schedule.scales=1_2_4_8_16+sample.cfg=1e-3"
        );
        let long: Vec<Override> = sets(&["schedule.scales=[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31, 32]"]);
        let mut other = long.clone();
        other[0].value.push_str(", 33");
        let (a, b) = (variant_name("m", &long), variant_name("m", &other));
        assert!(a.len() <= MAX_VARIANT_NAME && b.len() <= MAX_VARIANT_NAME, "{a} {b}");
        assert_ne!(a, b);
        for n in [&a, &b] {
            assert!(n.chars().all(|c| c.is_ascii_alphanumeric() || "._-+=".contains(c)), "{n}");
        }
    }
}
