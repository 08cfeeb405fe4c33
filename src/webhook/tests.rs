//! `#[pg_test]`s of webhook ingestion: the providers' vectors, real payload shapes wrapped
//! into signed deliveries, ordering, duplicates, failures and replay.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::webhook::signature::{sign_standard, sign_stripe};
    use pgrx::prelude::*;
    use serde_json::{json, Value};

    const SECRET: &str = "whsec_pgtest";
    const T0: i64 = 1_900_000_000; // 2030-03-17

    fn setup() {
        Spi::run(
            "CREATE FUNCTION pg_temp.sqlstate_of(q text) RETURNS text LANGUAGE plpgsql AS $$
             BEGIN EXECUTE q; RETURN 'ok'; EXCEPTION WHEN OTHERS THEN RETURN SQLSTATE; END $$",
        )
        .unwrap();
        clock(T0);
        Spi::run(&format!("SELECT billing.add_endpoint('s', 'stripe'); SELECT billing.add_secret('s', '{SECRET}')")).unwrap();
        Spi::run("SELECT billing.define_plan('pro', '{chat}', 500, '3 days', 'price_pro')").unwrap();
    }

    fn clock(unix: i64) {
        Spi::run(&format!("SET LOCAL billing.clock = '{}'", q::<String>(&format!("SELECT to_timestamp({unix})::text")))).unwrap();
    }

    fn q<T: FromDatum + IntoDatum>(sql: &str) -> T {
        Spi::get_one::<T>(sql).unwrap_or_else(|e| panic!("{sql}: {e}")).unwrap_or_else(|| panic!("{sql}: NULL"))
    }

    fn state(sql: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT pg_temp.sqlstate_of($1)", &[sql.into()]).unwrap().unwrap()
    }

    fn event(id: &str, kind: &str, created: i64, object: Value) -> String {
        json!({"id": id, "object": "event", "api_version": "2025-03-31.basil", "type": kind, "created": created,
               "livemode": false, "data": {"object": object}})
        .to_string()
    }

    fn headers(body: &str, t: i64) -> String {
        json!({ "Stripe-Signature": sign_stripe(SECRET, t, body.as_bytes()), "Content-Type": "application/json" }).to_string()
    }

    /// Ingests a signed delivery; returns its status.
    fn ingest(body: &str) -> String {
        Spi::get_one_with_args::<String>("SELECT status FROM billing.ingest('s', $1::jsonb, $2)", &[headers(body, T0).into(), body.into()])
            .unwrap()
            .unwrap()
    }

    fn ingest_state(endpoint: &str, headers: &str, body: &str) -> String {
        state(&format!("SELECT billing.ingest({}, {}::jsonb, {})", lit(endpoint), lit(headers), lit(body)))
    }

    fn lit(s: &str) -> String {
        format!("$lit${s}$lit$")
    }

    fn events() -> i64 {
        q("SELECT count(*) FROM billing.events")
    }

    fn clean() {
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.verify()"), 0, "verify() reports inconsistencies");
    }

    fn fixture(path: &str) -> Value {
        let p = format!("{}/tests/vectors/stripe-events/{path}", env!("CARGO_MANIFEST_DIR"));
        serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
    }

    /// An event's row stays whole (`toast_tuple_target`): a Stripe body of ~5 KB, once
    /// compressed, is not sent to the TOAST table; a body too large to fit still is.
    #[pg_test]
    fn event_rows_keep_their_bodies() {
        setup();
        let toasted = || {
            q::<i64>(
                "SELECT coalesce(sum(n_tup_ins), 0)::int8 FROM pg_stat_xact_all_tables
                  WHERE relid = (SELECT reltoastrelid FROM pg_class WHERE oid = 'billing.events'::regclass)",
            )
        };
        // As Stripe sends them: pretty-printed, with no effect here (and no customer of
        // another test's).
        let body = |id: &str, name: &str| {
            let v = fixture(name);
            let mut o = if v["object"].is_object() { v["object"].clone() } else { v };
            o["customer"] = json!("cus_event_rows");
            let e: Value = serde_json::from_str(&event(id, "invoice.finalized", T0 - 60, o)).unwrap();
            serde_json::to_string_pretty(&e).unwrap()
        };
        let usual = body("evt_event_rows_1", "invoice.payment_failed.json");
        assert!(usual.len() > 4_500, "{}", usual.len());
        assert_eq!(ingest(&usual), "ignored");
        assert_eq!(toasted(), 0, "a {} byte event went to the TOAST table", usual.len());
        let large = body("evt_event_rows_2", "invoice.json");
        assert!(large.len() > 12_000, "{}", large.len());
        assert_eq!(ingest(&large), "ignored");
        assert!(toasted() > 0, "a {} byte event stayed whole", large.len());
    }

    /// An endpoint's provider and secrets read by their indexes are those the statement
    /// reads: none, one, several (any order), and no endpoint.
    #[pg_test]
    fn endpoints_by_their_indexes_are_the_statements() {
        use crate::webhook::ingest::endpoint_by;
        Spi::run(
            "SELECT billing.add_endpoint('ep-none', 'stripe'); SELECT billing.add_endpoint('ep-one', 'stripe');
             SELECT billing.add_secret('ep-one', 'whsec_ep_1'); SELECT billing.add_endpoint('ep-two', 'stripe');
             SELECT billing.add_secret('ep-two', 'whsec_ep_b'); SELECT billing.add_secret('ep-two', 'whsec_ep_a')",
        )
        .unwrap();
        Spi::connect_mut(|c| {
            for (e, want) in [("ep-none", 0), ("ep-one", 1), ("ep-two", 2), ("ep-missing", 0)] {
                let (p, mut s) = endpoint_by(c, e, true).unwrap();
                let (p2, mut s2) = endpoint_by(c, e, false).unwrap();
                s.sort();
                s2.sort();
                assert_eq!((&p, &s), (&p2, &s2), "{e}");
                assert_eq!((p.is_some(), s.len()), (e != "ep-missing", want), "{e}");
            }
        });
    }

    #[pg_test]
    fn known_answer_vectors_through_sql() {
        let raw = include_str!("../../tests/vectors/signature-known-answers.json");
        let v: Value = serde_json::from_str(raw).unwrap();
        let mut n = 0;
        for c in v["cases"].as_array().unwrap() {
            let expected = match c["expected"].as_str() {
                Some("valid") => true,
                Some("invalid") => false,
                _ => continue, // signing-only cases are covered by the unit tests
            };
            let (provider, headers) = match c.get("stripe_signature_header").and_then(Value::as_str) {
                Some(h) => ("stripe", json!({ "Stripe-Signature": h })),
                None => ("standard", c["headers"].clone()),
            };
            let tol = c["tolerance_seconds"].as_i64().unwrap_or(300);
            Spi::run(&format!("SET billing.webhook_tolerance = {tol}")).unwrap();
            let got = Spi::get_one_with_args::<bool>(
                "SELECT billing.verify_signature($1, ARRAY[$2], $3::jsonb, $4, to_timestamp($5))",
                &[
                    provider.into(),
                    c["secret"].as_str().unwrap().into(),
                    headers.to_string().into(),
                    c["payload"].as_str().unwrap().into(),
                    (c["now"].as_i64().unwrap() as f64).into(),
                ],
            )
            .unwrap()
            .unwrap();
            assert_eq!(got, expected, "case {}", c["id"]);
            n += 1;
        }
        let decisive = v["cases"].as_array().unwrap().iter().filter(|c| c["expected"] != "sign").count();
        assert_eq!(n, decisive);
    }

    /// Headers are read off the jsonb in place: names in any case, only string values,
    /// other members ignored, and nothing from headers that are not an object. The event
    /// keeps the headers as they came.
    #[pg_test]
    fn headers_are_matched_case_insensitively_and_stored_as_given() {
        setup();
        let body = event("evt_h", "customer.updated", T0, json!({"id": "cus_h", "object": "customer"}));
        let sig = sign_stripe(SECRET, T0, body.as_bytes());
        let verify = |h: &Value| {
            Spi::get_one_with_args::<bool>(
                &format!("SELECT billing.verify_signature('stripe', ARRAY[$1], $2::jsonb, $3, to_timestamp({T0}))"),
                &[SECRET.into(), h.to_string().into(), body.as_str().into()],
            )
            .unwrap()
            .unwrap()
        };
        assert!(verify(&json!({"STRIPE-SIGNATURE": sig, "x-count": 5, "x-nested": {"stripe-signature": "no"}, "x-list": ["a"]})));
        assert!(!verify(&json!({"stripe-signature": 5})));
        assert!(!verify(&json!({"x": {"Stripe-Signature": sig}})));
        assert!(!verify(&json!([{"Stripe-Signature": sig}])));
        assert!(!verify(&json!(sig)));
        let h = json!({"sTrIpE-sIgNaTuRe": sig, "X-Count": 5, "Content-Type": "application/json"});
        assert_eq!(ingest_state("s", &h.to_string(), &body), "ok");
        assert!(q::<bool>(&format!("SELECT headers = {}::jsonb FROM billing.events WHERE event_id = 'evt_h'", lit(&h.to_string()))));
        assert_eq!(ingest_state("s", "[]", &body.replace("evt_h", "evt_i")), "BL010");
        clean();
    }

    #[pg_test]
    fn bad_deliveries_store_nothing() {
        setup();
        let body = event("evt_x", "customer.updated", T0, json!({"id": "cus_x", "object": "customer"}));
        assert_eq!(ingest_state("s", &headers(&body, T0), &body.replace("cus_x", "cus_y")), "BL010");
        assert_eq!(ingest_state("s", r#"{"Stripe-Signature": "t=1,v0=abc"}"#, &body), "BL010");
        assert_eq!(ingest_state("s", "{}", &body), "BL010");
        assert_eq!(ingest_state("s", &headers(&body, T0 - 301), &body), "BL011");
        assert_eq!(ingest_state("s", &headers(&body, T0 + 301), &body), "BL011");
        assert_eq!(ingest_state("s", &headers("not json", T0), "not json"), "BL012");
        assert_eq!(ingest_state("s", &headers("{\"id\": 1}", T0), "{\"id\": 1}"), "BL012");
        assert_eq!(ingest_state("nope", &headers(&body, T0), &body), "BL013");
        Spi::run("SET billing.webhook_max_bytes = 1024").unwrap();
        let big = event("evt_big", "customer.updated", T0, json!({"id": "cus_x", "pad": "x".repeat(2000)}));
        assert_eq!(ingest_state("s", &headers(&big, T0), &big), "BL014");
        assert_eq!(events(), 0);
        // within the tolerance both ways
        Spi::run("RESET billing.webhook_max_bytes").unwrap();
        assert_eq!(ingest_state("s", &headers(&body, T0 - 300), &body), "ok");
        clean();
    }

    #[pg_test]
    fn rotation_any_current_secret_verifies() {
        setup();
        Spi::run("SELECT billing.add_secret('s', 'whsec_new')").unwrap();
        let body = event("evt_r", "customer.updated", T0, json!({"id": "cus_x"}));
        let h = json!({ "Stripe-Signature": sign_stripe("whsec_new", T0, body.as_bytes()) }).to_string();
        assert_eq!(ingest_state("s", &h, &body), "ok");
        assert!(q::<bool>(&format!("SELECT billing.remove_secret('s', '{SECRET}')")));
        let body2 = event("evt_r2", "customer.updated", T0, json!({"id": "cus_x"}));
        assert_eq!(ingest_state("s", &headers(&body2, T0), &body2), "BL010");
        assert_eq!(state("SELECT billing.add_secret('nope', 'x')"), "BL013");
        assert_eq!(state("SELECT billing.add_endpoint('e', 'paypal')"), "22023");
    }

    #[pg_test]
    fn standard_webhooks_endpoint() {
        setup();
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        Spi::run(&format!("SELECT billing.add_endpoint('sw', 'standard'); SELECT billing.add_secret('sw', '{secret}')")).unwrap();
        let body = r#"{"type": "invoice.paid", "data": {}}"#;
        let sig = sign_standard(secret, "msg_1", T0, body.as_bytes()).unwrap();
        let h = json!({ "svix-id": "msg_1", "svix-timestamp": T0.to_string(), "svix-signature": sig }).to_string();
        assert_eq!(ingest_state("sw", &h, body), "ok");
        assert_eq!(q::<String>("SELECT status FROM billing.events WHERE event_id = 'msg_1'"), "ignored");
        assert_eq!(q::<String>(&format!("SELECT status FROM billing.ingest('sw', {}::jsonb, {})", lit(&h), lit(body))), "duplicate");
    }

    #[pg_test]
    fn top_up_grants_once_per_payment_and_refunds_revoke_in_proportion() {
        setup();
        let cs = event(
            "evt_1",
            "checkout.session.completed",
            T0,
            json!({"id": "cs_1", "object": "checkout.session", "mode": "payment",
            "payment_status": "paid", "payment_intent": "pi_1", "client_reference_id": "u1", "customer": "cus_1",
            "amount_total": 1500, "currency": "usd", "metadata": {"credits": "3000"}}),
        );
        let pi = event(
            "evt_2",
            "payment_intent.succeeded",
            T0 + 1,
            json!({"id": "pi_1", "object": "payment_intent", "status": "succeeded",
            "amount": 1500, "amount_received": 1500, "currency": "usd", "customer": "cus_1", "metadata": {"credits": "3000"}}),
        );
        // the intent first: its customer (cus_1) is not known yet, so it waits...
        assert_eq!(ingest(&pi), "failed");
        // ...until the session names the customer and links cus_1: the intent then applies
        assert_eq!(ingest(&cs), "applied");
        assert_eq!(q::<String>("SELECT status FROM billing.events WHERE event_id = 'evt_2'"), "applied");
        assert_eq!(ingest(&cs), "duplicate");
        assert_eq!(q::<i64>("SELECT billing.balance('u1')"), 3000);
        // the real partial-refund shape (500 of 1500), pointed at this payment
        let mut ch = fixture("charge.refunded.json")["object"].clone();
        ch["payment_intent"] = json!("pi_1");
        let r1 = event("evt_3", "charge.refunded", T0 + 2, ch.clone());
        assert_eq!(ingest(&r1), "applied");
        assert_eq!(q::<i64>("SELECT billing.balance('u1')"), 2000);
        // the same cumulative refund in another event, and a re-rendered duplicate: once
        let r1b = event("evt_3b", "charge.refunded", T0 + 3, ch.clone());
        assert_eq!(ingest(&r1b), "applied");
        let variant = r1.replace("2025-03-31.basil", "2026-07-29.dahlia");
        assert_eq!(ingest(&variant), "duplicate");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.event_variants WHERE event_id = 'evt_3'"), 1);
        assert_eq!(q::<i64>("SELECT billing.balance('u1')"), 2000);
        // a late, lower amount_refunded changes nothing; the rest of the refund revokes the rest
        ch["amount_refunded"] = json!(1500);
        assert_eq!(ingest(&event("evt_4", "charge.refunded", T0 + 4, ch.clone())), "applied");
        assert_eq!(q::<i64>("SELECT billing.balance('u1')"), 0);
        ch["amount_refunded"] = json!(500);
        assert_eq!(ingest(&event("evt_5", "charge.refunded", T0 + 5, ch)), "applied");
        assert_eq!(q::<i64>("SELECT billing.balance('u1')"), 0);
        assert_eq!(q::<i64>("SELECT revoked FROM billing.grant_status WHERE customer = 'u1'"), 3000);
        clean();
    }

    #[pg_test]
    fn top_up_mapping_precedence_and_unpaid_sessions() {
        setup();
        Spi::run("SELECT billing.define_topup('usd:1000', 777)").unwrap();
        let mk = |id: &str, md: Value, status: &str| {
            event(
                &format!("evt_{id}"),
                "checkout.session.completed",
                T0,
                json!({"id": format!("cs_{id}"), "mode": "payment",
                "payment_status": status, "payment_intent": format!("pi_{id}"), "client_reference_id": "u2",
                "amount_total": 1000, "currency": "usd", "metadata": md}),
            )
        };
        assert_eq!(ingest(&mk("a", json!({"credits": "5"}), "paid")), "applied"); // metadata wins
        assert_eq!(ingest(&mk("b", json!({}), "paid")), "applied"); // then the amount mapping
        assert_eq!(ingest(&mk("c", json!({}), "unpaid")), "applied"); // nothing until paid
        assert_eq!(q::<i64>("SELECT billing.balance('u2')"), 5 + 777);
        Spi::run("DELETE FROM billing.topup_credits").unwrap();
        assert_eq!(ingest(&mk("d", json!({}), "paid")), "failed");
        // a payment intent without metadata.credits (an invoice's) is not a top-up
        let pi = event("evt_pi", "payment_intent.succeeded", T0, json!({"id": "pi_x", "status": "succeeded", "amount": 1000, "customer": "cus_9"}));
        assert_eq!(ingest(&pi), "ignored");
        clean();
    }

    #[pg_test]
    fn unknown_legacy_and_thin_events_are_ignored() {
        setup();
        let legacy = fixture("event_pre_2017-05-25.json").to_string();
        assert_eq!(ingest(&legacy), "ignored");
        let unknown = fixture("event_unknown_object.json").to_string().replace("evt_123", "evt_124");
        assert_eq!(ingest(&unknown), "ignored");
        let thin = json!({"id": "evt_thin", "object": "v2.core.event", "type": "v1.billing.meter.no_meter_found", "created": T0,
                          "related_object": {"id": "mtr_1"}})
        .to_string();
        assert_eq!(ingest(&thin), "ignored");
        assert_eq!(events(), 3);
    }

    /// The real shapes of a subscription's lifecycle (pay-rails fixtures), re-addressed
    /// to one subscription and customer `n`, in Stripe's order of `created`.
    fn lifecycle(n: usize) -> Vec<String> {
        let sub = format!("sub_{n}");
        let cus = format!("cus_{n}");
        let end1 = T0 + 30 * 86_400;
        let end2 = T0 + 60 * 86_400;
        let mut created = fixture("subscription.created.json")["object"].clone();
        created["id"] = json!(sub);
        created["customer"] = json!(cus);
        created["status"] = json!("active");
        created["current_period_end"] = json!(end1);
        created["items"]["data"][0]["price"]["id"] = json!("price_pro");
        let invoice_paid = json!({"id": format!("in_{n}"), "object": "invoice", "customer": cus, "status": "paid",
            "parent": {"type": "subscription_details", "subscription_details": {"subscription": sub}},
            "lines": {"data": [{"period": {"start": T0, "end": end1}, "pricing": {"price_details": {"price": "price_pro"}}}]}});
        let mut updated = fixture("subscription.updated.json")["object"].clone();
        updated["id"] = json!(sub);
        updated["customer"] = json!(cus);
        updated["status"] = json!("active");
        updated["cancel_at_period_end"] = json!(true);
        updated["items"]["data"][0]["price"]["id"] = json!("price_pro");
        updated["items"]["data"][0]["current_period_end"] = json!(end2);
        let mut failed = fixture("invoice.payment_failed.json")["object"].clone();
        failed["id"] = json!(format!("in_{n}b"));
        failed["customer"] = json!(cus);
        failed["parent"]["subscription_details"]["subscription"] = json!(sub);
        let mut deleted = fixture("subscription.deleted.json")["object"].clone();
        deleted["id"] = json!(sub);
        deleted["customer"] = json!(cus);
        deleted["current_period_end"] = json!(end2); // the last snapshot has the latest period
        deleted["items"]["data"][0]["price"]["id"] = json!("price_pro");
        vec![
            event(&format!("evt_{n}_1"), "customer.subscription.created", T0 + 1, created),
            event(&format!("evt_{n}_2"), "invoice.paid", T0 + 2, invoice_paid),
            event(&format!("evt_{n}_3"), "customer.subscription.updated", T0 + 3, updated),
            event(&format!("evt_{n}_4"), "invoice.payment_failed", T0 + 4, failed),
            event(&format!("evt_{n}_5"), "customer.subscription.deleted", T0 + 5, deleted),
        ]
    }

    fn permutations(n: usize) -> Vec<Vec<usize>> {
        if n == 0 {
            return vec![vec![]];
        }
        let mut out = vec![];
        for p in permutations(n - 1) {
            for i in 0..=p.len() {
                let mut q = p.clone();
                q.insert(i, n - 1);
                out.push(q);
            }
        }
        out
    }

    fn final_state(n: usize) -> String {
        q(&format!(
            "SELECT concat_ws('|', s.status, s.plan, s.current_period_end, s.cancel_at_period_end, s.paid_through,
                              billing.balance('c{n}'), (SELECT count(*) FROM billing.grants g WHERE g.customer = 'c{n}'))
               FROM billing.subscriptions s WHERE s.customer = 'c{n}'"
        ))
    }

    #[pg_test]
    fn every_lifecycle_order_ends_in_the_same_state() {
        setup();
        let perms = permutations(5);
        assert_eq!(perms.len(), 120);
        let mut states = std::collections::BTreeMap::new();
        for (n, p) in perms.iter().enumerate() {
            Spi::run(&format!("SELECT billing.link_customer('c{n}', 'cus_{n}')")).unwrap();
            let evs = lifecycle(n);
            for (k, &i) in p.iter().enumerate() {
                ingest(&evs[i]);
                // a duplicate of an earlier delivery, interleaved: changes nothing
                let dup = &evs[p[(k * 7 + n) % (k + 1)]];
                assert_eq!(ingest(dup), "duplicate");
            }
            assert_eq!(q::<i64>(&format!("SELECT count(*) FROM billing.events WHERE event_id LIKE 'evt\\_{n}\\_%' AND status = 'failed'")), 0);
            states.entry(final_state(n)).or_insert_with(Vec::new).push(n);
        }
        assert_eq!(states.len(), 1, "final states differ by order: {states:?}");
        let s = states.keys().next().unwrap();
        assert!(s.starts_with("canceled|pro|"), "{s}");
        assert!(s.ends_with("|500|1"), "{s}"); // the allowance of the paid invoice, once
        clean();
    }

    #[pg_test]
    fn stale_events_change_nothing() {
        setup();
        Spi::run("SELECT billing.link_customer('c', 'cus_0')").unwrap();
        let evs = lifecycle(0);
        assert_eq!(ingest(&evs[4]), "applied"); // deleted
        assert_eq!(ingest(&evs[0]), "stale"); // a late created never resurrects it
        assert_eq!(q::<String>("SELECT status FROM billing.subscriptions"), "canceled");
        let payment_failed = &evs[3];
        assert_eq!(ingest(payment_failed), "applied");
        assert_eq!(q::<String>("SELECT status FROM billing.subscriptions"), "canceled");
    }

    #[pg_test]
    fn unknown_customers_wait_and_linking_applies_in_order() {
        setup();
        let evs = lifecycle(7);
        assert_eq!(ingest(&evs[2]), "failed");
        assert_eq!(ingest(&evs[0]), "failed");
        assert!(q::<String>("SELECT detail FROM billing.events WHERE event_id = 'evt_7_3'").contains("cus_7 is not linked"));
        let applied: i64 = q("SELECT count(*) FROM billing.link_customer('c7', 'cus_7') WHERE status = 'applied'");
        assert_eq!(applied, 2);
        assert!(q::<bool>("SELECT cancel_at_period_end FROM billing.subscriptions")); // updated (T0+3) last
        assert_eq!(state("SELECT billing.link_customer('other', 'cus_7')"), "22023");
        assert_eq!(state("SELECT billing.link_customer(NULL, 'cus_7')"), "22023");
    }

    #[pg_test]
    fn failed_events_are_kept_and_replayed() {
        setup();
        Spi::run("SELECT billing.link_customer('c', 'cus_5')").unwrap();
        let evs = lifecycle(5);
        Spi::run("DELETE FROM billing.plans").unwrap();
        // invoice.paid whose plan is unknown: failed, kept with the error
        assert_eq!(ingest(&evs[1]), "failed");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.failed_events"), 1);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.grants"), 0);
        Spi::run("SELECT billing.define_plan('pro', '{chat}', 500, '3 days', 'price_pro')").unwrap();
        assert_eq!(q::<String>("SELECT status FROM billing.replay('evt_5_2')"), "applied");
        assert_eq!(q::<i32>("SELECT attempts FROM billing.events WHERE event_id = 'evt_5_2'"), 2);
        assert_eq!(q::<i64>("SELECT billing.balance('c')"), 500);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.replay_failed()"), 0);
        assert_eq!(state("SELECT billing.replay('evt_nope')"), "BL003");
        clean();
    }

    #[pg_test]
    fn disputes_freeze_until_won() {
        setup();
        let cs = event(
            "evt_1",
            "checkout.session.completed",
            T0,
            json!({"id": "cs_1", "mode": "payment", "payment_status": "paid",
            "payment_intent": "pi_1", "client_reference_id": "u", "amount_total": 100, "currency": "usd", "metadata": {"credits": "100"}}),
        );
        ingest(&cs);
        let d = |id: &str, t: i64, status: &str, kind: &str| event(id, kind, t, json!({"id": "dp_1", "payment_intent": "pi_1", "status": status}));
        assert_eq!(ingest(&d("evt_d1", T0 + 1, "needs_response", "charge.dispute.created")), "applied");
        assert_eq!(state("SELECT billing.debit('u', 1, 'k')"), "BL004");
        assert_eq!(ingest(&d("evt_d3", T0 + 3, "won", "charge.dispute.closed")), "applied");
        assert_eq!(ingest(&d("evt_d2", T0 + 2, "under_review", "charge.dispute.updated")), "stale");
        assert_eq!(state("SELECT billing.debit('u', 1, 'k')"), "ok");
    }

    /// A slotted customer: a refund's revocation gathers the slots, so it takes the top-up's
    /// credits wherever they sit; a dispute freezes every slot until it is won.
    #[pg_test]
    fn slotted_customers_are_revoked_and_frozen_whole() {
        setup();
        let cs = event(
            "evt_1",
            "checkout.session.completed",
            T0,
            json!({"id": "cs_1", "object": "checkout.session", "mode": "payment",
            "payment_status": "paid", "payment_intent": "pi_1", "client_reference_id": "u1", "customer": "cus_1",
            "amount_total": 1500, "currency": "usd", "metadata": {"credits": "3000"}}),
        );
        assert_eq!(ingest(&cs), "applied");
        Spi::run("SELECT billing.set_slots('u1', 4)").unwrap();
        let in_slot = |k: i32, tag: &str| (0..).map(|i| format!("{tag}{i}")).find(|key| crate::ledger::slots::slot_of_key(key, 4) == k).unwrap();
        assert_eq!(state(&format!("SELECT billing.debit('u1', 100, '{}')", in_slot(2, "a"))), "ok");
        // 500 of 1500 refunded: a third of the 3000 credits is revoked, from every slot
        let mut ch = fixture("charge.refunded.json")["object"].clone();
        ch["payment_intent"] = json!("pi_1");
        assert_eq!(ingest(&event("evt_3", "charge.refunded", T0 + 2, ch)), "applied");
        assert_eq!(q::<i64>("SELECT billing.balance('u1')"), 1900);
        assert_eq!(q::<i64>("SELECT revoked FROM billing.grant_status WHERE customer = 'u1'"), 1000);
        clean();
        let d = |id: &str, t: i64, status: &str, kind: &str| event(id, kind, t, json!({"id": "dp_1", "payment_intent": "pi_1", "status": status}));
        assert_eq!(ingest(&d("evt_d1", T0 + 3, "needs_response", "charge.dispute.created")), "applied");
        for k in 0..4 {
            assert_eq!(state(&format!("SELECT billing.debit('u1', 1, '{}')", in_slot(k, "f"))), "BL004", "slot {k}");
        }
        assert_eq!(ingest(&d("evt_d2", T0 + 4, "won", "charge.dispute.closed")), "applied");
        for k in 0..4 {
            assert_eq!(state(&format!("SELECT billing.debit('u1', 1, '{}')", in_slot(k, "w"))), "ok", "slot {k}");
        }
        assert_eq!(q::<i64>("SELECT billing.balance('u1')"), 1896);
        clean();
    }

    #[pg_test]
    fn inbox_insert_path() {
        setup();
        let body = event("evt_in", "customer.updated", T0, json!({"id": "cus_x"}));
        let ins = format!("INSERT INTO billing.inbox (endpoint, headers, body) VALUES ('s', {}::jsonb, {})", lit(&headers(&body, T0)), lit(&body));
        Spi::run(&ins).unwrap();
        Spi::run(&ins).unwrap(); // a duplicate INSERT succeeds and adds nothing
        assert_eq!(events(), 1);
        assert_eq!(q::<i32>("SELECT deliveries FROM billing.events"), 2);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.inbox"), 0);
        let bad = format!("INSERT INTO billing.inbox (endpoint, headers, body) VALUES ('s', '{{}}'::jsonb, {})", lit(&body));
        assert_eq!(state(&bad), "BL010");
    }

    /// What an applied event writes, and only that: the purchase names its grant as the
    /// grant was made (one statement, no update), the access note is written when the
    /// customer's access changes and not for an event that leaves it as it was, and a
    /// provider customer linked to one customer stays linked when an event names another.
    #[pg_test]
    fn applied_events_write_what_changed() {
        setup();
        let cs = |id: &str, pi: &str, app: &str| {
            event(
                id,
                "checkout.session.completed",
                T0,
                json!({"id": format!("cs_{pi}"), "object": "checkout.session", "mode": "payment",
                "payment_status": "paid", "payment_intent": pi, "client_reference_id": app, "customer": "cus_w",
                "amount_total": 500, "currency": "usd", "metadata": {"credits": "1000"}}),
            )
        };
        let notes = || q::<i64>("SELECT count(*) FROM billing.outbox WHERE kind = 'access_changed' AND customer = 'w1'");
        assert_eq!(ingest(&cs("evt_w1", "pi_w1", "w1")), "applied");
        assert_eq!(notes(), 1);
        assert_eq!(ingest(&cs("evt_w2", "pi_w2", "w1")), "applied");
        assert_eq!(notes(), 1, "access unchanged: no second note");
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.purchases p JOIN billing.grants g ON g.customer = p.customer AND g.id = p.grant_id WHERE p.customer = 'w1'"), 2);
        assert_eq!(q::<i64>("SELECT billing.balance('w1')"), 2000);
        // another customer named with the same provider customer: made, and not linked
        assert_eq!(ingest(&cs("evt_w3", "pi_w3", "w2")), "applied");
        assert_eq!(q::<String>("SELECT string_agg(customer, ',') FROM billing.provider_customers WHERE provider_customer = 'cus_w'"), "w1");
        assert_eq!(q::<i64>("SELECT billing.balance('w2')"), 1000);
        // a freeze changes access: noted again
        Spi::run("SELECT billing.set_frozen('w1')").unwrap();
        assert_eq!(notes(), 2);
        clean();
    }
}
