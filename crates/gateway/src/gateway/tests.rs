//! The gateway's own tests: pinned workers, realtime waiting at the cap, cut-off streams.

use super::*;

/// The CPUs a thread of this process named `name` may run on, once it exists.
fn cpus_of_thread(name: &str) -> Option<String> {
    for task in std::fs::read_dir("/proc/self/task").ok()?.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            let status = std::fs::read_to_string(task.path().join("status")).ok()?;
            return status.lines().find_map(|l| l.strip_prefix("Cpus_allowed_list:")).map(|v| v.trim().to_string());
        }
    }
    None
}

#[tokio::test]
async fn pinned_workers_each_keep_to_one_allowed_cpu() {
    let allowed = super::serving::allowed_cpus().unwrap_or_default();
    assert!(!allowed.is_empty());
    let config = GatewayConfig::from_toml("workers = 2\npin_workers = true\n").unwrap_or_else(|e| unreachable!("{e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap_or_else(|e| unreachable!("{e}"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let served = tokio::spawn(run_on_workers(listener, config, async move {
        let _ = stopped.await;
    }));
    let mut seen = Vec::new();
    for _ in 0..200 {
        seen = ["gateway-0", "gateway-1"].iter().filter_map(|n| cpus_of_thread(n)).collect();
        if seen.len() == 2 && seen.iter().all(|c| !c.contains(['-', ','])) {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let _ = stop.send(());
    assert!(served.await.is_ok_and(|r| r.is_ok()));
    let expected: Vec<String> = (0..2).map(|n| allowed[n % allowed.len()].to_string()).collect();
    assert_eq!(seen, expected);
}

#[tokio::test]
async fn realtime_at_the_hard_cap_waits_for_a_slot_rather_than_a_429_but_not_for_long() {
    use crate::testing::{answer, completion, gateway_on_loopback, metrics};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    // One slot; realtime waits at most 800 / 4 = 200 ms for it.
    let (addr, stop, served) = gateway_on_loopback("typical_request_ms = 800\nrealtime_headroom = 0\n", "best_concurrency = 1\nmax_concurrency = 1\n", 20.0).await;
    let stream = |tokens: u32| completion("/v1/completions", &format!(r#"{{"model":"m","prompt":"x","max_tokens":{tokens},"stream":true}}"#), "");
    let one_more = completion("/v1/completions", r#"{"model":"m","prompt":"x","max_tokens":1}"#, "");
    // A stream of 4 tokens (about 100 ms) holds the slot: the next realtime request waits and is served.
    let mut holder = tokio::net::TcpStream::connect(addr).await.unwrap();
    holder.write_all(stream(4).as_bytes()).await.unwrap();
    holder.read_exact(&mut [0u8; 12]).await.unwrap();
    let mut waiting = tokio::net::TcpStream::connect(addr).await.unwrap();
    waiting.write_all(one_more.as_bytes()).await.unwrap();
    let (head, body) = answer(&mut waiting, &mut Vec::new()).await;
    assert!(head.starts_with("http/1.1 200"), "{head}: {body}");
    // A stream of 100 tokens (2 s) holds it past the wait: a 429 with Retry-After, after the wait.
    let mut holder = tokio::net::TcpStream::connect(addr).await.unwrap();
    holder.write_all(stream(100).as_bytes()).await.unwrap();
    holder.read_exact(&mut [0u8; 12]).await.unwrap();
    let mut refused = tokio::net::TcpStream::connect(addr).await.unwrap();
    let asked = std::time::Instant::now();
    refused.write_all(one_more.as_bytes()).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    let seen = metrics(addr).await;
    assert!(seen.contains("\ntidepool_gateway_waiting{tier=\"realtime\"} 1\n"), "{seen}");
    let (head, body) = answer(&mut refused, &mut Vec::new()).await;
    let waited = asked.elapsed();
    assert!(head.starts_with("http/1.1 429") && head.contains("\r\nretry-after: 1"), "{head}: {body}");
    assert!(waited >= std::time::Duration::from_millis(190) && waited < std::time::Duration::from_millis(1500), "{waited:?}");
    let seen = metrics(addr).await;
    assert!(seen.contains("\ntidepool_gateway_waiting{tier=\"realtime\"} 0\n"), "{seen}");
    assert!(seen.contains("\ntidepool_gateway_refused_by_tier_total{tier=\"realtime\",limit=\"capacity\"} 1\n"), "{seen}");
    assert!(seen.contains("\ntidepool_gateway_refused_by_tier_total{tier=\"realtime\",limit=\"tpm\"} 0\n"), "{seen}");
    drop(holder);
    let _ = stop.send(());
    assert!(served.await.unwrap().is_ok());
}

#[tokio::test]
async fn realtime_ends_a_filler_responses_stream_as_incomplete_and_its_tokens_are_counted() {
    use crate::testing::{answer, completion, gateway_on_loopback, metrics};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (addr, stop, served) = gateway_on_loopback("realtime_headroom = 0\n", "best_concurrency = 1\nmax_concurrency = 1\n", 20.0).await;
    // 100 tokens at 20 ms: still streaming when realtime comes.
    let long = r#"{"model":"m","input":"x","max_output_tokens":100,"stream":true}"#;
    let mut filler = tokio::net::TcpStream::connect(addr).await.unwrap();
    filler.write_all(completion("/v1/responses", long, "X-Tidepool-Tier: filler\r\nConnection: close\r\n").as_bytes()).await.unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("response.output_text.delta") {
        let mut chunk = [0u8; 4096];
        let n = filler.read(&mut chunk).await.unwrap();
        assert!(n > 0);
        seen.extend_from_slice(&chunk[..n]);
    }
    let mut realtime = tokio::net::TcpStream::connect(addr).await.unwrap();
    realtime.write_all(completion("/v1/responses", r#"{"model":"m","input":"abcdefgh","max_output_tokens":3}"#, "").as_bytes()).await.unwrap();
    let (head, body) = answer(&mut realtime, &mut Vec::new()).await;
    assert!(head.starts_with("http/1.1 200"), "{head}: {body}");
    let answered: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!((answered["usage"]["input_tokens"].as_u64(), answered["usage"]["output_tokens"].as_u64()), (Some(2), Some(3)));
    let mut rest = Vec::new();
    tokio::time::timeout(std::time::Duration::from_secs(10), filler.read_to_end(&mut rest)).await.expect("the cut stream ends").unwrap();
    seen.extend_from_slice(&rest);
    let text = String::from_utf8_lossy(&seen);
    let tail = text.split("event: response.incomplete\ndata: ").nth(1).unwrap_or_else(|| panic!("no response.incomplete in {text}"));
    let event: serde_json::Value = serde_json::from_str(tail.split("\n\n").next().unwrap().trim_end_matches("\r\n0")).unwrap();
    assert_eq!(event["response"]["status"], "incomplete");
    assert_eq!(event["response"]["incomplete_details"]["reason"], "preempted");
    assert!(!text.contains("response.completed"), "{text}");
    let page = metrics(addr).await;
    assert!(page.contains("tidepool_gateway_cut_off_total{replica=\"0\"} 1\n"), "{page}");
    // The realtime answer's 2 + 3 tokens, and the cut stream's prompt token and the deltas it had.
    let prompt: u64 = page.lines().find_map(|l| l.strip_prefix("tidepool_gateway_tokens_total{tenant=\"t\",kind=\"prompt\"} ")).unwrap().parse().unwrap();
    let completion_tokens: u64 = page.lines().find_map(|l| l.strip_prefix("tidepool_gateway_tokens_total{tenant=\"t\",kind=\"completion\"} ")).unwrap().parse().unwrap();
    let deltas = text.matches("event: response.output_text.delta").count() as u64;
    assert_eq!((prompt, completion_tokens), (2 + 1, 3 + deltas), "{page}");
    let _ = stop.send(());
    assert!(served.await.unwrap().is_ok());
}

#[tokio::test]
async fn replicas_come_and_go_while_requests_run() {
    async fn emulated() -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let emulated = crate::emulator::EmulatorConfig { model: "m".into(), itl_ms: 20.0, ..Default::default() };
        tokio::spawn(crate::emulator::serve(listener, emulated));
        url
    }
    let (first_url, second_url) = (emulated().await, emulated().await);
    let config = GatewayConfig::from_toml(&format!(
        "[[replicas]]\nurl = \"{first_url}\"\nmodel = \"m\"\nbest_concurrency = 4\n[[tenants]]\nname = \"t\"\nkeys = [\"key-0001\"]\ntpm = 1000000\nrpm = 100000\n"
    ))
    .unwrap();
    let g = Arc::new(Gateway::new(config).unwrap());
    let ask = |g: Arc<Gateway>| {
        let headers = CompletionHeaders { authorization: Some(HeaderValue::from_static("Bearer key-0001")), tier: None };
        let body = Bytes::from_static(br#"{"model":"m","prompt":"x","max_tokens":10}"#);
        tokio::spawn(g.handle(headers, body, Endpoint::Completions))
    };
    let in_flight = |g: &Gateway| g.replicas().into_iter().map(|(id, _, draining, n)| (id.0, draining, n)).collect::<Vec<_>>();
    let settle = || tokio::time::sleep(std::time::Duration::from_millis(50));

    // A request runs on the first replica (10 tokens at 20 ms) while replicas change under it.
    let running = ask(g.clone());
    settle().await;
    assert_eq!(in_flight(&g), vec![(0, false, 1)]);
    let second = g.add_replica(crate::config::Replica {
        url: second_url,
        model: "m".into(),
        best_concurrency: 4,
        max_concurrency: 4,
        learn: None,
        api_key: None,
        max_tokens: None,
    });
    assert_eq!(second, Ok(ReplicaId(1)));
    assert_eq!(g.replicas_for("m"), vec![ReplicaId(0), ReplicaId(1)]);
    assert!(g.drain_replica(ReplicaId(0)));
    assert_eq!(g.replicas_for("m"), vec![ReplicaId(1)], "a draining replica takes nothing new");
    // New work goes to the second replica while the first still finishes its request.
    let next = ask(g.clone());
    settle().await;
    assert_eq!(in_flight(&g), vec![(0, true, 1), (1, false, 1)]);
    assert!(g.remove_replica(ReplicaId(0)));
    assert!(!g.remove_replica(ReplicaId(0)), "removed once");
    for handle in [running, next] {
        let answered = handle.await.unwrap();
        assert_eq!(answered.status(), StatusCode::OK);
        let body = axum::body::to_bytes(answered.into_body(), 1 << 20).await.unwrap();
        let value: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(value["usage"]["completion_tokens"], 10, "{value}");
    }
    assert_eq!(in_flight(&g), vec![(1, false, 0)], "the removed replica's slot was released with it");
    let page = g.metrics_text();
    assert!(page.contains("tidepool_gateway_best_concurrency{replica=\"1\"} 4\n") && !page.contains("replica=\"0\""), "{page}");

    // With no replica left for the model, it no longer exists.
    assert!(g.remove_replica(ReplicaId(1)));
    let gone = ask(g.clone()).await.unwrap();
    assert_eq!(gone.status(), StatusCode::NOT_FOUND);
    assert!(g.models().is_empty());
}
