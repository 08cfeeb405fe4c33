//! The ledger's rules as pure functions over one customer's state: grant ordering,
//! allocation, holds, expiry catch-up, refunds. No Postgres here, so all of it is
//! unit-tested with plain `#[test]`s; `store.rs` loads the state and writes the results.
//!
//! Accounts. Every journal line moves credits on one account:
//! - `Grant(id)`: a grant's remaining credits (never negative);
//! - `Debt`: the overdraft account, negative while the customer owes credits; a new
//!   grant repays it first. It can be positive when an overdrawn debit is refunded
//!   after the debt was repaid: such credits never expire and are spent after grants;
//! - `Borrow(hold)`: what an active hold took beyond the grants (overdraft), until it
//!   is settled (it becomes `Debt`) or released.
//!
//! The spendable balance is the sum of all accounts, counting grants only while live.

/// Timestamps are Postgres `TimestampTz` microseconds; `NEVER` is `'infinity'`.
pub type Ts = i64;
pub const NEVER: Ts = i64::MAX;
pub type Id = [u8; 16];

#[derive(Clone, Copy, PartialEq, Eq, Debug, Hash, PartialOrd, Ord)]
pub enum Acct {
    Grant(Id),
    Debt,
    Borrow(Id),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Grant {
    pub id: Id,
    pub remaining: i64,
    pub expires_at: Ts,
    pub priority: i32,
    /// Journal sequence number of the grant's creation: "oldest first" among equals.
    pub seq: i64,
}

impl Grant {
    pub fn live(&self, now: Ts) -> bool {
        self.expires_at > now
    }
    /// The documented consumption order: soonest expiry first (never-expiring last),
    /// then higher priority, then oldest.
    pub fn order_key(&self) -> (Ts, std::cmp::Reverse<i32>, i64) {
        (self.expires_at, std::cmp::Reverse(self.priority), self.seq)
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Hold {
    pub id: Id,
    /// Where the held credits came from, in allocation order (positive amounts).
    pub lines: Vec<(Acct, i64)>,
    pub expires_at: Ts,
}

impl Hold {
    pub fn amount(&self) -> i64 {
        self.lines.iter().map(|l| l.1).sum()
    }
    pub fn borrowed(&self) -> i64 {
        self.lines.iter().filter(|l| matches!(l.0, Acct::Borrow(_))).map(|l| l.1).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Grant,
    Debit,
    Hold,
    Settle,
    Release,
    Refund,
    Expiry,
    Revocation,
    /// Credits moved between the accounts of a slotted customer (one entry in each).
    Transfer,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Grant => "grant",
            Kind::Debit => "debit",
            Kind::Hold => "hold",
            Kind::Settle => "settle",
            Kind::Release => "release",
            Kind::Refund => "refund",
            Kind::Expiry => "expiry",
            Kind::Revocation => "revocation",
            Kind::Transfer => "transfer",
        }
    }
    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "grant" => Kind::Grant,
            "debit" => Kind::Debit,
            "hold" => Kind::Hold,
            "settle" => Kind::Settle,
            "release" => Kind::Release,
            "refund" => Kind::Refund,
            "expiry" => Kind::Expiry,
            "revocation" => Kind::Revocation,
            "transfer" => Kind::Transfer,
            _ => return None,
        })
    }
}

/// A journal entry produced by the rules (the store adds ids, keys and metadata).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub kind: Kind,
    pub at: Ts,
    /// Signed balance movements per account; the entry's amount is their sum.
    pub lines: Vec<(Acct, i64)>,
    pub grant: Option<Id>,
    pub hold: Option<Id>,
}

impl Entry {
    pub fn amount(&self) -> i64 {
        self.lines.iter().map(|l| l.1).sum()
    }
}

/// One customer's ledger state, as far as a given operation needs it.
#[derive(Clone, Debug, Default)]
pub struct Book {
    /// Grants with credits left (others may be present with `remaining == 0`).
    pub grants: Vec<Grant>,
    /// Active holds (status active; they may be past their ttl until caught up).
    pub holds: Vec<Hold>,
    /// The overdraft account (negative = debt).
    pub od: i64,
    /// Sum of all accounts as of the last journal entry (grants counted while live then).
    pub balance: i64,
    pub overdraft_limit: i64,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insufficient {
    pub requested: i64,
    pub available: i64,
}

impl Book {
    pub fn sort(&mut self) {
        self.grants.sort_by_key(|g| g.order_key());
    }

    fn grant_mut(&mut self, id: &Id) -> Option<&mut Grant> {
        self.grants.iter_mut().find(|g| &g.id == id)
    }

    /// Applies signed lines to the accounts this book tracks and to the running balance.
    /// `Borrow` lines are bookkept on the holds themselves by their callers.
    pub fn apply(&mut self, lines: &[(Acct, i64)]) {
        for &(acct, d) in lines {
            match acct {
                Acct::Grant(id) => {
                    if let Some(g) = self.grant_mut(&id) {
                        g.remaining += d;
                    }
                }
                Acct::Debt => self.od += d,
                Acct::Borrow(_) => {}
            }
            self.balance += d;
        }
    }

    /// The earliest instant at which something expires without anyone writing to this
    /// customer (a grant with credits left, or an active hold): the cached balance is
    /// exact until then.
    pub fn next_event(&self) -> Ts {
        let g = self.grants.iter().filter(|g| g.remaining > 0).map(|g| g.expires_at).min();
        let h = self.holds.iter().map(|h| h.expires_at).min();
        g.unwrap_or(NEVER).min(h.unwrap_or(NEVER))
    }

    /// Writes down everything that expired by `now`, in time order: holds past their ttl
    /// give their credits back (to grants that may themselves have expired meanwhile),
    /// grants past `expires_at` lose what is left. `clock` is the time of the last entry
    /// already written; entry times never go below it, so the journal stays in order.
    pub fn catch_up(&mut self, now: Ts, clock: Ts) -> Vec<Entry> {
        let mut out = Vec::new();
        let mut clock = clock;
        loop {
            let hold = self
                .holds
                .iter()
                .enumerate()
                .filter(|(_, h)| h.expires_at <= now)
                .min_by_key(|(_, h)| (h.expires_at, h.id))
                .map(|(i, h)| (i, h.expires_at));
            let grant = self
                .grants
                .iter()
                .enumerate()
                .filter(|(_, g)| g.remaining > 0 && g.expires_at <= now)
                .min_by_key(|(_, g)| g.order_key())
                .map(|(i, g)| (i, g.expires_at));
            // At the same instant a hold lapses first, so what it returns to a grant
            // expiring then expires with it.
            match (hold, grant) {
                (Some((i, ht)), g) if g.is_none_or(|(_, gt)| ht <= gt) => {
                    let h = self.holds.remove(i);
                    clock = clock.max(ht);
                    let lines: Vec<(Acct, i64)> = h.lines.iter().map(|&(a, x)| (a, x)).collect();
                    self.apply(&lines);
                    out.push(Entry { kind: Kind::Release, at: clock, lines, grant: None, hold: Some(h.id) });
                }
                (_, Some((i, gt))) => {
                    clock = clock.max(gt);
                    let g = &self.grants[i];
                    let lines = vec![(Acct::Grant(g.id), -g.remaining)];
                    let id = g.id;
                    self.apply(&lines);
                    out.push(Entry { kind: Kind::Expiry, at: clock, lines, grant: Some(id), hold: None });
                }
                _ => break,
            }
        }
        out
    }

    /// What taking `amount` would draw from: live grants in order, then `rest` (the
    /// overdraft account, or a hold's borrow account) within the overdraft limit.
    /// Positive amounts; the book must be caught up to `now`.
    pub fn allocate(&self, amount: i64, now: Ts, rest: Acct) -> Result<Vec<(Acct, i64)>, Insufficient> {
        let available = self.balance.saturating_add(self.overdraft_limit);
        if amount > available {
            return Err(Insufficient { requested: amount, available: available.max(0) });
        }
        let mut need = amount;
        let mut lines = Vec::new();
        for g in self.grants.iter().filter(|g| g.live(now) && g.remaining > 0) {
            if need == 0 {
                break;
            }
            let x = need.min(g.remaining);
            lines.push((Acct::Grant(g.id), x));
            need -= x;
        }
        if need > 0 {
            lines.push((rest, need));
        }
        Ok(lines)
    }

    /// A new grant's lines: it first repays any debt.
    pub fn grant_lines(&self, id: Id, amount: i64) -> Vec<(Acct, i64)> {
        let repay = amount.min((-self.od).max(0));
        let mut lines = vec![(Acct::Grant(id), amount - repay)];
        if repay > 0 {
            lines.push((Acct::Debt, repay));
        }
        lines
    }
}

/// How a settle of `actual` against a hold splits: what is consumed (provenance, in
/// order), what goes back, and what must be taken beyond the hold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SettlePlan {
    pub consumed: Vec<(Acct, i64)>,
    pub returned: Vec<(Acct, i64)>,
    pub extra: i64,
}

pub fn settle_plan(hold: &Hold, actual: i64) -> SettlePlan {
    let mut left = actual;
    let mut consumed = Vec::new();
    let mut returned = Vec::new();
    for &(a, x) in &hold.lines {
        let c = left.min(x);
        if c > 0 {
            consumed.push((a, c));
        }
        if x > c {
            returned.push((a, x - c));
        }
        left -= c;
    }
    SettlePlan { consumed, returned, extra: left }
}

/// The journal lines of a settle: credits returned to their accounts, the consumed part
/// of the hold's borrowing turned into debt, and `extra_lines` (positive, from
/// [`Book::allocate`]) taken beyond the hold.
pub fn settle_lines(hold_id: Id, plan: &SettlePlan, extra_lines: &[(Acct, i64)]) -> Vec<(Acct, i64)> {
    let mut lines: Vec<(Acct, i64)> = plan.returned.clone();
    let borrowed: i64 = plan.consumed.iter().filter(|l| l.0 == Acct::Borrow(hold_id)).map(|l| l.1).sum();
    if borrowed > 0 {
        lines.push((Acct::Borrow(hold_id), borrowed));
        lines.push((Acct::Debt, -borrowed));
    }
    lines.extend(extra_lines.iter().map(|&(a, x)| (a, -x)));
    merge(lines)
}

/// Provenance of a settle for later refunds: the hold's consumed grants, borrowing as
/// debt, then the extra.
pub fn settle_consumed(hold_id: Id, plan: &SettlePlan, extra_lines: &[(Acct, i64)]) -> Vec<(Acct, i64)> {
    let mut c: Vec<(Acct, i64)> = plan.consumed.iter().map(|&(a, x)| (if a == Acct::Borrow(hold_id) { Acct::Debt } else { a }, x)).collect();
    c.extend_from_slice(extra_lines);
    c
}

/// Which accounts a refund of `amount` (all that is left when `None`) returns credits to:
/// the reverse of consumption order, so the credits a debit took last come back first.
/// `consumed` is the debit's provenance, `refunded` what earlier refunds returned.
pub fn refund_plan(consumed: &[(Acct, i64)], refunded: &[(Acct, i64)], amount: Option<i64>) -> Result<Vec<(Acct, i64)>, i64> {
    let mut left_per: Vec<(Acct, i64)> = Vec::new();
    for &(a, x) in consumed {
        left_per.push((a, x));
    }
    // Earlier refunds were taken from the back too; subtract them the same way.
    for &(a, mut x) in refunded {
        for l in left_per.iter_mut().rev().filter(|l| l.0 == a) {
            let t = x.min(l.1);
            l.1 -= t;
            x -= t;
        }
    }
    let refundable: i64 = left_per.iter().map(|l| l.1).sum();
    let want = amount.unwrap_or(refundable);
    if want > refundable || want <= 0 {
        return Err(refundable);
    }
    let mut need = want;
    let mut out = Vec::new();
    for &(a, x) in left_per.iter().rev() {
        if need == 0 {
            break;
        }
        let t = need.min(x);
        if t > 0 {
            out.push((a, t));
            need -= t;
        }
    }
    Ok(merge(out))
}

/// Sums lines per account, keeping first-seen order and dropping zeros.
pub fn merge(lines: Vec<(Acct, i64)>) -> Vec<(Acct, i64)> {
    let mut out: Vec<(Acct, i64)> = Vec::with_capacity(lines.len());
    for (a, x) in lines {
        if let Some(l) = out.iter_mut().find(|l| l.0 == a) {
            l.1 += x;
        } else {
            out.push((a, x));
        }
    }
    out.retain(|l| l.1 != 0);
    out
}

pub fn negate(lines: &[(Acct, i64)]) -> Vec<(Acct, i64)> {
    lines.iter().map(|&(a, x)| (a, -x)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u8) -> Id {
        let mut b = [0u8; 16];
        b[15] = n;
        b
    }
    fn g(n: u8, remaining: i64, expires_at: Ts, priority: i32) -> Grant {
        Grant { id: id(n), remaining, expires_at, priority, seq: n as i64 }
    }
    fn book(grants: Vec<Grant>) -> Book {
        let balance = grants.iter().map(|g| g.remaining).sum();
        let mut b = Book { grants, balance, ..Default::default() };
        b.sort();
        b
    }

    #[test]
    fn order_is_soonest_expiry_then_priority_then_oldest() {
        let b = book(vec![g(1, 10, NEVER, 9), g(2, 10, 500, 0), g(3, 10, 500, 5), g(4, 10, 100, 0), g(5, 10, 500, 5)]);
        let order: Vec<u8> = b.grants.iter().map(|g| g.id[15]).collect();
        assert_eq!(order, vec![4, 3, 5, 2, 1]);
    }

    #[test]
    fn allocation_spans_grants_then_overdraft() {
        let mut b = book(vec![g(1, 30, 100, 0), g(2, 50, NEVER, 0)]);
        assert_eq!(b.allocate(60, 0, Acct::Debt).unwrap(), vec![(Acct::Grant(id(1)), 30), (Acct::Grant(id(2)), 30)]);
        assert_eq!(b.allocate(81, 0, Acct::Debt), Err(Insufficient { requested: 81, available: 80 }));
        b.overdraft_limit = 10;
        assert_eq!(b.allocate(85, 0, Acct::Debt).unwrap().last(), Some(&(Acct::Debt, 5)));
        assert!(b.allocate(91, 0, Acct::Debt).is_err());
        // An expired grant is not drawn from (once caught up it has no credits anyway).
        assert_eq!(b.allocate(10, 100, Acct::Debt).unwrap(), vec![(Acct::Grant(id(2)), 10)]);
    }

    #[test]
    fn grant_repays_debt_first() {
        let mut b = book(vec![]);
        b.od = -40;
        b.balance = -40;
        assert_eq!(b.grant_lines(id(9), 100), vec![(Acct::Grant(id(9)), 60), (Acct::Debt, 40)]);
        assert_eq!(b.grant_lines(id(9), 30), vec![(Acct::Grant(id(9)), 0), (Acct::Debt, 30)]);
    }

    #[test]
    fn catch_up_expires_in_time_order_and_returns_lapsed_holds() {
        // Grant 1 expires at 100 while a hold (lapsing at 150) holds 20 of it: the 20 come
        // back at 150 to an expired grant and expire at once.
        let mut b = book(vec![g(1, 30, 100, 0), g(2, 50, 300, 0)]);
        b.holds.push(Hold { id: id(7), lines: vec![(Acct::Grant(id(1)), 20)], expires_at: 150 });
        b.balance = 80; // the hold already took its 20 out of grant 1's remaining (30 left)
        let e = b.catch_up(200, 0);
        let kinds: Vec<(Kind, Ts, i64)> = e.iter().map(|e| (e.kind, e.at, e.amount())).collect();
        assert_eq!(kinds, vec![(Kind::Expiry, 100, -30), (Kind::Release, 150, 20), (Kind::Expiry, 150, -20)]);
        assert_eq!(b.balance, 50);
        assert!(b.holds.is_empty());
        assert_eq!(b.next_event(), 300);
        // Nothing left to do until 300; then grant 2 expires.
        assert!(b.catch_up(299, 150).is_empty());
        assert_eq!(b.catch_up(300, 150)[0].lines, vec![(Acct::Grant(id(2)), -50)]);
    }

    #[test]
    fn catch_up_never_goes_back_in_time() {
        let mut b = book(vec![g(1, 30, 100, 0)]);
        let e = b.catch_up(500, 400);
        assert_eq!(e[0].at, 400);
    }

    #[test]
    fn settle_within_and_beyond_the_hold() {
        let h = Hold { id: id(7), lines: vec![(Acct::Grant(id(1)), 30), (Acct::Grant(id(2)), 50), (Acct::Borrow(id(7)), 20)], expires_at: 900 };
        let p = settle_plan(&h, 40);
        assert_eq!(p.consumed, vec![(Acct::Grant(id(1)), 30), (Acct::Grant(id(2)), 10)]);
        assert_eq!(p.returned, vec![(Acct::Grant(id(2)), 40), (Acct::Borrow(id(7)), 20)]);
        assert_eq!(settle_lines(id(7), &p, &[]), vec![(Acct::Grant(id(2)), 40), (Acct::Borrow(id(7)), 20)]);
        let p = settle_plan(&h, 110);
        assert_eq!(p.extra, 10);
        let extra = [(Acct::Debt, 10)];
        assert_eq!(settle_lines(id(7), &p, &extra), vec![(Acct::Borrow(id(7)), 20), (Acct::Debt, -30)]);
        assert_eq!(settle_consumed(id(7), &p, &extra).iter().map(|l| l.1).sum::<i64>(), 110);
    }

    #[test]
    fn refunds_go_back_last_in_first_out_and_never_twice() {
        let consumed = vec![(Acct::Grant(id(1)), 30), (Acct::Grant(id(2)), 50), (Acct::Debt, 20)];
        let r1 = refund_plan(&consumed, &[], Some(60)).unwrap();
        assert_eq!(r1, vec![(Acct::Debt, 20), (Acct::Grant(id(2)), 40)]);
        let r2 = refund_plan(&consumed, &r1, None).unwrap();
        assert_eq!(r2, vec![(Acct::Grant(id(2)), 10), (Acct::Grant(id(1)), 30)]);
        let mut all = r1.clone();
        all.extend(r2);
        assert_eq!(refund_plan(&consumed, &all, None), Err(0));
        assert_eq!(refund_plan(&consumed, &r1, Some(41)), Err(40));
    }

    #[test]
    fn merge_sums_and_drops_zeros() {
        let m = merge(vec![(Acct::Debt, 5), (Acct::Grant(id(1)), 3), (Acct::Debt, -5), (Acct::Grant(id(1)), 4)]);
        assert_eq!(m, vec![(Acct::Grant(id(1)), 7)]);
    }
}
