use super::*;
use k8s_openapi::api::discovery::v1::{EndpointConditions, EndpointPort};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

fn slice(
    name: &str,
    family: &str,
    ports: Option<Vec<EndpointPort>>,
    eps: Vec<Endpoint>,
) -> EndpointSlice {
    EndpointSlice {
        address_type: family.into(),
        endpoints: Some(eps),
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..ObjectMeta::default()
        },
        ports,
    }
}

fn port(name: Option<&str>, n: Option<i32>, proto: &str) -> EndpointPort {
    EndpointPort {
        name: name.map(Into::into),
        port: n,
        protocol: Some(proto.into()),
        ..EndpointPort::default()
    }
}

fn ep(
    addr: &str,
    ready: Option<bool>,
    serving: Option<bool>,
    terminating: Option<bool>,
) -> Endpoint {
    Endpoint {
        addresses: vec![addr.into()],
        conditions: Some(EndpointConditions {
            ready,
            serving,
            terminating,
        }),
        ..Endpoint::default()
    }
}

fn on(mut e: Endpoint, node: &str) -> Endpoint {
    e.node_name = Some(node.into());
    e
}

fn sel(port: ServicePort) -> Selector {
    Selector {
        port,
        v6: false,
        prefer_node: None,
    }
}

fn sa(s: &str) -> SocketAddr {
    s.parse().expect("test address")
}

fn udp514() -> Option<Vec<EndpointPort>> {
    Some(vec![port(Some("syslog"), Some(514), "UDP")])
}

#[test]
fn conditions_map_to_active_draining_or_left_out() {
    let s = slice(
        "a",
        "IPv4",
        udp514(),
        vec![
            ep("10.0.0.1", Some(true), Some(true), Some(false)),
            ep("10.0.0.2", None, None, None),
            ep("10.0.0.3", Some(false), Some(true), Some(true)),
            ep("10.0.0.4", Some(false), None, Some(true)),
            ep("10.0.0.5", Some(false), Some(false), Some(true)),
            ep("10.0.0.6", Some(false), Some(true), Some(false)),
            ep("10.0.0.7", Some(false), None, None),
        ],
    );
    let got = select([&s], &sel(ServicePort::Number(514)));
    assert_eq!(
        got.endpoints,
        vec![
            (sa("10.0.0.1:514"), false),
            (sa("10.0.0.2:514"), false),
            (sa("10.0.0.3:514"), true),
            (sa("10.0.0.4:514"), true),
        ]
    );
}

#[test]
fn an_endpoint_without_conditions_is_ready() {
    let mut e = ep("10.0.0.1", None, None, None);
    e.conditions = None;
    let s = slice("a", "IPv4", udp514(), vec![e]);
    let got = select([&s], &sel(ServicePort::Number(514)));
    assert_eq!(got.endpoints, vec![(sa("10.0.0.1:514"), false)]);
}

#[test]
fn slices_merge_and_duplicates_are_one_downstream_active_winning() {
    let a = slice(
        "a",
        "IPv4",
        udp514(),
        vec![
            ep("10.0.0.2", Some(false), Some(true), Some(true)),
            ep("10.0.0.1", None, None, None),
        ],
    );
    let b = slice(
        "b",
        "IPv4",
        udp514(),
        vec![
            ep("10.0.0.2", Some(true), None, None),
            ep("10.0.0.1", None, None, None),
        ],
    );
    let got = select([&a, &b], &sel(ServicePort::Number(514)));
    assert_eq!(
        got.endpoints,
        vec![(sa("10.0.0.1:514"), false), (sa("10.0.0.2:514"), false)]
    );
}

#[test]
fn port_by_name_uses_the_slice_ports_number() {
    let s = slice(
        "a",
        "IPv4",
        Some(vec![
            port(Some("metrics"), Some(9100), "TCP"),
            port(Some("syslog"), Some(5514), "UDP"),
        ]),
        vec![ep("10.0.0.1", None, None, None)],
    );
    let got = select([&s], &sel(ServicePort::Name("syslog".into())));
    assert_eq!(got.endpoints, vec![(sa("10.0.0.1:5514"), false)]);
    let missing = select([&s], &sel(ServicePort::Name("dns".into())));
    assert!(missing.endpoints.is_empty());
    assert_eq!(missing.without_port, vec!["a".to_owned()]);
}

#[test]
fn port_by_number_must_be_listed_unless_the_slice_has_no_ports() {
    let eps = || vec![ep("10.0.0.1", None, None, None)];
    let listed = slice("a", "IPv4", udp514(), eps());
    let other = slice("b", "IPv4", Some(vec![port(None, Some(53), "UDP")]), eps());
    let none = slice("c", "IPv4", None, eps());
    let empty = slice("d", "IPv4", Some(vec![]), eps());
    let all = slice("e", "IPv4", Some(vec![port(None, None, "UDP")]), eps());
    let s = sel(ServicePort::Number(514));
    assert_eq!(select([&listed], &s).endpoints.len(), 1);
    let got = select([&other], &s);
    assert!(got.endpoints.is_empty());
    assert_eq!(got.without_port, vec!["b".to_owned()]);
    for x in [&none, &empty, &all] {
        assert_eq!(select([x], &s).endpoints, vec![(sa("10.0.0.1:514"), false)]);
    }
}

#[test]
fn only_the_listeners_family_and_never_fqdn() {
    let v4 = slice(
        "a",
        "IPv4",
        udp514(),
        vec![ep("10.0.0.1", None, None, None)],
    );
    let v6 = slice("b", "IPv6", udp514(), vec![ep("fd00::1", None, None, None)]);
    let fqdn = slice(
        "c",
        "FQDN",
        udp514(),
        vec![ep("syslog.example", None, None, None)],
    );
    // A slice whose address does not parse as its family is skipped, not misread.
    let lying = slice("d", "IPv4", udp514(), vec![ep("fd00::2", None, None, None)]);
    let mut s = sel(ServicePort::Number(514));
    let got = select([&v4, &v6, &fqdn, &lying], &s);
    assert_eq!(got.endpoints, vec![(sa("10.0.0.1:514"), false)]);
    s.v6 = true;
    let got = select([&v4, &v6, &fqdn, &lying], &s);
    assert_eq!(got.endpoints, vec![(sa("[fd00::1]:514"), false)]);
}

#[test]
fn the_first_address_of_an_endpoint_is_used_and_garbage_skipped() {
    let mut two = ep("10.0.0.1", None, None, None);
    two.addresses.push("10.0.0.9".into());
    let bad = ep("not-an-ip", None, None, None);
    let mut empty = ep("10.0.0.3", None, None, None);
    empty.addresses.clear();
    let s = slice("a", "IPv4", udp514(), vec![two, bad, empty]);
    let got = select([&s], &sel(ServicePort::Number(514)));
    assert_eq!(got.endpoints, vec![(sa("10.0.0.1:514"), false)]);
}

#[test]
fn prefer_same_node_narrows_while_this_node_has_an_active_endpoint() {
    let s = slice(
        "a",
        "IPv4",
        udp514(),
        vec![
            on(ep("10.0.0.1", None, None, None), "n1"),
            on(ep("10.0.0.2", None, None, None), "n2"),
            on(ep("10.0.0.3", Some(false), Some(true), Some(true)), "n1"),
        ],
    );
    let mut s1 = sel(ServicePort::Number(514));
    s1.prefer_node = Some("n1".into());
    let got = select([&s], &s1);
    assert!(got.same_node_only);
    assert_eq!(
        got.endpoints,
        vec![(sa("10.0.0.1:514"), false), (sa("10.0.0.3:514"), true)]
    );
    // A node with only a draining endpoint, or none, gets every node's.
    let lone = slice(
        "b",
        "IPv4",
        udp514(),
        vec![
            on(ep("10.0.0.2", None, None, None), "n2"),
            on(ep("10.0.0.3", Some(false), Some(true), Some(true)), "n1"),
        ],
    );
    let got = select([&lone], &s1);
    assert!(!got.same_node_only);
    assert_eq!(got.endpoints.len(), 2);
}

#[test]
fn a_thousand_endpoints_over_ten_slices() {
    let slices: Vec<EndpointSlice> = (0..10)
        .map(|i| {
            let eps = (0..100)
                .map(|j| ep(&format!("10.1.{i}.{j}"), None, None, None))
                .collect();
            slice(&format!("s{i}"), "IPv4", udp514(), eps)
        })
        .collect();
    let got = select(&slices, &sel(ServicePort::Name("syslog".into())));
    assert_eq!(got.endpoints.len(), 1000);
    assert!(got.endpoints.windows(2).all(|w| w[0].0 < w[1].0));
}
