extern crate std;
use std::{collections::HashSet, vec::Vec};

use super::*;

fn ref_key() -> PrfKey {
    let mut b = [0u8; 16];
    for (i, x) in b.iter_mut().enumerate() {
        *x = i as u8;
    }
    PrfKey::from_bytes(b)
}

#[test]
fn siphash24_matches_the_reference_vectors() {
    // The reference vectors of the SipHash paper: key 00..0f, message 00..(n-1).
    let msg: Vec<u8> = (0u8..64).collect();
    assert_eq!(siphash24(&ref_key(), &[]), 0x726f_db47_dd0e_0e31);
    assert_eq!(siphash24(&ref_key(), &msg[..15]), 0xa129_ca61_49be_45e5);
}

#[test]
fn fixed_size_prfs_are_siphash_of_their_documented_inputs() {
    let k = PrfKey {
        k0: 0x0123_4567_89ab_cdef,
        k1: 0xfedc_ba98_7654_3210,
    };
    let a4 = [198, 51, 100, 7];
    assert_eq!(prf_v4(&k, a4), siphash24(&k, &[4, 198, 51, 100, 7]));
    let mut a6 = [0u8; 16];
    for (i, x) in a6.iter_mut().enumerate() {
        *x = (i * 17) as u8;
    }
    for half in 0..2u8 {
        let mut m = std::vec![6u8];
        m.extend_from_slice(&a6);
        m.push(half);
        assert_eq!(prf_v6(&k, a6, half), siphash24(&k, &m));
    }
}

#[test]
fn pseudonyms_are_stable_keyed_and_stay_in_the_prefix() {
    let k1 = PrfKey { k0: 1, k1: 2 };
    let k2 = PrfKey { k0: 1, k1: 3 };
    let prefix = [100, 64, 0, 0];
    let mut seen = HashSet::new();
    let mut differ = 0;
    for i in 0..2000u32 {
        let a = (0x0a00_0000 + i * 7919).to_be_bytes();
        let p = pseudonym_v4(&k1, a, prefix, 10);
        assert_eq!(
            p,
            pseudonym_v4(&k1, a, prefix, 10),
            "same input, same output"
        );
        assert_eq!(p[0], 100);
        assert_eq!(p[1] & 0xc0, 64, "{p:?} outside 100.64.0.0/10");
        let host = u32::from_be_bytes(p) & (u32::MAX >> 10);
        assert!(host != 0 && host != u32::MAX >> 10);
        seen.insert(p);
        if p != pseudonym_v4(&k2, a, prefix, 10) {
            differ += 1;
        }
    }
    // 2000 inputs into 2^22 values: a handful of collisions at most.
    assert!(seen.len() >= 1995, "{}", seen.len());
    assert!(
        differ >= 1995,
        "another key gives other pseudonyms: {differ}"
    );
    // A /30 keeps two usable hosts.
    for i in 0..50u8 {
        let p = pseudonym_v4(&k1, [10, 0, 0, i], [192, 0, 2, 0], 30);
        assert!(p == [192, 0, 2, 1] || p == [192, 0, 2, 2], "{p:?}");
    }
}

#[test]
fn ipv6_pseudonyms_are_stable_and_stay_in_the_prefix() {
    let k = PrfKey { k0: 9, k1: 10 };
    let prefix = [0xfd, 0x5d, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
    let mut seen = HashSet::new();
    for i in 0..1000u128 {
        let a = (0x2001_0db8u128 << 96 | i).to_be_bytes();
        let p = pseudonym_v6(&k, a, prefix, 16);
        assert_eq!(p, pseudonym_v6(&k, a, prefix, 16));
        assert_eq!(&p[..2], &[0xfd, 0x5d]);
        assert_ne!(p, a);
        seen.insert(p);
    }
    assert_eq!(seen.len(), 1000);
}
