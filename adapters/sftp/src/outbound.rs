//! Outbound: each delivery's JSON body (an object or an array of objects) becomes one CSV file
//! `<prefix>_<message_id>.csv`, uploaded atomically; optionally followed by its manifest.
//!
//! One connection per delivery, on purpose: one attempt is then exactly one connection, a dead
//! cached session can never turn into a spurious failed attempt, and SFTP deliveries are files
//! (a nightly push writes a handful), so the handshake cost does not matter.

use async_trait::async_trait;
use synchub_adapter_sdk::{AdapterError, Delivery, Outbound, Outcome};

use crate::classify::classify;
use crate::config::SftpOutboundConfig;
use crate::error::SftpError;
use crate::session::Connection;
use crate::writer::{self, ManifestInfo, SftpWriter, Written};

/// Largest existing file read back to compare with a delivery (identical = already delivered).
const MAX_COMPARE_BYTES: u64 = 256 * 1024 * 1024;

/// The `Outbound` for one SFTP target directory.
pub struct SftpOutbound {
    config: SftpOutboundConfig,
}

impl SftpOutbound {
    pub fn new(config: SftpOutboundConfig) -> SftpOutbound {
        SftpOutbound { config }
    }

    /// The file name a delivery is written under.
    pub fn file_name(&self, delivery: &Delivery) -> String {
        format!("{}_{}.csv", self.config.prefix, delivery.message_id)
    }

    async fn upload(
        &self,
        delivery: &Delivery,
        csv: &[u8],
        rows: u64,
    ) -> Result<Outcome, SftpError> {
        let name = self.file_name(delivery);
        let conn = Connection::open(&self.config.connection()).await?;
        let w = SftpWriter::on(conn, self.config.dir.clone(), self.config.overwrite);
        let result = self.upload_on(&w, delivery, &name, csv, rows).await;
        w.close().await;
        result
    }

    async fn upload_on(
        &self,
        w: &SftpWriter,
        delivery: &Delivery,
        name: &str,
        csv: &[u8],
        rows: u64,
    ) -> Result<Outcome, SftpError> {
        let written = match w.put_bytes(name, csv).await {
            Ok(written) => written,
            Err(SftpError::Exists { path }) => {
                // A crash between upload and recording the attempt leaves our own file behind:
                // identical content means this delivery already happened.
                let there = w.connection().read_small(&path, MAX_COMPARE_BYTES).await?;
                if there == csv {
                    return Ok(Outcome::Delivered {
                        remote_ref: Some(path),
                    });
                }
                return Ok(Outcome::reject(format!(
                    "{path} already exists with different content ({} bytes there, {} to write); \
                     overwrite is off",
                    there.len(),
                    csv.len()
                )));
            }
            Err(e) => return Err(e),
        };
        if self.config.manifest {
            self.put_manifest(w, delivery, name, &written, rows).await?;
        }
        Ok(Outcome::Delivered {
            remote_ref: Some(written.path),
        })
    }

    async fn put_manifest(
        &self,
        w: &SftpWriter,
        delivery: &Delivery,
        name: &str,
        data: &Written,
        rows: u64,
    ) -> Result<(), SftpError> {
        let info = ManifestInfo {
            entity: delivery
                .headers
                .get("entity")
                .cloned()
                .unwrap_or_else(|| self.config.prefix.clone()),
            rows,
            from_cursor: delivery.headers.get("from_cursor").cloned(),
            to_cursor: delivery.headers.get("to_cursor").cloned(),
        };
        let json = writer::manifest_json(data, &info);
        match w.put_bytes(&writer::manifest_name(name), &json).await {
            // The same manifest from an earlier attempt of this delivery.
            Err(SftpError::Exists { path })
                if w.connection().read_small(&path, MAX_COMPARE_BYTES).await? == json =>
            {
                Ok(())
            }
            other => other.map(|_| ()),
        }
    }
}

/// The delivery body as objects, or why it cannot become a CSV file.
fn objects(body: &[u8]) -> Result<Vec<serde_json::Map<String, serde_json::Value>>, String> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        format!("body is not JSON ({e}); expected an object or an array of objects")
    })?;
    match value {
        serde_json::Value::Object(o) => Ok(vec![o]),
        serde_json::Value::Array(items) if items.is_empty() => {
            Err("body is an empty array: no rows to write".to_owned())
        }
        serde_json::Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, v)| match v {
                serde_json::Value::Object(o) => Ok(o),
                other => Err(format!(
                    "element {i} of the body is {}, not an object",
                    json_kind(&other)
                )),
            })
            .collect(),
        other => Err(format!(
            "body is {}; expected an object or an array of objects",
            json_kind(&other)
        )),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[async_trait]
impl Outbound for SftpOutbound {
    async fn deliver(&self, delivery: &Delivery) -> Outcome {
        let objs = match objects(&delivery.body) {
            Ok(o) => o,
            Err(reason) => return Outcome::reject(reason),
        };
        let csv = writer::objects_to_csv(&objs);
        match self.upload(delivery, &csv, objs.len() as u64).await {
            Ok(outcome) => outcome,
            Err(e) => {
                tracing::warn!(endpoint = %self.config.endpoint_id, message_id = %delivery.message_id, error = %e, "SFTP delivery failed.");
                classify(&e)
            }
        }
    }

    /// Connects (host key, login) and stats the target directory; writes nothing.
    async fn healthcheck(&self) -> Result<(), AdapterError> {
        let conn = Connection::open(&self.config.connection()).await?;
        let dir = conn.stat(&self.config.dir).await;
        conn.close().await;
        match dir? {
            Some(_) => Ok(()),
            None => Err(AdapterError::Config(format!(
                "dir: {} does not exist on {}:{}",
                self.config.dir, self.config.host, self.config.port
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::objects;

    #[test]
    fn bodies_must_be_objects() {
        assert_eq!(objects(br#"{"a":1}"#).unwrap().len(), 1);
        assert_eq!(objects(br#"[{"a":1},{"b":2}]"#).unwrap().len(), 2);
        assert!(objects(b"[1]").unwrap_err().contains("element 0"));
        assert!(objects(b"\"x\"").unwrap_err().contains("a string"));
        assert!(objects(b"[]").unwrap_err().contains("empty"));
        assert!(objects(b"<xml/>").unwrap_err().contains("not JSON"));
    }
}
