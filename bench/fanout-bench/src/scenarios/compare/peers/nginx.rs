//! The nginx peers: the stream module's UDP proxy, in session mode (the default
//! `proxy_responses`: a client's datagrams share one upstream socket and backend, and answers
//! are relayed) and per-datagram (`proxy_responses 0;`: every datagram is a session of its
//! own, balanced on its own, no answer expected).
//!
//! `worker_processes auto` (one per core) with `reuseport` on the listener, as nginx
//! recommends for UDP; round-robin over the two sinks; `rcvbuf=8m`, which nginx sets with
//! `SO_RCVBUF` and the kernel caps at `net.core.rmem_max`. nginx runs in the foreground
//! (`daemon off`) with its prefix, pid file and error log in the temporary directory.

use std::net::SocketAddr;
use std::path::Path;

use super::super::procs::Procs;
use super::super::rig::{Ctx, Rig, free_port, loopback_sinks};
use super::super::scenario::Spec;
use super::NGINX_STREAM_MODULE;

/// The config for a listener on `listen` balancing over `sinks` (also used by scenario (f),
/// in the load balancer's namespace).
pub(crate) fn conf(dir: &Path, listen: SocketAddr, sinks: &[SocketAddr], session: bool) -> String {
    let load = if Path::new(NGINX_STREAM_MODULE).is_file() {
        format!("load_module {NGINX_STREAM_MODULE};\n")
    } else {
        String::new()
    };
    let servers: String = sinks.iter().map(|s| format!("    server {s};\n")).collect();
    let responses = if session {
        ""
    } else {
        "    proxy_responses 0;\n"
    };
    let d = dir.display();
    format!(
        "{load}worker_processes auto;\nerror_log {d}/error.log warn;\npid {d}/nginx.pid;\n\
         events {{ worker_connections 16384; }}\n\
         stream {{\n  upstream backends {{\n{servers}  }}\n  server {{\n    \
         listen {listen} udp reuseport rcvbuf=8m;\n    proxy_pass backends;\n\
         {responses}  }}\n}}\n"
    )
}

pub(super) fn start(spec: &Spec, ctx: &Ctx<'_>, session: bool) -> anyhow::Result<Rig> {
    let sinks = loopback_sinks(spec, ctx)?;
    let port = free_port()?;
    let listen = SocketAddr::from(([127, 0, 0, 1], port));
    let mut p = Procs::new("nginx", ctx.lifetime)?;
    let dir = p.dir().to_path_buf();
    let conf_path = p.write(
        "nginx.conf",
        &conf(&dir, listen, sinks.local_addrs(), session),
    )?;
    p.spawn("nginx", "nginx", &args(&dir, &conf_path))?;
    Rig::procs_on_loopback(p, sinks, port, spec, ctx)
}

/// nginx's command line: in the foreground, everything (prefix, logs, config) in `dir`.
pub(crate) fn args(dir: &Path, conf: &Path) -> [String; 8] {
    let d = dir.to_string_lossy().into_owned();
    [
        "-e".to_owned(),
        format!("{d}/error.log"),
        "-g".to_owned(),
        "daemon off;".to_owned(),
        "-c".to_owned(),
        conf.to_string_lossy().into_owned(),
        "-p".to_owned(),
        d,
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_config_has_the_mode_and_the_listener() {
        let (l, s) = super::super::test_addrs();
        let c = conf(Path::new("/tmp/x"), l, &s, false);
        fanout_testkit::assert_contains(
            &c,
            &[
                "listen 127.0.0.1:5000 udp reuseport rcvbuf=8m;",
                "proxy_responses 0;",
                "server 127.0.0.1:2;",
                "error_log /tmp/x/error.log",
            ],
        );
        assert!(!conf(Path::new("/tmp/x"), l, &s, true).contains("proxy_responses"));
    }
}
