//! Request planning: a model's registers grouped into as few block reads as its limits allow.
//!
//! On a serial bus the number of requests dominates the time a poll takes (each costs two
//! inter-frame silences and the meter's turnaround), so the planner reads as many registers per
//! request as the meter accepts: at most `max_block` registers, across gaps of at most
//! `max_gap` unmapped registers, and never a multi-register value split over two requests (that
//! would let it tear).

use super::MeterModel;

/// One request: `count` registers from `address` with `function`, covering the listed registers
/// (indices into the model's `registers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub function: u8,
    pub address: u16,
    pub count: u16,
    pub registers: Vec<usize>,
}

impl ReadBlock {
    /// One past the last register the block reads (as `u32`: a block may end at 65536).
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.count)
    }
}

/// Plans block reads for `model` with at most `max_block` registers each (the smaller of the
/// model's limit and a limit learned from the meter). A multi-register value is never split.
///
/// Blocks come in `(function, address)` order; each starts at its first register and ends with
/// its last. When the limit is smaller than one value's width, that value gets a block of its
/// own width. A limit of 0 is treated as 1.
pub fn plan_blocks(model: &MeterModel, max_block: u16) -> Vec<ReadBlock> {
    let limit = u32::from(max_block.min(model.max_block).max(1));
    let max_gap = u32::from(model.max_gap);
    let mut order: Vec<usize> = (0..model.registers.len()).collect();
    order.sort_by_key(|&i| {
        let r = &model.registers[i];
        (r.function, r.address, i)
    });

    let mut blocks: Vec<ReadBlock> = Vec::new();
    for i in order {
        let r = &model.registers[i];
        let start = u32::from(r.address);
        let end = start + u32::from(r.data_type.words());
        if let Some(block) = blocks.last_mut() {
            let same_function = block.function == r.function;
            let gap = start.saturating_sub(block.end());
            let new_end = end.max(block.end());
            let new_count = new_end - u32::from(block.address);
            if same_function && gap <= max_gap && new_count <= limit {
                block.count = new_count as u16;
                block.registers.push(i);
                continue;
            }
        }
        blocks.push(ReadBlock {
            function: r.function,
            address: r.address,
            count: (end - start) as u16,
            registers: vec![i],
        });
    }
    blocks
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meter::{DataType, ModelLibrary, RegisterDef, WordOrder};
    use proptest::prelude::*;

    fn model(registers: Vec<RegisterDef>, max_block: u16, max_gap: u16) -> MeterModel {
        MeterModel {
            name: "test".into(),
            vendor: String::new(),
            description: String::new(),
            phases: 3,
            max_block,
            max_gap,
            unit_switch_pause_ms: 0,
            inter_frame_pause_ms: 0,
            registers,
            setup: None,
            source: "test".into(),
        }
    }

    fn reg(function: u8, address: u16, data_type: DataType) -> RegisterDef {
        RegisterDef {
            quantity: format!("q{function}_{address}"),
            function,
            address,
            data_type,
            word_order: WordOrder::Abcd,
            scale: 1.0,
        }
    }

    /// Every property a plan must have; panics naming the first one broken.
    fn check_plan(m: &MeterModel, max_block: u16, blocks: &[ReadBlock]) {
        let limit = u32::from(max_block.min(m.max_block).max(1));
        let mut seen = vec![0usize; m.registers.len()];
        for (n, b) in blocks.iter().enumerate() {
            assert!(!b.registers.is_empty(), "block {n} is empty");
            let mut ranges: Vec<(u32, u32)> = Vec::new();
            for &i in &b.registers {
                seen[i] += 1;
                let r = &m.registers[i];
                let (s, e) = (
                    u32::from(r.address),
                    u32::from(r.address) + u32::from(r.data_type.words()),
                );
                assert_eq!(
                    r.function, b.function,
                    "register {i} in a block of another function"
                );
                assert!(
                    s >= u32::from(b.address) && e <= b.end(),
                    "register {i} not inside block {n}"
                );
                ranges.push((s, e));
            }
            ranges.sort();
            assert_eq!(
                ranges[0].0,
                u32::from(b.address),
                "block {n} starts before its first register"
            );
            let last_end = ranges.iter().map(|r| r.1).max().unwrap();
            assert_eq!(last_end, b.end(), "block {n} reads past its last register");
            if ranges.len() > 1 {
                assert!(
                    u32::from(b.count) <= limit,
                    "block {n} has {} > {limit}",
                    b.count
                );
            } else {
                assert!(u32::from(b.count) <= limit.max(ranges[0].1 - ranges[0].0));
            }
            for pair in ranges.windows(2) {
                let gap = pair[1].0.saturating_sub(pair[0].1);
                assert!(gap <= u32::from(m.max_gap), "gap {gap} in block {n}");
            }
        }
        assert!(
            seen.iter().all(|&c| c == 1),
            "registers not covered exactly once: {seen:?}"
        );
        let keys: Vec<(u8, u16)> = blocks.iter().map(|b| (b.function, b.address)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted, "blocks not in (function, address) order");
    }

    fn data_type() -> impl Strategy<Value = DataType> {
        prop::sample::select(DataType::ALL.to_vec())
    }

    /// Non-overlapping registers of functions 3 and 4, in shuffled order.
    fn registers() -> impl Strategy<Value = Vec<RegisterDef>> {
        prop::collection::vec((prop::bool::ANY, 0u32..12, data_type()), 1..60)
            .prop_map(|specs| {
                let mut next = [0u32; 2];
                let mut out = Vec::new();
                for (input, gap, t) in specs {
                    let f = usize::from(input);
                    let address = next[f] + gap;
                    let end = address + u32::from(t.words());
                    if end > 65536 {
                        continue;
                    }
                    out.push(reg(if input { 4 } else { 3 }, address as u16, t));
                    next[f] = end;
                }
                out
            })
            .prop_shuffle()
    }

    proptest! {
        #[test]
        fn plans_cover_every_register_once_within_limits(
            regs in registers(),
            model_max in 1u16..=125,
            max_gap in 0u16..10,
            max_block in 0u16..=130,
        ) {
            let m = model(regs, model_max, max_gap);
            let blocks = plan_blocks(&m, max_block);
            check_plan(&m, max_block, &blocks);
        }

        #[test]
        fn plans_near_the_top_of_the_address_space(
            slots in prop::collection::btree_set(0u32..10, 1..10),
            max_block in 0u16..8,
        ) {
            // u64 values in the last 40 registers, the last one ending at 65535.
            let regs: Vec<RegisterDef> = slots
                .iter()
                .map(|k| reg(3, (65_496 + 4 * k) as u16, DataType::U64))
                .collect();
            let m = model(regs, 125, 3);
            let blocks = plan_blocks(&m, max_block);
            check_plan(&m, max_block, &blocks);
        }
    }

    #[test]
    fn contiguous_values_share_a_block() {
        let m = model(
            vec![
                reg(4, 0, DataType::F32),
                reg(4, 2, DataType::F32),
                reg(4, 4, DataType::F32),
            ],
            125,
            0,
        );
        let blocks = plan_blocks(&m, 125);
        assert_eq!(
            blocks,
            vec![ReadBlock {
                function: 4,
                address: 0,
                count: 6,
                registers: vec![0, 1, 2]
            }]
        );
    }

    #[test]
    fn gaps_and_functions_split_blocks() {
        let m = model(
            vec![
                reg(4, 10, DataType::F32),
                reg(3, 0, DataType::U16),
                reg(4, 0, DataType::F32),
                reg(4, 3, DataType::F32),
            ],
            125,
            1,
        );
        let blocks = plan_blocks(&m, 125);
        let shape: Vec<(u8, u16, u16, Vec<usize>)> = blocks
            .into_iter()
            .map(|b| (b.function, b.address, b.count, b.registers))
            .collect();
        assert_eq!(
            shape,
            vec![
                (3, 0, 1, vec![1]),
                (4, 0, 5, vec![2, 3]),
                (4, 10, 2, vec![0]),
            ]
        );
    }

    #[test]
    fn a_value_wider_than_the_limit_gets_its_own_block() {
        let m = model(
            vec![reg(3, 0, DataType::U64), reg(3, 4, DataType::U16)],
            125,
            0,
        );
        let blocks = plan_blocks(&m, 2);
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[0].address, blocks[0].count), (0, 4));
        assert_eq!((blocks[1].address, blocks[1].count), (4, 1));
    }

    #[test]
    fn the_model_limit_caps_the_requested_limit() {
        let regs = (0..20).map(|i| reg(4, i * 2, DataType::F32)).collect();
        let m = model(regs, 10, 0);
        let blocks = plan_blocks(&m, 125);
        assert_eq!(blocks.len(), 4);
        assert!(blocks.iter().all(|b| b.count == 10));
    }

    #[test]
    fn shipped_models_plan_within_limits() {
        let library = ModelLibrary::builtin();
        for m in library.models.values() {
            for max_block in [1, 2, 4, 10, 40, 80, 125] {
                let blocks = plan_blocks(m, max_block);
                check_plan(m, max_block, &blocks);
            }
        }
    }

    #[test]
    fn sdm630_needs_few_requests() {
        let library = ModelLibrary::builtin();
        let m = library.get("eastron-sdm630").unwrap();
        let wide = plan_blocks(m, 80);
        assert!(
            wide.len() <= 4,
            "{} blocks at max_block 80: {wide:?}",
            wide.len()
        );
        assert!(wide.iter().all(|b| b.count <= 80));
        let narrow = plan_blocks(m, 10);
        assert!(narrow.len() > wide.len());
        assert!(narrow.iter().all(|b| b.count <= 10));
    }

    /// Requests per poll of every shipped model at the standard limit; a change here changes
    /// polling time on every bus, so it must be deliberate.
    #[test]
    fn shipped_models_request_counts() {
        let library = ModelLibrary::builtin();
        let counts: Vec<(&str, usize)> = library
            .models
            .values()
            .map(|m| (m.name.as_str(), plan_blocks(m, 125).len()))
            .collect();
        assert_eq!(
            counts,
            vec![
                ("abb-b23", 3),
                ("acrel-adl200", 3),
                ("acrel-adl400", 3),
                ("chint-ddsu666", 2),
                ("chint-dtsu666", 3),
                ("eastron-sdm120", 1),
                ("eastron-sdm230", 1),
                ("eastron-sdm630", 2),
                ("eastron-sdm72", 1),
                ("gavazzi-em340", 3),
            ]
        );
    }

    #[test]
    fn abb_b23_energy_is_one_u64_read_whole() {
        let library = ModelLibrary::builtin();
        let m = library.get("abb-b23").unwrap();
        let energy = m
            .registers
            .iter()
            .position(|r| r.quantity == "energy_import_kwh")
            .unwrap();
        for max_block in [1, 2, 3] {
            let blocks = plan_blocks(m, max_block);
            let b = blocks
                .iter()
                .find(|b| b.registers.contains(&energy))
                .unwrap();
            assert_eq!(b.count, 4);
            assert_eq!(b.registers, vec![energy]);
        }
    }
}
