//! Keyed pseudonyms for client addresses: a SipHash-2-4 PRF (written here from the
//! algorithm's description, no allocation, fixed-size inputs, so the same code can run in an
//! eBPF program) and the mapping of an address into a pseudonym prefix.
//!
//! Properties the mirror needs: the same address and key always give the same pseudonym
//! (across restarts: the key comes from the deployment's config, not from the process), a
//! pseudonym reveals nothing about the address without the key (SipHash-2-4 is a PRF for a
//! 128-bit secret key), and the pseudonym stays inside a prefix the operator chooses, so it
//! is a plausible, routable source for the shadow (never loopback, multicast or the
//! primary's own address range).
//!
//! `shadow_mask` rewrites each clone's source address with [`pseudonym_v4`] /
//! [`pseudonym_v6`] when `PseudoConfig::enabled`, fixing the IPv4 header and TCP/UDP checksums.

/// A 128-bit SipHash key as two little-endian 64-bit halves.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PrfKey {
    pub k0: u64,
    pub k1: u64,
}

impl PrfKey {
    /// The key from 16 bytes (as SipHash reads its key: two little-endian words).
    pub fn from_bytes(b: [u8; 16]) -> PrfKey {
        let mut k0 = [0u8; 8];
        let mut k1 = [0u8; 8];
        k0.copy_from_slice(&b[..8]);
        k1.copy_from_slice(&b[8..]);
        PrfKey {
            k0: u64::from_le_bytes(k0),
            k1: u64::from_le_bytes(k1),
        }
    }
}

struct State([u64; 4]);

impl State {
    #[inline(always)]
    fn new(key: &PrfKey) -> State {
        State([
            key.k0 ^ 0x736f_6d65_7073_6575,
            key.k1 ^ 0x646f_7261_6e64_6f6d,
            key.k0 ^ 0x6c79_6765_6e65_7261,
            key.k1 ^ 0x7465_6462_7974_6573,
        ])
    }

    #[inline(always)]
    fn round(&mut self) {
        let v = &mut self.0;
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }

    /// Absorb one 64-bit message word (2 compression rounds).
    #[inline(always)]
    fn word(&mut self, m: u64) {
        self.0[3] ^= m;
        self.round();
        self.round();
        self.0[0] ^= m;
    }

    /// The 4 finalisation rounds.
    #[inline(always)]
    fn finish(mut self) -> u64 {
        self.0[2] ^= 0xff;
        self.round();
        self.round();
        self.round();
        self.round();
        self.0[0] ^ self.0[1] ^ self.0[2] ^ self.0[3]
    }
}

/// SipHash-2-4 of `msg` under `key`.
pub fn siphash24(key: &PrfKey, msg: &[u8]) -> u64 {
    let mut st = State::new(key);
    let mut chunks = msg.chunks_exact(8);
    for c in &mut chunks {
        let mut w = [0u8; 8];
        w.copy_from_slice(c);
        st.word(u64::from_le_bytes(w));
    }
    let rest = chunks.remainder();
    let mut last = [0u8; 8];
    last[..rest.len()].copy_from_slice(rest);
    last[7] = msg.len() as u8;
    st.word(u64::from_le_bytes(last));
    st.finish()
}

/// Domain separation: the first message byte, so an IPv4 and an IPv6 address (or any later
/// use of the key, e.g. value tokens) never share an input.
pub const DOMAIN_V4: u8 = 4;
pub const DOMAIN_V6: u8 = 6;
/// The first word [`token_init`] absorbs.
pub const DOMAIN_TOKEN: u8 = b'T';

/// Start of a masked value's token: SipHash's keyed state after a domain word.
///
/// Tokens are streamed, because a value may span TCP segments and each byte must be
/// replaced when its segment passes: byte `i` of a token is derived from the key and bytes
/// `0..=i` of the value. So the same value always gives the same token (across segments
/// and restarts: the key is the deployment's), different values diverge from their first
/// different byte on, and without the key a token says nothing about the value beyond its
/// length, character classes and separators (see `mask::token_char`). The construction is
/// SipHash's: one compression round per absorbed byte (the state carries everything
/// before), and SipHash-1-3's three finalisation rounds on a copy for each output.
#[inline(always)]
pub fn token_init(key: &PrfKey) -> [u64; 4] {
    let mut st = State::new(key);
    st.word(DOMAIN_TOKEN as u64);
    st.0
}

/// Absorb one value byte into `v` and return 64 bits derived from the key and every byte
/// absorbed since [`token_init`].
#[inline(always)]
pub fn token_step(v: &mut [u64; 4], b: u8) -> u64 {
    // In place on the caller's state and in four locals: the datapath runs this in a
    // bpf_loop callback whose stack adds to the program's (512 bytes for the whole chain).
    v[3] ^= b as u64;
    sipround(v);
    v[0] ^= b as u64;
    let mut c = [v[0], v[1], v[2] ^ 0xff, v[3]];
    sipround(&mut c);
    sipround(&mut c);
    sipround(&mut c);
    c[0] ^ c[1] ^ c[2] ^ c[3]
}

/// One SipRound on four words (as [`State::round`]).
#[inline(always)]
fn sipround(v: &mut [u64; 4]) {
    v[0] = v[0].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(13) ^ v[0];
    v[0] = v[0].rotate_left(32);
    v[2] = v[2].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(16) ^ v[2];
    v[0] = v[0].wrapping_add(v[3]);
    v[3] = v[3].rotate_left(21) ^ v[0];
    v[2] = v[2].wrapping_add(v[1]);
    v[1] = v[1].rotate_left(17) ^ v[2];
    v[2] = v[2].rotate_left(32);
}

/// The PRF of one IPv4 address: SipHash-2-4 of `[DOMAIN_V4, a, b, c, d]` (one word, no
/// loop: what the datapath would run).
#[inline(always)]
pub fn prf_v4(key: &PrfKey, addr: [u8; 4]) -> u64 {
    let mut st = State::new(key);
    let w = u64::from_le_bytes([DOMAIN_V4, addr[0], addr[1], addr[2], addr[3], 0, 0, 5]);
    st.word(w);
    st.finish()
}

/// The PRF of one IPv6 address (two independent 64-bit outputs, for up to 128 host bits):
/// SipHash-2-4 of `[DOMAIN_V6, addr.., half]` for half 0 and 1.
#[inline(always)]
pub fn prf_v6(key: &PrfKey, addr: [u8; 16], half: u8) -> u64 {
    let mut st = State::new(key);
    let a = |i: usize| addr[i];
    st.word(u64::from_le_bytes([
        DOMAIN_V6,
        a(0),
        a(1),
        a(2),
        a(3),
        a(4),
        a(5),
        a(6),
    ]));
    st.word(u64::from_le_bytes([
        a(7),
        a(8),
        a(9),
        a(10),
        a(11),
        a(12),
        a(13),
        a(14),
    ]));
    st.word(u64::from_le_bytes([a(15), half, 0, 0, 0, 0, 0, 18]));
    st.finish()
}

/// The pseudonym of an IPv4 address inside `prefix/len` (`len` 0..=30): the prefix's bits,
/// then PRF bits; host parts of all zeros or all ones (network and broadcast) are avoided.
pub fn pseudonym_v4(key: &PrfKey, addr: [u8; 4], prefix: [u8; 4], len: u8) -> [u8; 4] {
    let len = len.min(30) as u32;
    let host_mask: u32 = if len == 0 { u32::MAX } else { u32::MAX >> len };
    let mut host = (prf_v4(key, addr) as u32) & host_mask;
    if host == 0 {
        host = 1;
    } else if host == host_mask {
        host = host_mask - 1;
    }
    ((u32::from_be_bytes(prefix) & !host_mask) | host).to_be_bytes()
}

/// The pseudonym of an IPv6 address inside `prefix/len` (`len` 0..=126); an all-zero host
/// part (the subnet-router anycast address) is avoided. (64-bit halves, no `u128`: the
/// eBPF target runs this too.)
#[inline(always)]
pub fn pseudonym_v6(key: &PrfKey, addr: [u8; 16], prefix: [u8; 16], len: u8) -> [u8; 16] {
    let len = if len > 126 { 126 } else { len as u32 };
    let (hi_mask, lo_mask) = if len == 0 {
        (u64::MAX, u64::MAX)
    } else if len < 64 {
        (u64::MAX >> len, u64::MAX)
    } else {
        (0, u64::MAX >> (len - 64))
    };
    let mut p_hi = [0u8; 8];
    let mut p_lo = [0u8; 8];
    p_hi.copy_from_slice(&prefix[..8]);
    p_lo.copy_from_slice(&prefix[8..]);
    let h_hi = prf_v6(key, addr, 0) & hi_mask;
    let mut h_lo = prf_v6(key, addr, 1) & lo_mask;
    if h_hi == 0 && h_lo == 0 {
        h_lo = 1;
    }
    let hi = (u64::from_be_bytes(p_hi) & !hi_mask) | h_hi;
    let lo = (u64::from_be_bytes(p_lo) & !lo_mask) | h_lo;
    let mut out = [0u8; 16];
    out[..8].copy_from_slice(&hi.to_be_bytes());
    out[8..].copy_from_slice(&lo.to_be_bytes());
    out
}

/// `PSEUDO_CFG`, one entry: the source-address pseudonymisation of the clones.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PseudoConfig {
    pub key: PrfKey,
    pub v6_prefix: [u8; 16],
    pub v4_prefix: [u8; 4],
    pub v4_len: u8,
    pub v6_len: u8,
    /// 1: rewrite every clone's source address to its pseudonym.
    pub enabled: u8,
    pub _pad: u8,
}
const _: () = assert!(core::mem::size_of::<PseudoConfig>() == 40);

crate::impl_pod!(PrfKey, PseudoConfig);

#[cfg(test)]
mod tests;
