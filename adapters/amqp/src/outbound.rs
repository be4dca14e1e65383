//! The outbound publisher: one persistent message per delivery on the dealer exchange, routing
//! key from the endpoint's template, `mandatory` so an unroutable message (no DMS queue bound
//! yet) comes back instead of vanishing, and success only on the broker's publisher confirm.
//! Concurrent deliveries share one confirm-mode channel, so their confirms are pipelined.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Confirmation};
use synchub_adapter_sdk::{AdapterError, Delivery, Outbound, Outcome};

use crate::link::Link;

pub struct AmqpOutbound {
    link: Arc<Link>,
    /// The confirm-mode channel of the current connection generation.
    channel: tokio::sync::Mutex<Option<(u64, Channel)>>,
}

impl AmqpOutbound {
    pub fn new(link: Arc<Link>) -> AmqpOutbound {
        AmqpOutbound {
            link,
            channel: tokio::sync::Mutex::new(None),
        }
    }

    pub fn link(&self) -> &Arc<Link> {
        &self.link
    }

    async fn channel(&self) -> Result<(u64, Channel), String> {
        let Some(session) = self.link.current() else {
            return Err(format!(
                "not connected to the broker at {}: {}",
                self.link.config().redacted_url(),
                self.link.last_error()
            ));
        };
        let mut g = self.channel.lock().await;
        if let Some((generation, ch)) = &*g
            && *generation == session.generation
            && ch.status().connected()
        {
            return Ok((*generation, ch.clone()));
        }
        let opened = async {
            let ch = session.conn.create_channel().await?;
            ch.confirm_select(ConfirmSelectOptions::default()).await?;
            Ok::<_, lapin::Error>(ch)
        }
        .await;
        match opened {
            Ok(ch) => {
                *g = Some((session.generation, ch.clone()));
                Ok((session.generation, ch))
            }
            Err(e) => {
                let reason = format!("cannot open a confirm channel: {e}");
                self.link.report_broken(session.generation, &reason);
                Err(reason)
            }
        }
    }
}

/// Fills `{name}` placeholders from the delivery's headers. Each value becomes one routing-key
/// word, so it may not contain the topic syntax characters (`.`, `*`, `#`) or be empty: a
/// dealer code `D0001.#` must not reach every dealer's queue.
pub fn routing_key(template: &str, headers: &BTreeMap<String, String>) -> Result<String, String> {
    let mut out = String::with_capacity(template.len() + 16);
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let Some(close) = rest[open..].find('}') else {
            return Err(format!(
                "routing key template {template:?} has an unclosed '{{'"
            ));
        };
        let name = &rest[open + 1..open + close];
        let value = headers
            .get(name)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
            .ok_or_else(|| {
                format!(
                    "cannot address the message: it has no `{name}` for routing key {template:?}"
                )
            })?;
        if !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!(
                "cannot address the message: `{name}` = {value:?} is not a valid routing-key word (letters, digits, '-', '_')"
            ));
        }
        out.push_str(value);
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

fn properties(d: &Delivery) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        "synchub_message_id".into(),
        AMQPValue::LongString(d.message_id.to_string().into()),
    );
    headers.insert("synchub_attempt".into(), AMQPValue::LongUInt(d.attempt));
    for (k, v) in &d.headers {
        if k == "dealer_code" || k == "kind" || k == "record_type" {
            headers.insert(k.as_str().into(), AMQPValue::LongString(v.as_str().into()));
        }
    }
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_message_id(d.idempotency_key.as_str().into())
        .with_content_type(d.content_type.mime().into())
        .with_app_id("synchub".into())
        .with_timestamp(chrono_secs())
        .with_headers(headers);
    if let Some(c) = &d.correlation_id {
        p = p.with_correlation_id(c.as_str().into());
    }
    p
}

fn chrono_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

#[async_trait]
impl Outbound for AmqpOutbound {
    async fn deliver(&self, d: &Delivery) -> Outcome {
        let cfg = self.link.config();
        let key = match routing_key(&cfg.routing_key, &d.headers) {
            Ok(k) => k,
            Err(reason) => return Outcome::reject(reason),
        };
        let (generation, ch) = match self.channel().await {
            Ok(c) => c,
            Err(reason) => return Outcome::retry(reason),
        };
        let publish = async {
            ch.basic_publish(
                cfg.dealer_exchange.as_str().into(),
                key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &d.body,
                properties(d),
            )
            .await?
            .await
        };
        match tokio::time::timeout(cfg.confirm_timeout, publish).await {
            Err(_) => Outcome::retry(format!(
                "no publisher confirm from the broker within {} ms (routing key {key})",
                cfg.confirm_timeout.as_millis()
            )),
            Ok(Err(e)) => {
                let reason = format!("publish to {} failed: {e}", cfg.dealer_exchange);
                self.link.report_broken(generation, &reason);
                Outcome::Retry {
                    reason,
                    after: None,
                    cause_chain: vec![e.to_string()],
                }
            }
            Ok(Ok(Confirmation::Ack(None))) => Outcome::Delivered { remote_ref: None },
            Ok(Ok(Confirmation::Ack(Some(ret)))) => Outcome::Retry {
                reason: format!(
                    "unroutable: no queue is bound to exchange {} for routing key {key} (is the dealer's DMS queue declared?)",
                    cfg.dealer_exchange
                ),
                after: None,
                cause_chain: vec![format!(
                    "basic.return {} {}",
                    ret.reply_code, ret.reply_text
                )],
            },
            Ok(Ok(Confirmation::Nack(_))) => Outcome::retry(format!(
                "the broker refused the message (publisher nack) for routing key {key}"
            )),
            Ok(Ok(Confirmation::NotRequested)) => {
                // Only a channel outside confirm mode answers so; never count it as delivered.
                *self.channel.lock().await = None;
                Outcome::retry("the channel was not in confirm mode; reopening it")
            }
        }
    }

    fn is_connected(&self) -> Option<bool> {
        Some(
            self.link
                .current()
                .is_some_and(|s| s.conn.status().connected()),
        )
    }

    async fn healthcheck(&self) -> Result<(), AdapterError> {
        match self.link.current() {
            Some(s) if s.conn.status().connected() => Ok(()),
            _ => Err(AdapterError::NotConnected(self.link.last_error())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn routing_key_comes_from_the_template() {
        assert_eq!(
            routing_key(
                "dealer.{dealer_code}.{kind}",
                &h(&[("dealer_code", "D0001"), ("kind", "lead")])
            )
            .unwrap(),
            "dealer.D0001.lead"
        );
    }

    #[test]
    fn routing_key_refuses_missing_and_wildcard_words() {
        let e = routing_key("dealer.{dealer_code}.{kind}", &h(&[("kind", "lead")])).unwrap_err();
        assert!(e.contains("no `dealer_code`"), "{e}");
        let e = routing_key(
            "dealer.{dealer_code}.{kind}",
            &h(&[("dealer_code", "D0001.#"), ("kind", "lead")]),
        )
        .unwrap_err();
        assert!(e.contains("not a valid routing-key word"), "{e}");
    }
}
