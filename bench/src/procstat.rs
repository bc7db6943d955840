//! What a server process costs, read from /proc: resident memory and CPU time.

use anyhow::{Context, anyhow};

/// Clock ticks per second of /proc/PID/stat's times. USER_HZ is 100 on every Linux
/// architecture we run on (what `getconf CLK_TCK` prints); reading it properly needs
/// libc's sysconf, which is not worth an unsafe block here.
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// One reading of a process.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ProcSample {
    /// VmRSS, in KiB.
    pub(crate) rss_kib: u64,
    /// utime + stime, in clock ticks.
    pub(crate) cpu_ticks: u64,
}

pub(crate) fn sample(pid: u32) -> anyhow::Result<ProcSample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .with_context(|| format!("reading /proc/{pid}/status (is --server-pid {pid} running?)"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .ok_or_else(|| anyhow!("no VmRSS in /proc/{pid}/status"))?;

    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces; the fields after
    // the last ')' start with field 3 (state), so utime (14) and stime (15) are the
    // 12th and 13th of them.
    let after_name = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))?;
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let field = |i: usize| -> anyhow::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| anyhow!("unexpected /proc/{pid}/stat"))
    };
    Ok(ProcSample {
        rss_kib,
        cpu_ticks: field(11)? + field(12)?,
    })
}

/// Percent of one core used between two samples `seconds` apart.
pub(crate) fn cpu_percent(before: ProcSample, after: ProcSample, seconds: f64) -> f64 {
    let ticks = after.cpu_ticks.saturating_sub(before.cpu_ticks) as f64;
    ticks / TICKS_PER_SECOND / seconds.max(1e-9) * 100.0
}
