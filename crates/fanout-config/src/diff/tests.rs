use super::{ConfigDiff, diff};
use crate::{Config, from_yaml};

const A: &str = "{name: a, bind: '127.0.0.1:5001', downstreams: ['127.0.0.1:6001']}";
const B: &str = "{name: b, bind: '127.0.0.1:5002', downstreams: ['127.0.0.1:6002']}";

fn cfg(listeners: &[&str], rest: &str) -> Config {
    from_yaml(&format!("listeners: [{}]\n{rest}", listeners.join(", "))).unwrap()
}

fn names(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| (*s).to_owned()).collect()
}

/// The diff of listener `a` from `A` to `new` (with `b` unchanged beside it).
fn one(new: &str) -> ConfigDiff {
    diff(&cfg(&[A, B], ""), &cfg(&[new, B], ""))
}

#[test]
fn the_same_config_is_unchanged() {
    let c = cfg(&[A, B], "metrics: {}\nadmin: {}\nhealth: {}");
    let d = diff(&c, &c.clone());
    assert!(d.is_empty(), "{d:?}");
    assert_eq!(d.unchanged, names(&["a", "b"]));
}

#[test]
fn in_place_changes() {
    for new in [
        "{name: a, bind: '127.0.0.1:5001', downstreams: ['127.0.0.1:6001', '127.0.0.1:6003']}",
        "{name: a, bind: '127.0.0.1:5001', downstreams: [{address: '127.0.0.1:6001', weight: 2}]}",
        "{name: a, bind: '127.0.0.1:5001', downstreams: ['127.0.0.1:6001'], downstreams_file: ds.txt}",
        "{name: a, bind: '127.0.0.1:5001', downstreams: ['127.0.0.1:6001'], drain_secs: 5}",
        "{name: a, bind: '127.0.0.1:5001', downstreams: ['127.0.0.1:6001'], health: {}}",
    ] {
        let d = one(new);
        assert_eq!(d.downstreams_changed, names(&["a"]), "{new}");
        assert_eq!(d.unchanged, names(&["b"]), "{new}");
        assert!(d.recreated.is_empty() && d.added.is_empty() && d.removed.is_empty());
        assert!(!d.is_empty());
    }
}

#[test]
fn changes_that_recreate() {
    for new in [
        "{name: a, bind: '127.0.0.1:5003', downstreams: ['127.0.0.1:6001']}",
        "{name: a, bind: '10.0.0.1:5001', mode: xdp, interface: eth0, downstreams: ['10.0.1.1:6001']}",
        "{name: a, bind: '127.0.0.1:5001', distribution: mirror, downstreams: ['127.0.0.1:6001']}",
        "{name: a, bind: '127.0.0.1:5001', downstreams: ['127.0.0.1:6001'], session: {}}",
    ] {
        let d = one(new);
        assert_eq!(d.recreated, names(&["a"]), "{new}");
        assert_eq!(d.unchanged, names(&["b"]));
        assert!(d.downstreams_changed.is_empty());
    }
    // Interface and fallback alone.
    let k = "{name: a, bind: '10.0.0.1:5001', mode: xdp, interface: eth0, downstreams: ['10.0.1.1:6001']";
    let old = cfg(&[&format!("{k}}}")], "");
    for new in [
        k.replace("eth0", "eth1") + "}",
        format!("{k}, fallback: userspace}}"),
    ] {
        assert_eq!(
            diff(&old, &cfg(&[&new], "")).recreated,
            names(&["a"]),
            "{new}"
        );
    }
}

#[test]
fn a_recreate_wins_over_an_in_place_change() {
    let d =
        one("{name: a, bind: '127.0.0.1:5003', downstreams: ['127.0.0.1:6009'], drain_secs: 1}");
    assert_eq!(d.recreated, names(&["a"]));
    assert!(d.downstreams_changed.is_empty());
}

#[test]
fn added_removed_and_renamed() {
    let c = "{name: c, bind: '127.0.0.1:5003', downstreams: ['127.0.0.1:6003']}";
    let d = diff(&cfg(&[A, B], ""), &cfg(&[B, c], ""));
    assert_eq!(d.removed, names(&["a"]));
    assert_eq!(d.added, names(&["c"]));
    assert_eq!(d.unchanged, names(&["b"]));
    // Same listener under another name: the old one goes, the new one comes.
    let renamed = A.replace("name: a", "name: a2");
    let d = diff(&cfg(&[A], ""), &cfg(&[&renamed], ""));
    assert_eq!((d.removed, d.added), (names(&["a"]), names(&["a2"])));
}

#[test]
fn order_of_the_lists() {
    let c = "{name: c, bind: '127.0.0.1:5003', downstreams: ['127.0.0.1:6003']}";
    let d = diff(&cfg(&[A, B, c], ""), &cfg(&[c, B, A], ""));
    assert_eq!(d.unchanged, names(&["c", "b", "a"]), "new config order");
    let d = diff(&cfg(&[c, B, A], ""), &cfg(&[B], ""));
    assert_eq!(d.removed, names(&["c", "a"]), "old config order");
}

#[test]
fn top_level_sections() {
    let base = cfg(&[A], "");
    let d = diff(&base, &cfg(&[A], "admin: {}"));
    assert!(d.admin_changed && !d.metrics_changed && !d.dataplane_changed);
    assert_eq!(d.unchanged, names(&["a"]));
    let d = diff(
        &cfg(&[A], "admin: {}"),
        &cfg(&[A], "admin: {bind: '127.0.0.1:9999'}"),
    );
    assert!(d.admin_changed);
    let d = diff(&base, &cfg(&[A], "metrics: {}"));
    assert!(d.metrics_changed && !d.admin_changed && !d.dataplane_changed);
    let d = diff(&base, &cfg(&[A], "dataplane: {batch_size: 8}"));
    assert!(d.dataplane_changed && !d.admin_changed && !d.metrics_changed);
    assert!(!d.is_empty());
}

#[test]
fn a_top_level_health_change_reaches_the_listeners_that_inherit_it() {
    let own =
        "{name: b, bind: '127.0.0.1:5002', downstreams: ['127.0.0.1:6002'], health: {fall: 5}}";
    let d = diff(
        &cfg(&[A, own], "health: {interval_secs: 2}"),
        &cfg(&[A, own], "health: {interval_secs: 3}"),
    );
    assert_eq!(d.downstreams_changed, names(&["a", "b"]));
    // What b overrides itself is not touched by the top-level change.
    let d = diff(
        &cfg(&[A, own], "health: {fall: 2}"),
        &cfg(&[A, own], "health: {fall: 4}"),
    );
    assert_eq!(d.downstreams_changed, names(&["a"]));
    assert_eq!(d.unchanged, names(&["b"]));
}
