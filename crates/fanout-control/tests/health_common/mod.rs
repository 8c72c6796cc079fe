//! What the health-check tests share: configs, a UDP answering server whose behaviour can
//! be switched, and an event log that waits for one target's transition.
#![allow(dead_code)] // each test binary uses a part
#![allow(clippy::unwrap_used)] // test code: a panic is a test failure

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use fanout_config::{HealthConfig, HealthProtocol};
use fanout_control::health::{Health, HealthEvent};
use tokio::net::UdpSocket;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

/// A UDP check config with these timings and no `expect`.
pub fn udp(interval_ms: u64, timeout_ms: u64, fall: u32, rise: u32) -> HealthConfig {
    HealthConfig {
        protocol: HealthProtocol::Udp,
        interval: Duration::from_millis(interval_ms),
        timeout: Duration::from_millis(timeout_ms),
        fall,
        rise,
        send: b"ping".to_vec(),
        expect: None,
        port: None,
    }
}

/// An ICMP echo check config.
pub fn icmp(interval_ms: u64, timeout_ms: u64, fall: u32, rise: u32) -> HealthConfig {
    HealthConfig {
        protocol: HealthProtocol::Icmp,
        ..udp(interval_ms, timeout_ms, fall, rise)
    }
}

/// How a [`Server`] answers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// "pong" to every datagram.
    Pong,
    /// These bytes.
    Fixed(Vec<u8>),
    /// Nothing (the socket stays open: no ICMP error either).
    Silent,
    /// "pong", this long after the request.
    Late(Duration),
}

/// A UDP server on loopback answering per its [`Reply`].
#[derive(Debug)]
pub struct Server {
    pub addr: SocketAddr,
    reply: Arc<Mutex<Reply>>,
    task: JoinHandle<()>,
}

impl Server {
    /// Binds `addr` (port 0: any) and serves.
    pub async fn start(addr: SocketAddr, reply: Reply) -> Server {
        let sock = UdpSocket::bind(addr).await.expect("bind test server");
        let addr = sock.local_addr().expect("local addr");
        let reply = Arc::new(Mutex::new(reply));
        let r = Arc::clone(&reply);
        let sock = Arc::new(sock);
        let task = tokio::spawn(async move {
            let mut buf = [0u8; 1500];
            while let Ok((_, from)) = sock.recv_from(&mut buf).await {
                let reply = r.lock().unwrap().clone();
                let answer = match reply {
                    Reply::Pong => b"pong".to_vec(),
                    Reply::Fixed(b) => b,
                    Reply::Silent => continue,
                    Reply::Late(d) => {
                        let sock = Arc::clone(&sock);
                        tokio::spawn(async move {
                            tokio::time::sleep(d).await;
                            let _ = sock.send_to(b"pong", from).await;
                        });
                        continue;
                    }
                };
                let _ = sock.send_to(&answer, from).await;
            }
        });
        Server { addr, reply, task }
    }

    /// Changes how it answers from now on.
    pub fn set(&self, reply: Reply) {
        *self.reply.lock().unwrap() = reply;
    }

    /// Closes the socket (and waits until it is closed): the port is unreachable from now.
    pub async fn stop(self) {
        self.task.abort();
        let _ = self.task.await;
    }
}

/// The checker's events, kept until a test asks for them.
#[derive(Debug)]
pub struct Events {
    rx: UnboundedReceiver<HealthEvent>,
    seen: Vec<(HealthEvent, Instant)>,
}

impl Events {
    pub fn new(rx: UnboundedReceiver<HealthEvent>) -> Events {
        Events {
            rx,
            seen: Vec::new(),
        }
    }

    /// Waits up to `within` for `listener`'s `addr` to turn `health`; when it did. Events of
    /// other targets are kept for later calls; earlier ones of this target are dropped.
    pub async fn wait(
        &mut self,
        listener: &str,
        addr: SocketAddr,
        health: Health,
        within: Duration,
    ) -> Option<Instant> {
        let is = |e: &HealthEvent| e.listener == listener && e.addr == addr;
        if let Some(i) = self
            .seen
            .iter()
            .position(|(e, _)| is(e) && e.health == health)
        {
            let (_, at) = self.seen.remove(i);
            self.seen.retain(|(e, _)| !is(e));
            return Some(at);
        }
        self.seen.retain(|(e, _)| !is(e));
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let e = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .ok()??;
            let at = Instant::now();
            if is(&e) {
                if e.health == health {
                    return Some(at);
                }
            } else {
                self.seen.push((e, at));
            }
        }
    }

    /// Waits up to `within` until every one of `addrs` (of `listener`) turned `health`;
    /// those that did not. Cheap per event, for thousands of targets.
    pub async fn wait_all(
        &mut self,
        listener: &str,
        addrs: &[SocketAddr],
        health: Health,
        within: Duration,
    ) -> HashSet<SocketAddr> {
        let mut left: HashSet<SocketAddr> = addrs.iter().copied().collect();
        let mine = |e: &HealthEvent| e.listener == listener && e.health == health;
        for (e, _) in std::mem::take(&mut self.seen) {
            if !(mine(&e) && left.remove(&e.addr)) {
                self.seen.push((e, Instant::now()));
            }
        }
        let deadline = tokio::time::Instant::now() + within;
        while !left.is_empty() {
            let Ok(Some(e)) = tokio::time::timeout_at(deadline, self.rx.recv()).await else {
                break;
            };
            if !(mine(&e) && left.remove(&e.addr)) {
                self.seen.push((e, Instant::now()));
            }
        }
        left
    }

    /// Every event received so far and not yet waited for (drains the channel).
    pub fn drain(&mut self) -> Vec<HealthEvent> {
        while let Ok(e) = self.rx.try_recv() {
            self.seen.push((e, Instant::now()));
        }
        self.seen.drain(..).map(|(e, _)| e).collect()
    }
}

/// Descriptors this process has open.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}

/// CPU time the calling thread has used: (user, system).
pub fn thread_cpu() -> (Duration, Duration) {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap_or_default();
    // Fields after the command name (which may hold spaces) start at state, field 3;
    // utime and stime are fields 14 and 15, in clock ticks (100 a second on Linux).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let mut f = rest
        .split_whitespace()
        .skip(11)
        .map(|x| x.parse::<u64>().unwrap_or(0));
    let mut next = || Duration::from_millis(f.next().unwrap_or(0) * 10);
    (next(), next())
}
