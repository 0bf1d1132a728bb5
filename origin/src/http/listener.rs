//! Serving a router on a TCP listener with the limits `axum::serve` does not have: a cap on open
//! connections, and a deadline for every request head.
//!
//! A peer that opens a connection and sends a head slowly (or part of one, then nothing) holds a
//! task and a socket. Past [`ConnectionLimits::header_read_timeout`] it gets `408 REQUEST_TIMEOUT`
//! in the shared error shape and the connection is closed. A keep-alive connection that sent
//! nothing since its last response is closed silently instead: a 408 there could be read by the
//! client as the answer to the request it is about to send. At the cap, the listener stops
//! accepting; new connections wait in the kernel's backlog until one closes.
//!
//! Below the router, hyper refuses bytes that are not HTTP/1.1 (a raw `0xFF` in the request line,
//! a control character in a header value) with a bare `400` of its own. No request was served on
//! the connection when that is written, so it is recognised and replaced by the same refusal in
//! the shared error shape.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use allot_shared::{ApiError, ErrorCode};
use axum::Router;
use futures::task::AtomicWaker;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::config::ConnectionLimits;

/// Which request a connection is on, and whether it is waiting for that request's head.
/// Odd: a request is being served (no head deadline); even: waiting for the next head.
#[derive(Default)]
struct Phase {
    count: AtomicU64,
    /// The connection's last read: hyper may be parked on the socket since before the request
    /// ended, so the end of a request wakes it to start the next head's deadline.
    reader: AtomicWaker,
}

impl Phase {
    fn request_started(&self) {
        let was = self.count.fetch_add(1, Ordering::AcqRel);
        debug_assert!(was.is_multiple_of(2), "one request at a time on an HTTP/1.1 connection");
    }

    fn request_finished(&self) {
        self.count.fetch_add(1, Ordering::AcqRel);
        self.reader.wake();
    }

    fn current(&self) -> u64 {
        self.count.load(Ordering::Acquire)
    }
}

/// The socket, with the head deadline enforced on reads and hyper's bare protocol refusals
/// reshaped on writes.
struct ShapedIo {
    stream: TcpStream,
    phase: Arc<Phase>,
    timeout: Duration,
    deadline: Pin<Box<Sleep>>,
    /// The phase the deadline was set for.
    armed_for: u64,
    /// Bytes read since the deadline was set: zero means an idle keep-alive connection.
    bytes_since_armed: usize,
    /// Final (non-1xx) response heads written so far.
    heads_written: u64,
    replies: Arc<CannedReplies>,
}

/// Raw responses written by the listener itself, in the shared error shape.
struct CannedReplies {
    head_timeout: Vec<u8>,
    not_http: Vec<u8>,
}

impl CannedReplies {
    fn new(head_timeout: Duration) -> Self {
        let timeout = ApiError::new(
            ErrorCode::RequestTimeout,
            format!("the request head did not arrive within {} ms", head_timeout.as_millis()),
        );
        let not_http = ApiError::new(ErrorCode::ValidationFailed, "the request is not valid HTTP/1.1");
        Self { head_timeout: raw_response(&timeout), not_http: raw_response(&not_http) }
    }
}

impl ShapedIo {
    fn new(stream: TcpStream, phase: Arc<Phase>, timeout: Duration, replies: Arc<CannedReplies>) -> Self {
        Self {
            stream,
            phase,
            timeout,
            deadline: Box::pin(tokio::time::sleep(timeout)),
            armed_for: 0,
            bytes_since_armed: 0,
            heads_written: 0,
            replies,
        }
    }

    /// Whether `buf` is hyper's own refusal of bytes it could not parse: a 4xx head written when
    /// every request served on this connection has already had its response.
    fn is_protocol_refusal(&mut self, buf: &[u8]) -> bool {
        let Some(status) = buf.strip_prefix(b"HTTP/1.1 ").and_then(|rest| rest.first()) else { return false };
        if *status == b'1' {
            return false; // an interim response (100 Continue) to a request being served
        }
        let served = self.phase.current().div_ceil(2);
        let unanswered = self.heads_written == served;
        self.heads_written += 1;
        unanswered && *status == b'4'
    }

    /// Restart the deadline when a new head is awaited; report whether it has passed.
    fn head_overdue(&mut self, cx: &mut Context<'_>) -> bool {
        let phase = self.phase.current();
        if !phase.is_multiple_of(2) {
            return false;
        }
        if phase != self.armed_for {
            self.armed_for = phase;
            self.bytes_since_armed = 0;
            self.deadline.as_mut().reset(Instant::now() + self.timeout);
        }
        self.deadline.as_mut().poll(cx).is_ready()
    }
}

impl AsyncRead for ShapedIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let before = buf.filled().len();
        let read = Pin::new(&mut this.stream).poll_read(cx, buf);
        if let Poll::Ready(result) = read {
            this.bytes_since_armed += buf.filled().len() - before;
            return Poll::Ready(result);
        }
        this.phase.reader.register(cx.waker());
        if !this.head_overdue(cx) {
            return Poll::Pending;
        }
        if this.bytes_since_armed > 0 {
            // Best effort: the peer is slow, and a full send buffer is its problem.
            let _ = this.stream.try_write(&this.replies.head_timeout);
            metrics::counter!("allot_http_head_timeouts_total").increment(1);
        }
        Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, "request head timed out")))
    }
}

impl AsyncWrite for ShapedIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if self.is_protocol_refusal(buf) {
            // Best effort, like hyper's own: the connection closes after it either way.
            let _ = self.stream.try_write(&self.replies.not_http);
            metrics::counter!("allot_http_protocol_refusals_total").increment(1);
            return Poll::Ready(Ok(buf.len()));
        }
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// A complete HTTP/1.1 response for `err` that closes the connection.
fn raw_response(err: &ApiError) -> Vec<u8> {
    let body = err.to_json(None);
    let status = axum::http::StatusCode::from_u16(err.http_status()).unwrap_or(axum::http::StatusCode::BAD_REQUEST);
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Serve `router` on `listener` until `shutdown`, then let open requests finish for up to
/// `drain` (connections still open after that are dropped).
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: ConnectionLimits,
    shutdown: CancellationToken,
    drain: Duration,
) -> io::Result<()> {
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let replies = Arc::new(CannedReplies::new(limits.header_read_timeout));
    loop {
        let permit = tokio::select! {
            _ = shutdown.cancelled() => break,
            permit = slots.clone().acquire_owned() => permit.expect("the semaphore is never closed"),
        };
        let (stream, _peer) = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let phase = Arc::new(Phase::default());
        let router = router.clone();
        let io = TokioIo::new(ShapedIo::new(stream, phase.clone(), limits.header_read_timeout, replies.clone()));
        let service = hyper::service::service_fn(move |req: hyper::Request<Incoming>| {
            phase.request_started();
            let (router, phase) = (router.clone(), phase.clone());
            async move {
                let resp = router.oneshot(req.map(axum::body::Body::new)).await;
                phase.request_finished();
                resp
            }
        });
        let connection = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            // The head deadline is ours (it answers 408); hyper's would close without a word.
            .header_read_timeout(None)
            .serve_connection(io, service);
        let watched = graceful.watch(connection);
        metrics::gauge!("allot_http_open_connections").increment(1.0);
        tokio::spawn(async move {
            if let Err(e) = watched.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            metrics::gauge!("allot_http_open_connections").decrement(1.0);
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown()).await.is_err() {
        tracing::warn!(
            drain_ms = drain.as_millis() as u64,
            "connections still open after the drain time; closing them"
        );
    }
    Ok(())
}
