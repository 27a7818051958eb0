//! Helpers of the crate's tests: a gateway served on loopback in front of an emulated replica,
//! and raw HTTP/1.1 to it.

use tokio::io::AsyncReadExt;
use tokio::net::TcpStream;

/// The key the test gateways want for `/metrics`.
pub(crate) const TEST_METRICS_KEY: &str = "mk-test-0001";

/// Replica settings of a gateway that has room for everything the tests send.
pub(crate) const LOOPBACK_REPLICA: &str = "best_concurrency = 8\n";

/// A gateway on loopback with `settings`, in front of an emulated replica of `itl_ms` between
/// tokens that the gateway knows with `replica_settings`; served by `run`, stopped by sending
/// on the returned channel.
pub(crate) async fn gateway_on_loopback(settings: &str, replica_settings: &str, itl_ms: f64) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<Result<(), String>>) {
    let replica = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let replica_addr = replica.local_addr().unwrap();
    let emulated = crate::emulator::EmulatorConfig { model: "m".into(), itl_ms, ..Default::default() };
    tokio::spawn(crate::emulator::serve(replica, emulated));
    let config = crate::GatewayConfig::from_toml(&format!(
        "metrics_key = \"{TEST_METRICS_KEY}\"\n{settings}[[replicas]]\nurl = \"http://{replica_addr}\"\nmodel = \"m\"\n{replica_settings}[[tenants]]\nname = \"t\"\nkeys = [\"key-0001\"]\ntpm = 1000000\nrpm = 100000\n"
    ))
    .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(crate::run(listener, config, async move {
        let _ = stopped.await;
    }));
    (addr, stop, served)
}

/// A completion request of the test tenant, raw, with `extra` header lines.
pub(crate) fn completion(path: &str, body: &str, extra: &str) -> String {
    format!("POST {path} HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer key-0001\r\n{extra}Content-Length: {}\r\n\r\n{body}", body.len())
}

/// The gateway's `/metrics` page.
pub(crate) async fn metrics(addr: std::net::SocketAddr) -> String {
    use tokio::io::AsyncWriteExt;
    let mut sock = TcpStream::connect(addr).await.unwrap();
    sock.write_all(format!("GET /metrics HTTP/1.1\r\nHost: g\r\nAuthorization: Bearer {TEST_METRICS_KEY}\r\n\r\n").as_bytes()).await.unwrap();
    answer(&mut sock, &mut Vec::new()).await.1
}

/// Reads one whole answer (by its length, or its chunks) off `sock`: (head, body).
pub(crate) async fn answer(sock: &mut TcpStream, buf: &mut Vec<u8>) -> (String, String) {
    loop {
        if let Some((end, head)) = crate::http1::complete_message(buf).unwrap() {
            let body = crate::http1::body_of(&buf[..end]);
            buf.drain(..end);
            return (head, String::from_utf8(body).unwrap());
        }
        let mut chunk = [0u8; 8192];
        let n = sock.read(&mut chunk).await.unwrap();
        assert!(n > 0, "the connection closed mid-answer: {:?}", String::from_utf8_lossy(buf));
        buf.extend_from_slice(&chunk[..n]);
    }
}
