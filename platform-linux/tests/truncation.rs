//! A peer that truncates a named segment under us: the access that faults is caught, the
//! mapping is marked truncated, and the process lives on to report it.

mod common;

use voxring_linux::segment::{AttachOptions, CreateError, CreateOptions, SegmentFile};

#[test]
fn truncation_by_a_peer_is_survived_and_reported() {
    let (name, _c) = common::scratch("trunc");
    let size = 256 * 1024;
    let seg = SegmentFile::create_with(&name, size, &CreateOptions::default(), |_, m| {
        // SAFETY: the fresh mapping is `size` bytes long; nobody else has it yet.
        unsafe { std::ptr::write_bytes(m.as_ptr(), 0xAB, size) };
        Ok::<(), CreateError>(())
    })
    .unwrap();
    let att = SegmentFile::attach(&name, size as u64, &AttachOptions::default()).unwrap();
    assert!(att.mapping().is_watched());
    assert_eq!(att.check_size(), Ok(()));
    assert!(!att.mapping().is_truncated());

    // The "peer" shrinks the file to one page through its own descriptor.
    rustix::fs::ftruncate(seg.fd(), 4096).unwrap();
    assert_eq!(
        att.check_size(),
        Err(4096),
        "the slow-path check sees the new size"
    );

    // Touch a byte past the new end: without the handler this is a fatal SIGBUS.
    // SAFETY: the address is inside att's mapping (size bytes); the page behind it is gone,
    // which is exactly what this test exercises; the SIGBUS handler remaps it.
    let v = unsafe { std::ptr::read_volatile(att.mapping().as_ptr().add(size - 1)) };
    assert_eq!(
        v, 0,
        "after the fault the mapping holds zero pages, never stale data"
    );
    assert!(att.mapping().is_truncated());
    assert!(att.check_size().is_err());
    // The creator's mapping is untouched by the attacher's recovery until it faults too.
    assert!(!seg.mapping().is_truncated());
}
