//! The options `stream` and `rtt` share (COMMON in the help), and what they open from them:
//! the channels, with the options they ask for, and the memory of the bare references.

use std::time::Duration;

use ivshmem::args::{Args, Devices};
use ivshmem::channel::{Channel, Kind, Options, Wait};
use ivshmem::ToolError;

use crate::bare;
use crate::link::Baseline;

#[derive(Debug)]
pub(crate) struct Common {
    pub(crate) listen: bool,
    pub(crate) devices: Devices,
    channel: String,
    pub(crate) wait: Wait,
    spin: Option<u32>,
    pub(crate) pause: Option<bool>,
    capacity: u64,
    pub(crate) tcp: Option<Baseline>,
    pub(crate) tcp_only: bool,
}

pub(crate) fn parse_common(a: &mut Args) -> Result<Common, ToolError> {
    let listen = a.flag(&["--listen"]);
    let tcp_only = a.flag(&["--tcp-only"]);
    let devices = a.devices()?;
    let channel = a.value(&["--channel"])?.unwrap_or_else(|| "bench".into());
    if channel.is_empty() || channel.len() > 28 {
        return Err(ToolError::usage("--channel: 1 to 28 bytes"));
    }
    let wait = a.parsed::<Wait>(&["--wait"])?.unwrap_or_default();
    let spin = a.parsed::<u32>(&["--spin"])?;
    let pause = match a.value(&["--pause"])?.as_deref() {
        None => None,
        Some("on") => Some(true),
        Some("off") => Some(false),
        Some(p) => return Err(ToolError::Usage(format!("bad --pause '{p}' (on or off)"))),
    };
    let capacity = a.size(&["--capacity"])?.unwrap_or(2 << 20);
    if !capacity.is_power_of_two() || !(64..=1 << 30).contains(&capacity) {
        return Err(ToolError::usage(
            "--capacity must be a power of two from 64 to 1G",
        ));
    }
    let tcp = a
        .value(&["--tcp"])?
        .map(|t| t.parse::<Baseline>())
        .transpose()
        .map_err(|e| ToolError::usage(format!("--tcp: {e}")))?;
    if tcp_only && tcp.is_none() {
        return Err(ToolError::usage("--tcp-only needs --tcp ADDR"));
    }
    Ok(Common {
        listen,
        devices,
        channel,
        wait,
        spin,
        pause,
        capacity,
        tcp,
        tcp_only,
    })
}

fn chan_err(what: &str, e: impl std::fmt::Display) -> ToolError {
    ToolError::Failed(format!("{what}: {e}"))
}

impl Common {
    fn options(&self, kind: Kind, rtt: bool) -> Options {
        // Round trips keep one message in flight: a small ring does.
        let capacity = if rtt { 64 << 10 } else { self.capacity };
        let mut o = Options::new()
            .kind(kind)
            .capacity(capacity)
            .open_timeout(Duration::from_secs(600));
        if let Some(n) = self.spin_rounds(rtt) {
            o = o.spin(n);
        }
        if let Some(p) = self.pause {
            o = o.spin_hint(p);
        }
        o
    }

    /// The spin budget: `--spin`, else none for rtt on the doorbell (so it measures the
    /// doorbell, not a spin that catches the echo first), else the library's default.
    pub(crate) fn spin_rounds(&self, rtt: bool) -> Option<u32> {
        match (self.spin, rtt, self.wait) {
            (Some(n), _, _) => Some(n),
            (None, true, Wait::Doorbell) => Some(0),
            _ => None,
        }
    }

    /// Opens channel `NAME.suffix` on the device or file.
    pub(crate) fn open(&self, suffix: &str, kind: Kind, rtt: bool) -> Result<Channel, ToolError> {
        let name = format!("{}.{suffix}", self.channel);
        let opts = self.options(kind, rtt).wait(self.wait);
        let (region, opts) = self.devices.open(&opts)?;
        Channel::open(&region, &name, &opts).map_err(|e| chan_err(&name, e))
    }

    /// The memory of the bare references: the payload of channel `NAME.bare`.
    pub(crate) fn bare_area(&self) -> Result<bare::Area, ToolError> {
        if self.devices.peer.is_some() {
            return Err(ToolError::usage(
                "the bare references need one device that both sides write: not with \
                 --peer-device",
            ));
        }
        bare::Area::new(self.open("bare", Kind::Stream, false)?)
    }

    pub(crate) fn wait_name(&self) -> &'static str {
        self.wait.name()
    }
}
