//! The node's task launcher as a binary of its own (`tidepool-launcher __launch RUN_DIR`): it
//! holds nothing but the launcher (and the helper it runs inside shared containers,
//! `__inside`), so it starts fast and stays small. The agent falls back to
//! `tidepool __launch RUN_DIR` when this file is not beside `tidepool`.

use std::process::ExitCode;

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("__inside") {
        return ExitCode::from(tidepool_agent::launcher::serve_inside() as u8);
    }
    let dir = match args.get(1).map(String::as_str) {
        Some("__launch") => args.get(2),
        _ => args.get(1),
    };
    let Some(dir) = dir else {
        eprintln!("usage: tidepool-launcher __launch RUN_DIR");
        return ExitCode::from(2);
    };
    ExitCode::from(tidepool_agent::launcher::run(std::path::Path::new(dir)) as u8)
}
