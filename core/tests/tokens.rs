//! Grant tokens ([`WriteToken`], [`ReadToken`]): the by-value grants bindings hold between
//! calls. Each test plays a caller that misuses a token (reuses it, keeps one a later grant
//! replaced, hands one to another producer or consumer, commits too much) and shows the ring
//! refuses it with an error and moves nothing.

mod common;

use common::{config, make, make_pair};
use voxring_core::{CommitError, GrantError, Policy, ReleaseError};

#[test]
fn a_committed_write_token_used_again_is_stale_and_commits_nothing() {
    let (_region, ring) = make(&config(4, 1, Policy::Lossless));
    let mut p = ring.producer(1).unwrap();
    let t = p.grant_token(2).unwrap();
    let _ = p.commit_token(t, 2).unwrap();
    assert_eq!(ring.write_pos(), 2);
    assert_eq!(p.commit_token(t, 2).unwrap_err(), CommitError::StaleToken);
    assert!(p.token_frame_mut(t, 0).is_none());
    assert!(p.token_frames_mut(t).is_none());
    assert_eq!(
        ring.write_pos(),
        2,
        "a stale token moved the write position"
    );
}

#[test]
fn a_write_token_replaced_by_a_later_grant_is_stale() {
    let (_region, ring) = make(&config(4, 1, Policy::Lossless));
    let mut p = ring.producer(1).unwrap();
    let old = p.grant_token(1).unwrap();
    let new = p.grant_token(1).unwrap();
    // Same position and length: only the grant number tells them apart.
    assert_eq!((old.first_seq(), old.len()), (new.first_seq(), new.len()));
    assert_eq!(p.commit_token(old, 1).unwrap_err(), CommitError::StaleToken);
    // A borrowing grant replaces an open token too.
    drop(p.write_grant(1).unwrap());
    assert_eq!(p.commit_token(new, 1).unwrap_err(), CommitError::StaleToken);
    assert_eq!(ring.write_pos(), 0);
}

#[test]
fn a_write_token_of_another_producer_is_refused() {
    let cfg = config(4, 1, Policy::Lossless);
    let (_ra, ring_a) = make(&cfg);
    let (_rb, ring_b) = make(&cfg);
    let mut a = ring_a.producer(1).unwrap();
    let mut b = ring_b.producer(1).unwrap();
    let ta = a.grant_token(2).unwrap();
    let _tb = b.grant_token(2).unwrap();
    assert_eq!(b.commit_token(ta, 2).unwrap_err(), CommitError::StaleToken);
    assert!(b.token_frame_mut(ta, 0).is_none());
    assert_eq!(ring_b.write_pos(), 0);

    // The next producer of the same ring (another claim) does not accept its predecessor's.
    drop(a);
    let mut a2 = ring_a.producer(2).unwrap();
    let _t2 = a2.grant_token(2).unwrap();
    assert_eq!(a2.commit_token(ta, 2).unwrap_err(), CommitError::StaleToken);
    assert_eq!(ring_a.write_pos(), 0);
}

#[test]
fn committing_more_than_the_token_grants_fails_and_keeps_it_open() {
    let (_region, ring) = make(&config(4, 1, Policy::Lossless));
    let mut p = ring.producer(1).unwrap();
    let t = p.grant_token(2).unwrap();
    assert_eq!(
        p.commit_token(t, 3).unwrap_err(),
        CommitError::TooMany {
            commit: 3,
            granted: 2
        }
    );
    assert_eq!(ring.write_pos(), 0);
    let _ = p.commit_token(t, 1).unwrap();
    assert_eq!(ring.write_pos(), 1);
}

#[test]
fn read_tokens_are_checked_like_write_tokens() {
    let (_region, ring, mut p, mut c) = make_pair(&config(4, 2, Policy::Lossless));
    let mut other = ring.consumer(3).unwrap();
    let t = p.grant_token(3).unwrap();
    for i in 0..3 {
        let mut f = p.token_frame_mut(t, i).unwrap();
        f.payload_mut()[0] = 10 + i as u8;
    }
    assert!(p.token_frame_mut(t, 3).is_none());
    let _ = p.commit_token(t, 3).unwrap();

    let r = c.read_token(8).unwrap();
    let ro = other.read_token(8).unwrap();
    assert_eq!((r.first_seq(), r.len()), (ro.first_seq(), ro.len()));
    let firsts: Vec<u8> = c.token_frames(r).unwrap().map(|f| f.payload()[0]).collect();
    assert_eq!(firsts, [10, 11, 12]);
    // Another consumer's token, even for the same frames, is refused.
    assert!(c.token_frame(ro, 0).is_none());
    assert_eq!(
        c.release_token(ro, 1).unwrap_err(),
        ReleaseError::StaleToken
    );
    assert_eq!(c.read_pos(), 0);
    // Too many keeps the token open; then a release works once.
    assert!(matches!(
        c.release_token(r, 4),
        Err(ReleaseError::TooMany { .. })
    ));
    let _ = c.release_token(r, 2).unwrap();
    assert_eq!(c.read_pos(), 2);
    assert_eq!(c.release_token(r, 1).unwrap_err(), ReleaseError::StaleToken);
    assert_eq!(c.read_pos(), 2);
    // A new grant replaces the open token.
    let r1 = c.read_token(1).unwrap();
    let _ = c.read_grant(1).unwrap();
    assert_eq!(
        c.release_token(r1, 1).unwrap_err(),
        ReleaseError::StaleToken
    );
}

#[test]
fn an_open_read_token_keeps_a_lossless_producer_off_its_frames() {
    let (_region, _, mut p, mut c) = make_pair(&config(4, 1, Policy::Lossless));
    let t = p.grant_token(4).unwrap();
    let _ = p.commit_token(t, 4).unwrap();
    let r = c.read_token(4).unwrap();
    assert_eq!(p.grant_token(1).unwrap_err(), GrantError::Full);
    let _ = c.release_token(r, 2).unwrap();
    assert_eq!(p.grant_token(4).unwrap().len(), 2);
}

#[test]
fn geometry_accessors_match_where_grants_write() {
    let (mut region, ring) = make(&config(4, 1, Policy::Lossless));
    let mut p = ring.producer(1).unwrap();
    let t = p.grant_token(4).unwrap();
    for i in 0..4 {
        let mut f = p.token_frame_mut(t, i).unwrap();
        f.payload_mut().fill(0xA0 + i as u8);
    }
    let _ = p.commit_token(t, 4).unwrap();
    let pb = ring.payload_bytes() as usize;
    let (slots, stride, off) = (ring.slots_offset(), ring.slot_size(), ring.payload_offset());
    drop(p);
    let bytes = region.bytes();
    for seq in 0..8u64 {
        let at = ring.frame_payload_offset(seq);
        assert_eq!(at, slots + (seq as usize % 4) * stride + off);
        assert!(
            bytes[at..at + pb]
                .iter()
                .all(|&b| b == 0xA0 + (seq % 4) as u8)
        );
    }
}
