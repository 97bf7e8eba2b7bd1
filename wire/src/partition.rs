//! Key routing: a key's partition is `murmur3_32(key, seed 0) % 271`, with
//! the hash read as an unsigned 32-bit integer. Clients and servers compute
//! it the same way, so a smart client can send a request straight to the
//! node that leads the partition's group.

/// Number of routing partitions keys hash into. Small enough that a client
/// refreshes the whole partition table cheaply; fixed for a cluster's life.
pub const PARTITION_COUNT: u16 = 271;

/// The partition a key routes to.
pub fn partition_of(key: &[u8]) -> u16 {
    let mut reader = key;
    // Reading from a byte slice cannot fail; the fallback is unreachable
    // but keeps the function total.
    let hash = murmur3::murmur3_32(&mut reader, 0).unwrap_or(0);
    (hash % u32::from(PARTITION_COUNT)) as u16
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn murmur3_reference_vectors() {
        // Published MurmurHash3 x86_32 vectors, seed 0.
        let hash = |b: &[u8]| murmur3::murmur3_32(&mut &b[..], 0).unwrap();
        assert_eq!(hash(b""), 0);
        assert_eq!(hash(b"hello"), 0x248b_fa47);
        assert_eq!(hash(b"The quick brown fox jumps over the lazy dog"), 0x2e4f_f723);
    }

    #[test]
    fn partitions_are_in_range_and_stable() {
        assert_eq!(partition_of(b"hello"), (0x248b_fa47u32 % 271) as u16);
        for i in 0..10_000u32 {
            assert!(partition_of(&i.to_le_bytes()) < PARTITION_COUNT);
        }
    }

    #[test]
    fn keys_spread_over_every_partition() {
        let mut seen = [0u32; PARTITION_COUNT as usize];
        for i in 0..100_000u32 {
            seen[usize::from(partition_of(format!("user:{i}").as_bytes()))] += 1;
        }
        let (min, max) = (seen.iter().min().unwrap(), seen.iter().max().unwrap());
        // 369 keys per partition on average; a sound hash stays well within 2x.
        assert!(*min > 250 && *max < 500, "skewed: min {min}, max {max}");
    }
}
