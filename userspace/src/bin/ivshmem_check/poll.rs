//! `ivshmem-check poll DEVICE N MESSAGES send|recv`: N message channels on one doorbell device,
//! every end of them in one process. The receiving side puts them all in one poll loop: they
//! share the device's one eventfd; after each wake-up it drains the eventfd and retries every
//! channel until `WouldBlock`. A lost wake-up leaves a message unread and nothing to wake the
//! poller: its 60-second poll times out and it says `FAIL`. The sending side sends message i of
//! every channel in turn, with pauses so that the receiver often sleeps with all ends armed.

use std::io;
use std::time::{Duration, Instant};

use ivshmem::channel::{Channel, Kind, Options, Wait};

use crate::sys;

/// A poll that waits this long (with messages outstanding) missed a wake-up.
const STUCK: Duration = Duration::from_secs(60);

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Message `i` of channel `c`: 1 to 200 bytes.
fn message(c: usize, i: u64) -> Vec<u8> {
    let seed = mix((c as u64) << 32 | i);
    (0..1 + seed % 200).map(|j| mix(seed ^ j) as u8).collect()
}

fn open(dev: &str, n: usize) -> Result<Vec<Channel>, String> {
    let o = Options::new()
        .kind(Kind::Messages)
        .capacity(4096)
        .spin(0)
        .wait(Wait::Doorbell)
        .open_timeout(Duration::from_secs(120));
    (0..n)
        .map(|c| {
            Channel::open_path(dev, &format!("poll{c}"), &o)
                .map_err(|e| format!("open poll{c}: {e}"))
        })
        .collect()
}

fn send(dev: &str, n: usize, messages: u64) -> Result<String, String> {
    let mut chans = open(dev, n)?;
    for i in 0..messages {
        for k in 0..n {
            let c = (k + i as usize) % n;
            chans[c]
                .send(&message(c, i))
                .map_err(|e| format!("send {i} on poll{c}: {e}"))?;
        }
        if mix(i).is_multiple_of(4) {
            std::thread::sleep(Duration::from_millis(1 + mix(i ^ 7) % 3));
        }
    }
    for (c, ch) in chans.iter_mut().enumerate() {
        ch.close_write()
            .map_err(|e| format!("close poll{c}: {e}"))?;
        ch.drain().map_err(|e| format!("drain poll{c}: {e}"))?;
    }
    Ok(format!("sent {messages} messages on each of {n} channels"))
}

fn recv(dev: &str, n: usize, messages: u64) -> Result<String, String> {
    let mut chans = open(dev, n)?;
    let fd = chans[0].as_raw_fd().ok_or("no descriptor to poll")?;
    for (c, ch) in chans.iter_mut().enumerate() {
        ch.set_nonblocking(true);
        if ch.as_raw_fd() != Some(fd) {
            return Err(format!(
                "poll{c} has descriptor {:?}, poll0 {fd}",
                ch.as_raw_fd()
            ));
        }
    }
    let mut got = vec![0u64; n];
    let mut done = vec![false; n];
    let mut buf = Vec::new();
    let (mut polls, mut wakeups) = (0u64, 0u64);
    loop {
        // Retry every channel until WouldBlock (which arms it again).
        for c in 0..n {
            while !done[c] {
                match chans[c].recv(&mut buf) {
                    Ok(Some(_)) => {
                        if buf != message(c, got[c]) {
                            return Err(format!("poll{c}: message {} differs", got[c]));
                        }
                        got[c] += 1;
                    }
                    Ok(None) => done[c] = true,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(format!("poll{c} after {} messages: {e}", got[c])),
                }
            }
        }
        if done.iter().all(|&d| d) {
            break;
        }
        let mut pfd = sys::PollFd {
            fd,
            events: sys::POLLIN,
            revents: 0,
        };
        let ts = sys::Timespec {
            tv_sec: STUCK.as_secs() as _,
            tv_nsec: 0,
        };
        let t = Instant::now();
        // SAFETY: `pfd` and `ts` are valid for the call; one descriptor; no signal mask.
        let r = unsafe { sys::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
        polls += 1;
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(format!("ppoll: {e}"));
            }
        } else if r == 0 {
            return Err(format!(
                "no wake-up for {:?} with messages outstanding (received per channel: {got:?})",
                t.elapsed()
            ));
        } else {
            wakeups += 1;
        }
        chans[0].drain_events();
    }
    if let Some(c) = (0..n).find(|&c| got[c] != messages) {
        return Err(format!("poll{c}: {} messages of {messages}", got[c]));
    }
    Ok(format!(
        "received {messages} messages on each of {n} channels sharing descriptor {fd}: {polls} polls, {wakeups} wake-ups"
    ))
}

/// The subcommand: prints `ok ...` (exit 0) or `FAIL ...` (exit 1).
pub fn run(dev: &str, n: usize, messages: u64, side: &str) -> i32 {
    let r = match side {
        "send" => send(dev, n, messages),
        "recv" => recv(dev, n, messages),
        _ => return 2,
    };
    match r {
        Ok(m) => {
            println!("ok poll: {m}");
            0
        }
        Err(m) => {
            println!("FAIL poll: {m}");
            1
        }
    }
}
