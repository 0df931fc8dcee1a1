//! A tool whose standard output is a pipe nobody reads (`ivshmem info | head -2` once `head`
//! has exited) ends quietly by SIGPIPE, as `cat` does, instead of panicking.

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

const SIGPIPE: i32 = 13;

fn help_into_closed_pipe(exe: &str) {
    let (reader, writer) = std::io::pipe().expect("pipe");
    drop(reader);
    let out = Command::new(exe)
        .arg("--help")
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .expect("run the tool");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{exe}: {stderr}");
    assert_eq!(
        out.status.signal(),
        Some(SIGPIPE),
        "{exe}: {:?} {stderr}",
        out.status
    );
}

#[test]
fn every_tool_dies_of_sigpipe_not_a_panic() {
    for exe in [
        env!("CARGO_BIN_EXE_ivshmem"),
        env!("CARGO_BIN_EXE_read_write"),
        env!("CARGO_BIN_EXE_bandwidth"),
        env!("CARGO_BIN_EXE_pingpong"),
        env!("CARGO_BIN_EXE_ivshmem-check"),
        env!("CARGO_BIN_EXE_ivshmem-fuzz"),
        env!("CARGO_BIN_EXE_ivshmem-pipe"),
        env!("CARGO_BIN_EXE_ivshmem-server"),
    ] {
        help_into_closed_pipe(exe);
    }
}
