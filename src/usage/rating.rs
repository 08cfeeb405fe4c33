//! Exact usage rating: integer credits, with the fraction below one credit carried over
//! per customer and meter, so rounding never drifts. A million calls of 1 token at
//! 3 credits per 1000 tokens cost exactly 3000 credits.
//!
//! The carry is an exact fraction `num / den` (0 <= num < den): prices can change, and
//! carrying `1/3` of a credit into a meter priced per 1000 units must stay exact, so the
//! denominator is the lcm of the prices seen (reduced after every step).

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Carry {
    pub num: i64,
    pub den: i64,
}

impl Default for Carry {
    fn default() -> Self {
        Carry { num: 0, den: 1 }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Price {
    pub credits: i64,
    pub per_units: i64,
}

fn gcd(mut a: i128, mut b: i128) -> i128 {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a.abs()
}

/// Rates `quantity` units at `price` on top of `carry`: the whole credits to charge now,
/// and the new carry. `None` when the numbers leave the range of exact arithmetic.
pub fn rate(carry: Carry, price: Price, quantity: i64) -> Option<(i64, Carry)> {
    if price.per_units <= 0 || price.credits < 0 || quantity < 0 || carry.den <= 0 || carry.num < 0 {
        return None;
    }
    // total = carry.num/carry.den + credits*quantity/per_units
    let (cn, cd) = (carry.num as i128, carry.den as i128);
    let (pn, pd) = (price.credits as i128 * quantity as i128, price.per_units as i128);
    let g = gcd(cd, pd);
    let den = cd / g * pd;
    let num = cn * (den / cd) + pn * (den / pd);
    let charge = num / den;
    let rest = num % den;
    let r = gcd(rest, den).max(1);
    let (rest, den) = (rest / r, den / r);
    Some((i64::try_from(charge).ok()?, Carry { num: i64::try_from(rest).ok()?, den: i64::try_from(den).ok()? }))
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: Price = Price { credits: 3, per_units: 1000 };

    #[test]
    fn a_million_single_tokens_cost_exactly() {
        let mut c = Carry::default();
        let mut total = 0i64;
        for _ in 0..1_000_000 {
            let (ch, n) = rate(c, P, 1).unwrap();
            total += ch;
            c = n;
        }
        assert_eq!(total, 3000);
        assert_eq!(c, Carry::default());
    }

    #[test]
    fn carry_survives_price_changes_exactly() {
        // 1/3 credit carried, then a meter per 1000: 1/3 + 2/1000 = 1006/3000 = 503/1500
        let (ch, c) = rate(Carry::default(), Price { credits: 1, per_units: 3 }, 1).unwrap();
        assert_eq!((ch, c), (0, Carry { num: 1, den: 3 }));
        let (ch, c) = rate(c, Price { credits: 2, per_units: 1000 }, 1).unwrap();
        assert_eq!((ch, c), (0, Carry { num: 503, den: 1500 }));
        // + 2/3 = 1503/1500: one credit now, 3/1500 = 1/500 carried
        let (ch, c) = rate(c, Price { credits: 2, per_units: 3 }, 1).unwrap();
        assert_eq!((ch, c), (1, Carry { num: 3, den: 1500 }.reduced()));
    }

    impl Carry {
        fn reduced(self) -> Carry {
            let g = gcd(self.num as i128, self.den as i128).max(1) as i64;
            Carry { num: self.num / g, den: self.den / g }
        }
    }

    /// The property: over any sequence, the credits charged equal the exact rational
    /// total rounded down, and the carry is the rest.
    #[test]
    fn total_is_the_exact_total_rounded_down() {
        let mut seed = 0x9e3779b97f4a7c15u64;
        let mut next = move |m: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % m
        };
        let prices = [
            Price { credits: 3, per_units: 1000 },
            Price { credits: 7, per_units: 3 },
            Price { credits: 1, per_units: 1_000_000 },
            Price { credits: 25, per_units: 1 },
        ];
        for _ in 0..200 {
            let (mut c, mut charged) = (Carry::default(), 0i128);
            let (mut num, mut den) = (0i128, 1i128); // exact total as a fraction
            for _ in 0..next(300) {
                let p = prices[next(prices.len() as u64) as usize];
                let q = next(5000) as i64;
                let (ch, n) = rate(c, p, q).unwrap();
                charged += ch as i128;
                c = n;
                let d = den * p.per_units as i128 / gcd(den, p.per_units as i128);
                num = num * (d / den) + p.credits as i128 * q as i128 * (d / p.per_units as i128);
                den = d;
                let g = gcd(num, den).max(1);
                (num, den) = (num / g, den / g);
            }
            assert_eq!(charged, num / den);
            assert_eq!(c.num as i128 * den, (num % den) * c.den as i128);
        }
    }

    #[test]
    fn out_of_range_is_refused_not_wrapped() {
        assert_eq!(rate(Carry::default(), Price { credits: i64::MAX, per_units: 1 }, 2), None);
        assert_eq!(rate(Carry::default(), Price { credits: 1, per_units: 0 }, 2), None);
        assert_eq!(rate(Carry::default(), P, -1), None);
    }
}
