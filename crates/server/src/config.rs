//! The service's configuration file (TOML; `/etc/vmshift/config.toml` by default):
//!
//! ```toml
//! listen = "127.0.0.1:8088"          # default
//! tokens = "/etc/vmshift/tokens"     # default; must be mode 0600
//! datastores = [                    # a path, or a named table (vmshift_runner::datastore)
//!   "/var/lib/libvirt/images",
//!   { name = "fast", root = "/mnt/nvme", reserve = "10%", max_copies = 4, bwlimit = "200M" },
//! ]
//! [tls]                              # required off loopback
//! cert = "/etc/vmshift/tls/cert.pem"
//! key = "/etc/vmshift/tls/key.pem"
//! [notify]                           # read by the notifier (vmshift-notify), not here
//! ```

use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use vmshift_runner::datastore::DatastoreConfig;

/// Where `vmshift serve` listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8088";
/// The configuration file read when none is named.
pub const DEFAULT_CONFIG: &str = "/etc/vmshift/config.toml";
/// The tokens file read when the configuration names none.
pub const DEFAULT_TOKENS: &str = "/etc/vmshift/tokens";
/// The largest request body accepted, bytes (a `JobRequest` is a few hundred).
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 * 1024;

/// The configuration file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// `ADDR:PORT` to listen on.
    pub listen: Option<String>,
    /// The bearer tokens file (see [`crate::auth`]).
    pub tokens: Option<PathBuf>,
    /// Directories the service may touch images under: paths or named tables.
    #[serde(default)]
    pub datastores: Vec<DatastoreConfig>,
    /// Certificate and key (PEM) for HTTPS.
    pub tls: Option<TlsFiles>,
    /// The largest request body, bytes.
    pub max_body_bytes: Option<usize>,
    /// Notifications: passed to the notifier as they are.
    pub notify: Option<toml::Table>,
}

/// PEM files for HTTPS.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// The configuration the service runs with (file, then command line).
#[derive(Debug, Clone)]
pub struct Config {
    /// Where it listens.
    pub listen: SocketAddr,
    /// The tokens file.
    pub tokens: PathBuf,
    /// Datastore roots as configured.
    pub datastores: Vec<PathBuf>,
    /// The datastores with their names and limits, as configured.
    pub named_datastores: Vec<DatastoreConfig>,
    /// HTTPS, when configured.
    pub tls: Option<TlsFiles>,
    /// The largest request body, bytes.
    pub max_body_bytes: usize,
    /// The file it was read from, if any.
    pub path: Option<PathBuf>,
}

impl Config {
    /// Reads `path` (or [`DEFAULT_CONFIG`] when `None` and it exists; defaults otherwise)
    /// and applies `listen` from the command line.
    ///
    /// # Errors
    /// One line naming the file: it cannot be read, is not valid TOML or has an unknown
    /// key; the listen address does not parse; a non-loopback address without `[tls]`.
    pub fn load(path: Option<&Path>, listen: Option<&str>) -> Result<Config, String> {
        let (file, path) = match path {
            Some(p) => (ConfigFile::read(p)?, Some(p.to_path_buf())),
            None if Path::new(DEFAULT_CONFIG).exists() => (
                ConfigFile::read(Path::new(DEFAULT_CONFIG))?,
                Some(PathBuf::from(DEFAULT_CONFIG)),
            ),
            None => (ConfigFile::default(), None),
        };
        let text = listen
            .map(str::to_string)
            .or(file.listen.clone())
            .unwrap_or_else(|| DEFAULT_LISTEN.into());
        let listen: SocketAddr = text.parse().map_err(|_| {
            format!("listen address {text:?} is not ADDR:PORT (e.g. 127.0.0.1:8088 or [::1]:8088)")
        })?;
        if !listen.ip().is_loopback() && file.tls.is_none() {
            return Err(format!(
                "listen address {listen} is not loopback: HTTPS is required there; add [tls] cert and key to {}",
                path.as_deref().unwrap_or(Path::new(DEFAULT_CONFIG)).display()
            ));
        }
        Ok(Config {
            listen,
            tokens: file.tokens.unwrap_or_else(|| DEFAULT_TOKENS.into()),
            datastores: file.datastores.iter().map(|d| d.root.clone()).collect(),
            named_datastores: file.datastores,
            tls: file.tls,
            max_body_bytes: file.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
            path,
        })
    }
}

impl ConfigFile {
    /// Reads and checks the configuration file at `p` (every front end's loader: `serve`
    /// and `vmshift datastores` read the same keys the same way).
    ///
    /// # Errors
    /// One line naming the file: it cannot be read, is not valid TOML, has an unknown key
    /// or a bad value (with its line), or names a datastore or its root twice.
    pub fn read(p: &Path) -> Result<ConfigFile, String> {
        let file: ConfigFile = read_toml(p)?;
        check_datastores(p, &file.datastores)?;
        Ok(file)
    }
}

/// The `datastores` of a configuration file, whatever else it holds (the job commands read
/// only these and `[notify]`; `serve` checks every key).
#[derive(Deserialize)]
struct DatastoresOnly {
    #[serde(default)]
    datastores: Vec<DatastoreConfig>,
}

/// Reads only the `datastores` of the configuration at `p`, as the job commands need them.
///
/// # Errors
/// One line naming the file (and the line) when it cannot be read, is not TOML, or a
/// datastore entry is wrong or repeated.
pub fn read_datastores(p: &Path) -> Result<Vec<DatastoreConfig>, String> {
    let file: DatastoresOnly = read_toml(p)?;
    check_datastores(p, &file.datastores)?;
    Ok(file.datastores)
}

fn read_toml<T: serde::de::DeserializeOwned>(p: &Path) -> Result<T, String> {
    let text = std::fs::read_to_string(p)
        .map_err(|e| format!("cannot read the configuration {}: {e}", p.display()))?;
    parse(p, &text)
}

fn check_datastores(p: &Path, list: &[DatastoreConfig]) -> Result<(), String> {
    DatastoreConfig::check_list(list).map_err(|e| format!("configuration {}: {e}", p.display()))
}

fn parse<T: serde::de::DeserializeOwned>(p: &Path, text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| {
        let msg = e.message().to_string();
        let at = e
            .span()
            .map(|s| {
                let line = text[..s.start].matches('\n').count() + 1;
                format!(" (line {line})")
            })
            .unwrap_or_default();
        format!("configuration {}{at}: {msg}", p.display())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(text: &str) -> (tempfile::TempDir, PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("config.toml");
        std::fs::write(&p, text).unwrap();
        (d, p)
    }

    #[test]
    fn defaults_listen_on_loopback_8088() {
        let (_d, p) = write("datastores = [\"/srv\"]\n");
        let c = Config::load(Some(&p), None).unwrap();
        assert_eq!(c.listen.to_string(), "127.0.0.1:8088");
        assert_eq!(c.tokens, PathBuf::from(DEFAULT_TOKENS));
        assert_eq!(c.datastores, vec![PathBuf::from("/srv")]);
    }

    #[test]
    fn a_non_loopback_address_needs_tls() {
        let (_d, p) = write("");
        let e = Config::load(Some(&p), Some("0.0.0.0:8088")).unwrap_err();
        assert!(e.contains("HTTPS is required"), "{e}");
        let (_d, p) = write("[tls]\ncert = \"/c.pem\"\nkey = \"/k.pem\"\n");
        assert!(Config::load(Some(&p), Some("0.0.0.0:8088")).is_ok());
    }

    #[test]
    fn an_unknown_key_names_the_file_and_line() {
        let (_d, p) = write("listen = \"127.0.0.1:1\"\nlisten_port = 5\n");
        let e = Config::load(Some(&p), None).unwrap_err();
        assert!(e.contains("config.toml (line 2)"), "{e}");
        assert!(e.contains("unknown field `listen_port`"), "{e}");
    }

    #[test]
    fn datastores_are_paths_or_named_tables() {
        let (_d, p) = write(
            "datastores = [\"/srv\", { name = \"fast\", root = \"/mnt/nvme\", reserve = \"10%\", max_copies = 4, bwlimit = \"200M\" }]\n",
        );
        let c = Config::load(Some(&p), None).unwrap();
        assert_eq!(
            c.datastores,
            vec![PathBuf::from("/srv"), PathBuf::from("/mnt/nvme")]
        );
        assert_eq!(c.named_datastores[0].name, "/srv");
        assert_eq!(c.named_datastores[1].name, "fast");
        assert_eq!(c.named_datastores[1].max_copies, Some(4));
    }

    #[test]
    fn a_bad_datastore_names_the_file_and_line() {
        let (_d, p) = write("listen = \"127.0.0.1:1\"\ndatastores = [{ name = \"x\", root = \"/a\", kind = \"nfs\" }]\n");
        let e = Config::load(Some(&p), None).unwrap_err();
        assert!(e.contains("config.toml (line 2)"), "{e}");
        assert!(e.contains("nfs"), "{e}");
        let (_d, p) = write("datastores = [\"/a\", { name = \"b\", root = \"/a\" }]\n");
        let e = Config::load(Some(&p), None).unwrap_err();
        assert!(
            e.contains("config.toml: datastore root /a is configured twice"),
            "{e}"
        );
    }

    #[test]
    fn the_notify_table_is_kept_for_the_notifier() {
        let (_d, p) = write("[notify]\ncommand = [\"/bin/true\"]\n");
        assert!(Config::load(Some(&p), None).is_ok());
    }
}
