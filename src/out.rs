//! Standard output of the commands. A write that fails is the command's error, never a
//! panic (`println!` panics): a full disk under a redirect is reported as one, and a reader
//! that went away (`proglog consume --follow | head -1`) ends the command quietly and
//! successfully, as it ends `cat`.

use std::fmt;
use std::io::{self, Write};

/// Writes one line to standard output.
pub fn line(args: fmt::Arguments<'_>) -> io::Result<()> {
    let mut out = io::stdout().lock();
    out.write_fmt(args)
        .and_then(|()| out.write_all(b"\n"))
        .map_err(|e| io::Error::new(e.kind(), format!("writing standard output: {e}")))
}

/// `println!` that returns the write's [`io::Result`] instead of panicking.
macro_rules! outln {
    ($($arg:tt)*) => {
        $crate::out::line(format_args!($($arg)*))
    };
}
pub(crate) use outln;

/// Whether `e` comes from writing to a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
