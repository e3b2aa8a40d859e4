//! Internal macros.

/// Marks a crash point (see [`crate::failpoints`]). Inside a function returning
/// `crate::Result`, an armed `Error` action returns an I/O error from it.
#[macro_export]
#[doc(hidden)]
macro_rules! failpoint {
    ($name:literal) => {
        #[cfg(feature = "failpoints")]
        {
            if let Some(e) = $crate::failpoints::hit($name) {
                return Err($crate::Error::Io {
                    op: "failpoint",
                    path: $name.into(),
                    source: e,
                });
            }
        }
    };
}
