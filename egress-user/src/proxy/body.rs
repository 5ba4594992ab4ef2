//! A body wrapper that counts bytes, enforces the stream idle timeout, and reports how the body
//! ended exactly once (at its end, on error, or when it is dropped unfinished).
use std::{
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU32, AtomicU64, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep, sleep_until};

use super::ProxyError;

/// The last time bytes moved on a stream (in either direction). Shared by both bodies of one
/// HTTP exchange, or by both directions of a spliced connection: a stream is idle only when
/// nothing moved either way (Envoy's `stream_idle_timeout` / TCP proxy `idle_timeout`).
#[derive(Debug)]
pub(super) struct Activity {
    epoch: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Self {
            epoch: Instant::now(),
            last_ms: AtomicU64::new(0),
        })
    }

    pub(super) fn touch(&self) {
        let ms = self.epoch.elapsed().as_millis().min(u128::from(u64::MAX)) as u64;
        self.last_ms.fetch_max(ms, Ordering::Relaxed);
    }

    /// When the stream becomes idle if nothing moves before then.
    pub(super) fn deadline(&self, idle: Duration) -> Instant {
        self.epoch + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }

    /// Resolves once nothing has moved for `idle`.
    pub(super) async fn idle(&self, idle: Duration) {
        loop {
            let deadline = self.deadline(idle);
            sleep_until(deadline).await;
            if Instant::now() >= self.deadline(idle) {
                return;
            }
        }
    }
}

/// How a [`Metered`] body ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyEnd {
    /// All of it went through.
    Complete,
    /// The peer it came from failed (reset, truncated, bad framing).
    Failed,
    /// Nothing moved in either direction for the idle timeout.
    IdleTimeout,
    /// The consumer dropped it before the end (the other side went away).
    Dropped,
}

type OnEnd = Box<dyn FnOnce(BodyEnd) + Send>;

pub(super) struct Metered<B: Body> {
    inner: B,
    bytes: Arc<AtomicU64>,
    activity: Arc<Activity>,
    idle: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    on_end: Option<OnEnd>,
    /// Where a `grpc-status` trailer is recorded (status + 1; 0: none seen).
    grpc_status: Option<Arc<AtomicU32>>,
}

impl<B: Body> Metered<B> {
    pub(super) fn new(
        inner: B,
        bytes: Arc<AtomicU64>,
        activity: Arc<Activity>,
        idle: Duration,
        on_end: OnEnd,
    ) -> Self {
        Self {
            inner,
            bytes,
            activity,
            idle,
            timer: None,
            on_end: Some(on_end),
            grpc_status: None,
        }
    }

    /// Records the `grpc-status` trailer in `slot` (status + 1) when it passes.
    pub(super) fn with_grpc_status(mut self, slot: Arc<AtomicU32>) -> Self {
        self.grpc_status = Some(slot);
        self
    }

    fn end(&mut self, how: BodyEnd) {
        if let Some(on_end) = self.on_end.take() {
            on_end(how);
        }
    }

    /// Polls the idle timer; `Ready` when the stream has been idle for the timeout.
    fn poll_idle(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            let deadline = self.activity.deadline(self.idle);
            let timer = self
                .timer
                .get_or_insert_with(|| Box::pin(sleep_until(deadline)));
            if timer.deadline() != deadline {
                timer.as_mut().reset(deadline);
            }
            match timer.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                // Something moved on the other body while we slept: wait again.
                Poll::Ready(()) if Instant::now() < self.activity.deadline(self.idle) => {}
                Poll::Ready(()) => return Poll::Ready(()),
            }
        }
    }
}

impl<B> Body for Metered<B>
where
    B: Body<Data = Bytes, Error = hyper::Error> + Unpin,
{
    type Data = Bytes;
    type Error = ProxyError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, ProxyError>>> {
        let this = self.get_mut();
        if this.on_end.is_none() {
            // Ended already (error or timeout): never poll the inner body again.
            return Poll::Ready(None);
        }
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    this.bytes.fetch_add(data.len() as u64, Ordering::Relaxed);
                }
                if let (Some(slot), Some(trailers)) = (&this.grpc_status, frame.trailers_ref())
                    && let Some(status) = grpc_status(trailers)
                {
                    slot.store(status.saturating_add(1), Ordering::Relaxed);
                }
                this.activity.touch();
                if this.inner.is_end_stream() {
                    this.end(BodyEnd::Complete);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(source))) => {
                this.end(BodyEnd::Failed);
                Poll::Ready(Some(Err(ProxyError::Body { source })))
            }
            Poll::Ready(None) => {
                this.end(BodyEnd::Complete);
                Poll::Ready(None)
            }
            Poll::Pending => match this.poll_idle(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(()) => {
                    this.end(BodyEnd::IdleTimeout);
                    Poll::Ready(Some(Err(ProxyError::StreamIdle { idle: this.idle })))
                }
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.on_end.is_none() || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The `grpc-status` of a response's headers or trailers.
pub(super) fn grpc_status(headers: &http::HeaderMap) -> Option<u32> {
    headers.get("grpc-status")?.to_str().ok()?.parse().ok()
}

impl<B: Body> Drop for Metered<B> {
    fn drop(&mut self) {
        if let Some(on_end) = self.on_end.take() {
            // Consumers may drop a body without polling it once they know it is empty (HEAD,
            // 204, 304, a zero Content-Length): that is a complete body, not an abandoned one.
            on_end(if self.inner.is_end_stream() {
                BodyEnd::Complete
            } else {
                BodyEnd::Dropped
            });
        }
    }
}
