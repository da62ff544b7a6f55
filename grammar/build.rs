//! Embeds the standard library (`models/std/*.ecar`) so that `import "std/..."`
//! works for an installed binary, wherever it runs from.
use std::{env, fs, path::Path};

fn main() {
    let std_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/std");
    println!("cargo:rerun-if-changed={}", std_dir.display());
    let mut entries: Vec<String> = Vec::new();
    if let Ok(rd) = fs::read_dir(&std_dir) {
        let mut names: Vec<_> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "ecar"))
            .collect();
        names.sort();
        for p in names {
            println!("cargo:rerun-if-changed={}", p.display());
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            let abs = fs::canonicalize(&p).unwrap();
            entries.push(format!("    ({name:?}, include_str!({:?})),\n", abs.display().to_string()));
        }
    }
    let out = Path::new(&env::var("OUT_DIR").unwrap()).join("std_files.rs");
    fs::write(out, format!("pub static STD_FILES: &[(&str, &str)] = &[\n{}];\n", entries.concat())).unwrap();
}
