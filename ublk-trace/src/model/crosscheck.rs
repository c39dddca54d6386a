//! Two sources, one answer: the driver's memory and the event model judged side by side on
//! every tag that neither source saw change between two reads. Any disagreement is a bug in
//! one of them (the tick-by-tick check of DESIGN "Next: read the driver's own state").
use serde::Serialize;

use super::Model;
use super::tag::{Tag, TagState};
use crate::driver::TagView as DriverView;

/// The outcome for one device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct CrossCheck {
    /// Tags both sources could judge (stable since the previous driver read, the event side
    /// read after the view began).
    pub compared: u32,
    pub agree: u32,
    /// Tags the events never saw since the tracer attached (nothing to compare).
    pub events_blind: u32,
    pub disagree: Vec<Disagreement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(test, derive(schemars::JsonSchema))]
pub struct Disagreement {
    pub q_id: u16,
    pub tag: u16,
    /// The driver's state name (`WAITING`, `IN_SERVER`, ...).
    pub driver: &'static str,
    /// The event model's.
    pub events: &'static str,
}

/// What one tag says, when it can be judged.
enum Verdict {
    Skip,
    Blind,
    Agree,
    Disagree(TagState, TagState),
}

fn judge(t: &Tag, events_read_ns: u64, queue_delivered_ns: u64, completes_seen: bool) -> Verdict {
    let Some(d) = t.driver.as_ref() else {
        return Verdict::Skip;
    };
    // The view held over two reads, the event side was read after the view began, and it
    // holds no event of the tag since then: both describe the same span. The event side
    // need not be newer than the latest driver read (the two run on their own clocks, and
    // under load the driver's read often lands between the state map's reads): a change
    // after the view began would be an event the side holds, and one after its read would
    // have changed the driver's view (the key includes the request's start).
    let stable = d.view_since_ns < d.read_ns && t.latest_event_ns() < d.view_since_ns;
    if !stable || events_read_ns <= d.view_since_ns {
        return Verdict::Skip;
    }
    let Some(driver) = t.derive_from_driver(0).map(|x| x.state) else {
        return Verdict::Skip;
    };
    if d.view == DriverView::Aborted {
        return Verdict::Skip;
    }
    let events = t
        .derive_from_events(queue_delivered_ns, completes_seen)
        .state;
    use TagState as S;
    match (driver, events) {
        (S::NotFetched, S::Unknown) => Verdict::Agree,
        (_, S::Unknown) => Verdict::Blind,
        (S::Waiting, S::Waiting | S::Committed) => Verdict::Agree,
        (a, b) if a == b => Verdict::Agree,
        (a, b) => Verdict::Disagree(a, b),
    }
}

impl Model {
    /// Compare the driver's and the events' state of every tag of `dev_id`. `None` when
    /// one of the two is missing (no driver read, or no event side: state map or stream).
    pub fn cross_check(&self, dev_id: u32) -> Option<CrossCheck> {
        let d = self.devices.get(&dev_id)?;
        d.driver.as_ref()?;
        let events_read_ns = self.events_read_ns();
        if events_read_ns == 0 {
            return None;
        }
        let mut out = CrossCheck::default();
        for q in d.queues.values() {
            for (tag, t) in &q.tags {
                match judge(
                    t,
                    events_read_ns,
                    q.last_batch_delivered_ns,
                    d.completes_seen,
                ) {
                    Verdict::Skip => continue,
                    Verdict::Blind => out.events_blind += 1,
                    Verdict::Agree => out.agree += 1,
                    Verdict::Disagree(a, b) => out.disagree.push(Disagreement {
                        q_id: q.q_id,
                        tag: *tag,
                        driver: a.name(),
                        events: b.name(),
                    }),
                }
                out.compared += 1;
            }
        }
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::TagView as V;
    use crate::model::testutil::{driver_rq, driver_snap, driver_tag};

    const S: u64 = 1_000_000_000;

    /// Tag 1 hung in the server per the events (started 1 s, delivered 1.1 s), tag 0 served
    /// and waiting again (commit at 0.5 s).
    fn model_with_events() -> Model {
        let mut m = Model::new();
        let t = m.tag_mut_for_test(0, 0, 1);
        t.fetch_ns = S / 10;
        t.queue_rq_ns = S;
        t.delivered_ns = S + S / 10;
        let t = m.tag_mut_for_test(0, 0, 0);
        t.fetch_ns = S / 2;
        t.commit_ns = S / 2;
        t.commit_result = Some(4096);
        m
    }

    fn reads(m: &mut Model, tags: impl Fn() -> Vec<crate::driver::TagState>) {
        m.apply_driver(&driver_snap(2 * S, tags()));
        m.apply_driver(&driver_snap(3 * S, tags()));
    }

    #[test]
    fn stable_tags_agree_and_unseen_ones_are_counted_apart() {
        let mut m = model_with_events();
        reads(&mut m, || {
            vec![
                driver_tag(0, V::Waiting, None),
                driver_tag(1, V::InServer, Some(driver_rq(S))),
                driver_tag(2, V::Waiting, None),
                driver_tag(3, V::NotFetched, None),
            ]
        });
        assert_eq!(m.cross_check(0), None, "no event side read yet");
        m.note_kernel_tags_read(3 * S + 1);
        let c = m.cross_check(0).expect("both sources");
        assert_eq!((c.compared, c.agree, c.events_blind), (4, 3, 1));
        assert!(c.disagree.is_empty(), "{c:?}");
    }

    #[test]
    fn an_event_side_read_between_the_two_driver_reads_is_judged() {
        // Seen under load in CI: the state map read at 2.5 s, the driver at 2 s and 3 s. The
        // hung tag held over both reads and the events hold nothing of it since 2 s.
        let mut m = model_with_events();
        reads(&mut m, || {
            vec![driver_tag(1, V::InServer, Some(driver_rq(S)))]
        });
        m.note_kernel_tags_read(2 * S + S / 2);
        let c = m.cross_check(0).expect("both sources");
        assert_eq!((c.compared, c.agree), (1, 1), "{c:?}");
    }

    #[test]
    fn a_disagreement_names_both_states() {
        let mut m = model_with_events();
        // The driver holds tag 0 in the server, the events saw it re-armed.
        reads(&mut m, || {
            vec![driver_tag(0, V::InServer, Some(driver_rq(S)))]
        });
        m.note_kernel_tags_read(3 * S + 1);
        let c = m.cross_check(0).expect("both sources");
        assert_eq!(
            c.disagree,
            vec![Disagreement {
                q_id: 0,
                tag: 0,
                driver: "IN_SERVER",
                events: "WAITING"
            }]
        );
    }

    #[test]
    fn a_tag_that_moved_between_the_reads_is_not_judged() {
        let mut m = model_with_events();
        reads(&mut m, || {
            vec![driver_tag(0, V::InServer, Some(driver_rq(S)))]
        });
        // An event after the view began: the two sources describe different moments.
        m.tag_mut_for_test(0, 0, 0).commit_ns = 2 * S + 5;
        // And an event side read before the view began.
        m.note_kernel_tags_read(2 * S);
        let c = m.cross_check(0).expect("both sources");
        assert_eq!(c.compared, 0, "{c:?}");
        // A view seen in one read only is not judged either.
        let mut m = model_with_events();
        m.apply_driver(&driver_snap(
            3 * S,
            vec![driver_tag(1, V::InServer, Some(driver_rq(S)))],
        ));
        m.note_kernel_tags_read(4 * S);
        assert_eq!(m.cross_check(0).map(|c| c.compared), Some(0));
    }
}
