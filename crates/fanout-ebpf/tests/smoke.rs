#![allow(clippy::unwrap_used)]
use aya::programs::{TestRun, TestRunOptions, Xdp};

#[test]
fn loads_and_runs() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIP: not root");
        return;
    }
    let mut l = fanout_ebpf::programs::load().unwrap();
    let prog: &mut Xdp = l.ebpf.program_mut("uf_xdp").unwrap().try_into().unwrap();
    let pkt = [0u8; 64];
    let mut out = [0u8; 128];
    let r = prog
        .test_run(TestRunOptions {
            data_in: Some(&pkt),
            data_out: Some(&mut out),
            repeat: 1,
            ..Default::default()
        })
        .unwrap();
    assert_eq!(r.return_value, 2);
}
