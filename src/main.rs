//! The `ordersync` binary: parse the command line and hand over to the command.

use clap::Parser;
use std::process::ExitCode;

mod cli;

#[tokio::main]
async fn main() -> ExitCode {
    let args = cli::Cli::parse();
    match cli::dispatch(args).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
