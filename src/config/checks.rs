//! Checks that need more than one section: unique names, each meter's bus and model, unit id
//! clashes on a bus, and the meters of each area. Values already reported as wrong by the
//! section readers carry no span and are skipped here, so one mistake gives one problem.

use super::sections::{AreaEntry, BusEntry, MeterEntry};
use super::*;
use crate::diagnostic::{Report, did_you_mean};
use crate::meter::ModelLibrary;
use std::collections::HashMap;
use std::ops::Range;

/// Runs every cross-section check, adding problems to `report`.
pub(super) fn cross_check(
    report: &mut Report,
    buses: &[BusEntry],
    meters: &[MeterEntry],
    areas: &[AreaEntry],
    models: &ModelLibrary,
) {
    let bus_by_name = unique_buses(report, buses);
    let meter_by_id = unique_meters(report, meters);
    meters_on_buses(report, meters, &bus_by_name);
    meter_models(report, meters, models, &bus_by_name);
    area_members(report, areas, &meter_by_id);
    areas_apart_from_buses(report, areas, &bus_by_name);
    buses_have_drivers(report, buses);
}

/// Every bus has a driver in this build: `run` would otherwise start and fail to open the bus
/// forever, collecting nothing from its meters.
fn buses_have_drivers(report: &mut Report, buses: &[BusEntry]) {
    for bus in buses {
        let protocol = bus.config.protocol;
        if let (true, Some(at)) = (bus.protocol_known, bus.protocol_at)
            && !protocol.has_driver()
        {
            let polled: Vec<&str> = BusProtocol::ALL
                .iter()
                .filter(|p| p.has_driver())
                .map(|p| p.name())
                .collect();
            report.at(
                at,
                format!(
                    "bus `{}`: protocol `{}` has no driver in this build of amr-gateway, so its \
                     meters could not be read; use one of: {}",
                    bus.config.name,
                    protocol.name(),
                    polled.join(", ")
                ),
            );
        }
    }
}

/// No area is named like a bus: `area_outage` alarms are about an area or a bus, on
/// `alarm/area_outage/{name}` with the id `area_outage/{name}`, so an area and a bus of one
/// name would be one alarm (a silent bus clearing a supply outage, and the headend unable to
/// tell them apart).
fn areas_apart_from_buses(
    report: &mut Report,
    areas: &[AreaEntry],
    buses: &HashMap<&str, &BusEntry>,
) {
    for area in areas {
        let id = area.config.id.as_str();
        if let (Some(span), Some(bus)) = (&area.id, buses.get(id)) {
            report.at(
                span.start,
                format!(
                    "area `{id}` has the same name as bus `{id}` (line {}); area_outage alarms \
                     are named after an area or a bus: give them different names",
                    bus.config.line
                ),
            );
        }
    }
}

/// Bus names are unique, and no two serial buses share a device. Returns the valid buses by
/// name (the first of each name).
fn unique_buses<'b>(report: &mut Report, buses: &'b [BusEntry]) -> HashMap<&'b str, &'b BusEntry> {
    let mut by_name: HashMap<&str, &BusEntry> = HashMap::new();
    let mut by_device: HashMap<&std::path::Path, &BusEntry> = HashMap::new();
    for bus in buses {
        let name = bus.config.name.as_str();
        if let Some(span) = &bus.name {
            if let Some(first) = by_name.get(name) {
                report.at(
                    span.start,
                    format!(
                        "duplicate bus name `{name}`; the first [[bus]] with this name is at \
                         line {}: give each bus its own name",
                        first.config.line
                    ),
                );
            } else {
                by_name.insert(name, bus);
            }
        }
        if let (Some(span), Some(device)) = (&bus.device, &bus.config.device) {
            if let Some(first) = by_device.get(device.as_path()) {
                report.at(
                    span.start,
                    format!(
                        "device `{}` is already used by bus `{}` (line {}); one serial port is \
                         one bus: put all its meters on that bus",
                        device.display(),
                        first.config.name,
                        first.config.line
                    ),
                );
            } else {
                by_device.insert(device.as_path(), bus);
            }
        }
    }
    by_name
}

/// Meter ids are unique. Returns the valid meters by id (the first of each id).
fn unique_meters<'m>(
    report: &mut Report,
    meters: &'m [MeterEntry],
) -> HashMap<&'m str, &'m MeterEntry> {
    let mut by_id: HashMap<&str, &MeterEntry> = HashMap::new();
    for meter in meters {
        let Some(span) = &meter.id else { continue };
        let id = meter.config.id.as_str();
        if let Some(first) = by_id.get(id) {
            report.at(
                span.start,
                format!(
                    "duplicate meter id `{id}`; the first [[meter]] with this id is at line {}: \
                     give each meter its own id",
                    first.config.line
                ),
            );
        } else {
            by_id.insert(id, meter);
        }
    }
    by_id
}

/// Each meter's bus exists; the meter has the address kind its bus's protocol needs (Modbus
/// `unit` or DL/T 645 `address`), and no two meters on one bus share it.
fn meters_on_buses(report: &mut Report, meters: &[MeterEntry], buses: &HashMap<&str, &BusEntry>) {
    let mut bus_names: Vec<&str> = buses.keys().copied().collect();
    bus_names.sort_unstable();
    // (bus, unit or address) → first meter using it.
    let mut taken: HashMap<(&str, String), &MeterEntry> = HashMap::new();
    for meter in meters {
        let Some(bus_span) = &meter.bus else { continue };
        let name = meter.config.bus.as_str();
        let label = meter_label(meter);
        let Some(bus) = buses.get(name) else {
            let defined = if bus_names.is_empty() {
                "no [[bus]] is defined".to_string()
            } else {
                let hint = did_you_mean(name, bus_names.iter().copied());
                format!("{hint}defined buses: {}", bus_names.join(", "))
            };
            report.at(
                bus_span.start,
                format!("{label} is on bus `{name}`, which is not defined; {defined}"),
            );
            continue;
        };
        if !bus.protocol_known {
            continue;
        }
        let protocol = bus.config.protocol;
        let (key, value, span) = if protocol == BusProtocol::Dlt645 {
            if let Some(unit) = &meter.unit_written {
                report.at(
                    unit.start,
                    format!(
                        "`unit` is a Modbus unit id, but bus `{name}` is dlt645; give {label} \
                         its 12-digit DL/T 645 `address` instead"
                    ),
                );
            }
            if meter.address_written.is_none() {
                report.at(
                    meter.start,
                    format!(
                        "missing required key `address` in [[meter]]: {label} is on DL/T 645 \
                         bus `{name}`; add its 12-digit address, e.g. \
                         `address = \"000012345678\"`"
                    ),
                );
            }
            (
                "address",
                meter.config.address.clone(),
                meter.address.clone(),
            )
        } else {
            if let Some(address) = &meter.address_written {
                report.at(
                    address.start,
                    format!(
                        "`address` is a DL/T 645 meter address, but bus `{name}` is {}; give \
                         {label} its Modbus `unit` id instead",
                        protocol.name()
                    ),
                );
            }
            if meter.unit_written.is_none() {
                report.at(
                    meter.start,
                    format!(
                        "missing required key `unit` in [[meter]]: {label} is on Modbus bus \
                         `{name}`; add its unit id (1..247), e.g. `unit = 1`"
                    ),
                );
            }
            (
                "unit",
                meter.config.unit.map(|u| u.to_string()),
                meter.unit.clone(),
            )
        };
        let (Some(value), Some(span)) = (value, span) else {
            continue;
        };
        match taken.get(&(name, value.clone())) {
            Some(first) => report.at(
                span.start,
                format!(
                    "{label} and meter `{}` (line {}) both use {key} {value} on bus `{name}`; \
                     give each meter on a bus its own {key}",
                    first.config.id, first.config.line
                ),
            ),
            None => {
                taken.insert((name, value), meter);
            }
        }
    }
}

/// Each meter's model is in the library and of its bus's kind (a register map on a Modbus
/// bus, a data-identifier map on a DL/T 645 bus), and its `phase` fits the model (any does a
/// DL/T 645 model).
fn meter_models(
    report: &mut Report,
    meters: &[MeterEntry],
    models: &ModelLibrary,
    buses: &HashMap<&str, &BusEntry>,
) {
    let mut names = models.names();
    names.extend(models.dlt645.keys().map(String::as_str));
    names.sort_unstable();
    for meter in meters {
        let Some(span) = &meter.model else { continue };
        let name = meter.config.model.as_str();
        let label = meter_label(meter);
        let bus = buses
            .get(meter.config.bus.as_str())
            .filter(|b| b.protocol_known);
        let on_dlt645 = bus.map(|b| b.config.protocol == BusProtocol::Dlt645);
        let phases = match (models.get(name), models.get_dlt645(name)) {
            (Some(_), _) if on_dlt645 == Some(true) => {
                report.at(
                    span.start,
                    format!(
                        "{label}: `{name}` is a Modbus model, but bus `{}` is dlt645; use a DL/T \
                         645 model ({})",
                        meter.config.bus,
                        dlt645_names(models)
                    ),
                );
                continue;
            }
            (_, Some(_)) if on_dlt645 == Some(false) => {
                report.at(
                    span.start,
                    format!(
                        "{label}: `{name}` is a DL/T 645 model, but bus `{}` is {}; use a Modbus \
                         model, or put the meter on a bus with protocol = \"dlt645\"",
                        meter.config.bus,
                        bus.map_or("", |b| b.config.protocol.name())
                    ),
                );
                continue;
            }
            (Some(model), _) => model.phases,
            // A DL/T 645 model is generic: one map for single- and three-phase meters (a
            // single-phase meter refuses phases B and C), so any `phase` fits it.
            (None, Some(_)) => continue,
            (None, None) => {
                let available = if names.is_empty() {
                    "no models are available; add model files to `models_dir`".to_string()
                } else {
                    let hint = did_you_mean(name, names.iter().copied());
                    format!("{hint}models available: {}", names.join(", "))
                };
                report.at(
                    span.start,
                    format!("unknown meter model `{name}`; {available}"),
                );
                continue;
            }
        };
        let (Some(phase_span), Some(phase)) = (&meter.phase, &meter.config.phase) else {
            continue;
        };
        if phases == 1 && *phase == crate::model::Phase::Abc {
            report.at(
                phase_span.start,
                format!(
                    "{label}: model `{name}` is single-phase; set `phase` to the phase it is \
                     connected to: \"a\", \"b\" or \"c\""
                ),
            );
        } else if phases == 3 && *phase != crate::model::Phase::Abc {
            report.at(
                phase_span.start,
                format!(
                    "{label}: model `{name}` is three-phase; use `phase = \"abc\"` or leave \
                     `phase` out"
                ),
            );
        }
    }
}

/// The DL/T 645 models' names, for messages.
fn dlt645_names(models: &ModelLibrary) -> String {
    models
        .dlt645
        .keys()
        .map(String::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Area ids are unique; every meter an area names is defined and belongs to one area only, in
/// one role.
fn area_members(report: &mut Report, areas: &[AreaEntry], meters: &HashMap<&str, &MeterEntry>) {
    let mut meter_ids: Vec<&str> = meters.keys().copied().collect();
    meter_ids.sort_unstable();
    let mut area_by_id: HashMap<&str, &AreaEntry> = HashMap::new();
    // meter id → (area, is supply)
    let mut member_of: HashMap<&str, (&AreaEntry, bool)> = HashMap::new();
    for area in areas {
        let id = area.config.id.as_str();
        if let Some(span) = &area.id {
            if let Some(first) = area_by_id.get(id) {
                report.at(
                    span.start,
                    format!(
                        "duplicate area id `{id}`; the first [[area]] with this id is at line \
                         {}: give each area its own id",
                        first.config.line
                    ),
                );
            } else {
                area_by_id.insert(id, area);
            }
        }
        let label = if area.id.is_some() {
            format!("area `{id}`")
        } else {
            format!("the area at line {}", area.config.line)
        };
        let supply = area
            .config
            .supply
            .iter()
            .zip(&area.supply)
            .map(|m| (m, true));
        let customers = area
            .config
            .customers
            .iter()
            .zip(&area.customers)
            .map(|m| (m, false));
        for ((meter, span), is_supply) in supply.chain(customers) {
            let meter = meter.as_str();
            if !meters.contains_key(meter) {
                let hint = did_you_mean(meter, meter_ids.iter().copied());
                report.at(
                    span.start,
                    format!(
                        "{label} names meter `{meter}`, which is not defined; {hint}define it \
                         with a [[meter]] or remove it from the area"
                    ),
                );
                continue;
            }
            member(report, &mut member_of, meter, span, area, is_supply, &label);
        }
    }
}

/// Records `meter` as a member of `area`, reporting a meter already in an area.
fn member<'a>(
    report: &mut Report,
    member_of: &mut HashMap<&'a str, (&'a AreaEntry, bool)>,
    meter: &'a str,
    span: &Range<usize>,
    area: &'a AreaEntry,
    is_supply: bool,
    label: &str,
) {
    let Some(&(first, first_supply)) = member_of.get(meter) else {
        member_of.insert(meter, (area, is_supply));
        return;
    };
    let message = if std::ptr::eq(first, area) {
        if first_supply && !is_supply {
            format!(
                "meter `{meter}` is both the supply meter and a customer of {label}; remove it \
                 from `customers`"
            )
        } else {
            format!("meter `{meter}` is listed twice in {label}; remove one")
        }
    } else {
        format!(
            "meter `{meter}` is already in area `{}` (line {}); a meter belongs to one area \
             only: remove it from one of them",
            first.config.id, first.config.line
        )
    };
    report.at(span.start, message);
}

/// How messages name a meter: by id when it has a valid one, else by its line.
fn meter_label(meter: &MeterEntry) -> String {
    if meter.id.is_some() {
        format!("meter `{}`", meter.config.id)
    } else {
        format!("the meter at line {}", meter.config.line)
    }
}
