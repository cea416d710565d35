//! The child-process guard does what the tests rely on: lines arrive in order, a dropped
//! guard leaves no process, and a child that ignores SIGTERM is still killed.

use std::process::Command;

use voxring_test_support::Proc;

/// Whether `pid` names a live process (not a zombie: a reaped child has no /proc entry).
fn exists(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

#[test]
fn lines_come_in_order_and_the_exit_code_is_read() {
    let mut p = Proc::start(Command::new("sh").args(["-c", "echo a1; echo b2; echo a3; exit 7"]));
    assert_eq!(p.line("b"), "b2");
    assert_eq!(
        p.line("a"),
        "a3",
        "a line already passed is not returned again"
    );
    assert_eq!(p.seen(), ["a1", "b2", "a3"]);
    assert_eq!(p.exit_code(), Some(7));
}

#[test]
fn a_dropped_guard_stops_and_reaps_its_child_even_one_ignoring_sigterm() {
    for script in [
        "echo up; exec sleep 600",
        "trap '' TERM; echo up; exec sleep 600",
    ] {
        let mut p = Proc::start(Command::new("sh").args(["-c", script]));
        p.line("up");
        let pid = p.pid();
        assert!(exists(pid));
        drop(p);
        assert!(!exists(pid), "{script:?}: pid {pid} outlived its guard");
    }
}

#[test]
#[should_panic(expected = "no line starting with \"never\"")]
fn a_line_that_never_comes_fails_with_what_was_printed() {
    let mut p = Proc::start(Command::new("sh").args(["-c", "echo only"]));
    // Its stdout closes when it ends: the wait ends then, not at the give-up bound.
    p.line("never");
}
