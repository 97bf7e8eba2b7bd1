//! The `loomd` binary as a process.

use std::process::Command;

#[test]
fn starts_with_no_arguments_and_reports_its_configuration() {
    let out = Command::new(env!("CARGO_BIN_EXE_loomd")).output().expect("run loomd");
    assert!(
        out.status.success(),
        "exit {:?}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        stdout.contains("listen_addr                  127.0.0.1:7070"),
        "{stdout}"
    );
    assert!(stdout.contains("protocol 1"), "{stdout}");
}

#[test]
fn rejects_unknown_arguments_with_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_loomd"))
        .arg("--bogus")
        .output()
        .expect("run loomd");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown argument"));
}
