//! The command line: [`parse`] turns the arguments into [`Opts`] (or `None` for `--help`).

use ivshmem::args::Args;
use ivshmem::ToolError;

use crate::MAX_THREADS;

#[derive(Debug)]
pub(crate) struct Opts {
    pub(crate) seconds: u64,
    pub(crate) seed: u64,
    pub(crate) threads: usize,
    pub(crate) rebind: Option<(u64, u64)>,
    pub(crate) fresh: bool,
    pub(crate) trace: Option<String>,
}

pub(crate) fn parse(mut a: Args) -> Result<Option<Opts>, ToolError> {
    if a.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let seconds = a.parsed(&["--seconds"])?.unwrap_or(10);
    let seed = match a.value(&["--seed"])? {
        Some(s) => s
            .strip_prefix("0x")
            .map_or_else(|| s.parse(), |h| u64::from_str_radix(h, 16))
            .map_err(|_| ToolError::usage(format!("bad value '{s}' for --seed: not a number")))?,
        None => std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64),
    };
    let threads = a.parsed(&["--threads"])?.unwrap_or(4);
    if !(1..=MAX_THREADS).contains(&threads) {
        return Err(ToolError::usage(format!(
            "--threads must be 1..={MAX_THREADS}"
        )));
    }
    let no_rebind = a.flag(&["--no-rebind"]);
    let ms = match a.value(&["--rebind-ms"])? {
        None => (20, 100),
        Some(v) => {
            let bad =
                || ToolError::usage(format!("bad value '{v}' for --rebind-ms: MS or MIN-MAX"));
            let (lo, hi) = v.split_once('-').unwrap_or((&v, &v));
            let lo: u64 = lo.parse().map_err(|_| bad())?;
            let hi: u64 = hi.parse().map_err(|_| bad())?;
            if lo > hi {
                return Err(bad());
            }
            (lo, hi)
        }
    };
    let fresh = a.flag(&["--fresh"]);
    let trace = a.value(&["--trace"])?;
    let rest = a.finish()?;
    if let Some(x) = rest.first() {
        return Err(ToolError::usage(format!("unexpected argument '{x}'")));
    }
    Ok(Some(Opts {
        seconds,
        seed,
        threads,
        rebind: (!no_rebind).then_some(ms),
        fresh,
        trace,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options() {
        let o = parse(Args::new([
            "--seconds",
            "3",
            "--seed",
            "0x10",
            "--rebind-ms",
            "5-9",
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(
            (o.seconds, o.seed, o.rebind, o.threads),
            (3, 16, Some((5, 9)), 4)
        );
        let o = parse(Args::new(["--no-rebind", "--seed", "5"]))
            .unwrap()
            .unwrap();
        assert_eq!((o.seed, o.rebind), (5, None));
        assert!(parse(Args::new(["--rebind-ms", "9-5"])).is_err());
        assert!(parse(Args::new(["--threads", "0"])).is_err());
        assert!(parse(Args::new(["--bogus"]))
            .unwrap_err()
            .to_string()
            .contains("--bogus"));
    }
}
