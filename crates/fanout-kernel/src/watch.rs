//! Watches the kernel's routes and neighbours (rtnetlink) so the programs' next-hop cache never
//! outlives them: any change clears the cache, and the next packet to each downstream looks its
//! route up again.
//!
//! Only "something changed" matters, so messages are not parsed; bursts (a link going down
//! removes many routes at once) are coalesced into one clear.

use std::os::fd::{AsFd, AsRawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::socket::{
    AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol, SockType, bind, recv, socket,
};

/// rtnetlink multicast groups (legacy bitmask form): neighbours, IPv4 and IPv6 routes.
const RTMGRP_NEIGH: u32 = 0x4;
const RTMGRP_IPV4_ROUTE: u32 = 0x40;
const RTMGRP_IPV6_ROUTE: u32 = 0x400;

/// How often the thread checks whether it should stop.
const TICK: Duration = Duration::from_millis(200);

/// Starts the watcher; `on_change` runs after each burst of changes. `None` (with a warning)
/// when the netlink socket cannot be opened: the cache then relies on its entries' lifetime.
pub fn spawn(
    stop: Arc<AtomicBool>,
    mut on_change: impl FnMut() + Send + 'static,
) -> Option<JoinHandle<()>> {
    let sock = match socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    ) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch routes (netlink); next hops refresh by lifetime only");
            return None;
        }
    };
    if let Err(e) = bind(
        sock.as_raw_fd(),
        &NetlinkAddr::new(0, RTMGRP_NEIGH | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE),
    ) {
        tracing::warn!(error = %e, "cannot subscribe to route changes; next hops refresh by lifetime only");
        return None;
    }
    let spawned = std::thread::Builder::new()
        .name("uf-route-watch".into())
        .spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while !stop.load(Ordering::Acquire) {
                let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
                let ready = poll(
                    &mut fds,
                    PollTimeout::try_from(TICK).unwrap_or(PollTimeout::NONE),
                )
                .unwrap_or(0);
                if ready == 0 {
                    continue;
                }
                // Drain the burst, then act once.
                let mut changed = false;
                while let Ok(n) = recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
                    if n == 0 {
                        break;
                    }
                    changed = true;
                }
                if changed {
                    on_change();
                }
            }
        });
    match spawned {
        Ok(h) => Some(h),
        Err(e) => {
            tracing::warn!(error = %e, "cannot start the route watcher");
            None
        }
    }
}
