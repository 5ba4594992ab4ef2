//! Command-line output that survives its reader going away. `egress status | head` closes the
//! pipe after ten lines; `print!` would then panic. A closed stdout or stderr (EPIPE) ends the
//! command with exit status 0, as a reader that stopped reading asked for nothing more; any
//! other write error ends it with status 1.
use std::{
    fmt,
    io::{self, Write as _},
};

/// Writes `text` to stdout and flushes it.
pub fn stdout(text: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    finish(out.write_fmt(text).and_then(|()| out.flush()));
}

/// Writes `text` to stderr.
pub fn stderr(text: fmt::Arguments<'_>) {
    finish(io::stderr().lock().write_fmt(text));
}

fn finish(result: io::Result<()>) {
    match result {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => std::process::exit(0),
        Err(_) => std::process::exit(1),
    }
}

/// `print!` that treats a closed stdout as the end of the command (see the module).
#[macro_export]
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*)) };
}

/// `println!` that treats a closed stdout as the end of the command (see the module).
#[macro_export]
macro_rules! outln {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that treats a closed stderr as the end of the command (see the module).
#[macro_export]
macro_rules! errln {
    ($($arg:tt)*) => { $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}
