//! The `ordersync` binary: parse the command line and hand over to the command.

use clap::Parser;
use std::process::ExitCode;
use std::time::Duration;

mod cli;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let code = match runtime.block_on(cli::dispatch(args)) {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    };
    // Work abandoned at the shutdown deadline (a call stuck on a silent database) must not hold
    // the exit: give the runtime a moment, then go.
    runtime.shutdown_timeout(Duration::from_secs(1));
    code
}
