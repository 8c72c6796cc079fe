//! Helpers shared by the tests of the batched I/O modules.

use std::net::UdpSocket;
use std::os::fd::AsFd;
use std::time::Duration;

use super::RecvBatch;

/// Two non-blocking UDP sockets, each on a loopback port of its own.
pub(crate) fn pair() -> (UdpSocket, UdpSocket) {
    let a = UdpSocket::bind("127.0.0.1:0").unwrap();
    let b = UdpSocket::bind("127.0.0.1:0").unwrap();
    a.set_nonblocking(true).unwrap();
    b.set_nonblocking(true).unwrap();
    (a, b)
}

/// Receives on `sock` into `rb` until something arrives, for about half a second at most;
/// returns how many datagrams the receive that got something returned (0 if none did).
pub(crate) fn recv_some(rb: &mut RecvBatch, sock: &UdpSocket) -> usize {
    for _ in 0..100 {
        let n = rb.recv(sock.as_fd()).unwrap();
        if n > 0 {
            return n;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    0
}
