//! The Envoy peers: a static bootstrap with one UDP listener and the
//! `envoy.filters.udp_listener.udp_proxy` filter routing to a round-robin cluster of the two
//! sinks, per-session (the default: a client's datagrams stay on the host its first one
//! chose, and answers come back) or per-packet (`use_per_packet_load_balancing: true`).
//!
//! `--concurrency 2` (one worker per core; Envoy gives each its own `SO_REUSEPORT` socket),
//! no admin interface, hot restart off (so that several Envoys can run at once), its log (stderr)
//! in the temporary directory. Envoy's default largest datagram is 1,500 bytes; it is raised to
//! 65,535 on both sides so that nothing is truncated. The listener asks for an 8 MiB receive
//! buffer with `SO_RCVBUFFORCE` (level 1, option 33), as udp-fanout has.

use std::net::SocketAddr;

use super::super::procs::Procs;
use super::super::rig::{Ctx, Rig, free_port, loopback_sinks};
use super::super::scenario::Spec;

/// The bootstrap for a listener on `listen` over `sinks` (also used by scenario (f), in the
/// load balancer's namespace).
pub(crate) fn bootstrap(listen: SocketAddr, sinks: &[SocketAddr], per_packet: bool) -> String {
    let (address, port) = (listen.ip(), listen.port());
    let endpoints: String = sinks
        .iter()
        .map(|s| {
            format!(
                "        - endpoint: {{address: {{socket_address: {{address: '{}', port_value: {}}}}}}}\n",
                s.ip(),
                s.port()
            )
        })
        .collect();
    format!(
        "static_resources:
  listeners:
  - name: bench
    address:
      socket_address: {{protocol: UDP, address: {address}, port_value: {port}}}
    udp_listener_config:
      downstream_socket_config: {{max_rx_datagram_size: 65535}}
    socket_options:
    - {{level: 1, name: 33, int_value: 8388608, state: STATE_PREBIND}}
    listener_filters:
    - name: envoy.filters.udp_listener.udp_proxy
      typed_config:
        '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.UdpProxyConfig
        stat_prefix: bench
        use_per_packet_load_balancing: {per_packet}
        upstream_socket_config: {{max_rx_datagram_size: 65535}}
        matcher:
          on_no_match:
            action:
              name: route
              typed_config:
                '@type': type.googleapis.com/envoy.extensions.filters.udp.udp_proxy.v3.Route
                cluster: backends
  clusters:
  - name: backends
    type: STATIC
    lb_policy: ROUND_ROBIN
    load_assignment:
      cluster_name: backends
      endpoints:
      - lb_endpoints:
{endpoints}"
    )
}

/// Envoy's command line for the bootstrap at `conf`: two workers, no hot restart.
pub(crate) fn args(conf: &std::path::Path) -> [String; 7] {
    [
        "-c".to_owned(),
        conf.to_string_lossy().into_owned(),
        "--concurrency".to_owned(),
        "2".to_owned(),
        "--disable-hot-restart".to_owned(),
        "-l".to_owned(),
        "warning".to_owned(),
    ]
}

pub(super) fn start(spec: &Spec, ctx: &Ctx<'_>, per_packet: bool) -> anyhow::Result<Rig> {
    let sinks = loopback_sinks(spec, ctx)?;
    let port = free_port()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut p = Procs::new("envoy", ctx.lifetime)?;
    let conf = p.write(
        "envoy.yaml",
        &bootstrap(listen, sinks.local_addrs(), per_packet),
    )?;
    p.spawn("envoy", "envoy", &args(&conf))?;
    Rig::procs_on_loopback(p, sinks, port, spec, ctx)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bootstrap_has_the_mode_and_both_endpoints() {
        let (l, s) = super::super::test_addrs();
        let b = bootstrap(l, &s, true);
        fanout_testkit::assert_contains(
            &b,
            &[
                "use_per_packet_load_balancing: true",
                "port_value: 5000",
                "address: '127.0.0.1', port_value: 2}",
            ],
        );
        assert!(bootstrap(l, &s, false).contains("use_per_packet_load_balancing: false"));
    }
}
