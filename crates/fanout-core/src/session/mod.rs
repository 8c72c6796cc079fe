//! Client sessions: the table that remembers clients (bounded, idle-expiring, LRU), the
//! bookkeeping of which upstream port a session sends from, so downstream replies can be
//! matched back to their client, and the state machine that ties them together. All are pure;
//! the data planes own the sockets and the clock.

mod binding;
mod machine;
mod ports;
mod table;

pub use binding::{Binding, Resolved, bind_new, resolve};
pub use machine::{
    Action, Counts, Ended, MachineConfig, Reply, SessionInfo, SessionMachine, UpstreamPort,
};
pub use ports::{Acquired, EXCLUSIVE, PortSlots};
pub use table::{EndReason, SessionId, SessionTable};
