//! HTTP/1.1 framing by hand, for tests and benchmarks that speak raw HTTP (the gateway's own
//! tests, the end-to-end tests, the benchmarks' paced client and instant upstream): a
//! request's text, where a message ends in a buffer, and its body. The gateway serves and
//! proxies with `connection.rs` and `upstream.rs`, not with this.

/// A request's text: `method path` to `host`, with `headers` (a JSON content type unless they
/// name one) and a body of `content-length` bytes.
pub fn request(method: &str, path: &str, host: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {}\r\n", body.len());
    if !headers.iter().any(|(k, _)| k.eq_ignore_ascii_case("content-type")) {
        text.push_str("content-type: application/json\r\n");
    }
    for (k, v) in headers {
        text.push_str(&format!("{k}: {v}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// Bytes whose framing is not HTTP/1.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotHttp;

/// The status of an answer's head (`HTTP/1.1 200 OK`), 0 when it has none.
pub fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0)
}

/// Where the first HTTP/1.1 message in `buf` (headers, then a Content-Length or chunked
/// body) ends, with its head in lower case; Ok(None) while it is not all there yet, Err when
/// its framing is not HTTP.
pub fn complete_message(buf: &[u8]) -> Result<Option<(usize, String)>, NotHttp> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else { return Ok(None) };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    let mut end = head_end;
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            // A chunk: size in hex, CRLF, data, CRLF; the last has size 0 and ends the body.
            let Some(line_end) = buf[end..].windows(2).position(|w| w == b"\r\n").map(|p| end + p) else { return Ok(None) };
            let size_text = String::from_utf8_lossy(&buf[end..line_end]).split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| NotHttp)?;
            end = line_end + 2 + size + 2;
            if size == 0 {
                break;
            }
        }
    } else {
        end += header("content-length:").and_then(|v| v.parse::<usize>().ok()).unwrap_or(0);
    }
    Ok((buf.len() >= end).then_some((end, head)))
}

/// Reads one HTTP/1.1 message from `sock` into `buf`; its head, or None when the peer closed
/// or spoke no HTTP. Bytes of a next message stay in `buf`.
pub async fn read_message(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some((end, head)) = complete_message(buf).ok()? {
            buf.drain(..end);
            return Some(head);
        }
        let mut chunk = [0u8; 16 * 1024];
        let n = sock.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The body of the whole message `message` (as `complete_message` delimits it): as sent, or
/// put together from its chunks.
pub fn body_of(message: &[u8]) -> Vec<u8> {
    let Some(head_end) = message.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else { return Vec::new() };
    let head = String::from_utf8_lossy(&message[..head_end]).to_ascii_lowercase();
    let chunked = head.lines().any(|l| l.strip_prefix("transfer-encoding:").is_some_and(|v| v.contains("chunked")));
    if !chunked {
        return message[head_end..].to_vec();
    }
    let mut body = Vec::new();
    let mut at = head_end;
    while let Some(line_end) = message[at..].windows(2).position(|w| w == b"\r\n").map(|p| at + p) {
        let size_text = String::from_utf8_lossy(&message[at..line_end]).split(';').next().unwrap_or("").trim().to_string();
        let Ok(size) = usize::from_str_radix(&size_text, 16) else { break };
        let start = line_end + 2;
        if size == 0 || start + size > message.len() {
            break;
        }
        body.extend_from_slice(&message[start..start + size]);
        at = start + size + 2;
    }
    body
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_carries_its_length_and_a_json_type_unless_told_otherwise() {
        let text = request("POST", "/v1/x", "h:1", &[("authorization", "Bearer k")], "{}");
        assert_eq!(text, "POST /v1/x HTTP/1.1\r\nhost: h:1\r\ncontent-length: 2\r\ncontent-type: application/json\r\nauthorization: Bearer k\r\n\r\n{}");
        let (end, head) = complete_message(text.as_bytes()).unwrap().unwrap();
        assert_eq!(end, text.len());
        assert!(head.contains("authorization: bearer k"));
        assert!(!request("PUT", "/", "h", &[("Content-Type", "text/plain")], "").contains("json"));
        assert_eq!(status_of("HTTP/1.1 413 Payload Too Large"), 413);
        assert_eq!(status_of(""), 0);
    }
    fn end_of(buf: &[u8]) -> usize {
        complete_message(buf).unwrap().unwrap().0
    }

    #[test]
    fn a_message_is_complete_only_when_its_whole_body_is_there() {
        let sized = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloHTTP/1.1";
        assert_eq!(complete_message(sized), Ok(Some((43, "http/1.1 200 ok\r\ncontent-length: 5\r\n\r\n".to_string()))));
        assert_eq!(complete_message(&sized[..40]), Ok(None));
        let chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n";
        let (end, head) = complete_message(chunked).unwrap().unwrap();
        assert_eq!((end, head.starts_with("http/1.1 200")), (chunked.len(), true));
        assert_eq!(complete_message(&chunked[..chunked.len() - 1]), Ok(None));
        assert_eq!(complete_message(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), Err(NotHttp));
        assert_eq!(body_of(chunked), b"abc");
        assert_eq!(body_of(&sized[..end_of(sized)]), b"hello");
    }
}
