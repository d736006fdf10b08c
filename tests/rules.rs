//! End to end: threshold rules of data.toml raising `rule.triggered` / `rule.cleared`, seen by
//! a real webhook receiver. Order is what is checked, never time: one subscriber gets a
//! device's events in the order they were raised, and each poll's telemetry event comes
//! before the rule event it caused.

mod common;

use common::device::FakeDevice;
use common::receiver::Receiver;
use common::{wait_for, Options, TestServer, DATA_TOML};

const RULE: &str = r#"
[[profiles.default.rules]]
name = "overheat"
point = "temperature"
above = 80.0
hysteresis = 2.0
"#;

/// `(event, value)` in the order received: telemetry's temperature, or the rule's value.
fn seen(rx: &Receiver) -> Vec<(String, f64)> {
    rx.envelopes()
        .into_iter()
        .filter(|(_, e)| e["device_id"] == "1001")
        .filter_map(|(r, e)| {
            let event = e["event"].as_str()?.to_string();
            let value = match event.as_str() {
                "telemetry" => e["data"]["values"]["temperature"].as_f64()?,
                _ => {
                    assert_eq!(e["data"]["rule"], "overheat", "{e}");
                    assert!(r.signed_with("s"), "bad signature on {e}");
                    e["data"]["value"].as_f64()?
                }
            };
            Some((event, value))
        })
        .collect()
}

/// Waits until `n` telemetry events with `temperature` have arrived since index `from`.
fn wait_telemetry(rx: &Receiver, from: usize, temperature: f64, n: usize) -> Vec<(String, f64)> {
    wait_for(&format!("{n} polls reading {temperature}"), || {
        let all = seen(rx);
        let count = all
            .iter()
            .skip(from)
            .filter(|(e, v)| e == "telemetry" && (*v - temperature).abs() < 1e-9)
            .count();
        (count >= n).then_some(all)
    })
}

fn count(events: &[(String, f64)], name: &str) -> usize {
    events.iter().filter(|(e, _)| e == name).count()
}

#[test]
fn a_rule_triggers_once_stays_inside_the_band_and_clears_below_it() {
    let rx = Receiver::ok();
    let server = TestServer::start_with(Options {
        data_toml: format!("{DATA_TOML}{RULE}"),
        extra_server_toml: format!(
            "\n[[webhooks]]\nurl = \"{}\"\nevents = [\"telemetry\", \"rule.triggered\", \"rule.cleared\"]\nsecret = \"s\"\n",
            rx.url()
        ),
        ..Options::default()
    });
    // temperature is i16 × 0.1 at register 2000.
    let dev = FakeDevice::framed_with(server.framed, 1001, &[(2000, &[700])]);
    let all = wait_telemetry(&rx, 0, 70.0, 1);
    assert_eq!(count(&all, "rule.triggered"), 0, "{all:?}");

    // Above: triggered once, however many polls stay above.
    dev.set_registers(2000, &[850]);
    let mark = all.len();
    let all = wait_telemetry(&rx, mark, 85.0, 3);
    assert_eq!(count(&all, "rule.triggered"), 1, "{all:?}");
    let trigger = all
        .iter()
        .position(|(e, _)| e == "rule.triggered")
        .expect("triggered");
    assert_eq!(all[trigger].1, 85.0);
    assert_eq!(
        all[trigger - 1],
        ("telemetry".to_string(), 85.0),
        "the rule event follows the poll that crossed: {all:?}"
    );

    // Inside the hysteresis band (below 80, above 78): still triggered, nothing cleared.
    dev.set_registers(2000, &[790]);
    let mark = all.len();
    let all = wait_telemetry(&rx, mark, 79.0, 3);
    assert_eq!(count(&all, "rule.cleared"), 0, "{all:?}");

    // Below the band: cleared once.
    dev.set_registers(2000, &[770]);
    let mark = all.len();
    let all = wait_telemetry(&rx, mark, 77.0, 3);
    assert_eq!(count(&all, "rule.cleared"), 1, "{all:?}");
    assert_eq!(count(&all, "rule.triggered"), 1, "{all:?}");
    let cleared = all
        .iter()
        .position(|(e, _)| e == "rule.cleared")
        .expect("cleared");
    assert_eq!(all[cleared].1, 77.0);

    // And it can trigger again.
    dev.set_registers(2000, &[900]);
    let all = wait_for("the second trigger", || {
        let now = seen(&rx);
        (count(&now, "rule.triggered") == 2).then_some(now)
    });
    assert_eq!(
        all.iter().rev().find(|(e, _)| e == "rule.triggered"),
        Some(&("rule.triggered".to_string(), 90.0))
    );
}
