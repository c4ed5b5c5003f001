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

/// Parses `acme=mailgun,globex=ses` into (tenant, provider name) pairs.
pub fn parse_tenant_providers(list: &str) -> anyhow::Result<Vec<(String, String)>> {
    list.split(',')
        .map(str::trim)
        .filter(|entry| !entry.is_empty())
        .map(|entry| {
            let (tenant, provider) = entry.split_once('=').ok_or_else(|| {
                anyhow::anyhow!(
                    "MAILTRAIL_TENANT_PROVIDERS entry {entry:?} is not <tenant>=<provider>"
                )
            })?;
            Ok((tenant.trim().to_owned(), provider.trim().to_owned()))
        })
        .collect()
}
