//! One client connection of the gateway.
//!
//! Requests to the inference endpoints (chat, completions, embeddings, responses) are the
//! gateway's hot path: their plain HTTP/1.1 shape (a `content-length` body, nothing to
//! upgrade, nothing to expect) is read and answered here, one read and one write per request
//! when the client sends a request in one piece. Anything else (other routes, chunked bodies,
//! `Expect`, HTTP/1.0, a head that does not parse) hands the connection, with what was read of
//! it, to hyper and the router, which serve it from then on. hyper's general server (its
//! dispatch, the request and response objects, the router's layers) had become most of the
//! gateway's own work per proxied request.

use crate::gateway::{CompletionHeaders, Gateway, REQUEST_ID_HEADER, TIER_HEADER};
use crate::request::Endpoint;
use axum::http::{header, HeaderValue};
use axum::response::Response;
use axum::Router;
use bytes::{Buf, BytesMut};
use futures_util::StreamExt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

/// The longest request head read here; a longer one goes to hyper, which refuses it.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Headers parsed here; a request with more goes to hyper.
const MAX_HEADERS: usize = 48;
/// The largest body read here; a larger one goes to hyper and the router's limit.
const MAX_FAST_BODY_BYTES: usize = 4 << 20;
/// Answers at most this long are copied behind their head and written in one call.
const COALESCE_BYTES: usize = 64 * 1024;

/// What the head of the next request asks for.
enum Next {
    /// A completion request this module answers.
    Fast(FastRequest),
    /// Anything else: the connection goes to hyper.
    Other,
    /// An inference request whose body is over the cap: answered 413 without reading it.
    TooLarge,
    /// The head is not all there yet.
    Partial,
}

/// The facts of a hot-path request's head.
struct FastRequest {
    endpoint: Endpoint,
    head_len: usize,
    body_len: usize,
    headers: CompletionHeaders,
    /// The client asked to close the connection after this answer.
    close: bool,
    /// The client's `x-request-id`, echoed on the answer.
    request_id: Option<HeaderValue>,
}

/// Reads the head at the start of `buf`.
fn next_request(buf: &[u8], max_body: usize) -> Next {
    let mut slots = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut request = httparse::Request::new(&mut slots);
    let head_len = match request.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD_BYTES => return Next::Partial,
        _ => return Next::Other,
    };
    if request.method != Some("POST") || request.version != Some(1) {
        return Next::Other;
    }
    let Some(endpoint) = request.path.and_then(Endpoint::of) else { return Next::Other };
    let mut body_len = None;
    let mut close = false;
    let mut request_id = None;
    let mut headers = CompletionHeaders::default();
    for h in request.headers.iter() {
        let name = h.name;
        if name.eq_ignore_ascii_case("content-length") {
            // A second length, or one that is not plain digits, is hyper's to refuse.
            let len = std::str::from_utf8(h.value).ok().filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit())).and_then(|v| v.parse::<usize>().ok());
            match (body_len, len) {
                (None, Some(len)) if len > max_body => return Next::TooLarge,
                (None, Some(len)) if len <= MAX_FAST_BODY_BYTES => body_len = Some(len),
                _ => return Next::Other,
            }
        } else if name.eq_ignore_ascii_case("connection") {
            if h.value.eq_ignore_ascii_case(b"close") {
                close = true;
            } else if !h.value.eq_ignore_ascii_case(b"keep-alive") {
                return Next::Other;
            }
        } else if name.eq_ignore_ascii_case(REQUEST_ID_HEADER.as_str()) {
            // A repeated one is left to the router.
            if request_id.replace(HeaderValue::from_bytes(h.value).ok()).is_some() {
                return Next::Other;
            }
        } else if let Some(slot) = slot_of(&mut headers, name) {
            // A repeated one, or one that is not a header value, is left to the router.
            let Ok(value) = HeaderValue::from_bytes(h.value) else { return Next::Other };
            if slot.replace(value).is_some() {
                return Next::Other;
            }
        } else if name.eq_ignore_ascii_case("transfer-encoding") || name.eq_ignore_ascii_case("expect") || name.eq_ignore_ascii_case("upgrade") {
            return Next::Other;
        }
    }
    match body_len {
        Some(body_len) => Next::Fast(FastRequest { endpoint, head_len, body_len, headers, close, request_id: request_id.flatten() }),
        None => Next::Other,
    }
}

/// Where a header the handler reads goes, if `name` is one.
fn slot_of<'a>(headers: &'a mut CompletionHeaders, name: &str) -> Option<&'a mut Option<HeaderValue>> {
    if name.eq_ignore_ascii_case(header::AUTHORIZATION.as_str()) {
        Some(&mut headers.authorization)
    } else if name.eq_ignore_ascii_case(TIER_HEADER.as_str()) {
        Some(&mut headers.tier)
    } else {
        None
    }
}

/// Serves one client connection until it closes, or until `stop` is set and no request is
/// under way.
pub(crate) async fn serve(mut stream: TcpStream, gateway: Arc<Gateway>, app: Router, mut stop: watch::Receiver<bool>) {
    let limits = gateway.limits();
    let mut buf = BytesMut::with_capacity(8 * 1024);
    // When the first byte of the head being read came: the whole head is due a timeout after.
    let mut head_began: Option<tokio::time::Instant> = None;
    loop {
        let request = match next_request(&buf, limits.max_request_bytes) {
            Next::Fast(request) => request,
            Next::Other => return hand_to_hyper(Prefixed { prefix: buf, stream }, app, stop, &limits).await,
            Next::TooLarge => {
                // The body is not read: the connection closes after the answer.
                let mut response = axum::response::IntoResponse::into_response(crate::error::Error::TooLarge { max_bytes: limits.max_request_bytes });
                response.headers_mut().insert(REQUEST_ID_HEADER, gateway.request_id(None));
                let _ = write_response(&mut stream, &mut buf, response, false).await;
                return;
            }
            Next::Partial => {
                if buf.is_empty() && *stop.borrow() {
                    return;
                }
                let now = tokio::time::Instant::now();
                let due = match head_began {
                    Some(began) => began + limits.header_timeout,
                    None => now + limits.idle_timeout,
                };
                // Room for a whole request, taken back from the start of the buffer once the
                // requests read before are gone, rather than grown 64 bytes at a time.
                buf.reserve(4096);
                let read = tokio::select! {
                    read = stream.read_buf(&mut buf) => read,
                    _ = stop.wait_for(|s| *s), if buf.is_empty() => return,
                    // A head dribbled out, or a connection kept idle: its socket is freed.
                    () = tokio::time::sleep_until(due) => return,
                };
                match read {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        head_began.get_or_insert(now);
                        continue;
                    }
                }
            }
        };
        head_began = None;
        let whole = request.head_len + request.body_len;
        if buf.len() < whole {
            buf.reserve(whole - buf.len());
            while buf.len() < whole {
                match tokio::time::timeout(limits.idle_timeout, stream.read_buf(&mut buf)).await {
                    Ok(Ok(0) | Err(_)) | Err(_) => return,
                    Ok(Ok(_)) => {}
                }
            }
        }
        buf.advance(request.head_len);
        let body = buf.split_to(request.body_len).freeze();
        // A client that gives up (a timeout, a closed tab) frees its slot and its replica's
        // connection at once, not when the answer would have come.
        let mut response = tokio::select! {
            response = gateway.clone().handle(request.headers, body, request.endpoint) => response,
            _ = client_gone(&stream, &mut buf) => return,
        };
        response.headers_mut().insert(REQUEST_ID_HEADER, gateway.request_id(request.request_id.as_ref()));
        let keep_alive = !request.close && !*stop.borrow();
        if write_response(&mut stream, &mut buf, response, keep_alive).await.is_err() || !keep_alive {
            return;
        }
    }
}

/// Resolves when the client has closed the connection. What it sends meanwhile (the next
/// request, pipelined) is kept in `buf` for later, up to one request's worth.
async fn client_gone(stream: &TcpStream, buf: &mut BytesMut) {
    loop {
        if buf.len() >= MAX_HEAD_BYTES + MAX_FAST_BODY_BYTES || stream.readable().await.is_err() {
            return std::future::pending().await;
        }
        buf.reserve(4096);
        match stream.try_read_buf(buf) {
            Ok(0) => return,
            Err(e) if e.kind() != std::io::ErrorKind::WouldBlock => return,
            _ => {}
        }
    }
}

/// Writes `response` in HTTP/1.1: with its length when known, else in chunks as its body
/// comes (a streamed completion), each chunk sent as soon as it is there. A client that closes
/// the connection while a stream waits for its next chunk ends the stream.
async fn write_response(stream: &mut TcpStream, buf: &mut BytesMut, response: Response, keep_alive: bool) -> std::io::Result<()> {
    let (parts, body) = response.into_parts();
    let length = axum::body::HttpBody::size_hint(&body).exact();
    let mut out = BytesMut::with_capacity(512);
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(parts.status.as_str().as_bytes());
    out.extend_from_slice(b" ");
    out.extend_from_slice(parts.status.canonical_reason().unwrap_or("").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in &parts.headers {
        if name == header::CONTENT_LENGTH || name == header::TRANSFER_ENCODING || name == header::CONNECTION {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if !parts.headers.contains_key(header::DATE) {
        out.extend_from_slice(b"date: ");
        http_date::append_now(&mut out);
        out.extend_from_slice(b"\r\n");
    }
    if !keep_alive {
        out.extend_from_slice(b"connection: close\r\n");
    }
    let mut data = body.into_data_stream();
    match length {
        Some(length) => {
            out.extend_from_slice(b"content-length: ");
            out.extend_from_slice(itoa::Buffer::new().format(length).as_bytes());
            out.extend_from_slice(b"\r\n\r\n");
            let mut sent = 0u64;
            while let Some(chunk) = data.next().await {
                let chunk = chunk.map_err(std::io::Error::other)?;
                sent += chunk.len() as u64;
                if out.len() + chunk.len() <= COALESCE_BYTES {
                    out.extend_from_slice(&chunk);
                } else {
                    stream.write_all(&out).await?;
                    out.clear();
                    stream.write_all(&chunk).await?;
                }
            }
            if sent != length {
                return Err(std::io::Error::other("an answer's body was not the length it said"));
            }
            stream.write_all(&out).await
        }
        None => {
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
            stream.write_all(&out).await?;
            loop {
                let next = tokio::select! {
                    next = data.next() => next,
                    _ = client_gone(stream, buf) => return Err(std::io::ErrorKind::ConnectionReset.into()),
                };
                let Some(chunk) = next else { break };
                // An error mid-stream closes the connection without the last chunk, so the
                // client sees the answer cut short rather than complete.
                let chunk = chunk.map_err(std::io::Error::other)?;
                if chunk.is_empty() {
                    continue;
                }
                out.clear();
                // Written into the buffer: no string made per chunk.
                let _ = std::fmt::Write::write_fmt(&mut out, format_args!("{:x}\r\n", chunk.len()));
                out.extend_from_slice(&chunk);
                out.extend_from_slice(b"\r\n");
                stream.write_all(&out).await?;
            }
            stream.write_all(b"0\r\n\r\n").await
        }
    }
}

/// Serves the rest of a connection with hyper and the router, shutting it down gracefully
/// when `stop` is set.
async fn hand_to_hyper(io: Prefixed, app: Router, mut stop: watch::Receiver<bool>, limits: &crate::config::Limits) {
    let service = hyper_util::service::TowerToHyperService::new(app);
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service)
        .with_upgrades();
    tokio::pin!(connection);
    let mut stopping = false;
    loop {
        tokio::select! {
            served = connection.as_mut() => {
                if let Err(e) = served {
                    tracing::debug!("gateway connection: {e}");
                }
                return;
            }
            _ = stop.wait_for(|s| *s), if !stopping => {
                stopping = true;
                connection.as_mut().graceful_shutdown();
            }
        }
    }
}

/// A connection with bytes already read from it, read again first.
struct Prefixed {
    prefix: BytesMut,
    stream: TcpStream,
}

impl AsyncRead for Prefixed {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, out: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        if !this.prefix.is_empty() {
            let n = this.prefix.len().min(out.remaining());
            out.put_slice(&this.prefix[..n]);
            this.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.stream).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, data)
    }

    fn poll_write_vectored(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[std::io::IoSlice<'_>]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, data)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}

/// The `date` header's value (RFC 9110's IMF-fixdate), made once a second per thread.
mod http_date {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};

    thread_local! {
        static CACHED: RefCell<(u64, String)> = const { RefCell::new((u64::MAX, String::new())) };
    }

    /// Appends now, as `Sun, 06 Nov 1994 08:49:37 GMT`, to `out`.
    pub(super) fn append_now(out: &mut bytes::BytesMut) {
        let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        CACHED.with(|cached| {
            let mut cached = cached.borrow_mut();
            if cached.0 != secs {
                *cached = (secs, tidepool_api::dates::http_date(secs));
            }
            out.extend_from_slice(cached.1.as_bytes());
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{answer, completion, gateway_on_loopback, LOOPBACK_REPLICA};

    fn fast(raw: &str) -> Option<FastRequest> {
        match next_request(raw.as_bytes(), 32 << 20) {
            Next::Fast(r) => Some(r),
            _ => None,
        }
    }

    #[test]
    fn a_plain_completion_request_is_read_here() {
        let raw = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\nX-Tidepool-Tier: batch\r\nContent-Length: 2\r\n\r\n{}";
        let r = fast(raw).unwrap();
        assert_eq!(r.endpoint, Endpoint::Chat);
        assert_eq!((r.head_len, r.body_len), (raw.len() - 2, 2));
        assert_eq!(r.headers.authorization.unwrap(), "Bearer k");
        assert_eq!(r.headers.tier.unwrap(), "batch");
        assert!(!r.close);
        let closing = fast("POST /v1/completions HTTP/1.1\r\nconnection: close\r\ncontent-length: 0\r\n\r\n").unwrap();
        assert!(closing.close);
        assert_eq!(closing.endpoint, Endpoint::Completions);
    }

    #[test]
    fn every_other_shape_goes_to_hyper() {
        for raw in [
            "GET /v1/models HTTP/1.1\r\n\r\n",
            "POST /v1/chat/completions?x=1 HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            "POST /v1/chat/completions HTTP/1.0\r\ncontent-length: 2\r\n\r\n{}",
            "POST /v1/chat/completions HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\ncontent-length: 2\r\n\r\n{}",
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: +2\r\n\r\n{}",
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\nexpect: 100-continue\r\n\r\n",
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\nconnection: upgrade\r\nupgrade: h2c\r\n\r\n{}",
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 2\r\nauthorization: a\r\nauthorization: b\r\n\r\n{}",
            "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 8000000\r\n\r\n",
            "NOT HTTP\r\n\r\n",
        ] {
            assert!(matches!(next_request(raw.as_bytes(), 32 << 20), Next::Other), "{raw:?}");
        }
        let huge = "POST /v1/chat/completions HTTP/1.1\r\ncontent-length: 99999999999\r\n\r\n";
        assert!(matches!(next_request(huge.as_bytes(), 32 << 20), Next::TooLarge), "answered 413 without reading the body");
    }

    #[test]
    fn a_head_cut_short_waits_for_more() {
        assert!(matches!(next_request(b"POST /v1/chat/completions HTTP/1.1\r\ncontent-le", 32 << 20), Next::Partial));
        assert!(matches!(next_request(b"", 32 << 20), Next::Partial));
    }

    #[tokio::test]
    async fn one_kept_connection_serves_completions_here_and_the_rest_through_the_router() {
        let (addr, stop, served) = gateway_on_loopback("", LOOPBACK_REPLICA, 1.0).await;
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let mut buf = Vec::new();
        let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#;
        sock.write_all(completion("/v1/chat/completions", chat, "").as_bytes()).await.unwrap();
        let (head, body) = answer(&mut sock, &mut buf).await;
        assert!(head.starts_with("http/1.1 200 ok"), "{head}");
        assert!(head.contains("\r\nx-ratelimit-remaining-tokens: ") && head.contains("\r\ndate: "), "{head}");
        let parsed: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(parsed["usage"]["completion_tokens"], 3);
        // Then a route the fast path does not take, and a completion again, on the same connection.
        sock.write_all(b"GET /v1/models HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer key-0001\r\n\r\n").await.unwrap();
        let (head, body) = answer(&mut sock, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}");
        assert!(body.contains(r#""id":"m""#), "{body}");
        sock.write_all(completion("/v1/completions", r#"{"model":"m","prompt":"x","max_tokens":2}"#, "").as_bytes()).await.unwrap();
        let (head, body) = answer(&mut sock, &mut buf).await;
        assert!(head.starts_with("http/1.1 200"), "{head}: {body}");
        assert!(body.contains(r#""object":"text_completion""#), "{body}");
        let _ = stop.send(());
        assert!(served.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn pipelined_and_streamed_answers_come_back_whole_and_in_order() {
        let (addr, stop, served) = gateway_on_loopback("", LOOPBACK_REPLICA, 1.0).await;
        let mut sock = TcpStream::connect(addr).await.unwrap();
        let streamed = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":4,"stream":true}"#;
        let bad = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":-1}"#;
        let unknown = r#"{"model":"nope","prompt":"x"}"#;
        let mut pipelined = completion("/v1/chat/completions", streamed, "");
        pipelined.push_str(&completion("/v1/chat/completions", bad, ""));
        pipelined.push_str(&completion("/v1/completions", unknown, "Connection: close\r\n"));
        // The first head arrives a byte at a time, the rest all at once.
        let (first, rest) = pipelined.as_bytes().split_at(40);
        for byte in first {
            sock.write_all(std::slice::from_ref(byte)).await.unwrap();
        }
        sock.write_all(rest).await.unwrap();
        let mut buf = Vec::new();
        let (head, body) = answer(&mut sock, &mut buf).await;
        assert!(head.contains("transfer-encoding: chunked") && head.contains("text/event-stream"), "{head}");
        assert_eq!(body.matches("data: ").count(), 7, "{body}");
        assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
        let (head, body) = answer(&mut sock, &mut buf).await;
        assert!(head.starts_with("http/1.1 400"), "{head}");
        assert!(body.contains(r#""param":"max_tokens""#), "{body}");
        let (head, body) = answer(&mut sock, &mut buf).await;
        assert!(head.starts_with("http/1.1 404") && head.contains("connection: close"), "{head}");
        assert!(body.contains("model_not_found"), "{body}");
        let mut after = Vec::new();
        assert_eq!(sock.read_to_end(&mut after).await.unwrap(), 0, "the connection stays open after close was asked");
        let _ = stop.send(());
        assert!(served.await.unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_stop_waits_for_the_request_under_way_and_closes_idle_connections() {
        let (addr, stop, served) = gateway_on_loopback("", LOOPBACK_REPLICA, 1.0).await;
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let mut busy = TcpStream::connect(addr).await.unwrap();
        // 30 tokens at 1 ms each: still streaming when the stop comes.
        let long = r#"{"model":"m","prompt":"x","max_tokens":30,"stream":true}"#;
        busy.write_all(completion("/v1/completions", long, "").as_bytes()).await.unwrap();
        let mut first = [0u8; 1];
        busy.read_exact(&mut first).await.unwrap();
        let _ = stop.send(());
        let within = std::time::Duration::from_secs(10);
        let mut rest = Vec::new();
        tokio::time::timeout(within, busy.read_to_end(&mut rest)).await.expect("the stream under way ends").unwrap();
        let whole = [&first[..], &rest].concat();
        let text = String::from_utf8_lossy(&whole);
        assert!(text.contains("data: [DONE]") && text.ends_with("0\r\n\r\n"), "{text}");
        assert_eq!(tokio::time::timeout(within, idle.read(&mut [0u8; 16])).await.expect("the idle connection is closed").unwrap(), 0);
        assert!(tokio::time::timeout(within, served).await.expect("the gateway stops").unwrap().is_ok());
    }

    #[tokio::test]
    async fn a_client_that_goes_away_frees_its_slot_at_once() {
        // One slot, which a realtime request waits at most 200 ms for.
        let (addr, stop, served) = gateway_on_loopback("typical_request_ms = 800\nrealtime_headroom = 0\n", "best_concurrency = 1\nmax_concurrency = 1\n", 20.0).await;
        let one_more = completion("/v1/completions", r#"{"model":"m","prompt":"x","max_tokens":1}"#, "");
        // 100 tokens take 2 s: one client leaves before its answer, another in the middle of its stream.
        for streamed in [false, true] {
            let long = completion("/v1/completions", &format!(r#"{{"model":"m","prompt":"x","max_tokens":100,"stream":{streamed}}}"#), "");
            let mut leaving = TcpStream::connect(addr).await.unwrap();
            leaving.write_all(long.as_bytes()).await.unwrap();
            if streamed {
                leaving.read_exact(&mut [0u8; 12]).await.unwrap();
            } else {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            drop(leaving);
            let mut next = TcpStream::connect(addr).await.unwrap();
            next.write_all(one_more.as_bytes()).await.unwrap();
            let (head, body) = answer(&mut next, &mut Vec::new()).await;
            assert!(head.starts_with("http/1.1 200"), "streamed {streamed}: {head}: {body}");
        }
        let _ = stop.send(());
        assert!(served.await.unwrap().is_ok());
    }
}
