//! Serving: accepting connections within the cap, handing them to event-loop threads, the
//! metrics address, and what the gateway exposes checked before it serves.

use super::*;

/// Binds `metrics_listen` if configured, checks what the gateway would expose, and serves
/// `/metrics` there on the current runtime.
pub(super) async fn expose(gateway: &Arc<Gateway>, listening: std::net::SocketAddr) -> Result<(), String> {
    let metrics = match &gateway.config.metrics_listen {
        Some(addr) => Some(tokio::net::TcpListener::bind(addr).await.map_err(|e| format!("metrics_listen: cannot listen on {addr}: {e}"))?),
        None => None,
    };
    let metrics_addr = metrics.as_ref().map(|l| l.local_addr()).transpose().map_err(|e| e.to_string())?;
    gateway.config.check_exposure(listening, metrics_addr)?;
    if let (Some(listener), Some(addr)) = (metrics, metrics_addr) {
        tracing::info!("gateway metrics on http://{addr}/metrics");
        let app = Router::new().route("/metrics", get(metrics_alone)).with_state(gateway.clone());
        tokio::spawn(async move { axum::serve(listener, app).await });
    }
    Ok(())
}

/// Runs the gateway on `listener` until `shutdown` resolves, on the caller's runtime.
pub async fn run(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let gateway = serving(config)?;
    expose(&gateway, listener.local_addr().map_err(|e| e.to_string())?).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (handed, incoming) = tokio::sync::mpsc::unbounded_channel();
    let served = tokio::spawn(serve_handed(incoming, gateway.clone(), router(gateway.clone()), stop_rx));
    accept_until(listener, &gateway, &[handed], shutdown).await;
    let _ = stop_tx.send(true);
    served.await.map_err(|e| e.to_string())
}

/// Accepts connections on `listener` and hands them to `workers` in turn until `shutdown`
/// resolves or every worker is gone.
pub(super) async fn accept_until(
    listener: tokio::net::TcpListener,
    gateway: &Gateway,
    workers: &[tokio::sync::mpsc::UnboundedSender<std::net::TcpStream>],
    shutdown: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(shutdown);
    let mut next = 0;
    let mut cap_logged: Option<Instant> = None;
    loop {
        tokio::select! {
            _ = &mut shutdown => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    // Past the cap a connection is closed at once: held, it would keep its
                    // socket and memory whatever it sends.
                    if gateway.open_connections.fetch_add(1, Ordering::SeqCst) >= gateway.config.max_connections {
                        gateway.open_connections.fetch_sub(1, Ordering::SeqCst);
                        if cap_logged.is_none_or(|t| t.elapsed().as_secs() >= 10) {
                            tracing::warn!(max_connections = gateway.config.max_connections, %peer, "gateway: connection cap reached: closing new connections");
                            cap_logged = Some(Instant::now());
                        }
                        continue;
                    }
                    // Answers go out as soon as they are written, not held back by Nagle's algorithm.
                    let _ = stream.set_nodelay(true);
                    let Ok(std_stream) = stream.into_std() else { continue };
                    if workers[next].send(std_stream).is_err() {
                        return;
                    }
                    next = (next + 1) % workers.len();
                }
                // Out of file descriptors and the like: the listener stays, and is tried again soon.
                Err(e) => {
                    tracing::warn!("gateway: accept: {e}");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            },
        }
    }
}

/// Serves the connections handed over on `incoming`, each in a task of the current event
/// loop, until `stop` is set; then waits until those under way have ended.
pub(super) async fn serve_handed(
    mut incoming: tokio::sync::mpsc::UnboundedReceiver<std::net::TcpStream>,
    gateway: Arc<Gateway>,
    app: Router,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    // Every connection's task holds a sender; the channel closes when the last one ends.
    let (open, mut all_ended) = tokio::sync::mpsc::channel::<()>(1);
    let connection_stop = stop.clone();
    let handed_all = loop {
        tokio::select! {
            handed = incoming.recv() => match handed {
                Some(std_stream) => match tokio::net::TcpStream::from_std(std_stream) {
                    Ok(stream) => {
                        let served = crate::connection::serve(stream, gateway.clone(), app.clone(), connection_stop.clone());
                        let open = open.clone();
                        let counted = gateway.clone();
                        tokio::spawn(async move {
                            served.await;
                            counted.open_connections.fetch_sub(1, Ordering::SeqCst);
                            drop(open);
                        });
                    }
                    Err(e) => {
                        gateway.open_connections.fetch_sub(1, Ordering::SeqCst);
                        tracing::warn!("gateway: a connection could not be taken up: {e}");
                    }
                },
                None => break true,
            },
            _ = stop.wait_for(|s| *s) => break false,
        }
    };
    if handed_all {
        let _ = stop.wait_for(|s| *s).await;
    }
    drop(open);
    let _ = all_ended.recv().await;
}

/// The gateway for `config`, with the batches it had journaled running again.
pub(super) fn serving(config: GatewayConfig) -> Result<Arc<Gateway>, String> {
    let gateway = Arc::new(Gateway::new(config)?);
    crate::batch::resume_all(gateway.clone());
    Ok(gateway)
}

/// The CPUs this process may run on, in order.
pub(super) fn allowed_cpus() -> Result<Vec<usize>, String> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the set is as large as the size passed.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return Err(format!("pin_workers: sched_getaffinity: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: CPU_ISSET reads the set for an index below CPU_SETSIZE.
    let cpus: Vec<usize> = (0..libc::CPU_SETSIZE as usize).filter(|&c| unsafe { libc::CPU_ISSET(c, &set) }).collect();
    if cpus.is_empty() {
        return Err("pin_workers: the process may run on no CPU".into());
    }
    Ok(cpus)
}

/// Keeps the calling thread on `cpu`: its connections' data stays in that CPU's caches and
/// it is not moved behind another busy thread.
pub(super) fn pin_this_thread(cpu: usize) -> std::io::Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET panics on, rather than writes past, an index beyond the set.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the set is as large as the size passed; pid 0 is the calling thread.
    if unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the gateway on `listener` until `shutdown` resolves, its connections spread over
/// the configured number of threads that each run their own event loop: a request is read, proxied and
/// answered on one thread, with no wake-up of another thread on the way (on a shared
/// work-stealing runtime those cost about a quarter of the gateway's CPU per request).
pub async fn run_on_workers(
    listener: tokio::net::TcpListener,
    config: GatewayConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let workers = config.workers;
    let cpus = if config.pin_workers { allowed_cpus()? } else { Vec::new() };
    let gateway = serving(config)?;
    expose(&gateway, listener.local_addr().map_err(|e| e.to_string())?).await?;
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let mut senders = Vec::new();
    let mut threads = Vec::new();
    for n in 0..workers.max(1) {
        let (tx, incoming) = tokio::sync::mpsc::unbounded_channel();
        senders.push(tx);
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("gateway worker: {e}"))?;
        let app = router(gateway.clone());
        let stop = stop_rx.clone();
        let gateway = gateway.clone();
        let cpu = (!cpus.is_empty()).then(|| cpus[n % cpus.len()]);
        let thread = std::thread::Builder::new()
            .name(format!("gateway-{n}"))
            .spawn(move || {
                if let Some(cpu) = cpu {
                    if let Err(e) = pin_this_thread(cpu) {
                        tracing::warn!("gateway-{n}: not kept on CPU {cpu}: {e}");
                    }
                }
                runtime.block_on(serve_handed(incoming, gateway, app, stop));
            })
            .map_err(|e| format!("gateway worker: {e}"))?;
        threads.push(thread);
    }
    accept_until(listener, &gateway, &senders, shutdown).await;
    let _ = stop_tx.send(true);
    drop(senders);
    let results = tokio::task::spawn_blocking(move || threads.into_iter().map(|t| t.join()).collect::<Vec<_>>()).await.map_err(|e| e.to_string())?;
    for r in results {
        r.map_err(|_| "a gateway worker panicked".to_string())?;
    }
    Ok(())
}
