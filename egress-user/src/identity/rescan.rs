//! "A new identity is here: look now." `egress exec` makes a service-account cgroup and asks
//! the running `egress run` to scan identities at once, so the kernel verdict cache covers the
//! command's very first connect() instead of waiting for the next periodic scan.
//!
//! The channel is an abstract unix socket named after the pin directory (one per dataplane;
//! no file to clean up, gone with the process). The request carries nothing the dataplane
//! trusts: it only triggers the same scan of the cgroup tree the periodic one does, so any
//! local process may send it. The dataplane answers once the scan and the verdicts it implies
//! are written.
use std::{
    io::{self, BufRead as _, BufReader, Write as _},
    os::{
        linux::net::SocketAddrExt as _,
        unix::net::{SocketAddr, UnixListener, UnixStream},
    },
    path::Path,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _},
    sync::{mpsc, oneshot},
};
use tracing::{debug, info};

const REQUEST: &[u8] = b"rescan\n";
const DONE: &str = "done";
/// Requests waiting for the reconciler at once; more wait to be queued.
pub const QUEUE: usize = 16;

/// The abstract socket name for the dataplane pinned at `pin_dir` (stable; FNV-1a of the path,
/// so any length of path fits the 107-byte limit).
fn name(pin_dir: &Path) -> String {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in pin_dir.as_os_str().as_encoded_bytes() {
        hash = (hash ^ u64::from(*byte)).wrapping_mul(0x100_0000_01b3);
    }
    format!("egress-rescan-{hash:016x}")
}

/// One request from `egress exec`: answer it (by dropping or sending) once the scan is done.
pub type Rescan = oneshot::Sender<()>;

/// Serves rescan requests for the dataplane at `pin_dir`, handing each to `requests`. Binding
/// is retried while another dataplane on the same pins (one that is draining) holds the name.
pub async fn serve(pin_dir: &Path, requests: mpsc::Sender<Rescan>) {
    let name = name(pin_dir);
    let listener = loop {
        match bind(&name) {
            Ok(listener) => break listener,
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
                debug!("another dataplane answers identity rescans for these pins; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(error) => {
                info!(%error, "no identity rescan socket; new identities wait for the periodic scan");
                return;
            }
        }
    };
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let requests = requests.clone();
        tokio::spawn(async move {
            let (read, mut write) = stream.into_split();
            let mut line = String::new();
            let mut read = tokio::io::BufReader::new(read);
            let asked = tokio::time::timeout(Duration::from_secs(2), read.read_line(&mut line));
            if !matches!(asked.await, Ok(Ok(_))) || line.as_bytes() != REQUEST {
                return;
            }
            let (done, scanned) = oneshot::channel();
            if requests.send(done).await.is_err() {
                return;
            }
            if scanned.await.is_ok() {
                let _ = write.write_all(format!("{DONE}\n").as_bytes()).await;
            }
        });
    }
}

fn bind(name: &str) -> io::Result<tokio::net::UnixListener> {
    let addr = SocketAddr::from_abstract_name(name.as_bytes())?;
    let listener = UnixListener::bind_addr(&addr)?;
    listener.set_nonblocking(true)?;
    tokio::net::UnixListener::from_std(listener)
}

/// What became of a request.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// The dataplane scanned and wrote the verdicts.
    Done,
    /// No dataplane answers for these pins (none is running: capture fails closed).
    NoDataplane,
}

/// Asks the dataplane at `pin_dir` to scan identities now, and waits (at most `limit`) until it
/// has.
pub fn request(pin_dir: &Path, limit: Duration) -> io::Result<Outcome> {
    let addr = SocketAddr::from_abstract_name(name(pin_dir).as_bytes())?;
    let mut stream = match UnixStream::connect_addr(&addr) {
        Ok(stream) => stream,
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => return Ok(Outcome::NoDataplane),
        Err(e) => return Err(e),
    };
    stream.set_read_timeout(Some(limit))?;
    stream.set_write_timeout(Some(limit))?;
    stream.write_all(REQUEST)?;
    let mut answer = String::new();
    BufReader::new(stream).read_line(&mut answer)?;
    if answer.trim_end() == DONE {
        Ok(Outcome::Done)
    } else {
        Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the dataplane closed the rescan request unanswered",
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_stable_per_pin_dir_and_fit() {
        let a = name(Path::new("/sys/fs/bpf/egress"));
        assert_eq!(a, name(Path::new("/sys/fs/bpf/egress")));
        assert_ne!(a, name(Path::new("/sys/fs/bpf/egress-2")));
        assert!(name(Path::new(&"/x".repeat(500))).len() < 107);
    }

    #[tokio::test]
    async fn a_request_is_answered_once_the_reconciler_has_scanned() {
        let pins = Path::new("/nonexistent/egress-rescan-unit-test");
        let (requests, mut inbox) = mpsc::channel(QUEUE);
        let server = tokio::spawn({
            let pins = pins.to_owned();
            async move { serve(&pins, requests).await }
        });
        let scanner = tokio::spawn(async move {
            let done = inbox.recv().await.expect("a request");
            done.send(()).expect("the requester waits");
        });
        let outcome = tokio::task::spawn_blocking(move || {
            // The server may not be bound yet on the first try.
            for _ in 0..50 {
                match request(pins, Duration::from_secs(2)) {
                    Ok(Outcome::NoDataplane) => std::thread::sleep(Duration::from_millis(20)),
                    other => return other,
                }
            }
            Ok(Outcome::NoDataplane)
        })
        .await
        .expect("the request task");
        assert_eq!(outcome.expect("answered"), Outcome::Done);
        scanner.await.expect("scanned");
        server.abort();
        assert_eq!(
            request(Path::new("/nonexistent/none"), Duration::from_secs(1)).expect("asked"),
            Outcome::NoDataplane
        );
    }
}
