//! Parsing and validation of the policy file format (documented in the crate docs).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

use crate::{Arch, SeccompError};

/// Highest errno value the kernel accepts as a seccomp errno (`MAX_ERRNO`).
const MAX_ERRNO: u32 = 4095;

/// Highest syscall argument index.
const MAX_ARG: u8 = 5;

/// Most values one conditional test may list (the compiled test jumps over them with 8-bit
/// offsets).
pub(crate) const MAX_VALUES: usize = 200;

/// A parsed and validated seccomp policy (the format of `seccomp/policy.json`).
///
/// Build it with [`Policy::builtin`] or [`Policy::from_json`], turn it into BPF with
/// [`Policy::compile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub(crate) default_errno: u32,
    /// Names allowed whatever their arguments, in file order.
    pub(crate) unconditional: Vec<String>,
    pub(crate) conditional: Vec<Conditional>,
    pub(crate) enosys: Vec<String>,
    /// Allowed names that exist on one architecture only.
    pub(crate) arch_only: BTreeMap<String, Arch>,
    pub(crate) denied_explicitly: Vec<String>,
}

/// A syscall allowed only when one of its arguments passes a test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Conditional {
    pub(crate) syscall: String,
    pub(crate) arg: u8,
    pub(crate) test: ArgTest,
}

/// The test applied to the low 32 bits of a syscall argument.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ArgTest {
    /// Allowed iff the argument equals one of the values.
    EqAny(Vec<u32>),
    /// Allowed iff the argument equals none of the values.
    NeAll(Vec<u32>),
    /// Allowed iff `argument & mask == 0`.
    NoBitOf(u32),
}

/// How a policy treats one syscall on one architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Allowed whatever its arguments.
    Allow,
    /// Allowed only for some argument values (the `conditional` section); otherwise it fails
    /// with the default errno.
    AllowIfArgs,
    /// Fails with `ENOSYS` (the `enosys` section).
    Enosys,
    /// Fails with the default errno: listed in `denied_explicitly`, not listed at all, or listed
    /// for the other architecture only.
    Deny,
}

impl Policy {
    /// The policy shipped with the crate (`seccomp/policy.json`, embedded at build time).
    pub fn builtin() -> Result<Policy, SeccompError> {
        Policy::from_json(include_str!("../policy.json"))
    }

    /// Parses and validates a policy written in the format described in the crate docs.
    pub fn from_json(s: &str) -> Result<Policy, SeccompError> {
        let raw: RawPolicy = serde_json::from_str(s).map_err(SeccompError::Parse)?;
        raw.validate()
    }

    /// The errno returned for every syscall the policy does not allow (1, `EPERM`, for the
    /// builtin policy).
    pub fn default_errno(&self) -> u32 {
        self.default_errno
    }

    /// The `denied_explicitly` documentation list, in file order.
    pub fn denied_explicitly(&self) -> &[String] {
        &self.denied_explicitly
    }

    /// How the policy treats the syscall `name` on `arch`.
    pub fn verdict(&self, name: &str, arch: Arch) -> Verdict {
        if self.arch_only.get(name).is_some_and(|&only| only != arch) {
            return Verdict::Deny;
        }
        if self.unconditional.iter().any(|n| n == name) {
            Verdict::Allow
        } else if self.conditional.iter().any(|c| c.syscall == name) {
            Verdict::AllowIfArgs
        } else if self.enosys.iter().any(|n| n == name) {
            Verdict::Enosys
        } else {
            Verdict::Deny
        }
    }

    /// Whether `name` is compiled into the filters for `arch`.
    pub(crate) fn exists_on(&self, name: &str, arch: Arch) -> bool {
        self.arch_only.get(name).is_none_or(|&only| only == arch)
    }
}

/// `_comment` may be one string or a list of lines; its content is ignored.
#[derive(Deserialize)]
#[serde(untagged)]
enum Comment {
    #[allow(dead_code)] // Only validated, never read.
    One(String),
    #[allow(dead_code)]
    Lines(Vec<String>),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(rename = "_comment")]
    _comment: Option<Comment>,
    default_errno: u32,
    groups: UniqueMap<Vec<String>>,
    #[serde(default)]
    arch_only: UniqueMap<Vec<String>>,
    #[serde(default)]
    conditional: Vec<RawConditional>,
    #[serde(default)]
    enosys: Vec<String>,
    #[serde(default)]
    denied_explicitly: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConditional {
    syscall: String,
    arg: u8,
    allow_if_eq_any: Option<UniqueMap<u64>>,
    allow_if_ne_all: Option<UniqueMap<u64>>,
    allow_if_no_bit_of: Option<UniqueMap<u64>>,
    #[allow(dead_code)] // Documentation only.
    comment: Option<String>,
}

impl RawPolicy {
    fn validate(self) -> Result<Policy, SeccompError> {
        if self.default_errno == 0 || self.default_errno > MAX_ERRNO {
            return invalid(format!(
                "default_errno must be between 1 and {MAX_ERRNO}, not {}",
                self.default_errno
            ));
        }

        // Every allowed name, with the place it comes from, to reject duplicates.
        let mut allowed: BTreeMap<String, String> = BTreeMap::new();
        let mut note = |name: &str, place: String| -> Result<(), SeccompError> {
            check_name(name, &place)?;
            if let Some(first) = allowed.insert(name.to_owned(), place.clone()) {
                return invalid(format!(
                    "`{name}` is listed twice: in {first} and in {place}"
                ));
            }
            Ok(())
        };

        let mut unconditional = Vec::new();
        for (group, names) in self.groups.0 {
            for name in names {
                note(&name, format!("group `{group}`"))?;
                unconditional.push(name);
            }
        }

        let mut conditional = Vec::with_capacity(self.conditional.len());
        for raw in self.conditional {
            note(&raw.syscall, "conditional".to_owned())?;
            conditional.push(raw.validate()?);
        }

        for name in &self.enosys {
            note(name, "enosys".to_owned())?;
        }

        let mut arch_only = BTreeMap::new();
        for (arch_name, names) in self.arch_only.0 {
            let arch = Arch::ALL
                .into_iter()
                .find(|a| a.name() == arch_name)
                .ok_or_else(|| {
                    SeccompError::Invalid(format!("arch_only: unknown architecture `{arch_name}`"))
                })?;
            for name in names {
                if !allowed.contains_key(&name) {
                    return invalid(format!(
                        "arch_only: `{name}` is not allowed by groups, conditional or enosys"
                    ));
                }
                if arch_only.insert(name.clone(), arch).is_some() {
                    return invalid(format!("arch_only: `{name}` is listed twice"));
                }
            }
        }

        let mut denied = BTreeSet::new();
        for name in &self.denied_explicitly {
            check_name(name, "denied_explicitly")?;
            if let Some(place) = allowed.get(name) {
                return invalid(format!(
                    "`{name}` is both denied explicitly and allowed in {place}"
                ));
            }
            if !denied.insert(name) {
                return invalid(format!("denied_explicitly: `{name}` is listed twice"));
            }
        }

        Ok(Policy {
            default_errno: self.default_errno,
            unconditional,
            conditional,
            enosys: self.enosys,
            arch_only,
            denied_explicitly: self.denied_explicitly,
        })
    }
}

impl RawConditional {
    fn validate(self) -> Result<Conditional, SeccompError> {
        let syscall = self.syscall;
        if self.arg > MAX_ARG {
            return invalid(format!(
                "conditional `{syscall}`: arg must be between 0 and {MAX_ARG}, not {}",
                self.arg
            ));
        }
        let values = |map: UniqueMap<u64>| -> Result<Vec<u32>, SeccompError> {
            if map.0.is_empty() {
                return invalid(format!("conditional `{syscall}`: the test has no values"));
            }
            if map.0.len() > MAX_VALUES {
                return invalid(format!(
                    "conditional `{syscall}`: the test lists {} values, at most {MAX_VALUES} are allowed",
                    map.0.len()
                ));
            }
            map.0
                .into_iter()
                .map(|(label, value)| {
                    u32::try_from(value).map_err(|_| {
                        SeccompError::Invalid(format!(
                            "conditional `{syscall}`: `{label}` = {value} does not fit in 32 bits"
                        ))
                    })
                })
                .collect()
        };
        let test = match (
            self.allow_if_eq_any,
            self.allow_if_ne_all,
            self.allow_if_no_bit_of,
        ) {
            (Some(map), None, None) => ArgTest::EqAny(values(map)?),
            (None, Some(map), None) => ArgTest::NeAll(values(map)?),
            (None, None, Some(map)) => {
                let bits = values(map)?;
                if bits.contains(&0) {
                    return invalid(format!(
                        "conditional `{syscall}`: allow_if_no_bit_of has an empty bitmask"
                    ));
                }
                ArgTest::NoBitOf(bits.into_iter().fold(0, |mask, bit| mask | bit))
            }
            _ => {
                return invalid(format!(
                    "conditional `{syscall}`: needs exactly one of allow_if_eq_any, \
                     allow_if_ne_all, allow_if_no_bit_of"
                ))
            }
        };
        Ok(Conditional {
            syscall,
            arg: self.arg,
            test,
        })
    }
}

fn invalid<T>(message: String) -> Result<T, SeccompError> {
    Err(SeccompError::Invalid(message))
}

fn check_name(name: &str, place: &str) -> Result<(), SeccompError> {
    let well_formed = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if well_formed {
        Ok(())
    } else {
        invalid(format!("{place}: `{name}` is not a syscall name"))
    }
}

/// A JSON object kept in file order that rejects duplicate keys (serde_json would otherwise
/// silently keep the last one, which could drop a whole group of a security policy).
struct UniqueMap<V>(Vec<(String, V)>);

impl<V> Default for UniqueMap<V> {
    fn default() -> Self {
        UniqueMap(Vec::new())
    }
}

impl<'de, V: Deserialize<'de>> Deserialize<'de> for UniqueMap<V> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct UniqueMapVisitor<V>(PhantomData<V>);

        impl<'de, V: Deserialize<'de>> Visitor<'de> for UniqueMapVisitor<V> {
            type Value = UniqueMap<V>;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object")
            }

            fn visit_map<M: MapAccess<'de>>(self, mut access: M) -> Result<Self::Value, M::Error> {
                let mut entries: Vec<(String, V)> = Vec::new();
                while let Some((key, value)) = access.next_entry::<String, V>()? {
                    if entries.iter().any(|(k, _)| *k == key) {
                        return Err(de::Error::custom(format!("duplicate key `{key}`")));
                    }
                    entries.push((key, value));
                }
                Ok(UniqueMap(entries))
            }
        }

        deserializer.deserialize_map(UniqueMapVisitor(PhantomData))
    }
}
