//! `Ring` as an [`InRegion`] object: a platform layer places it like the fence and the
//! control register, and every attack on the header that `Ring::attach` refuses is refused
//! through the seam too, as the one `RegionError`.

mod common;

use common::{Forge, Region, config};
use voxring_core::region::{InRegion, RegionError};
use voxring_core::{ABI_VERSION, CACHE_LINE, MAGIC, Policy, Ring};

fn attach_via_seam(region: &mut Region, len: usize) -> Result<Ring, RegionError> {
    let p = region.ptr();
    // SAFETY: valid region that outlives the handle; its bytes are arbitrary (forged by the
    // tests), which attach must tolerate.
    unsafe { <Ring as InRegion>::attach(p, len) }
}

#[test]
fn the_seam_creates_and_attaches_a_ring() {
    let cfg = config(8, 2, Policy::Lossy);
    let need = <Ring as InRegion>::size_for(&cfg).unwrap();
    assert_eq!(need, cfg.region_size().unwrap());
    assert_eq!(<Ring as InRegion>::ALIGN, CACHE_LINE);
    let mut region = Region::new(need);
    let len = region.len();
    let p = region.ptr();
    // SAFETY: valid, aligned, unused region that outlives the handles.
    let ring = unsafe { <Ring as InRegion>::init_in(p, len, cfg) }.unwrap();
    let again = attach_via_seam(&mut region, len).unwrap();
    assert_eq!(again.config(), ring.config());
    // A configuration that is no layout is refused before the region is touched.
    let mut bad = cfg;
    bad.frames = 3;
    assert!(matches!(
        <Ring as InRegion>::size_for(&bad),
        Err(RegionError::Layout(_))
    ));
    // SAFETY: as above; the bad configuration is refused before any write.
    let r = unsafe { <Ring as InRegion>::init_in(p, len, bad) };
    assert!(matches!(r, Err(RegionError::Layout(_))));
}

#[test]
fn forged_headers_are_refused_through_the_seam() {
    let mut forge = Forge::new(&config(8, 2, Policy::Lossless));
    let len = forge.region.len();
    let mut with =
        |off: usize, val: &[u8], l: usize| attach_via_seam(forge.forged(off, val), l).map(|_| ());
    assert_eq!(
        with(0, &[0; 8], len),
        Err(RegionError::BadMagic {
            found: 0,
            expected: MAGIC
        })
    );
    assert_eq!(
        with(8, &(ABI_VERSION + 1).to_le_bytes(), len),
        Err(RegionError::UnsupportedVersion {
            found: ABI_VERSION + 1,
            expected: ABI_VERSION
        })
    );
    assert_eq!(
        with(12, &9u32.to_le_bytes(), len),
        Err(RegionError::BadField {
            field: "policy",
            found: 9
        })
    );
    // A forged slots_offset (the field the C ABI used to read by hand) is a mismatch.
    assert!(matches!(
        with(56, &[0xff], len),
        Err(RegionError::Mismatch {
            field: "slots_offset",
            ..
        })
    ));
    // Growing the capacity in the header past the mapping: the ring needs more than given.
    assert!(matches!(
        with(16, &1024u32.to_le_bytes(), len),
        Err(RegionError::Mismatch { .. })
    ));
    // The intact header over a truncated mapping.
    assert!(matches!(
        with(0, &MAGIC.to_le_bytes(), len - 128),
        Err(RegionError::TooSmall { .. })
    ));
    let e = with(12, &9u32.to_le_bytes(), len).unwrap_err().to_string();
    assert!(e.contains("policy") && e.contains("recreate"), "{e}");
}

#[test]
fn a_misplaced_or_null_region_is_refused() {
    let cfg = config(8, 1, Policy::Lossless);
    let mut region = Region::new(cfg.region_size().unwrap() + CACHE_LINE);
    let len = region.len();
    // SAFETY: 64 bytes into a valid region: still inside it, and refused before any access.
    let p = unsafe { region.ptr().add(64) };
    // SAFETY: as above.
    let r = unsafe { <Ring as InRegion>::init_in(p, len - 64, cfg) };
    assert!(matches!(
        r,
        Err(RegionError::Misaligned {
            align: CACHE_LINE,
            ..
        })
    ));
    // SAFETY: a null pointer is refused before any access.
    let r = unsafe { <Ring as InRegion>::attach(std::ptr::null_mut(), len) };
    assert!(matches!(r, Err(RegionError::Null)));
}
