//! The exported ring's producer goes away and a new one comes up under the same name: the
//! exporter says so, follows the new ring under a new epoch, and the importer gets every frame
//! of both, bit-exact, with nothing counted lost. No assertion on elapsed time.

mod common;

use common::{
    EXE, FORMAT, GIVE_UP, assert_gone, attach_when_there, frame, produce, read_frames, source_ring,
    stats,
};
use voxring_bridge::topo::{Side, free_local_port};

fn side(args: &[&str], ready: &str) -> Side {
    let mut c = std::process::Command::new(EXE);
    c.args(args);
    let mut s = Side::spawn(args[0], c).unwrap();
    s.wait_line(ready, GIVE_UP).unwrap();
    s
}

#[test]
fn a_restarted_producer_is_followed_and_nothing_is_lost() {
    let t = format!("vxbr{}", std::process::id());
    let _trace = common::LeaveNoTrace(t.clone());
    let (src, dst, key) = (
        format!("{t}-src"),
        format!("{t}-dst"),
        format!("voxring/test/{t}"),
    );
    let locator = format!("tcp/127.0.0.1:{}", free_local_port().unwrap());
    let first = source_ring(&src);
    let mut ex = side(
        &["export", &src, "--key", &key, "--listen", &locator],
        "exporting",
    );
    let mut im = side(
        &["import", &key, "--ring", &dst, "--connect", &locator]
            .into_iter()
            .chain(["--format", FORMAT, "--ring-frames", "512"])
            .collect::<Vec<_>>(),
        "importing",
    );
    ex.wait_line("importer present", GIVE_UP).unwrap();
    let out = attach_when_there(&dst);
    let mut rx = out.consumer().unwrap();

    produce(&first, 0..100, 0);
    let mut got = read_frames(&mut rx, 100);
    drop(first);
    ex.wait_line("producer is gone", GIVE_UP).unwrap();
    let second = source_ring(&src);
    ex.wait_line("a producer is back", GIVE_UP).unwrap();
    produce(&second, 100..200, 0);
    got.extend(read_frames(&mut rx, 100));

    for (i, (meta, payload)) in got.iter().enumerate() {
        let (p, _, ts, _) = frame(i as u64);
        assert_eq!(payload, &p, "frame {i}: payload differs");
        assert_eq!(meta.timestamp_ns, ts, "frame {i}");
    }
    drop((rx, out, second));
    let s = stats(&mut im);
    let e = stats(&mut ex);
    assert_eq!(e["read"], 200, "exporter: {e}");
    assert_eq!(s["lost"], 0, "importer: {s}");
    assert!(s["restarts"].as_u64() >= Some(1), "importer: {s}");
    assert_gone(&[&src, &dst]);
}
