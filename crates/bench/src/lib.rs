//! `tidepool-bench`: programs that print Tidepool's figures next to a baseline's (what users
//! would pick instead), measured in the same run on this machine. They live apart from the
//! product: the `tidepool` binary holds no load generator, raw HTTP server or installer.
//!
//! - [`sched`]: the scheduling core alone against plain first fit.
//! - [`batch`]: arrays of `true` through Tidepool, a single-host Slurm, HyperQueue and no
//!   scheduler at all.
//! - [`containers`]: trivial tasks in an OCI image beside bare ones, and a cold pull.
//! - [`gateway`]: the gateway under a tier mix, and its added latency beside nginx's.
//! - [`recovery`]: a restart on a journal of a million tasks.
//! - `load`: an instant upstream and a paced open-loop client for the proxy benchmarks (raw
//!   HTTP/1.1 framed by `tidepool_gateway::http1`, which the end-to-end tests use too).
//!
//! Benchmarks that run the product run the `tidepool` binary beside this one (or
//! `TIDEPOOL_BIN`), as it is deployed.

pub mod batch;
pub mod containers;
pub mod gateway;
mod load;
pub mod recovery;
pub mod sched;

use clap::Parser;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// Writes one line to standard output, quietly when the reader went away (`| head`).
pub fn line(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
}

/// The `tidepool` binary the benchmarks run: `TIDEPOOL_BIN`, else the one beside this program.
pub fn tidepool_exe() -> Result<PathBuf, String> {
    if let Some(given) = std::env::var_os("TIDEPOOL_BIN") {
        return Ok(PathBuf::from(given));
    }
    let beside = std::env::current_exe().map_err(|e| e.to_string())?.with_file_name("tidepool");
    if beside.is_file() {
        Ok(beside)
    } else {
        Err(format!("{} not found: build it (cargo build --release) or name it in TIDEPOOL_BIN", beside.display()))
    }
}

/// The command line of `tidepool-bench`.
#[derive(Parser, Debug)]
#[command(name = "tidepool-bench", about = "Tidepool's figures beside a baseline's, measured in the same run")]
pub struct BenchArgs {
    /// Which benchmark: `sched` (the scheduling core alone), `gateway` (tiers under load),
    /// `recovery` (restart on a journal of a million tasks), `batch` (arrays of `true` through
    /// Tidepool, Slurm, HyperQueue and no scheduler) or `containers` (tasks in an OCI image
    /// beside bare ones; `--tasks` of each, at most 2,000).
    #[arg(value_parser = ["sched", "gateway", "recovery", "batch", "containers"])]
    pub which: String,
    /// One JSON object instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Seconds of load per level (gateway).
    #[arg(long, default_value_t = 8.0)]
    pub seconds: f64,
    /// Tasks in the drained array (batch).
    #[arg(long, default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1000..=1_000_000))]
    pub tasks: u32,
    /// Seconds over which Slurm's rate is measured (batch).
    #[arg(long, default_value_t = 120.0)]
    pub slurm_window: f64,
    /// Tasks given to HyperQueue (batch).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1000..=1_000_000))]
    pub hq_tasks: u32,
    /// Leave Slurm out (batch).
    #[arg(long)]
    pub no_slurm: bool,
    /// Leave HyperQueue out (batch).
    #[arg(long)]
    pub no_hq: bool,
    /// The uid Tidepool's tasks run as, a project's own as on a shared fleet (batch; when run
    /// as root; 0: as the operator, the user who started it).
    #[arg(long, default_value_t = 5001)]
    pub project_uid: u32,
}

/// Runs the benchmark the command line names; the process's exit code.
pub fn main() -> ExitCode {
    let args = BenchArgs::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidepool-bench: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = runtime.block_on(async {
        match args.which.as_str() {
            "gateway" => gateway::run(args.json, args.seconds.clamp(1.0, 600.0)).await,
            "recovery" => recovery::run(args.json, 1_000_000).await,
            "containers" => containers::run(args.json, args.tasks.min(containers::MAX_TASKS)).await,
            "batch" => {
                let settings = batch::BatchBench {
                    tasks: args.tasks,
                    slurm_window_s: args.slurm_window.clamp(5.0, 3600.0),
                    hq_tasks: args.hq_tasks,
                    no_slurm: args.no_slurm,
                    no_hq: args.no_hq,
                    project_uid: args.project_uid,
                };
                batch::run(args.json, settings).await
            }
            _ => sched::sched(args.json),
        }
    });
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("tidepool-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
