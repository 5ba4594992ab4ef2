//! The framing gate's fuzz property (see `crate::fuzzing`): bytes from a client go through
//! [`Framed`] as hyper would read them, in reads of several sizes, and what the gate hands on
//! must be messages hyper's own parser (httparse) frames the same way.
use std::{
    pin::Pin,
    task::{Context, Poll, Waker},
};

use tokio::io::{AsyncRead, ReadBuf};

use super::{Framed, READ_CHUNK, Rejection, State};

/// Head sizes the property runs with: the waypoint's default (Envoy's 60 KiB) and a small one,
/// so `431` and buffer growth are reached by short inputs too.
const MAX_HEADS: [usize; 2] = [60 * 1024, 200];

/// Checks the framing gate on `data` as one client connection.
///
/// Panics when a property fails: the gate panics or loops, its buffer outgrows its limit, what
/// it hands on is not a prefix of what came in, it decides differently when the same bytes
/// arrive in other read sizes, or it hands on a head or chunk that httparse refuses or a
/// message whose end httparse puts elsewhere.
pub(crate) fn check(data: &[u8]) {
    for max_head in MAX_HEADS {
        // One read for everything (as far as the buffer goes), then a varying pattern of short
        // reads and `Pending`s, as a slow client produces.
        let whole = pass(data, max_head, &mut std::iter::repeat(usize::MAX));
        let seed = data.iter().fold(data.len(), |h, &b| {
            h.wrapping_mul(31).wrapping_add(usize::from(b))
        });
        let mut sizes = (0..).map(move |i: usize| 1 + (seed.wrapping_add(i * 7919) % 23));
        let trickle = pass(data, max_head, &mut sizes);
        for run in [&whole, &trickle] {
            assert!(
                data.starts_with(&run.forwarded),
                "the gate handed on bytes the client never sent"
            );
            frames_like_httparse(&run.forwarded, run.rejection);
        }
        assert_eq!(
            whole.rejection.map(|r| r.violation),
            trickle.rejection.map(|r| r.violation),
            "the verdict depends on how the bytes were split into reads"
        );
        assert!(
            trickle.forwarded.starts_with(&whole.forwarded),
            "with short reads the gate handed on other bytes than with one read"
        );
    }
}

/// What one connection's worth of reads produced.
struct Run {
    forwarded: Vec<u8>,
    rejection: Option<Rejection>,
}

/// A client socket that delivers `data` in reads of the given sizes, `Pending` between them.
struct Client<'a, I> {
    data: &'a [u8],
    sizes: &'a mut I,
    pending: bool,
}

impl<I: Iterator<Item = usize> + Unpin> AsyncRead for Client<'_, I> {
    fn poll_read(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        this.pending = !this.pending;
        if this.pending && !this.data.is_empty() {
            return Poll::Pending;
        }
        let size = this.sizes.next().unwrap_or(1).max(1);
        let n = size.min(this.data.len()).min(buf.remaining());
        buf.put_slice(&this.data[..n]);
        this.data = &this.data[n..];
        Poll::Ready(Ok(()))
    }
}

fn pass<I: Iterator<Item = usize> + Unpin>(data: &[u8], max_head: usize, sizes: &mut I) -> Run {
    let client = Client {
        data,
        sizes,
        pending: false,
    };
    let mut framed = Framed::new(client, max_head);
    let mut cx = Context::from_waker(Waker::noop());
    let mut forwarded = Vec::new();
    let mut out = vec![0u8; 4096];
    // Each poll moves at least one byte in or out, or ends the connection; every read is
    // followed by at most one `Pending`.
    let budget = 4 * data.len() + 64;
    for poll in 0.. {
        assert!(poll < budget, "the gate loops without progress");
        // hyper reads into buffers of several sizes; vary them.
        let room = 1 + (poll * 13) % out.len();
        let mut read = ReadBuf::new(&mut out[..room]);
        match Pin::new(&mut framed).poll_read(&mut cx, &mut read) {
            Poll::Ready(Ok(())) if read.filled().is_empty() => break,
            Poll::Ready(Ok(())) => forwarded.extend_from_slice(read.filled()),
            Poll::Ready(Err(_)) => {
                assert!(
                    framed.rejection.is_some_and(|r| r.head_sent),
                    "a read failed without a rejection of a request already handed on"
                );
                break;
            }
            Poll::Pending if framed.rejection.is_some() => break,
            Poll::Pending => {}
        }
        assert!(
            framed.buf.len() <= max_head + READ_CHUNK,
            "the buffer grew to {} bytes (head limit {max_head})",
            framed.buf.len()
        );
    }
    if matches!(framed.state, State::Drain) {
        assert!(framed.rejection.is_none());
    }
    let _ = (framed.partial_head(), framed.unanswered_since_head());
    Run {
        forwarded,
        rejection: framed.rejection,
    }
}

/// Where httparse (hyper's head parser, and its chunk-size parser) ends each message of
/// `forwarded`: every head and chunk the gate handed on must be one httparse accepts, and a
/// request the gate refused before its head went on must leave `forwarded` at a message end.
fn frames_like_httparse(forwarded: &[u8], rejection: Option<Rejection>) {
    let mut at = 0;
    let mut mid_message = false;
    while at < forwarded.len() {
        let rest = &forwarded[at..];
        let mut headers = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
        let mut request = httparse::Request::new(&mut headers);
        let head = match request.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => panic!("the gate handed on part of a head"),
            Err(e) => panic!("the gate handed on a head httparse refuses ({e})"),
        };
        let mut content_length = None;
        let mut chunked = false;
        for header in request.headers.iter() {
            if header.name.eq_ignore_ascii_case("content-length") {
                let value = std::str::from_utf8(header.value).expect("checked digits");
                content_length = Some(value.trim().parse::<u64>().expect("checked digits"));
            } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
                chunked = true;
            }
        }
        at += head;
        let (end, complete) = if chunked {
            chunked_end(&forwarded[at..])
        } else {
            let left = content_length.unwrap_or(0);
            let have = (forwarded.len() - at) as u64;
            (left.min(have) as usize, have >= left)
        };
        at += end;
        mid_message = !complete;
        if mid_message {
            assert_eq!(at, forwarded.len(), "httparse ends the body elsewhere");
        }
    }
    if rejection.is_some_and(|r| !r.head_sent) {
        assert!(
            !mid_message,
            "a refused request's predecessor was cut short"
        );
    }
}

/// The length of the chunked body at the start of `body` as far as it goes, and whether it
/// is complete there.
fn chunked_end(body: &[u8]) -> (usize, bool) {
    let mut at = 0;
    loop {
        let size = match httparse::parse_chunk_size(&body[at..]) {
            Ok(httparse::Status::Complete((used, size))) => {
                at += used;
                size
            }
            Ok(httparse::Status::Partial) => return (body.len(), false),
            Err(_) => panic!("the gate handed on a chunk size httparse refuses"),
        };
        if size == 0 {
            let mut trailers = [httparse::EMPTY_HEADER; super::MAX_HEADERS];
            return match httparse::parse_headers(&body[at..], &mut trailers) {
                Ok(httparse::Status::Complete((used, _))) => (at + used, true),
                Ok(httparse::Status::Partial) => (body.len(), false),
                Err(e) => panic!("the gate handed on trailers httparse refuses ({e})"),
            };
        }
        let left = (body.len() - at) as u64;
        if left < size + 2 {
            let data = size.min(left) as usize;
            // What arrived of the chunk's CRLF must be one.
            assert!(
                b"\r\n".starts_with(&body[at + data..]),
                "chunk data not followed by CRLF"
            );
            return (body.len(), false);
        }
        at += size as usize;
        assert_eq!(
            &body[at..at + 2],
            b"\r\n",
            "chunk data not followed by CRLF"
        );
        at += 2;
    }
}
