//! `[rate_limit]`: per-source limits on creating UAIDs and registrations.

use serde::{Deserialize, Serialize};

use super::{bad, ConfigError};

/// `[rate_limit]`
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RateLimitConfig {
    /// UAIDs one source may create in the store (by their first register) per minute,
    /// sustained; 0 = no limit.
    pub new_uaids_per_minute: u64,
    /// UAIDs one source may create at once (the bucket's size).
    pub new_uaid_burst: u64,
    /// Registers one source may make per minute, sustained; 0 = no limit.
    pub registers_per_minute: u64,
    /// Registers one source may make at once.
    pub register_burst: u64,
    /// IPv6 sources are counted by prefixes of this many bits (32 to 64).
    pub ipv6_prefix: u8,
    /// Sources tracked at once; past it, the quietest are forgotten.
    pub max_sources: usize,
    /// Proxies (networks or addresses) whose `X-Forwarded-For` names the source; empty = none.
    pub trusted_proxies: Vec<String>,
}

impl Default for RateLimitConfig {
    fn default() -> RateLimitConfig {
        RateLimitConfig {
            new_uaids_per_minute: 60,
            new_uaid_burst: 100,
            registers_per_minute: 600,
            register_burst: 1000,
            ipv6_prefix: 64,
            max_sources: 100_000,
            trusted_proxies: Vec::new(),
        }
    }
}

impl RateLimitConfig {
    /// Checks the keys of `[rate_limit]`.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        const MOST: u64 = 60_000_000;
        for (key, n) in [
            ("rate_limit.new_uaids_per_minute", self.new_uaids_per_minute),
            ("rate_limit.registers_per_minute", self.registers_per_minute),
        ] {
            if n > MOST {
                return bad(key, "must be 0 (no limit) to 60000000 (a million a second)");
            }
        }
        for (key, n) in [
            ("rate_limit.new_uaid_burst", self.new_uaid_burst),
            ("rate_limit.register_burst", self.register_burst),
        ] {
            if n == 0 || n > 1_000_000 {
                return bad(key, "must be 1 to 1000000");
            }
        }
        if !(32..=64).contains(&self.ipv6_prefix) {
            return bad("rate_limit.ipv6_prefix", "must be 32 to 64");
        }
        if !(100..=10_000_000).contains(&self.max_sources) {
            return bad("rate_limit.max_sources", "must be 100 to 10000000");
        }
        if let Some(n) = self
            .trusted_proxies
            .iter()
            .find(|n| crate::wake::Net::parse(n).is_none())
        {
            return bad(
                "rate_limit.trusted_proxies",
                &format!("{n:?} is not a network like 10.0.0.0/8 or an address like 10.0.0.5"),
            );
        }
        Ok(())
    }
}
