//! Admin API keys: created by `operator keys create`, shown once, stored only as a SHA-256 hash.
//!
//! A key looks like `mtk_<12 hex id>_<43 base64url secret>`. The id part is stored in clear as
//! `key_prefix` to find the row; the whole key is hashed and compared in constant time.

use crate::schema::api_keys;
use anyhow::Context;
use base64::Engine;
use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use rand::RngCore;
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read histories, search, stats.
    Read,
    /// Everything a read key may, plus changes (keys, suppressions, replays, cancellations).
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Admin => "admin",
        }
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "read" => Ok(Role::Read),
            "admin" => Ok(Role::Admin),
            other => Err(format!("unknown role {other:?}: use \"read\" or \"admin\"")),
        }
    }
}

/// Who is calling: the scope of a verified key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub key_id: Uuid,
    /// `None`: the key may see every tenant.
    pub tenant: Option<String>,
    pub role: Role,
}

impl Principal {
    /// Whether this key may see data of `tenant`.
    pub fn may_see(&self, tenant: &str) -> bool {
        self.tenant.as_deref().is_none_or(|own| own == tenant)
    }
}

#[derive(Debug, Clone, Serialize, Queryable, Selectable)]
#[diesel(table_name = api_keys)]
pub struct KeyInfo {
    pub id: Uuid,
    pub name: String,
    pub key_prefix: String,
    pub tenant: Option<String>,
    pub role: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub revoked_at: Option<DateTime<Utc>>,
}

fn hash(key: &str) -> Vec<u8> {
    Sha256::digest(key.as_bytes()).to_vec()
}

/// Creates a key; returns its record and the key itself (shown once, never stored).
pub async fn create(
    conn: &mut AsyncPgConnection,
    name: &str,
    tenant: Option<&str>,
    role: Role,
) -> anyhow::Result<(KeyInfo, String)> {
    let mut id_bytes = [0u8; 6];
    let mut secret = [0u8; 32];
    rand::rng().fill_bytes(&mut id_bytes);
    rand::rng().fill_bytes(&mut secret);
    let prefix = format!("mtk_{}", hex::encode(id_bytes));
    let key = format!(
        "{prefix}_{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret)
    );
    let info = diesel::insert_into(api_keys::table)
        .values((
            api_keys::id.eq(Uuid::now_v7()),
            api_keys::name.eq(name),
            api_keys::key_prefix.eq(&prefix),
            api_keys::key_hash.eq(hash(&key)),
            api_keys::tenant.eq(tenant),
            api_keys::role.eq(role.as_str()),
        ))
        .returning(KeyInfo::as_returning())
        .get_result(conn)
        .await
        .context("cannot store the new API key")?;
    // Keys are managed from the command line only, so the actor is `cli`.
    crate::audit::record(
        conn,
        crate::audit::Actor::Cli,
        "key.create",
        tenant,
        &prefix,
        serde_json::json!({"name": name, "role": role.as_str()}),
    )
    .await
    .context("cannot write the audit entry")?;
    Ok((info, key))
}

pub async fn list(conn: &mut AsyncPgConnection) -> anyhow::Result<Vec<KeyInfo>> {
    Ok(api_keys::table
        .select(KeyInfo::as_select())
        .order(api_keys::created_at)
        .load(conn)
        .await?)
}

/// Revokes a key by its prefix (`mtk_…`) or id; returns whether one was revoked.
pub async fn revoke(conn: &mut AsyncPgConnection, prefix_or_id: &str) -> anyhow::Result<bool> {
    let by_id = Uuid::parse_str(prefix_or_id).ok();
    let updated = diesel::update(api_keys::table)
        .filter(
            api_keys::key_prefix
                .eq(prefix_or_id)
                .or(api_keys::id.nullable().eq(by_id)),
        )
        .filter(api_keys::revoked_at.is_null())
        .set(api_keys::revoked_at.eq(diesel::dsl::now))
        .execute(conn)
        .await?;
    if updated > 0 {
        crate::audit::record(
            conn,
            crate::audit::Actor::Cli,
            "key.revoke",
            None,
            prefix_or_id,
            serde_json::json!({}),
        )
        .await?;
    }
    Ok(updated > 0)
}

/// (id, hash, tenant, role, revoked_at) of a stored key.
type KeyRow = (Uuid, Vec<u8>, Option<String>, String, Option<DateTime<Utc>>);

/// Verifies a presented key. `None` for unknown, malformed, mismatching or revoked keys — the
/// caller answers all of them alike (401), so nothing tells which part was wrong.
pub async fn authenticate(
    conn: &mut AsyncPgConnection,
    presented: &str,
) -> anyhow::Result<Option<Principal>> {
    let Some(prefix) = key_prefix(presented) else {
        return Ok(None);
    };
    let row: Option<KeyRow> = api_keys::table
        .filter(api_keys::key_prefix.eq(prefix))
        .select((
            api_keys::id,
            api_keys::key_hash,
            api_keys::tenant,
            api_keys::role,
            api_keys::revoked_at,
        ))
        .first(conn)
        .await
        .optional()?;
    let Some((id, stored_hash, tenant, role, revoked_at)) = row else {
        return Ok(None);
    };
    let matches: bool = hash(presented).ct_eq(&stored_hash).into();
    if !matches || revoked_at.is_some() {
        return Ok(None);
    }
    let Ok(role) = role.parse() else {
        return Ok(None);
    };
    // Best effort: a failure to note the use must not refuse a valid key.
    let _ = diesel::update(api_keys::table.find(id))
        .set(api_keys::last_used_at.eq(diesel::dsl::now))
        .execute(conn)
        .await;
    Ok(Some(Principal {
        key_id: id,
        tenant,
        role,
    }))
}

/// The `mtk_<id>` part of a well-formed key.
fn key_prefix(presented: &str) -> Option<&str> {
    let rest = presented.strip_prefix("mtk_")?;
    let (id, secret) = rest.split_once('_')?;
    let well_formed = id.len() == 12
        && id.bytes().all(|b| b.is_ascii_hexdigit())
        && (40..=64).contains(&secret.len());
    well_formed.then(|| &presented[..4 + id.len()])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_come_only_from_well_formed_keys() {
        let key = format!("mtk_0123456789ab_{}", "A".repeat(43));
        assert_eq!(key_prefix(&key), Some("mtk_0123456789ab"));
        assert_eq!(key_prefix("mtk_0123456789ab"), None);
        assert_eq!(key_prefix(&format!("mtk_0123_{}", "A".repeat(43))), None);
        assert_eq!(key_prefix("Bearer something"), None);
    }

    #[test]
    fn tenant_scope() {
        let all = Principal {
            key_id: Uuid::nil(),
            tenant: None,
            role: Role::Read,
        };
        let acme = Principal {
            tenant: Some("acme".into()),
            ..all.clone()
        };
        assert!(all.may_see("globex"));
        assert!(acme.may_see("acme"));
        assert!(!acme.may_see("globex"));
    }
}
