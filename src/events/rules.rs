//! Threshold rules of data.toml (`above` / `below` with `hysteresis`), evaluated on each
//! decoded poll. A rule triggers once when its point leaves the allowed range and clears once
//! when the point is back inside by the hysteresis margin; values in between change nothing,
//! so a value hovering at the threshold does not flap.
//!
//! `above = 80` triggers on a value strictly greater than 80 and, with `hysteresis = 2`, clears
//! at 78 or less; `below = 10` triggers under 10 and clears at 12 or more. A rule with both is a
//! band: outside either side triggers, and it clears only once inside both margins.

use std::collections::HashMap;

use serde_json::{json, Value};

use crate::protocol::points::Decoded;

/// Raises `rule.triggered` when `point` goes above `above` or below `below`, and `rule.cleared`
/// once it is back inside by `hysteresis`. At least one bound is set; with both, above > below.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    pub name: String,
    pub point: String,
    pub above: Option<f64>,
    pub below: Option<f64>,
    pub hysteresis: f64,
}

/// Which rules of one device are triggered now, by rule name. Kept by the supervisor per
/// device id, so a reconnecting device does not fire its rules again.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct RuleStates {
    triggered: HashMap<String, bool>,
}

/// A rule that changed state on a value.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleChange {
    pub triggered: bool,
    /// The `data` of the `rule.triggered` / `rule.cleared` event.
    pub data: Value,
}

fn outside(rule: &Rule, v: f64) -> bool {
    rule.above.is_some_and(|a| v > a) || rule.below.is_some_and(|b| v < b)
}

fn back_inside(rule: &Rule, v: f64) -> bool {
    rule.above.map_or(true, |a| v <= a - rule.hysteresis)
        && rule.below.map_or(true, |b| v >= b + rule.hysteresis)
}

impl RuleStates {
    /// Applies one poll's decoded values; answers the rules whose state changed.
    pub fn apply(&mut self, rules: &[Rule], values: &[Decoded]) -> Vec<RuleChange> {
        let mut changes = Vec::new();
        for rule in rules {
            let Some(d) = values.iter().find(|d| d.name == rule.point) else {
                continue;
            };
            let v = d.value;
            // NaN (e.g. an f32 point reading garbage) is neither outside nor back inside.
            if v.is_nan() {
                continue;
            }
            let state = self.triggered.entry(rule.name.clone()).or_insert(false);
            let change = if !*state && outside(rule, v) {
                Some(true)
            } else if *state && back_inside(rule, v) {
                Some(false)
            } else {
                None
            };
            if let Some(triggered) = change {
                *state = triggered;
                changes.push(RuleChange {
                    triggered,
                    data: json!({
                        "rule": rule.name,
                        "point": rule.point,
                        "value": v,
                        "unit": d.unit,
                        "above": rule.above,
                        "below": rule.below,
                        "hysteresis": rule.hysteresis,
                    }),
                });
            }
        }
        changes
    }

    #[cfg(test)]
    fn is_triggered(&self, rule: &str) -> bool {
        self.triggered.get(rule).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(above: Option<f64>, below: Option<f64>, hysteresis: f64) -> Rule {
        Rule {
            name: "r".into(),
            point: "t".into(),
            above,
            below,
            hysteresis,
        }
    }

    fn value(v: f64) -> Vec<Decoded> {
        vec![Decoded {
            name: "t".into(),
            raw: v,
            value: v,
            unit: "°C".into(),
        }]
    }

    /// Feeds values in order; answers the state changes as `+` (triggered) and `-` (cleared).
    fn run(rules: &[Rule], values: &[f64]) -> String {
        let mut states = RuleStates::default();
        values
            .iter()
            .flat_map(|v| states.apply(rules, &value(*v)))
            .map(|c| if c.triggered { '+' } else { '-' })
            .collect()
    }

    #[test]
    fn above_triggers_once_and_clears_below_the_margin() {
        let r = [rule(Some(80.0), None, 2.0)];
        // Rises above, stays above, falls into the band (no clear), then below the band.
        assert_eq!(run(&r, &[70.0, 81.0, 85.0, 90.0, 79.0, 78.5]), "+");
        assert_eq!(run(&r, &[70.0, 81.0, 79.0, 78.0]), "+-");
        // Exactly at the threshold is not above it.
        assert_eq!(run(&r, &[80.0, 80.0]), "");
        // Again after clearing.
        assert_eq!(run(&r, &[81.0, 70.0, 81.0, 70.0]), "+-+-");
    }

    #[test]
    fn below_mirrors_above() {
        let r = [rule(None, Some(10.0), 1.0)];
        assert_eq!(run(&r, &[12.0, 9.0, 10.5, 10.9, 11.0]), "+-");
    }

    #[test]
    fn band_clears_only_inside_both_margins() {
        let r = [rule(Some(80.0), Some(10.0), 2.0)];
        assert_eq!(run(&r, &[50.0, 5.0, 11.0, 12.0, 85.0, 79.0, 78.0]), "+-+-");
        // Jumping from one side straight to the other stays triggered.
        assert_eq!(run(&r, &[85.0, 5.0, 50.0]), "+-");
    }

    #[test]
    fn zero_hysteresis_clears_at_the_threshold() {
        let r = [rule(Some(80.0), None, 0.0)];
        assert_eq!(run(&r, &[81.0, 80.0]), "+-");
    }

    #[test]
    fn other_points_and_nan_change_nothing() {
        let r = [rule(Some(80.0), None, 2.0)];
        let mut states = RuleStates::default();
        let other = vec![Decoded {
            name: "humidity".into(),
            raw: 99.0,
            value: 99.0,
            unit: "%".into(),
        }];
        assert!(states.apply(&r, &other).is_empty());
        assert!(states.apply(&r, &value(f64::NAN)).is_empty());
        let c = states.apply(&r, &value(81.5));
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].data["rule"], "r");
        assert_eq!(c[0].data["point"], "t");
        assert_eq!(c[0].data["value"], 81.5);
        assert_eq!(c[0].data["above"], 80.0);
        assert!(states.is_triggered("r"));
    }
}
