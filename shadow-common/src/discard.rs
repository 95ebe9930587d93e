//! Output Discard: what a shadow replica may reach (nothing, by default) and what it tried.

/// Maximum number of allowlist entries.
pub const MAX_ALLOW: u32 = 16;

/// `DiscardConfig::flags`: connections to loopback addresses are allowed. A replica's
/// loopback is its own network namespace's, so nothing sent there leaves the replica.
pub const FLAG_ALLOW_LOOPBACK: u32 = 1;

/// Global settings of the discard programs (one entry of `DISCARD_CFG`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DiscardConfig {
    /// Live entries at the start of `ALLOW_RULES`.
    pub n_allow: u32,
    pub flags: u32,
}
const _: () = assert!(core::mem::size_of::<DiscardConfig>() == 8);

/// One allowed destination: a prefix, a port range and a protocol.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AllowRule {
    /// IPv4 addresses use the first 4 bytes.
    pub addr: [u8; 16],
    /// 4 or 6.
    pub family: u8,
    pub prefix_len: u8,
    /// `IPPROTO_TCP`, `IPPROTO_UDP` or 0 for either.
    pub proto: u8,
    pub _pad: u8,
    /// Inclusive port range.
    pub port_lo: u16,
    pub port_hi: u16,
}
const _: () = assert!(core::mem::size_of::<AllowRule>() == 24);

/// A destination a replica tried to reach; the key of `REFUSED`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Dest {
    pub addr: [u8; 16],
    pub port: u16,
    pub family: u8,
    pub proto: u8,
}
const _: () = assert!(core::mem::size_of::<Dest>() == 20);

crate::impl_pod!(DiscardConfig, AllowRule, Dest);

/// Indices into `DISCARD_CTRS`.
pub mod ctr {
    /// Packets the replica transmitted, dropped at its veth.
    pub const TX_DROPPED: u32 = 0;
    pub const TX_DROPPED_BYTES: u32 = 1;
    pub const CONNECT_REFUSED: u32 = 2;
    pub const CONNECT_ALLOWED: u32 = 3;
    pub const SENDMSG_REFUSED: u32 = 4;
    pub const SENDMSG_ALLOWED: u32 = 5;
    pub const N: u32 = 6;
}

impl AllowRule {
    #[inline(always)]
    pub fn matches(&self, d: &Dest) -> bool {
        self.family == d.family
            && (self.proto == 0 || self.proto == d.proto)
            && d.port >= self.port_lo
            && d.port <= self.port_hi
            && crate::mirror::prefix_eq(&self.addr, &d.addr, self.prefix_len)
    }
}

impl Dest {
    /// 127.0.0.0/8, or ::1 (and IPv4-mapped loopback).
    #[inline(always)]
    pub fn is_loopback(&self) -> bool {
        if self.family == 4 {
            return self.addr[0] == 127;
        }
        let mut i = 0;
        let mut zeros_to_10 = true;
        while i < 10 {
            zeros_to_10 &= self.addr[i] == 0;
            i += 1;
        }
        let v4_mapped = zeros_to_10 && self.addr[10] == 0xff && self.addr[11] == 0xff;
        if v4_mapped {
            return self.addr[12] == 127;
        }
        zeros_to_10
            && self.addr[10] == 0
            && self.addr[11] == 0
            && self.addr[12] == 0
            && self.addr[13] == 0
            && self.addr[14] == 0
            && self.addr[15] == 1
    }
}

/// Whether `d` may be reached under `cfg` and `rules[..cfg.n_allow]`.
pub fn allowed(cfg: &DiscardConfig, rules: &[AllowRule], d: &Dest) -> bool {
    if cfg.flags & FLAG_ALLOW_LOOPBACK != 0 && d.is_loopback() {
        return true;
    }
    rules
        .iter()
        .take(cfg.n_allow as usize)
        .any(|r| r.matches(d))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mirror::{IPPROTO_TCP, IPPROTO_UDP};

    fn v4(a: [u8; 4], port: u16, proto: u8) -> Dest {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&a);
        Dest {
            addr,
            port,
            family: 4,
            proto,
        }
    }

    #[test]
    fn empty_allowlist_refuses_everything_but_loopback() {
        let cfg = DiscardConfig {
            n_allow: 0,
            flags: FLAG_ALLOW_LOOPBACK,
        };
        assert!(!allowed(&cfg, &[], &v4([198, 18, 0, 9], 53, IPPROTO_UDP)));
        assert!(allowed(&cfg, &[], &v4([127, 0, 0, 53], 53, IPPROTO_UDP)));
        let strict = DiscardConfig::default();
        assert!(!allowed(&strict, &[], &v4([127, 0, 0, 1], 80, IPPROTO_TCP)));
    }

    #[test]
    fn rules_match_prefix_port_and_proto() {
        let mut addr = [0u8; 16];
        addr[..4].copy_from_slice(&[198, 18, 4, 0]);
        let r = AllowRule {
            addr,
            family: 4,
            prefix_len: 24,
            proto: IPPROTO_TCP,
            port_lo: 5432,
            port_hi: 5432,
            ..AllowRule::default()
        };
        let cfg = DiscardConfig {
            n_allow: 1,
            flags: 0,
        };
        assert!(allowed(&cfg, &[r], &v4([198, 18, 4, 7], 5432, IPPROTO_TCP)));
        assert!(!allowed(
            &cfg,
            &[r],
            &v4([198, 18, 5, 7], 5432, IPPROTO_TCP)
        ));
        assert!(!allowed(
            &cfg,
            &[r],
            &v4([198, 18, 4, 7], 5433, IPPROTO_TCP)
        ));
        assert!(!allowed(
            &cfg,
            &[r],
            &v4([198, 18, 4, 7], 5432, IPPROTO_UDP)
        ));
    }

    #[test]
    fn ipv6_loopback_forms() {
        let mut d = Dest {
            family: 6,
            ..Dest::default()
        };
        d.addr[15] = 1;
        assert!(d.is_loopback());
        d.addr[10] = 0xff;
        d.addr[11] = 0xff;
        d.addr[12] = 127;
        assert!(d.is_loopback(), "::ffff:127.0.0.1");
        d.addr[12] = 10;
        assert!(!d.is_loopback());
    }
}
