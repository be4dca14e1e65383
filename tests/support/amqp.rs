//! The hub's AMQP endpoints on a shared broker for the e2e and fault tests and the benchmarks:
//! names of their own per hub, and a dealer's DMS queue declared as a DMS would.

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

/// Overrides giving both AMQP endpoints exchanges and queues of their own under `prefix` (so
/// parallel hubs never consume each other's messages), expiring when idle so nothing piles up on
/// the broker (both links declare the whole topology, so both get the same expiry), and the
/// broker `url` when given.
pub(crate) fn amqp_env(prefix: &str, url: Option<&str>) -> Vec<(String, String)> {
    let mut env = Vec::new();
    for ep in ["DMS_AMQP_OUT", "DMS_AMQP_IN"] {
        let k = |f: &str| format!("SYNCHUB__ENDPOINTS__{ep}__{f}");
        env.push((k("NAME_PREFIX"), prefix.to_owned()));
        env.push((k("QUEUE_EXPIRES_MS"), "600000".to_owned()));
        if let Some(u) = url {
            env.push((k("URL"), u.to_owned()));
        }
    }
    env
}
