//! `ecarc graph --format dot` of several programs: one DOT document that
//! `dot` reads, each program a cluster (`subgraph "cluster_K"`, labelled with
//! its name) and its node names prefixed with `pK_` (node names are global in
//! a DOT document). Each program's own text comes from
//! `ecarc_compiler::ir::dot::to_dot`, whose statements are one per line: a
//! node (`nI [...]`, `outK [...]`), an edge (`nI -> nJ [...]`) or the `node`
//! defaults.

/// One document of `parts`: `(cluster label, to_dot text)`. A single part is
/// returned as it is.
pub fn combine(title: &str, parts: &[(String, String)]) -> String {
    if let [(_, one)] = parts {
        return one.clone();
    }
    let mut out = format!("digraph {} {{\n  compound=true;\n", quoted(title));
    let mut defaults_done = false;
    for (k, (label, text)) in parts.iter().enumerate() {
        out.push_str(&format!("  subgraph {} {{\n    label={};\n", quoted(&format!("cluster_{k}")), quoted(label)));
        for line in text.lines() {
            let t = line.trim();
            if t.is_empty() || t == "}" || t.starts_with("digraph ") {
                continue;
            }
            if t.starts_with("node [") {
                if !defaults_done {
                    out.insert_str(out.find('\n').map_or(0, |i| i + 1), &format!("  {t}\n"));
                    defaults_done = true;
                }
                continue;
            }
            out.push_str("    ");
            out.push_str(&prefix_ids(t, &format!("p{k}_")));
            out.push('\n');
        }
        out.push_str("  }\n");
    }
    out.push_str("}\n");
    out
}

/// `a -> b [...]` or `a [...]` with `prefix` before `a` (and `b`).
fn prefix_ids(stmt: &str, prefix: &str) -> String {
    let ident_len = |s: &str| s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    let first = ident_len(stmt);
    if first == 0 {
        return stmt.to_string();
    }
    let (a, rest) = stmt.split_at(first);
    match rest.strip_prefix(" -> ") {
        Some(after) => {
            let (b, tail) = after.split_at(ident_len(after));
            format!("{prefix}{a} -> {prefix}{b}{tail}")
        }
        None => format!("{prefix}{a}{rest}"),
    }
}

fn quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_programs_make_one_document_with_distinct_node_names() {
        let a = "digraph \"a\" {\n  node [shape=box];\n  n0 [label=\"x -> y\"];\n  n0 -> n1 [label=\"0\"];\n  out0 [label=\"o\"];\n  n1 -> out0;\n}\n";
        let b = "digraph \"b\" {\n  node [shape=box];\n  n0 [label=\"z\"];\n}\n";
        let doc = combine("m", &[("a".into(), a.into()), ("b".into(), b.into())]);
        assert_eq!(doc.matches("digraph").count(), 1, "{doc}");
        assert_eq!(doc.matches("node [shape=box]").count(), 1, "{doc}");
        assert!(doc.contains("subgraph \"cluster_0\" {\n    label=\"a\";"), "{doc}");
        assert!(doc.contains("p0_n0 [label=\"x -> y\"];"), "{doc}");
        assert!(doc.contains("p0_n0 -> p0_n1 [label=\"0\"];"), "{doc}");
        assert!(doc.contains("p0_n1 -> p0_out0;"), "{doc}");
        assert!(doc.contains("p1_n0 [label=\"z\"];"), "{doc}");
        assert_eq!(doc.matches('{').count(), doc.matches('}').count(), "{doc}");
        assert_eq!(combine("m", &[("a".into(), a.into())]), a);
    }
}
