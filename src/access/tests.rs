//! `#[pg_test]`s of access, charge, metering, limits and the outbox.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use pgrx::prelude::*;

    use crate::test_sql::{clock, q, state};

    fn setup() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
        Spi::run("SELECT billing.define_plan('pro', '{chat,images}', 0, '3 days', 'price_pro')").unwrap();
    }

    /// (allowed, reason) of billing.access at the current clock.
    fn access(c: &str, feature: Option<&str>) -> (bool, String) {
        let f = feature.map_or("NULL".to_string(), |f| format!("'{f}'"));
        let (a, r) = Spi::get_two::<bool, String>(&format!("SELECT allowed, reason FROM billing.access('{c}', {f})")).unwrap();
        let a = a.unwrap();
        assert_eq!(q::<bool>(&format!("SELECT billing.can_access('{c}', {f})")), a, "can_access agrees with access");
        (a, r.unwrap())
    }

    fn at(t: &str, c: &str) -> (bool, String) {
        clock(t);
        access(c, None)
    }

    /// The access answer kept on the customer's row, as the webhook path keeps it, after a
    /// subscription written by hand.
    fn keep(c: &str) {
        Spi::run(&format!(
            "UPDATE billing.customers c SET sub_counts_until = k.counts_until, sub_allowed_until = k.allowed_until, sub_plan = k.plan
               FROM billing._access_kept k WHERE k.customer = c.customer AND c.customer = '{c}'"
        ))
        .unwrap();
    }

    fn kept_problems() -> String {
        q::<String>("SELECT coalesce(string_agg(customer, ',' ORDER BY customer), '') FROM billing.verify() WHERE check_name = 'access_kept'")
    }

    /// A subscription row as the webhook path writes it.
    fn sub(c: &str, status: &str, period_end: &str, paid_through: Option<&str>, cancel: bool, trial_end: Option<&str>) {
        Spi::run(&format!("INSERT INTO billing.customers (customer) VALUES ('{c}') ON CONFLICT DO NOTHING")).unwrap();
        let opt = |x: Option<&str>| x.map_or("NULL".to_string(), |x| format!("'{x}'"));
        Spi::run(&format!(
            "INSERT INTO billing.subscriptions (customer, provider, subscription_id, status, plan, current_period_end,
                 cancel_at_period_end, trial_end, paid_through, status_created, status_event, updated_at)
             VALUES ('{c}', 'stripe', 'sub_{c}', '{status}', 'pro', '{period_end}', {cancel}, {}, {}, 0, '', now())",
            opt(trial_end),
            opt(paid_through)
        ))
        .unwrap();
        keep(c);
    }

    /// The inputs read by the indexes (`read_direct`) are those the statements read, for
    /// every reader: customers with and without rows, credits, grants and subscriptions
    /// (several, in the readers' order; with a plan, an unknown plan, none), failed events
    /// of the customer or of its provider customer, and one not Stripe's (which the
    /// statement reads).
    #[pg_test]
    fn inputs_by_the_indexes_are_the_statements() {
        use crate::access::api::{read_direct_used, read_inputs_by, Reader};
        setup();
        Spi::run("SELECT billing.define_plan('ib-plan', '{x,y}', 0, '1 mon 2 days 03:04:05', NULL)").unwrap();
        Spi::run(
            "SELECT billing.grant('ib-credits', 10, 'ib-1'); SELECT billing.grant('ib-zero', 5, 'ib-2');
                  SELECT billing.debit('ib-zero', 5, 'ib-3');
                  INSERT INTO billing.customers (customer) VALUES ('ib-empty'), ('ib-subs'), ('ib-failed'), ('ib-other'), ('ib-tie')",
        )
        .unwrap();
        let subs = [
            ("ib-subs", "a", "canceled", Some("pro"), "2030-03-01", None),
            ("ib-subs", "b", "active", Some("ib-plan"), "2030-02-01", None),
            ("ib-subs", "c", "past_due", Some("pro"), "2030-01-10", Some("2030-01-25")),
            ("ib-subs", "d", "active", None, "2030-01-25", None),
            ("ib-failed", "e", "trialing", Some("ghost"), "2030-02-01", None),
            // equal ends: by id; no end: last
            ("ib-tie", "h", "active", Some("pro"), "NULL", None),
            ("ib-tie", "g", "active", None, "2030-01-25", None),
            ("ib-tie", "f", "active", Some("pro"), "2030-01-25", None),
        ];
        for (c, id, status, plan, end, paid) in subs {
            let opt = |x: Option<&str>| x.map_or("NULL".to_string(), |x| format!("'{x}'"));
            Spi::run(&format!(
                "INSERT INTO billing.subscriptions (customer, provider, subscription_id, status, plan, current_period_end,
                     cancel_at_period_end, trial_end, paid_through, status_created, status_event, updated_at)
                 VALUES ('{c}', 'stripe', 'sub_ib_{id}', '{status}', {}, {}, false, NULL, {}, 0, '', now())",
                opt(plan),
                if end == "NULL" { end.to_string() } else { format!("'{end}'") },
                opt(paid)
            ))
            .unwrap();
        }
        let failed = |provider: &str, id: &str, customer: &str, pc: &str| {
            Spi::run(&format!(
                "INSERT INTO billing.events (provider, event_id, endpoint, type, body, headers, received_at, status,
                     last_delivery_at, customer, provider_customer, created)
                 VALUES ('{provider}', '{id}', 'ib', 'x', '{{}}', '{{}}', now(), 'failed', now(), {customer}, {pc}, now())"
            ))
            .unwrap()
        };
        failed("stripe", "evt_ib_1", "'ib-failed'", "NULL");
        failed("stripe", "evt_ib_2", "NULL", "'cus_ib'");
        failed("standard:ib", "evt_ib_3", "'ib-other'", "NULL");
        let now = crate::pg::spi::micros(q::<TimestampWithTimeZone>("SELECT '2030-01-15 00:00:00+00'::timestamptz"));
        let customers = ["ib-none", "ib-credits", "ib-zero", "ib-empty", "ib-subs", "ib-failed", "ib-other", "ib-tie"];
        let readers = [Reader::Allowed, Reader::Access, Reader::Note, Reader::NoteAfterEvent(None), Reader::NoteAfterEvent(Some("cus_ib"))];
        Spi::connect_mut(|c| {
            for cust in customers {
                for (i, r) in readers.iter().enumerate() {
                    let by_index = read_inputs_by(c, cust, now, *r, true).unwrap();
                    let by_statement = read_inputs_by(c, cust, now, *r, false).unwrap();
                    assert!(by_index == by_statement, "customer {cust}, reader {i}: {by_index:?} by the indexes, {by_statement:?} by the statement");
                    // ... and the indexes did read it, but for the event that is not Stripe's.
                    let other = cust == "ib-other" && i >= 3;
                    assert_eq!(read_direct_used(cust, now, *r), !other, "customer {cust}, reader {i}");
                }
            }
        });
        // What the cases cover: the order, a plan's grace, an unknown plan, the waiting events.
        Spi::connect_mut(|c| {
            let (i, _) = read_inputs_by(c, "ib-subs", now, Reader::Access, true).unwrap();
            let s = i.customer.sub.unwrap();
            assert_eq!((s.status.as_str(), s.plan.as_deref()), ("active", Some("ib-plan")));
            assert_eq!(s.features, ["x", "y"]);
            assert_eq!(s.grace_us, ((30 + 2) * 86_400 + 3 * 3600 + 4 * 60 + 5) * 1_000_000);
            let (i, n) = read_inputs_by(c, "ib-failed", now, Reader::NoteAfterEvent(None), true).unwrap();
            assert_eq!((i.customer.sub.unwrap().features.len(), n.events_wait()), (0, true));
            let (_, n) = read_inputs_by(c, "ib-credits", now, Reader::NoteAfterEvent(Some("cus_ib")), true).unwrap();
            assert!(n.events_wait());
            let (_, n) = read_inputs_by(c, "ib-credits", now, Reader::NoteAfterEvent(Some("cus_none")), true).unwrap();
            assert!(!n.events_wait());
            let (i, _) = read_inputs_by(c, "ib-zero", now, Reader::Access, true).unwrap();
            assert!(i.customer.ever_granted && i.customer.known);
            let (i, _) = read_inputs_by(c, "ib-tie", now, Reader::Access, true).unwrap();
            assert_eq!(i.customer.sub.unwrap().plan.as_deref(), Some("pro"), "sub_ib_f before sub_ib_g");
        });
    }

    /// `epoch_micros` is `extract(epoch FROM ...) * 1000000` of the interval.
    #[pg_test]
    fn a_grace_in_microseconds_as_postgres_extracts_it() {
        for i in ["3 days", "1 mon", "13 mons", "1 year 2 mons 3 days 04:05:06.789", "-1 mon -2 days", "25 hours", "-1 year 5 mons", "0"] {
            let v = q::<Interval>(&format!("SELECT '{i}'::interval"));
            let want = q::<i64>(&format!("SELECT (extract(epoch FROM '{i}'::interval) * 1000000)::int8"));
            assert_eq!(crate::access::api::epoch_micros(v.months(), v.days(), v.micros()), want, "{i}");
        }
    }

    #[pg_test]
    fn unknown_prepaid_and_credits() {
        setup();
        assert_eq!(access("nobody", None), (false, "no_plan".into()));
        Spi::run("SELECT billing.grant('p', 10, 'g')").unwrap();
        assert_eq!(access("p", Some("anything")), (true, "active".into()));
        Spi::run("SELECT billing.debit('p', 10, 'd')").unwrap();
        assert_eq!(access("p", None), (false, "no_credits".into()));
        // the balance reported is the spendable one, past expiries included
        Spi::run("SELECT billing.grant('p', 5, 'g2', 'promo', '2030-01-02')").unwrap();
        assert_eq!(at("2030-01-01 23:59:59.999999+00", "p"), (true, "active".into()));
        assert_eq!(at("2030-01-02 00:00:00+00", "p"), (false, "no_credits".into()));
        assert!(!q::<bool>("SELECT billing.can_access(NULL)"));
    }

    #[pg_test]
    fn active_then_grace_then_past_due_at_the_exact_instants() {
        setup();
        sub("a", "active", "2030-02-01 00:00:00+00", Some("2030-02-01 00:00:00+00"), false, None);
        assert_eq!(access("a", Some("chat")), (true, "active".into()));
        assert_eq!(access("a", Some("video")), (false, "no_feature".into()));
        assert_eq!(at("2030-01-31 23:59:59.999999+00", "a"), (true, "active".into()));
        assert_eq!(at("2030-02-01 00:00:00+00", "a"), (true, "grace".into()));
        assert_eq!(at("2030-02-03 23:59:59.999999+00", "a"), (true, "grace".into()));
        assert_eq!(at("2030-02-04 00:00:00+00", "a"), (false, "past_due".into()));
    }

    #[pg_test]
    fn paid_through_wins_over_dunning() {
        setup();
        // the renewal failed (past_due, period moved on) but January is paid
        sub("d", "past_due", "2030-03-01", Some("2030-02-01 00:00:00+00"), false, None);
        assert_eq!(at("2030-01-15", "d"), (true, "active".into()));
        assert_eq!(at("2030-02-01 00:00:00+00", "d"), (true, "grace".into()));
        assert_eq!(at("2030-02-04 00:00:00+00", "d"), (false, "past_due".into()));
    }

    #[pg_test]
    fn cancel_at_period_end_trials_canceled_frozen() {
        setup();
        sub("c", "active", "2030-02-01 00:00:00+00", None, true, None);
        assert_eq!(at("2030-01-31 23:59:59.999999+00", "c"), (true, "active".into()));
        assert_eq!(at("2030-02-01 00:00:00+00", "c"), (false, "canceled".into()));
        clock("2030-01-01");
        sub("t", "trialing", "2030-01-15", None, false, Some("2030-01-15 00:00:00+00"));
        assert_eq!(at("2030-01-14 23:59:59.999999+00", "t"), (true, "trialing".into()));
        assert_eq!(at("2030-01-15 00:00:00+00", "t"), (true, "grace".into()));
        assert_eq!(at("2030-01-18 00:00:00+00", "t"), (false, "past_due".into()));
        sub("x", "canceled", "2030-01-10", None, false, None);
        assert_eq!(access("x", None), (false, "canceled".into()));
        sub("f", "active", "2031-01-01", None, false, None);
        Spi::run("SELECT billing.set_frozen('f')").unwrap();
        assert_eq!(access("f", None), (false, "frozen".into()));
    }

    #[pg_test]
    fn access_follows_webhook_events() {
        setup();
        Spi::run("SELECT billing.add_endpoint('s', 'stripe'); SELECT billing.add_secret('s', 'whsec_a')").unwrap();
        Spi::run("SELECT billing.link_customer('w', 'cus_w')").unwrap();
        let deliver = |id: &str, kind: &str, created: i64, obj: serde_json::Value| {
            let body = serde_json::json!({"id": id, "object": "event", "type": kind, "created": created, "data": {"object": obj}}).to_string();
            let h =
                serde_json::json!({"Stripe-Signature": crate::webhook::signature::sign_stripe("whsec_a", 1893456000, body.as_bytes())}).to_string();
            Spi::get_one_with_args::<String>("SELECT status FROM billing.ingest('s', $1::jsonb, $2)", &[h.into(), body.into()]).unwrap().unwrap()
        };
        let trial_end = 1893456000i64 + 14 * 86400;
        let s = |status: &str| {
            serde_json::json!({"id": "sub_w", "customer": "cus_w", "status": status, "trial_end": trial_end,
            "items": {"data": [{"price": {"id": "price_pro"}, "current_period_end": trial_end}]}})
        };
        assert_eq!(deliver("e1", "customer.subscription.created", 1893456000, s("trialing")), "applied");
        assert_eq!(access("w", None), (true, "trialing".into()));
        let paid = serde_json::json!({"id": "in_1", "customer": "cus_w", "parent": {"subscription_details": {"subscription": "sub_w"}},
            "lines": {"data": [{"period": {"end": trial_end + 30 * 86400}, "price": {"id": "price_pro"}}]}});
        assert_eq!(deliver("e2", "invoice.paid", 1893456001, paid), "applied");
        assert_eq!(access("w", None), (true, "active".into()));
        let failed = serde_json::json!({"id": "in_2", "customer": "cus_w", "parent": {"subscription_details": {"subscription": "sub_w"}}, "lines": {"data": []}});
        assert_eq!(deliver("e3", "invoice.payment_failed", 1893456002, failed), "applied");
        assert_eq!(access("w", None), (true, "active".into()), "paid through the period");
        // written by the webhook code (no trigger): on the row's insert and on each status change
        let notes: String = q("SELECT string_agg(format('%s %s %s>%s', payload->>'subscription', payload->>'plan',
                                                         coalesce(payload->>'from', '-'), payload->>'to'), ', ' ORDER BY id)
                                 FROM billing.outbox WHERE customer = 'w' AND kind = 'subscription_status' AND payload ? 'from'");
        assert_eq!(notes, "sub_w pro ->trialing, sub_w pro trialing>active, sub_w pro active>past_due");
        assert!(q::<i64>("SELECT count(*) FROM billing.outbox WHERE customer = 'w' AND kind = 'access_changed'") >= 2);
    }

    #[pg_test]
    fn rls_policy_hides_rows_of_customers_without_access() {
        setup();
        Spi::run("SELECT billing.grant('has', 10, 'g')").unwrap();
        Spi::run("INSERT INTO billing.customers (customer) VALUES ('hasnt')").unwrap();
        Spi::run(
            "CREATE TABLE public.docs (customer text, body text);
             INSERT INTO public.docs VALUES ('has', 'a'), ('hasnt', 'b'), ('nobody', 'c');
             ALTER TABLE public.docs ENABLE ROW LEVEL SECURITY;
             CREATE POLICY docs_paid ON public.docs USING (billing.can_access(customer));
             CREATE ROLE rls_reader;
             GRANT billing_app TO rls_reader;
             GRANT SELECT ON public.docs TO rls_reader;
             SET ROLE rls_reader",
        )
        .unwrap();
        assert_eq!(q::<String>("SELECT string_agg(body, ',' ORDER BY body) FROM public.docs"), "a");
        Spi::run("RESET ROLE").unwrap();
    }

    #[pg_test]
    fn charge_checks_access_then_debits() {
        setup();
        assert_eq!(state("SELECT billing.charge('nobody', 'chat', 1, 'k')"), "BL003");
        sub("a", "active", "2031-01-01", None, false, None);
        Spi::run("SELECT billing.grant('a', 10, 'g')").unwrap();
        assert_eq!(q::<i64>("SELECT balance_after FROM billing.charge('a', 'chat', 4, 'k1')"), 6);
        assert_eq!(state("SELECT billing.charge('a', 'video', 1, 'k2')"), "BL004");
        assert_eq!(state("SELECT billing.charge('a', 'chat', 7, 'k3')"), "BL001");
        Spi::run("SELECT billing.set_frozen('a')").unwrap();
        assert_eq!(state("SELECT billing.charge('a', 'chat', 1, 'k4')"), "BL004");
        // a retry of a charge that went through replays, whatever access says now
        assert!(q::<bool>("SELECT replayed FROM billing.charge('a', 'chat', 4, 'k1')"));
        assert_eq!(state("SELECT billing.charge('a', 'chat', 0, 'k5')"), "22023");
        assert_eq!(state("SELECT billing.charge('a', 'chat', 1, NULL)"), "22023");
    }

    /// Admission reads the answer without the ever-granted check, and again for the reason
    /// when it refuses: a customer who spent every credit is refused with BL001
    /// (no_credits), one who never had any with BL004 (no_plan).
    #[pg_test]
    fn refusals_keep_their_reason() {
        setup();
        Spi::run("SELECT billing.define_meter('tk', 1, 1, '2029-01-01')").unwrap();
        Spi::run("SELECT billing.grant('spent', 5, 'g')").unwrap();
        Spi::run("SELECT billing.debit('spent', 5, 'd')").unwrap();
        Spi::run("INSERT INTO billing.customers (customer) VALUES ('never')").unwrap();
        for (c, code) in [("spent", "BL001"), ("never", "BL004")] {
            assert_eq!(state(&format!("SELECT billing.charge('{c}', NULL, 1, 'c')")), code, "charge of {c}");
            assert_eq!(state(&format!("SELECT billing.record_usage('{c}', 'tk', 1, 'u')")), code, "record_usage of {c}");
            assert!(!q::<bool>(&format!("SELECT billing.can_access('{c}')")));
        }
        assert_eq!(access("spent", None), (false, "no_credits".into()));
        assert_eq!(access("never", None), (false, "no_plan".into()));
    }

    #[pg_test]
    fn rate_limits_per_customer_then_plan() {
        setup();
        sub("a", "active", "2031-01-01", None, false, None);
        Spi::run("SELECT billing.grant('a', 100, 'g')").unwrap();
        Spi::run("SELECT billing.define_limit('pro', 'chat', 2, '1 minute')").unwrap();
        assert_eq!(state("SELECT billing.charge('a', 'chat', 1, 'k1')"), "ok");
        assert_eq!(state("SELECT billing.charge('a', 'chat', 1, 'k2')"), "ok");
        assert_eq!(state("SELECT billing.charge('a', 'chat', 1, 'k3')"), "BL006");
        assert_eq!(state("SELECT billing.charge('a', 'images', 1, 'k4')"), "ok"); // no limit on images
        clock("2030-01-01 00:00:29.999999+00");
        assert_eq!(state("SELECT billing.charge('a', 'chat', 1, 'k5')"), "BL006");
        clock("2030-01-01 00:00:30+00"); // one request every 30 s
        assert_eq!(state("SELECT billing.charge('a', 'chat', 1, 'k6')"), "ok");
        // a customer's own limit overrides the plan's, with a bucket of its own
        Spi::run("SELECT billing.define_limit('a', 'chat', 100, '1 minute')").unwrap();
        assert_eq!(state("SELECT billing.charge('a', 'chat', 1, 'k7')"), "ok");
        assert_eq!(state("SELECT billing.define_limit('a', 'chat', 0, '1 minute')"), "22023");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.journal WHERE kind = 'debit'"), 5);
    }

    #[pg_test]
    fn rate_limit_precedence() {
        setup();
        sub("rl", "active", "2031-01-01", None, false, None);
        Spi::run("SELECT billing.grant('rl', 100, 'g')").unwrap();
        // The plan's limit for every feature, and a looser one for chat.
        Spi::run("SELECT billing.define_limit('pro', '', 1, '1 minute')").unwrap();
        Spi::run("SELECT billing.define_limit('pro', 'chat', 3, '1 minute')").unwrap();
        assert_eq!(state("SELECT billing.charge('rl', 'images', 1, 'i1')"), "ok");
        assert_eq!(state("SELECT billing.charge('rl', 'images', 1, 'i2')"), "BL006");
        for k in ["c1", "c2", "c3"] {
            assert_eq!(state(&format!("SELECT billing.charge('rl', 'chat', 1, '{k}')")), "ok");
        }
        assert_eq!(state("SELECT billing.charge('rl', 'chat', 1, 'c4')"), "BL006");
        // The customer's own limit for every feature comes before the plan's for chat.
        Spi::run("SELECT billing.define_limit('rl', '', 10, '1 minute')").unwrap();
        assert_eq!(state("SELECT billing.charge('rl', 'chat', 1, 'c5')"), "ok");
        assert_eq!(state("SELECT billing.charge('rl', 'images', 1, 'i3')"), "ok");
    }

    /// record_usage takes one token, from the most specific limit on its meter, as charge
    /// does for a feature (it took one for every feature and a second for the meter, both
    /// from a customer's every-feature bucket, and never applied a plan's meter limit).
    #[pg_test]
    fn record_usage_takes_one_token() {
        setup();
        Spi::run("SELECT billing.define_meter('tk', 1, 1, '2029-01-01')").unwrap();
        Spi::run("SELECT billing.grant('ru', 100, 'g')").unwrap();
        Spi::run("SELECT billing.define_limit('ru', '', 3, '1 minute')").unwrap();
        for k in ["u1", "u2", "u3"] {
            assert_eq!(state(&format!("SELECT billing.record_usage('ru', 'tk', 1, '{k}')")), "ok", "{k}");
        }
        assert_eq!(state("SELECT billing.record_usage('ru', 'tk', 1, 'u4')"), "BL006");
        // A plan's limit on the meter applies to its subscribers.
        sub("rp", "active", "2031-01-01", None, false, None);
        Spi::run("SELECT billing.grant('rp', 100, 'g')").unwrap();
        Spi::run("SELECT billing.define_limit('pro', 'tk', 2, '1 minute')").unwrap();
        assert_eq!(state("SELECT billing.record_usage('rp', 'tk', 1, 'p1')"), "ok");
        assert_eq!(state("SELECT billing.record_usage('rp', 'tk', 1, 'p2')"), "ok");
        assert_eq!(state("SELECT billing.record_usage('rp', 'tk', 1, 'p3')"), "BL006");
        assert_eq!(q::<i64>("SELECT billing.balance('rp')"), 98);
    }

    #[pg_test]
    fn metering_is_exact_and_rated_at_the_price_in_force() {
        setup();
        Spi::run("SELECT billing.grant('m', 100000, 'g')").unwrap();
        Spi::run("SELECT billing.define_meter('tok', 3, 1000, '2029-01-01')").unwrap();
        Spi::run("SELECT billing.define_meter('tok', 5, 1000, '2030-06-01')").unwrap();
        for i in 0..2000 {
            Spi::run(&format!("SELECT billing.record_usage('m', 'tok', 1, 'u{i}')")).unwrap();
        }
        assert_eq!(q::<i64>("SELECT billing.balance('m')"), 100000 - 6);
        // usage that occurred after the price change is rated at the new price
        assert_eq!(q::<i64>("SELECT credits FROM billing.record_usage('m', 'tok', 1000, 'late', '2030-07-01')"), 5);
        assert_eq!(q::<i64>("SELECT credits FROM billing.usage('m', '2029-01-01', '2031-01-01')"), 11);
        assert_eq!(q::<i64>("SELECT quantity FROM billing.usage('m', '2029-01-01', '2031-01-01')"), 3000);
        // idempotent; the same key with other usage is refused
        assert!(q::<bool>("SELECT replayed FROM billing.record_usage('m', 'tok', 1000, 'late', '2030-07-01')"));
        assert_eq!(state("SELECT billing.record_usage('m', 'tok', 999, 'late')"), "BL002");
        assert_eq!(state("SELECT billing.record_usage('m', 'tok', 1, 'g')"), "BL002"); // a grant's key
        assert_eq!(state("SELECT billing.record_usage('m', 'tok', 1000, 'g')"), "BL002"); // ... on a usage that debits
        Spi::run("SELECT billing.debit('m', 5, 'dk')").unwrap();
        assert_eq!(state("SELECT billing.record_usage('m', 'tok', 1000, 'dk', '2030-07-01')"), "BL002"); // a debit's, same amount
        assert_eq!(state("SELECT billing.record_usage('nobody', 'tok', 1000, 'n1')"), "BL003");
        // A usage that would debit under a taken key, by a customer access refuses: the
        // refusal comes first (its debit, which checks the key, is not reached); one
        // worth no credits asks about the key first.
        Spi::run("SELECT billing.grant('fz', 100, 'gz'); SELECT billing.set_frozen('fz')").unwrap();
        assert_eq!(state("SELECT billing.record_usage('fz', 'tok', 1000, 'gz', '2030-07-01')"), "BL004");
        assert_eq!(state("SELECT billing.record_usage('fz', 'tok', 1, 'gz')"), "BL002");
        assert_eq!(state("SELECT billing.record_usage('m', 'nope', 1, 'x')"), "BL003");
        assert_eq!(state("SELECT billing.record_usage('m', 'tok', 1, 'y', '2028-01-01')"), "BL003"); // no price then
        assert_eq!(state("SELECT billing.record_usage('m', 'tok', 0, 'z')"), "22023");
        assert_eq!(state("SELECT billing.record_usage('m', 'tok', 100000000, 'big')"), "BL001");
        assert_eq!(state("SELECT billing.define_meter('bad', 1, 0)"), "22023");
    }

    #[pg_test]
    fn usage_settles_a_hold() {
        setup();
        Spi::run("SELECT billing.grant('m', 100, 'g')").unwrap();
        Spi::run("SELECT billing.define_meter('tok', 1, 10)").unwrap();
        let r: pgrx::Uuid = q("SELECT billing.reserve('m', 50, 'h')");
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.record_usage('m', 'tok', 205, 'stream', reservation_id => '{r}')")), 80);
        assert_eq!(q::<String>(&format!("SELECT status FROM billing.reservations WHERE id = '{r}'")), "settled");
        assert_eq!(state(&format!("SELECT billing.record_usage('other', 'tok', 5, 's2', reservation_id => '{r}')")), "BL003");
    }

    #[pg_test]
    fn outbox_rows_once_per_crossing() {
        setup();
        Spi::run("SELECT billing.grant('o', 100, 'g')").unwrap();
        Spi::run("SELECT billing.set_low_balance('o', 50)").unwrap();
        Spi::run("SELECT billing.set_auto_topup('o', 30, 500, 2, 1)").unwrap();
        for i in 0..6 {
            Spi::run(&format!("SELECT billing.debit('o', 10, 'd{i}')")).unwrap();
            // 90 .. 40
        }
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.outbox WHERE kind = 'low_balance'"), 1);
        Spi::run("SELECT billing.grant('o', 100, 'g2')").unwrap(); // back above: re-armed
        Spi::run("SELECT billing.debit('o', 115, 'd9')").unwrap(); // 140 -> 25: below 50 and 30
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.outbox WHERE kind = 'low_balance'"), 2);
        assert_eq!(q::<String>("SELECT idempotency_key FROM billing.outbox WHERE kind = 'topup_due'"), "topup:o:2030-01:1");
        // one failure is allowed before it stops asking
        Spi::run("SELECT billing.report_topup('o', 'topup:o:2030-01:1', false)").unwrap();
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.outbox WHERE kind = 'topup_due'"), 1);
        // claim and ack
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.claim_outbox(10)"), 3);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.claim_outbox(10)"), 0); // leased
        let first: i64 = q("SELECT min(id) FROM billing.outbox");
        assert!(q::<bool>(&format!("SELECT billing.ack_outbox({first})")));
        assert_eq!(Spi::get_one::<bool>(&format!("SELECT billing.ack_outbox({first})")).unwrap(), Some(false));
        assert_eq!(Spi::get_one::<bool>("SELECT billing.ack_outbox(-1)").unwrap(), Some(false));
    }

    /// The wake-up's state is a lease row, not a session lock: an empty claim writes its
    /// consumer's lease (and holds the wake-up lock only to the end of its transaction), a
    /// claim that returns rows ends it, `wait => '0'` writes none, and expired leases of
    /// other consumers go.
    #[pg_test]
    fn an_empty_claim_leases_a_wait_that_a_busy_claim_ends() {
        setup();
        let lease = |c: &str| q::<i64>(&format!("SELECT count(*) FROM billing.outbox_waiters WHERE consumer = '{c}' AND until > clock_timestamp()"));
        Spi::run("INSERT INTO billing.outbox_waiters VALUES ('dead', clock_timestamp() - interval '1 second')").unwrap();
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.claim_outbox(10, wait => '2 seconds', consumer => 'c1')"), 0);
        assert_eq!(lease("c1"), 1);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.outbox_waiters WHERE consumer = 'dead'"), 0, "an expired lease goes");
        let locks = "SELECT string_agg(mode, ',') FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 16975 AND pid = pg_backend_pid()";
        assert_eq!(q::<String>(locks), "ShareLock");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.claim_outbox(10, wait => '0', consumer => 'c2')"), 0);
        assert_eq!(lease("c2"), 0);
        Spi::run("SELECT billing.grant('o', 100, 'g'); SELECT billing.set_low_balance('o', 50); SELECT billing.debit('o', 60, 'd')").unwrap();
        assert_eq!(lease("c1"), 1, "a row ends no lease");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.claim_outbox(10, consumer => 'c1')"), 1);
        assert_eq!(lease("c1"), 0, "a claim that returns rows ends its consumer's lease");
        // the positional form of 0.8.0 still claims
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.claim_outbox(10, '1 minute')"), 0);
        assert_eq!(lease(""), 1);
    }

    /// The kept answer matches the subscriptions (verify), is mended by maintenance(),
    /// follows a plan's grace, and a corrupted one is reported.
    #[pg_test]
    fn the_kept_answer_is_verified_and_follows_the_plans_grace() {
        setup();
        // the renewal failed: paid through February 1st, grace 3 days
        sub("kg", "past_due", "2030-03-01", Some("2030-02-01 00:00:00+00"), false, None);
        sub("kh", "active", "2030-03-01", None, false, None);
        assert_eq!(kept_problems(), "");
        // a feature is the kept plan's
        assert_eq!(access("kh", Some("images")), (true, "active".into()));
        assert_eq!(access("kh", Some("video")), (false, "no_feature".into()));
        assert_eq!(at("2030-02-05 00:00:00+00", "kg"), (false, "past_due".into()));
        Spi::run("SELECT billing.define_plan('pro', '{chat,images}', 0, '7 days', 'price_pro')").unwrap();
        assert_eq!(kept_problems(), "", "define_plan refreshed its subscribers");
        assert_eq!(access("kg", None), (true, "grace".into()));
        assert_eq!(at("2030-02-08 00:00:00+00", "kg"), (false, "past_due".into()));
        // past due does not fall back to credits, with the kept answer as with the full read
        Spi::run("SELECT billing.grant('kg', 10, 'kept')").unwrap();
        assert_eq!(access("kg", None), (false, "past_due".into()));
        // corrupted: reported, and maintenance() mends it
        Spi::run("UPDATE billing.customers SET sub_allowed_until = 'infinity' WHERE customer = 'kg'").unwrap();
        Spi::run("UPDATE billing.customers SET sub_plan = NULL WHERE customer = 'kh'").unwrap();
        assert_eq!(kept_problems(), "kg,kh");
        Spi::run("SELECT billing.maintenance()").unwrap();
        assert_eq!(kept_problems(), "");
        crate::test_sql::clean();
    }
}
