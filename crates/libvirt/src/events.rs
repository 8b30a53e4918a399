//! Block-job events (`VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2`): ready, completed, failed, cancelled.
//!
//! libvirt delivers events through an event loop the client runs; [`init`] registers
//! libvirt's default implementation once per process (before the first connection, as
//! libvirt requires) and runs it on a thread of its own.

use crate::conn::{DomainRef, Libvirt};
use crate::error::LibvirtError;
use std::ffi::CStr;
use std::sync::mpsc::{channel, Receiver, Sender};
use std::sync::Once;
use virt::sys;

static INIT: Once = Once::new();

/// Sets up the process's libvirt event loop (once) and silences libvirt's default error
/// printing: errors are returned, not printed.
pub(crate) fn init() {
    INIT.call_once(|| {
        virt::error::clear_error_callback();
        if virt::event::event_register_default_impl().is_ok() {
            let _ = std::thread::Builder::new()
                .name("libvirt-events".into())
                .spawn(|| loop {
                    if virt::event::event_run_default_impl().is_err() {
                        std::thread::sleep(std::time::Duration::from_millis(100));
                    }
                });
        }
    });
}

/// What happened to a block job (`virConnectDomainEventBlockJobStatus`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockJobStatus {
    /// The job finished (a copy: after its pivot or when cancelled after ready).
    Completed,
    /// The job failed (the destination ran out of space, an I/O error).
    Failed,
    /// The job was cancelled.
    Cancelled,
    /// A copy reached ready: source and destination are in sync; a pivot may follow.
    Ready,
    /// A status this build does not know.
    Other(i32),
}

/// One block-job event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlockJobEvent {
    /// The disk's target dev (`vda`): `BLOCK_JOB_2` names disks by target.
    pub disk: String,
    /// `virDomainBlockJobType` (2: copy).
    pub kind: i32,
    /// What happened.
    pub status: BlockJobStatus,
}

/// A registration for one domain's block-job events; deregistered when dropped.
pub struct Subscription<'a> {
    lv: &'a Libvirt,
    id: libc::c_int,
    rx: Receiver<BlockJobEvent>,
}

unsafe extern "C" fn on_block_job(
    _conn: sys::virConnectPtr,
    _dom: sys::virDomainPtr,
    disk: *const libc::c_char,
    kind: libc::c_int,
    status: libc::c_int,
    opaque: *mut libc::c_void,
) {
    if opaque.is_null() || disk.is_null() {
        return;
    }
    // SAFETY: `opaque` is the `Box<Sender>` registered below, alive until `free_sender`;
    // `disk` is a NUL-terminated string libvirt owns for the call.
    let (tx, disk) = unsafe {
        (
            &*(opaque as *const Sender<BlockJobEvent>),
            CStr::from_ptr(disk).to_string_lossy().into_owned(),
        )
    };
    let status = match u32::try_from(status).unwrap_or(u32::MAX) {
        sys::VIR_DOMAIN_BLOCK_JOB_COMPLETED => BlockJobStatus::Completed,
        sys::VIR_DOMAIN_BLOCK_JOB_FAILED => BlockJobStatus::Failed,
        sys::VIR_DOMAIN_BLOCK_JOB_CANCELED => BlockJobStatus::Cancelled,
        sys::VIR_DOMAIN_BLOCK_JOB_READY => BlockJobStatus::Ready,
        _ => BlockJobStatus::Other(status),
    };
    let _ = tx.send(BlockJobEvent { disk, kind, status });
}

unsafe extern "C" fn free_sender(opaque: *mut libc::c_void) {
    if !opaque.is_null() {
        // SAFETY: `opaque` came from `Box::into_raw` in `subscribe`; libvirt calls this once.
        drop(unsafe { Box::from_raw(opaque as *mut Sender<BlockJobEvent>) });
    }
}

impl<'a> Subscription<'a> {
    /// Subscribes to `dom`'s block-job events on `lv`.
    ///
    /// # Errors
    /// libvirt refuses the registration.
    pub fn subscribe(lv: &'a Libvirt, dom: &DomainRef) -> Result<Subscription<'a>, LibvirtError> {
        let (tx, rx) = channel();
        let opaque = Box::into_raw(Box::new(tx)) as *mut libc::c_void;
        type Generic =
            unsafe extern "C" fn(sys::virConnectPtr, sys::virDomainPtr, *mut libc::c_void);
        // SAFETY: libvirt calls the callback with the BLOCK_JOB_2 signature registered for
        // this event id (its documented contract for virConnectDomainEventRegisterAny); the
        // generic type is only how the C API takes it.
        let cb: Generic = unsafe {
            std::mem::transmute::<
                unsafe extern "C" fn(
                    sys::virConnectPtr,
                    sys::virDomainPtr,
                    *const libc::c_char,
                    libc::c_int,
                    libc::c_int,
                    *mut libc::c_void,
                ),
                Generic,
            >(on_block_job)
        };
        // SAFETY: connection and domain pointers are alive; libvirt owns `opaque` from here
        // and frees it with `free_sender`.
        let id = unsafe {
            sys::virConnectDomainEventRegisterAny(
                lv.conn().as_ptr(),
                dom.dom.as_ptr(),
                sys::VIR_DOMAIN_EVENT_ID_BLOCK_JOB_2 as libc::c_int,
                Some(cb),
                opaque,
                Some(free_sender),
            )
        };
        if id < 0 {
            // SAFETY: registration failed, so libvirt did not take `opaque`.
            unsafe { free_sender(opaque) };
            return Err(LibvirtError::Api {
                what: "block-job events".into(),
                message: virt::error::Error::last_error().message().to_owned(),
            });
        }
        Ok(Subscription { lv, id, rx })
    }

    /// The events received since the last call.
    pub fn drain(&self) -> Vec<BlockJobEvent> {
        self.rx.try_iter().collect()
    }
}

impl Drop for Subscription<'_> {
    fn drop(&mut self) {
        // SAFETY: the connection outlives `self` (borrowed) and `id` is our registration.
        unsafe {
            sys::virConnectDomainEventDeregisterAny(self.lv.conn().as_ptr(), self.id);
        }
    }
}
