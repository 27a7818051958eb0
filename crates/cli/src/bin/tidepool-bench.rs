//! `tidepool-bench`: Tidepool's figures beside a baseline's, measured in the same run (the code
//! is the `tidepool-bench` crate; this program is built beside `tidepool`, which it runs).

fn main() -> std::process::ExitCode {
    tidepool_bench::main()
}
