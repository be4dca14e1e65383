//! Atomic uploads: data goes to `<name>.part`, the remote file is closed and its close checked,
//! and only then renamed to `<name>`, so a reader never sees a partial file under the final name.
//! A manifest (`<stem>.manifest.json`) follows the data file the same way.

use std::collections::BTreeMap;

use serde::Serialize;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};

use crate::config::ConnectionSettings;
use crate::error::SftpError;
use crate::session::{Connection, timed};

/// Upload chunk: 256 KiB local reads feeding russh-sftp's pipelined writes (CRATES hazard 11:
/// twice the throughput of 8 KiB copies).
const CHUNK: usize = 256 * 1024;

/// A file that was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Written {
    /// Final remote path.
    pub path: String,
    pub bytes: u64,
    /// Lower-case hex sha256 of the content.
    pub sha256: String,
}

/// What the manifest says about its data file, besides the file's own sha256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestInfo {
    pub entity: String,
    pub rows: u64,
    pub from_cursor: Option<String>,
    pub to_cursor: Option<String>,
}

#[derive(Serialize)]
struct ManifestJson<'a> {
    entity: &'a str,
    rows: u64,
    sha256: &'a str,
    from_cursor: Option<&'a str>,
    to_cursor: Option<&'a str>,
}

/// Writes files into one remote directory over one connection.
pub struct SftpWriter {
    conn: Connection,
    dir: String,
    overwrite: bool,
}

impl SftpWriter {
    /// Connects (host key checked) and writes into `dir`. With `overwrite` off, an existing
    /// target is an [`SftpError::Exists`].
    pub async fn connect(
        settings: &ConnectionSettings,
        dir: impl Into<String>,
        overwrite: bool,
    ) -> Result<SftpWriter, SftpError> {
        Ok(SftpWriter::on(
            Connection::open(settings).await?,
            dir,
            overwrite,
        ))
    }

    /// A writer on an already open connection.
    pub fn on(conn: Connection, dir: impl Into<String>, overwrite: bool) -> SftpWriter {
        SftpWriter {
            conn,
            dir: dir.into(),
            overwrite,
        }
    }

    /// The connection, e.g. to list or stat.
    pub fn connection(&self) -> &Connection {
        &self.conn
    }

    /// `<dir>/<name>`.
    pub fn path(&self, name: &str) -> String {
        join(&self.dir, name)
    }

    /// Uploads `data` as `<name>` (via `<name>.part`).
    pub async fn put_bytes(&self, name: &str, data: &[u8]) -> Result<Written, SftpError> {
        put(&self.conn, &self.path(name), data, self.overwrite).await
    }

    /// Uploads everything `reader` yields as `<name>` (via `<name>.part`), in bounded memory.
    pub async fn put_stream<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        reader: R,
    ) -> Result<Written, SftpError> {
        put(&self.conn, &self.path(name), reader, self.overwrite).await
    }

    /// Uploads the data file, then `<stem>.manifest.json` describing it. With overwrite off,
    /// both names are checked first, so a refused manifest never strands a new data file.
    pub async fn put_with_manifest<R: AsyncRead + Unpin>(
        &self,
        name: &str,
        reader: R,
        info: &ManifestInfo,
    ) -> Result<(Written, Written), SftpError> {
        let manifest_name = manifest_name(name);
        if !self.overwrite {
            for n in [name, manifest_name.as_str()] {
                let p = self.path(n);
                if self.conn.stat(&p).await?.is_some() {
                    return Err(SftpError::Exists { path: p });
                }
            }
        }
        let data = self.put_stream(name, reader).await?;
        let json = manifest_json(&data, info);
        let manifest = self.put_bytes(&manifest_name, &json).await?;
        Ok((data, manifest))
    }

    /// Closes the connection.
    pub async fn close(self) {
        self.conn.close().await;
    }
}

/// `DEALER_20261125.csv` → `DEALER_20261125.manifest.json`.
pub fn manifest_name(name: &str) -> String {
    let stem = match name.rfind('.') {
        Some(i) if i > 0 => &name[..i],
        _ => name,
    };
    format!("{stem}.manifest.json")
}

/// The manifest document for a written data file.
pub fn manifest_json(data: &Written, info: &ManifestInfo) -> Vec<u8> {
    let doc = ManifestJson {
        entity: &info.entity,
        rows: info.rows,
        sha256: &data.sha256,
        from_cursor: info.from_cursor.as_deref(),
        to_cursor: info.to_cursor.as_deref(),
    };
    let mut out = serde_json::to_vec_pretty(&doc).unwrap_or_default();
    out.push(b'\n');
    out
}

pub(crate) fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

/// The upload protocol itself: `.part`, checked close, size check, rename.
pub(crate) async fn put<R: AsyncRead + Unpin>(
    conn: &Connection,
    target: &str,
    mut reader: R,
    overwrite: bool,
) -> Result<Written, SftpError> {
    let exists = conn.stat(target).await?.is_some();
    if exists && !overwrite {
        return Err(SftpError::Exists {
            path: target.to_owned(),
        });
    }
    let part = format!("{target}.part");
    let t = conn.timeout();
    // A `.part` left by a crashed attempt is truncated and rewritten.
    let mut file = conn.create(&part).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; CHUNK];
    let mut total = 0u64;
    let io = |op: &str, source| SftpError::Io {
        op: format!("{op} {part}"),
        source,
    };
    loop {
        let n = reader
            .read(&mut buf)
            .await
            .map_err(|e| io("read source for", e))?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        total += n as u64;
        timed(t, || format!("write {part}"), file.write_all(&buf[..n]))
            .await?
            .map_err(|e| io("write", e))?;
    }
    // A dropped remote File closes without waiting and loses write errors (CRATES hazard 11):
    // close explicitly and treat its error as the upload's.
    timed(t, || format!("close {part}"), file.shutdown())
        .await?
        .map_err(|e| io("close", e))?;
    match conn.stat(&part).await? {
        Some((size, _)) if size == total => {}
        other => {
            return Err(SftpError::Io {
                op: format!("verify {part}"),
                source: std::io::Error::other(format!(
                    "wrote {total} bytes but the server holds {:?}",
                    other.map(|(s, _)| s)
                )),
            });
        }
    }
    if exists {
        // SFTP v3 rename never replaces; the target is absent only for this instant, and a
        // reader still never sees partial content under the final name.
        conn.remove(target).await?;
    }
    if let Err(e) = conn.rename(&part, target).await {
        if conn.stat(target).await?.is_some() && !overwrite {
            let _ = conn.remove(&part).await;
            return Err(SftpError::Exists {
                path: target.to_owned(),
            });
        }
        return Err(e);
    }
    Ok(Written {
        path: target.to_owned(),
        bytes: total,
        sha256: hex::encode(hasher.finalize()),
    })
}

/// Writes a small side file (a `.reason.txt`) in one go, close checked.
pub(crate) async fn put_small(conn: &Connection, path: &str, data: &[u8]) -> Result<(), SftpError> {
    let t = conn.timeout();
    let mut f = conn.create(path).await?;
    let io = |op: &str, source| SftpError::Io {
        op: format!("{op} {path}"),
        source,
    };
    timed(t, || format!("write {path}"), f.write_all(data))
        .await?
        .map_err(|e| io("write", e))?;
    timed(t, || format!("close {path}"), f.shutdown())
        .await?
        .map_err(|e| io("close", e))
}

/// Header-ordered CSV from JSON objects: the header is the union of keys in first-seen order;
/// strings are written as-is, other scalars in their JSON form, `null` as empty, nested values
/// as JSON text. Fields are quoted when they contain a delimiter, quote or line break. A string
/// a spreadsheet would run as a formula (starting with `=`, `+`, `-`, `@`, tab or CR, OWASP CSV
/// injection) gets a leading `'`: analysts open these files in Excel, and the text came from
/// partners. Numbers are ours to write and stay numbers (`-5`).
pub fn objects_to_csv(objects: &[serde_json::Map<String, serde_json::Value>]) -> Vec<u8> {
    let mut columns: Vec<&str> = Vec::new();
    let mut index: BTreeMap<&str, usize> = BTreeMap::new();
    for o in objects {
        for k in o.keys() {
            if !index.contains_key(k.as_str()) {
                index.insert(k, columns.len());
                columns.push(k);
            }
        }
    }
    let mut out = Vec::new();
    write_record(
        &mut out,
        columns.iter().map(|c| std::borrow::Cow::Borrowed(*c)),
    );
    for o in objects {
        write_record(
            &mut out,
            columns.iter().map(|c| match o.get(*c) {
                None | Some(serde_json::Value::Null) => std::borrow::Cow::Borrowed(""),
                Some(serde_json::Value::String(s)) if is_formula(s) => {
                    std::borrow::Cow::Owned(format!("'{s}"))
                }
                Some(serde_json::Value::String(s)) => std::borrow::Cow::Borrowed(s.as_str()),
                Some(v) => std::borrow::Cow::Owned(v.to_string()),
            }),
        );
    }
    out
}

/// Whether a spreadsheet would evaluate a cell starting like `s`.
fn is_formula(s: &str) -> bool {
    s.starts_with(['=', '+', '-', '@', '\t', '\r'])
}

fn write_record<'a>(out: &mut Vec<u8>, fields: impl Iterator<Item = std::borrow::Cow<'a, str>>) {
    for (i, f) in fields.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        if f.contains([',', '"', '\n', '\r']) {
            out.push(b'"');
            out.extend_from_slice(f.replace('"', "\"\"").as_bytes());
            out.push(b'"');
        } else {
            out.extend_from_slice(f.as_bytes());
        }
    }
    out.push(b'\n');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manifest_names_replace_the_extension() {
        assert_eq!(
            manifest_name("vehicles_20261125.csv"),
            "vehicles_20261125.manifest.json"
        );
        assert_eq!(manifest_name("noext"), "noext.manifest.json");
    }

    #[test]
    fn csv_header_is_the_union_of_keys_in_first_seen_order() {
        let objs: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(
            r#"[{"vin":"V1","n":1,"note":"a,\"b\""},{"extra":null,"vin":"V2","x":{"k":true}}]"#,
        )
        .unwrap();
        let csv = String::from_utf8(objects_to_csv(&objs)).unwrap();
        assert_eq!(
            csv,
            "vin,n,note,extra,x\nV1,1,\"a,\"\"b\"\"\",,\nV2,,,,\"{\"\"k\"\":true}\"\n"
        );
        let risky: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_str(
            r#"[{"a":"=cmd|' /C calc'!A0","b":"+1","c":"-1","d":-1,"e":"@x","f":"\tx","g":"\rx","h":"a=b"}]"#,
        )
        .unwrap();
        let neutral = String::from_utf8(objects_to_csv(&risky)).unwrap();
        assert_eq!(
            neutral,
            "a,b,c,d,e,f,g,h\n'=cmd|' /C calc'!A0,'+1,'-1,-1,'@x,'\tx,\"'\rx\",a=b\n"
        );
        // And our own reader reads it back.
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(
            crate::csv::split_fields(lines[1], ',').unwrap(),
            ["V1", "1", "a,\"b\"", "", ""]
        );
    }
}
