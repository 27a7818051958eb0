//! The gateway's client to its replicas.
//!
//! A plain `http://` replica is spoken to in HTTP/1.1 on kept-alive connections that the
//! request's own task writes and reads: no connection task to hand each request to and take
//! the answer back from, which cost two cross-thread wake-ups per request under load. An
//! `https://` replica goes through reqwest.

use bytes::{Bytes, BytesMut};
use futures_util::stream::BoxStream;
use futures_util::StreamExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// How long a new connection to a replica may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The largest answer head read from a replica.
const MAX_HEAD_BYTES: usize = 64 * 1024;
/// Idle connections kept per replica (per event loop where each has its own).
const MAX_IDLE: usize = 256;

/// A replica reached over plain HTTP/1.1.
struct Plain {
    /// `host:port`, as connected to.
    addr: String,
    /// Everything of a request's head before its length: request line start, host, type, key.
    head_start: Vec<u8>,
    path_prefix: String,
    /// Kept-alive connections, each with the thread whose event loop it is registered with.
    idle: Mutex<Vec<(std::thread::ThreadId, TcpStream)>>,
}

enum Target {
    Plain(Arc<Plain>),
    /// Its base URL and bearer key.
    Tls(reqwest::Url, Option<String>),
}

/// One replica and its connections.
pub(crate) struct Upstream {
    target: Target,
    /// Shared by every https replica: reqwest keeps its pool per host.
    tls: reqwest::Client,
}

/// A replica's answer: its status, and a body not read yet.
pub(crate) struct Answer {
    /// The HTTP status.
    pub status: u16,
    body: AnswerBody,
}

enum AnswerBody {
    Plain(Reader),
    Tls(reqwest::Response),
}

/// How an answer's body ends.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Framing {
    /// This many bytes remain.
    Length(u64),
    /// Before a chunk's size line.
    ChunkSize,
    /// Inside a chunk, this many bytes remain.
    ChunkData(u64),
    /// After a chunk's data, before its CRLF.
    ChunkEnd,
    /// After the last chunk, before the empty line that ends the trailers.
    Trailers,
    /// Until the replica closes the connection.
    UntilClose,
    Done,
}

/// The body of an answer from a plain replica, read from its connection as asked for.
struct Reader {
    sock: Option<TcpStream>,
    buf: BytesMut,
    framing: Framing,
    keep_alive: bool,
    home: Arc<Plain>,
}

/// `http://host[:port][/prefix]` as (`host:port`, host header, path prefix).
fn split_plain_url(url: &str) -> Option<(String, String, String)> {
    let rest = url.strip_prefix("http://")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, ""),
    };
    if authority.is_empty() || authority.contains('@') {
        return None;
    }
    let has_port = match authority.rfind(':') {
        Some(i) => !authority[i..].contains(']'),
        None => false,
    };
    let addr = if has_port { authority.to_string() } else { format!("{authority}:80") };
    Some((addr, authority.to_string(), path.trim_end_matches('/').to_string()))
}

/// The client every https replica is reached through.
pub(crate) fn tls_client() -> Result<reqwest::Client, String> {
    reqwest::Client::builder().pool_max_idle_per_host(MAX_IDLE).build().map_err(|e| format!("HTTP client: {e}"))
}

impl Upstream {
    /// A client for the replica at `url`, with its optional bearer key; https through `tls`.
    pub(crate) fn new(url: &str, key: Option<&str>, tls: &reqwest::Client) -> Result<Upstream, String> {
        let target = if url.starts_with("https://") {
            Target::Tls(reqwest::Url::parse(url).map_err(|e| format!("replica url '{url}': {e}"))?, key.map(str::to_string))
        } else {
            let (addr, host, path_prefix) = split_plain_url(url).ok_or_else(|| format!("replica url '{url}': not http://host[:port][/path]"))?;
            let mut head_start = format!("host: {host}\r\ncontent-type: application/json\r\n");
            if let Some(key) = key {
                head_start.push_str(&format!("authorization: Bearer {key}\r\n"));
            }
            Target::Plain(Arc::new(Plain { addr, head_start: head_start.into_bytes(), path_prefix, idle: Mutex::new(Vec::new()) }))
        };
        Ok(Upstream { target, tls: tls.clone() })
    }

    /// Posts `body` (JSON) to `path` of the replica; the answer's body is not read yet.
    pub(crate) async fn post(&self, path: &str, body: Bytes) -> Result<Answer, String> {
        match &self.target {
            Target::Plain(plain) => plain.clone().post(path, &body).await,
            Target::Tls(base, key) => {
                let mut url = base.clone();
                url.set_path(&format!("{}{path}", url.path().trim_end_matches('/')));
                let mut request = self.tls.post(url).header(reqwest::header::CONTENT_TYPE, "application/json").body(body);
                if let Some(key) = key {
                    request = request.bearer_auth(key);
                }
                let resp = request.send().await.map_err(|e| format!("upstream replica unreachable: {e}"))?;
                Ok(Answer { status: resp.status().as_u16(), body: AnswerBody::Tls(resp) })
            }
        }
    }
}

impl Plain {
    /// An idle connection that the replica has not closed, if one is kept.
    ///
    /// On a thread with an event loop of its own only a connection registered there is
    /// taken: one of another loop would be woken through that loop's thread.
    fn take_idle(&self) -> Option<TcpStream> {
        let here = std::thread::current().id();
        let any_thread = tokio::runtime::Handle::current().runtime_flavor() != tokio::runtime::RuntimeFlavor::CurrentThread;
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(at) = idle.iter().rposition(|(thread, _)| any_thread || *thread == here) {
            let (_, sock) = idle.remove(at);
            let mut probe = [0u8; 1];
            // Readable while idle means the replica closed it (or sent something unasked).
            match sock.try_read(&mut probe) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Some(sock),
                _ => continue,
            }
        }
        None
    }

    fn give_back(&self, sock: TcpStream) {
        let here = std::thread::current().id();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        // Counted per thread: one event loop's burst must not leave another none to keep.
        if idle.iter().filter(|(thread, _)| *thread == here).count() < MAX_IDLE {
            idle.push((here, sock));
        }
    }

    async fn connect(&self) -> Result<TcpStream, String> {
        let sock = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(&self.addr))
            .await
            .map_err(|_| format!("upstream replica unreachable: connecting to {} timed out", self.addr))?
            .map_err(|e| format!("upstream replica unreachable: {}: {e}", self.addr))?;
        let _ = sock.set_nodelay(true);
        Ok(sock)
    }

    async fn post(self: Arc<Self>, path: &str, body: &[u8]) -> Result<Answer, String> {
        let mut request = Vec::with_capacity(64 + self.head_start.len() + body.len());
        request.extend_from_slice(b"POST ");
        request.extend_from_slice(self.path_prefix.as_bytes());
        request.extend_from_slice(path.as_bytes());
        request.extend_from_slice(b" HTTP/1.1\r\n");
        request.extend_from_slice(&self.head_start);
        request.extend_from_slice(format!("content-length: {}\r\n\r\n", body.len()).as_bytes());
        request.extend_from_slice(body);
        // A kept connection the replica closed just now fails before any answer arrives: the
        // replica never saw the request, so it goes once more on a new connection.
        if let Some(sock) = self.take_idle() {
            match self.exchange(sock, &request).await {
                Ok(answer) => return Ok(answer),
                Err(Exchange::BeforeAnswer(_)) => {}
                Err(Exchange::Failed(e)) => return Err(e),
            }
        }
        let sock = self.connect().await?;
        self.exchange(sock, &request).await.map_err(|e| match e {
            Exchange::BeforeAnswer(e) | Exchange::Failed(e) => e,
        })
    }

    async fn exchange(self: &Arc<Self>, mut sock: TcpStream, request: &[u8]) -> Result<Answer, Exchange> {
        let lost = |e: std::io::Error| Exchange::BeforeAnswer(format!("upstream replica {}: {e}", self.addr));
        sock.write_all(request).await.map_err(lost)?;
        let mut buf = BytesMut::with_capacity(8 * 1024);
        loop {
            if sock.read_buf(&mut buf).await.map_err(lost)? == 0 {
                return Err(if buf.is_empty() {
                    Exchange::BeforeAnswer(format!("upstream replica {} closed the connection", self.addr))
                } else {
                    Exchange::Failed(format!("upstream replica {} closed the connection mid-answer", self.addr))
                });
            }
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut head = httparse::Response::new(&mut headers);
            let parsed = head.parse(&buf).map_err(|e| Exchange::Failed(format!("upstream replica {}: bad answer: {e}", self.addr)))?;
            let httparse::Status::Complete(head_len) = parsed else {
                if buf.len() > MAX_HEAD_BYTES {
                    return Err(Exchange::Failed(format!("upstream replica {}: answer head over {MAX_HEAD_BYTES} bytes", self.addr)));
                }
                continue;
            };
            let status = head.code.unwrap_or(502);
            let mut framing = Framing::UntilClose;
            let mut keep_alive = head.version == Some(1);
            for h in head.headers.iter() {
                let value = std::str::from_utf8(h.value).unwrap_or("").trim();
                if h.name.eq_ignore_ascii_case("content-length") && framing == Framing::UntilClose {
                    let n = value.parse().map_err(|_| Exchange::Failed(format!("upstream replica {}: bad content-length '{value}'", self.addr)))?;
                    framing = Framing::Length(n);
                } else if h.name.eq_ignore_ascii_case("transfer-encoding") && value.to_ascii_lowercase().ends_with("chunked") {
                    framing = Framing::ChunkSize;
                } else if h.name.eq_ignore_ascii_case("connection") {
                    let value = value.to_ascii_lowercase();
                    keep_alive = if value.contains("close") { false } else { keep_alive || value.contains("keep-alive") };
                }
            }
            if status == 204 || status == 304 || (100..200).contains(&status) {
                framing = Framing::Length(0);
            }
            if framing == Framing::UntilClose {
                keep_alive = false;
            }
            let _ = buf.split_to(head_len);
            let reader = Reader { sock: Some(sock), buf, framing, keep_alive, home: self.clone() };
            return Ok(Answer { status, body: AnswerBody::Plain(reader) });
        }
    }
}

/// How an exchange failed: before any answer (the request may go again) or after.
enum Exchange {
    BeforeAnswer(String),
    Failed(String),
}

impl Reader {
    async fn fill(&mut self) -> Result<usize, String> {
        let Some(sock) = self.sock.as_mut() else { return Ok(0) };
        sock.read_buf(&mut self.buf).await.map_err(|e| format!("upstream replica {}: {e}", self.home.addr))
    }

    fn cut_off(&self) -> String {
        format!("upstream replica {} closed the connection mid-answer", self.home.addr)
    }

    /// The next piece of the body, or None at its end (the connection then goes back to
    /// its replica's idle ones).
    async fn next_chunk(&mut self) -> Result<Option<Bytes>, String> {
        loop {
            match self.framing {
                Framing::Done => {
                    if let Some(sock) = self.sock.take() {
                        if self.keep_alive && self.buf.is_empty() {
                            self.home.give_back(sock);
                        }
                    }
                    return Ok(None);
                }
                Framing::Length(0) => self.framing = Framing::Done,
                Framing::Length(n) | Framing::ChunkData(n) => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        return Err(self.cut_off());
                    }
                    let take = self.buf.len().min(usize::try_from(n).unwrap_or(usize::MAX));
                    let left = n - take as u64;
                    self.framing = match self.framing {
                        Framing::Length(_) => Framing::Length(left),
                        _ if left == 0 => Framing::ChunkEnd,
                        _ => Framing::ChunkData(left),
                    };
                    return Ok(Some(self.buf.split_to(take).freeze()));
                }
                Framing::UntilClose => {
                    if self.buf.is_empty() && self.fill().await? == 0 {
                        self.framing = Framing::Done;
                        continue;
                    }
                    return Ok(Some(self.buf.split().freeze()));
                }
                Framing::ChunkEnd => {
                    if self.buf.len() < 2 {
                        if self.fill().await? == 0 {
                            return Err(self.cut_off());
                        }
                        continue;
                    }
                    if &self.buf[..2] != b"\r\n" {
                        return Err(format!("upstream replica {}: bad chunked body", self.home.addr));
                    }
                    let _ = self.buf.split_to(2);
                    self.framing = Framing::ChunkSize;
                }
                Framing::ChunkSize | Framing::Trailers => {
                    let Some(eol) = self.buf.windows(2).position(|w| w == b"\r\n") else {
                        if self.buf.len() > MAX_HEAD_BYTES {
                            return Err(format!("upstream replica {}: chunk line over {MAX_HEAD_BYTES} bytes", self.home.addr));
                        }
                        if self.fill().await? == 0 {
                            return Err(self.cut_off());
                        }
                        continue;
                    };
                    let line = self.buf.split_to(eol + 2);
                    if self.framing == Framing::Trailers {
                        if eol == 0 {
                            self.framing = Framing::Done;
                        }
                        continue;
                    }
                    let text = std::str::from_utf8(&line[..eol]).unwrap_or("");
                    let size_text = text.split(';').next().unwrap_or("").trim();
                    let size = u64::from_str_radix(size_text, 16)
                        .map_err(|_| format!("upstream replica {}: bad chunk size '{size_text}'", self.home.addr))?;
                    self.framing = if size == 0 { Framing::Trailers } else { Framing::ChunkData(size) };
                }
            }
        }
    }
}

impl Answer {
    /// The whole body.
    pub(crate) async fn bytes(self) -> Result<Bytes, String> {
        match self.body {
            AnswerBody::Tls(resp) => resp.bytes().await.map_err(|e| format!("upstream replica: {e}")),
            AnswerBody::Plain(mut reader) => {
                let Some(first) = reader.next_chunk().await? else { return Ok(Bytes::new()) };
                let Some(second) = reader.next_chunk().await? else { return Ok(first) };
                let mut all = BytesMut::from(&first[..]);
                all.extend_from_slice(&second);
                while let Some(more) = reader.next_chunk().await? {
                    all.extend_from_slice(&more);
                }
                Ok(all.freeze())
            }
        }
    }

    /// The body as it arrives.
    pub(crate) fn into_stream(self) -> BoxStream<'static, Result<Bytes, String>> {
        match self.body {
            AnswerBody::Tls(resp) => resp.bytes_stream().map(|r| r.map_err(|e| format!("upstream replica: {e}"))).boxed(),
            AnswerBody::Plain(reader) => futures_util::stream::unfold(Some(reader), |reader| async move {
                let mut reader = reader?;
                match reader.next_chunk().await {
                    Ok(Some(bytes)) => Some((Ok(bytes), Some(reader))),
                    Ok(None) => None,
                    Err(e) => Some((Err(e), None)),
                }
            })
            .boxed(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    #[test]
    fn plain_urls_split_into_address_host_and_prefix() {
        assert_eq!(split_plain_url("http://127.0.0.1:8000"), Some(("127.0.0.1:8000".into(), "127.0.0.1:8000".into(), String::new())));
        assert_eq!(split_plain_url("http://gpu-7/api/"), Some(("gpu-7:80".into(), "gpu-7".into(), "/api".into())));
        assert_eq!(split_plain_url("http://[::1]:9000/x"), Some(("[::1]:9000".into(), "[::1]:9000".into(), "/x".into())));
        assert_eq!(split_plain_url("http://[::1]"), Some(("[::1]:80".into(), "[::1]".into(), String::new())));
        assert_eq!(split_plain_url("http://u:p@h"), None);
        assert_eq!(split_plain_url("ftp://h"), None);
    }

    /// A replica that answers each request on a connection with the next of `answers` (raw
    /// bytes, written in pieces of `piece` bytes) and closes after the last; what it was sent.
    async fn replica(answers: Vec<Vec<u8>>, piece: usize) -> (String, tokio::task::JoinHandle<Vec<u8>>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/prefix", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut sock, _) = l.accept().await.unwrap();
            let mut got = Vec::new();
            for answer in answers {
                let mut chunk = [0u8; 4096];
                loop {
                    let n = sock.read(&mut chunk).await.unwrap();
                    got.extend_from_slice(&chunk[..n]);
                    if got.windows(4).any(|w| w == b"\r\n\r\n") && got.ends_with(b"}") {
                        break;
                    }
                }
                for p in answer.chunks(piece) {
                    sock.write_all(p).await.unwrap();
                    sock.flush().await.unwrap();
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                got.extend_from_slice(b"|");
            }
            got
        });
        (url, task)
    }

    #[tokio::test]
    async fn answers_of_every_framing_are_read_whole_on_one_kept_connection() {
        let chunked = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nx-trailer: 1\r\n\r\n".to_vec();
        let sized = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\n\r\nbusy".to_vec();
        let until_close = b"HTTP/1.0 200 OK\r\n\r\nto the end".to_vec();
        let (url, sent) = replica(vec![chunked, sized, until_close], 3).await;
        let up = Upstream::new(&url, Some("k1"), &tls_client().unwrap()).unwrap();
        let first = up.post("/v1/completions", Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(first.status, 200);
        assert_eq!(&first.bytes().await.unwrap()[..], b"hello world");
        let second = up.post("/v1/completions", Bytes::from_static(b"{}")).await.unwrap();
        assert_eq!(second.status, 429);
        assert_eq!(&second.bytes().await.unwrap()[..], b"busy");
        let third = up.post("/v1/chat/completions", Bytes::from_static(b"{\"a\":1}")).await.unwrap();
        let pieces: Vec<Bytes> = third.into_stream().map(Result::unwrap).collect().await;
        assert_eq!(pieces.concat(), b"to the end");
        let sent = String::from_utf8(sent.await.unwrap()).unwrap();
        assert_eq!(sent.matches("POST /prefix/v1/completions HTTP/1.1\r\n").count(), 2, "{sent}");
        assert!(sent.contains("POST /prefix/v1/chat/completions HTTP/1.1\r\n"), "{sent}");
        assert!(sent.contains("authorization: Bearer k1\r\n") && sent.contains("content-length: 7\r\n\r\n{\"a\":1}"), "{sent}");
        if let Target::Plain(p) = &up.target {
            assert!(p.idle.lock().unwrap().is_empty(), "a connection read to its close is not kept");
        }
    }

    #[tokio::test]
    async fn a_kept_connection_the_replica_closed_is_replaced_and_a_cut_answer_is_an_error() {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", l.local_addr().unwrap());
        let server = tokio::spawn(async move {
            // The first connection answers once and closes; the second cuts its answer short.
            for answer in [&b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"[..], b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nshort"] {
                let (mut sock, _) = l.accept().await.unwrap();
                let mut chunk = [0u8; 4096];
                let _ = sock.read(&mut chunk).await.unwrap();
                sock.write_all(answer).await.unwrap();
            }
        });
        let up = Upstream::new(&url, None, &tls_client().unwrap()).unwrap();
        assert_eq!(&up.post("/v1/x", Bytes::from_static(b"{}")).await.unwrap().bytes().await.unwrap()[..], b"ok");
        tokio::time::sleep(Duration::from_millis(50)).await;
        let cut = up.post("/v1/x", Bytes::from_static(b"{}")).await.unwrap().bytes().await.unwrap_err();
        assert!(cut.contains("mid-answer"), "{cut}");
        server.await.unwrap();
    }

    #[test]
    fn a_kept_connection_serves_only_the_event_loop_it_is_registered_with() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let up = Upstream::new(&url, None, &tls_client().unwrap()).unwrap();
        let Target::Plain(plain) = &up.target else { panic!("a plain replica") };
        let on_own_loop = |plain: Arc<Plain>, job: fn(&Plain) -> usize| {
            std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
                rt.block_on(async move { job(&plain) })
            })
            .join()
            .unwrap()
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let sock = plain.connect().await.unwrap();
            plain.give_back(sock);
            assert_eq!(on_own_loop(plain.clone(), |p| usize::from(p.take_idle().is_some())), 0, "another loop's connection");
            assert!(plain.take_idle().is_some(), "its own loop's connection");
        });
        // On a shared multi-threaded runtime any worker may take any kept connection.
        let shared = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let plain2 = plain.clone();
        shared.block_on(async move {
            let sock = plain2.connect().await.unwrap();
            let p = plain2.clone();
            tokio::task::spawn_blocking(move || p.give_back(sock)).await.unwrap();
            assert!(plain2.take_idle().is_some());
        });
    }
}
