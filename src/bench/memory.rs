//! Resident memory of a process, from `/proc/PID/status` (Linux).

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_lines_are_read_in_mib() {
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
