//! A dealer's DMS queue on the broker, declared as a DMS would, for the e2e and fault tests.

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};

/// Declares the hub's dealer exchange `<prefix>synchub.dealer` (as the hub does) and the queue
/// `<prefix><name>` bound to it with `key`. The queue expires when idle, so nothing piles up on
/// a shared broker; `durable` when it must survive a broker crash.
pub(crate) async fn dms_queue(
    ch: &lapin::Channel,
    prefix: &str,
    name: &str,
    key: &str,
    durable: bool,
) -> String {
    let exchange = format!("{prefix}synchub.dealer");
    ch.exchange_declare(
        exchange.as_str().into(),
        lapin::ExchangeKind::Topic,
        ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("declare the dealer exchange");
    let q = format!("{prefix}{name}");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(600_000));
    ch.queue_declare(
        q.as_str().into(),
        QueueDeclareOptions {
            durable,
            ..Default::default()
        },
        args,
    )
    .await
    .expect("declare the DMS queue");
    ch.queue_bind(
        q.as_str().into(),
        exchange.as_str().into(),
        key.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("bind the DMS queue");
    q
}
