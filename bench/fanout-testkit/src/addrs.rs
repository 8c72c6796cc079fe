//! Lists of source addresses and ports, as written on the command line.
//!
//! Simulating many clients takes many source addresses (see `generator::sockets`), and
//! writing out `127.0.0.1,127.0.0.2,…,127.0.0.6` by hand is error-prone, so lists accept
//! inclusive ranges (`127.0.0.1-127.0.0.6`) as well. Ranges are capped at
//! [`MAX_RANGE_ADDRS`] addresses, so that a typo such as `10.0.0.1-10.9.0.1` is an error and
//! not a million-entry list.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Most addresses one range may expand to.
pub const MAX_RANGE_ADDRS: u128 = 65_536;

/// Parses `IP[,IP…]` where each item is an address or an inclusive range `FIRST-LAST` of one
/// family, e.g. `127.0.0.1,127.0.0.5-127.0.0.7` or `::1-::3`.
pub fn parse_ip_list(s: &str) -> Result<Vec<IpAddr>, String> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim) {
        if item.is_empty() {
            return Err(format!("`{s}`: empty item in the address list"));
        }
        match item.split_once('-') {
            None => out.push(parse_ip(item)?),
            Some((a, b)) => out.extend(ip_range(parse_ip(a.trim())?, parse_ip(b.trim())?)?),
        }
    }
    Ok(out)
}

fn parse_ip(s: &str) -> Result<IpAddr, String> {
    s.parse().map_err(|_| format!("`{s}` is not an IP address"))
}

/// The addresses `first..=last`, which must be of one family and in order.
pub fn ip_range(first: IpAddr, last: IpAddr) -> Result<Vec<IpAddr>, String> {
    let (a, b, v4) = match (first, last) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            (u128::from(u32::from(a)), u128::from(u32::from(b)), true)
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => (u128::from(a), u128::from(b), false),
        _ => {
            return Err(format!(
                "{first}-{last}: the ends are of different families"
            ));
        }
    };
    if a > b {
        return Err(format!(
            "{first}-{last}: the first address is above the last"
        ));
    }
    if b - a >= MAX_RANGE_ADDRS {
        return Err(format!(
            "{first}-{last}: more than {MAX_RANGE_ADDRS} addresses"
        ));
    }
    Ok((a..=b)
        .map(|n| match u32::try_from(n) {
            Ok(n) if v4 => IpAddr::V4(Ipv4Addr::from(n)),
            _ => IpAddr::V6(Ipv6Addr::from(n)),
        })
        .collect())
}

/// Parses an inclusive port range `LO-HI` (or a single port), ports 1–65535.
pub fn parse_port_range(s: &str) -> Result<(u16, u16), String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.trim().parse::<u16>() {
            Ok(0) | Err(_) => Err(format!("`{p}` is not a port 1-65535")),
            Ok(p) => Ok(p),
        }
    };
    let (lo, hi) = match s.split_once('-') {
        Some((a, b)) => (port(a)?, port(b)?),
        None => {
            let p = port(s)?;
            (p, p)
        }
    };
    if lo > hi {
        return Err(format!("`{s}`: the first port is above the last"));
    }
    Ok((lo, hi))
}

/// `count` consecutive IPv4 addresses from `first` (wrapping is an error).
pub fn consecutive_v4(first: Ipv4Addr, count: u32) -> Result<Vec<IpAddr>, String> {
    let start = u32::from(first);
    (0..count)
        .map(|i| {
            start
                .checked_add(i)
                .map(|n| IpAddr::V4(Ipv4Addr::from(n)))
                .ok_or_else(|| format!("{count} addresses from {first} run past 255.255.255.255"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ips(v: &[&str]) -> Vec<IpAddr> {
        v.iter().map(|s| s.parse().unwrap()).collect()
    }

    #[test]
    fn lists_and_ranges_expand_in_order() {
        assert_eq!(
            parse_ip_list("127.0.0.1,127.0.0.2").unwrap(),
            ips(&["127.0.0.1", "127.0.0.2"])
        );
        assert_eq!(
            parse_ip_list("127.0.0.1-127.0.0.3, 10.0.0.9").unwrap(),
            ips(&["127.0.0.1", "127.0.0.2", "127.0.0.3", "10.0.0.9"])
        );
        assert_eq!(
            parse_ip_list("127.0.0.255-127.0.1.1").unwrap(),
            ips(&["127.0.0.255", "127.0.1.0", "127.0.1.1"])
        );
        assert_eq!(parse_ip_list("::1-::2").unwrap(), ips(&["::1", "::2"]));
        assert_eq!(parse_ip_list("::1").unwrap(), ips(&["::1"]));
    }

    #[test]
    fn bad_lists_are_errors() {
        for bad in [
            "",
            "127.0.0.1,",
            "127.0.0.300",
            "127.0.0.5-127.0.0.1",
            "127.0.0.1-::1",
            "10.0.0.0-10.9.0.0",
            "127.0.0.1-",
        ] {
            assert!(parse_ip_list(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn port_ranges_parse() {
        assert_eq!(parse_port_range("10000-30000"), Ok((10_000, 30_000)));
        assert_eq!(parse_port_range("5000"), Ok((5_000, 5_000)));
        for bad in ["0-10", "10-5", "1-70000", "x", "-5"] {
            assert!(parse_port_range(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn consecutive_addresses() {
        assert_eq!(
            consecutive_v4(Ipv4Addr::new(127, 0, 0, 254), 3).unwrap(),
            ips(&["127.0.0.254", "127.0.0.255", "127.0.1.0"])
        );
        assert!(consecutive_v4(Ipv4Addr::BROADCAST, 2).is_err());
    }
}
