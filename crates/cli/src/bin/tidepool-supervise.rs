//! The per-task supervisor as a binary of its own (`tidepool-supervise __supervise DIR`): it
//! holds nothing but the supervisor, so the one started for every task loads fast. The agent
//! falls back to `tidepool __supervise DIR` when this file is not beside `tidepool`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let dir = match args.get(1).map(String::as_str) {
        Some("__supervise") => args.get(2),
        _ => args.get(1),
    };
    let Some(dir) = dir else {
        eprintln!("usage: tidepool-supervise __supervise DIR");
        return ExitCode::from(2);
    };
    ExitCode::from(tidepool_agent::supervisor::run(std::path::Path::new(dir)) as u8)
}
