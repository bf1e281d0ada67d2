//! Knative Pod Autoscaler (KPA) semantics over Flint's instances.
//!
//! Flint's unit of scale is a VM restored from the revision's snapshot and
//! ready to take one request (a WASI command runs once, so every request
//! gets its own instance). The autoscaler decides how many instances the
//! revision should have (in use plus pre-restored and idle); the pool keeps
//! that many idle ones restored in advance, which hides restore latency.
//!
//! Every tick it samples the revision's load (in-flight requests, or
//! request arrivals for `metric: rps`). Desired scale is the average over
//! the stable window divided by the target per instance, rounded up. If the
//! average over the panic window (a percentage of the stable window) reaches
//! the panic threshold (a percentage of current capacity), the autoscaler
//! panics: it scales up on the panic window and does not scale down until
//! a stable window passes without panic. Scale stays within min and max;
//! scaling down waits for the scale-down delay; with no load over a whole
//! stable window and min-scale 0, the revision scales to zero.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::manifest::{Autoscaling, Metric};

/// How often the autoscaler samples load and decides.
pub const TICK: Duration = Duration::from_millis(500);

#[derive(Debug)]
pub struct Kpa {
    settings: Autoscaling,
    samples: VecDeque<(Instant, f64)>,
    current: u32,
    panic_until: Option<Instant>,
    /// When the desired scale first dropped below current (scale-down delay).
    lower_since: Option<Instant>,
    /// The first tick: no scaling down before a whole stable window of data.
    first: Option<Instant>,
    /// When the revision went idle (wanting zero), for the last
    /// instance's retention.
    idle_since: Option<Instant>,
}

impl Kpa {
    pub fn new(settings: Autoscaling) -> Self {
        let current = settings.initial_scale.max(settings.min_scale);
        Self {
            settings,
            samples: VecDeque::new(),
            current,
            panic_until: None,
            lower_since: None,
            first: None,
            idle_since: None,
        }
    }

    pub fn current(&self) -> u32 {
        self.current
    }

    fn clamp(&self, n: u32) -> u32 {
        let n = n.max(self.settings.min_scale);
        if self.settings.max_scale > 0 {
            n.min(self.settings.max_scale)
        } else {
            n
        }
    }

    fn average(&self, now: Instant, window: Duration) -> f64 {
        let from = now.checked_sub(window).unwrap_or(now);
        let (sum, n) = self
            .samples
            .iter()
            .filter(|(t, _)| *t >= from)
            .fold((0.0, 0), |(s, n), (_, v)| (s + v, n + 1));
        if n == 0 {
            0.0
        } else {
            sum / n as f64
        }
    }

    /// Takes one load sample (concurrency, or requests per second) and
    /// returns the scale the revision should have now.
    pub fn tick(&mut self, now: Instant, load: f64) -> u32 {
        self.samples.push_back((now, load));
        let first = *self.first.get_or_insert(now);
        let window = self.settings.window;
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > window)
        {
            self.samples.pop_front();
        }
        // Knative's per-instance target: target x utilization.
        let target =
            (self.settings.target * self.settings.target_utilization_percentage / 100.0).max(0.01);
        let panic_window = window
            .mul_f64((self.settings.panic_window_percentage / 100.0).clamp(0.01, 1.0))
            .max(TICK);
        let stable = self.average(now, window);
        let panic = self.average(now, panic_window);
        let want_stable = (stable / target).ceil() as u32;
        let want_panic = (panic / target).ceil() as u32;
        let capacity = (self.current.max(1) as f64) * target;
        if panic / capacity * 100.0 >= self.settings.panic_threshold_percentage {
            self.panic_until = Some(now + window);
        }
        let panicking = self.panic_until.is_some_and(|t| now < t);
        let mut want = if panicking {
            want_panic.max(want_stable).max(self.current)
        } else {
            want_stable
        };
        // Keep an instance while there is any load at all.
        if stable > 0.0 {
            want = want.max(1);
        }
        // Any non-zero scale is at least activation-scale (Knative's
        // autoscaler raises both its stable and its panic count so).
        // Load again: the revision is active, its retention starts anew.
        if want > 0 {
            want = want.max(self.settings.activation_scale);
            self.idle_since = None;
        }
        let want = self.clamp(want);
        if want >= self.current {
            self.lower_since = None;
            self.current = want;
        } else if now.duration_since(first) >= window {
            let since = *self.lower_since.get_or_insert(now);
            if now.duration_since(since) >= self.settings.scale_down_delay {
                // Going to zero: the last instance stays the retention
                // period from then (Knative's
                // scale-to-zero-pod-retention-period, from when the
                // revision went inactive).
                let idle = *self.idle_since.get_or_insert(now);
                let retained = now.duration_since(idle) < self.settings.last_instance_retention;
                self.current = if want == 0 && retained { 1 } else { want };
                self.lower_since = None;
            }
        }
        self.current
    }

    pub fn metric(&self) -> Metric {
        self.settings.metric
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> Autoscaling {
        Autoscaling {
            window: Duration::from_secs(10),
            target: 2.0,
            // The arithmetic below is per whole target.
            target_utilization_percentage: 100.0,
            initial_scale: 1,
            ..Autoscaling::default()
        }
    }

    #[test]
    fn the_per_instance_target_is_target_times_utilization() {
        // Knative's default utilization is 70%: target 10 carries 7 each.
        let mut k = Kpa::new(Autoscaling {
            window: Duration::from_secs(10),
            target: 10.0,
            ..Autoscaling::default()
        });
        let (t, n) = run(&mut k, Instant::now(), 20.0, 14.0);
        assert_eq!(n, 2, "14 in flight at 7 each");
        let (_, n) = run(&mut k, t, 20.0, 7.0);
        assert_eq!(n, 1);
    }

    #[test]
    fn a_non_zero_scale_is_at_least_activation_scale() {
        // As Knative's TestAutoscalerActivationScale: idle stays at zero,
        // any load scales to activation-scale at once.
        let mut k = Kpa::new(Autoscaling {
            activation_scale: 2,
            ..settings()
        });
        let (t, n) = run(&mut k, Instant::now(), 11.0, 0.0);
        assert_eq!(n, 0);
        let (t, n) = run(&mut k, t, 1.0, 1.0);
        assert_eq!(n, 2);
        let (_, n) = run(&mut k, t, 20.0, 7.0);
        assert_eq!(n, 4, "above activation-scale the load decides");
    }

    #[test]
    fn the_last_instance_stays_for_the_retention_period() {
        let mut k = Kpa::new(Autoscaling {
            last_instance_retention: Duration::from_secs(5),
            ..settings()
        });
        // Idle from the start: the stable window passes, then retention.
        let (t, n) = run(&mut k, Instant::now(), 11.0, 0.0);
        assert_eq!(n, 1, "kept: inactive for 1 s of the 5 s retention");
        let (t, n) = run(&mut k, t, 3.0, 0.0);
        assert_eq!(n, 1);
        let (t, n) = run(&mut k, t, 2.0, 0.0);
        assert_eq!(n, 0, "retention over");
        // Load again resets it.
        let (t, n) = run(&mut k, t, 1.0, 1.0);
        assert_eq!(n, 1);
        let (_, n) = run(&mut k, t, 11.0, 0.0);
        assert_eq!(n, 1, "idle again, within a new retention period");
    }

    fn run(k: &mut Kpa, start: Instant, secs: f64, load: f64) -> (Instant, u32) {
        let mut t = start;
        let mut n = k.current();
        let end = start + Duration::from_secs_f64(secs);
        while t < end {
            t += TICK;
            n = k.tick(t, load);
        }
        (t, n)
    }

    #[test]
    fn scales_to_concurrency_over_target() {
        let mut k = Kpa::new(settings());
        let (t, n) = run(&mut k, Instant::now(), 20.0, 7.0);
        assert_eq!(n, 4, "7 in flight at target 2");
        let (_, n) = run(&mut k, t, 20.0, 2.0);
        assert_eq!(n, 1);
    }

    #[test]
    fn scales_to_zero_after_a_quiet_window_and_back() {
        let mut k = Kpa::new(settings());
        let (t, n) = run(&mut k, Instant::now(), 11.0, 0.0);
        assert_eq!(n, 0);
        let (t, n) = run(&mut k, t, 1.0, 10.0);
        assert!(
            n >= 4,
            "a burst scales up from zero at once (panic mode): {n}"
        );
        let (_, n) = run(&mut k, t + Duration::from_secs(30), 0.5, 1.0);
        assert_eq!(n, 1, "light load after the burst");
    }

    #[test]
    fn panic_mode_reacts_within_the_panic_window() {
        let mut k = Kpa::new(settings());
        let (t, _) = run(&mut k, Instant::now(), 10.0, 1.0);
        // A sudden burst: the stable average barely moves, the panic one jumps.
        let (t, n) = run(&mut k, t, 1.5, 20.0);
        assert!(n >= 8, "panic scaled to {n}");
        // Load gone: panic mode holds the scale for a stable window.
        let (t, n2) = run(&mut k, t, 2.0, 0.0);
        assert_eq!(n2, n);
        let (_, n3) = run(&mut k, t, 12.0, 0.0);
        assert_eq!(n3, 0);
    }

    #[test]
    fn initial_scale_holds_for_a_stable_window() {
        let mut k = Kpa::new(Autoscaling {
            initial_scale: 3,
            ..settings()
        });
        let (t, n) = run(&mut k, Instant::now(), 9.0, 0.0);
        assert_eq!(n, 3);
        let (_, n) = run(&mut k, t, 2.0, 0.0);
        assert_eq!(n, 0);
    }

    #[test]
    fn min_max_and_scale_down_delay() {
        let s = Autoscaling {
            min_scale: 1,
            max_scale: 3,
            scale_down_delay: Duration::from_secs(5),
            ..settings()
        };
        let mut k = Kpa::new(s.clone());
        // The same load without the delay shows when the scale would drop.
        let mut eager = Kpa::new(Autoscaling {
            scale_down_delay: Duration::ZERO,
            ..s
        });
        let start = Instant::now();
        let (t, n) = run(&mut k, start, 20.0, 100.0);
        assert_eq!(n, 3, "max-scale caps");
        run(&mut eager, start, 20.0, 100.0);
        // Load gone: tick both until the one without a delay scales down.
        let (mut t, mut dropped) = (t, None);
        for _ in 0..100 {
            t += TICK;
            let held = k.tick(t, 0.0);
            if eager.tick(t, 0.0) < 3 {
                assert_eq!(held, 3, "the delay holds the scale when it would drop");
                dropped = Some(t);
                break;
            }
        }
        let dropped = dropped.expect("without a delay the scale drops once the load is gone");
        // Held for the delay from then, and no longer.
        let mut lowered = None;
        while t < dropped + Duration::from_secs(6) {
            t += TICK;
            if k.tick(t, 0.0) < 3 && lowered.is_none() {
                lowered = Some(t);
            }
        }
        let lowered = lowered.expect("lowered once the delay passed");
        assert!(
            lowered.duration_since(dropped) >= Duration::from_secs(5)
                && lowered.duration_since(dropped) <= Duration::from_secs(5) + TICK,
            "lowered {:?} after the undelayed drop",
            lowered.duration_since(dropped)
        );
        let (_, n) = run(&mut k, t, 20.0, 0.0);
        assert_eq!(n, 1, "min-scale holds one");
    }
}
