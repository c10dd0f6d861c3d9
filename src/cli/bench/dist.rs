//! What the load looks like: which key each request takes (uniform,
//! zipfian or sequential popularity) and how big each written value is.
//! Pure and seeded by the caller, so the distributions are unit-tested.

use bytes::Bytes;
use rand::Rng;

/// Largest key space a run may ask for (the zipfian set-up is O(keys)).
pub const MAX_KEYS: u64 = 100_000_000;
/// Largest value the generator writes.
pub const MAX_VALUE_BYTES: u64 = 64 << 20;

/// Key popularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Popularity {
    /// Every key equally likely.
    Uniform,
    /// Zipfian with exponent --theta (0.99 by default, as YCSB): key 0 is the hottest.
    Zipfian,
    /// Request n takes key n mod keys: each key once, in order (loading data).
    Sequential,
}

/// Picks key indexes in `0..keys`.
#[derive(Debug, Clone)]
pub enum KeyChooser {
    Uniform { keys: u64 },
    Zipfian(Zipfian),
    Sequential { keys: u64 },
}

impl KeyChooser {
    pub fn new(popularity: Popularity, keys: u64, theta: f64) -> Result<KeyChooser, String> {
        if keys == 0 || keys > MAX_KEYS {
            return Err(format!("--keys {keys}: must be 1 to {MAX_KEYS}"));
        }
        Ok(match popularity {
            Popularity::Uniform => KeyChooser::Uniform { keys },
            Popularity::Zipfian => KeyChooser::Zipfian(Zipfian::new(keys, theta)?),
            Popularity::Sequential => KeyChooser::Sequential { keys },
        })
    }

    pub fn keys(&self) -> u64 {
        match self {
            KeyChooser::Uniform { keys } | KeyChooser::Sequential { keys } => *keys,
            KeyChooser::Zipfian(z) => z.n,
        }
    }

    /// The key index for request number `ticket`.
    pub fn pick<R: Rng>(&self, ticket: u64, rng: &mut R) -> u64 {
        match self {
            KeyChooser::Uniform { keys } => rng.gen_range(0..*keys),
            KeyChooser::Zipfian(z) => z.sample(rng.gen::<f64>()),
            KeyChooser::Sequential { keys } => ticket % keys,
        }
    }
}

/// The zipfian generator of Gray et al., "Quickly generating billion-record
/// synthetic databases" (SIGMOD 1994), as YCSB uses it: O(n) set-up to sum
/// zeta(n), then O(1) per sample. Rank 0 is the most popular item.
#[derive(Debug, Clone)]
pub struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
    half_pow_theta: f64,
}

impl Zipfian {
    pub fn new(n: u64, theta: f64) -> Result<Zipfian, String> {
        if n == 0 {
            return Err("zipfian over zero keys".into());
        }
        if !(theta > 0.0 && theta < 1.0) {
            return Err(format!("--theta {theta}: must be strictly between 0 and 1 (YCSB uses 0.99)"));
        }
        let zetan = zeta(n, theta);
        let zeta2 = zeta(2.min(n), theta);
        let eta = if n > 1 { (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan) } else { 0.0 };
        Ok(Zipfian { n, theta, alpha: 1.0 / (1.0 - theta), zetan, eta, half_pow_theta: 0.5f64.powf(theta) })
    }

    /// The probability of rank `i` (0-based): (1/(i+1)^theta) / zeta(n).
    pub fn probability(&self, i: u64) -> f64 {
        1.0 / ((i + 1) as f64).powf(self.theta) / self.zetan
    }

    /// Maps a uniform `u` in [0, 1) to a rank in `0..n`.
    pub fn sample(&self, u: f64) -> u64 {
        let uz = u * self.zetan;
        if uz < 1.0 || self.n == 1 {
            return 0;
        }
        if uz < 1.0 + self.half_pow_theta {
            return 1;
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }
}

fn zeta(n: u64, theta: f64) -> f64 {
    (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum()
}

/// Value sizes: fixed, or uniform in an inclusive range.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ValueSizes {
    pub min: usize,
    pub max: usize,
}

impl ValueSizes {
    /// Parses `1024`, `1KiB`, or a range `512-8192`, `512B-8KiB`.
    pub fn parse(s: &str) -> Result<ValueSizes, String> {
        let parse_one = |p: &str| -> Result<usize, String> {
            let n = crate::config::parse_bytes(p).map_err(|e| format!("--value-size: {e}"))?;
            if n > MAX_VALUE_BYTES {
                return Err(format!("--value-size {p}: limit {MAX_VALUE_BYTES} bytes"));
            }
            Ok(n as usize)
        };
        let (min, max) = match s.split_once('-') {
            Some((a, b)) => (parse_one(a)?, parse_one(b)?),
            None => {
                let n = parse_one(s)?;
                (n, n)
            }
        };
        if min > max {
            return Err(format!("--value-size {s}: the range is empty ({min} > {max})"));
        }
        Ok(ValueSizes { min, max })
    }

    pub fn label(&self) -> String {
        if self.min == self.max {
            format!("{} B", self.min)
        } else {
            format!("{}-{} B", self.min, self.max)
        }
    }
}

/// Values to write: slices of one random buffer, so producing a value
/// allocates nothing and copies nothing.
#[derive(Debug, Clone)]
pub struct ValuePool {
    sizes: ValueSizes,
    buf: Bytes,
}

impl ValuePool {
    pub fn new<R: Rng>(sizes: ValueSizes, rng: &mut R) -> ValuePool {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
        let len = sizes.max + 4096;
        let buf: Vec<u8> = (0..len).map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())]).collect();
        ValuePool { sizes, buf: Bytes::from(buf) }
    }

    pub fn value<R: Rng>(&self, rng: &mut R) -> Bytes {
        let len = if self.sizes.min == self.sizes.max {
            self.sizes.min
        } else {
            rng.gen_range(self.sizes.min..=self.sizes.max)
        };
        let start = rng.gen_range(0..=self.buf.len() - len);
        self.buf.slice(start..start + len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng as SmallRng;
    use rand::SeedableRng;

    #[test]
    fn zipfian_samples_stay_in_range_and_follow_the_law() {
        let n = 1000;
        let z = Zipfian::new(n, 0.99).unwrap();
        let mut rng = SmallRng::seed_from_u64(7);
        let draws = 200_000;
        let mut counts = vec![0u64; n as usize];
        for _ in 0..draws {
            let r = z.sample(rng.gen());
            assert!(r < n);
            counts[r as usize] += 1;
        }
        // The head follows p(i) = 1/(i+1)^theta / zeta(n) (ranks 0 and 1 are
        // exact in Gray's method; the rest is an approximation).
        for i in 0..2 {
            let expect = z.probability(i) * draws as f64;
            let got = counts[i as usize] as f64;
            assert!((got - expect).abs() < 0.05 * expect, "rank {i}: {got} draws, expected about {expect}");
        }
        // Popularity falls with rank: the top 10 beat the next 10, which beat the tail's average.
        let top: u64 = counts[..10].iter().sum();
        let next: u64 = counts[10..20].iter().sum();
        assert!(top > 2 * next, "top {top} vs next {next}");
        // Skewed: the hottest 10% of keys take well over half of the draws (uniform: 10%).
        let hot: u64 = counts[..100].iter().sum();
        assert!(hot as f64 > 0.5 * draws as f64, "hot 10% took {hot} of {draws}");
        // Yet the tail is reached.
        assert!(counts[500..].iter().sum::<u64>() > 0);
    }

    #[test]
    fn zipfian_of_one_key_always_picks_it() {
        let z = Zipfian::new(1, 0.99).unwrap();
        assert_eq!(z.sample(0.0), 0);
        assert_eq!(z.sample(0.999), 0);
    }

    #[test]
    fn zipfian_refuses_bad_theta() {
        assert!(Zipfian::new(10, 1.0).is_err());
        assert!(Zipfian::new(10, 0.0).is_err());
        assert!(Zipfian::new(10, f64::NAN).is_err());
        assert!(KeyChooser::new(Popularity::Uniform, 0, 0.99).is_err());
    }

    #[test]
    fn uniform_is_flat_and_sequential_walks_every_key() {
        let mut rng = SmallRng::seed_from_u64(1);
        let u = KeyChooser::new(Popularity::Uniform, 10, 0.99).unwrap();
        let mut counts = [0u64; 10];
        for t in 0..100_000 {
            counts[u.pick(t, &mut rng) as usize] += 1;
        }
        for c in counts {
            assert!((9_000..11_000).contains(&c), "uniform bucket {c}");
        }
        let s = KeyChooser::new(Popularity::Sequential, 5, 0.99).unwrap();
        let picks: Vec<u64> = (0..7).map(|t| s.pick(t, &mut rng)).collect();
        assert_eq!(picks, [0, 1, 2, 3, 4, 0, 1]);
    }

    #[test]
    fn value_sizes_parse_fixed_and_ranges() {
        assert_eq!(ValueSizes::parse("1024").unwrap(), ValueSizes { min: 1024, max: 1024 });
        assert_eq!(ValueSizes::parse("512-8KiB").unwrap(), ValueSizes { min: 512, max: 8192 });
        assert_eq!(ValueSizes::parse("0").unwrap(), ValueSizes { min: 0, max: 0 });
        assert!(ValueSizes::parse("8KiB-512").unwrap_err().contains("empty"));
        assert!(ValueSizes::parse("big").is_err());
        assert!(ValueSizes::parse("1GiB").unwrap_err().contains("limit"));
    }

    #[test]
    fn values_have_sizes_in_range() {
        let mut rng = SmallRng::seed_from_u64(3);
        let pool = ValuePool::new(ValueSizes { min: 10, max: 20 }, &mut rng);
        for _ in 0..1000 {
            let v = pool.value(&mut rng);
            assert!((10..=20).contains(&v.len()));
        }
        let fixed = ValuePool::new(ValueSizes { min: 100, max: 100 }, &mut rng);
        assert_eq!(fixed.value(&mut rng).len(), 100);
    }
}
