//! Which key each operation touches: uniform, or zipfian as YCSB draws it (Gray et al., "Quickly
//! generating billion-record synthetic databases", θ = 0.99), with hot keys scattered over the
//! key space by a multiplicative hash so they do not all sit in one hash shard.

use bytes::Bytes;
use rand::Rng;

/// The key numbered `n`: fixed width, so every key costs the same and a loaded key space of
/// `n` keys is exactly the keys a run over `n` keys draws from.
pub(crate) fn key_name(n: u64) -> Bytes {
    Bytes::from(format!("bench-{n:012}"))
}

/// How keys are chosen.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few keys take most operations (YCSB's default skew).
    Zipfian,
}

/// Draws key numbers in `0..n`.
#[derive(Clone, Debug)]
pub(crate) enum KeyChooser {
    Uniform { n: u64 },
    Zipfian(Zipfian),
}

impl KeyChooser {
    pub(crate) fn new(distribution: Distribution, n: u64) -> Self {
        match distribution {
            Distribution::Uniform => KeyChooser::Uniform { n },
            Distribution::Zipfian => KeyChooser::Zipfian(Zipfian::new(n, 0.99)),
        }
    }

    pub(crate) fn next(&self, rng: &mut impl Rng) -> u64 {
        match self {
            KeyChooser::Uniform { n } => rng.random_range(0..*n),
            KeyChooser::Zipfian(z) => {
                let rank = z.next(rng);
                rank.wrapping_mul(0x9E37_79B9_7F4A_7C15) % z.n
            }
        }
    }
}

#[derive(Clone, Debug)]
pub(crate) struct Zipfian {
    n: u64,
    theta: f64,
    alpha: f64,
    zeta_n: f64,
    eta: f64,
}

impl Zipfian {
    fn new(n: u64, theta: f64) -> Self {
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zeta_n = zeta(n);
        let zeta_2 = zeta(2.min(n));
        Zipfian {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zeta_n,
            eta: (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta_2 / zeta_n),
        }
    }

    fn next(&self, rng: &mut impl Rng) -> u64 {
        let u: f64 = rng.random();
        let uz = u * self.zeta_n;
        if uz < 1.0 {
            return 0;
        }
        if uz < 1.0 + 0.5f64.powf(self.theta) {
            return 1.min(self.n - 1);
        }
        let rank = (self.n as f64 * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64;
        rank.min(self.n - 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_in_range_and_zipfian_is_skewed() {
        let mut rng = rand::rng();
        for distribution in [Distribution::Uniform, Distribution::Zipfian] {
            let chooser = KeyChooser::new(distribution, 1000);
            let mut counts = vec![0u32; 1000];
            for _ in 0..100_000 {
                counts[chooser.next(&mut rng) as usize] += 1;
            }
            let hottest = *counts.iter().max().expect("counts");
            match distribution {
                Distribution::Uniform => assert!(hottest < 300, "{hottest}"),
                Distribution::Zipfian => assert!(hottest > 5_000, "{hottest}"),
            }
        }
    }
}
