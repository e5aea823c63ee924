//! Customer load profiles: deterministic functions of wall-clock time, constant over each
//! [`STEP_MS`] step, so the energy of a load is an exact sum over steps and the registers and
//! the truth integrate the very same function.

use super::config::Profile;

/// Loads change only at multiples of this many milliseconds since the Unix epoch.
pub const STEP_MS: i64 = 10_000;

/// The residential day: (hour of day, UTC; factor), linearly interpolated.
const RESIDENTIAL_DAY: [(f64, f64); 12] = [
    (0.0, 0.45),
    (5.0, 0.35),
    (7.0, 0.9),
    (8.0, 1.2),
    (10.0, 0.7),
    (12.0, 0.9),
    (14.0, 0.7),
    (17.0, 1.0),
    (19.0, 1.8),
    (21.0, 1.6),
    (23.0, 0.7),
    (24.0, 0.45),
];
/// Residential appliances (kettle, washer, air conditioner) switch in blocks of this length.
const APPLIANCE_BLOCK_MS: i64 = 120_000;
/// Random-walk knots: a fast one every minute, a slow one every ten minutes.
const WALK_FAST_MS: i64 = 60_000;
const WALK_SLOW_MS: i64 = 600_000;

/// SplitMix64: a well-mixed hash of `seed` and `n`.
pub fn mix(seed: u64, n: u64) -> u64 {
    let mut z = seed
        .wrapping_add(n.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform number in [0, 1) from `seed` and `n`.
pub fn unit(seed: u64, n: i64) -> f64 {
    (mix(seed, n as u64) >> 11) as f64 / (1u64 << 53) as f64
}

/// Value noise in [-1, 1]: hashed knots every `period_ms`, linear in between.
fn value_noise(seed: u64, t_ms: i64, period_ms: i64) -> f64 {
    let j = t_ms.div_euclid(period_ms);
    let frac = t_ms.rem_euclid(period_ms) as f64 / period_ms as f64;
    let a = unit(seed, j) * 2.0 - 1.0;
    let b = unit(seed, j + 1) * 2.0 - 1.0;
    a + (b - a) * frac
}

fn residential_day(hour: f64) -> f64 {
    for w in RESIDENTIAL_DAY.windows(2) {
        let ((h0, f0), (h1, f1)) = (w[0], w[1]);
        if hour <= h1 {
            return f0 + (f1 - f0) * (hour - h0) / (h1 - h0);
        }
    }
    RESIDENTIAL_DAY[0].1
}

/// The load factor (× `load_kw`) of `profile` during the step containing `t_ms`.
pub fn factor(profile: Profile, seed: u64, t_ms: i64) -> f64 {
    let step_start = t_ms - t_ms.rem_euclid(STEP_MS);
    let step = step_start / STEP_MS;
    match profile {
        Profile::Flat => 1.0,
        Profile::Residential => {
            let hour = step_start.rem_euclid(86_400_000) as f64 / 3_600_000.0;
            let base = residential_day(hour);
            let jitter = 1.0 + 0.1 * (unit(seed, step) * 2.0 - 1.0);
            let block = step_start.div_euclid(APPLIANCE_BLOCK_MS);
            let appliance = if unit(seed ^ 0xA11_1A4CE, block) < 0.3 {
                0.6
            } else {
                0.0
            };
            base * jitter + appliance
        }
        Profile::RandomWalk => {
            let fast = value_noise(seed, step_start, WALK_FAST_MS);
            let slow = value_noise(seed ^ 0x510_3A1C, step_start, WALK_SLOW_MS);
            (1.0 + 0.35 * fast + 0.35 * slow).max(0.05)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn constant_within_a_step_and_deterministic() {
        for p in [Profile::Flat, Profile::Residential, Profile::RandomWalk] {
            let t = 1_795_000_000_000;
            assert_eq!(factor(p, 7, t), factor(p, 7, t + STEP_MS - 1));
            assert_eq!(factor(p, 7, t), factor(p, 7, t));
        }
        assert_eq!(factor(Profile::Flat, 1, 0), 1.0);
    }

    #[test]
    fn profiles_vary_over_minutes_and_by_seed() {
        let t = 1_795_000_000_000;
        for p in [Profile::Residential, Profile::RandomWalk] {
            let values: Vec<f64> = (0..60).map(|k| factor(p, 3, t + k * STEP_MS)).collect();
            let min = values.iter().cloned().fold(f64::MAX, f64::min);
            let max = values.iter().cloned().fold(f64::MIN, f64::max);
            assert!(max - min > 0.1, "{p:?}: {min}..{max}");
            assert!(min > 0.0 && max < 4.0, "{p:?}: {min}..{max}");
            assert_ne!(factor(p, 3, t), factor(p, 4, t));
        }
    }

    #[test]
    fn residential_peaks_in_the_evening() {
        let day = 1_795_000_000_000 - 1_795_000_000_000 % 86_400_000;
        let mean = |h: i64| {
            (0..360)
                .map(|k| factor(Profile::Residential, 1, day + h * 3_600_000 + k * STEP_MS))
                .sum::<f64>()
                / 360.0
        };
        assert!(mean(19) > 1.5 * mean(3), "{} vs {}", mean(19), mean(3));
    }
}
