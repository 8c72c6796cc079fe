//! Command-line interface: `gen`, `sink`, `sessions`, `control` and `compare` subcommands over
//! the library, a short human summary by default and one JSON object with `--json`. Only
//! argument handling and printing live here; `sessions` is
//! [`fanout_bench::scenarios::session_scale`], `control` is
//! [`fanout_bench::scenarios::control_scale`], `compare` (in [`compare`]) is
//! [`fanout_bench::scenarios::compare`].
//!
//! JSON goes to stdout as a single object so that scripts can parse it whole; anything meant
//! for people while a run is in progress (the sink's bound addresses) goes to stderr, where it
//! cannot corrupt that object. Both subcommands stop cleanly on SIGINT/SIGTERM and still print
//! their report, since an interrupted benchmark's numbers are often the ones wanted.

use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use fanout_bench::addrs::{parse_ip_list, parse_port_range};
use fanout_bench::generator::{self, GenConfig, GenReport};
use fanout_bench::human::{percent, percentiles};
use fanout_bench::scenarios::control_scale::{self, ControlScaleConfig};
use fanout_bench::scenarios::session_scale::{self, SessionScaleConfig};
use fanout_bench::sink::{Sink, SinkOptions, SinkReport};
use fanout_bench::stats::LatencySummary;
use serde::Serialize;

mod compare;

/// Load generator and counting sink for udp-fanout.
#[derive(Debug, Parser)]
#[command(name = "udp-fanout-bench", version)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Send verifiable datagrams to a target.
    Gen(GenArgs),
    /// Receive, verify and count datagrams.
    Sink(SinkArgs),
    /// Benchmark udp-fanout's session capacity, memory per session and reply throughput.
    Sessions(SessionsArgs),
    /// Benchmark the control plane at 10,000 downstreams: reload latency and cost, loss on an
    /// unchanged listener during reloads, health-check CPU, memory.
    Control(ControlArgs),
    /// Compare udp-fanout with socat, nginx, Envoy, nftables and no proxy (max lossless
    /// rate, latency, CPU per datagram, memory).
    Compare(compare::CompareArgs),
}

#[derive(Debug, Args)]
struct GenArgs {
    /// Where to send.
    #[arg(long)]
    target: SocketAddr,
    /// Datagrams per second over all flows (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    rate: u64,
    /// Source sockets (distinct source ports).
    #[arg(long, default_value_t = 1)]
    flows: u32,
    /// Datagram sizes in bytes, cycled per datagram.
    #[arg(long, value_delimiter = ',', default_value = "64")]
    size: Vec<usize>,
    /// Datagrams to send in total.
    #[arg(long)]
    count: Option<u64>,
    /// Longest run time (500ms, 5s, 2m). At least one of --count and --duration is needed.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Datagrams per sendmmsg.
    #[arg(long, default_value_t = 32)]
    batch: usize,
    /// Address the source sockets bind to (default: loopback for a loopback target).
    #[arg(long, conflicts_with = "bind_ips")]
    bind: Option<IpAddr>,
    /// Source addresses to spread the flows over, round-robin: a list with ranges, such as
    /// 127.0.0.1,127.0.0.2 or 127.0.0.1-127.0.0.5.
    #[arg(long, value_parser = ip_list)]
    bind_ips: Option<IpList>,
    /// Explicit source ports (inclusive range such as 10000-30000), taken in order on each
    /// source address, skipping busy ones; the same settings give the same client addresses.
    #[arg(long, value_parser = parse_port_range)]
    bind_ports: Option<(u16, u16)>,
    /// Stream id to stamp (default: random).
    #[arg(long)]
    stream: Option<u32>,
    /// Expect every datagram echoed back; report round-trip latency.
    #[arg(long)]
    replies: bool,
    /// How long to wait for replies after the last send.
    #[arg(long, value_parser = parse_duration, default_value = "500ms")]
    reply_grace: Duration,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

/// A parsed `--bind-ips` (a newtype, so that clap takes the list as one value).
#[derive(Debug, Clone, PartialEq, Eq)]
struct IpList(Vec<IpAddr>);

fn ip_list(s: &str) -> Result<IpList, String> {
    parse_ip_list(s).map(IpList)
}

#[derive(Debug, Args)]
struct SessionsArgs {
    /// The udp-fanout binary (default: the one next to this executable).
    #[arg(long)]
    udp_fanout: Option<PathBuf>,
    /// Client sessions to create.
    #[arg(long, default_value_t = 100_000)]
    sessions: u32,
    /// Echo backends behind udp-fanout.
    #[arg(long, default_value_t = 8)]
    downstreams: usize,
    /// Requests per second while creating the sessions.
    #[arg(long, default_value_t = 50_000)]
    fill_rate: u64,
    /// Length of the throughput phase (500ms, 10s, 1m).
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    duration: Duration,
    /// Requests per second in the throughput phase (0 = as fast as possible).
    #[arg(long, default_value_t = 0)]
    throughput_rate: u64,
    /// udp-fanout worker threads (dataplane.workers; default: one per core).
    #[arg(long)]
    workers: Option<u32>,
    /// First client address; further ones follow it (127.0.0.2, ...).
    #[arg(long, default_value_t = Ipv4Addr::LOCALHOST)]
    client_ip: Ipv4Addr,
    /// Client ports on each client address, below the ephemeral range.
    #[arg(long, value_parser = parse_port_range, default_value = "10000-30000")]
    client_ports: (u16, u16),
    /// Most clients per client address.
    #[arg(long, default_value_t = 18_000)]
    clients_per_ip: u32,
    /// Most clients at once (default: as many as RLIMIT_NOFILE allows); more run in groups.
    #[arg(long)]
    clients_per_group: Option<u32>,
    /// Request size in bytes.
    #[arg(long, default_value_t = 64)]
    size: usize,
    /// Print one JSON object instead of markdown tables.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct ControlArgs {
    /// The udp-fanout binary (default: the one next to this executable).
    #[arg(long)]
    udp_fanout: Option<PathBuf>,
    /// Downstreams of the reloaded (and of the health-checked) listener.
    #[arg(long, default_value_t = 10_000)]
    downstreams: u32,
    /// Reloads by SIGHUP (the set alternates between two variants).
    #[arg(long, default_value_t = 100)]
    reloads: u32,
    /// Reloads by a file write alone (the daemon's file watch), after the SIGHUP ones.
    #[arg(long, default_value_t = 10)]
    watch_reloads: u32,
    /// Datagrams per second through the listener the reloads leave alone.
    #[arg(long, default_value_t = 20_000)]
    steady_rate: u64,
    /// Its flows.
    #[arg(long, default_value_t = 8)]
    steady_flows: u32,
    /// Steady traffic without reloads first, for comparison (500ms, 5s).
    #[arg(long, value_parser = parse_duration, default_value = "5s")]
    baseline: Duration,
    /// How often the probe sends to the reloaded listener.
    #[arg(long, value_parser = parse_duration, default_value = "1ms")]
    probe_interval: Duration,
    /// Length of each CPU window of the idle daemons.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    cpu_window: Duration,
    /// CPU windows per idle daemon.
    #[arg(long, default_value_t = 3)]
    repeats: u32,
    /// Health-check interval.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    health_interval: Duration,
    /// drain_secs of the reloaded listener (default: the daemon's, 30).
    #[arg(long)]
    drain_secs: Option<u32>,
    /// udp-fanout worker threads (dataplane.workers; default: one per core).
    #[arg(long)]
    workers: Option<u32>,
    /// Samples of each in-process timing.
    #[arg(long, default_value_t = 5)]
    samples: u32,
    /// Phases to run: in-process, reload, health (comma-separated).
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "in-process,reload,health"
    )]
    phases: Vec<ControlPhase>,
    /// Print one JSON object instead of markdown tables.
    #[arg(long)]
    json: bool,
}

/// A phase of `control`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum ControlPhase {
    /// The daemon's libraries timed in this process (file parse, Maglev build).
    InProcess,
    /// Reload latency, CPU and the steady listener's loss.
    Reload,
    /// Idle and health-checking daemons' CPU and memory.
    Health,
}

#[derive(Debug, Args)]
struct SinkArgs {
    /// Address to receive on (repeatable; port 0 picks one, printed on stderr).
    #[arg(long, required = true)]
    bind: Vec<SocketAddr>,
    /// Stop after this long (default: until SIGINT/SIGTERM).
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop once this many datagrams have arrived.
    #[arg(long)]
    count: Option<u64>,
    /// Send every datagram back to its source.
    #[arg(long)]
    echo: bool,
    /// SO_RCVBUF per socket in bytes.
    #[arg(long, default_value_t = 8 << 20)]
    recv_buffer: usize,
    /// Print one JSON object instead of a summary.
    #[arg(long)]
    json: bool,
}

/// Parses the command line and runs the chosen subcommand.
pub fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))
            .context("installing signal handlers")?;
    }
    match cli.command {
        Command::Gen(a) => run_gen(a, &stop),
        Command::Sink(a) => run_sink(a, &stop),
        Command::Sessions(a) => run_sessions(a, &stop),
        Command::Control(a) => run_control(a, &stop),
        Command::Compare(a) => compare::run(a, &stop),
    }
}

fn run_gen(a: GenArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let mut cfg = GenConfig::new(a.target);
    cfg.rate_pps = a.rate;
    cfg.flows = a.flows;
    cfg.sizes = a.size;
    cfg.count = a.count;
    cfg.duration = a.duration;
    cfg.batch = a.batch;
    if let Some(ip) = a.bind {
        cfg.bind_ip = ip;
    }
    if let Some(IpList(ips)) = a.bind_ips {
        cfg.bind_ips = ips;
    }
    cfg.bind_ports = a.bind_ports;
    if let Some(s) = a.stream {
        cfg.stream_id = s;
    }
    cfg.expect_replies = a.replies;
    cfg.reply_grace = a.reply_grace;
    let report = generator::run(&cfg, stop).context("generator failed")?;
    print_report(a.json, &report, |r| gen_summary(r, cfg.expect_replies))
}

/// Prints `report` as one JSON object with `--json`, else `text` of it for people.
fn print_report<T: Serialize>(
    json: bool,
    report: &T,
    text: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(report)?);
    } else {
        print!("{}", text(report));
    }
    Ok(())
}

fn run_sessions(a: SessionsArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let bin = a
        .udp_fanout
        .map_or_else(session_scale::default_udp_fanout, Ok)?;
    let mut cfg = SessionScaleConfig::new(bin);
    cfg.sessions = a.sessions;
    cfg.downstreams = a.downstreams;
    cfg.fill_rate_pps = a.fill_rate;
    cfg.duration = a.duration;
    cfg.throughput_rate_pps = a.throughput_rate;
    cfg.workers = a.workers;
    cfg.client_ip_base = a.client_ip;
    cfg.client_ports = a.client_ports;
    cfg.clients_per_ip = a.clients_per_ip;
    cfg.max_group = a.clients_per_group;
    cfg.size = a.size;
    let report = session_scale::run(&cfg, stop).context("sessions benchmark failed")?;
    print_report(a.json, &report, |r| r.to_markdown())
}

fn run_control(a: ControlArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let bin = a
        .udp_fanout
        .map_or_else(session_scale::default_udp_fanout, Ok)?;
    let mut cfg = ControlScaleConfig::new(bin);
    cfg.downstreams = a.downstreams;
    cfg.reloads = a.reloads;
    cfg.watch_reloads = a.watch_reloads;
    cfg.steady_rate_pps = a.steady_rate;
    cfg.steady_flows = a.steady_flows;
    cfg.baseline = a.baseline;
    cfg.probe_interval = a.probe_interval;
    cfg.cpu_window = a.cpu_window;
    cfg.repeats = a.repeats;
    cfg.health_interval = a.health_interval;
    cfg.drain_secs = a.drain_secs;
    cfg.workers = a.workers;
    cfg.samples = a.samples;
    cfg.in_process = a.phases.contains(&ControlPhase::InProcess);
    cfg.reload_phase = a.phases.contains(&ControlPhase::Reload);
    cfg.health_phase = a.phases.contains(&ControlPhase::Health);
    let report = control_scale::run(&cfg, stop).context("control benchmark failed")?;
    print_report(a.json, &report, |r| r.to_markdown())
}

fn run_sink(a: SinkArgs, stop: &AtomicBool) -> anyhow::Result<()> {
    let opts = SinkOptions {
        echo: a.echo,
        recv_buffer: a.recv_buffer,
        ..SinkOptions::default()
    };
    let sink = Sink::bind(&a.bind, opts).context("binding the sink")?;
    let addrs: Vec<String> = sink.local_addrs().iter().map(ToString::to_string).collect();
    eprintln!("sink listening on {}", addrs.join(" "));
    let handle = sink.start()?;
    let end = a.duration.map(|d| Instant::now() + d);
    while !stop.load(Ordering::Relaxed)
        && end.is_none_or(|e| Instant::now() < e)
        && a.count.is_none_or(|c| handle.total_datagrams() < c)
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let report = handle.stop();
    print_report(a.json, &report, sink_summary)?;
    match report.error {
        Some(e) => anyhow::bail!(e),
        None => Ok(()),
    }
}

/// Parses `500ms`, `5s`, `1.5s`, `2m`, `1h`, `250us`, `100ns`; a bare number is seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a number followed by ns, us, ms, s, m or h"))?;
    let scale = match unit.trim() {
        "ns" => 1e-9,
        "us" | "µs" => 1e-6,
        "ms" => 1e-3,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        u => return Err(format!("`{s}`: unknown unit `{u}` (ns, us, ms, s, m, h)")),
    };
    Duration::try_from_secs_f64(value * scale).map_err(|e| format!("`{s}`: {e}"))
}

fn fmt_latency(l: Option<&LatencySummary>) -> String {
    match l {
        Some(l) => {
            let [p50, p99, p999, max] = percentiles(l);
            format!("p50 {p50} p99 {p99} p99.9 {p999} max {max} (n={})", l.count)
        }
        None => "no samples".to_owned(),
    }
}

fn gen_summary(r: &GenReport, replies: bool) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "gen: sent {} datagrams ({} B) to {} from {} flows in {:.3} s: {:.0} pps, {:.1} Mbit/s, \
         {} send errors (stream {:#010x})",
        r.sent,
        r.bytes_sent,
        r.target,
        r.per_flow.len(),
        r.elapsed.as_secs_f64(),
        r.rate_pps,
        r.mbit_per_s,
        r.send_errors,
        r.stream_id
    );
    if replies {
        let back = r.replies_received + r.reply_short;
        let _ = writeln!(
            s,
            "replies: {back}/{} ({:.3}% missing), {} dup, {} invalid; rtt {}",
            r.sent,
            percent(r.sent.saturating_sub(back), r.sent),
            r.reply_duplicates,
            r.reply_invalid,
            fmt_latency(r.reply_latency.as_ref())
        );
    }
    s
}

fn sink_summary(r: &SinkReport) -> String {
    let mut s = String::new();
    let active = r.active().as_secs_f64();
    let per_sec = |v: u64| if active > 0.0 { v as f64 / active } else { 0.0 };
    let _ = writeln!(
        s,
        "sink: {} datagrams ({} B) in {:.3} s active: {:.0} pps, {:.1} Mbit/s",
        r.total_datagrams(),
        r.total_bytes(),
        active,
        per_sec(r.total_datagrams()),
        per_sec(r.total_bytes() * 8) / 1e6
    );
    let unique = r.total_unique();
    let lost = r.total_lost();
    let _ = writeln!(
        s,
        "  unique {unique}, lost {lost} ({:.3}%), dup {}, reordered {}, corrupt {}, short {}, \
         not ours {}",
        percent(lost, unique + lost),
        r.total_duplicates(),
        r.total_reordered(),
        r.total_corrupt(),
        r.total_short(),
        r.total_not_ours()
    );
    for p in &r.ports {
        let _ = writeln!(
            s,
            "  port {}: {} datagrams from {} sources, {} flows, kernel drops {}, echoed {}; \
             one-way latency {}",
            p.local_addr,
            p.datagrams,
            p.sources.len(),
            p.flows.len(),
            p.kernel_drops
                .map_or_else(|| "?".to_owned(), |d| d.to_string()),
            p.echoed,
            fmt_latency(p.latency.as_ref())
        );
    }
    if let Some(e) = &r.error {
        let _ = writeln!(s, "  error: {e}");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("-1s").is_err());
    }

    /// Parses `udp-fanout-bench ARGS`, the arguments split at spaces.
    fn parse(args: &str) -> Result<Command, clap::Error> {
        Cli::try_parse_from(std::iter::once("b").chain(args.split_whitespace())).map(|c| c.command)
    }

    /// The arguments of subcommand `$variant` that `parse($args)` must give.
    macro_rules! parse_as {
        ($variant:ident, $args:expr) => {{
            let Command::$variant(a) = parse($args).unwrap() else {
                panic!(concat!("not ", stringify!($variant)))
            };
            a
        }};
    }

    #[test]
    fn cli_is_consistent_and_parses_lists() {
        Cli::command().debug_assert();
        let g = parse_as!(Gen, "gen --target 127.0.0.1:9 --size 0,64,1400 --count 5");
        assert_eq!(g.size, vec![0, 64, 1400]);
        let s = parse_as!(Sink, "sink --bind 127.0.0.1:0 --bind [::1]:0 --duration 1s");
        assert_eq!(s.bind.len(), 2);
        assert!(parse("sink").is_err());
    }

    #[test]
    fn gen_takes_source_address_lists_and_port_ranges() {
        let base = "gen --target 127.0.0.1:9 --count 5";
        let g = parse_as!(
            Gen,
            &format!("{base} --bind-ips 127.0.0.1,127.0.0.3-127.0.0.4 --bind-ports 10000-30000")
        );
        let ips: Vec<IpAddr> = ["127.0.0.1", "127.0.0.3", "127.0.0.4"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(g.bind_ips, Some(IpList(ips)));
        assert_eq!(g.bind_ports, Some((10_000, 30_000)));
        assert!(parse(&format!("{base} --bind-ips 127.0.0.9-127.0.0.1")).is_err());
        assert!(parse(&format!("{base} --bind-ports 30000-10000")).is_err());
    }

    #[test]
    fn compare_takes_scenario_and_peer_lists() {
        let a = parse_as!(Compare, "compare");
        assert_eq!(a.scenarios.0.len(), 6);
        assert_eq!(
            a.peers.0.len(),
            fanout_bench::scenarios::compare::peers::PeerId::ALL.len()
        );
        assert_eq!(a.repeats, 3);
        assert!(!a.quick && a.write.is_none());
        let a = parse_as!(
            Compare,
            "compare --quick --scenarios a,e --peers nginx,direct"
        );
        assert!(a.quick);
        assert_eq!(a.scenarios.0.len(), 2);
        assert_eq!(a.peers.0.len(), 3);
        assert!(parse("compare --scenarios z").is_err());
        assert!(parse("compare --peers haproxy").is_err());
    }

    #[test]
    fn sessions_has_the_documented_defaults() {
        let s = parse_as!(Sessions, "sessions");
        assert_eq!(s.sessions, 100_000);
        assert_eq!(s.downstreams, 8);
        assert_eq!(s.fill_rate, 50_000);
        assert_eq!(s.duration, Duration::from_secs(10));
        assert_eq!(s.workers, None);
        assert_eq!(s.client_ports, (10_000, 30_000));
        assert!(!s.json);
        let s = parse_as!(
            Sessions,
            "sessions --sessions 2000 --workers 1 --duration 1s --json"
        );
        assert_eq!((s.sessions, s.workers, s.json), (2_000, Some(1), true));
    }

    #[test]
    fn control_has_the_documented_defaults() {
        let c = parse_as!(Control, "control");
        assert_eq!(
            (c.downstreams, c.reloads, c.watch_reloads),
            (10_000, 100, 10)
        );
        assert_eq!(c.steady_rate, 20_000);
        assert_eq!(c.probe_interval, Duration::from_millis(1));
        assert_eq!(c.cpu_window, Duration::from_secs(10));
        assert_eq!(c.health_interval, Duration::from_secs(1));
        assert_eq!(c.drain_secs, None);
        assert_eq!(c.phases.len(), 3);
        let c = parse_as!(
            Control,
            "control --downstreams 1000 --phases reload --drain-secs 0 --json"
        );
        assert_eq!(c.phases, vec![ControlPhase::Reload]);
        assert_eq!(
            (c.downstreams, c.drain_secs, c.json),
            (1_000, Some(0), true)
        );
        assert!(parse("control --phases bogus").is_err());
    }
}
