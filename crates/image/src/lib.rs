//! Open and inspect VM disk images: headers, backing chains, block status, locks, targets.
//!
//! raw and qcow2 are read and written through imago (qcow2, chains) or directly (plain raw
//! files); `qemu-img` is used for refcount checks and to create qcow2 targets.

pub mod attrs;
pub mod chain;
pub mod error;
pub mod gate;
pub mod header;
pub mod inspect;
pub mod integrity;
pub mod lock;
pub mod qemu_img;
pub mod reader;
pub mod storage;
pub mod target;

pub use chain::{resolve_chain, Chain, ChainOptions, Layer, LayerFormat};
pub use error::ImageError;
pub use inspect::{inspect, ImageInfo, InspectOptions, Inspection};
pub use reader::ImageReader;
pub use target::{create_target, TargetImage, TargetSpec};
