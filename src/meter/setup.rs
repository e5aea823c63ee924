//! A model's `[setup]` section: how a new meter's unit id and baud rate are set over Modbus
//! (`amr-gateway setup`), for models whose manual documents it — which holding register holds
//! the unit id, which the baud rate and its codes, in which type and with which write function.
//!
//! ```toml
//! [setup]
//! unit_id_register = 0x0014   # holding register (zero-based)
//! baud_register = 0x001C      # optional
//! baud_codes = { 2400 = 0, 4800 = 1, 9600 = 2 }
//! type = "f32"                # "u16" (default) or "f32"
//! word_order = "abcd"         # default "abcd"
//! write_function = 16         # 16 (default) or 6 (u16 only)
//! ```

use std::collections::BTreeMap;

use toml::de::{DeTable, DeValue};

use super::library::{DataType, RegisterDef, WordOrder};
use super::{decode::decode_value, encode_value};
use crate::diagnostic::{Report, Section};
use crate::protocol::modbus::codec::{Request, WRITE_REGISTER, WRITE_REGISTERS};

const SETUP_KEYS: &[&str] = &[
    "unit_id_register",
    "baud_register",
    "baud_codes",
    "type",
    "word_order",
    "write_function",
];

/// Baud rates a code may stand for: the rates a serial port may be set to (the configuration's
/// rule, `config::STANDARD_BAUD_RATES`, which the meter layer may not import).
const BAUD_RATES: &[u32] = &[
    300, 600, 1200, 2400, 4800, 9600, 14400, 19200, 38400, 57600, 115200, 230400,
];

/// How a model's unit id and baud rate are written.
#[derive(Debug, Clone, PartialEq)]
pub struct Setup {
    /// Holding register (zero-based) of the unit id.
    pub unit_id_register: u16,
    /// Holding register of the baud rate code, when the model documents it.
    pub baud_register: Option<u16>,
    /// Baud rate → the code written for it.
    pub baud_codes: BTreeMap<u32, u16>,
    /// Type of both values: `u16` or `f32`.
    pub data_type: DataType,
    pub word_order: WordOrder,
    /// 16 (write multiple registers) or 6 (write single register, one-word types only).
    pub write_function: u8,
}

impl Setup {
    fn def(&self, address: u16) -> RegisterDef {
        RegisterDef {
            quantity: String::new(),
            function: 3,
            address,
            data_type: self.data_type,
            word_order: self.word_order,
            scale: 1.0,
        }
    }

    /// Registers one value occupies.
    pub fn words(&self) -> u16 {
        self.data_type.words()
    }

    /// The value `words` (read from a setup register) hold.
    pub fn decode(&self, words: &[u16]) -> f64 {
        decode_value(&self.def(0), words)
    }

    fn write(&self, address: u16, value: f64) -> Request {
        let values = encode_value(&self.def(address), value);
        if self.write_function == WRITE_REGISTER {
            Request::WriteRegister {
                address,
                value: values[0],
            }
        } else {
            Request::WriteRegisters { address, values }
        }
    }

    /// The write that gives the meter unit id `unit`.
    pub fn unit_id_write(&self, unit: u8) -> Request {
        self.write(self.unit_id_register, f64::from(unit))
    }

    /// The write that sets the meter's baud rate to `baud`, or why it cannot.
    pub fn baud_write(&self, baud: u32) -> Result<Request, String> {
        let Some(register) = self.baud_register else {
            return Err(
                "its model file documents no baud rate register ([setup] baud_register); \
                 set the rate on the meter's keys"
                    .into(),
            );
        };
        let Some(code) = self.baud_codes.get(&baud) else {
            let rates: Vec<String> = self.baud_codes.keys().map(u32::to_string).collect();
            return Err(format!(
                "baud {baud} is not one the model can be set to; it takes {}",
                rates.join(", ")
            ));
        };
        Ok(self.write(register, f64::from(*code)))
    }

    /// The baud rate a code read back stands for.
    pub fn baud_of(&self, code: f64) -> Option<u32> {
        self.baud_codes
            .iter()
            .find(|(_, c)| f64::from(**c) == code)
            .map(|(b, _)| *b)
    }
}

/// Reads `[setup]` of a model file, if there is one; problems go to `report`.
pub(super) fn parse(report: &mut Report, doc: &DeTable<'_>) -> Option<Option<Setup>> {
    let Some((key, value)) = doc.get_key_value("setup") else {
        return Some(None);
    };
    let DeValue::Table(table) = value.get_ref() else {
        report.at(
            key.span().start,
            "`setup` must be a table: write it as a [setup] section".to_string(),
        );
        return None;
    };
    let start = key.span().start;
    let s = Section::new(report, "[setup]", table, start, SETUP_KEYS);
    let errors_before = report.problems.len();
    let register = |report: &mut Report, name: &str| {
        s.integer_in(report, name, 0, 0xFFFF, "")
            .map(|v| *v.get_ref() as u16)
    };
    let unit_id_register = register(report, "unit_id_register");
    if s.get("unit_id_register").is_none() {
        s.missing(report, "unit_id_register", "unit_id_register = 0x0014");
    }
    let baud_register = register(report, "baud_register");
    let data_type = match s.string(report, "type") {
        None => DataType::U16,
        Some(t) => match DataType::from_name(t.get_ref()) {
            Some(d @ (DataType::U16 | DataType::F32)) => d,
            _ => {
                report.at(
                    t.span().start,
                    format!("[setup] type `{}`: use \"u16\" or \"f32\"", t.get_ref()),
                );
                DataType::U16
            }
        },
    };
    let word_order = match s.string(report, "word_order") {
        None => WordOrder::Abcd,
        Some(o) => WordOrder::from_name(o.get_ref()).unwrap_or_else(|| {
            report.at(
                o.span().start,
                format!(
                    "[setup] word_order `{}`: use \"abcd\", \"cdab\", \"badc\" or \"dcba\"",
                    o.get_ref()
                ),
            );
            WordOrder::Abcd
        }),
    };
    let write_function = match s.integer(report, "write_function") {
        None => WRITE_REGISTERS,
        Some(f) if *f.get_ref() == 16 => WRITE_REGISTERS,
        Some(f) if *f.get_ref() == 6 && data_type.words() == 1 => WRITE_REGISTER,
        Some(f) => {
            report.at(
                f.span().start,
                format!(
                    "write_function {}: use 16 (write multiple registers), or 6 for a one-word \
                     type (u16)",
                    f.get_ref()
                ),
            );
            WRITE_REGISTERS
        }
    };
    let mut baud_codes = BTreeMap::new();
    if let Some(v) = s.get("baud_codes") {
        match v.get_ref() {
            DeValue::Table(codes) => {
                for (rate, code) in codes.iter() {
                    let baud = rate.get_ref().parse::<u32>().ok();
                    let code_value = match code.get_ref() {
                        DeValue::Integer(i) => i64::from_str_radix(i.as_str(), i.radix()).ok(),
                        _ => None,
                    };
                    match (baud, code_value) {
                        (Some(b), Some(c))
                            if BAUD_RATES.contains(&b) && (0..=0xFFFF).contains(&c) =>
                        {
                            baud_codes.insert(b, c as u16);
                        }
                        (Some(b), _) if !BAUD_RATES.contains(&b) => report.at(
                            rate.span().start,
                            format!("baud_codes: {b} is not a standard baud rate"),
                        ),
                        (None, _) => report.at(
                            rate.span().start,
                            format!(
                                "baud_codes: `{}` is not a baud rate; write e.g. `9600 = 2`",
                                rate.get_ref()
                            ),
                        ),
                        _ => report.at(
                            code.span().start,
                            "baud_codes: a code is an integer 0..=65535".to_string(),
                        ),
                    }
                }
            }
            _ => report.at(
                v.span().start,
                "`baud_codes` must be an inline table, e.g. { 2400 = 0, 9600 = 2 }".to_string(),
            ),
        }
    }
    if baud_register.is_some() && baud_codes.is_empty() {
        report.at(
            start,
            "[setup] has a baud_register but no baud_codes; add e.g. `baud_codes = { 9600 = 2 }`"
                .to_string(),
        );
    }
    if report.problems.len() > errors_before {
        return None;
    }
    Some(Some(Setup {
        unit_id_register: unit_id_register?,
        baud_register,
        baud_codes,
        data_type,
        word_order,
        write_function,
    }))
}

#[cfg(test)]
mod tests {
    use super::super::{ModelLibrary, model_file};

    const MODEL: &str = "[model]\nname = \"x\"\nphases = 1\nfunction = 4\ntype = \"f32\"\n\
                         [[register]]\nquantity = \"voltage_l1_v\"\naddress = 0\n";

    #[test]
    fn eastron_models_write_a_float_unit_id_and_a_baud_code() {
        let library = ModelLibrary::builtin();
        let setup = library
            .get("eastron-sdm120")
            .unwrap()
            .setup
            .clone()
            .unwrap();
        assert_eq!(setup.unit_id_register, 0x0014);
        let write = setup.unit_id_write(12);
        assert_eq!(
            write,
            crate::protocol::modbus::codec::Request::WriteRegisters {
                address: 0x0014,
                values: vec![0x4140, 0x0000],
            }
        );
        assert_eq!(setup.decode(&[0x4140, 0]), 12.0);
        let baud = setup.baud_write(9600).unwrap();
        assert_eq!(baud.pdu()[1..3], [0x00, 0x1C]);
        assert!(
            setup
                .baud_write(19200)
                .unwrap_err()
                .contains("1200, 2400, 4800, 9600")
        );
        assert_eq!(setup.baud_of(2.0), Some(9600));
        assert!(library.get("chint-dtsu666").unwrap().setup.is_none());
    }

    #[test]
    fn a_bad_setup_section_is_reported_at_its_line() {
        let text = format!(
            "{MODEL}[setup]\nunit_id_register = 0x0014\nbaud_register = 0x001C\n\
             baud_codes = {{ 9601 = 2 }}\nwrite_function = 6\ntype = \"f32\"\n"
        );
        let errors: Vec<String> = model_file::parse(&text, "m.toml")
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("m.toml:12:") && e.contains("9601")),
            "{errors:?}"
        );
        assert!(
            errors
                .iter()
                .any(|e| e.starts_with("m.toml:13:") && e.contains("write_function 6")),
            "{errors:?}"
        );
        let text = format!("{MODEL}[setup]\nbaud_register = 0x001C\n");
        let errors = model_file::parse(&text, "m.toml").unwrap_err();
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("unit_id_register")),
            "{errors:?}"
        );
        let ok = format!("{MODEL}[setup]\nunit_id_register = 2\nwrite_function = 6\n");
        let parsed = model_file::parse(&ok, "m.toml").unwrap();
        assert_eq!(
            parsed.model.setup.unwrap().unit_id_write(7).pdu(),
            [6, 0, 2, 0, 7]
        );
    }
}
