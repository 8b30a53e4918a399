//! libvirt domains for vmshift: the disks a domain definition names ([`xml`]), a connection
//! with the calls a move needs ([`conn`]), block-job events ([`events`]) and the live move
//! through libvirt's block copy ([`copy`]).
//!
//! libvirt owns the QEMU monitor of its domains: vmshift never speaks QMP to them, it asks
//! libvirt, so libvirt's view of every disk stays right.

pub mod conn;
pub mod copy;
pub mod error;
pub mod events;
pub mod xml;

pub use conn::{resolve_uri, BlockJobInfo, DomainRef, DomainState, Libvirt, DEFAULT_URI};
pub use copy::{copy_and_pivot, CopyFailure, CopyOptions, CopyOutcome, CopyProgress, CopyTarget};
pub use error::LibvirtError;
pub use xml::{disks, rewrite, BackingLayer, DiskChange, DiskDef, DiskSource};
