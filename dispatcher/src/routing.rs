//! Which provider a job goes to: the default, or the one chosen for its tenant — and, while that
//! one is down, the failover providers in order.

use crate::providers::Provider;
use std::collections::HashMap;
use std::sync::Arc;

pub struct Router {
    default: Arc<dyn Provider>,
    by_tenant: HashMap<String, Arc<dyn Provider>>,
    failover: Vec<Arc<dyn Provider>>,
}

impl Router {
    pub fn new(default: Arc<dyn Provider>) -> Router {
        Router {
            default,
            by_tenant: HashMap::new(),
            failover: Vec::new(),
        }
    }

    pub fn with_failover(mut self, provider: Arc<dyn Provider>) -> Router {
        self.failover.push(provider);
        self
    }

    /// The tenant's provider, then the failover providers (each once).
    pub fn chain_for(&self, tenant: &str) -> Vec<&Arc<dyn Provider>> {
        let mut chain = vec![self.for_tenant(tenant)];
        for provider in &self.failover {
            if !chain.iter().any(|p| p.name() == provider.name()) {
                chain.push(provider);
            }
        }
        chain
    }

    pub fn with_tenant(mut self, tenant: &str, provider: Arc<dyn Provider>) -> Router {
        self.by_tenant.insert(tenant.to_owned(), provider);
        self
    }

    pub fn for_tenant(&self, tenant: &str) -> &Arc<dyn Provider> {
        self.by_tenant.get(tenant).unwrap_or(&self.default)
    }

    /// Every provider in use, each once (for health).
    pub fn providers(&self) -> Vec<Arc<dyn Provider>> {
        let mut all: Vec<Arc<dyn Provider>> = vec![self.default.clone()];
        for provider in self.by_tenant.values().chain(&self.failover) {
            if !all.iter().any(|p| p.name() == provider.name()) {
                all.push(provider.clone());
            }
        }
        all
    }
}

/// Parses `sendgrid,smtp` into provider names.
pub fn parse_failover(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

/// Parses `acme=mailgun,globex=ses` into (tenant, provider name) pairs. An entry without `=`,
/// with an empty side, or naming a tenant twice is an error: a typo must stop the start, not
/// quietly send a tenant's mail through another provider.
pub fn parse_tenant_providers(list: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut pairs: Vec<(String, String)> = Vec::new();
    for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        let (tenant, provider) = entry
            .split_once('=')
            .map(|(t, p)| (t.trim(), p.trim()))
            .filter(|(t, p)| !t.is_empty() && !p.is_empty())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "MAILTRAIL_TENANT_PROVIDERS entry {entry:?} is not <tenant>=<provider>"
                )
            })?;
        anyhow::ensure!(
            !pairs.iter().any(|(t, _)| t == tenant),
            "MAILTRAIL_TENANT_PROVIDERS names tenant {tenant:?} more than once"
        );
        pairs.push((tenant.to_owned(), provider.to_owned()));
    }
    Ok(pairs)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::providers::SendFuture;
    use mailtrail_shared::dispatch::DispatchJob;

    /// A provider known by its name only: routing never sends.
    struct Named(&'static str);

    impl Provider for Named {
        fn name(&self) -> &'static str {
            self.0
        }

        fn send<'a>(&'a self, _job: &'a DispatchJob) -> SendFuture<'a> {
            Box::pin(std::future::pending())
        }
    }

    fn named(name: &'static str) -> Arc<dyn Provider> {
        Arc::new(Named(name))
    }

    fn names(chain: Vec<&Arc<dyn Provider>>) -> Vec<&'static str> {
        chain.into_iter().map(|p| p.name()).collect()
    }

    fn router() -> Router {
        Router::new(named("smtp"))
            .with_tenant("acme", named("mailgun"))
            .with_tenant("globex", named("sendgrid"))
            .with_failover(named("sendgrid"))
            .with_failover(named("smtp"))
    }

    #[test]
    fn a_tenant_with_its_own_provider_gets_it_first_then_the_failover_order() {
        let router = router();
        assert_eq!(
            names(router.chain_for("acme")),
            ["mailgun", "sendgrid", "smtp"]
        );
        // Its own provider is also a failover one: tried once, first.
        assert_eq!(names(router.chain_for("globex")), ["sendgrid", "smtp"]);
        assert_eq!(router.for_tenant("acme").name(), "mailgun");
    }

    #[test]
    fn other_tenants_get_the_default_then_the_other_failover_providers() {
        let router = router();
        assert_eq!(names(router.chain_for("initech")), ["smtp", "sendgrid"]);
        assert_eq!(names(router.chain_for("")), ["smtp", "sendgrid"]);
        // Tenant names are exact: no case folding, no prefix match.
        assert_eq!(names(router.chain_for("ACME")), ["smtp", "sendgrid"]);
        assert_eq!(names(router.chain_for("acme2")), ["smtp", "sendgrid"]);
        // Without failover a chain is the one provider.
        let plain = Router::new(named("ses")).with_tenant("acme", named("resend"));
        assert_eq!(names(plain.chain_for("acme")), ["resend"]);
        assert_eq!(names(plain.chain_for("globex")), ["ses"]);
    }

    #[test]
    fn every_provider_in_use_is_listed_once_for_health() {
        let mut all: Vec<&str> = router().providers().iter().map(|p| p.name()).collect();
        all.sort_unstable();
        assert_eq!(all, ["mailgun", "sendgrid", "smtp"]);
    }

    #[test]
    fn tenant_providers_parse_with_spaces_and_empty_entries() {
        let pairs = parse_tenant_providers(" acme = mailgun ,, globex=ses, ").expect("valid");
        assert_eq!(
            pairs,
            [
                ("acme".to_owned(), "mailgun".to_owned()),
                ("globex".to_owned(), "ses".to_owned())
            ]
        );
        assert!(parse_tenant_providers("").expect("empty").is_empty());
        assert!(parse_tenant_providers(" , ").expect("blank").is_empty());
    }

    #[test]
    fn malformed_tenant_providers_are_errors_naming_the_entry() {
        for (setting, entry) in [
            ("acme", "\"acme\""),
            ("acme=mailgun,globex", "\"globex\""),
            ("acme:mailgun", "\"acme:mailgun\""),
            ("=mailgun", "\"=mailgun\""),
            ("acme=", "\"acme=\""),
            ("acme= ", "\"acme=\""),
        ] {
            let error = parse_tenant_providers(setting)
                .expect_err(setting)
                .to_string();
            assert_eq!(
                error,
                format!("MAILTRAIL_TENANT_PROVIDERS entry {entry} is not <tenant>=<provider>"),
                "{setting}"
            );
        }
        let error = parse_tenant_providers("acme=mailgun, acme=ses")
            .expect_err("a tenant twice")
            .to_string();
        assert_eq!(
            error,
            "MAILTRAIL_TENANT_PROVIDERS names tenant \"acme\" more than once"
        );
    }

    #[test]
    fn failover_lists_parse_in_order() {
        assert_eq!(parse_failover(" sendgrid, smtp ,"), ["sendgrid", "smtp"]);
        assert!(parse_failover("").is_empty());
    }
}
