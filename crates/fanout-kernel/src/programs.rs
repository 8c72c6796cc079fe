//! Loading the BPF object: both programs verified into the kernel, the maps taken out.
//!
//! Failures are turned into one-line causes a user can act on: missing privileges, or the
//! verifier's verdict (its last lines, where the reason is) instead of a bare errno.

use aya::programs::{ProgramError, SchedClassifier, Xdp};
use aya::{Ebpf, EbpfError, EbpfLoader, VerifierLogLevel};

use crate::maps::{KernelMaps, MapsError};

/// Name of the XDP program in the object.
pub const XDP_PROGRAM: &str = "uf_xdp";
/// Name of the TC ingress program in the object.
pub const TC_PROGRAM: &str = "uf_tc";

/// Why the kernel plane could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// Not allowed to create maps or load programs.
    #[error("loading BPF programs needs root (CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON): {0}")]
    Permission(String),
    /// The verifier rejected a program.
    #[error("the kernel verifier rejected {program}: {summary}")]
    Verifier {
        /// Which program.
        program: &'static str,
        /// The last lines of the verifier log.
        summary: String,
    },
    /// Anything else while loading.
    #[error("loading the BPF object failed: {0}")]
    Other(String),
    /// Map access failed.
    #[error(transparent)]
    Maps(#[from] MapsError),
}

/// The loaded object: programs in the kernel (not attached yet) and its maps.
pub struct Loaded {
    /// The aya object; owns the programs (and their attachments).
    pub ebpf: Ebpf,
    /// Typed map access.
    pub maps: KernelMaps,
}

impl std::fmt::Debug for Loaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loaded").finish_non_exhaustive()
    }
}

fn is_permission(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Loads [`crate::OBJECT`]: creates the maps and verifies both programs.
pub fn load() -> Result<Loaded, LoadError> {
    let mut ebpf = EbpfLoader::new()
        .verifier_log_level(VerifierLogLevel::DEBUG | VerifierLogLevel::STATS)
        .load(crate::OBJECT)
        .map_err(|e| match &e {
            EbpfError::MapError(aya::maps::MapError::CreateError { io_error, .. })
                if is_permission(io_error) =>
            {
                LoadError::Permission(e.to_string())
            }
            _ => LoadError::Other(format!("{e:#}")),
        })?;
    load_program::<Xdp>(&mut ebpf, XDP_PROGRAM)?;
    load_program::<SchedClassifier>(&mut ebpf, TC_PROGRAM)?;
    let maps = KernelMaps::take(&mut ebpf)?;
    Ok(Loaded { ebpf, maps })
}

/// Program types this module loads.
trait Loadable: Sized {
    fn get<'a>(ebpf: &'a mut Ebpf, name: &str) -> Option<&'a mut Self>;
    fn load_it(&mut self) -> Result<(), ProgramError>;
}

impl Loadable for Xdp {
    fn get<'a>(ebpf: &'a mut Ebpf, name: &str) -> Option<&'a mut Self> {
        ebpf.program_mut(name)?.try_into().ok()
    }
    fn load_it(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

impl Loadable for SchedClassifier {
    fn get<'a>(ebpf: &'a mut Ebpf, name: &str) -> Option<&'a mut Self> {
        ebpf.program_mut(name)?.try_into().ok()
    }
    fn load_it(&mut self) -> Result<(), ProgramError> {
        self.load()
    }
}

fn load_program<P: Loadable>(ebpf: &mut Ebpf, name: &'static str) -> Result<(), LoadError> {
    let prog = P::get(ebpf, name)
        .ok_or_else(|| LoadError::Other(format!("program {name} missing from the object")))?;
    prog.load_it().map_err(|e| match e {
        ProgramError::LoadError {
            io_error,
            verifier_log,
        } => {
            if is_permission(&io_error) && verifier_log.to_string().trim().is_empty() {
                LoadError::Permission(io_error.to_string())
            } else {
                LoadError::Verifier {
                    program: name,
                    summary: summarize(&verifier_log.to_string(), &io_error),
                }
            }
        }
        other => LoadError::Other(format!("{name}: {other}")),
    })
}

/// The useful end of a verifier log: the last few non-empty lines.
fn summarize(log: &str, io: &std::io::Error) -> String {
    let lines: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect();
    let tail = &lines[lines.len().saturating_sub(6)..];
    if tail.is_empty() {
        io.to_string()
    } else {
        format!("{io}; verifier: {}", tail.join(" | "))
    }
}
