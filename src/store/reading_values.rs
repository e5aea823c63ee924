//! How a history row keeps a reading's values (`history.values_blob`): each value in the
//! shortest form that gives back exactly the same f64, bit for bit.
//!
//! Meters do not produce arbitrary doubles: a Modbus meter's value is an f32 register (times
//! the model's scale, e.g. 0.001 for W → kW), a DL/T 645 value a short decimal (energy 2
//! places, voltage 1, current 3, power 4). So per value, one of (a 4-bit code each):
//!
//! | code | form | bytes |
//! | --- | --- | --- |
//! | 0-6 | a decimal `n / 10^code`: `n` as a zigzag LEB128 varint | 1-8 |
//! | 7 | an f32, little-endian | 4 |
//! | 8, 9, 10 | an f32 times 0.1, 0.01, 0.001 (a register and its scale) | 4 |
//! | 15 | the f64, little-endian | 8 |
//!
//! A form is chosen only when decoding it gives the same bits (so -0.0, NaN payloads and
//! infinities come back as they were: NaN and ±inf as f32, -0.0 as f32, other NaN payloads as
//! f64). The blob is the codes, two a byte (value `i`'s in the low nibble of byte `i / 2` when
//! `i` is even, the high nibble when odd; an unused last nibble is 0), then the values in
//! layout order.
//!
//! Rows written before (schema 6 and 7 until this codec) hold the values as plain
//! little-endian f64, 8 bytes each. The two are told apart by length alone: a compact blob is
//! written only when it is shorter than `8 × values`, else the plain form is written, so a blob
//! of exactly `8 × values` bytes is plain and any shorter one compact.

/// Powers of ten a decimal form divides by (exact as f64).
const POW10: [f64; 7] = [1.0, 10.0, 100.0, 1_000.0, 10_000.0, 100_000.0, 1_000_000.0];
/// The scales an f32 form multiplies by (codes 8, 9, 10): the model files' register scales.
const F32_SCALES: [f64; 3] = [0.1, 0.01, 0.001];
const F32: u8 = 7;
const F64: u8 = 15;
/// Decimals stay within the integers an f64 holds exactly.
const DECIMAL_LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53

/// The blob of `values` (in layout order).
pub(crate) fn encode(values: &[f64]) -> Vec<u8> {
    let mut codes = vec![0u8; values.len().div_ceil(2)];
    let mut body = Vec::with_capacity(values.len() * 4);
    for (i, &v) in values.iter().enumerate() {
        let code = encode_value(v, &mut body);
        codes[i / 2] |= if i % 2 == 0 { code } else { code << 4 };
    }
    if codes.len() + body.len() >= values.len() * 8 {
        return values.iter().flat_map(|v| v.to_le_bytes()).collect();
    }
    codes.extend_from_slice(&body);
    codes
}

/// The `count` values of `blob`, either form; a value the blob does not hold (a damaged blob)
/// is NaN.
pub(crate) fn decode(blob: &[u8], count: usize) -> Vec<f64> {
    if blob.len() >= count * 8 {
        return blob
            .chunks_exact(8)
            .map(|b| f64::from_le_bytes(b.try_into().expect("chunks of 8")))
            .chain(std::iter::repeat(f64::NAN))
            .take(count)
            .collect();
    }
    let header = count.div_ceil(2);
    let mut at = header.min(blob.len());
    (0..count)
        .map(|i| {
            let code = blob
                .get(i / 2)
                .map_or(F64, |b| if i % 2 == 0 { b & 0x0f } else { b >> 4 });
            decode_value(code, blob, &mut at).unwrap_or(f64::NAN)
        })
        .collect()
}

/// Appends `v` to `body` in its shortest exact form; its code.
fn encode_value(v: f64, body: &mut Vec<u8>) -> u8 {
    let mut best: Option<(u8, Vec<u8>)> = None;
    let mut offer = |code: u8, bytes: Vec<u8>| {
        if best.as_ref().is_none_or(|(_, b)| bytes.len() < b.len()) {
            best = Some((code, bytes));
        }
    };
    for (k, p) in POW10.iter().enumerate() {
        let s = v * p;
        if !s.is_finite() || s.abs() > DECIMAL_LIMIT {
            break;
        }
        let n = s.round() as i64;
        if ((n as f64) / p).to_bits() == v.to_bits() {
            let mut bytes = Vec::new();
            put_varint(zigzag(n), &mut bytes);
            offer(k as u8, bytes);
            break;
        }
    }
    if (v as f32 as f64).to_bits() == v.to_bits() {
        offer(F32, (v as f32).to_le_bytes().to_vec());
    } else {
        for (k, scale) in F32_SCALES.iter().enumerate() {
            let x = (v / scale) as f32;
            if ((x as f64) * scale).to_bits() == v.to_bits() {
                offer(8 + k as u8, x.to_le_bytes().to_vec());
                break;
            }
        }
    }
    let (code, bytes) = best.unwrap_or_else(|| (F64, v.to_le_bytes().to_vec()));
    body.extend_from_slice(&bytes);
    code
}

/// The value of `code` at `*at` in `blob`, moving `at` past it.
fn decode_value(code: u8, blob: &[u8], at: &mut usize) -> Option<f64> {
    Some(match code {
        0..=6 => {
            let n = unzigzag(get_varint(blob, at)?);
            (n as f64) / POW10[code as usize]
        }
        F32 => f32::from_le_bytes(take(blob, at, 4)?.try_into().ok()?) as f64,
        8..=10 => {
            let x = f32::from_le_bytes(take(blob, at, 4)?.try_into().ok()?);
            (x as f64) * F32_SCALES[code as usize - 8]
        }
        F64 => f64::from_le_bytes(take(blob, at, 8)?.try_into().ok()?),
        _ => return None,
    })
}

/// The `n` bytes at `*at`, moving `at` past them.
fn take<'a>(blob: &'a [u8], at: &mut usize, n: usize) -> Option<&'a [u8]> {
    let bytes = blob.get(*at..*at + n)?;
    *at += n;
    Some(bytes)
}

fn zigzag(n: i64) -> u64 {
    ((n << 1) ^ (n >> 63)) as u64
}

fn unzigzag(z: u64) -> i64 {
    ((z >> 1) as i64) ^ -((z & 1) as i64)
}

fn put_varint(mut z: u64, out: &mut Vec<u8>) {
    while z >= 0x80 {
        out.push((z as u8 & 0x7f) | 0x80);
        z >>= 7;
    }
    out.push(z as u8);
}

fn get_varint(blob: &[u8], at: &mut usize) -> Option<u64> {
    let mut z = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *blob.get(*at)?;
        *at += 1;
        z |= ((b & 0x7f) as u64) << shift;
        if b & 0x80 == 0 {
            return Some(z);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn bits(values: &[f64]) -> Vec<u64> {
        values.iter().map(|v| v.to_bits()).collect()
    }

    fn round_trip(values: &[f64]) -> Vec<u8> {
        let blob = encode(values);
        assert_eq!(
            bits(&decode(&blob, values.len())),
            bits(values),
            "{values:?}"
        );
        blob
    }

    #[test]
    fn meters_values_are_short() {
        // DL/T 645 decimals: energy 2 places, voltage 1, current 3, power 4.
        let blob = round_trip(&[12345.67, 229.9, 5.123, 1.2345, 0.0, -3.5]);
        assert_eq!(blob.len(), 3 + 4 + 2 + 2 + 3 + 1 + 1);
        // Modbus f32 registers, and W registers scaled to kW.
        let f = [
            229.8_f32 as f64,
            49.98_f32 as f64,
            (183.33334_f32 as f64) * 0.001,
        ];
        let blob = round_trip(&f);
        assert_eq!(blob.len(), 2 + 3 * 4);
    }

    #[test]
    fn specials_come_back_bit_exact() {
        let nan_payload = f64::from_bits(0x7ff8_0000_0000_1234);
        round_trip(&[
            -0.0,
            0.0,
            f64::NAN,
            -f64::NAN,
            nan_payload,
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::MAX,
            f64::MIN_POSITIVE,
            5e-324,
            1e300,
            9_007_199_254_740_993.0,
            -9_007_199_254_740_992.0,
            0.1 + 0.2,
        ]);
        round_trip(&[]);
    }

    #[test]
    fn plain_f64_blobs_still_read() {
        // Schema 6 rows: little-endian f64, 8 bytes a value.
        let values = [1234.5_f64, 230.1, 0.1 + 0.2];
        let plain: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
        assert_eq!(bits(&decode(&plain, 3)), bits(&values));
        // Values with no shorter form are written plain, so the length rule holds.
        let odd = [std::f64::consts::PI, std::f64::consts::E];
        assert_eq!(
            encode(&odd),
            odd.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_damaged_blob_gives_nan_not_a_panic() {
        let blob = encode(&[229.9, 12345.67, 1.0]);
        let values = decode(&blob[..blob.len() - 1], 3);
        assert_eq!(values[0], 229.9);
        assert!(values[2].is_nan());
        assert!(decode(&[0xff], 2).iter().all(|v| v.is_nan()));
    }

    proptest! {
        #[test]
        fn every_f64_round_trips(raw in proptest::collection::vec(any::<u64>(), 0..40)) {
            let values: Vec<f64> = raw.iter().map(|b| f64::from_bits(*b)).collect();
            let blob = encode(&values);
            prop_assert!(blob.len() <= values.len() * 8);
            prop_assert_eq!(bits(&decode(&blob, values.len())), bits(&values));
        }

        #[test]
        fn meter_like_values_round_trip(
            decimals in proptest::collection::vec((-10_000_000_000i64..10_000_000_000, 0u32..7), 0..30),
            registers in proptest::collection::vec(any::<f32>(), 0..30),
        ) {
            let mut values: Vec<f64> =
                decimals.iter().map(|(n, k)| *n as f64 / 10f64.powi(*k as i32)).collect();
            values.extend(registers.iter().map(|x| *x as f64));
            values.extend(registers.iter().map(|x| *x as f64 * 0.001));
            let blob = encode(&values);
            prop_assert!(blob.len() <= values.len() * 8);
            prop_assert_eq!(bits(&decode(&blob, values.len())), bits(&values));
        }
    }
}
