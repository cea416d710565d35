//! Small macros the crate's modules share.

/// Implements [`Display`](core::fmt::Display) (the message a person reads: what happened,
/// why, what to do) and [`Error`](core::error::Error) for an error type, so each error
/// states only its message.
///
/// `error_message!(Type, |self, f| expression)`: the expression writes the message to `f`
/// and returns a [`core::fmt::Result`], as the body of `Display::fmt` would.
macro_rules! error_message {
    ($ty:ident $(<$t:ident>)?, |$this:ident, $f:ident| $body:expr) => {
        impl$(<$t>)? core::fmt::Display for $ty$(<$t>)? {
            fn fmt(&$this, $f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
                $body
            }
        }

        impl$(<$t: core::fmt::Debug>)? core::error::Error for $ty$(<$t>)? {}
    };
}

/// Checks at compile time that a `#[repr(C)]` struct has the size and the field offsets a
/// layout document promises (use it in a `const _: () = { ... };` item):
/// `assert_layout!(Type, size 128, { field: 0, other: 8 });`.
macro_rules! assert_layout {
    ($ty:ty, size $size:expr, { $($field:ident: $offset:expr),* $(,)? }) => {
        assert!(core::mem::size_of::<$ty>() == $size);
        $(assert!(core::mem::offset_of!($ty, $field) == $offset);)*
    };
}
