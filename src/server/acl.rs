//! Authorization: the book's Casbin `model.conf` and `policy.csv`, read as they are.
//!
//! We do not embed a Casbin interpreter. The model file is parsed and must be the book's
//! ACL model (whitespace, comments, and the order of the matcher's terms are free):
//!
//! ```text
//! [request_definition]
//! r = sub, obj, act
//! [policy_definition]
//! p = sub, obj, act
//! [policy_effect]
//! e = some(where (p.eft == allow))
//! [matchers]
//! m = r.sub == p.sub && r.obj == p.obj && r.act == p.act
//! ```
//!
//! Any other model (roles, deny effects, functions, other fields) is refused with an error
//! naming the line, because enforcing a model we only half understand would grant or deny
//! what its author did not intend.
//!
//! Semantics, as the book's model reads with our objects:
//! * the subject is the client certificate's Common Name;
//! * the object is the topic a call is about (`default` when the request names none), or
//!   `*` for calls about no single topic (ListTopics); a policy object `*` matches every
//!   object, which is how the book's `p, root, *, produce` keeps meaning "everything";
//! * actions are `produce`, `consume` and `admin` (every `log.v1.Admin` RPC).
//!
//! Health and GetServers are not authorized (the reference does not authorize GetServers,
//! and health probes must work). Reflection needs an authenticated client, no grant: it
//! describes the API, not the data.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use net::tls::TlsInfo;
use net::Status;

/// What a call does to its object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Produce,
    Consume,
    Admin,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Produce => "produce",
            Action::Consume => "consume",
            Action::Admin => "admin",
        }
    }

    fn parse(s: &str) -> Option<Action> {
        match s {
            "produce" => Some(Action::Produce),
            "consume" => Some(Action::Consume),
            "admin" => Some(Action::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The object that matches every object.
pub const ANY_OBJECT: &str = "*";

#[derive(Debug, thiserror::Error)]
pub enum AclError {
    #[error("reading {what} {path}: {source}")]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ACL model {path}: {reason}. Supported is the book's model: r = sub, obj, act; p = sub, obj, act; e = some(where (p.eft == allow)); m = r.sub == p.sub && r.obj == p.obj && r.act == p.act")]
    UnsupportedModel { path: PathBuf, reason: String },
    #[error("ACL policy {path}, line {line}: {reason}")]
    Policy {
        path: PathBuf,
        line: usize,
        reason: String,
    },
}

/// The model and policy files of an ACL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AclFiles {
    pub model_file: PathBuf,
    pub policy_file: PathBuf,
}

impl AclFiles {
    /// Reads and checks both files.
    pub fn load(&self) -> Result<Acl, AclError> {
        let model = read("ACL model", &self.model_file)?;
        check_model(&self.model_file, &model)?;
        let policy = read("ACL policy", &self.policy_file)?;
        parse_policy(&self.policy_file, &policy)
    }
}

fn read(what: &'static str, path: &Path) -> Result<String, AclError> {
    std::fs::read_to_string(path).map_err(|source| AclError::Read {
        what,
        path: path.to_owned(),
        source,
    })
}

/// Removes every whitespace character: the book's model is compared token by token.
fn squash(s: &str) -> String {
    s.chars().filter(|c| !c.is_whitespace()).collect()
}

/// Checks that `text` is the book's model.
pub fn check_model(path: &Path, text: &str) -> Result<(), AclError> {
    let bad = |reason: String| AclError::UnsupportedModel {
        path: path.to_owned(),
        reason,
    };
    let mut section: Option<String> = None;
    let mut seen: Vec<(String, String)> = Vec::new();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        if line.starts_with('[') && line.ends_with(']') {
            section = Some(line[1..line.len() - 1].trim().to_owned());
            continue;
        }
        let Some(sec) = &section else {
            return Err(bad(format!(
                "line {}: {line:?} is outside any section",
                i + 1
            )));
        };
        let Some((key, value)) = line.split_once('=') else {
            return Err(bad(format!(
                "line {}: expected `key = value`, got {line:?}",
                i + 1
            )));
        };
        let (key, value) = (key.trim(), squash(value));
        let ok = match (sec.as_str(), key) {
            ("request_definition", "r") | ("policy_definition", "p") => value == "sub,obj,act",
            ("policy_effect", "e") => value == "some(where(p.eft==allow))",
            ("matchers", "m") => matcher_ok(&value),
            _ => {
                return Err(bad(format!(
                    "line {}: `{key}` in section [{sec}] is not supported",
                    i + 1
                )))
            }
        };
        if !ok {
            return Err(bad(format!(
                "line {}: unsupported {key} in [{sec}]: {}",
                i + 1,
                line
            )));
        }
        if seen.iter().any(|(s, _)| s == sec) {
            return Err(bad(format!(
                "line {}: section [{sec}] defined twice",
                i + 1
            )));
        }
        seen.push((sec.clone(), key.to_owned()));
    }
    for want in [
        "request_definition",
        "policy_definition",
        "policy_effect",
        "matchers",
    ] {
        if !seen.iter().any(|(s, _)| s == want) {
            return Err(bad(format!("section [{want}] is missing")));
        }
    }
    Ok(())
}

/// `r.sub == p.sub && r.obj == p.obj && r.act == p.act`, terms in any order and either way
/// round; `(r.obj == p.obj || p.obj == "*")` is accepted for the object too, since that is
/// exactly how we treat `*`.
fn matcher_ok(m: &str) -> bool {
    let mut want: HashSet<&str> = ["sub", "obj", "act"].into();
    for term in m.split("&&") {
        let term = term.trim_matches(|c| c == '(' || c == ')');
        let field = match term {
            "r.sub==p.sub" | "p.sub==r.sub" => "sub",
            "r.obj==p.obj" | "p.obj==r.obj" => "obj",
            "r.act==p.act" | "p.act==r.act" => "act",
            _ => match term.split("||").collect::<Vec<_>>().as_slice() {
                [a, b]
                    if matches!(*a, "r.obj==p.obj" | "p.obj==r.obj")
                        && matches!(*b, "p.obj==\"*\"" | "p.obj=='*'") =>
                {
                    "obj"
                }
                _ => return false,
            },
        };
        if !want.remove(field) {
            return false;
        }
    }
    want.is_empty()
}

/// Splits one CSV line, with Casbin's optional double quotes around a field.
fn csv_fields(line: &str) -> Vec<String> {
    line.split(',')
        .map(|f| {
            let f = f.trim();
            f.strip_prefix('"')
                .and_then(|f| f.strip_suffix('"'))
                .unwrap_or(f)
                .to_owned()
        })
        .collect()
}

/// The grants of a policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Acl {
    grants: HashSet<(String, String, Action)>,
}

/// Parses `p, sub, obj, act` lines; blank lines and `#` comments are skipped. An unknown
/// action is an error rather than a grant nobody can use: it is almost always a typo.
pub fn parse_policy(path: &Path, text: &str) -> Result<Acl, AclError> {
    let mut acl = Acl::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let err = |reason: String| AclError::Policy {
            path: path.to_owned(),
            line: i + 1,
            reason,
        };
        let f = csv_fields(line);
        match f.first().map(String::as_str) {
            Some("p") => {}
            Some("g") => {
                return Err(err(
                    "role assignments (g) need a role model, which is not supported".into(),
                ))
            }
            _ => {
                return Err(err(format!(
                    "expected `p, subject, object, action`, got {line:?}"
                )))
            }
        }
        if f.len() != 4 {
            return Err(err(format!(
                "expected `p, subject, object, action` (4 fields), got {} fields",
                f.len()
            )));
        }
        if f[1].is_empty() || f[2].is_empty() {
            return Err(err("subject and object must not be empty".into()));
        }
        let act = Action::parse(&f[3]).ok_or_else(|| {
            err(format!(
                "unknown action {:?}; actions are produce, consume and admin",
                f[3]
            ))
        })?;
        acl.grants.insert((f[1].clone(), f[2].clone(), act));
    }
    Ok(acl)
}

impl Acl {
    pub fn allows(&self, sub: &str, obj: &str, act: Action) -> bool {
        // Lookups by borrowed tuple would need a custom key type; grants are few, and this
        // allocates only the two probes.
        let probe = |o: &str| self.grants.contains(&(sub.to_owned(), o.to_owned(), act));
        probe(ANY_OBJECT) || (obj != ANY_OBJECT && probe(obj))
    }

    pub fn len(&self) -> usize {
        self.grants.len()
    }
}

/// The node's authorization: off, or an ACL that can be replaced while serving.
pub struct Authorizer {
    acl: Option<RwLock<Arc<Acl>>>,
}

impl Authorizer {
    pub fn disabled() -> Authorizer {
        Authorizer { acl: None }
    }

    pub fn new(acl: Acl) -> Authorizer {
        Authorizer {
            acl: Some(RwLock::new(Arc::new(acl))),
        }
    }

    pub fn is_enabled(&self) -> bool {
        self.acl.is_some()
    }

    /// Replaces the ACL (no effect when authorization is off).
    pub fn replace(&self, acl: Acl) {
        if let Some(lock) = &self.acl {
            match lock.write() {
                Ok(mut g) => *g = Arc::new(acl),
                Err(p) => *p.into_inner() = Arc::new(acl),
            }
        }
    }

    fn current(&self) -> Option<Arc<Acl>> {
        self.acl.as_ref().map(|lock| match lock.read() {
            Ok(g) => g.clone(),
            Err(p) => p.into_inner().clone(),
        })
    }

    /// Allows or denies `act` on `obj` for the caller that `tls` identifies. `shown` is the
    /// object as the error message names it: the book's clients name no topic, and the book
    /// words their denial `... to *`.
    pub fn check(
        &self,
        tls: Option<&TlsInfo>,
        act: Action,
        obj: &str,
        shown: &str,
    ) -> Result<(), Status> {
        let Some(acl) = self.current() else {
            return Ok(());
        };
        let sub = subject(tls)?;
        if acl.allows(sub, obj, act) {
            return Ok(());
        }
        Err(Status::permission_denied(format!(
            "{} not permitted to {act} to {}",
            cut(sub),
            cut(shown)
        )))
    }
}

impl Authorizer {
    /// Allows any caller with an identity when authorization is on (any caller when it is
    /// off): for calls every client may make, such as reflection, but not anonymously.
    pub fn authenticate(&self, tls: Option<&TlsInfo>) -> Result<(), Status> {
        if self.is_enabled() {
            subject(tls)?;
        }
        Ok(())
    }
}

/// Who the caller proved to be: its client certificate's Common Name.
fn subject(tls: Option<&TlsInfo>) -> Result<&str, Status> {
    let Some(tls) = tls else {
        return Err(Status::unauthenticated("no transport security being used"));
    };
    tls.client_subject.as_deref().ok_or_else(|| {
        Status::unauthenticated(
            "no client certificate: authorization needs mutual TLS (server-tls-ca-file)",
        )
    })
}

/// A name as an error message shows it: unquoted, as the book's message has it, and cut
/// short so that a long topic name cannot blow up the status trailer.
fn cut(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    if name.chars().count() <= MAX_CHARS {
        name.to_owned()
    } else {
        let head: String = name.chars().take(MAX_CHARS).collect();
        format!("{head}... ({} bytes)", name.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BOOK_MODEL: &str = "[request_definition]\nr = sub, obj, act\n\n[policy_definition]\np = sub, obj, act\n\n[policy_effect]\ne = some(where (p.eft == allow))\n\n[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n";

    fn model(text: &str) -> Result<(), AclError> {
        check_model(Path::new("model.conf"), text)
    }

    #[test]
    fn the_books_model_is_accepted() {
        model(BOOK_MODEL).unwrap();
        model("# c\n[matchers]\nm=r.act==p.act&&p.obj==r.obj && r.sub == p.sub\n[request_definition]\nr=sub,obj,act\n[policy_definition]\np = sub , obj , act\n[policy_effect]\ne = some(where (p.eft == allow))").unwrap();
        model(&BOOK_MODEL.replace("r.obj == p.obj", "(r.obj == p.obj || p.obj == \"*\")")).unwrap();
    }

    #[test]
    fn other_models_are_refused() {
        for (from, to) in [
            ("r.act == p.act", "r.act == p.act || r.sub == \"root\""),
            ("&& r.act == p.act", ""),
            (
                "some(where (p.eft == allow))",
                "!some(where (p.eft == deny))",
            ),
            ("p = sub, obj, act", "p = sub, obj, act, eft"),
            ("[matchers]", "[role_definition]\ng = _, _\n[matchers]"),
            ("r.obj == p.obj", "keyMatch(r.obj, p.obj)"),
        ] {
            let m = BOOK_MODEL.replace(from, to);
            let e = model(&m).expect_err(&m).to_string();
            assert!(e.contains("Supported is the book's model"), "{e}");
        }
        assert!(
            model("[matchers]\nm = r.sub == p.sub && r.obj == p.obj && r.act == p.act\n").is_err()
        );
    }

    #[test]
    fn policy_grants_and_wildcards() {
        let p = Path::new("policy.csv");
        let acl = parse_policy(
            p,
            "p, root, *, produce\np, root, *, consume\n# per topic\np, alice, orders, produce\n\"p\", \"bob\", \"orders\", \"consume\"\n\n",
        )
        .unwrap();
        assert!(acl.allows("root", "anything", Action::Produce));
        assert!(acl.allows("root", ANY_OBJECT, Action::Consume));
        assert!(!acl.allows("root", "x", Action::Admin));
        assert!(acl.allows("alice", "orders", Action::Produce));
        assert!(!acl.allows("alice", "orders", Action::Consume));
        assert!(!acl.allows("alice", "other", Action::Produce));
        assert!(!acl.allows("alice", ANY_OBJECT, Action::Produce));
        assert!(acl.allows("bob", "orders", Action::Consume));
        assert!(!acl.allows("nobody", "orders", Action::Consume));
        for bad in [
            "p, root, *",
            "g, alice, admin",
            "p, root, *, write",
            "x, a, b, c",
        ] {
            assert!(parse_policy(p, bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn statuses() {
        let az = Authorizer::new(parse_policy(Path::new("p"), "p, root, *, produce").unwrap());
        let tls = |s: Option<&str>| TlsInfo {
            client_subject: s.map(str::to_owned),
            protocol_version: String::new(),
            cipher_suite: String::new(),
        };
        let e = az.check(None, Action::Produce, "t", "t").unwrap_err();
        assert_eq!(e.code, net::Code::Unauthenticated);
        assert_eq!(e.message, "no transport security being used");
        let e = az
            .check(Some(&tls(Some("nobody"))), Action::Produce, "default", "*")
            .unwrap_err();
        assert_eq!(e.code, net::Code::PermissionDenied);
        assert_eq!(e.message, "nobody not permitted to produce to *");
        az.check(Some(&tls(Some("root"))), Action::Produce, "t", "t")
            .unwrap();
        let e = az
            .check(Some(&tls(None)), Action::Produce, "t", "t")
            .unwrap_err();
        assert_eq!(e.code, net::Code::Unauthenticated);
        Authorizer::disabled()
            .check(None, Action::Admin, "*", "*")
            .unwrap();
    }
}
