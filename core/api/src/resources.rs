//! A pod's size as users write it (`--memory 512m`).

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
    let digits = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    if digits == 0 {
        return Err(bad());
    }
    let number: u64 = v[..digits].parse().map_err(|_| bad())?;
    let unit: u64 = match &v[digits..] {
        "" => return u32::try_from(number).map_err(|_| too_big(value)),
        "b" => 1,
        "k" | "kb" => 1 << 10,
        "m" | "mb" => 1 << 20,
        "g" | "gb" => 1 << 30,
        "t" | "tb" => 1 << 40,
        _ => return Err(bad()),
    };
    let bytes = number.checked_mul(unit).ok_or_else(|| too_big(value))?;
    u32::try_from(bytes.div_ceil(1 << 20)).map_err(|_| too_big(value))
}

fn too_big(value: &str) -> String {
    format!("--memory {value}: too large")
}

#[cfg(test)]
mod tests {
    use super::*;

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
