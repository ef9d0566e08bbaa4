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

/// User plus system CPU time used so far by every process whose command name is `comm` (as
/// `/proc/PID/comm` has it, e.g. `beam.smp` for the broker), in seconds.
pub fn cpu_seconds_of(comm: &str) -> f64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0.0;
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == comm)
        })
        .filter_map(cpu_seconds)
        .sum()
}

/// [`cpu_seconds`] summed over `pids` (a process gone counts 0).
fn cpu_seconds_sum(pids: &[u32]) -> f64 {
    pids.iter().filter_map(|p| cpu_seconds(*p)).sum()
}

/// The whole machine's CPU time so far (the `cpu` line of `/proc/stat`, in seconds summed over
/// its cores) and how many cores it counts (its `cpuN` lines).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MachineCpu {
    /// All but idle and I/O wait.
    pub busy: f64,
    /// Every state.
    pub all: f64,
    /// Cores.
    pub cores: usize,
}

/// Reads [`MachineCpu`] now, `None` off Linux.
pub fn machine_cpu() -> Option<MachineCpu> {
    parse_machine(&std::fs::read_to_string("/proc/stat").ok()?)
}

fn parse_machine(stat: &str) -> Option<MachineCpu> {
    let mut words = stat.lines().next()?.split_whitespace();
    if words.next()? != "cpu" {
        return None;
    }
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let ticks: Vec<f64> = words
        .take(8)
        .map(|w| w.parse().ok())
        .collect::<Option<_>>()?;
    let all: f64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    let cores = stat
        .lines()
        .filter(|l| {
            l.strip_prefix("cpu")
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        })
        .count();
    Some(MachineCpu {
        busy: (all - idle) / 100.0,
        all: all / 100.0,
        cores: cores.max(1),
    })
}

/// How the machine's cores were used over a span: sampled at its start by [`CpuShare::start`]
/// and read by [`CpuShare::cores`].
#[derive(Debug, Clone)]
pub struct CpuShare {
    machine: Option<MachineCpu>,
    tested_pids: Vec<u32>,
    tested: f64,
    broker: f64,
}

/// Cores busy on average over a span, in all and by whom.
#[derive(Debug, Clone, Copy)]
pub struct Cores {
    /// Cores of the machine busy (not idle, not waiting for I/O).
    pub busy: f64,
    /// Cores the machine has, as `/proc/stat` counts them.
    pub all: f64,
    /// The processes under test.
    pub tested: f64,
    /// Every `beam.smp` process (the broker).
    pub broker: f64,
}

impl CpuShare {
    /// Samples the machine, the processes under test (`tested`) and the broker now.
    pub fn start(tested: &[u32]) -> Self {
        Self {
            machine: machine_cpu(),
            tested_pids: tested.to_vec(),
            tested: cpu_seconds_sum(tested),
            broker: cpu_seconds_of("beam.smp"),
        }
    }

    /// The cores used since [`CpuShare::start`], `None` where `/proc/stat` could not be read.
    pub fn cores(&self) -> Option<Cores> {
        let before = self.machine?;
        let now = machine_cpu()?;
        let cores = now.cores as f64;
        // Wall time of the span: the machine's CPU time over its cores.
        let wall = ((now.all - before.all) / cores).max(1e-9);
        Some(Cores {
            busy: (now.busy - before.busy) / wall,
            all: cores,
            tested: (cpu_seconds_sum(&self.tested_pids) - self.tested) / wall,
            broker: (cpu_seconds_of("beam.smp") - self.broker) / wall,
        })
    }
}

impl std::fmt::Display for Cores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:.2} of {:.0} cores busy: {:.2} under test, broker {:.2}, load generator and the rest {:.2}",
            self.busy,
            self.all,
            self.tested,
            self.broker,
            (self.busy - self.tested - self.broker).max(0.0)
        )
    }
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

    pub fn machine_cpu_is_read_in_seconds() {
        // user nice system idle iowait irq softirq steal guest guest_nice
        let stat = "cpu  300 0 100 550 50 0 0 0 0 0\ncpu0 150 0 50 275 25 0 0 0 0 0\ncpu1 150 0 50 275 25 0 0 0 0 0\nintr 1\n";
        assert_eq!(
            parse_machine(stat),
            Some(MachineCpu {
                busy: 4.0,
                all: 10.0,
                cores: 2
            })
        );
        assert_eq!(parse_machine("cpu0 1 2 3 4 5 6 7 8"), None);
        assert!(machine_cpu().is_some_and(|m| m.busy <= m.all && m.cores >= 1));
        assert!(cpu_seconds_of("no-such-command") == 0.0);
    }
}
