//! Who may do what, now: the access decision as a pure function of the customer's
//! subscription, plan and credits. No Postgres here; `access/api.rs` loads the inputs.
//!
//! Order of the checks:
//! 1. unknown customer: `no_plan`; frozen (open dispute, or an operator): `frozen`;
//! 2. a subscription that still counts (see `subscription_reason`), then the feature;
//! 3. no such subscription: prepaid credits allow (`active`, no plan), else
//!    `canceled` if a subscription ended, `no_credits` if it ever had credits, else
//!    `no_plan`.
pub type Ts = i64;

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sub {
    pub status: String,
    pub plan: Option<String>,
    pub features: Vec<String>,
    pub grace_us: i64,
    pub period_end: Option<Ts>,
    pub paid_through: Option<Ts>,
    pub cancel_at_period_end: bool,
    pub trial_end: Option<Ts>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Customer {
    pub known: bool,
    pub frozen: bool,
    pub balance: i64,
    pub ever_granted: bool,
    pub sub: Option<Sub>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    Active,
    Trialing,
    Grace,
    PastDue,
    Canceled,
    Frozen,
    NoPlan,
    NoFeature,
    NoCredits,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Active => "active",
            Reason::Trialing => "trialing",
            Reason::Grace => "grace",
            Reason::PastDue => "past_due",
            Reason::Canceled => "canceled",
            Reason::Frozen => "frozen",
            Reason::NoPlan => "no_plan",
            Reason::NoFeature => "no_feature",
            Reason::NoCredits => "no_credits",
        }
    }
    pub fn allowed(self) -> bool {
        matches!(self, Reason::Active | Reason::Trialing | Reason::Grace)
    }
    /// The SQLSTATE an operation that requires access raises for this reason.
    pub fn sqlstate(self) -> &'static str {
        match self {
            Reason::NoCredits => crate::error::INSUFFICIENT,
            _ => crate::error::DENIED,
        }
    }
}

/// What a subscription alone says at `now`; `None` when it no longer counts (ended).
///
/// - Paid through a date: access to that date, whatever the dunning state says.
/// - `cancel_at_period_end`: access until the period ends, exactly.
/// - `trialing` until `trial_end`; `active` until the period end.
/// - Past due (or a period or trial that ran out with no renewal seen yet): `grace`
///   for the plan's grace period from the end of what was paid, then `past_due`.
pub fn subscription_reason(s: &Sub, now: Ts) -> Option<Reason> {
    let paid = s.paid_through.is_some_and(|t| now < t);
    let ended = matches!(s.status.as_str(), "canceled" | "incomplete_expired");
    if ended {
        return None;
    }
    if s.cancel_at_period_end && s.period_end.is_some_and(|e| now >= e) {
        return None;
    }
    if paid {
        return Some(if s.status == "trialing" { Reason::Trialing } else { Reason::Active });
    }
    let in_grace = |from: Option<Ts>| match from {
        Some(f) if now < f.saturating_add(s.grace_us) => Reason::Grace,
        _ => Reason::PastDue,
    };
    Some(match s.status.as_str() {
        "trialing" => match s.trial_end {
            Some(t) if now >= t => in_grace(Some(t)),
            _ => Reason::Trialing,
        },
        "active" => match s.period_end {
            Some(e) if now >= e => in_grace(Some(e)),
            _ => Reason::Active,
        },
        "past_due" | "unpaid" => in_grace(s.paid_through.or(s.period_end)),
        // incomplete (first payment pending), paused, anything unknown
        _ => Reason::PastDue,
    })
}

pub fn decide(c: &Customer, feature: Option<&str>, now: Ts) -> Reason {
    if !c.known {
        return Reason::NoPlan;
    }
    if c.frozen {
        return Reason::Frozen;
    }
    if let Some(s) = &c.sub {
        if let Some(r) = subscription_reason(s, now) {
            if r.allowed() {
                if let Some(f) = feature {
                    if !s.features.iter().any(|x| x == f) {
                        return Reason::NoFeature;
                    }
                }
            }
            return r;
        }
    }
    if c.balance > 0 {
        return Reason::Active; // prepaid: credits and no plan
    }
    match (&c.sub, c.ever_granted) {
        (Some(_), _) => Reason::Canceled,
        (None, true) => Reason::NoCredits,
        (None, false) => Reason::NoPlan,
    }
}

// ---- the answer kept on the customer's row ----

/// Instants of a kept answer: `now < NEVER` is never true, `now < FOREVER` always (they
/// are Postgres' '-infinity' and 'infinity').
pub const NEVER: Ts = i64::MIN;
pub const FOREVER: Ts = i64::MAX;
/// The range of a timestamptz (Postgres' MIN_TIMESTAMP and END_TIMESTAMP): an instant
/// outside it behaves as NEVER or FOREVER against every `now`, and is stored as such.
const MIN_TS: Ts = -211_813_488_000_000_000;
const END_TS: Ts = 9_223_371_331_200_000_000;

/// What a customer's chosen subscription says of access at every instant, as two
/// instants (`subscription_reason` is piecewise in `now`, and each piece a prefix):
/// - `counts_until`: the subscription counts (`subscription_reason` is `Some`) exactly
///   while `now < counts_until`; while it counts, credits do not matter (`decide`);
/// - `allowed_until`: it allows exactly while `now < allowed_until` (<= counts_until).
///
/// Kept on the customer's row so that `can_access` reads one row (`kept_allowed`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kept {
    pub counts_until: Ts,
    pub allowed_until: Ts,
}

impl Kept {
    pub const NONE: Kept = Kept { counts_until: NEVER, allowed_until: NEVER };
}

fn storable(t: Ts) -> Ts {
    if t <= MIN_TS {
        NEVER
    } else if t >= END_TS {
        FOREVER
    } else {
        t
    }
}

/// `Kept` of a subscription (None: the customer has none), exactly as
/// `subscription_reason` decides at each instant.
pub fn kept(s: Option<&Sub>) -> Kept {
    let Some(s) = s else { return Kept::NONE };
    if matches!(s.status.as_str(), "canceled" | "incomplete_expired") {
        return Kept::NONE;
    }
    let counts_until = match s.period_end {
        Some(e) if s.cancel_at_period_end => e,
        _ => FOREVER,
    };
    // Grace ends at `from + grace` (saturating, as `subscription_reason` adds); a trial or
    // period that still runs allows until it ends, whatever the grace.
    let grace_end = |from: Ts| from.saturating_add(s.grace_us);
    let by_status = match s.status.as_str() {
        "trialing" => s.trial_end.map_or(FOREVER, |t| t.max(grace_end(t))),
        "active" => s.period_end.map_or(FOREVER, |e| e.max(grace_end(e))),
        "past_due" | "unpaid" => s.paid_through.or(s.period_end).map_or(NEVER, grace_end),
        _ => NEVER,
    };
    let allowed_until = counts_until.min(s.paid_through.unwrap_or(NEVER).max(by_status));
    Kept { counts_until: storable(counts_until), allowed_until: storable(allowed_until) }
}

/// `decide(..).allowed()` from the kept answer: `feature_ok` says whether the kept plan
/// has the feature asked for (true without one), `balance` the customer's credits now.
pub fn kept_allowed(known: bool, frozen: bool, k: Kept, feature_ok: bool, balance: i64, now: Ts) -> bool {
    if !known || frozen {
        return false;
    }
    if now < k.counts_until {
        // A subscription that counts decides alone: past due does not fall back to credits.
        return now < k.allowed_until && feature_ok;
    }
    balance > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    const DAY: i64 = 86_400_000_000;

    fn sub(status: &str) -> Sub {
        Sub {
            status: status.into(),
            plan: Some("pro".into()),
            features: vec!["chat".into()],
            grace_us: 3 * DAY,
            period_end: Some(30 * DAY),
            ..Default::default()
        }
    }
    fn cust(s: Option<Sub>, balance: i64) -> Customer {
        Customer { known: true, balance, ever_granted: balance > 0, sub: s, ..Default::default() }
    }

    #[test]
    fn unknown_and_frozen() {
        assert_eq!(decide(&Customer::default(), None, 0), Reason::NoPlan);
        let mut c = cust(Some(sub("active")), 100);
        c.frozen = true;
        assert_eq!(decide(&c, None, 0), Reason::Frozen);
    }

    #[test]
    fn active_until_the_period_ends_then_grace_then_past_due() {
        let c = cust(Some(sub("active")), 0);
        assert_eq!(decide(&c, None, 30 * DAY - 1), Reason::Active);
        assert_eq!(decide(&c, None, 30 * DAY), Reason::Grace);
        assert_eq!(decide(&c, None, 33 * DAY - 1), Reason::Grace);
        assert_eq!(decide(&c, None, 33 * DAY), Reason::PastDue);
    }

    #[test]
    fn past_due_grace_counts_from_what_was_paid() {
        let mut s = sub("past_due");
        s.paid_through = Some(30 * DAY);
        s.period_end = Some(60 * DAY); // Stripe moved the period on; it is not paid
        let c = cust(Some(s), 0);
        assert_eq!(decide(&c, None, 29 * DAY), Reason::Active, "paid through wins over dunning");
        assert_eq!(decide(&c, None, 30 * DAY), Reason::Grace);
        assert_eq!(decide(&c, None, 33 * DAY - 1), Reason::Grace);
        assert_eq!(decide(&c, None, 33 * DAY), Reason::PastDue);
        assert!(!Reason::PastDue.allowed());
    }

    #[test]
    fn cancel_at_period_end_is_exact() {
        let mut s = sub("active");
        s.cancel_at_period_end = true;
        let c = cust(Some(s), 0);
        assert_eq!(decide(&c, None, 30 * DAY - 1), Reason::Active);
        assert_eq!(decide(&c, None, 30 * DAY), Reason::Canceled);
    }

    #[test]
    fn trials() {
        let mut s = sub("trialing");
        s.trial_end = Some(14 * DAY);
        let c = cust(Some(s), 0);
        assert_eq!(decide(&c, None, 14 * DAY - 1), Reason::Trialing);
        assert_eq!(decide(&c, None, 14 * DAY), Reason::Grace);
        assert_eq!(decide(&c, None, 17 * DAY), Reason::PastDue);
    }

    #[test]
    fn features_and_prepaid() {
        let c = cust(Some(sub("active")), 0);
        assert_eq!(decide(&c, Some("chat"), 0), Reason::Active);
        assert_eq!(decide(&c, Some("images"), 0), Reason::NoFeature);
        assert_eq!(decide(&cust(None, 5), Some("images"), 0), Reason::Active);
        assert_eq!(decide(&cust(None, 0), None, 0), Reason::NoPlan);
        let mut spent = cust(None, 0);
        spent.ever_granted = true;
        assert_eq!(decide(&spent, None, 0), Reason::NoCredits);
        assert_eq!(decide(&cust(Some(sub("canceled")), 0), None, 0), Reason::Canceled);
        assert_eq!(decide(&cust(Some(sub("canceled")), 10), None, 0), Reason::Active, "credits outlive the plan");
    }
}
