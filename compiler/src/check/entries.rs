//! The reference implementations' names for an entry point's tensors
//! (`forward { labels "label_B"  x "x_BLCv_wo_first_l" }`): `ecarc forward`
//! takes and writes the plan's ports under these names, as checkpoint keys
//! name the weights. The ports are those a forward plan may have
//! ([`FORWARD_PORTS`], the lowering's list): a model names the ones it uses;
//! a name for a port its plan lacks (a DD student inheriting its teacher's
//! `tokens "idx"`) is inert. Each reference name is used once.

use super::Checker;
use crate::eval::type_error;
use crate::lower::plans::FORWARD_PORTS;
use crate::reader::Reader;
use ecarc_grammar::ast::ExprKind;
use ecarc_grammar::diag::did_you_mean;
use ecarc_grammar::merged::MValue;
use ecarc_grammar::{Diag, Span};
use std::collections::BTreeMap;

/// Model keys that name an entry point's tensors, and the plan each renames.
pub const ENTRY_KEYS: &[(&str, &str)] = &[("forward", "forward"), ("forward_guided", "forward.guided")];

/// Longest tensor name accepted (a safetensors key).
const MAX_NAME: usize = 256;

impl<'a> Checker<'a> {
    /// Plan name -> port -> reference name, from the model's entry keys.
    pub(super) fn entry_names(&self, m: &Reader<'a>) -> BTreeMap<String, BTreeMap<String, String>> {
        let mut out = BTreeMap::new();
        for &(key, plan) in ENTRY_KEYS {
            let Some((c, _)) = m.component(key, false) else { continue };
            let mut names = BTreeMap::new();
            let mut taken: BTreeMap<&str, Span> = BTreeMap::new();
            for f in c.body.fields() {
                if !FORWARD_PORTS.contains(&f.key.name.as_str()) {
                    let hint = did_you_mean(&f.key.name, FORWARD_PORTS.iter().copied())
                        .map(|s| format!("did you mean `{s}`? "))
                        .unwrap_or_default();
                    m.error(
                        Diag::error("E0603", format!("`{}` is not a tensor of an entry point", f.key.name))
                            .label(f.key.span, "not an input or result of `forward`")
                            .help(format!("{hint}the ports are: {}", FORWARD_PORTS.join(", "))),
                    );
                    continue;
                }
                let name = match &f.value {
                    MValue::Expr(e) => match &e.kind {
                        ExprKind::Str(s) => Some((s.as_str(), e.span)),
                        _ => None,
                    },
                    _ => None,
                };
                let Some((name, span)) = name else {
                    m.error(type_error(f.value.span(), "a tensor name in quotes", "another value").help(format!(
                        "write `{} \"NAME\"`: the name the reference code gives this tensor",
                        f.key.name
                    )));
                    continue;
                };
                if name.is_empty() || name.len() > MAX_NAME || name.chars().any(|ch| ch.is_control()) {
                    m.error(
                        Diag::error("E0441", format!("`{name}` is not a tensor name"))
                            .label(span, "here")
                            .help(format!("give 1 to {MAX_NAME} printable characters")),
                    );
                    continue;
                }
                if let Some(first) = taken.insert(name, span) {
                    m.error(
                        Diag::error("E0442", format!("two tensors of `{key}` are both called `{name}`"))
                            .label(first, "first here")
                            .label(span, "again here")
                            .help("each input and result of an entry point needs its own name"),
                    );
                    continue;
                }
                names.insert(f.key.name.clone(), name.to_string());
            }
            out.insert(plan.to_string(), names);
        }
        out
    }
}
