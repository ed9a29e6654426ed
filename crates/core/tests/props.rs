//! Property tests: the key file parser, mark ids and the payload code.

use proptest::prelude::*;
use tracemark_core::key::{KeyFileError, MasterKey};
use tracemark_core::payload::{Codebook, CODE_BITS};
use tracemark_core::MarkId;

/// The bytes of a saved key (the file format, through the public API).
fn key_bytes(seed: u64) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("k");
    MasterKey::from_seed(seed).save_new(&p).unwrap();
    std::fs::read(p).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// Any bytes at all: a key or a typed error, never a panic; and only a file of the
    /// exact length with the magic, version and checksum is a key.
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
        match MasterKey::decode(&bytes) {
            Ok(_) => prop_assert_eq!(bytes.len(), 74),
            Err(KeyFileError::BadMagic) => prop_assert!(bytes.len() < 10 || &bytes[..8] != b"TRACEMRK"),
            Err(_) => prop_assert!(bytes.starts_with(b"TRACEMRK")),
        }
    }

    /// A saved key reads back as itself; any change to one byte, any truncation and any
    /// extension is refused.
    #[test]
    fn key_files_detect_every_single_byte_change(
        seed in any::<u64>(), at in 0usize..74, xor in 1u8..=255, cut in 0usize..74, extra in 1usize..8,
    ) {
        let good = key_bytes(seed);
        prop_assert_eq!(MasterKey::decode(&good).unwrap(), MasterKey::from_seed(seed));
        let mut bad = good.clone();
        bad[at] ^= xor;
        prop_assert!(MasterKey::decode(&bad).is_err());
        prop_assert!(MasterKey::decode(&good[..cut]).is_err());
        let mut long = good.clone();
        long.extend(std::iter::repeat_n(0u8, extra));
        prop_assert!(MasterKey::decode(&long).is_err());
    }

    /// Mark ids print as 16 lowercase hex digits and parse back.
    #[test]
    fn mark_ids_round_trip(id in any::<u64>()) {
        let s = MarkId(id).to_string();
        prop_assert_eq!(s.len(), 16);
        prop_assert!(s.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        prop_assert_eq!(s.parse::<MarkId>().unwrap(), MarkId(id));
    }

    /// Every codeword decodes to its id, also with a few bits flipped or erased (fewer
    /// than half the code's free distance).
    #[test]
    fn codewords_decode_to_their_id_through_a_few_errors(
        seed in any::<u64>(), id in any::<u64>(),
        flips in proptest::collection::vec(0usize..CODE_BITS, 0..4),
        erasures in proptest::collection::vec(0usize..CODE_BITS, 0..3),
    ) {
        let book = Codebook::new(&MasterKey::from_seed(seed));
        let mut soft: Vec<f64> = book.codeword(MarkId(id)).iter().map(|&c| f64::from(c)).collect();
        for &p in &flips {
            soft[p] = -soft[p];
        }
        for &p in &erasures {
            soft[p] = 0.0;
        }
        prop_assert_eq!(book.decode(&soft), MarkId(id));
    }
}
