//! The by-value grants the bindings hold across calls (tokens): which one is open, and how
//! each is numbered so a stale copy never matches a later grant.

/// A token's span: its first position and its length.
pub(crate) trait TokenSpan: Copy + PartialEq {
    fn span(&self) -> (u64, usize);
}

/// Why [`OpenToken::close`] refused a token.
pub(crate) enum TokenRefused {
    /// Not the open grant (finished already, replaced, or another side's).
    Stale,
    /// More frames than the grant holds; the token stays open.
    TooMany { granted: usize },
}

/// The by-value grant a side has handed out and not finished, and the numbering of its tokens:
/// the bookkeeping [`Producer`] and [`Consumer`] share for the bindings' token API.
#[derive(Debug)]
pub(crate) struct OpenToken<T> {
    open: Option<T>,
    /// Tokens handed out so far: each carries its number, so a stale copy never matches a
    /// later grant at the same position.
    issued: u64,
}

impl<T: TokenSpan> OpenToken<T> {
    pub(crate) const fn new() -> Self {
        OpenToken {
            open: None,
            issued: 0,
        }
    }

    /// Numbers a new token (`make` gets its number), makes it the open grant, returns it.
    pub(crate) fn issue(&mut self, make: impl FnOnce(u64) -> T) -> T {
        self.issued = self.issued.wrapping_add(1);
        let token = make(self.issued);
        self.open = Some(token);
        token
    }

    /// Whether `token` is the open grant.
    pub(crate) fn is_open(&self, token: T) -> bool {
        self.open == Some(token)
    }

    /// Closes the open grant `token` to finish `k` of its frames: its span, or why not.
    pub(crate) fn close(&mut self, token: T, k: usize) -> Result<(u64, usize), TokenRefused> {
        if !self.is_open(token) {
            return Err(TokenRefused::Stale);
        }
        let (start, len) = token.span();
        if k > len {
            return Err(TokenRefused::TooMany { granted: len });
        }
        self.open = None;
        Ok((start, len))
    }

    /// Closes the open grant, if any, finishing nothing: its span.
    pub(crate) fn abandon(&mut self) -> Option<(u64, usize)> {
        self.open.take().map(|t| t.span())
    }
}
