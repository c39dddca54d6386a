//! Progress of a benchmark guest on the host's stderr: each `=== CONFIG round N` marker the
//! guest prints is shown with the time since boot, and the first marker of a round says how
//! long the previous round took, so a run of an hour shows where it is and what is left.
use std::time::Duration;

/// Round markers seen so far in one guest boot.
pub struct RoundClock {
    rounds: u32,
    round: u32,
    round_started: Duration,
}

impl RoundClock {
    /// A guest that runs `rounds` interleaved rounds.
    pub fn new(rounds: u32) -> Self {
        Self {
            rounds,
            round: 0,
            round_started: Duration::ZERO,
        }
    }

    /// The line to print for a `===` marker the guest printed `elapsed` after boot.
    pub fn line(&mut self, marker: &str, elapsed: Duration) -> String {
        let secs = elapsed.as_secs();
        let round = marker
            .rsplit_once(" round ")
            .and_then(|(_, n)| n.trim().parse::<u32>().ok());
        let mut out = format!("  [+{secs} s] {marker}");
        if round.is_some() {
            out.push_str(&format!("/{}", self.rounds));
        }
        match round {
            Some(n) if n != self.round => {
                if self.round > 0 {
                    let took = elapsed.saturating_sub(self.round_started).as_secs();
                    out.push_str(&format!(" (round {} took {took} s)", self.round));
                }
                self.round = n;
                self.round_started = elapsed;
            }
            // After the last round (long run, probe start-up): the last round's time, once.
            None if self.round > 0 => {
                let took = elapsed.saturating_sub(self.round_started).as_secs();
                out.push_str(&format!(" (round {} took {took} s)", self.round));
                self.round = 0;
            }
            _ => {}
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_round_says_how_long_the_last_one_took() {
        let mut c = RoundClock::new(2);
        let s = Duration::from_secs;
        assert_eq!(c.line("=== a round 1", s(10)), "  [+10 s] === a round 1/2");
        assert_eq!(c.line("=== b round 1", s(70)), "  [+70 s] === b round 1/2");
        assert_eq!(
            c.line("=== a round 2", s(130)),
            "  [+130 s] === a round 2/2 (round 1 took 120 s)"
        );
        assert_eq!(
            c.line("=== probe start-up", s(250)),
            "  [+250 s] === probe start-up (round 2 took 120 s)"
        );
        assert_eq!(c.line("=== cleanup", s(260)), "  [+260 s] === cleanup");
    }
}
