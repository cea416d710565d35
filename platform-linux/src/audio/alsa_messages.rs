//! alsa-lib's own error messages, routed to us instead of stderr.
//!
//! alsa-lib prints what goes wrong while it reads its configuration straight to stderr
//! (`ALSA lib confmisc.c:855:(parse_card) cannot find card '0'`, then four more lines), before
//! it returns the error code we report anyway. Where we only probe (`--device auto` tries
//! `default`, then falls back), those lines are noise that looks like a failure. While an
//! [`AlsaMessages`] lives, this thread's messages go to a buffer (the `alsa` crate's
//! capturing handler, `snd_lib_error_set_local`); the caller puts the first one in its own
//! error, and nothing is printed.

use std::cell::RefCell;
use std::rc::Rc;

/// Captures alsa-lib's error messages on this thread while it lives; restores the handler
/// the thread had when dropped.
pub(crate) struct AlsaMessages {
    /// The buffer the messages go to (`None`: it could not be opened, alsa-lib prints).
    out: Option<Rc<RefCell<alsa::Output>>>,
    /// This thread's handler before (normally none: alsa-lib's default, which prints).
    previous: alsa_sys::snd_local_error_handler_t,
}

impl AlsaMessages {
    /// Starts capturing on this thread.
    pub(crate) fn capture() -> Self {
        // SAFETY: `snd_lib_error_set_local` only swaps this thread's handler pointer in
        // alsa-lib (a thread-local); `None` is alsa-lib's own "no local handler".
        let previous = unsafe { alsa_sys::snd_lib_error_set_local(None) };
        let out = alsa::Output::local_error_handler().ok();
        AlsaMessages { out, previous }
    }

    /// What alsa-lib said first (`function: message`), as ` (alsa-lib: ...)` to append to an
    /// error, or nothing when it said nothing.
    pub(crate) fn first(&self) -> String {
        let text = self
            .out
            .as_ref()
            .map(|o| o.borrow().to_string())
            .unwrap_or_default();
        match text.lines().map(str::trim).find(|l| !l.is_empty()) {
            Some(line) => format!(" (alsa-lib: {line})"),
            None => String::new(),
        }
    }
}

impl Drop for AlsaMessages {
    fn drop(&mut self) {
        // SAFETY: as in `capture`; `previous` is the handler this thread had (or `None`).
        unsafe { alsa_sys::snd_lib_error_set_local(self.previous) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A name that makes alsa-lib report while it parses: its message is captured, not
    /// printed, and comes back first.
    #[test]
    fn a_bad_card_name_is_captured_and_reported() {
        let messages = AlsaMessages::capture();
        let r = alsa::PCM::new("hw:voxring_no_such_card", alsa::Direction::Playback, false);
        assert!(r.is_err());
        let first = messages.first();
        assert!(first.contains("voxring_no_such_card"), "{first:?}");
        drop(messages);
        // Restored: a second capture starts empty.
        assert_eq!(AlsaMessages::capture().first(), "");
    }
}
