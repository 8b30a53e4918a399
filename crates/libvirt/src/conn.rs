//! A libvirt connection and the domain calls vmshift needs. Connections, XML, state, pools
//! and snapshots go through the `virt` crate; block copy, block jobs and block-job events,
//! which it does not wrap, through its `virt::sys` FFI (libvirt's C API, 9.0 here).

use crate::error::LibvirtError;
use crate::events;
use std::ffi::CString;
use std::path::PathBuf;
use virt::connect::Connect;
use virt::domain::Domain;
use virt::storage_pool::StoragePool;
use virt::sys;

/// The URI libvirt clients use when none is given (`virsh`'s default for root).
pub const DEFAULT_URI: &str = "qemu:///system";

/// The URI to connect to: `uri`, else `$LIBVIRT_DEFAULT_URI`, else [`DEFAULT_URI`].
pub fn resolve_uri(uri: Option<&str>) -> String {
    uri.map(str::to_owned)
        .or_else(|| std::env::var("LIBVIRT_DEFAULT_URI").ok())
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| DEFAULT_URI.into())
}

/// An open connection to a libvirt daemon.
pub struct Libvirt {
    conn: Connect,
    uri: String,
}

/// A domain's run state (`virDomainGetState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainState {
    /// Running: disks move live through block copy.
    Running,
    /// Paused (by the user, an I/O error, a migration, …).
    Paused,
    /// Shut off: disks move offline.
    ShutOff,
    /// Crashed.
    Crashed,
    /// Anything else (blocked, shutting down, suspended to memory, no state).
    Other,
}

impl DomainState {
    /// The state as virsh names it.
    pub fn as_str(self) -> &'static str {
        match self {
            DomainState::Running => "running",
            DomainState::Paused => "paused",
            DomainState::ShutOff => "shut off",
            DomainState::Crashed => "crashed",
            DomainState::Other => "other",
        }
    }
}

/// A block job's position (`virDomainGetBlockJobInfo` with bandwidth in bytes/s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockJobInfo {
    /// `virDomainBlockJobType`: 1 pull, 2 copy, 3 commit, 4 active commit, 5 backup.
    pub kind: i32,
    /// Bytes done of `end` (libvirt keeps `cur < end` for a copy until it is ready).
    pub cur: u64,
    /// The job's current total, bytes (grows as the guest dirties areas again).
    pub end: u64,
    /// The job's speed limit, bytes/s (0: none).
    pub bandwidth: u64,
}

impl BlockJobInfo {
    /// The job's type as virsh names it (`copy`, `pull`, ...).
    pub fn kind_name(&self) -> &'static str {
        match self.kind {
            1 => "pull",
            2 => "copy",
            3 => "commit",
            4 => "active commit",
            5 => "backup",
            _ => "unknown",
        }
    }
}

/// A domain of a [`Libvirt`] connection.
pub struct DomainRef {
    pub(crate) dom: Domain,
    /// The domain's name.
    pub name: String,
}

fn cstr(s: &str) -> Result<CString, LibvirtError> {
    CString::new(s).map_err(|_| LibvirtError::Api {
        what: format!("name {s:?}"),
        message: "contains a NUL byte".into(),
    })
}

fn api(what: impl Into<String>) -> impl FnOnce(virt::error::Error) -> LibvirtError {
    let what = what.into();
    move |e| LibvirtError::Api {
        what,
        message: e.message().to_owned(),
    }
}

fn last(what: impl Into<String>) -> LibvirtError {
    api(what)(virt::error::Error::last_error())
}

impl Libvirt {
    /// Connects to `uri` (see [`resolve_uri`]); block-job events are delivered from then on.
    ///
    /// # Errors
    /// [`LibvirtError::Connect`]: the daemon does not answer, or access is denied.
    pub fn open(uri: Option<&str>) -> Result<Libvirt, LibvirtError> {
        let uri = resolve_uri(uri);
        events::init();
        let conn = Connect::open(Some(&uri)).map_err(|e| LibvirtError::Connect {
            uri: uri.clone(),
            message: e.message().to_owned(),
        })?;
        Ok(Libvirt { conn, uri })
    }

    /// The URI this connection was opened with.
    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// The domain called `name`.
    ///
    /// # Errors
    /// [`LibvirtError::NoDomain`] when there is none.
    pub fn domain(&self, name: &str) -> Result<DomainRef, LibvirtError> {
        let dom = Domain::lookup_by_name(&self.conn, name).map_err(|_| LibvirtError::NoDomain {
            name: name.into(),
            uri: self.uri.clone(),
        })?;
        Ok(DomainRef {
            dom,
            name: name.into(),
        })
    }

    /// Every domain of the connection, running or defined (`virConnectListAllDomains`).
    ///
    /// # Errors
    /// The call fails.
    pub fn domains(&self) -> Result<Vec<DomainRef>, LibvirtError> {
        let doms = self
            .conn
            .list_all_domains(0)
            .map_err(api("listing the domains"))?;
        doms.into_iter()
            .map(|dom| {
                let name = dom.get_name().map_err(api("a domain's name"))?;
                Ok(DomainRef { dom, name })
            })
            .collect()
    }

    /// Defines (or redefines) a persistent domain from `xml` (`virDomainDefineXML`).
    ///
    /// # Errors
    /// libvirt refuses the definition.
    pub fn define(&self, xml: &str) -> Result<(), LibvirtError> {
        Domain::define_xml(&self.conn, xml)
            .map(|_| ())
            .map_err(api("defining the domain"))
    }

    /// The target directory of storage pool `name` (a `dir`-type pool's `<target><path>`).
    ///
    /// # Errors
    /// No such pool, or a pool without a target directory.
    pub fn pool_dir(&self, name: &str) -> Result<PathBuf, LibvirtError> {
        let pool =
            StoragePool::lookup_by_name(&self.conn, name).map_err(|_| LibvirtError::NoPool {
                name: name.into(),
                uri: self.uri.clone(),
            })?;
        let xml = pool.get_xml_desc(0).map_err(api(format!("pool {name}")))?;
        crate::xml::pool_target(&xml).ok_or_else(|| LibvirtError::Api {
            what: format!("pool {name}"),
            message: "has no target directory (only directory pools can take a move)".into(),
        })
    }

    /// Rescans storage pool `name` so its volume list shows new files.
    ///
    /// # Errors
    /// No such pool, or the refresh fails.
    pub fn refresh_pool(&self, name: &str) -> Result<(), LibvirtError> {
        let pool =
            StoragePool::lookup_by_name(&self.conn, name).map_err(|_| LibvirtError::NoPool {
                name: name.into(),
                uri: self.uri.clone(),
            })?;
        pool.refresh(0)
            .map(|_| ())
            .map_err(api(format!("refreshing pool {name}")))
    }

    /// The path of volume `volume` in pool `pool`.
    ///
    /// # Errors
    /// No such pool or volume.
    pub fn volume_path(&self, pool: &str, volume: &str) -> Result<PathBuf, LibvirtError> {
        let p =
            StoragePool::lookup_by_name(&self.conn, pool).map_err(|_| LibvirtError::NoPool {
                name: pool.into(),
                uri: self.uri.clone(),
            })?;
        let v = virt::storage_vol::StorageVol::lookup_by_name(&p, volume)
            .map_err(api(format!("volume {volume} in pool {pool}")))?;
        v.get_path()
            .map(PathBuf::from)
            .map_err(api(format!("volume {volume} in pool {pool}")))
    }

    pub(crate) fn conn(&self) -> &Connect {
        &self.conn
    }
}

impl DomainRef {
    /// The domain's run state.
    ///
    /// # Errors
    /// The call fails (the domain went away).
    pub fn state(&self) -> Result<DomainState, LibvirtError> {
        let (s, _) = self
            .dom
            .get_state()
            .map_err(api(format!("domain {}", self.name)))?;
        Ok(match s {
            sys::VIR_DOMAIN_RUNNING => DomainState::Running,
            sys::VIR_DOMAIN_PAUSED => DomainState::Paused,
            sys::VIR_DOMAIN_SHUTOFF => DomainState::ShutOff,
            sys::VIR_DOMAIN_CRASHED => DomainState::Crashed,
            _ => DomainState::Other,
        })
    }

    /// Whether the domain has a persistent definition (else it is transient).
    ///
    /// # Errors
    /// The call fails.
    pub fn persistent(&self) -> Result<bool, LibvirtError> {
        self.dom
            .is_persistent()
            .map_err(api(format!("domain {}", self.name)))
    }

    /// The domain's XML: the persistent definition with `inactive`, else the live one.
    ///
    /// # Errors
    /// The call fails.
    pub fn xml(&self, inactive: bool) -> Result<String, LibvirtError> {
        let flags = if inactive {
            sys::VIR_DOMAIN_XML_INACTIVE
        } else {
            0
        };
        self.dom
            .get_xml_desc(flags)
            .map_err(api(format!("domain {} XML", self.name)))
    }

    /// Starts the (shut-off, persistent) domain (`virDomainCreate`).
    ///
    /// # Errors
    /// libvirt or QEMU refuses to start it.
    pub fn start(&self) -> Result<(), LibvirtError> {
        self.dom
            .create()
            .map(|_| ())
            .map_err(api(format!("starting domain {}", self.name)))
    }

    /// Stops the domain at once, like pulling the plug (`virDomainDestroy`).
    ///
    /// # Errors
    /// The call fails (for example: the domain is not running).
    pub fn destroy(&self) -> Result<(), LibvirtError> {
        self.dom
            .destroy()
            .map_err(api(format!("destroying domain {}", self.name)))
    }

    /// Removes the persistent definition (`virDomainUndefine`); a running domain becomes
    /// transient.
    ///
    /// # Errors
    /// The call fails.
    pub fn undefine(&self) -> Result<(), LibvirtError> {
        self.dom
            .undefine()
            .map_err(api(format!("undefining domain {}", self.name)))
    }

    /// How many snapshots libvirt keeps metadata for.
    ///
    /// # Errors
    /// The call fails.
    pub fn snapshots(&self) -> Result<usize, LibvirtError> {
        self.dom
            .list_all_snapshots(0)
            .map(|v| v.len())
            .map_err(api(format!("domain {} snapshots", self.name)))
    }

    /// Whether a domain job (a migration, a save, a dump) is running: its
    /// `virDomainJobType`, or `None`.
    ///
    /// # Errors
    /// The call fails.
    pub fn domain_job(&self) -> Result<Option<i32>, LibvirtError> {
        if !self.dom.is_active().unwrap_or(false) {
            return Ok(None);
        }
        let j = self
            .dom
            .get_job_info()
            .map_err(api(format!("domain {} job", self.name)))?;
        Ok((j.r#type != sys::VIR_DOMAIN_JOB_NONE as i32).then_some(j.r#type))
    }

    /// Bytes the guest has written to `disk` (target dev) since the domain started.
    ///
    /// # Errors
    /// The call fails.
    pub fn written_bytes(&self, disk: &str) -> Result<u64, LibvirtError> {
        let s = self
            .dom
            .get_block_stats(disk)
            .map_err(api(format!("block stats of {disk}")))?;
        Ok(u64::try_from(s.wr_bytes).unwrap_or(0))
    }

    /// The block job on `disk` (target dev), if any.
    ///
    /// # Errors
    /// The call fails.
    pub fn block_job(&self, disk: &str) -> Result<Option<BlockJobInfo>, LibvirtError> {
        let d = cstr(disk)?;
        let mut info = sys::virDomainBlockJobInfo {
            type_: 0,
            bandwidth: 0,
            cur: 0,
            end: 0,
        };
        // SAFETY: the domain pointer is alive for `self`; `d` is a NUL-terminated string
        // and `info` a properly sized struct libvirt fills in.
        let rc = unsafe {
            sys::virDomainGetBlockJobInfo(
                self.dom.as_ptr(),
                d.as_ptr(),
                &mut info,
                sys::VIR_DOMAIN_BLOCK_JOB_INFO_BANDWIDTH_BYTES,
            )
        };
        match rc {
            0 => Ok(None),
            1 => Ok(Some(BlockJobInfo {
                kind: info.type_,
                cur: info.cur,
                end: info.end,
                bandwidth: info.bandwidth,
            })),
            _ => Err(last(format!("block job of {disk}"))),
        }
    }

    /// Starts a block copy of `disk` (target dev) to the destination described by
    /// `dest_xml` (a `<disk>` element), `virDomainBlockCopy`, with `bandwidth` bytes/s
    /// (0: none) and `flags` (`VIR_DOMAIN_BLOCK_COPY_*`).
    ///
    /// # Errors
    /// libvirt refuses the copy.
    pub fn block_copy(
        &self,
        disk: &str,
        dest_xml: &str,
        bandwidth: u64,
        flags: u32,
    ) -> Result<(), LibvirtError> {
        let d = cstr(disk)?;
        let x = cstr(dest_xml)?;
        let mut params: sys::virTypedParameterPtr = std::ptr::null_mut();
        let mut n: libc::c_int = 0;
        let mut max: libc::c_int = 0;
        if bandwidth > 0 {
            // SAFETY: libvirt allocates and grows `params`; the name is a static C string.
            let rc = unsafe {
                sys::virTypedParamsAddULLong(
                    &mut params,
                    &mut n,
                    &mut max,
                    sys::VIR_DOMAIN_BLOCK_COPY_BANDWIDTH.as_ptr(),
                    bandwidth,
                )
            };
            if rc < 0 {
                return Err(last("block copy bandwidth"));
            }
        }
        // SAFETY: pointers are valid for the call; `params` holds `n` parameters (or is null
        // with n = 0) and is freed right after.
        let rc = unsafe {
            let rc = sys::virDomainBlockCopy(
                self.dom.as_ptr(),
                d.as_ptr(),
                x.as_ptr(),
                params,
                n,
                flags,
            );
            if !params.is_null() {
                sys::virTypedParamsFree(params, n);
            }
            rc
        };
        if rc < 0 {
            return Err(last(format!("block copy of {disk}")));
        }
        Ok(())
    }

    /// Ends the block job on `disk`: with `pivot`, switches the guest to the copy
    /// (`VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT`, waits for it); else cancels it (waits too).
    ///
    /// # Errors
    /// libvirt refuses (for a pivot: the job is not ready).
    pub fn end_job(&self, disk: &str, pivot: bool) -> Result<(), LibvirtError> {
        let d = cstr(disk)?;
        let flags = if pivot {
            sys::VIR_DOMAIN_BLOCK_JOB_ABORT_PIVOT
        } else {
            0
        };
        // SAFETY: the domain pointer is alive for `self`; `d` is NUL-terminated.
        let rc = unsafe { sys::virDomainBlockJobAbort(self.dom.as_ptr(), d.as_ptr(), flags) };
        if rc < 0 {
            let what = if pivot {
                "pivot of"
            } else {
                "cancelling the job on"
            };
            return Err(last(format!("{what} {disk}")));
        }
        Ok(())
    }

    /// Sets the speed limit of the block job on `disk`, bytes/s (0: none).
    ///
    /// # Errors
    /// The call fails.
    pub fn set_job_speed(&self, disk: &str, bytes_per_sec: u64) -> Result<(), LibvirtError> {
        let d = cstr(disk)?;
        let speed = libc::c_ulong::try_from(bytes_per_sec).unwrap_or(libc::c_ulong::MAX);
        // SAFETY: the domain pointer is alive for `self`; `d` is NUL-terminated.
        let rc = unsafe {
            sys::virDomainBlockJobSetSpeed(
                self.dom.as_ptr(),
                d.as_ptr(),
                speed,
                sys::VIR_DOMAIN_BLOCK_JOB_SPEED_BANDWIDTH_BYTES,
            )
        };
        if rc < 0 {
            return Err(last(format!("speed of the job on {disk}")));
        }
        Ok(())
    }
}
