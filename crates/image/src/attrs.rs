//! File attributes a target keeps from its source: mode, owner, group, user xattrs and the
//! SELinux label (`security.selinux`). Applied after verification, before the rename (the
//! partial target is created [`crate::target::PARTIAL_MODE`] until then).

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// Largest xattr list or value copied, bytes.
const XATTR_BUF: usize = 64 << 10;

/// Gives `target` the mode, owner and group and the user/SELinux xattrs of `source`.
/// What cannot be applied (chown without privilege, a file system without xattrs, a
/// label the target's policy refuses) is returned as one warning line each, never an error.
pub fn copy_attrs(source: &Path, target: &Path) -> Vec<String> {
    let mut warnings = Vec::new();
    let meta = match std::fs::metadata(source) {
        Ok(m) => m,
        Err(e) => {
            return vec![format!(
                "{}: its owner and mode could not be read ({e}); {} keeps mode 0600",
                source.display(),
                target.display()
            )]
        }
    };
    if let Err(e) = rustix::fs::chown(
        target,
        Some(rustix::fs::Uid::from_raw(meta.uid())),
        Some(rustix::fs::Gid::from_raw(meta.gid())),
    ) {
        warnings.push(format!(
            "{}: owner {}:{} of the source could not be set ({e})",
            target.display(),
            meta.uid(),
            meta.gid()
        ));
    }
    // After chown, which may clear set-id bits.
    if let Err(e) = rustix::fs::chmod(
        target,
        rustix::fs::Mode::from_raw_mode(meta.mode() & 0o7777),
    ) {
        warnings.push(format!(
            "{}: mode {:o} of the source could not be set ({e})",
            target.display(),
            meta.mode() & 0o7777
        ));
    }
    let mut list = vec![0u8; XATTR_BUF];
    let n = match rustix::fs::listxattr(source, &mut list[..]) {
        Ok(n) => n,
        Err(rustix::io::Errno::NOTSUP) => 0,
        Err(e) => {
            warnings.push(format!(
                "{}: extended attributes could not be listed ({e}); none were copied",
                source.display()
            ));
            0
        }
    };
    for name in list[..n].split(|&b| b == 0).filter(|n| !n.is_empty()) {
        let Ok(name) = std::str::from_utf8(name) else {
            continue;
        };
        if !(name.starts_with("user.") || name == "security.selinux") {
            continue;
        }
        let mut value = vec![0u8; XATTR_BUF];
        let copied = rustix::fs::getxattr(source, name, &mut value[..]).and_then(|len| {
            rustix::fs::setxattr(target, name, &value[..len], rustix::fs::XattrFlags::empty())
        });
        if let Err(e) = copied {
            warnings.push(format!(
                "{}: extended attribute {name} of the source could not be copied ({e})",
                target.display()
            ));
        }
    }
    warnings
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn the_target_gets_the_source_mode_and_user_xattrs() {
        let t = tempfile::tempdir().unwrap();
        let (s, d) = (t.path().join("s"), t.path().join("d"));
        std::fs::write(&s, b"x").unwrap();
        std::fs::write(&d, b"x").unwrap();
        std::fs::set_permissions(&s, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o600)).unwrap();
        let xattrs =
            rustix::fs::setxattr(&s, "user.vm", b"web01", rustix::fs::XattrFlags::empty()).is_ok();
        let w = copy_attrs(&s, &d);
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(std::fs::metadata(&d).unwrap().mode() & 0o7777, 0o640);
        if xattrs {
            let mut v = [0u8; 16];
            let n = rustix::fs::getxattr(&d, "user.vm", &mut v[..]).unwrap();
            assert_eq!(&v[..n], b"web01");
        }
    }
}
