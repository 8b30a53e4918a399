//! Failures talking to libvirt, each a one-line message that names the thing.

/// Failures of libvirt calls.
#[derive(Debug, thiserror::Error)]
pub enum LibvirtError {
    /// The daemon at `uri` did not answer or refused the connection.
    #[error("cannot connect to libvirt at {uri}: {message} (is libvirtd or virtqemud running, and may this user use it? pass --connect URI for another daemon)")]
    Connect {
        /// The URI tried.
        uri: String,
        /// libvirt's message.
        message: String,
    },
    /// No domain of that name.
    #[error("no domain {name:?} at {uri} (virsh -c {uri} list --all shows the domains)")]
    NoDomain {
        /// The name asked for.
        name: String,
        /// The connection's URI.
        uri: String,
    },
    /// No storage pool of that name.
    #[error("no storage pool {name:?} at {uri} (virsh -c {uri} pool-list --all shows the pools)")]
    NoPool {
        /// The name asked for.
        name: String,
        /// The connection's URI.
        uri: String,
    },
    /// A libvirt call failed.
    #[error("libvirt: {what}: {message}")]
    Api {
        /// What was being done.
        what: String,
        /// libvirt's message.
        message: String,
    },
    /// The domain XML could not be read or rewritten.
    #[error(transparent)]
    Xml(#[from] crate::xml::XmlError),
}
