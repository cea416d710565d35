//! The committed C header `include/voxring.h` must be what cbindgen generates from the
//! current source: regenerate it and compare. Run with `VOXRING_BLESS=1` to rewrite it.

use std::path::PathBuf;

#[test]
fn committed_header_matches_cbindgen() {
    let crate_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let config = cbindgen::Config::from_file(crate_dir.join("cbindgen.toml"))
        .expect("cbindgen.toml is readable and valid");
    let bindings = cbindgen::Builder::new()
        .with_crate(&crate_dir)
        .with_config(config)
        .generate()
        .expect("cbindgen generates the header from src/");
    let mut generated = Vec::new();
    bindings.write(&mut generated);
    let generated = String::from_utf8(generated).expect("the header is UTF-8");
    let path = crate_dir.join("include/voxring.h");
    if std::env::var_os("VOXRING_BLESS").is_some() {
        std::fs::write(&path, &generated).expect("write include/voxring.h");
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "include/voxring.h is out of date with src/; regenerate it with \
         `VOXRING_BLESS=1 cargo test -p voxring-ffi --test header` and commit it"
    );
}
