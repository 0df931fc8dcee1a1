//! A small command-line parser (std only): `--name VALUE`, `--name=VALUE`, short aliases,
//! flags and positionals, with errors that say which option is wrong; and the `main` the tools
//! share.

use std::str::FromStr;

use crate::{sys, ToolError};

/// Command-line arguments not yet consumed.
#[derive(Debug)]
pub struct Args {
    items: Vec<String>,
}

impl Args {
    /// The process's arguments, without the program name.
    pub fn from_env() -> Self {
        Self::new(std::env::args().skip(1))
    }

    /// Arguments from any list (for tests).
    pub fn new<I: IntoIterator<Item = S>, S: Into<String>>(items: I) -> Self {
        Self {
            items: items.into_iter().map(Into::into).collect(),
        }
    }

    /// Whether flag `names` (e.g. `["-h", "--help"]`) is present; consumes it.
    pub fn flag(&mut self, names: &[&str]) -> bool {
        let before = self.items.len();
        self.items.retain(|a| !names.contains(&a.as_str()));
        self.items.len() != before
    }

    /// The value of option `names`, consumed; the last one wins if repeated.
    pub fn value(&mut self, names: &[&str]) -> Result<Option<String>, ToolError> {
        let mut found = None;
        let mut i = 0;
        while i < self.items.len() {
            let a = &self.items[i];
            if let Some((k, v)) = a.split_once('=').filter(|(k, _)| names.contains(k)) {
                let _ = k;
                found = Some(v.to_string());
                self.items.remove(i);
            } else if names.contains(&a.as_str()) {
                if i + 1 >= self.items.len() {
                    return Err(ToolError::Usage(format!("option {a} needs a value")));
                }
                found = Some(self.items.remove(i + 1));
                self.items.remove(i);
            } else {
                i += 1;
            }
        }
        Ok(found)
    }

    /// The value of option `names` parsed as `T`.
    pub fn parsed<T: FromStr>(&mut self, names: &[&str]) -> Result<Option<T>, ToolError>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(names)? {
            None => Ok(None),
            Some(v) => v.parse().map(Some).map_err(|e| bad_value(&v, names, e)),
        }
    }

    /// A size option (`4096`, `64K`, `64M`, `1G`, `0x1000`).
    pub fn size(&mut self, names: &[&str]) -> Result<Option<u64>, ToolError> {
        match self.value(names)? {
            None => Ok(None),
            Some(v) => parse_size(&v)
                .map(Some)
                .map_err(|e| bad_value(&v, names, e)),
        }
    }

    /// The options of the channel tools (`ivshmem-pipe`, `ivshmem-socket`): `--wait MODE`
    /// (default auto), `--capacity BYTES` (a power of two, default `capacity`) and
    /// `--liveness SECONDS` (0.1 to 3600, default 10).
    pub fn channel_options(
        &mut self,
        capacity: u64,
    ) -> Result<(crate::channel::Wait, u64, std::time::Duration), ToolError> {
        let wait = self.parsed(&["--wait"])?.unwrap_or_default();
        let capacity = self.size(&["--capacity"])?.unwrap_or(capacity);
        if !capacity.is_power_of_two() {
            return Err(ToolError::usage(format!(
                "--capacity {capacity} is not a power of two"
            )));
        }
        let liveness = self.parsed::<f64>(&["--liveness"])?.unwrap_or(10.0);
        if !(0.1..=3600.0).contains(&liveness) {
            return Err(ToolError::usage(format!(
                "--liveness {liveness}: 0.1 to 3600 seconds"
            )));
        }
        Ok((wait, capacity, std::time::Duration::from_secs_f64(liveness)))
    }

    /// The memory a channel tool works on: `-d DEVICE`, and for the isolated topology
    /// `--peer-device PEER` and `--doorbell DEVICE` (each a path, or N for /dev/ivshmemN).
    pub fn devices(&mut self) -> Result<Devices, ToolError> {
        let own = device_path(self.value(&["-d", "--device"])?);
        let peer = self
            .value(&["--peer-device"])?
            .map(|p| device_path(Some(p)));
        let doorbell = self.value(&["--doorbell"])?.map(|p| device_path(Some(p)));
        if doorbell.is_some() && peer.is_none() {
            return Err(ToolError::usage(
                "--doorbell is for the isolated topology: give --peer-device too (on one \
                 device with a doorbell, -d alone wakes)",
            ));
        }
        if peer.as_ref() == Some(&own) {
            return Err(ToolError::usage(format!(
                "--peer-device {own} is this end's own device (-d): the peer's is the other \
                 guest's"
            )));
        }
        Ok(Devices {
            own,
            peer,
            doorbell,
        })
    }

    /// Takes the first argument if it is a word (a subcommand), not an option.
    pub fn subcommand(&mut self) -> Option<String> {
        match self.items.first() {
            Some(a) if !a.starts_with('-') => Some(self.items.remove(0)),
            _ => None,
        }
    }

    /// The remaining positionals; fails on a leftover `-option`.
    pub fn finish(self) -> Result<Vec<String>, ToolError> {
        if let Some(bad) = self
            .items
            .iter()
            .find(|a| a.starts_with('-') && a.len() > 1)
        {
            return Err(ToolError::Usage(format!(
                "unknown option {bad} (see --help)"
            )));
        }
        Ok(self.items)
    }
}

/// The usage error of value `v` of option `names` (the last name is shown).
fn bad_value(v: &str, names: &[&str], why: impl std::fmt::Display) -> ToolError {
    ToolError::Usage(format!(
        "bad value '{v}' for {}: {why}",
        names[names.len() - 1]
    ))
}

/// Parses `4096`, `0x1000`, `64K`, `64M`, `2G` (binary units; a trailing `iB`/`B` is allowed).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let t = t
        .strip_suffix("iB")
        .or_else(|| t.strip_suffix('B'))
        .unwrap_or(t);
    let (num, shift) = match t.char_indices().last() {
        Some((i, 'K' | 'k')) => (&t[..i], 10),
        Some((i, 'M' | 'm')) => (&t[..i], 20),
        Some((i, 'G' | 'g')) => (&t[..i], 30),
        _ => (t, 0),
    };
    let n = if let Some(hex) = num.strip_prefix("0x") {
        u64::from_str_radix(hex, 16)
    } else {
        num.parse::<u64>()
    }
    .map_err(|_| "not a size (examples: 4096, 0x1000, 64K, 64M, 1G)".to_string())?;
    n.checked_mul(1u64 << shift)
        .ok_or_else(|| "size too large".to_string())
}

/// The device named by a `-d` option: `3` means `/dev/ivshmem3`, anything else is a path;
/// none means `/dev/ivshmem0`.
pub fn device_path(arg: Option<String>) -> String {
    match arg {
        None => "/dev/ivshmem0".into(),
        Some(a) if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) => {
            format!("/dev/ivshmem{a}")
        }
        Some(a) => a,
    }
}

/// The shared memory a channel tool uses (see [`Args::devices`]).
#[derive(Debug, Clone)]
pub struct Devices {
    /// The device (or file) this end writes.
    pub own: String,
    /// The isolated topology: the peer's device, mapped read-only.
    pub peer: Option<String>,
    /// The isolated topology: a device whose doorbell carries the wake-ups.
    pub doorbell: Option<String>,
}

/// The options' help text for [`Devices`], shared by the channel tools.
pub const DEVICES_HELP: &str =
    "  -d, --device DEVICE   /dev/ivshmemN path or index N (default /dev/ivshmem0), or a regular
                        file holding the shared memory (the host's backing file)
      --peer-device PEER
                        the isolated topology (README, \"Isolation\"): DEVICE is this guest's
                        own device, which alone this end writes; PEER the other guest's,
                        mapped read-only (QEMU maps it readonly=on); the other end swaps them
      --doorbell DEV    with --peer-device: a device whose doorbell carries the wake-ups
                        (ivshmem-doorbell; the data devices are ivshmem-plain)";

impl Devices {
    /// Maps the memory (one device, or a pair) with the waker `opts` asks for there.
    pub fn open(
        &self,
        opts: &crate::channel::Options,
    ) -> Result<(crate::channel::Region, crate::channel::Options), ToolError> {
        let (peer, doorbell) = (self.peer.as_deref(), self.doorbell.as_deref());
        let r = crate::channel::open_topology(
            &self.own,
            peer.map(std::path::Path::new),
            doorbell.map(std::path::Path::new),
            opts,
        );
        r.map_err(|e| ToolError::Failed(format!("{self}: {e}")))
    }
}

impl std::fmt::Display for Devices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.peer {
            None => write!(f, "{}", self.own),
            Some(p) => write!(f, "{} (peer {p})", self.own),
        }
    }
}

/// Lets the tool die of `SIGPIPE` when its output goes to a reader that went away
/// (`ivshmem info | head -2`), as `cat` does. Rust ignores the signal, so without this the
/// next `println!` panics. A process that writes to sockets (`ivshmem-server`) keeps ignoring it.
pub fn die_on_closed_output() {
    // SAFETY: Restores the default action of one signal; no handler runs.
    unsafe { sys::signal(sys::SIGPIPE, sys::SIG_DFL) };
}

/// The `main` of a tool: `--help` prints `help`; an error of `parse` is a usage error (status
/// 2, whatever its type), an error of `run` exits with its [`ToolError::exit_code`]; each with a
/// `prog: ` message on stderr. A closed standard output ends the tool quietly
/// ([`die_on_closed_output`]).
pub fn run_tool<O, PE, RE>(
    prog: &str,
    help: &str,
    parse: impl FnOnce(Args) -> Result<Option<O>, PE>,
    run: impl FnOnce(O) -> Result<(), RE>,
) where
    PE: Into<ToolError>,
    RE: Into<ToolError>,
{
    die_on_closed_output();
    let opts = match parse(Args::from_env()) {
        Ok(Some(o)) => o,
        Ok(None) => {
            println!("{help}");
            return;
        }
        Err(e) => ToolError::Usage(e.into().to_string()).exit(prog),
    };
    if let Err(e) = run(opts) {
        e.into().exit(prog);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("0x1000"), Ok(4096));
        assert_eq!(parse_size("64K"), Ok(64 << 10));
        assert_eq!(parse_size("64M"), Ok(64 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("1MiB"), Ok(1 << 20));
        assert!(parse_size("lots").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn options_flags_and_positionals() {
        let mut a = Args::new(["-d", "/dev/ivshmem1", "--offset=4096", "-v", "pos"]);
        assert!(a.flag(&["-v"]));
        assert!(!a.flag(&["--help"]));
        assert_eq!(
            a.value(&["-d", "--device"]).unwrap().as_deref(),
            Some("/dev/ivshmem1")
        );
        assert_eq!(a.size(&["-o", "--offset"]).unwrap(), Some(4096));
        assert_eq!(a.finish().unwrap(), vec!["pos".to_string()]);
    }

    #[test]
    fn errors_name_the_option() {
        let mut a = Args::new(["--reps"]);
        let e = a.value(&["--reps"]).unwrap_err();
        assert!(
            matches!(&e, ToolError::Usage(m) if m == "option --reps needs a value"),
            "{e:?}"
        );
        let mut a = Args::new(["--reps", "many"]);
        let e = a.parsed::<u32>(&["-r", "--reps"]).unwrap_err();
        assert!(
            matches!(&e, ToolError::Usage(m) if m.starts_with("bad value 'many' for --reps: ")),
            "{e:?}"
        );
        let mut a = Args::new(["-s", "lots"]);
        let e = a.size(&["-s", "--size"]).unwrap_err();
        assert!(
            matches!(&e, ToolError::Usage(m) if m.starts_with("bad value 'lots' for --size: not a size")),
            "{e:?}"
        );
        let a = Args::new(["--bogus"]);
        let e = a.finish().unwrap_err();
        assert_eq!(e.exit_code(), 2);
        assert_eq!(e.to_string(), "unknown option --bogus (see --help)");
    }
}
