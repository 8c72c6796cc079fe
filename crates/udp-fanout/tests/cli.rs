//! The command line: --check, --help, --version, bad configs, ports in use, SIGTERM.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::net::UdpSocket;
use std::time::Duration;

use common::{Daemon, METRICS, assert_contains, run_cli, write_config};

/// Runs the binary on a config file holding `yaml`, with `args` after `--config FILE`;
/// returns (exit code, stdout, stderr).
fn run_on(yaml: &str, args: &[&str]) -> (i32, String, String) {
    let (_dir, path) = write_config(yaml);
    let mut all = vec!["--config", path.to_str().unwrap()];
    all.extend(args);
    run_cli(&all)
}

/// Runs the binary like [`run_on`] and checks that it exits with 1, naming every one of
/// `wanted` on stderr; returns (stdout, stderr).
fn rejected(yaml: &str, args: &[&str], wanted: &[&str]) -> (String, String) {
    let (code, out, err) = run_on(yaml, args);
    assert_eq!(code, 1, "{err}");
    assert_contains(&err, wanted);
    (out, err)
}

/// A valid config: listener `a` on a loopback port, forwarding to the discard port.
const LISTENER_A: &str =
    "listeners: [{name: a, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:9']}]";

#[test]
fn check_accepts_a_good_config() {
    let (code, out, _) = run_on(LISTENER_A, &["--check"]);
    assert_eq!(code, 0);
    assert_eq!(out.trim(), "config OK");
}

#[test]
fn check_reads_the_downstreams_files() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ds.txt");
    std::fs::write(&file, "127.0.0.1:7001\n10.0.0.x:1\n").unwrap();
    let yaml = format!(
        "listeners: [{{name: a, bind: '127.0.0.1:0', downstreams_file: '{}'}}]",
        file.display()
    );
    let line = format!("{}:2: invalid address \"10.0.0.x:1\"", file.display());
    rejected(&yaml, &["--check"], &[&line]);
    std::fs::write(&file, "127.0.0.1:7001 2\n").unwrap();
    let (code, out, err) = run_on(&yaml, &["--check"]);
    assert_eq!((code, out.trim()), (0, "config OK"), "{err}");
}

#[test]
fn check_accepts_the_shipped_examples() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples");
    let mut n = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.extension().is_some_and(|e| e == "yaml") {
            let (code, out, err) = run_cli(&["--config", p.to_str().unwrap(), "--check"]);
            assert_eq!(
                (code, out.trim()),
                (0, "config OK"),
                "{}: {err}",
                p.display()
            );
            n += 1;
        }
    }
    assert!(n >= 1);
}

#[test]
fn check_rejects_a_bad_config_naming_the_key() {
    let (out, _) = rejected(
        "listeners:\n- {name: a, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:9']}\n- {name: b, bind: '127.0.0.1:0', downstreams: ['10.0.0.1']}",
        &["--check"],
        &[r#"listeners[1].downstreams[0]: invalid socket address "10.0.0.1""#],
    );
    assert!(out.is_empty());
}

#[test]
fn bad_config_exits_before_binding_anything() {
    // The first listener is fine; the second is not. Nothing may be bound.
    let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
    let port = probe.local_addr().unwrap().port();
    drop(probe);
    let (_, err) = rejected(
        &format!(
            "listeners:\n- {{name: a, bind: '127.0.0.1:{port}', downstreams: ['127.0.0.1:9']}}\n- {{name: b, bind: '127.0.0.1:0', downstreams: [{{address: '127.0.0.1:9', weight: 0}}]}}"
        ),
        &[],
        &["listeners[1].downstreams[0].weight: weight 0 is invalid"],
    );
    assert!(!err.contains("listening"), "must not bind: {err}");
}

#[test]
fn kernel_mode_rules_are_checked() {
    rejected(
        "listeners: [{name: a, bind: '127.0.0.1:0', mode: xdp, downstreams: ['127.0.0.1:9']}]",
        &["--check"],
        &[
            "listeners[0].interface: required with mode: xdp",
            "listeners[0].bind: mode: xdp needs an explicit port",
        ],
    );
}

#[test]
fn missing_file_is_a_clear_error() {
    let (code, _, err) = run_cli(&["--config", "/nonexistent/udp-fanout.yaml"]);
    assert_eq!(code, 1);
    assert!(
        err.contains("cannot read /nonexistent/udp-fanout.yaml"),
        "{err}"
    );
}

#[test]
fn help_and_version() {
    let (code, out, _) = run_cli(&["--help"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("--config") && out.contains("--check") && out.contains("--log-level"),
        "{out}"
    );
    let (code, out, _) = run_cli(&["--version"]);
    assert_eq!(code, 0);
    assert_eq!(
        out.trim(),
        format!("udp-fanout {}", env!("CARGO_PKG_VERSION"))
    );
}

#[test]
fn port_in_use_is_one_clear_line() {
    let holder = UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    let (_, err) = rejected(
        &format!("listeners: [{{name: busy, bind: '{addr}', downstreams: ['127.0.0.1:9']}}]"),
        &[],
        &[],
    );
    let errors: Vec<&str> = err.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(
        errors,
        [
            format!("error: listener \"busy\": cannot bind {addr}: address already in use")
                .as_str()
        ],
        "{err}"
    );
}

#[test]
fn metrics_port_in_use_is_a_clear_error() {
    let holder = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = holder.local_addr().unwrap();
    rejected(
        &format!("{LISTENER_A}\nmetrics: {{bind: '{addr}'}}"),
        &[],
        &[&format!(
            "metrics.bind: cannot bind {addr}: address already in use"
        )],
    );
}

#[test]
fn sigterm_exits_cleanly_and_quickly() {
    let mut d = Daemon::start(&format!("{LISTENER_A}\n{METRICS}"));
    // Some traffic in flight does not delay the exit.
    let c = UdpSocket::bind("127.0.0.1:0").unwrap();
    for _ in 0..100 {
        c.send_to(b"x", d.addr("a")).unwrap();
    }
    let (status, took) = d.terminate(Duration::from_secs(5));
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(2), "took {took:?}");
    assert!(
        d.log_lines.iter().any(|l| l.contains("stopped")),
        "{:?}",
        d.log_lines
    );
}

#[test]
fn sigint_exits_cleanly_too() {
    let d = Daemon::start(LISTENER_A);
    let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let mut d = d;
    // terminate() sends SIGTERM as well; a daemon already stopping must still exit 0.
    let (status, _) = d.terminate(Duration::from_secs(5));
    assert!(status.success());
}
