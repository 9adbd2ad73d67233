//! The `fqdn` section of the agent's configuration: Cilium's `tofqdns-*` settings for
//! `toFQDNs` rules and `rules: dns`, under Cilium's names.
//!
//! ```yaml
//! fqdn:
//!   tofqdns-min-ttl: 0                 # seconds an answer is kept at least (Cilium: 0)
//!   tofqdns-max-ip-per-hostname: 50    # addresses kept per name per endpoint (Cilium: 50)
//!   tofqdns-dns-reject-response-code: refused   # or nameError (NXDOMAIN)
//! ```

use serde::{Deserialize, Serialize};

/// [`super::Config::fqdn`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FqdnConfig {
    /// `tofqdns-min-ttl`: an address learned from a DNS answer stays allowed at least this
    /// many seconds, whatever the record's TTL (0: the record's TTL).
    #[serde(default)]
    pub tofqdns_min_ttl: u32,
    /// `tofqdns-max-ip-per-hostname`: at most this many addresses per name per endpoint; a new
    /// one evicts the oldest.
    #[serde(default = "default_max_ip")]
    pub tofqdns_max_ip_per_hostname: u32,
    /// `tofqdns-dns-reject-response-code`: how a DNS query for a name no `rules: dns` allows
    /// is answered.
    #[serde(default)]
    pub tofqdns_dns_reject_response_code: RejectCode,
}

/// [`FqdnConfig::tofqdns_dns_reject_response_code`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RejectCode {
    /// REFUSED (rcode 5), Cilium's default.
    #[default]
    #[serde(rename = "refused")]
    Refused,
    /// NXDOMAIN (rcode 3): some resolvers (musl) stop searching on REFUSED.
    #[serde(rename = "nameError")]
    NameError,
}

impl RejectCode {
    /// The DNS rcode.
    pub fn rcode(self) -> u8 {
        match self {
            RejectCode::Refused => 5,
            RejectCode::NameError => 3,
        }
    }
}

fn default_max_ip() -> u32 {
    50
}

/// The most addresses per name a configuration may ask for (each is kept per endpoint).
pub const MAX_IPS_PER_HOSTNAME: u32 = 10_000;

impl Default for FqdnConfig {
    fn default() -> Self {
        FqdnConfig {
            tofqdns_min_ttl: 0,
            tofqdns_max_ip_per_hostname: default_max_ip(),
            tofqdns_dns_reject_response_code: RejectCode::default(),
        }
    }
}

impl FqdnConfig {
    /// `Err((field, why))` when a value is out of range.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let n = self.tofqdns_max_ip_per_hostname;
        if !(1..=MAX_IPS_PER_HOSTNAME).contains(&n) {
            return Err((
                "fqdn.tofqdns-max-ip-per-hostname".into(),
                format!("{n} must be 1..={MAX_IPS_PER_HOSTNAME}"),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_ciliums_and_names_are_ciliums() {
        let c: FqdnConfig = serde_yaml_ng::from_str("{}").unwrap();
        assert_eq!(c, FqdnConfig::default());
        assert_eq!(c.tofqdns_max_ip_per_hostname, 50);
        assert_eq!(c.tofqdns_dns_reject_response_code.rcode(), 5);
        let c: FqdnConfig = serde_yaml_ng::from_str(
            "{tofqdns-min-ttl: 3600, tofqdns-max-ip-per-hostname: 5, tofqdns-dns-reject-response-code: nameError}",
        )
        .unwrap();
        assert_eq!(c.tofqdns_min_ttl, 3600);
        assert_eq!(c.tofqdns_dns_reject_response_code.rcode(), 3);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn bad_values_are_rejected() {
        assert!(
            serde_yaml_ng::from_str::<FqdnConfig>("{tofqdns-dns-reject-response-code: drop}")
                .is_err()
        );
        assert!(serde_yaml_ng::from_str::<FqdnConfig>("{tofqdns-min-ttl: -1}").is_err());
        assert!(serde_yaml_ng::from_str::<FqdnConfig>("{max-ip: 3}").is_err());
        let zero = FqdnConfig {
            tofqdns_max_ip_per_hostname: 0,
            ..FqdnConfig::default()
        };
        assert!(zero.validate().is_err());
    }
}
