//! What the C ABI's test files share: the library's last error and the assertions built on
//! it, unique segment names, and, for the tests that compile C against the committed header,
//! where the cdylib is and the compiler call (the child process read line by line and
//! stopped by PID is voxring-test-support's). Each test file includes this module; not all
//! use all of it.
#![allow(dead_code)]

use std::ffi::{CStr, CString, c_char};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};

use voxring_ffi::{VR_OK, vr_last_error};
#[allow(unused_imports)]
pub use voxring_test_support::{GIVE_UP, Proc};

/// The message of the library's last error on this thread.
pub fn last_error() -> String {
    let mut buf = [0 as c_char; 512];
    // SAFETY: `buf` is valid for its length.
    unsafe { vr_last_error(buf.as_mut_ptr(), buf.len()) };
    // SAFETY: vr_last_error NUL-terminates within the buffer.
    unsafe { CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// Asserts that a call returned `VR_OK`, with the library's last error as the message if not.
#[track_caller]
pub fn ok(code: i32) {
    assert_eq!(code, VR_OK, "{}", last_error());
}

/// Asserts that a call was refused with `code` and that the library's last error says `why`.
#[track_caller]
pub fn refused(got: i32, code: i32, why: &str) {
    let e = last_error();
    assert_eq!(got, code, "{e}");
    assert!(e.contains(why), "the last error does not say {why:?}: {e}");
}

/// A segment name no other test (of this process or another) uses: `<prefix>-<tag>-<pid>-<n>`.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    // Relaxed: only uniqueness matters.
    let n = N.fetch_add(1, Ordering::Relaxed);
    format!("{prefix}-{tag}-{}-{n}", std::process::id())
}

/// [`unique_name`] as a C string.
pub fn unique_c(prefix: &str, tag: &str) -> CString {
    CString::new(unique_name(prefix, tag)).expect("no NUL")
}

/// `target/<profile>`: where the peer binary of this crate is, and where `cargo build
/// --workspace` leaves the `voxring` binary and the cdylib.
pub fn profile_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_voxring-ffi-peer"))
        .parent()
        .expect("the peer binary has a directory")
        .to_path_buf()
}

/// The directory holding `libvoxring_ffi.so`: the profile directory (after `cargo build`) or
/// its `deps/` (where `cargo test` leaves the cdylib without copying it up).
pub fn lib_dir() -> PathBuf {
    let dir = profile_dir();
    [dir.clone(), dir.join("deps")]
        .into_iter()
        .find(|d| d.join("libvoxring_ffi.so").exists())
        .unwrap_or_else(|| {
            panic!(
                "libvoxring_ffi.so is in neither {0} nor {0}/deps: cargo builds the cdylib with \
                 the crate's tests; run `cargo build -p voxring-ffi`",
                dir.display()
            )
        })
}

/// Compiles `source` (relative to the crate) with the strict `cc` (or `$CC`), against
/// the committed header and the cdylib, into `dir/<out>`; returns the program's path.
pub fn build_c(dir: &Path, source: &str, out: &str, defines: &[&str]) -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let lib = lib_dir();
    let out = dir.join(out);
    let status = voxring_test_support::strict_cc()
        .arg("-O1")
        .args(defines)
        .arg("-I")
        .arg(crate_dir.join("include"))
        .arg(crate_dir.join(source))
        .arg("-L")
        .arg(&lib)
        .arg(format!("-Wl,-rpath,{}", lib.display()))
        .arg("-lvoxring_ffi")
        .arg("-o")
        .arg(&out)
        .status()
        .expect("cc runs (install a C compiler: apt-get install gcc)");
    assert!(status.success(), "compiling {source} failed");
    out
}
