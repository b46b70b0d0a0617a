//! Translation of a [`Policy`] into seccompiler's JSON format and from there into BPF.

use seccompiler::{BpfProgram, TargetArch};
use serde_json::{json, Value};

use crate::policy::{ArgTest, Policy};
use crate::{Arch, CompiledFilters, SeccompError};

/// `ENOSYS` on every Linux architecture we support.
const ENOSYS: u32 = 38;

/// seccompiler's name of the main allowlist filter.
const MAIN: &str = "main";
/// seccompiler's name of the filter that answers `enosys` names with ENOSYS.
const ENOSYS_FILTER: &str = "enosys";

impl Policy {
    /// Compiles the policy for `arch` into the filters tako-vm installs: seccompiler's programs
    /// ([`Policy::compile_reference`]), each with its linear syscall-number dispatch replaced by
    /// a binary search (see the `tree` module). The verdicts are seccompiler's (the unit tests
    /// check every syscall number); the kernel installs them several times faster.
    pub fn compile(&self, arch: Arch) -> Result<CompiledFilters, SeccompError> {
        let reference = self.compile_reference(arch)?;
        let programs = reference
            .0
            .iter()
            .map(|program| crate::tree::accelerate(program))
            .collect::<Result<_, _>>()?;
        Ok(CompiledFilters(programs))
    }

    /// Compiles the policy with seccompiler into its BPF programs for `arch`, as seccompiler
    /// lays them out: what [`Policy::compile`] starts from, and the reference its result is
    /// checked against.
    ///
    /// The result holds one or two filters, in installation order:
    ///
    /// 1. only if `enosys` is not empty: default allow, the `enosys` names fail with `ENOSYS`;
    /// 2. the main allowlist: `groups`, `conditional` (with their argument tests) and `enosys`
    ///    names are allowed, everything else fails with `default_errno`.
    ///
    /// The kernel evaluates every installed filter and keeps the most restrictive verdict, so an
    /// `enosys` name gets `ENOSYS` (allowed by 2, refused by 1) and anything outside the
    /// allowlist gets `default_errno`. Filter 1 comes first because installing filter 2 needs the
    /// `seccomp` syscall, which filter 2 itself denies.
    ///
    /// Names of `arch_only` for another architecture are left out. Compilation fails if a name
    /// is not a syscall on `arch` (per seccompiler's syscall table).
    pub fn compile_reference(&self, arch: Arch) -> Result<CompiledFilters, SeccompError> {
        let target = match arch {
            Arch::X86_64 => TargetArch::x86_64,
            Arch::Aarch64 => TargetArch::aarch64,
        };
        let mut filters = serde_json::Map::new();
        filters.insert(MAIN.to_owned(), self.main_filter_json(arch));
        let enosys: Vec<&str> = self.names_on(&self.enosys, arch).collect();
        if !enosys.is_empty() {
            filters.insert(
                ENOSYS_FILTER.to_owned(),
                json!({
                    "mismatch_action": "allow",
                    "match_action": { "errno": ENOSYS },
                    "filter": enosys.iter().map(|name| json!({ "syscall": name })).collect::<Vec<_>>(),
                }),
            );
        }
        let input = serde_json::to_vec(&Value::Object(filters))
            .expect("serializing a serde_json::Value cannot fail");

        let mut programs = seccompiler::compile_from_json(input.as_slice(), target)
            .map_err(|error| SeccompError::Compile { arch, error })?;
        let mut ordered: Vec<BpfProgram> = Vec::with_capacity(2);
        if let Some(program) = programs.remove(ENOSYS_FILTER) {
            ordered.push(program);
        }
        ordered.push(
            programs
                .remove(MAIN)
                .expect("seccompiler returns every filter it was given"),
        );
        Ok(CompiledFilters(ordered))
    }

    pub(crate) fn names_on<'a>(
        &'a self,
        names: &'a [String],
        arch: Arch,
    ) -> impl Iterator<Item = &'a str> {
        names
            .iter()
            .filter(move |name| self.exists_on(name, arch))
            .map(String::as_str)
    }

    /// seccompiler JSON for the main allowlist filter.
    fn main_filter_json(&self, arch: Arch) -> Value {
        let mut rules: Vec<Value> = self
            .names_on(&self.unconditional, arch)
            .chain(self.names_on(&self.enosys, arch))
            .map(|name| json!({ "syscall": name }))
            .collect();

        for cond in &self.conditional {
            if !self.exists_on(&cond.syscall, arch) {
                continue;
            }
            let condition = |op: Value, value: u32| json!({ "index": cond.arg, "type": "dword", "op": op, "val": value });
            let rule =
                |conditions: Vec<Value>| json!({ "syscall": cond.syscall, "args": conditions });
            match &cond.test {
                // One rule per value: seccompiler ORs the rules of a syscall.
                ArgTest::EqAny(values) => rules.extend(
                    values
                        .iter()
                        .map(|&value| rule(vec![condition(json!("eq"), value)])),
                ),
                // One rule with one condition per value: seccompiler ANDs them.
                ArgTest::NeAll(values) => rules.push(rule(
                    values
                        .iter()
                        .map(|&value| condition(json!("ne"), value))
                        .collect(),
                )),
                ArgTest::NoBitOf(mask) => rules.push(rule(vec![condition(
                    json!({ "masked_eq": u64::from(*mask) }),
                    0,
                )])),
            }
        }

        json!({
            "mismatch_action": { "errno": self.default_errno },
            "match_action": "allow",
            "filter": rules,
        })
    }
}
