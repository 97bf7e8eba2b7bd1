//! The `loomctl` binary as a process.

use std::process::Command;

fn loomctl(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_loomctl"))
        .args(args)
        .output()
        .expect("run loomctl")
}

#[test]
fn partition_matches_the_library() {
    let out = loomctl(&["partition", "user:1"]);
    assert!(out.status.success());
    let want = loomcache_wire::partition_of(b"user:1");
    assert_eq!(
        String::from_utf8(out.stdout).unwrap().trim(),
        format!("{want} (of 271)")
    );
}

#[test]
fn opcode_table_lists_every_opcode() {
    let out = loomctl(&["opcodes"]);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), loomcache_wire::Opcode::ALL.len());
    assert!(text.contains("0x0101  MAP_PUT"));
}

#[test]
fn node_commands_say_unsupported_with_their_own_exit_code() {
    let out = loomctl(&["map", "get", "m", "k"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unsupported"));
    assert_eq!(loomctl(&["nonsense"]).status.code(), Some(2));
}
