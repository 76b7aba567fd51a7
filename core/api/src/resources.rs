//! A pod's size as users write it (`--memory 512m`), and a container's
//! cgroup limits in the guest (a pod file container's `memory`,
//! `pids_limit`, `cpus`, `cpu_shares`; `hyper run --pids-limit`).

pub use hyper_protocol::{CpuMax, ResourceLimits};

/// `--memory` as Docker takes it — bytes with a unit (`512m`, `1g`,
/// `1024k`, `1073741824b`; `kb`/`mb`/`gb`/`tb` too, any case) — or a plain
/// number of MiB, as hypercontainer always took it. Returns MiB, rounded up
/// to a whole MiB.
pub fn parse_memory(value: &str) -> Result<u32, String> {
    let bad = || {
        format!(
            "--memory {value}: give MiB (512) or a size with a unit: 512m, 1g, 1048576k, 536870912b"
        )
    };
    let v = value.trim().to_ascii_lowercase();
    let (number, suffix) = split_size(&v).ok_or_else(bad)?;
    if suffix.is_empty() {
        return u32::try_from(number).map_err(|_| too_big(value));
    }
    let unit = unit_bytes(suffix).ok_or_else(bad)?;
    let bytes = number.checked_mul(unit).ok_or_else(|| too_big(value))?;
    u32::try_from(bytes.div_ceil(1 << 20)).map_err(|_| too_big(value))
}

/// `512m` → (512, "m"): the leading digits as a number and what follows;
/// `None` without leading digits or past u64.
fn split_size(v: &str) -> Option<(u64, &str)> {
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if digits == 0 {
        return None;
    }
    Some((v[..digits].parse().ok()?, &v[digits..]))
}

/// Docker's size units, lower case, in bytes.
fn unit_bytes(suffix: &str) -> Option<u64> {
    Some(match suffix {
        "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return None,
    })
}

fn too_big(value: &str) -> String {
    format!("--memory {value}: too large")
}

/// A size in bytes with Docker's units (`32m`, `1g`, `512k`, `6291456b`);
/// a bare number is refused (Docker reads it as bytes, hyperd's `--memory`
/// as MiB: the unit says which).
pub fn parse_bytes(value: &str) -> Result<u64, String> {
    let bad = || format!("{value:?}: give a size with a unit: 32m, 1g, 512k, 6291456b");
    let v = value.trim().to_ascii_lowercase();
    let (number, suffix) = split_size(&v).ok_or_else(bad)?;
    let unit = unit_bytes(suffix).ok_or_else(bad)?;
    number
        .checked_mul(unit)
        .ok_or_else(|| format!("{value:?}: too large"))
}

/// Docker's `--cpus` (a fraction of CPUs, `0.5`) as `cpu.max` over
/// Docker's 100 ms period.
pub fn cpus_to_cpu_max(cpus: f64) -> Result<CpuMax, String> {
    let max = (CpuMax::MAX_QUOTA_US / CpuMax::DEFAULT_PERIOD_US) as f64;
    let min = CpuMax::MIN_QUOTA_US as f64 / CpuMax::DEFAULT_PERIOD_US as f64;
    if !cpus.is_finite() || cpus < min || cpus > max {
        return Err(format!(
            "{cpus}: give a fraction of CPUs from {min} to {max} (0.5 is half a CPU)"
        ));
    }
    Ok(CpuMax {
        // Within 0.01..=10240 CPUs: the product fits and rounds to whole µs.
        quota_us: (cpus * CpuMax::DEFAULT_PERIOD_US as f64).round() as u64,
        period_us: CpuMax::DEFAULT_PERIOD_US,
    })
}

/// `hyper run`'s CPU flags, as Docker has them: `--cpus` (a number of CPUs,
/// `1.5`), `--cpu-shares` (a relative weight; 1024 is everyone's), and
/// `--cpu-quota` microseconds of CPU time per `--cpu-period` (100 ms
/// without it).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct CpuFlags {
    pub cpus: Option<f64>,
    pub shares: Option<u64>,
    pub period_us: Option<u64>,
    pub quota_us: Option<u64>,
}

/// What [`CpuFlags`] ask of a pod: the VM's vCPUs and the container's
/// `cpu.max` and `cpu.weight` in the guest.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CpuPlan {
    pub vcpus: Option<u32>,
    pub cpu_max: Option<CpuMax>,
    pub cpu_weight: Option<u64>,
}

/// [`CpuFlags`] as a [`CpuPlan`]. A VM has whole vCPUs, so `--cpus 1.5`
/// gives it 2 (Kata's rounding) and caps the container at 1.5 CPUs'
/// worth of time; a whole `--cpus 2` is the VM's size alone. A fraction
/// and `--cpu-quota` both set the cap, so they are refused together, as
/// Docker refuses `--cpus` with `--cpu-quota`.
pub fn cpu_plan(flags: &CpuFlags) -> Result<CpuPlan, String> {
    let mut plan = CpuPlan::default();
    if let Some(cpus) = flags.cpus {
        let cap = cpus_to_cpu_max(cpus).map_err(|e| format!("--cpus {e}"))?;
        // Within 0.01..=10240 (cpus_to_cpu_max's range): fits in u32.
        plan.vcpus = Some(cpus.ceil() as u32);
        if cpus.fract() != 0.0 {
            plan.cpu_max = Some(cap);
        }
    }
    if flags.period_us.is_some() && flags.quota_us.is_none() {
        return Err(
            "--cpu-period: give --cpu-quota with it (the CPU time allowed per period)".into(),
        );
    }
    if let Some(quota_us) = flags.quota_us {
        if plan.cpu_max.is_some() {
            return Err(format!(
                "--cpus {} and --cpu-quota both cap the container's CPU time: give one (a whole --cpus sizes the VM and goes with --cpu-quota)",
                flags.cpus.unwrap_or_default()
            ));
        }
        let max = CpuMax {
            quota_us,
            period_us: flags.period_us.unwrap_or(CpuMax::DEFAULT_PERIOD_US),
        };
        let limits = ResourceLimits {
            cpu_max: Some(max),
            ..Default::default()
        };
        check_limits(&limits, |_| String::new()).map_err(|e| {
            let e = e.trim_start_matches(": ");
            format!(
                "--cpu-quota {quota_us} / --cpu-period {}: {e}",
                max.period_us
            )
        })?;
        plan.cpu_max = Some(max);
    }
    // Docker's 0 is "the default weight"; its kernel floor is 2.
    plan.cpu_weight = match flags.shares {
        None | Some(0) => None,
        Some(s) if s > MAX_CPU_SHARES => {
            return Err(format!(
                "--cpu-shares {s}: give 2 to {MAX_CPU_SHARES} (1024 is the default weight)"
            ))
        }
        Some(s) => Some(ResourceLimits::weight_of_shares(s.max(2))),
    };
    Ok(plan)
}

/// The kernel's cgroup v1 `cpu.shares` ceiling, and Docker's.
pub const MAX_CPU_SHARES: u64 = 262_144;

/// Checks `limits` as hyperd gets them; the error names the field the
/// user set, through `key` (`--pids-limit` for `pids_max`, or a pod file
/// key), and its range.
pub fn check_limits(limits: &ResourceLimits, key: impl Fn(&str) -> String) -> Result<(), String> {
    limits.validate().map_err(|e| {
        let field = e.split([' ', '.']).next().unwrap_or_default();
        format!("{}: {e}", key(field))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_sizes_need_a_unit() {
        assert_eq!(parse_bytes("32m"), Ok(32 << 20));
        assert_eq!(parse_bytes("1G"), Ok(1 << 30));
        assert_eq!(parse_bytes("512kb"), Ok(512 << 10));
        assert_eq!(parse_bytes("6291456b"), Ok(6 << 20));
        for bad in ["", "32", "m", "1.5g", "-1m", "1 g"] {
            let e = parse_bytes(bad).unwrap_err();
            assert!(e.contains("32m"), "{bad}: {e}");
        }
        assert!(parse_bytes("99999999999t")
            .unwrap_err()
            .contains("too large"));
    }

    #[test]
    fn cpus_are_a_quota_over_dockers_period() {
        let half = cpus_to_cpu_max(0.5).unwrap();
        assert_eq!((half.quota_us, half.period_us), (50_000, 100_000));
        assert_eq!(cpus_to_cpu_max(2.0).unwrap().quota_us, 200_000);
        assert_eq!(cpus_to_cpu_max(0.01).unwrap().quota_us, 1_000);
        for bad in [0.0, -1.0, 0.001, f64::NAN, f64::INFINITY, 1e9] {
            assert!(cpus_to_cpu_max(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cpu_flags_size_the_vm_and_cap_the_container() {
        let plan = |f: CpuFlags| cpu_plan(&f);
        // A whole number sizes the VM only.
        let p = plan(CpuFlags {
            cpus: Some(2.0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!((p.vcpus, p.cpu_max, p.cpu_weight), (Some(2), None, None));
        // A fraction rounds the VM up and caps the container.
        let p = plan(CpuFlags {
            cpus: Some(1.5),
            shares: Some(512),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.vcpus, Some(2));
        assert_eq!(
            p.cpu_max,
            Some(CpuMax {
                quota_us: 150_000,
                period_us: 100_000
            })
        );
        assert_eq!(p.cpu_weight, Some(ResourceLimits::weight_of_shares(512)));
        let p = plan(CpuFlags {
            cpus: Some(0.25),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(p.vcpus, Some(1));
        // Quota over Docker's period, or the one given; 0 shares is the default.
        let p = plan(CpuFlags {
            cpus: Some(2.0),
            quota_us: Some(50_000),
            shares: Some(0),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            p.cpu_max.map(|c| (c.quota_us, c.period_us)),
            Some((50_000, 100_000))
        );
        assert_eq!(p.cpu_weight, None);
        let p = plan(CpuFlags {
            quota_us: Some(20_000),
            period_us: Some(50_000),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(
            p.cpu_max.map(|c| (c.quota_us, c.period_us)),
            Some((20_000, 50_000))
        );
        assert_eq!(p.vcpus, None);
        // What Docker refuses, with the flag named.
        for (flags, word) in [
            (
                CpuFlags {
                    cpus: Some(0.5),
                    quota_us: Some(50_000),
                    ..Default::default()
                },
                "--cpu-quota",
            ),
            (
                CpuFlags {
                    period_us: Some(50_000),
                    ..Default::default()
                },
                "--cpu-period",
            ),
            (
                CpuFlags {
                    quota_us: Some(10),
                    ..Default::default()
                },
                "--cpu-quota 10",
            ),
            (
                CpuFlags {
                    quota_us: Some(50_000),
                    period_us: Some(10),
                    ..Default::default()
                },
                "--cpu-period 10",
            ),
            (
                CpuFlags {
                    shares: Some(MAX_CPU_SHARES + 1),
                    ..Default::default()
                },
                "--cpu-shares",
            ),
            (
                CpuFlags {
                    cpus: Some(0.0),
                    ..Default::default()
                },
                "--cpus 0",
            ),
            (
                CpuFlags {
                    cpus: Some(f64::NAN),
                    ..Default::default()
                },
                "--cpus",
            ),
        ] {
            let e = plan(flags).unwrap_err();
            assert!(e.contains(word), "{flags:?}: {e}");
        }
    }

    #[test]
    fn limit_errors_name_the_users_key() {
        let limits = ResourceLimits {
            pids_max: Some(0),
            ..Default::default()
        };
        let e = check_limits(&limits, |f| match f {
            "pids_max" => "--pids-limit".into(),
            f => f.into(),
        })
        .unwrap_err();
        assert!(e.starts_with("--pids-limit: pids_max 0"), "{e}");
        let limits = ResourceLimits {
            cpu_max: Some(CpuMax {
                quota_us: 1,
                period_us: 100_000,
            }),
            ..Default::default()
        };
        let e = check_limits(&limits, |f| format!("container[0].{f}")).unwrap_err();
        assert!(e.starts_with("container[0].cpu_max"), "{e}");
    }

    #[test]
    fn memory_takes_mib_and_dockers_units() {
        assert_eq!(parse_memory("512"), Ok(512));
        assert_eq!(parse_memory("512m"), Ok(512));
        assert_eq!(parse_memory("512M"), Ok(512));
        assert_eq!(parse_memory("512mb"), Ok(512));
        assert_eq!(parse_memory("1g"), Ok(1024));
        assert_eq!(parse_memory("2GB"), Ok(2048));
        assert_eq!(parse_memory("1024k"), Ok(1));
        assert_eq!(parse_memory("1048576k"), Ok(1024));
        assert_eq!(parse_memory("536870912b"), Ok(512));
        // Rounded up to a whole MiB.
        assert_eq!(parse_memory("1000k"), Ok(1));
        assert_eq!(parse_memory("1048577b"), Ok(2));
        assert_eq!(parse_memory("1t"), Ok(1 << 20));
        for bad in ["", "m", "12x", "1.5g", "-1", "g1", "1 g"] {
            let err = parse_memory(bad).unwrap_err();
            assert!(err.contains("512m"), "{bad}: {err}");
        }
        assert!(parse_memory("99999999999")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_memory("99999999999999t")
            .unwrap_err()
            .contains("too large"));
    }
}
