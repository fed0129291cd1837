//! A smoke run of the bench: every phase runs against a real broker, every
//! order of the saga completes, and every figure is printed (and written as
//! JSON). No timing is asserted: the figures depend on the machine.

use std::process::Command;

#[test]
fn the_bench_runs_every_phase_and_prints_its_figures() {
    let json = tempfile_path();
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--quiet", "--json"])
        .arg(&json)
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");

    for name in [
        "rpc.raw.c1.req_per_s",
        "rpc.ours.c64.p50",
        "rpc.ratio.c64.req_per_s",
        "events.publish.ratio",
        "events.consume.ratio",
        "saga.durable.c1.orders_per_s",
        "saga.durable.c16.p99.9",
        "saga.ephemeral.c16.cpu_nats",
        "scale.r1.pay2.c1.p99",
        "scale.r3.pay1.c16.orders_per_s",
        "scale.r3_over_r1",
        "bench.wall_time",
    ] {
        let line = stdout
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .unwrap_or_else(|| panic!("no figure {name}:\n{stdout}"));
        let value: f64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        assert!(value.is_finite() && value >= 0.0, "{line}");
    }
    let figures: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    assert_eq!(
        figures.len(),
        stdout.lines().count(),
        "the JSON has every printed figure"
    );
    std::fs::remove_file(json).ok();
}

#[test]
fn the_ablation_runs_the_saga_with_each_module_in_memory_and_prints_its_ratios() {
    let output = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--smoke", "--quiet", "--ablate"])
        .output()
        .expect("the bench runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    let names: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    let mut expected = vec!["machine.cpus".to_owned()];
    for case in [
        "durable",
        "user_in_memory",
        "product_in_memory",
        "order_in_memory",
        "payment_in_memory",
    ] {
        expected.push(format!("ablation.{case}.c64.orders_per_s"));
        expected.push(format!("ablation.{case}.c64.cpu"));
    }
    for module in ["user", "product", "order", "payment"] {
        expected.push(format!("ablation.{module}_in_memory_over_durable"));
    }
    expected.push("bench.wall_time".to_owned());
    assert_eq!(names, expected, "{stdout}");
}

fn tempfile_path() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bench-smoke-{}.json", std::process::id()))
}
