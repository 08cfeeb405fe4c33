//! Plan allowances per (subscription, period): what a period's paid invoices entitle it
//! to, whatever their number and order (SPEC section 2, "Plan changes within a period").
//! Pure: no Postgres; `apply.rs` stores the facts and grants the difference.
//!
//! The rule. A period is known by its end. Each paid invoice's lines, grouped by their
//! `period.end`, give one [`Fact`] per period they touch:
//! - base lines (not prorations: the first invoice of a period, a renewal) bill the plan
//!   then in force: `base` is the sum of their plans' `period_credits` times quantity;
//! - proration lines (an upgrade, a downgrade, a seat change) come in pairs: the credit
//!   for the unused time on the old items (`old`) and the charge for the rest of the
//!   period on the new ones (`new`), from `change_at` to the period's end.
//!
//! A period's allowance is then `min(ceiling, base + sum of top-ups)`, where `base` is the
//! largest base of its invoices, a top-up is `(new - old)` prorated over the part of the
//! period left at `change_at` (as Stripe prorates the money; nothing when `new <= old`),
//! and `ceiling` is the largest allowance any of its invoices shows held in the period.
//! Every term only grows as facts arrive, so granting the difference between the
//! allowance and what was granted gives the same total in any order of arrival, and a
//! downgrade takes nothing back.
use super::event::{i, s};
use serde_json::Value;

/// One invoice line, as far as allowances go (both API shapes read).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub price: Option<String>,
    pub quantity: i64,
    /// `period.start`; a line without one still bills (its period is known by its end).
    pub start: Option<i64>,
    pub end: i64,
    pub proration: bool,
    /// A proration's credit for unused time on the old items.
    pub credit: bool,
}

fn flag(v: &Value, path: &[&str]) -> Option<bool> {
    let mut x = v;
    for p in path {
        x = x.get(p)?;
    }
    x.as_bool()
}

fn present(v: &Value, path: &[&str]) -> bool {
    let mut x = v;
    for p in path {
        match x.get(p) {
            Some(y) => x = y,
            None => return false,
        }
    }
    !x.is_null()
}

/// An invoice's lines with a period. basil and later put the proration flag under
/// `parent.subscription_item_details` (or `parent.invoice_item_details`) and the price
/// under `pricing.price_details.price`; older versions have `proration` and `price.id`.
pub fn lines(invoice: &Value) -> Vec<Line> {
    let Some(data) = invoice.get("lines").and_then(|l| l.get("data")).and_then(Value::as_array) else {
        return vec![];
    };
    data.iter()
        .filter_map(|l| {
            let (start, end) = (i(l, &["period", "start"]), i(l, &["period", "end"])?);
            let parent = ["subscription_item_details", "invoice_item_details"];
            let proration = parent.iter().find_map(|p| flag(l, &["parent", p, "proration"])).or_else(|| flag(l, &["proration"])).unwrap_or(false);
            let credited = parent.iter().any(|p| present(l, &["parent", p, "proration_details", "credited_items"]))
                || present(l, &["proration_details", "credited_items"]);
            let amount = i(l, &["amount"]).unwrap_or(0);
            Some(Line {
                price: s(l, &["pricing", "price_details", "price"])
                    .or_else(|| s(l, &["price", "id"]))
                    .or_else(|| s(l, &["plan", "id"]))
                    .map(str::to_string),
                quantity: i(l, &["quantity"]).filter(|q| *q > 0).unwrap_or(1),
                start,
                end,
                proration,
                credit: proration && (amount < 0 || (amount == 0 && credited)),
            })
        })
        .collect()
}

/// What one paid invoice says of one period: its base lines, or one of its changes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Fact {
    pub period_end: i64,
    /// The earliest start of its base lines: the period's start.
    pub start: Option<i64>,
    pub base: i64,
    pub old: i64,
    pub new: i64,
    /// When its change took effect (its proration lines' `period.start`); `None` for
    /// the base lines.
    pub change_at: Option<i64>,
}

/// An invoice's facts: per period its lines touch, one for its base lines and one per
/// change (proration lines sharing a `period.start`: an invoice may bill several changes
/// at once, as a renewal does with pending prorations, and each is prorated from its own
/// instant and bounded by its own two sides). Sorted by period end, base first, then by
/// change. `credits(price)` is a plan's allowance per unit, `None` for a price of no plan
/// (which counts 0 but still tells the period's start). Proration lines without a
/// `period.start` (Stripe always sends one) cannot be prorated and are left out.
pub fn facts(lines: &[Line], credits: impl Fn(&str) -> Option<i64>) -> Vec<Fact> {
    let mut out: Vec<Fact> = vec![];
    for l in without_passing_states(lines) {
        if l.proration && l.start.is_none() {
            continue;
        }
        let amount = l.price.as_deref().and_then(&credits).unwrap_or(0).saturating_mul(l.quantity);
        let change_at = if l.proration { l.start } else { None };
        let f = match out.iter_mut().find(|f| f.period_end == l.end && f.change_at == change_at) {
            Some(f) => f,
            None => {
                out.push(Fact { period_end: l.end, change_at, ..Fact::default() });
                out.last_mut().expect("just pushed")
            }
        };
        if !l.proration {
            f.base = f.base.saturating_add(amount);
            f.start = match (f.start, l.start) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        } else if l.credit {
            f.old = f.old.saturating_add(amount);
        } else {
            f.new = f.new.saturating_add(amount);
        }
    }
    out.sort_by_key(|f| (f.period_end, f.change_at));
    out
}

/// The lines without the states two changes made in the same instant pass through: a
/// change A -> B then B -> C bills credit A, charge B, credit B, charge C, all from that
/// instant; the item charged and credited alike (same price and quantity) was held for no
/// time, and counting both sides would add B to the change's old and new sides alike (and
/// its ceiling past the largest plan held).
fn without_passing_states(lines: &[Line]) -> Vec<&Line> {
    let mut keep: Vec<Option<&Line>> = lines.iter().map(Some).collect();
    for i in 0..keep.len() {
        let Some(a) = keep[i].filter(|l| l.proration && l.credit) else { continue };
        let twin = (0..keep.len()).find(|&j| {
            keep[j].is_some_and(|b| {
                b.proration && !b.credit && (b.price.as_deref(), b.quantity, b.start, b.end) == (a.price.as_deref(), a.quantity, a.start, a.end)
            })
        });
        if let Some(j) = twin {
            keep[i] = None;
            keep[j] = None;
        }
    }
    keep.into_iter().flatten().collect()
}

/// A period's entitlement from all its facts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Entitlement {
    pub base: i64,
    pub ceiling: i64,
    pub allowance: i64,
}

/// `(new - old)` over the part of `[start, end)` left at `change_at`, rounded down.
pub fn top_up(f: &Fact, start: i64, end: i64) -> i64 {
    let (Some(at), true) = (f.change_at, f.new > f.old && end > start) else { return 0 };
    let left = (end - at).clamp(0, end - start);
    ((f.new - f.old) as i128 * left as i128 / (end - start) as i128) as i64
}

/// The period ending at `end`: its start is the latest one reported (by the facts' base
/// lines or by `reported`, the subscription's own `current_period_start`), so that it
/// too only moves one way. Without a start, top-ups wait (count 0) until one is known.
pub fn entitlement(end: i64, reported: Option<i64>, facts: &[Fact]) -> Entitlement {
    let start = facts.iter().filter_map(|f| f.start).chain(reported).max();
    let base = facts.iter().map(|f| f.base).max().unwrap_or(0);
    let ceiling = facts.iter().flat_map(|f| [f.base, f.old, f.new]).max().unwrap_or(0);
    let topups = match start {
        Some(st) => facts.iter().fold(0i64, |a, f| a.saturating_add(top_up(f, st, end))),
        None => 0,
    };
    Entitlement { base, ceiling, allowance: ceiling.min(base.saturating_add(topups)) }
}

/// The plan in force among items `(plan, period_credits, quantity)`: the largest
/// allowance, then the smaller name. Never "whichever line came first".
pub fn plan_in_force<'a>(items: impl IntoIterator<Item = (&'a str, i64, i64)>) -> Option<&'a str> {
    items.into_iter().max_by(|a, b| a.1.saturating_mul(a.2).cmp(&b.1.saturating_mul(b.2)).then_with(|| b.0.cmp(a.0))).map(|x| x.0)
}

/// The items an invoice puts in force: its new proration lines when it has any (a
/// change), else its base lines (a renewal), as `(price, quantity)`.
pub fn invoiced_items(lines: &[Line]) -> Vec<(String, i64)> {
    let changed: Vec<&Line> = lines.iter().filter(|l| l.proration && !l.credit).collect();
    let pick: Vec<&Line> = if changed.is_empty() { lines.iter().filter(|l| !l.proration).collect() } else { changed };
    pick.into_iter().filter_map(|l| l.price.clone().map(|p| (p, l.quantity))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const DAY: i64 = 86_400;
    const START: i64 = 1_796_083_200; // 2026-12-01T00:00:00Z
    const END: i64 = START + 30 * DAY;

    fn credits(p: &str) -> Option<i64> {
        match p {
            "price_basic" => Some(1000),
            "price_pro" => Some(5000),
            "price_team" => Some(2000),
            _ => None,
        }
    }

    fn base(price: &str, qty: i64) -> Line {
        Line { price: Some(price.into()), quantity: qty, start: Some(START), end: END, proration: false, credit: false }
    }

    fn change(at: i64, old: (&str, i64), new: (&str, i64)) -> Vec<Line> {
        let l = |p: &str, q, credit| Line { price: Some(p.into()), quantity: q, start: Some(at), end: END, proration: true, credit };
        vec![l(old.0, old.1, true), l(new.0, new.1, false)]
    }

    fn ent(invoices: &[Vec<Line>]) -> Entitlement {
        let fs: Vec<Fact> = invoices.iter().flat_map(|ls| facts(ls, credits)).collect();
        entitlement(END, None, &fs)
    }

    #[test]
    fn the_readme_example() {
        // basic on the 1st, pro from mid-period: 1000 + (5000 - 1000) / 2.
        let e = ent(&[vec![base("price_basic", 1)], change(START + 15 * DAY, ("price_basic", 1), ("price_pro", 1))]);
        assert_eq!(e, Entitlement { base: 1000, ceiling: 5000, allowance: 3000 });
    }

    #[test]
    fn a_downgrade_grants_nothing_and_takes_nothing_back() {
        let e = ent(&[vec![base("price_pro", 1)], change(START + 10 * DAY, ("price_pro", 1), ("price_basic", 1))]);
        assert_eq!(e.allowance, 5000);
    }

    #[test]
    fn flipping_never_passes_the_largest_plan() {
        let mut inv = vec![vec![base("price_basic", 1)]];
        for k in 1..20 {
            inv.push(change(START + k * DAY, ("price_basic", 1), ("price_pro", 1)));
            inv.push(change(START + k * DAY + 3600, ("price_pro", 1), ("price_basic", 1)));
        }
        let e = ent(&inv);
        assert_eq!(e.ceiling, 5000);
        assert_eq!(e.allowance, 5000);
    }

    #[test]
    fn seats_count_times_quantity() {
        let e = ent(&[vec![base("price_team", 3)], change(START + 20 * DAY, ("price_team", 3), ("price_team", 5))]);
        // 6000 + 4000 * 10/30, rounded down.
        assert_eq!(e.allowance, 6000 + 1333);
        assert_eq!(e.ceiling, 10_000);
    }

    #[test]
    fn several_items_add_up() {
        let e = ent(&[vec![base("price_pro", 1), base("price_team", 2), base("price_unknown", 9)]]);
        assert_eq!(e.allowance, 9000);
    }

    #[test]
    fn top_ups_wait_for_the_period_start() {
        let fs = facts(&change(START + 15 * DAY, ("price_basic", 1), ("price_pro", 1)), credits);
        assert_eq!(entitlement(END, None, &fs).allowance, 0);
        assert_eq!(entitlement(END, Some(START), &fs).allowance, 2000);
    }

    #[test]
    fn order_does_not_matter() {
        let inv = vec![
            vec![base("price_basic", 1)],
            change(START + 5 * DAY, ("price_basic", 1), ("price_pro", 1)),
            change(START + 9 * DAY, ("price_pro", 1), ("price_basic", 1)),
            change(START + 20 * DAY, ("price_basic", 1), ("price_team", 2)),
        ];
        let want = ent(&inv);
        let mut rev = inv.clone();
        rev.reverse();
        assert_eq!(ent(&rev), want);
        // Monotone: a prefix never entitles to more than the whole.
        for n in 0..inv.len() {
            assert!(ent(&inv[..n]).allowance <= want.allowance);
        }
    }

    #[test]
    fn both_line_shapes() {
        let basil = json!({"lines": {"data": [
            {"amount": -500, "quantity": 1, "period": {"start": START + 15 * DAY, "end": END},
             "parent": {"type": "subscription_item_details", "subscription_item_details": {"proration": true,
                 "proration_details": {"credited_items": {"invoice": "in_0", "invoice_line_items": ["il_0"]}}}},
             "pricing": {"type": "price_details", "price_details": {"price": "price_basic", "product": "prod_b"}}},
            {"amount": 2500, "quantity": 1, "period": {"start": START + 15 * DAY, "end": END},
             "parent": {"type": "subscription_item_details", "subscription_item_details": {"proration": true, "proration_details": {"credited_items": null}}},
             "pricing": {"type": "price_details", "price_details": {"price": "price_pro", "product": "prod_p"}}}
        ]}});
        let older = json!({"lines": {"data": [
            {"amount": -500, "quantity": 1, "period": {"start": START + 15 * DAY, "end": END}, "proration": true,
             "price": {"id": "price_basic"}},
            {"amount": 2500, "quantity": 1, "period": {"start": START + 15 * DAY, "end": END}, "proration": true,
             "price": {"id": "price_pro"}}
        ]}});
        let want = vec![Fact { period_end: END, start: None, base: 0, old: 1000, new: 5000, change_at: Some(START + 15 * DAY) }];
        assert_eq!(facts(&lines(&basil), credits), want);
        // several changes billed on one invoice (pending prorations at a renewal) are
        // prorated each from its own instant, each bounded by its own sides
        let mut two = change(START + 5 * DAY, ("price_team", 7), ("price_unknown", 1));
        two.extend(change(START + 6 * DAY, ("price_unknown", 1), ("price_basic", 1)));
        two.extend(change(START + 7 * DAY, ("price_basic", 1), ("price_team", 7)));
        let e = ent(&[vec![base("price_team", 7)], two]);
        assert_eq!(e.ceiling, 14_000);
        assert_eq!(e.allowance, 14_000);
        assert_eq!(facts(&lines(&basil), credits), want);
        assert_eq!(facts(&lines(&older), credits), want);
        assert_eq!(invoiced_items(&lines(&basil)), vec![("price_pro".to_string(), 1)]);
    }

    #[test]
    fn a_free_plans_credit_line_is_told_by_its_credited_items() {
        let v = json!({"lines": {"data": [
            {"amount": 0, "period": {"start": START, "end": END}, "proration": true,
             "proration_details": {"credited_items": {"invoice": "in_0"}}, "price": {"id": "price_pro"}},
            {"amount": 0, "period": {"start": START, "end": END}, "proration": true, "price": {"id": "price_basic"}}
        ]}});
        let l = lines(&v);
        assert!(l[0].credit && !l[1].credit);
    }

    #[test]
    fn changes_in_one_instant_pass_through_their_middle_state() {
        // free (100) -> basic -> pro in the same second: one change, free -> pro
        let at = START + 5 * DAY;
        let free = |credit| Line { price: Some("price_free".into()), quantity: 1, start: Some(at), end: END, proration: true, credit };
        let mut ls = change(at, ("price_basic", 1), ("price_pro", 1));
        ls.insert(0, free(true));
        ls.insert(1, Line { credit: false, ..change(at, ("price_basic", 1), ("price_pro", 1))[0].clone() });
        let credits = |p: &str| if p == "price_free" { Some(100) } else { credits(p) };
        let fs = facts(&ls, credits);
        assert_eq!((fs[0].old, fs[0].new), (100, 5000));
        // seats 3 -> 5 -> 7 at once: 3 -> 7
        let mut seats = change(at, ("price_team", 3), ("price_team", 5));
        seats.extend(change(at, ("price_team", 5), ("price_team", 7)));
        let fs = facts(&seats, super::tests::credits);
        assert_eq!((fs[0].old, fs[0].new), (6000, 14_000));
    }

    #[test]
    fn plan_in_force_is_the_largest_item() {
        assert_eq!(plan_in_force([("basic", 1000, 1), ("pro", 5000, 1)]), Some("pro"));
        assert_eq!(plan_in_force([("team", 2000, 3), ("pro", 5000, 1)]), Some("team"));
        assert_eq!(plan_in_force([("b", 10, 1), ("a", 10, 1)]), Some("a"));
        assert_eq!(plan_in_force(std::iter::empty()), None);
    }

    #[test]
    fn top_up_is_clamped_to_the_period() {
        let f = Fact { period_end: END, start: None, base: 0, old: 0, new: 3000, change_at: Some(START - DAY) };
        assert_eq!(top_up(&f, START, END), 3000);
        let f = Fact { change_at: Some(END + DAY), ..f };
        assert_eq!(top_up(&f, START, END), 0);
    }
}
