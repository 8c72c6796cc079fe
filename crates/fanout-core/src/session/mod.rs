//! Client sessions: the table that remembers clients (bounded, idle-expiring, LRU) and the
//! bookkeeping of which upstream port a session sends from, so downstream replies can be
//! matched back to their client. Both are pure data structures; the data planes own the
//! sockets and the clock.

mod binding;
mod ports;
mod table;

pub use binding::{Binding, Resolved, bind_new, resolve};
pub use ports::{Acquired, EXCLUSIVE, PortSlots};
pub use table::{EndReason, SessionId, SessionTable};
