//! The `tidepool` binary: parses the command line and calls into the crates. Called through a
//! link named `sbatch`, `squeue`, `scancel`, `sacct`, `sinfo`, `srun` or `scontrol`, it behaves
//! as that command.

mod cli;
mod client;
mod commands;
mod output;
mod registry;
mod sim;
mod slurm;
mod up;

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    // The launcher runs before anything else starts: no runtime, no threads.
    // The helper inside a job's shared container, started by the launcher.
    if args.get(1).map(String::as_str) == Some("__inside") {
        return ExitCode::from(tidepool_agent::launcher::serve_inside() as u8);
    }
    if args.get(1).map(String::as_str) == Some("__launch") {
        let Some(dir) = args.get(2) else { return ExitCode::from(2) };
        return ExitCode::from(tidepool_agent::launcher::run(std::path::Path::new(dir)) as u8);
    }
    let program = args
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("tidepool")
        .to_string();
    let (command, rest): (String, Vec<String>) = match program.as_str() {
        "sbatch" | "squeue" | "scancel" | "sacct" | "sinfo" | "srun" | "scontrol" => (program.clone(), args[1..].to_vec()),
        _ => match args.get(1).map(String::as_str) {
            Some(c @ ("sbatch" | "squeue" | "scancel" | "sacct" | "sinfo" | "srun" | "scontrol")) => (c.to_string(), args[2..].to_vec()),
            _ => (String::new(), args),
        },
    };
    // Daemons get worker threads; a user's command makes one request or a few,
    // and starts faster on the calling thread alone.
    let daemon = command.is_empty()
        && matches!(rest.get(1).map(String::as_str), Some("up" | "server" | "agent" | "gateway" | "replica-emulator"));
    if daemon {
        // Everything a daemon creates (journal, logs, tokens, run directories) is its owner's
        // alone; tasks get the usual 022 from their launcher.
        // SAFETY: umask(2) changes only this process's file-creation mask.
        unsafe { libc::umask(0o077) };
    }
    let runtime = if daemon { tokio::runtime::Builder::new_multi_thread().enable_all().build() } else { tokio::runtime::Builder::new_current_thread().enable_all().build() };
    let runtime = match runtime {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tidepool: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    let outcome = if command.is_empty() {
        runtime.block_on(cli::run(rest))
    } else {
        runtime.block_on(slurm::run(&command, rest))
    };
    match outcome {
        Ok(code) => ExitCode::from(code),
        Err(message) => {
            let name = if command.is_empty() { "tidepool" } else { command.as_str() };
            eprintln!("{name}: error: {message}");
            ExitCode::FAILURE
        }
    }
}
