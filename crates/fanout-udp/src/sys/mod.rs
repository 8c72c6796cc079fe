//! The only place in the userspace plane that talks to the kernel directly: batched datagram
//! I/O with its ancillary data, and socket set-up. Every `unsafe` block of the plane lives here,
//! each with the reason it is sound.

pub mod batch;
pub mod cmsg;
pub(crate) mod sockaddr;
pub mod socket;

pub use batch::{Datagram, MAX_DATAGRAM, RecvBatch, SLOT_SIZE, SendQueue, SendResult, Tx};
pub use cmsg::{RecvInfo, SendOpts};
