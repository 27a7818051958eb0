//! The gateway's limits hold: a request larger than a tenant's whole TPM is refused as OpenAI
//! refuses it, however full the bucket; a replica's output limit is a 400 naming the field;
//! every answer carries an `x-request-id`.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::Program;



fn gateway(name: &str) -> (Program, Program, String) {
    let (replica, url) = common::start_program(&format!("{name}-replica"), &["replica-emulator", "--listen", "127.0.0.1:0", "--model", "m", "--itl-ms", "1"], &[], 1);
    let url = &url[0];
    let config = format!(
        "listen = \"127.0.0.1:0\"\n[[replicas]]\nurl = \"{url}\"\nmodel = \"m\"\nbest_concurrency = 4\nmax_tokens = 100\n[[tenants]]\nname = \"small\"\nkeys = [\"sk-small-budget\"]\ntpm = 1000\nrpm = 1000\n"
    );
    let (gw, base) = common::start_program(&format!("{name}-gateway"), &["gateway", "--config", "g.toml"], &[("g.toml", &config)], 1);
    (replica, gw, base[0].clone())
}

const KEY: (&str, &str) = ("Authorization", "Bearer sk-small-budget");

#[test]
fn a_request_larger_than_the_whole_budget_is_refused_however_full_the_bucket() {
    let (_r, _g, base) = gateway("too-large");
    // 4,000 characters of prompt: about 1,000 tokens, plus 100 to generate for each of three.
    let prompt = "x".repeat(4000);
    let big = format!(r#"{{"model":"m","messages":[{{"role":"user","content":"{prompt}"}}],"max_tokens":100,"n":3}}"#);
    for _ in 0..3 {
        let (status, head, body) = common::http(&base, "POST", "/v1/chat/completions", &[KEY], &big);
        assert_eq!(status, 429, "{body}");
        assert!(body.contains("Request too large") && body.contains("Limit 1000"), "{body}");
        assert!(!head.contains("retry-after"), "waiting never helps a request over the whole budget: {head}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["error"]["code"], "rate_limit_exceeded");
    }
    // The bucket was left full: a small request goes through.
    let small = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":5}"#;
    assert_eq!(common::http(&base, "POST", "/v1/chat/completions", &[KEY], small).0, 200);
    // An absurd max_tokens is answered at once, never run.
    let absurd = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":18446744073709551615}"#;
    let (status, _, body) = common::http(&base, "POST", "/v1/chat/completions", &[KEY], absurd);
    assert!(status == 400 || status == 429, "{status} {body}");
}

#[test]
fn output_limits_above_the_replicas_are_a_400_naming_the_field() {
    let (_r, _g, base) = gateway("output-limit");
    for (path, body, field) in [
        ("/v1/chat/completions", r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":101}"#, "max_tokens"),
        ("/v1/chat/completions", r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_completion_tokens":101}"#, "max_completion_tokens"),
        ("/v1/completions", r#"{"model":"m","prompt":"hi","max_tokens":500}"#, "max_tokens"),
        ("/v1/responses", r#"{"model":"m","input":"hi","max_output_tokens":101}"#, "max_output_tokens"),
    ] {
        let (status, _, answer) = common::http(&base, "POST", path, &[KEY], body);
        assert_eq!(status, 400, "{path} {body}: {answer}");
        let v: serde_json::Value = serde_json::from_str(&answer).unwrap();
        assert_eq!(v["error"]["param"], field, "{answer}");
        assert!(v["error"]["message"].as_str().unwrap().contains("100"), "{answer}");
    }
    let at_limit = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":100}"#;
    assert_eq!(common::http(&base, "POST", "/v1/chat/completions", &[KEY], at_limit).0, 200);
}

#[test]
fn every_answer_carries_a_request_id_echoing_the_clients() {
    let (_r, _g, base) = gateway("request-id");
    let chat = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"max_tokens":2}"#;
    let id_of = |head: &str| head.lines().find_map(|l| l.strip_prefix("x-request-id: ")).map(str::to_string);
    let mut seen = std::collections::HashSet::new();
    for (method, path, headers, body) in [
        ("POST", "/v1/chat/completions", vec![KEY], chat),
        ("POST", "/v1/chat/completions", vec![], chat),
        ("GET", "/v1/models", vec![KEY], ""),
        ("GET", "/v1/nothing-here", vec![KEY], ""),
        ("POST", "/v1/chat/completions", vec![KEY], "{not json"),
    ] {
        let (status, head, _) = common::http(&base, method, path, &headers, body);
        let id = id_of(&head).unwrap_or_else(|| panic!("{method} {path} ({status}) has no x-request-id: {head}"));
        assert!(seen.insert(id.clone()), "{id} given twice");
    }
    for (method, path, body) in [("POST", "/v1/chat/completions", chat), ("GET", "/v1/models", "")] {
        let (_, head, _) = common::http(&base, method, path, &[KEY, ("X-Request-Id", "client-id-42")], body);
        assert_eq!(id_of(&head).as_deref(), Some("client-id-42"), "{method} {path}: {head}");
    }
}
