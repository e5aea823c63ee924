//! Request planning: a model's registers grouped into as few block reads as its limits allow.

/// One request: `count` registers from `address` with `function`, covering the listed registers
/// (indices into the model's `registers`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadBlock {
    pub function: u8,
    pub address: u16,
    pub count: u16,
    pub registers: Vec<usize>,
}

/// Plans block reads for `model` with at most `max_block` registers each (the smaller of the
/// model's limit and a limit learned from the meter). A multi-register value is never split.
pub fn plan_blocks(_model: &super::MeterModel, _max_block: u16) -> Vec<ReadBlock> {
    todo!("planner")
}
