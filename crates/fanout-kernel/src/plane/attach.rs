//! Where the programs are attached: one attachment per (interface, mode) that some listener
//! uses, made when the first such listener is added and undone when the last one is removed.
//!
//! The programs serve every listener in `uf_listeners`, whichever interface a datagram
//! arrives on; an attachment only decides where they look. Keeping exactly the attachments the
//! current listeners ask for makes a plane changed at run time attach where a plane started
//! with the same listeners would, and leaves no program on an interface nobody configured.
//!
//! The attachments are BPF links held by the programs in the loaded object (aya keeps them by
//! link id), so dropping the object detaches everything, and the kernel does the same when the
//! process dies.

use std::collections::BTreeMap;

use aya::Ebpf;
use aya::programs::tc::SchedClassifierLinkId;
use aya::programs::xdp::XdpLinkId;
use aya::programs::{SchedClassifier, TcAttachType, Xdp, XdpMode};
use fanout_config::{ListenerConfig, Mode};

use super::{Attachment, KernelError};
use crate::programs::{TC_PROGRAM, XDP_PROGRAM};

/// The attachments, by (interface, mode): listed in that order, as [`Attachment`]s.
#[derive(Debug, Default)]
pub(super) struct Links(BTreeMap<(String, Mode), Link>);

#[derive(Debug)]
struct Link {
    /// As [`Attachment::how`].
    how: &'static str,
    id: LinkId,
}

/// The handle aya detaches a link by.
#[derive(Debug)]
enum LinkId {
    Xdp(XdpLinkId),
    Tc(SchedClassifierLinkId),
}

impl Links {
    /// Attaches `t`'s program unless it is attached there already. Whether it attached now
    /// (then [`detach`](Self::detach) undoes it).
    pub(super) fn attach(&mut self, ebpf: &mut Ebpf, t: &Target<'_>) -> Result<bool, KernelError> {
        let key = (t.interface.clone(), t.mode);
        if self.0.contains_key(&key) {
            return Ok(false);
        }
        t.check_interface()?;
        let link = match t.mode {
            Mode::Xdp => attach_xdp(ebpf, t)?,
            Mode::TcEbpf => attach_tc(ebpf, t)?,
            Mode::Userspace => return Err(t.fail("not a kernel-plane mode")),
        };
        tracing::info!(interface = %t.interface, how = link.how, "kernel plane attached");
        self.0.insert(key, link);
        Ok(true)
    }

    /// Detaches the program from `interface` (its `mode` attachment), if attached.
    ///
    /// A failure is only logged: aya forgets the link either way, so there is nothing left to
    /// retry, and the caller has already unregistered the listeners that needed it (a program
    /// with none of its own passes every datagram no other listener wants, or forwards it for
    /// one that is still registered, as it would have before).
    pub(super) fn detach(&mut self, ebpf: &mut Ebpf, interface: &str, mode: Mode) {
        let Some(link) = self.0.remove(&(interface.to_owned(), mode)) else {
            return;
        };
        let missing = || "program missing".to_owned();
        let done = match link.id {
            LinkId::Xdp(id) => program::<Xdp>(ebpf, XDP_PROGRAM)
                .ok_or_else(missing)
                .and_then(|p| p.detach(id).map_err(|e| e.to_string())),
            LinkId::Tc(id) => program::<SchedClassifier>(ebpf, TC_PROGRAM)
                .ok_or_else(missing)
                .and_then(|p| p.detach(id).map_err(|e| e.to_string())),
        };
        match done {
            Ok(()) => tracing::info!(interface, how = link.how, "kernel plane detached"),
            Err(error) => {
                tracing::warn!(interface, how = link.how, %error, "detaching the kernel plane failed");
            }
        }
    }

    /// Every attachment, by interface name (then mode).
    pub(super) fn list(&self) -> Vec<Attachment> {
        self.0
            .iter()
            .map(|((interface, _), l)| Attachment {
                interface: interface.clone(),
                how: l.how,
            })
            .collect()
    }
}

/// The program `name` of the object as a `P`.
fn program<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Option<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program>,
{
    ebpf.program_mut(name).and_then(|p| p.try_into().ok())
}

/// One program to attach to one interface, and the listener that asked for it (named in
/// errors).
pub(super) struct Target<'a> {
    listener: &'a str,
    interface: String,
    mode: Mode,
}

impl<'a> Target<'a> {
    /// Where listener `l` needs its program.
    pub(super) fn of(l: &'a ListenerConfig) -> Self {
        Target {
            listener: &l.name,
            interface: l.interface.clone().unwrap_or_default(),
            mode: l.mode,
        }
    }
}

impl Target<'_> {
    fn fail(&self, reason: impl Into<String>) -> KernelError {
        KernelError::Attach {
            listener: self.listener.to_owned(),
            mode: self.mode.as_str(),
            interface: self.interface.clone(),
            reason: reason.into(),
        }
    }

    /// Fails with "no such interface" unless the interface exists (in this network namespace).
    fn check_interface(&self) -> Result<(), KernelError> {
        nix::net::if_::if_nametoindex(self.interface.as_str())
            .map(drop)
            .map_err(|_| self.fail("no such interface"))
    }
}

/// Attaches the XDP program in native (driver) mode, or in generic (skb) mode where the
/// driver has no XDP support.
fn attach_xdp(ebpf: &mut Ebpf, t: &Target<'_>) -> Result<Link, KernelError> {
    let prog: &mut Xdp = program(ebpf, XDP_PROGRAM).ok_or_else(|| t.fail("program missing"))?;
    let (id, how) = match prog.attach(&t.interface, XdpMode::Driver) {
        Ok(id) => (id, "xdp (native)"),
        Err(native) => {
            tracing::warn!(interface = %t.interface, error = %native, "native XDP not available; falling back to generic (skb) mode, which is slower");
            let id = prog
                .attach(&t.interface, XdpMode::Skb)
                .map_err(|e| t.fail(format!("native: {native}; generic: {e}")))?;
            (id, "xdp (generic)")
        }
    };
    Ok(Link {
        how,
        id: LinkId::Xdp(id),
    })
}

/// Attaches the TC program at ingress: through TCX where the kernel has it (≥ 6.6), else
/// through a clsact qdisc, added if missing (and left in place on detach: an empty clsact
/// qdisc changes nothing, and another tool may have put filters on it since).
fn attach_tc(ebpf: &mut Ebpf, t: &Target<'_>) -> Result<Link, KernelError> {
    let prog: &mut SchedClassifier =
        program(ebpf, TC_PROGRAM).ok_or_else(|| t.fail("program missing"))?;
    let id = match prog.attach(&t.interface, TcAttachType::Ingress) {
        Ok(id) => id,
        Err(e) => {
            // Kernels before 6.6 attach through a clsact qdisc, which may need adding.
            let _ = aya::programs::tc::qdisc_add_clsact(&t.interface);
            prog.attach(&t.interface, TcAttachType::Ingress)
                .map_err(|e2| t.fail(format!("{e}; {e2}")))?
        }
    };
    Ok(Link {
        how: "tc ingress",
        id: LinkId::Tc(id),
    })
}
