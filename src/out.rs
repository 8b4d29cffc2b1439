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

/// Writes `rows` (the header first) as columns two spaces apart, each as wide as its widest
/// cell; the last column is not padded.
pub fn table(rows: &[Vec<String>]) -> io::Result<()> {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut text = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                text.push_str(cell);
            } else {
                let pad = widths[c] - cell.chars().count();
                text.push_str(cell);
                text.extend(std::iter::repeat_n(' ', pad + 2));
            }
        }
        line(format_args!("{}", text.trim_end()))?;
    }
    Ok(())
}

/// Whether `e` comes from writing to a pipe whose reader has gone.
pub fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<io::Error>()
            .is_some_and(|io| io.kind() == io::ErrorKind::BrokenPipe)
    })
}
