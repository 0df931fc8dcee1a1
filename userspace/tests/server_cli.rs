//! The `ivshmem-server` binary as QEMU users run it: daemonized with a pid file, foreground,
//! the QEMU options, and a clean shutdown on SIGTERM that removes its socket and pid file.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use ivshmem::os::Signal;
use ivshmem::server::recv_msg;

const SERVER: &str = env!("CARGO_BIN_EXE_ivshmem-server");

fn tmp(name: &str) -> PathBuf {
    std::env::temp_dir().join(format!("ivshmem-cli-{}-{name}", std::process::id()))
}

fn wait_until(what: &str, cond: impl Fn() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "timed out waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn greeting(sock: &Path) -> (i64, i64) {
    let c = UnixStream::connect(sock).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let version = recv_msg(&c).unwrap().unwrap().0;
    let id = recv_msg(&c).unwrap().unwrap().0;
    let (shm, fd) = recv_msg(&c).unwrap().unwrap();
    assert_eq!(shm, -1);
    let len = std::fs::File::from(fd.unwrap()).metadata().unwrap().len();
    assert_eq!(len, 2 << 20);
    (version, id)
}

/// Signals a process this test started.
fn kill(pid: u32, sig: Signal) {
    let _ = ivshmem::os::kill(pid, sig);
}

#[test]
fn daemon_with_pid_file_stops_cleanly_on_sigterm() {
    let (sock, pidfile) = (tmp("d.sock"), tmp("d.pid"));
    let name = format!("ivshmem-cli-{}", std::process::id());
    let status = Command::new(SERVER)
        .args([
            "-S",
            sock.to_str().unwrap(),
            "-l",
            "2M",
            "-n",
            "2",
            "-M",
            &name,
        ])
        .args(["-p", pidfile.to_str().unwrap()])
        .status()
        .unwrap();
    assert!(
        status.success(),
        "the foreground part exits 0 after forking"
    );
    wait_until("the pid file", || pidfile.exists());
    let pid: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert_eq!(greeting(&sock), (0, 0));
    assert!(
        Path::new(&format!("/dev/shm/{name}")).exists(),
        "-M NAME is /dev/shm/NAME"
    );
    kill(pid, Signal::TERM);
    wait_until("socket and pid file removal", || {
        !sock.exists() && !pidfile.exists()
    });
    let _ = std::fs::remove_file(format!("/dev/shm/{name}"));
}

#[test]
fn foreground_memfd_and_refusals() {
    let (sock, pidfile) = (tmp("f.sock"), tmp("f.pid"));
    let mut child = Command::new(SERVER)
        .args(["-F", "--memfd", "-l", "2M", "-S", sock.to_str().unwrap()])
        .args(["-p", pidfile.to_str().unwrap()])
        .spawn()
        .unwrap();
    wait_until("the socket", || UnixStream::connect(&sock).is_ok());
    // The probe connection above was a peer too; the next one gets a later id.
    let (_, id) = greeting(&sock);
    assert!(id >= 1);
    // A second server on the same socket is refused; the first keeps serving.
    let out = Command::new(SERVER)
        .args([
            "-F",
            "--memfd",
            "-l",
            "2M",
            "-S",
            sock.to_str().unwrap(),
            "-p",
            "/dev/null",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already listening"));
    greeting(&sock);
    kill(child.id(), Signal::INT);
    assert!(child.wait().unwrap().success());
    assert!(!sock.exists() && !pidfile.exists());
    // Bad options are usage errors (exit 2) with a message.
    let out = Command::new(SERVER).args(["-l", "3M"]).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}
