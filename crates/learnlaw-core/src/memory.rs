//! Memory checks before big allocations: a size that cannot fit is refused with the figure and the
//! setting to change, instead of an allocator abort halfway through.
use crate::{Error, Result};

/// Bytes this process may still allocate, as far as the OS tells (Linux: MemAvailable, capped by
/// the cgroup's limit); None where unknown, and nothing is refused then.
pub fn available() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 = meminfo.lines().find_map(|l| l.strip_prefix("MemAvailable:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    let read = |p: &str| std::fs::read_to_string(p).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let cgroup = read("/sys/fs/cgroup/memory.max").map(|max| max.saturating_sub(read("/sys/fs/cgroup/memory.current").unwrap_or(0)));
    Some(cgroup.map_or(kib * 1024, |c| c.min(kib * 1024)))
}

/// Refuses `what` when it needs more than the available memory; `advice` names what to change.
pub fn ensure_fits(what: &str, needed: u64, advice: &str) -> Result<()> {
    match available() {
        Some(available) if needed > available => Err(Error::Memory { what: what.into(), needed, available, advice: advice.into() }),
        _ => Ok(()),
    }
}

/// A byte count for people: 1.5 GB, 820 MB (powers of 1000, like `df -H`).
pub fn human(bytes: u64) -> String {
    let units = ["bytes", "kB", "MB", "GB", "TB", "PB", "EB"];
    let mut v = bytes as f64;
    let mut unit = 0;
    while v >= 1000.0 && unit + 1 < units.len() {
        v /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} bytes")
    } else {
        format!("{v:.1} {}", units[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human(999), "999 bytes");
        assert_eq!(human(1_500_000_000), "1.5 GB");
        assert_eq!(human(u64::MAX), "18.4 EB");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn an_impossible_size_is_refused_with_the_figure_and_the_advice() {
        assert!(available().is_some_and(|a| a > 0));
        let err = ensure_fits("a test", u64::MAX, "ask for less").unwrap_err();
        assert!(matches!(err, Error::Memory { .. }), "{err:?}");
        let msg = err.to_string();
        assert!(msg.contains("18.4 EB") && msg.contains("ask for less"), "{msg}");
        ensure_fits("a test", 1, "").unwrap();
    }
}
