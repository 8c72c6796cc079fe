//! The only place in the userspace plane that talks to the kernel directly: batched datagram
//! I/O with its ancillary data, and socket set-up. Every `unsafe` block of the plane lives here,
//! each with the reason it is sound.

pub mod cmsg;
mod mmsg;
pub mod recv;
pub mod send;
pub(crate) mod sockaddr;
pub mod socket;
#[cfg(test)]
mod testing;

pub use cmsg::{RecvInfo, SendOpts};
pub use recv::{Datagram, MAX_DATAGRAM, RecvBatch, SLOT_SIZE};
pub use send::{MAX_GSO_SEGMENTS, SendQueue, SendResult, Tx};
