//! `udp-fanout`: the daemon's entry point. Parses the command line, loads and validates the
//! configuration, starts the data plane and the metrics endpoint, and stops them cleanly on
//! SIGINT/SIGTERM. The work is done by the library crates; this file only wires them.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

mod app;
mod privileges;

/// UDP load balancer and fan-out proxy.
///
/// Receives UDP datagrams on listeners and sends each one on: to one downstream
/// (round_robin, consistent_hash) or a copy to every downstream (mirror).
#[derive(Debug, Parser)]
#[command(name = "udp-fanout", version, about, long_about = None)]
struct Cli {
    /// Configuration file (YAML). See docs/CONFIGURATION.md.
    #[arg(short, long, value_name = "FILE")]
    config: PathBuf,

    /// Validate the configuration and exit: 0 and "config OK", or 1 and the errors.
    #[arg(long)]
    check: bool,

    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter such as
    /// "info,fanout_userspace=debug"). Overrides RUST_LOG; default "info".
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging(cli.log_level.as_deref());
    let cfg = match fanout_config::load(&cli.config) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    match app::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = match level {
        Some(l) => EnvFilter::try_new(l),
        None => EnvFilter::try_from_default_env().or_else(|_| EnvFilter::try_new("info")),
    }
    .unwrap_or_else(|e| {
        eprintln!("warning: bad log filter ({e}); using \"info\"");
        EnvFilter::new("info")
    });
    use std::io::IsTerminal;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}
