//! `udp-fanout`: the daemon's entry point. Parses the command line, loads and validates the
//! configuration, starts the data plane and the metrics endpoint, and stops them cleanly on
//! SIGINT/SIGTERM; or, as `udp-fanout ctl ...`, talks to a running daemon's admin API
//! ([`ctl`]). The work is done by the library crates; this file only wires them.
#![forbid(unsafe_code)]

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod app;
mod ctl;
mod events;
mod privileges;
mod systemd;

/// UDP load balancer and fan-out proxy.
///
/// Receives UDP datagrams on listeners and sends each one on: to one downstream
/// (round_robin, consistent_hash) or a copy to every downstream (mirror).
///
/// `udp-fanout ctl ...` instead talks to a running daemon (see `udp-fanout ctl --help`).
#[derive(Debug, Parser)]
#[command(name = "udp-fanout", version, about, long_about = None,
          // `ctl` needs no --config, and takes none of the daemon's options.
          subcommand_negates_reqs = true, args_conflicts_with_subcommands = true)]
struct Cli {
    /// Configuration file (YAML). See docs/CONFIGURATION.md.
    #[arg(short, long, value_name = "FILE", required = true)]
    config: Option<PathBuf>,

    /// Validate the configuration and exit: 0 and "config OK", or 1 and the errors.
    #[arg(long)]
    check: bool,

    /// Log level or filter (error, warn, info, debug, trace, or a tracing filter such as
    /// "info,fanout_userspace=debug"). Overrides RUST_LOG; default "info".
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Talk to a running udp-fanout through its admin API: status, list, add, remove, drain,
    /// disable, enable, weight, reload.
    Ctl(ctl::CtlArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(Command::Ctl(args)) = cli.command {
        // No logging set up: ctl's output is its answer, and errors go to stderr as one line.
        return ctl::run(args);
    }
    let Some(config) = cli.config else {
        // clap requires --config without a subcommand; this is only a second guard.
        eprintln!("error: --config FILE is required");
        return ExitCode::FAILURE;
    };
    init_logging(cli.log_level.as_deref());
    let cfg = match fanout_config::load(&config) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors.iter() {
                eprintln!("error: {e}");
            }
            return ExitCode::FAILURE;
        }
    };
    if cli.check {
        // The files a reload would read are part of the config: check them too.
        if let Err(e) = fanout_control::reload::read_files(&cfg) {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
        println!("config OK");
        return ExitCode::SUCCESS;
    }
    match app::run(cfg, &config) {
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
