//! The audit log: who changed what, when. Each mutation writes its entry in the transaction that
//! makes the change, so the log holds an entry exactly when the change happened. API changes
//! name the key (its id and tenant scope); key management from the command line names `cli`.
//! A tenant-scoped admin key reads its tenant's entries through `GET /v1/audit`; all-tenant
//! keys read everything.

use crate::keys::Principal;
use diesel::sql_types::{BigInt, Jsonb, Nullable, Text, Timestamptz};
use diesel::{QueryableByName, sql_query};
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use serde::Serialize;

/// Who made a change.
#[derive(Debug, Clone)]
pub enum Actor<'a> {
    Key(&'a Principal),
    Cli,
}

impl Actor<'_> {
    fn name(&self) -> String {
        match self {
            Actor::Key(p) => p.key_id.to_string(),
            Actor::Cli => "cli".to_owned(),
        }
    }

    fn tenant(&self) -> Option<String> {
        match self {
            Actor::Key(p) => p.tenant.clone(),
            Actor::Cli => None,
        }
    }
}

/// Writes one entry; call it inside the transaction that makes the change.
pub async fn record(
    conn: &mut AsyncPgConnection,
    actor: Actor<'_>,
    action: &str,
    tenant: Option<&str>,
    target: &str,
    details: serde_json::Value,
) -> diesel::QueryResult<()> {
    sql_query(
        "INSERT INTO audit_log (actor, actor_tenant, action, tenant, target, details)
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind::<Text, _>(actor.name())
    .bind::<Nullable<Text>, _>(actor.tenant())
    .bind::<Text, _>(action)
    .bind::<Nullable<Text>, _>(tenant)
    .bind::<Text, _>(target)
    .bind::<Jsonb, _>(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// Writes one entry per (tenant, target, details), all with the same actor and action, in one
/// statement: a bulk change of a hundred items costs one round trip, not a hundred.
pub async fn record_many(
    conn: &mut AsyncPgConnection,
    actor: Actor<'_>,
    action: &str,
    entries: &[(Option<String>, String, serde_json::Value)],
) -> diesel::QueryResult<()> {
    if entries.is_empty() {
        return Ok(());
    }
    let tenants: Vec<Option<String>> = entries.iter().map(|e| e.0.clone()).collect();
    let targets: Vec<String> = entries.iter().map(|e| e.1.clone()).collect();
    let details: Vec<serde_json::Value> = entries.iter().map(|e| e.2.clone()).collect();
    sql_query(
        "INSERT INTO audit_log (actor, actor_tenant, action, tenant, target, details)
         SELECT $1, $2, $3, t.tenant, t.target, t.details
           FROM unnest($4::text[], $5::text[], $6::jsonb[]) WITH ORDINALITY
                AS t (tenant, target, details, n)
          ORDER BY t.n",
    )
    .bind::<Text, _>(actor.name())
    .bind::<Nullable<Text>, _>(actor.tenant())
    .bind::<Text, _>(action)
    .bind::<diesel::sql_types::Array<Nullable<Text>>, _>(tenants)
    .bind::<diesel::sql_types::Array<Text>, _>(targets)
    .bind::<diesel::sql_types::Array<Jsonb>, _>(details)
    .execute(conn)
    .await?;
    Ok(())
}

/// One entry as the API shows it.
#[derive(Debug, Serialize, QueryableByName, utoipa::ToSchema)]
pub struct AuditEntry {
    #[diesel(sql_type = BigInt)]
    pub id: i64,
    #[diesel(sql_type = Timestamptz)]
    pub at: chrono::DateTime<chrono::Utc>,
    #[diesel(sql_type = Text)]
    pub actor: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub actor_tenant: Option<String>,
    #[diesel(sql_type = Text)]
    pub action: String,
    #[diesel(sql_type = Nullable<Text>)]
    pub tenant: Option<String>,
    #[diesel(sql_type = Text)]
    pub target: String,
    #[diesel(sql_type = Jsonb)]
    pub details: serde_json::Value,
}

/// A page of entries newest first, below `before` (an entry id), seen by `principal`: a tenant
/// key only its tenant's entries (entries about no tenant are for all-tenant keys only).
pub async fn list(
    conn: &mut AsyncPgConnection,
    principal: &Principal,
    before: Option<i64>,
    limit: i64,
) -> diesel::QueryResult<Vec<AuditEntry>> {
    sql_query(
        "SELECT id, at, actor, actor_tenant, action, tenant, target, details FROM audit_log
          WHERE ($1::text IS NULL OR tenant = $1) AND ($2::bigint IS NULL OR id < $2)
          ORDER BY id DESC
          LIMIT $3",
    )
    .bind::<Nullable<Text>, _>(principal.tenant.clone())
    .bind::<Nullable<BigInt>, _>(before)
    .bind::<BigInt, _>(limit)
    .load(conn)
    .await
}
