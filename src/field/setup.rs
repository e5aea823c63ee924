//! `amr-gateway setup`: gives a new meter its unit id (and baud rate) over Modbus, for models
//! whose file documents how (`[setup]`, [`crate::meter::Setup`]). New meters leave the factory
//! all at unit 1: wire them one at a time, give each its own id, then wire the bus.
//!
//! The steps: read the unit id register at the current unit (the meter answers, and as what
//! model); write the new unit id; read it back at the new unit id (the meter moved); then,
//! when asked, write the baud rate code at the new unit id — last, since the meter may switch
//! rate at once and answer nothing more at the old one.

use super::LinkArgs;
use super::register::explain;
use crate::meter::{MeterModel, Setup};
use crate::protocol::modbus::codec::{READ_HOLDING, Request};
use serde_json::json;
use std::time::Duration;

/// What to change.
#[derive(Debug, Clone)]
pub struct SetupArgs {
    pub unit: u8,
    pub new_unit: Option<u8>,
    pub new_baud: Option<u32>,
}

/// What was done, step by step.
#[derive(Debug, Clone, Default)]
pub struct SetupReport {
    pub steps: Vec<String>,
    /// The unit id the meter answers at now.
    pub unit: u8,
    pub baud_written: Option<u32>,
}

/// The model's `[setup]`, or which models have one.
pub fn setup_of<'m>(model: &'m MeterModel, with_setup: &[&str]) -> Result<&'m Setup, String> {
    model.setup.as_ref().ok_or_else(|| {
        format!(
            "model {} documents no way to set its unit id over Modbus (no [setup] in its file); \
             set it on the meter's keys. Models with [setup]: {}",
            model.name,
            with_setup.join(", ")
        )
    })
}

async fn read_setup_register(
    link: &LinkArgs,
    client: &mut crate::protocol::modbus::ModbusClient,
    timing: crate::protocol::modbus::RtuTiming,
    setup: &Setup,
    unit: u8,
    register: u16,
) -> Result<f64, String> {
    let request = Request::Read {
        function: READ_HOLDING,
        address: register,
        count: setup.words(),
    };
    let deadline = Duration::from_millis(link.timeout_ms) + timing.wire_time(&request);
    let data = client
        .transact(unit, &request, deadline)
        .await
        .map_err(|e| explain(link, unit, &e))?;
    Ok(setup.decode(&crate::protocol::modbus::codec::words_of(&data)))
}

async fn send(
    link: &LinkArgs,
    client: &mut crate::protocol::modbus::ModbusClient,
    timing: crate::protocol::modbus::RtuTiming,
    unit: u8,
    request: &Request,
) -> Result<(), String> {
    let deadline = Duration::from_millis(link.timeout_ms) + timing.wire_time(request);
    let echo = client
        .transact(unit, request, deadline)
        .await
        .map_err(|e| explain(link, unit, &e))?;
    if Some(echo.as_slice()) == request.echo().as_ref().map(|e| e.as_slice()) {
        Ok(())
    } else {
        Err(format!(
            "unit {unit} answered the write with {echo:02X?}, not its echo"
        ))
    }
}

/// Runs the steps; stops at the first that fails, with what was done so far in the error.
pub async fn run(link: &LinkArgs, setup: &Setup, args: &SetupArgs) -> Result<SetupReport, String> {
    let baud_write = args.new_baud.map(|b| setup.baud_write(b)).transpose()?;
    let (mut client, timing) = link.modbus_client().await?;
    let mut report = SetupReport {
        unit: args.unit,
        ..SetupReport::default()
    };
    let fail = |report: &SetupReport, e: String| {
        if report.steps.is_empty() {
            e
        } else {
            format!("{}\n{e}", report.steps.join("\n"))
        }
    };
    let current = read_setup_register(
        link,
        &mut client,
        timing,
        setup,
        args.unit,
        setup.unit_id_register,
    )
    .await
    .map_err(|e| fail(&report, e))?;
    report.steps.push(format!(
        "unit {} answers; its unit id register (holding {:#06x}) reads {current}",
        args.unit, setup.unit_id_register
    ));
    if let Some(new) = args.new_unit.filter(|n| *n != args.unit) {
        send(
            link,
            &mut client,
            timing,
            args.unit,
            &setup.unit_id_write(new),
        )
        .await
        .map_err(|e| fail(&report, e))?;
        report
            .steps
            .push(format!("wrote unit id {new}; the meter confirmed"));
        let back = read_setup_register(
            link,
            &mut client,
            timing,
            setup,
            new,
            setup.unit_id_register,
        )
        .await
        .map_err(|e| {
            fail(
                &report,
                format!(
                    "{e}\nthe meter took the write but does not answer at unit {new} yet: \
                         some meters apply a new id only after a power cycle (or only in their \
                         set-up mode); power it off and on, then `read --unit {new}`"
                ),
            )
        })?;
        report.steps.push(format!(
            "unit {new} answers; its unit id register reads {back}"
        ));
        report.unit = new;
    }
    if let (Some(request), Some(baud)) = (baud_write, args.new_baud) {
        send(link, &mut client, timing, report.unit, &request)
            .await
            .map_err(|e| fail(&report, e))?;
        report.steps.push(format!(
            "wrote baud rate {baud} (code {}); the meter confirmed. It talks at {baud} baud once \
             it applies it (some meters after a power cycle): then use --baud {baud}",
            setup.baud_codes[&baud]
        ));
        report.baud_written = Some(baud);
    }
    Ok(report)
}

impl SetupReport {
    pub fn text(&self) -> String {
        let mut out = self.steps.join("\n");
        out.push('\n');
        out
    }

    pub fn json(&self) -> serde_json::Value {
        json!({"unit": self.unit, "baud_written": self.baud_written, "steps": self.steps})
    }
}
