//! Table-driven BPF_PROG_TEST_RUN fixtures, run through both programs (XDP and TC) in test mode
//! (`UF_G_NO_FIB`: rewrite, then XDP_TX / TC_ACT_OK, no route lookup).
//!
//! Each case is a frame, the expected verdict and the expected output: unchanged, or exactly
//! the frame the packet builder makes for the chosen downstream with TTL - 1 (the builder
//! computes checksums from scratch, the programs incrementally, so byte equality checks the
//! rewrite and both checksums), where "the chosen downstream" is what
//! `fanout_core::select::BackendSet::pick` says for the same input, with a model cursor per
//! listener. After the table, every counter (rx, fwd, drops by reason, per endpoint) is compared
//! with the sum the cases imply. Runs use repeat = 1: the kernel does not reset its packet
//! buffer between repeats.
#![allow(clippy::unwrap_used)]

mod common;
#[path = "fixtures/table.rs"]
mod table;

use std::collections::BTreeMap;

use common::packet;
use common::*;
use fanout_core::flow::FlowKey;
use fanout_core::select::{BackendSet, Pick};
use fanout_kernel::maps::ListenerCounters;
use table::{Count, Out, listeners, stats_base, table};

/// Expected counters, summed from the cases.
#[derive(Default)]
struct Expected {
    listeners: BTreeMap<u32, ListenerCounters>,
    endpoints: BTreeMap<u32, (u64, u64)>,
}

/// Counts one received datagram of listener `id`.
fn rx(exp: &mut Expected, id: u32, bytes: u64) -> &mut ListenerCounters {
    let l = exp.listeners.entry(id).or_default();
    l.rx_packets += 1;
    l.rx_bytes += bytes;
    l
}

fn run_table(prog: Prog) {
    let mut h = Harness::no_fib();
    let mut model: BTreeMap<u32, (BackendSet, usize)> = BTreeMap::new();
    for (id, bind, dist, eps) in listeners() {
        let set = h.listener(id, sa(bind), dist, endpoints(&eps), stats_base(id));
        model.insert(id, (set, 0));
    }
    let mut exp = Expected::default();
    let cases = table(prog);
    for c in &cases {
        let ctx = format!("{prog:?}: {}", c.name);
        if prog == Prog::Tc && c.tc_refuses {
            let e = h.try_run(prog, &c.frame).expect_err(&ctx);
            assert!(
                format!("{e:?}").contains("Invalid argument"),
                "{ctx}: {e:?}"
            );
            continue;
        }
        let r = h.run(prog, &c.frame);
        assert_eq!(r.code, prog.code(c.verdict), "{ctx}: verdict");
        let payload = c
            .builder
            .udp_len
            .map_or(c.builder.payload.len() as u64, |l| {
                u64::from(l).saturating_sub(8)
            });
        let mut fwd_to = None;
        match c.out {
            Out::Unchanged => assert_eq!(r.out, c.frame, "{ctx}: frame changed"),
            Out::Any => {}
            Out::Forward(id) => {
                let (set, cursor) = model.get_mut(&id).unwrap();
                let idx = match set.pick(&FlowKey::new(c.builder.src), cursor) {
                    Pick::One(i) => i as usize,
                    other => panic!("{ctx}: model picked {other:?}"),
                };
                let to = set.endpoints()[idx].addr;
                let want = c.builder.redirected(to, c.builder.ttl - 1).build();
                packet::check_checksums(&r.out).unwrap_or_else(|e| panic!("{ctx}: {e}"));
                let got = packet::parse(&r.out).unwrap();
                assert_eq!(got.dst, to, "{ctx}: destination");
                assert_eq!(r.out, want, "{ctx}: output frame");
                fwd_to = Some((id, stats_base(id) + idx as u32));
            }
        }
        match c.count {
            Count::None => {}
            Count::Rx(id) => {
                rx(&mut exp, id, payload);
            }
            Count::Drop(id, reason) => {
                let bytes = if reason == DROP_MALFORMED { 0 } else { payload };
                rx(&mut exp, id, bytes).drops[reason] += 1;
            }
            Count::Fwd => {
                let (id, sid) = fwd_to.unwrap_or_else(|| panic!("{ctx}: Fwd without Forward"));
                let l = rx(&mut exp, id, payload);
                l.fwd_packets += 1;
                l.fwd_bytes += payload;
                let e = exp.endpoints.entry(sid).or_default();
                e.0 += 1;
                e.1 += payload;
            }
        }
    }
    for (id, ..) in listeners() {
        let got = h.counters(id);
        let want = exp.listeners.get(&id).copied().unwrap_or_default();
        assert_eq!(got, want, "{prog:?}: counters of listener {id}");
        for i in 0..10 {
            let sid = stats_base(id) + i;
            let got = h.maps().endpoint_counters(sid).unwrap();
            let want = exp.endpoints.get(&sid).copied().unwrap_or_default();
            assert_eq!(got, want, "{prog:?}: endpoint counters of slot {sid}");
        }
    }
    eprintln!("{prog:?}: {} fixtures passed", cases.len());
}

#[test]
fn xdp_fixtures() {
    if privileged("xdp_fixtures") {
        run_table(Prog::Xdp);
    }
}

#[test]
fn tc_fixtures() {
    if privileged("tc_fixtures") {
        run_table(Prog::Tc);
    }
}

/// One step of `listener_ports_follow_add_and_remove`.
enum Change {
    /// Listener (id, bind) with its one downstream.
    Add(u32, &'static str, &'static str),
    Remove(&'static str),
}

/// After a change: (datagram to, the downstream it is sent to or None if left alone, why).
type Check = (&'static str, Option<&'static str>, &'static str);

/// uf_ports follows listeners being added and removed: several listeners on a port, one
/// (exact or unspecified address), none.
#[test]
fn listener_ports_follow_add_and_remove() {
    use Change::{Add, Remove};
    let (one, two, any) = ("10.0.0.1:5000", "10.0.0.2:5000", "0.0.0.0:5000");
    let (d1, d2, d3) = (Some("10.1.0.1:1"), Some("10.2.0.1:2"), Some("10.3.0.1:3"));
    #[rustfmt::skip]
    let steps: [(Change, &[Check]); 6] = [
        (Add(0, one, "10.1.0.1:1"), &[(one, d1, "one"), (two, None, "one, other address")]),
        (Add(1, two, "10.2.0.1:2"), &[(one, d1, "two"), (two, d2, "two")]),
        (Remove(two), &[(two, None, "removed"), (one, d1, "kept")]),
        (Add(2, any, "10.3.0.1:3"), &[(one, d1, "exact first"), (two, d3, "wildcard")]),
        (Remove(one), &[(one, d3, "wildcard only")]),
        (Remove(any), &[(one, None, "none"), ("[2001:db8::1]:5000", None, "other family")]),
    ];
    for_each_prog("listener_ports_follow_add_and_remove", |prog, h| {
        let to = |h: &Harness, dst: &str| {
            let dst = sa(dst);
            let src = if dst.is_ipv4() {
                sa("192.0.2.1:1")
            } else {
                sa("[2001:db8::9]:1")
            };
            let frame = packet::Builder::udp(src, dst, b"p").build();
            let r = h.run(prog, &frame);
            // TC returns TC_ACT_OK both ways: "left alone" is the unchanged frame.
            if r.code == prog.code(Verdict::Pass) && r.out == frame {
                None
            } else {
                Some(packet::parse(&r.out).unwrap().dst)
            }
        };
        for (change, checks) in &steps {
            match *change {
                Add(id, bind, backend) => {
                    h.single(id, sa(bind), backend, id * 10);
                }
                Remove(bind) => h.maps().remove_listener(sa(bind)).unwrap(),
            }
            for &(dst, want, what) in *checks {
                assert_eq!(to(h, dst), want.map(sa), "{prog:?}: {what}");
            }
        }
    });
}
