//! `udp-fanout ctl`: the command-line client of a running daemon's admin API (DESIGN.md 3b).
//!
//! Each command is one or a few HTTP requests; the server does all validation, so the client
//! stays thin and its errors are the server's own words. Output is text for people (`list`
//! prints an aligned table) or, with `--json`, the server's JSON as is, for scripts. Exit 0 on
//! success, 1 with `udp-fanout ctl: <message>` on stderr otherwise (clap's usage errors
//! keep their own exit code, 2).
//!
//! The HTTP client is `ureq` 3 without default features: blocking (a CLI has nothing to
//! overlap), plain HTTP/1.1 only (the API listens on loopback by default and has no TLS), and
//! small. It is told to ignore `HTTP_PROXY`-style variables, which would otherwise send a
//! request meant for 127.0.0.1 through a proxy, and to hand back 4xx/5xx answers rather than
//! errors, since their `{"error": ...}` bodies are the messages we print.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use fanout_control::admin::{ErrorBody, ListenerView, read_token};

/// Talk to a running udp-fanout through its admin API (the config's `admin:` section).
#[derive(Debug, Args)]
pub struct CtlArgs {
    /// Where the admin API listens (the config's admin.bind).
    #[arg(long, global = true, value_name = "HOST:PORT", env = "UDP_FANOUT_ADMIN",
          default_value = fanout_config::DEFAULT_ADMIN_BIND)]
    admin: String,

    /// File holding the bearer token (the config's admin.token_file).
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "UDP_FANOUT_TOKEN_FILE"
    )]
    token_file: Option<PathBuf>,

    /// Print the server's JSON instead of text, for scripts.
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    command: CtlCommand,
}

#[derive(Debug, Subcommand)]
enum CtlCommand {
    /// Whether the daemon is live and ready, and how many listeners it serves (exit 1 if not
    /// live or not ready).
    Status,
    /// The downstreams of every listener, or of one, as a table.
    List {
        /// Only this listener.
        listener: Option<String>,
    },
    /// Add a downstream (kept across reloads until removed).
    Add {
        /// The listener's name.
        listener: String,
        /// ip:port, or [ipv6]:port.
        address: String,
        /// Relative share, 1..=10000.
        #[arg(long, default_value_t = 1)]
        weight: u32,
    },
    /// Remove a downstream: it drains first (the listener's drain_secs), unless --now.
    Remove {
        /// The listener's name.
        listener: String,
        /// ip:port, or [ipv6]:port.
        address: String,
        /// Remove at once: its sessions re-pin now.
        #[arg(long)]
        now: bool,
    },
    /// Keep a downstream's sessions for the drain time, but send it no new flows.
    Drain(Target),
    /// Send a downstream nothing; its sessions re-pin at once.
    Disable(Target),
    /// Make a drained or disabled downstream active again.
    Enable(Target),
    /// Set a downstream's weight.
    Weight {
        /// The listener's name.
        listener: String,
        /// ip:port, or [ipv6]:port.
        address: String,
        /// Relative share, 1..=10000.
        weight: u32,
    },
    /// Reload the config file (an invalid one changes nothing; its error is printed).
    Reload,
}

/// One downstream of one listener.
#[derive(Debug, Args)]
struct Target {
    /// The listener's name.
    listener: String,
    /// ip:port, or [ipv6]:port.
    address: String,
}

/// Runs one `ctl` command; prints its result or the reason it failed.
pub fn run(args: CtlArgs) -> ExitCode {
    match execute(&args) {
        Ok(out) => {
            print!("{out}");
            ExitCode::SUCCESS
        }
        Err(Failure { stdout, message }) => {
            print!("{stdout}");
            eprintln!("udp-fanout ctl: {message}");
            ExitCode::FAILURE
        }
    }
}

/// Why a command failed, and what it still has to show (`status` prints what it learnt).
#[derive(Debug)]
struct Failure {
    stdout: String,
    message: String,
}

impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure {
            stdout: String::new(),
            message,
        }
    }
}

fn execute(args: &CtlArgs) -> Result<String, Failure> {
    let token = match &args.token_file {
        Some(path) => Some(read_token(path)?),
        None => None,
    };
    let client = Client::new(&args.admin, token)?;
    let json = args.json;
    let listeners = |l: &str| format!("/v1/listeners/{}", segment(l));
    let downstream = |l: &str, a: &str| format!("{}/downstreams/{}", listeners(l), segment(a));
    let (answer, text) = match &args.command {
        CtlCommand::Status => return status(&client, json),
        CtlCommand::List { listener } => return list(&client, listener.as_deref(), json),
        CtlCommand::Add {
            listener,
            address,
            weight,
        } => {
            let body = serde_json::json!({"address": address, "weight": weight}).to_string();
            let path = format!("{}/downstreams", listeners(listener));
            let text = format!("added {address} to {listener} (weight {weight})");
            (client.call(Method::Post, &path, Some(&body))?, text)
        }
        CtlCommand::Remove {
            listener,
            address,
            now,
        } => {
            let mut path = downstream(listener, address);
            let text = if *now {
                path.push_str("?now=true");
                format!("removed {address} from {listener}")
            } else {
                format!("removing {address} from {listener}: draining first")
            };
            (client.call(Method::Delete, &path, None)?, text)
        }
        CtlCommand::Drain(t) => state(&client, t, "draining", "draining")?,
        CtlCommand::Disable(t) => state(&client, t, "disabled", "disabled")?,
        CtlCommand::Enable(t) => state(&client, t, "active", "enabled")?,
        CtlCommand::Weight {
            listener,
            address,
            weight,
        } => {
            let body = serde_json::json!({ "weight": weight }).to_string();
            let path = downstream(listener, address);
            let text = format!("weight of {address} on {listener} set to {weight}");
            (client.call(Method::Patch, &path, Some(&body))?, text)
        }
        CtlCommand::Reload => {
            let answer = client.call(Method::Post, "/v1/reload", None)?;
            (answer, "config reloaded".to_owned())
        }
    };
    let answer = answer.ok()?;
    Ok(if json { line(&answer) } else { text + "\n" })
}

/// `drain`, `disable`, `enable`: a PATCH of the state.
fn state(client: &Client, t: &Target, state: &str, done: &str) -> Result<(Answer, String), String> {
    let body = serde_json::json!({ "state": state }).to_string();
    let path = format!(
        "/v1/listeners/{}/downstreams/{}",
        segment(&t.listener),
        segment(&t.address)
    );
    let answer = client.call(Method::Patch, &path, Some(&body))?;
    Ok((answer, format!("{done} {} on {}", t.address, t.listener)))
}

/// `status`: `/healthz`, `/readyz` and the listener count. Fails (after printing what it
/// learnt) when the daemon is not live or not ready.
fn status(client: &Client, json: bool) -> Result<String, Failure> {
    // 503 is an answer here, not a failure of the request.
    let probe = |path: &str| -> Result<Result<(), String>, String> {
        let a = client.call(Method::Get, path, None)?;
        match a.status {
            503 => Ok(Err(a.error_message())),
            _ => a.ok().map(|_| Ok(())),
        }
    };
    let live = probe("/healthz")?;
    let ready = probe("/readyz")?;
    let all: Vec<ListenerView> = client.call(Method::Get, "/v1/listeners", None)?.parse()?;
    let stdout = if json {
        let v = serde_json::json!({
            "admin": client.admin,
            "live": live.is_ok(),
            "ready": ready.is_ok(),
            "listeners": all.len(),
        });
        format!("{v}\n")
    } else {
        let yes = |r: &Result<(), String>| if r.is_ok() { "yes" } else { "no" };
        format!(
            "admin      {}\nlive       {}\nready      {}\nlisteners  {}\n",
            client.admin,
            yes(&live),
            yes(&ready),
            all.len()
        )
    };
    match live.and(ready) {
        Ok(()) => Ok(stdout),
        Err(message) => Err(Failure { stdout, message }),
    }
}

/// `list [LISTENER]`: the table, or the server's JSON.
fn list(client: &Client, listener: Option<&str>, json: bool) -> Result<String, Failure> {
    let path = match listener {
        Some(l) => format!("/v1/listeners/{}", segment(l)),
        None => "/v1/listeners".to_owned(),
    };
    let answer = client.call(Method::Get, &path, None)?;
    if json {
        return Ok(line(&answer.ok()?));
    }
    let all: Vec<ListenerView> = match listener {
        Some(_) => vec![answer.parse()?],
        None => answer.parse()?,
    };
    Ok(table(&all))
}

/// The server's body on a line of its own.
fn line(a: &Answer) -> String {
    format!("{}\n", a.body.trim_end())
}

/// An aligned table: one row per downstream, a listener without any shown with dashes.
/// Numbers are right-aligned, the rest left-aligned, columns two spaces apart.
fn table(listeners: &[ListenerView]) -> String {
    const HEAD: [&str; 7] = [
        "LISTENER", "ADDRESS", "WEIGHT", "STATE", "HEALTH", "SOURCE", "SESSIONS",
    ];
    const RIGHT: [bool; 7] = [false, false, true, false, false, false, true];
    let mut rows: Vec<[String; 7]> = vec![HEAD.map(str::to_owned)];
    for l in listeners {
        if l.downstreams.is_empty() {
            let mut row = ["-"; 7].map(str::to_owned);
            row[0] = l.name.clone();
            rows.push(row);
        }
        for d in &l.downstreams {
            rows.push([
                l.name.clone(),
                d.address.to_string(),
                d.weight.to_string(),
                d.state.to_string(),
                d.health.to_string(),
                d.source.to_string(),
                d.sessions.to_string(),
            ]);
        }
    }
    let mut width = [0usize; 7];
    for row in &rows {
        for (w, cell) in width.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in &rows {
        let cells: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(i, c)| match RIGHT[i] {
                true => format!("{c:>w$}", w = width[i]),
                false => format!("{c:<w$}", w = width[i]),
            })
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// Percent-encodes one path segment: everything but RFC 3986's unreserved characters, so an
/// IPv6 address (`[::1]:53`) or an odd listener name arrives as one segment, intact.
fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
enum Method {
    Get,
    Post,
    Patch,
    Delete,
}

/// One answer of the server, whatever its status.
#[derive(Debug)]
struct Answer {
    status: u16,
    body: String,
}

impl Answer {
    /// The answer if it is a success, else the server's message.
    fn ok(self) -> Result<Answer, String> {
        if (200..300).contains(&self.status) {
            Ok(self)
        } else {
            Err(self.error_message())
        }
    }

    /// The `{"error": ...}` message, or, from something that is not our server, the status
    /// and the start of its body.
    fn error_message(&self) -> String {
        match serde_json::from_str::<ErrorBody>(&self.body) {
            Ok(e) => e.error,
            Err(_) => {
                let start: String = self.body.trim().chars().take(200).collect();
                format!("HTTP {} from the admin API: {start}", self.status)
            }
        }
    }

    /// A success's JSON body as `T`.
    fn parse<T: serde::de::DeserializeOwned>(self) -> Result<T, String> {
        let a = self.ok()?;
        serde_json::from_str(&a.body)
            .map_err(|e| format!("unexpected answer from the admin API ({e}): {}", a.body))
    }
}

/// The admin API at one address.
struct Client {
    agent: ureq::Agent,
    /// As given, for messages.
    admin: String,
    base: String,
    token: Option<String>,
}

impl Client {
    fn new(admin: &str, token: Option<String>) -> Result<Client, String> {
        let authority = authority(admin)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .proxy(None)
            .timeout_connect(Some(Duration::from_secs(5)))
            // A reload reads and validates files, and may bind listeners: give it time.
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Ok(Client {
            agent,
            admin: authority.clone(),
            base: format!("http://{authority}"),
            token,
        })
    }

    /// Sends one request; `Err` only when no answer came (the server's refusals are answers).
    fn call(&self, method: Method, path: &str, body: Option<&str>) -> Result<Answer, String> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        let auth = auth.as_deref();
        let json = "application/json";
        let result = match (method, body) {
            (Method::Get, _) => authed(self.agent.get(&url), auth).call(),
            (Method::Delete, _) => authed(self.agent.delete(&url), auth).call(),
            (Method::Post, None) => authed(self.agent.post(&url), auth).send_empty(),
            (Method::Post, Some(b)) => authed(self.agent.post(&url), auth)
                .content_type(json)
                .send(b),
            (Method::Patch, b) => authed(self.agent.patch(&url), auth)
                .content_type(json)
                .send(b.unwrap_or("{}")),
        };
        let mut resp = result.map_err(|e| self.transport_error(&e))?;
        let status = resp.status().as_u16();
        let body = resp
            .body_mut()
            .read_to_string()
            .map_err(|e| self.transport_error(&e))?;
        Ok(Answer { status, body })
    }

    fn transport_error(&self, e: &ureq::Error) -> String {
        let at = &self.admin;
        match e {
            ureq::Error::Io(io) if io.kind() == std::io::ErrorKind::ConnectionRefused => format!(
                "cannot connect to the admin API at {at}: connection refused \
                 (is udp-fanout running, with an admin: section in its config?)"
            ),
            ureq::Error::Io(io) => format!("cannot talk to the admin API at {at}: {io}"),
            ureq::Error::HostNotFound => {
                format!("cannot connect to the admin API at {at}: host not found")
            }
            ureq::Error::ConnectionFailed => format!("cannot connect to the admin API at {at}"),
            ureq::Error::Timeout(t) => {
                format!("the admin API at {at} did not answer in time ({t})")
            }
            other => format!("request to the admin API at {at} failed: {other}"),
        }
    }
}

/// `rb` with the bearer token, if there is one.
fn authed<B>(rb: ureq::RequestBuilder<B>, auth: Option<&str>) -> ureq::RequestBuilder<B> {
    match auth {
        Some(a) => rb.header("Authorization", a),
        None => rb,
    }
}

/// `HOST:PORT` from `--admin` (an `http://` prefix and a trailing `/` are tolerated).
fn authority(admin: &str) -> Result<String, String> {
    let bad = || format!("invalid --admin {admin:?}: expected HOST:PORT, e.g. 127.0.0.1:9091");
    if admin.starts_with("https://") {
        return Err(format!(
            "invalid --admin {admin:?}: the admin API speaks plain HTTP; give HOST:PORT"
        ));
    }
    let a = admin.trim();
    let a = a.strip_prefix("http://").unwrap_or(a).trim_end_matches('/');
    if a.parse::<SocketAddr>().is_ok() {
        return Ok(a.to_owned());
    }
    // A host name: `name:port`, the name without `/`, `[` or spaces.
    let (host, port) = a.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
    if !host_ok || port.parse::<u16>().is_err() {
        return Err(bad());
    }
    Ok(a.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_encoded() {
        assert_eq!(segment("[::1]:53"), "%5B%3A%3A1%5D%3A53");
        assert_eq!(segment("127.0.0.1:6001"), "127.0.0.1%3A6001");
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("syslog-1_x~"), "syslog-1_x~");
    }

    #[test]
    fn admin_addresses() {
        assert_eq!(authority("127.0.0.1:9091").as_deref(), Ok("127.0.0.1:9091"));
        assert_eq!(authority("[::1]:9091").as_deref(), Ok("[::1]:9091"));
        assert_eq!(
            authority("http://localhost:9091/").as_deref(),
            Ok("localhost:9091")
        );
        for bad in [
            "localhost",
            "127.0.0.1",
            ":9091",
            "a b:1",
            "host:99999",
            "https://x:1",
        ] {
            assert!(authority(bad).is_err(), "{bad}");
        }
    }
}
