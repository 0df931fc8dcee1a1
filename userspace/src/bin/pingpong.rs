//! `pingpong`: two guests bounce a counter through shared memory, either spinning on it or
//! sleeping on the doorbell, and the pinging side reports round-trip latency.

use std::time::{Duration, Instant};

use ivshmem::args::{device_path, run_tool, Args};
use ivshmem::errno::ETIMEDOUT;
use ivshmem::{Device, Mapping, ToolError};

const PROG: &str = "pingpong";
/// Written by the pong side when it is ready; cleared by ping when it starts.
const READY: u32 = u32::from_le_bytes(*b"PONG");
/// How long one side waits for the other before giving up (a lost wake-up shows up here).
const PATIENCE: Duration = Duration::from_secs(10);
/// How long the pong side waits for the ping side to start.
const FIRST_PING: Duration = Duration::from_secs(120);
/// Spin rounds between two looks at the clock: reading it on every round made the spin loop
/// measure itself (0.9 us round trips where a bare spin ping-pong takes 0.2 us).
const SPIN_CHECK: u32 = 4096;
// No pause hint by default (`--pause` turns it on): under TCG a spin round that loads the
// counter took 17 ns, 856 ns with `std::hint::spin_loop()` (`ivshmem-bench pause` in a lab
// guest, on a loaded host), so each look at the counter came up to 0.8 us late;
// 20,000-round medians were equal (0.9-1.2 us) but the p99 went from 1.9-2.3 to 3.1-4.9 us.
// In the committed `make bench` run (less load): 8 ns against 367 ns, median 1.1 against 1.9 us.

const HELP: &str = "\
usage: pingpong --role ping|pong [--peer ID] [-d DEVICE] [--mode spin|doorbell]
                [--rounds N] [--offset OFFSET] [--vector V] [--pause]

Start the pong side first, then the ping side on another guest. Each round, ping
writes an odd counter and pong answers with the next even one. With --mode doorbell
(default) each side rings the other's vector V after writing and sleeps in
IVSHMEM_WAIT; with --mode spin both poll the counter. Ping prints the round-trip
latency (min, median, p99, max) and messages per second.

  --role ROLE      ping or pong
  --peer ID        the other guest's peer id (ivshmem info); needed for doorbell mode
  -d DEVICE        /dev/ivshmemN path or index (default /dev/ivshmem0)
  --mode MODE      doorbell (default) or spin
  --rounds N       round trips (default 1000)
  --offset OFFSET  where the two control words live (default 0, page-aligned)
  --vector V       doorbell vector (default 0)
  --pause          spin with the CPU's pause hint (off by default: see below)

The pause hint is off by default because under TCG each x86 pause leaves the
translated code: in the lab a spin round took 17 ns without it and 856 ns with
it (ivshmem-bench pause), and round trips with it had a 1.5-2x higher p99.
Under KVM it is cheap, but a long spin with it can cause pause-loop exits.
  -h, --help       this help";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Spin,
    Doorbell,
}

#[derive(Debug)]
struct Opts {
    ping: bool,
    peer: Option<u32>,
    device: String,
    mode: Mode,
    rounds: u32,
    offset: u64,
    vector: u32,
    pause: bool,
}

fn parse(mut a: Args) -> Result<Option<Opts>, ToolError> {
    if a.flag(&["-h", "--help"]) {
        return Ok(None);
    }
    let pause = a.flag(&["--pause"]);
    let ping = match a.value(&["--role"])?.as_deref() {
        Some("ping") => true,
        Some("pong") => false,
        Some(r) => return Err(ToolError::Usage(format!("bad role '{r}' (ping or pong)"))),
        None => return Err(ToolError::usage("--role is required (ping or pong)")),
    };
    let mode = match a.value(&["--mode"])?.as_deref() {
        None | Some("doorbell") => Mode::Doorbell,
        Some("spin") => Mode::Spin,
        Some(m) => {
            return Err(ToolError::Usage(format!(
                "bad mode '{m}' (spin or doorbell)"
            )))
        }
    };
    let peer = a.parsed::<u32>(&["--peer"])?;
    let device = device_path(a.value(&["-d", "--device"])?);
    let rounds = a.parsed::<u32>(&["--rounds"])?.unwrap_or(1000);
    let offset = a.size(&["--offset"])?.unwrap_or(0);
    let vector = a.parsed::<u32>(&["--vector"])?.unwrap_or(0);
    let rest = a.finish()?;
    if !rest.is_empty() {
        return Err(ToolError::Usage(format!(
            "unexpected argument '{}'",
            rest[0]
        )));
    }
    if mode == Mode::Doorbell && peer.is_none() {
        return Err(ToolError::usage(
            "doorbell mode needs --peer (the other guest's id, see 'ivshmem info')",
        ));
    }
    if rounds == 0 || rounds > (u32::MAX - 2) / 2 {
        return Err(ToolError::usage("rounds out of range"));
    }
    if offset % 4096 != 0 {
        return Err(ToolError::Usage(format!(
            "offset {offset} is not page-aligned"
        )));
    }
    Ok(Some(Opts {
        ping,
        peer,
        device,
        mode,
        rounds,
        offset,
        vector,
        pause,
    }))
}

struct Link<'a> {
    dev: &'a Device,
    map: &'a Mapping,
    o: &'a Opts,
}

impl Link<'_> {
    fn counter(&self) -> u32 {
        self.map.load_u32(4).unwrap_or(0)
    }

    fn send(&self, value: u32) -> Result<(), ToolError> {
        self.map.store_u32(4, value)?;
        if self.o.mode == Mode::Doorbell {
            self.dev.ring(self.o.peer.unwrap_or(0), self.o.vector)?;
        }
        Ok(())
    }

    /// Waits up to `patience` until `done(counter)`; sleeps on the doorbell or spins.
    fn wait_for(&self, patience: Duration, done: impl Fn(u32) -> bool) -> Result<u32, ToolError> {
        let start = Instant::now();
        loop {
            match self.o.mode {
                Mode::Spin => {
                    for _ in 0..SPIN_CHECK {
                        let c = self.counter();
                        if done(c) {
                            return Ok(c);
                        }
                        if self.o.pause {
                            std::hint::spin_loop();
                        }
                    }
                }
                Mode::Doorbell => {
                    let c = self.counter();
                    if done(c) {
                        return Ok(c);
                    }
                    match self.dev.wait(self.o.vector, Some(patience)) {
                        Ok(_) => {}
                        Err(e) if e.errno() == Some(ETIMEDOUT) => {}
                        Err(e) => return Err(e.into()),
                    }
                }
            }
            if start.elapsed() > patience {
                let c = self.counter();
                if done(c) {
                    return Ok(c);
                }
                return Err(ToolError::Failed(format!(
                    "no answer within {patience:?} (counter {c}): lost wake-up?"
                )));
            }
        }
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn run(o: &Opts) -> Result<(), ToolError> {
    let dev = Device::open(&o.device)?;
    let map = dev.map(o.offset, 4096)?;
    let link = Link {
        dev: &dev,
        map: &map,
        o,
    };
    let last = 2 * o.rounds;
    if !o.ping {
        map.store_u32(4, 0)?;
        map.store_u32(0, READY)?;
        let mut expect = 1;
        while expect < last {
            // The first ping comes when the user starts the other side: allow for that.
            let patience = if expect == 1 { FIRST_PING } else { PATIENCE };
            let c = link.wait_for(patience, |c| c >= expect && c % 2 == 1)?;
            link.send(c + 1)?;
            expect = c + 2;
        }
        println!("pong: answered {} rounds ({:?} mode)", o.rounds, o.mode);
        return Ok(());
    }
    let start = Instant::now();
    while map.load_u32(0)? != READY {
        if start.elapsed() > Duration::from_secs(60) {
            return Err(ToolError::Failed(
                "the pong side is not running (start it first)".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    map.store_u32(0, 0)?;
    let mut rtts = Vec::with_capacity(o.rounds as usize);
    let all = Instant::now();
    for k in 0..o.rounds {
        let t = Instant::now();
        link.send(2 * k + 1)?;
        link.wait_for(PATIENCE, |c| c == 2 * k + 2)?;
        rtts.push(t.elapsed());
    }
    let total = all.elapsed();
    rtts.sort();
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    println!(
        "{:?}: {} round trips, latency us: min {:.1} median {:.1} p99 {:.1} max {:.1}; {:.0} messages/s",
        o.mode,
        o.rounds,
        us(rtts[0]),
        us(percentile(&rtts, 0.5)),
        us(percentile(&rtts, 0.99)),
        us(rtts[rtts.len() - 1]),
        2.0 * f64::from(o.rounds) / total.as_secs_f64()
    );
    Ok(())
}

fn main() {
    run_tool(PROG, HELP, parse, |o| run(&o));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(a: &[&str]) -> Result<Option<Opts>, ToolError> {
        parse(Args::new(a.iter().copied()))
    }

    #[test]
    fn options() {
        let o = p(&["--role", "ping", "--peer", "3", "--rounds", "10"])
            .unwrap()
            .unwrap();
        assert!(o.ping && o.peer == Some(3) && o.rounds == 10 && o.mode == Mode::Doorbell);
        let o = p(&["--role", "pong", "--mode", "spin"]).unwrap().unwrap();
        assert!(!o.ping && o.mode == Mode::Spin && !o.pause);
        let o = p(&["--role", "pong", "--mode", "spin", "--pause"])
            .unwrap()
            .unwrap();
        assert!(o.pause);
    }

    #[test]
    fn errors() {
        let usage = |a: &[&str], text: &str| match p(a) {
            Err(ToolError::Usage(m)) => assert!(m.contains(text), "{a:?}: {m}"),
            other => panic!("{a:?}: {other:?}"),
        };
        usage(&[], "--role is required");
        usage(&["--role", "ping"], "needs --peer");
        usage(&["--role", "x"], "bad role 'x'");
        usage(
            &["--role", "ping", "--mode", "spin", "--rounds", "0"],
            "rounds",
        );
        usage(
            &["--role", "pong", "--mode", "spin", "--offset", "8"],
            "page-aligned",
        );
    }

    #[test]
    fn percentiles() {
        let v: Vec<Duration> = (1..=100).map(Duration::from_micros).collect();
        assert_eq!(percentile(&v, 0.5), Duration::from_micros(51));
        assert_eq!(percentile(&v, 0.99), Duration::from_micros(99));
    }
}
