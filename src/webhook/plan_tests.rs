//! `#[pg_test]`s of Stripe's billing flows: plan changes within a period (upgrades,
//! downgrades, seats, several items), failed renewals retried, the plan in force, and
//! events fetched from the API (`ingest_fetched`). The randomized model of the same rule
//! is pgrx-tests/tests/plan_changes.rs.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::test_sql::{prepare, q, state};
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    const DAY: i64 = 86_400;
    const START: i64 = 1_900_000_000; // 2030-03-17: the clock is pinned inside the period
    const END: i64 = START + 30 * DAY;

    fn setup() {
        prepare(&q::<String>(&format!("SELECT to_timestamp({})::text", START + DAY)));
        Spi::run("SELECT billing.add_endpoint('s', 'stripe')").unwrap();
        Spi::run("SELECT billing.define_plan('basic', '{chat}', 1000, '3 days', 'price_basic')").unwrap();
        Spi::run("SELECT billing.define_plan('pro', '{chat,code}', 5000, '3 days', 'price_pro')").unwrap();
        Spi::run("SELECT billing.define_plan('team', '{chat,code,admin}', 2000, '3 days', 'price_team')").unwrap();
        Spi::run("SELECT billing.define_plan('addon', '{images}', 300, '3 days', 'price_addon')").unwrap();
        Spi::run("SELECT billing.link_customer('u', 'cus_u')").unwrap();
    }

    fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
        json!({"id": id, "object": "event", "api_version": "2025-03-31.basil", "type": kind, "created": created,
               "livemode": false, "data": {"object": object}})
        .to_string()
    }

    /// Hands an event in as fetched from the API; returns its status.
    fn fetch(body: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT status FROM billing.ingest_fetched('s', $1)", &[body.into()]).unwrap().unwrap()
    }

    /// A basil-shaped line: `(price, quantity, amount, proration, start)`.
    fn line(price: &str, qty: i64, amount: i64, proration: bool, start: i64) -> Value {
        json!({"object": "line_item", "amount": amount, "quantity": qty, "period": {"start": start, "end": END},
               "parent": {"type": "subscription_item_details", "subscription_item_details": {"proration": proration,
                   "proration_details": {"credited_items": if proration && amount < 0 { json!({"invoice": "in_x"}) } else { Value::Null }}}},
               "pricing": {"type": "price_details", "price_details": {"price": price, "product": "prod"}}})
    }

    fn invoice(id: &str, reason: &str, lines: Vec<Value>) -> Value {
        json!({"id": id, "object": "invoice", "customer": "cus_u", "status": "paid", "billing_reason": reason,
               "parent": {"type": "subscription_details", "subscription_details": {"subscription": "sub_u"}},
               "lines": {"object": "list", "data": lines}})
    }

    fn created_on(price: &str) -> Value {
        invoice("in_create", "subscription_create", vec![line(price, 1, 1, false, START)])
    }

    fn change(id: &str, at: i64, from: (&str, i64), to: (&str, i64)) -> Value {
        invoice(id, "subscription_update", vec![line(from.0, from.1, -100, true, at), line(to.0, to.1, 400, true, at)])
    }

    fn subscription(items: &[(&str, i64)]) -> Value {
        let items: Vec<Value> = items
            .iter()
            .map(|(p, n)| json!({"object": "subscription_item", "price": {"id": p}, "quantity": n, "current_period_start": START, "current_period_end": END}))
            .collect();
        json!({"id": "sub_u", "object": "subscription", "customer": "cus_u", "status": "active", "items": {"data": items}})
    }

    fn period() -> (i64, i64, i64) {
        let r = Spi::get_three::<i64, i64, i64>(
            "SELECT base, allowance, granted FROM billing.subscription_periods WHERE period_end = to_timestamp(1902592000)",
        )
        .unwrap();
        (r.0.unwrap_or(0), r.1.unwrap_or(0), r.2.unwrap_or(0))
    }

    fn balance() -> i64 {
        q("SELECT billing.balance('u')")
    }

    fn plan() -> String {
        q("SELECT plan FROM billing.subscriptions WHERE subscription_id = 'sub_u'")
    }

    #[pg_test]
    fn an_upgrade_tops_up_the_prorated_difference() {
        setup();
        assert_eq!(END, 1_902_592_000);
        assert_eq!(fetch(&event("e1", "invoice.paid", START, created_on("price_basic"))), "applied");
        assert_eq!(balance(), 1000);
        // pro from mid-period: its proration invoice lists basic's credit first, then pro
        // ("basic" sorts before "pro": the plan must not be taken from a line's order)
        assert_eq!(
            fetch(&event("e2", "invoice.paid", START + 15 * DAY, change("in_up", START + 15 * DAY, ("price_basic", 1), ("price_pro", 1)))),
            "applied"
        );
        assert_eq!(period(), (1000, 3000, 3000));
        assert_eq!(balance(), 3000);
        assert_eq!(plan(), "pro");
        // invoice.payment_succeeded beside invoice.paid, and a redelivery: nothing more
        assert_eq!(
            fetch(&event(
                "e3",
                "invoice.payment_succeeded",
                START + 15 * DAY,
                change("in_up", START + 15 * DAY, ("price_basic", 1), ("price_pro", 1))
            )),
            "applied"
        );
        assert_eq!(fetch(&event("e2", "invoice.paid", START + 15 * DAY, json!({}))), "duplicate");
        assert_eq!(balance(), 3000);
        crate::test_sql::clean();
    }

    #[pg_test]
    fn verify_reports_a_period_whose_grants_do_not_add_up() {
        setup();
        fetch(&event("e1", "invoice.paid", START, created_on("price_pro")));
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.verify()"), 0);
        Spi::run("UPDATE billing.subscription_periods SET granted = granted + 1").unwrap();
        assert_eq!(q::<String>("SELECT string_agg(check_name, ',') FROM billing.verify()"), "plan_period");
    }

    #[pg_test]
    fn downgrades_grant_nothing_and_flipping_is_capped_at_the_largest_plan() {
        setup();
        fetch(&event("e1", "invoice.paid", START, created_on("price_basic")));
        let mut t = START + DAY;
        for k in 0..6 {
            let up = change(&format!("in_up{k}"), t, ("price_basic", 1), ("price_pro", 1));
            let mut down = change(&format!("in_down{k}"), t + 3600, ("price_pro", 1), ("price_basic", 1));
            // the downgrade's invoice is $0 and paid: Stripe credits the unused pro time
            down["amount_paid"] = json!(0);
            fetch(&event(&format!("eu{k}"), "invoice.paid", t, up));
            let before = balance();
            fetch(&event(&format!("ed{k}"), "invoice.paid", t + 3600, down));
            assert_eq!(balance(), before, "a downgrade grants nothing and takes nothing back");
            t += 2 * DAY;
        }
        let (_, allowance, granted) = period();
        assert_eq!((allowance, granted), (5000, 5000));
        assert_eq!(balance(), 5000);
        assert_eq!(plan(), "basic"); // the latest paid invoice's items, no subscription event yet
                                     // the subscription's own events name the plan in force from then on
        fetch(&event("es", "customer.subscription.updated", t, subscription(&[("price_pro", 1)])));
        assert_eq!(plan(), "pro");
        fetch(&event("ed9", "invoice.paid", t + 1, change("in_down9", t + 1, ("price_pro", 1), ("price_basic", 1))));
        assert_eq!(plan(), "pro");
    }

    #[pg_test]
    fn seats_and_several_items_add_up() {
        setup();
        let inv = invoice("in_create", "subscription_create", vec![line("price_team", 3, 1, false, START), line("price_addon", 2, 1, false, START)]);
        fetch(&event("e1", "invoice.paid", START, inv));
        assert_eq!(balance(), 3 * 2000 + 2 * 300);
        // 3 -> 5 seats with 10 of 30 days left: 4000 * 10 / 30 = 1333
        fetch(&event("e2", "invoice.paid", START + 20 * DAY, change("in_seats", START + 20 * DAY, ("price_team", 3), ("price_team", 5))));
        assert_eq!(balance(), 6600 + 1333);
        assert_eq!(plan(), "team");
    }

    #[pg_test]
    fn the_older_line_shape_reads_the_same() {
        setup();
        let old_line = |price: &str, amount: i64, proration: bool, start: i64| {
            json!({"object": "line_item", "type": "subscription", "amount": amount, "quantity": 1, "proration": proration,
                   "period": {"start": start, "end": END}, "price": {"id": price}, "plan": {"id": price}})
        };
        let mut inv = json!({"id": "in_1", "object": "invoice", "customer": "cus_u", "subscription": "sub_u", "billing_reason": "subscription_create",
                             "lines": {"data": [old_line("price_basic", 1000, false, START)]}});
        fetch(&event("e1", "invoice.paid", START, inv.clone()));
        inv["id"] = json!("in_2");
        inv["billing_reason"] = json!("subscription_update");
        inv["lines"]["data"] = json!([old_line("price_basic", -500, true, START + 15 * DAY), old_line("price_pro", 2500, true, START + 15 * DAY)]);
        fetch(&event("e2", "invoice.paid", START + 15 * DAY, inv));
        assert_eq!(balance(), 3000);
    }

    #[pg_test]
    fn an_unpaid_upgrade_changes_features_not_credits() {
        setup();
        fetch(&event("e1", "customer.subscription.created", START, subscription(&[("price_basic", 1)])));
        fetch(&event("e2", "invoice.paid", START, created_on("price_basic")));
        assert!(!q::<bool>("SELECT billing.can_access('u', 'code')"));
        // proration_behavior=create_prorations: the change is billed at the next renewal
        fetch(&event("e3", "customer.subscription.updated", START + 10 * DAY, subscription(&[("price_pro", 1)])));
        assert_eq!(plan(), "pro");
        assert!(q::<bool>("SELECT billing.can_access('u', 'code')"));
        assert_eq!(balance(), 1000);
    }

    #[pg_test]
    fn a_failed_renewal_paid_later_restores_access_and_grants_once() {
        setup();
        fetch(&event("e1", "customer.subscription.created", START, subscription(&[("price_pro", 1)])));
        fetch(&event("e2", "invoice.paid", START, created_on("price_pro")));
        // the renewal for the next period fails, days after the period ended
        let next = |id: &str| {
            let mut i = invoice(id, "subscription_cycle", vec![]);
            i["lines"]["data"] = json!([{"amount": 5000, "quantity": 1, "period": {"start": END, "end": END + 30 * DAY},
                "parent": {"type": "subscription_item_details", "subscription_item_details": {"proration": false}},
                "pricing": {"price_details": {"price": "price_pro"}}}]);
            i
        };
        crate::test_sql::clock(&q::<String>(&format!("SELECT to_timestamp({})::text", END + 4 * DAY)));
        fetch(&event("e3", "invoice.payment_failed", END + 1, next("in_renew")));
        assert_eq!(q::<String>("SELECT status FROM billing.subscriptions"), "past_due");
        assert_eq!(q::<String>("SELECT reason FROM billing.access('u')"), "past_due"); // grace (3 days) is over
                                                                                       // retried after the outage: paid, and payment_succeeded beside it, in either order
        fetch(&event("e5", "invoice.payment_succeeded", END + 4 * DAY, next("in_renew")));
        fetch(&event("e4", "invoice.paid", END + 4 * DAY, next("in_renew")));
        assert_eq!(q::<String>("SELECT status FROM billing.subscriptions"), "active");
        assert!(q::<bool>("SELECT billing.can_access('u', 'code')"));
        assert_eq!(q::<i64>("SELECT granted FROM billing.subscription_periods WHERE period_end = to_timestamp(1905184000)"), 5000);
        assert_eq!(balance(), 5000); // the first period's grant expired at its end
                                     // a late redelivery of the failure does not roll the status back
        fetch(&event("e3b", "invoice.payment_failed", END + 2, next("in_renew")));
        assert_eq!(q::<String>("SELECT status FROM billing.subscriptions"), "active");
    }

    /// Every order of one period's story ends in the same allowance and plan.
    #[pg_test]
    fn every_order_of_a_period_ends_the_same() {
        setup();
        let story = [
            ("customer.subscription.created", START, subscription(&[("price_basic", 1)])),
            ("invoice.paid", START, created_on("price_basic")),
            ("customer.subscription.updated", START + 5 * DAY, subscription(&[("price_pro", 1)])),
            ("invoice.paid", START + 5 * DAY, change("in_up", START + 5 * DAY, ("price_basic", 1), ("price_pro", 1))),
            ("customer.subscription.updated", START + 9 * DAY, subscription(&[("price_team", 2)])),
            ("invoice.paid", START + 9 * DAY, change("in_side", START + 9 * DAY, ("price_pro", 1), ("price_team", 2))),
        ];
        let mut results = std::collections::BTreeSet::new();
        // 6! = 720 orders is slow here; rotations and reversals of it cover first/last for each event
        let mut orders: Vec<Vec<usize>> = vec![];
        for r in 0..story.len() {
            let o: Vec<usize> = (0..story.len()).map(|k| (k + r) % story.len()).collect();
            orders.push(o.iter().rev().copied().collect());
            orders.push(o);
        }
        for (n, order) in orders.iter().enumerate() {
            let (cus, sub) = (format!("cus_{n}"), format!("sub_{n}"));
            Spi::run(&format!("SELECT billing.link_customer('u{n}', '{cus}')")).unwrap();
            for &i in order {
                let (kind, created, obj) = &story[i];
                let body = event(&format!("e{n}_{i}"), kind, *created, obj.clone())
                    .replace("\"cus_u\"", &format!("\"{cus}\""))
                    .replace("\"sub_u\"", &format!("\"{sub}\""));
                assert_ne!(fetch(&body), "failed", "{body}");
            }
            let r = q::<String>(&format!(
                "SELECT concat_ws('|', s.plan, p.base, p.ceiling, p.allowance, p.granted, billing.balance('u{n}'))
                   FROM billing.subscriptions s JOIN billing.subscription_periods p USING (customer, subscription_id)
                  WHERE s.customer = 'u{n}'"
            ));
            results.insert(r);
        }
        // basic 1000; +4000*25/30 = 3333 at day 5 (cap 5000); team x2 = 4000 < pro: no top-up
        assert_eq!(results.into_iter().collect::<Vec<_>>(), vec!["team|1000|5000|4333|4333|4333".to_string()]);
    }

    #[pg_test]
    fn fetched_and_delivered_are_one_event() {
        setup();
        Spi::run("SELECT billing.add_secret('s', 'whsec_x')").unwrap();
        let body = event("e1", "invoice.paid", START, created_on("price_basic"));
        assert_eq!(fetch(&body), "applied");
        assert_eq!(fetch(&body), "duplicate");
        // the webhook arrives after the fetch: a duplicate, as is a re-fetch in another rendering
        let sig = crate::webhook::signature::sign_stripe("whsec_x", START + DAY, body.as_bytes());
        let headers = json!({ "Stripe-Signature": sig }).to_string();
        let st = Spi::get_one_with_args::<String>("SELECT status FROM billing.ingest('s', $1::jsonb, $2)", &[headers.into(), body.clone().into()])
            .unwrap()
            .unwrap();
        assert_eq!(st, "duplicate");
        let pretty = serde_json::to_string_pretty(&serde_json::from_str::<Value>(&body).unwrap()).unwrap();
        assert_eq!(fetch(&pretty), "duplicate");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.event_variants"), 0);
        assert_eq!(balance(), 1000);
        assert_eq!(q::<String>("SELECT via FROM billing.events WHERE event_id = 'e1'"), "fetch");
        let delivered = event("e2", "customer.subscription.created", START + 1, subscription(&[("price_basic", 1)]));
        let sig = crate::webhook::signature::sign_stripe("whsec_x", START + DAY, delivered.as_bytes());
        Spi::get_one_with_args::<String>(
            "SELECT status FROM billing.ingest('s', $1::jsonb, $2)",
            &[json!({ "Stripe-Signature": sig }).to_string().into(), delivered.into()],
        )
        .unwrap();
        assert_eq!(
            q::<String>("SELECT concat_ws('|', delivered, fetched, newest_delivered = to_timestamp(1900000001), newest_fetched = to_timestamp(1900000000)) FROM billing.sync_status"),
            "1|1|t|t"
        );
    }

    #[pg_test]
    fn ingest_fetched_refuses_what_it_cannot_store() {
        setup();
        Spi::run("SELECT billing.add_endpoint('std', 'standard')").unwrap();
        assert_eq!(state("SELECT billing.ingest_fetched('nope', '{}')"), "BL013");
        assert_eq!(state("SELECT billing.ingest_fetched('std', '{\"id\":\"e\",\"type\":\"x\",\"created\":1}')"), "22023");
        assert_eq!(state("SELECT billing.ingest_fetched('s', 'not json')"), "BL012");
        assert_eq!(state("SELECT billing.ingest_fetched('s', '{\"type\":\"x\",\"created\":1}')"), "BL012");
        assert_eq!(state("SELECT billing.ingest_fetched('s', NULL)"), "22023");
        assert_eq!(state(&format!("SELECT billing.ingest_fetched('s', repeat('x', {}))", 2 << 20)), "BL014");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.events"), 0);
        // a fetched event whose customer is not linked waits, failed, like a delivery
        let body = event("e9", "invoice.paid", START, created_on("price_basic")).replace("cus_u", "cus_nobody");
        assert_eq!(fetch(&body), "failed");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.failed_events"), 1);
    }
}
