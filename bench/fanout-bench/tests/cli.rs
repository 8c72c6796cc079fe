//! The `udp-fanout-bench` binary end to end: a sink process and a generator process on
//! loopback, talking JSON to the test as they would to a benchmark script.

use std::io::{BufRead, BufReader, Read};
use std::process::{Command, Stdio};

const BIN: &str = env!("CARGO_BIN_EXE_udp-fanout-bench");

#[test]
fn gen_and_sink_processes_report_json() {
    let mut sink = Command::new(BIN)
        .args([
            "sink",
            "--bind",
            "127.0.0.1:0",
            "--count",
            "500",
            "--duration",
            "10s",
            "--echo",
            "--json",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(sink.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .strip_prefix("sink listening on ")
        .unwrap_or_else(|| panic!("unexpected sink banner {line:?}"))
        .to_owned();

    let out = Command::new(BIN)
        .args([
            "gen",
            "--target",
            &addr,
            "--count",
            "500",
            "--flows",
            "4",
            "--size",
            "64,200",
            "--rate",
            "20000",
            "--replies",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let g: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(g["sent"], 500);
    assert_eq!(g["replies_received"], 500);
    assert_eq!(g["per_flow"].as_array().unwrap().len(), 4);
    assert!(g["reply_latency"]["p99_ns"].as_u64().unwrap() > 0);
    assert!(g["elapsed"].as_f64().unwrap() > 0.0);

    let status = sink.wait().unwrap();
    assert!(status.success());
    let mut json = String::new();
    sink.stdout
        .take()
        .unwrap()
        .read_to_string(&mut json)
        .unwrap();
    let s: serde_json::Value = serde_json::from_str(&json).unwrap();
    let port = &s["ports"][0];
    assert_eq!(port["datagrams"], 500);
    assert_eq!(port["corrupt"], 0);
    assert_eq!(port["echoed"], 500);
    assert_eq!(port["sources"].as_object().unwrap().len(), 4);
    assert_eq!(s["flows"].as_array().unwrap().len(), 4);
}

#[test]
fn unbounded_gen_is_refused() {
    let out = Command::new(BIN)
        .args(["gen", "--target", "127.0.0.1:9"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("count or a duration"), "{err}");
}
