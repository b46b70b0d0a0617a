//! Unit tests: policy validation, compilation for every architecture, and the semantics of the
//! compiled BPF checked with a small classic-BPF interpreter (so the aarch64 filters are
//! exercised too). The real-kernel tests are in `tests/filter.rs`.

use std::time::Instant;

use super::*;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_AARCH64: u32 = 0xc000_00b7;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const EPERM: u32 = RET_ERRNO | 1;
const ENOSYS: u32 = RET_ERRNO | 38;

const CLONE_NEWUSER: u64 = 0x1000_0000;
const CLONE_NEWNET: u64 = 0x4000_0000;
const SIGCHLD: u64 = 17;
/// Flags glibc passes to clone(2) for a new thread.
const THREAD_FLAGS: u64 = 0x003d_0f00;

fn audit(arch: Arch) -> u32 {
    match arch {
        Arch::X86_64 => AUDIT_ARCH_X86_64,
        Arch::Aarch64 => AUDIT_ARCH_AARCH64,
    }
}

/// Syscall numbers used below, per architecture.
fn nr(arch: Arch, name: &str) -> u32 {
    let (x86_64, aarch64) = match name {
        "read" => (0, 63),
        "getpid" => (39, 172),
        "openat" => (257, 56),
        "open" => (2, u32::MAX),
        "ioctl" => (16, 29),
        "clone" => (56, 220),
        "clone3" => (435, 435),
        "unshare" => (272, 97),
        "mount" => (165, 40),
        "prctl" => (157, 167),
        "prlimit64" => (302, 261),
        "ptrace" => (101, 117),
        "seccomp" => (317, 277),
        _ => panic!("no number for {name}"),
    };
    match arch {
        Arch::X86_64 => x86_64,
        Arch::Aarch64 => aarch64,
    }
}

/// Runs one classic-BPF seccomp program on a `struct seccomp_data`.
fn run_bpf(program: &[seccompiler::sock_filter], arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    run_bpf_traced(program, arch, nr, args).0
}

/// [`run_bpf`], also telling whether the program read any syscall argument.
fn run_bpf_traced(
    program: &[seccompiler::sock_filter],
    arch: u32,
    nr: u32,
    args: [u64; 6],
) -> (u32, bool) {
    let read_args = std::cell::Cell::new(false);
    let load = |offset: u32| -> u32 {
        match offset {
            0 => nr,
            4 => arch,
            16..=63 => {
                read_args.set(true);
                let arg = args[(offset as usize - 16) / 8];
                if offset % 8 == 0 {
                    arg as u32
                } else {
                    (arg >> 32) as u32
                }
            }
            _ => panic!("unexpected load offset {offset}"),
        }
    };
    let (mut acc, mut pc) = (0u32, 0usize);
    loop {
        let insn = &program[pc];
        pc += 1;
        match insn.code {
            0x20 => acc = load(insn.k),               // BPF_LD | BPF_W | BPF_ABS
            0x54 => acc &= insn.k,                    // BPF_ALU | BPF_AND | BPF_K
            0x05 => pc += insn.k as usize,            // BPF_JMP | BPF_JA
            0x06 => return (insn.k, read_args.get()), // BPF_RET | BPF_K
            0x15 | 0x25 | 0x35 | 0x45 => {
                let taken = match insn.code {
                    0x15 => acc == insn.k,  // JEQ
                    0x25 => acc > insn.k,   // JGT
                    0x35 => acc >= insn.k,  // JGE
                    _ => acc & insn.k != 0, // JSET
                };
                pc += usize::from(if taken { insn.jt } else { insn.jf });
            }
            code => panic!("unexpected BPF instruction code {code:#x}"),
        }
    }
}

/// The combined verdict of all filters, as the kernel computes it: the most restrictive action
/// wins (actions compare as signed 32-bit values, KILL_PROCESS being the smallest).
fn verdict_of(filters: &CompiledFilters, arch: u32, nr: u32, args: [u64; 6]) -> u32 {
    filters
        .0
        .iter()
        .map(|program| run_bpf(program, arch, nr, args))
        .min_by_key(|&ret| (ret & 0xffff_0000) as i32)
        .expect("at least one filter")
}

fn builtin() -> Policy {
    Policy::builtin().expect("the builtin policy is valid")
}

#[test]
fn builtin_policy_parses_and_denies_with_eperm() {
    assert_eq!(builtin().default_errno(), 1);
}

#[test]
fn compiles_for_every_arch_and_reports_size_and_time() {
    let policy = builtin();
    for arch in Arch::ALL {
        let start = Instant::now();
        let filters = policy.compile(arch).expect("compiles");
        let elapsed = start.elapsed();
        let lengths = filters.filter_lengths();
        println!(
            "{arch}: filters (installation order) {lengths:?} instructions, total {}, \
             compiled in {elapsed:?}",
            filters.instruction_count()
        );
        let reference = policy.compile_reference(arch).expect("compiles");
        println!(
            "{arch}: seccompiler's reference: filters {:?} instructions",
            reference.filter_lengths()
        );
        assert_eq!(
            reference.filter_lengths().len(),
            2,
            "enosys filter + main filter"
        );
        assert_eq!(lengths.len(), 2, "the same filters, accelerated");
        assert!(
            reference.filter_lengths().iter().all(|&len| len < 4096),
            "BPF_MAXINSNS"
        );
        // The point of the binary search: far fewer instructions for the kernel to install.
        assert!(
            filters.instruction_count() * 3 < reference.instruction_count(),
            "{} vs {}",
            filters.instruction_count(),
            reference.instruction_count()
        );
    }
    let start = Instant::now();
    let parsed = Policy::builtin().expect("parses");
    println!("parsing policy.json took {:?}", start.elapsed());
    let start = Instant::now();
    compile_for_host().expect("compiles for the host");
    println!("compile_for_host took {:?}", start.elapsed());
    assert_eq!(parsed, policy);
}

#[test]
fn no_name_is_both_allowed_and_denied_explicitly() {
    let policy = builtin();
    assert!(!policy.denied_explicitly().is_empty());
    for name in policy.denied_explicitly() {
        for arch in Arch::ALL {
            assert_eq!(
                policy.verdict(name, arch),
                Verdict::Deny,
                "{name} on {arch}"
            );
        }
    }
    // The same check, done by hand on the raw file, independently of the parser.
    let raw: serde_json::Value =
        serde_json::from_str(include_str!("../policy.json")).expect("json");
    let mut allowed: Vec<&str> = raw["groups"]
        .as_object()
        .expect("groups")
        .values()
        .flat_map(|names| names.as_array().expect("list"))
        .map(|name| name.as_str().expect("name"))
        .collect();
    allowed.extend(
        raw["conditional"]
            .as_array()
            .expect("conditional")
            .iter()
            .map(|c| c["syscall"].as_str().expect("syscall")),
    );
    for name in raw["denied_explicitly"].as_array().expect("denied") {
        let name = name.as_str().expect("name");
        assert!(!allowed.contains(&name), "{name} is allowed and denied");
    }
}

#[test]
fn the_spec_denials_are_all_denied() {
    let policy = builtin();
    let must_deny = [
        "unshare",
        "setns",
        "mount",
        "umount2",
        "pivot_root",
        "move_mount",
        "open_tree",
        "fsopen",
        "fsconfig",
        "fsmount",
        "fspick",
        "mount_setattr",
        "ptrace",
        "process_vm_readv",
        "process_vm_writev",
        "keyctl",
        "add_key",
        "request_key",
        "bpf",
        "perf_event_open",
        "userfaultfd",
        "io_uring_setup",
        "io_uring_enter",
        "io_uring_register",
        "kexec_load",
        "kexec_file_load",
        "init_module",
        "finit_module",
        "delete_module",
        "swapon",
        "swapoff",
        "reboot",
        "sethostname",
        "setdomainname",
        "ioperm",
        "iopl",
        "acct",
        "quotactl",
        "lookup_dcookie",
        "vhangup",
        "modify_ldt",
        "uselib",
        "open_by_handle_at",
        "name_to_handle_at",
        "personality",
        "syslog",
        "settimeofday",
        "clock_settime",
        "clock_adjtime",
        "adjtimex",
        "pidfd_getfd",
        "kcmp",
        "seccomp",
        "mknod",
        "mknodat",
        "chroot",
        "openat2",
    ];
    for name in must_deny {
        for arch in Arch::ALL {
            assert_eq!(
                policy.verdict(name, arch),
                Verdict::Deny,
                "{name} on {arch}"
            );
        }
        if name != "openat2" {
            assert!(
                policy.denied_explicitly().iter().any(|n| n == name),
                "{name}"
            );
        }
    }
    assert_eq!(policy.verdict("clone3", Arch::X86_64), Verdict::Enosys);
    assert_eq!(policy.verdict("clone", Arch::Aarch64), Verdict::AllowIfArgs);
    assert_eq!(policy.verdict("open", Arch::X86_64), Verdict::Allow);
    assert_eq!(policy.verdict("open", Arch::Aarch64), Verdict::Deny);
}

#[test]
fn denied_names_are_real_syscalls() {
    // Catches typos in the documentation list: every name must be a syscall somewhere.
    for name in builtin().denied_explicitly() {
        let resolves = Arch::ALL.into_iter().any(|arch| {
            let json = format!(r#"{{"default_errno": 1, "groups": {{"g": ["{name}"]}}}}"#);
            Policy::from_json(&json)
                .expect("valid")
                .compile(arch)
                .is_ok()
        });
        assert!(resolves, "{name} is not a syscall on any architecture");
    }
}

#[test]
fn compiled_semantics_on_every_arch() {
    let policy = builtin();
    for arch in Arch::ALL {
        let filters = policy.compile(arch).expect("compiles");
        let audit = audit(arch);
        let check = |name: &str, args: [u64; 6], expected: u32| {
            let got = verdict_of(&filters, audit, nr(arch, name), args);
            assert_eq!(got, expected, "{name}{args:?} on {arch}: {got:#x}");
        };
        check("read", [0; 6], RET_ALLOW);
        check("getpid", [0; 6], RET_ALLOW);
        check("openat", [0; 6], RET_ALLOW);
        check("clone3", [0; 6], ENOSYS);
        check("mount", [0; 6], EPERM);
        check("unshare", [CLONE_NEWUSER, 0, 0, 0, 0, 0], EPERM);
        check("ptrace", [0; 6], EPERM);
        check("seccomp", [0; 6], EPERM);
        check("clone", [SIGCHLD, 0, 0, 0, 0, 0], RET_ALLOW);
        check("clone", [THREAD_FLAGS, 0, 0, 0, 0, 0], RET_ALLOW);
        check("clone", [SIGCHLD | CLONE_NEWUSER, 0, 0, 0, 0, 0], EPERM);
        check("clone", [SIGCHLD | CLONE_NEWNET, 0, 0, 0, 0, 0], EPERM);
        check("clone", [THREAD_FLAGS | 0x2_0000, 0, 0, 0, 0, 0], EPERM); // CLONE_NEWNS
        check("prctl", [15, 0, 0, 0, 0, 0], RET_ALLOW); // PR_SET_NAME
        check("prctl", [38, 1, 0, 0, 0, 0], RET_ALLOW); // PR_SET_NO_NEW_PRIVS
        check("prctl", [22, 2, 0, 0, 0, 0], EPERM); // PR_SET_SECCOMP
        check("prctl", [35, 0, 0, 0, 0, 0], EPERM); // PR_SET_MM
        check("prlimit64", [0, 7, 0, 0, 0, 0], RET_ALLOW);
        check("prlimit64", [1, 7, 0, 0, 0, 0], EPERM);
        check("ioctl", [0, 0x5401, 0, 0, 0, 0], RET_ALLOW); // TCGETS
        check("ioctl", [0, 0x5412, 0, 0, 0, 0], EPERM); // TIOCSTI
                                                        // Syscalls of another audit architecture kill the process.
        assert_eq!(
            verdict_of(&filters, AUDIT_ARCH_I386, 20, [0; 6]),
            RET_KILL_PROCESS
        );
    }
    let x86 = policy.compile(Arch::X86_64).expect("compiles");
    assert_eq!(verdict_of(&x86, AUDIT_ARCH_X86_64, 2, [0; 6]), RET_ALLOW); // open
                                                                           // x32: the same syscalls with the x32 bit never match an allow rule.
    for nr in [0, 2, 39, 56, 257, 435] {
        assert_eq!(
            verdict_of(&x86, AUDIT_ARCH_X86_64, X32_SYSCALL_BIT | nr, [0; 6]),
            EPERM,
            "x32 syscall {nr}"
        );
    }
}

#[test]
fn every_allowed_name_is_allowed_by_the_bpf() {
    // Cross-checks compile() against verdict() for each name that has a known number.
    let policy = builtin();
    for arch in Arch::ALL {
        let filters = policy.compile(arch).expect("compiles");
        for name in ["read", "getpid", "openat", "clone3", "mount", "ptrace"] {
            let got = verdict_of(&filters, audit(arch), nr(arch, name), [0; 6]);
            let expected = match policy.verdict(name, arch) {
                Verdict::Allow => RET_ALLOW,
                Verdict::Enosys => ENOSYS,
                Verdict::Deny => EPERM,
                Verdict::AllowIfArgs => continue,
            };
            assert_eq!(got, expected, "{name} on {arch}");
        }
    }
}

fn invalid_message(json: &str) -> String {
    match Policy::from_json(json) {
        Err(SeccompError::Invalid(message)) => message,
        other => panic!("expected an invalid-policy error, got {other:?}"),
    }
}

#[test]
fn rejects_a_name_both_allowed_and_denied() {
    let message = invalid_message(
        r#"{"default_errno": 1, "groups": {"g": ["read", "ptrace"]},
            "denied_explicitly": ["ptrace"]}"#,
    );
    assert_eq!(
        message,
        "`ptrace` is both denied explicitly and allowed in group `g`"
    );
}

#[test]
fn rejects_malformed_policies() {
    let cases = [
        (
            r#"{"default_errno": 0, "groups": {}}"#,
            "default_errno must be between 1 and 4095, not 0",
        ),
        (
            r#"{"default_errno": 1, "groups": {"a": ["read"], "b": ["read"]}}"#,
            "`read` is listed twice: in group `a` and in group `b`",
        ),
        (
            r#"{"default_errno": 1, "groups": {"a": ["Read"]}}"#,
            "group `a`: `Read` is not a syscall name",
        ),
        (
            r#"{"default_errno": 1, "groups": {"a": ["clone"]},
                "conditional": [{"syscall": "clone", "arg": 0, "allow_if_eq_any": {"x": 1}}]}"#,
            "`clone` is listed twice: in group `a` and in conditional",
        ),
        (
            r#"{"default_errno": 1, "groups": {},
                "conditional": [{"syscall": "prctl", "arg": 0}]}"#,
            "conditional `prctl`: needs exactly one of allow_if_eq_any, allow_if_ne_all, \
             allow_if_no_bit_of",
        ),
        (
            r#"{"default_errno": 1, "groups": {},
                "conditional": [{"syscall": "prctl", "arg": 6, "allow_if_eq_any": {"x": 1}}]}"#,
            "conditional `prctl`: arg must be between 0 and 5, not 6",
        ),
        (
            r#"{"default_errno": 1, "groups": {},
                "conditional": [{"syscall": "prctl", "arg": 0, "allow_if_eq_any": {}}]}"#,
            "conditional `prctl`: the test has no values",
        ),
        (
            r#"{"default_errno": 1, "groups": {},
                "conditional": [{"syscall": "prctl", "arg": 0,
                                 "allow_if_eq_any": {"big": 4294967296}}]}"#,
            "conditional `prctl`: `big` = 4294967296 does not fit in 32 bits",
        ),
        (
            r#"{"default_errno": 1, "groups": {},
                "conditional": [{"syscall": "clone", "arg": 0, "allow_if_no_bit_of": {"x": 0}}]}"#,
            "conditional `clone`: allow_if_no_bit_of has an empty bitmask",
        ),
        (
            r#"{"default_errno": 1, "groups": {"a": ["open"]}, "arch_only": {"riscv64": ["open"]}}"#,
            "arch_only: unknown architecture `riscv64`",
        ),
        (
            r#"{"default_errno": 1, "groups": {"a": ["read"]}, "arch_only": {"x86_64": ["open"]}}"#,
            "arch_only: `open` is not allowed by groups, conditional or enosys",
        ),
        (
            r#"{"default_errno": 1, "groups": {}, "denied_explicitly": ["bpf", "bpf"]}"#,
            "denied_explicitly: `bpf` is listed twice",
        ),
    ];
    for (json, expected) in cases {
        assert_eq!(invalid_message(json), expected, "{json}");
    }
}

#[test]
fn rejects_unknown_keys_and_duplicate_keys() {
    for json in [
        r#"{"default_errno": 1, "groups": {}, "allow": ["mount"]}"#,
        r#"{"default_errno": 1, "groups": {"a": ["read"], "a": ["write"]}}"#,
        r#"{"default_errno": 1, "groups": {},
            "conditional": [{"syscall": "prctl", "arg": 0, "allow_if_eq_any": {"x": 1},
                             "allow_if_eq": {"y": 2}}]}"#,
    ] {
        let error = Policy::from_json(json).expect_err(json);
        assert!(matches!(error, SeccompError::Parse(_)), "{error}");
        assert!(error
            .to_string()
            .starts_with("cannot parse the seccomp policy: "));
    }
}

#[test]
fn unknown_syscall_fails_to_compile() {
    let policy =
        Policy::from_json(r#"{"default_errno": 1, "groups": {"a": ["open"]}}"#).expect("valid");
    assert!(policy.compile(Arch::X86_64).is_ok());
    let error = policy
        .compile(Arch::Aarch64)
        .expect_err("open is x86_64-only");
    assert!(matches!(
        error,
        SeccompError::Compile {
            arch: Arch::Aarch64,
            ..
        }
    ));
    let message = error.to_string();
    assert!(
        message.starts_with("cannot compile the seccomp policy for aarch64: ")
            && message.contains("open"),
        "{message}"
    );
}

#[test]
fn compiled_filters_are_shareable() {
    fn assert_traits<T: Clone + Send + Sync + 'static>() {}
    assert_traits::<CompiledFilters>();
    assert_traits::<Policy>();
    fn assert_error<T: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<SeccompError>();
}

#[test]
fn host_arch_is_known() {
    if cfg!(target_arch = "x86_64") {
        assert_eq!(Arch::host(), Some(Arch::X86_64));
    }
    assert_eq!(Arch::X86_64.to_string(), "x86_64");
    assert_eq!(Arch::Aarch64.name(), "aarch64");
}

/// Argument vectors that probe the conditional tests of `policy`: every listed value, its
/// neighbours, every single bit, all bits, and the same with high 32 bits set (which the tests
/// must ignore), each in the tested argument position.
fn probing_args(policy: &Policy) -> Vec<[u64; 6]> {
    let mut out = vec![[0u64; 6], [u64::MAX; 6]];
    for cond in &policy.conditional {
        let mut values: Vec<u32> = match &cond.test {
            crate::policy::ArgTest::EqAny(v) | crate::policy::ArgTest::NeAll(v) => v.clone(),
            crate::policy::ArgTest::NoBitOf(mask) => vec![*mask],
        };
        let listed = values.clone();
        for v in listed {
            values.extend([v.wrapping_add(1), v.wrapping_sub(1), !v]);
        }
        values.extend((0..32).map(|bit| 1u32 << bit));
        values.extend([0, u32::MAX, 17, 0x003d_0f00]);
        for v in values {
            for high in [0u64, 0xdead_beef] {
                let mut args = [0u64; 6];
                args[usize::from(cond.arg)] = (high << 32) | u64::from(v);
                out.push(args);
            }
        }
    }
    out
}

#[test]
fn the_installed_program_has_the_verdicts_of_seccompilers_filters() {
    let policy = builtin();
    let probes = probing_args(&policy);
    let other_arches = [AUDIT_ARCH_I386, 0, u32::MAX];
    for arch in Arch::ALL {
        let installed = policy.compile(arch).expect("compiles");
        let reference = policy.compile_reference(arch).expect("compiles");
        let numbers = (0..1200u32)
            .chain(X32_SYSCALL_BIT..X32_SYSCALL_BIT + 600)
            .chain([
                0x3fff_ffff,
                0x7fff_ffff,
                0x8000_0000,
                u32::MAX - 1,
                u32::MAX,
            ]);
        let mut conditional = 0;
        for nr in numbers {
            // Numbers whose verdict depends on arguments get every probe, the rest two.
            let (_, reads) =
                run_bpf_traced(&reference.0[reference.0.len() - 1], audit(arch), nr, [0; 6]);
            let args: &[[u64; 6]] = if reads { &probes } else { &probes[..2] };
            conditional += usize::from(reads);
            for a in args {
                let want = verdict_of(&reference, audit(arch), nr, *a);
                let got = verdict_of(&installed, audit(arch), nr, *a);
                assert_eq!(got, want, "syscall {nr:#x} on {arch} with {a:x?}");
            }
            for other in other_arches {
                let want = verdict_of(&reference, other, nr, [0; 6]);
                assert_eq!(want, RET_KILL_PROCESS);
                assert_eq!(verdict_of(&installed, other, nr, [0; 6]), want);
            }
        }
        // clone, prctl, prlimit64 and ioctl on both architectures.
        assert_eq!(conditional, policy.conditional.len(), "{arch}");
    }
}

#[test]
fn the_installed_programs_keep_seccompilers_prologue_and_every_argument_check() {
    let policy = builtin();
    for arch in Arch::ALL {
        let installed = policy.compile(arch).expect("compiles");
        let reference = policy.compile_reference(arch).expect("compiles");
        assert_eq!(installed.0.len(), reference.0.len(), "{arch}");
        for (ours, theirs) in installed.0.iter().zip(&reference.0) {
            // Architecture check and number load, as seccompiler wrote them.
            assert_eq!(ours[..4], theirs[..4], "{arch}");
            // Every argument load of seccompiler's rules is still there: no rule was dropped.
            let arg_loads = |p: &[seccompiler::sock_filter]| {
                let mut loads: Vec<u32> = p
                    .iter()
                    .filter(|i| i.code == 0x20 && i.k >= 16)
                    .map(|i| i.k)
                    .collect();
                loads.sort_unstable();
                loads
            };
            assert_eq!(arg_loads(ours), arg_loads(theirs), "{arch}");
        }
    }
}

#[test]
fn acceleration_keeps_the_verdicts_of_a_long_mixed_filter() {
    use seccompiler::{
        SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };
    // Every other number up to 1000 (hundreds of intervals: the far jumps of the search go
    // through BPF_JA), with argument rules on every 50th (two rules, one of them with two
    // conditions), plus a number far away.
    let cond = |arg: u8, op: SeccompCmpOp, value: u64| {
        SeccompCondition::new(arg, SeccompCmpArgLen::Dword, op, value).expect("condition")
    };
    let mut rules = std::collections::BTreeMap::new();
    for n in (0..1000i64).filter(|n| n % 2 == 0) {
        let chain = if n % 50 == 0 {
            vec![
                SeccompRule::new(vec![cond(2, SeccompCmpOp::Eq, n as u64)]).expect("rule"),
                SeccompRule::new(vec![
                    cond(2, SeccompCmpOp::Ge, n as u64 + 10),
                    cond(1, SeccompCmpOp::MaskedEq(0xf0), 0x30),
                ])
                .expect("rule"),
            ]
        } else {
            vec![]
        };
        rules.insert(n, chain);
    }
    rules.insert(5000, vec![]);
    let filter = SeccompFilter::new(
        rules,
        SeccompAction::Errno(13),
        SeccompAction::Allow,
        TargetArch::x86_64,
    )
    .expect("filter");
    let original: seccompiler::BpfProgram = filter.try_into().expect("compiles");
    let accelerated = crate::tree::accelerate(&original).expect("accelerates");
    assert!(
        accelerated.iter().skip(4).any(|i| i.code == 0x05),
        "far jumps are exercised"
    );
    assert!(accelerated.len() < original.len());
    for nr in (0..1100u32).chain([4999, 5000, 5001, X32_SYSCALL_BIT, u32::MAX - 1, u32::MAX]) {
        for a2 in [
            0u64,
            u64::from(nr),
            u64::from(nr) + 9,
            u64::from(nr) + 10,
            1 << 40,
        ] {
            for a1 in [0u64, 0x30, 0x3f, 0x130, 0x20] {
                let args = [0, a1, a2, 0, 0, 0];
                assert_eq!(
                    run_bpf(&accelerated, AUDIT_ARCH_X86_64, nr, args),
                    run_bpf(&original, AUDIT_ARCH_X86_64, nr, args),
                    "nr {nr} args {args:x?}"
                );
            }
        }
        assert_eq!(
            run_bpf(&accelerated, AUDIT_ARCH_I386, nr, [0; 6]),
            RET_KILL_PROCESS
        );
    }
}

#[test]
fn acceleration_refuses_programs_it_does_not_understand() {
    let i = |code: u16, jt: u8, jf: u8, k: u32| seccompiler::sock_filter { code, jt, jf, k };
    // No load of the syscall number.
    let no_load = [i(0x20, 0, 0, 4), i(0x06, 0, 0, RET_ALLOW)];
    assert!(crate::tree::accelerate(&no_load).is_err());
    // A prologue jump past the number load.
    let far = [
        i(0x20, 0, 0, 4),
        i(0x15, 2, 0, 1),
        i(0x20, 0, 0, 0),
        i(0x06, 0, 0, 0),
    ];
    assert!(crate::tree::accelerate(&far).is_err());
    // A dispatch jump out of the program.
    let out = [i(0x20, 0, 0, 0), i(0x15, 9, 0, 1), i(0x06, 0, 0, 0)];
    assert!(crate::tree::accelerate(&out).is_err());
}

#[test]
fn a_conditional_may_list_at_most_200_values() {
    let values: Vec<String> = (0..201).map(|i| format!(r#""v{i}": {i}"#)).collect();
    let json = format!(
        r#"{{"default_errno": 1, "groups": {{}}, "conditional": [{{"syscall": "prctl", "arg": 0,
        "allow_if_eq_any": {{{}}}, "comment": ""}}]}}"#,
        values.join(", ")
    );
    let message = invalid_message(&json);
    assert!(message.contains("at most 200"), "{message}");
}
