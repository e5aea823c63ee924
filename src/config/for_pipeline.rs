//! The pipeline's settings built from the configuration: the loss engine's areas, the alarm
//! engine's view of the meters and areas, every engine's settings and the meters' models.

use super::{AreaConfig, Config, MeterConfig};
use crate::analytics::alarms::{AreaRef, MeterRef, Topology};
use crate::analytics::collection::{CollectionGroup, GroupKind};
use crate::analytics::curve::CurveSettings;
use crate::analytics::freeze::FreezeSettings;
use crate::analytics::loss::AreaSpec;
use crate::analytics::voltage::VoltageQualitySettings;
use crate::pipeline::PipelineSettings;
use std::collections::BTreeMap;

impl Config {
    /// What the store writer's pipeline needs of this configuration.
    pub fn pipeline_settings(&self) -> PipelineSettings {
        PipelineSettings {
            areas: self
                .areas
                .iter()
                .map(|a| area_spec(a, &self.meters))
                .collect(),
            topology: topology(self),
            loss: self.loss.clone(),
            alarms: self.alarms.clone(),
            voltage: VoltageQualitySettings {
                zone: self.gateway.timezone.clone(),
                ..self.voltage_quality.clone()
            },
            models: self
                .meters
                .iter()
                .map(|m| (m.id.clone(), m.model.clone()))
                .collect(),
            ratios: self
                .meters
                .iter()
                .map(|m| (m.id.clone(), m.ratios))
                .collect(),
            freeze: FreezeSettings {
                zone: self.gateway.timezone.clone(),
                decide_after_s: self.collection.report_at_s,
                ..self.freeze.clone()
            },
            curve: CurveSettings {
                zone: self.gateway.timezone.clone(),
                ..self.curve.clone()
            },
            collection: self.collection.clone(),
            collection_groups: collection_groups(self),
        }
    }
}

/// The loss engine's view of `[[area]]`, with the multiplier of each of its meters taken from
/// the `[[meter]]` entries (1 for a meter not among them).
pub fn area_spec(area: &AreaConfig, meters: &[MeterConfig]) -> AreaSpec {
    let mut spec = AreaSpec {
        id: area.id.clone(),
        supply: area.supply.clone(),
        customers: area.customers.clone(),
        interval_s: area.loss_interval_s.max(1),
        high_loss_pct: area.high_loss_pct,
        negative_loss_pct: area.negative_loss_pct,
        multipliers: BTreeMap::new(),
    };
    for m in meters {
        if spec.meters().any(|id| *id == m.id) {
            spec.multipliers.insert(m.id.clone(), m.multiplier);
        }
    }
    spec
}

/// The buses, then the areas, with their meters: what the collection success is reported for.
pub fn collection_groups(config: &Config) -> Vec<CollectionGroup> {
    let buses = config.buses.iter().map(|b| CollectionGroup {
        kind: GroupKind::Bus,
        id: b.name.clone(),
        meters: config
            .meters
            .iter()
            .filter(|m| m.bus == b.name)
            .map(|m| m.id.clone())
            .collect(),
    });
    let areas = config.areas.iter().map(|a| CollectionGroup {
        kind: GroupKind::Area,
        id: a.id.clone(),
        meters: a.supply.iter().chain(&a.customers).cloned().collect(),
    });
    buses.chain(areas).collect()
}

/// The alarm-engine view of the configured meters and areas.
pub fn topology(config: &Config) -> Topology {
    Topology {
        gateway: config.gateway.id.clone(),
        meters: config
            .meters
            .iter()
            .map(|m| MeterRef {
                id: m.id.clone(),
                bus: m.bus.clone(),
                phase: m.phase,
                three_phase: m.phase == Some(crate::model::Phase::Abc)
                    || (m.phase.is_none()
                        && (config.models.get(&m.model).is_some_and(|x| x.phases == 3)
                            || config
                                .models
                                .get_dlt645(&m.model)
                                .is_some_and(|x| x.phases == 3))),
                consumption_only: m.consumption_only,
                rated_kw: m.rated_kw,
                multiplier: m.multiplier,
            })
            .collect(),
        areas: config
            .areas
            .iter()
            .map(|a| AreaRef {
                id: a.id.clone(),
                supply: a.supply.clone(),
                customers: a.customers.clone(),
                rated_kva: a.rated_kva,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_spec_from_config() {
        let area = AreaConfig {
            id: "t9".into(),
            supply: vec!["s".into()],
            customers: vec!["a".into()],
            loss_interval_s: 900,
            high_loss_pct: 8.0,
            negative_loss_pct: -2.0,
            rated_kva: None,
            line: 1,
        };
        let spec = area_spec(&area, &[]);
        assert_eq!(spec.interval_s, 900);
        assert_eq!(spec.meters().count(), 2);
        assert_eq!((spec.high_loss_pct, spec.negative_loss_pct), (8.0, -2.0));
    }
}
