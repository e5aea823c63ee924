//! DL/T 645-2007 daily freezes (日冻结): the data identifiers of a meter's own frozen data and
//! the bytes they carry.
//!
//! DL/T 645-2007 appendix A, the family `0506xxxx` (see `shared/reference/dlt645-2007.md`):
//! DI0 = `01`..`3E` selects the 1st..62nd most recent daily freeze (a history index, not a
//! tariff), DI1 what of it:
//!
//! | DI | what | format |
//! |----|------|--------|
//! | `050600nn` | the time of the n-th last daily freeze | YYMMDDhhmm (5 bytes) |
//! | `050601nn` | its forward active energy, total + tariffs 1..4 | XXXXXX.XX kWh × 5 (20 bytes) |
//! | `050602nn` | its reverse active energy, total + tariffs 1..4 | XXXXXX.XX kWh × 5 (20 bytes) |
//!
//! The family is indexed by history, which the data-identifier model of a meter type
//! (`protocols/*.toml`: one identifier per value, blocks of single identifiers) does not
//! express, so the identifiers live here. DL/T 645-1997 has no daily freeze in this form.

use super::codec::{self, DataId, MeterTime};

/// How many daily freezes a DL/T 645-2007 meter keeps (DI0 = 1..=62).
pub const FREEZE_DAYS: u8 = 62;
/// Bytes of the freeze time (YYMMDDhhmm).
pub const TIME_LEN: usize = 5;
/// Bytes of an energy block (total + tariffs 1..4, XXXXXX.XX each).
pub const ENERGY_LEN: usize = 20;

/// What a daily-freeze identifier asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FreezeItem {
    /// `050600nn`: the freeze's time.
    Time,
    /// `050601nn`: forward active energy, total + tariffs.
    Import,
    /// `050602nn`: reverse active energy, total + tariffs.
    Export,
}

impl FreezeItem {
    /// The identifier of this item of the `n`-th last freeze (1..=62).
    pub fn di(self, n: u8) -> DataId {
        let kind: u32 = match self {
            FreezeItem::Time => 0,
            FreezeItem::Import => 1,
            FreezeItem::Export => 2,
        };
        DataId::V2007(0x0506_0000 | kind << 8 | u32::from(n))
    }

    /// Bytes of its value.
    pub fn value_len(self) -> usize {
        match self {
            FreezeItem::Time => TIME_LEN,
            FreezeItem::Import | FreezeItem::Export => ENERGY_LEN,
        }
    }

    /// The item and history index an identifier asks for; `None` outside the family.
    pub fn of(di: DataId) -> Option<(FreezeItem, u8)> {
        let DataId::V2007(v) = di else {
            return None;
        };
        if v >> 16 != 0x0506 {
            return None;
        }
        let n = (v & 0xFF) as u8;
        if !(1..=FREEZE_DAYS).contains(&n) {
            return None;
        }
        let item = match (v >> 8) & 0xFF {
            0 => FreezeItem::Time,
            1 => FreezeItem::Import,
            2 => FreezeItem::Export,
            _ => return None,
        };
        Some((item, n))
    }
}

/// The five bytes of a freeze time (`mm hh DD MM YY`, low byte first).
pub fn encode_time(t: &MeterTime) -> Vec<u8> {
    let data = codec::time_sync_data(t);
    data[1..].to_vec()
}

/// A freeze time from its five bytes; `None` when they are not a valid BCD time (a meter that
/// has not frozen yet answers `00 00 00 00 00`).
pub fn decode_time(bytes: &[u8]) -> Option<MeterTime> {
    if bytes.len() != TIME_LEN {
        return None;
    }
    let mut data = vec![0u8];
    data.extend_from_slice(bytes);
    codec::parse_time_sync_data(&data)
}

/// An energy block (total + tariffs 1..4, kWh).
pub fn encode_energy(values: &[f64; 5]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|v| codec::encode_bcd(*v, 4, 2, false))
        .collect()
}

/// An energy block's five values (total + tariffs 1..4, kWh); `None` for bytes that are not
/// BCD or not 20 of them (extra bytes some meters pad with are ignored).
pub fn decode_energy(bytes: &[u8]) -> Option<[f64; 5]> {
    if bytes.len() < ENERGY_LEN {
        return None;
    }
    let mut out = [0.0; 5];
    for (k, v) in out.iter_mut().enumerate() {
        *v = codec::decode_bcd(&bytes[4 * k..4 * k + 4], 2, false).ok()?;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_follow_the_standard() {
        assert_eq!(FreezeItem::Time.di(1).to_string(), "05060001");
        assert_eq!(FreezeItem::Import.di(1).to_string(), "05060101");
        assert_eq!(FreezeItem::Export.di(62).to_string(), "0506023E");
        assert_eq!(
            FreezeItem::of(DataId::V2007(0x0506_013E)),
            Some((FreezeItem::Import, 62))
        );
        assert_eq!(FreezeItem::of(DataId::V2007(0x0506_003F)), None);
        assert_eq!(FreezeItem::of(DataId::V2007(0x0001_FF00)), None);
    }

    #[test]
    fn times_and_energies_round_trip() {
        let t = MeterTime {
            year: 2026,
            month: 11,
            day: 29,
            hour: 0,
            minute: 0,
            second: 0,
        };
        let bytes = encode_time(&t);
        assert_eq!(bytes, vec![0x00, 0x00, 0x29, 0x11, 0x26]);
        assert_eq!(decode_time(&bytes), Some(t));
        assert_eq!(decode_time(&[0; 5]), None);
        let e = [1234.56, 400.0, 300.5, 200.25, 333.81];
        assert_eq!(decode_energy(&encode_energy(&e)), Some(e));
        assert_eq!(decode_energy(&[0x12; 19]), None);
    }
}
