//! Attacks and failures: a side killed with SIGKILL and brought back, a hostile publisher on
//! the key, and where the bridge listens by default. No assertion on elapsed time.

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use voxring_bridge::Event;
use voxring_bridge::import::{ImportOptions, Importer};
use voxring_bridge::net::{self, Endpoints};
use voxring_bridge::topo::{NetnsPair, Side, export_args, free_local_port, import_args};
use voxring_core::{FrameFlags, Policy, ReadError, RingConfig, SampleFormat};
use voxring_linux::ring::{FramesWait, Segment};
use voxring_linux::segment::{AttachOptions, CreateOptions};
use zenoh::Wait;

const EXE: &str = env!("CARGO_BIN_EXE_voxring-bridge");
const GIVE_UP: Duration = Duration::from_secs(60);

fn source_ring(name: &str) -> Segment {
    let cfg = RingConfig {
        frames: 256,
        samples_per_frame: 32,
        channels: 1,
        format: SampleFormat::S16,
        sample_rate: 16_000,
        max_consumers: 4,
        policy: Policy::Lossless,
    };
    Segment::create(name, &cfg, &CreateOptions::default()).unwrap()
}

/// Starts the bridge as `name`, its command line set by `args`, and waits for its `ready` line.
fn spawn(name: &str, args: &dyn Fn(&mut Command), ready: &str) -> Side {
    let mut c = Command::new(EXE);
    args(&mut c);
    let mut s = Side::spawn(name, c).unwrap();
    s.wait_line(ready, GIVE_UP).unwrap();
    s
}

/// Pushes frames at 2 ms until a fresh consumer of the imported ring `dst` gets one (frames
/// sent before the path is up are lost on the way, which is what is being tested).
fn flows(src: &Segment, dst: &str) {
    let end = Instant::now() + GIVE_UP;
    let mut tx = src.producer().unwrap();
    let mut rx = None;
    loop {
        assert!(Instant::now() < end, "no frame reached {dst}");
        let (p, w) = tx.parts();
        p.push(&[1; 64], 0, 0, FrameFlags::NONE).unwrap().wake(w);
        if rx.is_none() {
            rx = Segment::attach(dst, &AttachOptions::default())
                .ok()
                .and_then(|s| s.consumer().ok());
        }
        let Some(c) = rx.as_mut() else {
            std::thread::sleep(Duration::from_millis(2));
            continue;
        };
        if c.wait_for_frames(Some(Duration::from_millis(2))).unwrap() == FramesWait::Ready {
            match c.consumer().read_grant(1) {
                Ok(_) => return,
                Err(ReadError::Empty) => {}
                Err(e) => panic!("{e}"),
            }
        }
    }
}

#[test]
fn either_side_killed_is_reported_and_recovers_when_it_comes_back() {
    let t = format!("vxbk{}", std::process::id());
    let (src, dst, key) = (
        format!("{t}-src"),
        format!("{t}-dst"),
        format!("voxring/test/{t}"),
    );
    let port = free_local_port().unwrap().to_string();
    let locator = format!("tcp/127.0.0.1:{port}");
    let seg = source_ring(&src);
    let ex_args = |c: &mut Command| {
        export_args(c, &src, &key, &locator);
    };
    // The ring is made at start (--format): a new importer replaces the dead one's ring
    // before it says "importing".
    let im_args = |c: &mut Command| {
        import_args(c, &key, &dst, &locator, "32:1:16000:s16");
    };
    let mut ex = spawn("exporter", &ex_args, "exporting");
    let mut im = spawn("importer", &im_args, "importing");
    ex.wait_line("importer present", GIVE_UP).unwrap();
    flows(&seg, &dst);

    // The exporter dies: the importer says so; a new one takes over the dead one's
    // consumer slot and the importer (which keeps trying its connection) gets frames again.
    ex.kill9();
    im.wait_line("exporter gone", GIVE_UP).unwrap();
    let mut ex = spawn("exporter", &ex_args, "exporting");
    im.wait_line("exporter present", GIVE_UP).unwrap();
    ex.wait_line("importer present", GIVE_UP).unwrap();
    flows(&seg, &dst);

    // The importer dies, leaving its ring in /dev/shm: the exporter says so; a new importer
    // removes the dead ring, makes a fresh one, and frames flow into it.
    im.kill9();
    ex.wait_line("importer gone", GIVE_UP).unwrap();
    assert!(Path::new(&format!("/dev/shm/voxring.{dst}")).exists());
    let mut im = spawn("importer", &im_args, "importing");
    ex.wait_line("importer present", GIVE_UP).unwrap();
    flows(&seg, &dst);
    let s: serde_json::Value = serde_json::from_str(&im.terminate(GIVE_UP).unwrap()).unwrap();
    assert!(s["played"].as_u64().unwrap() >= 1, "{s}");
    ex.terminate(GIVE_UP).unwrap();
    drop(seg);
    for n in [&src, &dst] {
        assert!(
            !Path::new(&format!("/dev/shm/voxring.{n}")).exists(),
            "{n} left behind"
        );
    }
}

#[test]
fn a_hostile_publisher_on_the_key_is_refused_and_counted() {
    let t = format!("vxbh{}", std::process::id());
    let key = format!("voxring/test/{t}");
    let port = free_local_port().unwrap();
    let mut opts = ImportOptions::new(&key, &format!("{t}-dst"));
    opts.endpoints = Endpoints {
        listen: vec![format!("tcp/127.0.0.1:{port}")],
        ..Endpoints::default()
    };
    let seen = Arc::new(Mutex::new(HashSet::new()));
    let events = {
        let seen = seen.clone();
        Arc::new(move |e: Event| {
            seen.lock().unwrap().insert(e.to_string());
        })
    };
    let im = Importer::start(&opts, events, None).unwrap();
    let attacker = net::open(&Endpoints {
        connect: vec![format!("tcp/127.0.0.1:{port}")],
        ..Endpoints::default()
    })
    .unwrap();
    let publisher = attacker
        .declare_publisher(net::data_key(&key))
        .wait()
        .unwrap();
    let good = voxring_bridge::wire::FrameHeader {
        epoch: 1,
        seq: 0,
        sample_pos: 0,
        timestamp_ns: 0,
        flags: FrameFlags::NONE,
        format: voxring_bridge::wire::StreamFormat {
            samples_per_frame: 32,
            sample_rate: 16_000,
            channels: 1,
            format: SampleFormat::S16,
        },
        sent_ns: 0,
    }
    .encode();
    let mut huge_format = good;
    huge_format[44..48].copy_from_slice(&u32::MAX.to_le_bytes());
    let mut bad_code = good;
    bad_code[54] = 200;
    // No attachment; a short one; an absurd format; an unknown sample format; a payload
    // longer than its frame (64 bytes announced).
    let attacks: Vec<(Option<Vec<u8>>, Vec<u8>)> = vec![
        (None, vec![0; 64]),
        (Some(vec![1, 2, 3]), vec![0; 64]),
        (Some(huge_format.to_vec()), vec![0; 64]),
        (Some(bad_code.to_vec()), vec![0; 64]),
        (Some(good.to_vec()), vec![0; 65]),
    ];
    let end = Instant::now() + GIVE_UP;
    // Repeat until the importer has counted them all (the first ones may precede the
    // subscription's arrival at the attacker's session).
    while im.stats().rejected < 5 * 3 {
        assert!(Instant::now() < end, "rejections counted: {:?}", im.stats());
        for (att, payload) in &attacks {
            let put = publisher.put(payload.clone());
            match att {
                Some(a) => put.attachment(a.clone()).wait().unwrap(),
                None => put.wait().unwrap(),
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = im.stop();
    assert_eq!(
        s.jitter.received, 0,
        "a hostile frame reached the jitter buffer: {s:?}"
    );
    assert!(!Path::new(&format!("/dev/shm/voxring.{t}-dst")).exists());
    let seen = seen.lock().unwrap();
    for why in [
        "without the frame header",
        "is 3 bytes",
        "exceed 16 MiB",
        "sample format",
        "more than a frame",
    ] {
        assert!(
            seen.iter().any(|e| e.contains(why)),
            "no report of {why:?} in {seen:?}"
        );
    }
    let _ = attacker.close().wait();
}

/// Local addresses of the TCP and UDP sockets process `pid` holds, from its network
/// namespace's /proc tables: (protocol, address in /proc hex form, state).
fn sockets_of(pid: u32) -> Vec<(String, String, String)> {
    let mut inodes = HashSet::new();
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        if let Ok(l) = std::fs::read_link(fd.path()) {
            let l = l.to_string_lossy().into_owned();
            if let Some(i) = l.strip_prefix("socket:[").and_then(|r| r.strip_suffix(']')) {
                inodes.insert(i.to_owned());
            }
        }
    }
    let mut out = Vec::new();
    for proto in ["tcp", "tcp6", "udp", "udp6"] {
        let table = std::fs::read_to_string(format!("/proc/{pid}/net/{proto}")).unwrap();
        for line in table.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() > 9 && inodes.contains(f[9]) {
                out.push((proto.to_owned(), f[1].to_owned(), f[3].to_owned()));
            }
        }
    }
    out
}

fn is_loopback(proto: &str, hex_addr: &str) -> bool {
    let ip = hex_addr.split(':').next().unwrap();
    if proto.ends_with('6') {
        // ::1, or ::ffff:127.x.x.x
        ip == "00000000000000000000000001000000"
            || ip.starts_with("0000000000000000FFFF0000") && ip.ends_with("7F")
    } else {
        ip.ends_with("7F") // 127.x.x.x, little-endian hex
    }
}

#[test]
fn by_default_nothing_listens_beyond_loopback_and_the_lan_address_is_refused() {
    // In a namespace of its own, so the default port 7447 is free and the veth address is a
    // real non-loopback interface to attack from the other namespace.
    let pair = NetnsPair::create()
        .unwrap_or_else(|e| panic!("this test needs two network namespaces: {e:#}"));
    let t = format!("vxbd{}", std::process::id());
    let (src, key) = (format!("{t}-src"), format!("voxring/test/{t}"));
    let seg = source_ring(&src);
    let mut c = pair.command(0, Path::new(EXE));
    c.args(["export", &src, "--key", &key]);
    let mut ex = Side::spawn("exporter", c).unwrap();
    ex.wait_line("exporting", GIVE_UP).unwrap();
    let mut c = pair.command(0, Path::new(EXE));
    c.args(["import", &key, "--ring", &format!("{t}-dst")]);
    let mut im = Side::spawn("importer", c).unwrap();
    ex.wait_line("importer present", GIVE_UP).unwrap();
    for side in [&ex, &im] {
        let socks = sockets_of(side.pid());
        assert!(!socks.is_empty());
        for (proto, addr, state) in &socks {
            assert!(
                is_loopback(proto, addr),
                "{proto} socket on {addr} (state {state})"
            );
        }
        // No UDP at all: multicast scouting is off.
        assert!(socks.iter().all(|s| s.0.starts_with("tcp")), "{socks:?}");
    }
    // The attack: reach the exporter's default port on its LAN address from the other side.
    let mut probe = pair.command(1, Path::new("/bin/bash"));
    probe.args([
        "-c",
        &format!(
            "exec 3<>/dev/tcp/{}/7447",
            voxring_bridge::topo::NETNS_ADDR[0]
        ),
    ]);
    let out = probe.output().unwrap();
    assert!(
        !out.status.success(),
        "connected to the exporter from the LAN side"
    );
    im.terminate(GIVE_UP).unwrap();
    ex.terminate(GIVE_UP).unwrap();
    drop(seg);
    drop(pair);
}

#[test]
fn the_documented_tls_and_access_control_config_parses() {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/zenoh-tls-acl.json5");
    let c = net::load_config_file(&p).unwrap();
    assert_eq!(c.get_json("access_control/enabled").unwrap(), "true");
    assert_eq!(
        c.get_json("access_control/default_permission").unwrap(),
        "\"deny\""
    );
    assert!(
        c.get_json("transport/link/tls/root_ca_certificate")
            .unwrap()
            .contains("ca.pem")
    );
    // The bridge keeps the file's endpoints when no flag overrides them.
    let ep = Endpoints {
        config_file: Some(p),
        ..Endpoints::default()
    };
    let c = net::config(&ep).unwrap();
    assert!(
        c.get_json("listen/endpoints").unwrap().contains("tls/"),
        "{:?}",
        c.get_json("listen/endpoints")
    );
}
