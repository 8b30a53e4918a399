//! Bearer tokens: a file of `NAME ROLE TOKEN` lines (`#` starts a comment), mode 0600 or
//! stricter. `read` tokens may call every `GET`; `operate` tokens may also start, cancel,
//! resume, roll back and change jobs. The dashboard sends the token in the `Authorization`
//! header (never a cookie), so another site's page cannot make the browser act for it.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// What a token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Read jobs, reports, datastores, events.
    Read,
    /// Also change things.
    Operate,
}

/// The caller a request authenticated as (an axum request extension).
#[derive(Debug, Clone)]
pub struct Caller {
    /// The token's name (logged with every mutating call).
    pub name: String,
    /// Its role.
    pub role: Role,
}

/// The tokens the service accepts.
#[derive(Debug, Clone)]
pub struct Tokens(Vec<(String, Role, String)>);

/// The shortest token accepted, characters.
pub const MIN_TOKEN_LEN: usize = 16;

impl Tokens {
    /// Reads the tokens file.
    ///
    /// # Errors
    /// One line naming the file: missing (with how to create one), readable by group or
    /// others, a malformed line (its number), an unknown role, a short or repeated token.
    pub fn load(path: &Path) -> Result<Tokens, String> {
        let meta = std::fs::metadata(path).map_err(|e| {
            format!(
                "tokens file {}: {e}; create one: umask 077; echo \"admin operate $(head -c 24 /dev/urandom | base64)\" > {}",
                path.display(),
                path.display()
            )
        })?;
        if meta.mode() & 0o077 != 0 {
            return Err(format!(
                "tokens file {} is mode {:04o}: others could read the tokens; chmod 600 {}",
                path.display(),
                meta.mode() & 0o7777,
                path.display()
            ));
        }
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("tokens file {}: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("tokens file {}: {e}", path.display()))
    }

    /// Parses `NAME ROLE TOKEN` lines.
    ///
    /// # Errors
    /// A malformed line, an unknown role, a token shorter than [`MIN_TOKEN_LEN`], a token or
    /// name given twice, no token at all.
    pub fn parse(text: &str) -> Result<Tokens, String> {
        let mut out: Vec<(String, Role, String)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.split('#').next().unwrap_or("").trim();
            if line.is_empty() {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            let [name, role, token] = f[..] else {
                return Err(format!("line {}: expected NAME ROLE TOKEN", n + 1));
            };
            let role = match role {
                "read" => Role::Read,
                "operate" => Role::Operate,
                r => {
                    return Err(format!(
                        "line {}: role {r:?} is neither read nor operate",
                        n + 1
                    ))
                }
            };
            if token.len() < MIN_TOKEN_LEN {
                return Err(format!(
                    "line {}: the token of {name} is shorter than {MIN_TOKEN_LEN} characters",
                    n + 1
                ));
            }
            if out.iter().any(|(m, _, t)| m == name || t == token) {
                return Err(format!(
                    "line {}: {name} or its token is given twice",
                    n + 1
                ));
            }
            out.push((name.into(), role, token.into()));
        }
        if out.is_empty() {
            return Err("no tokens: add a line NAME ROLE TOKEN".into());
        }
        Ok(Tokens(out))
    }

    /// The caller a bearer token belongs to. Compares every token in constant time.
    pub fn caller(&self, token: &str) -> Option<Caller> {
        let mut found = None;
        for (name, role, t) in &self.0 {
            if constant_time_eq(t.as_bytes(), token.as_bytes()) {
                found = Some(Caller {
                    name: name.clone(),
                    role: *role,
                });
            }
        }
        found
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn tokens_map_to_their_names_and_roles() {
        let t = Tokens::parse(
            "# ops\nalice operate 0123456789abcdef0\nbob read fedcba98765432100 # ro\n",
        )
        .unwrap();
        let a = t.caller("0123456789abcdef0").unwrap();
        assert_eq!((a.name.as_str(), a.role), ("alice", Role::Operate));
        assert_eq!(t.caller("fedcba98765432100").unwrap().role, Role::Read);
        assert!(t.caller("0123456789abcdef").is_none());
        assert!(t.caller("").is_none());
    }

    #[test]
    fn bad_lines_are_refused_with_their_number() {
        let e = Tokens::parse("alice operate\n").unwrap_err();
        assert_eq!(e, "line 1: expected NAME ROLE TOKEN");
        let e = Tokens::parse("a admin 0123456789abcdef0\n").unwrap_err();
        assert!(e.contains("neither read nor operate"), "{e}");
        let e = Tokens::parse("a read short\n").unwrap_err();
        assert!(e.contains("shorter than 16"), "{e}");
        let e = Tokens::parse("a read 0123456789abcdef0\nb read 0123456789abcdef0\n").unwrap_err();
        assert!(e.starts_with("line 2:"), "{e}");
        assert!(Tokens::parse("# nothing\n").is_err());
    }

    #[test]
    fn a_file_others_can_read_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("tokens");
        std::fs::write(&p, "a operate 0123456789abcdef0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = Tokens::load(&p).unwrap_err();
        assert!(e.contains("mode 0644") && e.contains("chmod 600"), "{e}");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(Tokens::load(&p).is_ok());
        let e = Tokens::load(&d.path().join("none")).unwrap_err();
        assert!(e.contains("create one"), "{e}");
    }
}
