//! Load for proxy benchmarks: an upstream that answers at once, and a paced open-loop client
//! of raw HTTP/1.1 on one epoll thread.

use tidepool_gateway::http1::{complete_message, read_message};
use std::time::Duration;

/// What the instant upstream answers to every request: one finished chat completion.
const INSTANT_ANSWER: &str = concat!(
    "{\"id\":\"chatcmpl-0\",\"object\":\"chat.completion\",\"created\":0,\"model\":\"m\",",
    "\"choices\":[{\"index\":0,\"message\":{\"role\":\"assistant\",\"content\":\"x\"},\"finish_reason\":\"stop\"}],",
    "\"usage\":{\"prompt_tokens\":1,\"completion_tokens\":1,\"total_tokens\":2}}"
);

/// An upstream that answers every request at once, in raw HTTP/1.1 on keep-alive
/// connections, so that it costs this machine next to nothing (the role nginx plays in a
/// proxy benchmark). It has a thread and an event loop of its own: on the benchmark's shared
/// runtime its connections moved between worker threads and each answer paid a cross-thread
/// wake-up. It stops when dropped.
pub(crate) struct InstantUpstream {
    /// Its base URL.
    pub(crate) url: String,
    _stop: tokio::sync::oneshot::Sender<()>,
}

pub(crate) fn instant_upstream() -> Result<InstantUpstream, String> {
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
pub(crate) async fn paced_load(bases: &[&str], key: &str, rate: f64, seconds: f64, n_conns: usize) -> Result<Vec<(Vec<f64>, f64)>, String> {
    let body = r#"{"model":"m","messages":[{"role":"user","content":"x"}],"max_tokens":1}"#;
    let targets: Vec<(String, String)> = bases
        .iter()
        .map(|base| {
            let addr = base.trim_start_matches("http://").to_string();
            let request = tidepool_gateway::http1::request("POST", "/v1/chat/completions", &addr, &[("authorization", &format!("Bearer {key}"))], body);
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

#[cfg(test)]
mod tests {
    use super::{instant_upstream, paced_load};

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
}
