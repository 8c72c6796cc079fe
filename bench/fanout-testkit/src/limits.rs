//! Raising the open-file limit (RLIMIT_NOFILE) before opening many sockets.
//!
//! The generator opens one socket per flow, so a run with 100,000 flows needs 100,000 file
//! descriptors, far above the usual soft limit of 1,024 (and often above the hard limit). A
//! run that discovered this half-way, as `EMFILE` on socket number 1,021, would fail after
//! doing part of its work and report a confusing error; raising the limit up front, and
//! saying exactly what is missing when that is not possible, turns it into a clear failure
//! before anything is sent.
//!
//! The soft limit is raised within the hard limit, which anyone may do; the hard limit is
//! raised too when needed, which takes `CAP_SYS_RESOURCE` (root has it) and can never exceed
//! the kernel's `fs.nr_open`. Child processes inherit both limits, which is how the session
//! benchmark lets the daemon under test open its sockets as well.

use std::io;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// What [`raise_nofile`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NofileLimits {
    /// Soft and hard limit before.
    pub before: (u64, u64),
    /// Soft and hard limit now.
    pub after: (u64, u64),
}

/// The current (soft, hard) RLIMIT_NOFILE.
pub fn nofile() -> io::Result<(u64, u64)> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(io::Error::from)
}

/// Makes sure the soft RLIMIT_NOFILE is at least `want`, raising the hard limit as well if
/// it is lower (which needs privilege). Never lowers a limit. The error says what was
/// needed, what the limits are, and how to fix it.
pub fn raise_nofile(want: u64) -> io::Result<NofileLimits> {
    let (soft, hard) = nofile()?;
    let before = (soft, hard);
    if soft >= want {
        return Ok(NofileLimits {
            before,
            after: before,
        });
    }
    let new_hard = hard.max(want);
    match setrlimit(Resource::RLIMIT_NOFILE, want, new_hard) {
        Ok(()) => Ok(NofileLimits {
            before,
            after: (want, new_hard),
        }),
        Err(e) => {
            let why = if want > hard {
                format!(
                    "the hard limit is {hard} and raising it was refused ({e}); run as root \
                     (CAP_SYS_RESOURCE) or raise it first (`ulimit -Hn {want}`, systemd \
                     LimitNOFILE=), and check that sysctl fs.nr_open is at least {want}"
                )
            } else {
                format!("setrlimit failed ({e})")
            };
            Err(io::Error::other(format!(
                "{want} open files are needed but RLIMIT_NOFILE is {soft} (hard {hard}): {why}"
            )))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_already_high_enough_is_left_alone() {
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let r = raise_nofile(soft.min(64)).unwrap();
        assert_eq!(r.before, (soft, hard));
        assert_eq!(r.after, (soft, hard));
    }

    #[test]
    fn the_soft_limit_can_be_raised_to_the_hard_limit() {
        let (_, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
        let want = hard.min(4096);
        let r = raise_nofile(want).unwrap();
        assert!(r.after.0 >= want);
        assert_eq!(getrlimit(Resource::RLIMIT_NOFILE).unwrap().0, r.after.0);
    }

    #[test]
    fn an_impossible_limit_is_a_clear_error() {
        // Above fs.nr_open, which not even root may exceed.
        let e = raise_nofile(u64::MAX - 1).unwrap_err();
        let msg = e.to_string();
        assert!(msg.contains("open files are needed"), "{msg}");
        assert!(msg.contains("RLIMIT_NOFILE"), "{msg}");
    }
}
