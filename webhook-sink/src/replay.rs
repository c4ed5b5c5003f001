//! Mailgun's signature covers only `timestamp` and `token`, not the event: a captured request's
//! signature could be replayed over another event. Each token is therefore remembered with a
//! hash of the body it came with, for as long as its timestamp is accepted; the same token with
//! another body is refused, the same request again is accepted (a retry).

use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TokenCache {
    inner: Mutex<Inner>,
    keep_for: Duration,
    capacity: usize,
}

struct Inner {
    seen: HashMap<String, [u8; 32]>,
    order: VecDeque<(Instant, String)>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    /// First time, or the same request again.
    Fine,
    /// The token came before with a different body.
    Reused,
}

impl TokenCache {
    /// Remembers tokens for `keep_for` (the provider's timestamp window, doubled: a timestamp
    /// may be that far off either way), at most `capacity` of them (the oldest go first).
    pub fn new(keep_for: Duration, capacity: usize) -> TokenCache {
        TokenCache {
            inner: Mutex::new(Inner {
                seen: HashMap::new(),
                order: VecDeque::new(),
            }),
            keep_for,
            capacity: capacity.max(1),
        }
    }

    pub fn check(&self, token: &str, body: &[u8]) -> Seen {
        let hash: [u8; 32] = Sha256::digest(body).into();
        let now = Instant::now();
        let mut inner = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        while let Some((at, _)) = inner.order.front() {
            if now.duration_since(*at) < self.keep_for && inner.order.len() < self.capacity {
                break;
            }
            if let Some((_, old)) = inner.order.pop_front() {
                inner.seen.remove(&old);
            }
        }
        match inner.seen.get(token) {
            Some(previous) if *previous == hash => Seen::Fine,
            Some(_) => Seen::Reused,
            None => {
                inner.seen.insert(token.to_owned(), hash);
                inner.order.push_back((now, token.to_owned()));
                Seen::Fine
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_request_passes_other_body_is_refused_and_old_tokens_go() {
        let cache = TokenCache::new(Duration::from_secs(60), 2);
        assert_eq!(cache.check("t1", b"a"), Seen::Fine);
        assert_eq!(cache.check("t1", b"a"), Seen::Fine);
        assert_eq!(cache.check("t1", b"b"), Seen::Reused);
        assert_eq!(cache.check("t2", b"a"), Seen::Fine);
        // Capacity 2: a third token pushes the oldest out.
        assert_eq!(cache.check("t3", b"a"), Seen::Fine);
        assert_eq!(cache.check("t1", b"b"), Seen::Fine);
        let short = TokenCache::new(Duration::from_millis(0), 10);
        assert_eq!(short.check("t", b"a"), Seen::Fine);
        assert_eq!(short.check("t", b"b"), Seen::Fine, "forgotten at once");
    }
}
