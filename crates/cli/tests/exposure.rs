//! Nothing open by accident: the gateway's metrics want a key or their own loopback address,
//! emulated replicas want the key only their gateway holds, no answer names an internal
//! address, an open tenant serves a local client's `EMPTY` key only where that is safe, and no
//! port `up` opens answers without authentication.
// Helpers of tests: a step that fails is the test's failure.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Env, BIN};
use std::process::Command;

/// A request with an optional bearer key: (status, body).
fn request(base: &str, method: &str, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    let (status, _, body) = common::http(base, method, path, &headers, body);
    (status, body)
}

const CHAT: &str = r#"{"model":"m","messages":[{"role":"user","content":"hello"}],"max_tokens":3}"#;

/// Runs `tidepool gateway` on a file that must be refused; its one-line error.
fn refused(name: &str, config: &str) -> String {
    let dir = common::Scratch::new(name);
    std::fs::write(dir.join("g.toml"), config).unwrap();
    let out = Command::new(BIN).args(["gateway", "--config", "g.toml"]).current_dir(&dir).output().unwrap();
    assert!(!out.status.success(), "{name}: started");
    String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string()
}

#[test]
fn replicas_and_metrics_want_their_keys_and_no_answer_names_an_address() {
    let (_replica, urls) = common::start_program("keyed-replica", &["replica-emulator", "--listen", "127.0.0.1:0", "--model", "m", "--api-key-file", "k"], &[("k", "uk-only-the-gateway\n")], 1);
    let replica = &urls[0];
    assert_eq!(request(replica, "POST", "/v1/chat/completions", None, CHAT).0, 401, "a keyless request reached the replica");
    assert_eq!(request(replica, "POST", "/v1/chat/completions", Some("sk-tenant-key"), CHAT).0, 401, "a tenant's key reached the replica");
    assert_eq!(request(replica, "POST", "/v1/chat/completions", Some("uk-only-the-gateway"), CHAT).0, 200);

    let config = format!(
        "listen = \"127.0.0.1:0\"\nmetrics_key = \"mk-scrape-key\"\nmetrics_listen = \"127.0.0.1:0\"\n[[replicas]]\nurl = \"{replica}\"\nmodel = \"m\"\nbest_concurrency = 4\napi_key = \"uk-only-the-gateway\"\n[[replicas]]\nurl = \"http://127.0.0.1:9\"\nmodel = \"gone\"\nbest_concurrency = 4\n[[tenants]]\nname = \"t\"\nkeys = [\"sk-tenant-key\"]\ntpm = 1000000\nrpm = 10000\n"
    );
    let (_gateway, urls) = common::start_program("keyed-gateway", &["gateway", "--config", "g.toml"], &[("g.toml", &config)], 2);
    let (metrics, gateway) = if urls[0].contains("metrics") { (&urls[0], &urls[1]) } else { (&urls[1], &urls[0]) };
    let _ = metrics;
    assert_eq!(request(gateway, "POST", "/v1/chat/completions", Some("sk-tenant-key"), CHAT).0, 200, "the gateway holds the replica's key");
    for base in [gateway, &urls[0], &urls[1]] {
        assert_eq!(request(base, "GET", "/metrics", None, "").0, 401, "{base}/metrics without a key");
        assert_eq!(request(base, "GET", "/metrics", Some("sk-tenant-key"), "").0, 401, "{base}/metrics with a tenant's key");
        let (status, page) = request(base, "GET", "/metrics", Some("mk-scrape-key"), "");
        assert_eq!(status, 200, "{base}/metrics with the metrics key");
        assert!(page.contains("tidepool_gateway"), "{page}");
    }
    let gone = CHAT.replace("\"m\"", "\"gone\"");
    let (status, body) = request(gateway, "POST", "/v1/chat/completions", Some("sk-tenant-key"), &gone);
    assert_eq!(status, 502, "{body}");
    assert!(!body.contains("127.0.0.1") && !body.contains(":9"), "a 502 names the replica: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["error"]["type"], "server_error", "{body}");

    // Keyless metrics only on loopback.
    let err = refused("metrics-on-network", "metrics_listen = \"0.0.0.0:0\"\n");
    assert!(err.contains("metrics_listen") && err.contains("metrics_key"), "{err}");
}

#[test]
fn an_open_tenant_serves_a_local_client_and_is_refused_on_the_network() {
    let (_replica, urls) = common::start_program("open-replica", &["replica-emulator", "--listen", "127.0.0.1:0", "--model", "m"], &[], 1);
    let tenants = "[[tenants]]\nname = \"paying\"\nkeys = [\"sk-paying-key\"]\ntpm = 1000000\nrpm = 10000\n[[tenants]]\nname = \"local\"\nopen = true\ntpm = 1000000\nrpm = 10000\n";
    let config = format!("listen = \"127.0.0.1:0\"\nmetrics_key = \"mk-scrape-key\"\n[[replicas]]\nurl = \"{}\"\nmodel = \"m\"\nbest_concurrency = 4\n{tenants}", urls[0]);
    let (_gateway, gw) = common::start_program("open-gateway", &["gateway", "--config", "g.toml"], &[("g.toml", &config)], 1);
    for key in [Some("EMPTY"), None, Some("sk-paying-key")] {
        assert_eq!(request(&gw[0], "POST", "/v1/chat/completions", key, CHAT).0, 200, "key {key:?}");
    }
    let (_, page) = request(&gw[0], "GET", "/metrics", Some("mk-scrape-key"), "");
    let served = |tenant: &str| -> u64 {
        page.lines()
            .find(|l| l.starts_with("tidepool_gateway_requests_total") && l.contains(&format!("tenant=\"{tenant}\"")))
            .and_then(|l| l.rsplit(' ').next()?.parse().ok())
            .unwrap_or_else(|| panic!("no requests of {tenant} in {page}"))
    };
    assert_eq!((served("local"), served("paying")), (2, 1), "each key goes to its tenant, the rest to the open one");

    let network = format!("listen = \"0.0.0.0:0\"\n[[replicas]]\nurl = \"{}\"\nmodel = \"m\"\nbest_concurrency = 4\n{tenants}", urls[0]);
    let err = refused("open-on-network", &network);
    assert!(err.contains("open") && err.contains("allow_open_tenant_on_network"), "{err}");
    let allowed = format!("allow_open_tenant_on_network = true\n{network}");
    let (_allowed, _) = common::start_program("open-allowed", &["gateway", "--config", "g.toml"], &[("g.toml", &allowed)], 1);
    let short = refused("short-key", "[[tenants]]\nname = \"x\"\nkeys = [\"EMPTY\"]\ntpm = 1\nrpm = 1\n");
    assert!(short.contains("open = true"), "{short}");
}

#[test]
fn no_port_that_up_opens_answers_without_a_key() {
    let env = Env::new("ports");
    let pid = env.server_pid();
    let out = Command::new("ss").args(["-ltnpH"]).output().unwrap();
    let listing = String::from_utf8_lossy(&out.stdout);
    let ports: Vec<String> = listing
        .lines()
        .filter(|l| l.contains(&format!("pid={pid},")))
        .filter_map(|l| l.split_whitespace().nth(3).map(str::to_string))
        .collect();
    assert!(ports.len() >= 4, "the API, the gateway and two replicas: {listing}");
    for addr in &ports {
        let base = format!("http://{addr}");
        for (method, path, body) in [("POST", "/v1/chat/completions", CHAT.replace("\"m\"", "\"tidepool-demo\"")), ("GET", "/metrics", String::new()), ("GET", "/api/v1/jobs", String::new()), ("GET", "/v1/models", String::new())] {
            let (status, answer) = request(&base, method, path, None, &body);
            assert!(status == 401 || status == 404, "{method} {base}{path} answered {status} without a key: {answer}");
        }
    }
}
