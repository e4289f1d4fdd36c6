//! The inbound rate limit (`--rate-limit`): a token bucket per connection, whatever its
//! transport.

use crate::hub::RateLimit;

/// A token bucket: `per_second` tokens a second, at most `burst` saved up.
pub(super) struct Bucket {
    pub(super) limit: RateLimit,
    tokens: f64,
    /// When tokens were last counted, in milliseconds on the sweep's clock.
    last: u64,
}

impl Bucket {
    pub(super) fn new(limit: RateLimit, now: u64) -> Self {
        Self {
            limit,
            tokens: f64::from(limit.burst.max(1)),
            last: now,
        }
    }

    /// Takes a token at `now` (milliseconds); `false` when the bucket is empty.
    pub(super) fn take(&mut self, now: u64) -> bool {
        let burst = f64::from(self.limit.burst.max(1));
        let elapsed = now.saturating_sub(self.last) as f64 / 1000.0;
        let earned = elapsed * self.limit.per_second;
        self.tokens = (self.tokens + earned).min(burst);
        self.last = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}
