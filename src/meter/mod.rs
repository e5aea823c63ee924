//! Meter models as data: the register maps in `protocols/*.toml`, loaded and validated, the
//! planning of block reads, and the decoding of register words into quantities; and a model's
//! `[setup]` (how a new meter's unit id and baud rate are written, [`setup`]).
//!
//! A model file names which registers hold which quantity, with function code, data type, word
//! order and scale. The built-in library is compiled in from `protocols/`; a user adds a model by
//! dropping a file in the directory named by `[gateway] models_dir`.

mod decode;
pub mod dlt645_model;
mod library;
mod model_file;
mod plan;
pub mod setup;

pub use decode::{decode_block, encode_value};
pub use dlt645_model::{DiEntry, DiRead, DiValue, Dlt645Model};
pub use library::{
    BUILTIN_MODEL_FILES, DataType, MeterModel, ModelError, ModelLibrary, RegisterDef, WordOrder,
};
pub use model_file::STANDARD_MAX_BLOCK;
pub use plan::{ReadBlock, plan_blocks};
pub use setup::Setup;
