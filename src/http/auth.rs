//! Operator authentication for the ops and CRM APIs: `Authorization: Bearer <token>`, looked up
//! by the token's SHA-256 (tokens are never stored in clear), and the dealer scope that follows.

use std::collections::HashMap;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use super::AppState;
use super::error::ApiError;
use crate::settings::{OperatorConfig, Role};

#[derive(Debug, Clone)]
pub struct Operator {
    pub user: String,
    pub role: Role,
    pub dealer_code: Option<String>,
}

impl Operator {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// The dealer whose data this operator is confined to; `None` for headquarters.
    pub fn dealer_scope(&self) -> Option<&str> {
        match self.role {
            Role::Admin => None,
            // A dealer IT user without a dealer sees nothing rather than everything.
            _ => Some(self.dealer_code.as_deref().unwrap_or("\u{0}")),
        }
    }

    pub fn may_see(&self, dealer: Option<&str>) -> bool {
        match self.dealer_scope() {
            None => true,
            Some(scope) => dealer == Some(scope),
        }
    }
}

/// Operators by token hash.
#[derive(Debug, Default)]
pub struct Operators {
    by_hash: HashMap<String, Operator>,
    /// User name → token hash (both are unique, `settings` checks that), for dashboard sessions,
    /// which name their operator and are tied to its current token.
    hash_by_user: HashMap<String, String>,
}

impl Operators {
    pub fn from_config(ops: &[OperatorConfig]) -> Operators {
        Operators {
            by_hash: ops
                .iter()
                .map(|o| {
                    (
                        o.token_sha256.to_ascii_lowercase(),
                        Operator {
                            user: o.user.clone(),
                            role: o.role,
                            dealer_code: o.dealer_code.clone(),
                        },
                    )
                })
                .collect(),
            hash_by_user: ops
                .iter()
                .map(|o| (o.user.clone(), o.token_sha256.to_ascii_lowercase()))
                .collect(),
        }
    }

    pub fn by_token(&self, token: &str) -> Option<&Operator> {
        self.by_hash
            .get(&hex::encode(Sha256::digest(token.as_bytes())))
    }

    /// The configured operator named `user` with its token's sha256 (lower-case hex).
    pub fn by_user(&self, user: &str) -> Option<(&Operator, &str)> {
        let hash = self.hash_by_user.get(user)?;
        self.by_hash.get(hash).map(|o| (o, hash.as_str()))
    }

    /// Dashboard login: user name and token must belong together.
    pub fn login(&self, user: &str, token: &str) -> Option<&Operator> {
        self.by_token(token).filter(|o| o.user == user)
    }
}

impl FromRequestParts<AppState> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let header = parts
            .headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| {
                ApiError::unauthorized("missing Authorization: Bearer <operator token>")
            })?;
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .ok_or_else(|| {
                ApiError::unauthorized("Authorization must be 'Bearer <operator token>'")
            })?;
        state
            .operators
            .by_token(token.trim())
            .cloned()
            .ok_or_else(|| ApiError::unauthorized("unknown operator token"))
    }
}
