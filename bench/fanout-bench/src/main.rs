//! `udp-fanout-bench`: the load generator and counting sink as a command-line tool, for manual
//! runs and benchmark scripts (which read its `--json` output). All the work is in the library;
//! this is only argument parsing and printing, see [`cli`].
#![forbid(unsafe_code)]

mod cli;

fn main() -> anyhow::Result<()> {
    cli::main()
}
