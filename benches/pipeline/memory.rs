//! Resident memory and CPU time of a process, from `/proc/PID/status` and `/proc/PID/stat`
//! (Linux).

/// `VmRSS` (now) and `VmHWM` (peak) in MiB.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Rss {
    /// Resident now.
    pub now_mib: f64,
    /// Peak resident ("high water mark").
    pub peak_mib: f64,
}

/// Reads the memory of process `pid`, or `None` when it is gone or not on Linux.
pub fn rss(pid: u32) -> Option<Rss> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_status(&status)
}

fn parse_status(status: &str) -> Option<Rss> {
    let kib = |key: &str| -> Option<f64> {
        let line = status.lines().find(|l| l.starts_with(key))?;
        line[key.len()..]
            .split_whitespace()
            .next()?
            .parse::<f64>()
            .ok()
    };
    Some(Rss {
        now_mib: kib("VmRSS:")? / 1024.0,
        peak_mib: kib("VmHWM:")? / 1024.0,
    })
}

/// User plus system CPU time used so far by process `pid`, in seconds (from `/proc/PID/stat`).
pub fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are the 14th and 15th.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // /proc reports clock ticks of USER_HZ, which the kernel ABI fixes at 100.
    Some(ticks / 100.0)
}

/// Checks that need no broker, run by `cargo test` (see [`crate::CHECKS`]).
pub mod checks {
    use super::*;

    pub fn status_lines_are_read_in_mib() {
        let s = "Name:\tworker\nVmHWM:\t   20480 kB\nVmRSS:\t   10240 kB\n";
        assert_eq!(
            parse_status(s),
            Some(Rss {
                now_mib: 10.0,
                peak_mib: 20.0
            })
        );
        assert!(rss(std::process::id()).is_some_and(|r| r.peak_mib >= r.now_mib));
    }
}
