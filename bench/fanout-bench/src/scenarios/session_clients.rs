//! The `sessions` scenario's clients: which addresses they use, and how many can run at once.
//!
//! Every client is a socket of the bench process, so the number that can exist at once is
//! bounded by the process's RLIMIT_NOFILE. The scenario raises it (soft and, with
//! `CAP_SYS_RESOURCE`, hard) to fit all N clients; where the hard limit cannot be raised
//! (containers commonly drop that capability, root or not), the clients run in *groups* that
//! each fit, one group after the other. This works because a session outlives its client's
//! socket: udp-fanout keys sessions on the client address and keeps them until they idle out
//! (600 s here), so after the fill all N sessions exist whichever group created them, and in
//! the throughput phase each group in turn drives its share of them, against a table holding
//! all N. What grouping loses is concurrency: at any moment only one group's sessions are
//! busy, which the report states.
//!
//! Client addresses are consecutive IPs from a base (127.0.0.1, 127.0.0.2, …), each with at
//! most a given number of clients on an explicit port range, and a group is made of whole
//! IPs. Within a group the generator spreads its flows round-robin over the group's IPs and
//! takes ports in order, so client `k` of an IP always has the `k`-th free port of the range:
//! the same groups run again give the same addresses, which is what makes the throughput
//! phase hit the sessions the fill created.

use std::net::IpAddr;

use anyhow::ensure;

use super::session_scale::SessionScaleConfig;
use crate::addrs;
use crate::generator::NOFILE_SLACK;
use crate::limits;

/// Descriptors the daemon keeps for everything but upstream sockets (as udp-fanout assumes).
const DAEMON_BASE_FDS: u64 = 4096;

/// The clients of a run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientPlan {
    /// Every client address, in order.
    pub ips: Vec<IpAddr>,
    /// Groups run one after the other: their IPs and how many clients they have in total.
    pub groups: Vec<(Vec<IpAddr>, u32)>,
}

impl ClientPlan {
    /// Spreads `cfg.sessions` clients over as few IPs as `clients_per_ip` and the port range
    /// allow, and those IPs over groups of at most `budget` clients.
    pub fn new(cfg: &SessionScaleConfig, budget: u64) -> anyhow::Result<ClientPlan> {
        let n = cfg.sessions;
        ensure!(n >= 1, "no clients");
        let budget = u32::try_from(budget).unwrap_or(u32::MAX).max(1);
        let per_ip_max = cfg.clients_per_ip().min(budget);
        let n_ips = n.div_ceil(per_ip_max);
        let ips = addrs::consecutive_v4(cfg.client_ip_base, n_ips).map_err(anyhow::Error::msg)?;
        // As the generator's round-robin spreads them: the first `n % n_ips` get one more.
        let counts: Vec<u32> = (0..n_ips)
            .map(|j| n / n_ips + u32::from(j < n % n_ips))
            .collect();
        // Consecutive addresses while they fit (each alone fits: per_ip_max <= budget).
        let mut groups: Vec<(Vec<IpAddr>, u32)> = Vec::new();
        for (&ip, &c) in ips.iter().zip(&counts) {
            match groups.last_mut() {
                Some((g, total)) if *total + c <= budget => {
                    g.push(ip);
                    *total += c;
                }
                _ => groups.push((vec![ip], c)),
            }
        }
        Ok(ClientPlan { ips, groups })
    }

    /// The most clients in one group.
    pub fn largest_group(&self) -> u32 {
        self.groups.iter().map(|g| g.1).max().unwrap_or(0)
    }
}

/// What the open-file limit allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// RLIMIT_NOFILE (soft, hard) after raising it.
    pub(crate) nofile: (u64, u64),
    /// Clients that can exist at once.
    pub(crate) clients: u64,
}

/// Raises RLIMIT_NOFILE for all N clients and, since the daemon inherits it, for the daemon's
/// upstream sockets (about one per session and backend, as udp-fanout estimates). When the
/// hard limit is in the way, takes all of it and says what that costs in `notes`.
pub(crate) fn budget(cfg: &SessionScaleConfig, notes: &mut Vec<String>) -> anyhow::Result<Budget> {
    let n = u64::from(cfg.sessions);
    let gen_need = n + NOFILE_SLACK;
    let daemon_need = cfg.max_sessions().div_ceil(cfg.downstreams as u64) + DAEMON_BASE_FDS;
    let want = gen_need.max(daemon_need);
    let cap = cfg.max_group.map_or(n, |g| n.min(u64::from(g.max(1))));
    let err = match limits::raise_nofile(want) {
        Ok(l) => {
            return Ok(Budget {
                nofile: l.after,
                clients: cap,
            });
        }
        Err(e) => e,
    };
    let (_, hard) = limits::nofile()?;
    // Raising the soft limit to the hard one is always allowed.
    let nofile = limits::raise_nofile(hard).map_or((hard, hard), |l| l.after);
    let clients = hard.saturating_sub(NOFILE_SLACK).min(cap);
    ensure!(
        clients >= 1,
        "RLIMIT_NOFILE hard limit {hard} leaves no room for clients"
    );
    if clients < n {
        notes.push(format!(
            "{err}. So the clients ran in groups of at most {clients}, one group at a time; \
             sessions persist after their group's sockets close, so all {n} exist together, \
             but only one group's are busy at any moment"
        ));
    }
    if daemon_need > hard {
        notes.push(format!(
            "udp-fanout may need {daemon_need} descriptors for its upstream sockets but the hard \
             limit is {hard}: sessions beyond it are dropped (reason no_upstream_port)"
        ));
    }
    Ok(Budget { nofile, clients })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn cfg(sessions: u32) -> SessionScaleConfig {
        SessionScaleConfig {
            sessions,
            ..SessionScaleConfig::new(PathBuf::from("/x"))
        }
    }

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([127, 0, 0, last])
    }

    #[test]
    fn all_clients_in_one_group_when_the_limit_allows() {
        let p = ClientPlan::new(&cfg(100_000), 100_000).unwrap();
        assert_eq!(p.ips, (1..=6).map(ip).collect::<Vec<_>>());
        assert_eq!(p.groups.len(), 1);
        assert_eq!(p.groups[0].1, 100_000);
    }

    #[test]
    fn a_low_limit_makes_groups_of_whole_addresses() {
        // 20,000 descriptors: groups of at most 18,976 clients.
        let p = ClientPlan::new(&cfg(100_000), 18_976).unwrap();
        assert_eq!(p.ips.len(), 6);
        assert_eq!(p.groups.len(), 6);
        let sizes: Vec<u32> = p.groups.iter().map(|g| g.1).collect();
        assert_eq!(sizes, [16_667, 16_667, 16_667, 16_667, 16_666, 16_666]);
        assert_eq!(p.largest_group(), 16_667);
        assert_eq!(p.groups[3].0, vec![ip(4)]);
        // A small budget: fewer clients per address, several addresses per group.
        let p = ClientPlan::new(&cfg(2_000), 1_000).unwrap();
        assert_eq!(p.groups.len(), 2);
        let p = ClientPlan::new(&cfg(2_000), 700).unwrap();
        assert_eq!(p.ips.len(), 3);
        assert_eq!(p.groups.iter().map(|g| g.1).sum::<u32>(), 2_000);
        assert!(p.largest_group() <= 700);
    }

    #[test]
    fn groups_of_several_addresses_split_clients_as_the_generator_does() {
        let c = SessionScaleConfig {
            clients_per_ip: 300,
            ..cfg(1_000)
        };
        // 4 addresses of 250; groups of 2 addresses (500 clients).
        let p = ClientPlan::new(&c, 600).unwrap();
        assert_eq!(p.ips.len(), 4);
        assert_eq!(p.groups.len(), 2);
        assert_eq!(p.groups[1], (vec![ip(3), ip(4)], 500));
    }
}
