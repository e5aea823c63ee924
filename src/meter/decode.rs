//! Register words ⇄ values, honouring data type, word order and scale.

use super::{DataType, MeterModel, ReadBlock, RegisterDef, WordOrder};

/// Decodes the registers of `block` from `words` (the block's reply) into
/// `(quantity, canonical value)` pairs. Values are secondary-side; the caller applies the
/// meter's multiplier. Registers whose words are missing from `words` are skipped.
pub fn decode_block(model: &MeterModel, block: &ReadBlock, words: &[u16]) -> Vec<(String, f64)> {
    let mut out = Vec::with_capacity(block.registers.len());
    for &i in &block.registers {
        let def = &model.registers[i];
        let start = (def.address - block.address) as usize;
        let end = start + def.data_type.words() as usize;
        if let Some(w) = words.get(start..end)
            && !is_no_value(def, w)
        {
            out.push((def.quantity.clone(), decode_value(def, w)));
        }
    }
    out
}

/// True for the "no value" markers some meters (ABB) send for quantities they do not measure:
/// all ones for unsigned integers, the largest positive value for signed ones, NaN for floats.
pub fn is_no_value(def: &RegisterDef, words: &[u16]) -> bool {
    let bytes = to_big_endian(words, def.word_order);
    match def.data_type {
        DataType::U16 | DataType::U32 | DataType::U64 => bytes.iter().all(|b| *b == 0xFF),
        DataType::I16 | DataType::I32 => bytes[0] == 0x7F && bytes[1..].iter().all(|b| *b == 0xFF),
        DataType::F32 | DataType::F64 => decode_value(def, words).is_nan(),
    }
}

/// Decodes one value from exactly `def.data_type.words()` words.
pub fn decode_value(def: &RegisterDef, words: &[u16]) -> f64 {
    let bytes = to_big_endian(words, def.word_order);
    let raw = match def.data_type {
        DataType::U16 => u16::from_be_bytes([bytes[0], bytes[1]]) as f64,
        DataType::I16 => i16::from_be_bytes([bytes[0], bytes[1]]) as f64,
        DataType::U32 => u32::from_be_bytes(bytes[..4].try_into().unwrap()) as f64,
        DataType::I32 => i32::from_be_bytes(bytes[..4].try_into().unwrap()) as f64,
        DataType::F32 => f32::from_be_bytes(bytes[..4].try_into().unwrap()) as f64,
        DataType::U64 => u64::from_be_bytes(bytes[..8].try_into().unwrap()) as f64,
        DataType::F64 => f64::from_be_bytes(bytes[..8].try_into().unwrap()),
    };
    raw * def.scale
}

/// Encodes `value` (canonical unit) into register words for `def` (used by the simulator).
/// Integer types round to the nearest step of `scale` and saturate at the type's range.
pub fn encode_value(def: &RegisterDef, value: f64) -> Vec<u16> {
    let raw = if def.scale != 0.0 {
        value / def.scale
    } else {
        value
    };
    let be: Vec<u8> = match def.data_type {
        DataType::U16 => (raw.round().clamp(0.0, u16::MAX as f64) as u16)
            .to_be_bytes()
            .to_vec(),
        DataType::I16 => (raw.round().clamp(i16::MIN as f64, i16::MAX as f64) as i16)
            .to_be_bytes()
            .to_vec(),
        DataType::U32 => (raw.round().clamp(0.0, u32::MAX as f64) as u32)
            .to_be_bytes()
            .to_vec(),
        DataType::I32 => (raw.round().clamp(i32::MIN as f64, i32::MAX as f64) as i32)
            .to_be_bytes()
            .to_vec(),
        DataType::F32 => (raw as f32).to_be_bytes().to_vec(),
        DataType::U64 => (raw.round().max(0.0) as u64).to_be_bytes().to_vec(),
        DataType::F64 => raw.to_be_bytes().to_vec(),
    };
    from_big_endian(&be, def.word_order)
}

/// Reorders register words (as received) into the value's big-endian bytes.
fn to_big_endian(words: &[u16], order: WordOrder) -> Vec<u8> {
    let mut ws: Vec<u16> = words.to_vec();
    if matches!(order, WordOrder::Cdab | WordOrder::Dcba) {
        ws.reverse();
    }
    let mut out = Vec::with_capacity(ws.len() * 2);
    for w in ws {
        let [hi, lo] = w.to_be_bytes();
        if matches!(order, WordOrder::Badc | WordOrder::Dcba) {
            out.extend_from_slice(&[lo, hi]);
        } else {
            out.extend_from_slice(&[hi, lo]);
        }
    }
    out
}

/// Inverse of [`to_big_endian`].
fn from_big_endian(bytes: &[u8], order: WordOrder) -> Vec<u16> {
    let mut ws: Vec<u16> = bytes
        .chunks(2)
        .map(|c| {
            if matches!(order, WordOrder::Badc | WordOrder::Dcba) {
                u16::from_be_bytes([c[1], c[0]])
            } else {
                u16::from_be_bytes([c[0], c[1]])
            }
        })
        .collect();
    if matches!(order, WordOrder::Cdab | WordOrder::Dcba) {
        ws.reverse();
    }
    ws
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def(t: DataType, o: WordOrder, scale: f64) -> RegisterDef {
        RegisterDef {
            quantity: "energy_import_kwh".into(),
            function: 3,
            address: 0,
            data_type: t,
            word_order: o,
            scale,
        }
    }

    #[test]
    fn no_value_markers_are_skipped() {
        let d = def(DataType::U32, WordOrder::Abcd, 0.01);
        assert!(is_no_value(&d, &[0xFFFF, 0xFFFF]));
        assert!(!is_no_value(&d, &[0x0000, 0xFFFF]));
        let d = def(DataType::I16, WordOrder::Abcd, 1.0);
        assert!(is_no_value(&d, &[0x7FFF]));
        let d = def(DataType::F32, WordOrder::Abcd, 1.0);
        assert!(is_no_value(&d, &[0x7FC0, 0x0000]));
        assert!(!is_no_value(&d, &[0x4366, 0x8000]));
    }

    #[test]
    fn f32_word_orders() {
        // 230.5 as f32 = 0x43668000
        let d = def(DataType::F32, WordOrder::Abcd, 1.0);
        assert_eq!(encode_value(&d, 230.5), vec![0x4366, 0x8000]);
        assert_eq!(decode_value(&d, &[0x4366, 0x8000]), 230.5);
        let d = def(DataType::F32, WordOrder::Cdab, 1.0);
        assert_eq!(encode_value(&d, 230.5), vec![0x8000, 0x4366]);
        assert_eq!(decode_value(&d, &[0x8000, 0x4366]), 230.5);
        let d = def(DataType::F32, WordOrder::Badc, 1.0);
        assert_eq!(encode_value(&d, 230.5), vec![0x6643, 0x0080]);
        let d = def(DataType::F32, WordOrder::Dcba, 1.0);
        assert_eq!(encode_value(&d, 230.5), vec![0x0080, 0x6643]);
        assert_eq!(decode_value(&d, &[0x0080, 0x6643]), 230.5);
    }

    #[test]
    fn integers_with_scale_round_trip() {
        for (t, v) in [
            (DataType::U32, 123456.78),
            (DataType::I32, -1234.56),
            (DataType::U16, 230.1),
            (DataType::I16, -12.3),
            (DataType::U64, 9_876_543.21),
        ] {
            for o in [
                WordOrder::Abcd,
                WordOrder::Cdab,
                WordOrder::Badc,
                WordOrder::Dcba,
            ] {
                let scale = if t == DataType::U16 || t == DataType::I16 {
                    0.1
                } else {
                    0.01
                };
                let d = def(t, o, scale);
                let w = encode_value(&d, v);
                assert_eq!(w.len(), t.words() as usize);
                assert!((decode_value(&d, &w) - v).abs() < 1e-6, "{t:?} {o:?}");
            }
        }
    }
}
