//! Selection rules as users write them (`dst = "198.18.0.2/32"`, `ports = "8000-8100"`,
//! `proto = "tcp"`) and their conversion to the kernel's `MirrorRule`.

use std::{fmt, net::IpAddr, str::FromStr};

use shadow_common::mirror::{MirrorRule, IPPROTO_TCP, IPPROTO_UDP};

/// Why a rule field was rejected; the config layer adds the key path.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{value:?} is not a valid CIDR: {why}")]
    Cidr { value: String, why: &'static str },
    #[error("{value:?} is not a valid port or port range: {why}")]
    Ports { value: String, why: &'static str },
    #[error("{value:?} is not a protocol: expected \"tcp\" or \"udp\"")]
    Proto { value: String },
}

/// A destination prefix.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cidr {
    pub addr: IpAddr,
    pub prefix_len: u8,
}

impl FromStr for Cidr {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let err = |why| RuleError::Cidr {
            value: s.to_string(),
            why,
        };
        let (a, p) = match s.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (s, None),
        };
        let addr: IpAddr = a.parse().map_err(|_| err("not an IPv4 or IPv6 address"))?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix_len = match p {
            None => max,
            Some(p) => p
                .parse::<u8>()
                .map_err(|_| err("prefix length is not a number"))?,
        };
        if prefix_len > max {
            return Err(err(if max == 32 {
                "prefix length exceeds 32"
            } else {
                "prefix length exceeds 128"
            }));
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

/// An inclusive destination port range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ports {
    pub lo: u16,
    pub hi: u16,
}

impl Ports {
    pub const ANY: Ports = Ports {
        lo: 0,
        hi: u16::MAX,
    };
}

impl FromStr for Ports {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        let err = |why| RuleError::Ports {
            value: s.to_string(),
            why,
        };
        let num = |p: &str| {
            p.trim()
                .parse::<u16>()
                .map_err(|_| err("not a number in 0..=65535"))
        };
        let (lo, hi) = match s.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                let p = num(s)?;
                (p, p)
            }
        };
        if lo > hi {
            return Err(err("range start is above its end"));
        }
        Ok(Ports { lo, hi })
    }
}

/// Transport protocol selector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Tcp,
    Udp,
}

impl FromStr for Proto {
    type Err = RuleError;
    fn from_str(s: &str) -> Result<Self, RuleError> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(RuleError::Proto {
                value: s.to_string(),
            }),
        }
    }
}

/// A validated selection rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rule {
    pub dst: Cidr,
    pub ports: Ports,
    pub proto: Option<Proto>,
}

impl Rule {
    /// The kernel representation.
    pub fn to_kernel(&self) -> MirrorRule {
        let mut addr = [0u8; 16];
        let family = match self.dst.addr {
            IpAddr::V4(a) => {
                addr[..4].copy_from_slice(&a.octets());
                4
            }
            IpAddr::V6(a) => {
                addr.copy_from_slice(&a.octets());
                6
            }
        };
        MirrorRule {
            addr,
            family,
            prefix_len: self.dst.prefix_len,
            proto: match self.proto {
                None => 0,
                Some(Proto::Tcp) => IPPROTO_TCP,
                Some(Proto::Udp) => IPPROTO_UDP,
            },
            _pad: 0,
            port_lo: self.ports.lo,
            port_hi: self.ports.hi,
        }
    }
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "dst {}", self.dst)?;
        if self.ports != Ports::ANY {
            write!(f, " ports {}-{}", self.ports.lo, self.ports.hi)?;
        }
        match self.proto {
            Some(Proto::Tcp) => write!(f, " tcp"),
            Some(Proto::Udp) => write!(f, " udp"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cidrs() {
        let c: Cidr = "198.18.0.0/15".parse().unwrap();
        assert_eq!(c.prefix_len, 15);
        let c: Cidr = "fd00::1".parse().unwrap();
        assert_eq!(c.prefix_len, 128);
        assert_eq!(
            "10.0.0.0/33".parse::<Cidr>().unwrap_err().to_string(),
            "\"10.0.0.0/33\" is not a valid CIDR: prefix length exceeds 32"
        );
        assert!("fd00::/129".parse::<Cidr>().is_err());
        assert!("example.com/8".parse::<Cidr>().is_err());
    }

    #[test]
    fn parses_ports_and_protocols() {
        assert_eq!("80".parse::<Ports>().unwrap(), Ports { lo: 80, hi: 80 });
        assert_eq!(
            "8000-8100".parse::<Ports>().unwrap(),
            Ports { lo: 8000, hi: 8100 }
        );
        assert!("90-80".parse::<Ports>().is_err());
        assert!("70000".parse::<Ports>().is_err());
        assert_eq!("TCP".parse::<Proto>().unwrap(), Proto::Tcp);
        assert!("sctp".parse::<Proto>().is_err());
    }

    #[test]
    fn kernel_form() {
        let r = Rule {
            dst: "198.18.0.2/32".parse().unwrap(),
            ports: "80".parse().unwrap(),
            proto: Some(Proto::Tcp),
        };
        let k = r.to_kernel();
        assert_eq!(k.family, 4);
        assert_eq!(&k.addr[..4], &[198, 18, 0, 2]);
        assert_eq!((k.port_lo, k.port_hi, k.proto), (80, 80, IPPROTO_TCP));
        assert_eq!(r.to_string(), "dst 198.18.0.2/32 ports 80-80 tcp");
    }
}
