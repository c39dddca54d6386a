//! The `/` filter: which tags, requests and findings stay bright.
//!
//! Words are ANDed. A word is `qN` (queue), `tN` (tag), `flagged` or `stuck` (named by a finding),
//! `busy` (in flight), or a prefix of a state or finding class (`in_s`, `stuck`), case-insensitive.
//! An empty filter matches everything.

use super::view_model::{CellState, FindingView, InflightRow, TagCell};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Term {
    Queue(u16),
    Tag(u16),
    Flagged,
    Busy,
    /// Upper-cased prefix of a state name or finding class.
    Word(String),
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Filter {
    text: String,
    terms: Vec<Term>,
}

fn number_after(word: &str, prefix: char) -> Option<u16> {
    let rest = word.strip_prefix(prefix)?;
    rest.parse().ok()
}

impl Filter {
    pub fn parse(text: &str) -> Self {
        let terms = text
            .split_whitespace()
            .map(|w| {
                let lower = w.to_ascii_lowercase();
                if let Some(q) = number_after(&lower, 'q') {
                    Term::Queue(q)
                } else if let Some(t) = number_after(&lower, 't') {
                    Term::Tag(t)
                } else if lower == "flagged" || lower == "stuck" {
                    Term::Flagged
                } else if lower == "busy" {
                    Term::Busy
                } else {
                    Term::Word(w.to_ascii_uppercase())
                }
            })
            .collect();
        Self {
            text: text.trim().to_string(),
            terms,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.terms.is_empty()
    }

    /// What the user typed (shown in the footer).
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn matches_tag(&self, q_id: u16, cell: &TagCell) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Queue(q) => *q == q_id,
            Term::Tag(tag) => *tag == cell.tag,
            Term::Flagged => cell.flagged,
            Term::Busy => cell.state.in_flight(),
            Term::Word(w) => state_matches(cell.state, w),
        })
    }

    pub fn matches_inflight(&self, row: &InflightRow) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Queue(q) => *q == row.q_id,
            Term::Tag(tag) => *tag == row.tag,
            Term::Flagged | Term::Busy => true,
            Term::Word(w) => state_matches(row.state, w) || row.op.starts_with(w.as_str()),
        })
    }

    /// Findings about the whole device (no queue/tag) pass queue and tag terms: they may be the cause.
    pub fn matches_finding(&self, f: &FindingView) -> bool {
        self.terms.iter().all(|t| match t {
            Term::Queue(q) => f.q_id.is_none_or(|fq| fq == *q),
            Term::Tag(tag) => f.tag.is_none_or(|ft| ft == *tag),
            Term::Flagged | Term::Busy => true,
            Term::Word(w) => f.class.starts_with(w.as_str()) || f.class.contains(w.as_str()),
        })
    }
}

fn state_matches(state: CellState, upper_word: &str) -> bool {
    state.name().starts_with(upper_word)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tui::view_model::Severity;

    fn cell(tag: u16, state: CellState, flagged: bool) -> TagCell {
        TagCell {
            tag,
            state,
            age_ns: Some(1),
            flagged,
        }
    }

    #[test]
    fn words_are_anded_and_case_insensitive() {
        let f = Filter::parse("q1 in_s");
        assert!(f.matches_tag(1, &cell(3, CellState::InServer, false)));
        assert!(!f.matches_tag(0, &cell(3, CellState::InServer, false)));
        assert!(!f.matches_tag(1, &cell(3, CellState::Waiting, false)));
    }

    #[test]
    fn busy_and_flagged_select_what_a_hunt_needs() {
        let busy = Filter::parse("busy");
        assert!(busy.matches_tag(0, &cell(0, CellState::Queued, false)));
        assert!(!busy.matches_tag(0, &cell(0, CellState::Waiting, false)));
        for word in ["flagged", "stuck"] {
            let flagged = Filter::parse(word);
            assert!(flagged.matches_tag(0, &cell(0, CellState::Waiting, true)));
            assert!(!flagged.matches_tag(0, &cell(0, CellState::InServer, false)));
        }
    }

    #[test]
    fn device_wide_findings_survive_a_queue_filter() {
        let f = FindingView {
            class: "SERVER_STOPPED".into(),
            severity: Severity::Error,
            dev_id: 0,
            q_id: None,
            tag: None,
            pids: vec![7],
            age_ns: None,
            summary: String::new(),
            evidence: Vec::new(),
            hint: String::new(),
            tags: Vec::new(),
        };
        assert!(Filter::parse("q3").matches_finding(&f));
        assert!(Filter::parse("server").matches_finding(&f));
        assert!(!Filter::parse("waiters").matches_finding(&f));
    }

    #[test]
    fn empty_filter_matches_everything() {
        let f = Filter::parse("   ");
        assert!(f.is_empty());
        assert!(f.matches_tag(9, &cell(1, CellState::Unknown, false)));
    }
}
