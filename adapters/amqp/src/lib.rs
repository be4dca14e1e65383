//! AMQP 0-9-1 adapter on RabbitMQ: a supervised connection that re-declares the topology after
//! every reconnect, an outbound publisher with publisher confirms and `mandatory` routing, and an
//! inbound consumer that acks only after the journal commit (in batches, `multiple = true`).

pub mod config;
pub mod inbound;
pub mod link;
pub mod outbound;

pub use config::{AmqpConfig, Binding, QueueType};
pub use inbound::AmqpInbound;
pub use link::{Link, LinkEvent, Observer};
pub use outbound::AmqpOutbound;
