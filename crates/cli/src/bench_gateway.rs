//! `tidepool bench gateway`: the gateway and emulated replicas under a tier mix at 1x, 2x and 3x
//! their capacity, next to the same load through a first-come-first-served proxy (the same
//! gateway with tiers off), and the gateway's own added latency against an instant upstream at
//! 1,000 and 10,000 requests/s, sent by a paced open-loop client of raw HTTP/1.1.

use crate::output::line;
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

/// What the instant upstream answers to every request: one finished chat completion.
const INSTANT_ANSWER: &str = concat!(
    "{\"id\":\"chatcmpl-0\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"m\",",
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"x\"},\"finish_reason\":\"stop\"}],",
    "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}"
);

/// Where the first HTTP/1.1 message in `buf` (headers, then a Content-Length or chunked
/// body) ends, with its head in lower case; Ok(None) while it is not all there yet, Err when
/// its framing is not HTTP.
fn complete_message(buf: &[u8]) -> Result<Option<(usize, String)>, ()> {
    let Some(head_end) = buf.windows(4).position(|w| w == b"\r\n\r\n").map(|p| p + 4) else { return Ok(None) };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    let header = |name: &str| head.lines().find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()));
    let mut end = head_end;
    if header("transfer-encoding:").is_some_and(|v| v.contains("chunked")) {
        loop {
            // A chunk: size in hex, CRLF, data, CRLF; the last has size 0 and ends the body.
            let Some(line_end) = buf[end..].windows(2).position(|w| w == b"\r\n").map(|p| end + p) else { return Ok(None) };
            let size_text = String::from_utf8_lossy(&buf[end..line_end]).split(';').next().unwrap_or("").trim().to_string();
            let size = usize::from_str_radix(&size_text, 16).map_err(|_| ())?;
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
async fn read_message(sock: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> Option<String> {
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

/// An upstream that answers every request at once, in raw HTTP/1.1 on keep-alive
/// connections, so that it costs this machine next to nothing (the role nginx plays in a
/// proxy benchmark). It has a thread and an event loop of its own: on the benchmark's shared
/// runtime its connections moved between worker threads and each answer paid a cross-thread
/// wake-up. It stops when dropped.
struct InstantUpstream {
    /// Its base URL.
    url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn instant_upstream() -> Result<InstantUpstream, String> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let url = format!("http://{}", l.local_addr().map_err(|e| e.to_string())?);
    l.set_nonblocking(true).map_err(|e| e.to_string())?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_io().build().map_err(|e| e.to_string())?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let answer = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{INSTANT_ANSWER}",
        INSTANT_ANSWER.len()
    );
    std::thread::Builder::new()
        .name("instant-upstream".into())
        .spawn(move || {
            runtime.block_on(async move {
                use tokio::io::AsyncWriteExt;
                let Ok(l) = tokio::net::TcpListener::from_std(l) else { return };
                let accepting = async {
                    while let Ok((mut sock, _)) = l.accept().await {
                        let _ = sock.set_nodelay(true);
                        let answer = answer.clone();
                        tokio::spawn(async move {
                            let mut buf = Vec::with_capacity(4096);
                            while read_message(&mut sock, &mut buf).await.is_some() {
                                if sock.write_all(answer.as_bytes()).await.is_err() {
                                    return;
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = accepting => {}
                    _ = stopped => {}
                }
            })
        })
        .map_err(|e| e.to_string())?;
    Ok(InstantUpstream { url, _stop: stop })
}

/// How long the paced load stays with one target before it turns to the next.
const PACED_BLOCK: Duration = Duration::from_millis(100);

/// Latencies (ms, send to last byte) of requests sent at `rate` per second over `n_conns`
/// keep-alive connections to each of `bases`, each request at its own time (an open loop, not
/// one after another), and the rate each achieved. The targets take turns in blocks of
/// `PACED_BLOCK` until each has had `seconds`, so a slow spell of the machine falls on all of
/// them alike rather than on whichever ran then.
///
/// One thread sends and reads on every connection, woken by epoll and by a timerfd set to the
/// next request due: tokio's timer rounds every wake-up to the next millisecond, which at
/// 10,000 requests/s sent them ten at a time instead of one every 100 microseconds, and a
/// thread per connection spent more of this machine's two cores than the proxy measured.
async fn paced_load(bases: &[&str], key: &str, rate: f64, seconds: f64, n_conns: usize) -> Result<Vec<(Vec<f64>, f64)>, String> {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1}"#;
    let targets: Vec<(String, String)> = bases
        .iter()
        .map(|base| {
            let addr = base.trim_start_matches("http://").to_string();
            let request = format!(
                "POST /v1/chat/completions HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {key}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            (addr, request)
        })
        .collect();
    tokio::task::spawn_blocking(move || paced_load_blocking(&targets, rate, seconds, n_conns)).await.map_err(|e| e.to_string())?
}

/// Nanoseconds on the monotonic clock, the one a timerfd's absolute time is given in.
fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// A file descriptor made by a system call, or the call's error.
fn owned_fd(fd: i32, call: &str) -> Result<std::os::fd::OwnedFd, String> {
    if fd < 0 {
        return Err(format!("{call}: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor just returned by the kernel and owned by nobody else.
    Ok(unsafe { std::os::fd::FromRawFd::from_raw_fd(fd) })
}

/// One request slot of the paced load: its connection to each target and its schedule.
struct PacedSlot {
    socks: Vec<(std::net::TcpStream, Vec<u8>)>,
    /// When its next request is due.
    next_at: u64,
    /// The target and send time of the request it waits on.
    in_flight: Option<(usize, u64)>,
}

/// `paced_load` on the calling thread, `targets` as (address, raw request).
fn paced_load_blocking(targets: &[(String, String)], rate: f64, seconds: f64, n_conns: usize) -> Result<Vec<(Vec<f64>, f64)>, String> {
    use std::os::fd::AsRawFd;
    // SAFETY: prctl with integer arguments changes only this thread's timer slack (50 us by
    // default, which would spread the pacing by as much).
    unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1u64, 0u64, 0u64, 0u64) };
    let n_targets = targets.len();
    // SAFETY: plain system calls that return a new descriptor or -1.
    let epoll = owned_fd(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) }, "epoll_create1")?;
    let timer = owned_fd(unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, libc::TFD_NONBLOCK | libc::TFD_CLOEXEC) }, "timerfd_create")?;
    const TIMER: u64 = u64::MAX;
    let watch = |fd: i32, token: u64| -> Result<(), String> {
        let mut event = libc::epoll_event { events: libc::EPOLLIN as u32, u64: token };
        // SAFETY: both descriptors are open; the event is read during the call only.
        if unsafe { libc::epoll_ctl(epoll.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) } != 0 {
            return Err(format!("epoll_ctl: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    };
    watch(timer.as_raw_fd(), TIMER)?;
    let interval = (n_conns as f64 / rate * 1e9) as u64;
    let start = monotonic_ns() + 50_000_000;
    let end = start + (seconds * n_targets as f64 * 1e9) as u64;
    let block = PACED_BLOCK.as_nanos() as u64;
    let mut slots = Vec::with_capacity(n_conns);
    for slot in 0..n_conns {
        let mut socks = Vec::new();
        for (target, (addr, _)) in targets.iter().enumerate() {
            let sock = std::net::TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
            let _ = sock.set_nodelay(true);
            sock.set_nonblocking(true).map_err(|e| e.to_string())?;
            watch(sock.as_raw_fd(), (slot * n_targets + target) as u64)?;
            socks.push((sock, Vec::with_capacity(4096)));
        }
        // Slots take turns, so the requests are spread evenly over time.
        slots.push(PacedSlot { socks, next_at: start + interval * slot as u64 / n_conns as u64, in_flight: None });
    }
    let mut latencies = vec![Vec::new(); n_targets];
    let mut armed = None;
    let mut events = vec![libc::epoll_event { events: 0, u64: 0 }; 256];
    loop {
        let now = monotonic_ns();
        // A proxy that falls behind is not waited for past the end: what it did not take by
        // then is not sent.
        let mut earliest = None;
        for slot in slots.iter_mut().filter(|s| s.in_flight.is_none() && s.next_at < end && now < end) {
            if slot.next_at <= now {
                let target = ((slot.next_at - start) / block) as usize % n_targets;
                std::io::Write::write_all(&mut slot.socks[target].0, targets[target].1.as_bytes()).map_err(|e| e.to_string())?;
                slot.in_flight = Some((target, monotonic_ns()));
            } else {
                earliest = Some(earliest.map_or(slot.next_at, |e: u64| e.min(slot.next_at)));
            }
        }
        if earliest.is_none() && slots.iter().all(|s| s.in_flight.is_none()) {
            break;
        }
        if let Some(at) = earliest.filter(|at| armed != Some(*at)) {
            let value = libc::timespec { tv_sec: (at / 1_000_000_000) as libc::time_t, tv_nsec: (at % 1_000_000_000) as libc::c_long };
            let spec = libc::itimerspec { it_interval: libc::timespec { tv_sec: 0, tv_nsec: 0 }, it_value: value };
            // SAFETY: the timer is open; the spec is read during the call only.
            unsafe { libc::timerfd_settime(timer.as_raw_fd(), libc::TFD_TIMER_ABSTIME, &spec, std::ptr::null_mut()) };
            armed = Some(at);
        }
        // SAFETY: the buffer holds `events.len()` events for the kernel to fill.
        let n = unsafe { libc::epoll_wait(epoll.as_raw_fd(), events.as_mut_ptr(), events.len() as i32, 30_000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(format!("epoll_wait: {e}"));
        }
        if n == 0 {
            return Err("no answer within 30 s".into());
        }
        for event in &events[..n as usize] {
            let token = event.u64;
            if token == TIMER {
                let mut expirations = 0u64;
                // SAFETY: reads the timer's 8-byte count of expirations into a u64.
                unsafe { libc::read(timer.as_raw_fd(), (&mut expirations as *mut u64).cast(), 8) };
                armed = None;
                continue;
            }
            let (slot, target) = (token as usize / n_targets, token as usize % n_targets);
            let slot = &mut slots[slot];
            let (sock, buf) = &mut slot.socks[target];
            let mut chunk = [0u8; 16 * 1024];
            loop {
                match std::io::Read::read(sock, &mut chunk) {
                    Ok(0) => return Err("the connection closed".into()),
                    Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            let Some((end_of_answer, head)) = complete_message(buf).map_err(|_| "the answer is not HTTP".to_string())? else { continue };
            let received = monotonic_ns();
            if !head.starts_with("http/1.1 200") {
                return Err(format!("answer: {}", head.lines().next().unwrap_or("")));
            }
            buf.drain(..end_of_answer);
            if let Some((waited_on, sent)) = slot.in_flight.take().filter(|(t, _)| *t == target) {
                latencies[waited_on].push((received - sent) as f64 / 1e6);
                slot.next_at += interval;
            }
        }
    }
    // Over the time the answers really took: a proxy that falls behind answers late, not less.
    let elapsed = ((monotonic_ns() - start) as f64 / 1e9).max(seconds * n_targets as f64);
    Ok(latencies.into_iter().map(|l| { let achieved = l.len() as f64 * n_targets as f64 / elapsed; (l, achieved) }).collect())
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
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
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

#[cfg(test)]
mod tests {
    use super::{complete_message, instant_upstream, paced_load};

    #[tokio::test]
    async fn the_paced_load_sends_each_target_its_share_and_times_every_answer() {
        let (a, b) = (instant_upstream().unwrap(), instant_upstream().unwrap());
        let runs = paced_load(&[&a.url, &b.url], "k", 2_000.0, 0.5, 4).await.unwrap();
        assert_eq!(runs.len(), 2);
        for (latencies, achieved) in &runs {
            // 2,000/s over the two targets' 1 s together: about 1,000 requests each.
            assert!((800..=1_050).contains(&latencies.len()), "{} answers", latencies.len());
            assert!(latencies.iter().all(|ms| *ms > 0.0 && *ms < 1_000.0), "{latencies:?}");
            assert!((1_500.0..=2_100.0).contains(achieved), "achieved {achieved}/s");
        }
        // A target that answers no HTTP is an error, not a figure.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}", silent.local_addr().unwrap());
        let closer = std::thread::spawn(move || drop(silent.accept()));
        assert!(paced_load(&[&url], "k", 100.0, 0.2, 1).await.is_err());
        closer.join().unwrap();
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
        assert_eq!(complete_message(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n"), Err(()));
    }
}
