use std::path::{Path, PathBuf};
use std::time::Instant;

use super::{FileError, MAX_FILE_SIZE, check_for, load, parse};
use crate::model::DownstreamConfig;

const PATH: &str = "/etc/uf/ds.txt";

fn ok(text: &str) -> Vec<DownstreamConfig> {
    parse(text, Path::new(PATH)).unwrap()
}

fn err(text: &str) -> String {
    parse(text, Path::new(PATH)).unwrap_err().to_string()
}

fn ds(addr: &str, weight: u32) -> DownstreamConfig {
    DownstreamConfig {
        addr: addr.parse().unwrap(),
        weight,
    }
}

/// A file in a fresh directory of its own under the system temp dir, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, contents: &[u8]) -> TempFile {
        let dir = std::env::temp_dir().join(format!(
            "fanout-config-{}-{name}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join(name);
        std::fs::write(&p, contents).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(dir) = self.0.parent() {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

#[test]
fn entries_weights_comments_and_blank_lines() {
    let got =
        ok("# sinks\n\n10.0.0.1:53\n10.0.0.2:53 3   # the big one\n  [::1]:5353\t2\n   \n#end");
    assert_eq!(
        got,
        vec![
            ds("10.0.0.1:53", 1),
            ds("10.0.0.2:53", 3),
            ds("[::1]:5353", 2)
        ]
    );
}

#[test]
fn empty_and_comment_only_files_are_empty_sets() {
    assert!(ok("").is_empty());
    assert!(ok("# nothing yet\n\n").is_empty());
}

#[test]
fn crlf_and_a_byte_order_mark_are_accepted() {
    assert_eq!(
        ok("\u{feff}10.0.0.1:53\r\n10.0.0.2:53 2\r\n"),
        vec![ds("10.0.0.1:53", 1), ds("10.0.0.2:53", 2)]
    );
}

#[test]
fn a_bad_address_names_file_line_and_value() {
    assert_eq!(
        err("10.0.0.1:53\n# two\n10.0.0.x:53\n10.0.0.3:53"),
        r#"/etc/uf/ds.txt:3: invalid address "10.0.0.x:53""#
    );
    assert_eq!(
        err("::1:53"),
        r#"/etc/uf/ds.txt:1: invalid address "::1:53" (write IPv6 as [addr]:port)"#
    );
    assert_eq!(
        err("10.0.0.1"),
        r#"/etc/uf/ds.txt:1: invalid address "10.0.0.1" (expected ip:port, e.g. 127.0.0.1:5514)"#
    );
    assert_eq!(
        err("10.0.0.1:0"),
        "/etc/uf/ds.txt:1: downstream 10.0.0.1:0 has port 0"
    );
    assert_eq!(
        err("0.0.0.0:53"),
        "/etc/uf/ds.txt:1: downstream 0.0.0.0:53 is an unspecified address; name a host"
    );
}

#[test]
fn weights_are_checked() {
    assert_eq!(
        err("10.0.0.1:53 0"),
        "/etc/uf/ds.txt:1: weight 0 is invalid: must be at least 1"
    );
    assert_eq!(
        err("\n10.0.0.1:53 10001"),
        "/etc/uf/ds.txt:2: weight 10001 is invalid: must be at most 10000"
    );
    assert_eq!(
        err("10.0.0.1:53 heavy"),
        r#"/etc/uf/ds.txt:1: invalid weight "heavy": use a whole number 1..=10000"#
    );
    assert_eq!(
        err("10.0.0.1:53 -2"),
        "/etc/uf/ds.txt:1: weight -2 is invalid: must be at least 1"
    );
    assert_eq!(ok("10.0.0.1:53 10000"), vec![ds("10.0.0.1:53", 10_000)]);
}

#[test]
fn extra_fields_are_an_error() {
    assert_eq!(
        err("10.0.0.1:53 2 backup"),
        r#"/etc/uf/ds.txt:1: unexpected "backup": write one `ip:port [weight]` a line"#
    );
    // A comma list is one address to the parser, and not a valid one.
    assert!(err("10.0.0.1:53,10.0.0.2:53").contains("invalid address"));
}

#[test]
fn duplicates_name_both_lines() {
    assert_eq!(
        err("10.0.0.1:53\n10.0.0.2:53\n10.0.0.1:53 4"),
        "/etc/uf/ds.txt:3: duplicate downstream 10.0.0.1:53 (also line 1)"
    );
    // The same address written two ways is the same downstream.
    assert!(err("[::1]:53\n[0:0:0:0:0:0:0:1]:53").contains("duplicate downstream [::1]:53"));
}

#[test]
fn the_error_keeps_path_and_line_apart() {
    let e = parse("x", Path::new(PATH)).unwrap_err();
    assert_eq!(
        e,
        FileError {
            path: PathBuf::from(PATH),
            line: Some(1),
            reason: r#"invalid address "x" (expected ip:port, e.g. 127.0.0.1:5514)"#.into(),
        }
    );
}

#[test]
fn ten_thousand_lines_parse_fast() {
    let text: String = (0..10_000)
        .map(|i| {
            format!(
                "10.{}.{}.{}:5514 {}\n",
                i >> 16,
                (i >> 8) & 255,
                i & 255,
                i % 7 + 1
            )
        })
        .collect();
    let t = Instant::now();
    let got = ok(&text);
    let took = t.elapsed();
    assert_eq!(got.len(), 10_000);
    assert_eq!(got[9_999], ds("10.0.39.15:5514", 9_999 % 7 + 1));
    // Milliseconds even in a debug build; the bound only catches a quadratic parser.
    assert!(took.as_millis() < 500, "took {took:?}");
}

#[test]
fn load_reads_and_names_the_file() {
    let f = TempFile::new("ds.txt", b"10.0.0.1:53\n10.0.0.2:53 2\n");
    assert_eq!(
        load(&f.0).unwrap(),
        vec![ds("10.0.0.1:53", 1), ds("10.0.0.2:53", 2)]
    );
    let bad = TempFile::new("bad.txt", b"10.0.0.1:53\nnope\n");
    assert_eq!(
        load(&bad.0).unwrap_err().to_string(),
        format!(
            "{}:2: invalid address \"nope\" (expected ip:port, e.g. 127.0.0.1:5514)",
            bad.0.display()
        )
    );
}

#[test]
fn load_errors() {
    let e = load(Path::new("/nonexistent/uf/ds.txt")).unwrap_err();
    assert_eq!(e.line, None);
    assert!(
        e.to_string()
            .starts_with("/nonexistent/uf/ds.txt: cannot read: "),
        "{e}"
    );
    let bin = TempFile::new("bin.txt", b"10.0.0.1:53\n10.0.0.2:53 \xff\n");
    let e = load(&bin.0).unwrap_err();
    assert_eq!(e.line, Some(2));
    assert_eq!(e.reason, "not UTF-8 text");
}

#[test]
fn load_refuses_a_file_over_the_cap() {
    let line = b"# padding padding padding padding padding padding padding padding\n";
    let n = usize::try_from(MAX_FILE_SIZE).unwrap() / line.len() + 1;
    let big = TempFile::new("big.txt", &line.repeat(n));
    let e = load(&big.0).unwrap_err();
    assert_eq!(
        e.reason,
        "larger than 16 MiB, the most a downstreams file may hold"
    );
}

fn listener(yaml: &str) -> crate::ListenerConfig {
    crate::from_yaml(yaml).unwrap().listeners.remove(0)
}

#[test]
fn check_for_the_listener() {
    let path = Path::new(PATH);
    let l = listener("listeners: [{name: a, bind: '127.0.0.1:5514', downstreams_file: x}]");
    assert!(check_for(&l, &ok("127.0.0.1:6000"), path).is_ok());
    assert_eq!(
        check_for(&l, &ok("127.0.0.1:5514"), path)
            .unwrap_err()
            .to_string(),
        "/etc/uf/ds.txt: listener a: downstream 127.0.0.1:5514 is the listener itself (forwarding loop)"
    );
    // The userspace plane translates families; the kernel plane does not.
    assert!(check_for(&l, &ok("[::1]:6000"), path).is_ok());
    let k = listener(
        "listeners: [{name: k, bind: '10.0.0.1:5514', mode: tc_ebpf, interface: eth0, downstreams: ['10.0.1.1:1'], downstreams_file: x}]",
    );
    assert!(
        check_for(&k, &ok("[2001:db8::1]:1"), path)
            .unwrap_err()
            .reason
            .starts_with("[2001:db8::1]:1 is not of listener k's address family")
    );
    let many: String = (0..256).map(|i| format!("10.0.2.{i}:1\n")).collect();
    assert_eq!(
        check_for(&k, &ok(&many), path).unwrap_err().reason,
        "listener k would have 257 downstreams with its downstreams: list; mode: tc_ebpf takes at most 256"
    );
    // An address in both lists counts once.
    let overlapping: String = (0..255)
        .map(|i| format!("10.0.2.{i}:1\n"))
        .chain(["10.0.1.1:1\n".to_owned()])
        .collect();
    assert!(check_for(&k, &ok(&overlapping), path).is_ok());
    let m = listener(
        "listeners: [{name: m, bind: '10.0.0.1:5514', mode: tc_ebpf, interface: eth0, distribution: mirror, downstreams_file: x}]",
    );
    let seventeen: String = (0..17).map(|i| format!("10.0.2.{i}:1\n")).collect();
    assert!(
        check_for(&m, &ok(&seventeen), path)
            .unwrap_err()
            .reason
            .ends_with("takes at most 16 for a mirror")
    );
}
