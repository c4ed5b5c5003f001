//! Who may write mail for which tenant, checked at intake after the contract.
//!
//! * **Tenant binding** (`MAILTRAIL_TENANT_BINDING=true`): a request's tenant must be one its
//!   publisher's broker user is bound to (`MAILTRAIL_TENANT_USERS`, `user=tenant` pairs, `*` for
//!   any tenant). The publisher is the AMQP `user_id` property, which RabbitMQ checks against the
//!   connection's user when it is set; a request without it is refused, so an app cannot write
//!   another tenant's mail by editing a JSON field or by leaving the property out.
//! * **From domains** (`MAILTRAIL_TENANT_FROM_DOMAINS`): a tenant listed there may only send from
//!   those domains or their subdomains; unlisted tenants are not restricted.
//!
//! A replayed dead letter keeps its original publisher: the operator republishes it with its own
//! broker user as `user_id` and the recorded publisher in `x-mailtrail-original-publisher`, and
//! that header is believed only on a message whose `user_id` is the operator's own user.

use mailtrail_broker::{Incoming, header_string};
use mailtrail_shared::contract::{MailboxRequest, RejectReason, Rejection};
use mailtrail_shared::headers;
use std::collections::HashMap;

/// The tenants a broker user may write for.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Bound {
    Any,
    Tenants(Vec<String>),
}

#[derive(Debug, Clone, Default)]
pub struct TenantPolicy {
    /// `None`: binding off.
    users: Option<HashMap<String, Bound>>,
    from_domains: HashMap<String, Vec<String>>,
    /// The operator's own broker user, the only one whose replays carry a publisher.
    operator_user: String,
}

impl TenantPolicy {
    /// Parses the settings; an error names the setting and what is wrong with it.
    pub fn from_settings(
        binding: bool,
        users: &str,
        from_domains: &str,
        operator_user: &str,
    ) -> anyhow::Result<TenantPolicy> {
        let users = if binding {
            let mut map: HashMap<String, Bound> = HashMap::new();
            for pair in users.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                let Some((user, tenant)) = pair.split_once('=') else {
                    anyhow::bail!(
                        "MAILTRAIL_TENANT_USERS: {pair:?} is not user=tenant (or user=*)"
                    );
                };
                let (user, tenant) = (user.trim().to_owned(), tenant.trim().to_owned());
                if user.is_empty() || tenant.is_empty() {
                    anyhow::bail!("MAILTRAIL_TENANT_USERS: {pair:?} has an empty side");
                }
                let entry = map
                    .entry(user)
                    .or_insert_with(|| Bound::Tenants(Vec::new()));
                match (tenant.as_str(), entry) {
                    ("*", entry) => *entry = Bound::Any,
                    (_, Bound::Any) => {}
                    (_, Bound::Tenants(list)) => list.push(tenant),
                }
            }
            if map.is_empty() {
                anyhow::bail!(
                    "MAILTRAIL_TENANT_BINDING is on but MAILTRAIL_TENANT_USERS binds no broker \
                     user: every request would be refused; set e.g. app-acme=acme"
                );
            }
            Some(map)
        } else {
            None
        };
        let mut domains: HashMap<String, Vec<String>> = HashMap::new();
        for part in from_domains
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let Some((tenant, list)) = part.split_once('=') else {
                anyhow::bail!(
                    "MAILTRAIL_TENANT_FROM_DOMAINS: {part:?} is not tenant=domain|domain"
                );
            };
            let list: Vec<String> = list
                .split('|')
                .map(|d| d.trim().trim_start_matches('@').to_ascii_lowercase())
                .filter(|d| !d.is_empty())
                .collect();
            if list.is_empty() {
                anyhow::bail!("MAILTRAIL_TENANT_FROM_DOMAINS: {part:?} lists no domain");
            }
            domains
                .entry(tenant.trim().to_owned())
                .or_default()
                .extend(list);
        }
        Ok(TenantPolicy {
            users,
            from_domains: domains,
            operator_user: operator_user.to_owned(),
        })
    }

    /// The broker user that published `message`: its `user_id`, or for the operator's own
    /// replay the recorded original publisher.
    fn publisher_of(&self, message: &Incoming) -> Option<String> {
        let user = message.user_id()?;
        if user == self.operator_user
            && let Some(original) = header_string(&message.properties, headers::ORIGINAL_PUBLISHER)
        {
            return Some(original);
        }
        Some(user.to_owned())
    }

    /// Refuses `request` when its publisher may not write for its tenant or its `from` is
    /// outside the tenant's domains.
    pub fn check(&self, message: &Incoming, request: &MailboxRequest) -> Result<(), Rejection> {
        let refuse = |reason, detail: String| Rejection {
            reason,
            detail,
            tenant: Some(request.tenant.clone()),
            key: Some(request.key.clone()),
        };
        if let Some(users) = &self.users {
            let Some(publisher) = self.publisher_of(message) else {
                return Err(refuse(
                    RejectReason::TenantNotAllowed,
                    "tenant binding is on: publish with the AMQP user_id property set to your \
                     broker user"
                        .into(),
                ));
            };
            let allowed = match users.get(&publisher) {
                Some(Bound::Any) => true,
                Some(Bound::Tenants(list)) => list.contains(&request.tenant),
                None => false,
            };
            if !allowed {
                return Err(refuse(
                    RejectReason::TenantNotAllowed,
                    format!(
                        "broker user {publisher:?} may not write mail for tenant {:?} \
                         (MAILTRAIL_TENANT_USERS)",
                        request.tenant
                    ),
                ));
            }
        }
        if let Some(allowed) = self.from_domains.get(&request.tenant) {
            let domain = request
                .from
                .canonical
                .rsplit_once('@')
                .map(|(_, d)| d)
                .unwrap_or_default();
            let fits = allowed
                .iter()
                .any(|d| domain == d || domain.ends_with(&format!(".{d}")));
            if !fits {
                return Err(refuse(
                    RejectReason::FromDomainNotAllowed,
                    format!(
                        "from domain {domain:?} is not one of tenant {:?}'s: {}",
                        request.tenant,
                        allowed.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_parse_and_bad_ones_say_what_is_wrong() {
        let policy = TenantPolicy::from_settings(
            true,
            "app-acme=acme, ops=*, app-two=acme, app-two=globex",
            "acme=acme.test|@Acme.COM; globex=globex.io",
            "operator",
        )
        .expect("valid");
        let users = policy.users.as_ref().expect("binding on");
        assert_eq!(users["ops"], Bound::Any);
        assert_eq!(
            users["app-two"],
            Bound::Tenants(vec!["acme".into(), "globex".into()])
        );
        assert_eq!(policy.from_domains["acme"], ["acme.test", "acme.com"]);
        for (users, domains, named) in [
            ("app-acme", "", "MAILTRAIL_TENANT_USERS"),
            ("", "", "binds no broker user"),
            ("a=acme", "acme", "MAILTRAIL_TENANT_FROM_DOMAINS"),
            ("a=acme", "acme=", "lists no domain"),
        ] {
            let error = TenantPolicy::from_settings(true, users, domains, "operator")
                .expect_err("invalid")
                .to_string();
            assert!(error.contains(named), "{error}");
        }
        let off = TenantPolicy::from_settings(false, "", "", "operator").expect("valid");
        assert!(off.users.is_none());
    }
}
