//! Token-bucket rate limits in integers: `requests` per `per_us` microseconds, burst up
//! to `requests`. Tokens are kept scaled by `per_us` (one request costs `per_us`, and
//! every microsecond refills `requests`), so there is no rounding at all.

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    pub requests: i64,
    pub per_us: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bucket {
    pub tokens: i128,
    pub at: i64,
}

impl Limit {
    pub fn full(self, now: i64) -> Bucket {
        Bucket { tokens: self.requests as i128 * self.per_us as i128, at: now }
    }

    /// Takes one request at `now`: the new bucket, or how many microseconds until one
    /// request would be allowed.
    pub fn take(self, b: Bucket, now: i64) -> Result<Bucket, i64> {
        let cap = self.requests as i128 * self.per_us as i128;
        let elapsed = (now - b.at).max(0) as i128;
        let tokens = (b.tokens + elapsed * self.requests as i128).min(cap);
        let cost = self.per_us as i128;
        if tokens >= cost {
            Ok(Bucket { tokens: tokens - cost, at: now.max(b.at) })
        } else {
            let missing = cost - tokens;
            Err(((missing + self.requests as i128 - 1) / self.requests as i128) as i64)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    const S: i64 = 1_000_000;

    #[test]
    fn burst_then_refill_exactly() {
        let l = Limit { requests: 3, per_us: 60 * S };
        let mut b = l.full(0);
        for _ in 0..3 {
            b = l.take(b, 0).unwrap();
        }
        assert_eq!(l.take(b, 0), Err(20 * S)); // one request every 20 s
        assert_eq!(l.take(b, 20 * S - 1), Err(1));
        b = l.take(b, 20 * S).unwrap();
        assert!(l.take(b, 20 * S).is_err());
    }

    #[test]
    fn never_more_than_the_limit_in_any_window() {
        let l = Limit { requests: 5, per_us: 10 * S };
        let mut b = l.full(0);
        let mut allowed = vec![];
        for t in (0..200 * S).step_by((S / 4) as usize) {
            if let Ok(n) = l.take(b, t) {
                b = n;
                allowed.push(t);
            }
        }
        // in any window of per_us, at most requests + (burst) allowed
        for (i, &t) in allowed.iter().enumerate() {
            let n = allowed[i..].iter().take_while(|&&u| u < t + 10 * S).count();
            assert!(n <= 5 + 5, "{n} at {t}");
        }
        // long-run rate: 5 per 10 s, plus the initial burst
        assert!(allowed.len() as i64 <= 5 + 200 / 10 * 5);
    }
}
