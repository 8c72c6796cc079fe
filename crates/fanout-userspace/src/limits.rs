//! Process limits the plane needs: enough file descriptors for the sessions' upstream sockets.
//!
//! A listener with the reply path needs up to one upstream socket per session (fewer when
//! sticky sessions over several downstreams share ports), so `max_sessions` can far exceed the
//! usual soft limit of 1024 descriptors. The limit is raised before anything is bound, from
//! what the configuration can need, so that a hard limit too low shows up as one warning at
//! start rather than as unexplained drops under load; and again when a listener is added at run
//! time, from what all the listeners then served need (it is never lowered).

use fanout_config::{ListenerConfig, Mode};
use fanout_core::select::Distribution;
use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// Descriptors kept for everything but upstream sockets (listeners, egress, epoll, metrics).
const BASE_FDS: u64 = 4096;

/// Upper bound of upstream sockets listener `l` can need: a session needs its own port on its
/// downstream, so a downstream's sessions need one socket each; sessions spread over `n`
/// downstreams need about `max_sessions / n`. Per-datagram choice with replies and mirror
/// (whose replies all come from one primary) need one per session.
pub(crate) fn upstream_sockets_needed(l: &ListenerConfig) -> u64 {
    if l.mode != Mode::Userspace {
        return 0;
    }
    let Some(s) = l.session.filter(|s| s.reply) else {
        return 0;
    };
    let shared = s.sticky && l.distribution != Distribution::Mirror;
    let n = if shared {
        l.downstreams.len().max(1)
    } else {
        1
    };
    (s.max_sessions as u64).div_ceil(n as u64)
}

/// Raises the soft RLIMIT_NOFILE towards what `needed` upstream sockets (of every listener
/// together) and the rest of the plane need, up to the hard limit, and says so in the logs.
/// It never lowers the limit.
pub(crate) fn raise_nofile(needed: u64) {
    if needed == 0 {
        return;
    }
    let want = needed + BASE_FDS;
    let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) else {
        return;
    };
    if soft >= want {
        return;
    }
    // With CAP_SYS_RESOURCE the hard limit can be raised too; otherwise stay under it.
    let target = if setrlimit(Resource::RLIMIT_NOFILE, want, want.max(hard)).is_ok() {
        want
    } else {
        let t = want.min(hard);
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, t, hard) {
            tracing::warn!(error = %e, soft, hard, "could not raise RLIMIT_NOFILE");
            return;
        }
        t
    };
    tracing::info!(
        from = soft,
        to = target,
        upstream_sockets = needed,
        "raised RLIMIT_NOFILE for session sockets"
    );
    if target < want {
        let hard = target;
        tracing::warn!(
            hard,
            wanted = want,
            "the hard RLIMIT_NOFILE is below what max_sessions may need; new sessions beyond it are dropped \
             (reason no_upstream_port). Raise LimitNOFILE= (systemd) or the hard limit"
        );
    }
}
