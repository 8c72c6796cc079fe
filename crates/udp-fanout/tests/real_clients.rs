//! Real clients and servers through udp-fanout's reply path: `dig` against two `dnsmasq`
//! resolvers (round-robin and consistent hash), and an `openssl` DTLS handshake with a line
//! exchanged both ways.
//!
//! The tools come from apt (`make test` installs them). Without them a test prints why it
//! skips; under CI (`CI` set) a missing tool is a failure.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use common::Daemon;
use fanout_core::FlowKey;
use fanout_core::select::{BackendSet, DEFAULT_TABLE_SIZE, Distribution, Endpoint, Pick};

/// Finds `tool` on PATH or in /usr/sbin; `None` means skip (or panic under CI).
fn tool(name: &str) -> Option<String> {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/sbin"])
    {
        let p = format!("{dir}/{name}");
        if std::path::Path::new(&p).is_file() {
            return Some(p);
        }
    }
    if std::env::var_os("CI").is_some() {
        panic!("{name} is not installed (make test / scripts/install-deps.sh test installs it)");
    }
    eprintln!("SKIP: {name} is not installed; run scripts/install-deps.sh test");
    None
}

/// A child process killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free for both UDP and TCP right now (dnsmasq binds both; it cannot take
/// port 0).
fn free_port() -> u16 {
    loop {
        let u = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = u.local_addr().unwrap().port();
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

fn dnsmasq(bin: &str, answer: &str) -> (Proc, SocketAddr) {
    let port = free_port();
    let child = Command::new(bin)
        .args([
            "--keep-in-foreground",
            "--conf-file=/dev/null",
            "--no-resolv",
            "--no-hosts",
            "--bind-interfaces",
            "--listen-address=127.0.0.1",
            "--pid-file",
            &format!("--port={port}"),
            &format!("--address=/test.example/{answer}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    (Proc(child), SocketAddr::from(([127, 0, 0, 1], port)))
}

/// `dig @server test.example +short`, optionally from a fixed source port.
fn dig(bin: &str, server: SocketAddr, source_port: Option<u16>) -> Option<String> {
    let mut cmd = Command::new(bin);
    cmd.args([
        &format!("@{}", server.ip()),
        "-p",
        &server.port().to_string(),
        "test.example",
        "A",
        "+short",
        "+tries=1",
        "+time=2",
    ]);
    if let Some(p) = source_port {
        cmd.args(["-b", &format!("127.0.0.1#{p}")]);
    }
    let out = cmd.output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let ok = out.status.success() && !text.is_empty() && !text.starts_with(';');
    if !ok {
        eprintln!(
            "dig {server} from port {source_port:?}: {:?} {text} {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    ok.then_some(text)
}

fn wait_for_dns(dig_bin: &str, server: SocketAddr) {
    let t0 = Instant::now();
    while dig(dig_bin, server, None).is_none() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "dnsmasq on {server} did not come up"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn dig_through_udp_fanout_to_two_dnsmasq() {
    let (Some(dnsmasq_bin), Some(dig_bin)) = (tool("dnsmasq"), tool("dig")) else {
        return;
    };
    let (_a, addr_a) = dnsmasq(&dnsmasq_bin, "10.1.1.1");
    let (_b, addr_b) = dnsmasq(&dnsmasq_bin, "10.2.2.2");
    wait_for_dns(&dig_bin, addr_a);
    wait_for_dns(&dig_bin, addr_b);
    assert_eq!(dig(&dig_bin, addr_a, None).as_deref(), Some("10.1.1.1"));
    let d = Daemon::start(&format!(
        "listeners:\n\
         - {{name: rr, bind: '127.0.0.1:0', downstreams: ['{addr_a}', '{addr_b}'], session: {{reply: true, idle_timeout_secs: 30}}}}\n\
         - {{name: ch, bind: '127.0.0.1:0', distribution: consistent_hash, downstreams: ['{addr_a}', '{addr_b}'], session: {{reply: true}}}}"
    ));

    // Round-robin over new sessions: every query answered, both resolvers used.
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..10 {
        let answer =
            dig(&dig_bin, d.addr("rr"), None).expect("dig through udp-fanout got no answer");
        assert!(answer == "10.1.1.1" || answer == "10.2.2.2", "{answer}");
        seen.insert(answer);
    }
    assert_eq!(seen.len(), 2, "both resolvers answer: {seen:?}");

    // Consistent hash: a client port always gets the same resolver, the one Maglev predicts.
    let set = BackendSet::new(
        Distribution::ConsistentHash,
        vec![Endpoint::new(addr_a), Endpoint::new(addr_b)],
        DEFAULT_TABLE_SIZE,
    );
    let mut per_backend = [0; 2];
    for _ in 0..12 {
        let port = free_port();
        let Pick::One(want) = set.pick(
            &FlowKey::new(SocketAddr::from(([127, 0, 0, 1], port))),
            &mut 0,
        ) else {
            panic!()
        };
        let want = ["10.1.1.1", "10.2.2.2"][want as usize];
        for _ in 0..3 {
            let got = dig(&dig_bin, d.addr("ch"), Some(port)).expect("no answer");
            assert_eq!(got, want, "client port {port}");
        }
        per_backend[usize::from(want == "10.2.2.2")] += 1;
    }
    assert!(
        per_backend.iter().all(|&n| n > 0),
        "12 client ports should reach both: {per_backend:?}"
    );
}

/// `bin args…` with its stdin and stdout piped to the test (its stderr dropped), killed on
/// drop.
fn talking(bin: &str, args: &[&str]) -> Proc {
    Proc(
        Command::new(bin)
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// Lines a child writes to stdout, readable with a timeout.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let out = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            if tx.send(l).is_err() {
                break;
            }
        }
    });
    rx
}

fn expect_line(rx: &mpsc::Receiver<String>, want: &str, who: &str) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.trim() == want => return,
            Ok(_) => {}
            Err(_) => panic!("{who} never printed {want:?}"),
        }
    }
}

#[test]
fn dtls_handshake_and_a_line_each_way_through_udp_fanout() {
    let Some(openssl) = tool("openssl") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let (key, cert) = (key.to_str().unwrap(), cert.to_str().unwrap());
    let st = Command::new(&openssl)
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=udp-fanout-test",
            "-days",
            "1",
            "-keyout",
            key,
            "-out",
            cert,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    let port = {
        let s = UdpSocket::bind("127.0.0.1:0").unwrap();
        s.local_addr().unwrap().port()
    };
    let accept = format!("127.0.0.1:{port}");
    let mut server = talking(
        &openssl,
        &[
            "s_server", "-dtls", "-quiet", "-accept", &accept, "-cert", cert, "-key", key,
        ],
    );
    let d = Daemon::start(&format!(
        "listeners: [{{name: dtls, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:{port}'], session: {{reply: true}}}}]"
    ));
    // Give s_server a moment to bind before the first ClientHello (it retransmits anyway).
    std::thread::sleep(Duration::from_millis(300));
    let connect = d.addr("dtls").to_string();
    let mut client = talking(
        &openssl,
        &["s_client", "-dtls", "-quiet", "-connect", &connect],
    );
    let server_out = lines(&mut server.0);
    let client_out = lines(&mut client.0);
    let mut client_in = client.0.stdin.take().unwrap();
    let mut server_in = server.0.stdin.take().unwrap();
    // The handshake completes before s_client reads stdin; the line crosses only over DTLS.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        writeln!(client_in, "hello-from-client").unwrap();
        client_in.flush().unwrap();
        if let Ok(l) = server_out.recv_timeout(Duration::from_millis(500)) {
            assert_eq!(l.trim(), "hello-from-client");
            break;
        }
        assert!(Instant::now() < deadline, "no DTLS data reached the server");
    }
    writeln!(server_in, "hello-from-server").unwrap();
    server_in.flush().unwrap();
    expect_line(&client_out, "hello-from-server", "s_client");
}
