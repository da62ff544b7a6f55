//! The one writer of every file ecarc writes (images, tensors, weights, build
//! artifacts, search results, plots, emitted and formatted model files).
//!
//! A run plans its outputs with [`Outputs`] before any compute:
//! - an output that is an input of the same run (the same device and inode,
//!   after following symlinks: `./m.ecar`, a hard link and a symlink all count)
//!   is refused, and so are two outputs naming the same file;
//! - an existing output must be a regular file (a directory, FIFO, device or
//!   socket is refused, never replaced) and writable (a read-only file, mode
//!   without any write bit, is refused even for root; so is a file the user may
//!   not open for writing);
//! - a symlink is written through: its target is replaced, the link stays;
//! - the temporary file (`.NAME.XXXXXX.ecarc-tmp` beside the target) is created
//!   right away, so an unwritable or missing directory fails before the work.
//!
//! The data go to the temporary files ([`Outputs::write_with`]), which are
//! synced and then renamed over their targets together by [`Outputs::commit`]:
//! all outputs of a run are written, or none (a failed rename puts back what
//! was there). Temporary files are removed on any error, when [`Outputs`] is
//! dropped, and on Ctrl-C / SIGTERM: the binary's signal handler calls
//! [`abandon_and_exit`], which removes every pending temporary file of the
//! process before exiting.

use crate::error::{Result, RuntimeError};
use std::fs::{File, Metadata, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

/// The suffix of temporary output files.
pub const TEMP_SUFFIX: &str = ".ecarc-tmp";

/// Symlinks followed at most (as the kernel's `ELOOP` limit).
const MAX_LINKS: usize = 40;

/// Temporary files (and backups of replaced files) not yet renamed or removed,
/// for [`abandon_and_exit`]. A commit holds the lock while it renames, so a
/// signal never interrupts a half-done commit.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

fn pending() -> MutexGuard<'static, Vec<PathBuf>> {
    PENDING.lock().unwrap_or_else(|e| e.into_inner())
}

fn forget(list: &mut Vec<PathBuf>, path: &Path) {
    list.retain(|p| p != path);
}

/// Remove every pending temporary file of this process and exit with `code`
/// (130 after SIGINT, 143 after SIGTERM, 141 on a closed stdout). The lock is
/// held until the process ends, so no commit starts or half-finishes meanwhile.
pub fn abandon_and_exit(code: i32) -> ! {
    let list = pending();
    for p in list.iter() {
        let _ = std::fs::remove_file(p);
    }
    std::process::exit(code)
}

/// Which output of an [`Outputs`] plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Slot(usize);

/// The identity of an existing file (device and inode, after symlinks).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileKey(u64, u64);

#[cfg(unix)]
fn key_of(meta: &Metadata) -> Option<FileKey> {
    use std::os::unix::fs::MetadataExt;
    Some(FileKey(meta.dev(), meta.ino()))
}

#[cfg(not(unix))]
fn key_of(_: &Metadata) -> Option<FileKey> {
    None
}

struct Planned {
    /// The path as given (for messages).
    shown: PathBuf,
    /// What `--flag` names it (for messages).
    what: String,
    /// The file replaced: `shown` with symlinks followed.
    target: PathBuf,
    /// The target's identity and permissions, when it exists.
    existing: Option<(Option<FileKey>, std::fs::Permissions)>,
    tmp: PathBuf,
    written: bool,
}

/// The outputs of one run: checked and given their temporary files before the
/// work, written during it, renamed together at the end (see the module docs).
#[derive(Default)]
pub struct Outputs {
    inputs: Vec<(PathBuf, FileKey)>,
    planned: Vec<Planned>,
}

/// `path` with symlinks followed to the file they name (which need not exist).
fn resolve_links(path: &Path) -> std::result::Result<PathBuf, String> {
    let mut p = path.to_path_buf();
    for _ in 0..MAX_LINKS {
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.file_type().is_symlink() => {
                let to = std::fs::read_link(&p).map_err(|e| format!("cannot read the link: {e}"))?;
                p = if to.is_absolute() { to } else { parent_dir(&p).join(to) };
            }
            _ => return Ok(p),
        }
    }
    Err(format!("more than {MAX_LINKS} symlinks in a row"))
}

/// The directory holding `path` (`.` for a bare file name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A path to compare not-yet-existing outputs by: the canonical directory
/// and the file name.
fn normalised(target: &Path) -> PathBuf {
    let dir = parent_dir(target);
    let dir = dir.canonicalize().unwrap_or(dir);
    match target.file_name() {
        Some(n) => dir.join(n),
        None => dir,
    }
}

impl Outputs {
    pub fn new() -> Outputs {
        Outputs::default()
    }

    /// Record an input of this run: no output may be the same file. A path
    /// that does not exist (or that its reader will refuse) is skipped.
    pub fn input(&mut self, path: &Path) -> &mut Outputs {
        if let Some(key) = std::fs::metadata(path).ok().as_ref().and_then(key_of) {
            self.inputs.push((path.to_path_buf(), key));
        }
        self
    }

    /// Record several inputs ([`Outputs::input`]).
    pub fn inputs<'a>(&mut self, paths: impl IntoIterator<Item = &'a Path>) -> &mut Outputs {
        for p in paths {
            self.input(p);
        }
        self
    }

    /// Plan the output `path`, named `what` in messages (`-o`, `--png`): check
    /// it (see the module docs) and its extension (one of `extensions`,
    /// lowercase without the dot; empty = any), and create its temporary file.
    pub fn add(&mut self, what: &str, path: &Path, extensions: &[&str]) -> Result<Slot> {
        let err = |why: String| RuntimeError::File { path: path.display().to_string(), why };
        let name_ok = path.file_name().is_some() && !path.as_os_str().to_string_lossy().ends_with('/');
        if !name_ok {
            return Err(err(format!("{what} must name a file")));
        }
        if !extensions.is_empty() {
            let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
            if !ext.as_deref().is_some_and(|e| extensions.contains(&e)) {
                let list: Vec<String> = extensions.iter().map(|e| format!(".{e}")).collect();
                return Err(err(format!(
                    "{what} writes {}; give a file name ending in {}",
                    describe_extensions(extensions),
                    list.join(" or ")
                )));
            }
        }
        let target = resolve_links(path).map_err(err)?;
        let via =
            if target != path { format!(" (the symlink's target `{}`)", target.display()) } else { String::new() };
        let existing = match std::fs::metadata(&target) {
            Ok(meta) => {
                if !meta.is_file() {
                    return Err(err(format!(
                        "{what} names {}{via}; ecarc writes only regular files and never replaces anything else",
                        ecarc_grammar::resolve::file_kind(&meta)
                    )));
                }
                if meta.permissions().readonly() {
                    return Err(err(format!(
                        "{what} names a read-only file{via}; ecarc does not replace it (make it writable or remove it first)"
                    )));
                }
                if let Err(e) = OpenOptions::new().write(true).open(&target) {
                    return Err(err(format!("{what}{via} is not writable: {e}")));
                }
                let key = key_of(&meta);
                if let Some(k) = key {
                    if let Some((input, _)) = self.inputs.iter().find(|(_, ik)| *ik == k) {
                        return Err(err(format!(
                            "{what} is the input `{}` of this run{via}; writing it would destroy the input: give another file name",
                            input.display()
                        )));
                    }
                }
                Some((key, meta.permissions()))
            }
            Err(_) => None,
        };
        for other in &self.planned {
            let same = match (&existing, &other.existing) {
                (Some((Some(a), _)), Some((Some(b), _))) => a == b,
                (None, None) => normalised(&target) == normalised(&other.target),
                _ => false,
            };
            if same {
                return Err(err(format!("{what} and {} name the same file `{}`", other.what, other.shown.display())));
            }
        }
        let dir = parent_dir(&target);
        match std::fs::metadata(&dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => return Err(err(format!("cannot write {what}: `{}` is not a directory", dir.display()))),
            Err(_) => {
                return Err(err(format!("cannot write {what}: the directory `{}` does not exist", dir.display())))
            }
        }
        let tmp = create_temp(&dir, &target).map_err(|e| err(format!("cannot write {what}: {e}")))?;
        self.planned.push(Planned {
            shown: path.to_path_buf(),
            what: what.to_string(),
            target,
            existing,
            tmp,
            written: false,
        });
        Ok(Slot(self.planned.len() - 1))
    }

    /// The path of an output as given.
    pub fn path(&self, slot: Slot) -> &Path {
        &self.planned[slot.0].shown
    }

    /// Write one output: `write` gets the path of its temporary file (which
    /// exists, empty) and fills it; the data are then synced to disk.
    pub fn write_with(
        &mut self,
        slot: Slot,
        write: impl FnOnce(&Path) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let p = &mut self.planned[slot.0];
        let err = |why: String| RuntimeError::File { path: p.shown.display().to_string(), why };
        write(&p.tmp).map_err(err)?;
        let f = File::open(&p.tmp).map_err(|e| err(format!("cannot write: {e}")))?;
        f.sync_all().map_err(|e| err(format!("cannot write: {e}")))?;
        if let Some((_, perms)) = &p.existing {
            // The replaced file keeps its permissions.
            let _ = std::fs::set_permissions(&p.tmp, perms.clone());
        }
        p.written = true;
        Ok(())
    }

    /// Write one output from bytes ([`Outputs::write_with`]).
    pub fn write_bytes(&mut self, slot: Slot, bytes: &[u8]) -> Result<()> {
        self.write_with(slot, |tmp| std::fs::write(tmp, bytes).map_err(|e| format!("cannot write: {e}")))
    }

    /// Rename every output over its target: all of them, or (when a rename
    /// fails) none, with the files that were there put back. Every output
    /// must have been written.
    pub fn commit(mut self) -> Result<()> {
        if let Some(p) = self.planned.iter().find(|p| !p.written) {
            return Err(RuntimeError::Invalid(format!("{} `{}` was never written", p.what, p.shown.display())));
        }
        let mut list = pending();
        let mut done: Vec<(usize, Option<PathBuf>)> = Vec::new();
        let mut failure = None;
        for (i, p) in self.planned.iter().enumerate() {
            // A hard link to the file being replaced, to put it back if a later rename fails.
            let backup = if p.target.exists() {
                let b = p.tmp.with_extension("ecarc-bak");
                std::fs::hard_link(&p.target, &b).ok().map(|_| {
                    list.push(b.clone());
                    b
                })
            } else {
                None
            };
            if let Err(e) = std::fs::rename(&p.tmp, &p.target) {
                if let Some(b) = &backup {
                    let _ = std::fs::remove_file(b);
                    forget(&mut list, b);
                }
                failure =
                    Some(RuntimeError::File { path: p.shown.display().to_string(), why: format!("cannot write: {e}") });
                break;
            }
            forget(&mut list, &p.tmp);
            done.push((i, backup));
        }
        if failure.is_some() {
            for (i, backup) in done.iter().rev() {
                let target = &self.planned[*i].target;
                match backup {
                    Some(b) => {
                        let _ = std::fs::rename(b, target);
                        forget(&mut list, b);
                    }
                    None => {
                        let _ = std::fs::remove_file(target);
                    }
                }
            }
        } else {
            for (_, backup) in &done {
                if let Some(b) = backup {
                    let _ = std::fs::remove_file(b);
                    forget(&mut list, b);
                }
            }
            // The renames themselves survive a crash once their directories are synced.
            for p in &self.planned {
                if let Ok(d) = File::open(parent_dir(&p.target)) {
                    let _ = d.sync_all();
                }
            }
        }
        drop(list);
        if failure.is_none() {
            self.planned.clear();
        }
        // After a failure `drop` removes the temporary files not renamed.
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        if self.planned.is_empty() {
            return;
        }
        let mut list = pending();
        for p in &self.planned {
            let _ = std::fs::remove_file(&p.tmp);
            forget(&mut list, &p.tmp);
        }
    }
}

/// Create an empty temporary file for `target` in `dir` and register it.
fn create_temp(dir: &Path, target: &Path) -> std::result::Result<PathBuf, String> {
    let name = target.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let prefix = format!(".{name}.");
    let mut builder = tempfile::Builder::new();
    builder.prefix(&prefix).suffix(TEMP_SUFFIX);
    #[cfg(unix)]
    {
        // The umask applies, as for a file created directly (tempfile's default is 0600).
        use std::os::unix::fs::PermissionsExt;
        builder.permissions(std::fs::Permissions::from_mode(0o666));
    }
    // Registered under the lock, so that a signal arriving now removes it too.
    let mut list = pending();
    let tmp = builder.tempfile_in(dir).map_err(|e| match e.kind() {
        std::io::ErrorKind::PermissionDenied => format!("the directory `{}` is not writable ({e})", dir.display()),
        _ => format!("cannot create a file in `{}`: {e}", dir.display()),
    })?;
    let (_, path) = tmp.keep().map_err(|e| format!("cannot create a file in `{}`: {}", dir.display(), e.error))?;
    list.push(path.clone());
    Ok(path)
}

/// Check that files can be created in `dir` (named `what` in messages), for
/// outputs whose names are known only after the work (`search --emit`).
pub fn check_directory(what: &str, dir: &Path) -> Result<()> {
    let err = |why: String| RuntimeError::File { path: dir.display().to_string(), why };
    let probe = create_temp(dir, &dir.join("probe")).map_err(|e| err(format!("cannot write {what}: {e}")))?;
    let mut list = pending();
    let _ = std::fs::remove_file(&probe);
    forget(&mut list, &probe);
    Ok(())
}

fn describe_extensions(exts: &[&str]) -> String {
    let mut kinds: Vec<&str> = exts
        .iter()
        .map(|e| match *e {
            "png" => "a PNG image",
            "svg" => "an SVG picture",
            "safetensors" => "safetensors",
            "json" => "JSON",
            "csv" => "CSV",
            "ecar" => "a model file",
            _ => "a file",
        })
        .collect();
    kinds.dedup();
    kinds.join(" or ")
}

/// Write one file atomically through a one-output plan (see [`Outputs`]):
/// `write` fills the temporary file, which is then renamed over `path`.
pub fn write_file(path: &Path, write: impl FnOnce(&Path) -> std::result::Result<(), String>) -> Result<()> {
    let mut out = Outputs::new();
    let slot = out.add("the output", path, &[])?;
    out.write_with(slot, write)?;
    out.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
        v.sort();
        v
    }

    #[test]
    fn outputs_are_all_written_or_none() {
        let dir = tempfile::tempdir().unwrap();
        let (a, b) = (dir.path().join("a.json"), dir.path().join("b.json"));
        std::fs::write(&a, "old a").unwrap();
        let mut out = Outputs::new();
        let sa = out.add("-o", &a, &["json"]).unwrap();
        let sb = out.add("--other", &b, &["json"]).unwrap();
        // Both temporary files exist before anything is written.
        assert_eq!(names(dir.path()).len(), 3, "{:?}", names(dir.path()));
        out.write_bytes(sa, b"new a").unwrap();
        out.write_bytes(sb, b"new b").unwrap();
        out.commit().unwrap();
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(std::fs::read_to_string(&b).unwrap(), "new b");
        assert_eq!(names(dir.path()), ["a.json", "b.json"]);

        // A failed write: nothing changes, no temporary file is left.
        let mut out = Outputs::new();
        let sa = out.add("-o", &a, &[]).unwrap();
        let _sb = out.add("--other", &b, &[]).unwrap();
        out.write_bytes(sa, b"newer a").unwrap();
        assert!(out.write_with(_sb, |_| Err("no space".into())).is_err());
        drop(out);
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(names(dir.path()), ["a.json", "b.json"]);

        // A commit whose second rename fails puts the first file back.
        let c = dir.path().join("c.json");
        let mut out = Outputs::new();
        let sa = out.add("-o", &a, &[]).unwrap();
        let sc = out.add("--other", &c, &[]).unwrap();
        out.write_bytes(sa, b"newest a").unwrap();
        out.write_bytes(sc, b"c").unwrap();
        std::fs::create_dir(&c).unwrap(); // appears after the check: the rename fails
        std::fs::write(c.join("keep"), "x").unwrap();
        assert!(out.commit().is_err());
        assert_eq!(std::fs::read_to_string(&a).unwrap(), "new a");
        assert_eq!(names(dir.path()), ["a.json", "b.json", "c.json"]);
    }

    #[test]
    fn refused_outputs() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let input = d.join("m.ecar");
        std::fs::write(&input, "model").unwrap();
        let why = |r: Result<Slot>| match r {
            Err(RuntimeError::File { why, .. }) => why,
            other => panic!("{:?}", other.map(|_| ())),
        };
        let mut out = Outputs::new();
        out.input(&input);
        // The input itself, by another spelling, a hard link and a symlink.
        let dotted = d.join(".").join("m.ecar");
        assert!(why(out.add("-o", &dotted, &[])).contains("is the input"));
        std::fs::hard_link(&input, d.join("hard.ecar")).unwrap();
        assert!(why(out.add("-o", &d.join("hard.ecar"), &[])).contains("is the input"));
        #[cfg(unix)]
        {
            std::os::unix::fs::symlink(&input, d.join("link.ecar")).unwrap();
            assert!(why(out.add("-o", &d.join("link.ecar"), &[])).contains("is the input"));
        }
        // A directory, a wrong extension, a missing directory, a read-only file.
        assert!(why(out.add("-o", d, &[])).contains("a directory"));
        std::fs::create_dir(d.join("sub.png")).unwrap();
        assert!(why(out.add("-o", &d.join("sub.png"), &["png"])).contains("a directory"));
        assert!(why(out.add("-o", &d.join("x.jpg"), &["png"])).contains("ending in .png"));
        assert!(why(out.add("-o", &d.join("no/x.png"), &["png"])).contains("does not exist"));
        let ro = d.join("ro.png");
        std::fs::write(&ro, "keep").unwrap();
        let mut perms = std::fs::metadata(&ro).unwrap().permissions();
        perms.set_readonly(true);
        std::fs::set_permissions(&ro, perms).unwrap();
        assert!(why(out.add("-o", &ro, &["png"])).contains("read-only"));
        // Two outputs naming one file.
        out.add("-o", &d.join("a.png"), &["png"]).unwrap();
        assert!(why(out.add("--png", &d.join("./a.png"), &["png"])).contains("name the same file"));
        drop(out);
        assert_eq!(std::fs::read_to_string(&input).unwrap(), "model");
        assert_eq!(std::fs::read_to_string(&ro).unwrap(), "keep");
        assert!(!names(d).iter().any(|n| n.ends_with(TEMP_SUFFIX)), "{:?}", names(d));
    }

    #[cfg(unix)]
    #[test]
    fn a_symlink_is_written_through() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real.json");
        std::fs::write(&real, "old").unwrap();
        let link = dir.path().join("link.json");
        std::os::unix::fs::symlink("real.json", &link).unwrap();
        write_file(&link, |tmp| std::fs::write(tmp, "new").map_err(|e| e.to_string())).unwrap();
        assert!(std::fs::symlink_metadata(&link).unwrap().file_type().is_symlink());
        assert_eq!(std::fs::read_to_string(&real).unwrap(), "new");
        assert_eq!(names(dir.path()), ["link.json", "real.json"]);
    }
}
