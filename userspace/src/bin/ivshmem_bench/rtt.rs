//! `rtt`: round trips of one message at a time over a message channel, beside the bare
//! ping-pong reference and TCP, printed as percentiles.

use std::io::{self, ErrorKind, Read, Write};
use std::time::Instant;

use ivshmem::channel::{Channel, Kind};
use ivshmem::ToolError;

use crate::common::Common;
use crate::figures::percentile;
use crate::link::{accept, connect, io_err, listen_tcp, Conn, Link};

/// Untimed round trips first: page faults, caches, the peer's first wake-up.
const WARMUP: usize = 100;

/// One round trip of `msg` over `l`: send it, wait for the echo of the same length.
trait Echo {
    fn round(&mut self, msg: &[u8], buf: &mut Vec<u8>) -> io::Result<()>;
    /// Echoes one message; false at the end.
    fn serve(&mut self, buf: &mut Vec<u8>) -> io::Result<bool>;
}

impl Echo for Channel {
    fn round(&mut self, msg: &[u8], buf: &mut Vec<u8>) -> io::Result<()> {
        self.send(msg)?;
        match self.recv(buf)? {
            Some(n) if n == msg.len() => Ok(()),
            Some(n) => Err(io::Error::new(
                ErrorKind::InvalidData,
                format!("echo of {n} bytes for {}", msg.len()),
            )),
            None => Err(ErrorKind::UnexpectedEof.into()),
        }
    }

    fn serve(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        match self.recv(buf)? {
            Some(_) => self.send(buf).map(|()| true),
            None => Ok(false),
        }
    }
}

/// Over TCP the echo has the length of the message: the first message fixes it.
impl Echo for Conn {
    fn round(&mut self, msg: &[u8], buf: &mut Vec<u8>) -> io::Result<()> {
        self.write_all(msg)?;
        buf.resize(msg.len(), 0);
        self.read_exact(buf)
    }

    fn serve(&mut self, buf: &mut Vec<u8>) -> io::Result<bool> {
        match self.read_exact(buf) {
            Ok(()) => self.write_all(buf).map(|()| true),
            Err(e) if e.kind() == ErrorKind::UnexpectedEof => Ok(false),
            Err(e) => Err(e),
        }
    }
}

fn ping(e: &mut dyn Echo, rounds: usize, size: usize) -> Result<Vec<u64>, ToolError> {
    let msg: Vec<u8> = (0..size).map(|i| i as u8).collect();
    let mut buf = Vec::with_capacity(size);
    let err = io_err("rtt");
    for _ in 0..WARMUP {
        e.round(&msg, &mut buf).map_err(&err)?;
    }
    let mut ns = Vec::with_capacity(rounds);
    for _ in 0..rounds {
        let t = Instant::now();
        e.round(&msg, &mut buf).map_err(&err)?;
        ns.push(t.elapsed().as_nanos() as u64);
    }
    if buf != msg {
        return Err(ToolError::Check("the echo differs from the message".into()));
    }
    ns.sort_unstable();
    Ok(ns)
}

fn print_rtt(transport: &str, wait: &str, pause: &str, size: usize, ns: &[u64]) {
    let us = |v: u64| v as f64 / 1e3;
    println!(
        "rtt transport={transport} wait={wait} pause={pause} size={size} rounds={} min_us={:.3} p50_us={:.3} p90_us={:.3} p99_us={:.3} max_us={:.3} mean_us={:.4}",
        ns.len(),
        us(ns[0]),
        us(percentile(ns, 0.5)),
        us(percentile(ns, 0.9)),
        us(percentile(ns, 0.99)),
        us(ns[ns.len() - 1]),
        ns.iter().sum::<u64>() as f64 / ns.len() as f64 / 1e3,
    );
}

pub(crate) fn rtt(c: &Common, rounds: usize, size: usize, bare: bool) -> Result<(), ToolError> {
    let listener = listen_tcp(c)?;
    let err = io_err("rtt");
    if !c.tcp_only {
        let mut ch = c.open("m", Kind::Messages, true)?;
        let area = bare.then(|| c.bare_area()).transpose()?;
        if c.listen {
            let mut buf = Vec::new();
            while ch.serve(&mut buf).map_err(&err)? {}
            // The driver reset the area before it closed the channel.
            if let Some(a) = &area {
                a.pong()?;
            }
        } else {
            let ns = ping(&mut ch, rounds, size)?;
            let pause = match c.pause {
                None => "default",
                Some(true) => "on",
                Some(false) => "off",
            };
            print_rtt("channel", c.wait_name(), pause, size, &ns);
            if let Some(a) = &area {
                a.reset();
                drop(ch);
                let ns = a.ping(WARMUP, rounds)?;
                print_rtt("bare", "spin", "off", 8, &ns);
            }
        }
    }
    if let Some(l) = listener {
        let mut s = accept(&l)?;
        // One connection: the port or path is free again for the next run.
        drop(l);
        let mut buf = vec![0u8; size];
        while s.serve(&mut buf).map_err(&err)? {}
    } else if let Some(addr) = &c.tcp {
        let mut s = connect(addr)?;
        let ns = ping(&mut s, rounds, size)?;
        print_rtt(addr.transport(), "-", "-", size, &ns);
        s.close_write().map_err(&err)?;
        let _ = s.read(&mut [0u8; 1]);
    }
    Ok(())
}
