//! `kubernetes:` on a listener: which Service's EndpointSlices become its downstreams.
//!
//! The names are checked with Kubernetes' own rules (a namespace is a DNS-1123 label, a
//! Service a DNS-1035 label, a port name an IANA service name), so a typo is caught here,
//! before the daemon starts, rather than showing up later as a watch that never finds a
//! slice. Whether the Service exists is not known until the API server answers, so that is a
//! run-time matter (an empty set, logged).

use super::Errors;
use crate::model::{KubernetesConfig, ServicePort};
use crate::raw::RawKubernetes;

/// Checks one listener's `kubernetes:` section at key path `p`.
pub(super) fn kubernetes(
    raw: RawKubernetes,
    p: &str,
    errs: &mut Errors,
) -> Option<KubernetesConfig> {
    let namespace = required(raw.namespace, &format!("{p}.namespace"), errs).and_then(|n| {
        label(&n, false)
            .map_err(|why| errs.add(format!("{p}.namespace"), format!("{n:?}: {why}")))
            .ok()
            .map(|()| n)
    });
    let service = required(raw.service, &format!("{p}.service"), errs).and_then(|n| {
        label(&n, true)
            .map_err(|why| errs.add(format!("{p}.service"), format!("{n:?}: {why}")))
            .ok()
            .map(|()| n)
    });
    let port = match raw.port {
        None => {
            errs.add(
                format!("{p}.port"),
                "required: the port number (5514) or the Service port's name (\"syslog\")",
            );
            None
        }
        Some(s) => service_port(&s.0)
            .map_err(|why| errs.add(format!("{p}.port"), why))
            .ok(),
    };
    let node_name = raw.node_name.and_then(|n| {
        subdomain(&n)
            .map_err(|why| errs.add(format!("{p}.node_name"), format!("{n:?}: {why}")))
            .ok()
            .map(|()| n)
    });
    Some(KubernetesConfig {
        namespace: namespace?,
        service: service?,
        port: port?,
        prefer_same_node: raw.prefer_same_node.unwrap_or(false),
        node_name,
    })
}

fn required(v: Option<String>, path: &str, errs: &mut Errors) -> Option<String> {
    if v.is_none() {
        errs.add(path, "required");
    }
    v
}

/// A DNS label: 1 to 63 of `a-z`, `0-9`, `-`, starting and ending alphanumeric; a DNS-1035
/// label (`letter_first`, as Service names are) also starts with a letter.
fn label(n: &str, letter_first: bool) -> Result<(), String> {
    if n.is_empty() || n.len() > 63 {
        return Err("must be 1 to 63 characters".into());
    }
    if !n
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
    {
        return Err("only lowercase letters, digits and '-' are allowed".into());
    }
    let (first, last) = (n.as_bytes()[0], n.as_bytes()[n.len() - 1]);
    if letter_first && !first.is_ascii_lowercase() {
        return Err("must start with a letter".into());
    }
    if first == b'-' || last == b'-' {
        return Err("must start and end with a letter or digit".into());
    }
    Ok(())
}

/// A DNS subdomain (node names): dot-separated labels, at most 253 characters.
fn subdomain(n: &str) -> Result<(), String> {
    if n.len() > 253 {
        return Err("must be at most 253 characters".into());
    }
    n.split('.').try_for_each(|l| label(l, false))
}

/// `5514` or `"syslog"`: a port number, or an IANA service name as Service ports are named
/// (at most 15 of `a-z0-9-`, a letter among them, no `--`, no `-` at either end).
fn service_port(s: &str) -> Result<ServicePort, String> {
    let s = s.trim();
    if !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()) {
        return match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(ServicePort::Number(n)),
            _ => Err(format!("{s}: a port number must be 1 to 65535")),
        };
    }
    let ok = !s.is_empty()
        && s.len() <= 15
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && s.bytes().any(|b| b.is_ascii_lowercase())
        && !s.contains("--")
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(ServicePort::Name(s.to_owned()))
    } else {
        Err(format!(
            "{s:?}: expected a port number (1 to 65535) or a Service port name (up to 15 lowercase letters, digits and '-')"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_follow_kubernetes_rules() {
        assert!(label("logging", false).is_ok());
        assert!(label("0ns", false).is_ok());
        assert!(label("0svc", true).is_err());
        assert!(label("Logging", false).is_err());
        assert!(label("-a", false).is_err());
        assert!(label("a-", false).is_err());
        assert!(label(&"a".repeat(64), false).is_err());
        assert!(subdomain("node-1.example").is_ok());
        assert!(subdomain("node_1").is_err());
    }

    #[test]
    fn ports_are_numbers_or_names() {
        assert_eq!(service_port("5514"), Ok(ServicePort::Number(5514)));
        assert_eq!(
            service_port("syslog"),
            Ok(ServicePort::Name("syslog".into()))
        );
        assert_eq!(
            service_port("dns-udp"),
            Ok(ServicePort::Name("dns-udp".into()))
        );
        for bad in [
            "0",
            "65536",
            "",
            "a--b",
            "-a",
            "UDP",
            "sixteen-chars-xx",
            "55a-",
        ] {
            assert!(service_port(bad).is_err(), "{bad:?} accepted");
        }
    }
}
