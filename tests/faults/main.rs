//! The fault-injection suite: each scenario crashes or starves one part of the system under
//! load (the hub, RabbitMQ, PostgreSQL, the disk, a partner, one of several instances) and
//! asserts zero loss and zero duplicate effects. `SYNCHUB_SOAK=1` runs the long form.

// Fixture helpers are `pub` for the sibling modules of this one test crate.
#![allow(unreachable_pub)]

mod broker;
mod disk;
mod fixture;
mod partner;
mod postgres;
mod scale_out;
mod sigkill;
mod sshd;
