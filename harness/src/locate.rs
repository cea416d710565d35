//! Where the program finds the files of voxring's C bindings at run time: the C library
//! `libvoxring_ffi.so` and the C header and sources of `platform-linux/ffi`, for `voxring bench
//! ipc` (`c-voxring`). (The Python package is installed into the interpreter that runs it:
//! see `run::python`.)
//!
//! - the library: `$VOXRING_LIB`, else `libvoxring_ffi.so` next to this program (its
//!   `target/<profile>` folder), in its `deps/` (where `cargo test` leaves the cdylib), or in
//!   the profile folder above a test binary's `deps/`;
//! - the sources of `platform-linux/ffi` (`include/voxring.h`, `c/bench_consumer.c`):
//!   `$VOXRING_FFI_DIR`, else the source tree this binary was built from, else the tree around
//!   a binary moved with it (`<repo>/target/<profile>/voxring`).

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};

/// The file name of voxring's C library.
pub const LIBRARY: &str = "libvoxring_ffi.so";

/// `libvoxring_ffi.so`: `$VOXRING_LIB` (which must exist), else next to this program.
pub fn library() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("VOXRING_LIB") {
        let p = PathBuf::from(p);
        if p.is_file() {
            return Ok(p);
        }
        bail!(
            "VOXRING_LIB={} does not exist: point it at a built {LIBRARY}, or unset it to use \
             the one next to this program",
            p.display()
        );
    }
    let exe = std::env::current_exe().context("finding this program")?;
    let dir = exe.parent().context("this program has no folder")?;
    let deps = dir.join("deps");
    for d in [Some(dir), Some(deps.as_path()), dir.parent()]
        .into_iter()
        .flatten()
    {
        let p = d.join(LIBRARY);
        if p.is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{LIBRARY} is not next to {} (build the bindings with the same profile: \
         `cargo build --release -p voxring-ffi`, or set VOXRING_LIB)",
        exe.display()
    )
}

/// The folders of the source tree that may hold `rel`: the tree this binary was built from,
/// then the tree around the binary (`<repo>/target/<profile>/voxring`).
fn source_tree_candidates(rel: &str) -> Vec<PathBuf> {
    let mut out = vec![Path::new(env!("CARGO_MANIFEST_DIR")).join("..").join(rel)];
    if let Some(repo) = std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
    {
        out.push(repo.join(rel));
    }
    out
}

/// The text of `rel` (e.g. `include/voxring.h`) under `platform-linux/ffi`: from
/// `$VOXRING_FFI_DIR`, else the source tree.
pub fn ffi_source(rel: &str) -> anyhow::Result<String> {
    let candidates: Vec<PathBuf> = match std::env::var_os("VOXRING_FFI_DIR") {
        Some(d) => vec![PathBuf::from(d)],
        None => source_tree_candidates("platform-linux/ffi"),
    };
    for dir in &candidates {
        let p = dir.join(rel);
        if p.is_file() {
            return std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()));
        }
    }
    let tried: Vec<String> = candidates
        .iter()
        .map(|d| d.join(rel).display().to_string())
        .collect();
    bail!(
        "{rel} of platform-linux/ffi was not found (tried {}): run from voxring's source tree, \
         or set VOXRING_FFI_DIR to its platform-linux/ffi folder",
        tried.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ffi_header_and_bench_consumer_are_found_in_the_source_tree() {
        assert!(ffi_source("include/voxring.h").unwrap().contains("vr_"));
        assert!(!ffi_source("c/bench_consumer.c").unwrap().is_empty());
    }

    #[test]
    fn a_missing_ffi_file_says_what_was_tried_and_what_to_do() {
        let e = ffi_source("include/no-such-file.h")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-file.h") && e.contains("VOXRING_FFI_DIR"),
            "{e}"
        );
    }
}
