//! The desired-state rules, one test per rule of the module docs, on a fake clock (ms).

use super::*;

fn sa(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

fn ds(port: u16, weight: u32) -> DownstreamConfig {
    DownstreamConfig {
        addr: sa(port),
        weight,
    }
}

/// A listener with static downstreams `ports` (weight 1) and a drain of 1 s.
fn listener(ports: &[u16]) -> ListenerState {
    // With no static downstreams the listener names a Kubernetes service, the
    // other source a config may rely on alone.
    let extra = if ports.is_empty() {
        ", kubernetes: {namespace: ns, service: svc, port: 53}"
    } else {
        ""
    };
    let yaml = format!(
        "listeners: [{{name: l, bind: '127.0.0.1:0', downstreams: [{}]{extra}}}]",
        ports
            .iter()
            .map(|p| format!("'127.0.0.1:{p}'"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let mut cfg = fanout_config::from_yaml(&yaml).unwrap().listeners.remove(0);
    cfg.drain = Duration::from_secs(1);
    ListenerState::new(&cfg)
}

/// The pushed set at `now` as (port, weight, draining).
fn served(l: &ListenerState, now: u64) -> Vec<(u16, u32, bool)> {
    l.endpoints(now)
        .endpoints
        .iter()
        .map(|e| (e.addr.port(), e.weight, e.state == EndpointState::Draining))
        .collect()
}

#[test]
fn sources_are_united_and_the_api_weight_wins() {
    let mut l = listener(&[7001, 7002]);
    l.set_file(vec![ds(7002, 5), ds(7003, 2)], 0);
    l.api_add(sa(7004), 3, 0).unwrap();
    assert_eq!(
        served(&l, 0),
        vec![
            (7001, 1, false),
            (7002, 5, false),
            (7003, 2, false),
            (7004, 3, false)
        ]
    );
    let info = l.downstreams();
    let sources: Vec<&str> = info.iter().map(|d| d.source.as_str()).collect();
    assert_eq!(sources, ["static", "file", "file", "api"]);
    l.api_patch(sa(7002), Some(9), None, 0).unwrap();
    assert_eq!(served(&l, 0)[1], (7002, 9, false));
    assert_eq!(
        l.api_add(sa(7001), 1, 0),
        Err(ChangeError::Exists(sa(7001)))
    );
}

#[test]
fn a_member_that_leaves_drains_then_goes() {
    let mut l = listener(&[7001, 7002]);
    l.set_file(vec![ds(7003, 1)], 0);
    l.set_file(vec![], 100);
    assert_eq!(
        served(&l, 100),
        vec![(7001, 1, false), (7002, 1, false), (7003, 1, true)]
    );
    let c = l.endpoints(500);
    assert_eq!(c.next_change, Some(1_100));
    assert!(l.downstreams()[2].leaving);
    l.expire(1_100);
    assert_eq!(served(&l, 1_100), vec![(7001, 1, false), (7002, 1, false)]);
    assert_eq!(l.endpoints(1_100).next_change, None);
    assert_eq!(l.downstreams().len(), 2);
}

#[test]
fn a_leaver_that_returns_is_a_member_again() {
    let mut l = listener(&[7001]);
    l.set_file(vec![ds(7003, 1)], 0);
    l.set_file(vec![], 10);
    l.set_file(vec![ds(7003, 1)], 20);
    assert_eq!(served(&l, 20), vec![(7001, 1, false), (7003, 1, false)]);
}

#[test]
fn api_removal_drains_or_cuts_at_once_and_survives_reloads() {
    let mut l = listener(&[7001, 7002]);
    l.api_remove(sa(7002), false, 0).unwrap();
    assert_eq!(served(&l, 0), vec![(7001, 1, false), (7002, 1, true)]);
    // A reload with the same static list keeps the API's word.
    let cfg = fanout_config::from_yaml(
        "listeners: [{name: l, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7001', '127.0.0.1:7002']}]",
    )
    .unwrap();
    let mut d = Desired {
        listeners: vec![l.clone()],
    };
    d.apply_config(&cfg, 10);
    let l2 = d.listener("l").unwrap();
    assert!(!l2.members().iter().any(|m| m.addr == sa(7002)));
    // `?now=true` on a draining one ends its drain.
    l.api_remove(sa(7002), true, 20).unwrap();
    assert_eq!(served(&l, 20), vec![(7001, 1, false)]);
    assert_eq!(
        l.api_remove(sa(7009), false, 0),
        Err(ChangeError::NoSuchDownstream(sa(7009)))
    );
    // Adding it back through the API lifts the removal.
    l.api_add(sa(7002), 4, 30).unwrap();
    assert_eq!(served(&l, 30), vec![(7001, 1, false), (7002, 4, false)]);
}

#[test]
fn draining_and_disabled_states() {
    let mut l = listener(&[7001, 7002, 7003]);
    l.api_patch(sa(7002), None, Some(AdminState::Draining), 0)
        .unwrap();
    l.api_patch(sa(7003), None, Some(AdminState::Disabled), 0)
        .unwrap();
    assert_eq!(served(&l, 0), vec![(7001, 1, false), (7002, 1, true)]);
    assert_eq!(l.endpoints(0).next_change, Some(1_000));
    // After the drain its sessions re-pin: it is no longer served, but still listed.
    assert_eq!(served(&l, 1_000), vec![(7001, 1, false)]);
    assert_eq!(l.downstreams()[1].state, AdminState::Draining);
    l.api_patch(sa(7002), None, Some(AdminState::Active), 1_000)
        .unwrap();
    l.api_patch(sa(7003), None, Some(AdminState::Active), 1_000)
        .unwrap();
    assert_eq!(served(&l, 1_000).len(), 3);
    assert_eq!(
        l.api_patch(sa(7009), Some(1), None, 0),
        Err(ChangeError::NoSuchDownstream(sa(7009)))
    );
}

#[test]
fn unhealthy_ones_are_left_out_and_none_healthy_fails_open() {
    let mut l = listener(&[7001, 7002]);
    l.set_health(sa(7001), Health::Unhealthy);
    let c = l.endpoints(0);
    assert!(!c.panic);
    assert_eq!(served(&l, 0), vec![(7002, 1, false)]);
    l.set_health(sa(7002), Health::Unhealthy);
    let c = l.endpoints(0);
    assert!(c.panic, "no healthy downstream: fail open");
    assert_eq!(served(&l, 0), vec![(7001, 1, false), (7002, 1, false)]);
    // Unknown counts as healthy.
    l.set_health(sa(7002), Health::Unknown);
    assert_eq!(served(&l, 0), vec![(7002, 1, false)]);
    assert_eq!(l.health(sa(7002)), Health::Unknown);
    // A disabled downstream is not served even when failing open.
    l.set_health(sa(7002), Health::Unhealthy);
    l.api_patch(sa(7001), None, Some(AdminState::Disabled), 0)
        .unwrap();
    assert_eq!(served(&l, 0), vec![(7002, 1, false)]);
    assert!(l.endpoints(0).panic);
}

#[test]
fn zero_drain_removes_at_once() {
    let mut l = listener(&[7001, 7002]);
    l.drain_ms = 0;
    l.api_remove(sa(7002), false, 0).unwrap();
    assert_eq!(served(&l, 0), vec![(7001, 1, false)]);
}

#[test]
fn reload_adds_and_drops_listeners_and_keeps_state() {
    let cfg = fanout_config::from_yaml(
        "listeners:\n\
         - {name: a, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7001']}\n\
         - {name: b, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7002']}\n",
    )
    .unwrap();
    let mut d = Desired::from_config(&cfg);
    d.listener_mut("a")
        .unwrap()
        .set_health(sa(7001), Health::Healthy);
    let next = fanout_config::from_yaml(
        "listeners:\n\
         - {name: c, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7003']}\n\
         - {name: a, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7001', '127.0.0.1:7004']}\n",
    )
    .unwrap();
    d.apply_config(&next, 5);
    let names: Vec<&str> = d.listeners().iter().map(ListenerState::name).collect();
    assert_eq!(names, ["c", "a"]);
    let a = d.listener("a").unwrap();
    assert_eq!(a.health(sa(7001)), Health::Healthy);
    assert_eq!(a.probe_targets(), vec![sa(7001), sa(7004)]);
}

#[test]
fn kubernetes_endpoints_are_members_without_a_weight_of_their_own() {
    let mut l = listener(&[7001]);
    l.set_file(vec![ds(7002, 4)], 0);
    // 7002 is in the file too: it keeps the file's weight; 7003 only Kubernetes knows.
    l.set_kubernetes(vec![(sa(7002), false), (sa(7003), false)], 0);
    assert_eq!(
        served(&l, 0),
        vec![(7001, 1, false), (7002, 4, false), (7003, 1, false)]
    );
    let sources: Vec<&str> = l.downstreams().iter().map(|d| d.source.as_str()).collect();
    assert_eq!(sources, ["static", "kubernetes", "kubernetes"]);
    // The API's word still wins over what Kubernetes says.
    l.api_patch(sa(7003), Some(7), None, 0).unwrap();
    assert_eq!(served(&l, 0)[2], (7003, 7, false));
}

#[test]
fn a_terminating_endpoint_drains_from_when_it_began_to() {
    let mut l = listener(&[]);
    l.set_kubernetes(vec![(sa(7001), false), (sa(7002), false)], 0);
    // 7002 terminates at t=100: draining, no new flows, for the drain time (1 s).
    l.set_kubernetes(vec![(sa(7001), false), (sa(7002), true)], 100);
    assert_eq!(served(&l, 200), vec![(7001, 1, false), (7002, 1, true)]);
    assert_eq!(l.downstreams()[1].state, AdminState::Draining);
    // Seen terminating again later: the drain still counts from t=100.
    l.set_kubernetes(vec![(sa(7001), false), (sa(7002), true)], 600);
    assert_eq!(l.endpoints(600).next_change, Some(1100));
    // Removed from the Service at t=900: it goes on draining until 1100, not 1900.
    l.set_kubernetes(vec![(sa(7001), false)], 900);
    assert_eq!(served(&l, 1000), vec![(7001, 1, false), (7002, 1, true)]);
    l.expire(1100);
    assert_eq!(served(&l, 1100), vec![(7001, 1, false)]);
}

#[test]
fn a_ready_endpoint_removed_drains_from_its_removal() {
    let mut l = listener(&[]);
    l.set_kubernetes(vec![(sa(7001), false), (sa(7002), false)], 0);
    l.set_kubernetes(vec![(sa(7001), false)], 500);
    assert_eq!(l.endpoints(600).next_change, Some(1500));
    // Back before its drain ended: a member again, active.
    l.set_kubernetes(vec![(sa(7001), false), (sa(7002), false)], 700);
    assert_eq!(served(&l, 700), vec![(7001, 1, false), (7002, 1, false)]);
    // A terminating one that becomes ready again is active again.
    l.set_kubernetes(vec![(sa(7001), true), (sa(7002), false)], 800);
    l.set_kubernetes(vec![(sa(7001), false), (sa(7002), false)], 900);
    assert_eq!(served(&l, 900), vec![(7001, 1, false), (7002, 1, false)]);
}
