//! Mutual TLS and access control, end to end and attacked. The certificates are made by the
//! openssl recipe in docs/bridge.md (the test runs the doc's shell block itself), each side's
//! configuration is derived from bridge/examples/zenoh-tls-acl.json5 by the doc's procedure,
//! and `voxring-bridge export` / `import` run as processes over `tls/` locators on loopback.
//! Attacks: a peer whose certificate comes from another CA, and a peer with a valid
//! certificate whose common name access control does not allow, each as subscriber and as
//! publisher, beside a legitimate pair: the legitimate importer gets every frame bit-exact,
//! the attackers' rings get nothing and the legitimate ring nothing of theirs. No assertion on
//! elapsed time: durations are only "give up" bounds.

mod common;

use std::path::{Path, PathBuf};

use common::{
    EXE, FORMAT, GIVE_UP, LeaveNoTrace, SPF, assert_counters, assert_gone, attach_when_there,
    frame, produce, source_ring, stats,
};
use voxring_bridge::topo::{Side, export_args, free_local_port};
use voxring_core::FrameFlags;
use voxring_linux::ring::{Segment, ShmConsumer};
use voxring_test_support::{output_ok, private_dir};

const FRAMES: u64 = 300;
/// Offset of an attacker's frame numbers: its payloads differ from every legitimate one.
const FORGED: u64 = 1 << 40;

/// A 0700 directory with the certificates of the doc's recipe: `ca/` (the real CA: `hub`,
/// `mic-box.room1`, `intruder`, `eavesdropper`) and `rogue/` (another CA: `hub`,
/// `mic-box.room1`). Every certificate's subjectAltName is `localhost`, the name dialled.
struct Pki {
    _dir: tempfile::TempDir,
    ca: PathBuf,
    rogue: PathBuf,
}

/// The shell block of docs/bridge.md that defines `cert()`, without its example calls.
fn doc_recipe() -> String {
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/bridge.md"))
            .expect("docs/bridge.md");
    let block = doc
        .split("```sh\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap())
        .find(|b| b.contains("cert() {"))
        .expect("docs/bridge.md has the certificate recipe (a ```sh block defining cert())");
    let kept: Vec<&str> = block
        .lines()
        .filter(|l| !l.trim_start().starts_with("cert "))
        .collect();
    assert!(
        kept.len() + 2 == block.lines().count(),
        "the recipe's example calls changed; update this test"
    );
    kept.join("\n")
}

fn run_recipe(dir: &Path, names: &[&str]) {
    std::fs::create_dir(dir).unwrap();
    let mut script = doc_recipe();
    for n in names {
        script.push_str(&format!("\ncert {n} localhost"));
    }
    output_ok(
        std::process::Command::new("sh")
            .args(["-eu", "-c", &script])
            .current_dir(dir),
        "the doc's openssl recipe (is openssl installed? scripts/setup-system test)",
    );
    for n in names {
        assert!(dir.join(format!("{n}-cert.pem")).exists(), "{n}-cert.pem");
    }
}

impl Pki {
    fn make() -> Pki {
        let dir = private_dir("vxtls");
        let ca = dir.path().join("ca");
        let rogue = dir.path().join("rogue");
        run_recipe(&ca, &["hub", "mic-box.room1", "intruder", "eavesdropper"]);
        run_recipe(&rogue, &["hub", "mic-box.room1"]);
        Pki {
            _dir: dir,
            ca,
            rogue,
        }
    }
}

/// One side's configuration, made from the example by the doc's procedure.
#[derive(Clone, Copy)]
struct SideConfig<'a> {
    /// Where this side's key and certificate are (`Pki::ca` or `Pki::rogue`).
    certs: &'a Path,
    /// This side's certificate name.
    me: &'a str,
    /// The common name its access control allows (the other side's).
    peer: &'a str,
    /// Its listen locator, or none for a side that only connects.
    listen: Option<&'a str>,
    /// Access control on (an attacker's own side turns it off).
    acl: bool,
    /// The CA it trusts, when not that of its own certificate (an attacker with a foreign
    /// certificate who knows the real CA).
    trust: Option<&'a Path>,
}

impl<'a> SideConfig<'a> {
    /// The legitimate box (the real CA, access control on), exporting on `listen`.
    fn mic_box(pki: &'a Pki, listen: &'a str) -> Self {
        SideConfig {
            certs: &pki.ca,
            me: "mic-box.room1",
            peer: "hub",
            listen: Some(listen),
            acl: true,
            trust: None,
        }
    }

    /// The legitimate hub, importing from the box `mic_box`.
    fn hub(mic_box: &Self) -> Self {
        SideConfig {
            me: "hub",
            peer: "mic-box.room1",
            listen: None,
            ..*mic_box
        }
    }
}

fn replace_once(s: &str, from: &str, to: &str) -> String {
    assert_eq!(
        s.matches(from).count(),
        1,
        "the example config changed ({from:?}); update docs/bridge.md's procedure and this test"
    );
    s.replace(from, to)
}

fn write_config(c: &SideConfig, path: &Path) -> PathBuf {
    let ex = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/zenoh-tls-acl.json5"),
    )
    .unwrap();
    let mut s = ex.replace("/etc/voxring/bridge/", &format!("{}/", c.certs.display()));
    // Step 1: this machine's own key and certificate.
    assert_eq!(s.matches("hub-key.pem").count(), 2, "example changed");
    assert_eq!(s.matches("hub-cert.pem").count(), 2, "example changed");
    s = s
        .replace("hub-key.pem", &format!("{}-key.pem", c.me))
        .replace("hub-cert.pem", &format!("{}-cert.pem", c.me));
    // Step 2: the other side's common name.
    s = replace_once(
        &s,
        r#"cert_common_names: ["mic-box.room1"]"#,
        &format!(r#"cert_common_names: ["{}"]"#, c.peer),
    );
    // Step 3: this machine's listen address, or none.
    let listen = c.listen.map_or(String::new(), |l| {
        format!(r#"listen: {{ endpoints: ["{l}"] }},"#)
    });
    s = replace_once(
        &s,
        r#"listen: { endpoints: ["tls/192.168.1.10:7447"] },"#,
        &listen,
    );
    if !c.acl {
        s = replace_once(&s, "enabled: true", "enabled: false");
    }
    if let Some(t) = c.trust {
        let ca = format!("{}/ca.pem", c.certs.display());
        s = replace_once(&s, &ca, &format!("{}/ca.pem", t.display()));
    }
    std::fs::write(path, s).unwrap();
    path.to_owned()
}

/// Writes the legitimate frames `base .. base + FRAMES`, stamped with positions from 0.
fn produce_from(seg: &Segment, base: u64) {
    produce(seg, base..base + FRAMES, 0);
}

/// [`common::read_frames`] as (position, timestamp, flags, bytes).
fn read_frames(rx: &mut ShmConsumer, n: usize) -> Vec<(u64, u64, FrameFlags, Vec<u8>)> {
    common::read_frames(rx, n)
        .into_iter()
        .map(|(m, b)| (m.sample_pos, m.timestamp_ns, m.flags, b))
        .collect()
}

/// Checks that `got` is exactly the legitimate frames 0..FRAMES.
fn assert_legitimate(got: &[(u64, u64, FrameFlags, Vec<u8>)]) {
    assert_eq!(got.len() as u64, FRAMES);
    for (k, (pos, ts, flags, payload)) in got.iter().enumerate() {
        let (p, _, t, f) = frame(k as u64);
        assert_eq!(
            payload, &p,
            "frame {k}: payload differs (a forged frame got in?)"
        );
        assert_eq!(
            (*pos, *ts, *flags),
            (k as u64 * u64::from(SPF), t, f),
            "frame {k}"
        );
    }
}

/// Once the exporter `ex` has seen the importer: writes the legitimate frames into `seg` (while
/// `also` runs: attackers publishing) and reads the imported ring `dst` until they all
/// arrived; checks they are exactly the legitimate ones and that nothing came after them.
fn deliver_legitimate(ex: &mut Side, seg: &Segment, dst: &str, also: impl FnOnce() + Send) {
    ex.wait_line("importer present", GIVE_UP).unwrap();
    let out = attach_when_there(dst);
    let mut rx = out.consumer().unwrap();
    let got = std::thread::scope(|sc| {
        sc.spawn(also);
        produce_from(seg, 0);
        read_frames(&mut rx, FRAMES as usize)
    });
    assert_legitimate(&got);
    // Nothing after them either (a forged frame would have been played after the last).
    let more = read_frames(&mut rx, 0);
    assert!(more.is_empty(), "{} more frames arrived", more.len());
}

/// Stops the legitimate importer `im` and exporter `ex`: every frame read, played, none lost.
/// Returns the importer's counters.
fn legitimate_counters(im: &mut Side, ex: &mut Side) -> serde_json::Value {
    let s = stats(im);
    assert_counters(&stats(ex), &[("read", FRAMES)], "the exporter");
    assert_counters(&s, &[("played", FRAMES), ("lost", 0)], "the importer");
    s
}

struct Run {
    tag: String,
    dir: tempfile::TempDir,
    /// A failed run's importer is killed with -9 and leaves its ring: removed when the run
    /// (made before its sides, so dropped after them) ends.
    _trace: LeaveNoTrace,
}

impl Run {
    fn new(tag: &str) -> Run {
        let dir = private_dir("vxtlscfg");
        let tag = format!("vxtls{}{tag}", std::process::id());
        Run {
            _trace: LeaveNoTrace(tag.clone()),
            tag,
            dir,
        }
    }
    fn ring(&self, what: &str) -> String {
        format!("{}-{what}", self.tag)
    }
    /// The example's key (its access control names it). Tests running at once do not meet:
    /// no scouting, and each one's processes connect only to its own ports.
    fn key(&self) -> String {
        "voxring/room1/mic".to_owned()
    }
    fn config(&self, who: &str, c: &SideConfig) -> PathBuf {
        write_config(c, &self.dir.path().join(format!("{who}.json5")))
    }
    fn exporter(&self, who: &str, src: &str, c: &SideConfig) -> Side {
        let cfg = self.config(who, c);
        let mut cmd = std::process::Command::new(EXE);
        let listen = c.listen.expect("an exporter here listens");
        // Block, not drop, when Zenoh's queue is full: on a loaded machine (load average
        // 10-15) Zenoh dropped frames that these runs expect bit-exact.
        export_args(&mut cmd, src, &self.key(), listen)
            .args(["--congestion", "block"])
            .arg("--config")
            .arg(&cfg);
        let mut s = Side::spawn(who, cmd).unwrap();
        s.wait_line("exporting", GIVE_UP).unwrap();
        s
    }
    fn importer(&self, who: &str, dst: &str, c: &SideConfig, connect: &[String]) -> Side {
        let cfg = self.config(who, c);
        let mut cmd = std::process::Command::new(EXE);
        cmd.args(["import", &self.key(), "--ring", dst, "--format", FORMAT])
            .args(["--ring-frames", "512", "--target-ms", "100", "--config"])
            .arg(&cfg);
        for l in connect {
            cmd.args(["--connect", l]);
        }
        let mut s = Side::spawn(who, cmd).unwrap();
        s.wait_line("importing", GIVE_UP).unwrap();
        s
    }
}

fn tls_port() -> (String, String) {
    let port = free_local_port().unwrap();
    (
        format!("tls/127.0.0.1:{port}"),
        format!("tls/localhost:{port}"),
    )
}

/// What every test here starts with: the certificates, a run, the legitimate box exporting
/// its source ring `src` over TLS (dialled as `dial`), and the name of the ring `dst` the
/// legitimate hub imports into. Fields drop in order: the exporter first.
struct Legit {
    ex: Side,
    seg: Segment,
    src: String,
    dst: String,
    listen: String,
    dial: String,
    run: Run,
    pki: Pki,
}

impl Legit {
    fn start(tag: &str) -> Legit {
        let pki = Pki::make();
        let run = Run::new(tag);
        let (listen, dial) = tls_port();
        let (src, dst) = (run.ring("src"), run.ring("dst"));
        let seg = source_ring(&src);
        let ex = run.exporter("box", &src, &SideConfig::mic_box(&pki, &listen));
        Legit {
            ex,
            seg,
            src,
            dst,
            listen,
            dial,
            run,
            pki,
        }
    }

    /// The box's configuration.
    fn box_cfg(&self) -> SideConfig<'_> {
        SideConfig::mic_box(&self.pki, &self.listen)
    }

    /// The legitimate hub importing into `dst`, connecting to the box and to `others`
    /// (before it).
    fn importer(&self, others: &[String]) -> Side {
        let connect: Vec<String> = others.iter().chain([&self.dial]).cloned().collect();
        let hub = SideConfig::hub(&self.box_cfg());
        self.run.importer("hub", &self.dst, &hub, &connect)
    }
}

#[test]
fn over_mutual_tls_with_access_control_frames_arrive_bit_exact() {
    let mut l = Legit::start("ok");
    let mut im = l.importer(&[]);
    deliver_legitimate(&mut l.ex, &l.seg, &l.dst, || {});
    legitimate_counters(&mut im, &mut l.ex);
    drop(l.seg);
    assert_gone(&[&l.src, &l.dst]);
}

/// Frames in `name` right now, and the importer's final counters.
fn nothing_arrived(name: &str, side: &mut Side) -> serde_json::Value {
    let seg = attach_when_there(name);
    let mut rx = seg.consumer().unwrap();
    // The consumer joined at the ring's current head: anything already written would show
    // in the importer's `played` count below, so both are checked.
    let got = read_frames(&mut rx, 0);
    drop(rx);
    drop(seg);
    let s = stats(side);
    assert!(
        got.is_empty(),
        "{name}: {} frames reached an attacker",
        got.len()
    );
    assert_counters(
        &s,
        &[("received", 0), ("played", 0)],
        &format!("{name}: the attacker's importer got frames"),
    );
    s
}

#[test]
fn a_subscriber_with_a_foreign_ca_or_a_refused_common_name_gets_no_frame() {
    let mut l = Legit::start("sub");
    let (run, dial) = (&l.run, &l.dial);
    let (eaves, rogue) = (run.ring("eaves"), run.ring("rogue"));
    // Attackers first, so they had every chance the legitimate importer had. Their own
    // access control is off (they control their side).
    // A valid certificate from the real CA, with a name the box does not allow.
    let eaves_cfg = SideConfig {
        me: "eavesdropper",
        acl: false,
        ..SideConfig::hub(&l.box_cfg())
    };
    let mut v1 = run.importer(
        "eavesdropper",
        &eaves,
        &eaves_cfg,
        std::slice::from_ref(dial),
    );
    // A certificate from another CA, with the hub's own name, trusting the real CA.
    let rogue_cfg = SideConfig {
        certs: &l.pki.rogue,
        me: "hub",
        trust: Some(&l.pki.ca),
        ..eaves_cfg
    };
    let mut v2 = run.importer("rogue", &rogue, &rogue_cfg, std::slice::from_ref(dial));
    let mut im = l.importer(&[]);
    deliver_legitimate(&mut l.ex, &l.seg, &l.dst, || {});
    nothing_arrived(&eaves, &mut v1);
    nothing_arrived(&rogue, &mut v2);
    legitimate_counters(&mut im, &mut l.ex);
    drop(l.seg);
    assert_gone(&[&l.src, &l.dst, &eaves, &rogue]);
}

#[test]
fn a_publisher_with_a_foreign_ca_or_a_refused_common_name_cannot_put() {
    let mut l = Legit::start("pub");
    let run = &l.run;
    let (isrc, rsrc) = (run.ring("isrc"), run.ring("rsrc"));
    let (l_in, d_in) = tls_port();
    let (l_ro, d_ro) = tls_port();
    let iseg = source_ring(&isrc);
    let rseg = source_ring(&rsrc);
    // A valid certificate from the real CA, with a name the hub does not allow, publishing
    // on the same key.
    let intruder_cfg = SideConfig {
        me: "intruder",
        listen: Some(&l_in),
        acl: false,
        ..l.box_cfg()
    };
    let mut x = run.exporter("intruder", &isrc, &intruder_cfg);
    // A certificate from another CA with the box's own name, trusting the real CA.
    let rogue_cfg = SideConfig {
        certs: &l.pki.rogue,
        me: "mic-box.room1",
        listen: Some(&l_ro),
        trust: Some(&l.pki.ca),
        ..intruder_cfg
    };
    let mut r = run.exporter("rogue", &rsrc, &rogue_cfg);
    let mut im = l.importer(&[d_in, d_ro]);
    // The attackers publish their own frames on the key all the while.
    deliver_legitimate(&mut l.ex, &l.seg, &l.dst, || {
        std::thread::scope(|sc| {
            sc.spawn(|| produce_from(&iseg, FORGED));
            produce_from(&rseg, 2 * FORGED);
        })
    });
    let s = legitimate_counters(&mut im, &mut l.ex);
    let xe = stats(&mut x);
    let re = stats(&mut r);
    drop((l.seg, iseg, rseg));
    assert_counters(
        &s,
        &[("received", FRAMES), ("restarts", 0), ("rejected", 0)],
        "the hub took frames from an attacker",
    );
    // The attackers did publish.
    assert_counters(&xe, &[("read", FRAMES)], "the intruder's exporter");
    assert_counters(&re, &[("read", FRAMES)], "the rogue exporter");
    assert_gone(&[&l.src, &l.dst, &isrc, &rsrc]);
}
