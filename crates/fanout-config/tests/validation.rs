//! Every rule of the configuration, each bad case with the message it must give.

use std::time::Duration;

use fanout_config::{Mode, from_yaml};
use fanout_core::select::Distribution;

fn err(yaml: &str) -> String {
    match from_yaml(yaml) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => e.to_string(),
    }
}

fn assert_err(yaml: &str, expected: &str) {
    let e = err(yaml);
    assert!(
        e.contains(expected),
        "error was:\n{e}\nexpected it to contain:\n{expected}"
    );
}

#[test]
fn full_example_parses() {
    let c = from_yaml(
        r#"
listeners:
  - name: syslog
    bind: "127.0.0.1:5514"
    mode: userspace
    distribution: round_robin
    downstreams:
      - "127.0.0.1:6001"
      - { address: "127.0.0.1:6002", weight: 3 }
  - name: dns6
    bind: "[::1]:5353"
    distribution: consistent_hash
    downstreams: ["[::1]:6053"]
metrics:
  enabled: true
  bind: "127.0.0.1:9090"
dataplane:
  workers: 2
  batch_size: 32
  recv_buffer: 4MiB
  send_buffer: 1048576
  send_timeout_ms: 5
"#,
    )
    .unwrap();
    assert_eq!(c.listeners.len(), 2);
    let l = &c.listeners[0];
    assert_eq!(l.name, "syslog");
    assert_eq!(l.mode, Mode::Userspace);
    assert_eq!(l.distribution, Distribution::RoundRobin);
    assert_eq!(l.downstreams[1].weight, 3);
    assert_eq!(l.downstreams[0].weight, 1);
    assert_eq!(c.listeners[1].bind, "[::1]:5353".parse().unwrap());
    assert_eq!(c.listeners[1].distribution, Distribution::ConsistentHash);
    assert!(c.metrics.enabled);
    assert_eq!(c.dataplane.workers, 2);
    assert_eq!(c.dataplane.recv_buffer, 4 << 20);
    assert_eq!(c.dataplane.send_buffer, 1 << 20);
    assert_eq!(c.dataplane.send_timeout, Duration::from_millis(5));
}

#[test]
fn defaults() {
    let c =
        from_yaml("listeners: [{ name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2'] }]")
            .unwrap();
    assert!(
        !c.metrics.enabled,
        "no metrics section means no metrics endpoint"
    );
    assert_eq!(c.dataplane.workers, 0);
    assert_eq!(c.dataplane.batch_size, 64);
    assert_eq!(c.listeners[0].distribution, Distribution::RoundRobin);
    let c = from_yaml(
        "listeners: [{ name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2'] }]\nmetrics: {}",
    )
    .unwrap();
    assert!(c.metrics.enabled);
    assert_eq!(c.metrics.bind, "127.0.0.1:9090".parse().unwrap());
}

#[test]
fn invalid_downstream_address_names_the_key() {
    assert_err(
        "listeners:\n- {name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2']}\n- {name: b, bind: '127.0.0.1:3', downstreams: ['10.0.0.1']}",
        r#"listeners[1].downstreams[0]: invalid socket address "10.0.0.1""#,
    );
}

#[test]
fn invalid_bind() {
    assert_err(
        "listeners: [{name: a, bind: 'x', downstreams: ['127.0.0.1:2']}]",
        r#"listeners[0].bind: invalid socket address "x""#,
    );
    assert_err(
        "listeners: [{name: a, bind: 5514, downstreams: ['127.0.0.1:2']}]",
        r#"listeners[0].bind: invalid socket address "5514""#,
    );
    assert_err(
        "listeners: [{name: a, bind: '::1:53', downstreams: ['127.0.0.1:2']}]",
        "write IPv6 as [addr]:port",
    );
}

#[test]
fn unknown_keys_are_rejected_with_their_path() {
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstream: ['127.0.0.1:2']}]",
        "listeners[0]: unknown field `downstream`",
    );
    assert_err("listener: []", "unknown field `listener`");
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: [{address: '127.0.0.1:2', wieght: 2}]}]",
        "listeners[0].downstreams[0]: unknown field `wieght`",
    );
    assert_err(
        "listeners: []\nmetrics: {port: 1}",
        "metrics: unknown field `port`",
    );
}

#[test]
fn duplicate_names_and_binds() {
    assert_err(
        "listeners:\n- {name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:9']}\n- {name: a, bind: '127.0.0.1:2', downstreams: ['127.0.0.1:9']}",
        r#"listeners[1].name: duplicate name "a" (also listeners[0])"#,
    );
    assert_err(
        "listeners:\n- {name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:9']}\n- {name: b, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:9']}",
        "listeners[1].bind: duplicate bind 127.0.0.1:1 (also listeners[0])",
    );
}

#[test]
fn weights() {
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: [{address: '127.0.0.1:2', weight: 0}]}]",
        "listeners[0].downstreams[0].weight: weight 0 is invalid: must be at least 1",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: [{address: '127.0.0.1:2', weight: 100000}]}]",
        "must be at most 10000",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: [{address: '127.0.0.1:2', weight: two}]}]",
        "listeners[0].downstreams[0].weight: invalid type",
    );
}

#[test]
fn kernel_modes() {
    let c = from_yaml(
        "listeners: [{name: a, bind: '10.0.0.1:5514', mode: xdp, interface: eth0, downstreams: ['10.0.1.1:5514'], fallback: userspace}]",
    )
    .unwrap();
    assert_eq!(c.listeners[0].mode, Mode::Xdp);
    assert_eq!(c.listeners[0].fallback, fanout_config::Fallback::Userspace);
    assert!(from_yaml("listeners: [{name: a, bind: '10.0.0.1:5514', mode: tc_ebpf, interface: eth0, distribution: mirror, downstreams: ['10.0.1.1:1', '10.0.1.2:1']}]").is_ok());
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', mode: xdp, downstreams: ['127.0.0.1:2']}]",
        "listeners[0].interface: required with mode: xdp",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:0', mode: tc_ebpf, interface: lo, downstreams: ['127.0.0.1:2']}]",
        "listeners[0].bind: mode: tc_ebpf needs an explicit port",
    );
    assert_err(
        "listeners: [{name: a, bind: '10.0.0.1:1', mode: xdp, interface: eth0, distribution: mirror, downstreams: ['10.0.1.1:1']}]",
        "listeners[0].distribution: mirror needs mode: tc_ebpf",
    );
    assert_err(
        "listeners: [{name: a, bind: '10.0.0.1:1', mode: xdp, interface: eth0, downstreams: ['[2001:db8::1]:1']}]",
        "listeners[0].downstreams[0]: [2001:db8::1]:1 is not of the listener's address family",
    );
    assert_err(
        "listeners: [{name: a, bind: '10.0.0.1:1', mode: xdp, interface: eth0, downstreams: ['10.0.1.1:1'], session: {reply: true}}]",
        "listeners[0].session: sessions and the reply path are served by the userspace plane",
    );
    assert_err(
        "listeners: [{name: a, bind: '10.0.0.1:1', downstreams: ['10.0.1.1:1'], fallback: userspace}]",
        "listeners[0].fallback: only kernel-plane listeners",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', mode: dpdk, downstreams: ['127.0.0.2:2']}]",
        "listeners[0].mode: unknown variant `dpdk`, expected one of `userspace`, `xdp`, `tc_ebpf`",
    );
    let many: Vec<String> = (0..17)
        .map(|i| format!("{{name: l{i}, bind: '10.0.0.1:{}', mode: xdp, interface: eth0, downstreams: ['10.0.1.1:1']}}", 1000 + i))
        .collect();
    assert_err(
        &format!("listeners: [{}]", many.join(", ")),
        "listeners[16].mode: the kernel plane serves at most 16 listeners",
    );
}

#[test]
fn distribution_must_be_known() {
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', distribution: random, downstreams: ['127.0.0.1:2']}]",
        "listeners[0].distribution: unknown variant `random`",
    );
}

#[test]
fn missing_and_empty() {
    assert_err("", "the configuration is empty");
    assert_err("metrics: {}", "listeners: required");
    assert_err("listeners: []", "listeners: list at least one listener");
    assert_err(
        "listeners: [{bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2']}]",
        "listeners[0].name: required",
    );
    assert_err(
        "listeners: [{name: a, downstreams: ['127.0.0.1:2']}]",
        "listeners[0].bind: required",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1'}]",
        "listeners[0].downstreams: required",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: []}]",
        "listeners[0].downstreams: list at least one downstream",
    );
    assert_err(
        "listeners: [{name: 'a b', bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2']}]",
        "listeners[0].name: invalid name",
    );
}

#[test]
fn loops_duplicates_and_unusable_downstreams() {
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:1']}]",
        "listeners[0].downstreams[0]: downstream 127.0.0.1:1 is the listener itself",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2', '127.0.0.1:2']}]",
        "listeners[0].downstreams[1]: duplicate downstream 127.0.0.1:2",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:0']}]",
        "has port 0",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: ['0.0.0.0:9']}]",
        "unspecified address",
    );
}

#[test]
fn dataplane_ranges() {
    let base = "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2']}]\n";
    assert_err(
        &format!("{base}dataplane: {{workers: 0}}"),
        "dataplane.workers: 0 is invalid",
    );
    assert_err(
        &format!("{base}dataplane: {{workers: many}}"),
        "dataplane.workers: invalid value",
    );
    assert_err(
        &format!("{base}dataplane: {{batch_size: 5000}}"),
        "dataplane.batch_size: 5000 is invalid",
    );
    assert_err(
        &format!("{base}dataplane: {{recv_buffer: 8 parsecs}}"),
        "dataplane.recv_buffer: invalid size",
    );
    assert!(from_yaml(&format!("{base}dataplane: {{workers: auto}}")).is_ok());
}

#[test]
fn all_errors_are_reported_at_once() {
    let e = err(
        "listeners: [{name: a, bind: 'x', downstreams: ['y', {address: '127.0.0.1:2', weight: 0}]}]",
    );
    assert_eq!(e.lines().count(), 3, "{e}");
}

#[test]
fn metrics_bind_must_not_clash_with_a_listener() {
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:9090', downstreams: ['127.0.0.1:2']}]\nmetrics: {bind: '127.0.0.1:9090'}",
        "listeners[0].bind: 127.0.0.1:9090 is also metrics.bind",
    );
    assert_err(
        "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2']}]\nmetrics: {bind: nowhere}",
        "metrics.bind: invalid socket address",
    );
}

#[test]
fn yaml_syntax_errors_give_a_location() {
    assert_err("listeners:\n  - name: a\n   bind: x: y", "at line");
}

#[test]
fn sessions() {
    let base = "listeners: [{name: a, bind: '127.0.0.1:1', downstreams: ['127.0.0.1:2'], ";
    let c = from_yaml(&format!(
        "{base}session: {{reply: true, idle_timeout_secs: 5, max_sessions: 100}}}}]"
    ))
    .unwrap();
    let s = c.listeners[0].session.unwrap();
    assert!(s.sticky && s.reply);
    assert_eq!(s.idle_timeout, Duration::from_secs(5));
    assert_eq!(s.max_sessions, 100);
    let c = from_yaml(&format!("{base}session: {{}}}}]")).unwrap();
    let s = c.listeners[0].session.unwrap();
    assert!(
        s.sticky && !s.reply,
        "an empty section means sticky sessions"
    );
    assert_eq!(s.idle_timeout, Duration::from_secs(60));
    assert!(
        from_yaml(&format!("{base}}}]")).unwrap().listeners[0]
            .session
            .is_none()
    );
    assert_err(
        &format!("{base}session: {{sticky: false}}}}]"),
        "listeners[0].session: with sticky: false and reply: false",
    );
    assert_err(
        &format!("{base}session: {{idle_timeout_secs: 0}}}}]"),
        "listeners[0].session.idle_timeout_secs: 0 is invalid",
    );
    assert_err(
        &format!("{base}session: {{max_sessions: -1}}}}]"),
        "listeners[0].session.max_sessions: -1 is invalid",
    );
    assert_err(
        &format!("{base}session: {{timeout: 3}}}}]"),
        "listeners[0].session: unknown field `timeout`",
    );
    assert!(from_yaml(&format!("{base}session: {{sticky: false, reply: true}}}}]")).is_ok());
}
