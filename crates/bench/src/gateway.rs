//! `tidepool-bench gateway`: the gateway and emulated replicas under a tier mix at 1x, 2x and 3x
//! their capacity, next to the same load through a first-come-first-served proxy (the same
//! gateway with tiers off), and the gateway's own added latency against an instant upstream at
//! 1,000 and 10,000 requests/s, sent by a paced open-loop client of raw HTTP/1.1.

use crate::line;
use crate::load::{instant_upstream, paced_load};
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tidepool_gateway::emulator::EmulatorConfig;
use tidepool_gateway::GatewayConfig;

const TIERS: [(&str, u32); 4] = [("realtime", 30), ("interruptible", 10), ("offline", 30), ("filler", 30)];
const OUTPUT_TOKENS: u64 = 20;
const ITL_MS: f64 = 10.0;
const BEST: u32 = 22;
const N_REPLICAS: usize = 2;

#[derive(Default, Clone)]
struct TierStats {
    requests: u64,
    refused: u64,
    cut: u64,
    tokens: u64,
    ttft_ms: Vec<f64>,
    itl_ms: Vec<f64>,
}

/// The `p` percentile of `v`, or null where nothing was measured (no request answered).
fn percentile_or_null(v: &mut [f64], p: f64) -> Value {
    if v.is_empty() { Value::Null } else { json!(pct(v, p)) }
}

fn pct(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

async fn start_emulators(itl_ms: f64) -> Result<Vec<String>, String> {
    let mut urls = Vec::new();
    for _ in 0..N_REPLICAS {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
        urls.push(format!("http://{}", l.local_addr().map_err(|e| e.to_string())?));
        let config = EmulatorConfig { best_concurrency: BEST, itl_ms, prefill_us_per_token: 50.0, ..EmulatorConfig::default() };
        tokio::spawn(tidepool_gateway::emulator::serve(l, config));
    }
    Ok(urls)
}

/// The gateway's admission settings with tiers on, or off (a plain first-come-first-served
/// proxy). With tiers on, the lowest tiers wait at most one packing round for a slot, then get
/// their 429.
fn admission_settings(tiers_on: bool) -> &'static str {
    if tiers_on {
        "realtime_headroom = 1\ntypical_request_ms = 250\nqueue_wait_ms = 1000\n"
    } else {
        "realtime_headroom = 0\ntypical_request_ms = 250\nqueue_wait_ms = 0\n"
    }
}

/// Starts a gateway in front of `urls`; with `learn`, it starts from a best concurrency of 4
/// The key the benchmark's gateways want for `/metrics`.
const BENCH_METRICS_KEY: &str = "mk-bench-metrics";

/// and learns the rest.
async fn start_gateway(urls: &[String], tiers_on: bool, learn: bool) -> Result<String, String> {
    let mut toml = format!("metrics_key = \"{BENCH_METRICS_KEY}\"\n{}", admission_settings(tiers_on));
    for u in urls {
        // Tiers off: a plain proxy that admits up to the best batch, first come first served.
        let max = if tiers_on { BEST + BEST / 2 } else { BEST };
        let best = if learn { "best_concurrency = 4\nlearn_best_concurrency = true".to_string() } else { format!("best_concurrency = {BEST}") };
        toml.push_str(&format!("[[replicas]]\nurl = \"{u}\"\nmodel = \"m\"\n{best}\nmax_concurrency = {max}\n"));
    }
    for (tier, _) in TIERS {
        let tier_line = if tiers_on { format!("tier = \"{tier}\"\n") } else { "tier = \"realtime\"\n".into() };
        toml.push_str(&format!("[[tenants]]\nname = \"{tier}\"\nkeys = [\"sk-bench-{tier}\"]\ntpm = 100000000\nrpm = 10000000\n{tier_line}"));
    }
    let config = GatewayConfig::from_toml(&toml)?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.map_err(|e| e.to_string())?;
    let url = format!("http://{}", l.local_addr().map_err(|e| e.to_string())?);
    tokio::spawn(tidepool_gateway::run(l, config, std::future::pending()));
    Ok(url)
}

/// One streamed request; returns (status, tokens, ttft, inter-token gaps, cut off).
async fn one(client: &reqwest::Client, url: &str, key: &str) -> (u16, u64, Option<f64>, Vec<f64>, bool) {
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "benchmark prompt of a few words"}], "max_tokens": OUTPUT_TOKENS, "stream": true});
    let started = Instant::now();
    let resp = match client.post(format!("{url}/v1/chat/completions")).bearer_auth(key).json(&body).send().await {
        Ok(r) => r,
        Err(_) => return (0, 0, None, vec![], false),
    };
    let status = resp.status().as_u16();
    if status != 200 {
        return (status, 0, None, vec![], false);
    }
    let mut stream = resp.bytes_stream();
    let (mut tokens, mut ttft, mut gaps, mut last, mut cut) = (0u64, None, Vec::new(), None::<Instant>, false);
    use futures_util::StreamExt;
    let mut buf = Vec::new();
    while let Some(Ok(chunk)) = stream.next().await {
        buf.extend_from_slice(&chunk);
        while let Some(end) = buf.windows(2).position(|w| w == b"\n\n") {
            let event: Vec<u8> = buf.drain(..end + 2).collect();
            if event.windows(11).any(|w| w == b"\"preempted\"") {
                cut = true;
            }
            if event.windows(10).any(|w| w == b"\"content\":") && !event.windows(12).any(|w| w == b"\"content\":\"\"") {
                let now = Instant::now();
                tokens += 1;
                match last {
                    None => ttft = Some(started.elapsed().as_secs_f64() * 1000.0),
                    Some(prev) => gaps.push((now - prev).as_secs_f64() * 1000.0),
                }
                last = Some(now);
            }
        }
    }
    (status, tokens, ttft, gaps, cut)
}

async fn sample_busy(urls: Vec<String>, stop: Arc<Mutex<bool>>) -> f64 {
    let client = reqwest::Client::new();
    let (mut sum, mut n) = (0.0, 0u64);
    while !*stop.lock().unwrap_or_else(|p| p.into_inner()) {
        for u in &urls {
            if let Ok(r) = client.get(format!("{u}/metrics")).send().await {
                let text = r.text().await.unwrap_or_default();
                let in_flight: f64 = text.lines().find_map(|l| l.strip_prefix("emulator_in_flight ")).and_then(|v| v.trim().parse().ok()).unwrap_or(0.0);
                sum += (in_flight / f64::from(BEST)).min(1.0);
                n += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if n == 0 { 0.0 } else { sum / n as f64 }
}

/// Runs one load level; returns per-tier stats and the best-concurrency share.
async fn level(gateway: &str, emulators: &[String], rate: f64, seconds: f64, key: Option<&str>) -> (BTreeMap<&'static str, TierStats>, f64) {
    // A request that has not finished in a minute counts as lost (a slow proxy would otherwise
    // hold the run for many minutes).
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(2048)
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_default();
    let stats: Arc<Mutex<BTreeMap<&'static str, TierStats>>> = Arc::new(Mutex::new(BTreeMap::new()));
    let stop = Arc::new(Mutex::new(false));
    let sampler = tokio::spawn(sample_busy(emulators.to_vec(), stop.clone()));
    let total: u32 = TIERS.iter().map(|(_, w)| w).sum();
    let n = (rate * seconds) as u64;
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..n {
        let at = Duration::from_secs_f64(i as f64 / rate);
        if let Some(wait) = at.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        // A fixed interleaving of tiers by weight, so every run sees the same mix.
        let slot = ((i * 37) % u64::from(total)) as u32;
        let mut acc = 0;
        let tier = TIERS.iter().find(|(_, w)| { acc += w; slot < acc }).map_or("realtime", |(t, _)| *t);
        let (client, url, stats) = (client.clone(), gateway.to_string(), stats.clone());
        let key = key.map_or_else(|| format!("sk-bench-{tier}"), str::to_string);
        tasks.spawn(async move {
            let (status, tokens, ttft, gaps, cut) = one(&client, &url, &key).await;
            let mut s = stats.lock().unwrap_or_else(|p| p.into_inner());
            let e = s.entry(tier).or_default();
            e.requests += 1;
            e.refused += u64::from(status == 429);
            e.cut += u64::from(cut);
            e.tokens += tokens;
            e.ttft_ms.extend(ttft);
            e.itl_ms.extend(gaps);
        });
    }
    while tasks.join_next().await.is_some() {}
    *stop.lock().unwrap_or_else(|p| p.into_inner()) = true;
    let busy = sampler.await.unwrap_or(0.0);
    let out = stats.lock().unwrap_or_else(|p| p.into_inner()).clone();
    (out, busy)
}

/// One run of the added-latency load through a proxy.
struct OverheadRun {
    /// p50 and p99 through the proxy less the same straight to the upstream (ms).
    added_p50_ms: f64,
    added_p99_ms: f64,
    /// p99 straight to the upstream (ms): how quiet the machine was.
    direct_p99_ms: f64,
    /// The rate achieved through the proxy.
    achieved: f64,
    /// The share of this machine's CPU time its host took for others (steal), in percent.
    steal_pct: Option<f64>,
}

/// The steal and total CPU time of this machine so far (ticks), from /proc/stat.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let ticks: Vec<u64> = stat.lines().next()?.split_whitespace().skip(1).filter_map(|t| t.parse().ok()).collect();
    Some((*ticks.get(7)?, ticks.iter().take(8).sum()))
}

/// The gateway's own latency at a rate: the same requests at the same pace straight to an
/// instant upstream and through the gateway in front of it, in turns.
async fn overhead_at(direct: &str, gateway: &str, key: &str, rate: f64, seconds: f64) -> Result<OverheadRun, String> {
    let n_conns = ((rate / 300.0).ceil() as usize).clamp(4, 64);
    let before = cpu_ticks();
    let mut runs = paced_load(&[direct, gateway], key, rate, seconds, n_conns).await?.into_iter();
    let after = cpu_ticks();
    let (Some((mut straight, _)), Some((mut via, achieved))) = (runs.next(), runs.next()) else {
        return Err("paced load: a target measured nothing".into());
    };
    let steal_pct = match (before, after) {
        (Some((s0, t0)), Some((s1, t1))) if t1 > t0 => Some(100.0 * (s1 - s0) as f64 / (t1 - t0) as f64),
        _ => None,
    };
    let direct_p99_ms = pct(&mut straight, 0.99);
    // Differences of percentiles measured in two runs: noise can make them negative, and they
    // are printed as measured.
    Ok(OverheadRun {
        added_p50_ms: pct(&mut via, 0.5) - pct(&mut straight, 0.5),
        added_p99_ms: pct(&mut via, 0.99) - direct_p99_ms,
        direct_p99_ms,
        achieved,
        steal_pct,
    })
}

/// The rates every proxy's added latency is measured at, with the suffix of their keys.
const OVERHEAD_RATES: [(f64, &str); 2] = [(1_000.0, ""), (10_000.0, "_10k")];

/// A rate LiteLLM's proxy sustains on this machine (it tops out near 100-200 requests/s), at
/// which it and the gateway are also measured, so that its added latency is compared with
/// ours unqueued as well as at the rates it cannot reach.
const SUSTAINED_RATE: (f64, &str) = (50.0, "_50");

/// Runs of each added-latency figure; the median is reported.
const OVERHEAD_RUNS: usize = 5;

/// Runs at the goal's rate, 10,000 requests/s, where one stall of the host moves a run's p99
/// by a millisecond or more: more runs, so that the median is the proxy's and not the host's.
const OVERHEAD_RUNS_10K: usize = 9;

/// How many runs measure the added latency at `rate`.
fn overhead_runs(rate: f64) -> usize {
    if rate >= 10_000.0 { OVERHEAD_RUNS_10K } else { OVERHEAD_RUNS }
}

/// The key the added-latency load sends, known to the gateways measured.
const OVERHEAD_KEY: &str = "sk-bench-overhead";

/// Starts the real gateway binary in a process of its own, as it is deployed, in front of
/// `upstream` with tiers on or off (the first-come-first-served proxy), its workers kept on a CPU
/// each as on a node of its own; the process and its URL.
async fn start_gateway_process(dir: &std::path::Path, upstream: &str, tiers_on: bool) -> Result<(tokio::process::Child, String), String> {
    use tokio::io::AsyncBufReadExt;
    let admission = admission_settings(tiers_on);
    let toml = format!("listen = \"127.0.0.1:0\"\npin_workers = true\n{admission}[[replicas]]\nurl = \"{upstream}\"\nmodel = \"m\"\nbest_concurrency = 100000\nmax_concurrency = 100000\n[[tenants]]\nname = \"t\"\nkeys = [\"{OVERHEAD_KEY}\"]\ntpm = 1000000000000\nrpm = 1000000000000\n");
    let config = dir.join(if tiers_on { "gateway.toml" } else { "fcfs.toml" });
    std::fs::write(&config, toml).map_err(|e| format!("{}: {e}", config.display()))?;
    let exe = crate::tidepool_exe()?;
    let mut child = tokio::process::Command::new(exe)
        .arg("gateway")
        .arg("--config")
        .arg(&config)
        .current_dir(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("tidepool gateway: {e}"))?;
    let mut lines = tokio::io::BufReader::new(child.stderr.take().ok_or("tidepool gateway: no stderr")?).lines();
    let url = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Some(rest) = l.split("gateway listening on ").nth(1) {
                return Some(rest.trim().to_string());
            }
        }
        None
    })
    .await
    .ok()
    .flatten()
    .ok_or("tidepool gateway did not start")?;
    // Its log goes on being read, so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

/// A proxy whose added latency is measured: its keys' prefix, URL, the key it knows and the
/// rates it is measured at.
struct MeasuredProxy {
    prefix: &'static str,
    url: String,
    key: &'static str,
    rates: Vec<(f64, &'static str)>,
}

/// The gateway in front of an instant upstream, measured at 1,000 and at 10,000 requests/s;
/// then the same gateway with tiers off, nginx as a plain reverse proxy and LiteLLM's proxy,
/// each where it runs, in front of the same upstream under the same load. The client and the
/// upstream share this process. The gateway, the gateway with tiers off and nginx run side by
/// side and take turns run by run, so that a slow spell of the host falls on all three.
async fn overhead(seconds: f64) -> Result<BTreeMap<String, Value>, String> {
    let instant = instant_upstream()?;
    let upstream = instant.url.clone();
    let dir = std::env::temp_dir().join(format!("tidepool-bench-overhead-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut out = BTreeMap::new();
    let litellm_ok = which("litellm");
    let with_sustained = |rates: &[(f64, &'static str)]| if litellm_ok { [&[SUSTAINED_RATE][..], rates].concat() } else { rates.to_vec() };
    let mut children = Vec::new();
    let mut proxies = Vec::new();
    for (prefix, tiers_on) in [("", true), ("fcfs_", false)] {
        let (child, url) = match start_gateway_process(&dir, &upstream, tiers_on).await {
            Ok(started) => started,
            Err(e) => {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
        };
        children.push(child);
        let rates = if tiers_on { with_sustained(&OVERHEAD_RATES) } else { OVERHEAD_RATES.to_vec() };
        proxies.push(MeasuredProxy { prefix, url, key: OVERHEAD_KEY, rates });
    }
    // What a proxy that only forwards costs on this machine, at the same rates as the gateway.
    let nginx = match start_nginx(&dir, &upstream).await {
        Ok((nginx, url)) => {
            proxies.push(MeasuredProxy { prefix: "nginx_", url, key: OVERHEAD_KEY, rates: with_sustained(&OVERHEAD_RATES) });
            Some(nginx)
        }
        Err(e) => {
            out.insert("nginx_note".into(), json!(e));
            None
        }
    };
    let measured = overhead_in_turns(&upstream, &proxies, seconds).await;
    for mut child in children {
        let _ = child.kill().await;
    }
    if let Some(nginx) = nginx {
        stop(nginx).await;
    }
    match measured {
        Ok(figures) => out.extend(figures),
        Err(e) => {
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
    }
    if litellm_ok {
        // LiteLLM does not reach the higher rates: its achieved rate is part of its figures.
        // It is measured alone, as its idle workers would otherwise weigh on the others' runs.
        match start_litellm(std::slice::from_ref(&upstream)).await {
            Ok((litellm, url)) => {
                let proxy = MeasuredProxy { prefix: "litellm_", url, key: LITELLM_KEY, rates: with_sustained(&OVERHEAD_RATES) };
                match overhead_in_turns(&upstream, std::slice::from_ref(&proxy), seconds).await {
                    Ok(figures) => out.extend(figures),
                    Err(e) => {
                        out.insert("litellm_overhead_note".into(), json!(e));
                    }
                }
                stop(litellm).await;
            }
            Err(e) => {
                out.insert("litellm_overhead_note".into(), json!(e));
            }
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok(out)
}

/// Stops a proxy as its operator would (SIGTERM: nginx's master then stops its workers,
/// which a SIGKILL would leave running), killing it if it has not gone within 5 s.
async fn stop(mut child: tokio::process::Child) {
    if let Some(pid) = child.id() {
        // SAFETY: a signal to a child of ours that has not been reaped.
        unsafe { libc::kill(pid as i32, libc::SIGTERM) };
        if tokio::time::timeout(Duration::from_secs(5), child.wait()).await.is_ok() {
            return;
        }
    }
    let _ = child.kill().await;
}

/// Starts nginx as a reverse proxy to `upstream`, keep-alive to it, with its workers set up as
/// the gateway's are: one per core, each kept on its own CPU.
async fn start_nginx(dir: &std::path::Path, upstream: &str) -> Result<(tokio::process::Child, String), String> {
    let nginx = ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .ok_or("nginx is not installed here (apt-get install nginx-light adds it to this comparison)")?;
    let port = free_port()?;
    let d = dir.display();
    let conf = format!(
        "worker_processes auto;\nworker_cpu_affinity auto;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/nginx.err;\nevents {{ worker_connections 4096; }}\n\
         http {{\n access_log off;\n client_body_temp_path {d};\n proxy_temp_path {d};\n\
         upstream instant {{ server {}; keepalive 256; }}\n\
         server {{\n  listen 127.0.0.1:{port};\n  keepalive_requests 10000000;\n\
         location / {{ proxy_pass http://instant; proxy_http_version 1.1; proxy_set_header Connection \"\"; }}\n }}\n}}\n",
        upstream.trim_start_matches("http://")
    );
    let path = dir.join("nginx.conf");
    std::fs::write(&path, conf).map_err(|e| format!("{}: {e}", path.display()))?;
    let child = tokio::process::Command::new(nginx)
        .arg("-c")
        .arg(&path)
        .arg("-p")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("nginx: {e}"))?;
    let url = format!("http://127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok() {
            return Ok((child, url));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("nginx did not start".into())
}

/// The added latency of each of `proxies` in front of `upstream` at each of its rates: at each
/// rate, run by run, the proxies take turns.
async fn overhead_in_turns(upstream: &str, proxies: &[MeasuredProxy], seconds: f64) -> Result<BTreeMap<String, Value>, String> {
    for proxy in proxies {
        // A short warm-up: connections to the upstream open, buckets fill.
        paced_load(&[&proxy.url], proxy.key, 1000.0, 0.3, 8).await?;
    }
    let mut rates: Vec<(f64, &str)> = proxies.iter().flat_map(|p| p.rates.iter().copied()).collect();
    rates.sort_by(|a, b| a.0.total_cmp(&b.0));
    rates.dedup_by(|a, b| a.0 == b.0);
    let mut out = BTreeMap::new();
    for (rate, suffix) in rates {
        let taking_part: Vec<&MeasuredProxy> = proxies.iter().filter(|p| p.rates.iter().any(|r| r.0 == rate)).collect();
        // On two cores shared by client, proxy and upstream one stall of a few milliseconds
        // moves a 3-second p99: each figure is the median of several runs, all of them kept.
        let mut runs: Vec<Vec<OverheadRun>> = taking_part.iter().map(|_| Vec::new()).collect();
        for _ in 0..overhead_runs(rate) {
            for (proxy, its_runs) in taking_part.iter().zip(runs.iter_mut()) {
                its_runs.push(overhead_at(upstream, &proxy.url, proxy.key, rate, seconds).await?);
            }
        }
        for (proxy, runs) in taking_part.iter().zip(runs) {
            let prefix = proxy.prefix;
            let mut p50s: Vec<f64> = runs.iter().map(|r| r.added_p50_ms).collect();
            let mut p99s: Vec<f64> = runs.iter().map(|r| r.added_p99_ms).collect();
            let mut direct: Vec<f64> = runs.iter().map(|r| r.direct_p99_ms).collect();
            let mut achieved: Vec<f64> = runs.iter().map(|r| r.achieved).collect();
            let mut steal: Vec<f64> = runs.iter().filter_map(|r| r.steal_pct).collect();
            out.insert(format!("{prefix}overhead_p99_ms{suffix}_runs"), json!(p99s));
            out.insert(format!("{prefix}direct_p99_ms{suffix}_runs"), json!(direct));
            out.insert(format!("{prefix}steal_pct{suffix}_runs"), json!(steal));
            out.insert(format!("{prefix}overhead_p50_ms{suffix}"), json!(pct(&mut p50s, 0.5)));
            out.insert(format!("{prefix}overhead_p99_ms{suffix}"), json!(pct(&mut p99s, 0.5)));
            out.insert(format!("{prefix}direct_p99_ms{suffix}"), json!(pct(&mut direct, 0.5)));
            if !steal.is_empty() {
                out.insert(format!("{prefix}steal_pct{suffix}"), json!(pct(&mut steal, 0.5)));
            }
            out.insert(format!("{prefix}overhead_rps{suffix}"), json!(pct(&mut achieved, 0.5)));
        }
    }
    Ok(out)
}

/// A loopback port nobody listens on now, for a program that takes its port as an argument.
fn free_port() -> Result<u16, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    Ok(l.local_addr().map_err(|e| e.to_string())?.port())
}

fn which(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(program).is_file()))
}

/// LiteLLM's master key in the benchmark (it refuses to start without one).
const LITELLM_KEY: &str = "sk-bench-master";

/// Starts LiteLLM's proxy in front of the emulators (its own round-robin over them).
async fn start_litellm(emulators: &[String]) -> Result<(tokio::process::Child, String), String> {
    let port = free_port()?;
    let dir = std::env::temp_dir().join(format!("tidepool-bench-litellm-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let mut yaml = String::from("model_list:\n");
    for u in emulators {
        yaml.push_str(&format!("  - model_name: m\n    litellm_params:\n      model: openai/m\n      api_base: {u}/v1\n      api_key: none\n"));
    }
    yaml.push_str(&format!("general_settings:\n  master_key: {LITELLM_KEY}\n"));
    let config = dir.join("litellm.yaml");
    std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
    let spawned = tokio::process::Command::new("litellm")
        .arg("--config")
        .arg(&config)
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("LITELLM_LOCAL_MODEL_COST_MAP", "True")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start litellm: {e}"));
    let url = format!("http://127.0.0.1:{port}");
    let ready = match spawned {
        Ok(child) => {
            let client = reqwest::Client::new();
            let started = Instant::now();
            loop {
                if client.get(format!("{url}/health/liveliness")).send().await.is_ok_and(|r| r.status().is_success()) {
                    break Ok(child);
                }
                if started.elapsed() > Duration::from_secs(90) {
                    break Err("litellm did not become ready in 90 s".to_string());
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
        Err(e) => Err(e),
    };
    // Its configuration has been read once it answers (or it never will): the file goes.
    let _ = std::fs::remove_dir_all(&dir);
    ready.map(|child| (child, url))
}

/// The tiered gateway learning its replicas' best concurrency from 4: one level at 3x to learn,
/// a second measured; the learned values are read from its metrics.
async fn learned_run(rate: f64, seconds: f64) -> Result<BTreeMap<String, Value>, String> {
    let emulators = start_emulators(ITL_MS).await?;
    let gateway = start_gateway(&emulators, true, true).await?;
    let _ = level(&gateway, &emulators, rate, seconds, None).await;
    let (mut stats, busy) = level(&gateway, &emulators, rate, seconds, None).await;
    let scrape = reqwest::Client::new().get(format!("{gateway}/metrics")).bearer_auth(BENCH_METRICS_KEY).send().await;
    let metrics = scrape.map_err(|e| e.to_string())?.text().await.map_err(|e| e.to_string())?;
    let learned: Vec<u32> = metrics
        .lines()
        .filter(|l| l.starts_with("tidepool_gateway_best_concurrency{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    let realtime = stats.entry("realtime").or_default();
    let wanted = realtime.requests * OUTPUT_TOKENS;
    let mut out = BTreeMap::new();
    out.insert("learned_best_concurrency".into(), json!(learned));
    out.insert("learned_best_concurrency_share_3x".into(), json!(busy));
    out.insert("learned_realtime_availability_3x".into(), json!(if wanted == 0 { 1.0 } else { realtime.tokens as f64 / wanted as f64 }));
    out.insert("learned_realtime_ttft_p99_ms_3x".into(), json!(pct(&mut realtime.ttft_ms, 0.99)));
    Ok(out)
}

/// Runs the whole benchmark and prints a table or one JSON object.
pub async fn run(json_out: bool, seconds: f64) -> Result<u8, String> {
    let capacity_rps = N_REPLICAS as f64 * f64::from(BEST) / (OUTPUT_TOKENS as f64 * ITL_MS / 1000.0);
    let mut report: BTreeMap<String, Value> = BTreeMap::new();
    report.insert("capacity_rps".into(), json!(capacity_rps));
    let litellm_ok = which("litellm");
    let modes: Vec<&str> = if litellm_ok { vec!["", "fcfs_", "litellm_"] } else { vec!["", "fcfs_"] };
    for mode in modes {
        let emulators = start_emulators(ITL_MS).await?;
        let mut litellm_child = None;
        let (gateway, key) = match mode {
            "litellm_" => {
                let (child, url) = start_litellm(&emulators).await?;
                litellm_child = Some(child);
                (url, Some(LITELLM_KEY))
            }
            m => (start_gateway(&emulators, m.is_empty(), false).await?, None),
        };
        for load in [1u32, 2, 3] {
            let (stats, busy) = level(&gateway, &emulators, capacity_rps * f64::from(load), seconds, key).await;
            report.insert(format!("{mode}best_concurrency_share_{load}x"), json!(busy));
            // The same as replica-seconds: the share of the replicas' best batches that was
            // filled, times the replicas and the seconds of the level.
            report.insert(format!("{mode}best_concurrency_replica_s_{load}x"), json!(busy * N_REPLICAS as f64 * seconds));
            for (tier, s) in stats {
                let mut s = s;
                let wanted = s.requests * OUTPUT_TOKENS;
                let availability = if wanted == 0 { 1.0 } else { s.tokens as f64 / wanted as f64 };
                let p = |k: &str| format!("{mode}{tier}_{k}_{load}x");
                report.insert(p("requests"), json!(s.requests));
                report.insert(p("tokens"), json!(s.tokens));
                report.insert(p("429s"), json!(s.refused));
                report.insert(p("cut_off"), json!(s.cut));
                report.insert(p("availability"), json!(availability));
                report.insert(p("ttft_p50_ms"), percentile_or_null(&mut s.ttft_ms, 0.5));
                report.insert(p("ttft_p99_ms"), percentile_or_null(&mut s.ttft_ms, 0.99));
                report.insert(p("itl_p50_ms"), percentile_or_null(&mut s.itl_ms, 0.5));
                report.insert(p("itl_p99_ms"), percentile_or_null(&mut s.itl_ms, 0.99));
            }
        }
        if let Some(child) = litellm_child {
            stop(child).await;
        }
    }
    let learned = learned_run(capacity_rps * 3.0, seconds).await?;
    report.extend(learned);
    report.extend(overhead(seconds.min(3.0)).await?);
    report.insert("litellm_run".into(), json!(litellm_ok));
    let p50_at_50 = |k: &str| report.get(k).and_then(Value::as_f64);
    if let (Some(ours), Some(theirs)) = (p50_at_50("overhead_p50_ms_50"), p50_at_50("litellm_overhead_p50_ms_50")) {
        if ours > 0.0 {
            report.insert("litellm_overhead_p50_ratio_50".into(), json!(theirs / ours));
        }
    }
    if json_out {
        line(&serde_json::to_string(&report).map_err(|e| e.to_string())?);
        return Ok(0);
    }
    line(&format!("gateway: {N_REPLICAS} emulated replicas, best concurrency {BEST}, {OUTPUT_TOKENS} tokens at {ITL_MS} ms: capacity {capacity_rps:.0} requests/s; {seconds} s per level"));
    line(&format!("{:<14} {:>4} {:>21} {:>21} {:>19} {:>19}", "tier", "load", "availability (fcfs)", "429s (fcfs)", "TTFT p99 ms (fcfs)", "ITL p99 ms (fcfs)"));
    for (tier, _) in TIERS {
        for load in [1, 2, 3] {
            let g = |m: &str, k: &str| report.get(&format!("{m}{tier}_{k}_{load}x")).and_then(Value::as_f64).unwrap_or(f64::NAN);
            line(&format!(
                "{tier:<14} {load:>3}x {:>10.4} ({:>8.4}) {:>10} ({:>8}) {:>9.1} ({:>7.1}) {:>9.1} ({:>7.1})",
                g("", "availability"), g("fcfs_", "availability"), g("", "429s"), g("fcfs_", "429s"),
                g("", "ttft_p99_ms"), g("fcfs_", "ttft_p99_ms"), g("", "itl_p99_ms"), g("fcfs_", "itl_p99_ms")
            ));
        }
    }
    for load in [1, 2, 3] {
        let g = |k: String| report.get(&k).and_then(Value::as_f64).unwrap_or(0.0);
        line(&format!(
            "best-concurrency share at {load}x: {:.3} (fcfs {:.3}), {:.1} of {:.0} replica-seconds at best concurrency (fcfs {:.1})",
            g(format!("best_concurrency_share_{load}x")),
            g(format!("fcfs_best_concurrency_share_{load}x")),
            g(format!("best_concurrency_replica_s_{load}x")),
            N_REPLICAS as f64 * seconds,
            g(format!("fcfs_best_concurrency_replica_s_{load}x")),
        ));
    }
    line(&format!(
        "learned best concurrency after 2 x {seconds} s at 3x, starting from 4: {} (emulators' batch {BEST}); at 3x meanwhile: realtime availability {:.4}, TTFT p99 {:.1} ms, best-concurrency share {:.3}",
        report.get("learned_best_concurrency").map_or("?".into(), Value::to_string),
        report.get("learned_realtime_availability_3x").and_then(Value::as_f64).unwrap_or(0.0),
        report.get("learned_realtime_ttft_p99_ms_3x").and_then(Value::as_f64).unwrap_or(0.0),
        report.get("learned_best_concurrency_share_3x").and_then(Value::as_f64).unwrap_or(0.0),
    ));
    let g = |k: &str| report.get(k).and_then(Value::as_f64).unwrap_or(f64::NAN);
    for (rate, suffix) in OVERHEAD_RATES {
        line(&format!(
            "gateway's added latency at {rate:.0} requests/s (instant upstream, paced open-loop client; median of {} runs of {:.0} s): p50 {:.3} ms, p99 {:.3} ms (runs {}; achieved {:.0} requests/s; goal p99 < 0.5 ms at 10,000)",
            overhead_runs(rate),
            seconds.min(3.0),
            g(&format!("overhead_p50_ms{suffix}")),
            g(&format!("overhead_p99_ms{suffix}")),
            report.get(&format!("overhead_p99_ms{suffix}_runs")).map_or("?".into(), |v| v.to_string()),
            g(&format!("overhead_rps{suffix}")),
        ));
        // What the machine itself gave: a p99 straight to the upstream of a millisecond or
        // more, or CPU time taken by the host, moves every proxy's p99 with it.
        line(&format!(
            "  this machine meanwhile: p99 straight to the upstream {:.3} ms, CPU time taken by its host (steal) {:.1}%",
            g(&format!("direct_p99_ms{suffix}")),
            g(&format!("steal_pct{suffix}")),
        ));
        for (prefix, what) in [("fcfs_", "the gateway with tiers off (first come, first served)"), ("nginx_", "nginx as a plain reverse proxy"), ("litellm_", "LiteLLM's proxy")] {
            if report.contains_key(&format!("{prefix}overhead_p99_ms{suffix}")) {
                line(&format!(
                    "{what}, same upstream, same load at {rate:.0}/s: p50 {:.3} ms, p99 {:.3} ms (achieved {:.0} requests/s)",
                    g(&format!("{prefix}overhead_p50_ms{suffix}")),
                    g(&format!("{prefix}overhead_p99_ms{suffix}")),
                    g(&format!("{prefix}overhead_rps{suffix}")),
                ));
            }
        }
    }
    if report.contains_key("litellm_overhead_p50_ms_50") {
        line(&format!(
            "at {:.0} requests/s, a rate LiteLLM's proxy sustains: the gateway adds p50 {:.3} ms, p99 {:.3} ms; nginx p50 {:.3} ms, p99 {:.3} ms; LiteLLM's proxy p50 {:.3} ms ({:.0}x the gateway's), p99 {:.3} ms (achieved {:.0} requests/s)",
            SUSTAINED_RATE.0,
            g("overhead_p50_ms_50"),
            g("overhead_p99_ms_50"),
            g("nginx_overhead_p50_ms_50"),
            g("nginx_overhead_p99_ms_50"),
            g("litellm_overhead_p50_ms_50"),
            g("litellm_overhead_p50_ratio_50"),
            g("litellm_overhead_p99_ms_50"),
            g("litellm_overhead_rps_50"),
        ));
    }
    for note in ["nginx_note", "litellm_overhead_note"] {
        if let Some(note) = report.get(note).and_then(Value::as_str) {
            line(note);
        }
    }
    if litellm_ok {
        for load in [1, 2, 3] {
            let g = |k: &str| report.get(&format!("litellm_realtime_{k}_{load}x")).and_then(Value::as_f64).unwrap_or(f64::NAN);
            line(&format!(
                "LiteLLM proxy, realtime at {load}x: availability {:.4}, 429s {}, TTFT p99 {:.1} ms, ITL p99 {:.1} ms",
                g("availability"), g("429s"), g("ttft_p99_ms"), g("itl_p99_ms")
            ));
        }
    } else {
        line("LiteLLM: not installed here (pip install 'litellm[proxy]' adds it to this comparison)");
    }
    Ok(0)
}
