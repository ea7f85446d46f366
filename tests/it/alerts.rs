//! `config/alerts.yml`: `promtool check rules` accepts it and `promtool test rules` runs its unit
//! tests (`config/alerts_test.yml`), when promtool is installed (in CI it must be).

use std::path::Path;
use std::process::Command;

use crate::metrics::promtool;

fn check_promtool(args: &[&str]) {
    let Some(promtool) = promtool() else { return };
    let config = Path::new(env!("CARGO_MANIFEST_DIR")).join("config");
    let output = Command::new(promtool).args(args).current_dir(&config).output().unwrap();
    assert!(
        output.status.success(),
        "promtool {args:?}:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn the_alert_rules_are_valid() {
    check_promtool(&["check", "rules", "alerts.yml"]);
}

#[test]
fn every_alert_fires_and_stays_quiet_as_its_unit_tests_say() {
    check_promtool(&["test", "rules", "alerts_test.yml"]);
}
