//! `amr-gateway register read|write`: raw Modbus registers and coils, as mbpoll and modpoll
//! show them — any function (01 coils, 02 discrete inputs, 03 holding, 04 input registers),
//! any address and count, values shown as `u16`, `i16`, `u32`, `i32`, `f32` or raw `hex`; and
//! writes of one holding register (06), of a 32-bit value or several registers (16), or of a
//! coil (05), each confirmed by the meter's echo.
//!
//! Every transaction goes through the gateway's own transports (the RTU silence, the deadline
//! of the timeout plus the transaction's wire time at the line's baud rate).

use super::LinkArgs;
use crate::protocol::modbus::ModbusError;
use crate::protocol::modbus::codec::{self, Request};
use serde_json::json;
use std::time::{Duration, Instant};

/// How the registers read are shown, and how a value to write is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ValueType {
    U16,
    I16,
    U32,
    I32,
    F32,
    Hex,
}

impl ValueType {
    pub fn parse(s: &str) -> Result<ValueType, String> {
        Ok(match s.to_ascii_lowercase().as_str() {
            "u16" => ValueType::U16,
            "i16" => ValueType::I16,
            "u32" => ValueType::U32,
            "i32" => ValueType::I32,
            "f32" | "float" => ValueType::F32,
            "hex" => ValueType::Hex,
            _ => return Err(format!("--type {s}: use u16, i16, u32, i32, f32 or hex")),
        })
    }

    pub fn name(self) -> &'static str {
        match self {
            ValueType::U16 => "u16",
            ValueType::I16 => "i16",
            ValueType::U32 => "u32",
            ValueType::I32 => "i32",
            ValueType::F32 => "f32",
            ValueType::Hex => "hex",
        }
    }

    /// Registers one value takes.
    pub fn words(self) -> u16 {
        match self {
            ValueType::U32 | ValueType::I32 | ValueType::F32 => 2,
            _ => 1,
        }
    }
}

/// Order of the two registers of a 32-bit value: `big` (high word first, the Modbus
/// convention) or `little` (low word first).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WordOrder {
    Big,
    Little,
}

impl WordOrder {
    pub fn parse(s: &str) -> Result<WordOrder, String> {
        match s.to_ascii_lowercase().as_str() {
            "big" | "abcd" => Ok(WordOrder::Big),
            "little" | "cdab" => Ok(WordOrder::Little),
            _ => Err(format!(
                "--word-order {s}: use big (high word first) or little"
            )),
        }
    }
}

/// What to read.
#[derive(Debug, Clone)]
pub struct ReadArgs {
    pub unit: u8,
    pub function: u8,
    pub start: u16,
    /// Values (of `value_type`) for registers, bits for 01/02.
    pub count: u16,
    pub value_type: ValueType,
    pub word_order: WordOrder,
}

/// One value read: its first register's address, the raw words, and the value.
#[derive(Debug, Clone, PartialEq)]
pub struct Value {
    pub address: u16,
    pub raw: Vec<u16>,
    /// The number, or for `hex` the words written out.
    pub shown: String,
    pub number: Option<f64>,
}

/// A read's outcome.
#[derive(Debug, Clone)]
pub struct ReadResult {
    pub args: ReadArgs,
    pub values: Vec<Value>,
    pub elapsed: Duration,
}

/// A 32-bit value's words in big-endian order.
fn ordered(words: &[u16], order: WordOrder) -> [u16; 2] {
    match order {
        WordOrder::Big => [words[0], words[1]],
        WordOrder::Little => [words[1], words[0]],
    }
}

/// The value `words` hold as `t`.
pub fn decode(words: &[u16], t: ValueType, order: WordOrder) -> (String, Option<f64>) {
    let number = |v: f64| (trim(v), Some(v));
    match t {
        ValueType::U16 => number(f64::from(words[0])),
        ValueType::I16 => number(f64::from(words[0] as i16)),
        ValueType::Hex => (format!("0x{:04X}", words[0]), None),
        ValueType::U32 | ValueType::I32 | ValueType::F32 => {
            let [hi, lo] = ordered(words, order);
            let bits = (u32::from(hi) << 16) | u32::from(lo);
            match t {
                ValueType::U32 => number(f64::from(bits)),
                ValueType::I32 => number(f64::from(bits as i32)),
                _ => {
                    let f = f32::from_bits(bits);
                    if f.is_finite() {
                        (format!("{f}"), Some(f64::from(f)))
                    } else {
                        (format!("{f}"), None)
                    }
                }
            }
        }
    }
}

fn trim(v: f64) -> String {
    format!("{v}")
}

/// The registers `value` (as typed on the command line) takes as `t`.
pub fn encode(value: &str, t: ValueType, order: WordOrder) -> Result<Vec<u16>, String> {
    let bad = || format!("--value {value} is not a {} value", t.name());
    let int = |s: &str| -> Result<i64, String> {
        let s = s.trim();
        match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
            Some(h) => i64::from_str_radix(h, 16).map_err(|_| bad()),
            None => s.parse::<i64>().map_err(|_| bad()),
        }
    };
    let pair = |bits: u32| {
        let (hi, lo) = ((bits >> 16) as u16, bits as u16);
        match order {
            WordOrder::Big => vec![hi, lo],
            WordOrder::Little => vec![lo, hi],
        }
    };
    Ok(match t {
        ValueType::U16 | ValueType::Hex => {
            vec![u16::try_from(int(value)?).map_err(|_| format!("{}: 0..65535", bad()))?]
        }
        ValueType::I16 => vec![
            i16::try_from(int(value)?).map_err(|_| format!("{}: -32768..32767", bad()))? as u16,
        ],
        ValueType::U32 => pair(u32::try_from(int(value)?).map_err(|_| bad())?),
        ValueType::I32 => pair(i32::try_from(int(value)?).map_err(|_| bad())? as u32),
        ValueType::F32 => {
            let f: f32 = value.trim().parse().map_err(|_| bad())?;
            if !f.is_finite() {
                return Err(bad());
            }
            pair(f.to_bits())
        }
    })
}

/// Why a transaction failed, in words, with what to check.
pub fn explain(link: &LinkArgs, unit: u8, e: &ModbusError) -> String {
    match e {
        ModbusError::Exception { code } => format!(
            "unit {unit} answered exception {code:#04x} ({}){}",
            codec::exception_name(*code),
            match code {
                1 => ": the meter does not support this function",
                2 => ": the meter has no such register (check the address, zero-based: 40001 is 0)",
                3 => ": the meter refuses this value or count",
                _ => "",
            }
        ),
        e if super::no_valid_answer(e) => format!("unit {unit}: {}", link.advice(&e.to_string())),
        e => format!("unit {unit}: {e}"),
    }
}

/// Reads what `args` say.
pub async fn read(link: &LinkArgs, args: &ReadArgs) -> Result<ReadResult, String> {
    let bits = matches!(args.function, codec::READ_COILS | codec::READ_DISCRETE);
    let count = if bits {
        args.count
    } else {
        args.count
            .checked_mul(args.value_type.words())
            .ok_or("--count is too large")?
    };
    let request = Request::Read {
        function: args.function,
        address: args.start,
        count,
    };
    request
        .check()
        .map_err(|e| format!("--count {}: {e}", args.count))?;
    let (mut client, timing) = link.modbus_client().await?;
    let deadline = Duration::from_millis(link.timeout_ms) + timing.wire_time(&request);
    let started = Instant::now();
    let data = client
        .transact(args.unit, &request, deadline)
        .await
        .map_err(|e| explain(link, args.unit, &e))?;
    let elapsed = started.elapsed();
    let values = if bits {
        codec::unpack_bits(&data, count)
            .into_iter()
            .enumerate()
            .map(|(i, b)| Value {
                address: args.start.wrapping_add(i as u16),
                raw: vec![u16::from(b)],
                shown: if b { "1 (on)" } else { "0 (off)" }.to_string(),
                number: Some(f64::from(u8::from(b))),
            })
            .collect()
    } else {
        let words = codec::words_of(&data);
        words
            .chunks(args.value_type.words() as usize)
            .enumerate()
            .map(|(i, w)| {
                let (shown, number) = decode(w, args.value_type, args.word_order);
                Value {
                    address: args.start.wrapping_add(i as u16 * args.value_type.words()),
                    raw: w.to_vec(),
                    shown,
                    number,
                }
            })
            .collect()
    };
    Ok(ReadResult {
        args: args.clone(),
        values,
        elapsed,
    })
}

fn function_name(f: u8) -> &'static str {
    match f {
        codec::READ_COILS => "coils",
        codec::READ_DISCRETE => "discrete inputs",
        codec::READ_HOLDING => "holding registers",
        codec::READ_INPUT => "input registers",
        codec::WRITE_COIL => "write single coil",
        codec::WRITE_REGISTER => "write single register",
        codec::WRITE_REGISTERS => "write multiple registers",
        _ => "?",
    }
}

impl ReadResult {
    pub fn table(&self) -> String {
        let a = &self.args;
        let mut out = format!(
            "unit {} · function {:02} ({}) · from {} (0x{:04X}) · {} in {} ms\n",
            a.unit,
            a.function,
            function_name(a.function),
            a.start,
            a.start,
            if matches!(a.function, 1 | 2) {
                "bits".to_string()
            } else {
                a.value_type.name().to_string()
            },
            self.elapsed.as_millis()
        );
        out += &format!("{:<16}  {:<12}  value\n", "address", "raw");
        for v in &self.values {
            let raw: Vec<String> = v.raw.iter().map(|w| format!("{w:04X}")).collect();
            out += &format!(
                "{:<16}  {:<12}  {}\n",
                format!("{} (0x{:04X})", v.address, v.address),
                raw.join(" "),
                v.shown
            );
        }
        out
    }

    pub fn json(&self) -> serde_json::Value {
        let a = &self.args;
        json!({
            "unit": a.unit,
            "function": a.function,
            "start": a.start,
            "count": a.count,
            "type": if matches!(a.function, 1 | 2) { "bit" } else { a.value_type.name() },
            "elapsed_ms": self.elapsed.as_millis() as u64,
            "values": self.values.iter().map(|v| json!({
                "address": v.address,
                "raw": v.raw,
                "value": v.number.map(crate::model::json_number).unwrap_or_else(|| json!(v.shown)),
            })).collect::<Vec<_>>(),
        })
    }
}

/// A write done and confirmed.
#[derive(Debug, Clone)]
pub struct WriteResult {
    pub unit: u8,
    pub request: Request,
    pub elapsed: Duration,
}

/// Sends `request` (a write) to `unit` and checks the meter's echo.
pub async fn write(link: &LinkArgs, unit: u8, request: &Request) -> Result<WriteResult, String> {
    request.check()?;
    let (mut client, timing) = link.modbus_client().await?;
    let deadline = Duration::from_millis(link.timeout_ms) + timing.wire_time(request);
    let started = Instant::now();
    let echo = client
        .transact(unit, request, deadline)
        .await
        .map_err(|e| explain(link, unit, &e))?;
    if Some(echo.as_slice()) != request.echo().as_ref().map(|e| e.as_slice()) {
        return Err(format!(
            "unit {unit} answered the write with {echo:02X?}, not its echo: the write may not \
             have been taken; read the register back"
        ));
    }
    Ok(WriteResult {
        unit,
        request: request.clone(),
        elapsed: started.elapsed(),
    })
}

impl WriteResult {
    fn what(&self) -> (u16, serde_json::Value, String) {
        match &self.request {
            Request::WriteCoil { address, on } => (
                *address,
                json!(on),
                format!(
                    "coil {address} (0x{address:04X}) {}",
                    if *on { "on" } else { "off" }
                ),
            ),
            Request::WriteRegister { address, value } => (
                *address,
                json!([value]),
                format!("{value} (0x{value:04X}) to holding register {address} (0x{address:04X})"),
            ),
            Request::WriteRegisters { address, values } => {
                let words: Vec<String> = values.iter().map(|w| format!("{w:04X}")).collect();
                (
                    *address,
                    json!(values),
                    format!(
                        "{} to holding registers from {address} (0x{address:04X})",
                        words.join(" ")
                    ),
                )
            }
            Request::Read { address, .. } => (*address, json!(null), String::new()),
        }
    }

    pub fn table(&self) -> String {
        let f = self.request.function();
        format!(
            "unit {} · function {:02} ({}) · wrote {} · confirmed in {} ms\n",
            self.unit,
            f,
            function_name(f),
            self.what().2,
            self.elapsed.as_millis()
        )
    }

    pub fn json(&self) -> serde_json::Value {
        let (address, values, _) = self.what();
        json!({
            "unit": self.unit,
            "function": self.request.function(),
            "address": address,
            "values": values,
            "confirmed": true,
            "elapsed_ms": self.elapsed.as_millis() as u64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_round_trip_in_both_word_orders() {
        for order in [WordOrder::Big, WordOrder::Little] {
            let w = encode("230.5", ValueType::F32, order).unwrap();
            assert_eq!(decode(&w, ValueType::F32, order).1, Some(230.5));
            let w = encode("-2", ValueType::I32, order).unwrap();
            assert_eq!(decode(&w, ValueType::I32, order).1, Some(-2.0));
            let w = encode("70000", ValueType::U32, order).unwrap();
            assert_eq!(decode(&w, ValueType::U32, order).1, Some(70000.0));
        }
        assert_eq!(
            encode("10", ValueType::F32, WordOrder::Big).unwrap(),
            [0x4120, 0]
        );
        assert_eq!(
            encode("0x1C", ValueType::U16, WordOrder::Big).unwrap(),
            [0x1C]
        );
        assert_eq!(
            encode("-1", ValueType::I16, WordOrder::Big).unwrap(),
            [0xFFFF]
        );
        assert!(encode("70000", ValueType::U16, WordOrder::Big).is_err());
        assert!(encode("abc", ValueType::F32, WordOrder::Big).is_err());
        assert_eq!(
            decode(&[0xBEEF], ValueType::Hex, WordOrder::Big).0,
            "0xBEEF"
        );
    }
}
