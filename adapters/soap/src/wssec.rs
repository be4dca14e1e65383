//! WS-Security UsernameToken (OASIS WSS 1.0 UsernameToken Profile): reading the token from a
//! `wsse:Security` header block, checking PasswordText or PasswordDigest, the Created window and
//! nonce replay; and writing the PasswordText header our outbound calls carry.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use chrono::{DateTime, Utc};
use sha1::{Digest, Sha1};
use synchub_adapter_sdk::Principal;

use crate::xml::{Cursor, Element, XmlError, escape};

/// `wsse` namespace (WSS 1.0 secext).
pub const NS_WSSE: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-secext-1.0.xsd";
/// `wsu` namespace (WSS 1.0 utility: `Created`, `Timestamp`).
pub const NS_WSU: &str =
    "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-wssecurity-utility-1.0.xsd";
/// `Password/@Type` for a clear-text password (also the meaning of an absent `Type`).
pub const PASSWORD_TEXT: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordText";
/// `Password/@Type` for Base64(SHA-1(nonce + created + password)).
pub const PASSWORD_DIGEST: &str = "http://docs.oasis-open.org/wss/2004/01/oasis-200401-wss-username-token-profile-1.0#PasswordDigest";

/// How far `Created` may be from our clock, either way.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// A UsernameToken as found in the request; every part optional until checked.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsernameToken {
    pub username: Option<String>,
    pub password: Option<String>,
    /// `Password/@Type` as sent (`None` means PasswordText).
    pub password_type: Option<String>,
    /// Base64 text of `Nonce`.
    pub nonce: Option<String>,
    pub created: Option<String>,
}

/// What a `wsse:Security` block held.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SecurityHeader {
    pub token: Option<UsernameToken>,
}

/// Reads a `wsse:Security` block (cursor just past its start tag) through its end tag. Other
/// tokens in it (Timestamp, BinarySecurityToken) are skipped; only a UsernameToken is used.
pub fn read_security(cur: &mut Cursor<'_>) -> Result<SecurityHeader, XmlError> {
    let mut out = SecurityHeader::default();
    while let Some(child) = cur.next_element()? {
        if child.name.is(NS_WSSE, "UsernameToken") && out.token.is_none() {
            out.token = Some(read_token(cur)?);
        } else {
            cur.skip_rest(1)?;
        }
    }
    Ok(out)
}

fn read_token(cur: &mut Cursor<'_>) -> Result<UsernameToken, XmlError> {
    let mut t = UsernameToken::default();
    while let Some(child) = cur.next_element()? {
        let text = |cur: &mut Cursor<'_>| -> Result<Option<String>, XmlError> {
            Ok(cur.text_content()?.ok().map(|s| s.trim().to_owned()))
        };
        let Element { name, .. } = &child;
        if name.is(NS_WSSE, "Username") {
            t.username = text(cur)?;
        } else if name.is(NS_WSSE, "Password") {
            t.password_type = child.attr(None, "Type").map(|s| s.trim().to_owned());
            t.password = cur.text_content()?.ok();
        } else if name.is(NS_WSSE, "Nonce") {
            t.nonce = text(cur)?;
        } else if name.is(NS_WSU, "Created") || name.is(NS_WSSE, "Created") {
            // WSS 1.0 puts Created in wsu; some toolkits (older WSS4J) write it in wsse.
            t.created = text(cur)?;
        } else {
            cur.skip_rest(1)?;
        }
    }
    Ok(t)
}

/// Why authentication failed. The `Display` text is the faultstring the partner sees; it never
/// says whether a user name exists.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("WS-Security: missing wsse:Security header with a UsernameToken")]
    Missing,
    #[error("WS-Security: the UsernameToken has no Username")]
    NoUsername,
    #[error("WS-Security: the UsernameToken for user '{0}' has no Password")]
    NoPassword(String),
    #[error("WS-Security: authentication failed for user '{0}'")]
    Failed(String),
    #[error("WS-Security: password type '{0}' is not accepted; use PasswordText or PasswordDigest")]
    UnsupportedType(String),
    #[error("WS-Security: PasswordDigest requires Nonce and Created")]
    DigestIncomplete,
    #[error("WS-Security: Nonce is not valid Base64")]
    BadNonce,
    #[error("WS-Security: Created '{0}' is not an xs:dateTime")]
    BadCreated(String),
    #[error(
        "WS-Security: Created {0} is more than 5 minutes away from the server time; check the client clock"
    )]
    Stale(String),
    #[error("WS-Security: this Nonce was already used; a replayed request is refused")]
    Replayed,
}

impl AuthError {
    /// The machine-readable code for the fault's `detail`.
    pub fn code(&self) -> &'static str {
        match self {
            AuthError::Missing => "missing_security_header",
            AuthError::NoUsername | AuthError::NoPassword(_) | AuthError::Failed(_) => {
                "authentication_failed"
            }
            AuthError::UnsupportedType(_) => "unsupported_password_type",
            AuthError::DigestIncomplete | AuthError::BadNonce | AuthError::BadCreated(_) => {
                "invalid_security_header"
            }
            AuthError::Stale(_) => "stale_timestamp",
            AuthError::Replayed => "replayed_nonce",
        }
    }
}

/// One account that may call the service.
#[derive(Clone)]
pub struct Account {
    pub password: String,
    pub principal: Principal,
}

/// Checks tokens against the configured accounts and remembers nonces. Shared by all requests.
pub struct Verifier {
    accounts: HashMap<String, Account>,
    accept_digest: bool,
    /// (user, nonce) → when it may be forgotten. std Mutex: never held across an .await.
    nonces: Mutex<HashMap<(String, String), DateTime<Utc>>>,
}

/// A nonce need only be remembered while its Created is still inside the window; after that the
/// request is refused as stale anyway.
const NONCE_TTL: chrono::TimeDelta = chrono::TimeDelta::seconds(2 * 5 * 60 + 60);
/// Above this many remembered nonces, expired ones are swept on insert.
const NONCE_SWEEP_AT: usize = 10_000;

impl Verifier {
    pub fn new(accounts: HashMap<String, Account>, accept_digest: bool) -> Verifier {
        Verifier {
            accounts,
            accept_digest,
            nonces: Mutex::new(HashMap::new()),
        }
    }

    /// The principal for a valid token; `now` is injected so tests can move the clock.
    pub fn verify(
        &self,
        token: Option<&UsernameToken>,
        now: DateTime<Utc>,
    ) -> Result<Principal, AuthError> {
        let t = token.ok_or(AuthError::Missing)?;
        let user = t
            .username
            .as_deref()
            .filter(|u| !u.is_empty())
            .ok_or(AuthError::NoUsername)?;
        let password = t
            .password
            .as_deref()
            .ok_or_else(|| AuthError::NoPassword(user.to_owned()))?;
        let digest = match t.password_type.as_deref() {
            None | Some("") | Some(PASSWORD_TEXT) => false,
            Some(PASSWORD_DIGEST) if self.accept_digest => true,
            Some(other) => return Err(AuthError::UnsupportedType(other.to_owned())),
        };
        let created = match t.created.as_deref() {
            Some(c) => Some(check_created(c, now)?),
            None => None,
        };
        let nonce = match t.nonce.as_deref() {
            Some(n) => Some(B64.decode(n.trim()).map_err(|_| AuthError::BadNonce)?),
            None => None,
        };
        // Unknown user and wrong password answer the same, so the fault does not reveal which
        // user names exist; the comparison runs either way.
        let account = self.accounts.get(user);
        let expected = account.map_or("", |a| a.password.as_str());
        let ok = if digest {
            let (Some(nonce), Some(created)) = (&nonce, &t.created) else {
                return Err(AuthError::DigestIncomplete);
            };
            let want = password_digest(nonce, created, expected);
            ct_eq(password.trim().as_bytes(), want.as_bytes())
        } else {
            ct_eq(password.as_bytes(), expected.as_bytes())
        };
        let account = match account {
            Some(a) if ok => a,
            _ => return Err(AuthError::Failed(user.to_owned())),
        };
        // Only nonces of verified tokens are remembered: nobody without the password can fill
        // the cache.
        if let Some(n) = &t.nonce {
            self.remember(user, n.trim(), created.unwrap_or(now), now)?;
        }
        Ok(account.principal.clone())
    }

    fn remember(
        &self,
        user: &str,
        nonce: &str,
        created: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<(), AuthError> {
        let mut seen = self.nonces.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= NONCE_SWEEP_AT {
            seen.retain(|_, until| *until > now);
        }
        let key = (user.to_owned(), nonce.to_owned());
        match seen.get(&key) {
            Some(until) if *until > now => Err(AuthError::Replayed),
            _ => {
                seen.insert(key, created.max(now) + NONCE_TTL);
                Ok(())
            }
        }
    }
}

fn check_created(created: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, AuthError> {
    let at = DateTime::parse_from_rfc3339(created.trim())
        .map_err(|_| AuthError::BadCreated(created.to_owned()))?
        .with_timezone(&Utc);
    let skew = (at - now).abs().to_std().unwrap_or(Duration::MAX);
    if skew > MAX_CLOCK_SKEW {
        return Err(AuthError::Stale(created.to_owned()));
    }
    Ok(at)
}

/// Base64(SHA-1(nonce + created + password)), as the UsernameToken Profile 1.0 defines it.
pub fn password_digest(nonce: &[u8], created: &str, password: &str) -> String {
    let mut h = Sha1::new();
    h.update(nonce);
    h.update(created.as_bytes());
    h.update(password.as_bytes());
    B64.encode(h.finalize())
}

/// Compares without an early exit, so response time says nothing about how much matched.
fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, x) in a.iter().enumerate() {
        diff |= usize::from(x ^ b.get(i).copied().unwrap_or(0));
    }
    diff == 0
}

/// What replaces a password in a journaled body.
pub const REDACTED: &str = "***";

/// The body with the content of every `Password` element (any prefix) replaced by [`REDACTED`],
/// or `None` when there is none. The journal keeps what partners sent, but not their secrets
/// (SDK rule 5): a PasswordText is the credential itself, and a PasswordDigest can be attacked
/// offline. A plain byte scan, so it also works on bodies refused as malformed or cut off.
pub fn redact_passwords(body: &[u8]) -> Option<Vec<u8>> {
    let mut out: Option<Vec<u8>> = None;
    let mut copied = 0;
    let mut i = 0;
    while let Some(lt) = body[i..].iter().position(|&b| b == b'<').map(|p| p + i) {
        let name_end = body[lt + 1..]
            .iter()
            .position(|&b| b.is_ascii_whitespace() || b == b'>' || b == b'/')
            .map_or(body.len(), |p| p + lt + 1);
        let name = &body[lt + 1..name_end];
        let local = name.rsplit(|&b| b == b':').next().unwrap_or_default();
        i = lt + 1;
        if local != b"Password" {
            continue;
        }
        let Some(gt) = body[name_end..]
            .iter()
            .position(|&b| b == b'>')
            .map(|p| p + name_end)
        else {
            break;
        };
        if body[gt - 1] == b'/' {
            i = gt;
            continue;
        }
        let end = body[gt..]
            .windows(2)
            .position(|w| w == b"</")
            .map_or(body.len(), |p| p + gt);
        let buf = out.get_or_insert_with(|| Vec::with_capacity(body.len()));
        buf.extend_from_slice(&body[copied..=gt]);
        buf.extend_from_slice(REDACTED.as_bytes());
        copied = end;
        i = end;
    }
    out.map(|mut buf| {
        buf.extend_from_slice(&body[copied..]);
        buf
    })
}

/// The `wsse:Security` header block with a PasswordText UsernameToken, for outbound calls.
/// `mustUnderstand` is set so a partner that ignores WS-Security fails loudly instead of
/// accepting unauthenticated calls.
pub fn security_header(soap_prefix: &str, username: &str, password: &str) -> String {
    format!(
        "<wsse:Security {soap_prefix}:mustUnderstand=\"1\" xmlns:wsse=\"{NS_WSSE}\"><wsse:UsernameToken><wsse:Username>{}</wsse:Username><wsse:Password Type=\"{PASSWORD_TEXT}\">{}</wsse:Password></wsse:UsernameToken></wsse:Security>",
        escape(username),
        escape(password)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T08:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    fn verifier() -> Verifier {
        let osm = Principal {
            system: "osm".into(),
            dealer_code: None,
        };
        Verifier::new(
            HashMap::from([(
                "osm".to_owned(),
                Account {
                    password: "demo-osm".into(),
                    principal: osm,
                },
            )]),
            true,
        )
    }

    fn text(user: &str, pw: &str) -> UsernameToken {
        UsernameToken {
            username: Some(user.into()),
            password: Some(pw.into()),
            ..Default::default()
        }
    }

    fn digest(nonce: &[u8], created: &str, pw: &str) -> UsernameToken {
        UsernameToken {
            username: Some("osm".into()),
            password: Some(password_digest(nonce, created, pw)),
            password_type: Some(PASSWORD_DIGEST.into()),
            nonce: Some(B64.encode(nonce)),
            created: Some(created.into()),
        }
    }

    #[test]
    fn digest_matches_the_profile_example() {
        // Computed independently with Python:
        // b64encode(sha1(b64decode(nonce) + b"2010-09-16T07:50:45Z" + b"bob").digest())
        let nonce = B64.decode("LKqI6G/AikKCQrN0zqZFlg==").unwrap();
        assert_eq!(
            password_digest(&nonce, "2010-09-16T07:50:45Z", "bob"),
            "DMXvXPmGZu9/0evbhcyTgZ2jlE4="
        );
    }

    #[test]
    fn password_text_good_wrong_missing() {
        let v = verifier();
        assert_eq!(
            v.verify(Some(&text("osm", "demo-osm")), now())
                .unwrap()
                .system,
            "osm"
        );
        assert_eq!(
            v.verify(Some(&text("osm", "nope")), now()).unwrap_err(),
            AuthError::Failed("osm".into())
        );
        // An unknown user reads exactly like a wrong password.
        assert_eq!(
            v.verify(Some(&text("mallory", "demo-osm")), now())
                .unwrap_err()
                .code(),
            "authentication_failed"
        );
        assert_eq!(v.verify(None, now()).unwrap_err(), AuthError::Missing);
        let mut t = text("osm", "x");
        t.password = None;
        assert_eq!(
            v.verify(Some(&t), now()).unwrap_err(),
            AuthError::NoPassword("osm".into())
        );
    }

    #[test]
    fn password_digest_good_replayed_stale() {
        let v = verifier();
        let created = "2026-11-25T08:01:00Z";
        let t = digest(b"0123456789abcdef", created, "demo-osm");
        assert!(v.verify(Some(&t), now()).is_ok());
        assert_eq!(v.verify(Some(&t), now()).unwrap_err(), AuthError::Replayed);
        // Same nonce, wrong password: authentication fails first and nothing is remembered.
        let bad = digest(b"another-nonce---", created, "wrong");
        assert_eq!(
            v.verify(Some(&bad), now()).unwrap_err().code(),
            "authentication_failed"
        );
        assert!(
            v.verify(
                Some(&digest(b"another-nonce---", created, "demo-osm")),
                now()
            )
            .is_ok()
        );

        let stale = digest(b"fresh-nonce-0001", "2026-11-25T07:54:59Z", "demo-osm");
        assert_eq!(
            v.verify(Some(&stale), now()).unwrap_err().code(),
            "stale_timestamp"
        );
        let future = digest(b"fresh-nonce-0002", "2026-11-25T08:05:01Z", "demo-osm");
        assert_eq!(
            v.verify(Some(&future), now()).unwrap_err().code(),
            "stale_timestamp"
        );
        let edge = digest(b"fresh-nonce-0003", "2026-11-25T07:55:00+00:00", "demo-osm");
        assert!(v.verify(Some(&edge), now()).is_ok());
    }

    #[test]
    fn digest_needs_nonce_and_created_and_may_be_switched_off() {
        let v = verifier();
        let mut t = digest(b"n", "2026-11-25T08:00:00Z", "demo-osm");
        t.nonce = None;
        assert_eq!(
            v.verify(Some(&t), now()).unwrap_err(),
            AuthError::DigestIncomplete
        );
        let strict = Verifier::new(verifier().accounts, false);
        let t = digest(b"n2", "2026-11-25T08:00:00Z", "demo-osm");
        assert_eq!(
            strict.verify(Some(&t), now()).unwrap_err().code(),
            "unsupported_password_type"
        );
    }

    #[test]
    fn nonces_expire() {
        let v = verifier();
        let t = digest(b"nonce-x", "2026-11-25T08:00:00Z", "demo-osm");
        assert!(v.verify(Some(&t), now()).is_ok());
        // Long after, the same token is stale rather than "replayed"; the cache entry may go.
        let later = now() + chrono::TimeDelta::minutes(30);
        assert_eq!(
            v.verify(Some(&t), later).unwrap_err().code(),
            "stale_timestamp"
        );
    }

    #[test]
    fn passwords_are_redacted_whatever_the_prefix_or_shape() {
        let body = br#"<s:H><o:Password Type="x#PasswordText">demo-osm</o:Password><Password>p2</Password><oldPassword>keep</oldPassword><wsse:Password/><x:Password>cut"#;
        let out = String::from_utf8(redact_passwords(body).unwrap()).unwrap();
        assert_eq!(
            out,
            r#"<s:H><o:Password Type="x#PasswordText">***</o:Password><Password>***</Password><oldPassword>keep</oldPassword><wsse:Password/><x:Password>***"#
        );
        assert_eq!(redact_passwords(b"<a><b>no secret</b></a>"), None);
    }

    #[test]
    fn header_escapes_credentials() {
        let h = security_header("soap", "a<b", "p&\"q");
        assert!(h.contains("<wsse:Username>a&lt;b</wsse:Username>"), "{h}");
        assert!(h.contains(">p&amp;&quot;q</wsse:Password>"), "{h}");
        assert!(h.contains(PASSWORD_TEXT));
    }
}
