//! `#[pg_test]`s of slotted customers (`billing.set_slots`): routing by key, replays
//! across slots, gathering when a slot is short, expiry, refunds, holds and freezes in
//! slots, and `verify()` after each. Races are in pgrx-tests/tests/concurrency.rs.
#[cfg(any(test, feature = "pg_test"))]
#[pgrx::pg_schema]
mod tests {
    use crate::ledger::slots::slot_of_key;
    use pgrx::prelude::*;

    use crate::test_sql::{bal, clean, outcome, q, state};

    fn setup() {
        crate::test_sql::prepare("2030-01-01 00:00:00+00");
    }

    /// A key that routes to slot `k` of `n`.
    fn key_in(k: i32, n: i32, tag: &str) -> String {
        (0..).map(|i| format!("{tag}-{i}")).find(|key| slot_of_key(key, n) == k).unwrap()
    }

    #[pg_test]
    fn slotted_debits_route_replay_and_add_up() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('h', 8000, 'g1')");
        q::<pgrx::Uuid>("SELECT billing.grant('h', 800, 'g2', 'promo', '2030-02-01')");
        Spi::run("SELECT billing.set_slots('h', 4)").unwrap();
        assert_eq!(bal("h"), 8800);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.customers WHERE slot_of = 'h'"), 3);
        // Each slot holds a quarter of each grant, on mirrors that keep the expiry.
        assert_eq!(q::<i64>("SELECT balance FROM billing.customers WHERE customer = 'h#2'"), 2200);
        assert_eq!(q::<i64>("SELECT count(*) FROM billing.grants WHERE customer = 'h#3' AND expires_at = '2030-02-01'"), 1);
        clean();
        for i in 0..40 {
            let replayed: bool = q(&format!("SELECT replayed FROM billing.debit('h', 10, 'k{i}')"));
            assert!(!replayed);
        }
        assert_eq!(bal("h"), 8400);
        // The debits landed in more than one account; every retry meets its first entry.
        assert!(q::<i64>("SELECT count(DISTINCT customer) FROM billing.journal WHERE kind = 'debit'") >= 3);
        for i in 0..40 {
            let same: bool = q(&format!(
                "SELECT d.replayed AND d.entry_id = (SELECT entry_id FROM billing.journal WHERE idempotency_key = 'k{i}')
                   FROM billing.debit('h', 10, 'k{i}') d"
            ));
            assert!(same, "retry of k{i}");
        }
        assert_eq!(bal("h"), 8400);
        assert_eq!(state("SELECT billing.debit('h', 11, 'k3')"), "BL002");
        // The promo's credits go first in every slot, as they would unslotted.
        assert_eq!(q::<i64>("SELECT sum(remaining)::int8 FROM billing._grants_now WHERE expires_at = '2030-02-01'"), 400);
        clean();
    }

    #[pg_test]
    fn slot_counts_are_fixed_and_slots_are_not_customers() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('h', 100, 'g1')");
        Spi::run("SELECT billing.set_slots('h', 4)").unwrap();
        assert_eq!(state("SELECT billing.set_slots('h', 4)"), "ok");
        assert_eq!(state("SELECT billing.set_slots('h', 5)"), "22023");
        assert_eq!(state("SELECT billing.set_slots('h', 1)"), "22023");
        assert_eq!(state("SELECT billing.set_slots('x', 65)"), "22023");
        assert_eq!(state("SELECT billing.set_slots('nobody', 4)"), "BL003");
        assert_eq!(state("SELECT billing.set_slots('h#1', 2)"), "22023");
        assert_eq!(state("SELECT billing.debit('h#1', 1, 'a')"), "22023");
        assert_eq!(state("SELECT billing.reserve('h#1', 1, 'a')"), "22023");
        assert_eq!(state("SELECT billing.grant('h#2', 1, 'a')"), "22023");
        assert_eq!(state("SELECT billing.balance('h#3')"), "22023");
        assert_eq!(state("SELECT billing.set_overdraft('h#3', 5)"), "22023");
        // A name taken by a customer cannot become a slot.
        q::<pgrx::Uuid>("SELECT billing.grant('z#1', 1, 'a')");
        q::<pgrx::Uuid>("SELECT billing.grant('z', 1, 'a')");
        assert_eq!(state("SELECT billing.set_slots('z', 2)"), "22023");
        assert_eq!(bal("h"), 100);
        clean();
    }

    #[pg_test]
    fn a_short_slot_gathers_and_spreads_again() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('h', 100, 'g1')");
        Spi::run("SELECT billing.set_slots('h', 4)").unwrap();
        let key = key_in(1, 4, "big");
        // Slot 1 holds 25: a debit of 60 gathers all 100 and runs on the customer's own account.
        let after: i64 = q(&format!("SELECT balance_after FROM billing.debit('h', 60, '{key}')"));
        assert_eq!(after, 40);
        assert_eq!(bal("h"), 40);
        assert_eq!(q::<i64>("SELECT balance FROM billing.customers WHERE customer = 'h#1'"), 10);
        clean();
        // The retry goes to slot 1 again and finds the entry in the customer's journal.
        assert!(q::<bool>(&format!("SELECT replayed FROM billing.debit('h', 60, '{key}')")));
        // More than the total is refused, whatever the slot.
        for k in 0..4 {
            assert_eq!(state(&format!("SELECT billing.debit('h', 41, '{}')", key_in(k, 4, "too-much"))), "BL001");
        }
        assert_eq!(bal("h"), 40);
        // The overdraft limit is the customer's: a gathered debit may use it.
        Spi::run("SELECT billing.set_overdraft('h', 10)").unwrap();
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.debit('h', 45, '{}')", key_in(2, 4, "od"))), -5);
        assert_eq!(bal("h"), -5);
        clean();
        // Credits granted later land on the customer's own account and are spread at the next gather.
        q::<pgrx::Uuid>("SELECT billing.grant('h', 1000, 'g2')");
        assert_eq!(bal("h"), 995);
        let k3 = key_in(3, 4, "after-grant");
        assert_eq!(q::<i64>(&format!("SELECT balance_after FROM billing.debit('h', 1, '{k3}')")), 994);
        assert_eq!(bal("h"), 994);
        clean();
    }

    #[pg_test]
    fn slots_expire_refund_hold_and_freeze_exactly() {
        setup();
        q::<pgrx::Uuid>("SELECT billing.grant('h', 400, 'promo', 'promo', '2030-01-10')");
        q::<pgrx::Uuid>("SELECT billing.grant('h', 800, 'paid')");
        Spi::run("SELECT billing.set_slots('h', 4)").unwrap();
        // A debit of 30 in a slot takes the slot's promo share first (100 of it).
        let entry: pgrx::Uuid = q(&format!("SELECT entry_id FROM billing.debit('h', 30, '{}')", key_in(2, 4, "d")));
        assert_eq!(bal("h"), 1170);
        // Half of it back, to the mirror it came from, in the same slot.
        let after: i64 = q(&format!("SELECT balance_after FROM billing.refund('{entry}', 10)"));
        assert_eq!(after, 280); // the slot's own balance: 300 - 30 + 10
        assert_eq!(bal("h"), 1180);
        // A hold in a slot, settled below its amount.
        let rid: pgrx::Uuid = q(&format!("SELECT billing.reserve('h', 50, '{}')", key_in(3, 4, "r")));
        assert_eq!(bal("h"), 1130);
        Spi::run(&format!("SELECT billing.settle('{rid}', 20)")).unwrap();
        assert_eq!(bal("h"), 1160);
        clean();
        // The promo expires in every slot at its instant.
        Spi::run("SET LOCAL billing.clock = '2030-01-11 00:00:00+00'").unwrap();
        assert_eq!(bal("h"), 800);
        assert!(q::<i64>("SELECT billing.maintenance()") >= 4);
        assert_eq!(bal("h"), 800);
        clean();
        // grant_status: the paid grant's credits sit in the slots, none used there yet.
        assert_eq!(
            q::<String>(
                "SELECT format('%s/%s/%s', used, transferred, remaining) FROM billing.grant_status WHERE customer = 'h' AND source = 'manual'"
            ),
            "0/600/200"
        );
        // A freeze reaches every slot.
        Spi::run("SELECT billing.set_frozen('h')").unwrap();
        for k in 0..4 {
            assert_eq!(state(&format!("SELECT billing.debit('h', 1, '{}')", key_in(k, 4, "frozen"))), "BL004");
        }
        Spi::run("SELECT billing.set_frozen('h', false)").unwrap();
        assert_eq!(state(&format!("SELECT billing.debit('h', 1, '{}')", key_in(1, 4, "thawed"))), "ok");
        // Access sees the total.
        assert_eq!(q::<i64>("SELECT balance FROM billing.access('h', NULL)"), 799);
        assert_eq!(q::<i64>("SELECT billing.balance_at('h', '2030-01-11 00:00:00+00')"), 799);
        assert_eq!(q::<i64>("SELECT billing.balance_at('h', '2030-01-05 00:00:00+00')"), 1160);
        // The low-balance view compares the total, and lists the customer, not its slots.
        Spi::run("SELECT billing.set_low_balance('h', 900)").unwrap();
        assert_eq!(q::<String>("SELECT string_agg(customer || ':' || balance, ',') FROM billing.low_balances"), "h:799");
        clean();
    }

    /// A slotted customer and an unslotted twin get the same 400 random calls (grants,
    /// debits, holds settled at or below their amount or released, refunds, retries):
    /// every call has the same outcome (done, replayed, or BL001) on both, and after each
    /// the two balances are equal. Nothing expires here: with expiring grants the
    /// per-slot spending order may let different credits expire.
    #[pg_test]
    fn a_slotted_customer_matches_its_unslotted_twin() {
        setup();
        for c in ["u", "s"] {
            q::<pgrx::Uuid>(&format!("SELECT billing.grant('{c}', 300, 'seed')"));
            Spi::run(&format!("SELECT billing.set_overdraft('{c}', 20)")).unwrap();
        }
        Spi::run("SELECT billing.set_slots('s', 4)").unwrap();
        let mut rng: u64 = 0x7_1A5D;
        let mut next = |m: u64| {
            rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (rng >> 33) % m
        };
        let mut holds: Vec<(String, i64)> = vec![]; // label, amount
        let mut entries: Vec<(String, u64)> = vec![]; // keys and amounts of debits that went through
        let mut seen: std::collections::HashMap<String, u32> = Default::default();
        for step in 0..400 {
            let roll = next(100);
            let label = format!("k{step}");
            let both = |sql: String| (sql.clone(), sql);
            // $C: the customer, $L: this step's key; (u's call, s's call)
            let mut debited = None;
            let (tu, ts) = if roll < 45 {
                let amount = next(60) + 1;
                debited = Some(amount);
                both(format!("SELECT 'ok' FROM billing.debit('$C', {amount}, '$L')"))
            } else if roll < 55 && !entries.is_empty() {
                // a retry of a debit that went through: replayed on both
                let (key, amount) = entries[next(entries.len() as u64) as usize].clone();
                both(format!("SELECT CASE WHEN replayed THEN 'replayed' ELSE 'new' END FROM billing.debit('$C', {amount}, '{key}')"))
            } else if roll < 70 {
                let amount = next(80) as i64 + 1;
                holds.push((label.clone(), amount));
                both(format!("SELECT 'ok' FROM (SELECT billing.reserve('$C', {amount}, '$L')) r"))
            } else if roll < 80 && !holds.is_empty() {
                let (h, amount) = holds.swap_remove(next(holds.len() as u64) as usize);
                let actual = next(amount as u64 + 1);
                let f = if next(3) == 0 { "release(%R)".to_string() } else { format!("settle(%R, {actual})") };
                let call = |c: &str| {
                    let rid = format!("(SELECT reservation_id FROM billing.journal j JOIN billing.customers x USING (customer) WHERE coalesce(x.slot_of, x.customer) = '{c}' AND j.idempotency_key = '{h}' AND j.kind = 'hold')");
                    format!("SELECT coalesce((SELECT 'ok' FROM billing.{} x), 'no hold')", f.replace("%R", &rid))
                };
                (call("u"), call("s"))
            } else if roll < 88 && !entries.is_empty() {
                let e = entries[next(entries.len() as u64) as usize].0.clone();
                let amount = next(5) + 1;
                let call = |c: &str| {
                    let eid = format!("(SELECT entry_id FROM billing.journal j JOIN billing.customers x USING (customer) WHERE coalesce(x.slot_of, x.customer) = '{c}' AND j.idempotency_key = '{e}')");
                    format!("SELECT coalesce((SELECT 'ok' FROM billing.refund({eid}, {amount}, '$L') x), 'no entry')")
                };
                (call("u"), call("s"))
            } else {
                both(format!("SELECT 'ok' FROM (SELECT billing.grant('$C', {}, '$L')) g", next(120) + 1))
            };
            let su = tu.replace("$C", "u").replace("$L", &label);
            let ss = ts.replace("$C", "s").replace("$L", &label);
            let (ou, os) = (outcome(&su), outcome(&ss));
            assert_eq!(ou, os, "step {step}: {su} / {ss}");
            if let (Some(amount), "ok") = (debited, ou.as_str()) {
                entries.push((label.clone(), amount));
            }
            *seen.entry(ou).or_default() += 1;
            assert_eq!(bal("u"), bal("s"), "step {step} after {su}");
        }
        // The walk must have gone near zero and back: refusals, replays and gathers happened.
        assert!(seen.get("BL001").copied().unwrap_or(0) >= 10 && seen.get("ok").copied().unwrap_or(0) >= 150, "{seen:?}");
        assert!(seen.get("replayed").copied().unwrap_or(0) >= 20 && !seen.contains_key("new"), "{seen:?}");
        assert!(q::<i64>("SELECT count(*) FROM billing.journal WHERE customer = 's' AND kind = 'transfer'") > 8, "the twin test never gathered");
        clean();
    }
}
