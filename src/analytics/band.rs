//! The supply voltage band (GB/T 12325): a nominal phase voltage and the limits either side of
//! it. One rule for the voltage-quality statistics (time above / below the band) and the voltage
//! alarms (voltage_high / voltage_low), and the nominal that the phase-loss and outage
//! percentages refer to.
//!
//! Its one settings source is `[alarms.voltage]` (`nominal_v`, `upper_pct`, `lower_pct`); the
//! loader hands the same band to the voltage-quality engine.

use serde::{Deserialize, Serialize};

/// Where a voltage stands against the band.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BandPosition {
    /// Above the upper limit.
    Above,
    /// Within the limits (either limit included).
    Within,
    /// Below the lower limit.
    Below,
}

/// A nominal phase voltage and the band around it.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct VoltageBand {
    /// Nominal phase voltage, V. Default 220 (single-phase supply; phase voltage of 380 V).
    pub nominal_v: f64,
    /// Upper limit in percent of nominal. Default +7 (235.4 V).
    pub upper_pct: f64,
    /// Lower limit in percent of nominal (negative). Default −10 (198 V).
    pub lower_pct: f64,
}

impl Default for VoltageBand {
    fn default() -> Self {
        VoltageBand {
            nominal_v: 220.0,
            upper_pct: 7.0,
            lower_pct: -10.0,
        }
    }
}

impl VoltageBand {
    /// The upper limit, V.
    pub fn upper_v(&self) -> f64 {
        self.nominal_v * (1.0 + self.upper_pct / 100.0)
    }

    /// The lower limit, V.
    pub fn lower_v(&self) -> f64 {
        self.nominal_v * (1.0 + self.lower_pct / 100.0)
    }

    /// `pct` percent of nominal, V (absent phase, outage, hysteresis shares).
    pub fn share_v(&self, pct: f64) -> f64 {
        self.nominal_v * pct / 100.0
    }

    /// Where `volts` stands: above the upper limit, below the lower one, or within.
    pub fn position(&self, volts: f64) -> BandPosition {
        if volts > self.upper_v() {
            BandPosition::Above
        } else if volts < self.lower_v() {
            BandPosition::Below
        } else {
            BandPosition::Within
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_band_is_198_to_235_4_volts() {
        let b = VoltageBand::default();
        assert_eq!((b.upper_v(), b.lower_v()), (235.4, 198.0));
        assert_eq!(b.share_v(50.0), 110.0);
        assert_eq!(b.position(235.4), BandPosition::Within);
        assert_eq!(b.position(235.5), BandPosition::Above);
        assert_eq!(b.position(198.0), BandPosition::Within);
        assert_eq!(b.position(197.9), BandPosition::Below);
    }
}
