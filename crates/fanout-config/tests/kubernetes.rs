//! `kubernetes:` on a listener: the seed document's example loads as is, the keys' defaults,
//! and each bad case with the message it must give.

#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use fanout_config::{Config, KubernetesConfig, Mode, ServicePort, diff, from_yaml};

fn ok(yaml: &str) -> Config {
    match from_yaml(yaml) {
        Ok(c) => c,
        Err(e) => panic!("expected a valid config, got:\n{e}"),
    }
}

fn assert_errs(yaml: &str, expected: &[&str]) {
    match from_yaml(yaml) {
        Ok(c) => panic!("expected an error, got {c:?}"),
        Err(e) => assert_eq!(e.to_string(), expected.join("\n"), "for:\n{yaml}"),
    }
}

fn kube(section: &str) -> String {
    format!("listeners: [{{name: a, bind: '0.0.0.0:5514', kubernetes: {section}}}]\n")
}

/// The seed document's "Minimal example (Kubernetes service discovery)", verbatim.
const SEED: &str = r#"
listeners:
  - name: syslog
    bind: "0.0.0.0:5514"
    interface: eth0
    mode: tc_ebpf
    kubernetes:
      namespace: logging
      service: vector-receivers
      port: 5514

health:
  enabled: true
  interval_secs: 5
  timeout_secs: 2
  protocol: icmp

metrics:
  enabled: true
  bind: "0.0.0.0:9090"
"#;

#[test]
fn the_seed_example_loads_as_is() {
    let c = ok(SEED);
    let l = &c.listeners[0];
    assert_eq!(l.mode, Mode::TcEbpf);
    assert!(l.downstreams.is_empty());
    assert_eq!(
        l.kubernetes,
        Some(KubernetesConfig {
            namespace: "logging".into(),
            service: "vector-receivers".into(),
            port: ServicePort::Number(5514),
            prefer_same_node: false,
            node_name: None,
        })
    );
    assert!(l.health.is_some());
    assert!(c.metrics.enabled);
}

#[test]
fn every_key() {
    let c = ok(&kube(
        "{namespace: ns, service: svc, port: syslog, prefer_same_node: true, node_name: node-1.example}",
    ));
    let k = c.listeners[0].kubernetes.clone().unwrap();
    assert_eq!(k.port, ServicePort::Name("syslog".into()));
    assert!(k.prefer_same_node);
    assert_eq!(k.node_name.as_deref(), Some("node-1.example"));
    // A quoted number is a number too.
    let c = ok(&kube("{namespace: ns, service: svc, port: '53'}"));
    assert_eq!(
        c.listeners[0].kubernetes.as_ref().unwrap().port,
        ServicePort::Number(53)
    );
}

#[test]
fn static_downstreams_may_come_with_it() {
    let c = ok(
        "listeners: [{name: a, bind: '127.0.0.1:5514', downstreams: ['127.0.0.1:6001'], kubernetes: {namespace: ns, service: svc, port: 1}}]",
    );
    assert_eq!(c.listeners[0].downstreams.len(), 1);
}

#[test]
fn bad_sections_name_the_key() {
    assert_errs(
        &kube("{service: svc, port: 5514}"),
        &["listeners[0].kubernetes.namespace: required"],
    );
    assert_errs(
        &kube("{namespace: ns, port: 5514}"),
        &["listeners[0].kubernetes.service: required"],
    );
    assert_errs(
        &kube("{namespace: ns, service: svc}"),
        &[
            "listeners[0].kubernetes.port: required: the port number (5514) or the Service port's name (\"syslog\")",
        ],
    );
    assert_errs(
        &kube("{namespace: Logging, service: 1svc, port: 0}"),
        &[
            "listeners[0].kubernetes.namespace: \"Logging\": only lowercase letters, digits and '-' are allowed",
            "listeners[0].kubernetes.service: \"1svc\": must start with a letter",
            "listeners[0].kubernetes.port: 0: a port number must be 1 to 65535",
        ],
    );
    assert_errs(
        &kube("{namespace: ns, service: svc, port: Syslog_1}"),
        &[
            "listeners[0].kubernetes.port: \"Syslog_1\": expected a port number (1 to 65535) or a Service port name (up to 15 lowercase letters, digits and '-')",
        ],
    );
    assert_errs(
        &kube("{namespace: ns, service: svc, port: 1, node_name: 'a_b'}"),
        &[
            "listeners[0].kubernetes.node_name: \"a_b\": only lowercase letters, digits and '-' are allowed",
        ],
    );
    // An unknown key is a typo, not an option.
    let e = from_yaml(&kube(
        "{namespace: ns, service: svc, port: 1, namepsace: x}",
    ))
    .unwrap_err()
    .to_string();
    assert!(e.contains("unknown field `namepsace`"), "{e}");
}

#[test]
fn a_changed_section_is_applied_in_place() {
    let a = ok(&kube("{namespace: ns, service: svc, port: 1}"));
    let b = ok(&kube("{namespace: ns, service: other, port: 1}"));
    let d = diff(&a, &b);
    assert_eq!(d.downstreams_changed, vec!["a".to_owned()]);
    assert!(d.recreated.is_empty());
}
