//! Key material stays out of core dumps and swap: `kagi serve` as the kernel sees it from
//! outside (`/proc/PID/limits`, `/proc/PID/status`), its start-up log and its metric.

use crate::support::http_get;
use crate::support::server::{ADMIN, Server};

/// What `/proc/self` says about this test process, which the server inherits: whether it may
/// lock unlimited memory (RLIMIT_MEMLOCK unlimited, or CAP_IPC_LOCK in effect).
fn may_lock_everything() -> bool {
    let limits = std::fs::read_to_string("/proc/self/limits").expect("/proc/self/limits");
    let unlimited = limits
        .lines()
        .find(|line| line.starts_with("Max locked memory"))
        .is_some_and(|line| line.split_whitespace().nth(3) == Some("unlimited"));
    unlimited || has_cap_ipc_lock()
}

/// The line `name:` of `/proc/self/status`, without the name.
fn own_status(name: &str) -> String {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    status
        .lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {name} in {status}"))
        .trim()
        .to_owned()
}

fn has_cap_ipc_lock() -> bool {
    u64::from_str_radix(&own_status("CapEff"), 16).is_ok_and(|caps| caps & (1 << 14) != 0)
}

fn is_root() -> bool {
    own_status("Uid").split_whitespace().nth(1) == Some("0")
}

/// `VmLck` of a process, in kB.
fn locked_kb(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmLck:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmLck in {status}"))
}

/// The soft and hard core size limits of a process, as `/proc/PID/limits` prints them.
fn core_limits(pid: u32) -> (String, String) {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).expect("limits");
    let line = limits
        .lines()
        .find(|line| line.starts_with("Max core file size"))
        .unwrap_or_else(|| panic!("no core limit in {limits}"));
    let fields: Vec<&str> = line.split_whitespace().collect();
    (fields[4].to_owned(), fields[5].to_owned())
}

fn memory_locked_metric(server: &Server) -> String {
    let metrics = http_get(&server.ready.admin.to_string(), "/metrics");
    metrics
        .lines()
        .find_map(|line| line.strip_prefix("kagi_memory_locked "))
        .unwrap_or_else(|| panic!("no kagi_memory_locked in {metrics}"))
        .to_owned()
}

#[test]
fn the_server_leaves_no_core_dump_and_locks_its_memory_where_it_may() {
    let server = Server::start(&[ADMIN], "");
    let pid = server.pid();
    assert_eq!(core_limits(pid), ("0".to_owned(), "0".to_owned()), "RLIMIT_CORE");
    let log = server.log();
    // PR_GET_DUMPABLE can only be asked by the process itself: the server reads it back after
    // setting it and logs what the kernel answered.
    assert!(
        log.contains("core dumps disabled") && log.contains("dumpable=false"),
        "no core dump line:\n{log}"
    );
    if may_lock_everything() {
        assert!(locked_kb(pid) > 0, "VmLck is 0 although the server may lock:\n{log}");
        assert!(log.contains("memory locked"), "{log}");
        assert_eq!(memory_locked_metric(&server), "1");
    } else {
        assert_eq!(locked_kb(pid), 0);
        assert!(log.contains("memory not locked: RLIMIT_MEMLOCK"), "{log}");
        assert_eq!(memory_locked_metric(&server), "0");
    }
}

#[test]
fn lock_memory_false_leaves_memory_unlocked_but_core_dumps_still_off() {
    let server = Server::start_with(&[ADMIN], "", "[security]\nlock_memory = false\n");
    let pid = server.pid();
    assert_eq!(locked_kb(pid), 0);
    assert_eq!(core_limits(pid), ("0".to_owned(), "0".to_owned()));
    assert_eq!(memory_locked_metric(&server), "0");
    let log = server.log();
    assert!(log.contains("memory not locked: [security] lock_memory = false"), "{log}");
}

#[test]
fn with_a_finite_limit_and_no_cap_ipc_lock_it_serves_unlocked_and_says_so() {
    // The memlock limit is made finite for the server (prlimit); as root, CAP_IPC_LOCK is also
    // dropped from its bounding set, hence from its capabilities (setpriv).
    let mut wrapper = vec!["prlimit", "--memlock=8388608:8388608"];
    if is_root() {
        wrapper.extend(["setpriv", "--bounding-set=-ipc_lock", "--inh-caps=-ipc_lock"]);
    } else if has_cap_ipc_lock() {
        // A capable non-root test process cannot drop the capability without CAP_SETPCAP:
        // the server locks, which the first test covers.
        return;
    }
    wrapper.push("--");
    let server = Server::start_under(&wrapper, &[ADMIN], "");
    let pid = server.pid();
    let log = server.log();
    assert!(
        log.contains("memory not locked: RLIMIT_MEMLOCK is 8388608 bytes"),
        "no warning:\n{log}"
    );
    assert!(log.contains("WARN"), "a warning, not information:\n{log}");
    assert_eq!(locked_kb(pid), 0);
    assert_eq!(memory_locked_metric(&server), "0");
    assert_eq!(core_limits(pid), ("0".to_owned(), "0".to_owned()), "core dumps still off");
}
