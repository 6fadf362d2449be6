//! The highest fencing token seen per target, in this process (the database keeps its own: `Driver::fence_token`).

use std::collections::HashMap;
use std::sync::Mutex;

use super::*;

/// The highest fencing token seen per target: work under a lower one comes from a coordinator that lost the lock.
#[derive(Default)]
pub(super) struct Tokens(Mutex<HashMap<String, u64>>);

impl Tokens {
    /// Records `token` for `target`; `false` if a higher one was seen before (refuse the work).
    pub(super) fn admit(&self, target: &str, token: u64) -> bool {
        let mut tokens = locked(&self.0);
        let seen = tokens.entry(target.to_string()).or_insert(0);
        if token < *seen {
            return false;
        }
        *seen = token;
        true
    }

    /// Whether a newer token arrived for `target` since `token` was admitted.
    pub(super) fn superseded(&self, target: &str, token: u64) -> bool {
        locked(&self.0).get(target).is_some_and(|t| *t > token)
    }
}

#[cfg(test)]
mod tests {
    use super::Tokens;

    #[test]
    fn stale_fencing_tokens_are_refused() {
        let tokens = Tokens::default();
        assert!(tokens.admit("db1", 5));
        assert!(tokens.admit("db1", 5), "the same assignment again (a re-sent stream) is fine");
        assert!(!tokens.admit("db1", 4), "a lower token is a coordinator that lost the lock");
        assert!(tokens.admit("db2", 1), "tokens are per target");
        assert!(tokens.admit("db1", 7));
        assert!(tokens.superseded("db1", 5) && !tokens.superseded("db1", 7));
    }
}
