//! The downstream-to-client path: relay the replies gathered from a listener's upstream sockets
//! to their clients, from the listener's own address, in one `sendmmsg`.
//!
//! Every datagram that arrives on an upstream socket is relayed or dropped with a reason:
//! `unknown_source` (not from a downstream of the listener), `no_session` (its session ended),
//! `shadow_reply` (a mirror's non-primary downstream answered), or a send failure.

use std::net::UdpSocket;
use std::os::fd::AsFd;

use fanout_core::DropReason;
use fanout_core::session::Reply;

use super::Buffers;
use super::forward::send_drop_reason;
use super::session::{Sessions, canonical};
use crate::listener::ListenerShared;
use crate::stats::ListenerCounters;
use crate::sys::{SendOpts, SendResult, Tx};

/// Relays the replies held in `bufs.recv` (socket of each in `bufs.reply_src`).
pub(crate) fn relay(
    id: usize,
    shared: &ListenerShared,
    listener: &UdpSocket,
    sessions: &mut Sessions,
    bufs: &mut Buffers,
    now: u64,
) {
    if bufs.recv.is_empty() {
        return;
    }
    let counters = shared.stats().slot(id);
    let active = shared.backends();
    let timeout = bufs.send_timeout;
    let mut tx = bufs.reply_q.tx();
    for i in 0..bufs.recv.len() {
        counters.reply_received();
        let Some(d) = bufs.recv.get(i) else {
            counters.reply_dropped(DropReason::Malformed);
            continue;
        };
        if d.truncated {
            counters.reply_dropped(DropReason::Truncated);
            continue;
        }
        let k = bufs.reply_src.get(i).copied().unwrap_or(u32::MAX);
        let (client, local_ip) = match sessions.on_reply(k, canonical(d.src), &active.set, now) {
            Reply::Relay { client, local_ip } => (client, local_ip),
            Reply::Drop(reason) => {
                counters.reply_dropped(reason);
                continue;
            }
        };
        let opts = SendOpts {
            src_ip: local_ip,
            gso_segment: None,
        };
        if !tx.push_coalesced(&client, d.data, &opts, 0) {
            send(counters, listener, &mut tx, timeout);
            tx.push(&client, d.data, &opts, 0);
        }
    }
    send(counters, listener, &mut tx, timeout);
}

fn send(
    counters: &ListenerCounters,
    listener: &UdpSocket,
    tx: &mut Tx<'_, '_>,
    timeout: std::time::Duration,
) {
    if tx.is_empty() {
        return;
    }
    tx.flush(listener.as_fd(), timeout, |_, _, r| match r {
        SendResult::Sent => counters.replied(),
        r => counters.reply_dropped(send_drop_reason(r)),
    });
}
