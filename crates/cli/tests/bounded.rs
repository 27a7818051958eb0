//! Bounded connections: a request head that dribbles in, an idle connection, a flood of
//! connections and an oversized body cost the API and the gateway nothing lasting; the CLI
//! gives up on a stopped server with one line naming it.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, BIN};
use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::{Duration, Instant};

/// True when the peer closes `s` within `secs` (a read returns end of file or an error).
fn closed_within(s: &mut TcpStream, secs: u64) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    let until = Instant::now() + Duration::from_secs(secs);
    let mut sink = [0u8; 65536];
    while Instant::now() < until {
        match s.read(&mut sink) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => return true,
        }
    }
    false
}

fn connect(base: &str) -> TcpStream {
    TcpStream::connect(base.trim_start_matches("http://").trim_start_matches("https://").trim_end_matches('/')).unwrap()
}

/// Sends a request with a body of `n` bytes; the status and body of the answer.
fn post_sized(base: &str, path: &str, key: &str, n: usize) -> (u16, String) {
    let mut s = connect(base);
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {key}\r\nContent-Type: application/json\r\nContent-Length: {n}\r\n\r\n");
    s.write_all(head.as_bytes()).unwrap();
    // The server may answer and close before the body is all sent: that is the point.
    let _ = s.write_all(&vec![b' '; n]);
    let mut text = Vec::new();
    let _ = s.read_to_end(&mut text);
    let text = String::from_utf8_lossy(&text).to_string();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    (head.split(' ').nth(1).unwrap_or("0").parse().unwrap_or(0), body.to_string())
}

/// Opens `n` connections that send nothing; how many the peer closed at once.
fn flood(base: &str, n: usize) -> (Vec<TcpStream>, usize) {
    let held: Vec<TcpStream> = (0..n).map(|_| connect(base)).collect();
    std::thread::sleep(Duration::from_millis(500));
    let closed = held
        .iter()
        .filter(|s| {
            s.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
            match s.peek(&mut [0u8; 1]) {
                Ok(0) => true,
                Ok(_) => false,
                Err(e) => !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut),
            }
        })
        .count();
    (held, closed)
}

#[test]
fn the_api_bounds_heads_idle_connections_their_number_and_bodies() {
    let env = Env::with_args("api-bounds", &["--header-timeout", "1", "--idle-timeout", "2", "--max-connections", "24", "--max-body-mib", "1"]);
    // A head that never ends.
    let mut slow = connect(&env.url);
    slow.write_all(b"GET /api/v1/jobs HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_within(&mut slow, 10), "a partial head kept its connection");
    // A connection that asked once and then says nothing.
    let token = std::fs::read_to_string(env.dir.join("data/admin.token")).unwrap();
    let mut idle = connect(&env.url);
    write!(idle, "GET /api/v1/nodes HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\r\n", token.trim()).unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(closed_within(&mut idle, 15), "an idle connection was kept");
    // A body over the cap: 413 in the API's error shape.
    let (status, body) = post_sized(&env.url, "/api/v1/jobs", token.trim(), 2 << 20);
    assert_eq!(status, 413, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_else(|_| panic!("not JSON: {body}"));
    assert_eq!(v["field"], "body", "{body}");
    // More connections than the cap: the extra ones are closed at once, and once the flood is
    // gone (idle), the CLI is served again.
    let (held, closed) = flood(&env.url, 40);
    assert!(closed >= 10, "{closed} of 40 closed past a cap of 24");
    drop(held);
    env.eventually(20, "the API to serve again", |e| e.run(&["jobs"]).status.success());
}

#[test]
fn the_cli_gives_up_on_a_stopped_server_with_one_line() {
    let env = Env::new("stopped");
    let pid = env.server_pid().to_string();
    let _ = Command::new("kill").args(["-STOP", &pid]).status();
    let out = env.cmd(BIN, &["jobs"]).env("TIDEPOOL_TIMEOUT", "2").output().unwrap();
    let _ = Command::new("kill").args(["-CONT", &pid]).status();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    assert!(err.contains(&env.url) && err.contains("did not answer"), "{err}");
    let bad = env.cmd(BIN, &["jobs"]).env("TIDEPOOL_TIMEOUT", "soon").output().unwrap();
    assert!(String::from_utf8_lossy(&bad.stderr).contains("TIDEPOOL_TIMEOUT"));
}



#[test]
fn the_gateway_bounds_heads_idle_connections_their_number_and_bodies() {
    let (_replica, replica) = common::start_program("bounded-replica", &["replica-emulator", "--listen", "127.0.0.1:0", "--model", "m"], &[], 1);
    let replica = &replica[0];
    let config = format!(
        "listen = \"127.0.0.1:0\"\nheader_timeout_s = 1\nidle_timeout_s = 2\nmax_connections = 24\nmax_request_bytes = 100000\n[[replicas]]\nurl = \"{replica}\"\nmodel = \"m\"\nbest_concurrency = 4\n[[tenants]]\nname = \"t\"\nkeys = [\"sk-bounded-key\"]\ntpm = 100000000\nrpm = 100000\n"
    );
    let (_gateway, gw) = common::start_program("bounded-gateway", &["gateway", "--config", "g.toml"], &[("g.toml", &config)], 1);
    let gw = &gw[0];
    let mut slow = connect(gw);
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_within(&mut slow, 10), "a partial head kept its connection");
    let mut slow_other = connect(gw);
    slow_other.write_all(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n").unwrap();
    assert!(closed_within(&mut slow_other, 10), "a partial head on another route kept its connection");
    let mut idle = connect(gw);
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    write!(idle, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-bounded-key\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut first = [0u8; 12];
    idle.read_exact(&mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 200");
    assert!(closed_within(&mut idle, 15), "an idle connection was kept");

    for n in [200_000, 20 << 20] {
        let (status, answer) = post_sized(gw, "/v1/chat/completions", "sk-bounded-key", n);
        assert_eq!(status, 413, "{n} bytes: {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap_or_else(|_| panic!("not JSON: {answer}"));
        assert_eq!(v["error"]["code"], "request_too_large", "{answer}");
    }
    let (held, closed) = flood(gw, 40);
    assert!(closed >= 10, "{closed} of 40 closed past a cap of 24");
    drop(held);
    let mut again = connect(gw);
    write!(again, "GET /v1/models HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer sk-bounded-key\r\nConnection: close\r\n\r\n").unwrap();
    let mut text = String::new();
    let _ = again.read_to_string(&mut text);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
}
