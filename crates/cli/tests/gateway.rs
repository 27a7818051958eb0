//! The inference gateway end to end: the real binary, emulated replicas on loopback, the real
//! `openai` Python package, budgets and tiers under load.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, BIN};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A POST with `key`; (status, lower-cased head, body).
fn post(base: &str, path: &str, key: &str, extra_headers: &[(&str, &str)], body: &str) -> (u16, String, String) {
    let auth = format!("Bearer {key}");
    let headers: Vec<(&str, &str)> = [("Authorization", auth.as_str())].into_iter().chain(extra_headers.iter().copied()).collect();
    common::http(base, "POST", path, &headers, body)
}

/// A child process killed when the test ends, pass or fail (else it would hold the test's
/// output pipe open and the run would never end), and the directory it ran in, which goes
/// after it.
struct Killed(Child, Option<common::Scratch>);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `tidepool gateway --config FILE`; returns it and its base URL.
fn start_gateway(config: &std::path::Path) -> (Killed, String) {
    let mut gw = Command::new(BIN).args(["gateway", "--config"]).arg(config).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(gw.stderr.take().unwrap()).lines();
    let gw = Killed(gw, None);
    let base = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.split("gateway listening on ").nth(1) {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (gw, base)
}

/// Writes a gateway file (listening on a free port) and starts the gateway on it.
fn gateway_with(name: &str, body: &str) -> (Killed, String) {
    let dir = common::Scratch::new(&format!("gw-{name}"));
    let config = dir.join("gateway.toml");
    std::fs::write(&config, format!("listen = \"127.0.0.1:0\"\n{body}")).unwrap();
    let (mut gw, base) = start_gateway(&config);
    gw.1 = Some(dir);
    (gw, base)
}

fn start_emulator(best: u32) -> (Killed, String) {
    let mut child = Command::new(BIN)
        .args(["replica-emulator", "--listen", "127.0.0.1:0", "--best-concurrency", &best.to_string(), "--model", "m", "--itl-ms", "20"])
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = BufReader::new(stderr).lines();
    let url = loop {
        let line = lines.next().unwrap().unwrap();
        if let Some(rest) = line.split("listening on ").nth(1) {
            break rest.trim().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});
    (Killed(child, None), url)
}

#[test]
fn the_openai_package_works_against_the_demo_gateway() {
    let env = Env::new("openai");
    let key = std::fs::read_to_string(env.dir.join("data/gateway-demo.key")).unwrap();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/openai_client.py");
    let out = Command::new("python3").args([script, &env.gateway_url, key.trim(), "tidepool-demo"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.trim_end().ends_with("ok"), "{stdout}");
}

#[test]
fn over_its_tpm_a_tenant_gets_429_with_retry_after_and_under_it_never() {
    let (_emulator, url) = start_emulator(8);
    let (_gw, base) = gateway_with(
        "tpm",
        &format!("[[replicas]]\nurl = \"{url}\"\nmodel = \"m\"\nbest_concurrency = 8\n\n[[tenants]]\nname = \"small\"\nkeys = [\"sk-small-tenant\"]\ntpm = 100\nrpm = 1000\n\n[[tenants]]\nname = \"big\"\nkeys = [\"sk-big-tenant\"]\ntpm = 1000000\nrpm = 100000\n"),
    );
    let body = r#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":30}"#;
    let mut refused = 0;
    for _ in 0..5 {
        let (status, head, text) = post(&base, "/v1/chat/completions", "sk-small-tenant", &[], body);
        if status == 429 {
            refused += 1;
            assert!(head.contains("retry-after: "), "{head}");
            assert!(text.contains("rate_limit_exceeded"), "{text}");
            assert!(text.contains("\"type\":\"tokens\""), "the limit hit is the TPM: {text}");
            assert!(head.contains("x-ratelimit-remaining-tokens"), "{head}");
        } else {
            assert_eq!(status, 200, "{text}");
        }
    }
    assert!(refused >= 2, "100 TPM allows 3 requests of ~32 tokens, refused {refused}");
    for _ in 0..20 {
        let (status, head, text) = post(&base, "/v1/chat/completions", "sk-big-tenant", &[], body);
        assert_eq!(status, 200, "a tenant under its limit is never refused: {text}");
        // Each rate-limit header carries its own value (a bucket this large is full again
        // within milliseconds, so the remaining counts may be whole).
        let value = |name: &str| head.lines().find_map(|l| l.strip_prefix(name)).map(|v| v.trim().to_string()).unwrap_or_default();
        assert_eq!(value("x-ratelimit-limit-requests:"), "100000", "{head}");
        assert_eq!(value("x-ratelimit-limit-tokens:"), "1000000", "{head}");
        assert!(value("x-ratelimit-remaining-requests:").parse::<u64>().is_ok_and(|n| n <= 100000), "{head}");
        assert!(value("x-ratelimit-remaining-tokens:").parse::<u64>().is_ok_and(|n| n <= 1000000), "{head}");
        for reset in ["x-ratelimit-reset-requests:", "x-ratelimit-reset-tokens:"] {
            assert!(value(reset).strip_suffix("ms").is_some_and(|ms| ms.parse::<u64>().is_ok()), "{head}");
        }
    }
    let (status, _, text) = post(&base, "/v1/chat/completions", "sk-nobody-key", &[], body);
    assert_eq!(status, 401);
    assert!(text.contains("invalid_api_key"));
    let (status, _, text) = post(&base, "/v1/chat/completions", "sk-big-tenant", &[], r#"{"messages":[]}"#);
    assert_eq!(status, 400);
    assert!(text.contains("\"param\":\"model\""), "{text}");
    let (status, _, _) = post(&base, "/v1/chat/completions", "sk-big-tenant", &[("X-Tidepool-Tier", "realtime")], body);
    assert_eq!(status, 200, "realtime key may say realtime");
}

#[test]
fn realtime_cuts_off_a_filler_stream_when_the_replica_is_full() {
    let (_emulator, url) = start_emulator(2);
    let (_gw, base) = gateway_with(
        "cut",
        &format!("realtime_headroom = 0\nqueue_wait_ms = 0\n[[replicas]]\nurl = \"{url}\"\nmodel = \"m\"\nbest_concurrency = 2\nmax_concurrency = 2\n\n[[tenants]]\nname = \"chat\"\nkeys = [\"sk-chat-tenant\"]\ntpm = 1000000\nrpm = 100000\n"),
    );
    let long = r#"{"model":"m","messages":[{"role":"user","content":"fill"}],"max_tokens":400,"n":2,"stream":true}"#;
    let fillers: Vec<_> = (0..2)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || post(&base, "/v1/chat/completions", "sk-chat-tenant", &[("X-Tidepool-Tier", "filler")], long))
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    let (status, _, _) = post(&base, "/v1/chat/completions", "sk-chat-tenant", &[("X-Tidepool-Tier", "filler")], long);
    assert_eq!(status, 429, "a third filler finds no slot");
    let short = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":3}"#;
    let (status, _, text) = post(&base, "/v1/chat/completions", "sk-chat-tenant", &[], short);
    assert_eq!(status, 200, "realtime is admitted: {text}");
    let results: Vec<(u16, String, String)> = fillers.into_iter().map(|h| h.join().unwrap()).collect();
    let cut: Vec<&String> = results.iter().map(|(_, _, body)| body).filter(|body| body.contains("\"finish_reason\":\"preempted\"")).collect();
    assert_eq!(cut.len(), 1, "exactly one filler stream cut off with a clear finish_reason");
    let preempted: Vec<u64> = cut[0]
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<serde_json::Value>(data).ok())
        .flat_map(|event| event["choices"].as_array().cloned().unwrap_or_default())
        .filter(|choice| choice["finish_reason"] == "preempted")
        .filter_map(|choice| choice["index"].as_u64())
        .collect();
    assert_eq!(preempted, [0, 1], "each of the n choices is ended: {}", cut[0]);
    assert!(results.iter().all(|(_, _, body)| body.contains("data: [DONE]")));
}

#[test]
fn filler_waits_for_slots_and_the_best_concurrency_is_learned() {
    // A batch of 4: one more request slows each token by 25%, well past the learner's 15%
    // tolerance (at a batch of 6 the next level is only 17% slower, and noise on a busy host
    // could hide it).
    let (_emulator, url) = start_emulator(4);
    let (_gw, base) = gateway_with(
        "learn",
        &format!("realtime_headroom = 0\nqueue_wait_ms = 60000\nmetrics_key = \"mk-test-metrics\"\n[[replicas]]\nurl = \"{url}\"\nmodel = \"m\"\nbest_concurrency = 2\nlearn_best_concurrency = true\n\n[[tenants]]\nname = \"fill\"\nkeys = [\"sk-fill-tenant\"]\ntpm = 100000000\nrpm = 1000000\ntier = \"filler\"\n"),
    );
    let body = r#"{"model":"m","messages":[{"role":"user","content":"fill"}],"max_tokens":30,"stream":true}"#;
    let until = std::time::Instant::now() + Duration::from_secs(8);
    // Far more filler than the replica's batch, all of it sent at once and again as it ends.
    let clients: Vec<_> = (0..24)
        .map(|_| {
            let base = base.clone();
            std::thread::spawn(move || {
                let mut statuses = Vec::new();
                while std::time::Instant::now() < until {
                    statuses.push(post(&base, "/v1/chat/completions", "sk-fill-tenant", &[], body).0);
                }
                statuses
            })
        })
        .collect();
    let statuses: Vec<u16> = clients.into_iter().flat_map(|h| h.join().unwrap()).collect();
    assert!(statuses.iter().all(|s| *s == 200), "queued filler is served, not refused: {statuses:?}");
    let (_, metrics) = get(&base, "/metrics", "mk-test-metrics");
    let learned: u32 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("tidepool_gateway_best_concurrency{replica=\"0\"} "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no gauge in {metrics}"));
    // The emulator slows down past 4 in flight; one level either side of it is noise.
    assert!((3..=5).contains(&learned), "learned best concurrency {learned}, emulator's batch is 4");
}

fn get(base: &str, path: &str, key: &str) -> (u16, String) {
    let auth = format!("Bearer {key}");
    let (status, _, body) = common::http(base, "GET", path, &[("Authorization", auth.as_str())], "");
    (status, body)
}

#[test]
fn a_batch_survives_kill_9_and_completes_once_per_line() {
    let mut env = Env::new("batch-restart");
    let key = std::fs::read_to_string(env.dir.join("data/gateway-demo.key")).unwrap().trim().to_string();
    let lines: Vec<String> = (0..60)
        .map(|i| format!(r#"{{"custom_id":"c{i}","method":"POST","url":"/v1/chat/completions","body":{{"model":"tidepool-demo","messages":[{{"role":"user","content":"x"}}],"max_tokens":40}}}}"#))
        .collect();
    let boundary = "tidepoolboundary";
    let form = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"in.jsonl\"\r\nContent-Type: application/jsonl\r\n\r\n{}\r\n--{boundary}--\r\n",
        lines.join("\n")
    );
    let (status, _, text) = post(&env.gateway_url, "/v1/files", &key, &[("Content-Type", &format!("multipart/form-data; boundary={boundary}"))], &form);
    assert_eq!(status, 200, "{text}");
    let file: serde_json::Value = serde_json::from_str(&text).unwrap();
    let body = format!(r#"{{"input_file_id":"{}","endpoint":"/v1/chat/completions","completion_window":"24h"}}"#, file["id"].as_str().unwrap());
    let (status, _, text) = post(&env.gateway_url, "/v1/batches", &key, &[], &body);
    assert_eq!(status, 200, "{text}");
    let batch: serde_json::Value = serde_json::from_str(&text).unwrap();
    let id = batch["id"].as_str().unwrap().to_string();
    std::thread::sleep(Duration::from_millis(700));
    env.kill9();
    let url = env.url.trim_start_matches("http://").to_string();
    env.start(&url);
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let batch = loop {
        let (status, text) = get(&env.gateway_url, &format!("/v1/batches/{id}"), &key);
        assert_eq!(status, 200, "{text}");
        let b: serde_json::Value = serde_json::from_str(&text).unwrap();
        if b["status"] == "completed" {
            break b;
        }
        assert!(std::time::Instant::now() < deadline, "{b}");
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(batch["request_counts"]["completed"], 60, "{batch}");
    assert_eq!(batch["model"], "tidepool-demo", "{batch}");
    assert_eq!(batch["usage"]["output_tokens"], 60 * 40, "{batch}");
    assert!(batch["usage"]["input_tokens"].as_u64().is_some_and(|n| n >= 60), "{batch}");
    assert_eq!(batch["usage"]["total_tokens"].as_u64(), Some(batch["usage"]["input_tokens"].as_u64().unwrap() + 2400), "{batch}");
    let (_, output) = get(&env.gateway_url, &format!("/v1/files/{}/content", batch["output_file_id"].as_str().unwrap()), &key);
    let ids: std::collections::BTreeSet<String> = output
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["custom_id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 60);
    let (status, _) = get(&env.gateway_url, &format!("/v1/batches/{id}"), "sk-someone-else");
    assert_eq!(status, 401);
}
