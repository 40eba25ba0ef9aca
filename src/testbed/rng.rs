//! The one pseudo-random generator of the demo, the tests and the benches: splitmix64
//! (Steele, Lea and Flood, 2014). Reproducible from its seed, so a failing run can be
//! replayed, fast enough to fill gigabytes of incompressible data, and not meant for
//! anything secret.

/// splitmix64: every seed, 0 included, gives a full-period stream.
#[derive(Debug, Clone)]
pub struct Rng(u64);

/// The golden-ratio increment of splitmix64.
const GAMMA: u64 = 0x9E37_79B9_7F4A_7C15;

impl Rng {
    /// The stream of `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The stream of several numbers at once (a writer, a page, a version): related
    /// inputs give unrelated streams.
    pub fn from_parts(parts: &[u64]) -> Rng {
        Rng(parts
            .iter()
            .fold(0x6A09_E667_F3BC_C908, |acc, &p| mix(acc ^ p)))
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(GAMMA);
        mix(self.0)
    }

    /// Uniform enough in `0..n` (`0` when `n` is 0; the modulo bias does not matter here).
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n.max(1)
    }

    /// Uniform enough in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// Fills `buf` with random bytes.
    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            let w = self.next_u64().to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
    }

    /// `len` random bytes.
    pub fn bytes(&mut self, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.fill(&mut out);
        out
    }
}

/// `len` bytes that `seed` alone determines: a test writes `pattern(7, n)` and later checks
/// that a copy holds `pattern(7, n)`.
pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    Rng::new(seed).bytes(len)
}

/// The splitmix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn streams_are_reproducible_and_distinct() {
        assert_eq!(pattern(7, 100), pattern(7, 100));
        assert_ne!(pattern(7, 100), pattern(8, 100));
        assert_eq!(pattern(7, 13), pattern(7, 100)[..13]);
        // The reference values of splitmix64 seeded with 0.
        let mut r = Rng::new(0);
        assert_eq!(r.next_u64(), 0xE220_A839_7B1D_CDAF);
        assert_eq!(r.next_u64(), 0x6E78_9E6A_A1B9_65F4);
        assert_ne!(
            Rng::from_parts(&[1, 2]).next_u64(),
            Rng::from_parts(&[2, 1]).next_u64()
        );
        let mut r = Rng::new(1);
        assert!((0..1000).all(|_| (5..=9).contains(&r.range(5, 9))));
        assert_eq!(r.below(0), 0);
    }

    #[test]
    fn bytes_are_not_compressible_patterns() {
        let b = pattern(1, 1 << 16);
        let zeros = b.iter().filter(|&&x| x == 0).count();
        // About 1/256 of the bytes: far from a constant or a short cycle.
        assert!((100..500).contains(&zeros), "{zeros}");
    }
}
