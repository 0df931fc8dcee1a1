//! `ivshmem-check echo PORT`: a TCP echo server on 127.0.0.1:PORT, one thread per connection,
//! each answering the client's end of stream with its own: the far end of `ivshmem-socket`'s
//! checks in the VM suite (busybox has no concurrent echo server: `nc -ll -e cat` resets some
//! of 32 connections made at once).

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener};

pub fn run(port: u16) -> i32 {
    let l = match TcpListener::bind(("127.0.0.1", port)) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("ivshmem-check: echo: 127.0.0.1:{port}: {e}");
            return 1;
        }
    };
    println!("echoing on 127.0.0.1:{port}");
    for s in l.incoming() {
        let Ok(mut s) = s else { continue };
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 << 10];
            loop {
                match s.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if s.write_all(&buf[..n]).is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = s.shutdown(Shutdown::Write);
        });
    }
    0
}
