//! Standard output for the bench binaries' reports. `print!` panics when stdout cannot be
//! written (a full disk under a redirect, a reader that went away); a report is written here
//! instead: a reader that went away (`| head`) took what it wanted, any other failure is an
//! error the binary reports with its cause.

use std::io::Write;

/// Writes `text` to standard output. A closed pipe is not an error.
pub fn write(text: &str) -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r,
    }
}

/// [`write`], saying on stderr why it failed (`program: writing standard output: ...`).
/// Returns whether the report was written.
pub fn emit(program: &str, text: &str) -> bool {
    match write(text) {
        Ok(()) => true,
        Err(e) => {
            eprintln!("{program}: writing standard output: {e}");
            false
        }
    }
}
